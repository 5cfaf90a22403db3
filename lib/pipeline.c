/* faultline pipeline: see include/faultline/pipeline.h for the contract. */
#include "faultline/pipeline.h"

#include <stdlib.h>
#include <string.h>

#include "faultline/error.h"

int fl_stream_state_init(fl_stream_state *s, const fl_model_spec *spec) {
  if (!s || !spec || spec->n_mod <= 0) return FL_EINVAL;
  memset(s, 0, sizeof *s);
  int nch = fl_model_spec_channels(spec);
  s->mhyst = calloc((size_t)spec->n_mod, sizeof *s->mhyst);
  if (!s->mhyst || fl_detect_baseline_init(&s->base, nch) ||
      fl_estimate_state_init(&s->est, nch)) {
    fl_stream_state_free(s);
    return FL_ENOMEM;
  }
  s->n_mod = spec->n_mod;
  return 0;
}

void fl_stream_state_reset(fl_stream_state *s) {
  memset(&s->hyst, 0, sizeof s->hyst);
  if (s->mhyst) memset(s->mhyst, 0, sizeof *s->mhyst * (size_t)s->n_mod);
  fl_detect_baseline_reset(&s->base);
  fl_estimate_state_reset(&s->est);
}

void fl_stream_state_free(fl_stream_state *s) {
  if (!s) return;
  free(s->mhyst);
  fl_detect_baseline_free(&s->base);
  fl_estimate_state_free(&s->est);
  memset(s, 0, sizeof *s);
}

fl_pipeline_window *fl_pipeline_windows_new(const fl_model_spec *spec, int B) {
  if (!spec || B <= 0) return NULL;
  size_t M = (size_t)spec->n_mod, nch = (size_t)fl_model_spec_channels(spec);
  /* Per window: 3 M pointers, M ints, M + 5 nch floats, nch bytes. */
  size_t per = 3 * M * sizeof(float *) + M * sizeof(int) + (M + 5 * nch) * sizeof(float) + nch;
  per = (per + 15) / 16 * 16;
  size_t head = (sizeof(fl_pipeline_window) * (size_t)B + 15) / 16 * 16;
  fl_pipeline_window *w = calloc(1, head + per * (size_t)B);
  if (!w) return NULL;
  char *p = (char *)w + head;
  for (int k = 0; k < B; k++, p += per) {
    char *q = p;
    w[k].raw = (float **)q;
    w[k].corrected = w[k].raw + M;
    w[k].sigma = w[k].corrected + M;
    q += 3 * M * sizeof(float *);
    float *f = (float *)q;
    w[k].sc.mod_score = f;
    w[k].sc.chan = f + M;
    w[k].sc.resid = w[k].sc.chan + nch;
    w[k].sc.level = w[k].sc.resid + nch;
    w[k].sc.noise = w[k].sc.level + nch;
    w[k].sc.shift = w[k].sc.noise + nch;
    q += (M + 5 * nch) * sizeof(float);
    w[k].mflag = (int *)q;
    q += M * sizeof(int);
    w[k].faulty = (unsigned char *)q;
  }
  return w;
}

/* The estimate step of one window; without an estimator the uncertainty
 * of a replaced sample is unknown (NaN). */
static int fl__estimate(fl_model *m, const fl_calib *cal, const fl_pipeline_config *cfg,
                        fl_pipeline_window *x) {
  return fl_estimate_apply(m, cfg->est, &x->st->est, cal->tail, x->raw,
                           x->faulty, cfg->clamp, x->from, x->corrected, x->sigma);
}

int fl_pipeline_batch_for(const fl_model *m, int max, double bytes, size_t *per_window) {
  if (!m || max < 1) return FL_EINVAL;
  const fl_model_spec *spec = fl_model_spec_of(m);
  size_t copies = 0;
  for (int i = 0; i < spec->n_mod; i++)
    copies += 3 * sizeof(float) * (size_t)spec->mod[i].channels * spec->window * spec->mod[i].rate;
  if (per_window) *per_window = fl_ctx_infer_bytes(m, 1) + copies;
  int b = max;
  while (b > 1 && (double)(fl_ctx_infer_bytes(m, b) + (size_t)b * copies) > bytes) b--;
  return b;
}

int fl_pipeline_run(fl_model *m, const fl_calib *cal, fl_ctx *ctx, const fl_pipeline_config *cfg,
                    int B, fl_pipeline_window *w) {
  if (!m || !cal || !ctx || !cfg || !w || B <= 0) return FL_EINVAL;
  const fl_model_spec *spec = fl_model_spec_of(m);
  int nch = fl_model_channels(m), W = spec->window, err = FL_ENOMEM;
  for (int k = 0; k < B; k++)
    if (!w[k].st || w[k].st->n_mod != spec->n_mod || w[k].from < 0 || w[k].from > W)
      return FL_EINVAL;
  /* The steps' own layouts: the batch's scores, raw windows and faulty
   * channels side by side. */
  fl_window_score *sc = malloc(sizeof *sc * (size_t)B);
  float *const **raw = malloc(sizeof *raw * (size_t)B);
  unsigned char *faulty = malloc((size_t)B * (size_t)nch);
  int *fc = malloc(sizeof(int) * (size_t)nch);
  if (!sc || !raw || !faulty || !fc) goto done;
  /* The scores are written straight into each window's arrays. */
  for (int k = 0; k < B; k++) sc[k] = w[k].sc;
  if ((err = fl_detect_score(m, cal, ctx, B, sc, NULL))) goto done;
  /* Decisions first, in the batch's order (each stream's baseline and
   * hysteresis follow its windows). */
  for (int k = 0; k < B; k++) {
    fl_pipeline_window *x = &w[k];
    x->sc = sc[k];
    x->flag = fl_detect_decide(m, cal, &x->st->base, &x->st->hyst, cfg->on, cfg->off, &x->sc,
                               x->ticks, faulty + (size_t)k * nch, &x->above);
    memcpy(x->faulty, faulty + (size_t)k * nch, (size_t)nch);
    x->intact = 1;
    for (int c = 0; c < nch; c++) x->intact &= !x->faulty[c];
    x->learnable = x->intact && !x->flag && !x->above;
    for (int i = 0; i < spec->n_mod; i++)
      x->mflag[i] = fl_hyst_update(&x->st->mhyst[i], x->sc.mod_score[i] > cal->threshold,
                                   cfg->on, cfg->off);
    raw[k] = x->raw;
  }
  /* Then the windows with faulty channels are estimated again without them
   * (their slots masked), and the gated correction of every window. */
  if ((err = fl_detect_reestimate(m, cal, ctx, B, raw, faulty, cfg->clamp))) goto done;
  for (int k = 0; k < B && !err; k++) {
    fl_pipeline_window *x = &w[k];
    for (int i = 0, off = 0; i < spec->n_mod && !err; off += spec->mod[i].channels, i++) {
      for (int c = 0; c < spec->mod[i].channels; c++) fc[c] = x->faulty[off + c];
      err = fl_detect_correct_tail(m, ctx, k, i, x->raw[i], fc, cfg->clamp,
                                   x->from * spec->mod[i].rate, x->corrected[i]);
    }
    if (!err) err = fl__estimate(m, cal, cfg, x);
  }
done:
  free(fc);
  free(sc);
  free(raw);
  free(faulty);
  return err;
}
