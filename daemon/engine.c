/* faultlined engine: a loaded model bundle and its scratch.  See fld.h. */
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

void fld_engine_free(fld_engine *e) {
  if (!e) return;
  for (int k = 0; k < FLD_MAX_BATCH; k++)
    for (int i = 0; i < FL_MAX_MODALITIES; i++) {
      free(e->win[k].raw[i]);
      free(e->win[k].corrected[i]);
      free(e->win[k].sigma[i]);
    }
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
  const fl_model_spec *spec = fl_model_spec_of(e->b.model);
  if (cfg->stride > spec->window) {
    snprintf(err, errlen, "[output] stride %d exceeds the model's window of %d ticks",
             cfg->stride, spec->window);
    rc = FL_EINVAL;
    goto fail;
  }
  e->batch = cfg->batch;
  rc = FL_ENOMEM;
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
    snprintf(e->layer_name[l], FL_NAME_MAX, "%s", ly->name);
    e->layer_target[l] = ly->target;
    if (fl_model_layer_norm(e->b.model, l, &e->layer_norm[l])) e->layer_norm[l] = -1.0f;
  }
  /* The file's hysteresis, where it gives one, before the model's own. */
  e->hyst_on = cfg->lib.on_given ? cfg->lib.detect.on : e->b.detect.on;
  e->hyst_off = cfg->lib.off_given ? cfg->lib.detect.off : e->b.detect.off;
  if (e->hyst_on < 1) e->hyst_on = 1;
  if (e->hyst_off < 1) e->hyst_off = 1;
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
