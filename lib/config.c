/* faultline config: see include/faultline/config.h for the contracts. */
#include "faultline/config.h"

#include <float.h>
#include <limits.h>
#include <errno.h>
#include <math.h>
#include <ini.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "faultline/error.h"

void fl_config_free(fl_config *c) {
  if (c) fl_model_spec_free(&c->spec);
}

void fl_config_defaults(fl_config *c) {
  memset(c, 0, sizeof *c);
  fl_model_spec_defaults(&c->spec);
  fl_train_defaults(&c->train);
  fl_detect_defaults(&c->detect);
  fl_tune_defaults(&c->tune);
}

typedef struct {
  fl_config *c;
  char *err;
  size_t errlen;
  int failed;
  fl_config_key_fn fn;
  void *user;
} fl__parse;

static int fl__num(const char *v, double *out) {
  char *end;
  errno = 0;
  double d = strtod(v, &end);
  while (*end == ' ' || *end == '\t') end++;
  if (end == v || *end || errno) return -1;
  *out = d;
  return 0;
}

/* The sections of the file and who reads their keys: the library, the
 * program that reads the file with fl_config_load_with (the daemon), or
 * both ([tune]: the tuner's options here, its schedule there). */
enum { FL__LIB = 1, FL__APP = 2 };
static const struct {
  const char *name;
  int owner;
} fl__sections[] = {
    {"model", FL__LIB},  {"train", FL__LIB},  {"detect", FL__LIB},
    {"tune", FL__LIB | FL__APP}, {"input", FL__APP}, {"output", FL__APP},
    {"metrics", FL__APP}, {"security", FL__APP}, {"log", FL__APP},
};

static int fl__owner(const char *section) {
  if (!strncmp(section, "modality.", 9)) return FL__LIB;
  for (size_t i = 0; i < sizeof fl__sections / sizeof *fl__sections; i++)
    if (!strcmp(section, fl__sections[i].name)) return fl__sections[i].owner;
  return 0;
}

int fl_config_bool(const char *v, int *out) {
  if (!strcmp(v, "1") || !strcmp(v, "true") || !strcmp(v, "yes") || !strcmp(v, "on")) {
    *out = 1;
    return 0;
  }
  if (!strcmp(v, "0") || !strcmp(v, "false") || !strcmp(v, "no") || !strcmp(v, "off")) {
    *out = 0;
    return 0;
  }
  return -1;
}

static int fl__faults(fl_train_config *t, const char *v) {
  char buf[512];
  snprintf(buf, sizeof buf, "%s", v);
  t->ntypes = 0;
  for (char *tok = strtok(buf, ", \t"); tok; tok = strtok(NULL, ", \t")) {
    fl_fault_type ft;
    if (fl_fault_parse(tok, &ft) || t->ntypes >= FL_FAULT_COUNT) return -1;
    t->types[t->ntypes++] = ft;
  }
  return t->ntypes > 0 ? 0 : -1;
}

static int fl__modality(fl_model_spec *s, const char *name, const char *key, const char *v) {
  int i;
  for (i = 0; i < s->n_mod; i++)
    if (!strcmp(s->mod[i].name, name)) break;
  if (i == s->n_mod) {
    if (strlen(name) >= FL_NAME_MAX || !*name) return -1;
    fl_modality *mods = realloc(s->mod, sizeof *mods * (size_t)(s->n_mod + 1));
    if (!mods) return -1;
    s->mod = mods;
    memset(&s->mod[i], 0, sizeof s->mod[i]);
    snprintf(s->mod[i].name, FL_NAME_MAX, "%s", name);
    s->mod[i].rate = 1;
    s->n_mod++;
  }
  fl_modality *md = &s->mod[i];
  if (!strcmp(key, "rate")) {
    double d;
    if (fl__num(v, &d) || !(d >= 1 && d <= 1000) || d != (int)d) return -1;
    md->rate = (int)d;
    return 0;
  }
  if (!strcmp(key, "drifts")) {
    double d;
    if (fl__num(v, &d) || (d != 0 && d != 1)) return -1;
    md->drifts = (int)d;
    return 0;
  }
  if (!strcmp(key, "channels")) {
    free(md->channel);
    md->channel = NULL;
    md->channels = 0;
    const char *p = v;
    while (*p) {
      while (*p == ' ' || *p == '\t') p++;
      const char *e = strchr(p, ',');
      size_t n = e ? (size_t)(e - p) : strlen(p);
      while (n && (p[n - 1] == ' ' || p[n - 1] == '\t')) n--;
      if (!n || n >= FL_NAME_MAX) return -1;
      char one[FL_NAME_MAX];
      memcpy(one, p, n);
      one[n] = 0;
      if (fl_model_spec_add_channel(s, i, one)) return -1;
      if (!e) break;
      p = e + 1;
    }
    return md->channels ? 0 : -1;
  }
  return -2;
}

#define FL__I(sec, k, field)                                                             \
  if (!strcmp(section, sec) && !strcmp(key, k)) {                                        \
    if (fl__num(value, &d) || !(d >= INT_MIN && d <= INT_MAX) || d != (int)d) goto bad; \
    field = (int)d;                                                                      \
    return 1;                                                                            \
  }
#define FL__F(sec, k, field)                                                             \
  if (!strcmp(section, sec) && !strcmp(key, k)) {                                        \
    if (fl__num(value, &d) || !(fabs(d) <= FLT_MAX)) goto bad;                          \
    field = (float)d;                                                                    \
    return 1;                                                                            \
  }
/* With a range, lo <= value <= hi. */
#define FL__IR(sec, k, field, lo, hi)                                                    \
  if (!strcmp(section, sec) && !strcmp(key, k)) {                                        \
    if (fl__num(value, &d) || !(d >= (lo) && d <= (hi)) || d != (int)d) goto bad;       \
    field = (int)d;                                                                      \
    return 1;                                                                            \
  }
#define FL__FR(sec, k, field, lo, hi)                                                    \
  if (!strcmp(section, sec) && !strcmp(key, k)) {                                        \
    if (fl__num(value, &d) || !(d >= (lo) && d <= (hi))) goto bad;                      \
    field = (float)d;                                                                    \
    return 1;                                                                            \
  }

static int fl__handler(void *user, const char *section, const char *key, const char *value) {
  fl__parse *p = user;
  fl_config *c = p->c;
  double d;
  if (p->failed) return 0;
  int owner = fl__owner(section);
  if (!owner) {
    snprintf(p->err, p->errlen, "unknown section [%s]", section);
    p->failed = FL_EINVAL;
    return 0;
  }
  if (!strncmp(section, "modality.", 9)) {
    int r = fl__modality(&c->spec, section + 9, key, value);
    if (r == -2) goto unknown;
    if (r) goto bad;
    return 1;
  }
  /* Sizes are checked at their key, so that the error names its line. */
  if (!strcmp(section, "model") &&
      (!strcmp(key, "window") || !strcmp(key, "kernel") || !strcmp(key, "enc1") ||
       !strcmp(key, "enc2") || !strcmp(key, "hidden") || !strcmp(key, "head_hidden") ||
       !strcmp(key, "embedding")) &&
      (fl__num(value, &d) || d < 1 || (!strcmp(key, "window") && (d < 8 || fmod(d, 4) != 0)) ||
       (!strcmp(key, "kernel") && fmod(d, 2) != 1)))
    goto bad;
  /* The model file is the daemon's to load; a training run ignores it so
   * that one file serves both. */
  if (!strcmp(section, "model") && !strcmp(key, "file")) {
    if (!*value || strlen(value) >= sizeof c->model_file) goto bad;
    snprintf(c->model_file, sizeof c->model_file, "%s", value);
    return 1;
  }
  FL__I("model", "window", c->spec.window)
  FL__I("model", "enc1", c->spec.enc1)
  FL__I("model", "enc2", c->spec.enc2)
  FL__I("model", "kernel", c->spec.kernel)
  FL__I("model", "hidden", c->spec.hidden)
  FL__I("model", "head_hidden", c->spec.head_hidden)
  FL__I("model", "embedding", c->spec.emb)
  FL__F("model", "leak", c->spec.leak)
  FL__F("model", "target_encoder", c->spec.target[FL_MOD_ENC])
  FL__F("model", "target_decoder", c->spec.target[FL_MOD_DEC])
  FL__F("model", "target_block", c->spec.target[FL_MOD_BLOCK])
  FL__F("model", "target_head", c->spec.target[FL_MOD_HEAD])
  FL__I("train", "seed", c->train.seed)
  FL__I("train", "batch", c->train.batch)
  FL__I("train", "stride", c->train.stride)
  FL__F("train", "val_fraction", c->train.val_fraction)
  FL__F("train", "clamp", c->train.clamp)
  FL__I("train", "patience", c->train.patience)
  FL__I("train", "epochs1", c->train.epochs1)
  FL__F("train", "lr1", c->train.lr1)
  FL__I("train", "epochs2", c->train.epochs2)
  FL__F("train", "lr2", c->train.lr2)
  FL__F("train", "lr_decoder2", c->train.lr_dec2)
  FL__F("train", "p_clean", c->train.p_clean)
  FL__F("train", "temperature", c->train.tau)
  FL__F("train", "w_contrast", c->train.w_contrast)
  FL__F("train", "clip_encoder", c->train.clip[FL_MOD_ENC])
  FL__F("train", "clip_decoder", c->train.clip[FL_MOD_DEC])
  FL__F("train", "clip_block", c->train.clip[FL_MOD_BLOCK])
  FL__F("train", "clip_head", c->train.clip[FL_MOD_HEAD])
  if (!strcmp(section, "train") && !strcmp(key, "faults")) {
    if (fl__faults(&c->train, value)) goto bad;
    return 1;
  }
  FL__I("detect", "tail", c->detect.tail)
  FL__F("detect", "quantile", c->detect.quantile)
  FL__F("detect", "margin", c->detect.margin)
  FL__F("detect", "channel_quantile", c->detect.chan_quantile)
  FL__F("detect", "embedding_weight", c->detect.w_emb)
  FL__F("detect", "min_spread", c->detect.min_spread)
  FL__F("detect", "variance_weight", c->detect.w_var)
  FL__F("detect", "correction_weight", c->detect.w_corr)
  FL__F("detect", "noise_ratio_weight", c->detect.w_ratio)
  FL__F("detect", "noise_rise_weight", c->detect.w_rise)
  FL__F("detect", "baseline_weight", c->detect.w_base)
  FL__I("detect", "baseline_span", c->detect.base_span)
  FL__I("detect", "agree", c->detect.agree)
  FL__I("detect", "calibrate_all", c->detect.calibrate_all)
  if (!strcmp(section, "detect") && !strcmp(key, "hysteresis_on")) c->on_given = 1;
  if (!strcmp(section, "detect") && !strcmp(key, "hysteresis_off")) c->off_given = 1;
  FL__IR("detect", "hysteresis_on", c->detect.on, 1, 1000)
  FL__IR("detect", "hysteresis_off", c->detect.off, 1, 1000)
  FL__IR("detect", "settle", c->detect.settle, 0, 100000000)
  FL__IR("tune", "steps", c->tune.steps, 1, 100000)
  FL__FR("tune", "lr", c->tune.lr, 1e-8, 1.0)
  FL__FR("tune", "margin", c->tune.margin, 0.0, 10.0)
  FL__IR("tune", "min_windows", c->tune.min_windows, 8, 1000000)
  FL__FR("tune", "val_fraction", c->tune.val_fraction, 0.05, 0.9)
  FL__FR("tune", "norm_rate", c->tune.norm_rate, 0.0, 1.0)
  FL__FR("tune", "norm_max", c->tune.norm_max, 0.0, 10.0)
  FL__IR("tune", "norm_parts", c->tune.norm_parts, 1, 16)
  FL__FR("tune", "norm_band", c->tune.norm_band, 0.0, 10.0)
  if (!strcmp(section, "tune") && !strcmp(key, "recalibrate")) {
    if (fl_config_bool(value, &c->tune.recalibrate)) goto bad;
    return 1;
  }
  if (owner & FL__APP) {
    /* Not the library's key: the program's, or left to it. */
    if (!p->fn) return 1;
    char why[256] = "";
    int r = p->fn(p->user, section, key, value, why, sizeof why);
    if (r > 0) return 1;
    if (r < 0 && why[0]) {
      snprintf(p->err, p->errlen, "[%s] %s = \"%s\": %s", section, key, value, why);
      p->failed = FL_EINVAL;
      return 0;
    }
    if (r < 0) goto bad;
  }
unknown:
  snprintf(p->err, p->errlen, "unknown key \"%s\" in section [%s]", key, section);
  p->failed = FL_EINVAL;
  return 0;
bad:
  snprintf(p->err, p->errlen, "[%s] %s = \"%s\" is not a valid value", section, key, value);
  p->failed = FL_EINVAL;
  return 0;
}

/* The 1-based line of the header [section] in text, or 0. */
static int fl__section_line(const char *text, const char *section) {
  int line = 1;
  size_t n = strlen(section);
  for (const char *p = text; p && *p; line++) {
    while (*p == ' ' || *p == '\t') p++;
    if (*p == '[' && !strncmp(p + 1, section, n) && p[1 + n] == ']') return line;
    p = strchr(p, '\n');
    if (p) p++;
  }
  return 0;
}

static int fl__finish(fl_config *c, fl__parse *p, int rc, char *err, size_t errlen,
                      const char *text) {
  if (p->failed) {
    /* inih returns the line of the first error, which is the handler's. */
    char msg[400];
    snprintf(msg, sizeof msg, "%s", p->err);
    snprintf(err, errlen, "line %d: %s", rc, msg);
    return p->failed;
  }
  if (rc > 0) {
    snprintf(err, errlen, "line %d: not a section, key = value or comment", rc);
    return FL_EFORMAT;
  }
  if (rc < 0) {
    snprintf(err, errlen, "cannot read the file");
    return FL_EIO;
  }
  for (int i = 0; i < c->spec.n_mod; i++)
    if (c->spec.mod[i].channels == 0) {
      char sec[FL_NAME_MAX + 16];
      snprintf(sec, sizeof sec, "modality.%s", c->spec.mod[i].name);
      snprintf(err, errlen, "line %d: [%s] has no channels",
               text ? fl__section_line(text, sec) : 0, sec);
      return FL_EINVAL;
    }
  if (c->detect.tail <= 0 || c->detect.tail > c->spec.window || c->train.batch <= 0 ||
      c->detect.base_span < 1 || (c->detect.agree != 0 && c->detect.agree != 1) ||
      !(c->detect.quantile > 0 && c->detect.quantile <= 1) || c->detect.on < 1 ||
      c->detect.off < 1) {
    snprintf(err, errlen, "detect.tail, baseline_span (>= 1), agree (0 or 1), train.batch, detect.quantile or hysteresis out of range");
    return FL_EINVAL;
  }
  if (c->spec.n_mod && fl_model_spec_check(&c->spec)) {
    snprintf(err, errlen, "[model] sizes are invalid (window must be a multiple of 4 >= 8, "
                          "kernel odd, sizes positive)");
    return FL_EINVAL;
  }
  return 0;
}

int fl_config_load(fl_config *c, const char *path, char *err, size_t errlen) {
  return fl_config_load_with(c, path, NULL, NULL, err, errlen);
}

int fl_config_load_with(fl_config *c, const char *path, fl_config_key_fn fn, void *user,
                        char *err, size_t errlen) {
  char buf[512], dummy[8];
  if (!err) { err = dummy; errlen = sizeof dummy; }
  fl__parse p = {c, buf, sizeof buf, 0, fn, user};
  FILE *f = fopen(path, "r");
  if (!f) {
    snprintf(err, errlen, "%s: %s", path, strerror(errno));
    return FL_EIO;
  }
  int rc = ini_parse_file(f, fl__handler, &p);
  /* The text again, for errors found after parsing that name a line. */
  char *text = NULL;
  long size = fseek(f, 0, SEEK_END) == 0 ? ftell(f) : -1;
  if (size >= 0 && fseek(f, 0, SEEK_SET) == 0 && (text = malloc((size_t)size + 1))) {
    size_t got = fread(text, 1, (size_t)size, f);
    text[got] = 0;
  }
  fclose(f);
  rc = fl__finish(c, &p, rc, buf, sizeof buf, text);
  free(text);
  if (rc) snprintf(err, errlen, "%s: %s", path, buf);
  return rc;
}

int fl_config_parse(fl_config *c, const char *text, char *err, size_t errlen) {
  char dummy[8];
  if (!err) { err = dummy; errlen = sizeof dummy; }
  fl__parse p = {c, err, errlen, 0, NULL, NULL};
  int rc = ini_parse_string(text, fl__handler, &p);
  return fl__finish(c, &p, rc, err, errlen, text);
}
