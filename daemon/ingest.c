/* faultlined ingest: frames in, windows out.  See fld.h.
 *
 * Every frame received ends in exactly one of: processed (its tick entered
 * the stream's ring), rejected (by reason, nothing of it kept) or dropped
 * (valid, but no room for a new stream).  A frame is validated completely
 * before anything of it is stored, so a rejected frame never half-updates a
 * stream. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "faultline/error.h"
#include "fld.h"

static void fld__stream_free(fld_stream *st) {
  if (!st) return;
  for (int i = 0; st->ring && i < st->state.n_mod; i++) free(st->ring[i]);
  free(st->ring);
  fl_stream_state_free(&st->state);
  fld_tune_stream_free(st);
  free(st);
}

void fld_streams_clear(fld_app *app) {
  /* Pending windows point at streams: score them first. */
  if (app->n_pending) fld_ingest_flush(app);
  for (int s = 0; s < app->n_streams; s++) fld__stream_free(app->streams[s]);
  app->n_streams = 0;
}

static fld_stream *fld__stream_new(fld_app *app, const char *name) {
  const fl_model_spec *spec = fl_model_spec_of(app->eng->b.model);
  fld_stream *st = calloc(1, sizeof *st);
  if (!st) return NULL;
  snprintf(st->name, sizeof st->name, "%s", name);
  if (fl_stream_state_init(&st->state, spec) ||
      !(st->ring = calloc((size_t)spec->n_mod, sizeof *st->ring))) {
    fld__stream_free(st);
    return NULL;
  }
  for (int i = 0; i < spec->n_mod; i++) {
    size_t n = (size_t)spec->mod[i].channels * spec->window * spec->mod[i].rate;
    if (!(st->ring[i] = malloc(sizeof(float) * n))) {
      fld__stream_free(st);
      return NULL;
    }
  }
  return st;
}

/* Frees stream s and closes the gap in the array (its order is the order
 * of arrival, which /streams shows). */
static void fld__stream_remove(fld_app *app, int s) {
  fld__stream_free(app->streams[s]);
  memmove(app->streams + s, app->streams + s + 1,
          sizeof *app->streams * (size_t)(app->n_streams - s - 1));
  app->n_streams--;
}

int fld_streams_evict(fld_app *app, double now) {
  if (!(app->cfg.stream_idle > 0)) return 0;
  int n = 0;
  for (int s = app->n_streams - 1; s >= 0; s--) {
    fld_stream *st = app->streams[s];
    if (now - st->last_recv < app->cfg.stream_idle) continue;
    /* Pending windows point at streams: score them first. */
    if (app->n_pending) fld_ingest_flush(app);
    fld_log(FLD_NOTICE, "stream \"%s\" evicted: no frame for %.0f s ([input] stream_idle)",
            st->name, now - st->last_recv);
    fld__stream_remove(app, s);
    app->m.streams_evicted++;
    n++;
  }
  return n;
}

/* Finds the stream or creates it while there is room; NULL when full.
 * Idle streams leave from the lag timer (once a second), not here: a flood
 * of new names at the cap would otherwise scan every stream per frame. */
static fld_stream *fld__stream_get(fld_app *app, const char *name) {
  for (int s = 0; s < app->n_streams; s++)
    if (!strcmp(app->streams[s]->name, name)) return app->streams[s];
  if (app->n_streams >= app->cfg.max_streams) return NULL;
  if (!app->streams) {
    app->streams = calloc((size_t)app->cfg.max_streams, sizeof *app->streams);
    if (!app->streams) return NULL;
  }
  fld_stream *st = fld__stream_new(app, name);
  if (!st) return NULL;
  app->streams[app->n_streams++] = st;
  fld_log(FLD_INFO, "new stream \"%s\" (%d of at most %d)", name, app->n_streams,
          app->cfg.max_streams);
  return st;
}

/* A publisher that restarted: the stream's history and verdicts start
 * afresh, as a new stream's would; its reports resume a window later. */
static void fld__stream_restart(fld_app *app, fld_stream *st, const char *why) {
  /* A pending window of the old session would update the new state. */
  if (app->n_pending) fld_ingest_flush(app);
  st->ticks = 0;
  st->head = 0;
  st->have_seq = 0;
  st->report_seq = 0;
  st->last_flag = 0;
  st->last_score = 0.0f;
  st->last_faulty[0] = 0;
  fl_stream_state_reset(&st->state);
  app->m.stream_restarts++;
  fld_log(FLD_NOTICE, "stream \"%s\" restarted (%s): history starts afresh", st->name, why);
}

static void fld__reject(fld_app *app, int reason, const char *stream) {
  app->m.rejected[reason]++;
  if (reason == FLD_REJ_OVERSIZE)
    fld_limit_hit(app, FLD_LIMIT_MESSAGE,
                  "frame rejected: over the limit of %ld bytes ([input] max_message_bytes)",
                  app->cfg.max_message_bytes);
  /* Debug only: a flood of bad frames must not flood the journal; the
   * counters carry the news. */
  fld_log(FLD_DEBUG, "frame rejected (%s)%s%s", fld_reject_name(reason), stream ? " from " : "",
          stream ? stream : "");
}

/* Copies the stream's window (oldest tick first) into the engine's slot k,
 * standardises it into the context and queues it. */
static void fld__enqueue(fld_app *app, fld_stream *st, uint64_t seq, int64_t ts,
                         uint64_t t_recv) {
  fld_engine *e = app->eng;
  const fl_model_spec *spec = fl_model_spec_of(e->b.model);
  int k = app->n_pending, W = spec->window, missing = 0;
  for (int i = 0; i < spec->n_mod; i++) {
    int C = spec->mod[i].channels, r = spec->mod[i].rate, T = W * r;
    size_t head = (size_t)st->head * r, tail = (size_t)T - head;
    float *raw = e->win[k].raw[i];
    for (int c = 0; c < C; c++) {
      const float *ring = st->ring[i] + (size_t)c * T;
      memcpy(raw + (size_t)c * T, ring + head, sizeof(float) * tail);
      memcpy(raw + (size_t)c * T + tail, ring, sizeof(float) * head);
    }
    for (size_t j = 0; j < (size_t)C * T; j++) missing += isnan(raw[j]) != 0;
    int rc = fl_model_normalise(e->b.model, e->ctx, k, i, raw, e->b.clamp);
    if (rc) {
      /* Frames were validated, so this is a bug, not bad input: say so. */
      fld_log(FLD_ERR, "cannot standardise a window of \"%s\": %s", st->name, fl_strerror(rc));
      return;
    }
  }
  app->pending[k] = (fld_slot){st, seq, ts, t_recv, missing};
  app->n_pending++;
  if (app->n_pending >= e->batch) fld_ingest_flush(app);
}

/* Stores one tick (blocks[i] NULL: modality i missing) and queues a window
 * when one is due. */
static void fld__push(fld_app *app, fld_stream *st, Faultline__Block *const *blocks,
                      uint64_t seq, int64_t ts, uint64_t t_recv) {
  const fl_model_spec *spec = fl_model_spec_of(app->eng->b.model);
  int W = spec->window, h = st->head;
  for (int i = 0; i < spec->n_mod; i++) {
    int C = spec->mod[i].channels, r = spec->mod[i].rate, T = W * r;
    const Faultline__Block *b = blocks ? blocks[i] : NULL;
    for (int c = 0; c < C; c++) {
      float *dst = st->ring[i] + (size_t)c * T + (size_t)h * r;
      for (int q = 0; q < r; q++) dst[q] = b ? b->samples[(size_t)q * C + c] : NAN;
    }
  }
  st->head = (h + 1) % W;
  st->ticks++;
  st->last_seq = seq;
  st->last_ts = ts;
  st->have_seq = 1;
  if (app->cfg.score && st->ticks >= (uint64_t)W && (st->ticks - (uint64_t)W) % (uint64_t)app->cfg.stride == 0)
    fld__enqueue(app, st, seq, ts, t_recv);
}

/* Is the topic part "frame/<stream>"? */
static int fld__topic_is(zmq_msg_t *topic, const char *stream) {
  size_t n = zmq_msg_size(topic), ls = strlen(stream);
  const char *t = zmq_msg_data(topic);
  return n == 6 + ls && !memcmp(t, "frame/", 6) && !memcmp(t + 6, stream, ls);
}

void fld_ingest_message(fld_app *app, zmq_msg_t *parts, int nparts, uint64_t t_recv) {
  app->m.received++;
  /* [payload] (PULL) or [topic][payload]. */
  zmq_msg_t *payload = &parts[nparts - 1];
  size_t total = 0;
  for (int p = 0; p < nparts; p++) total += zmq_msg_size(&parts[p]);
  const fl_model_spec *spec = fl_model_spec_of(app->eng->b.model);
  Faultline__Frame *f = NULL;
  Faultline__Block **by_mod = app->eng->by_mod;
  int reason = fld_frame_check(spec, app->cfg.max_message_bytes, total,
                               zmq_msg_data(payload), zmq_msg_size(payload), &f, by_mod);
  /* The topic is what subscribers shard by: a payload of another stream
   * would bypass the shard. */
  if (reason < 0 && nparts == 2 && !fld__topic_is(&parts[0], f->stream))
    reason = FLD_REJ_TOPIC_MISMATCH;
  if (reason >= 0) {
    fld__reject(app, reason, f && reason != FLD_REJ_BAD_STREAM ? f->stream : NULL);
    if (f) faultline__frame__free_unpacked(f, NULL);
    return;
  }
  fld_stream *st = fld__stream_get(app, f->stream);
  if (!st) {
    app->m.dropped[FLD_DROP_STREAM_LIMIT]++;
    fld_limit_hit(app, FLD_LIMIT_STREAMS,
                  "stream \"%s\" dropped: the limit of %d streams ([input] max_streams) is reached",
                  f->stream, app->cfg.max_streams);
    faultline__frame__free_unpacked(f, NULL);
    return;
  }
  uint64_t seq = f->seq;
  int W = spec->window;
  char why[96];
  if (st->frames && f->epoch != st->epoch) {
    snprintf(why, sizeof why, "publisher epoch %llu, was %llu", (unsigned long long)f->epoch,
             (unsigned long long)st->epoch);
    fld__stream_restart(app, st, why);
  } else if (st->have_seq && seq < st->last_seq && st->last_seq - seq >= (uint64_t)W) {
    snprintf(why, sizeof why, "seq %llu after %llu", (unsigned long long)seq,
             (unsigned long long)st->last_seq);
    fld__stream_restart(app, st, why);
  }
  if (st->have_seq && seq <= st->last_seq) {
    fld__reject(app, seq == st->last_seq ? FLD_REJ_DUPLICATE : FLD_REJ_OLD, st->name);
    faultline__frame__free_unpacked(f, NULL);
    return;
  }
  if (st->have_seq && seq - st->last_seq > app->cfg.max_seq_jump) {
    /* Not believed: ticks of nothing, and every later real frame old. */
    fld__reject(app, FLD_REJ_SEQ_JUMP, st->name);
    faultline__frame__free_unpacked(f, NULL);
    return;
  }
  if (st->have_seq && seq > st->last_seq + 1) {
    uint64_t gap = seq - st->last_seq - 1;
    app->m.gaps++;
    app->m.gap_ticks += gap;
    if (gap >= (uint64_t)W) {
      /* Nothing of the old window would be left: start the stream over
       * rather than score windows of nothing but gap. */
      st->ticks = 0;
      st->head = 0;
      fl_detect_baseline_reset(&st->state.base);
      /* An anchor older than the gap says nothing of the level now. */
      fl_estimate_state_reset(&st->state.est);
      app->m.stream_resets++;
      fld_log(FLD_NOTICE, "stream \"%s\": %llu ticks lost, history restarted", st->name,
              (unsigned long long)gap);
    } else {
      /* A short gap is missing data: the ticks are masked and filled by the
       * model's estimate, and the window schedule stays on the tick count. */
      int64_t ts0 = st->last_ts, dts = (f->timestamp_ns - ts0) / (int64_t)(gap + 1);
      for (uint64_t g = 1; g <= gap; g++)
        fld__push(app, st, NULL, st->last_seq + 1, ts0 + (int64_t)g * dts, t_recv);
    }
  }
  fld__push(app, st, by_mod, seq, f->timestamp_ns, t_recv);
  st->frames++;
  st->epoch = f->epoch;
  st->last_recv = app->m.last_frame = fln_now();
  app->m.processed++;
  faultline__frame__free_unpacked(f, NULL);
}

void fld_ingest_flush(fld_app *app) {
  int B = app->n_pending;
  if (!B) return;
  app->n_pending = 0;
  fld_engine *e = app->eng;
  const fl_model_spec *spec = fl_model_spec_of(e->b.model);
  /* Every window reports its newest stride ticks (fld_report_publish). */
  for (int k = 0; k < B; k++) {
    e->win[k].st = &app->pending[k].st->state;
    e->win[k].ticks = app->cfg.stride;
    e->win[k].from = spec->window - app->cfg.stride;
  }
  fl_pipeline_config pc = {e->hyst_on, e->hyst_off, e->b.clamp, &e->b.est};
  int rc = fl_pipeline_run(e->b.model, &e->b.calib, e->ctx, &pc, B, e->win);
  if (rc) {
    /* Inputs are validated and clamped: a failure here is the model's. */
    fld_log(FLD_ERR, "scoring %d windows failed: %s", B, fl_strerror(rc));
    app->m.reports_failed += (uint64_t)B;
    return;
  }
  for (int k = 0; k < B; k++) {
    fld_slot *sl = &app->pending[k];
    const fl_pipeline_window *w = &e->win[k];
    for (int i = 0; i < spec->n_mod; i++)
      if (w->mflag[i]) {
        int slot = fld_metrics_modality(&app->m, spec->mod[i].name);
        if (slot >= 0) app->m.anomalies[slot]++;
      }
    if (w->flag) app->m.windows_flagged++;
    fld_stream *st = sl->st;
    st->last_flag = w->flag;
    st->last_score = w->sc.score;
    snprintf(st->last_faulty, sizeof st->last_faulty, "%s",
             w->flag && w->sc.modality >= 0 ? spec->mod[w->sc.modality].name : "");
    fld_report_publish(app, w, sl);
    if (app->tuner) fld_tune_observe(app, k, sl->st, w->sc.score, w->learnable);
  }
  if (app->tuner) fld_tune_poll(app);
}
