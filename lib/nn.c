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

/* ---- utilities --------------------------------------------------------- */

/* The element-wise loops around the GEMMs (finiteness checks, im2col and its
 * adjoint, layout changes, activations) are vectorised by the compiler; built
 * for x86-64's baseline they get 4-lane SSE.  FL__CLONES compiles such a
 * function once more for AVX2 and picks the version at load time (an ifunc),
 * which halves their instructions where AVX2 is present. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FL__CLONES __attribute__((target_clones("avx2", "default")))
#else
#define FL__CLONES
#endif

FL__CLONES int fl_check_finite(const float *x, size_t n) {
  /* Every layer checks its input, so this runs over every activation: no
   * branch per element.  An exponent of all ones (Inf, NaN) plus one
   * exponent step carries into bit 31; any other value stays below it, and
   * OR-ing the sums lets the compiler vectorise the loop. */
  uint32_t bad = 0;
  for (size_t i = 0; i < n; i++) {
    uint32_t u;
    memcpy(&u, &x[i], sizeof u);
    bad |= (u & 0x7f800000u) + 0x00800000u;
  }
  return (bad & 0x80000000u) ? FL_ENONFINITE : 0;
}

void fl_init_uniform(float *w, size_t n, int fan_in, fl_rng *r) {
  float bound = fan_in > 0 ? 1.0f / sqrtf((float)fan_in) : 0.0f;
  for (size_t i = 0; i < n; i++) w[i] = (2.0f * fl_rng_uniform(r) - 1.0f) * bound;
}

/* ---- dense ------------------------------------------------------------- */

/* Training's dense layers run on sgemm (one row: sgemv), whose summation
 * order the PyTorch parity checks and the online-tuning run were settled
 * with; the forward-only context's run on fl_dense_infer's kernels below. */

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define FL__HAVE_KERNELS 1

/* No cached flags: the builtin reads what the runtime's constructor found,
 * and a static here would be state shared by every thread. */
static int fl__avx2_ok(void) {
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
#else
#define FL__HAVE_KERNELS 0
#endif

int fl_dense_forward(float *y, const float *x, const float *w, const float *b,
                     int B, int nin, int nout) {
  if (!y || !x || !w) return FL_EINVAL;
  if (B <= 0 || nin <= 0 || nout <= 0) return FL_ESHAPE;
  if (fl_check_finite(x, (size_t)B * nin)) return FL_ENONFINITE;
  /* Start from the bias so that one sgemm with beta = 1 does the rest. */
  for (int i = 0; i < B; i++) {
    float *yi = y + (size_t)i * nout;
    if (b) memcpy(yi, b, sizeof(float) * nout);
    else memset(yi, 0, sizeof(float) * nout);
  }
  if (B == 1)
    cblas_sgemv(CblasRowMajor, CblasNoTrans, nout, nin, 1.0f, w, nin, x, 1, 1.0f, y, 1);
  else
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, B, nout, nin, 1.0f, x, nin, w, nin,
                1.0f, y, nout);
  return 0;
}

int fl_dense_backward(float *dx, float *dw, float *db, const float *dy,
                      const float *x, const float *w, int B, int nin, int nout) {
  if (!dy || (dw && !x) || (dx && !w)) return FL_EINVAL;
  if (B <= 0 || nin <= 0 || nout <= 0) return FL_ESHAPE;
  if (dx) /* dx (B, nin) = dy (B, nout) W (nout, nin) */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, B, nin, nout, 1.0f, dy, nout, w,
                nin, 0.0f, dx, nin);
  if (dw) /* dW (nout, nin) += dy^T (nout, B) x (B, nin) */
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, nout, nin, B, 1.0f, dy, nout, x, nin,
                1.0f, dw, nin);
  if (db)
    for (int i = 0; i < B; i++)
      for (int o = 0; o < nout; o++) db[o] += dy[(size_t)i * nout + o];
  return 0;
}

/* ---- dense, forward-only ------------------------------------------------ */

/* The inference context's dense layers (fl_dense_infer).  sgemm packs all
 * of W into its panel format on every call (22 % of faultlined's time at
 * stride 1, and a 0.7 MB buffer), and OpenBLAS has no pre-packed GEMM.  The
 * kernels below read W where it lies, (nout, nin) row-major, in the
 * dot-product form: a tile of W rows meets a tile of x rows, both contiguous
 * along k; each accumulator is a vector of partial sums of one output, and
 * the vectors are reduced once, at the end of the rows.
 *
 * Loop order: one block of 4 W rows at a time (4 rows of 1920 floats are
 * 30 KB, in L1 or L2) against every row of x in turn (x in L2, in chunks of
 * at most 512 KB), so W comes from memory once per call, as in sgemv, while
 * the next block is prefetched; from a batch of about 16 up the FMA units,
 * not the loads, bound the inner loop (90-110 GFLOP/s on this Zen 4 core).
 *
 * Every output's sum runs in one fixed order whatever the tile, the batch
 * size or the window's place in the batch: k in chunks of the vector width,
 * the last chunk zero-filled, then one reduction tree for every accumulator,
 * then the bias.  A window's outputs therefore do not depend on what it is
 * batched with; they differ from sgemm's (the same products summed in
 * another order) by rounding only, and the AVX2 kernel's (8 lanes, its own
 * tree) from the AVX-512 kernel's likewise; a process uses one of them. */

#if FL__HAVE_KERNELS
/* Where the next block of W rows is prefetched to (T1: L2 and beyond; T0
 * measured no better). */
#define FL__PF_HINT _MM_HINT_T1

/* Sums of 16 accumulators a[4 r + c] (row r, input c) as one vector whose
 * 128-bit chunk c holds rows 0 .. 3 of input c.  The tree is the same for
 * every accumulator: lane i meets lane i + 8, then i + 4, i + 2, i + 1. */
__attribute__((target("avx512f"), always_inline)) static inline __m512
fl__reduce16(const __m512 *a) {
  __m512 t[8], u[4];
  for (int i = 0; i < 8; i++) /* [a0+a2, a1+a3, b0+b2, b1+b3], 128-bit chunks */
    t[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0x44),
                         _mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0xee));
  for (int j = 0; j < 4; j++) /* row j: chunk c holds input c's 4 partial sums */
    u[j] = _mm512_add_ps(_mm512_shuffle_f32x4(t[2 * j], t[2 * j + 1], 0x88),
                         _mm512_shuffle_f32x4(t[2 * j], t[2 * j + 1], 0xdd));
  __m512 v0 = _mm512_add_ps(_mm512_unpacklo_ps(u[0], u[1]), _mm512_unpackhi_ps(u[0], u[1]));
  __m512 v1 = _mm512_add_ps(_mm512_unpacklo_ps(u[2], u[3]), _mm512_unpackhi_ps(u[2], u[3]));
  __m512d p = _mm512_castps_pd(v0), q = _mm512_castps_pd(v1);
  return _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(p, q)),
                       _mm512_castpd_ps(_mm512_unpackhi_pd(p, q)));
}

/* AVX-512 tile: y (C, 4) = x (C, nin) W (4, nin)^T + b, C <= 6; y's rows
 * nout apart, x's and W's nin apart.  4 C accumulators of 16 lanes, 4 + C
 * loads per 4 C FMAs (24 accumulators and 5 operands in the 32 registers).
 * Rows past nrow (1 .. 4 valid) repeat row 0 and are not stored.  Unless pf
 * is NULL, the tile also prefetches npf (1 .. 4) rows from pf, the next
 * block's: the model's W come from L3 or memory (5.3 MB of weights, each
 * read once per pass), and the hardware prefetcher alone left the kernel
 * 1.25-1.9x slower on cold W than on W in cache. */
__attribute__((target("avx512f,avx512vl"), always_inline)) static inline void
fl__tile512(float *y, const float *x, const float *w, const float *b, int nin, int nout,
            int nrow, const int C, const float *pf, int npf) {
  const float *wr[4], *pr[4];
  for (int r = 0; r < 4; r++) {
    wr[r] = w + (size_t)(r < nrow ? r : 0) * nin;
    pr[r] = pf ? pf + (size_t)(r < npf ? r : 0) * nin : NULL;
  }
  __m512 acc[4][6];
#pragma GCC unroll 4
  for (int r = 0; r < 4; r++)
#pragma GCC unroll 6
    for (int c = 0; c < C; c++) acc[r][c] = _mm512_setzero_ps();
  int k = 0;
  for (; k + 16 <= nin; k += 16) {
    __m512 v[4];
    if (pf)
#pragma GCC unroll 4
      for (int r = 0; r < 4; r++) _mm_prefetch((const char *)(pr[r] + k), FL__PF_HINT);
#pragma GCC unroll 4
    for (int r = 0; r < 4; r++) v[r] = _mm512_loadu_ps(wr[r] + k);
#pragma GCC unroll 6
    for (int c = 0; c < C; c++) {
      __m512 u = _mm512_loadu_ps(x + (size_t)c * nin + k);
#pragma GCC unroll 4
      for (int r = 0; r < 4; r++) acc[r][c] = _mm512_fmadd_ps(v[r], u, acc[r][c]);
    }
  }
  if (k < nin) { /* the last chunk, zero-filled: masked lanes are not read */
    __mmask16 m = (__mmask16)((1u << (nin - k)) - 1);
    __m512 v[4];
#pragma GCC unroll 4
    for (int r = 0; r < 4; r++) v[r] = _mm512_maskz_loadu_ps(m, wr[r] + k);
#pragma GCC unroll 6
    for (int c = 0; c < C; c++) {
      __m512 u = _mm512_maskz_loadu_ps(m, x + (size_t)c * nin + k);
#pragma GCC unroll 4
      for (int r = 0; r < 4; r++) acc[r][c] = _mm512_fmadd_ps(v[r], u, acc[r][c]);
    }
  }
  __mmask8 mrow = (__mmask8)((1u << nrow) - 1);
  __m512 bias = _mm512_broadcast_f32x4(b ? _mm_maskz_loadu_ps(mrow, b) : _mm_setzero_ps());
#pragma GCC unroll 2
  for (int c0 = 0; c0 < C; c0 += 4) {
    __m512 a[16];
#pragma GCC unroll 4
    for (int r = 0; r < 4; r++)
#pragma GCC unroll 4
      for (int c = 0; c < 4; c++) a[4 * r + c] = acc[r][c0 + c < C ? c0 + c : c0];
    __m512 s = _mm512_add_ps(fl__reduce16(a), bias);
    float *yc = y + (size_t)c0 * nout;
    _mm_mask_storeu_ps(yc, mrow, _mm512_castps512_ps128(s));
    if (c0 + 1 < C) _mm_mask_storeu_ps(yc + nout, mrow, _mm512_extractf32x4_ps(s, 1));
    if (c0 + 2 < C) _mm_mask_storeu_ps(yc + 2 * (size_t)nout, mrow, _mm512_extractf32x4_ps(s, 2));
    if (c0 + 3 < C) _mm_mask_storeu_ps(yc + 3 * (size_t)nout, mrow, _mm512_extractf32x4_ps(s, 3));
  }
}

/* Rows of x per pass over W: as many as fit in 512 KB, half of a Zen 4
 * core's L2 (64 rows of 1920 floats are 480 KB), in whole 6-row tiles.  A
 * larger batch (256 windows are 2 MB at the block's input) goes in chunks,
 * each of which reads W once more, instead of streaming x from L3 for every
 * block of W rows.  The chunks do not change any sum. */
static int fl__rows_per_pass(int nin) {
  int n = (int)((512u * 1024u) / (sizeof(float) * (unsigned)nin)) / 6 * 6;
  return n < 6 ? 6 : n;
}

/* AVX-512 row of x against 16 W rows: y (16) = W (16, nin) x + b, the
 * batch-1 case.  16 accumulators, each summed exactly as fl__tile512 sums
 * its own (fl__reduce16 with accumulator 4 r + c holding row 4 c + r puts
 * the 16 rows in order), so a row's outputs are the same bit for bit
 * whichever tile computed them.  W streams from L2 or further, one load per
 * FMA, as in sgemv; prefetching the next rows here cost more load slots
 * than it saved (0.8-0.9x of sgemv with it, 1.0-1.5x without).  Rows past
 * nrow (1 .. 16 valid) repeat row 0 and are not stored. */
__attribute__((target("avx512f,avx512vl"))) static void
fl__row512(float *y, const float *x, const float *w, const float *b, int nin, int nrow) {
  const float *wr[16];
  for (int r = 0; r < 16; r++) wr[r] = w + (size_t)(r < nrow ? r : 0) * nin;
  __m512 acc[16];
  for (int r = 0; r < 16; r++) acc[r] = _mm512_setzero_ps();
  int k = 0;
  for (; k + 16 <= nin; k += 16) {
    __m512 u = _mm512_loadu_ps(x + k);
    for (int r = 0; r < 16; r++) acc[r] = _mm512_fmadd_ps(_mm512_loadu_ps(wr[r] + k), u, acc[r]);
  }
  if (k < nin) {
    __mmask16 m = (__mmask16)((1u << (nin - k)) - 1);
    __m512 u = _mm512_maskz_loadu_ps(m, x + k);
    for (int r = 0; r < 16; r++)
      acc[r] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, wr[r] + k), u, acc[r]);
  }
  __m512 a[16];
  for (int r = 0; r < 4; r++)
    for (int c = 0; c < 4; c++) a[4 * r + c] = acc[4 * c + r];
  __mmask16 mrow = (__mmask16)((1u << nrow) - 1);
  __m512 s = fl__reduce16(a);
  s = _mm512_add_ps(s, b ? _mm512_maskz_loadu_ps(mrow, b) : _mm512_setzero_ps());
  _mm512_mask_storeu_ps(y, mrow, s);
}

/* y (B, nout) = x (B, nin) W^T + b with fl__tile512, B at most
 * fl__rows_per_pass (nin): for each block of 4 W rows, every 6 rows of x,
 * then the rest. */
__attribute__((target("avx512f,avx512vl"))) static void fl__dense512(float *y, const float *x,
                                                                     const float *w,
                                                                     const float *b, int B,
                                                                     int nin, int nout) {
  if (B == 1) {
    for (int o = 0; o < nout; o += 16)
      fl__row512(y + o, x, w + (size_t)o * nin, b ? b + o : NULL, nin,
                 nout - o < 16 ? nout - o : 16);
    return;
  }
  for (int o = 0; o < nout; o += 4) {
    int nrow = nout - o < 4 ? nout - o : 4;
    const float *wo = w + (size_t)o * nin, *bo = b ? b + o : NULL;
    /* The first tile of a block also prefetches the next block's rows. */
    int npf = nout - o - 4 < 4 ? nout - o - 4 : 4;
    const float *pf = npf > 0 ? wo + (size_t)4 * nin : NULL;
    int i = 0;
    for (; i + 6 <= B; i += 6, pf = NULL)
      fl__tile512(y + (size_t)i * nout + o, x + (size_t)i * nin, wo, bo, nin, nout, nrow, 6,
                  pf, npf);
    float *yi = y + (size_t)i * nout + o;
    const float *xi = x + (size_t)i * nin;
    switch (B - i) {
    case 5: fl__tile512(yi, xi, wo, bo, nin, nout, nrow, 5, pf, npf); break;
    case 4: fl__tile512(yi, xi, wo, bo, nin, nout, nrow, 4, pf, npf); break;
    case 3: fl__tile512(yi, xi, wo, bo, nin, nout, nrow, 3, pf, npf); break;
    case 2: fl__tile512(yi, xi, wo, bo, nin, nout, nrow, 2, pf, npf); break;
    case 1: fl__tile512(yi, xi, wo, bo, nin, nout, nrow, 1, pf, npf); break;
    default: break;
    }
  }
}

/* Sums of a0 .. a3 (8 lanes each) as [a0, a1, a2, a3], each by the same
 * tree: ((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7)). */
__attribute__((target("avx2,fma"), always_inline)) static inline __m128
fl__reduce4x8(__m256 a0, __m256 a1, __m256 a2, __m256 a3) {
  __m256 s = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
  return _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
}

/* AVX2 tile: y (C, 4) = x (C, nin) W (4, nin)^T + b, C <= 3, strides as in
 * fl__tile512.  12 accumulators of 8 lanes, the C rows of x in registers, one
 * W row at a time: 16 registers, 4 + C loads per 4 C FMAs. */
__attribute__((target("avx2,fma"), always_inline)) static inline void
fl__tile256(float *y, const float *x, const float *w, const float *b, int nin, int nout,
            int nrow, const int C) {
  const float *wr[4];
  for (int r = 0; r < 4; r++) wr[r] = w + (size_t)(r < nrow ? r : 0) * nin;
  __m256 acc[4][3];
#pragma GCC unroll 4
  for (int r = 0; r < 4; r++)
#pragma GCC unroll 3
    for (int c = 0; c < 3; c++) acc[r][c] = _mm256_setzero_ps();
  int k = 0;
  for (; k + 8 <= nin; k += 8) {
    __m256 u[3];
#pragma GCC unroll 3
    for (int c = 0; c < C; c++) u[c] = _mm256_loadu_ps(x + (size_t)c * nin + k);
#pragma GCC unroll 4
    for (int r = 0; r < 4; r++) {
      __m256 v = _mm256_loadu_ps(wr[r] + k);
#pragma GCC unroll 3
      for (int c = 0; c < C; c++) acc[r][c] = _mm256_fmadd_ps(v, u[c], acc[r][c]);
    }
  }
  if (k < nin) {
    __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32(nin - k),
                                   _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    __m256 u[3];
#pragma GCC unroll 3
    for (int c = 0; c < C; c++) u[c] = _mm256_maskload_ps(x + (size_t)c * nin + k, m);
#pragma GCC unroll 4
    for (int r = 0; r < 4; r++) {
      __m256 v = _mm256_maskload_ps(wr[r] + k, m);
#pragma GCC unroll 3
      for (int c = 0; c < C; c++) acc[r][c] = _mm256_fmadd_ps(v, u[c], acc[r][c]);
    }
  }
  float bb[4] = {0, 0, 0, 0};
  for (int r = 0; b && r < nrow; r++) bb[r] = b[r];
  __m128 bias = _mm_loadu_ps(bb);
#pragma GCC unroll 3
  for (int c = 0; c < C; c++) {
    __m128 s = _mm_add_ps(fl__reduce4x8(acc[0][c], acc[1][c], acc[2][c], acc[3][c]), bias);
    float *yc = y + (size_t)c * nout;
    if (nrow == 4) {
      _mm_storeu_ps(yc, s);
    } else {
      float t[4];
      _mm_storeu_ps(t, s);
      for (int r = 0; r < nrow; r++) yc[r] = t[r];
    }
  }
}

/* y (B, nout) = x (B, nin) W^T + b with fl__tile256, B at most
 * fl__rows_per_pass (nin). */
__attribute__((target("avx2,fma"))) static void fl__dense256(float *y, const float *x,
                                                             const float *w, const float *b,
                                                             int B, int nin, int nout) {
  for (int o = 0; o < nout; o += 4) {
    int nrow = nout - o < 4 ? nout - o : 4;
    const float *wo = w + (size_t)o * nin, *bo = b ? b + o : NULL;
    int i = 0;
    for (; i + 3 <= B; i += 3)
      fl__tile256(y + (size_t)i * nout + o, x + (size_t)i * nin, wo, bo, nin, nout, nrow, 3);
    float *yi = y + (size_t)i * nout + o;
    const float *xi = x + (size_t)i * nin;
    if (B - i == 2) fl__tile256(yi, xi, wo, bo, nin, nout, nrow, 2);
    else if (B - i == 1) fl__tile256(yi, xi, wo, bo, nin, nout, nrow, 1);
  }
}
#endif

static int fl__kernel_ok(fl_dense_kernel k) {
#if FL__HAVE_KERNELS
  if (k == FL_DENSE_AVX512)
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl");
  if (k == FL_DENSE_AVX2) return fl__avx2_ok();
#endif
  return k == FL_DENSE_BLAS;
}

int fl_dense_infer_with(fl_dense_kernel k, float *y, const float *x, const float *w,
                        const float *b, int B, int nin, int nout) {
  if (!y || !x || !w) return FL_EINVAL;
  if (B <= 0 || nin <= 0 || nout <= 0) return FL_ESHAPE;
  if (k == FL_DENSE_AUTO)
    k = fl__kernel_ok(FL_DENSE_AVX512) ? FL_DENSE_AVX512
        : fl__kernel_ok(FL_DENSE_AVX2) ? FL_DENSE_AVX2
                                       : FL_DENSE_BLAS;
  else if (!fl__kernel_ok(k))
    return FL_EINVAL;
  if (k == FL_DENSE_BLAS) return fl_dense_forward(y, x, w, b, B, nin, nout);
  if (fl_check_finite(x, (size_t)B * nin)) return FL_ENONFINITE;
#if FL__HAVE_KERNELS
  /* x in chunks that fit in L2, each a pass over W (fl__rows_per_pass). */
  int chunk = fl__rows_per_pass(nin);
  for (int i = 0; i < B; i += chunk) {
    int n = B - i < chunk ? B - i : chunk;
    float *yi = y + (size_t)i * nout;
    const float *xi = x + (size_t)i * nin;
    if (k == FL_DENSE_AVX512) fl__dense512(yi, xi, w, b, n, nin, nout);
    else fl__dense256(yi, xi, w, b, n, nin, nout);
  }
#endif
  return 0;
}

int fl_dense_infer(float *y, const float *x, const float *w, const float *b, int B, int nin,
                   int nout) {
  return fl_dense_infer_with(FL_DENSE_AUTO, y, x, w, b, B, nin, nout);
}

/* ---- 1-D convolutions -------------------------------------------------- */

/* Both convolutions are lowered to one sgemm over the whole batch.  The
 * column matrix has one row per (channel, tap) and one column per
 * (sample, output position):
 *
 *   cols (C * k, B * tout)   cols[c k + j][b tout + t] = x[b][c][t s - p + j d]
 *
 * with zeros where the index falls into the padding.  A single large GEMM
 * runs far closer to sgemm's peak than B small ones would. */

static int fl__conv_check(const fl_conv *c) {
  if (!c) return FL_EINVAL;
  if (c->cin <= 0 || c->cout <= 0 || c->k <= 0 || c->stride <= 0 || c->dil <= 0 ||
      c->pad < 0 || c->out_pad < 0)
    return FL_ESHAPE;
  return 0;
}

int fl_conv1d_len(const fl_conv *c, int tin) {
  int err = fl__conv_check(c);
  if (err) return err;
  if (tin <= 0) return FL_ESHAPE;
  long span = (long)tin + 2L * c->pad - (long)c->dil * (c->k - 1) - 1;
  if (span < 0) return FL_ESHAPE;
  return (int)(span / c->stride + 1);
}

int fl_convt1d_len(const fl_conv *c, int tin) {
  int err = fl__conv_check(c);
  if (err) return err;
  if (tin <= 0) return FL_ESHAPE;
  /* PyTorch's rule: output padding must be smaller than stride or dilation. */
  if (c->out_pad >= c->stride && c->out_pad >= c->dil) return FL_ESHAPE;
  long len = (long)(tin - 1) * c->stride - 2L * c->pad + (long)c->dil * (c->k - 1) +
             c->out_pad + 1;
  if (len <= 0) return FL_ESHAPE;
  return (int)len;
}

/* The output positions t whose tap (at offset off = j d - p) falls inside
 * the input: t s + off in [0, tin).  Hoisting this range out of the inner
 * loops leaves them branch-free, which is most of im2col's cost. */
static void fl__tap_range(int off, int s, int tin, int tout, int *lo, int *hi) {
  int a = off >= 0 ? 0 : (-off + s - 1) / s;
  int b = tin - off <= 0 ? 0 : (tin - off - 1) / s + 1;
  *lo = a < tout ? a : tout;
  *hi = b < tout ? b : tout;
  if (*hi < *lo) *hi = *lo;
}

/* cols (C k, B tout) from x (B, C, tin); see the layout above. */
FL__CLONES static void fl__im2col(float *cols, const float *x, int B, int C, int tin, int k,
                       int s, int p, int d, int tout) {
  size_t ld = (size_t)B * tout;
  for (int c = 0; c < C; c++)
    for (int j = 0; j < k; j++) {
      float *row = cols + (size_t)(c * k + j) * ld;
      int off = j * d - p, lo, hi;
      fl__tap_range(off, s, tin, tout, &lo, &hi);
      for (int b = 0; b < B; b++) {
        const float *xb = x + ((size_t)b * C + c) * tin;
        float *r = row + (size_t)b * tout;
        for (int t = 0; t < lo; t++) r[t] = 0.0f;
        /* A stride the compiler knows is a pair of loads and a shuffle per
         * vector; an unknown one is a scalar gather. */
        if (s == 1) memcpy(r + lo, xb + lo + off, sizeof(float) * (hi - lo));
        else if (s == 2)
          for (int t = lo; t < hi; t++) r[t] = xb[2 * t + off];
        else
          for (int t = lo; t < hi; t++) r[t] = xb[t * s + off];
        for (int t = hi; t < tout; t++) r[t] = 0.0f;
      }
    }
}

/* x (B, C, tin) = sum of cols (C k, B tout) scattered back: the adjoint of
 * fl__im2col.  x is overwritten. */
FL__CLONES static void fl__col2im(float *x, const float *cols, int B, int C, int tin, int k,
                       int s, int p, int d, int tout) {
  size_t ld = (size_t)B * tout;
  memset(x, 0, sizeof(float) * (size_t)B * C * tin);
  for (int c = 0; c < C; c++)
    for (int j = 0; j < k; j++) {
      const float *row = cols + (size_t)(c * k + j) * ld;
      int off = j * d - p, lo, hi;
      fl__tap_range(off, s, tin, tout, &lo, &hi);
      if (s == 2 && d == 1 && j + 1 < k) {
        /* Taps j and j + 1 write the even and the odd samples of one run
         * (or the odd and the even): where both reach, one pass writes
         * consecutive samples instead of two passes every other one.  Each
         * sample still receives its taps in the order of j. */
        const float *row1 = row + ld;
        int lo1, hi1;
        fl__tap_range(off + 1, 2, tin, tout, &lo1, &hi1);
        int a = lo > lo1 ? lo : lo1, e = hi < hi1 ? hi : hi1;
        if (e < a) e = a;
        for (int b = 0; b < B; b++) {
          float *xb = x + ((size_t)b * C + c) * tin;
          const float *r0 = row + (size_t)b * tout, *r1 = row1 + (size_t)b * tout;
          for (int t = lo; t < (a < hi ? a : hi); t++) xb[2 * t + off] += r0[t];
          for (int t = e > lo ? e : lo; t < hi; t++) xb[2 * t + off] += r0[t];
          for (int t = lo1; t < (a < hi1 ? a : hi1); t++) xb[2 * t + off + 1] += r1[t];
          for (int t = e > lo1 ? e : lo1; t < hi1; t++) xb[2 * t + off + 1] += r1[t];
          for (int t = a; t < e; t++) {
            xb[2 * t + off] += r0[t];
            xb[2 * t + off + 1] += r1[t];
          }
        }
        j++;
        continue;
      }
      for (int b = 0; b < B; b++) {
        float *xb = x + ((size_t)b * C + c) * tin;
        const float *r = row + (size_t)b * tout;
        if (s == 2)
          for (int t = lo; t < hi; t++) xb[2 * t + off] += r[t];
        else
          for (int t = lo; t < hi; t++) xb[t * s + off] += r[t];
      }
    }
}

/* (C, B T) <-> (B, C, T): the GEMMs work channel-major over the batch. */
static void fl__to_cbt(float *dst, const float *src, int B, int C, int T) {
  for (int b = 0; b < B; b++)
    for (int c = 0; c < C; c++)
      memcpy(dst + ((size_t)c * B + b) * T, src + ((size_t)b * C + c) * T,
             sizeof(float) * T);
}

FL__CLONES static void fl__to_bct(float *dst, const float *src, const float *bias, int B, int C,
                       int T) {
  for (int b = 0; b < B; b++)
    for (int c = 0; c < C; c++) {
      float *o = dst + ((size_t)b * C + c) * T;
      const float *i = src + ((size_t)c * B + b) * T;
      float bc = bias ? bias[c] : 0.0f;
      for (int t = 0; t < T; t++) o[t] = i[t] + bc;
    }
}

static void fl__bias_grad(float *db, const float *dy, int B, int C, int T) {
  for (int b = 0; b < B; b++)
    for (int c = 0; c < C; c++) {
      const float *g = dy + ((size_t)b * C + c) * T;
      double s = 0.0;
      for (int t = 0; t < T; t++) s += g[t];
      db[c] += (float)s;
    }
}

size_t fl_conv1d_workspace(const fl_conv *c, int B, int tin) {
  int tout = fl_conv1d_len(c, tin);
  if (tout <= 0 || B <= 0) return 0;
  /* The column matrix plus the channel-major output (or output gradient). */
  return (size_t)B * tout * ((size_t)c->cin * c->k + c->cout);
}

size_t fl_convt1d_workspace(const fl_conv *c, int B, int tin) {
  int tout = fl_convt1d_len(c, tin);
  if (tout <= 0 || B <= 0) return 0;
  /* Columns over the output taps plus the channel-major input. */
  return (size_t)B * tin * ((size_t)c->cout * c->k + c->cin);
}

/* Returns work, or a fresh buffer in *owned when the caller passed none. */
static float *fl__work(float *work, size_t n, float **owned) {
  *owned = NULL;
  if (work) return work;
  *owned = malloc(sizeof(float) * (n ? n : 1));
  return *owned;
}

int fl_conv1d_forward(float *y, const float *x, const float *w, const float *b,
                      const fl_conv *c, int B, int tin, float *work) {
  if (!y || !x || !w) return FL_EINVAL;
  int tout = fl_conv1d_len(c, tin);
  if (tout < 0) return tout;
  if (B <= 0) return FL_ESHAPE;
  if (fl_check_finite(x, (size_t)B * c->cin * tin)) return FL_ENONFINITE;
  float *owned, *ws = fl__work(work, fl_conv1d_workspace(c, B, tin), &owned);
  if (!ws) return FL_ENOMEM;
  int K = c->cin * c->k, N = B * tout;
  float *cols = ws;                  // (cin k, B tout)
  float *yc = ws + (size_t)K * N;    // (cout, B tout)
  fl__im2col(cols, x, B, c->cin, tin, c->k, c->stride, c->pad, c->dil, tout);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, c->cout, N, K, 1.0f, w, K,
              cols, N, 0.0f, yc, N);
  fl__to_bct(y, yc, b, B, c->cout, tout);
  free(owned);
  return 0;
}

int fl_conv1d_backward(float *dx, float *dw, float *db, const float *dy,
                       const float *x, const float *w, const fl_conv *c, int B,
                       int tin, float *work) {
  if (!dy || (dw && !x) || (dx && !w)) return FL_EINVAL;
  int tout = fl_conv1d_len(c, tin);
  if (tout < 0) return tout;
  if (B <= 0) return FL_ESHAPE;
  if (db) fl__bias_grad(db, dy, B, c->cout, tout);
  if (!dx && !dw) return 0;
  float *owned, *ws = fl__work(work, fl_conv1d_workspace(c, B, tin), &owned);
  if (!ws) return FL_ENOMEM;
  int K = c->cin * c->k, N = B * tout;
  float *cols = ws;                  // (cin k, B tout)
  float *gc = ws + (size_t)K * N;    // (cout, B tout)
  fl__to_cbt(gc, dy, B, c->cout, tout);
  if (dw) { /* dW (cout, cin k) += dY (cout, N) cols^T (N, cin k) */
    fl__im2col(cols, x, B, c->cin, tin, c->k, c->stride, c->pad, c->dil, tout);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, c->cout, K, N, 1.0f, gc, N,
                cols, N, 1.0f, dw, K);
  }
  if (dx) { /* dcols (cin k, N) = W^T (cin k, cout) dY (cout, N), then scatter */
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, K, N, c->cout, 1.0f, w, K,
                gc, N, 0.0f, cols, N);
    fl__col2im(dx, cols, B, c->cin, tin, c->k, c->stride, c->pad, c->dil, tout);
  }
  free(owned);
  return 0;
}

/* The transposed convolution is the adjoint of a conv1d whose input is this
 * layer's output: its forward pass is that conv's data gradient, and its data
 * gradient is that conv's forward pass.  W (cin, cout, k) is, row-major, the
 * matrix (cin, cout k). */

int fl_convt1d_forward(float *y, const float *x, const float *w, const float *b,
                       const fl_conv *c, int B, int tin, float *work) {
  if (!y || !x || !w) return FL_EINVAL;
  int tout = fl_convt1d_len(c, tin);
  if (tout < 0) return tout;
  if (B <= 0) return FL_ESHAPE;
  if (fl_check_finite(x, (size_t)B * c->cin * tin)) return FL_ENONFINITE;
  float *owned, *ws = fl__work(work, fl_convt1d_workspace(c, B, tin), &owned);
  if (!ws) return FL_ENOMEM;
  int K = c->cout * c->k, N = B * tin;
  float *cols = ws;                  // (cout k, B tin)
  float *xc = ws + (size_t)K * N;    // (cin, B tin)
  fl__to_cbt(xc, x, B, c->cin, tin);
  cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, K, N, c->cin, 1.0f, w, K, xc,
              N, 0.0f, cols, N);
  fl__col2im(y, cols, B, c->cout, tout, c->k, c->stride, c->pad, c->dil, tin);
  if (b)
    for (int i = 0; i < B; i++)
      for (int o = 0; o < c->cout; o++) {
        float *r = y + ((size_t)i * c->cout + o) * tout;
        for (int t = 0; t < tout; t++) r[t] += b[o];
      }
  free(owned);
  return 0;
}

int fl_convt1d_backward(float *dx, float *dw, float *db, const float *dy,
                        const float *x, const float *w, const fl_conv *c, int B,
                        int tin, float *work) {
  if (!dy || (dw && !x) || (dx && !w)) return FL_EINVAL;
  int tout = fl_convt1d_len(c, tin);
  if (tout < 0) return tout;
  if (B <= 0) return FL_ESHAPE;
  if (db) fl__bias_grad(db, dy, B, c->cout, tout);
  if (!dx && !dw) return 0;
  float *owned, *ws = fl__work(work, fl_convt1d_workspace(c, B, tin), &owned);
  if (!ws) return FL_ENOMEM;
  int K = c->cout * c->k, N = B * tin;
  float *cols = ws;                  // (cout k, B tin)
  float *xc = ws + (size_t)K * N;    // (cin, B tin)
  fl__im2col(cols, dy, B, c->cout, tout, c->k, c->stride, c->pad, c->dil, tin);
  if (dw) { /* dW (cin, cout k) += X (cin, N) cols^T (N, cout k) */
    fl__to_cbt(xc, x, B, c->cin, tin);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, c->cin, K, N, 1.0f, xc, N,
                cols, N, 1.0f, dw, K);
  }
  if (dx) { /* dX (cin, N) = W (cin, cout k) cols (cout k, N) */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, c->cin, N, K, 1.0f, w, K,
                cols, N, 0.0f, xc, N);
    fl__to_bct(dx, xc, NULL, B, c->cin, tin);
  }
  free(owned);
  return 0;
}

/* ---- activations ------------------------------------------------------- */

/* LeakyReLU's `x > 0 ? x : alpha x` may only be computed as a vector select
 * if alpha x may be computed where the source does not ask for it, which
 * trapping floating-point math forbids (it could raise an exception the
 * program would not): under the default flags the loop stays scalar, with a
 * branch that mispredicts at every other sign change (9 % of a batch-64
 * forward pass, perf).  No trap is enabled here, so the activations are
 * compiled without that rule; the results are the same bit for bit. */
#if defined(__GNUC__) && !defined(__clang__)
#define FL__NO_TRAP __attribute__((optimize("no-trapping-math")))
#else
#define FL__NO_TRAP
#endif

FL__NO_TRAP FL__CLONES int fl_act_forward(fl_act a, float alpha, float *y, const float *x, size_t n) {
  if (!y || !x) return FL_EINVAL;
  /* The header's rule for forward functions: refuse NaN and Inf rather
   * than pass them on (checked before writing, since y may be x). */
  if (fl_check_finite(x, n)) return FL_ENONFINITE;
  switch (a) {
  case FL_ACT_IDENTITY:
    if (y != x) memmove(y, x, sizeof(float) * n);
    return 0;
  case FL_ACT_RELU:
    for (size_t i = 0; i < n; i++) y[i] = x[i] > 0.0f ? x[i] : 0.0f;
    return 0;
  case FL_ACT_LEAKY_RELU:
    for (size_t i = 0; i < n; i++) y[i] = x[i] > 0.0f ? x[i] : alpha * x[i];
    return 0;
  case FL_ACT_TANH:
    for (size_t i = 0; i < n; i++) y[i] = tanhf(x[i]);
    return 0;
  }
  return FL_EINVAL;
}

FL__NO_TRAP FL__CLONES int fl_act_backward(fl_act a, float alpha, float *dx, const float *dy,
                                const float *x, const float *y, size_t n) {
  if (!dx || !dy) return FL_EINVAL;
  switch (a) {
  case FL_ACT_IDENTITY:
    if (dx != dy) memmove(dx, dy, sizeof(float) * n);
    return 0;
  case FL_ACT_RELU:
    if (!x) return FL_EINVAL;
    for (size_t i = 0; i < n; i++) dx[i] = x[i] > 0.0f ? dy[i] : 0.0f;
    return 0;
  case FL_ACT_LEAKY_RELU:
    if (!x) return FL_EINVAL;
    for (size_t i = 0; i < n; i++) dx[i] = x[i] > 0.0f ? dy[i] : alpha * dy[i];
    return 0;
  case FL_ACT_TANH:
    if (!y) return FL_EINVAL;
    for (size_t i = 0; i < n; i++) dx[i] = dy[i] * (1.0f - y[i] * y[i]);
    return 0;
  }
  return FL_EINVAL;
}

float fl_act_lipschitz(fl_act a, float alpha) {
  if (a == FL_ACT_LEAKY_RELU) return fabsf(alpha) > 1.0f ? fabsf(alpha) : 1.0f;
  return 1.0f;
}

/* ---- losses ------------------------------------------------------------ */

int fl_mse_loss(float *loss, float *dpred, const float *pred,
                const float *target, const float *mask, size_t n) {
  if (!loss || !pred || !target) return FL_EINVAL;
  double sum = 0.0, count = 0.0;
  for (size_t i = 0; i < n; i++) {
    float m = mask ? mask[i] : 1.0f;
    if (m == 0.0f) continue;
    double e = (double)pred[i] - target[i];
    sum += m * e * e;
    count += m;
  }
  if (!isfinite(sum)) return FL_ENONFINITE;
  *loss = count > 0.0 ? (float)(sum / count) : 0.0f;
  if (dpred) {
    float scale = count > 0.0 ? (float)(2.0 / count) : 0.0f;
    for (size_t i = 0; i < n; i++) {
      float m = mask ? mask[i] : 1.0f;
      dpred[i] = m == 0.0f ? 0.0f : scale * m * (pred[i] - target[i]);
    }
  }
  return 0;
}

int fl_l2norm_forward(float *y, float *norms, const float *x, int B, int D) {
  if (!y || !norms || !x) return FL_EINVAL;
  if (B <= 0 || D <= 0) return FL_ESHAPE;
  if (fl_check_finite(x, (size_t)B * D)) return FL_ENONFINITE;
  for (int i = 0; i < B; i++) {
    const float *xi = x + (size_t)i * D;
    double s = 0.0;
    for (int j = 0; j < D; j++) s += (double)xi[j] * xi[j];
    float n = (float)sqrt(s);
    if (n < 1e-12f) n = 1e-12f;
    norms[i] = n;
    for (int j = 0; j < D; j++) y[(size_t)i * D + j] = xi[j] / n;
  }
  return 0;
}

int fl_l2norm_backward(float *dx, const float *dy, const float *y,
                       const float *norms, int B, int D) {
  if (!dx || !dy || !y || !norms) return FL_EINVAL;
  if (B <= 0 || D <= 0) return FL_ESHAPE;
  /* d(x/|x|) = (nin - y y^T) / |x|: the radial part of dy is removed. */
  for (int i = 0; i < B; i++) {
    const float *yi = y + (size_t)i * D, *gi = dy + (size_t)i * D;
    double dot = 0.0;
    for (int j = 0; j < D; j++) dot += (double)yi[j] * gi[j];
    for (int j = 0; j < D; j++)
      dx[(size_t)i * D + j] = (gi[j] - (float)dot * yi[j]) / norms[i];
  }
  return 0;
}

int fl_ntxent_loss(float *loss, float *dz, const float *z, const int *label,
                   int B, int D, float tau, float *work) {
  if (!loss || !z || !label || !(tau > 0.0f)) return FL_EINVAL;
  if (B <= 0 || D <= 0) return FL_ESHAPE;
  if (fl_check_finite(z, (size_t)B * D)) return FL_ENONFINITE;
  float *owned, *S = fl__work(work, (size_t)B * B, &owned); // (B, B)
  if (!S) return FL_ENOMEM;
  /* S = z z^T / tau; row i then becomes the gradient of the loss wrt S[i]. */
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, B, B, D, 1.0f / tau, z, D, z, D,
              0.0f, S, B);
  int anchors = 0;
  for (int i = 0; i < B; i++) {
    if (label[i] < 0) continue;
    for (int j = 0; j < B; j++)
      if (j != i && label[j] == label[i]) { anchors++; break; }
  }
  double total = 0.0;
  for (int i = 0; i < B; i++) {
    float *Si = S + (size_t)i * B;
    int npos = 0;
    if (label[i] >= 0)
      for (int j = 0; j < B; j++) npos += (j != i && label[j] == label[i]);
    if (npos == 0) {
      memset(Si, 0, sizeof(float) * B);
      continue;
    }
    float mx = -INFINITY;
    for (int j = 0; j < B; j++)
      if (j != i && Si[j] > mx) mx = Si[j];
    double se = 0.0;
    for (int j = 0; j < B; j++)
      if (j != i) se += exp((double)Si[j] - mx);
    double lse = mx + log(se), possum = 0.0;
    for (int j = 0; j < B; j++)
      if (j != i && label[j] == label[i]) possum += Si[j];
    total += lse - possum / npos;
    /* dL/dS_ij = (softmax_ij - [j positive] / |P|) / anchors. */
    for (int j = 0; j < B; j++) {
      if (j == i) { Si[j] = 0.0f; continue; }
      double g = exp((double)Si[j] - lse);
      if (label[j] == label[i]) g -= 1.0 / npos;
      Si[j] = (float)(g / anchors);
    }
  }
  *loss = anchors ? (float)(total / anchors) : 0.0f;
  if (dz) /* S = z z^T / tau, so dz = (G + G^T) z / tau. */
  {
    for (int i = 0; i < B; i++)
      for (int j = i + 1; j < B; j++) {
        float s = S[(size_t)i * B + j] + S[(size_t)j * B + i];
        S[(size_t)i * B + j] = S[(size_t)j * B + i] = s;
      }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, B, D, B, 1.0f / tau, S, B, z,
                D, 0.0f, dz, D);
  }
  free(owned);
  return 0;
}

/* ---- optimiser --------------------------------------------------------- */

void fl_adam_init(fl_adam *opt, float lr) {
  opt->lr = lr;
  opt->beta1 = 0.9f;
  opt->beta2 = 0.999f;
  opt->eps = 1e-8f;
  opt->weight_decay = 0.0f;
  opt->t = 0;
}

void fl_adam_tick(fl_adam *opt) { opt->t++; }

int fl_adam_update(const fl_adam *opt, fl_param *p) {
  if (!opt || !p || !p->w || !p->g || !p->m || !p->v || opt->t <= 0) return FL_EINVAL;
  float b1 = opt->beta1, b2 = opt->beta2;
  float c1 = 1.0f - powf(b1, (float)opt->t), c2 = 1.0f - powf(b2, (float)opt->t);
  float decay = 1.0f - opt->lr * opt->weight_decay; /* AdamW, as PyTorch orders it */
  for (size_t i = 0; i < p->n; i++) {
    float g = p->g[i];
    p->m[i] = b1 * p->m[i] + (1.0f - b1) * g;
    p->v[i] = b2 * p->v[i] + (1.0f - b2) * g * g;
    float mhat = p->m[i] / c1, vhat = p->v[i] / c2;
    p->w[i] = p->w[i] * decay - opt->lr * mhat / (sqrtf(vhat) + opt->eps);
  }
  return 0;
}

int fl_clip_grad_norm(fl_param *ps, int count, float max_norm, float *norm_out) {
  if (!ps || count < 0) return FL_EINVAL;
  double s = 0.0;
  for (int k = 0; k < count; k++)
    for (size_t i = 0; i < ps[k].n; i++) s += (double)ps[k].g[i] * ps[k].g[i];
  double norm = sqrt(s);
  if (norm_out) *norm_out = (float)norm;
  if (!isfinite(norm)) return FL_ENONFINITE;
  if (max_norm > 0.0f && norm > max_norm) {
    float scale = (float)(max_norm / norm);
    for (int k = 0; k < count; k++)
      for (size_t i = 0; i < ps[k].n; i++) ps[k].g[i] *= scale;
  }
  return 0;
}

/* ---- spectral norms and Lipschitz projection --------------------------- */

/* A linear operator as a pair of callbacks: apply A (n_in -> n_out) and its
 * adjoint A^T.  Power iteration needs nothing else, so dense and both
 * convolutions share one loop. */
typedef struct {
  int n_in, n_out;
  int (*apply)(const void *op, float *out, const float *in, float *work);
  int (*adjoint)(const void *op, float *out, const float *in, float *work);
  size_t work_floats;
  const float *w;
  const fl_conv *c;
  int tin, nout, nin;
} fl__linop;

/* LAPACK's symmetric tridiagonal eigensolver (OpenBLAS exports it); the
 * trailing length is gfortran's hidden length of the character argument. */
extern void dstev_(const char *jobz, const int *n, double *d, double *e, double *z,
                   const int *ldz, double *work, int *info, size_t jobz_len);

/* Largest eigenvalue of the symmetric tridiagonal T (diagonal a[0..k-1],
 * off-diagonal b[0..k-2]) and the last and all components of its unit
 * eigenvector s.  scratch holds k * k + 4 * k doubles. */
static int fl__tridiag_top(double *theta, double *s, const double *a, const double *b, int k,
                           double *scratch) {
  double *d = scratch, *e = d + k, *z = e + k, *work = z + (size_t)k * k;
  memcpy(d, a, sizeof(double) * k);
  if (k > 1) memcpy(e, b, sizeof(double) * (k - 1));
  int info = 0, ld = k;
  dstev_("V", &k, d, e, z, &ld, work, &info, 1);
  if (info) return FL_ENONFINITE;
  *theta = d[k - 1]; /* ascending order */
  memcpy(s, z + (size_t)(k - 1) * k, sizeof(double) * k);
  return 0;
}

/* Lanczos steps between restarts; the basis is this many vectors of the
 * operator's input size. */
#define FL__KRYLOV 24

/* Lanczos on A^T A from v (warm start), with full reorthogonalisation and
 * explicit restarts from the top Ritz vector every FL__KRYLOV steps.  After
 * step j the top Ritz pair (theta, y) of the tridiagonal T_j has residual
 * ||A^T A y - theta y|| = beta_j |s_j| (s: T_j's eigenvector), so some
 * eigenvalue of A^T A lies in [theta - r, theta + r]; and theta <= sigma_1^2
 * (Cauchy interlacing).  The loop stops when r <= tol * theta, and sigma is
 * sqrt(theta + max(r, tol theta)): an upper-side figure of sigma_1, at most a
 * relative tol / 2 above it once converged, as long as the eigenvalue within
 * r is the largest one, which the
 * Krylov space finds unless the start is orthogonal to its vector (the
 * fixed seeded start, or a warm start from the previous call, is not).
 * Unlike a stopping rule on the change of the estimate between steps, this
 * does not stall on a flat top spectrum (several near-equal singular values,
 * the rule for long convolutions): the Ritz value keeps climbing with the
 * Krylov space.  What the residual cannot see is a cluster the Krylov space
 * has not yet resolved: theta is then below sigma_1^2 by up to the
 * cluster's width.  From a cold start the unit tests hold the estimate
 * within 1e-5 below the norm on such spectra; a warm start that is a
 * singular vector of a value an optimiser step has just pushed another past
 * is the weak case (1.9e-3 below in test_nn's drifting flat top, against
 * 5.1e-3 for the old stopping rule).
 * tol is floored at 1e-6, the resolution of the
 * single-precision operator products.  iters bounds the number of operator
 * products (pairs A, A^T). */
static int fl__power(float *sigma, const fl__linop *op, int iters, float tol, float *v) {
  if (!sigma || iters <= 0) return FL_EINVAL;
  const int n = op->n_in, m = n < FL__KRYLOV ? n : FL__KRYLOV;
  const double eps = tol > 1e-6f ? (double)tol : 1e-6;
  int err = 0;
  float *u = malloc(sizeof(float) * op->n_out);
  float *x = malloc(sizeof(float) * n);
  double *q = malloc(sizeof(double) * (size_t)(m + 1) * n); /* basis, row by row */
  double *w = malloc(sizeof(double) * n);
  double *a = malloc(sizeof(double) * m), *b = malloc(sizeof(double) * m);
  double *s = malloc(sizeof(double) * m), *c = malloc(sizeof(double) * m);
  double *scratch = malloc(sizeof(double) * ((size_t)m * m + 4 * m));
  float *work = op->work_floats ? malloc(sizeof(float) * op->work_floats) : NULL;
  if (!u || !x || !q || !w || !a || !b || !s || !c || !scratch || (op->work_floats && !work)) {
    err = FL_ENOMEM;
    goto done;
  }
  double nv = 0.0;
  if (v) {
    for (int i = 0; i < n; i++) q[i] = v[i];
    for (int i = 0; i < n; i++) nv += q[i] * q[i];
    nv = sqrt(nv);
  }
  if (!(nv > 0.0) || !isfinite(nv)) {
    /* A fixed seed keeps the estimate reproducible from run to run. */
    fl_rng r;
    fl_rng_seed(&r, 0x5eedULL);
    nv = 0.0;
    for (int i = 0; i < n; i++) q[i] = fl_rng_normal(&r), nv += q[i] * q[i];
    nv = sqrt(nv);
  }
  for (int i = 0; i < n; i++) q[i] /= nv;
  double theta = 0.0, res = 0.0;
  int used = 0;
  for (;;) {
    int k = 0, stop = 0;
    while (k < m && used < iters) {
      double *qk = q + (size_t)k * n;
      for (int i = 0; i < n; i++) x[i] = (float)qk[i];
      if ((err = op->apply(op, u, x, work))) goto done;
      if ((err = op->adjoint(op, x, u, work))) goto done;
      used++;
      for (int i = 0; i < n; i++) w[i] = x[i];
      /* Full reorthogonalisation against the basis q_0..q_k, classical
       * Gram-Schmidt twice ("twice is enough"), as matrix-vector products;
       * the first pass's coefficient on q_k is the diagonal entry alpha_k. */
      for (int pass = 0; pass < 2; pass++) {
        cblas_dgemv(CblasRowMajor, CblasNoTrans, k + 1, n, 1.0, q, n, w, 1, 0.0, c, 1);
        cblas_dgemv(CblasRowMajor, CblasTrans, k + 1, n, -1.0, q, n, c, 1, 1.0, w, 1);
        if (pass == 0) a[k] = c[k];
      }
      double beta = 0.0;
      for (int i = 0; i < n; i++) beta += w[i] * w[i];
      beta = sqrt(beta);
      b[k] = beta;
      k++;
      if ((err = fl__tridiag_top(&theta, s, a, b, k, scratch))) goto done;
      res = beta * fabs(s[k - 1]);
      if (!(theta > 0.0)) {
        theta = res = 0.0; /* A^T A q = 0 on a unit vector: A = 0 on the space */
        stop = 1;
        break;
      }
      if (res <= eps * theta || beta <= 1e-12 * theta || k == n) {
        stop = 1;
        break;
      }
      for (int i = 0; i < n; i++) q[(size_t)k * n + i] = w[i] / beta;
    }
    /* The top Ritz vector y = Q_k s: the warm start of the next call and
     * the start of a restart. */
    cblas_dgemv(CblasRowMajor, CblasTrans, k, n, 1.0, q, n, s, 1, 0.0, w, 1);
    double ny = 0.0;
    for (int i = 0; i < n; i++) ny += w[i] * w[i];
    ny = sqrt(ny);
    if (ny > 0.0)
      for (int i = 0; i < n; i++) q[i] = w[i] / ny;
    if (stop || used >= iters || !(ny > 0.0)) break;
  }
  /* theta + eps theta bounds theta + r once converged, and depends on theta
   * alone, which converges quadratically (error ~ r^2 / gap): two
   * implementations agree on it far more closely than on r. */
  *sigma = (float)sqrt(theta + (res > eps * theta ? res : eps * theta));
  if (v)
    for (int i = 0; i < n; i++) v[i] = (float)q[i];
done:
  free(u);
  free(x);
  free(q);
  free(w);
  free(a);
  free(b);
  free(s);
  free(c);
  free(scratch);
  free(work);
  return err;
}

static int fl__dense_apply(const void *p, float *out, const float *in, float *work) {
  const fl__linop *op = p;
  cblas_sgemv(CblasRowMajor, CblasNoTrans, op->nout, op->nin, 1.0f, op->w, op->nin, in, 1,
              0.0f, out, 1);
  return 0;
}
static int fl__dense_adjoint(const void *p, float *out, const float *in, float *work) {
  const fl__linop *op = p;
  cblas_sgemv(CblasRowMajor, CblasTrans, op->nout, op->nin, 1.0f, op->w, op->nin, in, 1, 0.0f,
              out, 1);
  return 0;
}
static int fl__conv_apply(const void *p, float *out, const float *in, float *work) {
  const fl__linop *op = p;
  return fl_conv1d_forward(out, in, op->w, NULL, op->c, 1, op->tin, work);
}
static int fl__conv_adjoint(const void *p, float *out, const float *in, float *work) {
  const fl__linop *op = p;
  return fl_conv1d_backward(out, NULL, NULL, in, NULL, op->w, op->c, 1, op->tin, work);
}
static int fl__convt_apply(const void *p, float *out, const float *in, float *work) {
  const fl__linop *op = p;
  return fl_convt1d_forward(out, in, op->w, NULL, op->c, 1, op->tin, work);
}
static int fl__convt_adjoint(const void *p, float *out, const float *in, float *work) {
  const fl__linop *op = p;
  return fl_convt1d_backward(out, NULL, NULL, in, NULL, op->w, op->c, 1, op->tin, work);
}

int fl_spectral_dense(float *sigma, const float *w, int nout, int nin, int iters,
                      float tol, float *v) {
  if (!w) return FL_EINVAL;
  if (nout <= 0 || nin <= 0) return FL_ESHAPE;
  if (fl_check_finite(w, (size_t)nout * nin)) return FL_ENONFINITE;
  fl__linop op = {.n_in = nin, .n_out = nout, .apply = fl__dense_apply,
                  .adjoint = fl__dense_adjoint, .w = w, .nout = nout, .nin = nin};
  return fl__power(sigma, &op, iters, tol, v);
}

int fl_spectral_conv1d(float *sigma, const float *w, const fl_conv *c, int tin,
                       int iters, float tol, float *v) {
  if (!w) return FL_EINVAL;
  int tout = fl_conv1d_len(c, tin);
  if (tout < 0) return tout;
  if (fl_check_finite(w, (size_t)c->cout * c->cin * c->k)) return FL_ENONFINITE;
  fl__linop op = {.n_in = c->cin * tin, .n_out = c->cout * tout,
                  .apply = fl__conv_apply, .adjoint = fl__conv_adjoint,
                  .work_floats = fl_conv1d_workspace(c, 1, tin), .w = w, .c = c,
                  .tin = tin};
  return fl__power(sigma, &op, iters, tol, v);
}

int fl_spectral_convt1d(float *sigma, const float *w, const fl_conv *c, int tin,
                        int iters, float tol, float *v) {
  if (!w) return FL_EINVAL;
  int tout = fl_convt1d_len(c, tin);
  if (tout < 0) return tout;
  if (fl_check_finite(w, (size_t)c->cout * c->cin * c->k)) return FL_ENONFINITE;
  fl__linop op = {.n_in = c->cin * tin, .n_out = c->cout * tout,
                  .apply = fl__convt_apply, .adjoint = fl__convt_adjoint,
                  .work_floats = fl_convt1d_workspace(c, 1, tin), .w = w, .c = c,
                  .tin = tin};
  return fl__power(sigma, &op, iters, tol, v);
}

float fl_lipschitz_project(float *w, size_t n, float sigma, float target) {
  if (!w || !(target > 0.0f) || !(sigma > target)) return 1.0f;
  float scale = target / sigma;
  for (size_t i = 0; i < n; i++) w[i] *= scale;
  return scale;
}
