/* faultlined engine: a loaded model bundle and its scratch.  See fld.h. */
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "faultline/error.h"
#include "fld.h"

/* FNV-1a over the file: a model's identity in reports and metrics, so that
 * a consumer can tell which weights judged a window. */
static int fld__hash_file(const char *path, char out[17]) {
  FILE *f = fopen(path, "rb");
  if (!f) return FL_EIO;
  uint64_t h = 1469598103934665603ULL;
  unsigned char buf[65536];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, f)) > 0)
    for (size_t i = 0; i < n; i++) {
      h ^= buf[i];
      h *= 1099511628211ULL;
    }
  int bad = ferror(f);
  fclose(f);
  if (bad) return FL_EIO;
  snprintf(out, 17, "%016llx", (unsigned long long)h);
  return 0;
}

/* [detect] keys against the model.  Each is one of:
 *   FLD__LOAD   takes effect at load (handled in fld_engine_load)
 *   FLD__MODEL  recorded in the model's calibration: the file's value must
 *               equal it, since only `faultline calibrate` can apply another
 *   FLD__CALIB  read by `faultline calibrate` alone and not recorded: the
 *               model's value is unknown, so a value other than the default
 *               is logged, not refused */
enum { FLD__LOAD, FLD__MODEL, FLD__CALIB };
typedef struct {
  const char *key;
  int kind;
  size_t off;
  int is_int;
} fld__detect_key;
#define FLD__DF(k, f, kind) {k, kind, offsetof(fl_detect_config, f), 0}
#define FLD__DI(k, f, kind) {k, kind, offsetof(fl_detect_config, f), 1}
static const fld__detect_key fld__detect_keys[] = {
    FLD__DI("hysteresis_on", on, FLD__LOAD),
    FLD__DI("hysteresis_off", off, FLD__LOAD),
    FLD__DF("margin", margin, FLD__LOAD),
    FLD__DI("tail", tail, FLD__MODEL),
    FLD__DF("quantile", quantile, FLD__MODEL),
    FLD__DF("embedding_weight", w_emb, FLD__MODEL),
    FLD__DF("variance_weight", w_var, FLD__MODEL),
    FLD__DF("correction_weight", w_corr, FLD__MODEL),
    FLD__DF("noise_ratio_weight", w_ratio, FLD__MODEL),
    FLD__DF("noise_rise_weight", w_rise, FLD__MODEL),
    FLD__DF("baseline_weight", w_base, FLD__MODEL),
    FLD__DI("baseline_span", base_span, FLD__MODEL),
    FLD__DI("agree", agree, FLD__MODEL),
    FLD__DF("channel_quantile", chan_quantile, FLD__CALIB),
    FLD__DF("min_spread", min_spread, FLD__CALIB),
    FLD__DI("calibrate_all", calibrate_all, FLD__CALIB),
};

static double fld__detect_value(const fl_detect_config *d, const fld__detect_key *k) {
  const char *p = (const char *)d + k->off;
  return k->is_int ? (double)*(const int *)p : (double)*(const float *)p;
}

static int fld__same(double a, double b) { return fabs(a - b) <= 1e-6 * fmax(1.0, fabs(b)); }

/* The file against the model: its [modality.*] and [model] window describe
 * the layout the model takes, and its [detect] keys either apply now or
 * agree with the model's calibration (fld__detect_keys). */
static int fld__check_config(const fld_engine *e, const fld_config *cfg, const char *path,
                             char *err, size_t errlen) {
  const fl_model_spec *spec = fl_model_spec_of(e->b.model);
  if (cfg->lib.spec.n_mod > 0) {
    fl_model_spec mine = cfg->lib.spec;
    char why[300];
    if (!cfg->window_given) mine.window = spec->window;
    if (!fl_model_spec_compatible(&mine, spec, why, sizeof why)) {
      snprintf(err, errlen, "the configuration's [modality.*] and [model] window disagree with "
               "the model %s: %s (the configuration against the model); train or point "
               "[model] file at a model of this layout, or describe the model's", path, why);
      return FL_EINVAL;
    }
  }
  fl_detect_config defaults;
  fl_detect_defaults(&defaults);
  for (int g = 0; g < cfg->n_detect_given; g++)
    for (size_t i = 0; i < sizeof fld__detect_keys / sizeof *fld__detect_keys; i++) {
      const fld__detect_key *k = &fld__detect_keys[i];
      if (strcmp(k->key, cfg->detect_given[g])) continue;
      double mine = fld__detect_value(&cfg->lib.detect, k);
      if (k->kind == FLD__MODEL) {
        double model = fld__detect_value(&e->b.detect, k);
        if (!fld__same(mine, model)) {
          snprintf(err, errlen, "[detect] %s = %g differs from the model's %g (%s): the "
                   "model's calibration sets it; run `faultline calibrate --config` with this "
                   "file and serve its output, or remove the key", k->key, mine, model, path);
          return FL_EINVAL;
        }
      } else if (k->kind == FLD__CALIB && !fld__same(mine, fld__detect_value(&defaults, k))) {
        fld_log(FLD_NOTICE, "[detect] %s = %g is read by `faultline calibrate` only: the model "
                "%s keeps the thresholds it was calibrated with", k->key, mine, path);
      }
    }
  return 0;
}

void fld_engine_free(fld_engine *e) {
  if (!e) return;
  for (int k = 0; e->win && k < e->batch; k++)
    for (int i = 0; i < fl_model_spec_of(e->b.model)->n_mod; i++) {
      free(e->win[k].raw[i]);
      free(e->win[k].corrected[i]);
      free(e->win[k].sigma[i]);
    }
  free(e->win);
  free(e->by_mod);
  free(e->mr);
  free(e->mrp);
  free(e->resid);
  free(e->cscore);
  free(e->cfaulty);
  free(e->rep);
  free(e->layer_name);
  free(e->layer_norm);
  free(e->layer_target);
  fl_ctx_free(e->ctx);
  fl_bundle_free(&e->b);
  free(e);
}

int fld_engine_load(fld_engine **out, const char *path, const fld_config *cfg, char *err,
                    size_t errlen) {
  *out = NULL;
  fld_engine *e = calloc(1, sizeof *e);
  if (!e) return FL_ENOMEM;
  char msg[400];
  int rc = fl_bundle_load(&e->b, path, msg, sizeof msg);
  if (rc) {
    /* The bundle's message names the file already. */
    snprintf(err, errlen, "%s", msg);
    free(e);
    return rc;
  }
  if ((rc = fld__hash_file(path, e->version))) {
    snprintf(err, errlen, "%s: cannot read", path);
    goto fail;
  }
  if ((rc = fld__check_config(e, cfg, path, err, errlen))) goto fail;
  const fl_model_spec *spec = fl_model_spec_of(e->b.model);
  if (cfg->stride > spec->window) {
    snprintf(err, errlen, "[output] stride %d exceeds the model's window of %d ticks",
             cfg->stride, spec->window);
    rc = FL_EINVAL;
    goto fail;
  }
  size_t per_window;
  e->batch = fl_pipeline_batch_for(e->b.model, cfg->batch, cfg->batch_memory * 1048576.0,
                                   &per_window);
  if (e->batch < cfg->batch)
    fld_log(FLD_NOTICE, "[output] batch %d cut to %d: a window of this model holds %.2f MB "
            "of scratch, [output] batch_memory is %g MB", cfg->batch, e->batch,
            (double)per_window / 1048576.0, cfg->batch_memory);
  rc = FL_ENOMEM;
  if (!(e->win = fl_pipeline_windows_new(spec, e->batch)) ||
      !(e->by_mod = calloc((size_t)spec->n_mod, sizeof *e->by_mod)) ||
      !(e->mr = calloc((size_t)spec->n_mod, sizeof *e->mr)) ||
      !(e->mrp = calloc((size_t)spec->n_mod, sizeof *e->mrp)) ||
      !(e->resid = calloc((size_t)fl_model_channels(e->b.model), sizeof *e->resid)) ||
      !(e->cscore = calloc((size_t)fl_model_channels(e->b.model), sizeof *e->cscore)) ||
      !(e->cfaulty = calloc((size_t)fl_model_channels(e->b.model), sizeof *e->cfaulty)))
    goto nomem;
  size_t maxct = 0;
  for (int i = 0; i < spec->n_mod; i++) {
    size_t ct = (size_t)spec->mod[i].channels * spec->window * spec->mod[i].rate;
    if (ct > maxct) maxct = ct;
    for (int k = 0; k < e->batch; k++)
      if (!(e->win[k].raw[i] = malloc(sizeof(float) * ct)) ||
          !(e->win[k].corrected[i] = malloc(sizeof(float) * ct)) ||
          !(e->win[k].sigma[i] = malloc(sizeof(float) * ct)))
        goto nomem;
  }
  e->maxct = maxct;
  if (!(e->rep = malloc(sizeof(float) * maxct * 2 * (size_t)spec->n_mod))) goto nomem;
  if ((rc = fl_ctx_create_infer(&e->ctx, e->b.model, e->batch))) goto nomem;
  /* Spectral norms are a property of the weights: measure them once per
   * load, not per scrape. */
  e->n_layers = fl_model_layer_count(e->b.model);
  e->layer_name = calloc((size_t)e->n_layers, sizeof *e->layer_name);
  e->layer_norm = calloc((size_t)e->n_layers, sizeof(float));
  e->layer_target = calloc((size_t)e->n_layers, sizeof(float));
  if (!e->layer_name || !e->layer_norm || !e->layer_target) goto nomem;
  for (int l = 0; l < e->n_layers; l++) {
    fl_layer *ly = fl_model_layer(e->b.model, l);
    snprintf(e->layer_name[l], FL_LAYER_NAME_MAX, "%s", ly->name);
    e->layer_target[l] = ly->target;
    if (fl_model_layer_norm(e->b.model, l, &e->layer_norm[l])) e->layer_norm[l] = -1.0f;
  }
  /* The file's hysteresis, where it gives one, before the model's own. */
  e->hyst_on = cfg->lib.on_given ? cfg->lib.detect.on : e->b.detect.on;
  e->hyst_off = cfg->lib.off_given ? cfg->lib.detect.off : e->b.detect.off;
  if (e->hyst_on < 1) e->hyst_on = 1;
  if (e->hyst_off < 1) e->hyst_off = 1;
  /* Both thresholds are margin x a quantile of clean scores: another
   * margin rescales them without the data. */
  for (int g = 0; g < cfg->n_detect_given; g++)
    if (!strcmp(cfg->detect_given[g], "margin") && e->b.detect.margin > 0 &&
        !fld__same(cfg->lib.detect.margin, e->b.detect.margin)) {
      float r = cfg->lib.detect.margin / e->b.detect.margin;
      e->b.calib.threshold *= r;
      e->b.calib.chan_threshold *= r;
      fld_log(FLD_NOTICE, "[detect] margin %g (the model's %g): threshold %.4g",
              (double)cfg->lib.detect.margin, (double)e->b.detect.margin,
              (double)e->b.calib.threshold);
      e->b.detect.margin = cfg->lib.detect.margin;
    }
  e->load_time = fld_now();
  *out = e;
  return 0;
nomem:
  snprintf(err, errlen, "%s: cannot allocate the model's scratch: %s", path, fl_strerror(rc));
fail:
  fld_engine_free(e);
  return rc;
}

int fld_engine_compatible(const fld_engine *a, const fld_engine *b) {
  return fl_model_spec_compatible(fl_model_spec_of(a->b.model), fl_model_spec_of(b->b.model),
                                  NULL, 0);
}
