/* faultline scan: see include/faultline/scan.h for the contract. */
#include "faultline/scan.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "faultline/error.h"

void fl_scan_free(fl_scan_result *r) {
  if (!r) return;
  free(r->score);
  free(r->flag);
  free(r->modality);
  free(r->chan);
  fl_series_free(&r->corrected);
  memset(r, 0, sizeof *r);
}

#define FL__SCAN_BATCH 64

int fl_scan(fl_bundle *b, const fl_series *s, int stride, fl_scan_result *out) {
  if (!b || !b->model || !s || !out || stride < 1) return FL_EINVAL;
  memset(out, 0, sizeof *out);
  fl_model *m = b->model;
  const fl_model_spec *spec = fl_model_spec_of(m);
  int nch = fl_model_channels(m), rows = s->rows, W = spec->window, err = FL_ENOMEM;
  fl_ctx *ctx = NULL;
  fl_window_score *sc = NULL;
  float *raw[FL__SCAN_BATCH][FL_MAX_MODALITIES] = {{0}}, *corr = NULL;
  int *ends = NULL;
  unsigned char *faulty = NULL;
  out->rows = rows;
  out->score = malloc(sizeof(float) * (rows ? rows : 1));
  out->flag = calloc(rows ? rows : 1, 1);
  out->modality = malloc(rows ? rows : 1);
  out->chan = calloc((size_t)(rows ? rows : 1) * nch, sizeof(float));
  out->corrected.rows = rows;
  out->corrected.n_mod = spec->n_mod;
  size_t maxct = 0;
  for (int i = 0; i < spec->n_mod; i++) {
    size_t n = (size_t)spec->mod[i].channels * rows * spec->mod[i].rate;
    if (!(out->corrected.x[i] = malloc(sizeof(float) * (n ? n : 1)))) goto fail;
    memcpy(out->corrected.x[i], s->x[i], sizeof(float) * n);
    size_t ct = (size_t)spec->mod[i].channels * W * spec->mod[i].rate;
    if (ct > maxct) maxct = ct;
    for (int k = 0; k < FL__SCAN_BATCH; k++)
      if (!(raw[k][i] = malloc(sizeof(float) * ct))) goto fail;
  }
  if (!out->score || !out->flag || !out->modality || !out->chan) goto fail;
  for (int r = 0; r < rows; r++) {
    out->score[r] = NAN;
    out->modality[r] = -1;
  }
  if ((err = fl_ctx_create_infer(&ctx, m, FL__SCAN_BATCH))) goto fail;
  err = FL_ENOMEM;
  sc = malloc(sizeof(fl_window_score) * FL__SCAN_BATCH);
  corr = malloc(sizeof(float) * maxct);
  ends = malloc(sizeof(int) * (rows / stride + 2));
  faulty = malloc((size_t)FL__SCAN_BATCH * nch);
  if (!sc || !corr || !ends || !faulty) goto fail;
  int nw = 0;
  for (int e = W; e <= rows; e += stride) ends[nw++] = e;
  fl_hyst h = {0, 0};
  fl_detect_baseline bl;
  fl_detect_baseline_reset(&bl);
  for (int j = 0; j < nw; j += FL__SCAN_BATCH) {
    int B = nw - j < FL__SCAN_BATCH ? nw - j : FL__SCAN_BATCH;
    for (int k = 0; k < B; k++) {
      if ((err = fl_series_window(s, spec, ends[j + k], raw[k]))) goto fail;
      for (int i = 0; i < spec->n_mod; i++)
        if ((err = fl_model_normalise(m, ctx, k, i, raw[k][i], b->clamp))) goto fail;
    }
    if ((err = fl_detect_score(m, &b->calib, ctx, B, sc, NULL))) goto fail;
    /* Decisions first, in the stream's order (the baseline follows it);
     * then the windows with faulty channels are estimated again without
     * them; then the gated correction. */
    for (int k = 0; k < B; k++) {
      int e = ends[j + k], first = e - stride < W - 1 ? W - 1 : e - stride;
      /* The first window also decides for nothing before its own last tick. */
      if (j + k == 0) first = e - 1;
      int flag = fl_detect_decide(m, &b->calib, &bl, &h, b->detect.on, b->detect.off, &sc[k],
                                  stride, faulty + (size_t)k * nch, NULL);
      for (int r = first; r < e; r++) {
        out->score[r] = sc[k].score;
        out->flag[r] = (unsigned char)flag;
        out->modality[r] = (signed char)(flag ? sc[k].modality : -1);
        memcpy(out->chan + (size_t)r * nch, sc[k].chan, sizeof(float) * nch);
      }
    }
    if ((err = fl_detect_reestimate(m, &b->calib, ctx, B, raw, faulty, b->clamp))) goto fail;
    for (int k = 0; k < B; k++) {
      int e = ends[j + k], first = e - stride < W - 1 ? W - 1 : e - stride;
      if (j + k == 0) first = e - 1;
      int off = 0;
      for (int i = 0; i < spec->n_mod; i++) {
        int C = spec->mod[i].channels, rate = spec->mod[i].rate, T = W * rate;
        int fc[FL_MAX_CHANNELS];
        for (int c = 0; c < C; c++) fc[c] = faulty[k * nch + off + c];
        off += C;
        if ((err = fl_detect_correct(m, ctx, k, i, raw[k][i], fc, b->clamp, corr))) goto fail;
        /* Only the newest ticks this window decides for are written. */
        for (int c = 0; c < C; c++)
          for (int r = first; r < e; r++)
            for (int q = 0; q < rate; q++) {
              int t = (r - (e - W)) * rate + q;
              out->corrected.x[i][(size_t)c * rows * rate + (size_t)r * rate + q] =
                  corr[(size_t)c * T + t];
            }
      }
    }
  }
  err = 0;
fail:
  for (int k = 0; k < FL__SCAN_BATCH; k++)
    for (int i = 0; i < FL_MAX_MODALITIES; i++) free(raw[k][i]);
  free(sc);
  free(corr);
  free(ends);
  free(faulty);
  fl_ctx_free(ctx);
  if (err) fl_scan_free(out);
  return err;
}
