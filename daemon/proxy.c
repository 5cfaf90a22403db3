/* faultline proxy: XSUB/XPUB fan-in for many daemons.  See fld.h.
 *
 * One site runs two: one for frames (publishers connect to its frontend,
 * every daemon's SUB connects to its backend and subscribes to its shard of
 * stream prefixes) and one for reports (every daemon's report socket
 * connects to its frontend, consumers to its backend).  Subscriptions travel
 * upstream through the proxy, so a publisher only sends what some daemon
 * wants, and a daemon that stops takes its subscription with it.
 *
 * zmq_proxy_steerable blocks, so it runs in a thread of its own and owns the
 * frontend, the backend and one end of an inproc PAIR, the control socket.
 * Everything else happens in the loop thread with the daemon's parts: the
 * HTTP endpoint (metrics.c, with this file's renderer), the ZAP handler
 * (curve.c), sd_notify, signals.  The loop asks the proxy for STATISTICS
 * (messages and bytes in and out of each socket) at every scrape and every
 * watchdog tick, so a watchdog ping proves that the forwarding thread still
 * answers, and stops it with TERMINATE. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <systemd/sd-daemon.h>

#include "faultline/error.h"
#include "fld.h"

#define FLD_PROXY_CTL "inproc://faultline-proxy-control"
/* How long a scrape waits for the forwarding thread's statistics, ms. */
#define FLD_PROXY_STATS_MS 2000

enum { FLD_SIDE_FRONT = 0, FLD_SIDE_BACK = 1 };
static const char *const fld__side_name[2] = {"frontend", "backend"};

typedef struct {
  fld_app app; /* loop, ZeroMQ context, HTTP endpoint, CurveZMQ: the daemon's */
  const fld_proxy_opts *o;
  void *sock[2];           /* XSUB frontend, XPUB backend (the proxy thread's) */
  void *ctl, *ctl_peer;    /* control PAIR: ours, the proxy thread's */
  void *mon[2];            /* socket monitors, read in the loop */
  fld_zwatch mon_w[2];
  pthread_t thread;
  int thread_on;
  int thread_rc, thread_errno;
  uv_async_t ended;        /* the proxy thread returned */
  uv_timer_t t_watchdog;
  int watchdog_on, handles_on;
  /* Peers: connections accepted or made minus those that ended. */
  int64_t peers[2];
  uint64_t handshake_failed[2];
  uint64_t stats[8];       /* the latest STATISTICS reply */
  uint64_t stats_failed;
} fld_proxy;

void fld_proxy_defaults(fld_proxy_opts *o) {
  memset(o, 0, sizeof *o);
  o->metrics_max_connections = 16;
  o->hwm = 100000;
  o->log_level = FLD_INFO;
}

int fld_proxy_endpoints(const char *v, char dst[][FLD_ENDPOINT_MAX], int *n) {
  const char *p = v;
  while (*p) {
    const char *e = strchr(p, ',');
    size_t len = e ? (size_t)(e - p) : strlen(p);
    while (len && (*p == ' ' || *p == '\t')) p++, len--;
    while (len && (p[len - 1] == ' ' || p[len - 1] == '\t')) len--;
    if (!len || len >= FLD_ENDPOINT_MAX || *n >= FLD_MAX_ENDPOINTS) return FL_EINVAL;
    memcpy(dst[*n], p, len);
    dst[*n][len] = 0;
    (*n)++;
    if (!e) break;
    p = e + 1;
  }
  return *n ? 0 : FL_EINVAL;
}

/* The statistics of the forwarding thread, asked over the control socket:
 * eight 64-bit counters, frontend then backend, each messages in, bytes in,
 * messages out, bytes out (a multipart message counts once).  A reply that
 * came too late for the previous request is still queued: it is dropped
 * first, so that a request never reads an older answer. */
static int fld__proxy_stats(fld_proxy *p) {
  zmq_msg_t m;
  for (;;) {
    zmq_msg_init(&m);
    int n = fld_zmsg_recv(&m, p->ctl, ZMQ_DONTWAIT);
    zmq_msg_close(&m);
    if (n < 0) break;
  }
  if (!p->thread_on || fld_zsend(p->ctl, "STATISTICS", 10, 0)) goto fail;
  uint64_t st[8];
  for (int i = 0; i < 8; i++) {
    zmq_msg_init(&m);
    if (fld_zmsg_recv(&m, p->ctl, 0) != 8) {
      zmq_msg_close(&m);
      goto fail;
    }
    memcpy(&st[i], zmq_msg_data(&m), 8);
    int more = zmq_msg_more(&m);
    zmq_msg_close(&m);
    if (more != (i < 7)) goto fail;
  }
  memcpy(p->stats, st, sizeof st);
  return 0;
fail:
  p->stats_failed++;
  return FL_EIO;
}

static void fld__counter(FILE *f, const char *name, const char *help, const char *label,
                         const char *v0, uint64_t x0, const char *v1, uint64_t x1) {
  fprintf(f, "# HELP %s %s\n# TYPE %s counter\n", name, help, name);
  fprintf(f, "%s{%s=\"%s\"} %llu\n%s{%s=\"%s\"} %llu\n", name, label, v0,
          (unsigned long long)x0, name, label, v1, (unsigned long long)x1);
}

/* /metrics of the proxy.  Directions: "downstream" is what publishers (or
 * daemons, for reports) send to subscribers, "upstream" the subscriptions
 * and unsubscriptions going the other way. */
static char *fld__proxy_render(fld_app *app, size_t *len) {
  fld_proxy *p = (fld_proxy *)app;
  int ok = fld__proxy_stats(p) == 0;
  char *buf = NULL;
  FILE *f = open_memstream(&buf, len);
  if (!f) return NULL;
  const uint64_t *s = p->stats;
  fld__counter(f, "faultline_proxy_messages_total",
               "Messages forwarded (a multipart message counts once), by direction.",
               "direction", "downstream", s[0], "upstream", s[4]);
  fld__counter(f, "faultline_proxy_bytes_total", "Bytes forwarded, by direction.", "direction",
               "downstream", s[1], "upstream", s[5]);
  fprintf(f, "# HELP faultline_proxy_subscription_messages_total Subscriptions and "
             "unsubscriptions seen on the backend and passed upstream.\n"
             "# TYPE faultline_proxy_subscription_messages_total counter\n"
             "faultline_proxy_subscription_messages_total %llu\n",
          (unsigned long long)s[4]);
  fprintf(f, "# HELP faultline_proxy_peers Connected peers, by side.\n"
             "# TYPE faultline_proxy_peers gauge\n");
  for (int k = 0; k < 2; k++)
    fprintf(f, "faultline_proxy_peers{side=\"%s\"} %lld\n", fld__side_name[k],
            (long long)p->peers[k]);
  fld__counter(f, "faultline_proxy_handshakes_failed_total",
               "ZeroMQ handshakes that failed (CurveZMQ refusals among them), by side.", "side",
               "frontend", p->handshake_failed[0], "backend", p->handshake_failed[1]);
  fprintf(f, "# HELP faultline_proxy_statistics_failures_total Requests for the forwarding "
             "thread's statistics that got no answer.\n"
             "# TYPE faultline_proxy_statistics_failures_total counter\n"
             "faultline_proxy_statistics_failures_total %llu\n",
          (unsigned long long)p->stats_failed);
  fprintf(f, "# HELP faultline_proxy_up 1 while the forwarding thread answers.\n"
             "# TYPE faultline_proxy_up gauge\nfaultline_proxy_up %d\n", ok);
  fld__counter(f, "faultline_zap_requests_total", "CurveZMQ authentication requests, by result.",
               "result", "allowed", app->m.zap_allowed, "denied", app->m.zap_denied);
  fprintf(f, "# HELP faultline_http_connections Open connections to this endpoint.\n"
             "# TYPE faultline_http_connections gauge\nfaultline_http_connections %d\n",
          app->m.http_open);
  fprintf(f, "# HELP faultline_http_connections_refused_total Connections to this endpoint "
             "refused over --max-connections.\n"
             "# TYPE faultline_http_connections_refused_total counter\n"
             "faultline_http_connections_refused_total %llu\n",
          (unsigned long long)app->m.http_refused);
  double now = fld_now();
  fprintf(f, "# HELP faultline_proxy_start_time_seconds When the proxy started.\n"
             "# TYPE faultline_proxy_start_time_seconds gauge\n"
             "faultline_proxy_start_time_seconds %.3f\n"
             "# HELP faultline_proxy_uptime_seconds Seconds since the proxy started.\n"
             "# TYPE faultline_proxy_uptime_seconds gauge\n"
             "faultline_proxy_uptime_seconds %.3f\n",
          app->m.start_time, now - app->m.start_time);
  fprintf(f, "# HELP faultline_build_info The program's version (value 1).\n"
             "# TYPE faultline_build_info gauge\nfaultline_build_info{version=\"%s\"} 1\n",
          FLD_VERSION);
  if (fclose(f)) {
    free(buf);
    return NULL;
  }
  return buf;
}

/* Monitor events: [event (u16) value (u32)][endpoint]. */
static int fld__mon_drain(fld_zwatch *w, int budget) {
  fld_proxy *p = w->user;
  int side = w == &p->mon_w[0] ? 0 : 1, done = 0;
  while (done < budget) {
    zmq_msg_t parts[2];
    int overflow, n = fld_zrecv(w->sock, parts, 2, &overflow);
    if (n <= 0) break;
    done++;
    if (zmq_msg_size(&parts[0]) >= 2) {
      uint16_t ev;
      memcpy(&ev, zmq_msg_data(&parts[0]), 2);
      if (ev == ZMQ_EVENT_ACCEPTED || ev == ZMQ_EVENT_CONNECTED) p->peers[side]++;
      else if (ev == ZMQ_EVENT_DISCONNECTED && p->peers[side] > 0) p->peers[side]--;
      else if (ev == ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL ||
               ev == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL || ev == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH)
        p->handshake_failed[side]++;
    }
    fld_zclose_parts(parts, n);
  }
  return done;
}

static void *fld__proxy_thread(void *arg) {
  fld_proxy *p = arg;
  p->thread_rc = zmq_proxy_steerable(p->sock[0], p->sock[1], NULL, p->ctl_peer);
  p->thread_errno = p->thread_rc ? errno : 0;
  uv_async_send(&p->ended);
  return NULL;
}

/* Stops everything the loop watches, so that uv_run returns. */
static void fld__proxy_stop(fld_proxy *p) {
  fld_app *app = &p->app;
  if (app->stopping) return;
  app->stopping = 1;
  sd_notify(0, "STOPPING=1\nSTATUS=stopping");
  if (p->thread_on) {
    /* The proxy answers TERMINATE between two bursts; it returns 0. */
    fld_zsend(p->ctl, "TERMINATE", 9, 0);
    pthread_join(p->thread, NULL);
    p->thread_on = 0;
  }
  fld_zwatch_stop(&p->mon_w[0]);
  fld_zwatch_stop(&p->mon_w[1]);
  fld_curve_stop(app);
  fld_http_stop(app);
  if (p->watchdog_on) {
    uv_timer_stop(&p->t_watchdog);
    uv_close((uv_handle_t *)&p->t_watchdog, NULL);
    p->watchdog_on = 0;
  }
  if (p->handles_on) {
    uv_close((uv_handle_t *)&p->ended, NULL);
    uv_close((uv_handle_t *)&app->sig_hup, NULL);
    uv_close((uv_handle_t *)&app->sig_term, NULL);
    uv_close((uv_handle_t *)&app->sig_int, NULL);
    p->handles_on = 0;
  }
}

static void fld__ended_cb(uv_async_t *h) {
  fld_proxy *p = h->data;
  if (p->app.stopping) return;
  /* Not asked to stop: the thread failed (or the context is gone). */
  pthread_join(p->thread, NULL);
  p->thread_on = 0;
  fld_log(FLD_ERR, "the forwarding thread stopped: %s",
          p->thread_rc ? zmq_strerror(p->thread_errno) : "terminated");
  p->app.exit_code = 1;
  fld__proxy_stop(p);
}

static void fld__signal_cb(uv_signal_t *h, int sig) {
  fld_proxy *p = h->data;
  if (sig == SIGHUP) {
    char err[600];
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    sd_notifyf(0, "RELOADING=1\nMONOTONIC_USEC=%llu",
               (unsigned long long)ts.tv_sec * 1000000ULL +
                   (unsigned long long)ts.tv_nsec / 1000);
    if (fld_curve_reload(&p->app, err, sizeof err))
      fld_log(FLD_WARNING, "reload: keeping the old authorised keys: %s", err);
    sd_notify(0, "READY=1");
    return;
  }
  fld_log(FLD_NOTICE, "stopping: %llu messages forwarded downstream, %llu upstream",
          (unsigned long long)(fld__proxy_stats(p) ? 0 : p->stats[0]),
          (unsigned long long)p->stats[4]);
  fld__proxy_stop(p);
}

/* A ping only when the forwarding thread answers: systemd restarts a proxy
 * whose thread hangs, not only one whose loop does. */
static void fld__watchdog_cb(uv_timer_t *t) {
  fld_proxy *p = t->data;
  if (fld__proxy_stats(p)) {
    fld_log(FLD_WARNING, "the forwarding thread did not answer within %d ms",
            FLD_PROXY_STATS_MS);
    return;
  }
  sd_notifyf(0, "WATCHDOG=1\nSTATUS=%llu messages downstream, %llu upstream, peers %lld/%lld",
             (unsigned long long)p->stats[0], (unsigned long long)p->stats[4],
             (long long)p->peers[0], (long long)p->peers[1]);
}

/* Makes sock a CURVE client of the server (a faultlined, which is always a
 * CURVE server) whose public key is in path: the bare 40 Z85 characters or a
 * certificate's public-key = "..." line.  The proxy's own key pair, loaded by
 * fld_curve_start, is the client's. */
static int fld__curve_client(fld_app *app, void *sock, const char *path, char *err,
                             size_t errlen) {
  char buf[4096], key[41];
  uint8_t bin[32];
  FILE *f = fopen(path, "r");
  size_t n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
  if (f) fclose(f);
  buf[n] = 0;
  const char *q = strstr(buf, "public-key");
  if (q && (q = strchr(q, '"'))) q++;
  else for (q = buf; *q == ' ' || *q == '\t' || *q == '\n' || *q == '\r'; q++) {}
  size_t len = strcspn(q, "\" \t\r\n");
  if (!f || len != 40) {
    snprintf(err, errlen, "%s: %s", path, f ? "not a Z85 public key" : strerror(errno));
    return FL_EINVAL;
  }
  memcpy(key, q, 40);
  key[40] = 0;
  if (!zmq_z85_decode(bin, key) || zmq_setsockopt(sock, ZMQ_CURVE_SERVERKEY, key, 40) ||
      zmq_setsockopt(sock, ZMQ_CURVE_PUBLICKEY, app->server_public, 40) ||
      zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, app->server_secret, 40)) {
    snprintf(err, errlen, "%s: not a usable Z85 public key", path);
    return FL_EINVAL;
  }
  return 0;
}

/* Binds or connects one side's endpoints ('@' or nothing: bind, '>':
 * connect). */
static int fld__attach(void *sock, int n, const char (*ep)[FLD_ENDPOINT_MAX], const char *side) {
  for (int i = 0; i < n; i++) {
    const char *e = ep[i];
    int conn = e[0] == '>';
    if (e[0] == '>' || e[0] == '@') e++;
    if (conn ? zmq_connect(sock, e) : zmq_bind(sock, e)) {
      fld_log(FLD_ERR, "%s: cannot %s %s: %s", side, conn ? "connect to" : "bind", e,
              zmq_strerror(errno));
      return FL_EIO;
    }
  }
  return 0;
}

/* Creates, secures and attaches the two sockets and the control pair. */
static int fld__proxy_open(fld_proxy *p) {
  fld_app *app = &p->app;
  const fld_proxy_opts *o = p->o;
  char err[600];
  int types[2] = {ZMQ_XSUB, ZMQ_XPUB};
  const char *server_key[2] = {o->front_server_key, o->back_server_key};
  for (int k = 0; k < 2; k++) {
    void *s = p->sock[k] = zmq_socket(app->zctx, types[k]);
    if (!s) {
      fld_log(FLD_ERR, "cannot create the %s socket: %s", fld__side_name[k], zmq_strerror(errno));
      return FL_EIO;
    }
    zmq_setsockopt(s, ZMQ_SNDHWM, &o->hwm, sizeof o->hwm);
    zmq_setsockopt(s, ZMQ_RCVHWM, &o->hwm, sizeof o->hwm);
    /* What is queued downstream at a stop gets a second to leave. */
    int linger = k == FLD_SIDE_BACK ? 1000 : 0;
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    if (app->cfg.curve) {
      int rc = server_key[k][0] ? fld__curve_client(app, s, server_key[k], err, sizeof err)
                                : fld_curve_apply(app, s);
      if (rc) {
        fld_log(FLD_ERR, "%s: %s", fld__side_name[k],
                server_key[k][0] ? err : "cannot enable CurveZMQ");
        return FL_EINVAL;
      }
    }
    char mon[64];
    snprintf(mon, sizeof mon, "inproc://faultline-proxy-monitor-%d", k);
    if (zmq_socket_monitor(s, mon, ZMQ_EVENT_ACCEPTED | ZMQ_EVENT_CONNECTED |
                                       ZMQ_EVENT_DISCONNECTED |
                                       ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL |
                                       ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL |
                                       ZMQ_EVENT_HANDSHAKE_FAILED_AUTH) == 0 &&
        (p->mon[k] = zmq_socket(app->zctx, ZMQ_PAIR)) && !zmq_connect(p->mon[k], mon)) {
      int zero = 0;
      zmq_setsockopt(p->mon[k], ZMQ_LINGER, &zero, sizeof zero);
      fld_zwatch_start(&p->mon_w[k], app->loop, p->mon[k], 64, fld__mon_drain, NULL, p);
    }
  }
  if (fld__attach(p->sock[0], o->n_front, o->front, "frontend") ||
      fld__attach(p->sock[1], o->n_back, o->back, "backend"))
    return FL_EIO;
  p->ctl = zmq_socket(app->zctx, ZMQ_PAIR);
  p->ctl_peer = zmq_socket(app->zctx, ZMQ_PAIR);
  int zero = 0, tmo = FLD_PROXY_STATS_MS;
  if (!p->ctl || !p->ctl_peer || zmq_bind(p->ctl, FLD_PROXY_CTL) ||
      zmq_connect(p->ctl_peer, FLD_PROXY_CTL)) {
    fld_log(FLD_ERR, "cannot create the control socket: %s", zmq_strerror(errno));
    return FL_EIO;
  }
  zmq_setsockopt(p->ctl, ZMQ_LINGER, &zero, sizeof zero);
  zmq_setsockopt(p->ctl_peer, ZMQ_LINGER, &zero, sizeof zero);
  zmq_setsockopt(p->ctl, ZMQ_RCVTIMEO, &tmo, sizeof tmo);
  zmq_setsockopt(p->ctl, ZMQ_SNDTIMEO, &tmo, sizeof tmo);
  return 0;
}

int fld_proxy_run(const fld_proxy_opts *o) {
  static fld_proxy px;
  fld_proxy *p = &px;
  fld_app *app = &p->app;
  p->o = o;
  fld_log_set_level(o->log_level);
  /* The daemon's parts read their settings from its configuration. */
  fld_config_defaults(&app->cfg);
  snprintf(app->cfg.metrics_listen, sizeof app->cfg.metrics_listen, "%s", o->metrics_listen);
  app->cfg.metrics_max_connections = o->metrics_max_connections;
  app->cfg.curve = o->curve_key[0] != 0;
  snprintf(app->cfg.secret_key_file, sizeof app->cfg.secret_key_file, "%s", o->curve_key);
  snprintf(app->cfg.authorized_keys, sizeof app->cfg.authorized_keys, "%s", o->authorized_keys);
  app->render_metrics = fld__proxy_render;
  app->m.start_time = fld_now();
  app->loop = uv_default_loop();
  uv_async_init(app->loop, &p->ended, fld__ended_cb);
  uv_signal_init(app->loop, &app->sig_hup);
  uv_signal_init(app->loop, &app->sig_term);
  uv_signal_init(app->loop, &app->sig_int);
  p->handles_on = 1;
  p->ended.data = app->sig_hup.data = app->sig_term.data = app->sig_int.data = p;
  app->zctx = zmq_ctx_new();
  int rc = 1;
  char err[600];
  if (!app->zctx) {
    fld_log(FLD_ERR, "cannot create the ZeroMQ context");
    goto out;
  }
  signal(SIGPIPE, SIG_IGN);
  if (fld_curve_start(app, err, sizeof err)) {
    fld_log(FLD_ERR, "%s", err);
    goto out;
  }
  if (fld__proxy_open(p) || fld_http_start(app)) goto out;
  /* The forwarding thread takes no signals: one delivered there would end
   * zmq_proxy_steerable with EINTR. */
  if (fld_thread_quiet(&p->thread, fld__proxy_thread, p)) {
    fld_log(FLD_ERR, "cannot start the forwarding thread");
    goto out;
  }
  p->thread_on = 1;
  uv_signal_start(&app->sig_hup, fld__signal_cb, SIGHUP);
  uv_signal_start(&app->sig_term, fld__signal_cb, SIGTERM);
  uv_signal_start(&app->sig_int, fld__signal_cb, SIGINT);
  uint64_t usec = 0;
  if (sd_watchdog_enabled(0, &usec) > 0 && usec > 0) {
    uv_timer_init(app->loop, &p->t_watchdog);
    p->t_watchdog.data = p;
    uv_timer_start(&p->t_watchdog, fld__watchdog_cb, usec / 2000, usec / 2000);
    p->watchdog_on = 1;
  }
  fld_log(FLD_NOTICE, "forwarding: frontend (XSUB) %s%s, backend (XPUB) %s%s%s", o->front[0],
          o->n_front > 1 ? " ..." : "", o->back[0], o->n_back > 1 ? " ..." : "",
          app->cfg.curve ? ", CurveZMQ" : "");
  sd_notifyf(0, "READY=1\nSTATUS=forwarding\nMAINPID=%lu", (unsigned long)getpid());
  uv_run(app->loop, UV_RUN_DEFAULT);
  rc = app->exit_code;
out:
  if (!app->stopping && app->loop) {
    /* Start-up failed: close what was opened so that the loop can end. */
    fld__proxy_stop(p);
    uv_run(app->loop, UV_RUN_DEFAULT);
  }
  for (int k = 0; k < 2; k++) {
    if (p->sock[k]) zmq_close(p->sock[k]);
    if (p->mon[k]) zmq_close(p->mon[k]);
  }
  if (p->ctl) zmq_close(p->ctl);
  if (p->ctl_peer) zmq_close(p->ctl_peer);
  if (app->zap_sock) zmq_close(app->zap_sock);
  if (app->zctx) fld_zterm(app->zctx);
  free(app->keys);
  if (app->loop) uv_loop_close(app->loop);
  return rc;
}
