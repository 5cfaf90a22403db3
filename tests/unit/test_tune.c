/* Online fine-tuning (lib/tune.c): the replay buffer, the job's copy of the
 * weights, validation against the current model, and the Lipschitz targets
 * after every accepted update. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "faultline/error.h"
#include "faultline/tune.h"

#include "test_keep.h"

#define ROWS 700

static void small_spec(fl_model_spec *s) {
  static const char *a[] = {"m0", "m1"}, *b[] = {"e0"};
  fl_model_spec_defaults(s);
  s->window = 16;
  s->enc1 = 4;
  s->enc2 = 8;
  s->hidden = 16;
  s->head_hidden = 16;
  s->emb = 8;
  assert_int_equal(fl_model_spec_add(s, "mech", 1, 2, a), 0);
  assert_int_equal(fl_model_spec_add(s, "elec", 2, 1, b), 0);
  s->target[FL_MOD_ENC] = 2.0f;
  s->target[FL_MOD_DEC] = 2.0f;
  s->target[FL_MOD_BLOCK] = 0.8f;
  s->target[FL_MOD_HEAD] = 2.0f;
}

/* A plant of coupled sines; level shifts the operating point (drift). */
static void make_series(fl_series *s, const fl_model_spec *spec, int rows, float level,
                        unsigned seed) {
  memset(s, 0, sizeof *s);
  s->rows = rows;
  s->n_mod = spec->n_mod;
  s->x = calloc((size_t)spec->n_mod, sizeof *s->x);
  assert_non_null(s->x);
  fl_rng r;
  fl_rng_seed(&r, seed);
  s->x[0] = malloc(sizeof(float) * 2 * rows);
  s->x[1] = malloc(sizeof(float) * 2 * rows);
  assert_non_null(s->x[0]);
  assert_non_null(s->x[1]);
  for (int t = 0; t < rows; t++) {
    float ph = 0.21f * t;
    s->x[0][t] = sinf(ph) + level + 0.1f * (fl_rng_uniform(&r) - 0.5f);
    s->x[0][rows + t] = 0.5f * cosf(ph) + 2.0f + 0.1f * (fl_rng_uniform(&r) - 0.5f);
    for (int k = 0; k < 2; k++)
      s->x[1][2 * t + k] =
          sinf(ph + 0.1f * k) * 0.8f + 0.5f * level + 0.1f * (fl_rng_uniform(&r) - 0.5f);
  }
}

typedef struct {
  fl_model_spec spec;
  fl_model *m;
  fl_calib cal;
  fl_detect_config dcfg;
  fl_train_config tcfg;
} fixture;

static fixture *trained(void) {
  fixture *f = calloc(1, sizeof *f);
  assert_non_null(f);
  small_spec(&f->spec);
  fl_series s;
  make_series(&s, &f->spec, ROWS, 0.0f, 5);
  fl_train_defaults(&f->tcfg);
  f->tcfg.epochs1 = 4;
  f->tcfg.epochs2 = 3;
  f->tcfg.batch = 16;
  f->tcfg.stride = 2;
  assert_int_equal(fl_model_create(&f->m, &f->spec, 3), 0);
  assert_int_equal(fl_train_normalise(f->m, &s, 1, &f->tcfg), 0);
  assert_int_equal(fl_train_stage1(f->m, &s, 1, &f->tcfg, NULL, NULL), 0);
  assert_int_equal(fl_train_stage2(f->m, &s, 1, &f->tcfg, NULL, NULL), 0);
  fl_detect_defaults(&f->dcfg);
  f->dcfg.tail = 8;
  assert_int_equal(fl_detect_calibrate(f->m, &f->cal, &s, 1, &f->tcfg, &f->dcfg), 0);
  fl_series_free(&s);
  return f;
}

static void fixture_free(fixture *f) {
  fl_model_free(f->m);
  fl_model_spec_free(&f->spec);
  fl_calib_free(&f->cal);
  free(f);
}

/* Pushes the windows of a recording at operating point `level`. */
static int fill(fl_tune_buffer *buf, const fixture *f, float level, int n, unsigned seed) {
  fl_series s;
  make_series(&s, &f->spec, n + f->spec.window, level, seed);
  fl_ctx *ctx;
  assert_int_equal(fl_ctx_create(&ctx, f->m, 1), 0);
  float *raw[8] = {0}; /* the test model has fewer modalities */
  for (int i = 0; i < f->spec.n_mod; i++)
    raw[i] = malloc(sizeof(float) * f->spec.mod[i].channels * f->spec.window *
                    f->spec.mod[i].rate);
  int pushed = 0;
  for (int e = f->spec.window; e < s.rows; e++) {
    assert_int_equal(fl_series_window(&s, &f->spec, e, raw), 0);
    for (int i = 0; i < f->spec.n_mod; i++)
      assert_int_equal(fl_model_normalise(f->m, ctx, 0, i, raw[i], 10.0f), 0);
    assert_int_equal(fl_tune_buffer_push(buf, ctx, 0), 0);
    pushed++;
  }
  for (int i = 0; i < f->spec.n_mod; i++) free(raw[i]);
  fl_ctx_free(ctx);
  fl_series_free(&s);
  return pushed;
}

static void test_buffer_ring(void **state) {
  (void)state;
  fl_model_spec spec;
  small_spec(&spec);
  fl_model *m;
  assert_int_equal(fl_model_create(&m, &spec, 1), 0);
  fl_tune_buffer *b;
  assert_int_equal(fl_tune_buffer_create(&b, m, 1), FL_EINVAL);
  assert_int_equal(fl_tune_buffer_create(&b, m, 8), 0);
  fl_ctx *ctx;
  assert_int_equal(fl_ctx_create(&ctx, m, 2), 0);
  for (int k = 0; k < 10; k++) {
    assert_int_equal(fl_tune_buffer_push(b, ctx, k % 2), 0);
    assert_int_equal(fl_tune_buffer_count(b), k + 1 < 8 ? k + 1 : 8);
  }
  assert_int_equal(fl_tune_buffer_capacity(b), 8);
  /* move: the window `age` pushes back goes over intact. */
  fl_tune_buffer *small;
  assert_int_equal(fl_tune_buffer_create(&small, m, 3), 0);
  for (int k = 0; k < 4; k++) {
    fl_ctx_input(ctx, 0)[0] = (float)k;
    assert_int_equal(fl_tune_buffer_push(small, ctx, 0), 0);
  }
  assert_int_equal(fl_tune_buffer_move(b, small, 3), FL_EINVAL);
  fl_tune_buffer_clear(b);
  assert_int_equal(fl_tune_buffer_move(b, small, 2), 0); /* holds 1, 2, 3: the 1 */
  assert_int_equal(fl_tune_buffer_move(b, small, 0), 0); /* the 3 */
  assert_int_equal(fl_tune_buffer_count(b), 2);
  /* An empty source has nothing to move. */
  fl_tune_buffer_clear(small);
  assert_int_equal(fl_tune_buffer_move(b, small, 0), FL_EINVAL);
  assert_int_equal(fl_tune_buffer_count(b), 2);
  fl_tune_buffer_free(small);
  fl_tune_buffer_clear(b);
  assert_int_equal(fl_tune_buffer_count(b), 0);
  /* A job needs min_windows windows. */
  fl_tune_config cfg;
  fl_tune_defaults(&cfg);
  fl_tune_job *j;
  assert_int_equal(fl_tune_job_create(&j, m, &cfg), 0);
  fl_calib cal;
  memset(&cal, 0, sizeof cal);
  assert_int_equal(fl_tune_job_prepare(j, m, &cal, b), FL_EINVAL);
  fl_tune_result r;
  assert_int_equal(fl_tune_job_run(j, &r), FL_EINVAL);
  assert_int_equal(fl_tune_job_apply(j, m, &cal), FL_EINVAL);
  fl_tune_job_free(j);
  fl_ctx_free(ctx);
  fl_tune_buffer_free(b);
  fl_model_free(m);
  fl_model_spec_free(&spec);
}

/* An accepted update: the live model changes only on apply, every layer is
 * under its target, and the thresholds come from the buffer. */
static void test_accept_and_norms(void **state) {
  (void)state;
  fixture *f = trained();
  fl_tune_buffer *buf;
  assert_int_equal(fl_tune_buffer_create(&buf, f->m, 256), 0);
  fill(buf, f, 1.5f, 300, 9); /* a drifted operating point */
  assert_int_equal(fl_tune_buffer_count(buf), 256);
  fl_tune_config cfg;
  fl_tune_defaults(&cfg);
  cfg.steps = 30;
  cfg.batch = 16;
  cfg.lr = 2e-2f; /* large, so that projection has work to do */
  cfg.lr_head = 2e-2f;
  cfg.margin = 100.0f;
  cfg.detect = f->dcfg;
  fl_tune_job *j;
  assert_int_equal(fl_tune_job_create(&j, f->m, &cfg), 0);
  size_t np = fl_model_param_count(f->m);
  float *before = malloc(sizeof(float) * np);
  memcpy(before, fl_model_param_block(f->m), sizeof(float) * np);
  fl_calib cal = {0};
  assert_int_equal(fl_calib_copy(&cal, &f->cal), 0);
  test_keep(cal.block);
  assert_int_equal(fl_tune_job_prepare(j, f->m, &cal, buf), 0);
  fl_tune_result r;
  assert_int_equal(fl_tune_job_run(j, &r), 0);
  print_message("steps %d loss %g -> %g far %g -> %g threshold %g -> %g max sigma/target %g "
                "%.3f s\n",
                r.steps, r.loss_old, r.loss_new, r.far_old, r.far_new, f->cal.threshold,
                r.threshold, r.max_ratio, r.seconds);
  assert_int_equal(r.steps, 30);
  assert_int_equal(r.ntrain + r.nval, 256);
  assert_true(r.accepted);
  /* The run touched a copy only. */
  assert_memory_equal(before, fl_model_param_block(f->m), sizeof(float) * np);
  assert_int_equal(fl_tune_job_apply(j, f->m, &cal), 0);
  assert_memory_not_equal(before, fl_model_param_block(f->m), sizeof(float) * np);
  /* apply copied only the modules a run changes (f->m is the model the run
   * started from): the live model is the candidate, every parameter and
   * the normalisation. */
  fl_model *cand = fl_tune_job_model(j);
  int nch = fl_model_channels(f->m);
  assert_memory_equal(fl_model_param_block(cand), fl_model_param_block(f->m),
                      sizeof(float) * np);
  assert_memory_equal(fl_model_mean(cand), fl_model_mean(f->m), sizeof(float) * nch);
  assert_memory_equal(fl_model_std(cand), fl_model_std(f->m), sizeof(float) * nch);
  assert_true(isfinite(cal.threshold));
  assert_float_equal(cal.threshold, r.threshold, 0.0f);
  /* Every layer's spectral norm under its target, within the power
   * iteration's tolerance, measured afresh on the live model. */
  int checked = 0;
  for (int l = 0; l < fl_model_layer_count(f->m); l++) {
    fl_layer *ly = fl_model_layer(f->m, l);
    if (ly->target <= 0.0f) continue;
    float sg;
    assert_int_equal(fl_model_layer_norm(f->m, l, &sg), 0);
    if (sg > ly->target * 1.01f) print_message("%s sigma %g target %g\n", ly->name, sg, ly->target);
    assert_true(sg <= ly->target * 1.01f);
    checked++;
  }
  assert_true(checked >= 6);
  assert_true(r.max_ratio <= 1.01f);
  /* The block changed and the encoders (frozen) did not. */
  fl_param *ps;
  int n;
  fl_model_params(f->m, FL_MOD_ENC, &ps, &n);
  for (int q = 0; q < n; q++)
    assert_memory_equal(ps[q].w, before + (ps[q].w - fl_model_param_block(f->m)),
                        sizeof(float) * ps[q].n);
  /* On the drifted data the recalibrated model raises fewer false alarms
   * than the one it replaced would have. */
  assert_true(r.far_new <= r.far_old);
  /* The next job judges the model in service with its calibration: on the
   * windows that calibration came from it raises few alarms. */
  assert_int_equal(fl_tune_job_prepare(j, f->m, &cal, buf), 0);
  fl_tune_result r2;
  assert_int_equal(fl_tune_job_run(j, &r2), 0);
  print_message("next: far %g -> %g\n", r2.far_old, r2.far_new);
  /* That job took the applied candidate as its reference without a copy:
   * it judges the model in service exactly as a job that copied it. */
  fl_tune_job *j2;
  assert_int_equal(fl_tune_job_create(&j2, f->m, &cfg), 0);
  assert_int_equal(fl_tune_job_prepare(j2, f->m, &cal, buf), 0);
  fl_tune_result r3;
  assert_int_equal(fl_tune_job_run(j2, &r3), 0);
  assert_float_equal(r2.loss_old, r3.loss_old, 0.0f);
  assert_float_equal(r2.far_old, r3.far_old, 0.0f);
  assert_float_equal(r2.score_old, r3.score_old, 0.0f);
  assert_float_equal(r2.det_old, r3.det_old, 0.0f);
  fl_tune_job_free(j2);
  free(before);
  fl_tune_job_free(j);
  fl_tune_buffer_free(buf);
  fixture_free(f);
}

/* A margin no update can meet: rejected, and apply refuses. */
static void test_reject(void **state) {
  (void)state;
  fixture *f = trained();
  fl_tune_buffer *buf;
  assert_int_equal(fl_tune_buffer_create(&buf, f->m, 128), 0);
  fill(buf, f, 0.0f, 128, 21);
  fl_tune_config cfg;
  fl_tune_defaults(&cfg);
  cfg.steps = 5;
  cfg.batch = 16;
  cfg.margin = -10.0f;
  cfg.detect = f->dcfg;
  fl_tune_job *j;
  assert_int_equal(fl_tune_job_create(&j, f->m, &cfg), 0);
  assert_int_equal(fl_tune_job_prepare(j, f->m, &f->cal, buf), 0);
  fl_tune_result r;
  assert_int_equal(fl_tune_job_run(j, &r), 0);
  print_message("clean: loss %g -> %g far %g -> %g\n", r.loss_old, r.loss_new, r.far_old, r.far_new);
  assert_false(r.accepted);
  /* lr_head 0 (the default) leaves the head as it was; the block moved. */
  fl_param *ph, *pc;
  int nh, nc;
  fl_model_params(f->m, FL_MOD_HEAD, &ph, &nh);
  fl_model_params(fl_tune_job_model(j), FL_MOD_HEAD, &pc, &nc);
  assert_int_equal(nh, nc);
  for (int q = 0; q < nh; q++) assert_memory_equal(ph[q].w, pc[q].w, sizeof(float) * ph[q].n);
  fl_model_params(f->m, FL_MOD_BLOCK, &ph, &nh);
  fl_model_params(fl_tune_job_model(j), FL_MOD_BLOCK, &pc, &nc);
  int moved = 0;
  for (int q = 0; q < nh; q++) moved |= memcmp(ph[q].w, pc[q].w, sizeof(float) * ph[q].n) != 0;
  assert_true(moved);
  assert_true(isfinite(r.loss_old) && isfinite(r.loss_new));
  fl_calib cal = {0};
  assert_int_equal(fl_calib_copy(&cal, &f->cal), 0);
  test_keep(cal.block);
  assert_int_equal(fl_tune_job_apply(j, f->m, &cal), FL_EINVAL);
  assert_int_equal(cal.nch, f->cal.nch);
  assert_memory_equal(cal.block, f->cal.block, sizeof(float) * FL_CALIB_ARRAYS * cal.nch);
  assert_true(cal.threshold == f->cal.threshold && cal.chan_threshold == f->cal.chan_threshold);
  /* Two runs from the same snapshot and seed agree up to the step stream:
   * a job is reusable. */
  assert_int_equal(fl_tune_job_prepare(j, f->m, &f->cal, buf), 0);
  assert_int_equal(fl_tune_job_run(j, &r), 0);
  assert_int_equal(r.steps, 5);
  fl_tune_job_free(j);
  fl_tune_buffer_free(buf);
  fixture_free(f);
}

/* A level the autoencoder never saw: the update moves the channel's mean
 * after it (no further than norm_max), and once the buffer is re-standardised
 * for the new model, the next update finds less left to follow. */
static void test_norm_follows_drift(void **state) {
  (void)state;
  fixture *f = trained();
  fl_tune_buffer *buf;
  assert_int_equal(fl_tune_buffer_create(&buf, f->m, 200), 0);
  fill(buf, f, 3.0f, 200, 13);
  fl_tune_config cfg;
  fl_tune_defaults(&cfg);
  cfg.steps = 3;
  cfg.batch = 16;
  cfg.margin = 100.0f;
  cfg.detect = f->dcfg;
  cfg.norm_max = 0.5f;
  cfg.min_windows = 200; /* the 200 fresh windows are one unit of norm_max */
  cfg.recalibrate = 0;   /* so that both runs below judge with one calibration */
  fl_tune_job *j;
  assert_int_equal(fl_tune_job_create(&j, f->m, &cfg), 0);
  int nch = fl_model_channels(f->m);
  float *mean0 = test_keep(malloc(sizeof(float) * nch));
  memcpy(mean0, fl_model_mean(f->m), sizeof(float) * nch);
  fl_calib cal = {0};
  assert_int_equal(fl_calib_copy(&cal, &f->cal), 0);
  test_keep(cal.block);
  assert_int_equal(fl_tune_job_prepare(j, f->m, &cal, buf), 0);
  fl_tune_result r;
  assert_int_equal(fl_tune_job_run(j, &r), 0);
  const float *mc = fl_model_mean(fl_tune_job_model(j)), *sd = fl_model_std(f->m);
  print_message("norm shift %g sd: mean %g -> %g (sd %g); caught %g -> %g; AUROC %g -> %g; "
                "clean score %g -> %g\n", r.norm_shift, mean0[0], mc[0], sd[0], r.det_old,
                r.det_new, r.auc_old, r.auc_new, r.score_old, r.score_new);
  /* The level rose: channel 0's mean follows it up, by at most norm_max. */
  assert_true(r.norm_shift > 0.05f && r.norm_shift <= 0.5f + 1e-5f);
  assert_true(mc[0] > mean0[0]);
  for (int k = 0; k < nch; k++) assert_true(fabsf(mc[k] - mean0[k]) <= 0.5f * sd[k] + 1e-5f);
  assert_true(r.accepted);
  /* The live model moves only on apply; the buffer follows on rebase. */
  assert_memory_equal(mean0, fl_model_mean(f->m), sizeof(float) * nch);
  assert_int_equal(fl_tune_job_apply(j, f->m, &cal), 0);
  assert_float_equal(fl_model_mean(f->m)[0], mc[0], 0.0f);
  assert_int_equal(fl_tune_job_rebase(j, buf), 0);
  float *d = test_keep(malloc(sizeof(float) * nch));
  assert_int_equal(fl_tune_job_norm_delta(j, d), 0);
  assert_float_equal(d[0], (mc[0] - mean0[0]) / sd[0], 1e-6f);
  assert_true(fabsf(d[0]) > 0.0f);
  /* The next job judges the live model on the re-standardised buffer: it
   * scores exactly what the candidate scored on its own windows. */
  fl_tune_job_free(j);
  cfg.norm_max = 10.0f;
  assert_int_equal(fl_tune_job_create(&j, f->m, &cfg), 0);
  assert_int_equal(fl_tune_job_prepare(j, f->m, &cal, buf), 0);
  fl_tune_result r2;
  assert_int_equal(fl_tune_job_run(j, &r2), 0);
  print_message("next: norm shift %g sd, clean score %g -> %g\n", r2.norm_shift, r2.score_old,
                r2.score_new);
  assert_true(isfinite(r2.norm_shift));
  assert_float_equal(r2.score_old, r.score_new, 1e-3f);
  assert_float_equal(r2.auc_old, r.auc_new, 1e-3f);
  /* norm_rate 0 leaves the normalisation as trained. */
  fl_tune_job_free(j);
  cfg.norm_rate = 0.0f;
  assert_int_equal(fl_tune_job_create(&j, f->m, &cfg), 0);
  assert_int_equal(fl_tune_job_prepare(j, f->m, &cal, buf), 0);
  assert_int_equal(fl_tune_job_run(j, &r2), 0);
  assert_float_equal(r2.norm_shift, 0.0f, 0.0f);
  assert_memory_equal(fl_model_mean(fl_tune_job_model(j)), fl_model_mean(f->m),
                      sizeof(float) * nch);
  fl_tune_job_free(j);
  fl_tune_buffer_free(buf);
  fixture_free(f);
}

/* Only a bias that persists is followed: a buffer whose older half sits at
 * one level and newer half at the opposite one (two operating points the
 * autoencoder reconstructs off in opposite directions) moves no mean, where
 * the same windows all at the one level do; and a dead band as large as the
 * bias keeps even that in place. */
static void test_norm_follows_only_persistent(void **state) {
  (void)state;
  fixture *f = trained();
  fl_tune_buffer *buf;
  assert_int_equal(fl_tune_buffer_create(&buf, f->m, 200), 0);
  fill(buf, f, 3.0f, 100, 13);
  fill(buf, f, -3.0f, 100, 14);
  fl_tune_config cfg;
  fl_tune_defaults(&cfg);
  cfg.steps = 1;
  cfg.batch = 16;
  cfg.margin = 100.0f;
  cfg.detect = f->dcfg;
  cfg.recalibrate = 0;
  cfg.val_fraction = 0.1f;
  fl_tune_job *j;
  assert_int_equal(fl_tune_job_create(&j, f->m, &cfg), 0);
  fl_tune_result r;
  assert_int_equal(fl_tune_job_prepare(j, f->m, &f->cal, buf), 0);
  assert_int_equal(fl_tune_job_run(j, &r), 0);
  print_message("two levels: norm shift %g sd\n", r.norm_shift);
  assert_float_equal(r.norm_shift, 0.0f, 0.0f);
  /* All the windows at the one level: every part agrees, and it moves. */
  fl_tune_job_free(j);
  fl_tune_buffer_clear(buf);
  fill(buf, f, 3.0f, 200, 13);
  assert_int_equal(fl_tune_job_create(&j, f->m, &cfg), 0);
  assert_int_equal(fl_tune_job_prepare(j, f->m, &f->cal, buf), 0);
  assert_int_equal(fl_tune_job_run(j, &r), 0);
  print_message("one level: norm shift %g sd\n", r.norm_shift);
  assert_true(r.norm_shift > 0.05f);
  float moved = r.norm_shift;
  fl_tune_job_free(j);
  cfg.norm_band = 5.0f;
  assert_int_equal(fl_tune_job_create(&j, f->m, &cfg), 0);
  assert_int_equal(fl_tune_job_prepare(j, f->m, &f->cal, buf), 0);
  assert_int_equal(fl_tune_job_run(j, &r), 0);
  print_message("dead band 5 sd: norm shift %g sd (%g without)\n", r.norm_shift, moved);
  assert_float_equal(r.norm_shift, 0.0f, 0.0f);
  fl_tune_job_free(j);
  fl_tune_buffer_free(buf);
  fixture_free(f);
}

/* norm_max is a rate per min_windows fresh windows: 200 fresh windows with
 * min_windows 50 let the mean move up to four times norm_max, and the same
 * buffer snapshot again, with nothing new in it, once. */
static void test_norm_rate_per_window(void **state) {
  (void)state;
  fixture *f = trained();
  fl_tune_buffer *buf;
  assert_int_equal(fl_tune_buffer_create(&buf, f->m, 200), 0);
  fill(buf, f, 3.0f, 200, 13);
  fl_tune_config cfg;
  fl_tune_defaults(&cfg);
  cfg.steps = 1;
  cfg.batch = 16;
  cfg.margin = 100.0f;
  cfg.detect = f->dcfg;
  cfg.norm_max = 0.5f;
  cfg.min_windows = 50;
  fl_tune_job *j;
  assert_int_equal(fl_tune_job_create(&j, f->m, &cfg), 0);
  fl_tune_result r;
  assert_int_equal(fl_tune_job_prepare(j, f->m, &f->cal, buf), 0);
  assert_int_equal(fl_tune_job_run(j, &r), 0);
  print_message("200 fresh windows: norm shift %g sd\n", r.norm_shift);
  assert_true(r.norm_shift > 0.5f + 1e-3f && r.norm_shift <= 2.0f + 1e-5f);
  assert_int_equal(fl_tune_job_prepare(j, f->m, &f->cal, buf), 0);
  assert_int_equal(fl_tune_job_run(j, &r), 0);
  print_message("none fresh: norm shift %g sd\n", r.norm_shift);
  assert_true(r.norm_shift <= 0.5f + 1e-5f);
  fl_tune_job_free(j);
  fl_tune_buffer_free(buf);
  fixture_free(f);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_buffer_ring),
      cmocka_unit_test(test_accept_and_norms),
      cmocka_unit_test(test_reject),
      cmocka_unit_test(test_norm_follows_drift),
      cmocka_unit_test(test_norm_follows_only_persistent),
      cmocka_unit_test(test_norm_rate_per_window),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
