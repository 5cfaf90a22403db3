/* faultline eval: see include/faultline/eval.h for the contracts. */
#include "faultline/eval.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "faultline/error.h"
#include "faultline/estimate.h"
#include "faultline/nn.h"

/* ---- per channel --------------------------------------------------------- */

float fl_eval_spread(const float *x, size_t n) {
  double s = 0, q = 0;
  size_t k = 0;
  for (size_t i = 0; i < n; i++) {
    if (isnan(x[i])) continue;
    s += x[i];
    q += (double)x[i] * x[i];
    k++;
  }
  double mu = k ? s / k : 0, var = k ? q / k - mu * mu : 0;
  float sd = (float)sqrt(var > 0 ? var : 0);
  if (!(sd > 1e-6f * (float)fabs(mu)) || !isfinite(sd))
    sd = fabs(mu) > 1e-3 ? 1e-3f * (float)fabs(mu) : 1.0f;
  return sd;
}

void fl_eval_interpolate(float *y, const float *x, const uint8_t *label, size_t n) {
  memcpy(y, x, sizeof(float) * n);
  long last = -1; /* the last usable sample before the current run */
  for (size_t t = 0; t < n;) {
    if (!label[t]) {
      if (!isnan(x[t])) last = (long)t;
      t++;
      continue;
    }
    size_t end = t, next;
    while (end < n && label[end]) end++;
    for (next = end; next < n && (label[next] || isnan(x[next]));) next++;
    for (size_t u = t; u < end; u++) {
      if (last >= 0 && next < n) {
        double w = (double)((long)u - last) / (double)((long)next - last);
        y[u] = (float)((1 - w) * x[last] + w * x[next]);
      } else if (last >= 0) {
        y[u] = x[last];
      } else if (next < n) {
        y[u] = x[next];
      } else {
        y[u] = NAN;
      }
    }
    t = end;
  }
}

void fl_eval_hold_last(float *y, const float *x, const uint8_t *label, size_t n) {
  float last = NAN;
  for (size_t t = 0; t < n; t++) {
    if (label[t]) {
      y[t] = last;
      continue;
    }
    y[t] = x[t];
    if (!isnan(x[t])) last = x[t];
  }
}

void fl_eval_sq_error(double *se, size_t *n, const float *a, const float *b,
                      const uint8_t *keep, size_t len, double scale) {
  for (size_t i = 0; i < len; i++) {
    if ((keep && !keep[i]) || isnan(a[i]) || isnan(b[i])) continue;
    double e = ((double)a[i] - b[i]) * scale;
    *se += e * e;
    (*n)++;
  }
}

double fl_eval_rmse(double se, size_t n) { return n ? sqrt(se / (double)n) : NAN; }

double fl_eval_rate(double num, double den) { return den != 0 ? num / den : NAN; }

/* ---- per row ------------------------------------------------------------- */

void fl_eval_settled(uint8_t *settled, int rows, const fl_eval_episode *eps, int neps,
                     int window) {
  if (rows <= 0) return;
  memset(settled, 1, (size_t)rows);
  for (int k = 0; k < neps; k++) {
    int a = eps[k].start > 0 ? eps[k].start : 0;
    for (int r = a; r < eps[k].start + eps[k].len + window && r < rows; r++) settled[r] = 0;
  }
}

int fl_eval_detect(fl_eval_detection *out, const fl_eval_episode *eps, int neps,
                   const uint8_t *flag, const signed char *modality, int n_mod) {
  if (!out || (neps > 0 && (!eps || !flag || !modality)) || n_mod < 1) return FL_EINVAL;
  int *votes = calloc((size_t)n_mod, sizeof *votes);
  if (!votes) return FL_ENOMEM;
  for (int k = 0; k < neps; k++) {
    const fl_eval_episode *ep = &eps[k];
    if (!ep->labelled) continue;
    out->episodes++;
    int first = -1;
    memset(votes, 0, sizeof *votes * (size_t)n_mod);
    for (int r = ep->start; r < ep->start + ep->len; r++) {
      if (!flag[r]) continue;
      if (first < 0) first = r;
      if (modality[r] >= 0 && modality[r] < n_mod) votes[modality[r]]++;
    }
    if (first < 0) continue;
    out->detected++;
    out->delay_sum += first - ep->start;
    int best = 0;
    for (int i = 1; i < n_mod; i++)
      if (votes[i] > votes[best]) best = i;
    if (votes[best] > 0 && best == ep->mod) out->localised++;
  }
  free(votes);
  return 0;
}

/* ---- the pool of rows ------------------------------------------------------ */

static int fl__pool_grow(fl_eval_pool *p, size_t need) {
  if (need <= p->cap) return 0;
  size_t cap = p->cap ? p->cap : 4096;
  while (cap < need) cap *= 2;
  float *s = realloc(p->score, sizeof(float) * cap);
  if (!s) return FL_ENOMEM;
  p->score = s;
  uint8_t *f = realloc(p->flag, cap);
  if (!f) return FL_ENOMEM;
  p->flag = f;
  uint8_t *l = realloc(p->label, cap);
  if (!l) return FL_ENOMEM;
  p->label = l;
  p->cap = cap;
  return 0;
}

int fl_eval_pool_add(fl_eval_pool *p, const float *score, const uint8_t *flag,
                     const uint8_t *label, int rows) {
  if (!p || rows < 0 || (rows > 0 && (!score || !flag || !label))) return FL_EINVAL;
  size_t add = 0;
  for (int r = 0; r < rows; r++) add += !isnan(score[r]);
  if (fl__pool_grow(p, p->n + add)) return FL_ENOMEM;
  for (int r = 0; r < rows; r++) {
    if (isnan(score[r])) continue;
    p->score[p->n] = score[r];
    p->flag[p->n] = flag[r];
    p->label[p->n++] = label[r];
  }
  return 0;
}

void fl_eval_pool_free(fl_eval_pool *p) {
  free(p->score);
  free(p->flag);
  free(p->label);
  memset(p, 0, sizeof *p);
}

int fl_eval_pool_stats(const fl_eval_pool *p, double *auroc, fl_binary_stats *st) {
  if (!p) return FL_EINVAL;
  int e = fl_auroc(p->score, p->label, p->n, auroc);
  return e ? e : fl_f1(p->flag, p->label, p->n, st);
}

/* ---- AAKR ------------------------------------------------------------------ */

int fl_eval_aakr(float *est, const float *mem, int m, int d, const float *q, int target,
                 float h) {
  if (!est || !mem || !q || m < 1 || d < 2 || target < 0 || target >= d || !(h > 0.0f))
    return FL_EINVAL;
  if (fl_check_finite(mem, (size_t)m * d)) return FL_ENONFINITE;
  double *d2 = malloc(sizeof(double) * (size_t)m);
  if (!d2) return FL_ENOMEM;
  int have = 0;
  *est = fl_kernel_regress(mem, m, d, q, target, h, d2, &have);
  free(d2);
  return 0;
}

int fl_eval_aakr_memory(float *mem, int m, const float *x, int rows, int d) {
  if (!mem || (!x && rows > 0) || m < 1 || rows < 0 || d < 1) return FL_EINVAL;
  int k = 0;
  for (int r = 0; r < rows; r++) k += !fl_check_finite(x + (size_t)r * d, (size_t)d);
  int take = k < m ? k : m, seen = 0, j = 0;
  for (int r = 0; r < rows && j < take; r++) {
    if (fl_check_finite(x + (size_t)r * d, (size_t)d)) continue;
    /* Row r is the seen-th complete row; the j-th taken is the
     * floor(j k / take)-th. */
    if (seen++ != (int)((long long)j * k / take)) continue;
    memcpy(mem + (size_t)j++ * d, x + (size_t)r * d, sizeof(float) * d);
  }
  return take;
}
