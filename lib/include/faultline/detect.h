/* faultline detect: window scores, thresholds, localisation and gated
 * correction.
 *
 * For every window and channel c the detector measures, over the window's
 * newest `tail` base ticks (where a fault that has just begun shows):
 *   r_c  log of the mean squared residual of the input against the stage-1
 *        reconstruction (the high-fidelity estimate: block bypassed);
 *   v_c  log of the mean squared difference of successive samples: the
 *        sensor's own noise, which a dead sensor (stuck, saturated) loses
 *        and which operating-point changes, unlike the variance, leave alone;
 *   q_c  log of the mean squared residual against the corrected estimate
 *        (compute block on): what the channel should read given the rest of
 *        the window, which sees level faults that r_c's autoencoder follows;
 *   n_c  the share of missing samples.
 * and for the window the embedding's cosine distance d to the clean centroid.
 * Each feature is standardised by its mean and spread on clean held-out
 * windows (the calibration).  A channel's score is max(z(r_c), -z(v_c), z(q_c)) plus
 * a penalty for missing samples (|z(v_c)| with w_rise: the autoencoder
 * reproduces added noise, so a noisy sensor shows in v_c, not in r_c); a modality's score is its channels' maximum;
 * the window's score is the maximum of the modality scores and z(d).  The
 * window is flagged when its score exceeds the threshold, a quantile of clean
 * held-out window scores; the faulty modality is the one with the largest
 * score.
 *
 * Correction is gated: the corrected output equals the input on channels
 * judged healthy and the model's corrected estimate (compute block on) on
 * channels judged faulty (from the first window above the threshold, before
 * the flag's hysteresis raises the alarm) and on every missing value.
 * Channels of one modality that all moved together are the process, not a
 * failed sensor: they stay flagged and pass through (fl_detect_decide). */
#ifndef FAULTLINE_DETECT_H
#define FAULTLINE_DETECT_H

#include "faultline/model.h"
#include "faultline/train.h"

typedef struct {
  int tail;         /* base ticks at the window's end that features measure (15) */
  float quantile;   /* threshold quantile of clean held-out scores (0.99) */
  float margin;     /* threshold = margin * quantile score (1.0) */
  float chan_quantile; /* channel threshold quantile (0.99) */
  float w_emb;      /* 1: the embedding distance takes part in the score, 0: not */
  float min_spread; /* floor on a feature's clean spread, log units (0.75) */
  float w_var;      /* 1: the variance feature takes part in the score, 0: not */
  float w_corr;     /* 1: the corrected estimate's residual takes part, 0: not (0) */
  float w_ratio;    /* 1: the tail's noise against the head's takes part (0) */
  float w_rise;     /* 1: a rise of the noise feature counts as well as a collapse,
                       when w_var is on (1; models written before the key: 0) */
  float w_base;     /* 1: the tail's level against the stream's baseline takes part (0) */
  int base_span;    /* base ticks: time constant of the baseline's average (300) */
  int agree;        /* 1: a modality whose channels all moved together is passed
                       through uncorrected (a process event), 0: replaced (1) */
  int calibrate_all; /* 1: calibrate on every window of the recordings, 0: on the
                        held-out ones only (1) */
  int on, off;      /* hysteresis: windows above (below) to raise (clear) a flag */
  int settle;       /* base ticks a stream must hold still after an alarm's
                       second move before it re-anchors (fl_detect_decide);
                       0: never (180) */
} fl_detect_config;

void fl_detect_defaults(fl_detect_config *c);

/* Calibration: what "clean" looks like, stored in the model file.  The
 * per-channel arrays are (nch) views into one block the calibration owns:
 * fl_calib_alloc sizes them (nch 0 until then: uncalibrated), fl_calib_copy
 * copies, fl_calib_free releases. */
#define FL_CALIB_ARRAYS 11
typedef struct {
  int nch, emb;
  float *res_mu, *res_sd;
  float *var_mu, *var_sd;
  float *cor_mu, *cor_sd;
  float *bas_mu, *bas_sd;
  float *bas_v0; /* clean spread of the baseline, a stream's start */
  float *rat_mu, *rat_sd;
  float *block;  /* (FL_CALIB_ARRAYS nch) the arrays above */
  float centroid[256];
  float emb_mu, emb_sd;
  float threshold, chan_threshold;
  int tail;
  float w_emb, w_var, w_corr, w_ratio, w_base, w_rise;
  int base_span;
  int agree; /* see fl_detect_config */
  int base_drift; /* 1: drifting modalities' levels (trend added back) have a
                     baseline too; 0 in models calibrated before it */
  int settle;     /* see fl_detect_config; 0 in models written before it */
} fl_calib;

/* Sizes cal's arrays for nch channels, zeroed, keeping its other fields;
 * sets cal->nch.  Any arrays it held are released first. */
int fl_calib_alloc(fl_calib *cal, int nch);
void fl_calib_free(fl_calib *cal);
/* dst (holding no arrays, or arrays fl_calib_alloc made) becomes a deep copy
 * of src. */
int fl_calib_copy(fl_calib *dst, const fl_calib *src);

/* One window's scores.  The arrays are views into storage that
 * fl_window_scores_new allocates for a batch. */
typedef struct {
  float score;
  int modality;      /* largest modality score, -1 if none */
  float *mod_score;  /* (M) */
  float *chan;       /* (nch) channel scores, model channel order */
  float *resid;      /* (nch) RMS residual over the tail, std units */
  float *level;      /* (nch) mean of the tail, std units (detrended) */
  float *noise;      /* (nch) mean squared successive difference of the tail */
  float *shift;      /* (nch) mean of the tail minus mean of the head, std units */
  float emb_score;
} fl_window_score;

/* B window scores for M modalities and nch channels, their arrays zeroed, in
 * one allocation: free with free().  NULL when out of memory. */
fl_window_score *fl_window_scores_new(int B, int M, int nch);

/* Scores the B windows whose standardised inputs and masks are in the
 * context (see fl_model_normalise).  Runs the model twice (stage-1 estimate
 * corrected estimate, kept in fl_ctx_estimate, then the stage-1 estimate with
 * the head).  cal may be uncalibrated (nch 0) during calibration itself: raw
 * features then go to raw (B, FL_DETECT_FEATURES nch + 1) if it is non-NULL,
 * in the order r_c..., v_c..., q_c..., m_c..., h_c..., d: log residual
 * against the stage-1 estimate, log noise (mean squared successive
 * difference) of the tail, log residual against the corrected estimate,
 * the tail's mean, log noise of the head, and the embedding distance.
 * The baseline feature is not in the window's score yet: fl_detect_track
 * adds it, in the stream's order. */
#define FL_DETECT_FEATURES 5
int fl_detect_score(fl_model *m, const fl_calib *cal, fl_ctx *ctx, int B,
                    fl_window_score *out, float *raw);

/* The noise-ratio feature from a window's log tail noise v and log head noise
 * h: how much farther the tail's noise is from the clean level var_mu than
 * the head's.  A fault that starts in the tail moves it away; the clean tail
 * after a fault has ended comes back, and so does not count. */
float fl_detect_ratio(float v, float h, float var_mu);
/* A stream's baseline: each channel's tail level and the spread of that
 * level, followed over the stream's windows.  Zero it (or
 * fl_detect_baseline_reset) when a stream starts; the first window sets its
 * level, the calibration its spread. */
typedef struct {
  int init;
  int nch;
  float *level, *var; /* (nch) each */
  /* re-anchoring (fl_detect_decide): moves since the stream was last calm,
   * whether the last window moved, ticks held still, ticks calm, and the
   * scores the stream is judged against once anchored */
  int moves, moving, still, calm, anchored;
  float *peak, peak_emb;     /* (nch) */
  float *anchor, anchor_emb; /* (nch) */
  float *block;              /* (4 nch) the arrays above */
} fl_detect_baseline;

/* Sizes bl for nch channels and resets it.  fl_detect_baseline_reset keeps
 * the arrays and zeroes them; fl_detect_baseline_free releases them. */
int fl_detect_baseline_init(fl_detect_baseline *bl, int nch);
void fl_detect_baseline_reset(fl_detect_baseline *bl);
void fl_detect_baseline_free(fl_detect_baseline *bl);

/* The baseline feature of one scored window, in the stream's order, `ticks`
 * base ticks after the previous window: how far each channel's tail mean
 * lies from the stream's baseline, in the baseline's own standard
 * deviations, calibrated like the other features and folded into the
 * window's channel, modality and window scores.  A fault that outlasts the
 * window stays visible this way, where the window's own features have
 * nothing left to compare with.  The baseline then learns from the window
 * with time constant cal->base_span, the level's step clipped to three
 * standard deviations and the variance's to four times itself, so slow drift
 * is followed and a fault of many standard deviations is absorbed only over
 * several spans.  Drifting modalities take no
 * part: their level is normal whatever it is.  With raw_z non-NULL (nch) the
 * uncalibrated distances are written there and the scores are left alone
 * (calibration). */
void fl_detect_track(const fl_model *m, const fl_calib *cal, fl_detect_baseline *bl,
                     fl_window_score *sc, int ticks, float *raw_z);

/* Calibrates on the windows of the recordings (cal holds no arrays on entry:
 * zeroed, or after fl_calib_free; it owns new ones after a success)  (all of them, or with
 * dcfg->calibrate_all = 0 the held-out ones of the trainer's split, cfg) and
 * sets the thresholds from dcfg. */
int fl_detect_calibrate(fl_model *m, fl_calib *cal, const fl_series *s, int ns,
                        const fl_train_config *cfg, const fl_detect_config *dcfg);

/* Calibration on nw windows that a callback loads: load(user, m, ctx, b, j)
 * puts window j (standardised input, mask, level) into slot b of ctx; it is
 * called twice per window.  Batches of Bmax.  The online tuner calibrates
 * on its replay buffer this way. */
typedef int (*fl_detect_load_fn)(void *user, fl_model *m, fl_ctx *ctx, int b, int j);
int fl_detect_calibrate_with(fl_model *m, fl_calib *cal, int nw, int Bmax,
                             fl_detect_load_fn load, void *user,
                             const fl_detect_config *dcfg);

/* Masked re-estimation: the windows b with a channel judged faulty
 * (faulty[b * nch + c] != 0) are run through the model again (compute block
 * on) with those channels masked as missing, and their corrected estimate
 * (fl_ctx_estimate, and the trend of a drifting modality) replaced, so that
 * what stands in for a faulty sensor comes from the other sensors and the
 * model, not from the faulty readings it would otherwise reconstruct.  A
 * faulty channel is masked over the whole window, or over the tail only in a
 * drifting modality, whose level the head still gives.  raw[b][i] is window
 * b's modality i, (C_i, T_i) raw units, as given to fl_model_normalise with
 * clamp.  Windows without a faulty channel are left as they are; nothing runs
 * if there is none.  Leaves slot b's input and mask as masked. */
int fl_detect_reestimate(fl_model *m, const fl_calib *cal, fl_ctx *ctx, int B,
                         float *const *const *raw, const unsigned char *faulty,
                         float clamp);

/* Gated correction of one window's modality i: corrected (C_i, T_i) raw
 * units, from the raw input (C_i, T_i) and the context's slot b after
 * fl_detect_score.  faulty[c] (C_i) says which channels are replaced;
 * missing samples, and samples more than `range` standard deviations from
 * the training mean (the bundle's clamp; 0: no limit), are replaced
 * whatever faulty says. */
int fl_detect_correct(const fl_model *m, fl_ctx *ctx, int b, int i, const float *raw,
                      const int *faulty, float range, float *corrected);

/* fl_detect_correct for the samples t >= from of each channel only (0 <= from
 * <= T_i); corrected's other samples are left as they are.  A stream reports
 * only the newest stride ticks of each window. */
int fl_detect_correct_tail(const fl_model *m, fl_ctx *ctx, int b, int i, const float *raw,
                           const int *faulty, float range, int from, float *corrected);

/* Hysteresis over a stream of window decisions. */
typedef struct {
  int state, count;
} fl_hyst;
/* Feeds one window's raw decision; returns the debounced flag. */
int fl_hyst_update(fl_hyst *h, int above, int on, int off);

/* One scored window's decision, in its stream's order: the baseline feature
 * folded in (fl_detect_track, `ticks` after the previous window), the
 * stream re-anchored when it has settled (below), the debounced flag from
 * h, and the channels the correction replaces (faulty[c] for the nch
 * channels: above the channel threshold in a window that is flagged or
 * above the threshold itself, so that correction begins with the first
 * window above, before the flag's hysteresis has run out; except, with
 * cal->agree, the channels of a modality that were all above it and all
 * moved together: see fl_detect_config.agree).  Returns the flag; *above
 * (if non-NULL) gets the window's own decision.  The offline scan and the
 * daemon decide through this.
 *
 * Re-anchoring, so that an alarm comes back down when the process settles at
 * a new normal after an anomaly.  A window moves when some channel's tail
 * mean lies FL_DETECT_MOVE or more training standard deviations from its
 * head mean (sc->shift).  Counting from the last time the stream was calm
 * (its window score at most the threshold for a whole window of ticks), an
 * anomaly moves the process once when it starts and once more when it ends.
 * When the stream's score is above the threshold, it has moved twice or
 * more, and it has then held still (no window moving) for cal->settle base
 * ticks, it re-anchors: each channel's score, and the embedding distance's,
 * is from then on judged by how far it rises above the largest value it took
 * while the stream held still.  A new move on top of the new normal raises
 * the scores again; a return to the training normal (the scores, as
 * computed before re-anchoring, at most the threshold for a window) makes
 * the stream calm and drops the anchor.  cal->settle 0 turns it off. */
#define FL_DETECT_MOVE 1.5f
int fl_detect_decide(const fl_model *m, const fl_calib *cal, fl_detect_baseline *bl, fl_hyst *h,
                     int on, int off, fl_window_score *sc, int ticks, unsigned char *faulty,
                     int *above);

#endif
