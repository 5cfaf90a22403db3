/* Unit tests for the numeric core (lib/nn.c, lib/nn_x86.c) against its contract in
 * faultline/nn.h.
 *
 * The backward passes are checked against central finite differences of the
 * forward passes.  For a layer y = f(x, W, b) and a fixed random dy the test
 * evaluates L = sum(dy * y) in double from the float forward output, perturbs
 * one input, weight or bias element by +-eps in float, and compares
 * (L+ - L-) / (x+ - x-) with the analytic gradient.  The denominator uses the
 * perturbed values as actually stored in float, so the rounding of x +- eps
 * does not count as an error.
 *
 * Tolerance of the gradient checks: |analytic - numeric| <= ATOL + RTOL *
 * |numeric| with RTOL = 1e-2 and ATOL = 3e-3 (eps = 1e-3).  The layers are
 * linear in each argument, so the central difference has no truncation error
 * there; what remains is the float rounding of the forward outputs (about
 * 6e-8 relative on outputs of size ~5, summed over the ~30 outputs one
 * element touches, divided by 2 eps), which is a few 1e-4.  For tanh the
 * truncation error eps^2 f''' / 6 is below 1e-6.  An indexing or sign bug
 * produces errors of order 1, so these tolerances cannot hide one.  The
 * losses state their own steps and tolerances below (MSE: exact central
 * differences of a quadratic; NT-Xent: differences of the formula itself in
 * double, because the rounding of the float loss divided by a 1e-3 step
 * comes close to the tolerance at small tau).
 *
 * Forward passes are also compared with direct sums computed here in double,
 * because a gradient check alone only proves backward consistent with
 * forward. */
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
#include "faultline/nn.h"

#define FD_EPS 1e-3f
#define GRAD_RTOL 1e-2
#define GRAD_ATOL 3e-3

/* ---- helpers ------------------------------------------------------------ */

/* calloc that never returns NULL for n == 0, so every buffer is a valid
 * pointer, and that fails the test on exhaustion. */
static float *falloc(size_t n) {
  float *p = calloc(n ? n : 1, sizeof(float));
  assert_non_null(p);
  return p;
}

static double *dalloc(size_t n) {
  double *p = calloc(n ? n : 1, sizeof(double));
  assert_non_null(p);
  return p;
}

static void fill_normal(float *x, size_t n, fl_rng *r, float scale) {
  for (size_t i = 0; i < n; i++) x[i] = scale * fl_rng_normal(r);
}

static void fill_const(float *x, size_t n, float v) {
  for (size_t i = 0; i < n; i++) x[i] = v;
}

static double dot_d(const float *a, const float *b, size_t n) {
  double s = 0.0;
  for (size_t i = 0; i < n; i++) s += (double)a[i] * (double)b[i];
  return s;
}

static int is_shape_error(int rc) { return rc == FL_ESHAPE || rc == FL_EINVAL; }

/* Compares an analytic gradient with a numeric one element by element and
 * reports the first element out of tolerance, so a failure names the place. */
static void check_close(const char *what, const float *got, const double *want, size_t n,
                        double rtol, double atol) {
  for (size_t i = 0; i < n; i++) {
    double err = fabs((double)got[i] - want[i]);
    if (!(err <= atol + rtol * fabs(want[i]))) {
      fail_msg("%s[%zu]: got %.7g, want %.7g (|err| %.3g > %.3g)", what, i, (double)got[i],
               want[i], err, atol + rtol * fabs(want[i]));
    }
  }
}

typedef double (*loss_fn)(void *ctx);

/* Central differences of f with respect to every element of p (n floats).
 * p is restored exactly after each element. */
static void fd_grad(double *num, float *p, size_t n, loss_fn f, void *ctx, float eps) {
  for (size_t i = 0; i < n; i++) {
    float orig = p[i];
    p[i] = orig + eps;
    float hi = p[i];
    double lp = f(ctx);
    p[i] = orig - eps;
    float lo = p[i];
    double lm = f(ctx);
    p[i] = orig;
    num[i] = (lp - lm) / ((double)hi - (double)lo);
  }
}

/* ---- direct (double) reference forward passes --------------------------- */

/* y (B, O) = x (B, I) W^T (O, I) + b (O). */
static void ref_dense(double *y, const float *x, const float *w, const float *b, int B, int I,
                      int O) {
  for (int n = 0; n < B; n++)
    for (int o = 0; o < O; o++) {
      double s = b ? b[o] : 0.0;
      for (int i = 0; i < I; i++) s += (double)x[n * I + i] * w[o * I + i];
      y[n * O + o] = s;
    }
}

/* y (B, cout, tout) from x (B, cin, tin), W (cout, cin, k): output t reads
 * input t*stride - pad + j*dil, outside [0, tin) is zero padding. */
static void ref_conv1d(double *y, const float *x, const float *w, const float *b, const fl_conv *c,
                       int B, int tin, int tout) {
  for (int n = 0; n < B; n++)
    for (int co = 0; co < c->cout; co++)
      for (int t = 0; t < tout; t++) {
        double s = b ? b[co] : 0.0;
        for (int ci = 0; ci < c->cin; ci++)
          for (int j = 0; j < c->k; j++) {
            int ti = t * c->stride - c->pad + j * c->dil;
            if (ti < 0 || ti >= tin) continue;
            s += (double)x[((size_t)n * c->cin + ci) * tin + ti] *
                 w[((size_t)co * c->cin + ci) * c->k + j];
          }
        y[((size_t)n * c->cout + co) * tout + t] = s;
      }
}

/* y (B, cout, tout) from x (B, cin, tin), W (cin, cout, k): input t scatters
 * to output t*stride - pad + j*dil, the adjoint of ref_conv1d. */
static void ref_convt1d(double *y, const float *x, const float *w, const float *b,
                        const fl_conv *c, int B, int tin, int tout) {
  for (int n = 0; n < B; n++)
    for (int co = 0; co < c->cout; co++)
      for (int t = 0; t < tout; t++) y[((size_t)n * c->cout + co) * tout + t] = b ? b[co] : 0.0;
  for (int n = 0; n < B; n++)
    for (int ci = 0; ci < c->cin; ci++)
      for (int t = 0; t < tin; t++)
        for (int co = 0; co < c->cout; co++)
          for (int j = 0; j < c->k; j++) {
            int to = t * c->stride - c->pad + j * c->dil;
            if (to < 0 || to >= tout) continue;
            y[((size_t)n * c->cout + co) * tout + to] +=
                (double)x[((size_t)n * c->cin + ci) * tin + t] *
                w[((size_t)ci * c->cout + co) * c->k + j];
          }
}

/* ---- layers under test, behind one interface for the gradient checks ---- */

enum { L_DENSE, L_CONV, L_CONVT };

typedef struct {
  int kind;
  fl_conv c;
  int B, tin, tout; /* conv lengths */
  int I, O;         /* dense sizes */
  float *x, *w, *b, *y, *dy;
  size_t nx, nw, nb, ny;
} layer;

static void layer_init(layer *L, int kind, const fl_conv *c, int B, int tin, int I, int O,
                       uint64_t seed) {
  memset(L, 0, sizeof(*L));
  L->kind = kind;
  L->B = B;
  if (kind == L_DENSE) {
    L->I = I;
    L->O = O;
    L->nx = (size_t)B * I;
    L->nw = (size_t)O * I;
    L->nb = (size_t)O;
    L->ny = (size_t)B * O;
  } else {
    L->c = *c;
    L->tin = tin;
    L->tout = kind == L_CONV ? fl_conv1d_len(c, tin) : fl_convt1d_len(c, tin);
    assert_true(L->tout > 0);
    L->nx = (size_t)B * c->cin * tin;
    L->nw = (size_t)c->cout * c->cin * c->k;
    L->nb = (size_t)c->cout;
    L->ny = (size_t)B * c->cout * L->tout;
  }
  L->x = falloc(L->nx);
  L->w = falloc(L->nw);
  L->b = falloc(L->nb);
  L->y = falloc(L->ny);
  L->dy = falloc(L->ny);
  fl_rng r;
  fl_rng_seed(&r, seed);
  fill_normal(L->x, L->nx, &r, 1.0f);
  fill_normal(L->w, L->nw, &r, 0.5f);
  fill_normal(L->b, L->nb, &r, 0.5f);
  fill_normal(L->dy, L->ny, &r, 1.0f);
}

static void layer_free(layer *L) {
  free(L->x);
  free(L->w);
  free(L->b);
  free(L->y);
  free(L->dy);
}

static int layer_forward(layer *L) {
  switch (L->kind) {
  case L_DENSE: return fl_dense_forward(L->y, L->x, L->w, L->b, L->B, L->I, L->O);
  case L_CONV: return fl_conv1d_forward(L->y, L->x, L->w, L->b, &L->c, L->B, L->tin, NULL);
  default: return fl_convt1d_forward(L->y, L->x, L->w, L->b, &L->c, L->B, L->tin, NULL);
  }
}

static int layer_backward(layer *L, float *dx, float *dw, float *db) {
  switch (L->kind) {
  case L_DENSE: return fl_dense_backward(dx, dw, db, L->dy, L->x, L->w, L->B, L->I, L->O);
  case L_CONV:
    return fl_conv1d_backward(dx, dw, db, L->dy, L->x, L->w, &L->c, L->B, L->tin, NULL);
  default: return fl_convt1d_backward(dx, dw, db, L->dy, L->x, L->w, &L->c, L->B, L->tin, NULL);
  }
}

static double layer_loss(void *ctx) {
  layer *L = ctx;
  assert_int_equal(layer_forward(L), 0);
  return dot_d(L->dy, L->y, L->ny);
}

/* Checks forward against the direct sum, then dx, dW, db against finite
 * differences, then the accumulate / overwrite / NULL rules of the header. */
static void check_layer(layer *L) {
  /* Forward against the double reference; 1e-5 relative to the output
   * scale covers float accumulation over at most a few hundred terms. */
  double *ref = dalloc(L->ny);
  assert_int_equal(layer_forward(L), 0);
  if (L->kind == L_DENSE)
    ref_dense(ref, L->x, L->w, L->b, L->B, L->I, L->O);
  else if (L->kind == L_CONV)
    ref_conv1d(ref, L->x, L->w, L->b, &L->c, L->B, L->tin, L->tout);
  else
    ref_convt1d(ref, L->x, L->w, L->b, &L->c, L->B, L->tin, L->tout);
  check_close("y", L->y, ref, L->ny, 1e-5, 1e-5);
  free(ref);

  /* dx is pre-filled with a sentinel because backward must overwrite it;
   * dW and db are pre-filled with constants because backward must add. */
  float *dx = falloc(L->nx), *dw = falloc(L->nw), *db = falloc(L->nb);
  fill_const(dx, L->nx, 1e4f);
  fill_const(dw, L->nw, 0.5f);
  fill_const(db, L->nb, -0.25f);
  assert_int_equal(layer_backward(L, dx, dw, db), 0);
  for (size_t i = 0; i < L->nw; i++) dw[i] -= 0.5f;
  for (size_t i = 0; i < L->nb; i++) db[i] += 0.25f;

  double *num = dalloc(L->nx > L->nw ? (L->nx > L->nb ? L->nx : L->nb) : (L->nw > L->nb ? L->nw : L->nb));
  fd_grad(num, L->x, L->nx, layer_loss, L, FD_EPS);
  check_close("dx", dx, num, L->nx, GRAD_RTOL, GRAD_ATOL);
  fd_grad(num, L->w, L->nw, layer_loss, L, FD_EPS);
  check_close("dW", dw, num, L->nw, GRAD_RTOL, GRAD_ATOL);
  fd_grad(num, L->b, L->nb, layer_loss, L, FD_EPS);
  check_close("db", db, num, L->nb, GRAD_RTOL, GRAD_ATOL);
  free(num);

  /* Each gradient alone (the others NULL) must equal the joint result:
   * the model skips dx for a first layer and dW for frozen ones. */
  float *dx1 = falloc(L->nx), *dw1 = falloc(L->nw), *db1 = falloc(L->nb);
  assert_int_equal(layer_backward(L, dx1, NULL, NULL), 0);
  assert_int_equal(layer_backward(L, NULL, dw1, NULL), 0);
  assert_int_equal(layer_backward(L, NULL, NULL, db1), 0);
  double *want = dalloc(L->nx + L->nw + L->nb);
  for (size_t i = 0; i < L->nx; i++) want[i] = dx[i];
  check_close("dx alone", dx1, want, L->nx, 1e-6, 1e-6);
  for (size_t i = 0; i < L->nw; i++) want[i] = dw[i];
  check_close("dW alone", dw1, want, L->nw, 1e-5, 1e-5);
  for (size_t i = 0; i < L->nb; i++) want[i] = db[i];
  check_close("db alone", db1, want, L->nb, 1e-5, 1e-5);
  free(want);
  free(dx1);
  free(dw1);
  free(db1);
  free(dx);
  free(dw);
  free(db);
}

static void check_conv_case(int kind, fl_conv c, int B, int tin, uint64_t seed) {
  layer L;
  layer_init(&L, kind, &c, B, tin, 0, 0, seed);
  check_layer(&L);
  layer_free(&L);
}

/* ---- dense -------------------------------------------------------------- */

static void test_dense_grad(void **state) {
  (void)state;
  layer L;
  layer_init(&L, L_DENSE, NULL, 3, 0, 7, 5, 101); /* x (3, 7), W (5, 7), y (3, 5) */
  check_layer(&L);
  layer_free(&L);
}

static void test_dense_forward_without_bias(void **state) {
  (void)state;
  layer L;
  layer_init(&L, L_DENSE, NULL, 2, 0, 4, 3, 102); /* x (2, 4), W (3, 4), y (2, 3) */
  double ref[6];
  assert_int_equal(fl_dense_forward(L.y, L.x, L.w, NULL, 2, 4, 3), 0);
  ref_dense(ref, L.x, L.w, NULL, 2, 4, 3);
  check_close("y", L.y, ref, 6, 1e-6, 1e-6);
  layer_free(&L);
}

/* ---- dense, forward-only kernels ------------------------------------------ */

/* Each kernel of fl_dense_infer, forced in turn, against the direct sum in
 * double and against sgemm (fl_dense_forward).  Tolerance: a bound on the
 * rounding of a float sum, not a fit to observed errors.  The AVX-512 kernel
 * adds n products in ceil(n / 16) fused steps per lane, then a 4-level
 * tree, then the bias: at most (n / 16 + 6) roundings of relative size
 * u = 2^-24 on partial sums bounded by S = |b| + sum |x w|; AVX2 (8 lanes,
 * 3 levels) and BLAS (any order) likewise with n / 8 and n.  So
 * |y - ref| <= 1.01 (n / lanes + 6) u S, and against sgemm the two bounds
 * added.  A wrong index, tail or reduction lane errs by a whole product,
 * S / n or more, far above this (the largest shape gives 0.3 % of S / n). */
static const struct {
  fl_dense_kernel k;
  const char *name;
  int lanes;
  const char *needs; /* the CPU features it runs on */
} g_kernels[] = {{FL_DENSE_BLAS, "blas", 1, "nothing"},
                 {FL_DENSE_AVX2, "avx2", 8, "AVX2 and FMA"},
                 {FL_DENSE_AVX512, "avx512", 16, "AVX-512F and AVX-512VL"}};
enum { K_BLAS, K_AVX2, K_AVX512, K_COUNT };

/* Skips the calling test, saying why, when this CPU cannot run kernel kk
 * (fl_dense_infer never picks it there). */
static void require_kernel(int kk) {
  if (!fl_dense_kernel_available(g_kernels[kk].k)) {
    print_message("SKIP: the CPU has no %s: the %s kernel cannot run here\n",
                  g_kernels[kk].needs, g_kernels[kk].name);
    skip();
  }
}

/* Checks y (B, O) from kernel kk against the double sum and sgemm. */
static void check_infer(int kk, int B, int I, int O, fl_rng *r, int with_bias) {
  float *x = falloc((size_t)B * I), *w = falloc((size_t)O * I), *b = falloc(O);
  float *y = falloc((size_t)B * O), *ys = falloc((size_t)B * O);
  fill_normal(x, (size_t)B * I, r, 1.0f);
  fill_normal(w, (size_t)O * I, r, 1.0f / sqrtf((float)I));
  fill_normal(b, O, r, 1.0f);
  const float *bb = with_bias ? b : NULL;
  assert_int_equal(fl_dense_infer_with(g_kernels[kk].k, y, x, w, bb, B, I, O), 0);
  assert_int_equal(fl_dense_forward(ys, x, w, bb, B, I, O), 0);
  const double u = ldexp(1.0, -24);
  double tk = 1.01 * ((double)I / g_kernels[kk].lanes + 6) * u, tb = 1.01 * (I + 6) * u;
  for (int n = 0; n < B; n++)
    for (int o = 0; o < O; o++) {
      double s = bb ? bb[o] : 0.0, S = bb ? fabs(bb[o]) : 0.0;
      for (int i = 0; i < I; i++) {
        double p = (double)x[(size_t)n * I + i] * w[(size_t)o * I + i];
        s += p;
        S += fabs(p);
      }
      double got = y[(size_t)n * O + o], sg = ys[(size_t)n * O + o];
      if (!(fabs(got - s) <= tk * S) || !(fabs(got - sg) <= (tk + tb) * S))
        fail_msg("%s B %d nin %d nout %d y[%d][%d]: got %.9g, double %.9g, sgemm %.9g, "
                 "bound %.3g", g_kernels[kk].name, B, I, O, n, o, got, s, sg, tk * S);
    }
  free(x), free(w), free(b), free(y), free(ys);
}

/* Every shape and batch below through kernel kk (skipped where the CPU
 * lacks it). */
static void check_kernel(int kk) {
  require_kernel(kk);
  fl_rng r;
  fl_rng_seed(&r, 801);
  /* Awkward shapes: nin below, at and past the vector widths and not a
   * multiple of them, nout not a multiple of the 4-row tile; every batch
   * 1 .. 67 (all remainders of the 6- and 3-row tiles, and past 64). */
  static const int small[][2] = {{1, 1}, {7, 3}, {8, 4}, {15, 5}, {16, 6}, {17, 9},
                                 {33, 7}, {131, 13}, {250, 2}};
  for (size_t s = 0; s < sizeof small / sizeof *small; s++)
    for (int B = 1; B <= 67; B++)
      check_infer(kk, B, small[s][0], small[s][1], &r, (B + (int)s) % 4 != 0);
  /* The default model's dense shapes at batches around the tiles. */
  static const int model[][2] = {{1920, 256}, {256, 256}, {256, 1920}, {1920, 128},
                                 {128, 32}};
  static const int batches[] = {1, 5, 6, 64, 67};
  for (size_t s = 0; s < sizeof model / sizeof *model; s++)
    for (size_t j = 0; j < sizeof batches / sizeof *batches; j++)
      check_infer(kk, batches[j], model[s][0], model[s][1], &r, 1);
}

static void test_dense_infer_blas(void **state) {
  (void)state;
  check_kernel(K_BLAS);
}

static void test_dense_infer_avx2(void **state) {
  (void)state;
  check_kernel(K_AVX2);
}

static void test_dense_infer_avx512(void **state) {
  (void)state;
  check_kernel(K_AVX512);
}

/* A small dense layer for the tests below: x (DB, DI), W (DO, DI), b (DO),
 * y (DB, DO) and one output row y1 (DO). */
enum { DI = 37, DO = 11, DB = 14 };
typedef struct {
  float *x, *w, *b, *y, *y1;
} dense_case;

static void dense_case_init(dense_case *c, uint64_t seed) {
  fl_rng r;
  fl_rng_seed(&r, seed);
  c->x = falloc((size_t)DB * DI), c->w = falloc((size_t)DO * DI), c->b = falloc(DO);
  c->y = falloc((size_t)DB * DO), c->y1 = falloc(DO);
  fill_normal(c->x, (size_t)DB * DI, &r, 1.0f);
  fill_normal(c->w, (size_t)DO * DI, &r, 0.3f);
  fill_normal(c->b, DO, &r, 1.0f);
}

static void dense_case_free(dense_case *c) {
  free(c->x), free(c->w), free(c->b), free(c->y), free(c->y1);
}

/* The vector kernels sum each output in one order whatever the batch: a row
 * computed in a batch of B equals, bit for bit, the row computed alone.
 * (sgemm gives no such promise, so BLAS is left out.) */
static void check_batch_invariant(int kk) {
  require_kernel(kk);
  dense_case c;
  dense_case_init(&c, 802);
  fl_dense_kernel k = g_kernels[kk].k;
  for (int B = 1; B <= DB; B++) {
    assert_int_equal(fl_dense_infer_with(k, c.y, c.x, c.w, c.b, B, DI, DO), 0);
    for (int n = 0; n < B; n++) {
      assert_int_equal(fl_dense_infer_with(k, c.y1, c.x + (size_t)n * DI, c.w, c.b, 1, DI, DO), 0);
      assert_memory_equal(c.y + (size_t)n * DO, c.y1, sizeof(float) * DO);
    }
  }
  dense_case_free(&c);
}

static void test_dense_infer_batch_invariant_avx2(void **state) {
  (void)state;
  check_batch_invariant(K_AVX2);
}

static void test_dense_infer_batch_invariant_avx512(void **state) {
  (void)state;
  check_batch_invariant(K_AVX512);
}

/* The default picks a kernel the CPU has and refuses what fl_dense_forward
 * refuses; a kernel the CPU lacks is refused when forced. */
static void test_dense_infer_default(void **state) {
  (void)state;
  dense_case c;
  dense_case_init(&c, 803);
  float *x = c.x, *w = c.w, *b = c.b, *y = c.y;
  assert_true(fl_dense_kernel_available(FL_DENSE_AUTO));
  assert_true(fl_dense_kernel_available(FL_DENSE_BLAS));
  for (int kk = 0; kk < K_COUNT; kk++)
    assert_int_equal(fl_dense_infer_with(g_kernels[kk].k, y, x, w, b, DB, DI, DO),
                     fl_dense_kernel_available(g_kernels[kk].k) ? 0 : FL_EINVAL);
  assert_int_equal(fl_dense_infer(y, x, w, b, DB, DI, DO), 0);
  x[5] = NAN;
  assert_int_equal(fl_dense_infer(y, x, w, b, DB, DI, DO), FL_ENONFINITE);
  assert_int_equal(fl_dense_infer(NULL, x, w, b, DB, DI, DO), FL_EINVAL);
  assert_true(is_shape_error(fl_dense_infer(y, x, w, b, 0, DI, DO)));
  assert_true(is_shape_error(fl_dense_infer(y, x, w, b, DB, 0, DO)));
  assert_true(is_shape_error(fl_dense_infer(y, x, w, b, DB, DI, -1)));
  dense_case_free(&c);
}

/* ---- conv1d ------------------------------------------------------------- */

static void test_conv1d_grad_stride1(void **state) {
  (void)state;
  /* x (2, 3, 11) -> y (2, 4, 9) */
  check_conv_case(L_CONV, (fl_conv){.cin = 3, .cout = 4, .k = 3, .stride = 1, .pad = 0, .dil = 1},
                  2, 11, 201);
}

static void test_conv1d_grad_stride2_pad2(void **state) {
  (void)state;
  /* The encoder's layer shape, small: x (2, 3, 13) -> y (2, 2, 7). */
  check_conv_case(L_CONV, (fl_conv){.cin = 3, .cout = 2, .k = 5, .stride = 2, .pad = 2, .dil = 1},
                  2, 13, 202);
}

static void test_conv1d_grad_stride2_even_length(void **state) {
  (void)state;
  /* An even length with stride 2 leaves the last input column unread by
   * some kernel taps: x (3, 2, 12) -> y (3, 3, 6). */
  check_conv_case(L_CONV, (fl_conv){.cin = 2, .cout = 3, .k = 4, .stride = 2, .pad = 1, .dil = 1},
                  3, 12, 203);
}

static void test_conv1d_grad_dilation2(void **state) {
  (void)state;
  /* x (2, 2, 9) -> y (2, 3, 9) */
  check_conv_case(L_CONV, (fl_conv){.cin = 2, .cout = 3, .k = 3, .stride = 1, .pad = 2, .dil = 2},
                  2, 9, 204);
}

static void test_conv1d_grad_stride2_dilation2(void **state) {
  (void)state;
  /* x (2, 3, 15) -> y (2, 2, 7) */
  check_conv_case(L_CONV, (fl_conv){.cin = 3, .cout = 2, .k = 3, .stride = 2, .pad = 1, .dil = 2},
                  2, 15, 205);
}

static void test_conv1d_grad_stride3(void **state) {
  (void)state;
  /* x (1, 2, 17) -> y (1, 2, 5) */
  check_conv_case(L_CONV, (fl_conv){.cin = 2, .cout = 2, .k = 5, .stride = 3, .pad = 1, .dil = 1},
                  1, 17, 206);
}

/* ---- conv-transpose1d --------------------------------------------------- */

static void test_convt1d_grad_stride1(void **state) {
  (void)state;
  /* x (2, 3, 7), W (3, 2, 3) -> y (2, 2, 9) */
  check_conv_case(L_CONVT, (fl_conv){.cin = 3, .cout = 2, .k = 3, .stride = 1, .pad = 0, .dil = 1},
                  2, 7, 301);
}

static void test_convt1d_grad_stride2_pad2_outpad1(void **state) {
  (void)state;
  /* The decoder's layer shape, small: x (2, 3, 7) -> y (2, 2, 14). */
  check_conv_case(L_CONVT,
                  (fl_conv){.cin = 3, .cout = 2, .k = 5, .stride = 2, .pad = 2, .dil = 1, .out_pad = 1},
                  2, 7, 302);
}

static void test_convt1d_grad_stride2_pad1(void **state) {
  (void)state;
  /* x (3, 2, 9) -> y (3, 3, 17) */
  check_conv_case(L_CONVT, (fl_conv){.cin = 2, .cout = 3, .k = 3, .stride = 2, .pad = 1, .dil = 1},
                  3, 9, 303);
}

static void test_convt1d_grad_dilation2(void **state) {
  (void)state;
  /* out_pad 1 < dil 2 is allowed even at stride 1: x (2, 2, 8) -> y (2, 3, 11). */
  check_conv_case(L_CONVT,
                  (fl_conv){.cin = 2, .cout = 3, .k = 3, .stride = 1, .pad = 1, .dil = 2, .out_pad = 1},
                  2, 8, 304);
}

static void test_convt1d_grad_stride3_outpad2(void **state) {
  (void)state;
  /* x (2, 2, 5) -> y (2, 2, 16) */
  check_conv_case(L_CONVT,
                  (fl_conv){.cin = 2, .cout = 2, .k = 4, .stride = 3, .pad = 1, .dil = 1, .out_pad = 2},
                  2, 5, 305);
}

/* conv1d with W (cout, cin, k) and convt1d reading the same array as
 * (cin' = cout, cout' = cin, k) are adjoint operators when the lengths match
 * (out_pad makes up the remainder of the stride).  <A x, u> = <x, A^T u>
 * pins down the index mapping between the two implementations. */
static void test_conv1d_convt1d_adjoint(void **state) {
  (void)state;
  fl_conv c = {.cin = 3, .cout = 4, .k = 5, .stride = 2, .pad = 2, .dil = 1};
  int B = 2, tin = 14;
  int tout = fl_conv1d_len(&c, tin); /* 7 */
  assert_int_equal(tout, 7);
  fl_conv ct = {.cin = 4, .cout = 3, .k = 5, .stride = 2, .pad = 2, .dil = 1, .out_pad = 1};
  assert_int_equal(fl_convt1d_len(&ct, tout), tin);
  fl_rng r;
  fl_rng_seed(&r, 401);
  float *x = falloc((size_t)B * 3 * tin), *u = falloc((size_t)B * 4 * tout);
  float *w = falloc(4 * 3 * 5), *ax = falloc((size_t)B * 4 * tout), *atu = falloc((size_t)B * 3 * tin);
  fill_normal(x, (size_t)B * 3 * tin, &r, 1.0f);
  fill_normal(u, (size_t)B * 4 * tout, &r, 1.0f);
  fill_normal(w, 60, &r, 1.0f);
  assert_int_equal(fl_conv1d_forward(ax, x, w, NULL, &c, B, tin, NULL), 0);
  assert_int_equal(fl_convt1d_forward(atu, u, w, NULL, &ct, B, tout, NULL), 0);
  double lhs = dot_d(ax, u, (size_t)B * 4 * tout);
  double rhs = dot_d(x, atu, (size_t)B * 3 * tin);
  assert_true(fabs(lhs - rhs) <= 1e-4 * (fabs(lhs) + 1.0));
  free(x);
  free(u);
  free(w);
  free(ax);
  free(atu);
}

static void test_conv_len_formulas(void **state) {
  (void)state;
  fl_conv c = {.cin = 1, .cout = 1, .k = 5, .stride = 2, .pad = 2, .dil = 1};
  assert_int_equal(fl_conv1d_len(&c, 60), 30); /* the default encoder */
  assert_int_equal(fl_conv1d_len(&c, 30), 15);
  assert_int_equal(fl_conv1d_len(&c, 31), 16);
  c.out_pad = 1;
  assert_int_equal(fl_convt1d_len(&c, 15), 30); /* the default decoder */
  assert_int_equal(fl_convt1d_len(&c, 30), 60);
  fl_conv d = {.cin = 1, .cout = 1, .k = 3, .stride = 1, .pad = 0, .dil = 2};
  assert_int_equal(fl_conv1d_len(&d, 10), 6);
  assert_int_equal(fl_convt1d_len(&d, 6), 10);
  fl_conv e = {.cin = 1, .cout = 1, .k = 5, .stride = 1, .pad = 1, .dil = 1};
  assert_int_equal(fl_conv1d_len(&e, 3), 1); /* padded length 5 == k */
}

/* A workspace of exactly the advertised size must suffice (ASan builds turn
 * an overrun into a failure) and give the same result as self-allocation. */
static void test_conv_workspace_size_suffices(void **state) {
  (void)state;
  fl_conv c = {.cin = 3, .cout = 4, .k = 5, .stride = 2, .pad = 2, .dil = 1, .out_pad = 1};
  int B = 3, tin = 13;
  fl_rng r;
  fl_rng_seed(&r, 402);
  for (int kind = L_CONV; kind <= L_CONVT; kind++) {
    fl_conv cc = c;
    if (kind == L_CONVT) {
      cc.cin = 4;
      cc.cout = 3;
    }
    int tout = kind == L_CONV ? fl_conv1d_len(&cc, tin) : fl_convt1d_len(&cc, tin);
    assert_true(tout > 0);
    size_t nx = (size_t)B * cc.cin * tin, ny = (size_t)B * cc.cout * tout;
    size_t nw = (size_t)cc.cin * cc.cout * cc.k;
    size_t ws = kind == L_CONV ? fl_conv1d_workspace(&cc, B, tin) : fl_convt1d_workspace(&cc, B, tin);
    float *work = ws ? malloc(ws * sizeof(float)) : NULL;
    float *x = falloc(nx), *w = falloc(nw), *b = falloc((size_t)cc.cout), *dy = falloc(ny);
    float *y0 = falloc(ny), *y1 = falloc(ny);
    float *dx0 = falloc(nx), *dx1 = falloc(nx), *dw0 = falloc(nw), *dw1 = falloc(nw);
    float *db0 = falloc((size_t)cc.cout), *db1 = falloc((size_t)cc.cout);
    fill_normal(x, nx, &r, 1.0f);
    fill_normal(w, nw, &r, 1.0f);
    fill_normal(b, (size_t)cc.cout, &r, 1.0f);
    fill_normal(dy, ny, &r, 1.0f);
    /* A zero-size workspace is passed as a dummy pointer, not NULL, so that
     * the call takes the caller-supplied path. */
    float dummy[1];
    float *wk = ws ? work : dummy;
    if (kind == L_CONV) {
      assert_int_equal(fl_conv1d_forward(y0, x, w, b, &cc, B, tin, NULL), 0);
      assert_int_equal(fl_conv1d_forward(y1, x, w, b, &cc, B, tin, wk), 0);
      assert_int_equal(fl_conv1d_backward(dx0, dw0, db0, dy, x, w, &cc, B, tin, NULL), 0);
      assert_int_equal(fl_conv1d_backward(dx1, dw1, db1, dy, x, w, &cc, B, tin, wk), 0);
    } else {
      assert_int_equal(fl_convt1d_forward(y0, x, w, b, &cc, B, tin, NULL), 0);
      assert_int_equal(fl_convt1d_forward(y1, x, w, b, &cc, B, tin, wk), 0);
      assert_int_equal(fl_convt1d_backward(dx0, dw0, db0, dy, x, w, &cc, B, tin, NULL), 0);
      assert_int_equal(fl_convt1d_backward(dx1, dw1, db1, dy, x, w, &cc, B, tin, wk), 0);
    }
    assert_memory_equal(y0, y1, ny * sizeof(float));
    assert_memory_equal(dx0, dx1, nx * sizeof(float));
    assert_memory_equal(dw0, dw1, nw * sizeof(float));
    assert_memory_equal(db0, db1, (size_t)cc.cout * sizeof(float));
    free(work);
    free(x);
    free(w);
    free(b);
    free(dy);
    free(y0);
    free(y1);
    free(dx0);
    free(dx1);
    free(dw0);
    free(dw1);
    free(db0);
    free(db1);
  }
}

/* ---- activations -------------------------------------------------------- */

typedef struct {
  fl_act a;
  float alpha;
  float *x, *y, *dy;
  size_t n;
} act_case;

static double act_loss(void *ctx) {
  act_case *A = ctx;
  assert_int_equal(fl_act_forward(A->a, A->alpha, A->y, A->x, A->n), 0);
  return dot_d(A->dy, A->y, A->n);
}

static double act_ref(fl_act a, double alpha, double x) {
  switch (a) {
  case FL_ACT_RELU: return x > 0 ? x : 0;
  case FL_ACT_LEAKY_RELU: return x > 0 ? x : alpha * x;
  case FL_ACT_TANH: return tanh(x);
  default: return x;
  }
}

/* Checks forward against libm and backward against finite differences.  The
 * inputs are kept at least 0.05 away from 0 so that no finite difference
 * straddles the kink of relu and leaky relu. */
static void check_act(fl_act a, float alpha, uint64_t seed) {
  enum { N = 64 };
  act_case A = {.a = a, .alpha = alpha, .n = N};
  A.x = falloc(N);
  A.y = falloc(N);
  A.dy = falloc(N);
  fl_rng r;
  fl_rng_seed(&r, seed);
  fill_normal(A.x, N, &r, 1.5f);
  fill_normal(A.dy, N, &r, 1.0f);
  for (int i = 0; i < N; i++)
    if (fabsf(A.x[i]) < 0.05f) A.x[i] = A.x[i] < 0 ? -0.05f - A.x[i] : 0.05f + A.x[i];
  assert_int_equal(fl_act_forward(a, alpha, A.y, A.x, N), 0);
  double ref[N];
  for (int i = 0; i < N; i++) ref[i] = act_ref(a, alpha, A.x[i]);
  check_close("act y", A.y, ref, N, 1e-6, 1e-7);

  float dx[N];
  fill_const(dx, N, 1e4f);
  assert_int_equal(fl_act_backward(a, alpha, dx, A.dy, A.x, A.y, N), 0);
  double num[N];
  fd_grad(num, A.x, N, act_loss, &A, FD_EPS);
  check_close("act dx", dx, num, N, GRAD_RTOL, GRAD_ATOL);
  free(A.x);
  free(A.y);
  free(A.dy);
}

static void test_act_identity_grad(void **state) {
  (void)state;
  check_act(FL_ACT_IDENTITY, 0.0f, 501);
}

static void test_act_relu_grad(void **state) {
  (void)state;
  check_act(FL_ACT_RELU, 0.0f, 502);
}

static void test_act_leaky_relu_grad(void **state) {
  (void)state;
  check_act(FL_ACT_LEAKY_RELU, 0.1f, 503);
}

static void test_act_tanh_grad(void **state) {
  (void)state;
  check_act(FL_ACT_TANH, 0.0f, 504);
}

/* The header allows y == x and dx == dy; the result must equal the
 * out-of-place one for every activation. */
static void test_act_in_place(void **state) {
  (void)state;
  enum { N = 32 };
  fl_rng r;
  fl_rng_seed(&r, 505);
  for (int a = FL_ACT_IDENTITY; a <= FL_ACT_TANH; a++) {
    float x[N], y[N], buf[N], dy[N], dx[N], dbuf[N];
    fill_normal(x, N, &r, 1.0f);
    fill_normal(dy, N, &r, 1.0f);
    memcpy(buf, x, sizeof(x));
    assert_int_equal(fl_act_forward((fl_act)a, 0.1f, y, x, N), 0);
    assert_int_equal(fl_act_forward((fl_act)a, 0.1f, buf, buf, N), 0);
    assert_memory_equal(y, buf, sizeof(y));
    memcpy(dbuf, dy, sizeof(dy));
    assert_int_equal(fl_act_backward((fl_act)a, 0.1f, dx, dy, x, y, N), 0);
    assert_int_equal(fl_act_backward((fl_act)a, 0.1f, dbuf, dbuf, x, y, N), 0);
    assert_memory_equal(dx, dbuf, sizeof(dx));
  }
}

static void test_act_lipschitz(void **state) {
  (void)state;
  assert_float_equal(fl_act_lipschitz(FL_ACT_IDENTITY, 0.0f), 1.0f, 1e-6f);
  assert_float_equal(fl_act_lipschitz(FL_ACT_RELU, 0.0f), 1.0f, 1e-6f);
  assert_float_equal(fl_act_lipschitz(FL_ACT_LEAKY_RELU, 0.1f), 1.0f, 1e-6f);
  assert_float_equal(fl_act_lipschitz(FL_ACT_TANH, 0.0f), 1.0f, 1e-6f);
}

/* ---- MSE ---------------------------------------------------------------- */

/* The loss is quadratic in pred, so the central difference is exact for
 * any step; a large one shrinks the effect of the float rounding of the
 * loss (about 1e-6 here) on the difference quotient. */
#define MSE_EPS 0.05f

typedef struct {
  float *pred, *target, *mask;
  size_t n;
} mse_case;

static double mse_loss_fn(void *ctx) {
  mse_case *M = ctx;
  float loss = -1.0f;
  assert_int_equal(fl_mse_loss(&loss, NULL, M->pred, M->target, M->mask, M->n), 0);
  return loss;
}

static void test_mse_masked_grad_ignores_nan(void **state) {
  (void)state;
  enum { N = 40 };
  float pred[N], target[N], mask[N], dpred[N];
  fl_rng r;
  fl_rng_seed(&r, 601);
  fill_normal(pred, N, &r, 1.0f);
  fill_normal(target, N, &r, 1.0f);
  /* About a third of the entries are masked out and hold NaN in pred,
   * target or both, as missing sensor values do. */
  int counted = 0;
  for (int i = 0; i < N; i++) {
    mask[i] = fl_rng_uniform(&r) < 0.35f ? 0.0f : 1.0f;
    if (mask[i] == 0.0f) {
      if (i % 3 != 1) pred[i] = NAN;
      if (i % 3 != 2) target[i] = NAN;
    } else {
      counted++;
    }
  }
  assert_true(counted > 0 && counted < N);
  double ref = 0.0;
  for (int i = 0; i < N; i++)
    if (mask[i] != 0.0f) ref += ((double)pred[i] - target[i]) * ((double)pred[i] - target[i]);
  ref /= counted;

  float loss = -1.0f;
  fill_const(dpred, N, 1e4f);
  assert_int_equal(fl_mse_loss(&loss, dpred, pred, target, mask, N), 0);
  assert_true(isfinite(loss));
  assert_true(fabs(loss - ref) <= 1e-5 * ref);
  for (int i = 0; i < N; i++)
    if (mask[i] == 0.0f) assert_true(dpred[i] == 0.0f);

  /* Finite differences over the counted entries only: a masked NaN cannot
   * be perturbed into a number. */
  mse_case M = {pred, target, mask, N};
  for (int i = 0; i < N; i++) {
    if (mask[i] == 0.0f) continue;
    double num;
    fd_grad(&num, &pred[i], 1, mse_loss_fn, &M, MSE_EPS);
    check_close("dpred", &dpred[i], &num, 1, GRAD_RTOL, 1e-4);
  }
}

static void test_mse_unmasked_grad(void **state) {
  (void)state;
  enum { N = 24 };
  float pred[N], target[N], dpred[N];
  fl_rng r;
  fl_rng_seed(&r, 602);
  fill_normal(pred, N, &r, 1.0f);
  fill_normal(target, N, &r, 1.0f);
  double ref = 0.0;
  for (int i = 0; i < N; i++) ref += ((double)pred[i] - target[i]) * ((double)pred[i] - target[i]);
  ref /= N;
  float loss;
  assert_int_equal(fl_mse_loss(&loss, dpred, pred, target, NULL, N), 0);
  assert_true(fabs(loss - ref) <= 1e-5 * ref);
  mse_case M = {pred, target, NULL, N};
  double num[N];
  fd_grad(num, pred, N, mse_loss_fn, &M, MSE_EPS);
  check_close("dpred", dpred, num, N, GRAD_RTOL, 1e-4);
}

static void test_mse_empty_mask_is_zero(void **state) {
  (void)state;
  float pred[4] = {NAN, 1.0f, 2.0f, INFINITY}, target[4] = {0.0f, NAN, 5.0f, 1.0f};
  float mask[4] = {0};
  float dpred[4] = {7, 7, 7, 7}, loss = -1.0f;
  assert_int_equal(fl_mse_loss(&loss, dpred, pred, target, mask, 4), 0);
  assert_true(loss == 0.0f);
  for (int i = 0; i < 4; i++) assert_true(dpred[i] == 0.0f);
}

/* ---- l2norm ------------------------------------------------------------- */

typedef struct {
  float *x, *y, *norms, *dy;
  int B, D;
} l2_case;

static double l2_loss(void *ctx) {
  l2_case *C = ctx;
  assert_int_equal(fl_l2norm_forward(C->y, C->norms, C->x, C->B, C->D), 0);
  return dot_d(C->dy, C->y, (size_t)C->B * C->D);
}

static void test_l2norm_grad(void **state) {
  (void)state;
  enum { B = 4, D = 6 };
  float x[B * D], y[B * D], norms[B], dy[B * D], dx[B * D];
  fl_rng r;
  fl_rng_seed(&r, 701);
  fill_normal(x, B * D, &r, 1.0f);
  fill_normal(dy, B * D, &r, 1.0f);
  assert_int_equal(fl_l2norm_forward(y, norms, x, B, D), 0);
  for (int n = 0; n < B; n++) {
    double s = 0.0, u = 0.0;
    for (int d = 0; d < D; d++) s += (double)x[n * D + d] * x[n * D + d];
    for (int d = 0; d < D; d++) u += (double)y[n * D + d] * y[n * D + d];
    assert_true(fabs(norms[n] - sqrt(s)) <= 1e-5 * sqrt(s));
    assert_true(fabs(u - 1.0) <= 1e-5);
  }
  fill_const(dx, B * D, 1e4f);
  assert_int_equal(fl_l2norm_backward(dx, dy, y, norms, B, D), 0);
  l2_case C = {x, y, norms, dy, B, D};
  double num[B * D];
  fd_grad(num, x, B * D, l2_loss, &C, FD_EPS);
  check_close("l2norm dx", dx, num, B * D, GRAD_RTOL, GRAD_ATOL);
}

/* A zero row (an all-zero embedding) must give a finite output and a finite
 * gradient, thanks to the 1e-12 floor on the norm. */
static void test_l2norm_zero_row_is_finite(void **state) {
  (void)state;
  float x[6] = {0, 0, 0, 3, 4, 0}, y[6], norms[2], dy[6] = {1, 1, 1, 1, 1, 1}, dx[6];
  assert_int_equal(fl_l2norm_forward(y, norms, x, 2, 3), 0);
  assert_int_equal(fl_check_finite(y, 6), 0);
  assert_float_equal(y[3], 0.6f, 1e-6f);
  assert_float_equal(y[4], 0.8f, 1e-6f);
  assert_int_equal(fl_l2norm_backward(dx, dy, y, norms, 2, 3), 0);
  assert_int_equal(fl_check_finite(dx, 6), 0);
}

/* ---- NT-Xent ------------------------------------------------------------ */

/* The supervised NT-Xent of the header, in double, over rows of z (B, D). */
static double ntxent_ref(const double *z, const int *label, int B, int D, double tau) {
  double total = 0.0;
  int anchors = 0;
  double *s = dalloc((size_t)B * B); /* (B, B) similarities / tau */
  for (int i = 0; i < B; i++)
    for (int j = 0; j < B; j++) {
      double acc = 0.0;
      for (int d = 0; d < D; d++) acc += z[i * D + d] * z[j * D + d];
      s[i * B + j] = acc / tau;
    }
  for (int i = 0; i < B; i++) {
    if (label[i] < 0) continue;
    int npos = 0;
    for (int j = 0; j < B; j++)
      if (j != i && label[j] == label[i]) npos++;
    if (npos == 0) continue;
    double mx = -INFINITY, se = 0.0, li = 0.0;
    for (int a = 0; a < B; a++)
      if (a != i && s[i * B + a] > mx) mx = s[i * B + a];
    for (int a = 0; a < B; a++)
      if (a != i) se += exp(s[i * B + a] - mx);
    double lse = mx + log(se);
    for (int p = 0; p < B; p++)
      if (p != i && label[p] == label[i]) li -= s[i * B + p] - lse;
    total += li / npos;
    anchors++;
  }
  free(s);
  return anchors ? total / anchors : 0.0;
}

/* The loss as the model computes it, in double: raw embeddings x (B, D),
 * L2-normalised, then NT-Xent. */
static double ntxent_ref_of_x(const double *x, const int *label, int B, int D, double tau) {
  double *z = dalloc((size_t)B * D);
  for (int n = 0; n < B; n++) {
    double nn = 0.0;
    for (int d = 0; d < D; d++) nn += x[n * D + d] * x[n * D + d];
    nn = sqrt(nn);
    for (int d = 0; d < D; d++) z[n * D + d] = x[n * D + d] / nn;
  }
  double l = ntxent_ref(z, label, B, D, tau);
  free(z);
  return l;
}

/* Checks the loss against the formula, then the gradient through the L2
 * normalisation, as the model chains them, against central differences of
 * the double formula (step 1e-4 in double: truncation ~1e-8 / tau^3, no
 * float rounding).  Going through the normalisation makes the check
 * independent of whether fl_ntxent_loss treats z as unit rows or projects
 * its gradient itself.  Tolerance 1e-3 relative plus 1e-4 absolute: the C
 * side is float, with log-sum-exp over values up to 1 / tau. */
static void check_ntxent(const int *label, int B, int D, float tau, uint64_t seed) {
  size_t n = (size_t)B * D;
  float *x = falloc(n), *z = falloc(n), *norms = falloc((size_t)B);
  float *dz = falloc(n), *dx = falloc(n), *work = falloc((size_t)B * B);
  double *num = dalloc(n), *xd = dalloc(n), *zd = dalloc(n);
  fl_rng r;
  fl_rng_seed(&r, seed);
  fill_normal(x, n, &r, 1.0f);
  assert_int_equal(fl_l2norm_forward(z, norms, x, B, D), 0); /* z (B, D) unit rows */

  float loss = -1.0f, loss2 = -1.0f;
  fill_const(dz, n, 1e4f);
  assert_int_equal(fl_ntxent_loss(&loss, dz, z, label, B, D, tau, work), 0);
  for (size_t i = 0; i < n; i++) zd[i] = z[i];
  double ref = ntxent_ref(zd, label, B, D, tau);
  assert_true(ref > 0.0);
  if (!(fabs(loss - ref) <= 1e-5 * ref + 1e-6))
    fail_msg("tau %g: loss %.7g, want %.7g", (double)tau, (double)loss, ref);
  /* A NULL workspace (self-allocated) must give the same loss. */
  assert_int_equal(fl_ntxent_loss(&loss2, NULL, z, label, B, D, tau, NULL), 0);
  assert_true(loss2 == loss);

  assert_int_equal(fl_l2norm_backward(dx, dz, z, norms, B, D), 0);
  for (size_t i = 0; i < n; i++) xd[i] = x[i];
  const double h = 1e-4;
  for (size_t i = 0; i < n; i++) {
    double orig = xd[i];
    xd[i] = orig + h;
    double lp = ntxent_ref_of_x(xd, label, B, D, tau);
    xd[i] = orig - h;
    double lm = ntxent_ref_of_x(xd, label, B, D, tau);
    xd[i] = orig;
    num[i] = (lp - lm) / (2 * h);
  }
  check_close("ntxent dx", dx, num, n, 1e-3, 1e-4);
  free(x);
  free(z);
  free(norms);
  free(dz);
  free(dx);
  free(work);
  free(num);
  free(xd);
  free(zd);
}

static void test_ntxent_clean_anchored_grad(void **state) {
  (void)state;
  /* The design's form: clean windows label 0, faulted ones -1. */
  static const int label[8] = {0, -1, 0, 0, -1, -1, 0, -1};
  check_ntxent(label, 8, 5, 0.5f, 801);
}

static void test_ntxent_two_classes_grad(void **state) {
  (void)state;
  /* Two positive classes, one singleton without positives (skipped as an
   * anchor) and negatives. */
  static const int label[9] = {0, 1, -1, 0, 1, 2, 0, 1, -1};
  check_ntxent(label, 9, 4, 0.5f, 802);
}

static void test_ntxent_temperatures_grad(void **state) {
  (void)state;
  static const int label[8] = {0, 0, -1, 1, -1, 1, 0, -1};
  static const float taus[4] = {0.1f, 0.3f, 1.0f, 2.0f};
  for (int i = 0; i < 4; i++) check_ntxent(label, 8, 6, taus[i], 803 + (uint64_t)i);
}

static void test_ntxent_no_anchor_is_zero(void **state) {
  (void)state;
  enum { B = 4, D = 3 };
  float x[B * D], z[B * D], norms[B], dz[B * D], loss;
  fl_rng r;
  fl_rng_seed(&r, 810);
  fill_normal(x, B * D, &r, 1.0f);
  assert_int_equal(fl_l2norm_forward(z, norms, x, B, D), 0);
  /* All faulted: nobody is an anchor. */
  static const int neg[B] = {-1, -1, -1, -1};
  fill_const(dz, B * D, 7.0f);
  loss = -1.0f;
  assert_int_equal(fl_ntxent_loss(&loss, dz, z, neg, B, D, 0.5f, NULL), 0);
  assert_true(loss == 0.0f);
  for (int i = 0; i < B * D; i++) assert_true(dz[i] == 0.0f);
  /* All distinct: every anchor lacks positives. */
  static const int distinct[B] = {0, 1, 2, 3};
  fill_const(dz, B * D, 7.0f);
  loss = -1.0f;
  assert_int_equal(fl_ntxent_loss(&loss, dz, z, distinct, B, D, 0.5f, NULL), 0);
  assert_true(loss == 0.0f);
  for (int i = 0; i < B * D; i++) assert_true(dz[i] == 0.0f);
}

/* ---- Adam --------------------------------------------------------------- */

static void test_adam_init_defaults(void **state) {
  (void)state;
  fl_adam opt;
  memset(&opt, 0xff, sizeof(opt));
  fl_adam_init(&opt, 3e-4f);
  assert_true(opt.lr == 3e-4f);
  assert_true(opt.beta1 == 0.9f);
  assert_true(opt.beta2 == 0.999f);
  assert_true(opt.eps == 1e-8f);
  assert_true(opt.weight_decay == 0.0f);
  assert_int_equal(opt.t, 0);
  fl_adam_tick(&opt);
  assert_int_equal(opt.t, 1);
}

/* With bias correction, m_hat = g and v_hat = g^2 after the first step, so
 * every weight moves by lr * g / (|g| + eps) ~ lr * sign(g) whatever the
 * gradient's scale.  Without correction it would move by lr * 0.1 / 0.0316. */
static void test_adam_bias_correction_first_step(void **state) {
  (void)state;
  enum { N = 12 };
  float w[N], w0[N], g[N], m[N] = {0}, v[N] = {0};
  fl_rng r;
  fl_rng_seed(&r, 901);
  fill_normal(w, N, &r, 1.0f);
  for (int i = 0; i < N; i++) {
    /* Gradients over five decades, both signs. */
    float mag = powf(10.0f, -2.0f + 4.0f * fl_rng_uniform(&r));
    g[i] = (i % 2 ? -1.0f : 1.0f) * mag;
  }
  memcpy(w0, w, sizeof(w));
  fl_param p = {"w", w, g, m, v, N};
  fl_adam opt;
  fl_adam_init(&opt, 1e-2f);
  fl_adam_tick(&opt);
  assert_int_equal(fl_adam_update(&opt, &p), 0);
  for (int i = 0; i < N; i++) {
    double want = (double)w0[i] - 1e-2 * (g[i] > 0 ? 1.0 : -1.0);
    /* 1e-6 absolute is 1e-4 of the step and a few float ulps of w. */
    if (!(fabs(w[i] - want) <= 1e-6)) fail_msg("w[%d] %.9g, want %.9g", i, (double)w[i], want);
    assert_true(fabs(m[i] - 0.1 * g[i]) <= 1e-6 * fabs(g[i]));
    /* 1e-4 relative, because 1 - 0.999f is 0.000999987 in float. */
    assert_true(fabs(v[i] - 0.001 * (double)g[i] * g[i]) <= 1e-4 * (double)g[i] * g[i]);
  }
}

/* The second step, computed by hand in double from the published algorithm
 * (Kingma and Ba, Algorithm 1). */
static void test_adam_second_step_hand_computed(void **state) {
  (void)state;
  enum { N = 6 };
  float w[N] = {0.5f, -1.0f, 2.0f, 0.0f, 0.25f, -0.75f};
  float g1[N] = {0.1f, -0.2f, 3.0f, 0.5f, -0.05f, 1.0f};
  float g2[N] = {-0.3f, -0.1f, 1.0f, 0.5f, 0.2f, -2.0f};
  float g[N], m[N] = {0}, v[N] = {0};
  double wd[N], md[N] = {0}, vd[N] = {0};
  /* The betas as the float defaults hold them, so that the reference
   * differs from the implementation only by rounding. */
  const double lr = 1e-3, b1 = (double)0.9f, b2 = (double)0.999f, eps = 1e-8;
  for (int i = 0; i < N; i++) wd[i] = w[i];
  fl_param p = {"w", w, g, m, v, N};
  fl_adam opt;
  fl_adam_init(&opt, (float)lr);
  for (int step = 1; step <= 2; step++) {
    const float *gs = step == 1 ? g1 : g2;
    memcpy(g, gs, sizeof(g));
    fl_adam_tick(&opt);
    assert_int_equal(fl_adam_update(&opt, &p), 0);
    for (int i = 0; i < N; i++) {
      md[i] = b1 * md[i] + (1 - b1) * gs[i];
      vd[i] = b2 * vd[i] + (1 - b2) * (double)gs[i] * gs[i];
      double mh = md[i] / (1 - pow(b1, step)), vh = vd[i] / (1 - pow(b2, step));
      wd[i] -= lr * mh / (sqrt(vh) + eps);
    }
  }
  check_close("adam w", w, wd, N, 0, 1e-6);
}

/* AdamW's decay is decoupled: w <- w - lr * wd * w on top of the Adam step,
 * independent of the gradient (PyTorch's AdamW).  With a zero gradient the
 * Adam step is 0, so only the decay is left. */
static void test_adamw_decoupled_decay(void **state) {
  (void)state;
  enum { N = 5 };
  float w[N] = {1.0f, -2.0f, 0.5f, 4.0f, -0.25f}, w0[N], g[N] = {0}, m[N] = {0}, v[N] = {0};
  memcpy(w0, w, sizeof(w));
  fl_param p = {"w", w, g, m, v, N};
  fl_adam opt;
  fl_adam_init(&opt, 0.01f);
  opt.weight_decay = 0.1f;
  fl_adam_tick(&opt);
  assert_int_equal(fl_adam_update(&opt, &p), 0);
  for (int i = 0; i < N; i++) assert_true(fabs(w[i] - w0[i] * (1.0 - 0.01 * 0.1)) <= 1e-6);

  /* With a gradient the two add: -lr*wd*w - lr*sign(g) on the first step. */
  float w2[N], gg[N] = {1.0f, -3.0f, 0.2f, -0.7f, 5.0f}, m2[N] = {0}, v2[N] = {0};
  memcpy(w2, w0, sizeof(w0));
  fl_param p2 = {"w2", w2, gg, m2, v2, N};
  fl_adam opt2;
  fl_adam_init(&opt2, 0.01f);
  opt2.weight_decay = 0.1f;
  fl_adam_tick(&opt2);
  assert_int_equal(fl_adam_update(&opt2, &p2), 0);
  for (int i = 0; i < N; i++) {
    double want = w0[i] - 0.01 * 0.1 * w0[i] - 0.01 * (gg[i] > 0 ? 1.0 : -1.0);
    assert_true(fabs(w2[i] - want) <= 1e-6);
  }

  /* Plain Adam with a zero gradient leaves the weights alone. */
  float w3[N], g3[N] = {0}, m3[N] = {0}, v3[N] = {0};
  memcpy(w3, w0, sizeof(w0));
  fl_param p3 = {"w3", w3, g3, m3, v3, N};
  fl_adam opt3;
  fl_adam_init(&opt3, 0.01f);
  fl_adam_tick(&opt3);
  assert_int_equal(fl_adam_update(&opt3, &p3), 0);
  assert_memory_equal(w3, w0, sizeof(w0));
}

/* ---- gradient clipping -------------------------------------------------- */

static double group_norm(const fl_param *ps, int count) {
  double s = 0.0;
  for (int k = 0; k < count; k++)
    for (size_t i = 0; i < ps[k].n; i++) s += (double)ps[k].g[i] * ps[k].g[i];
  return sqrt(s);
}

static void test_clip_grad_norm_group(void **state) {
  (void)state;
  float g0[5], g1[7], g2[3], c0[5], c1[7], c2[3];
  fl_rng r;
  fl_rng_seed(&r, 1001);
  fill_normal(g0, 5, &r, 1.0f);
  fill_normal(g1, 7, &r, 2.0f);
  fill_normal(g2, 3, &r, 0.5f);
  memcpy(c0, g0, sizeof(g0));
  memcpy(c1, g1, sizeof(g1));
  memcpy(c2, g2, sizeof(g2));
  fl_param ps[3] = {{"a", NULL, g0, NULL, NULL, 5}, {"b", NULL, g1, NULL, NULL, 7},
                    {"c", NULL, g2, NULL, NULL, 3}};
  double before = group_norm(ps, 3);
  float max = (float)(before / 3.0), norm = -1.0f;
  assert_int_equal(fl_clip_grad_norm(ps, 3, max, &norm), 0);
  /* The norm reported is the norm before clipping, over all three blocks. */
  assert_true(fabs(norm - before) <= 1e-5 * before);
  assert_true(fabs(group_norm(ps, 3) - max) <= 1e-5 * max);
  /* Every block is scaled by the same factor, so the direction is kept. */
  double s = max / before;
  for (int i = 0; i < 5; i++) assert_true(fabs(g0[i] - s * c0[i]) <= 1e-6 * (1 + fabs(c0[i])));
  for (int i = 0; i < 7; i++) assert_true(fabs(g1[i] - s * c1[i]) <= 1e-6 * (1 + fabs(c1[i])));
  for (int i = 0; i < 3; i++) assert_true(fabs(g2[i] - s * c2[i]) <= 1e-6 * (1 + fabs(c2[i])));
}

static void test_clip_grad_norm_below_max_is_noop(void **state) {
  (void)state;
  float g0[4] = {0.1f, -0.2f, 0.3f, 0.0f}, g1[2] = {0.05f, 0.4f}, c0[4], c1[2];
  memcpy(c0, g0, sizeof(g0));
  memcpy(c1, g1, sizeof(g1));
  fl_param ps[2] = {{"a", NULL, g0, NULL, NULL, 4}, {"b", NULL, g1, NULL, NULL, 2}};
  float norm = -1.0f;
  assert_int_equal(fl_clip_grad_norm(ps, 2, 10.0f, &norm), 0);
  assert_true(fabs(norm - group_norm(ps, 2)) <= 1e-6);
  assert_memory_equal(g0, c0, sizeof(g0));
  assert_memory_equal(g1, c1, sizeof(g1));
  /* max_norm <= 0 means no limit; a NULL norm_out is allowed. */
  fl_clip_grad_norm(ps, 2, 0.0f, NULL);
  assert_memory_equal(g0, c0, sizeof(g0));
  assert_memory_equal(g1, c1, sizeof(g1));
}

/* ---- spectral norms ----------------------------------------------------- */

/* Fills q (rows, cols), cols <= rows, with orthonormal columns by
 * Gram-Schmidt (twice, for float-safe orthogonality) on normal vectors. */
static void orthonormal_cols(double *q, int rows, int cols, fl_rng *r) {
  for (int j = 0; j < cols; j++) {
    for (int i = 0; i < rows; i++) q[i * cols + j] = fl_rng_normal(r);
    for (int pass = 0; pass < 2; pass++)
      for (int k = 0; k < j; k++) {
        double d = 0.0;
        for (int i = 0; i < rows; i++) d += q[i * cols + j] * q[i * cols + k];
        for (int i = 0; i < rows; i++) q[i * cols + j] -= d * q[i * cols + k];
      }
    double nn = 0.0;
    for (int i = 0; i < rows; i++) nn += q[i * cols + j] * q[i * cols + j];
    nn = sqrt(nn);
    for (int i = 0; i < rows; i++) q[i * cols + j] /= nn;
  }
}

/* W (7, 5) = U diag(s) V^T with known singular values s. */
static void test_spectral_dense_constructed(void **state) {
  (void)state;
  enum { O = 7, I = 5 };
  static const double s[I] = {0.2, 3.0, 1.0, 2.0, 0.5}; /* largest 3.0, gap 1.5x */
  double U[O * I], V[I * I];
  fl_rng r;
  fl_rng_seed(&r, 1101);
  orthonormal_cols(U, O, I, &r);
  orthonormal_cols(V, I, I, &r);
  float w[O * I];
  for (int o = 0; o < O; o++)
    for (int i = 0; i < I; i++) {
      double acc = 0.0;
      for (int k = 0; k < I; k++) acc += U[o * I + k] * s[k] * V[i * I + k];
      w[o * I + i] = (float)acc;
    }
  float sigma = -1.0f, v[I];
  assert_int_equal(fl_spectral_dense(&sigma, w, O, I, 500, 1e-7f, NULL), 0);
  assert_true(fabs(sigma - 3.0) <= 1e-3 * 3.0);

  /* A warm start from a converged vector needs a single iteration. */
  fill_const(v, I, 0.0f);
  v[0] = 1.0f;
  assert_int_equal(fl_spectral_dense(&sigma, w, O, I, 500, 1e-7f, v), 0);
  assert_true(fabs(sigma - 3.0) <= 1e-3 * 3.0);
  sigma = -1.0f;
  assert_int_equal(fl_spectral_dense(&sigma, w, O, I, 1, 1e-7f, v), 0);
  assert_true(fabs(sigma - 3.0) <= 1e-3 * 3.0);
}

/* A rank-one matrix a b^T has the single singular value |a| |b|. */
static void test_spectral_dense_rank_one(void **state) {
  (void)state;
  float a[3] = {1.0f, -2.0f, 2.0f}, b[4] = {0.5f, 0.5f, -0.5f, 0.5f}, w[12];
  for (int o = 0; o < 3; o++)
    for (int i = 0; i < 4; i++) w[o * 4 + i] = a[o] * b[i];
  float sigma;
  assert_int_equal(fl_spectral_dense(&sigma, w, 3, 4, 100, 1e-7f, NULL), 0);
  assert_true(fabs(sigma - 3.0) <= 1e-4 * 3.0);
}

/* Kernel (b, a, b) with pad 1 and stride 1 on a single channel is the
 * symmetric tridiagonal Toeplitz matrix of order n, whose eigenvalues are
 * a + 2 b cos(k pi / (n + 1)), k = 1..n: sigma = a + 2 b cos(pi / (n + 1)).
 * The kernel is symmetric, so the transposed convolution is the same
 * matrix. */
static void test_spectral_conv_tridiagonal(void **state) {
  (void)state;
  const int n = 20;
  float w[3] = {0.5f, 1.0f, 0.5f};
  fl_conv c = {.cin = 1, .cout = 1, .k = 3, .stride = 1, .pad = 1, .dil = 1};
  double want = 1.0 + 2.0 * 0.5 * cos(M_PI / (n + 1));
  float sigma = -1.0f;
  assert_int_equal(fl_spectral_conv1d(&sigma, w, &c, n, 2000, 1e-8f, NULL), 0);
  if (!(fabs(sigma - want) <= 1e-3 * want)) fail_msg("conv1d sigma %.6g, want %.6g", (double)sigma, want);
  sigma = -1.0f;
  assert_int_equal(fl_spectral_convt1d(&sigma, w, &c, n, 2000, 1e-8f, NULL), 0);
  if (!(fabs(sigma - want) <= 1e-3 * want)) fail_msg("convt1d sigma %.6g, want %.6g", (double)sigma, want);
  /* The operator norm is below the reshaped kernel's sum, 2: the
   * zero padding at the ends matters. */
  assert_true(sigma < 2.0f * 0.999f);
}

/* A kernel of size 1 is the channel-mixing matrix W (cout, cin) applied at
 * every time step, W kron I: its norm is W's. */
static void test_spectral_conv_pointwise_equals_dense(void **state) {
  (void)state;
  float w[3 * 4];
  fl_rng r;
  fl_rng_seed(&r, 1102);
  fill_normal(w, 12, &r, 1.0f);
  fl_conv c = {.cin = 4, .cout = 3, .k = 1, .stride = 1, .pad = 0, .dil = 1};
  float sd, sc;
  assert_int_equal(fl_spectral_dense(&sd, w, 3, 4, 1000, 1e-8f, NULL), 0);
  assert_int_equal(fl_spectral_conv1d(&sc, w, &c, 6, 1000, 1e-8f, NULL), 0);
  assert_true(fabs(sc - sd) <= 1e-3 * sd);
}

/* A convolution and its transpose (same array, cin and cout swapped,
 * out_pad restoring the length) have the same largest singular value. */
static void test_spectral_convt1d_adjoint_of_conv1d(void **state) {
  (void)state;
  float w[2 * 3 * 5];
  fl_rng r;
  fl_rng_seed(&r, 1103);
  fill_normal(w, 30, &r, 1.0f);
  fl_conv c = {.cin = 3, .cout = 2, .k = 5, .stride = 2, .pad = 2, .dil = 1};
  fl_conv ct = {.cin = 2, .cout = 3, .k = 5, .stride = 2, .pad = 2, .dil = 1, .out_pad = 1};
  int tin = 14, tout = fl_conv1d_len(&c, tin);
  assert_int_equal(fl_convt1d_len(&ct, tout), tin);
  float s1, s2;
  assert_int_equal(fl_spectral_conv1d(&s1, w, &c, tin, 2000, 1e-8f, NULL), 0);
  assert_int_equal(fl_spectral_convt1d(&s2, w, &ct, tout, 2000, 1e-8f, NULL), 0);
  if (!(fabs(s1 - s2) <= 1e-3 * s1)) fail_msg("conv %.6g vs convt %.6g", (double)s1, (double)s2);
}

/* Zero weights have norm 0; power iteration must say so rather than divide
 * 0 by 0. */
static void test_spectral_zero_weights_is_zero(void **state) {
  (void)state;
  float w[2 * 3 * 3] = {0}, sigma = -1.0f;
  assert_int_equal(fl_spectral_dense(&sigma, w, 3, 6, 50, 1e-6f, NULL), 0);
  assert_true(sigma == 0.0f);
  fl_conv c = {.cin = 3, .cout = 2, .k = 3, .stride = 2, .pad = 1, .dil = 1};
  sigma = -1.0f;
  assert_int_equal(fl_spectral_conv1d(&sigma, w, &c, 9, 50, 1e-6f, NULL), 0);
  assert_true(sigma == 0.0f);
}

/* ---- flat top spectra ---------------------------------------------------- */

/* The projection's hard case: after many projected optimiser steps a layer's
 * top singular values sit together near the target.  The estimator is run
 * as fl_model_project runs it (200 operator products, tol 1e-4) and must
 * give an upper-side figure: never below the true norm by more than float
 * rounding (FLAT_BELOW), so that the projected layer ends at most
 * FLAT_BELOW above its target, and not above it by more than FLAT_ABOVE
 * (the projection must not shrink the layer needlessly).  A stopping rule
 * on the change of the estimate between steps fails these: on a flat top
 * it stops while the estimate still climbs. */
#define FLAT_BELOW 1e-5
#define FLAT_ABOVE 1e-3

static void check_flat(const char *what, float est, double truth) {
  double rel = est / truth - 1.0;
  print_message("  %s: estimate %.7g, true %.7g (rel %+.2e)\n", what, (double)est, truth, rel);
  if (!(rel >= -FLAT_BELOW && rel <= FLAT_ABOVE))
    fail_msg("%s: estimate %.7g, true norm %.7g (rel %+.3g outside [-%g, %g])", what,
             (double)est, truth, rel, FLAT_BELOW, FLAT_ABOVE);
  /* The projection it drives: the layer ends at most FLAT_BELOW above. */
  float target = 0.5f * (float)truth;
  double after = truth * (target / est);
  if (!(after <= target * (1.0 + FLAT_BELOW)))
    fail_msg("%s: projected to %g, the layer's norm is %.7g", what, (double)target, after);
}

/* W (n, n) = U diag(s) V^T, U and V random orthogonal. */
static void dense_with_spectrum(float *w, int n, const double *s, uint64_t seed) {
  double *U = malloc(sizeof(double) * n * n), *V = malloc(sizeof(double) * n * n);
  assert_non_null(U);
  assert_non_null(V);
  fl_rng r;
  fl_rng_seed(&r, seed);
  orthonormal_cols(U, n, n, &r);
  orthonormal_cols(V, n, n, &r);
  for (int o = 0; o < n; o++)
    for (int i = 0; i < n; i++) {
      double acc = 0.0;
      for (int k = 0; k < n; k++) acc += U[o * n + k] * s[k] * V[i * n + k];
      w[o * n + i] = (float)acc;
    }
  free(U);
  free(V);
}

/* Several equal top singular values, then a slowly falling shelf (2e-3
 * apart) before the tail. */
static void test_spectral_flat_dense_equal_top(void **state) {
  (void)state;
  enum { N = 64 };
  double s[N];
  for (int k = 0; k < N; k++)
    s[k] = k < 4 ? 2.0 : k < 24 ? 2.0 * (1.0 - 2e-3 * (k - 3)) : 1.5 * pow(0.97, k - 24);
  static float w[N * N];
  dense_with_spectrum(w, N, s, 1301);
  float sigma = -1.0f;
  assert_int_equal(fl_spectral_dense(&sigma, w, N, N, 200, 1e-4f, NULL), 0);
  check_flat("dense, 4 equal on top", sigma, 2.0);
}

/* Nearly equal: sigma_1 / sigma_2 = 1.0001, then the same shelf. */
static void test_spectral_flat_dense_nearly_equal(void **state) {
  (void)state;
  enum { N = 64 };
  double s[N];
  for (int k = 0; k < N; k++)
    s[k] = k == 0 ? 2.0 : k < 24 ? 2.0 / 1.0001 * (1.0 - 1e-3 * (k - 1))
                                 : 1.5 * pow(0.97, k - 24);
  static float w[N * N];
  dense_with_spectrum(w, N, s, 1302);
  float sigma = -1.0f;
  assert_int_equal(fl_spectral_dense(&sigma, w, N, N, 200, 1e-4f, NULL), 0);
  check_flat("dense, s1/s2 = 1.0001", sigma, 2.0);
}

/* Kernel (b, a, b) on each of two channels, no mixing, pad 1, stride 1 on
 * n steps: two copies of the tridiagonal Toeplitz matrix, so every singular
 * value a + 2 b cos(k pi / (n + 1)) appears twice, and neighbours differ by
 * a relative 1e-4 near the top (sigma_1 / sigma_3 = 1.00008 at n = 300). */
static void test_spectral_flat_conv(void **state) {
  (void)state;
  const int n = 300;
  float w[2 * 2 * 3] = {0};
  for (int c = 0; c < 2; c++) {
    w[(c * 2 + c) * 3 + 0] = 0.5f;
    w[(c * 2 + c) * 3 + 1] = 1.0f;
    w[(c * 2 + c) * 3 + 2] = 0.5f;
  }
  fl_conv c = {.cin = 2, .cout = 2, .k = 3, .stride = 1, .pad = 1, .dil = 1};
  double want = 1.0 + cos(M_PI / (n + 1));
  float sigma = -1.0f;
  assert_int_equal(fl_spectral_conv1d(&sigma, w, &c, n, 200, 1e-4f, NULL), 0);
  check_flat("conv1d, pairs 1e-4 apart", sigma, want);
  sigma = -1.0f;
  assert_int_equal(fl_spectral_convt1d(&sigma, w, &c, n, 200, 1e-4f, NULL), 0);
  check_flat("convt1d, pairs 1e-4 apart", sigma, want);
}

/* The training loop's case: a layer is pushed up along its top directions
 * and projected back after every step, its singular vectors turning, the
 * estimate warm-started from the previous step's vector.  W_t = U_t
 * diag(s_t) V_t^T with U_t and V_t turned by random rotations among the top 8
 * singular vectors each step, so the true norm is max(s_t) throughout.  After every
 * projection the layer must be at most its target, to FLAT_DRIFT.  This is
 * the estimator's known limit, not its aim: a warm start that is (nearly) a
 * singular vector of the old top has a small residual although a value the
 * step pushed past it is larger, and Lanczos from it needs many steps to
 * resolve a gap of 1e-3.  Measured largest excess over the 60 steps: 1.9e-3
 * (the old stopping rule on the change of the estimate: 5.1e-3); a warm
 * start of several vectors (block Lanczos) would be the fix. */
#define FLAT_DRIFT 2.5e-3
static void test_spectral_flat_projection_steps(void **state) {
  (void)state;
  enum { N = 48, TOP = 8, STEPS = 60 };
  static double U[N * N], V[N * N], s[N];
  static float w[N * N];
  float v[N] = {0};
  fl_rng r;
  fl_rng_seed(&r, 1304);
  orthonormal_cols(U, N, N, &r);
  orthonormal_cols(V, N, N, &r);
  for (int k = 0; k < N; k++) s[k] = k < TOP ? 1.0 - 1e-3 * k : 0.8 * pow(0.95, k - TOP);
  double worst = 0.0;
  for (int t = 0; t < STEPS; t++) {
    /* The step: the top values grow unevenly, and U turns in their plane. */
    for (int k = 0; k < TOP; k++) s[k] *= 1.0 + 2e-3 * fl_rng_uniform(&r);
    for (int rep = 0; rep < 4; rep++) {
      int a = (int)(fl_rng_uniform(&r) * TOP) % TOP, b = (a + 1 + rep) % TOP;
      double th = 0.05 * (fl_rng_uniform(&r) - 0.5), c = cos(th), sn = sin(th);
      for (int i = 0; i < N; i++) {
        double x = U[i * N + a], y = U[i * N + b];
        U[i * N + a] = c * x - sn * y;
        U[i * N + b] = sn * x + c * y;
        x = V[i * N + a], y = V[i * N + b];
        V[i * N + a] = c * x + sn * y;
        V[i * N + b] = -sn * x + c * y;
      }
    }
    for (int o = 0; o < N; o++)
      for (int i = 0; i < N; i++) {
        double acc = 0.0;
        for (int k = 0; k < N; k++) acc += U[o * N + k] * s[k] * V[i * N + k];
        w[o * N + i] = (float)acc;
      }
    double truth = 0.0;
    for (int k = 0; k < N; k++) truth = s[k] > truth ? s[k] : truth;
    float sigma = -1.0f;
    assert_int_equal(fl_spectral_dense(&sigma, w, N, N, 200, 1e-4f, v), 0);
    float scale = fl_lipschitz_project(w, N * N, sigma, 1.0f);
    for (int k = 0; k < N; k++) s[k] *= scale; /* the projection, exactly */
    double after = truth * scale, over = after - 1.0;
    if (over > worst) worst = over;
    if (!(after <= 1.0 + FLAT_DRIFT))
      fail_msg("step %d: estimate %.7g, true norm %.7g: projected to %.7g > 1 + %g", t,
               (double)sigma, truth, after, FLAT_DRIFT);
  }
  print_message("  %d projected steps: largest norm after projection 1%+.2e\n", STEPS, worst);
}

/* ---- Lipschitz projection ----------------------------------------------- */

static void test_lipschitz_project_dense(void **state) {
  (void)state;
  enum { O = 6, I = 5 };
  float w[O * I], sigma, after;
  fl_rng r;
  fl_rng_seed(&r, 1201);
  fill_normal(w, O * I, &r, 2.0f);
  assert_int_equal(fl_spectral_dense(&sigma, w, O, I, 1000, 1e-7f, NULL), 0);
  assert_true(sigma > 1.0f);
  float scale = fl_lipschitz_project(w, O * I, sigma, 1.0f);
  assert_true(fabs(scale - 1.0 / sigma) <= 1e-5 / sigma);
  assert_int_equal(fl_spectral_dense(&after, w, O, I, 1000, 1e-7f, NULL), 0);
  assert_true(after <= 1.01f);
  assert_true(after >= 0.99f);
}

static void test_lipschitz_project_conv1d(void **state) {
  (void)state;
  fl_conv c = {.cin = 3, .cout = 4, .k = 5, .stride = 2, .pad = 2, .dil = 1};
  float w[4 * 3 * 5], sigma, after;
  fl_rng r;
  fl_rng_seed(&r, 1202);
  fill_normal(w, 60, &r, 1.0f);
  assert_int_equal(fl_spectral_conv1d(&sigma, w, &c, 30, 2000, 1e-7f, NULL), 0);
  assert_true(sigma > 0.9f);
  fl_lipschitz_project(w, 60, sigma, 0.9f);
  assert_int_equal(fl_spectral_conv1d(&after, w, &c, 30, 2000, 1e-7f, NULL), 0);
  assert_true(after <= 0.9f * 1.01f);
}

static void test_lipschitz_project_within_target_is_noop(void **state) {
  (void)state;
  float w[4] = {0.1f, 0.2f, -0.3f, 0.4f}, w0[4];
  memcpy(w0, w, sizeof(w));
  assert_true(fl_lipschitz_project(w, 4, 0.5f, 1.0f) == 1.0f);
  assert_memory_equal(w, w0, sizeof(w));
  assert_true(fl_lipschitz_project(w, 4, 5.0f, 0.0f) == 1.0f); /* no constraint */
  assert_true(fl_lipschitz_project(w, 4, 5.0f, -1.0f) == 1.0f);
  assert_memory_equal(w, w0, sizeof(w));
}

/* ---- bad input ---------------------------------------------------------- */

static void test_conv_len_rejects_impossible_shapes(void **state) {
  (void)state;
  /* Kernel longer than the padded input; with stride 2, C's truncating
   * division would turn (4 - 4 - 1) / 2 + 1 into a bogus length of 1. */
  fl_conv c = {.cin = 1, .cout = 1, .k = 5, .stride = 1, .pad = 0, .dil = 1};
  assert_true(is_shape_error(fl_conv1d_len(&c, 3)));
  c.stride = 2;
  assert_true(is_shape_error(fl_conv1d_len(&c, 3)));
  assert_true(is_shape_error(fl_conv1d_len(&c, 4)));
  /* Dilation makes the kernel span 9. */
  fl_conv d = {.cin = 1, .cout = 1, .k = 5, .stride = 1, .pad = 1, .dil = 2};
  assert_true(is_shape_error(fl_conv1d_len(&d, 6)));
  /* Fields outside their domain. */
  fl_conv base = {.cin = 2, .cout = 2, .k = 3, .stride = 1, .pad = 1, .dil = 1};
  fl_conv bad[] = {base, base, base, base, base, base, base, base};
  bad[0].stride = 0;
  bad[1].stride = -1;
  bad[2].k = 0;
  bad[3].dil = 0;
  bad[4].pad = -1;
  bad[5].cin = 0;
  bad[6].cout = -2;
  bad[7].k = -3;
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    if (!is_shape_error(fl_conv1d_len(&bad[i], 10))) fail_msg("conv1d_len accepted bad[%zu]", i);
    if (!is_shape_error(fl_convt1d_len(&bad[i], 10))) fail_msg("convt1d_len accepted bad[%zu]", i);
  }
  assert_true(is_shape_error(fl_conv1d_len(&base, 0)));
  assert_true(is_shape_error(fl_conv1d_len(&base, -5)));
  assert_true(is_shape_error(fl_convt1d_len(&base, 0)));
  /* out_pad must be below stride or dilation, and not negative. */
  fl_conv t = {.cin = 1, .cout = 1, .k = 3, .stride = 2, .pad = 0, .dil = 1, .out_pad = 2};
  assert_true(is_shape_error(fl_convt1d_len(&t, 5)));
  t.out_pad = -1;
  assert_true(is_shape_error(fl_convt1d_len(&t, 5)));
  /* Padding that eats the whole transposed output. */
  fl_conv p = {.cin = 1, .cout = 1, .k = 2, .stride = 1, .pad = 1, .dil = 1};
  assert_true(is_shape_error(fl_convt1d_len(&p, 1)));
}

/* The layer calls must reject the same shapes, and bad batch sizes, with
 * an error and without touching memory they were not given. */
static void test_conv_calls_reject_bad_shapes(void **state) {
  (void)state;
  float x[64] = {0}, w[64] = {0}, b[8] = {0}, y[64], dx[64], dw[64], db[8], dy[64] = {0};
  fl_conv longk = {.cin = 1, .cout = 1, .k = 5, .stride = 2, .pad = 0, .dil = 1};
  assert_true(is_shape_error(fl_conv1d_forward(y, x, w, b, &longk, 1, 4, NULL)));
  assert_true(is_shape_error(fl_conv1d_backward(dx, dw, db, dy, x, w, &longk, 1, 4, NULL)));
  fl_conv s0 = {.cin = 1, .cout = 1, .k = 3, .stride = 0, .pad = 1, .dil = 1};
  assert_true(is_shape_error(fl_conv1d_forward(y, x, w, b, &s0, 1, 8, NULL)));
  assert_true(is_shape_error(fl_convt1d_forward(y, x, w, b, &s0, 1, 8, NULL)));
  assert_true(is_shape_error(fl_conv1d_backward(dx, dw, db, dy, x, w, &s0, 1, 8, NULL)));
  assert_true(is_shape_error(fl_convt1d_backward(dx, dw, db, dy, x, w, &s0, 1, 8, NULL)));
  fl_conv ok = {.cin = 1, .cout = 1, .k = 3, .stride = 1, .pad = 1, .dil = 1};
  assert_true(is_shape_error(fl_conv1d_forward(y, x, w, b, &ok, -1, 8, NULL)));
  assert_true(is_shape_error(fl_convt1d_forward(y, x, w, b, &ok, -1, 8, NULL)));
  assert_true(is_shape_error(fl_conv1d_forward(y, x, w, b, &ok, 1, 0, NULL)));
  assert_true(is_shape_error(fl_convt1d_forward(y, x, w, b, &ok, 1, -3, NULL)));
  fl_conv op = {.cin = 1, .cout = 1, .k = 3, .stride = 1, .pad = 0, .dil = 1, .out_pad = 1};
  assert_true(is_shape_error(fl_convt1d_forward(y, x, w, b, &op, 1, 8, NULL)));
  assert_true(is_shape_error(fl_convt1d_backward(dx, dw, db, dy, x, w, &op, 1, 8, NULL)));
}

static void test_dense_rejects_bad_sizes(void **state) {
  (void)state;
  float x[16] = {0}, w[16] = {0}, y[16], dx[16], dw[16], db[4], dy[16] = {0};
  assert_true(is_shape_error(fl_dense_forward(y, x, w, NULL, 2, 0, 3)));
  assert_true(is_shape_error(fl_dense_forward(y, x, w, NULL, 2, 3, 0)));
  assert_true(is_shape_error(fl_dense_forward(y, x, w, NULL, -2, 3, 3)));
  assert_true(is_shape_error(fl_dense_forward(y, x, w, NULL, 2, -3, 3)));
  assert_true(is_shape_error(fl_dense_backward(dx, dw, db, dy, x, w, 2, 0, 3)));
  assert_true(is_shape_error(fl_dense_backward(dx, dw, db, dy, x, w, -1, 3, 3)));
}

static void test_spectral_rejects_bad_shapes(void **state) {
  (void)state;
  float w[16] = {1}, sigma;
  assert_true(is_shape_error(fl_spectral_dense(&sigma, w, 0, 4, 10, 1e-6f, NULL)));
  assert_true(is_shape_error(fl_spectral_dense(&sigma, w, 4, -1, 10, 1e-6f, NULL)));
  fl_conv s0 = {.cin = 1, .cout = 1, .k = 3, .stride = 0, .pad = 1, .dil = 1};
  assert_true(is_shape_error(fl_spectral_conv1d(&sigma, w, &s0, 8, 10, 1e-6f, NULL)));
  assert_true(is_shape_error(fl_spectral_convt1d(&sigma, w, &s0, 8, 10, 1e-6f, NULL)));
  fl_conv longk = {.cin = 1, .cout = 1, .k = 5, .stride = 1, .pad = 0, .dil = 1};
  assert_true(is_shape_error(fl_spectral_conv1d(&sigma, w, &longk, 3, 10, 1e-6f, NULL)));
}

static void test_ntxent_rejects_bad_arguments(void **state) {
  (void)state;
  float z[8] = {1, 0, 0, 1, 1, 0, 0, 1}, loss;
  int label[4] = {0, 0, 0, -1};
  assert_int_equal(fl_ntxent_loss(&loss, NULL, z, label, 4, 2, 0.0f, NULL), FL_EINVAL);
  assert_int_equal(fl_ntxent_loss(&loss, NULL, z, label, 4, 2, -0.5f, NULL), FL_EINVAL);
  assert_true(is_shape_error(fl_ntxent_loss(&loss, NULL, z, label, -1, 2, 0.5f, NULL)));
  assert_true(is_shape_error(fl_ntxent_loss(&loss, NULL, z, label, 4, -2, 0.5f, NULL)));
}

/* NULL buffers and an unknown activation are errors, never a crash. */
static void test_null_and_unknown_arguments_rejected(void **state) {
  (void)state;
  float x[8] = {0}, w[8] = {0}, y[8], norms[2], loss;
  int label[2] = {0, 0};
  fl_conv c = {.cin = 1, .cout = 1, .k = 3, .stride = 1, .pad = 1, .dil = 1};
  assert_int_equal(fl_dense_forward(NULL, x, w, NULL, 2, 2, 2), FL_EINVAL);
  assert_int_equal(fl_dense_forward(y, NULL, w, NULL, 2, 2, 2), FL_EINVAL);
  assert_int_equal(fl_dense_forward(y, x, NULL, NULL, 2, 2, 2), FL_EINVAL);
  assert_int_equal(fl_conv1d_forward(y, NULL, w, NULL, &c, 1, 8, NULL), FL_EINVAL);
  assert_int_equal(fl_conv1d_forward(y, x, w, NULL, NULL, 1, 8, NULL), FL_EINVAL);
  assert_int_equal(fl_convt1d_forward(NULL, x, w, NULL, &c, 1, 8, NULL), FL_EINVAL);
  assert_int_equal(fl_act_forward((fl_act)99, 0.1f, y, x, 8), FL_EINVAL);
  assert_int_equal(fl_act_backward((fl_act)99, 0.1f, y, x, x, x, 8), FL_EINVAL);
  assert_int_equal(fl_l2norm_forward(y, NULL, x, 2, 4), FL_EINVAL);
  assert_int_equal(fl_mse_loss(NULL, NULL, x, w, NULL, 8), FL_EINVAL);
  assert_int_equal(fl_ntxent_loss(&loss, NULL, NULL, label, 2, 4, 0.5f, NULL), FL_EINVAL);
  (void)norms;
}

static void test_check_finite(void **state) {
  (void)state;
  float x[5] = {0.0f, -1.0f, 3e38f, -3e38f, 1e-45f};
  assert_int_equal(fl_check_finite(x, 5), 0);
  assert_int_equal(fl_check_finite(x, 0), 0);
  x[4] = NAN;
  assert_int_equal(fl_check_finite(x, 5), FL_ENONFINITE);
  x[4] = 0.0f;
  x[0] = INFINITY;
  assert_int_equal(fl_check_finite(x, 5), FL_ENONFINITE);
  x[0] = -INFINITY;
  assert_int_equal(fl_check_finite(x, 5), FL_ENONFINITE);
}

static void test_forward_rejects_nonfinite_input(void **state) {
  (void)state;
  float x[2 * 3 * 8], w[3 * 3 * 3], b[3], y[2 * 3 * 16], norms[8]; /* x (2, 3, 8) or (6, 8) */
  fl_rng r;
  fl_rng_seed(&r, 1301);
  fill_normal(x, 48, &r, 1.0f);
  fill_normal(w, 27, &r, 1.0f);
  fill_normal(b, 3, &r, 1.0f);
  fl_conv c = {.cin = 3, .cout = 3, .k = 3, .stride = 1, .pad = 1, .dil = 1};
  /* Sanity: the clean input passes, so the errors below come from NaN/Inf. */
  assert_int_equal(fl_dense_forward(y, x, w, b, 6, 8, 3), 0);
  assert_int_equal(fl_conv1d_forward(y, x, w, b, &c, 2, 8, NULL), 0);
  assert_int_equal(fl_convt1d_forward(y, x, w, b, &c, 2, 8, NULL), 0);

  static const float bad[3] = {NAN, INFINITY, -INFINITY};
  for (int k = 0; k < 3; k++) {
    float saved = x[37];
    x[37] = bad[k]; /* in the second batch row, where a first-row-only check misses it */
    assert_int_equal(fl_dense_forward(y, x, w, b, 6, 8, 3), FL_ENONFINITE);
    assert_int_equal(fl_conv1d_forward(y, x, w, b, &c, 2, 8, NULL), FL_ENONFINITE);
    assert_int_equal(fl_convt1d_forward(y, x, w, b, &c, 2, 8, NULL), FL_ENONFINITE);
    for (int a = FL_ACT_IDENTITY; a <= FL_ACT_TANH; a++)
      assert_int_equal(fl_act_forward((fl_act)a, 0.1f, y, x, 48), FL_ENONFINITE);
    assert_int_equal(fl_l2norm_forward(y, norms, x, 6, 8), FL_ENONFINITE);
    x[37] = saved;
  }
}

/* ---- determinism -------------------------------------------------------- */

static void test_rng_same_seed_same_sequence(void **state) {
  (void)state;
  fl_rng a, b;
  fl_rng_seed(&a, 42);
  fl_rng_seed(&b, 42);
  for (int i = 0; i < 1000; i++) assert_true(fl_rng_u64(&a) == fl_rng_u64(&b));
  for (int i = 0; i < 100; i++) {
    assert_true(fl_rng_uniform(&a) == fl_rng_uniform(&b));
    assert_true(fl_rng_normal(&a) == fl_rng_normal(&b));
    assert_true(fl_rng_below(&a, 17) == fl_rng_below(&b, 17));
  }
}

static void test_rng_different_seeds_differ(void **state) {
  (void)state;
  fl_rng a, b;
  fl_rng_seed(&a, 1);
  fl_rng_seed(&b, 2);
  int same = 0;
  for (int i = 0; i < 64; i++) same += fl_rng_u64(&a) == fl_rng_u64(&b);
  assert_int_equal(same, 0);
  /* Seed 0 must not give the all-zero xoshiro state, which is stuck at 0. */
  fl_rng z;
  fl_rng_seed(&z, 0);
  uint64_t any = 0;
  for (int i = 0; i < 4; i++) any |= fl_rng_u64(&z);
  assert_true(any != 0);
}

static void test_rng_ranges_and_moments(void **state) {
  (void)state;
  fl_rng r;
  fl_rng_seed(&r, 7);
  enum { N = 200000 };
  double su = 0, sn = 0, sn2 = 0;
  int hist[10] = {0};
  for (int i = 0; i < N; i++) {
    float u = fl_rng_uniform(&r);
    assert_true(u >= 0.0f && u < 1.0f);
    su += u;
    uint32_t k = fl_rng_below(&r, 10);
    assert_true(k < 10);
    hist[k]++;
    float n = fl_rng_normal(&r);
    assert_true(isfinite(n));
    sn += n;
    sn2 += (double)n * n;
  }
  /* Fixed seed, so these are deterministic; the bounds are ~5 standard
   * errors wide and fail for a biased generator. */
  assert_true(fabs(su / N - 0.5) < 0.005);
  assert_true(fabs(sn / N) < 0.012);
  assert_true(fabs(sn2 / N - 1.0) < 0.02);
  for (int k = 0; k < 10; k++) assert_true(abs(hist[k] - N / 10) < 700);
  assert_int_equal(fl_rng_below(&r, 1), 0);
}

static void test_init_uniform_bounds_and_determinism(void **state) {
  (void)state;
  enum { N = 4096 };
  static float w[N], w2[N];
  fl_rng a, b;
  fl_rng_seed(&a, 9);
  fl_rng_seed(&b, 9);
  fl_init_uniform(w, N, 25, &a);
  fl_init_uniform(w2, N, 25, &b);
  assert_memory_equal(w, w2, sizeof(w));
  float lo = 1, hi = -1;
  for (int i = 0; i < N; i++) {
    assert_true(fabsf(w[i]) <= 0.2f); /* 1 / sqrt(25) */
    if (w[i] < lo) lo = w[i];
    if (w[i] > hi) hi = w[i];
  }
  /* The whole range is used, not a narrower one. */
  assert_true(lo < -0.19f && hi > 0.19f);
}

static void test_conv_forward_is_deterministic(void **state) {
  (void)state;
  fl_conv c = {.cin = 16, .cout = 32, .k = 5, .stride = 2, .pad = 2, .dil = 1};
  int B = 8, tin = 30, tout = fl_conv1d_len(&c, tin);
  size_t nx = (size_t)B * 16 * tin, ny = (size_t)B * 32 * tout;
  float *x = falloc(nx), *w = falloc(32 * 16 * 5), *b = falloc(32);
  float *y0 = falloc(ny), *y1 = falloc(ny), *dw0 = falloc(32 * 16 * 5), *dw1 = falloc(32 * 16 * 5);
  fl_rng r;
  fl_rng_seed(&r, 1401);
  fill_normal(x, nx, &r, 1.0f);
  fill_normal(w, 32 * 16 * 5, &r, 0.2f);
  fill_normal(b, 32, &r, 0.2f);
  assert_int_equal(fl_conv1d_forward(y0, x, w, b, &c, B, tin, NULL), 0);
  assert_int_equal(fl_conv1d_forward(y1, x, w, b, &c, B, tin, NULL), 0);
  assert_memory_equal(y0, y1, ny * sizeof(float));
  assert_int_equal(fl_conv1d_backward(NULL, dw0, NULL, y0, x, w, &c, B, tin, NULL), 0);
  assert_int_equal(fl_conv1d_backward(NULL, dw1, NULL, y0, x, w, &c, B, tin, NULL), 0);
  assert_memory_equal(dw0, dw1, 32 * 16 * 5 * sizeof(float));
  free(x);
  free(w);
  free(b);
  free(y0);
  free(y1);
  free(dw0);
  free(dw1);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_dense_grad),
      cmocka_unit_test(test_dense_forward_without_bias),
      cmocka_unit_test(test_dense_infer_blas),
      cmocka_unit_test(test_dense_infer_avx2),
      cmocka_unit_test(test_dense_infer_avx512),
      cmocka_unit_test(test_dense_infer_batch_invariant_avx2),
      cmocka_unit_test(test_dense_infer_batch_invariant_avx512),
      cmocka_unit_test(test_dense_infer_default),
      cmocka_unit_test(test_conv1d_grad_stride1),
      cmocka_unit_test(test_conv1d_grad_stride2_pad2),
      cmocka_unit_test(test_conv1d_grad_stride2_even_length),
      cmocka_unit_test(test_conv1d_grad_dilation2),
      cmocka_unit_test(test_conv1d_grad_stride2_dilation2),
      cmocka_unit_test(test_conv1d_grad_stride3),
      cmocka_unit_test(test_convt1d_grad_stride1),
      cmocka_unit_test(test_convt1d_grad_stride2_pad2_outpad1),
      cmocka_unit_test(test_convt1d_grad_stride2_pad1),
      cmocka_unit_test(test_convt1d_grad_dilation2),
      cmocka_unit_test(test_convt1d_grad_stride3_outpad2),
      cmocka_unit_test(test_conv1d_convt1d_adjoint),
      cmocka_unit_test(test_conv_len_formulas),
      cmocka_unit_test(test_conv_workspace_size_suffices),
      cmocka_unit_test(test_act_identity_grad),
      cmocka_unit_test(test_act_relu_grad),
      cmocka_unit_test(test_act_leaky_relu_grad),
      cmocka_unit_test(test_act_tanh_grad),
      cmocka_unit_test(test_act_in_place),
      cmocka_unit_test(test_act_lipschitz),
      cmocka_unit_test(test_mse_masked_grad_ignores_nan),
      cmocka_unit_test(test_mse_unmasked_grad),
      cmocka_unit_test(test_mse_empty_mask_is_zero),
      cmocka_unit_test(test_l2norm_grad),
      cmocka_unit_test(test_l2norm_zero_row_is_finite),
      cmocka_unit_test(test_ntxent_clean_anchored_grad),
      cmocka_unit_test(test_ntxent_two_classes_grad),
      cmocka_unit_test(test_ntxent_temperatures_grad),
      cmocka_unit_test(test_ntxent_no_anchor_is_zero),
      cmocka_unit_test(test_adam_init_defaults),
      cmocka_unit_test(test_adam_bias_correction_first_step),
      cmocka_unit_test(test_adam_second_step_hand_computed),
      cmocka_unit_test(test_adamw_decoupled_decay),
      cmocka_unit_test(test_clip_grad_norm_group),
      cmocka_unit_test(test_clip_grad_norm_below_max_is_noop),
      cmocka_unit_test(test_spectral_dense_constructed),
      cmocka_unit_test(test_spectral_dense_rank_one),
      cmocka_unit_test(test_spectral_conv_tridiagonal),
      cmocka_unit_test(test_spectral_conv_pointwise_equals_dense),
      cmocka_unit_test(test_spectral_convt1d_adjoint_of_conv1d),
      cmocka_unit_test(test_spectral_flat_dense_equal_top),
      cmocka_unit_test(test_spectral_flat_dense_nearly_equal),
      cmocka_unit_test(test_spectral_flat_conv),
      cmocka_unit_test(test_spectral_flat_projection_steps),
      cmocka_unit_test(test_spectral_zero_weights_is_zero),
      cmocka_unit_test(test_lipschitz_project_dense),
      cmocka_unit_test(test_lipschitz_project_conv1d),
      cmocka_unit_test(test_lipschitz_project_within_target_is_noop),
      cmocka_unit_test(test_conv_len_rejects_impossible_shapes),
      cmocka_unit_test(test_conv_calls_reject_bad_shapes),
      cmocka_unit_test(test_dense_rejects_bad_sizes),
      cmocka_unit_test(test_spectral_rejects_bad_shapes),
      cmocka_unit_test(test_ntxent_rejects_bad_arguments),
      cmocka_unit_test(test_null_and_unknown_arguments_rejected),
      cmocka_unit_test(test_check_finite),
      cmocka_unit_test(test_forward_rejects_nonfinite_input),
      cmocka_unit_test(test_rng_same_seed_same_sequence),
      cmocka_unit_test(test_rng_different_seeds_differ),
      cmocka_unit_test(test_rng_ranges_and_moments),
      cmocka_unit_test(test_init_uniform_bounds_and_determinism),
      cmocka_unit_test(test_conv_forward_is_deterministic),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
