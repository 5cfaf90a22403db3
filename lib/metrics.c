/* faultline metrics: see include/faultline/metrics.h for the contracts. */
#include "faultline/metrics.h"

#include <math.h>
#include <stdlib.h>

#include "faultline/error.h"

typedef struct {
  float s;
  uint8_t y;
} fl__scored;

static int fl__by_score(const void *a, const void *b) {
  float x = ((const fl__scored *)a)->s, y = ((const fl__scored *)b)->s;
  return (x > y) - (x < y);
}

int fl_auroc(const float *score, const uint8_t *label, size_t n, double *auc) {
  if (!score || !label || !auc) return FL_EINVAL;
  *auc = NAN;
  fl__scored *v = malloc(sizeof *v * (n ? n : 1));
  if (!v) return FL_ENOMEM;
  size_t m = 0;
  for (size_t i = 0; i < n; i++)
    if (!isnan(score[i])) {
      v[m].s = score[i];
      v[m++].y = label[i] != 0;
    }
  qsort(v, m, sizeof *v, fl__by_score);
  /* Sum of the positives' ranks, each run of tied scores sharing the mean of
   * the ranks it spans (1-based ranks i + 1 .. j). */
  double rank_sum = 0;
  size_t npos = 0;
  for (size_t i = 0; i < m;) {
    size_t j = i, pos = 0;
    while (j < m && v[j].s == v[i].s) pos += v[j++].y;
    rank_sum += (double)pos * (double)(i + 1 + j) / 2.0;
    npos += pos;
    i = j;
  }
  free(v);
  size_t nneg = m - npos;
  if (npos == 0 || nneg == 0) return 0;
  double u = rank_sum - (double)npos * (double)(npos + 1) / 2.0;
  *auc = u / ((double)npos * (double)nneg);
  return 0;
}

int fl_f1(const uint8_t *pred, const uint8_t *label, size_t n, fl_binary_stats *out) {
  if (!pred || !label || !out) return FL_EINVAL;
  size_t tp = 0, fp = 0, fn = 0, tn = 0;
  for (size_t i = 0; i < n; i++) {
    int p = pred[i] != 0, y = label[i] != 0;
    tp += p && y;
    fp += p && !y;
    fn += !p && y;
    tn += !p && !y;
  }
  out->tp = tp;
  out->fp = fp;
  out->fn = fn;
  out->tn = tn;
  out->precision = tp + fp ? (double)tp / (double)(tp + fp) : NAN;
  out->recall = tp + fn ? (double)tp / (double)(tp + fn) : NAN;
  out->f1 = tp + fp + fn ? 2.0 * (double)tp / (double)(2 * tp + fp + fn) : NAN;
  out->far = fp + tn ? (double)fp / (double)(fp + tn) : NAN;
  return 0;
}
