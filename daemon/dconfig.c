/* faultlined configuration: see fld.h.  The library parses its sections
 * and calls fld__key for the daemon's in the same pass, so that an error in
 * either makes the whole file invalid (and a SIGHUP with it keeps the old
 * one). */
#include <errno.h>
#include <ini.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "faultline/error.h"
#include "fld.h"

void fld_config_defaults(fld_config *c) {
  memset(c, 0, sizeof *c);
  c->in_type = FLD_IN_SUB;
  c->in_bind = 1;
  snprintf(c->in_topic[0], sizeof c->in_topic[0], "frame/");
  c->n_topics = 1;
  c->max_streams = 64;
  c->max_message_bytes = 65536;
  c->drain_budget = 256;
  c->rcvhwm = 1000;
  c->stream_idle = 60 * 60.0;
  c->max_seq_jump = 1000000;
  c->out_bind = 1;
  c->stride = 15;
  c->batch = 16;
  c->batch_memory = 4.0;
  c->score = 1;
  c->sndhwm = 100000;
  snprintf(c->metrics_listen, sizeof c->metrics_listen, "127.0.0.1:9108");
  c->status_interval = 10.0;
  c->stale_after = 60.0;
  c->metrics_max_connections = 16;
  c->metrics_max_request = 4096;
  c->limit_log_interval = 60.0;
  c->log_level = FLD_INFO;
  c->tune_enabled = 0;
  c->tune_buffer = 512;
  c->tune_gate = 0.5;
  c->tune_span = 0;
  c->tune_max_per_hour = 12;
  c->tune_cpu_share = 0.25;
  snprintf(c->tune_checkpoint, sizeof c->tune_checkpoint, "tuned.model");
  c->tune_checkpoint_every = 1;
  c->tune_idle = 1;
  fl_config_defaults(&c->lib);
}

static int fld__double(const char *v, double lo, double hi, double *out) {
  char *end;
  double d = strtod(v, &end);
  if (end == v || *end || !(d >= lo && d <= hi)) return -1;
  *out = d;
  return 0;
}

typedef struct {
  fld_config *c;
  int have_in, have_out;
} fld__parse;

static int fld__long(const char *v, long lo, long hi, long *out) {
  char *end;
  errno = 0;
  long x = strtol(v, &end, 10);
  while (*end == ' ' || *end == '\t') end++;
  if (end == v || *end || errno || x < lo || x > hi) return -1;
  *out = x;
  return 0;
}

/* Splits a comma-separated list into at most max items of fewer than cap
 * characters each; an empty item is an error. */
static int fld__list(const char *v, char *dst, size_t cap, int max, int *n) {
  *n = 0;
  const char *p = v;
  while (*p) {
    while (*p == ' ' || *p == '\t') p++;
    const char *e = strchr(p, ',');
    size_t len = e ? (size_t)(e - p) : strlen(p);
    while (len && (p[len - 1] == ' ' || p[len - 1] == '\t')) len--;
    if (!len || len >= cap || *n >= max) return -1;
    memcpy(dst + (size_t)*n * cap, p, len);
    dst[(size_t)*n * cap + len] = 0;
    (*n)++;
    if (!e) break;
    p = e + 1;
  }
  return *n ? 0 : -1;
}

static int fld__endpoints(const char *v, char dst[][FLD_ENDPOINT_MAX], int *n) {
  return fld__list(v, dst[0], FLD_ENDPOINT_MAX, FLD_MAX_ENDPOINTS, n);
}

/* Subscription prefixes: a daemon's shard of the stream names.  Each must
 * name frame topics ("frame/" or "frame/<stream prefix>"): anything else
 * would subscribe to nothing the publishers send, silently. */
static int fld__topics(const char *v, fld_config *c, char *why, size_t whylen) {
  memset(c->in_topic, 0, sizeof c->in_topic);
  if (fld__list(v, c->in_topic[0], FLD_TOPIC_MAX, FLD_MAX_TOPICS, &c->n_topics)) {
    snprintf(why, whylen, "want a comma-separated list of 1 to %d prefixes of fewer than %d "
             "characters", FLD_MAX_TOPICS, FLD_TOPIC_MAX);
    return -1;
  }
  for (int i = 0; i < c->n_topics; i++)
    if (strncmp(c->in_topic[i], "frame/", 6)) {
      snprintf(why, whylen, "\"%s\" does not start with \"frame/\"", c->in_topic[i]);
      return -1;
    }
  return 0;
}

static int fld__copy(char *dst, size_t cap, const char *v) {
  if (strlen(v) >= cap) return -1;
  snprintf(dst, cap, "%s", v);
  return 0;
}

/* The daemon's keys (fl_config_key_fn): 1 taken, 0 unknown, -1 invalid. */
static int fld__key(void *user, const char *section, const char *key, const char *value,
                    char *why, size_t whylen) {
  fld__parse *p = user;
  fld_config *c = p->c;
  long l;
#define IS(s, k) (!strcmp(section, s) && !strcmp(key, k))
  if (IS("input", "type")) {
    if (!strcmp(value, "sub")) c->in_type = FLD_IN_SUB;
    else if (!strcmp(value, "pull")) c->in_type = FLD_IN_PULL;
    else goto bad;
  } else if (IS("input", "bind")) {
    if (fl_config_bool(value, &c->in_bind)) goto bad;
  } else if (IS("input", "endpoint")) {
    if (fld__endpoints(value, c->in_endpoint, &c->n_in)) goto bad;
    p->have_in = 1;
  } else if (IS("input", "topic")) {
    if (fld__topics(value, c, why, whylen)) return -1;
  } else if (IS("input", "max_streams")) {
    if (fld__long(value, 1, 100000, &l)) goto bad;
    c->max_streams = (int)l;
  } else if (IS("input", "max_message_bytes")) {
    if (fld__long(value, 256, 256L << 20, &l)) goto bad;
    c->max_message_bytes = l;
  } else if (IS("input", "drain_budget")) {
    if (fld__long(value, 1, 1000000, &l)) goto bad;
    c->drain_budget = (int)l;
  } else if (IS("input", "rcvhwm")) {
    if (fld__long(value, 0, 100000000, &l)) goto bad;
    c->rcvhwm = (int)l;
  } else if (IS("input", "stream_idle")) {
    /* Minutes: sensors are retired or renamed over days, not seconds. */
    double d;
    if (fld__double(value, 0.0, 525600.0, &d)) goto bad;
    c->stream_idle = d * 60.0;
  } else if (IS("input", "max_seq_jump")) {
    if (fld__long(value, 1, LONG_MAX, &l)) goto bad;
    c->max_seq_jump = (uint64_t)l;
  } else if (IS("metrics", "stale_after")) {
    if (fld__double(value, 1.0, 86400.0, &c->stale_after)) goto bad;
  } else if (IS("output", "endpoint")) {
    if (fld__endpoints(value, c->out_endpoint, &c->n_out)) goto bad;
    p->have_out = 1;
  } else if (IS("output", "bind")) {
    if (fl_config_bool(value, &c->out_bind)) goto bad;
  } else if (IS("output", "stride")) {
    if (fld__long(value, 1, 100000, &l)) goto bad;
    c->stride = (int)l;
  } else if (IS("output", "batch")) {
    if (fld__long(value, 1, FLD_MAX_BATCH, &l)) goto bad;
    c->batch = (int)l;
  } else if (IS("output", "batch_memory")) {
    if (fld__double(value, 0.1, 65536.0, &c->batch_memory)) goto bad;
  } else if (IS("output", "score")) {
    if (fl_config_bool(value, &c->score)) goto bad;
  } else if (IS("output", "sndhwm")) {
    if (fld__long(value, 0, 100000000, &l)) goto bad;
    c->sndhwm = (int)l;
  } else if (IS("metrics", "listen")) {
    if (fld__copy(c->metrics_listen, sizeof c->metrics_listen, value)) goto bad;
  } else if (IS("metrics", "status_interval")) {
    char *end;
    double d = strtod(value, &end);
    if (end == value || *end || !(d >= 0.1 && d <= 3600)) goto bad;
    c->status_interval = d;
  } else if (IS("security", "curve")) {
    if (fl_config_bool(value, &c->curve)) goto bad;
  } else if (IS("security", "secret_key")) {
    if (fld__copy(c->secret_key_file, sizeof c->secret_key_file, value)) goto bad;
  } else if (IS("security", "authorized_keys")) {
    if (fld__copy(c->authorized_keys, sizeof c->authorized_keys, value)) goto bad;
  } else if (IS("metrics", "max_connections")) {
    if (fld__long(value, 1, 1024, &l)) goto bad;
    c->metrics_max_connections = (int)l;
  } else if (IS("metrics", "max_request_bytes")) {
    if (fld__long(value, 1024, 1 << 20, &l)) goto bad;
    c->metrics_max_request = (int)l;
  } else if (IS("log", "limit_interval")) {
    char *end;
    double d = strtod(value, &end);
    if (end == value || *end || !(d >= 0.1 && d <= 86400)) goto bad;
    c->limit_log_interval = d;
  } else if (IS("tune", "enabled")) {
    if (fl_config_bool(value, &c->tune_enabled)) goto bad;
  } else if (IS("tune", "buffer")) {
    if (fld__long(value, 16, 1000000, &l)) goto bad;
    c->tune_buffer = (int)l;
  } else if (IS("tune", "gate")) {
    if (fld__double(value, 0.0, 1.0, &c->tune_gate)) goto bad;
  } else if (IS("tune", "span")) {
    if (fld__long(value, 0, 1000, &l)) goto bad;
    c->tune_span = (int)l;
  } else if (IS("tune", "max_updates_per_hour")) {
    if (fld__double(value, 0.01, 360000.0, &c->tune_max_per_hour)) goto bad;
  } else if (IS("tune", "cpu_share")) {
    if (fld__double(value, 0.001, 1.0, &c->tune_cpu_share)) goto bad;
  } else if (IS("tune", "checkpoint")) {
    if (fld__copy(c->tune_checkpoint, sizeof c->tune_checkpoint, value)) goto bad;
  } else if (IS("tune", "checkpoint_every")) {
    if (fld__long(value, 1, 1000000, &l)) goto bad;
    c->tune_checkpoint_every = (int)l;
  } else if (IS("tune", "idle")) {
    if (fl_config_bool(value, &c->tune_idle)) goto bad;
  } else if (IS("log", "level")) {
    if (fld_log_parse_level(value, &c->log_level)) goto bad;
  } else {
    return 0;
  }
#undef IS
  return 1;
bad:
  return -1;
}

/* inih: which of the keys the model also carries the file gives (the
 * library's parse keeps values, not whether a value was written). */
static int fld__given(void *user, const char *section, const char *key, const char *value) {
  fld_config *c = user;
  (void)value;
  if (!strcmp(section, "model") && !strcmp(key, "window")) c->window_given = 1;
  if (!strcmp(section, "detect") &&
      c->n_detect_given < (int)(sizeof c->detect_given / sizeof *c->detect_given))
    snprintf(c->detect_given[c->n_detect_given++], sizeof c->detect_given[0], "%s", key);
  return 1;
}

void fld_config_free(fld_config *c) {
  if (c) fl_config_free(&c->lib);
}

int fld_config_load(fld_config *c, const char *path, char *err, size_t errlen) {
  fld_config_defaults(c);
  fld__parse p = {c, 0, 0};
  int rc = fl_config_load_with(&c->lib, path, fld__key, &p, err, errlen);
  if (rc) return rc;
  if (ini_parse(path, fld__given, c)) {
    snprintf(err, errlen, "%s: cannot read", path);
    return FL_EIO;
  }
  snprintf(c->model_file, sizeof c->model_file, "%s", c->lib.model_file);
  if (!c->model_file[0]) {
    snprintf(err, errlen, "%s: [model] file is required", path);
    return FL_EINVAL;
  }
  if (!p.have_in || !p.have_out) {
    snprintf(err, errlen, "%s: [input] endpoint and [output] endpoint are required", path);
    return FL_EINVAL;
  }
  if (c->curve && (!c->secret_key_file[0] || !c->authorized_keys[0])) {
    snprintf(err, errlen, "%s: [security] curve = 1 needs secret_key and authorized_keys", path);
    return FL_EINVAL;
  }
  if (c->tune_enabled && c->lib.tune.min_windows > c->tune_buffer) {
    snprintf(err, errlen, "%s: [tune] min_windows exceeds buffer", path);
    return FL_EINVAL;
  }
  if (c->metrics_listen[0] && !strrchr(c->metrics_listen, ':')) {
    snprintf(err, errlen, "%s: [metrics] listen must be ADDRESS:PORT", path);
    return FL_EINVAL;
  }
  /* A relative model path is relative to the configuration's directory, so
   * that a config and its model can move together. */
  if (c->model_file[0] != '/') {
    const char *slash = strrchr(path, '/');
    if (slash) {
      char full[PATH_MAX];
      int n = snprintf(full, sizeof full, "%.*s/%s", (int)(slash - path), path, c->model_file);
      if (n < 0 || (size_t)n >= sizeof full) {
        snprintf(err, errlen, "%s: [model] file path is too long", path);
        return FL_EINVAL;
      }
      memcpy(c->model_file, full, (size_t)n + 1);
    }
  }
  return 0;
}

/* The settings a reload keeps as they are, each a field (and the count of
 * its list, if it is one) of fld_config. */
typedef struct {
  const char *name;
  size_t off, size, off2, size2;
} fld__fixed;
#define FLD__F(n, f) {n, offsetof(fld_config, f), sizeof(((fld_config *)0)->f), 0, 0}
#define FLD__F2(n, f, g)                                                                   \
  {n, offsetof(fld_config, f), sizeof(((fld_config *)0)->f), offsetof(fld_config, g),      \
   sizeof(((fld_config *)0)->g)}
static const fld__fixed fld__restart[] = {
    FLD__F("[input] type", in_type),
    FLD__F("[input] bind", in_bind),
    FLD__F2("[input] endpoint", in_endpoint, n_in),
    FLD__F("[input] max_message_bytes", max_message_bytes),
    FLD__F("[output] bind", out_bind),
    FLD__F2("[output] endpoint", out_endpoint, n_out),
    FLD__F("[metrics] listen", metrics_listen),
    FLD__F("[security] curve", curve),
    FLD__F("[security] secret_key", secret_key_file),
    FLD__F("[tune] idle", tune_idle),
};

int fld_config_keep_fixed(fld_config *nc, const fld_config *old, char *names, size_t len) {
  int n = 0;
  size_t used = 0;
  if (len) names[0] = 0;
  /* The socket stays what it was, and so do its subscriptions. */
  if (nc->in_type != old->in_type) {
    nc->n_topics = old->n_topics;
    memcpy(nc->in_topic, old->in_topic, sizeof nc->in_topic);
  }
  for (size_t i = 0; i < sizeof fld__restart / sizeof *fld__restart; i++) {
    const fld__fixed *f = &fld__restart[i];
    char *a = (char *)nc;
    const char *b = (const char *)old;
    int differ = memcmp(a + f->off, b + f->off, f->size) ||
                 (f->size2 && memcmp(a + f->off2, b + f->off2, f->size2));
    memcpy(a + f->off, b + f->off, f->size);
    if (f->size2) memcpy(a + f->off2, b + f->off2, f->size2);
    if (!differ) continue;
    if (used < len) {
      int w = snprintf(names + used, len - used, "%s%s", n ? ", " : "", f->name);
      if (w > 0) used += (size_t)w;
    }
    n++;
  }
  return n;
}
