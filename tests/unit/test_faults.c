/* Unit tests for the fault injection module. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "faultline/error.h"
#include "faultline/faults.h"
#include "faultline/nn.h"

enum { C = 3, T = 120 };

/* A smooth, non-constant test window: a different sine per channel on a
 * level far from zero, with a little noise so no two samples coincide. */
static void make_window(float *x, float *sd) {
  fl_rng r;
  fl_rng_seed(&r, 99);
  for (int c = 0; c < C; c++) {
    sd[c] = 0.5f + 2.0f * c;
    for (int t = 0; t < T; t++)
      x[c * T + t] = 10.0f * (c + 1) +
                     sd[c] * (1.2f * sinf(0.11f * (c + 1) * t) + 0.1f * fl_rng_normal(&r));
  }
}

static int differs(float a, float b) {
  if (isnan(a) || isnan(b)) return isnan(a) != isnan(b);
  return a != b;
}

static void test_name_parse_roundtrip(void **state) {
  (void)state;
  for (int i = 0; i < FL_FAULT_COUNT; i++) {
    const char *n = fl_fault_name((fl_fault_type)i);
    assert_non_null(n);
    fl_fault_type t = FL_FAULT_COUNT;
    assert_int_equal(fl_fault_parse(n, &t), 0);
    assert_int_equal(t, i);
  }
  assert_string_equal(fl_fault_name(FL_FAULT_DRIFT_EXP), "drift_exp");
  assert_string_equal(fl_fault_name(FL_FAULT_TIMESHIFT), "timeshift");
  assert_null(fl_fault_name(FL_FAULT_COUNT));
  assert_null(fl_fault_name((fl_fault_type)-1));
  fl_fault_type t;
  assert_int_equal(fl_fault_parse("nosuchfault", &t), FL_ENOTFOUND);
  assert_int_equal(fl_fault_parse("Noise", &t), FL_ENOTFOUND);
  assert_int_equal(fl_fault_parse(NULL, &t), FL_EINVAL);
  assert_int_equal(fl_fault_parse("noise", NULL), FL_EINVAL);
}

/* For every type: the fault stays inside its region (span and channel; step
 * to the window's end; timeshift on every channel), changes something there,
 * and the labels follow the documented rule exactly. */
static void test_each_type_confined_and_labelled(void **state) {
  (void)state;
  fl_fault_params p[FL_FAULT_COUNT];
  fl_fault_defaults(p);
  const int ch = 1, t0 = 30, len = 40;
  for (int ti = 1; ti < FL_FAULT_COUNT; ti++) {
    fl_fault_type ty = (fl_fault_type)ti;
    float x[C * T], x0[C * T], sd[C];
    uint8_t lab[C * T];
    make_window(x, sd);
    memcpy(x0, x, sizeof x);
    memset(lab, 0, sizeof lab);
    fl_rng r;
    fl_rng_seed(&r, 1000 + ti);
    assert_int_equal(fl_fault_inject(ty, &p[ty], x, lab, C, T, ch, t0, len, sd, &r), 0);
    int end = ty == FL_FAULT_STEP ? T : t0 + len;
    int dead = ty == FL_FAULT_DROPOUT || ty == FL_FAULT_MISSING || ty == FL_FAULT_STUCK;
    int nchanged = 0;
    for (int c = 0; c < C; c++) {
      for (int t = 0; t < T; t++) {
        int i = c * T + t;
        int inside = (ty == FL_FAULT_TIMESHIFT || c == ch) && t >= t0 && t < end;
        int changed = differs(x[i], x0[i]);
        nchanged += changed;
        if (!inside) {
          assert_false(changed);
          assert_int_equal(lab[i], 0);
        } else if (dead) {
          assert_int_equal(lab[i], ty);
        } else {
          assert_int_equal(lab[i], changed ? ty : 0);
        }
      }
    }
    assert_true(nchanged > 0);
    /* Bias and noise faults disturb every sample of their region. */
    if (ty == FL_FAULT_NOISE || ty == FL_FAULT_OFFSET || ty == FL_FAULT_STEP ||
        ty == FL_FAULT_DRIFT || ty == FL_FAULT_BURST || ty == FL_FAULT_SPIKE)
      assert_int_equal(nchanged, end - t0);
  }
}

static void test_reproducible(void **state) {
  (void)state;
  fl_fault_params p[FL_FAULT_COUNT];
  fl_fault_defaults(p);
  for (int ti = 1; ti < FL_FAULT_COUNT; ti++) {
    fl_fault_type ty = (fl_fault_type)ti;
    float a[C * T], b[C * T], c2[C * T], sd[C];
    uint8_t la[C * T] = {0}, lb[C * T] = {0}, lc[C * T] = {0};
    make_window(a, sd);
    memcpy(b, a, sizeof a);
    memcpy(c2, a, sizeof a);
    fl_rng r;
    fl_rng_seed(&r, 7);
    assert_int_equal(fl_fault_inject(ty, &p[ty], a, la, C, T, 0, 10, 50, sd, &r), 0);
    fl_rng_seed(&r, 7);
    assert_int_equal(fl_fault_inject(ty, &p[ty], b, lb, C, T, 0, 10, 50, sd, &r), 0);
    assert_memory_equal(a, b, sizeof a);
    assert_memory_equal(la, lb, sizeof la);
    /* Types whose size is drawn must come out differently for another seed;
     * the dead-sensor faults have nothing to draw. */
    if (ty != FL_FAULT_DROPOUT && ty != FL_FAULT_MISSING && ty != FL_FAULT_STUCK &&
        ty != FL_FAULT_SATURATION) {
      fl_rng_seed(&r, 8);
      assert_int_equal(fl_fault_inject(ty, &p[ty], c2, lc, C, T, 0, 10, 50, sd, &r), 0);
      assert_true(memcmp(a, c2, sizeof a) != 0);
    }
  }
}

static void test_missing_nan_and_dropout_zero(void **state) {
  (void)state;
  fl_fault_params p[FL_FAULT_COUNT];
  fl_fault_defaults(p);
  float x[C * T], sd[C];
  uint8_t lab[C * T] = {0};
  make_window(x, sd);
  fl_rng r;
  fl_rng_seed(&r, 1);
  assert_int_equal(fl_fault_inject(FL_FAULT_MISSING, &p[FL_FAULT_MISSING], x, lab, C, T, 2,
                                   5, 10, sd, &r), 0);
  for (int t = 5; t < 15; t++) {
    assert_true(isnan(x[2 * T + t]));
    assert_int_equal(lab[2 * T + t], FL_FAULT_MISSING);
  }
  assert_false(isnan(x[2 * T + 4]));
  assert_false(isnan(x[2 * T + 15]));
  assert_int_equal(fl_fault_inject(FL_FAULT_DROPOUT, &p[FL_FAULT_DROPOUT], x, lab, C, T, 0,
                                   0, 3, sd, &r), 0);
  for (int t = 0; t < 3; t++) assert_true(x[t] == 0.0f);
  assert_true(x[3] != 0.0f);
}

static void test_stuck_constant(void **state) {
  (void)state;
  fl_fault_params p[FL_FAULT_COUNT];
  fl_fault_defaults(p);
  float x[C * T], sd[C];
  uint8_t lab[C * T] = {0};
  make_window(x, sd);
  float onset = x[1 * T + 40];
  fl_rng r;
  fl_rng_seed(&r, 1);
  assert_int_equal(fl_fault_inject(FL_FAULT_STUCK, &p[FL_FAULT_STUCK], x, lab, C, T, 1, 40,
                                   30, sd, &r), 0);
  for (int t = 40; t < 70; t++) {
    assert_true(x[T + t] == onset);
    assert_int_equal(lab[T + t], FL_FAULT_STUCK);
  }
  /* With the onset sample missing, the sensor holds its last good reading. */
  make_window(x, sd);
  float before = x[T + 39];
  x[T + 40] = NAN;
  assert_int_equal(fl_fault_inject(FL_FAULT_STUCK, &p[FL_FAULT_STUCK], x, lab, C, T, 1, 40,
                                   30, sd, &r), 0);
  for (int t = 40; t < 70; t++) assert_true(x[T + t] == before);
  /* On a constant signal stuck-at changes nothing but still labels the span. */
  float flat[C * T];
  uint8_t fl[C * T] = {0};
  for (int i = 0; i < C * T; i++) flat[i] = 3.0f;
  assert_int_equal(fl_fault_inject(FL_FAULT_STUCK, &p[FL_FAULT_STUCK], flat, fl, C, T, 0, 0,
                                   10, NULL, &r), 0);
  for (int t = 0; t < 10; t++) assert_int_equal(fl[t], FL_FAULT_STUCK);
  assert_int_equal(fl[10], 0);
}

static void test_saturation_clamps(void **state) {
  (void)state;
  fl_fault_params p[FL_FAULT_COUNT];
  fl_fault_defaults(p);
  int seen_upper = 0, seen_lower = 0;
  for (uint64_t seed = 0; seed < 16; seed++) {
    float x[C * T], x0[C * T], sd[C];
    uint8_t lab[C * T] = {0};
    make_window(x, sd);
    memcpy(x0, x, sizeof x);
    fl_rng r;
    fl_rng_seed(&r, seed);
    assert_int_equal(fl_fault_inject(FL_FAULT_SATURATION, &p[FL_FAULT_SATURATION], x, lab, C,
                                     T, 0, 20, 80, sd, &r), 0);
    float lo = INFINITY, hi = -INFINITY, lo0 = INFINITY, hi0 = -INFINITY;
    int nclamp = 0;
    for (int t = 20; t < 100; t++) {
      lo = fminf(lo, x[t]), hi = fmaxf(hi, x[t]);
      lo0 = fminf(lo0, x0[t]), hi0 = fmaxf(hi0, x0[t]);
      nclamp += lab[t] == FL_FAULT_SATURATION;
    }
    int upper = hi < hi0;
    assert_true(upper != (lo > lo0)); /* exactly one rail */
    seen_upper += upper, seen_lower += !upper;
    float rail = upper ? hi : lo;
    for (int t = 20; t < 100; t++) {
      if (lab[t]) {
        assert_true(x[t] == rail);
        assert_true(upper ? x0[t] > rail : x0[t] < rail);
      } else {
        assert_true(x[t] == x0[t]);
        assert_true(upper ? x0[t] <= rail : x0[t] >= rail);
      }
    }
    /* The rail sits at the 0.7 quantile: about 30 % of the span clips. */
    assert_in_range(nclamp, 20, 28);
  }
  assert_true(seen_upper > 0 && seen_lower > 0);
}

/* With jitter 0 the drawn size is the configured one, so the bias equals
 * magnitude * sd up to the sign: five times the sd, five times the fault. */
static void test_magnitude_scales_with_sd(void **state) {
  (void)state;
  fl_fault_params p[FL_FAULT_COUNT];
  fl_fault_defaults(p);
  const fl_fault_type kinds[] = {FL_FAULT_OFFSET, FL_FAULT_STEP, FL_FAULT_DRIFT,
                                 FL_FAULT_DRIFT_EXP, FL_FAULT_SPIKE};
  for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++) {
    fl_fault_type ty = kinds[k];
    p[ty].jitter = 0.0f;
    float x1[C * T] = {0}, x5[C * T] = {0};
    float sd1[C] = {1, 1, 1}, sd5[C] = {1, 5, 1};
    fl_rng r;
    fl_rng_seed(&r, 3);
    assert_int_equal(fl_fault_inject(ty, &p[ty], x1, NULL, C, T, 1, 10, 41, sd1, &r), 0);
    fl_rng_seed(&r, 3);
    assert_int_equal(fl_fault_inject(ty, &p[ty], x5, NULL, C, T, 1, 10, 41, sd5, &r), 0);
    float peak1 = 0.0f;
    for (int t = 0; t < T; t++) {
      assert_float_equal(x5[T + t], 5.0f * x1[T + t], 1e-4f);
      peak1 = fmaxf(peak1, fabsf(x1[T + t]));
    }
    assert_float_equal(peak1, p[ty].magnitude, 1e-4f);
  }
  /* Noise: the sample sd of the injected noise follows sd too. */
  float xn[C * T] = {0};
  float sdn[C] = {1, 4, 1};
  p[FL_FAULT_NOISE].jitter = 0.0f;
  p[FL_FAULT_NOISE].magnitude = 1.0f;
  fl_rng r;
  fl_rng_seed(&r, 4);
  assert_int_equal(fl_fault_inject(FL_FAULT_NOISE, &p[FL_FAULT_NOISE], xn, NULL, C, T, 1, 0, T,
                                   sdn, &r), 0);
  double ss = 0.0;
  for (int t = 0; t < T; t++) ss += (double)xn[T + t] * xn[T + t];
  assert_in_range((long)(sqrt(ss / T) * 100.0), 300, 500);
}

static void test_drift_and_gain_shapes(void **state) {
  (void)state;
  fl_fault_params p[FL_FAULT_COUNT];
  fl_fault_defaults(p);
  p[FL_FAULT_DRIFT].jitter = 0.0f;
  float x[C * T] = {0};
  fl_rng r;
  fl_rng_seed(&r, 5);
  assert_int_equal(fl_fault_inject(FL_FAULT_DRIFT, &p[FL_FAULT_DRIFT], x, NULL, C, T, 0, 0, 40,
                                   NULL, &r), 0);
  /* Linear: equal increments, reaching the magnitude at the span's end. */
  for (int t = 1; t < 40; t++) assert_float_equal(x[t] - x[t - 1], x[0], 1e-4f);
  assert_float_equal(fabsf(x[39]), 4.0f, 1e-4f);
  assert_true(x[40] == 0.0f);

  /* Exponential: increments grow. */
  float y[C * T] = {0};
  assert_int_equal(fl_fault_inject(FL_FAULT_DRIFT_EXP, &p[FL_FAULT_DRIFT_EXP], y, NULL, C, T, 0,
                                   0, 40, NULL, &r), 0);
  for (int t = 2; t < 40; t++) assert_true(fabsf(y[t] - y[t - 1]) > fabsf(y[t - 1] - y[t - 2]));

  /* Gain scales the swing about the channel's mean. */
  float g[C * T], g0[C * T], sd[C];
  make_window(g, sd);
  memcpy(g0, g, sizeof g);
  double mean = 0.0;
  for (int t = 0; t < T; t++) mean += g[t];
  mean /= T;
  p[FL_FAULT_GAIN].jitter = 0.0f;
  assert_int_equal(fl_fault_inject(FL_FAULT_GAIN, &p[FL_FAULT_GAIN], g, NULL, C, T, 0, 0, T, sd,
                                   &r), 0);
  double ratio = (g[7] - mean) / (g0[7] - mean);
  assert_true(fabs(ratio - 2.0) < 1e-3 || fabs(ratio - 0.5) < 1e-3);
  for (int t = 0; t < T; t++)
    assert_float_equal(g[t] - mean, ratio * (g0[t] - mean), 1e-3f);
}

static void test_timeshift_delays_block(void **state) {
  (void)state;
  fl_fault_params p[FL_FAULT_COUNT];
  fl_fault_defaults(p);
  p[FL_FAULT_TIMESHIFT].jitter = 0.0f;
  p[FL_FAULT_TIMESHIFT].shift = 4;
  float x[C * T], x0[C * T], sd[C];
  uint8_t lab[C * T] = {0};
  make_window(x, sd);
  memcpy(x0, x, sizeof x);
  fl_rng r;
  fl_rng_seed(&r, 6);
  /* ch is ignored for a time shift, even out of range. */
  assert_int_equal(fl_fault_inject(FL_FAULT_TIMESHIFT, &p[FL_FAULT_TIMESHIFT], x, lab, C, T, -1,
                                   2, 50, sd, &r), 0);
  for (int c = 0; c < C; c++)
    for (int t = 2; t < 52; t++) {
      int src = t - 4 < 0 ? 0 : t - 4;
      assert_true(x[c * T + t] == x0[c * T + src]);
      assert_int_equal(lab[c * T + t], FL_FAULT_TIMESHIFT);
    }
}

/* A sample already missing stays missing under an additive fault and is not
 * labelled: the fault is invisible there. */
static void test_nan_input_not_labelled(void **state) {
  (void)state;
  fl_fault_params p[FL_FAULT_COUNT];
  fl_fault_defaults(p);
  float x[C * T], sd[C];
  uint8_t lab[C * T] = {0};
  make_window(x, sd);
  x[25] = NAN;
  fl_rng r;
  fl_rng_seed(&r, 2);
  assert_int_equal(fl_fault_inject(FL_FAULT_OFFSET, &p[FL_FAULT_OFFSET], x, lab, C, T, 0, 20,
                                   10, sd, &r), 0);
  assert_true(isnan(x[25]));
  assert_int_equal(lab[25], 0);
  assert_int_equal(lab[24], FL_FAULT_OFFSET);
}

static void test_bad_arguments(void **state) {
  (void)state;
  fl_fault_params p[FL_FAULT_COUNT];
  fl_fault_defaults(p);
  float x[C * T], x0[C * T], sd[C];
  uint8_t lab[C * T] = {0};
  make_window(x, sd);
  memcpy(x0, x, sizeof x);
  fl_rng r;
  fl_rng_seed(&r, 1);
  const fl_fault_params *q = &p[FL_FAULT_OFFSET];
  assert_int_equal(fl_fault_inject(FL_FAULT_OFFSET, q, x, lab, C, T, 0, T - 5, 10, sd, &r), FL_EINVAL);
  assert_int_equal(fl_fault_inject(FL_FAULT_OFFSET, q, x, lab, C, T, 0, -1, 10, sd, &r), FL_EINVAL);
  assert_int_equal(fl_fault_inject(FL_FAULT_OFFSET, q, x, lab, C, T, 0, 0, 0, sd, &r), FL_EINVAL);
  assert_int_equal(fl_fault_inject(FL_FAULT_OFFSET, q, x, lab, C, T, C, 0, 10, sd, &r), FL_EINVAL);
  assert_int_equal(fl_fault_inject(FL_FAULT_OFFSET, q, x, lab, C, T, -1, 0, 10, sd, &r), FL_EINVAL);
  assert_int_equal(fl_fault_inject(FL_FAULT_OFFSET, q, x, lab, 0, T, 0, 0, 10, sd, &r), FL_EINVAL);
  assert_int_equal(fl_fault_inject(FL_FAULT_OFFSET, q, x, lab, C, 0, 0, 0, 0, sd, &r), FL_EINVAL);
  assert_int_equal(fl_fault_inject(FL_FAULT_OFFSET, q, x, lab, -2, T, 0, 0, 10, sd, &r), FL_EINVAL);
  assert_int_equal(fl_fault_inject(FL_FAULT_COUNT, q, x, lab, C, T, 0, 0, 10, sd, &r), FL_EINVAL);
  assert_int_equal(fl_fault_inject(FL_FAULT_OFFSET, NULL, x, lab, C, T, 0, 0, 10, sd, &r), FL_EINVAL);
  assert_int_equal(fl_fault_inject(FL_FAULT_OFFSET, q, NULL, lab, C, T, 0, 0, 10, sd, &r), FL_EINVAL);
  assert_int_equal(fl_fault_inject(FL_FAULT_OFFSET, q, x, lab, C, T, 0, 0, 10, sd, NULL), FL_EINVAL);
  float badsd[C] = {-1.0f, 1.0f, 1.0f};
  assert_int_equal(fl_fault_inject(FL_FAULT_OFFSET, q, x, lab, C, T, 0, 0, 10, badsd, &r), FL_EINVAL);
  fl_fault_params bad = p[FL_FAULT_SINE];
  bad.period = 0.0f;
  assert_int_equal(fl_fault_inject(FL_FAULT_SINE, &bad, x, lab, C, T, 0, 0, 10, sd, &r), FL_EINVAL);
  bad = p[FL_FAULT_SATURATION];
  bad.level = 0.3f;
  assert_int_equal(fl_fault_inject(FL_FAULT_SATURATION, &bad, x, lab, C, T, 0, 0, 10, sd, &r), FL_EINVAL);
  /* Nothing was written by any failing call. */
  assert_memory_equal(x, x0, sizeof x);
  for (int i = 0; i < C * T; i++) assert_int_equal(lab[i], 0);
  /* FL_FAULT_NONE is valid and a no-op. */
  assert_int_equal(fl_fault_inject(FL_FAULT_NONE, q, x, lab, C, T, 0, 0, 10, sd, &r), 0);
  assert_memory_equal(x, x0, sizeof x);

  fl_fault_type types[] = {FL_FAULT_NOISE};
  assert_int_equal(fl_fault_random(p, types, 0, x, lab, C, T, sd, &r, NULL), FL_EINVAL);
  assert_int_equal(fl_fault_random(p, types, 1, x, lab, 0, T, sd, &r, NULL), FL_EINVAL);
  fl_fault_type badtypes[] = {FL_FAULT_COUNT};
  assert_int_equal(fl_fault_random(p, badtypes, 1, x, lab, C, T, sd, &r, NULL), FL_EINVAL);
}

static void test_random_fault(void **state) {
  (void)state;
  fl_fault_params p[FL_FAULT_COUNT];
  fl_fault_defaults(p);
  fl_fault_type all[FL_FAULT_COUNT - 1];
  for (int i = 1; i < FL_FAULT_COUNT; i++) all[i - 1] = (fl_fault_type)i;
  int seen[FL_FAULT_COUNT] = {0};
  for (uint64_t seed = 0; seed < 400; seed++) {
    float x[C * T], x2[C * T], sd[C];
    uint8_t lab[C * T] = {0}, lab2[C * T] = {0};
    make_window(x, sd);
    memcpy(x2, x, sizeof x);
    fl_rng r;
    fl_fault_type ty = FL_FAULT_NONE, ty2 = FL_FAULT_NONE;
    fl_rng_seed(&r, seed);
    assert_int_equal(fl_fault_random(p, all, FL_FAULT_COUNT - 1, x, lab, C, T, sd, &r, &ty), 0);
    fl_rng_seed(&r, seed);
    assert_int_equal(fl_fault_random(p, all, FL_FAULT_COUNT - 1, x2, lab2, C, T, sd, &r, &ty2), 0);
    assert_int_equal(ty, ty2);
    assert_memory_equal(x, x2, sizeof x);
    assert_memory_equal(lab, lab2, sizeof lab);
    assert_true(ty > FL_FAULT_NONE && ty < FL_FAULT_COUNT);
    seen[ty]++;
    /* Labels carry only the chosen id and, except for a time shift, sit on
     * one channel. */
    int chans = 0;
    for (int c = 0; c < C; c++) {
      int any = 0;
      for (int t = 0; t < T; t++) {
        uint8_t l = lab[c * T + t];
        assert_true(l == 0 || l == ty);
        any |= l != 0;
      }
      chans += any;
    }
    if (ty != FL_FAULT_TIMESHIFT) assert_true(chans <= 1);
  }
  for (int i = 1; i < FL_FAULT_COUNT; i++) assert_true(seen[i] > 0);

  /* A set holding only FL_FAULT_NONE leaves the window clean. */
  float x[C * T], x0[C * T], sd[C];
  uint8_t lab[C * T] = {0};
  make_window(x, sd);
  memcpy(x0, x, sizeof x);
  fl_fault_type none[] = {FL_FAULT_NONE};
  fl_fault_type ty = FL_FAULT_COUNT;
  fl_rng r;
  fl_rng_seed(&r, 1);
  assert_int_equal(fl_fault_random(p, none, 1, x, lab, C, T, sd, &r, &ty), 0);
  assert_int_equal(ty, FL_FAULT_NONE);
  assert_memory_equal(x, x0, sizeof x);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_name_parse_roundtrip),
      cmocka_unit_test(test_each_type_confined_and_labelled),
      cmocka_unit_test(test_reproducible),
      cmocka_unit_test(test_missing_nan_and_dropout_zero),
      cmocka_unit_test(test_stuck_constant),
      cmocka_unit_test(test_saturation_clamps),
      cmocka_unit_test(test_magnitude_scales_with_sd),
      cmocka_unit_test(test_drift_and_gain_shapes),
      cmocka_unit_test(test_timeshift_delays_block),
      cmocka_unit_test(test_nan_input_not_labelled),
      cmocka_unit_test(test_bad_arguments),
      cmocka_unit_test(test_random_fault),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
