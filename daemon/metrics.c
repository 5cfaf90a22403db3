/* faultlined health: the counters, their Prometheus text rendering, and the
 * HTTP endpoint (/metrics, /healthz).  See fld.h.
 *
 * libmicrohttpd runs in external-poll epoll mode: its epoll fd is watched by
 * the loop and MHD_run() is called from the loop, so a scrape reads the
 * counters in the thread that writes them and nothing needs a lock. */
#include <arpa/inet.h>
#include <microhttpd.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "faultline/error.h"
#include "fld.h"

static const char *const fld__reject_names[FLD_REJ_COUNT] = {
    "undecodable", "bad_stream", "unknown_modality", "inconsistent_modality",
    "channel_count", "nonfinite", "oversize", "duplicate", "old"};
static const char *const fld__drop_names[FLD_DROP_COUNT] = {"stream_limit"};

const char *fld_reject_name(int r) { return r >= 0 && r < FLD_REJ_COUNT ? fld__reject_names[r] : "?"; }
const char *fld_drop_name(int r) { return r >= 0 && r < FLD_DROP_COUNT ? fld__drop_names[r] : "?"; }

/* Upper bounds of the latency histogram, seconds: a window takes around a
 * millisecond on a gateway, a stalled one a second or more. */
static const double fld__lat_le[FLD_LAT_BUCKETS] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025,
                                                    0.005,  0.01,    0.025,  0.05,  0.1,
                                                    0.25,   0.5,     1.0,    2.5};

int fld_metrics_modality(fld_metrics *m, const char *name) {
  for (int i = 0; i < m->n_modnames; i++)
    if (!strcmp(m->modname[i], name)) return i;
  if (m->n_modnames == FLD_MAX_MODNAMES) return FLD_MAX_MODNAMES - 1; /* shared overflow slot */
  snprintf(m->modname[m->n_modnames], FL_NAME_MAX, "%s", name);
  return m->n_modnames++;
}

void fld_metrics_latency(fld_metrics *m, double s) {
  int b = 0;
  while (b < FLD_LAT_BUCKETS && s > fld__lat_le[b]) b++;
  m->lat_bucket[b]++;
  m->lat_sum += s;
  m->lat_count++;
}

static void fld__head(FILE *f, const char *name, const char *type, const char *help) {
  fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* Label values here are model layer and modality names and hex versions;
 * escape the three characters the format reserves anyway. */
static void fld__label(FILE *f, const char *v) {
  for (; *v; v++) {
    if (*v == '\\' || *v == '"') fputc('\\', f);
    if (*v == '\n') fputs("\\n", f);
    else fputc(*v, f);
  }
}

char *fld_metrics_render(fld_app *app, size_t *len) {
  char *buf = NULL;
  FILE *f = open_memstream(&buf, len);
  if (!f) return NULL;
  const fld_metrics *m = &app->m;
  fld__head(f, "faultline_frames_received_total", "counter", "Frames received on the input sockets.");
  fprintf(f, "faultline_frames_received_total %llu\n", (unsigned long long)m->received);
  fld__head(f, "faultline_frames_processed_total", "counter", "Frames whose tick entered a stream's window.");
  fprintf(f, "faultline_frames_processed_total %llu\n", (unsigned long long)m->processed);
  fld__head(f, "faultline_frames_rejected_total", "counter", "Frames rejected, by reason.");
  for (int r = 0; r < FLD_REJ_COUNT; r++)
    fprintf(f, "faultline_frames_rejected_total{reason=\"%s\"} %llu\n", fld__reject_names[r],
            (unsigned long long)m->rejected[r]);
  fld__head(f, "faultline_frames_dropped_total", "counter", "Valid frames dropped, by reason.");
  for (int r = 0; r < FLD_DROP_COUNT; r++)
    fprintf(f, "faultline_frames_dropped_total{reason=\"%s\"} %llu\n", fld__drop_names[r],
            (unsigned long long)m->dropped[r]);
  fld__head(f, "faultline_sequence_gaps_total", "counter", "Sequence gaps seen in streams.");
  fprintf(f, "faultline_sequence_gaps_total %llu\n", (unsigned long long)m->gaps);
  fld__head(f, "faultline_sequence_gap_ticks_total", "counter", "Ticks lost in sequence gaps (filled as missing).");
  fprintf(f, "faultline_sequence_gap_ticks_total %llu\n", (unsigned long long)m->gap_ticks);
  fld__head(f, "faultline_stream_resets_total", "counter", "Stream histories restarted after a gap of a window or more.");
  fprintf(f, "faultline_stream_resets_total %llu\n", (unsigned long long)m->stream_resets);
  fld__head(f, "faultline_reports_total", "counter", "Reports published.");
  fprintf(f, "faultline_reports_total %llu\n", (unsigned long long)m->reports);
  fld__head(f, "faultline_report_failures_total", "counter", "Windows whose report could not be scored or sent.");
  fprintf(f, "faultline_report_failures_total %llu\n", (unsigned long long)m->reports_failed);
  fld__head(f, "faultline_anomalous_windows_total", "counter", "Windows with the debounced anomaly flag set.");
  fprintf(f, "faultline_anomalous_windows_total %llu\n", (unsigned long long)m->windows_flagged);
  fld__head(f, "faultline_anomalies_total", "counter", "Windows with a modality's debounced flag set, by modality.");
  const fl_model_spec *spec = fl_model_spec_of(app->eng->b.model);
  /* Every modality of the model appears, at 0 before its first anomaly. */
  for (int i = 0; i < spec->n_mod; i++) fld_metrics_modality(&app->m, spec->mod[i].name);
  for (int i = 0; i < m->n_modnames; i++) {
    fputs("faultline_anomalies_total{modality=\"", f);
    fld__label(f, m->modname[i]);
    fprintf(f, "\"} %llu\n", (unsigned long long)m->anomalies[i]);
  }
  fld__head(f, "faultline_inference_latency_seconds", "histogram",
            "Time from a window's newest frame to its report's publication.");
  uint64_t cum = 0;
  for (int b = 0; b < FLD_LAT_BUCKETS; b++) {
    cum += m->lat_bucket[b];
    fprintf(f, "faultline_inference_latency_seconds_bucket{le=\"%g\"} %llu\n", fld__lat_le[b],
            (unsigned long long)cum);
  }
  fprintf(f, "faultline_inference_latency_seconds_bucket{le=\"+Inf\"} %llu\n",
          (unsigned long long)m->lat_count);
  fprintf(f, "faultline_inference_latency_seconds_sum %.9g\n", m->lat_sum);
  fprintf(f, "faultline_inference_latency_seconds_count %llu\n", (unsigned long long)m->lat_count);
  fld__head(f, "faultline_event_loop_lag_seconds", "gauge", "Latest delay of a loop timer past its due time.");
  fprintf(f, "faultline_event_loop_lag_seconds %.6f\n", m->lag_last);
  fld__head(f, "faultline_event_loop_lag_max_seconds", "gauge", "Largest loop timer delay since start.");
  fprintf(f, "faultline_event_loop_lag_max_seconds %.6f\n", m->lag_max);
  fld__head(f, "faultline_streams", "gauge", "Streams with state in the daemon.");
  fprintf(f, "faultline_streams %d\n", app->n_streams);
  fld__head(f, "faultline_streams_limit", "gauge", "Configured cap on the number of streams.");
  fprintf(f, "faultline_streams_limit %d\n", app->cfg.max_streams);
  fld__head(f, "faultline_report_subscriptions", "gauge", "Topic subscriptions on the report socket.");
  fprintf(f, "faultline_report_subscriptions %lld\n", (long long)m->subscriptions);
  /* The shard: which daemon takes which streams is visible in one query over
   * every daemon's metrics. */
  fld__head(f, "faultline_input_topic_info", "gauge",
            "The frame topic prefixes this daemon subscribes to (value 1), by topic.");
  if (app->cfg.in_type == FLD_IN_SUB)
    for (int i = 0; i < app->cfg.n_topics; i++) {
      fputs("faultline_input_topic_info{topic=\"", f);
      fld__label(f, app->cfg.in_topic[i]);
      fputs("\"} 1\n", f);
    }
  fld__head(f, "faultline_model_info", "gauge", "The model in service (value 1), by version.");
  fprintf(f, "faultline_model_info{version=\"%s\"} 1\n", app->eng->version);
  fld__head(f, "faultline_model_load_timestamp_seconds", "gauge", "When the model in service was loaded.");
  fprintf(f, "faultline_model_load_timestamp_seconds %.3f\n", app->eng->load_time);
  fld__head(f, "faultline_model_threshold", "gauge", "The model's calibrated window score threshold.");
  fprintf(f, "faultline_model_threshold %.6g\n", (double)app->eng->b.calib.threshold);
  fld__head(f, "faultline_layer_spectral_norm", "gauge", "Spectral norm of each layer's operator.");
  for (int l = 0; l < app->eng->n_layers; l++) {
    fputs("faultline_layer_spectral_norm{layer=\"", f);
    fld__label(f, app->eng->layer_name[l]);
    fprintf(f, "\"} %.6g\n", (double)app->eng->layer_norm[l]);
  }
  fld__head(f, "faultline_layer_lipschitz_target", "gauge", "Lipschitz target of each layer that has one.");
  for (int l = 0; l < app->eng->n_layers; l++) {
    if (!(app->eng->layer_target[l] > 0)) continue;
    fputs("faultline_layer_lipschitz_target{layer=\"", f);
    fld__label(f, app->eng->layer_name[l]);
    fprintf(f, "\"} %.6g\n", (double)app->eng->layer_target[l]);
  }
  fld__head(f, "faultline_reloads_total", "counter", "Configuration and model reloads, by result.");
  fprintf(f, "faultline_reloads_total{result=\"success\"} %llu\n", (unsigned long long)m->reloads_ok);
  fprintf(f, "faultline_reloads_total{result=\"failure\"} %llu\n", (unsigned long long)m->reloads_failed);
  fld__head(f, "faultline_zap_requests_total", "counter", "CurveZMQ authentication requests, by result.");
  fprintf(f, "faultline_zap_requests_total{result=\"allowed\"} %llu\n", (unsigned long long)m->zap_allowed);
  fprintf(f, "faultline_zap_requests_total{result=\"denied\"} %llu\n", (unsigned long long)m->zap_denied);
  fld__head(f, "faultline_input_disconnects_total", "counter",
            "Input peers disconnected, e.g. for a message over the hard size limit.");
  fprintf(f, "faultline_input_disconnects_total %llu\n", (unsigned long long)m->input_disconnects);
  fld__head(f, "faultline_http_connections", "gauge", "Open connections to this endpoint.");
  fprintf(f, "faultline_http_connections %d\n", m->http_open);
  fld__head(f, "faultline_http_connections_refused_total", "counter",
            "Connections to this endpoint refused over [metrics] max_connections.");
  fprintf(f, "faultline_http_connections_refused_total %llu\n", (unsigned long long)m->http_refused);
  fld__head(f, "faultline_start_time_seconds", "gauge", "When the daemon started.");
  fprintf(f, "faultline_start_time_seconds %.3f\n", m->start_time);
  if (app->tune_metrics) app->tune_metrics(app, f);
  fld__head(f, "faultline_build_info", "gauge", "The daemon's version (value 1).");
  fprintf(f, "faultline_build_info{version=\"%s\"} 1\n", FLD_VERSION);
  if (fclose(f)) {
    free(buf);
    return NULL;
  }
  return buf;
}

int fld_http_route(fld_app *app, const char *method, const char *url, unsigned *status,
                   const char **body, size_t *len) {
  /* Only reads: a scrape must not be able to change anything. */
  if (strcmp(method, "GET") && strcmp(method, "HEAD")) {
    static const char msg[] = "method not allowed\n";
    *status = MHD_HTTP_METHOD_NOT_ALLOWED;
    *body = msg;
    *len = sizeof msg - 1;
    return 0;
  }
  if (!strcmp(url, "/metrics")) {
    char *b = app->render_metrics ? app->render_metrics(app, len) : fld_metrics_render(app, len);
    if (!b) return -1;
    *status = MHD_HTTP_OK;
    *body = b;
    return 1;
  }
  if (!strcmp(url, "/healthz")) {
    /* Serving means: a model is loaded, the sockets are up and the loop
     * turns (this answer comes from the loop); a stop in progress is not. */
    *body = app->stopping ? "stopping\n" : "ok\n";
    *len = strlen(*body);
    *status = app->stopping ? MHD_HTTP_SERVICE_UNAVAILABLE : MHD_HTTP_OK;
    return 0;
  }
  static const char msg[] = "not found: try /metrics or /healthz\n";
  *status = MHD_HTTP_NOT_FOUND;
  *body = msg;
  *len = sizeof msg - 1;
  return 0;
}

static enum MHD_Result fld__answer(void *cls, struct MHD_Connection *conn, const char *url,
                                   const char *method, const char *version,
                                   const char *upload, size_t *upload_size, void **con_cls) {
  fld_app *app = cls;
  (void)version;
  (void)upload;
  (void)con_cls;
  /* A request body is never read: refuse one rather than buffer it. */
  if (*upload_size) return MHD_NO;
  unsigned status;
  const char *body;
  size_t len = 0;
  int owned = fld_http_route(app, method, url, &status, &body, &len);
  if (owned < 0) return MHD_NO;
  struct MHD_Response *r = MHD_create_response_from_buffer(
      len, (void *)body, owned ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT);
  if (!r) {
    if (owned) free((void *)body);
    return MHD_NO;
  }
  if (owned) MHD_add_response_header(r, "Content-Type", "text/plain; version=0.0.4; charset=utf-8");
  enum MHD_Result ret = MHD_queue_response(conn, status, r);
  MHD_destroy_response(r);
  return ret;
}

/* The connection cap is ours rather than MHD's: MHD at its limit stops
 * accepting and lets connections wait in the backlog, unseen; here one over
 * the cap is accepted, closed at once and counted. */
static enum MHD_Result fld__accept(void *cls, const struct sockaddr *addr, socklen_t len) {
  fld_app *app = cls;
  (void)addr;
  (void)len;
  if (app->m.http_open < app->cfg.metrics_max_connections) return MHD_YES;
  app->m.http_refused++;
  fld_limit_hit(app, FLD_LIMIT_HTTP,
                "metrics connection refused: %d open ([metrics] max_connections)",
                app->m.http_open);
  return MHD_NO;
}

static void fld__conn_notify(void *cls, struct MHD_Connection *c, void **sctx,
                             enum MHD_ConnectionNotificationCode toe) {
  fld_app *app = cls;
  (void)c;
  (void)sctx;
  if (toe == MHD_CONNECTION_NOTIFY_STARTED) app->m.http_open++;
  else if (toe == MHD_CONNECTION_NOTIFY_CLOSED && app->m.http_open > 0) app->m.http_open--;
}

static void fld__mhd_timer_cb(uv_timer_t *t) {
  fld_app *app = t->data;
  MHD_run(app->mhd);
}

static void fld__mhd_poll_cb(uv_poll_t *h, int status, int events) {
  fld_app *app = h->data;
  (void)status;
  (void)events;
  MHD_run(app->mhd);
  /* Idle connections time out inside MHD: give it a turn when it asks. */
  MHD_UNSIGNED_LONG_LONG ms;
  if (MHD_get_timeout(app->mhd, &ms) == MHD_YES)
    uv_timer_start(&app->mhd_timer, fld__mhd_timer_cb, ms, 0);
}

int fld_http_start(fld_app *app) {
  const char *listen = app->cfg.metrics_listen;
  if (!listen[0]) return 0;
  char host[128];
  const char *colon = strrchr(listen, ':');
  snprintf(host, sizeof host, "%.*s", (int)(colon - listen), listen);
  /* "[::1]:9108" */
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
    fld_log(FLD_ERR, "[metrics] listen = %s: %s", listen, gai_strerror(g));
    return FL_EINVAL;
  }
  unsigned flags = MHD_USE_EPOLL | (ai->ai_family == AF_INET6 ? MHD_USE_IPv6 : 0);
  uint16_t port = ntohs(ai->ai_family == AF_INET6
                            ? ((struct sockaddr_in6 *)ai->ai_addr)->sin6_port
                            : ((struct sockaddr_in *)ai->ai_addr)->sin_port);
  app->mhd = MHD_start_daemon(flags, port, fld__accept, app, fld__answer, app, MHD_OPTION_SOCK_ADDR,
                              ai->ai_addr, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)10,
                              MHD_OPTION_CONNECTION_LIMIT,
                              (unsigned)app->cfg.metrics_max_connections + 8,
                              /* The request line and headers must fit: larger is 431/414. */
                              MHD_OPTION_CONNECTION_MEMORY_LIMIT,
                              (size_t)app->cfg.metrics_max_request + 2048,
                              MHD_OPTION_NOTIFY_CONNECTION, fld__conn_notify, app,
                              MHD_OPTION_END);
  freeaddrinfo(ai);
  if (!app->mhd) {
    fld_log(FLD_ERR, "cannot serve metrics on %s (address in use?)", listen);
    return FL_EIO;
  }
  const union MHD_DaemonInfo *info = MHD_get_daemon_info(app->mhd, MHD_DAEMON_INFO_EPOLL_FD);
  if (!info) {
    MHD_stop_daemon(app->mhd);
    app->mhd = NULL;
    return FL_EIO;
  }
  uv_poll_init(app->loop, &app->mhd_poll, info->epoll_fd);
  uv_timer_init(app->loop, &app->mhd_timer);
  app->mhd_poll.data = app;
  app->mhd_timer.data = app;
  uv_poll_start(&app->mhd_poll, UV_READABLE, fld__mhd_poll_cb);
  app->mhd_on = 1;
  fld_log(FLD_INFO, "metrics on http://%s/metrics", listen);
  return 0;
}

void fld_http_stop(fld_app *app) {
  if (!app->mhd_on) return;
  uv_poll_stop(&app->mhd_poll);
  uv_timer_stop(&app->mhd_timer);
  uv_close((uv_handle_t *)&app->mhd_poll, NULL);
  uv_close((uv_handle_t *)&app->mhd_timer, NULL);
  MHD_stop_daemon(app->mhd);
  app->mhd = NULL;
  app->mhd_on = 0;
}
