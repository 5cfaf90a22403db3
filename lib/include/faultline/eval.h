/* faultline eval: the arithmetic of scoring a detector and a corrector
 * against injected faults, as `faultline eval` reports it.
 *
 * Plain functions over arrays; the caller owns every buffer.  Rows are base
 * ticks (one scan row each); a channel's samples are (rows, rate) in time
 * order, rate samples per row, NaN where missing.  Labels are 0 (clean) or
 * non-zero (faulty).  Row-level detection measures (AUROC, F1, FAR) come
 * from metrics.h over the rows gathered in an fl_eval_pool. */
#ifndef FAULTLINE_EVAL_H
#define FAULTLINE_EVAL_H

#include <stddef.h>
#include <stdint.h>

#include "faultline/faults.h"
#include "faultline/metrics.h"

/* One injected fault episode. */
typedef struct {
  fl_fault_type type;
  int mod, ch;      /* modality, and channel within it (-1: every channel) */
  int start, len;   /* rows [start, start + len) */
  size_t labelled;  /* samples the fault changed; 0: nothing of it to score */
} fl_eval_episode;

/* ---- per channel --------------------------------------------------------- */

/* The spread faults are sized in: the standard deviation (population) of the
 * n values of x, NaN skipped.  A channel with no spread (constant, within
 * 1e-6 of its mean's size) or no finite value would take no additive fault
 * at all, so it gets a thousandth of |mean| if |mean| > 1e-3, else 1. */
float fl_eval_spread(const float *x, size_t n);

/* The interpolation baseline, an oracle that knows the labels: y (n) is x
 * (n) with every run of labelled samples replaced by the straight line from
 * the last unlabelled non-NaN sample before the run to the first one after
 * it, held flat at the ends (NaN when neither exists).  Unlabelled samples
 * are copied as they are.  y and x must not overlap. */
void fl_eval_interpolate(float *y, const float *x, const uint8_t *label, size_t n);

/* The hold-last-clean baseline, causal (it needs no sample after the
 * fault): y (n) is x (n) with every labelled sample replaced by the last
 * unlabelled non-NaN sample before it (NaN when there is none).  y and x
 * must not overlap. */
void fl_eval_hold_last(float *y, const float *x, const uint8_t *label, size_t n);

/* Adds to *se the squared differences ((a[i] - b[i]) scale)^2 and to *n
 * their count, over the len samples where keep[i] is non-zero (keep NULL:
 * all) and neither a[i] nor b[i] is NaN.  Terms are added one by one in
 * index order, so sums over several calls equal one sum over the
 * concatenated arrays. */
void fl_eval_sq_error(double *se, size_t *n, const float *a, const float *b,
                      const uint8_t *keep, size_t len, double scale);

/* sqrt(se / n), NaN when n is 0. */
double fl_eval_rmse(double se, size_t n);

/* num / den, NaN when den is 0: the rates of a table (detection rate,
 * localisation, mean delay, false alarms over settled rows). */
double fl_eval_rate(double num, double den);

/* ---- per row ------------------------------------------------------------- */

/* settled (rows) = 1 on the rows at least window rows after the end of every
 * one of the neps episodes, where a detector's window no longer holds a
 * faulted sample, and 0 on the rest (an episode's rows and the window after
 * them). */
void fl_eval_settled(uint8_t *settled, int rows, const fl_eval_episode *eps, int neps,
                     int window);

/* Episode-level detection, summed over episodes. */
typedef struct {
  int episodes;     /* episodes with labelled samples */
  int detected;     /* of those, with a flagged row inside their span */
  int localised;    /* of those, whose most voted modality is the faulted one */
  double delay_sum; /* rows from onset to first flag, summed over detected ones */
} fl_eval_detection;

/* Adds eps (neps) to *out against a scan's rows: flag (rows) non-zero where
 * the detector raised the alarm, modality (rows) the modality it blamed (-1
 * or out of [0, n_mod): none).  Inside an episode's span every flagged row
 * votes for its modality; the episode is localised when the most voted
 * modality (the lowest index among equals) has a vote and is ep->mod.
 * Episodes with nothing labelled are not counted.  Spans must lie within
 * the rows.  Returns FL_EINVAL for a NULL array or n_mod < 1. */
int fl_eval_detect(fl_eval_detection *out, const fl_eval_episode *eps, int neps,
                   const uint8_t *flag, const signed char *modality, int n_mod);

/* Row-level decisions gathered over scans (a pool per fault type, one over
 * all of them): the rows that have a score, with their flag and label.
 * Zero-initialise; setting n to 0 empties it and keeps the arrays, and
 * fl_eval_pool_free releases them. */
typedef struct {
  float *score;
  uint8_t *flag, *label;
  size_t n, cap;
} fl_eval_pool;

/* Appends the rows of score, flag and label (rows each) whose score is not
 * NaN.  FL_ENOMEM leaves the pool as it was. */
int fl_eval_pool_add(fl_eval_pool *p, const float *score, const uint8_t *flag,
                     const uint8_t *label, int rows);
void fl_eval_pool_free(fl_eval_pool *p);

/* AUROC of the scores and the flags' confusion counts, F1 and FAR against
 * the labels (fl_auroc and fl_f1 over the pooled rows). */
int fl_eval_pool_stats(const fl_eval_pool *p, double *auroc, fl_binary_stats *st);

/* ---- AAKR ------------------------------------------------------------------ */

/* Auto-associative kernel regression, the estimator inside MSET: one
 * channel estimated from the others by the rows of a memory of clean data.
 * mem (m, d) row-major, every value finite (FL_ENONFINITE otherwise); q (d)
 * a query row whose column target is the channel to estimate (its value
 * is not read).  Over the columns c != target where q is not NaN,
 *
 *   D_j^2 = sum_c (q_c - mem_jc)^2,   w_j = exp(-(D_j^2 - min_k D_k^2) / (2 h^2)),
 *   *est  = sum_j w_j mem_j,target / sum_j w_j,
 *
 * a Gaussian kernel of bandwidth h on the distance; the weights are taken
 * relative to the nearest row's, which leaves the estimate as it is and
 * keeps a query far from every row at the nearest row's value instead of
 * 0 / 0.  Columns should share a scale (standard units).  *est is NaN when
 * every column of q but target is NaN.  Returns FL_EINVAL for a NULL
 * pointer, m < 1, d < 2, target outside [0, d) or h not > 0. */
int fl_eval_aakr(float *est, const float *mem, int m, int d, const float *q, int target,
                 float h);

/* Fills mem (m, d) with up to m rows of x (rows, d) whose values are all
 * finite, evenly spaced among those rows, so that the same data gives the
 * same memory: with k such rows, the j-th row taken is the floor(j k / m)-th
 * of them (all k when k <= m).  Returns the count taken, or FL_EINVAL for a
 * NULL pointer, m < 1, rows < 0 or d < 1. */
int fl_eval_aakr_memory(float *mem, int m, const float *x, int rows, int d);

#endif
