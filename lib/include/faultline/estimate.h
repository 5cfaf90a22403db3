/* faultline estimate: the causal estimate of a channel the correction
 * replaces, and how sure it is.
 *
 * The network's masked estimate knows the other channels now but not the
 * replaced channel's own recent level: a masked channel enters the model as
 * its training mean.  Next to it run two estimates per rate-1 channel k, in
 * standardised units.
 *
 * An anchored regression:
 *
 *   g_k(t) = r_k + sum_j w_kj o_j(t),   r_k(s) = z_k(s) - sum_j w_kj o_j(s)
 *
 * o the other rate-1 channels (their corrected values), w fitted on the
 * training data's changes over a window (ridge), r_k the anchor: r_k(s) of
 * the trusted ticks s, averaged with a per-channel smoothing alpha (1: the
 * last trusted tick; less for a channel that is noise around a level), so
 * that the channel's own level carries over and the other channels move it.
 * Its error variance grows with the age since the last trusted tick
 * (measured on training data with the chosen alpha).
 *
 * A kernel estimate from memory (AAKR, the kernel regression of MSET): the
 * channel's value in the clean training ticks whose other channels lie
 * nearest to the tick's trusted channels, weighted by a Gaussian kernel.  It
 * knows the operating state, not the channel's own past; its error variance
 * is measured on training ticks held out in contiguous blocks from the
 * memory.
 *
 * The network's masked error variance is measured on training's held-out
 * windows, the channel's tail masked (a drifting channel, whose level the
 * network takes from the window's head) and its whole window masked.  The
 * network and the kernel both read the other channels at the same tick, so
 * only the surer of the two is fused, by inverse variance, with the anchored
 * regression; the fused standard deviation is the correction's uncertainty.
 *
 * Channels of rate > 1 keep the network's estimate, with its measured
 * spread as their uncertainty. */
#ifndef FAULTLINE_ESTIMATE_H
#define FAULTLINE_ESTIMATE_H

#include "faultline/detect.h"

/* Lags (base ticks) at which the anchored regression's error variance is
 * measured: 1 tick, W/4, W, 2W, 4W for a window of W ticks. */
#define FL_ESTIMATE_LAGS 5

/* What the estimator learnt from training data; part of the model file
 * (optional: without it, corrections are the network's estimate). */
typedef struct {
  int on; /* 1: fitted */
  int nch;
  float *w;  /* (nch, nch) row k: k on the others */
  float *v;  /* (nch, lags) anchored error variance */
  float *vm; /* (nch) the network's masked error variance (a drifting
              * channel: its window's tail masked) */
  float *vmw; /* (nch) the same, the whole window masked (a model from
               * before it: vm) */
  float *alpha; /* (nch) the anchor's smoothing: each trusted tick moves it
                 * by alpha of the way to its residual (1: the last tick;
                 * a model from before it: 1) */
  /* The kernel estimate (nmem 0: none, e.g. a model from before it). */
  int nmem;
  float *mem; /* (nmem, nch) clean training ticks, standardised; a rate > 1
               * channel by its tick's mean */
  float *h;   /* (nch) bandwidth (sd) of the kernel estimating channel k */
  float *va;  /* (nch) its error variance */
} fl_estimator;

/* The kernel's memory: at most this many training ticks, and at most
 * FL_ESTIMATE_MEM_FLOATS numbers (a wide model keeps fewer ticks). */
#define FL_ESTIMATE_MEM 1024
#define FL_ESTIMATE_MEM_FLOATS (1 << 18)

/* Sizes e's arrays for nch channels, zeroed and not fitted (on = 0), with
 * no kernel memory (nmem 0); e holds no arrays on entry (whatever it holds
 * is overwritten, not freed).  fl_estimator_alloc_memory sizes the memory
 * for nmem ticks (nmem > 0, after fl_estimator_alloc).  fl_estimator_free
 * releases them. */
int fl_estimator_alloc(fl_estimator *e, int nch);
int fl_estimator_alloc_memory(fl_estimator *e, int nmem);
void fl_estimator_free(fl_estimator *e);

/* Makes dst (holding no arrays, as for fl_estimator_alloc) a deep copy of
 * src, fitted or not, its memory included.  Returns 0, FL_EINVAL or
 * FL_ENOMEM (dst then holds no arrays). */
int fl_estimator_copy(fl_estimator *dst, const fl_estimator *src);

/* Per stream and channel: the residual at the last trusted tick and its
 * age.  Zero it when the stream starts (no anchor yet). */
typedef struct {
  int nch;
  float *res;              /* (nch) */
  int *age;                /* (nch) */
  unsigned char *anchored; /* (nch) res holds an anchor */
  unsigned char *held;     /* (nch) replaced at the previous tick */
  /* fl_estimate_apply's scratch: sized at the stream's first window (again
   * only if the model or its kernel memory grows), so that a window
   * allocates nothing. */
  void *scratch;
  size_t scratch_bytes;
} fl_estimate_state;

/* Sizes st for nch channels with no anchor; _reset keeps the arrays and
 * forgets the anchors, _free releases them (the scratch too). */
int fl_estimate_state_init(fl_estimate_state *st, int nch);
void fl_estimate_state_reset(fl_estimate_state *st);
void fl_estimate_state_free(fl_estimate_state *st);

/* The lag (base ticks) of variance entry l for a window of W ticks. */
int fl_estimate_lag(int W, int l);

/* The anchored regression's error variance (std units^2) after `age`
 * ticks: piecewise linear between the measured lags, constant beyond. */
float fl_estimate_var(const fl_estimator *e, int W, int k, int age);

/* The network's masked error variance (std units^2) for channel k
 * replaced for `age` ticks: vm up to the detector's tail, vmw from a whole
 * window of W ticks on, linear between. */
float fl_estimate_var_net(const fl_estimator *e, int W, int tail, int k, int age);

/* Fuses two estimates by inverse variance; *var receives the fused one. */
float fl_estimate_fuse(float a, float va, float b, float vb, float *var);

/* Kernel estimate of channel k (standardised) from the query q (nch
 * standardised values, NaN: not trusted, q[k] ignored): the kernel-weighted
 * mean of the memory's channel k, the weights exp(-d^2 / 2 h_k^2) of each
 * memory tick's distance d to q over q's trusted channels.  d2 (nmem) is
 * scratch; with *have set, it holds the distances of the same query for
 * another channel k' and is reused (valid when q[k] and q[k'] are both
 * NaN), else it is filled and *have set.
 * Returns NaN when q trusts no channel but k or e has no memory. */
float fl_estimate_kernel(const fl_estimator *e, const float *q, int k, double *d2, int *have);

/* The same kernel regression on any memory: column k of mem (m rows of n
 * numbers) from q's numbers besides k, bandwidth h; d2 and *have as above.
 * fl_estimate_kernel is this on the estimator's memory; the evaluation's
 * AAKR baseline is this on its own. */
float fl_kernel_regress(const float *mem, int m, int n, const float *q, int k, float h,
                        double *d2, int *have);

/* Fits e (holding no arrays: see fl_estimator_alloc) on the ns recordings s (raw units, the model's layout): the
 * regression and its error at every lag, then the network's masked error
 * on up to 64 windows spread over the last `val` share of every
 * recording's windows (training's held-out part, the whole recording when
 * val <= 0; tail ticks, `tail` of them, each channel masked in turn as
 * fl_detect_reestimate masks it),
 * then the kernel: a memory of evenly spaced complete ticks (at most
 * FL_ESTIMATE_MEM and FL_ESTIMATE_MEM_FLOATS numbers) and, per rate-1
 * channel, the bandwidth and its error variance by blocked cross-validation
 * (the complete ticks in 8 contiguous blocks; a query tick is estimated from
 * the memory outside its block; the bandwidth of least mean squared error
 * on a grid of multiples of the queries' median distance to their nearest
 * memory tick).  Returns 0, FL_EINVAL, FL_ENOMEM or the model's error. */
int fl_estimate_fit(fl_model *m, fl_estimator *e, const fl_series *s, int ns, int tail,
                    float clamp, float val);

/* Re-estimates the replaced samples of window b, ticks from..W-1, in
 * order, and advances the stream's state by those ticks.  On entry
 * corrected[i] holds fl_detect_correct_tail's output (the network's
 * estimate where replaced) and raw[i] the window's input; faulty (total
 * channels) the channels judged faulty.  A sample is replaced when its
 * channel is faulty, or it is missing or beyond `range` sd.  sigma[i]
 * (may be NULL) receives each written sample's standard uncertainty in raw
 * units: 0 where the input passed.  Without an estimator (e NULL or not
 * fitted) the network's estimate stands and its uncertainty is NaN.
 * `tail` is the detector's tail: a channel judged faulty from a trusted
 * tick on is anchored on the ticks just before the window's tail, not on
 * the readings that raised the flag.  With a kernel memory, a replaced
 * rate-1 channel whose kernel variance is below the network's takes the
 * kernel's estimate (query: the channels trusted at that tick) in place
 * of the network's before the fusion with the anchored regression; the
 * query and distances are computed only at ticks with a replaced channel.
 * Its working arrays are st's scratch: FL_ENOMEM only when that must grow
 * and cannot. */
int fl_estimate_apply(const fl_model *m, const fl_estimator *e, fl_estimate_state *st, int tail,
                      float *const *raw, const unsigned char *faulty,
                      float range, int from, float *const *corrected,
                      float *const *sigma);

#endif
