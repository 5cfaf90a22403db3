/* faultline bridge: the plant's MQTT bus into faultlined and its reports
 * back onto the bus (see bridge.h for the parts and docs/bridge.md). */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <zmq.h>

#include "bridge.h"
#include "cli.h"
#include "faultline/error.h"

double flb_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

int64_t flb_wall_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

void flb_bad(flb_app *app, int reason, const char *fmt, ...) {
  app->m.bad[reason]++;
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  fln_limit *l = &app->bad_log[reason];
  l->interval = app->cfg.log_interval;
  fln_limit_hit(l, "faultline bridge: %s (%s)", msg, flb_bad_name(reason));
}

uint8_t *flb_scratch(flb_app *app, size_t n) {
  if (n > app->cap) {
    uint8_t *b = realloc(app->buf, n);
    if (!b) return NULL;
    app->buf = b;
    app->cap = n;
  }
  return app->buf;
}

int flb_stream_find(const flb_app *app, const char *name) {
  for (int i = 0; i < app->n_streams; i++)
    if (!strcmp(app->st[i].map->name, name)) return i;
  return -1;
}

void flb_update(flb_app *app, int s, int ch, int64_t ts_ns, float v) {
  /* Late and overflowing updates are counted by the assembler. */
  fl_ticks_put(app->st[s].ticks, ch, app->cfg.arrival_time ? flb_wall_ns() : ts_ns, v);
}

void flb_stream_dead(flb_app *app, int s, int64_t ts_ns) {
  for (int c = 0; c < app->st[s].n_ch; c++) fl_ticks_put(app->st[s].ticks, c, ts_ns, NAN);
}

void flb_report_values(const flb_app *app, int s, const Faultline__Report *r, float *raw,
                       float *corr, int *faulty, float *mscore) {
  const fl_model_spec *sp = &app->cfg.model.spec;
  const flb_stream *st = &app->st[s];
  int slot = (int)(r->end_seq % FLB_RAW_RING), ch = 0;
  int have_raw = st->ring_seq[slot] == r->end_seq;
  for (int mi = 0; mi < sp->n_mod; mi++) {
    const Faultline__ModalityReport *mr = NULL;
    for (size_t j = 0; j < r->n_modalities; j++)
      if (!strcmp(r->modalities[j]->modality, sp->mod[mi].name)) mr = r->modalities[j];
    int C = sp->mod[mi].channels;
    mscore[mi] = mr ? mr->score : NAN;
    /* corrected is (stride * rate, C): its last row is the newest sample. */
    size_t rows = mr && mr->channels == (uint32_t)C ? mr->n_corrected / (size_t)C : 0;
    for (int c = 0; c < C; c++, ch++) {
      raw[ch] = have_raw ? st->ring[(size_t)slot * (size_t)st->n_ch + (size_t)ch] : NAN;
      corr[ch] = rows ? mr->corrected[(rows - 1) * (size_t)C + (size_t)c] : NAN;
      faulty[ch] = mr && (size_t)c < mr->n_channel_faulty ? (int)mr->channel_faulty[c] : -1;
    }
  }
}

/* ---- frames out --------------------------------------------------------- */

/* Sends one emitted tick as a Frame: the assembler lays a channel's rate
 * samples side by side, a Block wants (rate, C) rows. */
static void flb_send_frame(flb_app *app, int s, const float *tick, uint64_t seq, int64_t ts) {
  const fl_model_spec *sp = &app->cfg.model.spec;
  flb_stream *st = &app->st[s];
  Faultline__Block *blocks = app->blocks, **bp = app->bp;
  float *samples = app->samples;
  size_t used = 0;
  int ch = 0;
  int slot = (int)(seq % FLB_RAW_RING);
  float *ring = st->ring + (size_t)slot * (size_t)st->n_ch;
  st->ring_seq[slot] = seq;
  for (int mi = 0; mi < sp->n_mod; mi++) {
    int C = sp->mod[mi].channels, r = sp->mod[mi].rate;
    faultline__block__init(&blocks[mi]);
    bp[mi] = &blocks[mi];
    blocks[mi].modality = (char *)sp->mod[mi].name;
    blocks[mi].channels = (uint32_t)C;
    blocks[mi].n_samples = (size_t)C * r;
    blocks[mi].samples = samples + used;
    for (int c = 0; c < C; c++) {
      const float *x = tick + st->off[ch + c];
      for (int q = 0; q < r; q++) samples[used + (size_t)q * C + c] = x[q];
      ring[ch + c] = x[r - 1];
    }
    used += (size_t)C * r;
    ch += C;
  }
  Faultline__Frame f = FAULTLINE__FRAME__INIT;
  f.stream = (char *)st->map->name;
  f.seq = seq;
  f.timestamp_ns = ts;
  f.n_blocks = (size_t)sp->n_mod;
  f.blocks = bp;
  size_t n = faultline__frame__get_packed_size(&f);
  uint8_t *buf = flb_scratch(app, n);
  char topic[80];
  int tl = snprintf(topic, sizeof topic, "frame/%s", st->map->name);
  if (!buf) {
    app->m.frames_failed++;
    return;
  }
  faultline__frame__pack(&f, buf);
  if (zmq_send(app->pub, topic, (size_t)tl, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0 ||
      zmq_send(app->pub, buf, n, ZMQ_DONTWAIT) < 0) {
    app->m.frames_failed++;
    return;
  }
  app->m.frames_out++;
  st->frames++;
  if (!app->connected) app->m.ticks_while_down++;
}

static void flb_emit_due(flb_app *app) {
  int64_t now = flb_wall_ns();
  float *tick = app->tick;
  for (int s = 0; s < app->n_streams; s++) {
    uint64_t seq;
    int64_t ts;
    while (fl_ticks_emit(app->st[s].ticks, now, tick, &seq, &ts) == 1)
      flb_send_frame(app, s, tick, seq, ts);
  }
}

/* ---- reports in --------------------------------------------------------- */

static void flb_drain_reports(flb_app *app) {
  for (int budget = 0; budget < 4096; budget++) {
    zmq_msg_t t, p;
    zmq_msg_init(&t);
    zmq_msg_init(&p);
    if (zmq_msg_recv(&t, app->sub, ZMQ_DONTWAIT) < 0) {
      zmq_msg_close(&t);
      zmq_msg_close(&p);
      break;
    }
    int ok = zmq_msg_more(&t) && zmq_msg_recv(&p, app->sub, ZMQ_DONTWAIT) >= 0;
    if (ok && zmq_msg_more(&p)) { /* more parts: not faultlined's [topic][Report] */
      ok = 0;
      zmq_msg_t x;
      zmq_msg_init(&x);
      while (zmq_msg_recv(&x, app->sub, ZMQ_DONTWAIT) >= 0 && zmq_msg_more(&x)) {}
      zmq_msg_close(&x);
    }
    Faultline__Report *r =
        ok ? faultline__report__unpack(NULL, zmq_msg_size(&p), zmq_msg_data(&p)) : NULL;
    zmq_msg_close(&t);
    zmq_msg_close(&p);
    int s = r ? flb_stream_find(app, r->stream) : -1;
    if (s < 0) {
      /* A prefix subscription also brings streams that only share the prefix. */
      if (!r) app->m.reports_bad++;
      if (r) faultline__report__free_unpacked(r, NULL);
      continue;
    }
    app->m.reports_in++;
    app->st[s].reports++;
    flb_spb_report(app, s, r);
    flb_json_report(app, s, r);
    if (app->st[s].last) faultline__report__free_unpacked(app->st[s].last, NULL);
    app->st[s].last = r;
  }
}

static void flb_sub_cb(uv_poll_t *h, int status, int events) {
  (void)status;
  (void)events;
  flb_drain_reports(h->data);
}

/* ---- the loop ----------------------------------------------------------- */

static void flb_tick_cb(uv_timer_t *t) {
  flb_app *app = t->data;
  flb_emit_due(app);
  /* ZMQ_FD is edge-triggered: a turn of the timer also drains. */
  flb_drain_reports(app);
}

/* Each watchdog ping says how the bridge is doing. */
static int flb_wd_status(void *user, char *status, size_t len) {
  const flb_app *app = user;
  snprintf(status, len, "broker %s, %llu frames out, %llu reports in",
           app->connected ? "connected" : "down", (unsigned long long)app->m.frames_out,
           (unsigned long long)app->m.reports_in);
  return 0;
}

void flb_on_connect(flb_app *app) {
  flb_spb_subscribe(app);
  flb_json_subscribe(app);
  for (int s = 0; s < app->n_streams; s++) app->st[s].state_known = 0;
  flb_spb_births(app);
}

void flb_on_message(flb_app *app, const char *topic, const void *buf, size_t len) {
  if (flb_spb_message(app, topic, buf, len) || flb_json_message(app, topic, buf, len)) return;
  flb_bad(app, FLB_BAD_UNMAPPED_TOPIC, "%s maps to no stream", topic);
}

static void flb_on_signal(uv_signal_t *h, int sig) {
  flb_app *app = h->data;
  flb_log(6, "signal %d: stopping", sig);
  app->stopping = 1;
  uv_stop(app->loop);
}

static void flb_close_walk(uv_handle_t *h, void *arg) {
  (void)arg;
  if (!uv_is_closing(h)) uv_close(h, NULL);
}

/* Every stream and the scratch of frames and reports, sized from the
 * model's layout; flb_free_streams releases them, also after a failure
 * part way. */
static int flb_streams(flb_app *app) {
  const flb_config *c = &app->cfg;
  const fl_model_spec *sp = &c->model.spec;
  size_t nch = (size_t)flb_config_channels(c), nmod = (size_t)sp->n_mod, width = 0;
  for (int mi = 0; mi < sp->n_mod; mi++)
    width += (size_t)sp->mod[mi].channels * (size_t)sp->mod[mi].rate;
  app->tick = malloc(sizeof *app->tick * width);
  app->samples = malloc(sizeof *app->samples * width);
  app->blocks = malloc(sizeof *app->blocks * nmod);
  app->bp = malloc(sizeof *app->bp * nmod);
  app->raw = malloc(sizeof *app->raw * nch);
  app->corr = malloc(sizeof *app->corr * nch);
  app->faulty = malloc(sizeof *app->faulty * nch);
  app->mscore = malloc(sizeof *app->mscore * nmod);
  app->st = calloc((size_t)c->n_map, sizeof *app->st);
  if (!app->tick || !app->samples || !app->blocks || !app->bp || !app->raw || !app->corr ||
      !app->faulty || !app->mscore || !app->st) {
    flb_log(3, "out of memory for %zu channels in %zu modalities", nch, nmod);
    return FL_ENOMEM;
  }
  app->n_streams = c->n_map;
  for (int i = 0; i < c->n_map; i++) {
    flb_stream *st = &app->st[i];
    st->map = &c->map[i];
    st->off = malloc(sizeof *st->off * nch);
    st->rate = malloc(sizeof *st->rate * nch);
    st->ring = malloc(sizeof *st->ring * nch * FLB_RAW_RING);
    if (!st->off || !st->rate || !st->ring) {
      flb_log(3, "stream %s: out of memory for %zu channels", st->map->name, nch);
      return FL_ENOMEM;
    }
    int off = 0;
    for (int mi = 0; mi < sp->n_mod; mi++)
      for (int k = 0; k < sp->mod[mi].channels; k++) {
        st->rate[st->n_ch] = sp->mod[mi].rate;
        st->off[st->n_ch++] = off;
        off += sp->mod[mi].rate;
      }
    st->width = off;
    /* depth 0: room for what a channel of the fastest rate receives within
     * the allowance and the tick being filled, twice over. */
    int rmax = 1;
    for (int k = 0; k < st->n_ch; k++) rmax = st->rate[k] > rmax ? st->rate[k] : rmax;
    int depth = c->depth ? c->depth : 2 * rmax * ((int)ceil(c->delay / c->tick) + 2);
    if (depth < 64) depth = 64;
    fl_ticks_opts o = {st->n_ch, st->rate, (int64_t)llround(c->tick * 1e9),
                       (int64_t)llround(c->stale * 1e9), (int64_t)llround(c->delay * 1e9),
                       depth, c->max_burst};
    int e = fl_ticks_new(&st->ticks, &o);
    if (e) {
      flb_log(3, "stream %s: tick assembler: %s", st->map->name, fl_strerror(e));
      return e;
    }
    for (int k = 0; k < FLB_RAW_RING; k++) st->ring_seq[k] = UINT64_MAX;
  }
  return 0;
}

static void flb_free_streams(flb_app *app) {
  for (int i = 0; app->st && i < app->n_streams; i++) {
    flb_stream *st = &app->st[i];
    fl_ticks_free(st->ticks);
    if (st->last) faultline__report__free_unpacked(st->last, NULL);
    free(st->off);
    free(st->rate);
    free(st->ring);
  }
  free(app->st);
  free(app->tick);
  free(app->samples);
  free(app->blocks);
  free(app->bp);
  free(app->raw);
  free(app->corr);
  free(app->faulty);
  free(app->mscore);
}

static int flb_zmq(flb_app *app) {
  const flb_config *c = &app->cfg;
  app->zctx = zmq_ctx_new();
  app->pub = zmq_socket(app->zctx, ZMQ_PUB);
  app->sub = zmq_socket(app->zctx, ZMQ_SUB);
  int zero = 0, hwm = c->sndhwm;
  zmq_setsockopt(app->pub, ZMQ_SNDHWM, &hwm, sizeof hwm);
  zmq_setsockopt(app->pub, ZMQ_LINGER, &zero, sizeof zero);
  zmq_setsockopt(app->sub, ZMQ_LINGER, &zero, sizeof zero);
  zmq_setsockopt(app->sub, ZMQ_RCVHWM, &zero, sizeof zero);
  for (int i = 0; i < app->n_streams; i++) {
    char t[80];
    int n = snprintf(t, sizeof t, "report/%s", app->st[i].map->name);
    zmq_setsockopt(app->sub, ZMQ_SUBSCRIBE, t, (size_t)n);
  }
  if ((c->frames_bind ? zmq_bind : zmq_connect)(app->pub, c->frames)) {
    flb_log(3, "[faultlined] frames = %s: %s", c->frames, zmq_strerror(errno));
    return -1;
  }
  if ((c->reports_bind ? zmq_bind : zmq_connect)(app->sub, c->reports)) {
    flb_log(3, "[faultlined] reports = %s: %s", c->reports, zmq_strerror(errno));
    return -1;
  }
  int fd;
  size_t len = sizeof fd;
  zmq_getsockopt(app->sub, ZMQ_FD, &fd, &len);
  uv_poll_init(app->loop, &app->sub_poll, fd);
  app->sub_poll.data = app;
  uv_poll_start(&app->sub_poll, UV_READABLE, flb_sub_cb);
  return 0;
}

static void flb_usage(FILE *f) {
  fprintf(f, "usage: faultline bridge --config FILE [--check]\n\n"
             "Joins the plant's MQTT bus: Sparkplug B and JSON tag updates from the\n"
             "broker become faultline frames (one per base tick and stream) sent to\n"
             "faultlined over ZeroMQ, and faultlined's reports are published back on the\n"
             "broker as a Sparkplug B edge node and as JSON.  SIGTERM or SIGINT stops it.\n\n"
             "  --config FILE   the bridge's INI file (see faultline-bridge.ini(5))\n"
             "  --check         validate the configuration and exit\n");
}

int cmd_bridge(int argc, char **argv) {
  static const struct option opts[] = {
      {"config", 1, 0, 'c'}, {"check", 0, 0, 'k'}, {"help", 0, 0, 'h'}, {0, 0, 0, 0}};
  const char *config = NULL;
  int check = 0, o;
  optind = 1;
  while ((o = getopt_long(argc, argv, "c:kh", opts, NULL)) != -1) {
    switch (o) {
    case 'c': config = optarg; break;
    case 'k': check = 1; break;
    case 'h': flb_usage(stdout); return 0;
    default: flb_usage(stderr); return 2;
    }
  }
  if (!config || optind < argc) {
    flb_usage(stderr);
    return 2;
  }
  flb_app *app = calloc(1, sizeof *app);
  if (!app) return 1;
  char err[1024];
  flb_config_defaults(&app->cfg);
  if (flb_config_load(&app->cfg, config, err, sizeof err)) {
    flb_config_free(&app->cfg);
    free(app);
    return cli_fail("bridge", "%s", err);
  }
  if (check) {
    printf("%s: %d streams, broker %s, faultlined %s / %s\n", config, app->cfg.n_map,
           app->cfg.url, app->cfg.frames, app->cfg.reports);
    flb_config_free(&app->cfg);
    free(app);
    return 0;
  }
  fln_log_set_level(app->cfg.log_level);
  int rc = 1;
  app->loop = uv_default_loop();
  app->m.start = flb_now();
  flb_http_init(app);
  if (flb_streams(app) || flb_spb_init(app) || flb_zmq(app) ||
      fln_http_start(&app->http, app->loop))
    goto done;
  uv_signal_init(app->loop, &app->sig_term);
  uv_signal_init(app->loop, &app->sig_int);
  app->sig_term.data = app->sig_int.data = app;
  uv_signal_start(&app->sig_term, flb_on_signal, SIGTERM);
  uv_signal_start(&app->sig_int, flb_on_signal, SIGINT);
  uv_timer_init(app->loop, &app->tick_timer);
  app->tick_timer.data = app;
  /* A quarter tick keeps a tick's emission within that of its due time. */
  double every = app->cfg.tick / 4 < 0.05 ? app->cfg.tick / 4 : 0.05;
  uint64_t ms = every < 0.001 ? 1 : (uint64_t)(every * 1000);
  uv_timer_start(&app->tick_timer, flb_tick_cb, ms, ms);
  fln_watchdog_start(&app->watchdog, app->loop, flb_wd_status, app);
  if (flb_mqtt_start(app)) goto done;
  fln_notify_ready("bridging");
  flb_log(6, "%d streams; broker %s; frames to %s, reports from %s", app->n_streams,
          app->cfg.url, app->cfg.frames, app->cfg.reports);
  uv_run(app->loop, UV_RUN_DEFAULT);
  fln_notify_stopping("stopping");
  rc = 0;
  /* A clean disconnect discards the will: say our node's death ourselves. */
  if (app->connected && app->cfg.sparkplug) {
    char t[3 * FLB_NAME];
    snprintf(t, sizeof t, "spBv1.0/%s/NDEATH/%s", app->cfg.group, app->cfg.node);
    Org__Eclipse__Tahu__Protobuf__Payload p = ORG__ECLIPSE__TAHU__PROTOBUF__PAYLOAD__INIT;
    Org__Eclipse__Tahu__Protobuf__Payload__Metric m =
        ORG__ECLIPSE__TAHU__PROTOBUF__PAYLOAD__METRIC__INIT, *mp = &m;
    m.name = "bdSeq";
    m.has_datatype = 1;
    m.datatype = 8; /* UInt64 */
    m.value_case = ORG__ECLIPSE__TAHU__PROTOBUF__PAYLOAD__METRIC__VALUE_LONG_VALUE;
    m.long_value = app->out_bdseq;
    p.n_metrics = 1;
    p.metrics = &mp;
    size_t n = org__eclipse__tahu__protobuf__payload__get_packed_size(&p);
    uint8_t *b = flb_scratch(app, n);
    if (b) {
      org__eclipse__tahu__protobuf__payload__pack(&p, b);
      flb_mqtt_publish(app, t, b, n, 0);
    }
  }
done:
  flb_mqtt_stop(app);
  fln_http_stop(&app->http);
  fln_watchdog_stop(&app->watchdog);
  if (app->sub) uv_poll_stop(&app->sub_poll);
  uv_walk(app->loop, flb_close_walk, NULL);
  uv_run(app->loop, UV_RUN_DEFAULT);
  uv_loop_close(app->loop);
  if (app->pub) zmq_close(app->pub);
  if (app->sub) zmq_close(app->sub);
  if (app->zctx) zmq_ctx_term(app->zctx);
  flb_mqtt_free(app);
  flb_spb_free(app);
  flb_free_streams(app);
  free(app->buf);
  flb_config_free(&app->cfg);
  free(app);
  return rc;
}
