/* faultline estimate: see include/faultline/estimate.h for the contracts. */
#include "faultline/estimate.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "faultline/error.h"

/* Ridge on the standardised changes' covariance, relative to its diagonal:
 * collinear neighbours (two accelerometers) share the weight. */
#define FL__EST_RIDGE 0.05
/* Ticks before the window's tail whose residuals anchor a channel judged
 * faulty. */
#define FL__EST_ANCHOR 5
#define FL__EST_WINDOWS 64
#define FL__EST_VAR_FLOOR 1e-4f

int fl_estimate_lag(int W, int l) {
  static const int q[FL_ESTIMATE_LAGS] = {0, 1, 4, 8, 16}; /* in W / 4 */
  int lag = q[l] * W / 4;
  return lag < 1 ? 1 : lag;
}

float fl_estimate_var(const fl_estimator *e, int W, int k, int age) {
  const float *v = e->v + (size_t)k * FL_ESTIMATE_LAGS;
  if (age <= fl_estimate_lag(W, 0)) return v[0];
  for (int l = 1; l < FL_ESTIMATE_LAGS; l++) {
    int a = fl_estimate_lag(W, l - 1), b = fl_estimate_lag(W, l);
    if (age <= b) return v[l - 1] + (v[l] - v[l - 1]) * (float)(age - a) / (float)(b - a);
  }
  return v[FL_ESTIMATE_LAGS - 1];
}

float fl_estimate_fuse(float a, float va, float b, float vb, float *var) {
  if (!(va > FL__EST_VAR_FLOOR)) va = FL__EST_VAR_FLOOR;
  if (!(vb > FL__EST_VAR_FLOOR)) vb = FL__EST_VAR_FLOOR;
  *var = va * vb / (va + vb);
  return (a * vb + b * va) / (va + vb);
}

/* Cholesky factor of the n x n symmetric positive definite A in place (its
 * lower triangle becomes L, A = L L^T). */
static int fl__chol_factor(double *A, int n) {
  for (int j = 0; j < n; j++) {
    double d = A[j * n + j];
    for (int k = 0; k < j; k++) d -= A[j * n + k] * A[j * n + k];
    if (!(d > 0)) return FL_EINVAL;
    d = sqrt(d);
    A[j * n + j] = d;
    for (int i = j + 1; i < n; i++) {
      double s = A[i * n + j];
      for (int k = 0; k < j; k++) s -= A[i * n + k] * A[j * n + k];
      A[i * n + j] = s / d;
    }
  }
  return 0;
}

/* Solves L L^T x = y in place (y becomes x) with the factor of fl__chol_factor. */
static void fl__chol_subst(const double *A, double *y, int n) {
  for (int i = 0; i < n; i++) {
    double s = y[i];
    for (int k = 0; k < i; k++) s -= A[i * n + k] * y[k];
    y[i] = s / A[i * n + i];
  }
  for (int i = n - 1; i >= 0; i--) {
    double s = y[i];
    for (int k = i + 1; k < n; k++) s -= A[k * n + i] * y[k];
    y[i] = s / A[i * n + i];
  }
}

/* The rate-1 channels: their global indices, and for each the modality and
 * channel within it. */
typedef struct {
  int n, g[FL_MAX_TOTAL_CHANNELS], mod[FL_MAX_TOTAL_CHANNELS], ch[FL_MAX_TOTAL_CHANNELS];
} fl__slow;

static void fl__slow_of(const fl_model_spec *s, fl__slow *o) {
  o->n = 0;
  for (int i = 0, off = 0; i < s->n_mod; off += s->mod[i].channels, i++)
    if (s->mod[i].rate == 1)
      for (int c = 0; c < s->mod[i].channels; c++) {
        o->g[o->n] = off + c;
        o->mod[o->n] = i;
        o->ch[o->n++] = c;
      }
}

/* Standardised value of slow channel j at tick r of recording x. */
static float fl__z(const fl_series *x, const fl__slow *sl, const float *mean, const float *std,
                   int j, int r) {
  float v = x->x[sl->mod[j]][(size_t)sl->ch[j] * x->rows + r];
  return (v - mean[sl->g[j]]) / std[sl->g[j]];
}

static int fl__fit_regression(fl_model *m, fl_estimator *e, const fl_series *s, int ns,
                              const fl__slow *sl) {
  const fl_model_spec *spec = fl_model_spec_of(m);
  const float *mean = fl_model_mean(m), *std = fl_model_std(m);
  int n = sl->n, W = spec->window, D = W;
  double *S = calloc((size_t)n * n, sizeof(double)), *A = malloc(sizeof(double) * n * n);
  double *y = malloc(sizeof(double) * n), *dz = malloc(sizeof(double) * n);
  float **Z = calloc((size_t)ns, sizeof *Z); /* per recording (rows, n): fl__z once */
  int err = FL_ENOMEM;
  if (!S || !A || !y || !dz || !Z) goto done;
  for (int k = 0; k < ns; k++) {
    if (!(Z[k] = malloc(sizeof(float) * ((size_t)s[k].rows * n + 1)))) goto done;
    for (int r = 0; r < s[k].rows; r++)
      for (int j = 0; j < n; j++) Z[k][(size_t)r * n + j] = fl__z(&s[k], sl, mean, std, j, r);
  }
  /* Covariance of the changes over D ticks (uncentred: changes have no
   * level). */
  size_t cnt = 0;
  for (int k = 0; k < ns; k++)
    for (int r = 0; r + D < s[k].rows; r++) {
      int ok = 1;
      const float *z0 = Z[k] + (size_t)r * n, *z1 = Z[k] + (size_t)(r + D) * n;
      for (int j = 0; j < n && ok; j++) {
        dz[j] = (double)z1[j] - z0[j];
        ok = isfinite(dz[j]);
      }
      if (!ok) continue;
      for (int a = 0; a < n; a++)
        for (int b = 0; b < n; b++) S[a * n + b] += dz[a] * dz[b];
      cnt++;
    }
  memset(e->w, 0, sizeof e->w);
  int nch = e->nch;
  /* Row k on the others solves M_{-k,-k} w = M_{-k,k}, M the covariance with
   * the ridge on its diagonal.  With P = M^-1 that is w = -P_{-k,k} / P_{kk}:
   * one factorisation for all rows, not one per row (n^3, not n^4: 1,000
   * channels). */
  if (cnt > (size_t)n) {
    for (int a = 0; a < n; a++)
      for (int b = 0; b < n; b++)
        A[a * n + b] = S[a * n + b] + (a == b ? FL__EST_RIDGE * S[a * n + a] + 1e-9 * (double)cnt : 0);
    if (n > 1 && !fl__chol_factor(A, n))
      for (int k = 0; k < n; k++) {
        for (int j = 0; j < n; j++) y[j] = j == k;
        fl__chol_subst(A, y, n);
        for (int j = 0; j < n; j++)
          if (j != k) e->w[(size_t)sl->g[k] * nch + sl->g[j]] = (float)(-y[j] / y[k]);
      }
  }
  /* The anchored regression's error at each lag: the residual's change. */
  for (int k = 0; k < n; k++) {
    const float *wk = e->w + (size_t)sl->g[k] * nch;
    for (int j = 0; j < n; j++) dz[j] = j == k ? -1.0 : wk[sl->g[j]]; /* the row's weights */
    for (int l = 0; l < FL_ESTIMATE_LAGS; l++) {
      int lag = fl_estimate_lag(W, l);
      double se = 0;
      size_t c2 = 0;
      for (int f = 0; f < ns; f++)
        for (int r = 0; r + lag < s[f].rows; r++) {
          double d = 0;
          const float *z0 = Z[f] + (size_t)r * n, *z1 = Z[f] + (size_t)(r + lag) * n;
          for (int j = 0; j < n; j++) {
            if (dz[j] == 0.0) continue;
            d += dz[j] * ((double)z1[j] - z0[j]);
          }
          if (!isfinite(d)) continue;
          se += d * d;
          c2++;
        }
      e->v[(size_t)sl->g[k] * FL_ESTIMATE_LAGS + l] = c2 ? (float)(se / c2) : 1.0f;
    }
    /* The variance of a longer lag is never below a shorter one's. */
    float *v = e->v + (size_t)sl->g[k] * FL_ESTIMATE_LAGS;
    for (int l = 1; l < FL_ESTIMATE_LAGS; l++)
      if (v[l] < v[l - 1]) v[l] = v[l - 1];
  }
  err = 0;
done:
  for (int k = 0; Z && k < ns; k++) free(Z[k]);
  free(Z);
  free(S);
  free(A);
  free(y);
  free(dz);
  return err;
}

/* The network's error on each channel masked in turn (tail ticks), on up
 * to FL__EST_WINDOWS windows spread over the recordings. */
static int fl__fit_network(fl_model *m, fl_estimator *e, const fl_series *s, int ns, int tail,
                           float clamp) {
  const fl_model_spec *spec = fl_model_spec_of(m);
  int W = spec->window, nch = e->nch, total = 0, err = FL_ENOMEM;
  for (int k = 0; k < ns; k++) total += s[k].rows >= W ? s[k].rows - W + 1 : 0;
  if (!total) return FL_EINVAL;
  int nw = total < FL__EST_WINDOWS ? total : FL__EST_WINDOWS;
  fl_ctx *ctx = NULL;
  float *raw[FL_MAX_MODALITIES] = {0}, *tmp = NULL;
  double *se = calloc((size_t)nch, sizeof(double));
  size_t *cnt = calloc((size_t)nch, sizeof(size_t)), maxct = 0;
  int *wk = malloc(sizeof(int) * nw), *we = malloc(sizeof(int) * nw);
  if (!se || !cnt || !wk || !we) goto done;
  for (int i = 0; i < spec->n_mod; i++) {
    size_t ct = (size_t)spec->mod[i].channels * W * spec->mod[i].rate;
    if (ct > maxct) maxct = ct;
    if (!(raw[i] = malloc(sizeof(float) * ct))) goto done;
  }
  if (!(tmp = malloc(sizeof(float) * maxct))) goto done;
  for (int j = 0; j < nw; j++) {
    long pos = (long)((double)(j + 0.5) * total / nw);
    int k = 0;
    while (pos >= s[k].rows - W + 1) pos -= s[k].rows - W + 1, k++;
    wk[j] = k;
    we[j] = (int)pos + W;
  }
  if ((err = fl_ctx_create_infer(&ctx, m, nw))) goto done;
  if (tail < 1 || tail > W) tail = W / 4;
  for (int i = 0, off = 0; i < spec->n_mod; off += spec->mod[i].channels, i++) {
    int C = spec->mod[i].channels, T = W * spec->mod[i].rate;
    int m0 = spec->mod[i].drifts ? (W - tail) * spec->mod[i].rate : 0;
    int t0 = (W - tail) * spec->mod[i].rate;
    for (int c = 0; c < C; c++) {
      for (int j = 0; j < nw; j++) {
        if ((err = fl_series_window(&s[wk[j]], spec, we[j], raw))) goto done;
        for (int q = 0; q < spec->n_mod; q++) {
          const float *src = raw[q];
          if (q == i) {
            memcpy(tmp, raw[q], sizeof(float) * C * T);
            for (int t = m0; t < T; t++) tmp[(size_t)c * T + t] = NAN;
            src = tmp;
          }
          if ((err = fl_model_normalise(m, ctx, j, q, src, clamp))) goto done;
        }
      }
      if ((err = fl_model_forward(m, ctx, nw, 1, 0))) goto done;
      const float *mean = fl_model_mean(m), *std = fl_model_std(m);
      for (int j = 0; j < nw; j++) {
        if ((err = fl_series_window(&s[wk[j]], spec, we[j], raw))) goto done;
        const float *y = fl_ctx_output(ctx, i) + (size_t)j * C * T;
        const float *lv = fl_ctx_level(ctx, i) + (size_t)j * C * 2;
        for (int t = t0; t < T; t++) {
          float x = raw[i][(size_t)c * T + t];
          if (isnan(x)) continue;
          float trend = lv[2 * c] + lv[2 * c + 1] * (t - 0.5f * (T - 1));
          double d = (double)y[(size_t)c * T + t] + trend - (x - mean[off + c]) / std[off + c];
          se[off + c] += d * d;
          cnt[off + c]++;
        }
      }
    }
  }
  for (int c = 0; c < nch; c++) e->vm[c] = cnt[c] ? (float)(se[c] / cnt[c]) : 1.0f;
  err = 0;
done:
  for (int i = 0; i < FL_MAX_MODALITIES; i++) free(raw[i]);
  free(tmp);
  free(se);
  free(cnt);
  free(wk);
  free(we);
  fl_ctx_free(ctx);
  return err;
}

int fl_estimate_fit(fl_model *m, fl_estimator *e, const fl_series *s, int ns, int tail,
                    float clamp) {
  if (!m || !e || !s || ns < 1) return FL_EINVAL;
  memset(e, 0, sizeof *e);
  e->nch = fl_model_channels(m);
  fl__slow sl;
  fl__slow_of(fl_model_spec_of(m), &sl);
  int err = fl__fit_regression(m, e, s, ns, &sl);
  if (!err) err = fl__fit_network(m, e, s, ns, tail, clamp);
  e->on = !err;
  return err;
}

/* Anchored residual of slow channel k from the window's ticks [a, b): the
 * mean of z_k - w_k . o over the ticks where every term is a number. */
static int fl__anchor(const fl_estimator *e, const fl__slow *sl, const float *mean,
                      const float *std, float *const raw[FL_MAX_MODALITIES], int W, int k,
                      int a, int b, float *res, float *at) {
  double sum = 0, ts = 0;
  int n = 0;
  const float *wk = e->w + (size_t)sl->g[k] * e->nch;
  for (int t = a < 0 ? 0 : a; t < b; t++) {
    double r = 0;
    for (int j = 0; j < sl->n; j++) {
      double w = j == k ? 1.0 : -wk[sl->g[j]];
      if (w == 0.0) continue;
      r += w * (raw[sl->mod[j]][(size_t)sl->ch[j] * W + t] - mean[sl->g[j]]) / std[sl->g[j]];
    }
    if (!isfinite(r)) continue;
    sum += r;
    ts += t;
    n++;
  }
  if (!n) return 0;
  *res = (float)(sum / n);
  *at = (float)(ts / n);
  return 1;
}

int fl_estimate_apply(const fl_model *m, const fl_estimator *e, fl_estimate_state *st, int tail,
                      float *const raw[FL_MAX_MODALITIES], const unsigned char *faulty,
                      float range, int from, float *const corrected[FL_MAX_MODALITIES],
                      float *const sigma[FL_MAX_MODALITIES]) {
  if (!m || !st || !raw || !faulty || !corrected) return FL_EINVAL;
  fl_model *mm = (fl_model *)m;
  const fl_model_spec *spec = fl_model_spec_of(mm);
  const float *mean = fl_model_mean(mm), *std = fl_model_std(mm);
  int W = spec->window, on = e && e->on && e->nch == fl_model_channels(mm);
  if (from < 0 || from > W) return FL_EINVAL;
  if (tail < 1 || tail > W) tail = W / 4;
  fl__slow sl;
  fl__slow_of(spec, &sl);
  /* Fast channels: the network's estimate, its measured spread. */
  for (int i = 0, off = 0; i < spec->n_mod; off += spec->mod[i].channels, i++) {
    int C = spec->mod[i].channels, rate = spec->mod[i].rate, T = W * rate;
    if (rate == 1 || !sigma || !sigma[i]) continue;
    for (int c = 0; c < C; c++)
      for (int t = from * rate; t < T; t++) {
        size_t q = (size_t)c * T + t;
        float x = raw[i][q];
        int out = range > 0.0f && fabsf(x - mean[off + c]) > range * std[off + c];
        int rep = faulty[off + c] || out || isnan(x);
        sigma[i][q] = rep ? (on ? sqrtf(e->vm[off + c]) : NAN) * std[off + c] : 0.0f;
      }
  }
  float o[FL_MAX_TOTAL_CHANNELS];
  for (int t = from; t < W; t++) {
    /* The others as the output carries them: the reading where trusted,
     * the network's estimate where replaced. */
    for (int j = 0; j < sl.n; j++)
      o[j] = (corrected[sl.mod[j]][(size_t)sl.ch[j] * W + t] - mean[sl.g[j]]) / std[sl.g[j]];
    for (int k = 0; k < sl.n; k++) {
      int g = sl.g[k];
      size_t q = (size_t)sl.ch[k] * W + t;
      float x = raw[sl.mod[k]][q];
      int out = range > 0.0f && fabsf(x - mean[g]) > range * std[g];
      int rep = faulty[g] || out || isnan(x);
      double pred = on ? 0.0 : NAN;
      for (int j = 0; j < sl.n && on; j++)
        if (j != k) pred += (double)e->w[(size_t)g * e->nch + sl.g[j]] * o[j];
      if (!rep) {
        if (isfinite(pred)) {
          st->res[g] = (float)((x - mean[g]) / std[g] - pred);
          st->age[g] = 0;
          st->anchored[g] = 1;
        }
        st->held[g] = 0;
        if (sigma && sigma[sl.mod[k]]) sigma[sl.mod[k]][q] = 0.0f;
        continue;
      }
      if (!st->held[g] && faulty[g] && on) {
        /* Judged faulty from a trusted tick on: the readings that raised the
         * flag are in the tail, so the anchor is the ticks just before it. */
        float r, at;
        if (fl__anchor(e, &sl, mean, std, raw, W, k, W - tail - FL__EST_ANCHOR, W - tail, &r,
                       &at)) {
          st->res[g] = r;
          st->age[g] = (int)lrintf((float)t - at) - 1;
          st->anchored[g] = 1;
        }
      }
      st->held[g] = 1;
      if (st->age[g] < 1 << 28) st->age[g]++;
      float net = o[k], vm = on ? e->vm[g] : NAN, v = vm, z = net;
      if (on && st->anchored[g] && isfinite(pred))
        z = fl_estimate_fuse((float)(st->res[g] + pred), fl_estimate_var(e, W, g, st->age[g]),
                             net, vm, &v);
      corrected[sl.mod[k]][q] = z * std[g] + mean[g];
      /* The fused value stands in for the channel from here on. */
      o[k] = z;
      if (sigma && sigma[sl.mod[k]]) sigma[sl.mod[k]][q] = sqrtf(v) * std[g];
    }
  }
  return 0;
}
