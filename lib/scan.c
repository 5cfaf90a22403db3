/* faultline scan: see include/faultline/scan.h for the contract. */
#include "faultline/scan.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "faultline/error.h"
#include "faultline/pipeline.h"

void fl_scan_free(fl_scan_result *r) {
  if (!r) return;
  free(r->score);
  free(r->flag);
  free(r->modality);
  free(r->chan);
  fl_series_free(&r->corrected);
  fl_series_free(&r->sigma);
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
  fl_pipeline_window *w = NULL;
  int *ends = NULL;
  out->rows = rows;
  out->score = malloc(sizeof(float) * (rows ? rows : 1));
  out->flag = calloc(rows ? rows : 1, 1);
  out->modality = malloc(rows ? rows : 1);
  out->chan = calloc((size_t)(rows ? rows : 1) * nch, sizeof(float));
  fl_stream_state st = {0};
  out->corrected.rows = rows;
  out->sigma.rows = rows;
  if (!(out->corrected.x = calloc((size_t)spec->n_mod, sizeof(float *))) ||
      !(out->sigma.x = calloc((size_t)spec->n_mod, sizeof(float *))))
    goto fail;
  out->corrected.n_mod = spec->n_mod;
  out->sigma.n_mod = spec->n_mod;
  if (!(w = fl_pipeline_windows_new(spec, FL__SCAN_BATCH))) goto fail;
  for (int i = 0; i < spec->n_mod; i++) {
    size_t n = (size_t)spec->mod[i].channels * rows * spec->mod[i].rate;
    if (!(out->corrected.x[i] = malloc(sizeof(float) * (n ? n : 1)))) goto fail;
    memcpy(out->corrected.x[i], s->x[i], sizeof(float) * n);
    if (!(out->sigma.x[i] = calloc(n ? n : 1, sizeof(float)))) goto fail;
    size_t ct = (size_t)spec->mod[i].channels * W * spec->mod[i].rate;
    for (int k = 0; k < FL__SCAN_BATCH; k++)
      if (!(w[k].raw[i] = malloc(sizeof(float) * ct)) ||
          !(w[k].corrected[i] = malloc(sizeof(float) * ct)) ||
          !(w[k].sigma[i] = malloc(sizeof(float) * ct)))
        goto fail;
  }
  if (!out->score || !out->flag || !out->modality || !out->chan) goto fail;
  for (int r = 0; r < rows; r++) {
    out->score[r] = NAN;
    out->modality[r] = -1;
  }
  if ((err = fl_ctx_create_infer(&ctx, m, FL__SCAN_BATCH))) goto fail;
  err = FL_ENOMEM;
  if (!(ends = malloc(sizeof(int) * (rows / stride + 2)))) goto fail;
  int nw = 0;
  for (int e = W; e <= rows; e += stride) ends[nw++] = e;
  if ((err = fl_stream_state_init(&st, spec))) goto fail;
  fl_pipeline_config pc = {b->detect.on, b->detect.off, b->clamp, &b->est};
  for (int j = 0; j < nw; j += FL__SCAN_BATCH) {
    int B = nw - j < FL__SCAN_BATCH ? nw - j : FL__SCAN_BATCH;
    for (int k = 0; k < B; k++) {
      int e = ends[j + k], first = e - stride < W - 1 ? W - 1 : e - stride;
      /* The first window also decides for nothing before its own last tick. */
      if (j + k == 0) first = e - 1;
      w[k].st = &st;
      w[k].ticks = stride;
      w[k].from = first > e - W ? first - (e - W) : 0;
      if ((err = fl_series_window(s, spec, e, w[k].raw))) goto fail;
      for (int i = 0; i < spec->n_mod; i++)
        if ((err = fl_model_normalise(m, ctx, k, i, w[k].raw[i], b->clamp))) goto fail;
    }
    if ((err = fl_pipeline_run(m, &b->calib, ctx, &pc, B, w))) goto fail;
    for (int k = 0; k < B; k++) {
      int e = ends[j + k], first = e - stride < W - 1 ? W - 1 : e - stride;
      if (j + k == 0) first = e - 1;
      const fl_pipeline_window *x = &w[k];
      for (int r = first; r < e; r++) {
        out->score[r] = x->sc.score;
        out->flag[r] = (unsigned char)x->flag;
        out->modality[r] = (signed char)(x->flag ? x->sc.modality : -1);
        memcpy(out->chan + (size_t)r * nch, x->sc.chan, sizeof(float) * nch);
      }
      /* Only the ticks this window decides for are written. */
      for (int i = 0; i < spec->n_mod; i++) {
        int C = spec->mod[i].channels, rate = spec->mod[i].rate, T = W * rate;
        for (int c = 0; c < C; c++)
          for (int r = e - W + x->from; r < e; r++)
            for (int q = 0; q < rate; q++) {
              int t = (r - (e - W)) * rate + q;
              size_t o = (size_t)c * rows * rate + (size_t)r * rate + q;
              out->corrected.x[i][o] = x->corrected[i][(size_t)c * T + t];
              out->sigma.x[i][o] = x->sigma[i][(size_t)c * T + t];
            }
      }
    }
  }
  err = 0;
fail:
  if (w)
    for (int k = 0; k < FL__SCAN_BATCH; k++)
      for (int i = 0; i < spec->n_mod; i++) {
        free(w[k].raw[i]);
        free(w[k].corrected[i]);
        free(w[k].sigma[i]);
      }
  free(w);
  free(ends);
  fl_stream_state_free(&st);
  fl_ctx_free(ctx);
  if (err) fl_scan_free(out);
  return err;
}
