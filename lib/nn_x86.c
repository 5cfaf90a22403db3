/* faultline nn, forward-only dense kernels: fl_dense_infer and the x86
 * kernels it chooses from (AVX-512, AVX2 with FMA), each compiled for its
 * instruction set by target attributes and picked at run time, so the
 * library runs on any x86-64 and on other machines (BLAS only).  See
 * include/faultline/nn.h for the contracts; training's layers are in nn.c. */
#include "faultline/nn.h"

#include <stddef.h>

#include "faultline/error.h"

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

int fl_dense_kernel_available(fl_dense_kernel k) {
#if FL__HAVE_KERNELS
  if (k == FL_DENSE_AVX512)
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl");
  if (k == FL_DENSE_AVX2) return fl__avx2_ok();
#endif
  return k == FL_DENSE_BLAS || k == FL_DENSE_AUTO;
}

int fl_dense_infer_with(fl_dense_kernel k, float *y, const float *x, const float *w,
                        const float *b, int B, int nin, int nout) {
  if (!y || !x || !w) return FL_EINVAL;
  if (B <= 0 || nin <= 0 || nout <= 0) return FL_ESHAPE;
  if (k == FL_DENSE_AUTO)
    k = fl_dense_kernel_available(FL_DENSE_AVX512) ? FL_DENSE_AVX512
        : fl_dense_kernel_available(FL_DENSE_AVX2) ? FL_DENSE_AVX2
                                                   : FL_DENSE_BLAS;
  else if (!fl_dense_kernel_available(k))
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
