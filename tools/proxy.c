/* faultline proxy: XSUB/XPUB fan-in for many daemons.  See proxy.h.
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
 * Everything else happens in the loop thread with net/'s parts: the HTTP
 * endpoint (this file's routes), the ZAP handler, sd_notify, signals.  The
 * loop asks the proxy for STATISTICS (messages and bytes in and out of each
 * socket) at every scrape and every watchdog tick, so a watchdog ping proves
 * that the forwarding thread still answers, and stops it with TERMINATE. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "faultline/error.h"
#include "proxy.h"

#define PROXY_CTL "inproc://faultline-proxy-control"
/* How long a scrape waits for the forwarding thread's statistics, ms. */
#define PROXY_STATS_MS 2000

enum { PROXY_FRONT = 0, PROXY_BACK = 1 };
static const char *const proxy_side_name[2] = {"frontend", "backend"};

typedef struct {
  const proxy_opts *o;
  uv_loop_t *loop;
  void *zctx;
  fln_http http;
  fln_curve curve;
  fln_watchdog watchdog;
  uv_signal_t sig_hup, sig_term, sig_int;
  int stopping, exit_code;
  double start_time;
  void *sock[2];           /* XSUB frontend, XPUB backend (the proxy thread's) */
  void *ctl, *ctl_peer;    /* control PAIR: ours, the proxy thread's */
  void *mon[2];            /* socket monitors, read in the loop */
  fln_zwatch mon_w[2];
  pthread_t thread;
  int thread_on;
  int thread_rc, thread_errno;
  uv_async_t ended;        /* the proxy thread returned */
  int handles_on;
  /* Peers: connections accepted or made minus those that ended. */
  int64_t peers[2];
  uint64_t handshake_failed[2];
  uint64_t stats[8];       /* the latest STATISTICS reply */
  uint64_t stats_failed;
} proxy_state;

void proxy_defaults(proxy_opts *o) {
  memset(o, 0, sizeof *o);
  o->metrics_max_connections = 16;
  o->hwm = 100000;
  o->log_level = FLN_INFO;
}

int proxy_endpoints(const char *v, char dst[][FLN_ENDPOINT_MAX], int *n) {
  const char *p = v;
  while (*p) {
    const char *e = strchr(p, ',');
    size_t len = e ? (size_t)(e - p) : strlen(p);
    while (len && (*p == ' ' || *p == '\t')) p++, len--;
    while (len && (p[len - 1] == ' ' || p[len - 1] == '\t')) len--;
    if (!len || len >= FLN_ENDPOINT_MAX || *n >= FLN_MAX_ENDPOINTS) return FL_EINVAL;
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
static int proxy_stats(proxy_state *p) {
  zmq_msg_t m;
  for (;;) {
    zmq_msg_init(&m);
    int n = fln_zmsg_recv(&m, p->ctl, ZMQ_DONTWAIT);
    zmq_msg_close(&m);
    if (n < 0) break;
  }
  if (!p->thread_on || fln_zsend(p->ctl, "STATISTICS", 10, 0)) goto fail;
  uint64_t st[8];
  for (int i = 0; i < 8; i++) {
    zmq_msg_init(&m);
    if (fln_zmsg_recv(&m, p->ctl, 0) != 8) {
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

static void proxy_counter(FILE *f, const char *name, const char *help, const char *label,
                         const char *v0, uint64_t x0, const char *v1, uint64_t x1) {
  fprintf(f, "# HELP %s %s\n# TYPE %s counter\n", name, help, name);
  fprintf(f, "%s{%s=\"%s\"} %llu\n%s{%s=\"%s\"} %llu\n", name, label, v0,
          (unsigned long long)x0, name, label, v1, (unsigned long long)x1);
}

/* /metrics of the proxy.  Directions: "downstream" is what publishers (or
 * daemons, for reports) send to subscribers, "upstream" the subscriptions
 * and unsubscriptions going the other way. */
static char *proxy_render(void *user, size_t *len) {
  proxy_state *p = user;
  int ok = proxy_stats(p) == 0;
  char *buf = NULL;
  FILE *f = open_memstream(&buf, len);
  if (!f) return NULL;
  const uint64_t *s = p->stats;
  proxy_counter(f, "faultline_proxy_messages_total",
               "Messages forwarded (a multipart message counts once), by direction.",
               "direction", "downstream", s[0], "upstream", s[4]);
  proxy_counter(f, "faultline_proxy_bytes_total", "Bytes forwarded, by direction.", "direction",
               "downstream", s[1], "upstream", s[5]);
  fprintf(f, "# HELP faultline_proxy_subscription_messages_total Subscriptions and "
             "unsubscriptions seen on the backend and passed upstream.\n"
             "# TYPE faultline_proxy_subscription_messages_total counter\n"
             "faultline_proxy_subscription_messages_total %llu\n",
          (unsigned long long)s[4]);
  fprintf(f, "# HELP faultline_proxy_peers Connected peers, by side.\n"
             "# TYPE faultline_proxy_peers gauge\n");
  for (int k = 0; k < 2; k++)
    fprintf(f, "faultline_proxy_peers{side=\"%s\"} %lld\n", proxy_side_name[k],
            (long long)p->peers[k]);
  proxy_counter(f, "faultline_proxy_handshakes_failed_total",
               "ZeroMQ handshakes that failed (CurveZMQ refusals among them), by side.", "side",
               "frontend", p->handshake_failed[0], "backend", p->handshake_failed[1]);
  fprintf(f, "# HELP faultline_proxy_statistics_failures_total Requests for the forwarding "
             "thread's statistics that got no answer.\n"
             "# TYPE faultline_proxy_statistics_failures_total counter\n"
             "faultline_proxy_statistics_failures_total %llu\n",
          (unsigned long long)p->stats_failed);
  fprintf(f, "# HELP faultline_proxy_up 1 while the forwarding thread answers.\n"
             "# TYPE faultline_proxy_up gauge\nfaultline_proxy_up %d\n", ok);
  proxy_counter(f, "faultline_zap_requests_total", "CurveZMQ authentication requests, by result.",
               "result", "allowed", p->curve.allowed, "denied", p->curve.denied);
  fprintf(f, "# HELP faultline_http_connections Open connections to this endpoint.\n"
             "# TYPE faultline_http_connections gauge\nfaultline_http_connections %d\n",
          p->http.open);
  fprintf(f, "# HELP faultline_http_connections_refused_total Connections to this endpoint "
             "refused over --max-connections.\n"
             "# TYPE faultline_http_connections_refused_total counter\n"
             "faultline_http_connections_refused_total %llu\n",
          (unsigned long long)p->http.refused);
  double now = fln_now();
  fprintf(f, "# HELP faultline_proxy_start_time_seconds When the proxy started.\n"
             "# TYPE faultline_proxy_start_time_seconds gauge\n"
             "faultline_proxy_start_time_seconds %.3f\n"
             "# HELP faultline_proxy_uptime_seconds Seconds since the proxy started.\n"
             "# TYPE faultline_proxy_uptime_seconds gauge\n"
             "faultline_proxy_uptime_seconds %.3f\n",
          p->start_time, now - p->start_time);
  fprintf(f, "# HELP faultline_build_info The program's version (value 1).\n"
             "# TYPE faultline_build_info gauge\nfaultline_build_info{version=\"%s\"} 1\n",
          FLN_VERSION);
  if (fclose(f)) {
    free(buf);
    return NULL;
  }
  return buf;
}

static int proxy_healthz(void *user, const char *url, unsigned *status, const char **body,
                         size_t *len) {
  (void)url;
  return fln_http_health(((proxy_state *)user)->stopping, status, body, len);
}

static const fln_route proxy_routes[] = {
    {"/metrics", NULL, proxy_render, FLN_PROMETHEUS_TEXT},
    {"/healthz", proxy_healthz, NULL, NULL},
};

/* Monitor events: peers come and go, handshakes fail. */
static int proxy_mon_drain(fln_zwatch *w, int budget) {
  proxy_state *p = w->user;
  int side = w == &p->mon_w[0] ? 0 : 1, done = 0, ev;
  for (; done < budget && (ev = fln_zmon_recv(w->sock)) > 0; done++) {
    if (ev == ZMQ_EVENT_ACCEPTED || ev == ZMQ_EVENT_CONNECTED) p->peers[side]++;
    else if (ev == ZMQ_EVENT_DISCONNECTED && p->peers[side] > 0) p->peers[side]--;
    else if (ev == ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL ||
             ev == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL || ev == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH)
      p->handshake_failed[side]++;
  }
  return done;
}

static void *proxy_thread(void *arg) {
  proxy_state *p = arg;
  p->thread_rc = zmq_proxy_steerable(p->sock[0], p->sock[1], NULL, p->ctl_peer);
  p->thread_errno = p->thread_rc ? errno : 0;
  uv_async_send(&p->ended);
  return NULL;
}

/* Stops everything the loop watches, so that uv_run returns. */
static void proxy_stop(proxy_state *p) {
  if (p->stopping) return;
  p->stopping = 1;
  fln_notify_stopping("stopping");
  if (p->thread_on) {
    /* The proxy answers TERMINATE between two bursts; it returns 0. */
    fln_zsend(p->ctl, "TERMINATE", 9, 0);
    pthread_join(p->thread, NULL);
    p->thread_on = 0;
  }
  fln_zwatch_stop(&p->mon_w[0]);
  fln_zwatch_stop(&p->mon_w[1]);
  fln_curve_stop(&p->curve);
  fln_http_stop(&p->http);
  fln_watchdog_stop(&p->watchdog);
  if (p->handles_on) {
    uv_close((uv_handle_t *)&p->ended, NULL);
    uv_close((uv_handle_t *)&p->sig_hup, NULL);
    uv_close((uv_handle_t *)&p->sig_term, NULL);
    uv_close((uv_handle_t *)&p->sig_int, NULL);
    p->handles_on = 0;
  }
}

static void proxy_ended_cb(uv_async_t *h) {
  proxy_state *p = h->data;
  if (p->stopping) return;
  /* Not asked to stop: the thread failed (or the context is gone). */
  pthread_join(p->thread, NULL);
  p->thread_on = 0;
  fln_log(FLN_ERR, "the forwarding thread stopped: %s",
          p->thread_rc ? zmq_strerror(p->thread_errno) : "terminated");
  p->exit_code = 1;
  proxy_stop(p);
}

static void proxy_signal_cb(uv_signal_t *h, int sig) {
  proxy_state *p = h->data;
  if (sig == SIGHUP) {
    char err[600];
    fln_notify_reloading();
    if (fln_curve_reload(&p->curve, err, sizeof err))
      fln_log(FLN_WARNING, "reload: keeping the old authorised keys: %s", err);
    fln_notify_ready("forwarding");
    return;
  }
  fln_log(FLN_NOTICE, "stopping: %llu messages forwarded downstream, %llu upstream",
          (unsigned long long)(proxy_stats(p) ? 0 : p->stats[0]),
          (unsigned long long)p->stats[4]);
  proxy_stop(p);
}

/* A ping only when the forwarding thread answers: systemd restarts a proxy
 * whose thread hangs, not only one whose loop does. */
static int proxy_watchdog(void *user, char *status, size_t len) {
  proxy_state *p = user;
  if (proxy_stats(p)) {
    fln_log(FLN_WARNING, "the forwarding thread did not answer within %d ms", PROXY_STATS_MS);
    return -1;
  }
  snprintf(status, len, "%llu messages downstream, %llu upstream, peers %lld/%lld",
           (unsigned long long)p->stats[0], (unsigned long long)p->stats[4],
           (long long)p->peers[0], (long long)p->peers[1]);
  return 0;
}

/* Binds or connects one side's endpoints ('@' or nothing: bind, '>':
 * connect). */
static int proxy_attach(void *sock, int n, const char (*ep)[FLN_ENDPOINT_MAX], const char *side) {
  for (int i = 0; i < n; i++) {
    const char *e = ep[i];
    int conn = e[0] == '>';
    if (e[0] == '>' || e[0] == '@') e++;
    if (conn ? zmq_connect(sock, e) : zmq_bind(sock, e)) {
      fln_log(FLN_ERR, "%s: cannot %s %s: %s", side, conn ? "connect to" : "bind", e,
              zmq_strerror(errno));
      return FL_EIO;
    }
  }
  return 0;
}

/* Creates, secures and attaches the two sockets and the control pair. */
static int proxy_open(proxy_state *p) {
  const proxy_opts *o = p->o;
  char err[600];
  int types[2] = {ZMQ_XSUB, ZMQ_XPUB};
  const char *server_key[2] = {o->front_server_key, o->back_server_key};
  for (int k = 0; k < 2; k++) {
    void *s = p->sock[k] = zmq_socket(p->zctx, types[k]);
    if (!s) {
      fln_log(FLN_ERR, "cannot create the %s socket: %s", proxy_side_name[k], zmq_strerror(errno));
      return FL_EIO;
    }
    zmq_setsockopt(s, ZMQ_SNDHWM, &o->hwm, sizeof o->hwm);
    zmq_setsockopt(s, ZMQ_RCVHWM, &o->hwm, sizeof o->hwm);
    /* What is queued downstream at a stop gets a second to leave. */
    int linger = k == PROXY_BACK ? 1000 : 0;
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    if (p->curve.on) {
      int rc = server_key[k][0] ? fln_curve_client(&p->curve, s, server_key[k], err, sizeof err)
                                : fln_curve_apply(&p->curve, s);
      if (rc) {
        fln_log(FLN_ERR, "%s: %s", proxy_side_name[k],
                server_key[k][0] ? err : "cannot enable CurveZMQ");
        return FL_EINVAL;
      }
    }
    char mon[64];
    snprintf(mon, sizeof mon, "inproc://faultline-proxy-monitor-%d", k);
    p->mon[k] = fln_zmon_open(p->zctx, s, mon, ZMQ_EVENT_ACCEPTED | ZMQ_EVENT_CONNECTED |
                                                ZMQ_EVENT_DISCONNECTED |
                                                ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL |
                                                ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL |
                                                ZMQ_EVENT_HANDSHAKE_FAILED_AUTH);
    if (p->mon[k])
      fln_zwatch_start(&p->mon_w[k], p->loop, p->mon[k], 64, proxy_mon_drain, NULL, p);
  }
  if (proxy_attach(p->sock[0], o->n_front, o->front, "frontend") ||
      proxy_attach(p->sock[1], o->n_back, o->back, "backend"))
    return FL_EIO;
  p->ctl = zmq_socket(p->zctx, ZMQ_PAIR);
  p->ctl_peer = zmq_socket(p->zctx, ZMQ_PAIR);
  int zero = 0, tmo = PROXY_STATS_MS;
  if (!p->ctl || !p->ctl_peer || zmq_bind(p->ctl, PROXY_CTL) ||
      zmq_connect(p->ctl_peer, PROXY_CTL)) {
    fln_log(FLN_ERR, "cannot create the control socket: %s", zmq_strerror(errno));
    return FL_EIO;
  }
  zmq_setsockopt(p->ctl, ZMQ_LINGER, &zero, sizeof zero);
  zmq_setsockopt(p->ctl_peer, ZMQ_LINGER, &zero, sizeof zero);
  zmq_setsockopt(p->ctl, ZMQ_RCVTIMEO, &tmo, sizeof tmo);
  zmq_setsockopt(p->ctl, ZMQ_SNDTIMEO, &tmo, sizeof tmo);
  return 0;
}

int proxy_run(const proxy_opts *o) {
  static proxy_state px;
  proxy_state *p = &px;
  p->o = o;
  fln_log_set_level(o->log_level);
  fln_http *h = &p->http;
  h->table = (fln_http_table){proxy_routes, (int)(sizeof proxy_routes / sizeof *proxy_routes),
                              "not found: try /metrics or /healthz\n", p};
  snprintf(h->listen, sizeof h->listen, "%s", o->metrics_listen);
  h->max_connections = o->metrics_max_connections;
  /* The request size cap and the refusals' log interval are faultlined's
   * defaults ([metrics] max_request_bytes, [log] limit_interval). */
  h->max_request = 4096;
  h->max_connections_name = "--max-connections";
  h->refused_log.interval = 60.0;
  p->start_time = fln_now();
  p->loop = uv_default_loop();
  uv_async_init(p->loop, &p->ended, proxy_ended_cb);
  uv_signal_init(p->loop, &p->sig_hup);
  uv_signal_init(p->loop, &p->sig_term);
  uv_signal_init(p->loop, &p->sig_int);
  p->handles_on = 1;
  p->ended.data = p->sig_hup.data = p->sig_term.data = p->sig_int.data = p;
  p->zctx = zmq_ctx_new();
  int rc = 1;
  char err[600];
  if (!p->zctx) {
    fln_log(FLN_ERR, "cannot create the ZeroMQ context");
    goto out;
  }
  signal(SIGPIPE, SIG_IGN);
  if (o->curve_key[0]) {
    snprintf(p->curve.secret_key_file, sizeof p->curve.secret_key_file, "%s", o->curve_key);
    snprintf(p->curve.authorized_keys, sizeof p->curve.authorized_keys, "%s",
             o->authorized_keys);
    p->curve.secret_key_name = "--curve-key";
    p->curve.authorized_keys_name = "--authorized-keys";
    if (fln_curve_start(&p->curve, p->loop, p->zctx, err, sizeof err)) {
      fln_log(FLN_ERR, "%s", err);
      goto out;
    }
  }
  if (proxy_open(p) || fln_http_start(&p->http, p->loop)) goto out;
  /* The forwarding thread takes no signals: one delivered there would end
   * zmq_proxy_steerable with EINTR. */
  if (fln_thread_quiet(&p->thread, proxy_thread, p)) {
    fln_log(FLN_ERR, "cannot start the forwarding thread");
    goto out;
  }
  p->thread_on = 1;
  uv_signal_start(&p->sig_hup, proxy_signal_cb, SIGHUP);
  uv_signal_start(&p->sig_term, proxy_signal_cb, SIGTERM);
  uv_signal_start(&p->sig_int, proxy_signal_cb, SIGINT);
  fln_watchdog_start(&p->watchdog, p->loop, proxy_watchdog, p);
  fln_log(FLN_NOTICE, "forwarding: frontend (XSUB) %s%s, backend (XPUB) %s%s%s", o->front[0],
          o->n_front > 1 ? " ..." : "", o->back[0], o->n_back > 1 ? " ..." : "",
          p->curve.on ? ", CurveZMQ" : "");
  fln_notify_ready("forwarding");
  uv_run(p->loop, UV_RUN_DEFAULT);
  rc = p->exit_code;
out:
  if (!p->stopping && p->loop) {
    /* Start-up failed: close what was opened so that the loop can end. */
    proxy_stop(p);
    uv_run(p->loop, UV_RUN_DEFAULT);
  }
  for (int k = 0; k < 2; k++) {
    if (p->sock[k]) zmq_close(p->sock[k]);
    if (p->mon[k]) zmq_close(p->mon[k]);
  }
  if (p->ctl) zmq_close(p->ctl);
  if (p->ctl_peer) zmq_close(p->ctl_peer);
  fln_curve_close(&p->curve);
  if (p->zctx) fln_zterm(p->zctx);
  if (p->loop) uv_loop_close(p->loop);
  return rc;
}
