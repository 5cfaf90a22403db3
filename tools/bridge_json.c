/* faultline bridge: plain JSON in and out (jansson).
 *
 * In.  A [map.*] section with source = json listens on its topic template
 * ({stream} filled in).  Without {tag} a message carries a device's values:
 *   {"ts": 1733560000.25, "values": {"pressure": 1.2, "flow": 3.4}}
 * With {tag} (one topic level) a message carries one tag, named by the topic:
 *   {"ts": 1733560000.25, "value": 1.2}   or a bare number
 * ts is Unix seconds, optional (the arrival time then); null is missing.
 *
 * Out.  Each report as one object on [publish] json_topic, and the stream's
 * state (anomaly, faulty modality) retained on state_topic whenever it
 * changes or the connection is new, so that a dashboard that subscribes
 * later reads the current state at once. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "bridge.h"

static void flb_json_subscribe_one(flb_app *app, const char *tmpl) {
  char t[FLB_TOPIC];
  const char *at = strstr(tmpl, "{tag}");
  if (at) snprintf(t, sizeof t, "%.*s+%s", (int)(at - tmpl), tmpl, at + 5);
  else snprintf(t, sizeof t, "%s", tmpl);
  flb_mqtt_subscribe(app, t);
}

int flb_json_subscribe(flb_app *app) {
  for (int i = 0; i < app->n_streams; i++)
    if (app->st[i].map->source == FLB_SRC_JSON) flb_json_subscribe_one(app, app->st[i].map->topic);
  return 0;
}

/* Does topic match the template?  *tag gets the {tag} level (or NULL). */
static int flb_json_match(const char *tmpl, const char *topic, char *tag, size_t cap) {
  const char *at = strstr(tmpl, "{tag}");
  if (!at) {
    tag[0] = 0;
    return !strcmp(tmpl, topic);
  }
  size_t pre = (size_t)(at - tmpl), suf = strlen(at + 5), n = strlen(topic);
  if (n < pre + suf + 1 || strncmp(tmpl, topic, pre) || strcmp(topic + n - suf, at + 5)) return 0;
  size_t len = n - pre - suf;
  if (len >= cap || memchr(topic + pre, '/', len)) return 0;
  memcpy(tag, topic + pre, len);
  tag[len] = 0;
  return 1;
}

static int flb_json_channel(const flb_stream *st, const char *name) {
  for (int c = 0; c < st->n_ch; c++)
    if (!strcmp(st->map->metric[c], name)) return c;
  return -1;
}

/* One value: a number, a boolean, or null (missing); -1 for anything else. */
static int flb_json_value(const json_t *v, float *out) {
  if (json_is_number(v)) *out = (float)json_number_value(v);
  else if (json_is_boolean(v)) *out = json_is_true(v) ? 1.0f : 0.0f;
  else if (json_is_null(v)) *out = NAN;
  else return -1;
  return 0;
}

static void flb_json_put(flb_app *app, int s, const char *topic, const char *name,
                         const json_t *v, int64_t ts) {
  int c = flb_json_channel(&app->st[s], name);
  float x;
  if (c < 0) {
    app->m.unmapped_metrics++;
    return;
  }
  if (flb_json_value(v, &x)) {
    flb_bad(app, FLB_BAD_NOT_NUMERIC, "json: %s: \"%s\" is not a number", topic, name);
    return;
  }
  app->m.updates++;
  flb_update(app, s, c, ts, x);
}

int flb_json_message(flb_app *app, const char *topic, const void *buf, size_t len) {
  char tag[FLB_NAME];
  int s = -1;
  for (int i = 0; i < app->n_streams && s < 0; i++)
    if (app->st[i].map->source == FLB_SRC_JSON &&
        flb_json_match(app->st[i].map->topic, topic, tag, sizeof tag))
      s = i;
  if (s < 0) return 0;
  app->m.msgs_in++;
  json_error_t e;
  json_t *j = json_loadb(buf, len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &e);
  json_t *tsv = json_is_object(j) ? json_object_get(j, "ts") : NULL;
  int64_t ts = flb_wall_ns();
  if (tsv && json_is_number(tsv) && json_number_value(tsv) > 0)
    /* A double holds Unix seconds to a fraction of a microsecond: rounded
     * to whole microseconds, a time on a tick boundary stays on it. */
    ts = (int64_t)llround(json_number_value(tsv) * 1e6) * 1000;
  else if (tsv && !json_is_null(tsv)) goto bad;
  if (tag[0]) {
    const json_t *v = json_is_object(j) ? json_object_get(j, "value") : j;
    if (!v) goto bad;
    flb_json_put(app, s, topic, tag, v, ts);
  } else {
    json_t *vals = json_is_object(j) ? json_object_get(j, "values") : NULL;
    if (!json_is_object(vals)) goto bad;
    const char *k;
    json_t *v;
    json_object_foreach(vals, k, v) flb_json_put(app, s, topic, k, v, ts);
  }
  json_decref(j);
  return 1;
bad:
  flb_bad(app, FLB_BAD_UNDECODABLE, "json: %s: not %s", topic,
          tag[0] ? "{\"ts\": T, \"value\": X} or a number" : "{\"ts\": T, \"values\": {...}}");
  json_decref(j);
  return 1;
}

static json_t *flb_json_num(float v) { return isfinite(v) ? json_real(v) : json_null(); }

static void flb_json_fill(char *out, size_t cap, const char *tmpl, const char *stream) {
  const char *at = strstr(tmpl, "{stream}");
  if (at) snprintf(out, cap, "%.*s%s%s", (int)(at - tmpl), tmpl, stream, at + 8);
  else snprintf(out, cap, "%s", tmpl);
}

static void flb_json_send(flb_app *app, const char *tmpl, const char *stream, json_t *o,
                          int retain) {
  char t[2 * FLB_TOPIC];
  flb_json_fill(t, sizeof t, tmpl, stream);
  char *text = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(7));
  if (text) flb_mqtt_publish(app, t, text, strlen(text), retain);
  free(text);
  json_decref(o);
}

void flb_json_report(flb_app *app, int s, const Faultline__Report *r) {
  if (!app->cfg.json || !app->connected) return;
  flb_stream *st = &app->st[s];
  const fl_model_spec *sp = &app->cfg.model.spec;
  float *raw = app->raw, *corr = app->corr, *msc = app->mscore;
  int *faulty = app->faulty;
  flb_report_values(app, s, r, raw, corr, faulty, msc);
  json_t *mods = json_object(), *chans = json_object();
  int ch = 0;
  for (int mi = 0; mi < sp->n_mod; mi++) {
    json_object_set_new(mods, sp->mod[mi].name, flb_json_num(msc[mi]));
    for (int c = 0; c < sp->mod[mi].channels; c++, ch++) {
      char k[2 * FL_NAME_MAX + 2];
      snprintf(k, sizeof k, "%s/%s", sp->mod[mi].name, sp->mod[mi].channel[c]);
      json_object_set_new(chans, k, json_pack("{s:o,s:o,s:o}", "raw", flb_json_num(raw[ch]),
                                              "corrected", flb_json_num(corr[ch]), "faulty",
                                              faulty[ch] < 0 ? json_null()
                                                             : json_boolean(faulty[ch])));
    }
  }
  double ts = (double)r->end_timestamp_ns * 1e-9;
  json_t *o = json_pack("{s:s,s:I,s:I,s:f,s:o,s:o,s:b,s:s,s:i,s:s,s:o,s:o}", "stream",
                        r->stream, "seq", (json_int_t)r->seq, "end_seq", (json_int_t)r->end_seq,
                        "ts", ts, "score", flb_json_num(r->score), "threshold",
                        flb_json_num(r->threshold), "anomaly", (int)r->anomaly,
                        "faulty_modality", r->faulty_modality, "missing", (int)r->missing,
                        "model_version", r->model_version, "modalities", mods, "channels",
                        chans);
  if (o) flb_json_send(app, app->cfg.json_topic, st->map->name, o, 0);
  if (app->cfg.state_topic[0] &&
      (!st->state_known || st->state_anomaly != (int)r->anomaly ||
       strcmp(st->state_modality, r->faulty_modality))) {
    st->state_known = 1;
    st->state_anomaly = r->anomaly;
    snprintf(st->state_modality, sizeof st->state_modality, "%s", r->faulty_modality);
    json_t *so = json_pack("{s:s,s:b,s:s,s:f,s:I}", "stream", r->stream, "anomaly",
                           (int)r->anomaly, "faulty_modality", r->faulty_modality, "ts", ts,
                           "end_seq", (json_int_t)r->end_seq);
    if (so) flb_json_send(app, app->cfg.state_topic, st->map->name, so, 1);
  }
}
