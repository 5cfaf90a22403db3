/* faultline bridge: /metrics (Prometheus text) and /healthz, served by
 * net/'s HTTP endpoint in the loop, so a scrape reads the counters in the
 * thread that writes them. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
          (unsigned long long)app->http.refused);
  fclose(f);
  *len = n;
  return buf;
}

static char *flb__metrics(void *user, size_t *len) { return flb_metrics_render(user, len); }

/* Up while the loop answers; the broker's state is in the body. */
static int flb__health(void *user, const char *url, unsigned *status, const char **body,
                       size_t *len) {
  const flb_app *app = user;
  (void)url;
  *status = app->stopping ? 503 : 200;
  *body = app->stopping ? "stopping\n" : app->connected ? "ok\n" : "ok, broker down\n";
  *len = strlen(*body);
  return 0;
}

static const fln_route flb__routes[] = {
    {"/metrics", NULL, flb__metrics, FLN_PROMETHEUS_TEXT},
    {"/healthz", flb__health, NULL, "text/plain"},
};

void flb_http_init(flb_app *app) {
  fln_http *h = &app->http;
  h->table = (fln_http_table){flb__routes, (int)(sizeof flb__routes / sizeof *flb__routes),
                              "not found\n", app};
  snprintf(h->listen, sizeof h->listen, "%s", app->cfg.listen);
  h->max_connections = FLB_HTTP_MAX_CONN;
  h->max_request = 4096;
  h->max_connections_name = "the bridge's connection limit";
  h->refused_log.interval = app->cfg.log_interval;
}
