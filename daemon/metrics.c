/* faultlined health: the counters, their Prometheus text rendering, and the
 * routes of the HTTP endpoint (/metrics, /healthz, /readyz, /streams;
 * net/http.c serves them from the loop).  See fld.h. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "faultline/error.h"
#include "fld.h"

static const char *const fld__reject_names[FLD_REJ_COUNT] = {
    "undecodable", "bad_stream", "unknown_modality", "inconsistent_modality",
    "channel_count", "nonfinite", "oversize", "duplicate", "old", "seq_jump", "topic_mismatch"};
static const char *const fld__drop_names[FLD_DROP_COUNT] = {"stream_limit"};

const char *fld_reject_name(int r) { return r >= 0 && r < FLD_REJ_COUNT ? fld__reject_names[r] : "?"; }
const char *fld_drop_name(int r) { return r >= 0 && r < FLD_DROP_COUNT ? fld__drop_names[r] : "?"; }

/* Upper bounds of the latency histogram, seconds: a window takes around a
 * millisecond on a gateway, a stalled one a second or more. */
static const double fld__lat_le[FLD_LAT_BUCKETS] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025,
                                                    0.005,  0.01,    0.025,  0.05,  0.1,
                                                    0.25,   0.5,     1.0,    2.5};

void fld_limit_hit(fld_app *app, int limit, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fln_limit_vhit(&app->limit[limit], fmt, ap);
  va_end(ap);
}

int fld_metrics_modality(fld_metrics *m, const char *name) {
  for (int i = 0; i < m->n_modnames; i++)
    if (!strcmp(m->modname[i], name)) return i;
  if (m->n_modnames == m->cap_modnames) {
    int cap = m->cap_modnames ? 2 * m->cap_modnames : 32;
    char(*nm)[FL_NAME_MAX] = realloc(m->modname, sizeof *nm * cap);
    if (nm) m->modname = nm;
    uint64_t *na = nm ? realloc(m->anomalies, sizeof *na * cap) : NULL;
    if (!na) return m->n_modnames - 1; /* out of memory: the last name's counter is shared */
    m->anomalies = na;
    memset(na + m->cap_modnames, 0, sizeof *na * (cap - m->cap_modnames));
    m->cap_modnames = cap;
  }
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

/* Seconds since the newest processed frame, since the start before one. */
static double fld__frame_age(const fld_app *app) {
  double last = app->m.last_frame > 0 ? app->m.last_frame : app->m.start_time;
  return fln_now() - last;
}

char *fld_metrics_render(void *user, size_t *len) {
  fld_app *app = user;
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
  fld__head(f, "faultline_stream_restarts_total", "counter",
            "Streams started afresh: their publisher restarted (seq back a window or more, or a new epoch).");
  fprintf(f, "faultline_stream_restarts_total %llu\n", (unsigned long long)m->stream_restarts);
  fld__head(f, "faultline_streams_evicted_total", "counter",
            "Streams freed after [input] stream_idle without a frame.");
  fprintf(f, "faultline_streams_evicted_total %llu\n", (unsigned long long)m->streams_evicted);
  fld__head(f, "faultline_last_frame_age_seconds", "gauge",
            "Seconds since the newest processed frame of any stream (since start when none).");
  fprintf(f, "faultline_last_frame_age_seconds %.3f\n", fld__frame_age(app));
  /* One series per stream held, so at most [input] max_streams of each. */
  double now = fln_now();
  fld__head(f, "faultline_stream_last_frame_age_seconds", "gauge",
            "Seconds since each stream's last processed frame.");
  for (int s = 0; s < app->n_streams; s++) {
    fputs("faultline_stream_last_frame_age_seconds{stream=\"", f);
    fld__label(f, app->streams[s]->name);
    fprintf(f, "\"} %.3f\n", now - app->streams[s]->last_recv);
  }
  fld__head(f, "faultline_stream_anomaly", "gauge",
            "Each stream's debounced anomaly flag in its last window (1 flagged).");
  for (int s = 0; s < app->n_streams; s++) {
    fputs("faultline_stream_anomaly{stream=\"", f);
    fld__label(f, app->streams[s]->name);
    fprintf(f, "\"} %d\n", app->streams[s]->last_flag != 0);
  }
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
  fprintf(f, "faultline_zap_requests_total{result=\"allowed\"} %llu\n",
          (unsigned long long)app->curve.allowed);
  fprintf(f, "faultline_zap_requests_total{result=\"denied\"} %llu\n",
          (unsigned long long)app->curve.denied);
  fld__head(f, "faultline_input_disconnects_total", "counter",
            "Input connections closed: peers that went away, and peers cut off for a message over the hard size limit.");
  fprintf(f, "faultline_input_disconnects_total %llu\n", (unsigned long long)m->input_disconnects);
  fld__head(f, "faultline_http_connections", "gauge", "Open connections to this endpoint.");
  fprintf(f, "faultline_http_connections %d\n", app->http.open);
  fld__head(f, "faultline_http_connections_refused_total", "counter",
            "Connections to this endpoint refused over [metrics] max_connections.");
  fprintf(f, "faultline_http_connections_refused_total %llu\n",
          (unsigned long long)app->http.refused);
  fld__head(f, "faultline_start_time_seconds", "gauge", "When the daemon started.");
  fprintf(f, "faultline_start_time_seconds %.3f\n", m->start_time);
  if (app->tuner) fld_tune_metrics(app, f);
  fld__head(f, "faultline_build_info", "gauge", "The daemon's version (value 1).");
  fprintf(f, "faultline_build_info{version=\"%s\"} 1\n", FLD_VERSION);
  if (fclose(f)) {
    free(buf);
    return NULL;
  }
  return buf;
}

/* Serving means: a model is loaded, the sockets are up and the loop turns
 * (this answer comes from the loop); a stop in progress is not. */
static int fld__healthz(void *user, const char *url, unsigned *status, const char **body,
                        size_t *len) {
  (void)url;
  return fln_http_health(((fld_app *)user)->stopping, status, body, len);
}

/* Ready means frames arrive: none for [metrics] stale_after seconds (or
 * since the start) is 503 with how long, for a load balancer or a probe
 * that must tell a silent line from a dead process (/healthz). */
static int fld__readyz(void *user, const char *url, unsigned *status, const char **body,
                       size_t *len) {
  fld_app *app = user;
  (void)url;
  if (app->stopping) return fln_http_health(1, status, body, len);
  double age = fld__frame_age(app);
  char *b = malloc(96);
  if (!b) return -1;
  if (age > app->cfg.stale_after) {
    *status = 503;
    snprintf(b, 96, app->m.last_frame > 0 ? "no frames for %.0f s\n"
                                          : "no frames for %.0f s (none since start)\n", age);
  } else {
    *status = 200;
    snprintf(b, 96, "ready\n");
  }
  *body = b;
  *len = strlen(b);
  return 1;
}

/* /streams: every stream held, in order of arrival, as JSON. */
static char *fld__streams_render(void *user, size_t *len) {
  fld_app *app = user;
  double now = fln_now();
  json_t *arr = json_array();
  for (int s = 0; s < app->n_streams && arr; s++) {
    const fld_stream *st = app->streams[s];
    json_t *o = json_pack("{s:s, s:I, s:I, s:f, s:I, s:I, s:b, s:s, s:f}", "stream", st->name,
                          "last_seq", (json_int_t)st->last_seq, "epoch", (json_int_t)st->epoch,
                          "seconds_since_last_frame", now - st->last_recv, "frames",
                          (json_int_t)st->frames, "windows", (json_int_t)st->report_seq,
                          "anomaly", st->last_flag != 0, "faulty_modality", st->last_faulty,
                          "last_score", (double)st->last_score);
    if (!o || json_array_append_new(arr, o)) {
      json_decref(arr);
      arr = NULL;
    }
  }
  json_t *doc = arr ? json_pack("{s:o, s:i, s:i}", "streams", arr, "count", app->n_streams,
                                "limit", app->cfg.max_streams)
                    : NULL;
  char *out = doc ? json_dumps(doc, JSON_INDENT(1)) : NULL;
  json_decref(doc);
  if (out) *len = strlen(out);
  return out;
}

static const fln_route fld__routes[] = {
    {"/metrics", NULL, fld_metrics_render, FLN_PROMETHEUS_TEXT},
    {"/healthz", fld__healthz, NULL, NULL},
    {"/readyz", fld__readyz, NULL, NULL},
    {"/streams", NULL, fld__streams_render, "application/json"},
};

fln_http_table fld_http_table(fld_app *app) {
  return (fln_http_table){fld__routes, (int)(sizeof fld__routes / sizeof *fld__routes),
                          "not found: try /metrics, /healthz, /readyz or /streams\n", app};
}

int fld_http_start(fld_app *app) {
  fln_http *h = &app->http;
  h->table = fld_http_table(app);
  snprintf(h->listen, sizeof h->listen, "%s", app->cfg.metrics_listen);
  h->max_connections = app->cfg.metrics_max_connections;
  h->max_request = app->cfg.metrics_max_request;
  h->max_connections_name = "[metrics] max_connections";
  h->refused_log.interval = app->cfg.limit_log_interval;
  return fln_http_start(h, app->loop);
}
