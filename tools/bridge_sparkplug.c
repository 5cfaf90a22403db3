/* faultline bridge: Sparkplug B in (a host application of the edge nodes
 * in [map.*]) and out (an edge node of its own whose devices mirror the
 * monitored streams).
 *
 * In.  Topics spBv1.0/GROUP/TYPE/NODE[/DEVICE].  NBIRTH resets a node:
 * its aliases, its seq (0) and its bdSeq; DBIRTH adds a device's metrics.
 * A birth binds each metric (by alias, or by name when it has none) to a
 * stream's channel through the map and records its datatype.  NDATA/DDATA
 * carry values by alias (or name).  A node's messages but NDEATH carry seq
 * 0-255, one more each (wrapping); a seq out of order, data before a
 * birth or an unknown alias is counted and answered with a rebirth request
 * (NCMD "Node Control/Rebirth" = true, at most one per rebirth_interval per
 * node); values of known aliases keep flowing meanwhile.  NDEATH (its bdSeq
 * matching the birth's) and DDEATH make the streams' channels missing from
 * the death on, until the next birth.
 *
 * Out.  NBIRTH (bdSeq, Node Control/Rebirth) and one DBIRTH per stream on
 * every connection and on a rebirth request, the NDEATH with the same bdSeq
 * as the will, one DDATA per report; seq 0 at NBIRTH, one more per message. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bridge.h"

typedef Org__Eclipse__Tahu__Protobuf__Payload spb_payload;
typedef Org__Eclipse__Tahu__Protobuf__Payload__Metric spb_metric;

/* Sparkplug B datatypes (sparkplug_b.proto, DataType). */
enum {
  SPB_INT8 = 1, SPB_INT16, SPB_INT32, SPB_INT64, SPB_UINT8, SPB_UINT16, SPB_UINT32, SPB_UINT64,
  SPB_FLOAT, SPB_DOUBLE, SPB_BOOLEAN, SPB_STRING, SPB_DATETIME
};

enum { SPB_NBIRTH, SPB_NDATA, SPB_NDEATH, SPB_DBIRTH, SPB_DDATA, SPB_DDEATH, SPB_NCMD,
       SPB_DCMD, SPB_OTHER };

static int spb_type(const char *s, size_t n) {
  static const char *names[] = {"NBIRTH", "NDATA", "NDEATH", "DBIRTH", "DDATA", "DDEATH",
                                "NCMD", "DCMD"};
  for (int i = 0; i < SPB_OTHER; i++)
    if (strlen(names[i]) == n && !memcmp(names[i], s, n)) return i;
  return SPB_OTHER;
}

/* The value case a datatype's values travel in; 0 for one we cannot read
 * as a number. */
static int spb_case(uint32_t type) {
  switch (type) {
  case SPB_INT8: case SPB_INT16: case SPB_INT32: case SPB_UINT8: case SPB_UINT16:
  case SPB_UINT32: return ORG__ECLIPSE__TAHU__PROTOBUF__PAYLOAD__METRIC__VALUE_INT_VALUE;
  case SPB_INT64: case SPB_UINT64: case SPB_DATETIME:
    return ORG__ECLIPSE__TAHU__PROTOBUF__PAYLOAD__METRIC__VALUE_LONG_VALUE;
  case SPB_FLOAT: return ORG__ECLIPSE__TAHU__PROTOBUF__PAYLOAD__METRIC__VALUE_FLOAT_VALUE;
  case SPB_DOUBLE: return ORG__ECLIPSE__TAHU__PROTOBUF__PAYLOAD__METRIC__VALUE_DOUBLE_VALUE;
  case SPB_BOOLEAN: return ORG__ECLIPSE__TAHU__PROTOBUF__PAYLOAD__METRIC__VALUE_BOOLEAN_VALUE;
  default: return 0;
  }
}

static float spb_value(const spb_metric *m, uint32_t type) {
  if (m->has_is_null && m->is_null) return NAN;
  switch (type) {
  case SPB_INT8: return (float)(int8_t)m->int_value;
  case SPB_INT16: return (float)(int16_t)m->int_value;
  case SPB_INT32: return (float)(int32_t)m->int_value;
  case SPB_UINT8: case SPB_UINT16: case SPB_UINT32: return (float)m->int_value;
  case SPB_INT64: return (float)(int64_t)m->long_value;
  case SPB_UINT64: case SPB_DATETIME: return (float)m->long_value;
  case SPB_FLOAT: return m->float_value;
  case SPB_DOUBLE: return (float)m->double_value;
  case SPB_BOOLEAN: return m->boolean_value ? 1.0f : 0.0f;
  default: return NAN;
  }
}

/* ---- the alias table of a node ---------------------------------------- */

static uint64_t spb_mix(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  return x;
}

/* Aliases are unique within a node, as the specification asks; keyed with
 * their device as well, they also stay apart for a node that reuses them
 * across devices.  A metric without an alias is keyed by its device and
 * name, in a space apart (the top bit set). */
static uint64_t spb_alias_key(const char *device, uint64_t alias) {
  uint64_t h = 1469598103934665603ULL;
  for (const char *s = device; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ULL;
  return spb_mix(h ^ alias) & ~(1ULL << 63);
}

/* A metric without an alias is keyed by its device and name, in a space
 * apart from aliases (the top bit set). */
static uint64_t spb_name_key(const char *device, const char *name) {
  uint64_t h = 1469598103934665603ULL;
  for (const char *s = device; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ULL;
  h = (h ^ 0xff) * 1099511628211ULL;
  for (const char *s = name; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ULL;
  return h | (1ULL << 63);
}

static flb_alias *spb_find(flb_node *n, uint64_t key) {
  if (!n->cap) return NULL;
  for (size_t j = spb_mix(key) & (n->cap - 1);; j = (j + 1) & (n->cap - 1)) {
    if (!n->tab[j].used) return NULL;
    if (n->tab[j].alias == key) return &n->tab[j];
  }
}

static flb_alias *spb_add(flb_node *n, uint64_t key) {
  if (2 * (n->n + 1) > n->cap) {
    size_t cap = n->cap ? 2 * n->cap : 64;
    flb_alias *t = calloc(cap, sizeof *t);
    if (!t) return NULL;
    for (size_t i = 0; i < n->cap; i++) {
      if (!n->tab[i].used) continue;
      size_t j = spb_mix(n->tab[i].alias) & (cap - 1);
      while (t[j].used) j = (j + 1) & (cap - 1);
      t[j] = n->tab[i];
    }
    free(n->tab);
    n->tab = t;
    n->cap = cap;
  }
  size_t j = spb_mix(key) & (n->cap - 1);
  while (n->tab[j].used && n->tab[j].alias != key) j = (j + 1) & (n->cap - 1);
  if (!n->tab[j].used) n->n++;
  n->tab[j].used = 1;
  n->tab[j].alias = key;
  return &n->tab[j];
}

/* Forgets a device's entries (DBIRTH again), or every entry (dev NULL). */
static void spb_forget(flb_app *app, flb_node *n, const char *dev) {
  if (!dev) {
    if (n->tab) memset(n->tab, 0, n->cap * sizeof *n->tab);
    n->n = 0;
    return;
  }
  int s = -1;
  for (int i = 0; i < app->n_streams; i++) {
    const flb_map *m = app->st[i].map;
    if (m->source == FLB_SRC_SPARKPLUG && !strcmp(m->group, n->group) &&
        !strcmp(m->node, n->node) && !strcmp(m->device, dev))
      s = i;
  }
  if (s < 0) return;
  /* Rebuilt without the stream's entries (an open-addressing table cannot
   * simply clear slots). */
  flb_alias *old = n->tab;
  size_t cap = n->cap;
  n->tab = NULL;
  n->cap = n->n = 0;
  for (size_t i = 0; i < cap; i++)
    if (old[i].used && old[i].stream != s) {
      flb_alias *a = spb_add(n, old[i].alias);
      if (a) *a = old[i];
    }
  free(old);
}

/* ---- in ----------------------------------------------------------------- */

/* Our metrics of one stream: 6 of the window, then per modality its score,
 * then per channel raw, corrected and faulty. */
#define SPB_HEAD 6
static int spb_out_count(const flb_app *app, const flb_stream *st) {
  return SPB_HEAD + app->cfg.model.spec.n_mod + 3 * st->n_ch;
}

int flb_spb_init(flb_app *app) {
  /* A node per stream at most. */
  app->nodes = calloc((size_t)(app->n_streams > 0 ? app->n_streams : 1), sizeof *app->nodes);
  if (!app->nodes) return -1;
  /* Every stream has the model's layout: one set of outgoing metrics
   * serves them all. */
  if (app->n_streams > 0) {
    app->spb_n = spb_out_count(app, &app->st[0]);
    app->spb_ms = malloc(sizeof *app->spb_ms * (size_t)app->spb_n);
    app->spb_mp = malloc(sizeof *app->spb_mp * (size_t)app->spb_n);
    if (!app->spb_ms || !app->spb_mp) {
      flb_log(3, "out of memory for %d Sparkplug metrics a stream", app->spb_n);
      return -1;
    }
  }
  for (int i = 0; i < app->n_streams; i++) {
    const flb_map *m = app->st[i].map;
    if (m->source != FLB_SRC_SPARKPLUG) continue;
    int j;
    for (j = 0; j < app->n_nodes; j++)
      if (!strcmp(app->nodes[j].group, m->group) && !strcmp(app->nodes[j].node, m->node)) break;
    if (j == app->n_nodes) {
      flb_node *n = &app->nodes[app->n_nodes++];
      snprintf(n->group, sizeof n->group, "%s", m->group);
      snprintf(n->node, sizeof n->node, "%s", m->node);
      n->rebirth_at = -1e9;
    }
  }
  return 0;
}

void flb_spb_free(flb_app *app) {
  for (int i = 0; i < app->n_nodes; i++) free(app->nodes[i].tab);
  free(app->nodes);
  app->nodes = NULL;
  free(app->spb_ms);
  free(app->spb_mp);
  app->spb_ms = NULL;
  app->spb_mp = NULL;
  app->spb_n = 0;
}

int flb_spb_subscribe(flb_app *app) {
  char t[3 * FLB_NAME];
  int rc = 0;
  for (int i = 0; i < app->n_nodes; i++) {
    snprintf(t, sizeof t, "spBv1.0/%s/+/%s/#", app->nodes[i].group, app->nodes[i].node);
    rc |= flb_mqtt_subscribe(app, t);
  }
  if (app->cfg.sparkplug) {
    snprintf(t, sizeof t, "spBv1.0/%s/NCMD/%s", app->cfg.group, app->cfg.node);
    rc |= flb_mqtt_subscribe(app, t);
  }
  return rc;
}

static int64_t spb_ts(const spb_payload *p, const spb_metric *m) {
  if (m->has_timestamp) return (int64_t)m->timestamp * 1000000LL;
  if (p->has_timestamp) return (int64_t)p->timestamp * 1000000LL;
  return flb_wall_ns();
}

static size_t spb_pack(flb_app *app, const spb_payload *p, uint8_t **out) {
  size_t n = org__eclipse__tahu__protobuf__payload__get_packed_size(p);
  uint8_t *b = flb_scratch(app, n);
  if (!b) return 0;
  *out = b;
  return org__eclipse__tahu__protobuf__payload__pack(p, b);
}

static void spb_rebirth(flb_app *app, flb_node *n) {
  double now = flb_now();
  if (!app->connected || now - n->rebirth_at < app->cfg.rebirth_interval) return;
  n->rebirth_at = now;
  spb_metric m = ORG__ECLIPSE__TAHU__PROTOBUF__PAYLOAD__METRIC__INIT, *mp = &m;
  m.name = "Node Control/Rebirth";
  m.has_datatype = 1;
  m.datatype = SPB_BOOLEAN;
  m.value_case = ORG__ECLIPSE__TAHU__PROTOBUF__PAYLOAD__METRIC__VALUE_BOOLEAN_VALUE;
  m.boolean_value = 1;
  spb_payload p = ORG__ECLIPSE__TAHU__PROTOBUF__PAYLOAD__INIT;
  p.has_timestamp = 1;
  p.timestamp = (uint64_t)(flb_wall_ns() / 1000000);
  p.n_metrics = 1;
  p.metrics = &mp;
  uint8_t *b;
  size_t len = spb_pack(app, &p, &b);
  char t[3 * FLB_NAME];
  snprintf(t, sizeof t, "spBv1.0/%s/NCMD/%s", n->group, n->node);
  if (len && !flb_mqtt_publish(app, t, b, len, 0)) {
    app->m.rebirths_sent++;
    flb_log(6, "sparkplug: rebirth requested from %s/%s", n->group, n->node);
  }
}

/* The stream a (node, device) feeds, or -1. */
static int spb_stream(flb_app *app, const flb_node *n, const char *dev) {
  for (int i = 0; i < app->n_streams; i++) {
    const flb_map *m = app->st[i].map;
    if (m->source == FLB_SRC_SPARKPLUG && !strcmp(m->node, n->node) &&
        !strcmp(m->group, n->group) && !strcmp(m->device, dev))
      return i;
  }
  return -1;
}

/* A birth: binds each metric to its channel (or to nothing) and applies its value. */
static void spb_birth(flb_app *app, flb_node *n, const char *dev, int s, const spb_payload *p) {
  for (size_t i = 0; i < p->n_metrics; i++) {
    const spb_metric *m = p->metrics[i];
    if (!m->name) continue;
    if (!*dev && !strcmp(m->name, "bdSeq")) {
      if (m->value_case == ORG__ECLIPSE__TAHU__PROTOBUF__PAYLOAD__METRIC__VALUE_LONG_VALUE)
        n->bdseq = m->long_value;
      continue;
    }
    int ch = -1;
    if (s >= 0)
      for (int c = 0; c < app->st[s].n_ch; c++)
        if (!strcmp(app->st[s].map->metric[c], m->name)) {
          ch = c;
          break;
        }
    uint32_t type = m->has_datatype ? m->datatype : 0;
    if (ch >= 0 && !spb_case(type)) {
      flb_bad(app, FLB_BAD_NOT_NUMERIC, "sparkplug: %s/%s%s%s metric \"%s\" has datatype %u, "
              "not a number", n->group, n->node, *dev ? "/" : "", dev, m->name, type);
      ch = -1;
    }
    flb_alias *a = spb_add(n, m->has_alias ? spb_alias_key(dev, m->alias) : spb_name_key(dev, m->name));
    if (!a) continue;
    int stream = ch >= 0 ? s : -1;
    a->stream = stream;
    a->ch = ch;
    a->type = type;
    /* A name stays usable in DATA even when an alias was given.  This add
     * may grow the table, which moves a: only locals are read after it. */
    if (m->has_alias) {
      flb_alias *b = spb_add(n, spb_name_key(dev, m->name));
      if (b) *b = (flb_alias){spb_name_key(dev, m->name), stream, ch, type, 1};
    }
    if (ch >= 0 && (int)m->value_case == spb_case(type))
      flb_update(app, s, ch, spb_ts(p, m), spb_value(m, type));
    else if (ch >= 0 && m->has_is_null && m->is_null)
      flb_update(app, s, ch, spb_ts(p, m), NAN);
  }
}

static void spb_data(flb_app *app, flb_node *n, const char *dev, const spb_payload *p) {
  for (size_t i = 0; i < p->n_metrics; i++) {
    const spb_metric *m = p->metrics[i];
    flb_alias *a = m->has_alias ? spb_find(n, spb_alias_key(dev, m->alias))
                   : m->name   ? spb_find(n, spb_name_key(dev, m->name)) : NULL;
    if (!a) {
      flb_bad(app, FLB_BAD_UNKNOWN_ALIAS, "sparkplug: %s/%s%s%s: metric %s%llu%s not in a birth",
              n->group, n->node, *dev ? "/" : "", dev, m->name ? "\"" : "alias ",
              m->name ? 0ULL : (unsigned long long)m->alias, m->name ? "\"" : "");
      spb_rebirth(app, n);
      continue;
    }
    if (a->stream < 0) {
      app->m.unmapped_metrics++;
      continue;
    }
    int vc = (int)m->value_case;
    if ((m->has_datatype && m->datatype != a->type) ||
        (vc != ORG__ECLIPSE__TAHU__PROTOBUF__PAYLOAD__METRIC__VALUE__NOT_SET &&
         vc != spb_case(a->type))) {
      flb_bad(app, FLB_BAD_TYPE_CHANGED, "sparkplug: %s/%s%s%s: metric %s changed its type "
              "from %u", n->group, n->node, *dev ? "/" : "", dev,
              app->st[a->stream].map->metric[a->ch], a->type);
      continue;
    }
    if (vc == ORG__ECLIPSE__TAHU__PROTOBUF__PAYLOAD__METRIC__VALUE__NOT_SET &&
        !(m->has_is_null && m->is_null))
      continue; /* no value */
    app->m.updates++;
    flb_update(app, a->stream, a->ch, spb_ts(p, m), spb_value(m, a->type));
  }
}

static void spb_ncmd(flb_app *app, const spb_payload *p) {
  for (size_t i = 0; i < p->n_metrics; i++) {
    const spb_metric *m = p->metrics[i];
    if (m->name && !strcmp(m->name, "Node Control/Rebirth") &&
        m->value_case == ORG__ECLIPSE__TAHU__PROTOBUF__PAYLOAD__METRIC__VALUE_BOOLEAN_VALUE &&
        m->boolean_value) {
      flb_log(6, "sparkplug: rebirth requested of us");
      flb_spb_births(app);
    }
  }
}

int flb_spb_message(flb_app *app, const char *topic, const void *buf, size_t len) {
  if (strncmp(topic, "spBv1.0/", 8)) return 0;
  /* spBv1.0 / group / type / node [/ device] */
  const char *g = topic + 8, *ty = strchr(g, '/');
  const char *nd = ty ? strchr(ty + 1, '/') : NULL;
  if (!nd) {
    flb_bad(app, FLB_BAD_UNMAPPED_TOPIC, "sparkplug: topic %s is not group/type/node", topic);
    return 1;
  }
  const char *dv = strchr(nd + 1, '/');
  char group[FLB_NAME], node[FLB_NAME], dev[FLB_NAME];
  snprintf(group, sizeof group, "%.*s", (int)(ty - g), g);
  int type = spb_type(ty + 1, (size_t)(nd - ty - 1));
  snprintf(node, sizeof node, "%.*s", dv ? (int)(dv - nd - 1) : (int)strlen(nd + 1), nd + 1);
  snprintf(dev, sizeof dev, "%s", dv ? dv + 1 : "");
  if (type == SPB_DCMD || type == SPB_OTHER) return 1;
  if (type == SPB_NCMD) {
    if (app->cfg.sparkplug && !strcmp(group, app->cfg.group) && !strcmp(node, app->cfg.node)) {
      spb_payload *p = org__eclipse__tahu__protobuf__payload__unpack(NULL, len, buf);
      if (p) spb_ncmd(app, p);
      else flb_bad(app, FLB_BAD_UNDECODABLE, "sparkplug: an undecodable NCMD on %s", topic);
      if (p) org__eclipse__tahu__protobuf__payload__free_unpacked(p, NULL);
    }
    return 1; /* our own rebirth requests to the nodes come back here too */
  }
  app->m.msgs_in++;
  flb_node *n = NULL;
  for (int i = 0; i < app->n_nodes; i++)
    if (!strcmp(app->nodes[i].group, group) && !strcmp(app->nodes[i].node, node))
      n = &app->nodes[i];
  int s = n ? spb_stream(app, n, dev) : -1;
  if (!n || (*dev && s < 0)) {
    flb_bad(app, FLB_BAD_UNMAPPED_TOPIC, "sparkplug: %s maps to no stream", topic);
    return 1;
  }
  spb_payload *p = org__eclipse__tahu__protobuf__payload__unpack(NULL, len, buf);
  if (!p) {
    flb_bad(app, FLB_BAD_UNDECODABLE, "sparkplug: an undecodable payload on %s", topic);
    return 1;
  }
  if (type != SPB_NDEATH) {
    if (type == SPB_NBIRTH) {
      n->have_seq = 0;
    } else if (!n->born) {
      flb_bad(app, FLB_BAD_UNKNOWN_ALIAS, "sparkplug: %s before its node's birth", topic);
      spb_rebirth(app, n);
    } else if (n->have_seq && (!p->has_seq || p->seq != (n->seq + 1) % 256)) {
      flb_bad(app, FLB_BAD_SEQ, "sparkplug: %s/%s seq %llu after %u", group, node,
              (unsigned long long)p->seq, n->seq);
      spb_rebirth(app, n);
    }
    if (p->has_seq) {
      n->seq = (unsigned)(p->seq % 256);
      n->have_seq = 1;
    }
  }
  switch (type) {
  case SPB_NBIRTH:
    spb_forget(app, n, NULL);
    n->born = 1;
    app->m.births++;
    spb_birth(app, n, "", s, p);
    break;
  case SPB_DBIRTH:
    if (!n->born) break;
    app->m.births++;
    spb_forget(app, n, dev);
    spb_birth(app, n, dev, s, p);
    break;
  case SPB_NDATA:
  case SPB_DDATA:
    if (n->born) spb_data(app, n, dev, p);
    break;
  case SPB_NDEATH: {
    uint64_t bd = n->bdseq;
    for (size_t i = 0; i < p->n_metrics; i++)
      if (p->metrics[i]->name && !strcmp(p->metrics[i]->name, "bdSeq") &&
          p->metrics[i]->value_case ==
              ORG__ECLIPSE__TAHU__PROTOBUF__PAYLOAD__METRIC__VALUE_LONG_VALUE)
        bd = p->metrics[i]->long_value;
    if (bd != n->bdseq || !n->born) break; /* the will of an older connection */
    n->born = 0;
    n->have_seq = 0;
    app->m.deaths++;
    int64_t now = flb_wall_ns();
    for (int i = 0; i < app->n_streams; i++) {
      const flb_map *m = app->st[i].map;
      if (m->source == FLB_SRC_SPARKPLUG && !strcmp(m->group, n->group) &&
          !strcmp(m->node, n->node))
        flb_stream_dead(app, i, now);
    }
    spb_forget(app, n, NULL);
    break;
  }
  case SPB_DDEATH:
    app->m.deaths++;
    flb_stream_dead(app, s, p->has_timestamp ? (int64_t)p->timestamp * 1000000LL : flb_wall_ns());
    spb_forget(app, n, dev);
    break;
  }
  org__eclipse__tahu__protobuf__payload__free_unpacked(p, NULL);
  return 1;
}

/* ---- out ---------------------------------------------------------------- */


/* A stream's metrics take aliases from (stream + 1) << 32 on: unique for
 * any width of model. */
static uint64_t spb_out_alias(int stream, int k) {
  return ((uint64_t)(stream + 1) << 32) + (uint64_t)k;
}

static void spb_set_float(spb_metric *m, float v) {
  if (isfinite(v)) {
    m->value_case = ORG__ECLIPSE__TAHU__PROTOBUF__PAYLOAD__METRIC__VALUE_FLOAT_VALUE;
    m->float_value = v;
  } else {
    m->has_is_null = m->is_null = 1;
  }
}

/* Fills ms (spb_out_count of them) with the stream's metrics from the report
 * r (NULL: values unknown, null); a birth (names not NULL, as many) also
 * carries the names and datatypes. */
static void spb_out_fill(flb_app *app, int s, const Faultline__Report *r,
                         spb_metric *ms, char (*names)[2 * FLB_NAME]) {
  int birth = names != NULL;
  const fl_model_spec *sp = &app->cfg.model.spec;
  flb_stream *st = &app->st[s];
  int n = spb_out_count(app, st);
  uint64_t ts = (uint64_t)(flb_wall_ns() / 1000000);
  for (int k = 0; k < n; k++) {
    spb_metric init = ORG__ECLIPSE__TAHU__PROTOBUF__PAYLOAD__METRIC__INIT;
    ms[k] = init;
    ms[k].has_alias = 1;
    ms[k].alias = spb_out_alias(s, k);
    ms[k].has_timestamp = 1;
    ms[k].timestamp = r ? (uint64_t)(r->end_timestamp_ns / 1000000) : ts;
    if (!r) ms[k].has_is_null = ms[k].is_null = 1;
  }
  static const char *head[SPB_HEAD] = {"anomaly", "score", "threshold", "faulty_modality",
                                       "missing", "report_seq"};
  static const uint32_t htype[SPB_HEAD] = {SPB_BOOLEAN, SPB_FLOAT, SPB_FLOAT, SPB_STRING,
                                           SPB_UINT32, SPB_UINT64};
  for (int k = 0; k < SPB_HEAD; k++) {
    if (birth) snprintf(names[k], sizeof names[k], "%s", head[k]);
    ms[k].datatype = htype[k];
  }
  for (int mi = 0; mi < sp->n_mod; mi++) {
    if (birth) snprintf(names[SPB_HEAD + mi], sizeof names[0], "score/%s", sp->mod[mi].name);
    ms[SPB_HEAD + mi].datatype = SPB_FLOAT;
  }
  int base = SPB_HEAD + sp->n_mod, ch = 0;
  for (int mi = 0; mi < sp->n_mod; mi++)
    for (int c = 0; c < sp->mod[mi].channels; c++, ch++) {
      const char *mn = sp->mod[mi].name, *cn = sp->mod[mi].channel[c];
      if (birth) {
        snprintf(names[base + 3 * ch], sizeof names[0], "raw/%s/%s", mn, cn);
        snprintf(names[base + 3 * ch + 1], sizeof names[0], "corrected/%s/%s", mn, cn);
        snprintf(names[base + 3 * ch + 2], sizeof names[0], "faulty/%s/%s", mn, cn);
      }
      ms[base + 3 * ch].datatype = ms[base + 3 * ch + 1].datatype = SPB_FLOAT;
      ms[base + 3 * ch + 2].datatype = SPB_BOOLEAN;
    }
  for (int k = 0; k < n; k++) {
    ms[k].has_datatype = birth;
    if (birth) ms[k].name = names[k];
  }
  if (!r) return;
  ms[0].value_case = ORG__ECLIPSE__TAHU__PROTOBUF__PAYLOAD__METRIC__VALUE_BOOLEAN_VALUE;
  ms[0].boolean_value = r->anomaly;
  spb_set_float(&ms[1], r->score);
  spb_set_float(&ms[2], r->threshold);
  ms[3].value_case = ORG__ECLIPSE__TAHU__PROTOBUF__PAYLOAD__METRIC__VALUE_STRING_VALUE;
  ms[3].string_value = r->faulty_modality;
  ms[4].value_case = ORG__ECLIPSE__TAHU__PROTOBUF__PAYLOAD__METRIC__VALUE_INT_VALUE;
  ms[4].int_value = r->missing;
  ms[5].value_case = ORG__ECLIPSE__TAHU__PROTOBUF__PAYLOAD__METRIC__VALUE_LONG_VALUE;
  ms[5].long_value = r->seq;
  for (int k = 0; k < SPB_HEAD; k++) ms[k].has_is_null = ms[k].is_null = 0;
  float *raw = app->raw, *corr = app->corr, *mscore = app->mscore;
  int *faulty = app->faulty;
  flb_report_values(app, s, r, raw, corr, faulty, mscore);
  for (int mi = 0; mi < sp->n_mod; mi++) {
    ms[SPB_HEAD + mi].has_is_null = ms[SPB_HEAD + mi].is_null = 0;
    spb_set_float(&ms[SPB_HEAD + mi], mscore[mi]);
  }
  for (ch = 0; ch < st->n_ch; ch++) {
    spb_metric *mraw = &ms[base + 3 * ch], *mc = mraw + 1, *mf = mraw + 2;
    mraw->has_is_null = mraw->is_null = mc->has_is_null = mc->is_null = 0;
    mf->has_is_null = mf->is_null = 0;
    spb_set_float(mraw, raw[ch]);
    spb_set_float(mc, corr[ch]);
    if (faulty[ch] >= 0) {
      mf->value_case = ORG__ECLIPSE__TAHU__PROTOBUF__PAYLOAD__METRIC__VALUE_BOOLEAN_VALUE;
      mf->boolean_value = faulty[ch];
    } else {
      mf->has_is_null = mf->is_null = 1;
    }
  }
}

static void spb_out_send(flb_app *app, const char *kind, const char *dev, spb_metric **mp,
                         size_t n, int seq0) {
  spb_payload p = ORG__ECLIPSE__TAHU__PROTOBUF__PAYLOAD__INIT;
  p.has_timestamp = 1;
  p.timestamp = (uint64_t)(flb_wall_ns() / 1000000);
  p.has_seq = 1;
  if (seq0) app->out_seq = 0;
  else app->out_seq = (app->out_seq + 1) % 256;
  p.seq = app->out_seq;
  p.n_metrics = n;
  p.metrics = mp;
  uint8_t *b;
  size_t len = spb_pack(app, &p, &b);
  char t[4 * FLB_NAME];
  snprintf(t, sizeof t, "spBv1.0/%s/%s/%s%s%s", app->cfg.group, kind, app->cfg.node,
           *dev ? "/" : "", dev);
  if (len) flb_mqtt_publish(app, t, b, len, 0);
}

/* A DDATA fills the metrics flb_spb_init allocated; only a birth (rare)
 * allocates, for the names it alone carries. */
static void spb_out_stream(flb_app *app, int s, const Faultline__Report *r, int birth) {
  int n = spb_out_count(app, &app->st[s]);
  char (*names)[2 * FLB_NAME] = birth ? malloc(sizeof *names * (size_t)n) : NULL;
  if (n > app->spb_n || (birth && !names)) {
    flb_log(3, "stream %s: no room for its %d Sparkplug metrics", app->st[s].map->name, n);
    free(names);
    return;
  }
  spb_out_fill(app, s, r, app->spb_ms, names);
  for (int k = 0; k < n; k++) app->spb_mp[k] = &app->spb_ms[k];
  spb_out_send(app, birth ? "DBIRTH" : "DDATA", app->st[s].map->name, app->spb_mp, (size_t)n, 0);
  free(names);
}

static void spb_node_metrics(flb_app *app, spb_metric m[2], uint64_t bdseq) {
  spb_metric init = ORG__ECLIPSE__TAHU__PROTOBUF__PAYLOAD__METRIC__INIT;
  m[0] = m[1] = init;
  m[0].name = "bdSeq";
  m[0].has_datatype = 1;
  m[0].datatype = SPB_UINT64;
  m[0].value_case = ORG__ECLIPSE__TAHU__PROTOBUF__PAYLOAD__METRIC__VALUE_LONG_VALUE;
  m[0].long_value = bdseq;
  m[1].name = "Node Control/Rebirth";
  m[1].has_datatype = 1;
  m[1].datatype = SPB_BOOLEAN;
  m[1].value_case = ORG__ECLIPSE__TAHU__PROTOBUF__PAYLOAD__METRIC__VALUE_BOOLEAN_VALUE;
  m[1].boolean_value = 0;
  (void)app;
}

int flb_spb_will(flb_app *app) {
  /* Each connection gets the next bdSeq; its NBIRTH carries the same. */
  app->out_bdseq = (app->out_bdseq + 1) % 256;
  spb_metric m[2], *mp = &m[0];
  spb_node_metrics(app, m, app->out_bdseq);
  spb_payload p = ORG__ECLIPSE__TAHU__PROTOBUF__PAYLOAD__INIT;
  p.n_metrics = 1;
  p.metrics = &mp;
  uint8_t *b;
  size_t len = spb_pack(app, &p, &b);
  char t[3 * FLB_NAME];
  snprintf(t, sizeof t, "spBv1.0/%s/NDEATH/%s", app->cfg.group, app->cfg.node);
  return len ? flb_mqtt_will(app, t, b, len) : -1;
}

void flb_spb_births(flb_app *app) {
  if (!app->cfg.sparkplug || !app->connected) return;
  spb_metric m[2], *mp[2] = {&m[0], &m[1]};
  spb_node_metrics(app, m, app->out_bdseq);
  spb_out_send(app, "NBIRTH", "", mp, 2, 1);
  for (int s = 0; s < app->n_streams; s++) spb_out_stream(app, s, app->st[s].last, 1);
}

void flb_spb_report(flb_app *app, int s, const Faultline__Report *r) {
  if (app->cfg.sparkplug && app->connected) spb_out_stream(app, s, r, 0);
}
