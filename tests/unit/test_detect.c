/* Unit tests for the detector's stream features and masked correction
 * (lib/detect.c) against their contracts in faultline/detect.h:
 * fl_detect_track (the per-stream baseline), fl_detect_reestimate, the
 * out-of-range rule of fl_detect_correct and fl_detect_decide's rule for
 * channels that agree.  A small two-modality model with
 * random weights serves; the properties tested do not depend on training. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "faultline/detect.h"
#include "faultline/error.h"
#include "faultline/model.h"
#include "faultline/pipeline.h"

#define W 16
#define TAIL 4

#include "small_model.h"
#include "test_keep.h"

/* A calibration with the baseline feature on and unit statistics, so that a
 * channel's baseline score is its raw distance minus one. */
static void base_calib(const fl_model *m, fl_calib *cal) {
  test_calib(m, cal);
  cal->tail = TAIL;
  cal->w_base = 1.0f;
  cal->base_span = 50;
  cal->threshold = 5.0f;
  for (int c = 0; c < cal->nch; c++) {
    cal->bas_mu[c] = 1.0f;
    cal->bas_sd[c] = 1.0f;
    cal->bas_v0[c] = 0.01f;
  }
}

/* One window's score as fl_detect_score leaves it: no feature above 0,
 * channel 0's tail at `level`, the others at 0, unit noise. */
static void window(fl_window_score *sc, int nch, float level) {
  float *arr[] = {sc->chan, sc->resid, sc->level, sc->noise, sc->shift};
  for (int k = 0; k < 5; k++) memset(arr[k], 0, sizeof(float) * nch);
  memset(sc->mod_score, 0, sizeof(float) * 2);
  sc->score = sc->emb_score = 0.0f;
  sc->modality = -1;
  for (int c = 0; c < nch; c++) {
    sc->level[c] = c == 0 ? level : 0.0f;
    sc->noise[c] = 0.02f;
  }
}

/* The first window sets the baseline and scores nothing; a level that
 * creeps slowly is followed without a large score; a step of many standard
 * deviations scores high at once and stays visible for many windows. */
static void test_baseline_follows_drift_and_keeps_a_step(void **state) {
  (void)state;
  fl_model *m = small_model(0);
  fl_calib cal;
  base_calib(m, &cal);
  int nch = fl_model_channels(m);
  fl_detect_baseline bl;
  test_baseline(m, &bl);
  fl_window_score sc = test_score(m);
  float raw[8];
  window(&sc, nch, 0.3f);
  fl_detect_track(m, &cal, &bl, &sc, 1, raw);
  for (int c = 0; c < nch; c++) assert_float_equal(raw[c], 0.0f, 0.0f);
  assert_float_equal(bl.level[0], 0.3f, 1e-6);
  /* 400 windows of a drift of 0.001 per tick: far below the spread, each. */
  float worst = 0.0f;
  for (int t = 1; t <= 400; t++) {
    window(&sc, nch, 0.3f + 0.001f * t);
    fl_detect_track(m, &cal, &bl, &sc, 1, NULL);
    if (sc.score > worst) worst = sc.score;
  }
  assert_true(worst < 3.0f);
  assert_float_equal(bl.level[0], 0.7f, 0.1);
  /* A step of 3 (30 of the baseline's standard deviations). */
  int visible = 0;
  for (int t = 0; t < 60; t++) {
    window(&sc, nch, 3.7f);
    fl_detect_track(m, &cal, &bl, &sc, 1, NULL);
    if (t == 0) {
      assert_true(sc.score > 10.0f);
      assert_int_equal(sc.modality, 0);
      assert_true(sc.chan[0] > 10.0f);
      assert_true(sc.chan[1] < 1.0f);
    }
    visible += sc.score > cal.threshold;
  }
  assert_int_equal(visible, 60);
  fl_model_free(m);
}

/* A drifting modality's baseline: in models calibrated before base_drift
 * its (detrended) level took no part; with it the level is the sensor's
 * own, trend added back, and a jump from its baseline scores. */
static void test_baseline_of_drifting_modalities(void **state) {
  (void)state;
  fl_model *m = small_model(1);
  fl_calib cal;
  base_calib(m, &cal);
  int nch = fl_model_channels(m);
  for (int v = 0; v < 2; v++) {
    cal.base_drift = v;
    fl_detect_baseline bl;
    test_baseline(m, &bl);
    fl_window_score sc = test_score(m);
    float raw[8];
    window(&sc, nch, 0.0f);
    fl_detect_track(m, &cal, &bl, &sc, 1, NULL);
    window(&sc, nch, 0.0f);
    sc.level[2] = 50.0f; /* channel b0, modality b, drifts */
    fl_detect_track(m, &cal, &bl, &sc, 1, raw);
    if (v)
      assert_true(raw[2] > 100.0f);
    else
      assert_float_equal(raw[2], 0.0f, 0.0f);
    window(&sc, nch, 0.0f);
    sc.level[2] = 50.0f;
    fl_detect_track(m, &cal, &bl, &sc, 1, NULL);
    if (v)
      assert_true(sc.mod_score[1] > 100.0f);
    else
      assert_true(sc.mod_score[1] <= 0.0f);
  }
  fl_model_free(m);
}

static void fill(float *ra, float *rb) {
  for (int t = 0; t < W; t++) {
    ra[t] = sinf(0.4f * t);
    ra[W + t] = cosf(0.3f * t);
    rb[t] = 0.1f * t - 0.5f;
  }
}

/* Window b of the context: modality a from ra, b from rb, standardised. */
static void load(fl_model *m, fl_ctx *ctx, int b, const float *ra, const float *rb,
                 float clamp) {
  assert_int_equal(fl_model_normalise(m, ctx, b, 0, ra, clamp), 0);
  assert_int_equal(fl_model_normalise(m, ctx, b, 1, rb, clamp), 0);
}

/* A calibration that scores nothing by itself: unit spreads, thresholds 1. */
static void plain_calib(const fl_model *m, fl_calib *cal) {
  test_calib(m, cal);
  cal->tail = TAIL;
  cal->threshold = 1.0f;
  cal->chan_threshold = 1.0f;
  for (int c = 0; c < cal->nch; c++) cal->res_sd[c] = cal->var_sd[c] = 1.0f;
}

/* Re-estimation masks the faulty channel: its estimate no longer depends on
 * its own readings, and windows without a faulty channel keep theirs. */
static void test_reestimate_ignores_the_faulty_channel(void **state) {
  (void)state;
  fl_model *m = small_model(0);
  fl_calib cal;
  base_calib(m, &cal);
  fl_ctx *ctx = NULL;
  assert_int_equal(fl_ctx_create(&ctx, m, 2), 0);
  float ra[2][2 * W], rb[2][W];
  float *raw0[] = {ra[0], rb[0]}, *raw1[] = {ra[1], rb[1]};
  float *const *raw[2] = {raw0, raw1};
  float est[2][2 * W];
  for (int v = 0; v < 2; v++) {
    fill(ra[0], rb[0]);
    fill(ra[1], rb[1]);
    /* The faulty channel a0 of window 0 reads two different things. */
    for (int t = 0; t < W; t++) ra[0][t] = v ? 7.0f : -3.0f + 0.2f * t;
    for (int b = 0; b < 2; b++) {
      load(m, ctx, b, raw[b][0], raw[b][1], 10.0f);
    }
    assert_int_equal(fl_model_forward(m, ctx, 2, 1, 0), 0);
    for (int i = 0; i < 2; i++)
      memcpy(fl_ctx_estimate(ctx, i), fl_ctx_output(ctx, i),
             sizeof(float) * 2 * (i ? W : 2 * W));
    float before1 = fl_ctx_estimate(ctx, 0)[2 * W + 3];
    unsigned char faulty[2 * 3] = {1, 0, 0, 0, 0, 0};
    assert_int_equal(fl_detect_reestimate(m, &cal, ctx, 2, raw, faulty, 10.0f), 0);
    memcpy(est[v], fl_ctx_estimate(ctx, 0), sizeof(float) * 2 * W);
    assert_float_equal(fl_ctx_estimate(ctx, 0)[2 * W + 3], before1, 1e-6);
  }
  /* Window 0's estimate (both channels of modality a) is the same whatever
   * the faulty channel read. */
  for (int k = 0; k < 2 * W; k++) assert_float_equal(est[0][k], est[1][k], 1e-5);
  /* No faulty channel: nothing runs, nothing changes. */
  unsigned char none[6] = {0};
  float keep = fl_ctx_estimate(ctx, 0)[5];
  assert_int_equal(fl_detect_reestimate(m, &cal, ctx, 2, raw, none, 10.0f), 0);
  assert_float_equal(fl_ctx_estimate(ctx, 0)[5], keep, 0.0f);
  fl_ctx_free(ctx);
  fl_model_free(m);
}

/* A reading beyond `range` standard deviations is replaced even on a
 * channel not judged faulty; one within it is not; 0 switches it off. */
static void test_correct_replaces_out_of_range(void **state) {
  (void)state;
  fl_model *m = small_model(0);
  fl_ctx *ctx = NULL;
  assert_int_equal(fl_ctx_create(&ctx, m, 1), 0);
  float ra[2 * W], rb[W], out[2 * W];
  fill(ra, rb);
  ra[W - 1] = 1e4f; /* mean 0, std 1: 10,000 sd out */
  load(m, ctx, 0, ra, rb, 10.0f);
  assert_int_equal(fl_model_forward(m, ctx, 1, 1, 0), 0);
  memcpy(fl_ctx_estimate(ctx, 0), fl_ctx_output(ctx, 0), sizeof(float) * 2 * W);
  int faulty[2] = {0, 0};
  assert_int_equal(fl_detect_correct(m, ctx, 0, 0, ra, faulty, 10.0f, out), 0);
  assert_true(fabsf(out[W - 1]) < 100.0f);
  assert_float_equal(out[W - 2], ra[W - 2], 0.0f);
  assert_float_equal(out[W + 3], ra[W + 3], 0.0f);
  assert_int_equal(fl_detect_correct(m, ctx, 0, 0, ra, faulty, 0.0f, out), 0);
  assert_float_equal(out[W - 1], 1e4f, 0.0f);
  fl_ctx_free(ctx);
  fl_model_free(m);
}

/* fl_detect_correct_tail writes the samples from `from` on, the same as the
 * whole window's correction, and leaves the head as it was. */
static void test_correct_tail_writes_the_tail_only(void **state) {
  (void)state;
  fl_model *m = small_model(0);
  fl_ctx *ctx = NULL;
  assert_int_equal(fl_ctx_create(&ctx, m, 1), 0);
  float ra[2 * W], rb[W], all[2 * W], tail[2 * W];
  fill(ra, rb);
  load(m, ctx, 0, ra, rb, 10.0f);
  assert_int_equal(fl_model_forward(m, ctx, 1, 1, 0), 0);
  memcpy(fl_ctx_estimate(ctx, 0), fl_ctx_output(ctx, 0), sizeof(float) * 2 * W);
  int faulty[2] = {1, 0}, from = W - 5;
  assert_int_equal(fl_detect_correct(m, ctx, 0, 0, ra, faulty, 10.0f, all), 0);
  for (int k = 0; k < 2 * W; k++) tail[k] = -7.0f;
  assert_int_equal(fl_detect_correct_tail(m, ctx, 0, 0, ra, faulty, 10.0f, from, tail), 0);
  for (int c = 0; c < 2; c++)
    for (int t = 0; t < W; t++)
      assert_float_equal(tail[c * W + t], t < from ? -7.0f : all[c * W + t], 0.0f);
  assert_true(all[W - 1] != ra[W - 1]); /* the faulty channel was replaced */
  assert_int_equal(fl_detect_correct_tail(m, ctx, 0, 0, ra, faulty, 10.0f, W + 1, tail),
                   FL_EINVAL);
  assert_int_equal(fl_detect_correct_tail(m, ctx, 0, 0, ra, faulty, 10.0f, -1, tail),
                   FL_EINVAL);
  fl_ctx_free(ctx);
  fl_model_free(m);
}

/* fl_detect_score measures each channel's move from the window's head to
 * its tail; fl_detect_decide passes a modality through when all its channels
 * are judged faulty and moved together (a process event), and replaces the
 * faulty channels when one moved and its neighbour only scored. */
static void test_decide_passes_channels_that_agree(void **state) {
  (void)state;
  fl_model *m = small_model(0);
  fl_calib cal;
  plain_calib(m, &cal);
  cal.agree = 1;
  fl_ctx *ctx = NULL;
  assert_int_equal(fl_ctx_create(&ctx, m, 2), 0);
  float ra[2][2 * W], rb[2][W];
  for (int b = 0; b < 2; b++) {
    fill(ra[b], rb[b]);
    /* Window 0: both channels of modality a step up by 4 in the tail;
     * window 1: only a0 does. */
    for (int t = W - TAIL; t < W; t++) {
      ra[b][t] += 4.0f;
      if (b == 0) ra[b][W + t] += 4.0f;
    }
    load(m, ctx, b, ra[b], rb[b], 10.0f);
  }
  fl_window_score sc[2] = {test_score(m), test_score(m)};
  assert_int_equal(fl_detect_score(m, &cal, ctx, 2, sc, NULL), 0);
  assert_true(fabsf(sc[0].shift[0] - sc[0].shift[1]) < 1.0f);
  assert_true(sc[0].shift[0] > 3.0f && sc[1].shift[0] > 3.0f);
  assert_true(fabsf(sc[1].shift[1]) < 1.0f);
  for (int b = 0; b < 2; b++) {
    /* Both channels of a judged faulty, b not (whatever the random model
     * scored): only the shifts differ between the windows. */
    sc[b].score = 10.0f;
    sc[b].chan[0] = sc[b].chan[1] = 10.0f;
    sc[b].chan[2] = 0.0f;
  }
  for (int v = 0; v < 2; v++) {
    cal.agree = v;
    unsigned char faulty[2][3];
    for (int b = 0; b < 2; b++) {
      fl_hyst h = {0, 0};
      fl_detect_baseline bl;
      test_baseline(m, &bl);
      assert_int_equal(fl_detect_decide(m, &cal, &bl, &h, 1, 1, &sc[b], 1, faulty[b], NULL), 1);
    }
    assert_int_equal(faulty[0][0], !v);
    assert_int_equal(faulty[0][1], !v);
    assert_int_equal(faulty[1][0], 1);
    assert_int_equal(faulty[1][1], 1);
    assert_int_equal(faulty[0][2] | faulty[1][2], 0);
  }
  fl_ctx_free(ctx);
  fl_model_free(m);
}

/* The noise feature counts a collapse always and, with w_rise, a rise:
 * a tail ten times noisier than the calibrated level scores high only then. */
static void test_noise_rise_counts_with_w_rise(void **state) {
  (void)state;
  fl_model *m = small_model(0);
  int nch = fl_model_channels(m);
  fl_calib cal;
  plain_calib(m, &cal);
  cal.w_var = 1.0f;
  fl_ctx *ctx = NULL;
  assert_int_equal(fl_ctx_create(&ctx, m, 1), 0);
  float ra[2 * W], rb[W];
  fill(ra, rb);
  for (int t = W - TAIL; t < W; t++) ra[t] += (t % 2 ? 3.0f : -3.0f);
  load(m, ctx, 0, ra, rb, 10.0f);
  fl_window_score sc[2] = {test_score(m), test_score(m)};
  for (int v = 0; v < 2; v++) {
    cal.w_rise = (float)v;
    for (int c = 0; c < nch; c++) {
      /* Residuals calibrated far above anything seen: only the noise
       * feature can score. */
      cal.res_mu[c] = 100.0f;
      cal.res_sd[c] = 1.0f;
      cal.var_mu[c] = logf(0.1f);
      cal.var_sd[c] = 0.5f;
    }
    assert_int_equal(fl_detect_score(m, &cal, ctx, 1, &sc[v], NULL), 0);
  }
  /* Channel a0's tail alternates by 6: its mean squared difference is about
   * 36, log 3.6 against a clean log(0.1) = -2.3, so z = 11.8. */
  assert_true(sc[0].chan[0] < 1.0f);
  assert_true(sc[1].chan[0] > 10.0f);
  assert_true(sc[1].score > 10.0f && sc[1].modality == 0);
  fl_ctx_free(ctx);
  fl_model_free(m);
}

/* A drifting modality is standardised around its window's linear trend;
 * the tail's level that the baseline follows is the sensor's, trend added
 * back: a ramp's tail mean, not zero. */
static void test_level_of_a_drifting_modality_keeps_its_trend(void **state) {
  (void)state;
  fl_model *m = small_model(1);
  int nch = fl_model_channels(m);
  fl_calib cal;
  base_calib(m, &cal);
  cal.base_drift = 1;
  fl_ctx *ctx = NULL;
  assert_int_equal(fl_ctx_create(&ctx, m, 1), 0);
  float ra[2 * W], rb[W];
  fill(ra, rb);
  for (int t = 0; t < W; t++) rb[t] = 2.0f + 0.5f * t; /* mean 0, std 1: standardised as is */
  load(m, ctx, 0, ra, rb, 100.0f);
  fl_window_score sc = test_score(m);
  assert_int_equal(fl_detect_score(m, &cal, ctx, 1, &sc, NULL), 0);
  double tail = 0;
  for (int t = W - TAIL; t < W; t++) tail += rb[t];
  assert_float_equal(sc.level[2], tail / TAIL, 1e-3);
  cal.base_drift = 0;
  assert_int_equal(fl_detect_score(m, &cal, ctx, 1, &sc, NULL), 0);
  assert_true(fabsf(sc.level[2]) < 2.0f);
  (void)nch;
  fl_ctx_free(ctx);
  fl_model_free(m);
}

/* One window of the re-anchoring test: channel 0 scores `score` and its
 * tail moved by `shift` from its head; the others are quiet. */
static int settle_step(const fl_model *m, const fl_calib *cal, fl_detect_baseline *bl, fl_hyst *h,
                       float score, float shift, float *out) {
  fl_window_score sc = test_score(m);
  window(&sc, cal->nch, 0.0f);
  sc.score = sc.mod_score[0] = sc.chan[0] = score;
  sc.shift[0] = shift;
  unsigned char faulty[3];
  int flag = fl_detect_decide(m, cal, bl, h, 1, 1, &sc, 1, faulty, NULL);
  *out = sc.score;
  return flag;
}

/* A calibration for the decision tests: unit statistics, the given window
 * and channel thresholds. */
static void decide_calib(const fl_model *m, fl_calib *cal, float thr, float chan_thr) {
  test_calib(m, cal);
  cal->tail = TAIL;
  cal->threshold = thr;
  cal->chan_threshold = chan_thr;
}

/* After an anomaly's start and end (two moves), a stream that holds still
 * for cal->settle ticks re-anchors and comes back down; one move alone (an
 * anomaly that lasts) never re-anchors; a move on top of the new normal
 * raises the alarm again; settle 0 never re-anchors. */
static void test_decide_reanchors_once_settled(void **state) {
  (void)state;
  fl_model *m = small_model(0);
  fl_calib cal;
  decide_calib(m, &cal, 5.0f, 5.0f);
  for (int settle = 0; settle <= 20; settle += 20) {
    cal.settle = settle;
    fl_detect_baseline bl;
    test_baseline(m, &bl);
    fl_hyst h = {0, 0};
    float sc;
    for (int t = 0; t < 20; t++) assert_int_equal(settle_step(m, &cal, &bl, &h, 1, 0, &sc), 0);
    assert_int_equal(settle_step(m, &cal, &bl, &h, 10, 3, &sc), 1); /* the start */
    for (int t = 0; t < 60; t++) {
      assert_int_equal(settle_step(m, &cal, &bl, &h, 10, 0, &sc), 1);
      assert_true(sc == 10.0f);
    }
    assert_int_equal(settle_step(m, &cal, &bl, &h, 8, -3, &sc), 1); /* the end */
    for (int t = 0; t < settle - 1; t++) assert_int_equal(settle_step(m, &cal, &bl, &h, 8, 0, &sc), 1);
    assert_int_equal(settle_step(m, &cal, &bl, &h, 8, 0, &sc), !settle);
    for (int t = 0; t < 30; t++) {
      assert_int_equal(settle_step(m, &cal, &bl, &h, 7.5f, 0, &sc), !settle);
      if (settle) assert_true(sc < cal.threshold);
    }
    if (!settle) continue;
    /* A new anomaly on top of the new normal. */
    assert_int_equal(settle_step(m, &cal, &bl, &h, 16, 3, &sc), 1);
    assert_true(sc > cal.threshold);
    /* Back to the training normal for a window: calm, the anchor dropped. */
    for (int t = 0; t < W; t++) assert_int_equal(settle_step(m, &cal, &bl, &h, 1, 0, &sc), 0);
    assert_int_equal(bl.anchored, 0);
    assert_int_equal(settle_step(m, &cal, &bl, &h, 8, 3, &sc), 1);
    assert_true(sc == 8.0f);
  }
  fl_model_free(m);
}

/* The correction does not wait for the alarm's hysteresis: from the first
 * window above the threshold the channels above theirs are replaced while
 * the flag is still down; a window below the threshold replaces nothing,
 * whatever its channels score. */
static void test_decide_corrects_before_the_alarm(void **state) {
  (void)state;
  fl_model *m = small_model(0);
  fl_calib cal;
  decide_calib(m, &cal, 5.0f, 3.0f);
  fl_detect_baseline bl;
  test_baseline(m, &bl);
  fl_hyst h = {0, 0};
  unsigned char faulty[3];
  int above = -1;
  fl_window_score sc = test_score(m);
  /* Below the threshold: channel 0 above its own, nothing replaced. */
  window(&sc, cal.nch, 0.0f);
  sc.score = sc.mod_score[0] = sc.chan[0] = 4.0f;
  assert_int_equal(fl_detect_decide(m, &cal, &bl, &h, 3, 3, &sc, 1, faulty, &above), 0);
  assert_int_equal(above, 0);
  assert_int_equal(faulty[0] | faulty[1] | faulty[2], 0);
  /* Three windows above with on = 3: the first two replace channel 0 (not
   * channel 1, under its threshold) with the flag down, the third raises it. */
  for (int k = 0; k < 3; k++) {
    window(&sc, cal.nch, 0.0f);
    sc.score = sc.mod_score[0] = sc.chan[0] = 9.0f;
    sc.chan[1] = 2.0f;
    assert_int_equal(fl_detect_decide(m, &cal, &bl, &h, 3, 3, &sc, 1, faulty, &above), k == 2);
    assert_int_equal(above, 1);
    assert_int_equal(faulty[0], 1);
    assert_int_equal(faulty[1] | faulty[2], 0);
  }
  fl_model_free(m);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_baseline_follows_drift_and_keeps_a_step),
      cmocka_unit_test(test_baseline_of_drifting_modalities),
      cmocka_unit_test(test_reestimate_ignores_the_faulty_channel),
      cmocka_unit_test(test_correct_replaces_out_of_range),
      cmocka_unit_test(test_correct_tail_writes_the_tail_only),
      cmocka_unit_test(test_decide_passes_channels_that_agree),
      cmocka_unit_test(test_noise_rise_counts_with_w_rise),
      cmocka_unit_test(test_level_of_a_drifting_modality_keeps_its_trend),
      cmocka_unit_test(test_decide_reanchors_once_settled),
      cmocka_unit_test(test_decide_corrects_before_the_alarm),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
