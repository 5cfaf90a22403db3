/* faultline estimate: see include/faultline/estimate.h for the contracts. */
#include "faultline/estimate.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

#include "faultline/error.h"

/* Ridge on the standardised changes' covariance, relative to its diagonal:
 * collinear neighbours (two accelerometers) share the weight. */
#define FL__EST_RIDGE 0.05
#define FL__EST_CHUNK 1024 /* rows of changes per BLAS call */
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

float fl_estimate_var_net(const fl_estimator *e, int W, int tail, int k, int age) {
  float a = e->vm[k], b = e->vmw[k];
  if (age <= tail || W <= tail) return a;
  if (age >= W) return b;
  return a + (b - a) * (float)(age - tail) / (float)(W - tail);
}

float fl_estimate_fuse(float a, float va, float b, float vb, float *var) {
  if (!(va > FL__EST_VAR_FLOOR)) va = FL__EST_VAR_FLOOR;
  if (!(vb > FL__EST_VAR_FLOOR)) vb = FL__EST_VAR_FLOOR;
  *var = va * vb / (va + vb);
  return (a * vb + b * va) / (va + vb);
}

/* Cholesky factor of the n x n symmetric positive definite A in place (its
 * lower triangle becomes L, A = L L^T). */
static int fl__chol(double *A, int n) {
  for (int j = 0; j < n; j++) {
    double d = A[(size_t)j * n + j];
    for (int k = 0; k < j; k++) d -= A[(size_t)j * n + k] * A[(size_t)j * n + k];
    if (!(d > 0)) return FL_EINVAL;
    d = sqrt(d);
    A[(size_t)j * n + j] = d;
    for (int i = j + 1; i < n; i++) {
      double s = A[(size_t)i * n + j];
      for (int k = 0; k < j; k++) s -= A[(size_t)i * n + k] * A[(size_t)j * n + k];
      A[(size_t)i * n + j] = s / d;
    }
  }
  return 0;
}

/* Solves L L^T x = y in place with fl__chol's factor. */
static void fl__chol_solve(const double *A, double *y, int n) {
  for (int i = 0; i < n; i++) {
    double s = y[i];
    for (int k = 0; k < i; k++) s -= A[(size_t)i * n + k] * y[k];
    y[i] = s / A[(size_t)i * n + i];
  }
  for (int i = n - 1; i >= 0; i--) {
    double s = y[i];
    for (int k = i + 1; k < n; k++) s -= A[(size_t)k * n + i] * y[k];
    y[i] = s / A[(size_t)i * n + i];
  }
}

/* The rate-1 channels: their global indices, and for each the modality and
 * channel within it. */
typedef struct {
  int n, *g, *mod, *ch; /* (n) each, in one allocation at g */
} fl__slow;

/* Fills o with its arrays at buf (3 x the spec's channels ints). */
static void fl__slow_in(const fl_model_spec *s, fl__slow *o, int *buf) {
  int total = fl_model_spec_channels(s);
  o->n = 0;
  o->g = buf;
  o->mod = o->g + total;
  o->ch = o->mod + total;
  for (int i = 0, off = 0; i < s->n_mod; off += s->mod[i].channels, i++)
    if (s->mod[i].rate == 1)
      for (int c = 0; c < s->mod[i].channels; c++) {
        o->g[o->n] = off + c;
        o->mod[o->n] = i;
        o->ch[o->n++] = c;
      }
}

/* Fills o; FL_ENOMEM when its arrays cannot be had.  fl__slow_free after. */
static int fl__slow_of(const fl_model_spec *s, fl__slow *o) {
  int total = fl_model_spec_channels(s);
  int *buf = malloc(sizeof(int) * 3 * (size_t)(total ? total : 1));
  if (!buf) return FL_ENOMEM;
  fl__slow_in(s, o, buf);
  return 0;
}

static void fl__slow_free(fl__slow *o) {
  free(o->g);
  o->g = o->mod = o->ch = NULL;
}

/* Standardised value of slow channel j at tick r of recording x. */
static float fl__z(const fl_series *x, const fl__slow *sl, const float *mean, const float *std,
                   int j, int r) {
  float v = x->x[sl->mod[j]][(size_t)sl->ch[j] * x->rows + r];
  return (v - mean[sl->g[j]]) / std[sl->g[j]];
}

/* The standardised changes over `lag` ticks of every slow channel of
 * recording x, from row *at on, of the rows where all of them are numbers:
 * at most cap rows into dz (rows, n), *at moved past the rows read.
 * Returns the rows written, 0 at the recording's end. */
static int fl__changes(const fl_series *x, const fl__slow *sl, const float *mean,
                       const float *std, int lag, int *at, double *dz, int cap) {
  int n = sl->n, got = 0;
  for (; *at + lag < x->rows && got < cap; (*at)++) {
    double *d = dz + (size_t)got * n;
    int ok = 1;
    for (int j = 0; j < n && ok; j++) {
      d[j] = (double)fl__z(x, sl, mean, std, j, *at + lag) - fl__z(x, sl, mean, std, j, *at);
      ok = isfinite(d[j]);
    }
    got += ok;
  }
  return got;
}

/* Smoothing factors of the anchor tried: 1, 1/2, ..., 1/64. */
#define FL__EST_ALPHAS 7
/* Ticks per recording at most at which the anchor's error is measured
 * (every step-th beyond). */
#define FL__EST_ANCHOR_ROWS 20000

/* The anchored regression's error at each lag, and the anchor's smoothing:
 * per channel k the residual r = z_k - w_k . o at every tick where it is a
 * number, its anchor a(t) = a + alpha (r(t) - a) (alpha 1: the last tick's
 * residual), and the error r(t + lag) - a(t).  A channel whose readings are
 * noise around a level is better anchored on an average of its past than
 * on one tick; alpha is the grid's value of least error summed over the
 * lags. */
static int fl__fit_anchor(fl_estimator *e, const fl_series *s, int ns, const fl__slow *sl,
                          const float *mean, const float *std, int W) {
  int n = sl->n, nch = e->nch, maxr = 0, err = FL_ENOMEM;
  for (int f = 0; f < ns; f++)
    if (s[f].rows > maxr) maxr = s[f].rows;
  /* Every channel's residual at every tick of a recording (as much as the
   * recording itself takes), by one product per chunk of ticks. */
  size_t nn = (size_t)(n ? n : 1) * (n ? n : 1), nc = (size_t)FL__EST_CHUNK * (n ? n : 1);
  float *R = malloc(sizeof(float) * (size_t)(maxr ? maxr : 1) * (n ? n : 1));
  double *Ws = malloc(sizeof(double) * nn), *Z = malloc(sizeof(double) * nc);
  double *E = malloc(sizeof(double) * nc);
  double (*se)[FL__EST_ALPHAS][FL_ESTIMATE_LAGS] = calloc((size_t)(n ? n : 1), sizeof *se);
  size_t (*cnt)[FL__EST_ALPHAS][FL_ESTIMATE_LAGS] = calloc((size_t)(n ? n : 1), sizeof *cnt);
  if (!R || !Ws || !Z || !E || !se || !cnt) goto done;
  for (int k = 0; k < n; k++)
    for (int j = 0; j < n; j++)
      Ws[(size_t)k * n + j] = j == k ? 1.0 : -e->w[(size_t)sl->g[k] * nch + sl->g[j]];
  for (int f = 0; f < ns; f++) {
    int rows = s[f].rows, step = rows > FL__EST_ANCHOR_ROWS ? rows / FL__EST_ANCHOR_ROWS : 1;
    for (int t0 = 0; t0 < rows; t0 += FL__EST_CHUNK) {
      int got = rows - t0 < FL__EST_CHUNK ? rows - t0 : FL__EST_CHUNK;
      for (int t = 0; t < got; t++)
        for (int j = 0; j < n; j++) Z[(size_t)t * n + j] = fl__z(&s[f], sl, mean, std, j, t0 + t);
      cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, got, n, n, 1.0, Z, n, Ws, n, 0.0, E,
                  n);
      for (size_t q = 0; q < (size_t)got * n; q++) R[(size_t)t0 * n + q] = (float)E[q];
    }
    for (int k = 0; k < n; k++)
      for (int a = 0; a < FL__EST_ALPHAS; a++) {
        double alpha = ldexp(1.0, -a), lvl = NAN;
        for (int t = 0; t < rows; t++) {
          double r = R[(size_t)t * n + k];
          if (!isfinite(r)) continue;
          lvl = isnan(lvl) ? r : lvl + alpha * (r - lvl);
          if (t % step) continue;
          for (int l = 0; l < FL_ESTIMATE_LAGS; l++) {
            int u = t + fl_estimate_lag(W, l);
            if (u >= rows) break;
            double d = R[(size_t)u * n + k] - lvl;
            if (!isfinite(d)) continue;
            se[k][a][l] += d * d;
            cnt[k][a][l]++;
          }
        }
      }
  }
  for (int k = 0; k < n; k++) {
    int g = sl->g[k], best = 0;
    double bsum = INFINITY;
    for (int a = 0; a < FL__EST_ALPHAS; a++) {
      double sum = 0;
      for (int l = 0; l < FL_ESTIMATE_LAGS; l++)
        sum += cnt[k][a][l] ? se[k][a][l] / cnt[k][a][l] : INFINITY;
      if (sum < bsum) bsum = sum, best = a;
    }
    e->alpha[g] = (float)ldexp(1.0, -best);
    for (int l = 0; l < FL_ESTIMATE_LAGS; l++)
      e->v[(size_t)g * FL_ESTIMATE_LAGS + l] =
          cnt[k][best][l] ? (float)(se[k][best][l] / cnt[k][best][l]) : 1.0f;
  }
  err = 0;
done:
  free(R);
  free(Ws);
  free(Z);
  free(E);
  free(se);
  free(cnt);
  return err;
}

static int fl__fit_regression(fl_model *m, fl_estimator *e, const fl_series *s, int ns,
                              const fl__slow *sl) {
  const fl_model_spec *spec = fl_model_spec_of(m);
  const float *mean = fl_model_mean(m), *std = fl_model_std(m);
  int n = sl->n, W = spec->window, D = W;
  size_t nn = (size_t)(n ? n : 1) * (n ? n : 1), nc = (size_t)FL__EST_CHUNK * (n ? n : 1);
  double *S = calloc(nn, sizeof(double)), *A = malloc(sizeof(double) * nn);
  double *y = malloc(sizeof(double) * (n ? n : 1)), *dz = malloc(sizeof(double) * nc);
  int err = FL_ENOMEM;
  if (!S || !A || !y || !dz) goto done;
  /* Covariance of the changes over D ticks (uncentred: changes have no
   * level), a chunk of rows at a time. */
  size_t cnt = 0;
  for (int k = 0; k < ns; k++)
    for (int at = 0, got; (got = fl__changes(&s[k], sl, mean, std, D, &at, dz, FL__EST_CHUNK));) {
      cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, n, got, 1.0, dz, n, 1.0, S, n);
      cnt += (size_t)got;
    }
  for (int a = 0; a < n; a++)
    for (int b = 0; b < a; b++) S[(size_t)a * n + b] = S[(size_t)b * n + a];
  int nch = e->nch;
  memset(e->w, 0, sizeof(float) * (size_t)nch * nch);
  /* Row k on the others, ridge on the diagonal: with F = S + ridge and
   * P = F^-1, the regression of k on the rest is w_kj = -P_jk / P_kk (the
   * inverse of a partitioned matrix), so one factorisation serves every
   * row. */
  if (n > 1 && cnt > (size_t)n) {
    memcpy(A, S, sizeof(double) * (size_t)n * n);
    for (int a = 0; a < n; a++)
      A[(size_t)a * n + a] += FL__EST_RIDGE * S[(size_t)a * n + a] + 1e-9 * (double)cnt;
    if (!fl__chol(A, n))
      for (int k = 0; k < n; k++) {
        memset(y, 0, sizeof(double) * n);
        y[k] = 1.0;
        fl__chol_solve(A, y, n); /* column k of P */
        for (int j = 0; j < n; j++)
          if (j != k) e->w[(size_t)sl->g[k] * nch + sl->g[j]] = (float)(-y[j] / y[k]);
      }
  }
  if ((err = fl__fit_anchor(e, s, ns, sl, mean, std, W))) goto done;
  /* The variance of a longer lag is never below a shorter one's. */
  for (int k = 0; k < n; k++) {
    float *v = e->v + (size_t)sl->g[k] * FL_ESTIMATE_LAGS;
    for (int l = 1; l < FL_ESTIMATE_LAGS; l++)
      if (v[l] < v[l - 1]) v[l] = v[l - 1];
  }
  err = 0;
done:
  free(S);
  free(A);
  free(y);
  free(dz);
  return err;
}

/* Windows of recording x the network's error is measured on: the last
 * `val` share of them (the ones training held out), all when val <= 0. */
static int fl__val_windows(const fl_series *x, int W, float val) {
  int n = x->rows >= W ? x->rows - W + 1 : 0;
  if (val <= 0.0f || n < 2) return n;
  int nv = (int)floorf(n * val + 0.5f);
  return nv < 1 ? 1 : nv > n ? n : nv;
}

/* The network's error on each channel masked in turn (tail ticks), on up
 * to FL__EST_WINDOWS windows spread over the held-out part of the
 * recordings: on the windows it was trained on, the network's error is a
 * fraction of what it makes on new data, and the fusion would trust it
 * too much. */
static int fl__fit_network(fl_model *m, fl_estimator *e, const fl_series *s, int ns, int tail,
                           float clamp, float val) {
  const fl_model_spec *spec = fl_model_spec_of(m);
  int W = spec->window, nch = e->nch, total = 0, err = FL_ENOMEM;
  for (int k = 0; k < ns; k++) total += fl__val_windows(&s[k], W, val);
  if (!total) return FL_EINVAL;
  int nw = total < FL__EST_WINDOWS ? total : FL__EST_WINDOWS;
  fl_ctx *ctx = NULL;
  float **raw = calloc((size_t)spec->n_mod, sizeof *raw), *tmp = NULL;
  double *se = calloc(2 * (size_t)nch, sizeof(double));
  size_t *cnt = calloc(2 * (size_t)nch, sizeof(size_t)), maxct = 0;
  int *wk = malloc(sizeof(int) * nw), *we = malloc(sizeof(int) * nw);
  if (!raw || !se || !cnt || !wk || !we) goto done;
  for (int i = 0; i < spec->n_mod; i++) {
    size_t ct = (size_t)spec->mod[i].channels * W * spec->mod[i].rate;
    if (ct > maxct) maxct = ct;
    if (!(raw[i] = malloc(sizeof(float) * ct))) goto done;
  }
  if (!(tmp = malloc(sizeof(float) * maxct))) goto done;
  for (int j = 0; j < nw; j++) {
    long pos = (long)((double)(j + 0.5) * total / nw);
    int k = 0;
    while (pos >= fl__val_windows(&s[k], W, val)) pos -= fl__val_windows(&s[k], W, val), k++;
    wk[j] = k;
    we[j] = s[k].rows + 1 - fl__val_windows(&s[k], W, val) + (int)pos;
  }
  if ((err = fl_ctx_create_infer(&ctx, m, nw))) goto done;
  if (tail < 1 || tail > W) tail = W / 4;
  /* Pass 0 masks a drifting channel's tail only (its level from the
   * window's head: a fault just begun), pass 1 the whole window (a fault
   * that has lasted a window); any other channel is masked whole in both,
   * measured once. */
  for (int pass = 0; pass < 2; pass++)
  for (int i = 0, off = 0; i < spec->n_mod; off += spec->mod[i].channels, i++) {
    int C = spec->mod[i].channels, T = W * spec->mod[i].rate;
    if (pass == 1 && !spec->mod[i].drifts) continue;
    int m0 = spec->mod[i].drifts && !pass ? (W - tail) * spec->mod[i].rate : 0;
    int t0 = (W - tail) * spec->mod[i].rate;
    double *sp = se + (size_t)pass * nch;
    size_t *cp = cnt + (size_t)pass * nch;
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
          sp[off + c] += d * d;
          cp[off + c]++;
        }
      }
    }
  }
  for (int c = 0; c < nch; c++) {
    e->vm[c] = cnt[c] ? (float)(se[c] / cnt[c]) : 1.0f;
    e->vmw[c] = cnt[nch + c] ? (float)(se[nch + c] / cnt[nch + c]) : e->vm[c];
  }
  err = 0;
done:
  for (int i = 0; raw && i < spec->n_mod; i++) free(raw[i]);
  free(raw);
  free(tmp);
  free(se);
  free(cnt);
  free(wk);
  free(we);
  fl_ctx_free(ctx);
  return err;
}


/* ---- the kernel estimate (AAKR) ------------------------------------------ */

/* Folds of the blocked cross-validation, queries per fit, and the grid of
 * bandwidths: FL__KER_GRID multiples of the median nearest distance, from
 * 1/2 by sqrt 2. */
#define FL__KER_FOLDS 8
#define FL__KER_QUERIES 512
#define FL__KER_GRID 11
/* Kernel evaluations a fit may spend on the bandwidth search (a wide
 * model cross-validates on fewer queries). */
#define FL__KER_WORK 6e7

float fl_kernel_regress(const float *mem, int m, int n, const float *q, int k, float h,
                        double *d2, int *have) {
  if (!*have) {
    int used = 0;
    for (int c = 0; c < n; c++) used += c != k && !isnan(q[c]);
    if (!used) return NAN;
    for (int j = 0; j < m; j++) {
      const float *r = mem + (size_t)j * n;
      double s = 0;
      for (int c = 0; c < n; c++) {
        if (c == k || isnan(q[c])) continue;
        double d = (double)q[c] - r[c];
        s += d * d;
      }
      d2[j] = s;
    }
    *have = 1;
  }
  double lo = INFINITY;
  for (int j = 0; j < m; j++)
    if (d2[j] < lo) lo = d2[j];
  /* Distances relative to the nearest tick: a query far from every memory
   * tick takes the nearest ones rather than dividing by nothing. */
  double num = 0, den = 0, g = 1.0 / (2.0 * (double)h * h);
  for (int j = 0; j < m; j++) {
    double w = exp(-(d2[j] - lo) * g);
    num += w * mem[(size_t)j * n + k];
    den += w;
  }
  return (float)(num / den);
}

float fl_estimate_kernel(const fl_estimator *e, const float *q, int k, double *d2, int *have) {
  if (!e || !e->nmem || !e->mem || k < 0 || k >= e->nch || !(e->h[k] > 0.0f)) return NAN;
  return fl_kernel_regress(e->mem, e->nmem, e->nch, q, k, e->h[k], d2, have);
}

/* The standardised tick r of recording x into row (nch), a rate > 1
 * channel by its tick's mean; 1 when every value is a number. */
static int fl__tick(const fl_model_spec *spec, const float *mean, const float *std,
                    const fl_series *x, int r, float *row) {
  int ok = 1;
  for (int i = 0, off = 0; i < spec->n_mod; off += spec->mod[i].channels, i++) {
    int rate = spec->mod[i].rate;
    size_t len = (size_t)x->rows * rate;
    for (int c = 0; c < spec->mod[i].channels; c++) {
      double a = 0;
      for (int u = 0; u < rate; u++) a += x->x[i][(size_t)c * len + (size_t)r * rate + u];
      row[off + c] = (float)((a / rate - mean[off + c]) / std[off + c]);
      ok &= isfinite(row[off + c]);
    }
  }
  return ok;
}

static int fl__cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static int fl__fit_kernel(fl_model *m, fl_estimator *e, const fl_series *s, int ns,
                          const fl__slow *sl) {
  const fl_model_spec *spec = fl_model_spec_of(m);
  const float *mean = fl_model_mean(m), *std = fl_model_std(m);
  int n = e->nch, err = FL_ENOMEM;
  if (sl->n < 1 || n < 2) return 0;
  /* The complete ticks, in order over the recordings. */
  float *row = malloc(sizeof(float) * n);
  if (!row) return FL_ENOMEM;
  long K = 0;
  for (int f = 0; f < ns; f++)
    for (int r = 0; r < s[f].rows; r++) K += fl__tick(spec, mean, std, &s[f], r, row);
  if (K < 2 * FL__KER_FOLDS) {
    free(row);
    return 0; /* too little to fit a kernel on: the estimate goes without */
  }
  long M = FL_ESTIMATE_MEM, cap = FL_ESTIMATE_MEM_FLOATS / n;
  if (M > cap) M = cap;
  if (M > K) M = K;
  if (M < 2) M = 2;
  long Q = FL__KER_QUERIES, qcap = (long)(FL__KER_WORK / ((double)M * sl->n * FL__KER_GRID));
  if (Q > qcap) Q = qcap;
  if (Q < 32) Q = 32;
  if (Q > K) Q = K;
  float *qs = malloc(sizeof(float) * (size_t)Q * n);
  int *mfold = malloc(sizeof(int) * (size_t)M), *qfold = malloc(sizeof(int) * (size_t)Q);
  double *dd = malloc(sizeof(double) * (size_t)M * n), *d2 = malloc(sizeof(double) * (size_t)M);
  double *tot = malloc(sizeof(double) * (size_t)M);
  double *near = malloc(sizeof(double) * (size_t)Q);
  double *se = calloc((size_t)FL__KER_GRID * sl->n, sizeof(double));
  size_t *cnt = calloc((size_t)sl->n, sizeof(size_t));
  if (!qs || !mfold || !qfold || !dd || !d2 || !tot || !near || !se || !cnt ||
      fl_estimator_alloc_memory(e, (int)M))
    goto done;
  /* Memory tick j is the floor(j K / M)-th complete tick, query q the
   * floor((q + 1/2) K / Q)-th; a tick's fold is its block of K / 8. */
  long i = 0, jm = 0, jq = 0;
  for (int f = 0; f < ns; f++)
    for (int r = 0; r < s[f].rows; r++) {
      if (!fl__tick(spec, mean, std, &s[f], r, row)) continue;
      int fold = (int)(i * FL__KER_FOLDS / K);
      if (jm < M && i == jm * K / M) {
        memcpy(e->mem + (size_t)jm * n, row, sizeof(float) * n);
        mfold[jm++] = fold;
      }
      if (jq < Q && i == (long)(((double)jq + 0.5) * K / Q)) {
        memcpy(qs + (size_t)jq * n, row, sizeof(float) * n);
        qfold[jq++] = fold;
      }
      i++;
    }
  Q = jq;
  /* The scale of the grid: the median over the queries of the distance to
   * the nearest memory tick outside the query's block (all channels). */
  long nq = 0;
  for (long q = 0; q < Q; q++) {
    double lo = INFINITY;
    for (long j = 0; j < M; j++) {
      if (mfold[j] == qfold[q]) continue;
      double t = 0;
      for (int c = 0; c < n; c++) {
        double d = (double)qs[(size_t)q * n + c] - e->mem[(size_t)j * n + c];
        t += d * d;
      }
      if (t < lo) lo = t;
    }
    if (isfinite(lo)) near[nq++] = sqrt(lo);
  }
  if (!nq) {
    err = 0;
    goto off;
  }
  qsort(near, (size_t)nq, sizeof(double), fl__cmp_double);
  double scale = near[nq / 2] > 1e-3 ? near[nq / 2] : 1e-3;
  /* Per query: each memory tick's squared differences, then for every
   * rate-1 channel k (the distance without k) and bandwidth the squared
   * error of the estimate. */
  for (long q = 0; q < Q; q++) {
    const float *x = qs + (size_t)q * n;
    long mv = 0;
    for (long j = 0; j < M; j++) {
      if (mfold[j] == qfold[q]) continue;
      for (int c = 0; c < n; c++) {
        double d = (double)x[c] - e->mem[(size_t)j * n + c];
        dd[(size_t)mv * n + c] = d * d;
      }
      mfold[j] = -1 - mfold[j]; /* marks the rows in use, undone below */
      mv++;
    }
    if (!mv) {
      for (long j = 0; j < M; j++)
        if (mfold[j] < 0) mfold[j] = -1 - mfold[j];
      continue;
    }
    for (long j = 0; j < mv; j++) {
      double t = 0;
      for (int c = 0; c < n; c++) t += dd[(size_t)j * n + c];
      tot[j] = t;
    }
    for (int k = 0; k < sl->n; k++) {
      int g = sl->g[k];
      double lo = INFINITY;
      for (long j = 0; j < mv; j++) {
        double t = tot[j] - dd[(size_t)j * n + g];
        d2[j] = t;
        if (t < lo) lo = t;
      }
      for (int h = 0; h < FL__KER_GRID; h++) {
        double bw = scale * 0.5 * pow(2.0, 0.5 * h), gk = 1.0 / (2.0 * bw * bw);
        double num = 0, den = 0;
        long jj = 0;
        for (long j = 0; j < M; j++) {
          if (mfold[j] >= 0) continue;
          double w = exp(-(d2[jj++] - lo) * gk);
          num += w * e->mem[(size_t)j * n + g];
          den += w;
        }
        double d = num / den - x[g];
        se[(size_t)k * FL__KER_GRID + h] += d * d;
      }
      cnt[k]++;
    }
    for (long j = 0; j < M; j++)
      if (mfold[j] < 0) mfold[j] = -1 - mfold[j];
  }
  /* Per channel the bandwidth of least error (the wider on a tie). */
  for (int k = 0; k < sl->n; k++) {
    int g = sl->g[k], best = 0;
    if (!cnt[k]) {
      err = 0;
      goto off;
    }
    for (int h = 1; h < FL__KER_GRID; h++)
      if (se[(size_t)k * FL__KER_GRID + h] <= se[(size_t)k * FL__KER_GRID + best]) best = h;
    e->h[g] = (float)(scale * 0.5 * pow(2.0, 0.5 * best));
    e->va[g] = (float)(se[(size_t)k * FL__KER_GRID + best] / cnt[k]);
  }
  err = 0;
  goto done;
off:
  free(e->mem);
  e->mem = NULL;
  e->nmem = 0;
done:
  free(row);
  free(qs);
  free(mfold);
  free(qfold);
  free(dd);
  free(d2);
  free(tot);
  free(near);
  free(se);
  free(cnt);
  return err;
}

int fl_estimate_fit(fl_model *m, fl_estimator *e, const fl_series *s, int ns, int tail,
                    float clamp, float val) {
  if (!m || !e || !s || ns < 1) return FL_EINVAL;
  int err = fl_estimator_alloc(e, fl_model_channels(m));
  if (err) return err;
  fl__slow sl;
  if ((err = fl__slow_of(fl_model_spec_of(m), &sl))) return err;
  err = fl__fit_regression(m, e, s, ns, &sl);
  if (!err) err = fl__fit_network(m, e, s, ns, tail, clamp, val);
  if (!err) err = fl__fit_kernel(m, e, s, ns, &sl);
  fl__slow_free(&sl);
  e->on = !err;
  return err;
}

/* Anchored residual of slow channel k from the window's ticks [a, b): the
 * mean of z_k - w_k . o over the ticks where every term is a number. */
static int fl__anchor(const fl_estimator *e, const fl__slow *sl, const float *mean,
                      const float *std, float *const *raw, int W, int k,
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

/* The kernel's query at tick t: each channel's standardised reading where
 * it is trusted (not judged faulty, a number within `range` sd; a rate > 1
 * channel by its tick's mean, all of its samples so), NaN elsewhere. */
static void fl__query(const fl_model_spec *spec, const float *mean, const float *std,
                      float *const *raw, const unsigned char *faulty, float range, int t,
                      float *qv) {
  int W = spec->window;
  for (int i = 0, off = 0; i < spec->n_mod; off += spec->mod[i].channels, i++) {
    int rate = spec->mod[i].rate, T = W * rate;
    for (int c = 0; c < spec->mod[i].channels; c++) {
      int g = off + c, ok = !faulty[g];
      double a = 0;
      for (int u = 0; u < rate && ok; u++) {
        float x = raw[i][(size_t)c * T + (size_t)t * rate + u];
        ok = !isnan(x) && !(range > 0.0f && fabsf(x - mean[g]) > range * std[g]);
        a += x;
      }
      qv[g] = ok ? (float)((a / rate - mean[g]) / std[g]) : NAN;
    }
  }
}

int fl_estimate_apply(const fl_model *m, const fl_estimator *e, fl_estimate_state *st, int tail,
                      float *const *raw, const unsigned char *faulty,
                      float range, int from, float *const *corrected,
                      float *const *sigma) {
  if (!m || !st || !raw || !faulty || !corrected) return FL_EINVAL;
  fl_model *mm = (fl_model *)m;
  const fl_model_spec *spec = fl_model_spec_of(mm);
  const float *mean = fl_model_mean(mm), *std = fl_model_std(mm);
  int W = spec->window, on = e && e->on && e->nch == fl_model_channels(mm);
  if (from < 0 || from > W) return FL_EINVAL;
  if (st->nch != fl_model_channels(mm)) return FL_EINVAL;
  if (tail < 1 || tail > W) tail = W / 4;
  /* The scratch: the kernel's distances (nmem doubles), the others' values
   * and the kernel's query (nch floats each), the slow channels' table. */
  int nch = fl_model_channels(mm), nmem = on && e->nmem > 0 ? e->nmem : 0;
  size_t need = sizeof(double) * (size_t)nmem + sizeof(float) * 2 * (size_t)nch +
                sizeof(int) * 3 * (size_t)nch;
  if (st->scratch_bytes < need) {
    void *p = realloc(st->scratch, need);
    if (!p) return FL_ENOMEM;
    st->scratch = p;
    st->scratch_bytes = need;
  }
  double *d2 = st->scratch;
  float *o = (float *)(d2 + nmem), *qv = o + nch;
  fl__slow sl;
  fl__slow_in(spec, &sl, (int *)(qv + nch));
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
  /* The kernel's query and distances, had when a tick first needs them:
   * a clean window costs nothing more. */
  int ker = on && e->nmem > 0 && e->mem;
  for (int t = from; t < W; t++) {
    int asked = 0, have = 0;
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
          float r = (float)((x - mean[g]) / std[g] - pred);
          st->res[g] = st->anchored[g] ? st->res[g] + e->alpha[g] * (r - st->res[g]) : r;
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
      /* The network and the kernel both read the other channels at this
       * tick: their errors are not independent, and fusing both would
       * count that evidence twice.  The surer of the two (by its measured
       * variance) stands for them, fused with the anchored regression,
       * which reads the channel's own past. */
      float net = o[k], vm = on ? fl_estimate_var_net(e, W, tail, g, st->anchored[g] ? st->age[g] : W) : NAN, v = vm, z = net;
      if (ker && e->va[g] < vm) {
        if (!asked) {
          asked = 1;
          fl__query(spec, mean, std, raw, faulty, range, t, qv);
        }
        float a = fl_estimate_kernel(e, qv, g, d2, &have);
        if (isfinite(a)) {
          z = a;
          v = e->va[g];
        }
      }
      if (on && st->anchored[g] && isfinite(pred))
        z = fl_estimate_fuse((float)(st->res[g] + pred), fl_estimate_var(e, W, g, st->age[g]),
                             z, v, &v);
      corrected[sl.mod[k]][q] = z * std[g] + mean[g];
      /* The fused value stands in for the channel from here on. */
      o[k] = z;
      if (sigma && sigma[sl.mod[k]]) sigma[sl.mod[k]][q] = sqrtf(v) * std[g];
    }
  }
  return 0;
}

int fl_estimator_alloc(fl_estimator *e, int nch) {
  if (!e || nch < 0) return FL_EINVAL;
  memset(e, 0, sizeof *e);
  if (!nch) return 0;
  e->w = calloc((size_t)nch * nch, sizeof(float));
  e->v = calloc((size_t)nch * FL_ESTIMATE_LAGS, sizeof(float));
  e->vm = calloc((size_t)nch, sizeof(float));
  e->h = calloc((size_t)nch, sizeof(float));
  e->va = calloc((size_t)nch, sizeof(float));
  e->vmw = calloc((size_t)nch, sizeof(float));
  e->alpha = malloc(sizeof(float) * (size_t)nch);
  if (!e->w || !e->v || !e->vm || !e->h || !e->va || !e->vmw || !e->alpha) {
    fl_estimator_free(e);
    return FL_ENOMEM;
  }
  for (int c = 0; c < nch; c++) e->alpha[c] = 1.0f;
  e->nch = nch;
  return 0;
}

int fl_estimator_alloc_memory(fl_estimator *e, int nmem) {
  if (!e || !e->nch || nmem < 1) return FL_EINVAL;
  free(e->mem);
  e->nmem = 0;
  if (!(e->mem = calloc((size_t)nmem * e->nch, sizeof(float)))) return FL_ENOMEM;
  e->nmem = nmem;
  return 0;
}

int fl_estimator_copy(fl_estimator *dst, const fl_estimator *src) {
  if (!dst || !src || dst == src) return FL_EINVAL;
  int nch = src->nch, err = fl_estimator_alloc(dst, nch);
  if (err) return err;
  if (nch && src->nmem > 0 && (err = fl_estimator_alloc_memory(dst, src->nmem))) {
    fl_estimator_free(dst);
    return err;
  }
  if (nch) {
    size_t n = (size_t)nch;
    memcpy(dst->w, src->w, sizeof(float) * n * n);
    memcpy(dst->v, src->v, sizeof(float) * n * FL_ESTIMATE_LAGS);
    memcpy(dst->vm, src->vm, sizeof(float) * n);
    memcpy(dst->vmw, src->vmw, sizeof(float) * n);
    memcpy(dst->alpha, src->alpha, sizeof(float) * n);
    memcpy(dst->h, src->h, sizeof(float) * n);
    memcpy(dst->va, src->va, sizeof(float) * n);
    if (dst->nmem) memcpy(dst->mem, src->mem, sizeof(float) * n * (size_t)dst->nmem);
  }
  dst->on = src->on;
  return 0;
}

void fl_estimator_free(fl_estimator *e) {
  if (!e) return;
  free(e->w);
  free(e->v);
  free(e->vm);
  free(e->mem);
  free(e->h);
  free(e->va);
  free(e->vmw);
  free(e->alpha);
  memset(e, 0, sizeof *e);
}

int fl_estimate_state_init(fl_estimate_state *st, int nch) {
  if (!st || nch <= 0) return FL_EINVAL;
  memset(st, 0, sizeof *st);
  st->res = calloc((size_t)nch, sizeof(float));
  st->age = calloc((size_t)nch, sizeof(int));
  st->anchored = calloc(2 * (size_t)nch, 1);
  if (!st->res || !st->age || !st->anchored) {
    fl_estimate_state_free(st);
    return FL_ENOMEM;
  }
  st->held = st->anchored + nch;
  st->nch = nch;
  return 0;
}

void fl_estimate_state_reset(fl_estimate_state *st) {
  if (!st || !st->nch) return;
  memset(st->res, 0, sizeof(float) * st->nch);
  memset(st->age, 0, sizeof(int) * st->nch);
  memset(st->anchored, 0, 2 * (size_t)st->nch);
}

void fl_estimate_state_free(fl_estimate_state *st) {
  if (!st) return;
  free(st->res);
  free(st->age);
  free(st->anchored);
  free(st->scratch);
  memset(st, 0, sizeof *st);
}
