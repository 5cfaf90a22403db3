/* faultlined reports: one Report per window on the output socket as
 * [report/<stream>][payload].  See fld.h and proto/faultline.proto. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "faultline/error.h"
#include "fld.h"

int fld_report_publish(fld_app *app, const fl_pipeline_window *w, const fld_slot *slot) {
  fld_engine *e = app->eng;
  const fl_model_spec *spec = fl_model_spec_of(e->b.model);
  const fl_window_score *sc = &w->sc;
  int flag = w->flag;
  int W = spec->window, S = app->cfg.stride;
  Faultline__Report rep = FAULTLINE__REPORT__INIT;
  Faultline__ModalityReport *mr = e->mr, **mrp = e->mrp;
  float *resid = e->resid, *cscore = e->cscore;
  protobuf_c_boolean *cfaulty = e->cfaulty;
  rep.stream = slot->st->name;
  rep.seq = slot->st->report_seq;
  rep.end_seq = slot->end_seq;
  rep.end_timestamp_ns = slot->end_ts;
  rep.score = sc->score;
  rep.threshold = e->b.calib.threshold;
  rep.anomaly = flag != 0;
  rep.faulty_modality = (char *)(flag && sc->modality >= 0 ? spec->mod[sc->modality].name : "");
  rep.window = (uint32_t)W;
  rep.stride = (uint32_t)S;
  rep.embedding_score = sc->emb_score;
  rep.model_version = e->version;
  rep.missing = (uint32_t)slot->missing;
  int off = 0;
  for (int i = 0; i < spec->n_mod; i++) {
    int C = spec->mod[i].channels, r = spec->mod[i].rate, T = W * r, t0 = (W - S) * r;
    Faultline__ModalityReport *m = &mr[i];
    faultline__modality_report__init(m);
    mrp[i] = m;
    m->modality = (char *)spec->mod[i].name;
    m->channels = (uint32_t)C;
    m->rate = (uint32_t)r;
    m->score = sc->mod_score[i];
    m->flag = w->mflag[i] != 0;
    for (int c = 0; c < C; c++) {
      resid[off + c] = sc->resid[off + c];
      cscore[off + c] = sc->chan[off + c];
      cfaulty[off + c] = flag && sc->chan[off + c] > e->b.calib.chan_threshold;
    }
    m->n_residuals = m->n_channel_scores = m->n_channel_faulty = (size_t)C;
    m->residuals = resid + off;
    m->channel_scores = cscore + off;
    m->channel_faulty = cfaulty + off;
    off += C;
    /* The newest stride ticks, from channel-major (C, T) to the wire's
     * row-major (stride * rate, C). */
    float *rows = e->rep + (size_t)i * e->maxct;
    float *unc = e->rep + (size_t)(spec->n_mod + i) * e->maxct;
    for (int t = t0; t < T; t++)
      for (int c = 0; c < C; c++) {
        rows[(size_t)(t - t0) * C + c] = w->corrected[i][(size_t)c * T + t];
        unc[(size_t)(t - t0) * C + c] = w->sigma[i][(size_t)c * T + t];
      }
    m->n_corrected = m->n_uncertainty = (size_t)(T - t0) * C;
    m->corrected = rows;
    m->uncertainty = unc;
  }
  rep.n_modalities = (size_t)spec->n_mod;
  rep.modalities = mrp;
  char topic[80];
  int tl = snprintf(topic, sizeof topic, "report/%s", slot->st->name);
  /* Latency is measured up to the send: packing is part of the work. */
  uint64_t now = uv_hrtime();
  rep.latency_ns = now > slot->t_recv ? now - slot->t_recv : 0;
  size_t len = faultline__report__get_packed_size(&rep);
  uint8_t stackbuf[16384], *buf = len <= sizeof stackbuf ? stackbuf : malloc(len);
  if (!buf) {
    app->m.reports_failed++;
    return FL_ENOMEM;
  }
  faultline__report__pack(&rep, buf);
  /* PUB never blocks: past the high-water mark a subscriber misses
   * messages, which ZeroMQ does not report, so a failure here is ours. */
  int rc = fld_zsend(app->out_sock, topic, (size_t)tl, ZMQ_SNDMORE | ZMQ_DONTWAIT);
  if (!rc) rc = fld_zsend(app->out_sock, buf, len, ZMQ_DONTWAIT);
  if (rc) {
    app->m.reports_failed++;
    fld_log(FLD_WARNING, "cannot publish a report of \"%s\": %s", slot->st->name,
            zmq_strerror(-rc));
  } else {
    app->m.reports++;
    fld_metrics_latency(&app->m, (double)rep.latency_ns * 1e-9);
  }
  /* The number identifies the window even when its report was lost, so a
   * consumer sees the hole. */
  slot->st->report_seq++;
  if (buf != stackbuf) free(buf);
  return rc;
}
