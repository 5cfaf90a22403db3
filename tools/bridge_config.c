/* faultline bridge: its INI file (libinih).  Every key is documented in
 * config/bridge.ini and faultline-bridge.ini(5). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <ini.h>

#include "bridge.h"

void flb_config_defaults(flb_config *c) {
  memset(c, 0, sizeof *c);
  c->tick = 1.0;
  c->stale = 5.0;
  c->delay = 0.25;
  c->depth = 0;
  c->max_burst = 600;
  c->rebirth_interval = 5.0;
  snprintf(c->url, sizeof c->url, "mqtt://127.0.0.1:1883");
  snprintf(c->client_id, sizeof c->client_id, "faultline-bridge");
  c->clean_session = 1;
  c->qos = 1;
  c->keepalive = 30;
  c->reconnect_min = 0.5;
  c->reconnect_max = 30;
  snprintf(c->frames, sizeof c->frames, "tcp://127.0.0.1:5555");
  snprintf(c->reports, sizeof c->reports, "tcp://127.0.0.1:5556");
  c->sndhwm = 100000;
  c->sparkplug = 1;
  c->json = 1;
  snprintf(c->group, sizeof c->group, "faultline");
  snprintf(c->node, sizeof c->node, "bridge");
  snprintf(c->json_topic, sizeof c->json_topic, "faultline/{stream}/report");
  snprintf(c->state_topic, sizeof c->state_topic, "faultline/{stream}/state");
  snprintf(c->json_in, sizeof c->json_in, "plant/{stream}/telemetry");
  c->log_interval = 10;
  c->log_level = FLN_INFO;
}

typedef struct {
  flb_config *c;
  char *err;
  size_t errlen;
  const char *path;
  /* map sections' channel keys, resolved once the model config is read;
   * as many as the file has (a wide model may rename every channel) */
  int n_pending, cap_pending;
  struct flb_pending { int map; char key[FL_NAME_MAX]; char val[FLB_NAME]; } *pending;
} flb_cfg_parse;

static int flb_cfg_num(const char *v, double lo, double hi, double *out) {
  char *end;
  errno = 0;
  double x = strtod(v, &end);
  if (end == v || *end || errno || !(x >= lo && x <= hi)) return -1;
  *out = x;
  return 0;
}

static int flb_cfg_int(const char *v, int lo, int hi, int *out) {
  double x;
  if (flb_cfg_num(v, lo, hi, &x) || x != (int)x) return -1;
  *out = (int)x;
  return 0;
}

static int flb_cfg_bool(const char *v, int *out) {
  if (!strcmp(v, "1") || !strcasecmp(v, "true") || !strcasecmp(v, "yes") || !strcasecmp(v, "on"))
    *out = 1;
  else if (!strcmp(v, "0") || !strcasecmp(v, "false") || !strcasecmp(v, "no") ||
           !strcasecmp(v, "off"))
    *out = 0;
  else return -1;
  return 0;
}

static int flb_cfg_str(char *dst, size_t cap, const char *v) {
  if (strlen(v) >= cap) return -1;
  snprintf(dst, cap, "%s", v);
  return 0;
}

/* A Sparkplug or stream identifier: no MQTT wildcard or level separator. */
static int flb_cfg_ident(char *dst, size_t cap, const char *v) {
  if (!*v || strpbrk(v, "/+#")) return -1;
  return flb_cfg_str(dst, cap, v);
}

static int flb_stream_name_ok(const char *s) {
  size_t n = strlen(s);
  if (n < 1 || n > 64) return 0;
  for (; *s; s++)
    if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
          strchr("_.:-", *s)))
      return 0;
  return 1;
}

static flb_map *flb_cfg_map(flb_cfg_parse *p, const char *name) {
  flb_config *c = p->c;
  for (int i = 0; i < c->n_map; i++)
    if (!strcmp(c->map[i].sec, name)) return &c->map[i];
  if (c->n_map == c->cap_map) {
    int cap = c->cap_map ? 2 * c->cap_map : 16;
    flb_map *t = realloc(c->map, sizeof *t * (size_t)cap);
    if (!t) return NULL;
    c->map = t;
    c->cap_map = cap;
  }
  flb_map *m = &c->map[c->n_map++];
  memset(m, 0, sizeof *m);
  snprintf(m->sec, sizeof m->sec, "%s", name);
  snprintf(m->name, sizeof m->name, "%.64s", name);
  m->source = FLB_SRC_SPARKPLUG;
  return m;
}

/* Returns 1 when the key was taken, 0 for an unknown key, -1 for a bad value. */
static int flb_cfg_key(flb_cfg_parse *p, const char *sec, const char *k, const char *v) {
  flb_config *c = p->c;
#define IS(s, key) (!strcmp(sec, s) && !strcmp(k, key))
  if (IS("bridge", "model_config")) return flb_cfg_str(c->model_config, sizeof c->model_config, v) ? -1 : 1;
  if (IS("bridge", "tick")) return flb_cfg_num(v, 0.001, 3600, &c->tick) ? -1 : 1;
  if (IS("bridge", "stale")) return flb_cfg_num(v, 0.001, 86400, &c->stale) ? -1 : 1;
  if (IS("bridge", "delay")) return flb_cfg_num(v, 0, 3600, &c->delay) ? -1 : 1;
  if (IS("bridge", "depth")) return flb_cfg_int(v, 0, 1000000, &c->depth) ? -1 : 1;
  if (IS("bridge", "max_burst")) return flb_cfg_int(v, 1, 1000000, &c->max_burst) ? -1 : 1;
  if (IS("bridge", "timestamps")) {
    if (!strcmp(v, "source")) c->arrival_time = 0;
    else if (!strcmp(v, "arrival")) c->arrival_time = 1;
    else return -1;
    return 1;
  }
  if (IS("bridge", "rebirth_interval"))
    return flb_cfg_num(v, 0.1, 3600, &c->rebirth_interval) ? -1 : 1;
  if (IS("mqtt", "url")) return flb_cfg_str(c->url, sizeof c->url, v) ? -1 : 1;
  if (IS("mqtt", "client_id")) return flb_cfg_str(c->client_id, sizeof c->client_id, v) ? -1 : 1;
  if (IS("mqtt", "username")) return flb_cfg_str(c->username, sizeof c->username, v) ? -1 : 1;
  if (IS("mqtt", "password")) return flb_cfg_str(c->password, sizeof c->password, v) ? -1 : 1;
  if (IS("mqtt", "password_file")) {
    FILE *f = fopen(v, "r");
    if (!f) return -1;
    char buf[FLB_NAME] = "";
    int ok = fgets(buf, sizeof buf, f) != NULL;
    fclose(f);
    if (!ok) return -1;
    buf[strcspn(buf, "\r\n")] = 0;
    snprintf(c->password, sizeof c->password, "%s", buf);
    return 1;
  }
  if (IS("mqtt", "ca_file")) return flb_cfg_str(c->ca_file, sizeof c->ca_file, v) ? -1 : 1;
  if (IS("mqtt", "cert_file")) return flb_cfg_str(c->cert_file, sizeof c->cert_file, v) ? -1 : 1;
  if (IS("mqtt", "key_file")) return flb_cfg_str(c->key_file, sizeof c->key_file, v) ? -1 : 1;
  if (IS("mqtt", "clean_session")) return flb_cfg_bool(v, &c->clean_session) ? -1 : 1;
  if (IS("mqtt", "qos")) return flb_cfg_int(v, 0, 1, &c->qos) ? -1 : 1;
  if (IS("mqtt", "keepalive")) return flb_cfg_int(v, 5, 3600, &c->keepalive) ? -1 : 1;
  if (IS("mqtt", "reconnect_min")) return flb_cfg_num(v, 0.01, 3600, &c->reconnect_min) ? -1 : 1;
  if (IS("mqtt", "reconnect_max")) return flb_cfg_num(v, 0.01, 3600, &c->reconnect_max) ? -1 : 1;
  if (IS("faultlined", "frames")) return flb_cfg_str(c->frames, sizeof c->frames, v) ? -1 : 1;
  if (IS("faultlined", "reports")) return flb_cfg_str(c->reports, sizeof c->reports, v) ? -1 : 1;
  if (IS("faultlined", "frames_bind")) return flb_cfg_bool(v, &c->frames_bind) ? -1 : 1;
  if (IS("faultlined", "reports_bind")) return flb_cfg_bool(v, &c->reports_bind) ? -1 : 1;
  if (IS("faultlined", "sndhwm")) return flb_cfg_int(v, 0, 100000000, &c->sndhwm) ? -1 : 1;
  if (IS("publish", "sparkplug")) return flb_cfg_bool(v, &c->sparkplug) ? -1 : 1;
  if (IS("publish", "json")) return flb_cfg_bool(v, &c->json) ? -1 : 1;
  if (IS("publish", "group")) return flb_cfg_ident(c->group, sizeof c->group, v) ? -1 : 1;
  if (IS("publish", "node")) return flb_cfg_ident(c->node, sizeof c->node, v) ? -1 : 1;
  if (IS("publish", "json_topic")) return flb_cfg_str(c->json_topic, sizeof c->json_topic, v) ? -1 : 1;
  if (IS("publish", "state_topic"))
    return flb_cfg_str(c->state_topic, sizeof c->state_topic, v) ? -1 : 1;
  if (IS("input", "json_topic")) return flb_cfg_str(c->json_in, sizeof c->json_in, v) ? -1 : 1;
  if (IS("metrics", "listen")) return flb_cfg_str(c->listen, sizeof c->listen, v) ? -1 : 1;
  if (IS("metrics", "log_interval")) return flb_cfg_num(v, 0, 86400, &c->log_interval) ? -1 : 1;
  if (IS("log", "level")) return fln_log_parse_level(v, &c->log_level) ? -1 : 1;
#undef IS
  if (!strncmp(sec, "map.", 4)) {
    flb_map *m = flb_cfg_map(p, sec + 4);
    if (!m) {
      snprintf(p->err, p->errlen, "[%s]: out of memory for the map", sec);
      return -1;
    }
    if (!strcmp(k, "stream")) {
      if (!flb_stream_name_ok(v)) return -1;
      snprintf(m->name, sizeof m->name, "%s", v);
      return 1;
    }
    if (!strcmp(k, "source")) {
      if (!strcmp(v, "sparkplug")) m->source = FLB_SRC_SPARKPLUG;
      else if (!strcmp(v, "json")) m->source = FLB_SRC_JSON;
      else return -1;
      return 1;
    }
    if (!strcmp(k, "group")) return flb_cfg_ident(m->group, sizeof m->group, v) ? -1 : 1;
    if (!strcmp(k, "node")) return flb_cfg_ident(m->node, sizeof m->node, v) ? -1 : 1;
    if (!strcmp(k, "device")) return flb_cfg_ident(m->device, sizeof m->device, v) ? -1 : 1;
    if (!strcmp(k, "topic")) return flb_cfg_str(m->topic, sizeof m->topic, v) ? -1 : 1;
    /* Anything else names a channel; resolved once the model is known. */
    if (strlen(k) >= FL_NAME_MAX || strlen(v) >= FLB_NAME || !*v) return -1;
    if (p->n_pending == p->cap_pending) {
      int cap = p->cap_pending ? 2 * p->cap_pending : 64;
      struct flb_pending *t = realloc(p->pending, sizeof *t * (size_t)cap);
      if (!t) {
        snprintf(p->err, p->errlen, "[%s] %s: out of memory", sec, k);
        return -1;
      }
      p->pending = t;
      p->cap_pending = cap;
    }
    p->pending[p->n_pending].map = (int)(m - c->map);
    snprintf(p->pending[p->n_pending].key, FL_NAME_MAX, "%s", k);
    snprintf(p->pending[p->n_pending].val, FLB_NAME, "%s", v);
    p->n_pending++;
    return 1;
  }
  return 0;
}

static int flb_cfg_handler(void *user, const char *sec, const char *k, const char *v) {
  flb_cfg_parse *p = user;
  int r = flb_cfg_key(p, sec, k, v);
  if (r == 1) return 1;
  if (!p->err[0])
    snprintf(p->err, p->errlen, "[%s] %s: %s", sec, k, r == 0 ? "unknown key" : "bad value");
  return 0;
}

/* mqtt://host[:port] or mqtts://host[:port] (IPv6 in brackets). */
static int flb_cfg_url(flb_config *c) {
  const char *u = c->url, *rest;
  if (!strncmp(u, "mqtt://", 7)) c->tls = 0, rest = u + 7, c->port = 1883;
  else if (!strncmp(u, "mqtts://", 8)) c->tls = 1, rest = u + 8, c->port = 8883;
  else return -1;
  const char *hend, *colon;
  if (*rest == '[') {
    hend = strchr(rest, ']');
    if (!hend) return -1;
    snprintf(c->host, sizeof c->host, "%.*s", (int)(hend - rest - 1), rest + 1);
    colon = hend[1] == ':' ? hend + 1 : NULL;
    if (!colon && hend[1] && hend[1] != '/') return -1;
  } else {
    colon = strchr(rest, ':');
    size_t n = colon ? (size_t)(colon - rest) : strcspn(rest, "/");
    snprintf(c->host, sizeof c->host, "%.*s", (int)n, rest);
  }
  if (!c->host[0]) return -1;
  if (colon) {
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (end == colon + 1 || (*end && *end != '/') || port < 1 || port > 65535) return -1;
    c->port = (int)port;
  }
  return 0;
}

/* Fills {stream} of a template into out. */
static int flb_cfg_fill(char *out, size_t cap, const char *template, const char *stream) {
  char tmpl[FLB_TOPIC];
  snprintf(tmpl, sizeof tmpl, "%s", template); /* out may be template */
  const char *at = strstr(tmpl, "{stream}");
  int n = at ? snprintf(out, cap, "%.*s%s%s", (int)(at - tmpl), tmpl, stream, at + 8)
             : snprintf(out, cap, "%s", tmpl);
  return n < 0 || (size_t)n >= cap ? -1 : 0;
}

int flb_config_load(flb_config *c, const char *path, char *err, size_t errlen) {
  flb_cfg_parse *p = calloc(1, sizeof *p);
  if (!p) return -ENOMEM;
  p->c = c;
  p->err = err;
  p->errlen = errlen;
  p->path = path;
  err[0] = 0;
  int rc = ini_parse(path, flb_cfg_handler, p), ret = -EINVAL;
  if (rc < 0) {
    snprintf(err, errlen, "%s: cannot read", path);
    goto out;
  }
  if (rc > 0) {
    char what[512];
    snprintf(what, sizeof what, "%s", err[0] ? err : "syntax error");
    snprintf(err, errlen, "%s:%d: %s", path, rc, what);
    goto out;
  }
  if (!c->model_config[0]) {
    snprintf(err, errlen, "%s: [bridge] model_config is required", path);
    goto out;
  }
  /* A relative path names a file beside this one, as the copies under
   * /etc/faultline sit together. */
  if (c->model_config[0] != '/') {
    const char *slash = strrchr(path, '/');
    char full[PATH_MAX];
    int n = slash ? snprintf(full, sizeof full, "%.*s/%s", (int)(slash - path), path,
                             c->model_config)
                  : snprintf(full, sizeof full, "%s", c->model_config);
    if (n < 0 || (size_t)n >= sizeof full) {
      snprintf(err, errlen, "%s: [bridge] model_config: path too long", path);
      goto out;
    }
    memcpy(c->model_config, full, (size_t)n + 1);
  }
  fl_config_defaults(&c->model);
  char merr[512];
  if (fl_config_load(&c->model, c->model_config, merr, sizeof merr)) {
    snprintf(err, errlen, "%s: model_config: %s", path, merr);
    goto out;
  }
  int nch = flb_config_channels(c);
  if (c->model.spec.n_mod < 1) {
    snprintf(err, errlen, "%s: %s has no [modality.*] section", path, c->model_config);
    goto out;
  }
  if (flb_cfg_url(c)) {
    snprintf(err, errlen, "%s: [mqtt] url \"%s\": want mqtt://HOST[:PORT] or mqtts://...", path,
             c->url);
    goto out;
  }
  if (c->reconnect_max < c->reconnect_min) c->reconnect_max = c->reconnect_min;
  if (!c->n_map) {
    snprintf(err, errlen, "%s: no [map.NAME] section: no stream to bridge", path);
    goto out;
  }
  const fl_model_spec *s = &c->model.spec;
  for (int i = 0; i < c->n_map; i++) {
    flb_map *m = &c->map[i];
    if (!flb_stream_name_ok(m->name)) {
      snprintf(err, errlen, "%s: [map.%s]: the stream id must be 1-64 of [A-Za-z0-9_.:-]",
               path, m->name);
      goto out;
    }
    for (int j = 0; j < i; j++)
      if (!strcmp(c->map[j].name, m->name)) {
        snprintf(err, errlen, "%s: stream %s is mapped twice", path, m->name);
        goto out;
      }
    m->metric = calloc((size_t)(nch > 0 ? nch : 1), sizeof *m->metric);
    if (!m->metric) {
      snprintf(err, errlen, "%s: [map.%s]: out of memory for %d channels", path, m->sec, nch);
      ret = -ENOMEM;
      goto out;
    }
    int ch = 0;
    for (int mi = 0; mi < s->n_mod; mi++)
      for (int k = 0; k < s->mod[mi].channels; k++)
        snprintf(m->metric[ch++], FLB_NAME, "%s", s->mod[mi].channel[k]);
    if (m->source == FLB_SRC_SPARKPLUG && (!m->group[0] || !m->node[0])) {
      snprintf(err, errlen, "%s: [map.%s]: Sparkplug needs group and node", path, m->name);
      goto out;
    }
    if (m->source == FLB_SRC_JSON &&
        flb_cfg_fill(m->topic, sizeof m->topic, m->topic[0] ? m->topic : c->json_in, m->name)) {
      snprintf(err, errlen, "%s: [map.%s]: topic too long", path, m->name);
      goto out;
    }
  }
  for (int i = 0; i < p->n_pending; i++) {
    flb_map *m = &c->map[p->pending[i].map];
    int ch = 0, found = -1;
    for (int mi = 0; mi < s->n_mod && found < 0; mi++)
      for (int k = 0; k < s->mod[mi].channels; k++, ch++)
        if (!strcmp(s->mod[mi].channel[k], p->pending[i].key)) {
          found = ch;
          break;
        }
    if (found < 0) {
      snprintf(err, errlen, "%s: [map.%s] %s: not a channel of the model (%s)", path,
               m->sec, p->pending[i].key, c->model_config);
      goto out;
    }
    snprintf(m->metric[found], FLB_NAME, "%s", p->pending[i].val);
  }
  ret = 0;
out:
  free(p->pending);
  free(p);
  return ret;
}

int flb_config_channels(const flb_config *c) {
  return fl_model_spec_channels(&c->model.spec);
}

void flb_config_free(flb_config *c) {
  for (int i = 0; i < c->n_map; i++) {
    free(c->map[i].metric);
    c->map[i].metric = NULL;
  }
  free(c->map);
  c->map = NULL;
  c->n_map = c->cap_map = 0;
  fl_config_free(&c->model);
}
