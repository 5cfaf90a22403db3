/* faultline nn: see include/faultline/nn.h for the contracts. */
#include "faultline/nn.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

#include "faultline/error.h"

/* ---- random numbers ---------------------------------------------------- */

static uint64_t fl__splitmix64(uint64_t *x) {
  uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

void fl_rng_seed(fl_rng *r, uint64_t seed) {
  for (int i = 0; i < 4; i++) r->s[i] = fl__splitmix64(&seed);
}

static uint64_t fl__rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t fl_rng_u64(fl_rng *r) {
  uint64_t *s = r->s;
  uint64_t result = fl__rotl(s[1] * 5, 7) * 9;
  uint64_t t = s[1] << 17;
  s[2] ^= s[0];
  s[3] ^= s[1];
  s[1] ^= s[2];
  s[0] ^= s[3];
  s[2] ^= t;
  s[3] = fl__rotl(s[3], 45);
  return result;
}

float fl_rng_uniform(fl_rng *r) { return (float)(fl_rng_u64(r) >> 40) * (1.0f / 16777216.0f); }

float fl_rng_normal(fl_rng *r) {
  /* Box-Muller on doubles; u1 is kept away from 0 so the log is finite. */
  double u1 = ((double)(fl_rng_u64(r) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
  double u2 = (double)(fl_rng_u64(r) >> 11) * (1.0 / 9007199254740992.0);
  return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

uint32_t fl_rng_below(fl_rng *r, uint32_t n) {
  return n ? (uint32_t)(((fl_rng_u64(r) >> 32) * (uint64_t)n) >> 32) : 0;
}
