/* Unit tests for the tick assembler (lib/ticks.c) against the contract in
 * faultline/ticks.h: the grid and its numbering, sample and hold, staleness,
 * NaN as a death, the late rule, out-of-order updates within the allowance,
 * overflow, sub-samples of a faster channel and catching up. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <cmocka.h>

#include "faultline/error.h"
#include "faultline/ticks.h"

#define MS 1000000LL
#define P (100 * MS)   /* period */
#define T0 (1000 * P)  /* a tick boundary */

static fl_ticks *make(int n, const int *rate, int64_t stale, int64_t delay, int depth, int burst) {
  fl_ticks_opts o = {n, rate, P, stale, delay, depth, burst};
  fl_ticks *t;
  assert_int_equal(fl_ticks_new(&t, &o), 0);
  return t;
}

static void test_ticks_new_rejects_bad_options(void **state) {
  (void)state;
  int r1[] = {1}, r0[] = {0};
  fl_ticks *t;
  fl_ticks_opts o = {1, r1, P, P, 0, 4, 4};
  o.period_ns = 0;
  assert_int_equal(fl_ticks_new(&t, &o), FL_EINVAL);
  o.period_ns = P;
  o.rate = r0;
  assert_int_equal(fl_ticks_new(&t, &o), FL_EINVAL);
  o.rate = r1;
  o.depth = 0;
  assert_int_equal(fl_ticks_new(&t, &o), FL_EINVAL);
  o.depth = 4;
  assert_int_equal(fl_ticks_new(&t, &o), 0);
  assert_int_equal(fl_ticks_put(t, 1, T0, 1.0f), FL_EINVAL);
  assert_int_equal(fl_ticks_put(t, -1, T0, 1.0f), FL_EINVAL);
  fl_ticks_free(t);
}

/* Nothing is due before the first update; the first tick is the one
 * holding it, numbered by its end time, and emitted only after the delay. */
static void test_ticks_first_tick_and_numbering(void **state) {
  (void)state;
  int rate[] = {1, 1};
  fl_ticks *t = make(2, rate, 10 * P, 20 * MS, 8, 100);
  float out[2];
  uint64_t seq;
  int64_t end;
  assert_int_equal(fl_ticks_emit(t, T0 + 50 * P, out, &seq, &end), 0);
  assert_int_equal(fl_ticks_next(t), INT64_MIN);
  assert_int_equal(fl_ticks_put(t, 0, T0 + 30 * MS, 1.5f), FL_TICKS_OK);
  assert_int_equal(fl_ticks_next(t), T0 + P);
  assert_int_equal(fl_ticks_emit(t, T0 + P + 10 * MS, out, &seq, &end), 0); /* within delay */
  assert_int_equal(fl_ticks_emit(t, T0 + P + 20 * MS, out, &seq, &end), 1);
  assert_int_equal(end, T0 + P);
  assert_int_equal(seq, (uint64_t)((T0 + P) / P));
  assert_float_equal(out[0], 1.5f, 0);
  assert_true(isnan(out[1])); /* never set */
  assert_int_equal(fl_ticks_emit(t, T0 + P + 20 * MS, out, &seq, &end), 0);
  assert_int_equal(fl_ticks_stats_of(t)->emitted, 1);
  assert_int_equal(fl_ticks_stats_of(t)->missing, 1);
  fl_ticks_free(t);
}

/* A value holds until the next update and until it is older than the
 * staleness limit; NaN ends it at once. */
static void test_ticks_hold_stale_and_death(void **state) {
  (void)state;
  int rate[] = {1};
  fl_ticks *t = make(1, rate, 3 * P, 0, 8, 100);
  float out[1];
  uint64_t seq;
  int64_t end;
  fl_ticks_put(t, 0, T0 + P, 7.0f); /* on a boundary: tick T0 + P */
  float want[] = {7, 7, 7, 7, NAN, NAN};
  for (int k = 0; k < 6; k++) {
    assert_int_equal(fl_ticks_emit(t, T0 + (k + 1) * P, out, &seq, &end), 1);
    assert_int_equal(end, T0 + (k + 1) * P);
    if (isnan(want[k])) assert_true(isnan(out[0]));
    else assert_float_equal(out[0], want[k], 0);
  }
  fl_ticks_put(t, 0, T0 + 6 * P + MS, 2.0f);
  fl_ticks_put(t, 0, T0 + 7 * P + MS, NAN);
  assert_int_equal(fl_ticks_emit(t, T0 + 7 * P, out, &seq, &end), 1);
  assert_float_equal(out[0], 2.0f, 0);
  assert_int_equal(fl_ticks_emit(t, T0 + 8 * P, out, &seq, &end), 1);
  assert_true(isnan(out[0]));
  fl_ticks_free(t);
}

/* The newest update at or before the tick's end wins, whatever the arrival
 * order within the allowance; an update at or before an emitted tick is
 * dropped and counted. */
static void test_ticks_out_of_order_and_late(void **state) {
  (void)state;
  int rate[] = {1};
  fl_ticks *t = make(1, rate, 10 * P, 50 * MS, 8, 100);
  float out[1];
  uint64_t seq;
  int64_t end;
  fl_ticks_put(t, 0, T0 + 90 * MS, 3.0f);
  fl_ticks_put(t, 0, T0 + 20 * MS, 1.0f);  /* older, arrives later */
  fl_ticks_put(t, 0, T0 + 150 * MS, 9.0f); /* next tick's */
  fl_ticks_put(t, 0, T0 + 60 * MS, 2.0f);
  assert_int_equal(fl_ticks_emit(t, T0 + P + 50 * MS, out, &seq, &end), 1);
  assert_float_equal(out[0], 3.0f, 0);
  assert_int_equal(fl_ticks_put(t, 0, T0 + P, 5.0f), FL_TICKS_LATE); /* at the end: late */
  assert_int_equal(fl_ticks_put(t, 0, T0 + 50 * MS, 5.0f), FL_TICKS_LATE);
  assert_int_equal(fl_ticks_put(t, 0, T0 + P + 1, 4.0f), FL_TICKS_OK);
  assert_int_equal(fl_ticks_emit(t, T0 + 2 * P + 50 * MS, out, &seq, &end), 1);
  assert_float_equal(out[0], 9.0f, 0);
  const fl_ticks_stats *s = fl_ticks_stats_of(t);
  assert_int_equal(s->late, 2);
  assert_int_equal(s->accepted, 5);
  fl_ticks_free(t);
}

/* Equal times: the later arrival wins. */
static void test_ticks_tie_later_arrival_wins(void **state) {
  (void)state;
  int rate[] = {1};
  fl_ticks *t = make(1, rate, 10 * P, 0, 8, 100);
  float out[1];
  uint64_t seq;
  int64_t end;
  fl_ticks_put(t, 0, T0 + 10 * MS, 1.0f);
  fl_ticks_put(t, 0, T0 + 10 * MS, 2.0f);
  assert_int_equal(fl_ticks_emit(t, T0 + P, out, &seq, &end), 1);
  assert_float_equal(out[0], 2.0f, 0);
  fl_ticks_free(t);
}

static void test_ticks_overflow_counted(void **state) {
  (void)state;
  int rate[] = {1};
  fl_ticks *t = make(1, rate, 10 * P, 0, 3, 100);
  for (int i = 0; i < 3; i++) assert_int_equal(fl_ticks_put(t, 0, T0 + i, 1.0f), FL_TICKS_OK);
  assert_int_equal(fl_ticks_put(t, 0, T0 + 5, 1.0f), FL_TICKS_OVERFLOW);
  assert_int_equal(fl_ticks_stats_of(t)->overflow, 1);
  fl_ticks_free(t);
}

/* A rate-4 channel is sampled four times per tick, the last at its end;
 * the output lays channels out one after the other. */
static void test_ticks_subsamples(void **state) {
  (void)state;
  int rate[] = {4, 1};
  fl_ticks *t = make(2, rate, 10 * P, 0, 16, 100);
  assert_int_equal(fl_ticks_width(t), 5);
  float out[5];
  uint64_t seq;
  int64_t end;
  fl_ticks_put(t, 0, T0 + 1, 1.0f);       /* before sub-sample 0 (T0 + 25 ms) */
  fl_ticks_put(t, 0, T0 + 30 * MS, 2.0f); /* before sub-sample 1 (50 ms) */
  fl_ticks_put(t, 0, T0 + 75 * MS, 3.0f); /* at sub-sample 2 */
  fl_ticks_put(t, 1, T0 + 99 * MS, 8.0f);
  assert_int_equal(fl_ticks_emit(t, T0 + P, out, &seq, &end), 1);
  float want[] = {1, 2, 3, 3, 8};
  for (int i = 0; i < 5; i++) assert_float_equal(out[i], want[i], 0);
  fl_ticks_free(t);
}

/* A stalled caller gets at most max_burst ticks; the others are skipped
 * (counted) and the numbering keeps the gap. */
static void test_ticks_catch_up_skips(void **state) {
  (void)state;
  int rate[] = {1};
  fl_ticks *t = make(1, rate, 1000 * P, 0, 8, 3);
  float out[1];
  uint64_t seq, first = 0;
  int64_t end;
  fl_ticks_put(t, 0, T0 + 1, 4.0f);
  int n = 0;
  while (fl_ticks_emit(t, T0 + 10 * P, out, &seq, &end)) {
    if (!n) first = seq;
    assert_float_equal(out[0], 4.0f, 0);
    n++;
  }
  assert_int_equal(n, 3);
  assert_int_equal(first, (uint64_t)(T0 / P + 8));
  assert_int_equal(seq, (uint64_t)(T0 / P + 10));
  assert_int_equal(fl_ticks_stats_of(t)->skipped, 7);
  fl_ticks_free(t);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_ticks_new_rejects_bad_options),
      cmocka_unit_test(test_ticks_first_tick_and_numbering),
      cmocka_unit_test(test_ticks_hold_stale_and_death),
      cmocka_unit_test(test_ticks_out_of_order_and_late),
      cmocka_unit_test(test_ticks_tie_later_arrival_wins),
      cmocka_unit_test(test_ticks_overflow_counted),
      cmocka_unit_test(test_ticks_subsamples),
      cmocka_unit_test(test_ticks_catch_up_skips),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
