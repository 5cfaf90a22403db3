/* faultline metrics: the numbers an evaluation reports, computed once here so
 * that `faultline eval`, the tests and any later benchmark agree on them.
 *
 * Labels are 0 (clean) or non-zero (faulty); a caller scoring a subset of
 * rows (say, those with a score) compacts its arrays first. */
#ifndef FAULTLINE_METRICS_H
#define FAULTLINE_METRICS_H

#include <stddef.h>
#include <stdint.h>

/* Area under the ROC curve of score against label: the probability that a
 * random faulty sample scores above a random clean one, a tie counting one
 * half.  Computed exactly as the Mann-Whitney U statistic with mid-ranks for
 * tied scores, in O(n log n), so a detector that gives every row the same
 * score gets 0.5 and not whatever order a sort left the ties in.  Samples
 * whose score is NaN are skipped (infinite scores are ordered as usual).
 *
 * *auc receives NaN when the samples left hold only one class, where the
 * area is undefined.  Returns FL_EINVAL if score, label or auc is NULL or
 * n < 0, FL_ENOMEM if the scratch array cannot be allocated. */
int fl_auroc(const float *score, const uint8_t *label, size_t n, double *auc);

/* A binary decision against labels, counted and summarised. */
typedef struct {
  size_t tp, fp, fn, tn;
  double precision; /* tp / (tp + fp); NaN when nothing was flagged */
  double recall;    /* tp / (tp + fn); NaN when nothing is faulty */
  double f1;        /* 2 tp / (2 tp + fp + fn); NaN when neither flags nor faults exist */
  double far;       /* false-alarm rate fp / (fp + tn); NaN when nothing is clean */
} fl_binary_stats;

/* Counts the n decisions pred (0 / non-zero) against label and fills out.
 * F1 is written as 2 tp / (2 tp + fp + fn), which equals the harmonic mean of
 * precision and recall wherever both exist and stays defined (0) when a
 * detector flags nothing on data with faults.  Returns FL_EINVAL if an
 * argument is NULL. */
int fl_f1(const uint8_t *pred, const uint8_t *label, size_t n, fl_binary_stats *out);

#endif
