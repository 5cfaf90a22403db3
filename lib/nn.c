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
 * with; the forward-only context's run on fl_dense_infer's kernels, in
 * nn_x86.c. */

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
