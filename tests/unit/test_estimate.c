/* Unit tests for the correction's estimator (lib/estimate.c) against its
 * contract in faultline/estimate.h: the fusion and the variance by age as
 * pure functions, then a fit on a recording where a0 and a1 follow one
 * wandering level and b0 does not, and a fault on a0 that outlasts several
 * windows, estimated window by window from the stream's state.  A small
 * model with random weights serves: its own estimate is poor, so what the
 * test sees is the anchored regression and the fusion. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "faultline/error.h"
#include "faultline/estimate.h"
#include "faultline/model.h"

#define W 16
#define TAIL 4
#define STRIDE 4
#define ROWS 2000
#define CLAMP 10.0f

#include "small_model.h"

/* A deterministic uniform in [-1, 1). */
static float uni(uint32_t *s) {
  *s = *s * 1664525u + 1013904223u;
  return (float)(*s >> 8) / (float)(1u << 23) - 1.0f;
}

/* a0 = L + e0, a1 = L + e1, b0 independent; L a random walk. */
static void recording(float *a, float *b, int rows, uint32_t seed) {
  float L = 0.0f;
  for (int t = 0; t < rows; t++) {
    L += 0.2f * uni(&seed);
    L *= 0.995f;
    a[t] = L + 0.03f * uni(&seed);
    a[rows + t] = L + 0.03f * uni(&seed);
    b[t] = uni(&seed);
  }
}

static void test_fuse(void **state) {
  (void)state;
  float v;
  assert_float_equal(fl_estimate_fuse(1.0f, 2.0f, 3.0f, 2.0f, &v), 2.0f, 1e-6);
  assert_float_equal(v, 1.0f, 1e-6);
  /* The surer estimate dominates. */
  assert_float_equal(fl_estimate_fuse(0.0f, 0.01f, 10.0f, 100.0f, &v), 0.0f, 0.01);
  assert_true(v < 0.01f);
  /* A zero or NaN variance is floored, not divided by. */
  float z = fl_estimate_fuse(1.0f, 0.0f, 2.0f, NAN, &v);
  assert_true(isfinite(z) && isfinite(v) && v > 0.0f);
}

static void test_var_by_age(void **state) {
  (void)state;
  fl_estimator e;
  assert_int_equal(fl_estimator_alloc(&e, 1), 0);
  for (int l = 0; l < FL_ESTIMATE_LAGS; l++) e.v[l] = (float)(l + 1);
  assert_int_equal(fl_estimate_lag(W, 0), 1);
  assert_int_equal(fl_estimate_lag(W, FL_ESTIMATE_LAGS - 1), 4 * W);
  assert_float_equal(fl_estimate_var(&e, W, 0, 1), 1.0f, 1e-6);
  int a = fl_estimate_lag(W, 1), b = fl_estimate_lag(W, 2);
  assert_float_equal(fl_estimate_var(&e, W, 0, (a + b) / 2),
                     2.0f + (float)((a + b) / 2 - a) / (float)(b - a), 1e-5);
  assert_float_equal(fl_estimate_var(&e, W, 0, 100 * W), (float)FL_ESTIMATE_LAGS, 1e-6);
  /* Never shrinking with age. */
  for (int t = 1; t < 5 * W; t++)
    assert_true(fl_estimate_var(&e, W, 0, t + 1) >= fl_estimate_var(&e, W, 0, t));
  fl_estimator_free(&e);
}

/* The small model and an estimator fitted on a recording of ROWS ticks. */
typedef struct {
  fl_model *m;
  float *a, *b;
  float *x[2];
  fl_series s;
  fl_estimator *e;
} fitted;

static void fit(fitted *f) {
  f->m = small_model(0);
  f->a = malloc(sizeof(float) * 2 * ROWS);
  f->b = malloc(sizeof(float) * ROWS);
  recording(f->a, f->b, ROWS, 3);
  f->x[0] = f->a;
  f->x[1] = f->b;
  f->s = (fl_series){.rows = ROWS, .n_mod = 2, .x = f->x};
  f->e = malloc(sizeof *f->e);
  assert_int_equal(fl_estimate_fit(f->m, f->e, &f->s, 1, TAIL, CLAMP, 0.2f), 0);
}

static void fitted_free(fitted *f) {
  fl_estimator_free(f->e);
  free(f->e);
  free(f->a);
  free(f->b);
  fl_model_free(f->m);
}

static void test_fit_learns_the_neighbour(void **state) {
  (void)state;
  fitted f;
  fit(&f);
  fl_estimator *e = f.e;
  assert_true(e->on);
  assert_int_equal(e->nch, 3);
  /* a0 on a1 carries the level; b0 carries nothing. */
  assert_true(e->w[0 * 3 + 1] > 0.8f && e->w[0 * 3 + 1] < 1.05f);
  assert_true(fabsf(e->w[0 * 3 + 2]) < 0.1f);
  for (int c = 0; c < 3; c++) {
    assert_true(e->vm[c] > 0.0f);
    for (int l = 1; l < FL_ESTIMATE_LAGS; l++)
      assert_true(e->v[c * FL_ESTIMATE_LAGS + l] >= e->v[c * FL_ESTIMATE_LAGS + l - 1]);
  }
  /* The anchored regression of a0 is far surer than the random network. */
  assert_true(e->v[0 * FL_ESTIMATE_LAGS + FL_ESTIMATE_LAGS - 1] < 0.1f * e->vm[0]);
  assert_int_equal(fl_estimate_fit(f.m, e, &f.s, 0, TAIL, CLAMP, 0.2f), FL_EINVAL);
  fitted_free(&f);
}

/* Runs the estimate over the stream's windows with stride STRIDE, a0
 * judged faulty from tick F on (its readings there offset by +5), the
 * network's estimate stood in by 0 (the training mean).  Returns the RMSE
 * of the corrected a0 against the truth over the faulty ticks, and checks
 * the uncertainty's contract on every written sample. */
static float run_fault(const fl_estimator *e, int F, int rows, float *max_sigma) {
  fl_model *m = small_model(0);
  float *a = malloc(sizeof(float) * 2 * rows), *b = malloc(sizeof(float) * rows);
  recording(a, b, rows, 11);
  float ra[2 * W], rb[W], ca[2 * W], cb[W], sa[2 * W], sb[W];
  float *raw[] = {ra, rb}, *cor[] = {ca, cb};
  float *sig[] = {sa, sb};
  fl_estimate_state st;
  assert_int_equal(fl_estimate_state_init(&st, 3), 0);
  double se = 0;
  int n = 0;
  *max_sigma = 0.0f;
  for (int end = W; end <= rows; end += STRIDE) {
    int t0 = end - W, from = end == W ? 0 : W - STRIDE;
    unsigned char faulty[3] = {end > F, 0, 0};
    for (int t = 0; t < W; t++) {
      int r = t0 + t;
      ra[t] = a[r] + (r >= F ? 5.0f : 0.0f);
      ra[W + t] = a[rows + r];
      rb[t] = b[r];
      ca[t] = faulty[0] ? 0.0f : ra[t];
      ca[W + t] = ra[W + t];
      cb[t] = rb[t];
    }
    for (int t = 0; t < W; t++) sa[t] = sa[W + t] = sb[t] = -1.0f;
    assert_int_equal(fl_estimate_apply(m, e, &st, TAIL, raw, faulty, 0.0f, from, cor, sig), 0);
    for (int t = 0; t < W; t++) {
      if (t < from) {
        assert_true(sa[t] == -1.0f); /* only the new ticks are written */
        continue;
      }
      assert_true(sa[W + t] == 0.0f && sb[t] == 0.0f);
      assert_true(cb[t] == rb[t] && ca[W + t] == ra[W + t]);
      if (!faulty[0]) {
        assert_true(sa[t] == 0.0f && ca[t] == ra[t]);
        continue;
      }
      if (!e) {
        assert_true(isnan(sa[t]) && ca[t] == 0.0f);
      } else {
        assert_true(sa[t] > 0.0f && isfinite(sa[t]));
        if (sa[t] > *max_sigma) *max_sigma = sa[t];
      }
      if (t0 + t >= F) {
        double d = ca[t] - a[t0 + t];
        se += d * d;
        n++;
      }
    }
  }
  free(a);
  free(b);
  fl_estimate_state_free(&st);
  fl_model_free(m);
  return n ? (float)sqrt(se / n) : NAN;
}

static void test_fault_over_windows(void **state) {
  (void)state;
  fitted f;
  fit(&f);
  /* The fault starts in the newest ticks of a window (judged from the
   * window's tail) and lasts ten windows. */
  int F = 4 * W + 2, rows = F + 10 * W;
  float smax, s0, rmse = run_fault(f.e, F, rows, &smax);
  /* Far better than the training mean (the estimate without an estimator
   * here), and about the neighbour's noise. */
  float rmse_mean = run_fault(NULL, F, rows, &s0);
  assert_true(rmse < 0.25f * rmse_mean);
  assert_true(rmse < 0.2f);
  assert_true(smax < 1.0f);
  fitted_free(&f);
}

/* b0 = f(a0, a1), nonlinear, every tick drawn afresh: nothing of b0's own
 * past helps, only the other channels at the same tick do. */
static void state_recording(float *a, float *b, int rows, uint32_t seed) {
  for (int t = 0; t < rows; t++) {
    float x = uni(&seed), y = uni(&seed);
    a[t] = x;
    a[rows + t] = y;
    b[t] = sinf(3.0f * x) + y * y + 0.02f * uni(&seed);
  }
}

static void test_kernel_recovers_a_function_of_the_others(void **state) {
  (void)state;
  fl_model *m = small_model(0);
  float *a = malloc(sizeof(float) * 2 * ROWS), *b = malloc(sizeof(float) * ROWS);
  float *x[] = {a, b};
  state_recording(a, b, ROWS, 5);
  fl_series s = {.rows = ROWS, .n_mod = 2, .x = x};
  fl_estimator e;
  assert_int_equal(fl_estimate_fit(m, &e, &s, 1, TAIL, CLAMP, 0.2f), 0);
  assert_true(e.on && e.nmem > 100 && e.nmem <= FL_ESTIMATE_MEM);
  for (int c = 0; c < 3; c++) assert_true(e.h[c] > 0.0f && e.va[c] >= 0.0f);
  /* Fresh ticks: the kernel's estimate of b0 from a0 and a1 against the
   * best constant (b0's training mean), in standardised units. */
  const float *mean = fl_model_mean(m), *std = fl_model_std(m);
  enum { N = 500 };
  float *fa = malloc(sizeof(float) * 2 * N), *fb = malloc(sizeof(float) * N);
  double *d2 = malloc(sizeof(double) * e.nmem), se = 0, sc = 0;
  state_recording(fa, fb, N, 99);
  for (int t = 0; t < N; t++) {
    float q[3] = {(fa[t] - mean[0]) / std[0], (fa[N + t] - mean[1]) / std[1], NAN};
    int have = 0;
    float z = fl_estimate_kernel(&e, q, 2, d2, &have), truth = (fb[t] - mean[2]) / std[2];
    assert_true(isfinite(z) && have);
    se += (double)(z - truth) * (z - truth);
    sc += (double)truth * truth;
  }
  double mse = se / N, mse_const = sc / N;
  assert_true(mse < 0.1 * mse_const);
  /* The variance it was fitted with describes its error on new ticks. */
  assert_true(e.va[2] > 0.5 * mse && e.va[2] < 2.0 * mse);
  /* No trusted channel but the target: no estimate. */
  float none[3] = {NAN, NAN, NAN};
  int have = 0;
  assert_true(isnan(fl_estimate_kernel(&e, none, 2, d2, &have)));
  free(d2);
  free(fa);
  free(fb);
  fl_estimator_free(&e);
  free(a);
  free(b);
  fl_model_free(m);
}

/* The same recording through fl_estimate_apply: b0 judged faulty in every
 * window (its readings there wrong by +5), a0 and a1 trusted.  The
 * correction follows the function of the others; without the kernel's
 * memory (a model from before it) it does markedly worse. */
static float run_state_fault(fl_estimator *e, int rows) {
  fl_model *m = small_model(0);
  float *a = malloc(sizeof(float) * 2 * rows), *b = malloc(sizeof(float) * rows);
  state_recording(a, b, rows, 17);
  float ra[2 * W], rb[W], ca[2 * W], cb[W], sb[W], sa[2 * W];
  float *raw[] = {ra, rb}, *cor[] = {ca, cb}, *sig[] = {sa, sb};
  fl_estimate_state st;
  assert_int_equal(fl_estimate_state_init(&st, 3), 0);
  unsigned char faulty[3] = {0, 0, 1};
  double se = 0;
  int n = 0;
  void *scratch = NULL;
  size_t bytes = 0;
  for (int end = W; end <= rows; end += STRIDE) {
    int t0 = end - W, from = end == W ? 0 : W - STRIDE;
    for (int t = 0; t < W; t++) {
      ra[t] = ca[t] = a[t0 + t];
      ra[W + t] = ca[W + t] = a[rows + t0 + t];
      rb[t] = b[t0 + t] + 5.0f;
      cb[t] = 0.0f; /* the network's estimate stood in by the training mean */
    }
    assert_int_equal(fl_estimate_apply(m, e, &st, TAIL, raw, faulty, 0.0f, from, cor, sig), 0);
    /* The scratch sized at the first window serves every later one. */
    if (end == W) {
      scratch = st.scratch;
      bytes = st.scratch_bytes;
    }
    assert_ptr_equal(st.scratch, scratch);
    assert_int_equal(st.scratch_bytes, bytes);
    for (int t = from; t < W; t++) {
      double d = cb[t] - b[t0 + t];
      assert_true(sb[t] > 0.0f && isfinite(sb[t]));
      se += d * d;
      n++;
    }
  }
  fl_estimate_state_free(&st);
  free(a);
  free(b);
  fl_model_free(m);
  return (float)sqrt(se / n);
}

static void test_kernel_in_the_correction(void **state) {
  (void)state;
  fl_model *m = small_model(0);
  float *a = malloc(sizeof(float) * 2 * ROWS), *b = malloc(sizeof(float) * ROWS);
  float *x[] = {a, b};
  state_recording(a, b, ROWS, 5);
  fl_series s = {.rows = ROWS, .n_mod = 2, .x = x};
  fl_estimator e;
  assert_int_equal(fl_estimate_fit(m, &e, &s, 1, TAIL, CLAMP, 0.2f), 0);
  float with = run_state_fault(&e, 40 * W);
  int nmem = e.nmem;
  e.nmem = 0;
  float without = run_state_fault(&e, 40 * W);
  e.nmem = nmem;
  assert_true(with < 0.2f);
  assert_true(with < 0.5f * without);
  fl_estimator_free(&e);
  free(a);
  free(b);
  fl_model_free(m);
}

static void test_bad_arguments(void **state) {
  (void)state;
  fl_model *m = small_model(0);
  float x[2 * W] = {0}, y[W] = {0};
  float *raw[] = {x, y};
  unsigned char faulty[3] = {0};
  fl_estimate_state st;
  assert_int_equal(fl_estimate_state_init(&st, 3), 0);
  assert_int_equal(fl_estimate_apply(m, NULL, &st, TAIL, raw, faulty, 0.0f, W + 1, raw, NULL),
                   FL_EINVAL);
  assert_int_equal(fl_estimate_apply(m, NULL, NULL, TAIL, raw, faulty, 0.0f, 0, raw, NULL),
                   FL_EINVAL);
  assert_int_equal(fl_estimate_apply(m, NULL, &st, TAIL, raw, faulty, 0.0f, 0, raw, NULL), 0);
  fl_estimate_state_free(&st);
  fl_model_free(m);
}

/* A copy owns arrays of its own with the same numbers, the memory too. */
static void test_copy(void **state) {
  (void)state;
  fl_estimator a, b;
  assert_int_equal(fl_estimator_alloc(&a, 3), 0);
  assert_int_equal(fl_estimator_alloc_memory(&a, 5), 0);
  a.on = 1;
  for (int i = 0; i < 9; i++) a.w[i] = (float)i;
  for (int i = 0; i < 3 * FL_ESTIMATE_LAGS; i++) a.v[i] = 0.5f * (float)i;
  for (int i = 0; i < 15; i++) a.mem[i] = (float)-i;
  for (int c = 0; c < 3; c++) {
    a.vm[c] = 1.0f + c;
    a.vmw[c] = 2.0f + c;
    a.alpha[c] = 0.25f * (float)(c + 1);
    a.h[c] = 3.0f + c;
    a.va[c] = 4.0f + c;
  }
  assert_int_equal(fl_estimator_copy(&b, &a), 0);
  assert_int_equal(b.on, 1);
  assert_int_equal(b.nch, 3);
  assert_int_equal(b.nmem, 5);
  assert_ptr_not_equal(b.w, a.w);
  assert_ptr_not_equal(b.mem, a.mem);
  assert_memory_equal(b.w, a.w, sizeof(float) * 9);
  assert_memory_equal(b.v, a.v, sizeof(float) * 3 * FL_ESTIMATE_LAGS);
  assert_memory_equal(b.mem, a.mem, sizeof(float) * 15);
  assert_memory_equal(b.vm, a.vm, sizeof(float) * 3);
  assert_memory_equal(b.vmw, a.vmw, sizeof(float) * 3);
  assert_memory_equal(b.alpha, a.alpha, sizeof(float) * 3);
  assert_memory_equal(b.h, a.h, sizeof(float) * 3);
  assert_memory_equal(b.va, a.va, sizeof(float) * 3);
  fl_estimator_free(&a);
  assert_float_equal(b.w[8], 8.0f, 0.0f); /* b does not share a's arrays */
  fl_estimator_free(&b);
  /* None fitted (a model from before the estimator): copied as absent. */
  fl_estimator none = {0};
  assert_int_equal(fl_estimator_copy(&b, &none), 0);
  assert_int_equal(b.on, 0);
  assert_null(b.w);
  assert_int_equal(fl_estimator_copy(NULL, &none), FL_EINVAL);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_fuse),
      cmocka_unit_test(test_var_by_age),
      cmocka_unit_test(test_fit_learns_the_neighbour),
      cmocka_unit_test(test_fault_over_windows),
      cmocka_unit_test(test_kernel_recovers_a_function_of_the_others),
      cmocka_unit_test(test_kernel_in_the_correction),
      cmocka_unit_test(test_bad_arguments),
      cmocka_unit_test(test_copy),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
