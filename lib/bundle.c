/* faultline bundle: see include/faultline/bundle.h for the contracts. */
#include "faultline/bundle.h"

#include <limits.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include <jansson.h>

#include "faultline/error.h"
#include "faultline/safetensors.h"

#define FL__FORMAT "faultline-model-1"

static const char *fl__target_key[FL_MOD_COUNT] = {"encoder", "decoder", "block", "head"};

static char *fl__spec_json(const fl_model_spec *s) {
  json_t *mods = json_array(), *targets = json_object();
  for (int i = 0; i < s->n_mod; i++) {
    json_t *ch = json_array();
    for (int c = 0; c < s->mod[i].channels; c++)
      json_array_append_new(ch, json_string(s->mod[i].channel[c]));
    json_array_append_new(mods, json_pack("{s:s, s:i, s:i, s:o}", "name", s->mod[i].name,
                                          "rate", s->mod[i].rate, "drifts", s->mod[i].drifts,
                                          "channels", ch));
  }
  for (int k = 0; k < FL_MOD_COUNT; k++)
    json_object_set_new(targets, fl__target_key[k], json_real(s->target[k]));
  json_t *o = json_pack("{s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:f, s:o, s:o}", "window",
                        s->window, "enc1", s->enc1, "enc2", s->enc2, "kernel", s->kernel,
                        "hidden", s->hidden, "head_hidden", s->head_hidden, "emb", s->emb,
                        "leak", (double)s->leak, "targets", targets, "modalities", mods);
  char *str = o ? json_dumps(o, JSON_COMPACT) : NULL;
  json_decref(o);
  return str;
}

static int fl__spec_parse(const char *text, fl_model_spec *s, char *err, size_t errlen) {
  json_error_t je;
  json_t *o = json_loads(text, 0, &je), *mods = NULL, *targets = NULL;
  double leak = 0;
  fl_model_spec_defaults(s);
  if (!o || json_unpack_ex(o, &je, 0, "{s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:F, s:o, s:o}",
                           "window", &s->window, "enc1", &s->enc1, "enc2", &s->enc2,
                           "kernel", &s->kernel, "hidden", &s->hidden, "head_hidden",
                           &s->head_hidden, "emb", &s->emb, "leak", &leak, "targets",
                           &targets, "modalities", &mods) ||
      !json_is_array(mods) || !json_is_object(targets)) {
    snprintf(err, errlen, "model spec metadata is malformed: %s", je.text);
    json_decref(o);
    return FL_EFORMAT;
  }
  s->leak = (float)leak;
  for (int k = 0; k < FL_MOD_COUNT; k++) {
    json_t *t = json_object_get(targets, fl__target_key[k]);
    if (json_is_number(t)) s->target[k] = (float)json_number_value(t);
  }
  size_t i;
  json_t *md;
  json_array_foreach(mods, i, md) {
    const char *name;
    int rate;
    json_t *ch;
    if (json_unpack(md, "{s:s, s:i, s:o}", "name", &name, "rate", &rate, "channels", &ch) ||
        !json_is_array(ch) || json_array_size(ch) == 0 || json_array_size(ch) > INT_MAX) {
      snprintf(err, errlen, "modality %zu in the model spec is malformed", i);
      json_decref(o);
      fl_model_spec_free(s);
      return FL_EFORMAT;
    }
    size_t nc = json_array_size(ch);
    const char **names = malloc(sizeof *names * nc);
    int bad = !names;
    for (size_t c = 0; !bad && c < nc; c++) {
      names[c] = json_string_value(json_array_get(ch, c));
      if (!names[c]) {
        snprintf(err, errlen, "modality %s: channel %zu is not a string", name, c);
        bad = 2;
      }
    }
    if (!bad && fl_model_spec_add(s, name, rate, (int)nc, names)) {
      snprintf(err, errlen, "modality %s in the model spec is invalid", name);
      bad = 2;
    }
    free(names);
    if (bad) {
      if (bad == 1) snprintf(err, errlen, "out of memory reading the model spec");
      json_decref(o);
      fl_model_spec_free(s);
      return bad == 1 ? FL_ENOMEM : FL_EFORMAT;
    }
    json_t *dr = json_object_get(md, "drifts");
    s->mod[s->n_mod - 1].drifts = json_is_integer(dr) && json_integer_value(dr) == 1;
  }
  json_decref(o);
  if (fl_model_spec_check(s)) {
    snprintf(err, errlen, "model spec is invalid (sizes, window or modalities)");
    fl_model_spec_free(s);
    return FL_EFORMAT;
  }
  return 0;
}

/* The PyTorch shape of a layer's weight. */
static int fl__wshape(const fl_layer *l, int64_t shape[3]) {
  if (l->kind == FL_LAYER_DENSE) {
    shape[0] = l->nout;
    shape[1] = l->nin;
    return 2;
  }
  shape[0] = l->kind == FL_LAYER_CONV ? l->conv.cout : l->conv.cin;
  shape[1] = l->kind == FL_LAYER_CONV ? l->conv.cin : l->conv.cout;
  shape[2] = l->conv.k;
  return 3;
}

int fl_bundle_save(const fl_bundle *b, const char *path, char *err, size_t errlen) {
  char dummy[8];
  if (!err) { err = dummy; errlen = sizeof dummy; }
  if (!b || !b->model || !path) return FL_EINVAL;
  fl_model *m = b->model;
  fl_st *st = fl_st_new();
  if (!st) return FL_ENOMEM;
  int rc = 0;
  char name[FL_LAYER_NAME_MAX + 16];
  for (int i = 0; i < fl_model_layer_count(m) && !rc; i++) {
    const fl_layer *l = fl_model_layer(m, i);
    int64_t shape[3], bshape[1] = {(int64_t)l->nb};
    int nd = fl__wshape(l, shape);
    snprintf(name, sizeof name, "%s.weight", l->name);
    rc = fl_st_add(st, name, l->w, shape, nd);
    snprintf(name, sizeof name, "%s.bias", l->name);
    if (!rc) rc = fl_st_add(st, name, l->b, bshape, 1);
  }
  int64_t nch[1] = {fl_model_channels(m)}, ne[1] = {b->calib.emb};
  if (!rc) rc = fl_st_add(st, "norm.mean", fl_model_mean(m), nch, 1);
  if (!rc) rc = fl_st_add(st, "norm.std", fl_model_std(m), nch, 1);
  if (!rc) rc = fl_st_add(st, "calib.res_mu", b->calib.res_mu, nch, 1);
  if (!rc) rc = fl_st_add(st, "calib.res_sd", b->calib.res_sd, nch, 1);
  if (!rc) rc = fl_st_add(st, "calib.var_mu", b->calib.var_mu, nch, 1);
  if (!rc) rc = fl_st_add(st, "calib.var_sd", b->calib.var_sd, nch, 1);
  if (!rc) rc = fl_st_add(st, "calib.cor_mu", b->calib.cor_mu, nch, 1);
  if (!rc) rc = fl_st_add(st, "calib.cor_sd", b->calib.cor_sd, nch, 1);
  if (!rc) rc = fl_st_add(st, "calib.bas_mu", b->calib.bas_mu, nch, 1);
  if (!rc) rc = fl_st_add(st, "calib.bas_sd", b->calib.bas_sd, nch, 1);
  if (!rc) rc = fl_st_add(st, "calib.bas_v0", b->calib.bas_v0, nch, 1);
  if (!rc) rc = fl_st_add(st, "calib.rat_mu", b->calib.rat_mu, nch, 1);
  if (!rc) rc = fl_st_add(st, "calib.rat_sd", b->calib.rat_sd, nch, 1);
  if (!rc) rc = fl_st_add(st, "calib.centroid", b->calib.centroid, ne, 1);
  if (!rc && b->est.on && b->est.nch == nch[0]) {
    int64_t ww[2] = {nch[0], nch[0]}, wv[2] = {nch[0], FL_ESTIMATE_LAGS};
    rc = fl_st_add(st, "estimate.w", b->est.w, ww, 2);
    if (!rc) rc = fl_st_add(st, "estimate.v", b->est.v, wv, 2);
    if (!rc) rc = fl_st_add(st, "estimate.vm", b->est.vm, nch, 1);
    if (!rc) rc = fl_st_add(st, "estimate.vmw", b->est.vmw, nch, 1);
    if (!rc) rc = fl_st_add(st, "estimate.alpha", b->est.alpha, nch, 1);
    if (!rc && b->est.nmem > 0) {
      int64_t wm[2] = {b->est.nmem, nch[0]};
      rc = fl_st_add(st, "estimate.mem", b->est.mem, wm, 2);
      if (!rc) rc = fl_st_add(st, "estimate.h", b->est.h, nch, 1);
      if (!rc) rc = fl_st_add(st, "estimate.va", b->est.va, nch, 1);
    }
  }
  char *spec = fl__spec_json(fl_model_spec_of(m));
  json_t *det = json_pack("{s:i, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:i, s:i, s:i, s:i, s:f, s:f, s:i, s:i, s:f}", "tail",
                          b->calib.tail, "threshold", (double)b->calib.threshold,
                          "chan_threshold", (double)b->calib.chan_threshold, "emb_mu",
                          (double)b->calib.emb_mu, "emb_sd", (double)b->calib.emb_sd,
                          "w_emb", (double)b->calib.w_emb, "w_var", (double)b->calib.w_var,
                          "w_corr", (double)b->calib.w_corr,
                          "w_ratio", (double)b->calib.w_ratio,
                          "w_base", (double)b->calib.w_base, "w_rise", (double)b->calib.w_rise,
                          "base_span", b->calib.base_span, "agree", b->calib.agree,
                          "base_drift", b->calib.base_drift, "settle", b->calib.settle,
                          "quantile",
                          (double)b->detect.quantile, "margin", (double)b->detect.margin,
                          "on", b->detect.on, "off", b->detect.off, "clamp",
                          (double)b->clamp);
  char *dets = det ? json_dumps(det, JSON_COMPACT) : NULL;
  json_decref(det);
  if (!rc && (!spec || !dets)) rc = FL_ENOMEM;
  if (!rc) rc = fl_st_set_meta(st, "format", "pt");
  if (!rc) rc = fl_st_set_meta(st, "faultline.format", FL__FORMAT);
  if (!rc) rc = fl_st_set_meta(st, "faultline.spec", spec);
  if (!rc) rc = fl_st_set_meta(st, "faultline.detect", dets);
  if (!rc) rc = fl_st_set_meta(st, "faultline.lineage", b->lineage[0] ? b->lineage : "{}");
  free(spec);
  free(dets);
  if (rc) snprintf(err, errlen, "cannot assemble the model file: %s", fl_strerror(rc));
  else rc = fl_st_write(st, path, err, errlen);
  fl_st_free(st);
  return rc;
}

static int fl__get(const fl_st *st, const char *name, float *dst, int64_t n, char *err,
                   size_t errlen) {
  int rc = fl_st_get(st, name, dst, &n, 1, err, errlen);
  if (rc == FL_ENOTFOUND) snprintf(err, errlen, "tensor \"%s\" is missing", name);
  return rc;
}

int fl_bundle_load(fl_bundle *b, const char *path, char *err, size_t errlen) {
  char dummy[8];
  if (!err) { err = dummy; errlen = sizeof dummy; }
  if (!b || !path) return FL_EINVAL;
  memset(b, 0, sizeof *b);
  fl_st *st = NULL;
  int rc = fl_st_read(path, &st, err, errlen);
  if (rc) return rc;
  const char *fmt = fl_st_meta(st, "faultline.format");
  const char *spec_s = fl_st_meta(st, "faultline.spec");
  const char *det_s = fl_st_meta(st, "faultline.detect");
  fl_model_spec spec = {0};
  if (!fmt || strcmp(fmt, FL__FORMAT) || !spec_s || !det_s) {
    snprintf(err, errlen, "%s is a safetensors file but not a faultline model (%s)", path,
             !fmt ? "no faultline.format metadata" : "unknown format or missing metadata");
    rc = FL_EMISMATCH;
    goto fail;
  }
  if ((rc = fl__spec_parse(spec_s, &spec, err, errlen))) goto fail;
  rc = fl_model_create(&b->model, &spec, 0);
  fl_model_spec_free(&spec);
  if (rc) {
    snprintf(err, errlen, "cannot build the model its spec describes: %s", fl_strerror(rc));
    goto fail;
  }
  fl_model *m = b->model;
  char name[FL_LAYER_NAME_MAX + 16];
  for (int i = 0; i < fl_model_layer_count(m); i++) {
    fl_layer *l = fl_model_layer(m, i);
    int64_t shape[3];
    int nd = fl__wshape(l, shape);
    snprintf(name, sizeof name, "%s.weight", l->name);
    if ((rc = fl_st_get(st, name, l->w, shape, nd, err, errlen))) {
      if (rc == FL_ENOTFOUND) snprintf(err, errlen, "tensor \"%s\" is missing", name);
      goto fail;
    }
    snprintf(name, sizeof name, "%s.bias", l->name);
    if ((rc = fl__get(st, name, l->b, (int64_t)l->nb, err, errlen))) goto fail;
  }
  int nch = fl_model_channels(m);
  fl_calib *cal = &b->calib;
  if ((rc = fl_calib_alloc(cal, nch)) || (rc = fl_estimator_alloc(&b->est, nch))) {
    snprintf(err, errlen, "out of memory for a model of %d channels", nch);
    goto fail;
  }
  cal->emb = spec.emb;
  if (spec.emb > 256) { rc = FL_EFORMAT; snprintf(err, errlen, "embedding too large"); goto fail; }
  if ((rc = fl__get(st, "norm.mean", fl_model_mean(m), nch, err, errlen)) ||
      (rc = fl__get(st, "norm.std", fl_model_std(m), nch, err, errlen)) ||
      (rc = fl__get(st, "calib.res_mu", cal->res_mu, nch, err, errlen)) ||
      (rc = fl__get(st, "calib.res_sd", cal->res_sd, nch, err, errlen)) ||
      (rc = fl__get(st, "calib.var_mu", cal->var_mu, nch, err, errlen)) ||
      (rc = fl__get(st, "calib.var_sd", cal->var_sd, nch, err, errlen)) ||
      (rc = fl__get(st, "calib.cor_mu", cal->cor_mu, nch, err, errlen)) ||
      (rc = fl__get(st, "calib.cor_sd", cal->cor_sd, nch, err, errlen)) ||
      (rc = fl__get(st, "calib.centroid", cal->centroid, spec.emb, err, errlen)))
    goto fail;
  /* Models from before the baseline and noise-ratio features lack their
   * statistics; they keep working with those features off. */
  int has_lr = 1;
  static const char *const lr[5] = {"calib.bas_mu", "calib.bas_sd", "calib.bas_v0",
                                    "calib.rat_mu", "calib.rat_sd"};
  float *lrd[5] = {cal->bas_mu, cal->bas_sd, cal->bas_v0, cal->rat_mu, cal->rat_sd};
  for (int k = 0; k < 5 && has_lr; k++) {
    rc = fl__get(st, lr[k], lrd[k], nch, err, errlen);
    if (rc == FL_ENOTFOUND) has_lr = 0;
    else if (rc) goto fail;
  }
  /* Models from before the estimator correct with the network's estimate. */
  int64_t ew[2] = {nch, nch}, ev[2] = {nch, FL_ESTIMATE_LAGS};
  rc = fl_st_get(st, "estimate.w", b->est.w, ew, 2, err, errlen);
  if (!rc) rc = fl_st_get(st, "estimate.v", b->est.v, ev, 2, err, errlen);
  if (!rc) rc = fl__get(st, "estimate.vm", b->est.vm, nch, err, errlen);
  if (!rc) {
    b->est.on = 1;
    b->est.nch = nch;
    /* Models from before the whole-window variance use vm for both. */
    rc = fl__get(st, "estimate.vmw", b->est.vmw, nch, err, errlen);
    if (rc == FL_ENOTFOUND) memcpy(b->est.vmw, b->est.vm, sizeof(float) * nch);
    else if (rc) goto fail;
    /* ... and anchor on the last trusted tick. */
    rc = fl__get(st, "estimate.alpha", b->est.alpha, nch, err, errlen);
    if (rc && rc != FL_ENOTFOUND) goto fail;
    for (int c = 0; c < nch; c++)
      if (rc || !(b->est.alpha[c] > 0.0f && b->est.alpha[c] <= 1.0f)) b->est.alpha[c] = 1.0f;
    rc = 0;
    /* Models from before the kernel estimate fuse without it. */
    int64_t ms[FL_ST_MAX_DIMS];
    int md = 0;
    if (!fl_st_shape(st, "estimate.mem", ms, &md)) {
      if (md != 2 || ms[1] != nch || ms[0] < 1 || ms[0] > FL_ESTIMATE_MEM) {
        snprintf(err, errlen, "tensor \"estimate.mem\" is not (1..%d, %d)", FL_ESTIMATE_MEM,
                 nch);
        rc = FL_EFORMAT;
        goto fail;
      }
      if ((rc = fl_estimator_alloc_memory(&b->est, (int)ms[0]))) {
        snprintf(err, errlen, "out of memory for the estimator's memory");
        goto fail;
      }
      if ((rc = fl_st_get(st, "estimate.mem", b->est.mem, ms, 2, err, errlen)) ||
          (rc = fl__get(st, "estimate.h", b->est.h, nch, err, errlen)) ||
          (rc = fl__get(st, "estimate.va", b->est.va, nch, err, errlen)))
        goto fail;
      for (int c = 0; c < nch; c++)
        if (!(b->est.h[c] >= 0.0f) || !(b->est.va[c] >= 0.0f)) {
          snprintf(err, errlen, "estimate.h or estimate.va[%d] is not a number >= 0", c);
          rc = FL_EFORMAT;
          goto fail;
        }
      if ((rc = fl_check_finite(b->est.mem, (size_t)b->est.nmem * nch))) {
        snprintf(err, errlen, "tensor \"estimate.mem\" holds a value that is not finite");
        goto fail;
      }
    }
  }
  if (rc && rc != FL_ENOTFOUND) goto fail;
  rc = 0;
  for (int c = 0; c < nch; c++)
    if (!(fl_model_std(m)[c] > 0.0f)) {
      snprintf(err, errlen, "norm.std[%d] is not positive", c);
      rc = FL_EFORMAT;
      goto fail;
    }
  json_error_t je;
  json_t *d = json_loads(det_s, 0, &je);
  double thr, cthr, emu, esd, wemb, wvar, wcorr, wbase = 0, wrat = 0, wrise = 0, q, margin, clamp;
  /* Models written before the key pass nothing through: their behaviour stays. */
  int bspan = 300, agree = 0, bdrift = 0, settle = 0;
  fl_detect_defaults(&b->detect);
  if (!d || json_unpack_ex(d, &je, 0, "{s:i, s:F, s:F, s:F, s:F, s:F, s:F, s:F, s?F, s?F, s?F, s?i, s?i, s?i, s?i, s:F, s:F, s:i, s:i, s:F}",
                           "tail", &cal->tail, "threshold", &thr, "chan_threshold", &cthr,
                           "emb_mu", &emu, "emb_sd", &esd, "w_emb", &wemb, "w_var", &wvar,
                           "w_corr", &wcorr, "w_ratio", &wrat, "w_base", &wbase,
                           "w_rise", &wrise,
                           "base_span", &bspan, "agree", &agree, "base_drift", &bdrift,
                           "settle", &settle, "quantile", &q,
                           "margin", &margin, "on", &b->detect.on, "off", &b->detect.off,
                           "clamp", &clamp)) {
    snprintf(err, errlen, "detector metadata is malformed: %s", je.text);
    json_decref(d);
    rc = FL_EFORMAT;
    goto fail;
  }
  json_decref(d);
  cal->threshold = (float)thr;
  cal->chan_threshold = (float)cthr;
  cal->emb_mu = (float)emu;
  cal->emb_sd = (float)esd;
  cal->w_emb = (float)wemb;
  cal->w_var = (float)wvar;
  cal->w_corr = (float)wcorr;
  b->detect.w_corr = (float)wcorr;
  if (!has_lr) wbase = wrat = 0.0;
  cal->w_base = b->detect.w_base = (float)wbase;
  cal->w_ratio = b->detect.w_ratio = (float)wrat;
  cal->w_rise = b->detect.w_rise = (float)wrise;
  cal->base_span = b->detect.base_span = bspan;
  cal->agree = b->detect.agree = agree ? 1 : 0;
  cal->base_drift = bdrift ? 1 : 0;
  cal->settle = b->detect.settle = settle;
  b->detect.w_var = (float)wvar;
  b->detect.tail = cal->tail;
  b->detect.quantile = (float)q;
  b->detect.margin = (float)margin;
  b->detect.w_emb = (float)wemb;
  b->clamp = (float)clamp;
  if (cal->tail <= 0 || cal->tail > spec.window || !(b->clamp > 0.0f)) {
    snprintf(err, errlen, "detector metadata is out of range (tail %d, clamp %g)", cal->tail,
             (double)b->clamp);
    rc = FL_EFORMAT;
    goto fail;
  }
  const char *lin = fl_st_meta(st, "faultline.lineage");
  snprintf(b->lineage, sizeof b->lineage, "%s", lin ? lin : "{}");
  fl_st_free(st);
  return 0;
fail:
  fl_st_free(st);
  fl_bundle_free(b);
  return rc;
}

void fl_bundle_free(fl_bundle *b) {
  if (!b) return;
  fl_model_free(b->model);
  fl_calib_free(&b->calib);
  fl_estimator_free(&b->est);
  memset(b, 0, sizeof *b);
}
