/* faultlined: the streaming fault monitor.  Frames in over ZeroMQ, reports
 * out over ZeroMQ, health over HTTP, life cycle under systemd, all in one
 * libuv loop.  See fld.h for the parts and config/faultline.ini for the
 * configuration. */
#include <errno.h>
#include <getopt.h>
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

#include "faultline/error.h"
#include "fld.h"

#define FLD_MAX_PARTS 4
/* Frames a stop still takes from the input queue before closing it. */
#define FLD_STOP_DRAIN_MAX 1000000
#define FLD_STOP_DRAIN_NS (2ULL * 1000000000ULL)

/* [log] limit_interval applies to every limit, the endpoint's included. */
static void fld__set_limits(fld_app *app) {
  for (int i = 0; i < FLD_LIMIT_COUNT; i++) app->limit[i].interval = app->cfg.limit_log_interval;
  app->http.refused_log.interval = app->cfg.limit_log_interval;
}

/* CurveZMQ ([security] curve = 1): the daemon's key pair, the clients it
 * admits, and the ZAP handler. */
static int fld__curve_start(fld_app *app, char *err, size_t errlen) {
  if (!app->cfg.curve) return 0;
  fln_curve *c = &app->curve;
  snprintf(c->secret_key_file, sizeof c->secret_key_file, "%s", app->cfg.secret_key_file);
  snprintf(c->authorized_keys, sizeof c->authorized_keys, "%s", app->cfg.authorized_keys);
  c->secret_key_name = "[security] secret_key";
  c->authorized_keys_name = "[security] authorized_keys";
  return fln_curve_start(c, app->loop, app->zctx, err, errlen);
}

static int fld__in_drain(fln_zwatch *w, int budget) {
  fld_app *app = w->user;
  int done = 0;
  while (done < budget) {
    zmq_msg_t parts[FLD_MAX_PARTS];
    int overflow, n = fln_zrecv(w->sock, parts, FLD_MAX_PARTS, &overflow);
    if (n == 0) break;
    done++;
    if (n < 0) {
      /* A receive error loses at most this message; it is counted. */
      app->m.received++;
      app->m.rejected[FLD_REJ_UNDECODABLE]++;
      continue;
    }
    if (overflow || n > 2) {
      app->m.received++;
      app->m.rejected[FLD_REJ_UNDECODABLE]++;
    } else {
      fld_ingest_message(app, parts, n, uv_hrtime());
    }
    fln_zclose_parts(parts, n);
  }
  return done;
}

/* Windows due in one drain pass go through the model together. */
static void fld__in_after(fln_zwatch *w) { fld_ingest_flush(w->user); }

/* XPUB hands us subscriptions: a gauge of them lets an operator (and a
 * test) see that consumers are connected before frames flow. */
static int fld__out_drain(fln_zwatch *w, int budget) {
  fld_app *app = w->user;
  int done = 0;
  while (done < budget) {
    zmq_msg_t parts[2];
    int overflow, n = fln_zrecv(w->sock, parts, 2, &overflow);
    if (n <= 0) break;
    done++;
    const uint8_t *d = zmq_msg_data(&parts[0]);
    if (zmq_msg_size(&parts[0]) >= 1) app->m.subscriptions += d[0] == 1 ? 1 : d[0] == 0 ? -1 : 0;
    fln_zclose_parts(parts, n);
  }
  return done;
}

static int fld__mon_drain(fln_zwatch *w, int budget) {
  fld_app *app = w->user;
  int done = 0, ev;
  for (; done < budget && (ev = fln_zmon_recv(w->sock)) > 0; done++)
    if (ev == ZMQ_EVENT_DISCONNECTED) {
      app->m.input_disconnects++;
      fln_log(FLN_NOTICE, "an input peer disconnected (or was cut off for a message over "
                          "the hard size limit)");
    }
  return done;
}

static int fld__endpoints(void *sock, int bind, int n, char ep[][FLD_ENDPOINT_MAX], char *err,
                          size_t errlen) {
  for (int i = 0; i < n; i++)
    if ((bind ? zmq_bind(sock, ep[i]) : zmq_connect(sock, ep[i]))) {
      snprintf(err, errlen, "cannot %s %s: %s", bind ? "bind" : "connect to", ep[i],
               zmq_strerror(errno));
      return FL_EIO;
    }
  return 0;
}

static int fld__open_sockets(fld_app *app, char *err, size_t errlen) {
  const fld_config *c = &app->cfg;
  int rc, zero = 0;
  app->in_sock = zmq_socket(app->zctx, c->in_type == FLD_IN_SUB ? ZMQ_SUB : ZMQ_PULL);
  app->out_sock = zmq_socket(app->zctx, ZMQ_XPUB);
  if (!app->in_sock || !app->out_sock) {
    snprintf(err, errlen, "cannot create sockets: %s", zmq_strerror(errno));
    return FL_EIO;
  }
  /* The hard limit: libzmq cuts off a peer whose message part exceeds it,
   * before allocating it.  It sits above the soft limit, which counts a
   * merely oversize frame as rejected; only abuse beyond twice the soft limit
   * costs the sender its connection (counted as a disconnect). */
  int64_t hard = 2 * (int64_t)c->max_message_bytes + 1024;
  zmq_setsockopt(app->in_sock, ZMQ_MAXMSGSIZE, &hard, sizeof hard);
  zmq_setsockopt(app->in_sock, ZMQ_RCVHWM, &c->rcvhwm, sizeof c->rcvhwm);
  zmq_setsockopt(app->in_sock, ZMQ_LINGER, &zero, sizeof zero);
  zmq_setsockopt(app->out_sock, ZMQ_SNDHWM, &c->sndhwm, sizeof c->sndhwm);
  /* Every subscribe and unsubscribe, not only a topic's first and last, so
   * that the gauge counts subscribers' subscriptions. */
  int one = 1;
  zmq_setsockopt(app->out_sock, ZMQ_XPUB_VERBOSER, &one, sizeof one);
  /* Reports queued at a stop get two seconds to leave. */
  int linger = 2000;
  zmq_setsockopt(app->out_sock, ZMQ_LINGER, &linger, sizeof linger);
  if ((rc = fln_curve_apply(&app->curve, app->in_sock)) ||
      (rc = fln_curve_apply(&app->curve, app->out_sock))) {
    snprintf(err, errlen, "cannot enable CurveZMQ: %s", zmq_strerror(-rc));
    return FL_EIO;
  }
  if (c->in_type == FLD_IN_SUB)
    for (int i = 0; i < c->n_topics; i++)
      zmq_setsockopt(app->in_sock, ZMQ_SUBSCRIBE, c->in_topic[i], strlen(c->in_topic[i]));
  app->mon_sock = fln_zmon_open(app->zctx, app->in_sock, "inproc://fld-monitor-in",
                                ZMQ_EVENT_DISCONNECTED);
  if (app->mon_sock)
    fln_zwatch_start(&app->mon_w, app->loop, app->mon_sock, 64, fld__mon_drain, NULL, app);
  if ((rc = fld__endpoints(app->in_sock, c->in_bind, c->n_in, app->cfg.in_endpoint, err, errlen)) ||
      (rc = fld__endpoints(app->out_sock, c->out_bind, c->n_out, app->cfg.out_endpoint, err,
                           errlen)))
    return rc;
  if ((rc = fln_zwatch_start(&app->in_w, app->loop, app->in_sock, c->drain_budget, fld__in_drain,
                             fld__in_after, app)) ||
      (rc = fln_zwatch_start(&app->out_w, app->loop, app->out_sock, 64, fld__out_drain, NULL,
                             app))) {
    snprintf(err, errlen, "cannot watch the sockets: %s", uv_strerror(rc));
    return FL_EIO;
  }
  return 0;
}

static int fld__has_topic(const fld_config *c, const char *t) {
  for (int i = 0; i < c->n_topics; i++)
    if (!strcmp(c->in_topic[i], t)) return 1;
  return 0;
}

/* A reload may move prefixes between daemons ([input] topic): the new ones
 * are subscribed before the old ones are dropped, so that a prefix kept in
 * both never misses a frame.  Streams of a dropped prefix keep their state
 * (and their place under max_streams) until a restart; a stream that comes
 * back starts where its sequence numbers say.  Not for PULL input, which
 * has no topics. */
static void fld__reshard(fld_app *app, const fld_config *nc) {
  const fld_config *oc = &app->cfg;
  if (oc->in_type != FLD_IN_SUB || nc->in_type != FLD_IN_SUB) return;
  for (int i = 0; i < nc->n_topics; i++)
    if (!fld__has_topic(oc, nc->in_topic[i])) {
      zmq_setsockopt(app->in_sock, ZMQ_SUBSCRIBE, nc->in_topic[i], strlen(nc->in_topic[i]));
      fln_log(FLN_NOTICE, "reload: subscribed to %s", nc->in_topic[i]);
    }
  for (int i = 0; i < oc->n_topics; i++)
    if (!fld__has_topic(nc, oc->in_topic[i])) {
      zmq_setsockopt(app->in_sock, ZMQ_UNSUBSCRIBE, oc->in_topic[i], strlen(oc->in_topic[i]));
      fln_log(FLN_NOTICE, "reload: unsubscribed from %s", oc->in_topic[i]);
    }
}

/* SIGHUP: a new configuration and model, or the old ones with a reason.
 * The settings that need a restart (fld_config_keep_fixed) stay as they
 * were; everything else takes effect now, the shard's topic prefixes
 * included. */
static void fld__reload(fld_app *app) {
  char err[600];
  fld_config nc;
  fld_engine *ne = NULL;
  fln_notify_reloading();
  fln_log(FLN_NOTICE, "reloading %s", app->config_path);
  int rc = fld_config_load(&nc, app->config_path, err, sizeof err);
  if (!rc) rc = fld_engine_load(&ne, nc.model_file, &nc, err, sizeof err);
  if (rc) {
    fld_config_free(&nc);
    app->m.reloads_failed++;
    fln_log(FLN_ERR, "reload failed, still serving with model %s: %s", app->eng->version, err);
    fln_notify_ready("reload failed (%s); serving model %s", fl_strerror(rc), app->eng->version);
    return;
  }
  const fld_config *oc = &app->cfg;
  /* Keep what needs a restart as it is, take the rest. */
  char fixed[400];
  if (fld_config_keep_fixed(&nc, oc, fixed, sizeof fixed))
    fld_log(FLD_WARNING, "reload: %s take effect at the next restart", fixed);
  fld__reshard(app, &nc);
  /* The old model finishes what it started. */
  fld_ingest_flush(app);
  int keep = fld_engine_compatible(app->eng, ne) && nc.stride == oc->stride;
  if (!keep) {
    fld_streams_clear(app);
    fln_log(FLN_NOTICE, "reload: the model takes other frames or the stride changed; "
                        "streams start over");
  }
  if (nc.max_streams > oc->max_streams && app->streams) {
    fld_stream **ns = realloc(app->streams, sizeof *ns * (size_t)nc.max_streams);
    if (ns) app->streams = ns;
    else nc.max_streams = oc->max_streams;
  } else if (nc.max_streams < app->n_streams) {
    /* Existing streams keep their state; only new ones are refused. */
    nc.max_streams = app->n_streams;
  }
  fld_config_free(&app->cfg);
  app->cfg = nc;
  fln_log_set_level(app->cfg.log_level);
  fld__set_limits(app);
  app->in_w.budget = app->cfg.drain_budget;
  if (fln_curve_reload(&app->curve, err, sizeof err))
    fln_log(FLN_WARNING, "reload: keeping the old authorised keys: %s", err);
  fld_engine *old = app->eng;
  app->eng = ne;
  fld_engine_free(old);
  if (fld_tune_reload(app, err, sizeof err))
    fln_log(FLN_ERR, "reload: tuning is off: %s", err);
  app->m.reloads_ok++;
  fln_log(FLN_NOTICE, "reloaded: model %s", ne->version);
  fln_notify_ready("serving, model %s", ne->version);
}

static void fld__close_signals(fld_app *app) {
  uv_close((uv_handle_t *)&app->sig_hup, NULL);
  uv_close((uv_handle_t *)&app->sig_term, NULL);
  uv_close((uv_handle_t *)&app->sig_int, NULL);
}

/* SIGTERM / SIGINT: take in what is already queued, score it, publish, and
 * let every handle close so that the loop ends; main() then closes the
 * sockets, and the report socket's linger lets the last reports leave. */
static void fld__stop(fld_app *app) {
  if (app->stopping) return;
  app->stopping = 1;
  fln_notify_stopping("stopping: draining");
  fln_log(FLN_NOTICE, "stopping: draining the input queue");
  uint64_t t0 = uv_hrtime();
  int n;
  for (n = 0; n < FLD_STOP_DRAIN_MAX && uv_hrtime() - t0 < FLD_STOP_DRAIN_NS; n++)
    if (fld__in_drain(&app->in_w, 1) == 0) break;
  fld_ingest_flush(app);
  fld_tune_stop(app);
  fln_log(FLN_NOTICE, "stopped after draining %d frames: %llu received, %llu processed, "
                      "%llu reports", n, (unsigned long long)app->m.received,
          (unsigned long long)app->m.processed, (unsigned long long)app->m.reports);
  fln_zwatch_stop(&app->in_w);
  fln_zwatch_stop(&app->out_w);
  fln_zwatch_stop(&app->mon_w);
  fln_curve_stop(&app->curve);
  fln_http_stop(&app->http);
  fld_notify_stop_timers(app);
  fld__close_signals(app);
}

static void fld__signal_cb(uv_signal_t *h, int sig) {
  fld_app *app = h->data;
  if (sig == SIGHUP) fld__reload(app);
  else fld__stop(app);
}

static void usage(FILE *f) {
  fprintf(f, "usage: faultlined --config FILE\n"
             "       faultlined --check-config FILE\n"
             "       faultlined --version | --help\n\n"
             "The faultline streaming daemon: Frames in over ZeroMQ (SUB or PULL), one Report\n"
             "per window out over ZeroMQ (PUB, topic report/<stream>), /metrics and /healthz\n"
             "over HTTP, sd_notify under systemd.  SIGHUP reloads the configuration and the\n"
             "model (keeping the old ones if the new are invalid); SIGTERM drains and stops.\n"
             "Every key of FILE is documented in config/faultline.ini.\n\n"
             "  --config FILE        run with this configuration\n"
             "  --check-config FILE  load the configuration and its model, report, exit\n");
}

int main(int argc, char **argv) {
  static const struct option opts[] = {{"config", 1, 0, 'c'}, {"check-config", 1, 0, 'C'},
                                       {"version", 0, 0, 'V'}, {"help", 0, 0, 'h'},
                                       {0, 0, 0, 0}};
  const char *config = NULL;
  int check = 0, o;
  /* A reload holds two models and reads a model-sized file; glibc would
   * raise its mmap threshold past those sizes after the first free and keep
   * them in the heap, so resident memory grew to three times its steady size
   * under reloads (soak).  A fixed threshold returns them at every free. */
  mallopt(M_MMAP_THRESHOLD, 128 * 1024);
  while ((o = getopt_long(argc, argv, "c:C:Vh", opts, NULL)) != -1) {
    switch (o) {
    case 'c': config = optarg; break;
    case 'C': config = optarg; check = 1; break;
    case 'V': printf("faultlined %s\n", FLD_VERSION); return 0;
    case 'h': usage(stdout); return 0;
    default: usage(stderr); return 2;
    }
  }
  if (!config || optind < argc) {
    usage(stderr);
    return 2;
  }
  /* One window at a time is small: BLAS threads would only contend with
   * the loop. */
  if (!getenv("OPENBLAS_NUM_THREADS")) openblas_set_num_threads(1);
  static fld_app app;
  char err[600];
  snprintf(app.config_path, sizeof app.config_path, "%s", config);
  int rc = fld_config_load(&app.cfg, config, err, sizeof err);
  if (rc) {
    fln_log(FLN_ERR, "invalid configuration: %s", err);
    return 1;
  }
  fln_log_set_level(app.cfg.log_level);
  if ((rc = fld_engine_load(&app.eng, app.cfg.model_file, &app.cfg, err, sizeof err))) {
    fln_log(FLN_ERR, "cannot load the model: %s", err);
    return 1;
  }
  if (check) {
    const fl_model_spec *s = fl_model_spec_of(app.eng->b.model);
    printf("%s: ok (model %s, %d modalities, window %d, stride %d, threshold %.4g)\n", config,
           app.eng->version, s->n_mod, s->window, app.cfg.stride,
           (double)app.eng->b.calib.threshold);
    fld_engine_free(app.eng);
    return 0;
  }
  if ((rc = fld_tune_start(&app, err, sizeof err))) {
    fln_log(FLN_ERR, "%s", err);
    fld_engine_free(app.eng);
    return 1;
  }
  app.m.start_time = fln_now();
  /* Anomaly counters in the model's modality order, each from 0. */
  for (int i = 0; i < fl_model_spec_of(app.eng->b.model)->n_mod; i++)
    fld_metrics_modality(&app.m, fl_model_spec_of(app.eng->b.model)->mod[i].name);
  app.loop = uv_default_loop();
  app.zctx = zmq_ctx_new();
  rc = 1;
  if (!app.zctx) {
    fln_log(FLN_ERR, "cannot create the ZeroMQ context");
    goto out;
  }
  signal(SIGPIPE, SIG_IGN);
  fld__set_limits(&app);
  if (fld__curve_start(&app, err, sizeof err) || fld__open_sockets(&app, err, sizeof err)) {
    fln_log(FLN_ERR, "%s", err);
    goto out;
  }
  if (fld_http_start(&app)) goto out;
  uv_signal_init(app.loop, &app.sig_hup);
  uv_signal_init(app.loop, &app.sig_term);
  uv_signal_init(app.loop, &app.sig_int);
  app.sig_hup.data = app.sig_term.data = app.sig_int.data = &app;
  uv_signal_start(&app.sig_hup, fld__signal_cb, SIGHUP);
  uv_signal_start(&app.sig_term, fld__signal_cb, SIGTERM);
  uv_signal_start(&app.sig_int, fld__signal_cb, SIGINT);
  fld_notify_start_timers(&app);
  const fl_model_spec *s = fl_model_spec_of(app.eng->b.model);
  fln_log(FLN_NOTICE, "serving: model %s (%d modalities, window %d, stride %d), input %s %s %s",
          app.eng->version, s->n_mod, s->window, app.cfg.stride,
          app.cfg.in_type == FLD_IN_SUB ? "SUB" : "PULL", app.cfg.in_bind ? "bound to" : "connected to",
          app.cfg.in_endpoint[0]);
  fln_notify_ready("serving, model %s", app.eng->version);
  uv_run(app.loop, UV_RUN_DEFAULT);
  rc = app.exit_code;
out:
  if (!app.stopping && app.loop) {
    /* Start-up failed: close what was opened so the loop can end. */
    app.stopping = 1;
    fln_zwatch_stop(&app.in_w);
    fln_zwatch_stop(&app.out_w);
    fln_zwatch_stop(&app.mon_w);
    fln_curve_stop(&app.curve);
    fln_http_stop(&app.http);
    uv_run(app.loop, UV_RUN_DEFAULT);
  }
  if (app.in_sock) zmq_close(app.in_sock);
  if (app.out_sock) zmq_close(app.out_sock);
  if (app.mon_sock) zmq_close(app.mon_sock);
  fln_curve_close(&app.curve);
  if (app.zctx) fln_zterm(app.zctx);
  fld_streams_clear(&app);
  free(app.streams);
  free(app.m.modname);
  free(app.m.anomalies);
  fld_tune_free(&app);
  fld_engine_free(app.eng);
  if (app.loop) uv_loop_close(app.loop);
  return rc;
}
