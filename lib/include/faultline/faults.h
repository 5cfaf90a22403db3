/* faultline faults: the design's fault taxonomy, injected into a window.
 *
 * A fault is written into one modality block x (C, T), channel-major (channel
 * c's T samples are contiguous), over a span of samples [t0, t0 + len) of one
 * channel.  Injection works on raw sensor units: the caller passes each
 * channel's standard deviation sd (C) and magnitudes are given in those
 * standard deviations, so one configuration fits a pressure in bar and a
 * current in A alike.  (A caller holding standardised data passes sd = NULL,
 * which means 1 for every channel.)
 *
 * Every injection writes a label (C, T): the fault's type id on each sample
 * the fault affected, and nothing elsewhere, so that the caller can clear the
 * labels once and inject several faults.  The rule for "affected" is chosen
 * per type so that detection and correction can be scored exactly:
 *
 *   - Faults that add to or reshape a signal (noise, burst, spike, step,
 *     offset, drift, drift_exp, sine, gain, timeshift) label a sample only if
 *     its value actually changed.  A sample that was already missing (NaN)
 *     stays missing and is not labelled: the fault cannot be seen there and
 *     the model fills the gap anyway.
 *   - Saturation labels only the samples that were clamped: below the rail
 *     a saturating sensor still reads true values.
 *   - Faults that kill the sensor (dropout, missing, stuck) label the whole
 *     span, even where the dead value happens to equal the true one (a stuck
 *     sensor on a constant signal is still broken, and the next change of the
 *     process will show it).
 *
 * Each injection draws its magnitude (and sign, phase or direction) from rng
 * around the configured value, so stage-2 training sees variety; the result is
 * deterministic for a given rng state.  Nothing here allocates except
 * saturation, which sorts a copy of the span to find its quantile. */
#ifndef FAULTLINE_FAULTS_H
#define FAULTLINE_FAULTS_H

#include <stdint.h>

#include "faultline/nn.h"

/* The ids are written into label arrays and model files: append, never
 * reorder. */
typedef enum {
  FL_FAULT_NONE = 0,
  FL_FAULT_NOISE,      /* additive white Gaussian noise over the span */
  FL_FAULT_BURST,      /* strong noise under a half-sine envelope */
  FL_FAULT_SPIKE,      /* a Gaussian-shaped event centred in the span */
  FL_FAULT_STEP,       /* a bias jump at t0 that persists to the window's end */
  FL_FAULT_OFFSET,     /* a constant bias over the span only */
  FL_FAULT_DRIFT,      /* a bias growing linearly over the span */
  FL_FAULT_DRIFT_EXP,  /* a bias growing exponentially over the span */
  FL_FAULT_SINE,       /* periodic interference */
  FL_FAULT_DROPOUT,    /* the reading falls to zero */
  FL_FAULT_MISSING,    /* the reading is absent (NaN) */
  FL_FAULT_STUCK,      /* the reading freezes at its value at onset */
  FL_FAULT_SATURATION, /* the reading clips at a rail inside its range */
  FL_FAULT_GAIN,       /* the sensor's gain changes */
  FL_FAULT_TIMESHIFT,  /* a whole modality lags the others */
  FL_FAULT_COUNT
} fl_fault_type;

/* The fault's short name ("noise", "burst", "spike", "step", "offset",
 * "drift", "drift_exp", "sine", "dropout", "missing", "stuck", "saturation",
 * "gain", "timeshift"; "none" for FL_FAULT_NONE), or NULL for an id outside
 * the enum.  The string is static. */
const char *fl_fault_name(fl_fault_type t);

/* The inverse of fl_fault_name (case-sensitive, "none" included).  Returns
 * FL_EINVAL if an argument is NULL and FL_ENOTFOUND for an unknown name. */
int fl_fault_parse(const char *name, fl_fault_type *t);

/* One fault type's parameters.  Fields a type does not use are ignored. */
typedef struct {
  /* Size in channel standard deviations: the noise's sd (noise, burst), the
   * bias at its peak (spike, step, offset, drift, drift_exp), the sine's
   * amplitude.  For gain it is the relative change instead: the gain becomes
   * 1 + m or 1 / (1 + m).  Unused by dropout, missing, stuck, saturation and
   * timeshift. */
  float magnitude;
  /* Relative spread of the drawn magnitude (and of the sine's period and
   * the time shift): each injection uses magnitude * (1 + jitter * u) with u
   * uniform in [-1, 1).  0 injects exactly the configured size. */
  float jitter;
  /* sine: the period in samples. */
  float period;
  /* spike: the Gaussian's standard deviation as a fraction of the span.
   * drift_exp: the time constant as a fraction of the span. */
  float width;
  /* saturation: the quantile of the span's values where the rail sits
   * (in (0.5, 1); the rail is the upper q or the lower 1 - q quantile). */
  float level;
  /* timeshift: the delay in samples of the modality being injected; a
   * caller with a modality at r times the base rate scales it by r. */
  int shift;
  /* fl_fault_random: the span's length is drawn uniformly between these
   * fractions of the window (at least one sample). */
  float span_min, span_max;
} fl_fault_params;

/* Fills p[0 .. FL_FAULT_COUNT) with the defaults (p[FL_FAULT_NONE] is
 * zeroed).  Every type gets jitter 0.5 and:
 *
 *   type        magnitude  other                      span (fraction of T)
 *   noise       0.5                                   0.30 - 1.00
 *   burst       3                                     0.05 - 0.20
 *   spike       6          width 1/6                  0.03 - 0.10
 *   step        3                                     0.10 - 0.80 (ends at T)
 *   offset      3                                     0.10 - 0.50
 *   drift       4                                     0.20 - 0.80
 *   drift_exp   4          width 0.25                 0.20 - 0.80
 *   sine        2          period 8 samples           0.20 - 0.80
 *   dropout                                           0.05 - 0.50
 *   missing                                           0.05 - 0.50
 *   stuck                                             0.10 - 0.60
 *   saturation             level 0.7                  0.20 - 0.80
 *   gain        1 (x2 or x0.5)                        0.20 - 0.80
 *   timeshift              shift 5 samples            0.20 - 0.80
 */
void fl_fault_defaults(fl_fault_params p[FL_FAULT_COUNT]);

/* Injects one fault of type t with parameters p (the entry for t, not the
 * array) into x (C, T) over samples [t0, t0 + len) of channel ch, and writes
 * t into label (C, T) on every affected sample (see the rules above); label
 * may be NULL.  sd (C) holds each channel's standard deviation (NULL: 1).
 *
 * Per type:
 *   noise, burst  x += a sd e, e ~ N(0, 1); burst weights a by
 *                 sin(pi (i + 1/2) / len) so that it swells and fades.
 *   spike         x += +-a sd exp(-(t - centre)^2 / (2 s^2)), s = width len,
 *                 truncated to the span.
 *   step          x += +-a sd on [t0, T): the span's end is ignored because a
 *                 jumped calibration does not come back.
 *   offset        x += +-a sd on the span.
 *   drift         x += +-a sd (i + 1) / len, i = t - t0.
 *   drift_exp     x += +-a sd (e^((i + 1)/tau) - 1) / (e^(len/tau) - 1),
 *                 tau = width len; both drifts reach a at the span's end.
 *   sine          x += a sd sin(2 pi i / period + phase), phase uniform.
 *   dropout       x = 0 (the raw reading of a dead transmitter).
 *   missing       x = NaN.
 *   stuck         x = x[t0] (the last finite value at or before t0, or the
 *                 first one after it if there is none).
 *   saturation    x = min(x, q_level) or x = max(x, q_(1-level)), direction
 *                 random, quantile over the span's finite values.
 *   gain          x = mean + g (x - mean), mean of the channel's finite values
 *                 over the window.  Scaling about the mean rather than zero
 *                 keeps a gain fault a change of the signal's swing, which is
 *                 what tells it apart from a step in units far from zero.
 *   timeshift     every channel: x[c][t] = x[c][max(t - s, 0)] on the span
 *                 (the modality's stream lags by s samples, then catches up);
 *                 ch is ignored.
 *
 * FL_FAULT_NONE changes nothing.  Returns FL_EINVAL if x or p or rng is
 * NULL, C or T <= 0, t is outside the enum, the span is empty or leaves the
 * window, ch is outside [0, C) (other than for timeshift), a needed sd is
 * negative or not finite, or a parameter is out of its domain (period <= 0,
 * level outside (0.5, 1), shift < 0); FL_ENOMEM if saturation cannot
 * allocate.  On error x and label are untouched. */
int fl_fault_inject(fl_fault_type t, const fl_fault_params *p, float *x,
                    uint8_t *label, int C, int T, int ch, int t0, int len,
                    const float *sd, fl_rng *rng);

/* Injects one random fault for stage-2 training: its type uniform over
 * types[0 .. ntypes), its channel uniform over [0, C), its span's length
 * drawn from p[type]'s span_min .. span_max fraction of T and its start
 * uniform inside the window (a step's span ends at T).  p is the full array
 * of FL_FAULT_COUNT entries.  types may include FL_FAULT_NONE, which leaves
 * the window clean.  chosen (may be NULL) receives the type injected.
 * Returns fl_fault_inject's errors, and FL_EINVAL for ntypes <= 0 or a type
 * outside the enum. */
int fl_fault_random(const fl_fault_params p[FL_FAULT_COUNT],
                    const fl_fault_type *types, int ntypes, float *x,
                    uint8_t *label, int C, int T, const float *sd, fl_rng *rng,
                    fl_fault_type *chosen);

#endif
