/* faultline bridge: /metrics (Prometheus text) and /healthz over HTTP.
 *
 * libmicrohttpd in external-poll epoll mode: its epoll descriptor is watched
 * by the loop and MHD_run() is called from the loop, so a scrape reads the
 * counters in the thread that writes them.  GET and HEAD only. */
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>

#include <microhttpd.h>

#include "bridge.h"

#define FLB_HTTP_MAX_CONN 16

const char *flb_bad_name(int reason) {
  static const char *names[FLB_BAD_COUNT] = {"undecodable",     "unknown_alias", "type_changed",
                                             "not_numeric",     "unmapped_topic", "seq"};
  return reason >= 0 && reason < FLB_BAD_COUNT ? names[reason] : "?";
}

char *flb_metrics_render(flb_app *app, size_t *len) {
  char *buf = NULL;
  size_t n = 0;
  FILE *f = open_memstream(&buf, &n);
  if (!f) return NULL;
  const flb_metrics *m = &app->m;
  double down = m->down_seconds + (m->down_since > 0 ? flb_now() - m->down_since : 0);
#define C(name, help, v)                                                                          \
  fprintf(f, "# HELP faultline_bridge_" name " " help "\n# TYPE faultline_bridge_" name          \
             " counter\nfaultline_bridge_" name " %llu\n", (unsigned long long)(v))
  C("messages_total", "MQTT messages received on mapped topics.", m->msgs_in);
  C("updates_total", "Tag values taken from messages.", m->updates);
  C("unmapped_metrics_total", "Metrics of mapped devices that feed no channel.",
    m->unmapped_metrics);
  fprintf(f, "# HELP faultline_bridge_bad_input_total Messages or metrics refused, by reason.\n"
             "# TYPE faultline_bridge_bad_input_total counter\n");
  for (int r = 0; r < FLB_BAD_COUNT; r++)
    fprintf(f, "faultline_bridge_bad_input_total{reason=\"%s\"} %llu\n", flb_bad_name(r),
            (unsigned long long)m->bad[r]);
  C("births_total", "Sparkplug NBIRTH and DBIRTH messages taken.", m->births);
  C("deaths_total", "Sparkplug NDEATH and DDEATH messages taken.", m->deaths);
  C("rebirth_requests_total", "Rebirth requests (NCMD) sent to edge nodes.", m->rebirths_sent);
  C("frames_total", "Frames sent to faultlined.", m->frames_out);
  C("frames_failed_total", "Frames that could not be sent.", m->frames_failed);
  C("reports_total", "Reports received from faultlined.", m->reports_in);
  C("reports_bad_total", "Reports that could not be decoded or name no stream.",
    m->reports_bad);
  C("published_total", "Messages published on the broker.", m->published);
  C("publish_failed_total", "Messages the broker connection refused.", m->publish_failed);
  C("connects_total", "Connections to the broker made.", m->connects);
  C("disconnects_total", "Connections to the broker lost.", m->disconnects);
  C("ticks_while_down_total", "Stream ticks emitted while the broker was unreachable.",
    m->ticks_while_down);
  fprintf(f, "# HELP faultline_bridge_broker_down_seconds_total Time without a broker "
             "connection.\n# TYPE faultline_bridge_broker_down_seconds_total counter\n"
             "faultline_bridge_broker_down_seconds_total %.3f\n", down);
  uint64_t late = 0, overflow = 0, missing = 0, skipped = 0;
  for (int i = 0; i < app->n_streams; i++) {
    const fl_ticks_stats *s = fl_ticks_stats_of(app->st[i].ticks);
    late += s->late;
    overflow += s->overflow;
    missing += s->missing;
    skipped += s->skipped;
  }
  C("late_total", "Updates dropped: at or before a tick already sent.", late);
  C("overflow_total", "Updates dropped: too many waiting for one channel.", overflow);
  C("missing_samples_total", "Samples sent as missing (never set, stale or dead).", missing);
  C("skipped_ticks_total", "Ticks skipped while catching up.", skipped);
#undef C
  fprintf(f, "# HELP faultline_bridge_connected Whether the broker connection is up.\n"
             "# TYPE faultline_bridge_connected gauge\nfaultline_bridge_connected %d\n",
          app->connected);
  fprintf(f, "# HELP faultline_bridge_stream_frames_total Frames sent, per stream.\n"
             "# TYPE faultline_bridge_stream_frames_total counter\n");
  for (int i = 0; i < app->n_streams; i++)
    fprintf(f, "faultline_bridge_stream_frames_total{stream=\"%s\"} %llu\n",
            app->st[i].map->name, (unsigned long long)app->st[i].frames);
  fprintf(f, "# HELP faultline_bridge_http_refused_total HTTP connections over the limit.\n"
             "# TYPE faultline_bridge_http_refused_total counter\n"
             "faultline_bridge_http_refused_total %llu\n",
          (unsigned long long)m->http_refused);
  fclose(f);
  *len = n;
  return buf;
}

static enum MHD_Result flb__answer(void *cls, struct MHD_Connection *conn, const char *url,
                                   const char *method, const char *version,
                                   const char *upload, size_t *upload_size, void **ctx) {
  flb_app *app = cls;
  (void)version;
  (void)upload;
  (void)ctx;
  if (*upload_size) return MHD_NO;
  unsigned status = MHD_HTTP_NOT_FOUND;
  char *body = NULL;
  const char *text = "not found\n";
  size_t len = strlen(text);
  if (strcmp(method, "GET") && strcmp(method, "HEAD")) {
    status = MHD_HTTP_METHOD_NOT_ALLOWED;
    text = "GET or HEAD\n";
    len = strlen(text);
  } else if (!strcmp(url, "/metrics")) {
    body = flb_metrics_render(app, &len);
    if (!body) return MHD_NO;
    status = MHD_HTTP_OK;
  } else if (!strcmp(url, "/healthz")) {
    /* Up while the loop answers; the broker's state is in the body. */
    status = app->stopping ? MHD_HTTP_SERVICE_UNAVAILABLE : MHD_HTTP_OK;
    text = app->stopping ? "stopping\n" : app->connected ? "ok\n" : "ok, broker down\n";
    len = strlen(text);
  }
  struct MHD_Response *r =
      body ? MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE)
           : MHD_create_response_from_buffer(len, (void *)text, MHD_RESPMEM_PERSISTENT);
  if (!r) {
    free(body);
    return MHD_NO;
  }
  if (body) MHD_add_response_header(r, "Content-Type", "text/plain; version=0.0.4; charset=utf-8");
  enum MHD_Result ret = MHD_queue_response(conn, status, r);
  MHD_destroy_response(r);
  return ret;
}

static enum MHD_Result flb__accept(void *cls, const struct sockaddr *addr, socklen_t len) {
  flb_app *app = cls;
  (void)addr;
  (void)len;
  if (app->m.http_open < FLB_HTTP_MAX_CONN) return MHD_YES;
  app->m.http_refused++;
  return MHD_NO;
}

static void flb__conn_notify(void *cls, struct MHD_Connection *c, void **sctx,
                             enum MHD_ConnectionNotificationCode toe) {
  flb_app *app = cls;
  (void)c;
  (void)sctx;
  if (toe == MHD_CONNECTION_NOTIFY_STARTED) app->m.http_open++;
  else if (toe == MHD_CONNECTION_NOTIFY_CLOSED && app->m.http_open > 0) app->m.http_open--;
}

static void flb__mhd_timer_cb(uv_timer_t *t) {
  flb_app *app = t->data;
  MHD_run(app->mhd);
}

static void flb__mhd_poll_cb(uv_poll_t *h, int status, int events) {
  flb_app *app = h->data;
  (void)status;
  (void)events;
  MHD_run(app->mhd);
  MHD_UNSIGNED_LONG_LONG ms;
  if (MHD_get_timeout(app->mhd, &ms) == MHD_YES)
    uv_timer_start(&app->mhd_timer, flb__mhd_timer_cb, ms, 0);
}

int flb_http_start(flb_app *app) {
  const char *listen = app->cfg.listen;
  if (!listen[0]) return 0;
  const char *colon = strrchr(listen, ':');
  if (!colon) return -1;
  char host[128];
  snprintf(host, sizeof host, "%.*s", (int)(colon - listen), listen);
  if (host[0] == '[') {
    memmove(host, host + 1, strlen(host));
    char *e = strchr(host, ']');
    if (e) *e = 0;
  }
  struct addrinfo hints = {0}, *ai = NULL;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV | AI_PASSIVE;
  int g = getaddrinfo(host[0] ? host : NULL, colon + 1, &hints, &ai);
  if (g) {
    flb_log(3, "[metrics] listen = %s: %s", listen, gai_strerror(g));
    return -1;
  }
  unsigned flags = MHD_USE_EPOLL | (ai->ai_family == AF_INET6 ? MHD_USE_IPv6 : 0);
  uint16_t port = ntohs(ai->ai_family == AF_INET6
                            ? ((struct sockaddr_in6 *)ai->ai_addr)->sin6_port
                            : ((struct sockaddr_in *)ai->ai_addr)->sin_port);
  app->mhd = MHD_start_daemon(flags, port, flb__accept, app, flb__answer, app,
                              MHD_OPTION_SOCK_ADDR, ai->ai_addr, MHD_OPTION_CONNECTION_TIMEOUT,
                              (unsigned)10, MHD_OPTION_CONNECTION_LIMIT,
                              (unsigned)FLB_HTTP_MAX_CONN + 8, MHD_OPTION_NOTIFY_CONNECTION,
                              flb__conn_notify, app, MHD_OPTION_END);
  freeaddrinfo(ai);
  const union MHD_DaemonInfo *info =
      app->mhd ? MHD_get_daemon_info(app->mhd, MHD_DAEMON_INFO_EPOLL_FD) : NULL;
  if (!info) {
    if (app->mhd) MHD_stop_daemon(app->mhd);
    app->mhd = NULL;
    flb_log(3, "cannot serve metrics on %s (address in use?)", listen);
    return -1;
  }
  uv_poll_init(app->loop, &app->mhd_poll, info->epoll_fd);
  uv_timer_init(app->loop, &app->mhd_timer);
  app->mhd_poll.data = app->mhd_timer.data = app;
  uv_poll_start(&app->mhd_poll, UV_READABLE, flb__mhd_poll_cb);
  app->mhd_on = 1;
  flb_log(6, "metrics on http://%s/metrics", listen);
  return 0;
}

void flb_http_stop(flb_app *app) {
  if (!app->mhd_on) return;
  uv_poll_stop(&app->mhd_poll);
  uv_timer_stop(&app->mhd_timer);
  uv_close((uv_handle_t *)&app->mhd_poll, NULL);
  uv_close((uv_handle_t *)&app->mhd_timer, NULL);
  MHD_stop_daemon(app->mhd);
  app->mhd = NULL;
  app->mhd_on = 0;
}
