/* faultlined tune: online fine-tuning (the normalisation follows the
 * operating point, the compute block trains).  See fld.h.
 *
 * The maths is lib/tune.c's; this file decides which windows are clean,
 * when a job may run, and moves the weights around:
 *
 *   gate       a window is clean when its score is below gate x threshold
 *              and no window of its stream within `span` windows before or
 *              after it was above the threshold or flagged; candidates wait
 *              in a per-stream ring until their later neighbours are seen
 *   schedule   one job at a time, on the tuner's own thread, which runs
 *              under SCHED_IDLE (nice 10 where that is refused or with
 *              idle = 0), at most max_updates_per_hour; within a job it
 *              works in short slices with sleeps between them so that
 *              training takes about cpu_share of one core (tune_worker.c)
 *   snapshot   the loop's part of a job start is O(1): it notes the buffer's
 *              windows and the calibration (the parameters are the job's
 *              already, see fl_tune_job_begin); the worker copies the
 *              windows, and until it has, windows that pass the gate wait in
 *              a small inbox instead of overwriting the ring it reads
 *   swap       the job trains on private copies; when it is done the loop,
 *              between batches, copies what an update changes (block, head,
 *              normalisation: 98 % of the default model's parameters, about
 *              5 MB, 0.7-0.9 ms) and the calibration into the engine (and
 *              re-standardises the buffered windows),
 *              so a window is scored entirely by the old or entirely by the
 *              new model
 *
 * The worker thread and its pacing are tune_worker.c's, checkpoints
 * tune_ckpt.c's (tune_int.h).
 */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "faultline/error.h"
#include "tune_int.h"

static double fld__mono(fld_app *app) { return (double)uv_now(app->loop) / 1000.0; }

void fld_tune_stream_free(fld_stream *st) {
  if (!st || !st->tune) return;
  fl_tune_buffer_free(st->tune->cand);
  free(st->tune);
  st->tune = NULL;
}

void fld_tune_set_version(fld_tuner *t) {
  fld_engine *e = t->app->eng;
  if (t->updates)
    snprintf(e->version, sizeof e->version, "%s-u%" PRIu64, t->base, t->updates);
  else
    snprintf(e->version, sizeof e->version, "%s", t->base);
}

void fld_tune_measure_norms(fld_engine *e) {
  for (int l = 0; l < e->n_layers; l++)
    if (fl_model_layer_norm(e->b.model, l, &e->layer_norm[l])) e->layer_norm[l] = -1.0f;
}

/* Sizes the array the worker measures the candidate's norms into for a
 * model of nl layers; on failure it keeps the old one (the swap then
 * measures on the loop).  Only while no job is in flight: one writes it. */
static int fld__size_norms(fld_tuner *t, int nl) {
  if (t->n_norm == nl) return 0;
  float *n = realloc(t->cand_norm, sizeof(float) * (size_t)(nl > 0 ? nl : 1));
  if (!n) return FL_ENOMEM;
  t->cand_norm = n;
  t->n_norm = nl;
  return 0;
}

static void fld__est_free(fl_estimator *e) {
  fl_estimator_free(e);
  free(e);
}

int fld_tune_start(fld_app *app, char *err, size_t errlen) {
  const fld_config *c = &app->cfg;
  if (!c->tune_enabled) return 0;
  fld_tuner *t = app->tuner;
  if (!t) {
    if (!(t = calloc(1, sizeof *t))) return FL_ENOMEM;
    app->tuner = t;
    t->app = app;
  }
  fld_engine *e = app->eng;
  /* The base's identity is its file hash (a reload brings a new one). */
  snprintf(t->base, sizeof t->base, "%.16s", e->version);
  t->cfg = c->lib.tune;
  t->cfg.detect = e->b.detect;
  t->cfg.train.clamp = e->b.clamp;
  t->span = c->tune_span > 0 ? c->tune_span : e->hyst_on + e->hyst_off;
  t->path[0] = 0;
  if (c->tune_checkpoint[0]) {
    const char *sd = getenv("STATE_DIRECTORY");
    int n;
    if (c->tune_checkpoint[0] == '/')
      n = snprintf(t->path, sizeof t->path, "%s", c->tune_checkpoint);
    else if (!sd || !*sd) /* not where the working directory happens to be */
      n = 0;
    else /* systemd may list several directories, colon-separated: the first */
      n = snprintf(t->path, sizeof t->path, "%.*s/%s", (int)strcspn(sd, ":"), sd,
                   c->tune_checkpoint);
    if (n < 0 || (size_t)n >= sizeof t->path) {
      snprintf(err, errlen, "[tune] checkpoint path is too long");
      return FL_EINVAL;
    }
  }
  /* A job in flight may still be copying the old buffer's windows: it is
   * freed once the job is done. */
  if (t->busy && !t->retired) t->retired = t->buf;
  else fl_tune_buffer_free(t->buf);
  fl_tune_buffer_free(t->inbox);
  t->buf = t->inbox = NULL;
  /* The estimator a checkpoint carries: the engine's, copied because a
   * reload frees the engine while a job (its checkpoint written on the
   * worker) may run.  Tuning does not refit it: its variances were measured
   * on the base network and stay as they were, as they do in the engine
   * after a swap (refitting needs the training data; see tuning.md).  A job
   * in flight keeps the copy it started with until it is done. */
  if (t->busy && !t->est_job) t->est_job = t->est;
  else fld__est_free(t->est);
  t->est = NULL;
  int rc = FL_ENOMEM;
  if ((t->est = malloc(sizeof *t->est)) && (rc = fl_estimator_copy(t->est, &e->b.est))) {
    free(t->est);
    t->est = NULL;
  }
  if (!rc) rc = fl_tune_buffer_create(&t->buf, e->b.model, c->tune_buffer);
  int in_cap = c->tune_buffer / 4 > 2 ? c->tune_buffer / 4 : 2;
  if (!rc) rc = fl_tune_buffer_create(&t->inbox, e->b.model, in_cap);
  /* A job in flight writes the old array; it is resized once it is done. */
  if (!rc && !t->busy) rc = fld__size_norms(t, e->n_layers);
  if (!rc && !t->busy) {
    fl_tune_job_free(t->job);
    t->job = NULL;
    rc = fl_tune_job_create(&t->job, e->b.model, &t->cfg);
  } else if (!rc) {
    t->stale = 1; /* the job in flight belongs to the old model */
    atomic_store_explicit(&t->hurry, 1, memory_order_relaxed);
  }
  if (rc) {
    snprintf(err, errlen, "[tune] cannot set up tuning: %s", fl_strerror(rc));
    return rc;
  }
  for (int s = 0; s < app->n_streams; s++) fld_tune_stream_free(app->streams[s]);
  t->updates = 0;
  snprintf(t->lineage, sizeof t->lineage, "%s", e->b.lineage);
  t->new_windows = 0;
  t->next_at = 0;
  fld_tune_ckpt_resume(t);
  fld_log(FLD_NOTICE, "tune: on (buffer %d windows, gate %.2f x threshold, span %d, %d steps, "
                      "checkpoint %s)", c->tune_buffer, c->tune_gate, t->span, t->cfg.steps,
          t->path[0] ? t->path : "none");
  return 0;
}

/* Moves the windows that waited in the inbox into the buffer, oldest
 * first.  Only while the worker does not read the buffer. */
static void fld__drain_inbox(fld_tuner *t) {
  int n = fl_tune_buffer_count(t->inbox);
  if (!n) return;
  for (int age = n - 1; age >= 0; age--) fl_tune_buffer_move(t->buf, t->inbox, age);
  fl_tune_buffer_clear(t->inbox);
}

void fld_tune_observe(fld_app *app, int k, fld_stream *st, float score, int learnable) {
  fld_tuner *t = app->tuner;
  if (!t || app->stopping) return;
  fld_engine *e = app->eng;
  if (!st->tune) {
    if (!(st->tune = calloc(1, sizeof *st->tune))) return;
    if (fl_tune_buffer_create(&st->tune->cand, e->b.model, t->span + 1)) {
      free(st->tune);
      st->tune = NULL;
      return;
    }
  }
  struct fld_tune_stream *ts = st->tune;
  /* Only a learnable window's slot holds its input as it came (see
   * fl_pipeline_run). */
  int ok = learnable && score < (float)app->cfg.tune_gate * e->b.calib.threshold;
  if (!ok) {
    /* This alarm disqualifies the span windows before it, and the run
     * restarts: the next span windows are disqualified too. */
    ts->run = 0;
    fl_tune_buffer_clear(ts->cand);
    return;
  }
  fl_tune_buffer_push(ts->cand, e->ctx, k);
  ts->run++;
  /* The window span back has span clean windows on either side. */
  if (ts->run >= 2 * t->span + 1) {
    fl_tune_buffer *dst = t->buf;
    if (t->busy && !atomic_load_explicit(&t->snapped, memory_order_acquire)) dst = t->inbox;
    else fld__drain_inbox(t);
    if (!fl_tune_buffer_move(dst, ts->cand, t->span)) t->new_windows++;
  }
}

void fld_tune_after(fld_tuner *t) {
  fld_app *app = t->app;
  t->busy = 0;
  fl_tune_buffer_free(t->retired);
  t->retired = NULL;
  fld__est_free(t->est_job);
  t->est_job = NULL;
  /* Windows that waited while the worker copied join the buffer before it
   * is re-standardised for an update. */
  fld__drain_inbox(t);
  if (t->nice_failed == 3) {
    t->nice_failed = 2;
    fld_log(FLD_INFO, "tune: SCHED_IDLE unavailable; the worker runs at nice %d", FLD_TUNE_NICE);
  } else if (t->nice_failed == 1) {
    t->nice_failed = 2;
    fld_log(FLD_WARNING, "tune: cannot lower the worker's priority: training competes with "
                         "the loop at its priority");
  }
  if (t->pace_failed == 1) {
    t->pace_failed = 2;
    fld_log(FLD_WARNING, "tune: cannot set up the worker's pacing timer: jobs run unpaced "
                         "and may keep a core from the loop for milliseconds");
  }
  double secs = t->res.seconds;
  t->seconds += t->work_cpu;
  t->steps += (uint64_t)t->res.steps;
  /* The job paced itself to cpu_share of a core (fld__pace); what the
   * pauses' cap or a hurry left over is made up here. */
  double gap = 3600.0 / app->cfg.tune_max_per_hour,
         rest = t->work_cpu / t->share - t->work_wall;
  t->next_at = fld__mono(app) + (gap > rest ? gap : rest);
  if (t->stale) {
    t->stale = 0;
    fl_tune_job_free(t->job);
    t->job = NULL;
    if (!app->stopping && !t->disable &&
        fl_tune_job_create(&t->job, app->eng->b.model, &t->cfg))
      fld_log(FLD_ERR, "tune: cannot set up the next job");
    fld__size_norms(t, app->eng->n_layers);
  } else if (t->rc) {
    t->failed++;
    fld_log(FLD_ERR, "tune: update failed: %s", fl_strerror(t->rc));
  } else {
    t->last = t->res;
    t->have_last = 1;
    if (t->res.accepted) {
      fld_engine *e = app->eng;
      uint64_t sw0 = uv_hrtime();
      /* The swap: between batches on the loop thread, so no window sees
       * half the new weights. */
      if (fl_tune_job_apply(t->job, e->b.model, &e->b.calib) == 0) {
        /* Windows buffered so far were standardised as the old model
         * standardises; the next job's must agree with the new one. */
        fl_tune_job_rebase(t->job, t->buf);
        for (int s = 0; s < app->n_streams; s++)
          if (app->streams[s]->tune) fl_tune_job_rebase(t->job, app->streams[s]->tune->cand);
        /* So were the streams' baseline levels: a moved mean must not look
         * like a step of every stream's level. */
        float *d = malloc(sizeof(float) * (size_t)fl_model_channels(e->b.model));
        if (d && fl_tune_job_norm_delta(t->job, d) == 0)
          for (int s = 0; s < app->n_streams; s++)
            for (int c = 0; c < fl_model_channels(e->b.model); c++)
              app->streams[s]->state.base.level[c] -= d[c];
        free(d);
        t->accepted++;
        t->updates++;
        fld_tune_ckpt_lineage(t, t->updates, t->lineage, sizeof t->lineage);
        if (t->n_norm == e->n_layers)
          memcpy(e->layer_norm, t->cand_norm, sizeof(float) * (size_t)e->n_layers);
        else
          fld_tune_measure_norms(e);
        fld_tune_set_version(t);
        t->swap_ms = (double)(uv_hrtime() - sw0) / 1e6;
        if (t->swap_ms > t->swap_max_ms) t->swap_max_ms = t->swap_ms;
        fld_log(FLD_INFO, "tune: update %" PRIu64 " accepted (loss %.4g -> %.4g, false alarms "
                          "%.3f -> %.3f, faults caught %.3f -> %.3f, clean score %.3f -> %.3f, "
                          "normalisation moved %.3f sd, threshold %.4g, %d steps in %.2f s, "
                          "swapped in %.2f ms); model %s",
                t->updates, (double)t->res.loss_old, (double)t->res.loss_new,
                (double)t->res.far_old, (double)t->res.far_new, (double)t->res.det_old,
                (double)t->res.det_new, (double)t->res.score_old, (double)t->res.score_new,
                (double)t->res.norm_shift, (double)t->res.threshold, t->res.steps, secs,
                t->swap_ms, e->version);
        if (t->save_due) {
          if (t->save_rc) {
            t->ckpt_failed++;
            fld_log(FLD_ERR, "tune: checkpoint failed: %s", t->save_err);
          } else {
            t->ckpt_ok++;
          }
        }
      }
    } else {
      t->rejected++;
      fld_log(FLD_INFO, "tune: update rejected (loss %.4g -> %.4g, false alarms %.3f -> %.3f, "
                        "faults caught %.3f -> %.3f, normalisation moved %.3f sd)",
              (double)t->res.loss_old, (double)t->res.loss_new, (double)t->res.far_old,
              (double)t->res.far_new, (double)t->res.det_old, (double)t->res.det_new,
              (double)t->res.norm_shift);
    }
  }
  if (t->stop_pending) {
    t->stop_pending = 0;
    fld_tune_ckpt_now(t);
  }
  if (app->stopping) fld_tune_worker_close_wake(t);
  if (t->disable) fld_tune_free(app);
}

void fld_tune_poll(fld_app *app) {
  fld_tuner *t = app->tuner;
  if (!t || t->busy || app->stopping || !t->job) return;
  if (fl_tune_buffer_count(t->buf) < t->cfg.min_windows || t->new_windows == 0) return;
  if (fld__mono(app) < t->next_at) return;
  if (fld_tune_worker_start(t)) {
    fld_log(FLD_ERR, "tune: cannot start the worker thread");
    t->next_at = fld__mono(app) + 60.0;
    return;
  }
  fld__drain_inbox(t);
  uint64_t p0 = uv_hrtime();
  if (fl_tune_job_begin(t->job, app->eng->b.model, &app->eng->b.calib, t->buf)) return;
  t->prep_ms = (double)(uv_hrtime() - p0) / 1e6;
  if (t->prep_ms > t->prep_max_ms) t->prep_max_ms = t->prep_ms;
  t->new_windows = 0;
  /* The lineage the checkpoint of this update will carry. */
  t->save_due = t->path[0] && app->cfg.tune_checkpoint_every > 0 &&
                (t->updates + 1) % (uint64_t)app->cfg.tune_checkpoint_every == 0;
  t->save_updates = t->updates + 1;
  if (t->save_due) {
    t->save_detect = t->cfg.detect;
    t->save_clamp = t->cfg.train.clamp;
    t->save_est = t->est;
    memcpy(t->save_base, t->base, sizeof t->save_base);
    memcpy(t->save_path, t->path, sizeof t->save_path);
  }
  atomic_store_explicit(&t->snapped, 0, memory_order_relaxed);
  atomic_store_explicit(&t->done, 0, memory_order_relaxed);
  atomic_store_explicit(&t->hurry, 0, memory_order_relaxed);
  t->share = app->cfg.tune_cpu_share;
  t->busy = 1;
  fld_tune_worker_post(t); /* publishes everything above to the worker */
}

void fld_tune_stop(fld_app *app) {
  fld_tuner *t = app->tuner;
  if (!t) return;
  if (t->busy) {
    t->stop_pending = 1; /* the job's end writes it */
    atomic_store_explicit(&t->hurry, 1, memory_order_relaxed);
  } else {
    fld_tune_ckpt_now(t);
    fld_tune_worker_close_wake(t);
  }
}

int fld_tune_reload(fld_app *app, char *err, size_t errlen) {
  fld_tuner *t = app->tuner;
  if (app->cfg.tune_enabled) return fld_tune_start(app, err, errlen);
  if (!t) return 0;
  /* The tuned weights belonged to the old engine; the checkpoint on disk
   * already holds the last accepted update. */
  for (int s = 0; s < app->n_streams; s++) fld_tune_stream_free(app->streams[s]);
  if (t->busy) {
    t->stale = 1;
    t->disable = 1;
    atomic_store_explicit(&t->hurry, 1, memory_order_relaxed);
  } else {
    fld_tune_free(app);
  }
  return 0;
}

void fld_tune_free(fld_app *app) {
  fld_tuner *t = app->tuner;
  if (!t) return;
  /* Never with a job in flight: shutdown and reloads wait for its end. */
  fld_tune_worker_close_wake(t);
  fld_tune_worker_stop(t, app->stopping);
  fl_tune_job_free(t->job);
  fl_tune_buffer_free(t->buf);
  fl_tune_buffer_free(t->inbox);
  fl_tune_buffer_free(t->retired);
  fld__est_free(t->est);
  fld__est_free(t->est_job);
  free(t->cand_norm);
  free(t);
  app->tuner = NULL;
}

void fld_tune_metrics(fld_app *app, FILE *f) {
  fld_tuner *t = app->tuner;
  fprintf(f, "# HELP faultline_tune_enabled Online fine-tuning on (1) or off (0).\n"
             "# TYPE faultline_tune_enabled gauge\nfaultline_tune_enabled %d\n", t != NULL);
  fprintf(f, "# HELP faultline_model_updates Accepted tuning updates in the served model's "
             "lineage (its version's -uN).\n# TYPE faultline_model_updates gauge\n"
             "faultline_model_updates %" PRIu64 "\n", t ? t->updates : 0);
  fprintf(f, "# HELP faultline_tune_updates_total Tuning updates validated, by result.\n"
             "# TYPE faultline_tune_updates_total counter\n"
             "faultline_tune_updates_total{result=\"accepted\"} %" PRIu64 "\n"
             "faultline_tune_updates_total{result=\"rejected\"} %" PRIu64 "\n",
          t ? t->accepted : 0, t ? t->rejected : 0);
  if (!t) return;
  fprintf(f, "# HELP faultline_tune_failures_total Tuning jobs that ended in an error.\n"
             "# TYPE faultline_tune_failures_total counter\nfaultline_tune_failures_total %"
             PRIu64 "\n", t->failed);
  fprintf(f, "# HELP faultline_tune_steps_total Optimiser steps taken by tuning.\n"
             "# TYPE faultline_tune_steps_total counter\nfaultline_tune_steps_total %" PRIu64
             "\n", t->steps);
  fprintf(f, "# HELP faultline_tune_seconds_total CPU time the tuning worker spent in jobs.\n"
             "# TYPE faultline_tune_seconds_total counter\nfaultline_tune_seconds_total %.6f\n",
          t->seconds);
  fprintf(f, "# HELP faultline_tune_buffer_windows Clean windows in the replay buffer.\n"
             "# TYPE faultline_tune_buffer_windows gauge\nfaultline_tune_buffer_windows %d\n",
          fl_tune_buffer_count(t->buf));
  fprintf(f, "# HELP faultline_tune_busy Whether a job is with the tuning worker.\n"
             "# TYPE faultline_tune_busy gauge\nfaultline_tune_busy %d\n"
             "# HELP faultline_tune_pending_windows Clean windows kept since the last job "
             "started: the next job's new data.\n"
             "# TYPE faultline_tune_pending_windows gauge\nfaultline_tune_pending_windows %" PRIu64
             "\n",
          t->busy, t->new_windows);
  fprintf(f, "# HELP faultline_tune_buffer_capacity Capacity of the replay buffer.\n"
             "# TYPE faultline_tune_buffer_capacity gauge\nfaultline_tune_buffer_capacity %d\n",
          fl_tune_buffer_capacity(t->buf));
  fprintf(f, "# HELP faultline_tune_checkpoints_total Checkpoints written, by result.\n"
             "# TYPE faultline_tune_checkpoints_total counter\n"
             "faultline_tune_checkpoints_total{result=\"ok\"} %" PRIu64 "\n"
             "faultline_tune_checkpoints_total{result=\"failed\"} %" PRIu64 "\n",
          t->ckpt_ok, t->ckpt_failed);
  if (t->have_last) {
    fprintf(f, "# HELP faultline_tune_validation_loss Held-out correction loss of the last "
               "validation, by model.\n# TYPE faultline_tune_validation_loss gauge\n"
               "faultline_tune_validation_loss{model=\"current\"} %.6g\n"
               "faultline_tune_validation_loss{model=\"candidate\"} %.6g\n",
            (double)t->last.loss_old, (double)t->last.loss_new);
    fprintf(f, "# HELP faultline_tune_validation_false_alarm_rate Held-out clean windows "
               "above the threshold in the last validation, by model.\n"
               "# TYPE faultline_tune_validation_false_alarm_rate gauge\n"
               "faultline_tune_validation_false_alarm_rate{model=\"current\"} %.6g\n"
               "faultline_tune_validation_false_alarm_rate{model=\"candidate\"} %.6g\n",
            (double)t->last.far_old, (double)t->last.far_new);
  }
  fprintf(f, "# HELP faultline_tune_loop_seconds Loop-thread time of tuning's two steps there: "
             "a job's snapshot (prepare) and an accepted update's swap (parameters, "
             "calibration, buffers re-standardised), the last and the longest.\n"
             "# TYPE faultline_tune_loop_seconds gauge\n"
             "faultline_tune_loop_seconds{step=\"prepare\",stat=\"last\"} %.6f\n"
             "faultline_tune_loop_seconds{step=\"prepare\",stat=\"max\"} %.6f\n"
             "faultline_tune_loop_seconds{step=\"swap\",stat=\"last\"} %.6f\n"
             "faultline_tune_loop_seconds{step=\"swap\",stat=\"max\"} %.6f\n",
          t->prep_ms / 1e3, t->prep_max_ms / 1e3, t->swap_ms / 1e3, t->swap_max_ms / 1e3);
  fld_engine *e = app->eng;
  fprintf(f, "# HELP faultline_layer_norm_ratio Spectral norm over Lipschitz target of each "
             "layer that has one (<= 1 after every update).\n"
             "# TYPE faultline_layer_norm_ratio gauge\n");
  for (int l = 0; l < e->n_layers; l++)
    if (e->layer_target[l] > 0)
      fprintf(f, "faultline_layer_norm_ratio{layer=\"%s\"} %.6g\n", e->layer_name[l],
              (double)(e->layer_norm[l] / e->layer_target[l]));
}
