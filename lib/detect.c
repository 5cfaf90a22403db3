/* faultline detect: see include/faultline/detect.h for the contracts. */
#include "faultline/detect.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "faultline/error.h"

/* Added to a channel's score per unit share of missing samples: a channel
 * with gaps is always worth a look, and its gaps are always filled. */
#define FL__MISSING_PENALTY 20.0f
#define FL__LOG_EPS 1e-4
/* Floor on the noise variance (std units) behind the baseline feature's
 * standard error: a quantised, nearly constant channel would otherwise turn
 * one step of its least significant bit into an alarm. */
#define FL__BASE_VAR_FLOOR 0.01

void fl_detect_defaults(fl_detect_config *c) {
  c->tail = 15;
  c->quantile = 0.99f;
  c->margin = 1.0f;
  c->chan_quantile = 0.99f;
  c->w_emb = 1.0f;
  c->min_spread = 0.75f;
  c->w_var = 1.0f;
  c->w_corr = 0.0f;
  c->w_ratio = 0.0f;
  c->w_rise = 1.0f;
  c->w_base = 0.0f;
  c->base_span = 300;
  c->agree = 1;
  c->calibrate_all = 1;
  c->on = 2;
  c->off = 3;
  c->settle = 360;
}

int fl_hyst_update(fl_hyst *h, int above, int on, int off) {
  if (above != h->state) {
    h->count++;
    if (h->count >= (above ? on : off)) {
      h->state = above;
      h->count = 0;
    }
  } else {
    h->count = 0;
  }
  return h->state;
}

static float fl__z(float v, float mu, float sd) { return (v - mu) / (sd > 1e-6f ? sd : 1e-6f); }

float fl_detect_ratio(float v, float h, float var_mu) {
  return fabsf(v - var_mu) - fabsf(h - var_mu);
}

int fl_detect_score(fl_model *m, const fl_calib *cal, fl_ctx *ctx, int B,
                    fl_window_score *out, float *raw) {
  if (!m || !ctx || B <= 0) return FL_EINVAL;
  const fl_model_spec *s = fl_model_spec_of(m);
  int nch = fl_model_channels(m), err;
  int tail = cal && cal->tail > 0 ? cal->tail : s->window / 4;
  if (tail > s->window) tail = s->window;
  int calibrated = cal && cal->nch == nch, nf = FL_DETECT_FEATURES * nch + 1;
  /* The corrected estimate first (block on), kept aside for gating and for
   * its own residual; then the stage-1 estimate and the embedding. */
  if ((err = fl_model_forward(m, ctx, B, 1, 0))) return err;
  for (int i = 0; i < s->n_mod; i++)
    memcpy(fl_ctx_estimate(ctx, i), fl_ctx_output(ctx, i),
           sizeof(float) * B * s->mod[i].channels * s->window * s->mod[i].rate);
  /* Same inputs, same latent: only the decoders and the head run again. */
  if ((err = fl_model_forward_latent(m, ctx, B, 0, 1))) return err;
  const float *emb = fl_ctx_embedding(ctx);
  for (int b = 0; b < B; b++) {
    fl_window_score *o = out ? &out[b] : NULL;
    float *rw = raw ? raw + (size_t)b * nf : NULL;
    if (o) {
      memset(o->mod_score, 0, sizeof(float) * s->n_mod);
      float *arr[] = {o->chan, o->resid, o->level, o->noise, o->shift};
      for (size_t k = 0; k < sizeof arr / sizeof *arr; k++) memset(arr[k], 0, sizeof(float) * nch);
      o->emb_score = 0.0f;
      o->modality = -1;
      o->score = -INFINITY;
    }
    int off = 0;
    for (int i = 0; i < s->n_mod; i++) {
      int C = s->mod[i].channels, T = s->window * s->mod[i].rate;
      int t0 = (s->window - tail) * s->mod[i].rate;
      const float *x = fl_ctx_input(ctx, i) + (size_t)b * C * T;
      const float *mk = fl_ctx_mask(ctx, i) + (size_t)b * C * T;
      const float *y = fl_ctx_output(ctx, i) + (size_t)b * C * T;
      const float *yc = fl_ctx_estimate(ctx, i) + (size_t)b * C * T;
      float mscore = -INFINITY;
      for (int c = 0; c < C; c++, off++) {
        /* The head of the window (before the tail) is the reference the
         * tail's level and noise are held against. */
        double sh2 = 0, st = 0, sh = 0;
        int nhd = 0, nh = 0, prev = -1;
        for (int t = 0; t < t0; t++) {
          size_t k = (size_t)c * T + t;
          if (mk[k] == 0.0f) continue;
          sh += x[k];
          nh++;
          if (prev >= 0) {
            double dx = (double)x[k] - x[(size_t)c * T + prev];
            sh2 += dx * dx;
            nhd++;
          }
          prev = t;
        }
        double se = 0, sre = 0, sd2 = 0, sc2 = 0, src = 0;
        int n = 0, nd = 0, miss = 0;
        prev = -1;
        for (int t = t0; t < T; t++) {
          size_t k = (size_t)c * T + t;
          if (mk[k] == 0.0f) { miss++; continue; }
          double e = (double)x[k] - y[k];
          se += e * e;
          sre += e;
          double ec = (double)x[k] - yc[k];
          sc2 += ec * ec;
          src += ec;
          /* Successive differences measure the sensor's own noise, which
           * operating-point changes leave alone and a dead sensor loses. */
          if (prev >= 0) {
            double dx = (double)x[k] - x[(size_t)c * T + prev];
            sd2 += dx * dx;
            nd++;
          }
          prev = t;
          st += x[k];
          n++;
        }
        double mse = n ? se / n : 0.0, cse = n ? sc2 / n : 0.0;
        /* A drifting modality's residual carries the model's error at levels
         * it never saw as a bias over the window; its spread is the shape
         * error that a fault leaves. */
        if (s->mod[i].drifts && n) {
          double me = sre / n, mc = src / n;
          mse -= me * me;
          if (mse < 0) mse = 0;
          cse -= mc * mc;
          if (cse < 0) cse = 0;
        }
        double rough = nd ? sd2 / nd : 0.0;
        float r = (float)log(mse + FL__LOG_EPS), v = (float)log(rough + FL__LOG_EPS);
        float q = (float)log(cse + FL__LOG_EPS);
        /* The head's noise is what the tail's is held against (the noise
         * ratio); the tail's mean is what the stream's baseline follows. */
        float h = nhd ? (float)log(sh2 / nhd + FL__LOG_EPS) : v;
        float mt = n ? (float)(st / n) : NAN;
        if (s->mod[i].drifts && n && (!cal || cal->nch != nch || cal->base_drift)) {
          /* The window's trend is what standardisation took out of a drifting
           * modality: added back, the tail's mean is the sensor's level. */
          const float *lv = fl_ctx_level(ctx, i) + (size_t)b * C * 2;
          mt += lv[2 * c] + lv[2 * c + 1] * (0.5f * (float)(t0 + T - 1) - 0.5f * (float)(T - 1));
        }
        if (rw) {
          rw[off] = r;
          rw[nch + off] = v;
          rw[2 * nch + off] = q;
          rw[3 * nch + off] = mt;
          rw[4 * nch + off] = h;
        }
        if (!o) continue;
        o->resid[off] = (float)sqrt(mse);
        o->level[off] = mt;
        o->noise[off] = (float)rough;
        o->shift[off] = n && nh ? (float)(st / n - sh / nh) : 0.0f;
        float sc = 0.0f;
        if (calibrated) {
          float zr = fl__z(r, cal->res_mu[off], cal->res_sd[off]);
          /* A collapse of the noise is what a dead sensor (stuck,
           * saturated) leaves, which residuals cannot see; with w_rise a
           * rise counts too, since the autoencoder reproduces added noise
           * and the residual alone misses a noisy sensor. */
          float zv = cal->w_var > 0.0f ? -fl__z(v, cal->var_mu[off], cal->var_sd[off]) : 0.0f;
          if (cal->w_rise > 0.0f && -zv > zv) zv = -zv;
          /* The corrected estimate is what the channel should read given
           * the other modalities: its residual sees the level faults that
           * the stage-1 autoencoder reproduces. */
          float zq = cal->w_corr > 0.0f ? fl__z(q, cal->cor_mu[off], cal->cor_sd[off]) : 0.0f;
          float zg = cal->w_ratio > 0.0f
                         ? fl__z(fl_detect_ratio(v, h, cal->var_mu[off]), cal->rat_mu[off],
                                 cal->rat_sd[off])
                         : 0.0f;
          sc = zr > zv ? zr : zv;
          if (zq > sc) sc = zq;
          if (zg > sc) sc = zg;
        }
        sc += FL__MISSING_PENALTY * (float)miss / (float)(T - t0);
        o->chan[off] = sc;
        if (sc > mscore) mscore = sc;
      }
      if (o) {
        o->mod_score[i] = mscore;
        if (mscore > o->score) {
          o->score = mscore;
          o->modality = i;
        }
      }
    }
    const float *e = emb + (size_t)b * s->emb;
    if (calibrated || rw) {
      double dot = 0;
      for (int k = 0; k < s->emb; k++) dot += (double)e[k] * (cal ? cal->centroid[k] : 0.0f);
      float d = 1.0f - (float)dot;
      if (rw) rw[FL_DETECT_FEATURES * nch] = d;
      if (o && calibrated && cal->w_emb > 0.0f) {
        o->emb_score = fl__z(d, cal->emb_mu, cal->emb_sd);
        if (o->emb_score > o->score) o->score = o->emb_score;
      }
    }
  }
  return 0;
}

int fl_detect_baseline_init(fl_detect_baseline *bl, int nch) {
  if (!bl || nch <= 0) return FL_EINVAL;
  memset(bl, 0, sizeof *bl);
  bl->block = calloc(4 * (size_t)nch, sizeof(float));
  if (!bl->block) return FL_ENOMEM;
  bl->nch = nch;
  bl->level = bl->block;
  bl->var = bl->level + nch;
  bl->peak = bl->var + nch;
  bl->anchor = bl->peak + nch;
  return 0;
}

void fl_detect_baseline_reset(fl_detect_baseline *bl) {
  fl_detect_baseline keep = *bl;
  memset(bl, 0, sizeof *bl);
  bl->nch = keep.nch;
  bl->block = keep.block;
  bl->level = keep.level;
  bl->var = keep.var;
  bl->peak = keep.peak;
  bl->anchor = keep.anchor;
  if (bl->block) memset(bl->block, 0, sizeof(float) * 4 * (size_t)bl->nch);
}

void fl_detect_baseline_free(fl_detect_baseline *bl) {
  if (!bl) return;
  free(bl->block);
  memset(bl, 0, sizeof *bl);
}

fl_window_score *fl_window_scores_new(int B, int M, int nch) {
  if (B <= 0 || M < 0 || nch < 0) return NULL;
  size_t per = (size_t)M + 5 * (size_t)nch;
  size_t head = sizeof(fl_window_score) * (size_t)B;
  head = (head + sizeof(float) - 1) / sizeof(float) * sizeof(float);
  fl_window_score *sc = calloc(1, head + sizeof(float) * per * (size_t)B + 1);
  if (!sc) return NULL;
  float *f = (float *)((char *)sc + head);
  for (int b = 0; b < B; b++, f += per) {
    sc[b].modality = -1;
    sc[b].mod_score = f;
    sc[b].chan = f + M;
    sc[b].resid = sc[b].chan + nch;
    sc[b].level = sc[b].resid + nch;
    sc[b].noise = sc[b].level + nch;
    sc[b].shift = sc[b].noise + nch;
  }
  return sc;
}

int fl_calib_alloc(fl_calib *cal, int nch) {
  if (!cal || nch < 0) return FL_EINVAL;
  free(cal->block);
  cal->block = NULL;
  cal->nch = 0;
  float **arr[FL_CALIB_ARRAYS] = {&cal->res_mu, &cal->res_sd, &cal->var_mu, &cal->var_sd,
                                  &cal->cor_mu, &cal->cor_sd, &cal->bas_mu, &cal->bas_sd,
                                  &cal->bas_v0, &cal->rat_mu, &cal->rat_sd};
  for (int k = 0; k < FL_CALIB_ARRAYS; k++) *arr[k] = NULL;
  if (!nch) return 0;
  cal->block = calloc((size_t)FL_CALIB_ARRAYS * nch, sizeof(float));
  if (!cal->block) return FL_ENOMEM;
  for (int k = 0; k < FL_CALIB_ARRAYS; k++) *arr[k] = cal->block + (size_t)k * nch;
  cal->nch = nch;
  return 0;
}

void fl_calib_free(fl_calib *cal) {
  if (!cal) return;
  fl_calib_alloc(cal, 0);
}

int fl_calib_copy(fl_calib *dst, const fl_calib *src) {
  if (!dst || !src) return FL_EINVAL;
  if (dst == src) return 0;
  if (dst->block && dst->nch == src->nch) { /* same size: the arrays stay where they are */
    fl_calib keep = *dst;
    *dst = *src;
    float **arr[FL_CALIB_ARRAYS] = {&dst->res_mu, &dst->res_sd, &dst->var_mu, &dst->var_sd,
                                    &dst->cor_mu, &dst->cor_sd, &dst->bas_mu, &dst->bas_sd,
                                    &dst->bas_v0, &dst->rat_mu, &dst->rat_sd};
    dst->block = keep.block;
    for (int k = 0; k < FL_CALIB_ARRAYS; k++) *arr[k] = dst->block + (size_t)k * dst->nch;
    if (src->nch) memcpy(dst->block, src->block, sizeof(float) * FL_CALIB_ARRAYS * src->nch);
    return 0;
  }
  float *mine = dst->block;
  *dst = *src;
  dst->block = mine;
  int err = fl_calib_alloc(dst, src->nch);
  if (err) return err;
  if (src->nch) memcpy(dst->block, src->block, sizeof(float) * FL_CALIB_ARRAYS * src->nch);
  dst->nch = src->nch;
  return 0;
}

/* The baseline learns from every window, its level's step clipped to three
 * of its standard deviations and its variance's to four times itself: slow
 * drift and wander are followed, while a fault of many standard deviations
 * moves the level by a small fraction of its size per window and widens the
 * spread by at most a factor 1 + 3a, so it stays visible for several spans. */
static void fl__learn(fl_detect_baseline *bl, const fl_window_score *sc, int k0, int C,
                      double n, float a) {
  for (int k = k0; k < k0 + C; k++) {
    if (!isfinite(sc->level[k])) continue;
    double d = (double)sc->level[k] - bl->level[k], lim = 3.0 * sqrt(bl->var[k]);
    double dc = d > lim ? lim : d < -lim ? -lim : d, d2 = d * d;
    if (d2 > 4.0 * bl->var[k]) d2 = 4.0 * bl->var[k];
    bl->level[k] += (float)(a * dc);
    bl->var[k] += (float)(a * (d2 - bl->var[k]));
    if (bl->var[k] < FL__BASE_VAR_FLOOR / n) bl->var[k] = (float)(FL__BASE_VAR_FLOOR / n);
  }
}

void fl_detect_track(const fl_model *m, const fl_calib *cal, fl_detect_baseline *bl,
                     fl_window_score *sc, int ticks, float *raw_z) {
  const fl_model_spec *s = fl_model_spec_of((fl_model *)m);
  int nch = fl_model_channels((fl_model *)m);
  int tail = cal->tail > 0 ? cal->tail : s->window / 4;
  if (!bl->init) {
    /* A stream's first window is its baseline: it starts where it is, with
     * the spread calibration saw (or, before there is one, the tail's own
     * noise as the spread of its mean). */
    for (int i = 0, k = 0; i < s->n_mod; i++)
      for (int c = 0; c < s->mod[i].channels; c++, k++) {
        double n = (double)tail * s->mod[i].rate, v = 0.5 * sc->noise[k] / n;
        if (cal->nch == nch && cal->bas_v0[k] > 0.0f) v = cal->bas_v0[k];
        bl->level[k] = isfinite(sc->level[k]) ? sc->level[k] : 0.0f;
        bl->var[k] = (float)(v > FL__BASE_VAR_FLOOR / n ? v : FL__BASE_VAR_FLOOR / n);
        if (!isfinite(bl->var[k])) bl->var[k] = (float)(FL__BASE_VAR_FLOOR / n);
      }
    bl->init = 1;
    if (raw_z) memset(raw_z, 0, sizeof(float) * nch);
    return;
  }
  int fold = !raw_z && cal->nch == nch && cal->w_base > 0.0f;
  float a = cal->base_span > 0 ? (float)(1.0 - exp(-(double)ticks / cal->base_span)) : 1.0f;
  for (int i = 0, off = 0; i < s->n_mod; off += s->mod[i].channels, i++) {
    for (int c = 0; c < s->mod[i].channels; c++) {
      int k = off + c;
      float z = 0.0f;
      if ((!s->mod[i].drifts || cal->base_drift) && isfinite(sc->level[k]))
        z = (float)(fabs((double)sc->level[k] - bl->level[k]) / sqrt(bl->var[k]));
      if (raw_z) raw_z[k] = z;
      if (!fold || (s->mod[i].drifts && !cal->base_drift)) continue;
      float zb = fl__z(z, cal->bas_mu[k], cal->bas_sd[k]);
      if (zb > sc->chan[k]) sc->chan[k] = zb;
      if (zb > sc->mod_score[i]) sc->mod_score[i] = zb;
      if (zb > sc->score) {
        sc->score = zb;
        sc->modality = i;
      }
    }
  }
  for (int i = 0, off = 0; i < s->n_mod; off += s->mod[i].channels, i++)
    fl__learn(bl, sc, off, s->mod[i].channels, (double)tail * s->mod[i].rate, a);
}

#define FL__AGREE_SHIFT 1.0f
#define FL__AGREE_RATIO 0.5f

static void fl__agree(const fl_model_spec *s, const fl_window_score *sc,
                      unsigned char *faulty) {
  for (int i = 0, k0 = 0; i < s->n_mod; k0 += s->mod[i].channels, i++) {
    int C = s->mod[i].channels, all = C > 1;
    float lo = INFINITY, hi = 0.0f;
    for (int c = 0; c < C; c++) {
      float d = fabsf(sc->shift[k0 + c]);
      all &= faulty[k0 + c] != 0;
      if (d < lo) lo = d;
      if (d > hi) hi = d;
    }
    if (all && hi >= FL__AGREE_SHIFT && lo >= FL__AGREE_RATIO * hi)
      memset(faulty + k0, 0, (size_t)C);
  }
}

/* The re-anchoring rule of fl_detect_decide (detect.h), on one window's
 * scores after the baseline feature is folded in. */
static void fl__settle(const fl_model_spec *s, int nch, const fl_calib *cal,
                       fl_detect_baseline *bl, fl_window_score *sc, int ticks) {
  if (cal->settle <= 0) return;
  if (sc->score <= cal->threshold) {
    bl->calm += ticks;
    if (bl->calm >= s->window) bl->moves = bl->anchored = bl->still = 0;
  } else {
    bl->calm = 0;
  }
  int moving = 0;
  for (int k = 0; k < nch; k++) moving |= fabsf(sc->shift[k]) >= FL_DETECT_MOVE;
  if (moving) {
    if (!bl->moving) bl->moves++;
    bl->still = 0;
  } else {
    if (bl->still == 0) {
      memcpy(bl->peak, sc->chan, sizeof(float) * nch);
      bl->peak_emb = sc->emb_score;
    }
    bl->still += ticks;
    for (int k = 0; k < nch; k++)
      if (sc->chan[k] > bl->peak[k]) bl->peak[k] = sc->chan[k];
    if (sc->emb_score > bl->peak_emb) bl->peak_emb = sc->emb_score;
  }
  bl->moving = moving;
  if (!bl->anchored && bl->calm == 0 && bl->moves >= 2 && bl->still >= cal->settle) {
    memcpy(bl->anchor, bl->peak, sizeof(float) * nch);
    bl->anchor_emb = bl->peak_emb;
    bl->anchored = 1;
  }
  if (!bl->anchored) return;
  sc->score = 0.0f;
  sc->modality = -1;
  for (int i = 0, k = 0; i < s->n_mod; i++) {
    sc->mod_score[i] = 0.0f;
    for (int c = 0; c < s->mod[i].channels; c++, k++) {
      float z = sc->chan[k] - bl->anchor[k];
      sc->chan[k] = z > 0.0f ? z : 0.0f;
      if (sc->chan[k] > sc->mod_score[i]) sc->mod_score[i] = sc->chan[k];
    }
    if (sc->mod_score[i] > sc->score) {
      sc->score = sc->mod_score[i];
      sc->modality = i;
    }
  }
  if (cal->w_emb > 0.0f) {
    float z = sc->emb_score - bl->anchor_emb;
    sc->emb_score = z > 0.0f ? z : 0.0f;
    if (sc->emb_score > sc->score) sc->score = sc->emb_score;
  }
}

int fl_detect_decide(const fl_model *m, const fl_calib *cal, fl_detect_baseline *bl, fl_hyst *h,
                     int on, int off, fl_window_score *sc, int ticks, unsigned char *faulty,
                     int *above) {
  fl_detect_track(m, cal, bl, sc, ticks, NULL);
  fl__settle(fl_model_spec_of((fl_model *)m), fl_model_channels((fl_model *)m), cal, bl, sc,
             ticks);
  int up = sc->score > cal->threshold, flag = fl_hyst_update(h, up, on, off);
  /* The alarm waits for `on` windows above; the correction does not: a
   * fault's first windows are where a late gate costs most, and a clean
   * window above the threshold still replaces only the channels above
   * theirs.  A sensor that reads 0 V (out of range) or nothing is replaced
   * whatever the flag says (fl_detect_correct). */
  for (int c = 0; c < fl_model_channels((fl_model *)m); c++)
    faulty[c] = (flag || up) && sc->chan[c] > cal->chan_threshold;
  /* Sensors that agree describe the process: when every channel of a
   * modality is judged faulty and each has moved (tail against head) by at
   * least half of the largest move, itself a standard deviation or more, the
   * event is the plant's (two accelerometers rising together), not a failed
   * sensor's (a fault moves one channel; its neighbours' scores rise only
   * through the estimate).  It stays flagged and is passed through. */
  if (cal->agree) fl__agree(fl_model_spec_of((fl_model *)m), sc, faulty);
  if (above) *above = up;
  return flag;
}

static int fl__cmp(const void *a, const void *b) {
  float x = *(const float *)a, y = *(const float *)b;
  return (x > y) - (x < y);
}

/* Quantile q of n values (sorted in place), linear interpolation. */
static float fl__quantile(float *v, int n, float q) {
  qsort(v, n, sizeof(float), fl__cmp);
  float pos = q * (n - 1);
  int i = (int)pos;
  if (i >= n - 1) return v[n - 1];
  float f = pos - i;
  return v[i] * (1 - f) + v[i + 1] * f;
}

static void fl__mean_sd(const float *v, int n, int stride, float floor_sd, float *mu,
                        float *sd) {
  double s = 0, q = 0;
  for (int i = 0; i < n; i++) {
    s += v[(size_t)i * stride];
    q += (double)v[(size_t)i * stride] * v[(size_t)i * stride];
  }
  double m = s / n, var = q / n - m * m;
  *mu = (float)m;
  /* Calibration windows overlap, so they show less of a feature's spread than
   * new data will; a floor keeps a feature that barely moved on them from
   * turning any change at all into an alarm. */
  float spread = (float)sqrt(var > 0 ? var : 0);
  *sd = spread > floor_sd ? spread : floor_sd;
}

/* The windows of the recordings that fl_detect_calibrate loads. */
typedef struct {
  const fl_series *s;
  const fl_model_spec *spec;
  const int *wk, *we;
  float **rw;
  float clamp;
} fl__series_src;

static int fl__series_load(void *user, fl_model *m, fl_ctx *ctx, int b, int j) {
  fl__series_src *src = user;
  int err = fl_series_window(&src->s[src->wk[j]], src->spec, src->we[j], src->rw);
  if (err) return err;
  for (int i = 0; i < src->spec->n_mod; i++)
    if ((err = fl_model_normalise(m, ctx, b, i, src->rw[i], src->clamp))) return err;
  return 0;
}

static int fl__calibrate(fl_model *m, fl_calib *cal, int nw, int Bmax, fl_detect_load_fn load,
                         void *user, const fl_detect_config *dcfg, const int *seq,
                         const int *ends);

int fl_detect_calibrate(fl_model *m, fl_calib *cal, const fl_series *s, int ns,
                        const fl_train_config *cfg, const fl_detect_config *dcfg) {
  if (!m || !cal || !s || ns <= 0 || !cfg || !dcfg) return FL_EINVAL;
  const fl_model_spec *spec = fl_model_spec_of(m);
  int err = FL_ENOMEM;
  int total = 0;
  for (int k = 0; k < ns; k++) total += s[k].rows + 1;
  int *ends = malloc(sizeof(int) * total), nw = 0;
  int *wk = malloc(sizeof(int) * total);
  int *we = malloc(sizeof(int) * total);
  float **rw = calloc((size_t)spec->n_mod, sizeof *rw);
  if (!ends || !wk || !we || !rw) goto done;
  for (int k = 0; k < ns; k++) {
    if (s[k].rows < spec->window) continue;
    int ntr, n = fl_train_windows(&s[k], spec, cfg, ends, &ntr);
    /* Every window by default: the held-out end of a recording alone shows
     * too few operating points, and thresholds set on it raise alarms at the
     * others (simulator: 19 % of clean held-out rows flagged against 0.2 %).
     * With no held-out windows (a tiny recording), the training ones serve. */
    int from = dcfg->calibrate_all || ntr >= n ? 0 : ntr;
    for (int j = from; j < n; j++) {
      wk[nw] = k;
      we[nw++] = ends[j];
    }
  }
  for (int i = 0; i < spec->n_mod; i++)
    if (!(rw[i] = malloc(sizeof(float) * spec->mod[i].channels * spec->window *
                         spec->mod[i].rate)))
      goto done;
  fl__series_src src = {s, spec, wk, we, rw, cfg->clamp};
  err = fl__calibrate(m, cal, nw, cfg->batch > 0 ? cfg->batch : 64, fl__series_load, &src,
                      dcfg, wk, we);
done:
  for (int i = 0; rw && i < spec->n_mod; i++) free(rw[i]);
  free(rw);
  free(ends); free(wk); free(we);
  return err;
}

int fl_detect_calibrate_with(fl_model *m, fl_calib *cal, int nw, int Bmax,
                             fl_detect_load_fn load, void *user,
                             const fl_detect_config *dcfg) {
  return fl__calibrate(m, cal, nw, Bmax, load, user, dcfg, NULL, NULL);
}

/* The windows of one stream in order (seq[j] names window j's recording,
 * ends[j] its end tick), or windows in no order (seq NULL: the baseline
 * feature's statistics cannot be measured and stay zero, which the online
 * tuner replaces by the model's). */
static int fl__calibrate(fl_model *m, fl_calib *cal, int nw, int Bmax, fl_detect_load_fn load,
                         void *user, const fl_detect_config *dcfg, const int *seq,
                         const int *ends) {
  if (!m || !cal || !load || !dcfg || Bmax <= 0) return FL_EINVAL;
  const fl_model_spec *spec = fl_model_spec_of(m);
  int nch = fl_model_channels(m), nf = FL_DETECT_FEATURES * nch + 1, err = FL_ENOMEM;
  if (spec->emb > 256) return FL_EINVAL;
  fl_ctx *ctx = NULL;
  float *raw = NULL, *emb = NULL, *buf = NULL;
  fl_window_score *sc = NULL, *one = NULL;
  fl_detect_baseline bl = {0};
  double *v0 = NULL;
  if (nw < 2) {
    err = FL_EINVAL;
    goto done;
  }
  if ((err = fl_ctx_create_infer(&ctx, m, Bmax))) goto done;
  err = FL_ENOMEM;
  raw = malloc(sizeof(float) * (size_t)nw * nf);
  emb = malloc(sizeof(float) * (size_t)nw * spec->emb);
  buf = malloc(sizeof(float) * nw);
  sc = fl_window_scores_new(Bmax, spec->n_mod, nch);
  one = fl_window_scores_new(1, spec->n_mod, nch);
  v0 = calloc((size_t)nch, sizeof *v0);
  if (!raw || !emb || !buf || !sc || !one || !v0 || fl_detect_baseline_init(&bl, nch)) goto done;

  memset(cal, 0, sizeof *cal);
  if ((err = fl_calib_alloc(cal, nch))) goto done;
  err = FL_ENOMEM;
  cal->emb = spec->emb;
  cal->tail = dcfg->tail;
  cal->w_emb = dcfg->w_emb;
  cal->w_var = dcfg->w_var;
  cal->w_corr = dcfg->w_corr;
  cal->w_ratio = dcfg->w_ratio;
  cal->w_rise = dcfg->w_var > 0.0f ? dcfg->w_rise : 0.0f;
  cal->w_base = seq ? dcfg->w_base : 0.0f;
  cal->base_span = dcfg->base_span;
  cal->agree = dcfg->agree;
  cal->base_drift = 1;
  cal->settle = dcfg->settle;
  /* Pass 1: raw features and embeddings of every held-out window. */
  for (int pass = 0; pass < 2; pass++) {
    for (int j = 0; j < nw; j += Bmax) {
      int B = nw - j < Bmax ? nw - j : Bmax;
      for (int b = 0; b < B; b++)
        if ((err = load(user, m, ctx, b, j + b))) goto done;
      if (pass == 0) {
        /* Uncalibrated: features only (cal->nch is reset below). */
        cal->nch = 0;
        err = fl_detect_score(m, cal, ctx, B, NULL, raw + (size_t)j * nf);
        cal->nch = nch;
        if (err) goto done;
        memcpy(emb + (size_t)j * spec->emb, fl_ctx_embedding(ctx),
               sizeof(float) * B * spec->emb);
      } else {
        if ((err = fl_detect_score(m, cal, ctx, B, sc, NULL))) goto done;
        for (int b = 0; b < B; b++) {
          if (seq) {
            int k = j + b, same = k && seq[k] == seq[k - 1];
            if (!same) fl_detect_baseline_reset(&bl);
            fl_detect_track(m, cal, &bl, &sc[b], same ? ends[k] - ends[k - 1] : 1, NULL);
          }
          buf[j + b] = sc[b].score;
          for (int c = 0; c < nch; c++) raw[(size_t)(j + b) * nf + c] = sc[b].chan[c];
        }
      }
    }
    if (pass == 0) {
      for (int c = 0; c < nch; c++) {
        fl__mean_sd(raw + c, nw, nf, dcfg->min_spread, &cal->res_mu[c], &cal->res_sd[c]);
        fl__mean_sd(raw + nch + c, nw, nf, dcfg->min_spread, &cal->var_mu[c], &cal->var_sd[c]);
        fl__mean_sd(raw + 2 * nch + c, nw, nf, dcfg->min_spread, &cal->cor_mu[c], &cal->cor_sd[c]);
        /* The noise ratio needs the clean noise level first. */
        for (int j = 0; j < nw; j++) {
          float *f = raw + (size_t)j * nf;
          f[4 * nch + c] = fl_detect_ratio(f[nch + c], f[4 * nch + c], cal->var_mu[c]);
        }
        fl__mean_sd(raw + 4 * nch + c, nw, nf, dcfg->min_spread, &cal->rat_mu[c], &cal->rat_sd[c]);
      }
      /* The baseline feature, following each recording in order; the
       * tail means in raw make way for its statistics. */
      if (seq) {
        int nv0 = 0;
        for (int j = 0; j < nw; j++) {
          float *f = raw + (size_t)j * nf;
          if (j == 0 || seq[j] != seq[j - 1]) fl_detect_baseline_reset(&bl);
          for (int c = 0; c < nch; c++) {
            one->level[c] = f[3 * nch + c];
            one->noise[c] = (float)(exp(f[nch + c]) - FL__LOG_EPS);
          }
          one->score = 0.0f;
          fl_detect_track(m, cal, &bl, one, j && seq[j] == seq[j - 1] ? ends[j] - ends[j - 1] : 1,
                          f + 3 * nch);
          for (int c = 0; c < nch; c++) v0[c] += bl.var[c];
          nv0++;
        }
        for (int c = 0; c < nch; c++) cal->bas_v0[c] = (float)(v0[c] / (nv0 ? nv0 : 1));
        for (int c = 0; c < nch; c++)
          fl__mean_sd(raw + 3 * nch + c, nw, nf, dcfg->min_spread, &cal->bas_mu[c],
                      &cal->bas_sd[c]);
      }
      double norm = 0;
      for (int k = 0; k < spec->emb; k++) {
        double a = 0;
        for (int j = 0; j < nw; j++) a += emb[(size_t)j * spec->emb + k];
        cal->centroid[k] = (float)(a / nw);
        norm += (double)cal->centroid[k] * cal->centroid[k];
      }
      norm = sqrt(norm);
      for (int k = 0; k < spec->emb; k++) cal->centroid[k] = (float)(cal->centroid[k] / (norm > 1e-12 ? norm : 1e-12));
      /* The distances with the final centroid. */
      for (int j = 0; j < nw; j++) {
        double dot = 0;
        for (int k = 0; k < spec->emb; k++) dot += (double)emb[(size_t)j * spec->emb + k] * cal->centroid[k];
        buf[j] = 1.0f - (float)dot;
      }
      fl__mean_sd(buf, nw, 1, 0.01f, &cal->emb_mu, &cal->emb_sd);
    }
  }
  /* Pass 2 left window scores in buf and channel scores in raw. */
  cal->threshold = dcfg->margin * fl__quantile(buf, nw, dcfg->quantile);
  float *chan = malloc(sizeof(float) * (size_t)nw * nch);
  if (!chan) { err = FL_ENOMEM; goto done; }
  for (int j = 0; j < nw; j++)
    for (int c = 0; c < nch; c++) chan[(size_t)j * nch + c] = raw[(size_t)j * nf + c];
  cal->chan_threshold = dcfg->margin * fl__quantile(chan, nw * nch, dcfg->chan_quantile);
  free(chan);
  err = 0;
done:
  free(raw); free(emb); free(buf); free(sc); free(one); free(v0);
  fl_detect_baseline_free(&bl);
  fl_ctx_free(ctx);
  return err;
}

int fl_detect_reestimate(fl_model *m, const fl_calib *cal, fl_ctx *ctx, int B,
                         float *const *const *raw, const unsigned char *faulty,
                         float clamp) {
  if (!m || !cal || !ctx || !raw || !faulty || B <= 0) return FL_EINVAL;
  const fl_model_spec *s = fl_model_spec_of(m);
  int nch = fl_model_channels(m), any = 0, err = 0;
  for (int k = 0; k < B * nch; k++) any |= faulty[k] != 0;
  if (!any) return 0;
  int tail = cal->tail > 0 && cal->tail <= s->window ? cal->tail : s->window / 4;
  size_t maxct = 0;
  for (int i = 0; i < s->n_mod; i++) {
    size_t ct = (size_t)s->mod[i].channels * s->window * s->mod[i].rate;
    if (ct > maxct) maxct = ct;
  }
  float *tmp = malloc(sizeof(float) * maxct);
  if (!tmp) return FL_ENOMEM;
  for (int b = 0; b < B && !err; b++) {
    const unsigned char *fb = faulty + (size_t)b * nch;
    for (int i = 0, off = 0; i < s->n_mod && !err; off += s->mod[i].channels, i++) {
      int C = s->mod[i].channels, T = s->window * s->mod[i].rate, hit = 0;
      int t0 = s->mod[i].drifts ? (s->window - tail) * s->mod[i].rate : 0;
      for (int c = 0; c < C; c++) hit |= fb[off + c] != 0;
      if (!hit) continue;
      memcpy(tmp, raw[b][i], sizeof(float) * C * T);
      for (int c = 0; c < C; c++)
        if (fb[off + c])
          for (int t = t0; t < T; t++) tmp[(size_t)c * T + t] = NAN;
      err = fl_model_normalise(m, ctx, b, i, tmp, clamp);
    }
  }
  free(tmp);
  if (err) return err;
  if ((err = fl_model_forward(m, ctx, B, 1, 0))) return err;
  for (int b = 0; b < B; b++) {
    int hit = 0;
    for (int c = 0; c < nch; c++) hit |= faulty[(size_t)b * nch + c] != 0;
    if (!hit) continue;
    for (int i = 0; i < s->n_mod; i++) {
      size_t n = (size_t)s->mod[i].channels * s->window * s->mod[i].rate;
      memcpy(fl_ctx_estimate(ctx, i) + b * n, fl_ctx_output(ctx, i) + b * n, sizeof(float) * n);
    }
  }
  return 0;
}

int fl_detect_correct(const fl_model *m, fl_ctx *ctx, int b, int i, const float *raw,
                      const int *faulty, float range, float *corrected) {
  return fl_detect_correct_tail(m, ctx, b, i, raw, faulty, range, 0, corrected);
}

int fl_detect_correct_tail(const fl_model *m, fl_ctx *ctx, int b, int i, const float *raw,
                           const int *faulty, float range, int from, float *corrected) {
  if (!m || !ctx || !raw || !corrected) return FL_EINVAL;
  const fl_model_spec *s = fl_model_spec_of(m);
  if (i < 0 || i >= s->n_mod) return FL_EINVAL;
  int C = s->mod[i].channels, T = s->window * s->mod[i].rate, off = 0;
  if (from < 0 || from > T) return FL_EINVAL;
  for (int j = 0; j < i; j++) off += s->mod[j].channels;
  const float *y = fl_ctx_estimate(ctx, i) + (size_t)b * C * T;
  const float *level = fl_ctx_level(ctx, i) + (size_t)b * C * 2;
  const float *mean = fl_model_mean((fl_model *)m), *std = fl_model_std((fl_model *)m);
  for (int c = 0; c < C; c++) {
    int replace = faulty && faulty[c];
    for (int t = from; t < T; t++) {
      size_t k = (size_t)c * T + t;
      float trend = level[2 * c] + level[2 * c + 1] * (t - 0.5f * (T - 1));
      float est = (y[k] + trend) * std[off + c] + mean[off + c];
      /* A reading more than `range` standard deviations out is no reading
       * of the process (a dropped-out transmitter reads 0): like a missing
       * one, it is always replaced. */
      int out = range > 0.0f && fabsf(raw[k] - mean[off + c]) > range * std[off + c];
      corrected[k] = (replace || out || isnan(raw[k])) ? est : raw[k];
    }
  }
  return 0;
}
