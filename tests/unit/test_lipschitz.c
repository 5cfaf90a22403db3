/* Unit tests for the Lipschitz analysis (lib/lipschitz.c) against its
 * contract in faultline/lipschitz.h.
 *
 * - The forward-mode JVP equals a central finite difference of the forward
 *   pass: slot 0 of a batch holds x, slots 1 and 2 hold x +- h d, and
 *   (f(x + h d) - f(x - h d)) / 2h, taken in double from the float outputs,
 *   is compared with J d at the latent, at the head's output before
 *   normalisation and at the decoders' output, with and without the block.
 *   At h = 1e-3 the float rounding of outputs of size ~1 is ~1e-4 relative;
 *   a LeakyReLU kink crossed within +-h moves one unit's slope for part of
 *   the step, a small share of a norm over many units; a wrong layer, slope
 *   or missing residual term is wrong by order 1.  Tolerance: 1e-2 of the
 *   tangent's norm.
 * - No measured gain exceeds its bound (relative tolerance 1e-3 for the
 *   float arithmetic and the power iteration's convergence), on random
 *   models with a random (non-zero) last block layer, with and without
 *   projection onto tight targets, at every position, and on a model trained
 *   for a few epochs on synthetic sines.
 * - The bounds are the products the header defines, and at the last
 *   position a step is the impulse, so their gains agree exactly. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "faultline/error.h"
#include "faultline/lipschitz.h"
#include "faultline/model.h"
#include "faultline/train.h"

static void small_spec(fl_model_spec *s, float target) {
  static const char *a[] = {"a0", "a1"}, *b[] = {"b0"};
  fl_model_spec_defaults(s);
  s->window = 16;
  s->enc1 = 4;
  s->enc2 = 5;
  s->hidden = 12;
  s->head_hidden = 8;
  s->emb = 4;
  s->leak = 0.1f;
  for (int k = 0; k < FL_MOD_COUNT; k++) s->target[k] = target;
  assert_int_equal(fl_model_spec_add(s, "a", 1, 2, a), 0);
  assert_int_equal(fl_model_spec_add(s, "b", 2, 1, b), 0);
}

/* The block's last layer starts at zero; a random one makes the residual
 * branch visible to the JVP and the bound. */
static fl_model *random_model(fl_model_spec *s, unsigned long seed) {
  fl_model *m;
  assert_int_equal(fl_model_create(&m, s, seed), 0);
  fl_rng r;
  fl_rng_seed(&r, seed + 100);
  for (int i = 0; i < fl_model_layer_count(m); i++) {
    fl_layer *l = fl_model_layer(m, i);
    if (!strcmp(l->name, "block.2")) {
      fl_init_uniform(l->w, l->nw, l->nin, &r);
      fl_init_uniform(l->b, l->nb, l->nin, &r);
    }
  }
  return m;
}

static size_t mod_size(const fl_model_spec *s, int i) {
  return (size_t)s->mod[i].channels * s->window * s->mod[i].rate;
}

static double dist(const double *a, const float *b, size_t n, double *norm) {
  double d = 0.0, nn = 0.0;
  for (size_t k = 0; k < n; k++) {
    d += (a[k] - b[k]) * (a[k] - b[k]);
    nn += (double)b[k] * b[k];
  }
  *norm = sqrt(nn);
  return sqrt(d);
}

static void check_fd(unsigned long seed, int use_block) {
  fl_model_spec s;
  small_spec(&s, 0.0f);
  fl_model *m = random_model(&s, seed);
  fl_ctx *c;
  assert_int_equal(fl_ctx_create(&c, m, 3), 0);
  fl_rng r;
  fl_rng_seed(&r, seed * 7 + 1);
  const double h = 1e-3;
  fl_jvp j;
  memset(&j, 0, sizeof j);
  /* The test models have few modalities. */
  float *d[8], *dout[8] = {0};
  const float *dx[8] = {0};
  assert_true(s.n_mod <= 8);
  j.dx = dx;
  j.dout = dout;
  int Z = fl_model_latent_size(m), E = s.emb;
  for (int i = 0; i < s.n_mod; i++) {
    size_t n = mod_size(&s, i);
    d[i] = malloc(sizeof(float) * n);
    j.dout[i] = malloc(sizeof(float) * n);
    float *x = fl_ctx_input(c, i);
    for (size_t k = 0; k < n; k++) {
      d[i][k] = fl_rng_normal(&r);
      x[k] = 1.5f * fl_rng_normal(&r);
      x[n + k] = (float)(x[k] + h * d[i][k]);
      x[2 * n + k] = (float)(x[k] - h * d[i][k]);
    }
    j.dx[i] = d[i];
  }
  j.dz = malloc(sizeof(float) * Z);
  j.dhead = malloc(sizeof(float) * E);
  assert_int_equal(fl_model_forward(m, c, 3, use_block, 1), 0);
  assert_int_equal(fl_lipschitz_jvp(m, c, 1, &j), 0);

  /* Finite differences in double from the float outputs of slots 1 and 2. */
  double *fd = malloc(sizeof(double) * (Z > 1000 ? Z : 1000)), err, nrm;
  const float *z = fl_ctx_latent(c);
  for (int k = 0; k < Z; k++) fd[k] = ((double)z[Z + k] - z[2 * Z + k]) / (2 * h);
  err = dist(fd, j.dz, Z, &nrm);
  assert_true(nrm > 1e-3);
  assert_true(err <= 1e-2 * nrm);
  const float *p = fl_ctx_preact(c, m, fl_model_layer_count(m) - 1); /* head.1 */
  assert_non_null(p);
  for (int k = 0; k < E; k++) fd[k] = ((double)p[E + k] - p[2 * E + k]) / (2 * h);
  err = dist(fd, j.dhead, E, &nrm);
  assert_true(nrm > 1e-3);
  assert_true(err <= 1e-2 * nrm);
  for (int i = 0; i < s.n_mod; i++) {
    size_t n = mod_size(&s, i);
    const float *o = fl_ctx_output(c, i);
    for (size_t k = 0; k < n; k++) fd[k] = ((double)o[n + k] - o[2 * n + k]) / (2 * h);
    err = dist(fd, j.dout[i], n, &nrm);
    assert_true(nrm > 1e-3);
    assert_true(err <= 1e-2 * nrm);
  }
  /* Linearity in the tangent: 2 d gives twice J d (a JVP that added a bias
   * or read the tangent as a primal would fail this). */
  float *dz1 = malloc(sizeof(float) * Z);
  memcpy(dz1, j.dz, sizeof(float) * Z);
  for (int i = 0; i < s.n_mod; i++)
    for (size_t k = 0; k < mod_size(&s, i); k++) d[i][k] *= 2.0f;
  assert_int_equal(fl_lipschitz_jvp(m, c, 1, &j), 0);
  for (int k = 0; k < Z; k++) assert_float_equal(j.dz[k], 2.0f * dz1[k], 1e-4f * (1 + fabsf(dz1[k])));

  free(dz1);
  free(fd);
  for (int i = 0; i < s.n_mod; i++) {
    free(d[i]);
    free(j.dout[i]);
  }
  free(j.dz);
  free(j.dhead);
  fl_ctx_free(c);
  fl_model_free(m);
  fl_model_spec_free(&s);
}

static void test_jvp_matches_fd(void **state) {
  (void)state;
  for (unsigned long seed = 1; seed <= 4; seed++) {
    check_fd(seed, 1);
    check_fd(seed, 0);
  }
}

static void test_jvp_needs_forward_parts(void **state) {
  (void)state;
  fl_model_spec s;
  small_spec(&s, 0.0f);
  fl_model *m = random_model(&s, 3);
  fl_ctx *c;
  assert_int_equal(fl_ctx_create(&c, m, 1), 0);
  for (int i = 0; i < s.n_mod; i++) memset(fl_ctx_input(c, i), 0, sizeof(float) * mod_size(&s, i));
  assert_int_equal(fl_model_forward(m, c, 1, 0, 0), 0);
  float dh[8];
  fl_jvp j;
  memset(&j, 0, sizeof j);
  j.dhead = dh;
  /* The head did not run: its slopes are unknown. */
  assert_int_equal(fl_lipschitz_jvp(m, c, 1, &j), FL_EINVAL);
  assert_null(fl_ctx_preact(c, m, fl_model_layer_count(m) - 1));
  fl_ctx_free(c);
  fl_model_free(m);
  fl_model_spec_free(&s);
}

/* Every gain of every probe at a few operating points is within its bound. */
static void check_bounds(fl_model *m, unsigned long seed, float *worst_ratio) {
  const fl_model_spec *s = fl_model_spec_of(m);
  fl_lipschitz_bound bd;
  assert_int_equal(fl_lipschitz_bounds(m, &bd), 0);
  for (int i = 0; i < s->n_mod; i++) {
    assert_true(bd.enc[i] > 0.0f);
    assert_float_equal(bd.path[FL_PATH_HEAD][i], bd.enc[i] * bd.head, 1e-5f * bd.enc[i] * bd.head);
    assert_float_equal(bd.path[FL_PATH_CORRECTED][i], bd.enc[i] * bd.block * bd.dec_max,
                       1e-5f * bd.path[FL_PATH_CORRECTED][i]);
  }
  assert_true(bd.block >= 1.0f);
  fl_ctx *c;
  const int batch = 16;
  assert_int_equal(fl_ctx_create(&c, m, batch), 0);
  fl_rng r;
  fl_rng_seed(&r, seed);
  float *x0[8];
  assert_true(s->n_mod <= 8);
  for (int i = 0; i < s->n_mod; i++) x0[i] = malloc(sizeof(float) * mod_size(s, i));
  for (int op = 0; op < 3; op++) {
    for (int i = 0; i < s->n_mod; i++)
      for (size_t k = 0; k < mod_size(s, i); k++) x0[i][k] = op ? 2.0f * fl_rng_normal(&r) : 0.0f;
    for (int i = 0; i < s->n_mod; i++) {
      int T = s->window * s->mod[i].rate, C = s->mod[i].channels;
      int *pos = malloc(sizeof(int) * T);
      int np = fl_lipschitz_positions(T, T, pos);
      assert_int_equal(np, T);
      float *g = malloc(sizeof(float) * C * np * FL_PROBE_COUNT * FL_PATH_COUNT);
      assert_int_equal(
          fl_lipschitz_probe(m, c, batch, (const float *const *)x0, i, pos, np, g), 0);
      for (int ch = 0; ch < C; ch++)
        for (int p = 0; p < FL_PATH_COUNT; p++) {
          size_t last = ((size_t)ch * np + np - 1) * FL_PROBE_COUNT;
          assert_float_equal(g[(last + FL_PROBE_STEP) * FL_PATH_COUNT + p],
                             g[(last + FL_PROBE_IMPULSE) * FL_PATH_COUNT + p], 1e-6f);
        }
      for (int k = 0; k < C * np * FL_PROBE_COUNT; k++)
        for (int p = 0; p < FL_PATH_COUNT; p++) {
          float v = g[k * FL_PATH_COUNT + p], b = bd.path[p][i];
          assert_true(isfinite(v) && v >= 0.0f);
          if (v / b > *worst_ratio) *worst_ratio = v / b;
          if (!(v <= b * 1.001f)) {
            fprintf(stderr, "modality %d probe %d path %s: gain %g > bound %g\n", i, k,
                    fl_path_name(p), (double)v, (double)b);
            fail();
          }
        }
      free(g);
      free(pos);
    }
  }
  for (int i = 0; i < s->n_mod; i++) free(x0[i]);
  fl_lipschitz_bound_free(&bd);
  fl_ctx_free(c);
}

static void test_bounds_random(void **state) {
  (void)state;
  float worst = 0.0f;
  for (unsigned long seed = 1; seed <= 3; seed++)
    for (int project = 0; project < 2; project++) {
      fl_model_spec s;
      small_spec(&s, project ? 0.7f : 0.0f);
      fl_model *m = random_model(&s, seed);
      if (project) {
        for (int k = 0; k < FL_MOD_COUNT; k++) {
          float sig;
          assert_int_equal(fl_model_project(m, (fl_module)k, &sig), 0);
          assert_true(sig <= 0.7f * 1.001f);
        }
      }
      check_bounds(m, seed, &worst);
      fl_model_free(m);
      fl_model_spec_free(&s);
    }
  /* The measurement is not trivially small: some probe uses a fair share of
   * its bound (a JVP that lost a term would not). */
  assert_true(worst > 0.05f);
}

/* A trained model: sines in both modalities, a few epochs of both stages. */
static void test_bounds_trained(void **state) {
  (void)state;
  fl_model_spec s;
  small_spec(&s, 0.0f);
  s.target[FL_MOD_ENC] = s.target[FL_MOD_HEAD] = s.target[FL_MOD_DEC] = 2.0f;
  s.target[FL_MOD_BLOCK] = 1.0f;
  fl_series ser;
  memset(&ser, 0, sizeof ser);
  ser.rows = 400;
  ser.n_mod = s.n_mod;
  ser.x = calloc((size_t)s.n_mod, sizeof *ser.x);
  assert_non_null(ser.x);
  for (int i = 0; i < s.n_mod; i++) {
    int r = s.mod[i].rate, C = s.mod[i].channels;
    ser.x[i] = malloc(sizeof(float) * C * ser.rows * r);
    for (int ch = 0; ch < C; ch++)
      for (int t = 0; t < ser.rows * r; t++)
        ser.x[i][(size_t)ch * ser.rows * r + t] =
            sinf(0.3f * (float)t / r + ch) + 0.5f * sinf(0.05f * (float)t / r) + 2.0f * i;
  }
  fl_train_config cfg;
  fl_train_defaults(&cfg);
  cfg.epochs1 = 3;
  cfg.epochs2 = 2;
  cfg.batch = 16;
  cfg.stride = 2;
  fl_model *m;
  assert_int_equal(fl_model_create(&m, &s, 5), 0);
  assert_int_equal(fl_train_normalise(m, &ser, 1, &cfg), 0);
  assert_int_equal(fl_train_stage1(m, &ser, 1, &cfg, NULL, NULL), 0);
  assert_int_equal(fl_train_stage2(m, &ser, 1, &cfg, NULL, NULL), 0);
  float worst = 0.0f;
  check_bounds(m, 9, &worst);
  assert_true(worst > 0.0f);
  fl_model_free(m);
  fl_series_free(&ser);
  fl_model_spec_free(&s);
}

static void test_positions(void **state) {
  (void)state;
  int pos[64];
  assert_int_equal(fl_lipschitz_positions(60, 8, pos), 8);
  assert_int_equal(pos[0], 0);
  assert_int_equal(pos[7], 59);
  for (int k = 1; k < 8; k++) assert_true(pos[k] > pos[k - 1]);
  assert_int_equal(fl_lipschitz_positions(5, 8, pos), 5);
  assert_int_equal(pos[4], 4);
  assert_int_equal(fl_lipschitz_positions(0, 8, pos), FL_EINVAL);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_positions),
      cmocka_unit_test(test_jvp_matches_fd),
      cmocka_unit_test(test_jvp_needs_forward_parts),
      cmocka_unit_test(test_bounds_random),
      cmocka_unit_test(test_bounds_trained),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
