/* Unit tests of lib/eval.c: the evaluation's arithmetic on small arrays
 * whose answers are worked out by hand in the comments. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <cmocka.h>

#include "faultline/error.h"
#include "faultline/eval.h"

#define N(a) (sizeof(a) / sizeof *(a))

static void assert_near(double got, double want, double tol) {
  if (!(fabs(got - want) <= tol)) fail_msg("got %.9g, want %.9g (tol %g)", got, want, tol);
}

/* got (n) against want (n), NaN matching NaN only. */
static void assert_all_near(const float *got, const float *want, size_t n, double tol) {
  for (size_t i = 0; i < n; i++)
    if (isnan(want[i]) ? !isnan(got[i]) : !(fabs(got[i] - want[i]) <= tol))
      fail_msg("[%zu]: got %.9g, want %.9g (tol %g)", i, got[i], want[i], tol);
}

/* ---- per channel --------------------------------------------------------- */

static void test_spread_skips_nan(void **state) {
  (void)state;
  /* mean 2.5, mean of squares 7.5: variance 1.25. */
  const float x[] = {1, 2, NAN, 3, 4};
  assert_near(fl_eval_spread(x, N(x)), sqrt(1.25), 1e-6);
}

static void test_spread_of_flat_channels(void **state) {
  (void)state;
  const float level[] = {5, 5, 5}, zero[] = {0, 0}, tiny[] = {5e-4f, 5e-4f};
  const float none[] = {NAN, NAN};
  assert_near(fl_eval_spread(level, N(level)), 5e-3, 1e-9); /* |mean| / 1000 */
  assert_near(fl_eval_spread(zero, N(zero)), 1.0, 0);      /* one raw unit */
  assert_near(fl_eval_spread(tiny, N(tiny)), 1.0, 0);
  assert_near(fl_eval_spread(none, N(none)), 1.0, 0);
  assert_near(fl_eval_spread(NULL, 0), 1.0, 0);
}

static void test_interpolate_inner_run(void **state) {
  (void)state;
  /* From x[1] = 1 to x[4] = 4 over three steps: 2 and 3. */
  const float x[] = {0, 1, 100, 100, 4, 5};
  const uint8_t l[] = {0, 0, 1, 1, 0, 0};
  float y[N(x)];
  fl_eval_interpolate(y, x, l, N(x));
  const float want[] = {0, 1, 2, 3, 4, 5};
  assert_all_near(y, want, N(x), 1e-6);
}

static void test_interpolate_skips_missing_neighbours(void **state) {
  (void)state;
  /* The run's right end is x[4], missing: the line goes from x[1] = 1 to
   * x[5] = 7 over four steps (2.5, 4), and x[4] itself stays missing. */
  const float x[] = {0, 1, 100, 100, NAN, 7};
  const uint8_t l[] = {0, 0, 1, 1, 0, 0};
  float y[N(x)];
  fl_eval_interpolate(y, x, l, N(x));
  const float want[] = {0, 1, 2.5f, 4, NAN, 7};
  assert_all_near(y, want, N(x), 1e-6);
}

static void test_interpolate_holds_at_the_ends(void **state) {
  (void)state;
  /* A run at the start takes the first value after it, one at the end the
   * last before it; two runs are filled independently. */
  const float x[] = {9, 9, 3, 4, 8, 8};
  const uint8_t l[] = {1, 1, 0, 0, 1, 1};
  float y[N(x)];
  fl_eval_interpolate(y, x, l, N(x));
  const float want[] = {3, 3, 3, 4, 4, 4};
  assert_all_near(y, want, N(x), 0);
  /* Everything labelled: nothing to interpolate from. */
  const uint8_t all[] = {1, 1, 1, 1, 1, 1};
  const float none[] = {NAN, NAN, NAN, NAN, NAN, NAN};
  fl_eval_interpolate(y, x, all, N(x));
  assert_all_near(y, none, N(x), 0);
}

static void test_hold_last_is_causal(void **state) {
  (void)state;
  /* A run at the start has nothing before it; the second run holds x[4]
   * (x[5] is missing), not x[7], which comes after it. */
  const float x[] = {100, 2, 100, 100, 5, NAN, 100, 7};
  const uint8_t l[] = {1, 0, 1, 1, 0, 0, 1, 0};
  float y[N(x)];
  fl_eval_hold_last(y, x, l, N(x));
  const float want[] = {NAN, 2, 2, 2, 5, NAN, 5, 7};
  assert_all_near(y, want, N(x), 0);
}

static void test_sq_error_masks_and_nan(void **state) {
  (void)state;
  /* Terms ((a - b) 2)^2 where both are defined: 4 and 16. */
  const float a[] = {1, 2, NAN, 4}, b[] = {0, 0, 0, NAN};
  const uint8_t keep[] = {0, 1, 1, 1};
  double se = 0;
  size_t n = 0;
  fl_eval_sq_error(&se, &n, a, b, NULL, N(a), 2.0);
  assert_near(se, 20.0, 0);
  assert_int_equal(n, 2);
  /* Accumulates; keep drops the first term. */
  fl_eval_sq_error(&se, &n, a, b, keep, N(a), 2.0);
  assert_near(se, 36.0, 0);
  assert_int_equal(n, 3);
  assert_near(fl_eval_rmse(se, n), sqrt(12.0), 1e-12);
}

static void test_rmse_and_rate_of_nothing(void **state) {
  (void)state;
  assert_true(isnan(fl_eval_rmse(0.0, 0)));
  assert_near(fl_eval_rmse(18.0, 2), 3.0, 0);
  assert_true(isnan(fl_eval_rate(1.0, 0.0)));
  assert_near(fl_eval_rate(3.0, 4.0), 0.75, 0);
  assert_near(fl_eval_rate(0.0, 4.0), 0.0, 0);
}

/* ---- per row ------------------------------------------------------------- */

static void test_settled_rows(void **state) {
  (void)state;
  /* Window 4: rows 2..4 and the 4 after them (2..8) are unsettled; the
   * second episode's (15..16 + 4) are cut at the last row. */
  const fl_eval_episode eps[] = {{.start = 2, .len = 3}, {.start = 15, .len = 2}};
  uint8_t s[20];
  fl_eval_settled(s, 20, eps, 2, 4);
  for (int r = 0; r < 20; r++)
    assert_int_equal(s[r], !((r >= 2 && r <= 8) || r >= 15));
  fl_eval_settled(s, 20, NULL, 0, 4);
  for (int r = 0; r < 20; r++) assert_int_equal(s[r], 1);
}

static void test_detect_episodes(void **state) {
  (void)state;
  /*            row  0  1  2  3  4  5  6  7  8  9 10 11 12 13 14 15 */
  const uint8_t flag[] = {0, 0, 1, 1, 1, 0, 0, 1, 0, 1, 0, 0, 1, 1, 1, 1};
  const signed char mod[] = {-1, -1, 2, 1, 2, -1, -1, 1, -1, 0, -1, -1, 2, 0, -1, 5};
  const fl_eval_episode eps[] = {
      {.start = 1, .len = 4, .mod = 2, .labelled = 5},  /* delay 1, votes 2:2 1:1 */
      {.start = 6, .len = 2, .mod = 0, .labelled = 3},  /* delay 1, blames 1 */
      {.start = 9, .len = 1, .mod = 0, .labelled = 0},  /* nothing labelled: not counted */
      {.start = 10, .len = 2, .mod = 1, .labelled = 2}, /* missed */
      {.start = 12, .len = 2, .mod = 0, .labelled = 4}, /* delay 0, a tie of 0 and 2: 0 */
      {.start = 14, .len = 2, .mod = 0, .labelled = 1}, /* delay 0, no modality voted */
  };
  fl_eval_detection d = {0};
  assert_int_equal(fl_eval_detect(&d, eps, (int)N(eps), flag, mod, 3), 0);
  assert_int_equal(d.episodes, 5);
  assert_int_equal(d.detected, 4);
  assert_int_equal(d.localised, 2);
  assert_near(d.delay_sum, 2.0, 0);
  /* It adds to what is there. */
  assert_int_equal(fl_eval_detect(&d, eps, 2, flag, mod, 3), 0);
  assert_int_equal(d.episodes, 7);
  assert_int_equal(d.detected, 6);
  assert_int_equal(d.localised, 3);
  assert_near(d.delay_sum, 4.0, 0);
  assert_int_equal(fl_eval_detect(&d, eps, 1, flag, mod, 0), FL_EINVAL);
  assert_int_equal(fl_eval_detect(NULL, eps, 1, flag, mod, 3), FL_EINVAL);
  assert_int_equal(fl_eval_detect(&d, eps, 1, NULL, mod, 3), FL_EINVAL);
}

static void test_pool_keeps_scored_rows(void **state) {
  (void)state;
  /* Rows 1..3 have a score: (0.1, clean, not flagged), (0.9, faulty,
   * flagged), (0.5, clean, flagged).  The faulty row outscores both clean
   * ones: AUROC 1; tp 1, fp 1, fn 0, tn 1: F1 2 / 3, FAR 1 / 2. */
  const float score[] = {NAN, 0.1f, 0.9f, 0.5f, NAN};
  const uint8_t flag[] = {1, 0, 1, 1, 0}, label[] = {0, 0, 1, 0, 1};
  fl_eval_pool p = {0};
  assert_int_equal(fl_eval_pool_add(&p, score, flag, label, 5), 0);
  assert_int_equal(p.n, 3);
  double auc;
  fl_binary_stats st;
  assert_int_equal(fl_eval_pool_stats(&p, &auc, &st), 0);
  assert_near(auc, 1.0, 0);
  assert_int_equal(st.tp, 1);
  assert_int_equal(st.fp, 1);
  assert_int_equal(st.fn, 0);
  assert_int_equal(st.tn, 1);
  assert_near(st.f1, 2.0 / 3.0, 1e-12);
  assert_near(st.far, 0.5, 0);
  /* n = 0 empties it; a batch past the first allocation grows it. */
  p.n = 0;
  enum { ROWS = 5000 };
  float *s = malloc(sizeof(float) * ROWS);
  uint8_t *f = malloc(ROWS), *l = malloc(ROWS);
  assert_non_null(s);
  assert_non_null(f);
  assert_non_null(l);
  for (int r = 0; r < ROWS; r++) {
    s[r] = r % 5 == 0 ? NAN : (float)r;
    f[r] = (uint8_t)(r % 2);
    l[r] = (uint8_t)(r % 3 == 0);
  }
  assert_int_equal(fl_eval_pool_add(&p, s, f, l, ROWS), 0);
  assert_int_equal(p.n, ROWS - ROWS / 5);
  /* Row 6 is the fifth kept (1, 2, 3, 4, 6). */
  assert_near(p.score[4], 6.0, 0);
  assert_int_equal(p.flag[4], 0);
  assert_int_equal(p.label[4], 1);
  assert_int_equal(fl_eval_pool_add(&p, s, f, l, -1), FL_EINVAL);
  assert_int_equal(fl_eval_pool_add(&p, NULL, f, l, 3), FL_EINVAL);
  free(s);
  free(f);
  free(l);
  fl_eval_pool_free(&p);
  assert_null(p.score);
  assert_int_equal(p.n, 0);
}

/* ---- AAKR ------------------------------------------------------------------ */

/* Two memory rows (target, other): (10, 0) and (20, 1); h = 1. */
static const float g_mem[] = {10, 0, 20, 1};

static void test_aakr_kernel_weights(void **state) {
  (void)state;
  float est;
  /* Query other = 0: distances^2 0 and 1, weights 1 and e = exp(-1/2):
   * (10 + 20 e) / (1 + e) = 13.7754067. */
  const float q0[] = {NAN, 0};
  assert_int_equal(fl_eval_aakr(&est, g_mem, 2, 2, q0, 0, 1.0f), 0);
  assert_near(est, 13.7754067, 1e-5);
  /* Halfway: equal weights, the mean. */
  const float qh[] = {123, 0.5f}; /* the target's own value is not read */
  assert_int_equal(fl_eval_aakr(&est, g_mem, 2, 2, qh, 0, 1.0f), 0);
  assert_near(est, 15.0, 1e-6);
  /* A wide kernel tends to the mean, a narrow one to the nearest row. */
  assert_int_equal(fl_eval_aakr(&est, g_mem, 2, 2, q0, 0, 1000.0f), 0);
  assert_near(est, 15.0, 1e-5);
  assert_int_equal(fl_eval_aakr(&est, g_mem, 2, 2, q0, 0, 0.01f), 0);
  assert_near(est, 10.0, 0);
}

static void test_aakr_far_query_takes_the_nearest_row(void **state) {
  (void)state;
  /* exp(-999^2 / 2) and exp(-1000^2 / 2) are both 0 in double; relative to
   * the nearest row the far one weighs exp(-999.5): the estimate is 20. */
  const float q[] = {NAN, 1000};
  float est;
  assert_int_equal(fl_eval_aakr(&est, g_mem, 2, 2, q, 0, 1.0f), 0);
  assert_near(est, 20.0, 0);
}

static void test_aakr_skips_missing_columns(void **state) {
  (void)state;
  /* Rows (a, b, target): a alone decides when b is missing.  Query a = 0:
   * row 0 (a 0) at distance 0, row 1 (a 2) at 4, h = 1: weights 1 and
   * exp(-2); (1 + 3 exp(-2)) / (1 + exp(-2)) = 1.2384058. */
  const float mem[] = {0, 50, 1, 2, -50, 3};
  const float q[] = {0, NAN, NAN}, none[] = {NAN, NAN, 7};
  float est;
  assert_int_equal(fl_eval_aakr(&est, mem, 2, 3, q, 2, 1.0f), 0);
  assert_near(est, 1.2384058, 1e-6);
  assert_int_equal(fl_eval_aakr(&est, mem, 2, 3, none, 2, 1.0f), 0);
  assert_true(isnan(est));
}

static void test_aakr_rejects_bad_arguments(void **state) {
  (void)state;
  const float q[] = {NAN, 0}, bad[] = {10, 0, NAN, 1};
  float est;
  assert_int_equal(fl_eval_aakr(&est, g_mem, 2, 2, q, 0, 0.0f), FL_EINVAL);
  assert_int_equal(fl_eval_aakr(&est, g_mem, 2, 2, q, 0, NAN), FL_EINVAL);
  assert_int_equal(fl_eval_aakr(&est, g_mem, 2, 2, q, 2, 1.0f), FL_EINVAL);
  assert_int_equal(fl_eval_aakr(&est, g_mem, 2, 2, q, -1, 1.0f), FL_EINVAL);
  assert_int_equal(fl_eval_aakr(&est, g_mem, 0, 2, q, 0, 1.0f), FL_EINVAL);
  assert_int_equal(fl_eval_aakr(&est, g_mem, 2, 1, q, 0, 1.0f), FL_EINVAL);
  assert_int_equal(fl_eval_aakr(NULL, g_mem, 2, 2, q, 0, 1.0f), FL_EINVAL);
  assert_int_equal(fl_eval_aakr(&est, bad, 2, 2, q, 0, 1.0f), FL_ENONFINITE);
}

static void test_aakr_memory_evenly_spaced(void **state) {
  (void)state;
  /* Rows 0..6 of (r, 10 r); row 2 has a missing value, so the complete
   * rows are 0 1 3 4 5 6 (k = 6).  m = 3 takes the 0th, 2nd and 4th of
   * them: rows 0, 3, 5. */
  float x[14], mem[14];
  for (int r = 0; r < 7; r++) x[2 * r] = (float)r, x[2 * r + 1] = 10.0f * r;
  x[5] = NAN;
  assert_int_equal(fl_eval_aakr_memory(mem, 3, x, 7, 2), 3);
  const float want[] = {0, 0, 3, 30, 5, 50};
  assert_all_near(mem, want, N(want), 0);
  /* m >= k: every complete row, in order. */
  assert_int_equal(fl_eval_aakr_memory(mem, 7, x, 7, 2), 6);
  const float all[] = {0, 0, 1, 10, 3, 30, 4, 40, 5, 50, 6, 60};
  assert_all_near(mem, all, N(all), 0);
  assert_int_equal(fl_eval_aakr_memory(mem, 3, x, 0, 2), 0);
  assert_int_equal(fl_eval_aakr_memory(mem, 0, x, 7, 2), FL_EINVAL);
  assert_int_equal(fl_eval_aakr_memory(NULL, 3, x, 7, 2), FL_EINVAL);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_spread_skips_nan),
      cmocka_unit_test(test_spread_of_flat_channels),
      cmocka_unit_test(test_interpolate_inner_run),
      cmocka_unit_test(test_interpolate_skips_missing_neighbours),
      cmocka_unit_test(test_interpolate_holds_at_the_ends),
      cmocka_unit_test(test_hold_last_is_causal),
      cmocka_unit_test(test_sq_error_masks_and_nan),
      cmocka_unit_test(test_rmse_and_rate_of_nothing),
      cmocka_unit_test(test_settled_rows),
      cmocka_unit_test(test_detect_episodes),
      cmocka_unit_test(test_pool_keeps_scored_rows),
      cmocka_unit_test(test_aakr_kernel_weights),
      cmocka_unit_test(test_aakr_far_query_takes_the_nearest_row),
      cmocka_unit_test(test_aakr_skips_missing_columns),
      cmocka_unit_test(test_aakr_rejects_bad_arguments),
      cmocka_unit_test(test_aakr_memory_evenly_spaced),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
