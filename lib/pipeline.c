/* faultline pipeline: see include/faultline/pipeline.h for the contract. */
#include "faultline/pipeline.h"

#include <stdlib.h>
#include <string.h>

#include "faultline/error.h"

void fl_stream_state_reset(fl_stream_state *s) {
  memset(s, 0, sizeof *s);
  fl_detect_baseline_reset(&s->base);
}

/* The estimate step of one window; without an estimator the uncertainty
 * of a replaced sample is unknown (NaN). */
static int fl__estimate(fl_model *m, const fl_calib *cal, const fl_pipeline_config *cfg,
                        fl_pipeline_window *x) {
  return fl_estimate_apply(m, cfg->est, &x->st->est, cal->tail, x->raw,
                           x->faulty, cfg->clamp, x->from, x->corrected, x->sigma);
}

int fl_pipeline_run(fl_model *m, const fl_calib *cal, fl_ctx *ctx, const fl_pipeline_config *cfg,
                    int B, fl_pipeline_window *w) {
  if (!m || !cal || !ctx || !cfg || !w || B <= 0) return FL_EINVAL;
  const fl_model_spec *spec = fl_model_spec_of(m);
  int nch = fl_model_channels(m), W = spec->window, err = FL_ENOMEM;
  for (int k = 0; k < B; k++)
    if (!w[k].st || w[k].from < 0 || w[k].from > W) return FL_EINVAL;
  /* The steps' own layouts: the batch's scores, raw windows and faulty
   * channels side by side. */
  fl_window_score *sc = malloc(sizeof *sc * (size_t)B);
  float *(*raw)[FL_MAX_MODALITIES] = malloc(sizeof *raw * (size_t)B);
  unsigned char *faulty = malloc((size_t)B * (size_t)nch);
  if (!sc || !raw || !faulty) goto done;
  if ((err = fl_detect_score(m, cal, ctx, B, sc, NULL))) goto done;
  /* Decisions first, in the batch's order (each stream's baseline and
   * hysteresis follow its windows). */
  for (int k = 0; k < B; k++) {
    fl_pipeline_window *x = &w[k];
    x->sc = sc[k];
    x->flag = fl_detect_decide(m, cal, &x->st->base, &x->st->hyst, cfg->on, cfg->off, &x->sc,
                               x->ticks, faulty + (size_t)k * nch, &x->above);
    memset(x->faulty, 0, sizeof x->faulty);
    memcpy(x->faulty, faulty + (size_t)k * nch, (size_t)nch);
    x->intact = 1;
    for (int c = 0; c < nch; c++) x->intact &= !x->faulty[c];
    x->learnable = x->intact && !x->flag && !x->above;
    for (int i = 0; i < spec->n_mod; i++) {
      x->mflag[i] = fl_hyst_update(&x->st->mhyst[i], x->sc.mod_score[i] > cal->threshold,
                                   cfg->on, cfg->off);
      raw[k][i] = x->raw[i];
    }
  }
  /* Then the windows with faulty channels are estimated again without them
   * (their slots masked), and the gated correction of every window. */
  if ((err = fl_detect_reestimate(m, cal, ctx, B, raw, faulty, cfg->clamp))) goto done;
  for (int k = 0; k < B && !err; k++) {
    fl_pipeline_window *x = &w[k];
    for (int i = 0, off = 0; i < spec->n_mod && !err; off += spec->mod[i].channels, i++) {
      int fc[FL_MAX_CHANNELS];
      for (int c = 0; c < spec->mod[i].channels; c++) fc[c] = x->faulty[off + c];
      err = fl_detect_correct_tail(m, ctx, k, i, x->raw[i], fc, cfg->clamp,
                                   x->from * spec->mod[i].rate, x->corrected[i]);
    }
    if (!err) err = fl__estimate(m, cal, cfg, x);
  }
done:
  free(sc);
  free(raw);
  free(faulty);
  return err;
}
