/* Test scratch that lives until the process ends: sized structures of the
 * library (scores, calibrations, baselines, stream states) set up in a line,
 * as the tests set up the fixed-size ones they replaced.  What is kept stays
 * reachable, so the leak checker does not count it. */
#ifndef FL_TEST_KEEP_H
#define FL_TEST_KEEP_H

#include <stdlib.h>

#include "faultline/detect.h"
#include "faultline/pipeline.h"

static void *test_kept[65536];
static int test_nkept;

static void *test_keep(void *p) {
  assert_non_null(p);
  assert_true(test_nkept < 65536);
  test_kept[test_nkept++] = p;
  return p;
}

/* One window score sized for m. */
static inline fl_window_score test_score(const fl_model *m) {
  const fl_model_spec *s = fl_model_spec_of(m);
  return *(fl_window_score *)test_keep(
      fl_window_scores_new(1, s->n_mod, fl_model_channels((fl_model *)m)));
}

/* A zeroed calibration with arrays for m's channels. */
static inline void test_calib(const fl_model *m, fl_calib *cal) {
  memset(cal, 0, sizeof *cal);
  assert_int_equal(fl_calib_alloc(cal, fl_model_channels((fl_model *)m)), 0);
  test_keep(cal->block);
}

static inline void test_baseline(const fl_model *m, fl_detect_baseline *bl) {
  assert_int_equal(fl_detect_baseline_init(bl, fl_model_channels((fl_model *)m)), 0);
  test_keep(bl->block);
}

static inline void test_stream_state(const fl_model *m, fl_stream_state *st) {
  assert_int_equal(fl_stream_state_init(st, fl_model_spec_of(m)), 0);
  test_keep(st->mhyst);
  test_keep(st->base.block);
  test_keep(st->est.res);
  test_keep(st->est.age);
  test_keep(st->est.anchored);
}

#endif
