/* Unit tests for the evaluation metrics (AUROC, F1 and false-alarm rate). */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "faultline/error.h"
#include "faultline/metrics.h"
#include "faultline/nn.h"

/* The definition itself: over every (faulty, clean) pair, 1 if the faulty
 * one scores higher, 1/2 on a tie.  O(n^2), for checking the ranks. */
static double brute_auroc(const float *s, const uint8_t *y, size_t n) {
  double wins = 0;
  size_t pairs = 0;
  for (size_t i = 0; i < n; i++) {
    if (!y[i] || isnan(s[i])) continue;
    for (size_t j = 0; j < n; j++) {
      if (y[j] || isnan(s[j])) continue;
      wins += s[i] > s[j] ? 1.0 : s[i] == s[j] ? 0.5 : 0.0;
      pairs++;
    }
  }
  return pairs ? wins / (double)pairs : NAN;
}

static void test_auroc_perfect_and_inverted(void **state) {
  (void)state;
  float s[6] = {0.1f, 0.2f, 0.3f, 0.7f, 0.8f, 0.9f};
  uint8_t y[6] = {0, 0, 0, 1, 1, 1}, yinv[6] = {1, 1, 1, 0, 0, 0};
  double a;
  assert_int_equal(fl_auroc(s, y, 6, &a), 0);
  assert_true(fabs(a - 1.0) < 1e-12);
  assert_int_equal(fl_auroc(s, yinv, 6, &a), 0);
  assert_true(fabs(a) < 1e-12);
}

static void test_auroc_ties_count_half(void **state) {
  (void)state;
  /* A detector that says the same thing everywhere knows nothing. */
  float flat[5] = {3, 3, 3, 3, 3};
  uint8_t y[5] = {1, 0, 1, 0, 0};
  double a;
  assert_int_equal(fl_auroc(flat, y, 5, &a), 0);
  assert_true(fabs(a - 0.5) < 1e-12);
  /* Hand count: positives {2, 1}, negatives {1, 0}.  Pairs: 2>1, 2>0, 1=1
   * (one half), 1>0: 3.5 of 4. */
  float s[4] = {2, 1, 1, 0};
  uint8_t y2[4] = {1, 1, 0, 0};
  assert_int_equal(fl_auroc(s, y2, 4, &a), 0);
  assert_true(fabs(a - 3.5 / 4.0) < 1e-12);
  /* The order of tied samples in the input must not matter. */
  float s2[4] = {1, 0, 2, 1};
  uint8_t y3[4] = {0, 0, 1, 1};
  double b;
  assert_int_equal(fl_auroc(s2, y3, 4, &b), 0);
  assert_true(fabs(a - b) < 1e-12);
}

static void test_auroc_matches_pairwise_definition(void **state) {
  (void)state;
  enum { N = 700 };
  float s[N];
  uint8_t y[N];
  fl_rng r;
  fl_rng_seed(&r, 5);
  for (int rep = 0; rep < 5; rep++) {
    for (int i = 0; i < N; i++) {
      y[i] = fl_rng_uniform(&r) < 0.3f;
      /* Scores on a coarse grid, so that many tie across the classes. */
      s[i] = floorf(4.0f * (fl_rng_normal(&r) + (y[i] ? 0.7f * rep : 0.0f))) / 4.0f;
      if (i % 97 == 0) s[i] = NAN;
    }
    double a;
    assert_int_equal(fl_auroc(s, y, N, &a), 0);
    double want = brute_auroc(s, y, N);
    assert_true(fabs(a - want) < 1e-9);
    if (rep >= 2) assert_true(a > 0.6);
  }
}

static void test_auroc_undefined_and_errors(void **state) {
  (void)state;
  float s[3] = {1, 2, NAN};
  uint8_t one_class[3] = {1, 1, 0}; /* the clean sample has no score */
  double a = 0;
  assert_int_equal(fl_auroc(s, one_class, 3, &a), 0);
  assert_true(isnan(a));
  a = 0;
  assert_int_equal(fl_auroc(s, one_class, 0, &a), 0);
  assert_true(isnan(a));
  assert_int_equal(fl_auroc(NULL, one_class, 3, &a), FL_EINVAL);
  assert_int_equal(fl_auroc(s, NULL, 3, &a), FL_EINVAL);
  assert_int_equal(fl_auroc(s, one_class, 3, NULL), FL_EINVAL);
  /* Label values other than 1 count as faulty (fault type ids). */
  float s2[4] = {0, 1, 2, 3};
  uint8_t ids[4] = {0, 0, 7, 13};
  assert_int_equal(fl_auroc(s2, ids, 4, &a), 0);
  assert_true(fabs(a - 1.0) < 1e-12);
}

static void test_f1_counts(void **state) {
  (void)state;
  uint8_t pred[8] = {1, 1, 0, 0, 1, 0, 0, 0};
  uint8_t lab[8] = {1, 0, 1, 0, 3, 0, 0, 0};
  fl_binary_stats st;
  assert_int_equal(fl_f1(pred, lab, 8, &st), 0);
  assert_int_equal(st.tp, 2);
  assert_int_equal(st.fp, 1);
  assert_int_equal(st.fn, 1);
  assert_int_equal(st.tn, 4);
  assert_true(fabs(st.precision - 2.0 / 3.0) < 1e-12);
  assert_true(fabs(st.recall - 2.0 / 3.0) < 1e-12);
  assert_true(fabs(st.f1 - 2.0 / 3.0) < 1e-12);
  assert_true(fabs(st.far - 1.0 / 5.0) < 1e-12);
  /* F1 is the harmonic mean of precision and recall where both exist. */
  double h = 2 * st.precision * st.recall / (st.precision + st.recall);
  assert_true(fabs(st.f1 - h) < 1e-12);
}

static void test_f1_degenerate(void **state) {
  (void)state;
  uint8_t none[4] = {0, 0, 0, 0}, lab[4] = {0, 1, 1, 0}, all[4] = {1, 1, 1, 1};
  fl_binary_stats st;
  /* Silent detector on faulty data: F1 0, precision undefined, no alarms. */
  assert_int_equal(fl_f1(none, lab, 4, &st), 0);
  assert_true(st.f1 == 0.0);
  assert_true(isnan(st.precision));
  assert_true(st.far == 0.0);
  /* Clean data, nothing flagged: F1 undefined, FAR 0. */
  assert_int_equal(fl_f1(none, none, 4, &st), 0);
  assert_true(isnan(st.f1));
  assert_true(isnan(st.recall));
  assert_true(st.far == 0.0);
  /* Everything flagged on all-faulty data: FAR undefined. */
  assert_int_equal(fl_f1(all, all, 4, &st), 0);
  assert_true(st.f1 == 1.0);
  assert_true(isnan(st.far));
  /* Everything flagged on clean data: every row a false alarm. */
  assert_int_equal(fl_f1(all, none, 4, &st), 0);
  assert_true(st.far == 1.0);
  assert_true(st.f1 == 0.0);
  assert_int_equal(fl_f1(NULL, lab, 4, &st), FL_EINVAL);
  assert_int_equal(fl_f1(none, NULL, 4, &st), FL_EINVAL);
  assert_int_equal(fl_f1(none, lab, 4, NULL), FL_EINVAL);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_auroc_perfect_and_inverted),
      cmocka_unit_test(test_auroc_ties_count_half),
      cmocka_unit_test(test_auroc_matches_pairwise_definition),
      cmocka_unit_test(test_auroc_undefined_and_errors),
      cmocka_unit_test(test_f1_counts),
      cmocka_unit_test(test_f1_degenerate),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
