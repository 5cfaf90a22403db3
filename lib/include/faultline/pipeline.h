/* faultline pipeline: the per-window steps in their one order, for the
 * offline scan (one stream, many windows) and the daemon (many streams in
 * one batch) alike.
 *
 * For a batch of B windows whose standardised inputs are in the inference
 * context's slots 0..B-1 (fl_model_normalise of each window's raw values):
 *
 *   score        fl_detect_score, the whole batch at once
 *   decide       fl_detect_decide, window by window in the batch's order,
 *                with the window's stream state (baseline, hysteresis), and
 *                the per-modality hysteresis of each modality's score
 *   re-estimate  fl_detect_reestimate of the windows with faulty channels
 *   correct      fl_detect_correct_tail from the window's `from` tick on
 *   estimate     fl_estimate_apply over the same ticks, when the config
 *                gives an estimator: the replaced samples re-estimated from
 *                the stream's anchors, with their uncertainty
 *
 * Windows of one stream must come in the stream's order, within a batch
 * and across calls: the state carries the stream from one window to the
 * next.  Windows of other streams may be interleaved freely; each window's
 * answers depend only on its own input and its own stream's earlier
 * windows. */
#ifndef FAULTLINE_PIPELINE_H
#define FAULTLINE_PIPELINE_H

#include "faultline/detect.h"
#include "faultline/estimate.h"

/* What a stream carries from one window to the next, sized for a model by
 * fl_stream_state_init; fl_stream_state_reset when the stream starts again.
 * State that later steps need across windows belongs here, so that the scan
 * and the daemon keep it alike. */
typedef struct {
  int n_mod;
  fl_detect_baseline base; /* the baseline feature's level per channel */
  fl_hyst hyst;            /* the window flag's hysteresis */
  fl_hyst *mhyst;          /* (M) each modality's flag's hysteresis */
  fl_estimate_state est;   /* each channel's last trusted anchor */
} fl_stream_state;

int fl_stream_state_init(fl_stream_state *s, const fl_model_spec *spec);
void fl_stream_state_reset(fl_stream_state *s);
void fl_stream_state_free(fl_stream_state *s);

typedef struct {
  int on, off;  /* hysteresis: windows above (below) the threshold to raise
                   (clear) a flag, >= 1 */
  float clamp;  /* the bundle's clamp, as given to fl_model_normalise */
  const fl_estimator *est; /* the bundle's estimator, or NULL: the network's
                              estimate stands */
} fl_pipeline_config;

/* One window of a batch: the caller fills the inputs, the pipeline the
 * outputs.  fl_pipeline_windows_new makes a batch of them with every array
 * sized for the model (the raw, corrected and sigma pointers NULL, for the
 * caller to point at its buffers); free it with free(). */
typedef struct {
  /* in */
  fl_stream_state *st;  /* the window's stream */
  int ticks;            /* base ticks since the stream's previous window */
  int from;             /* the first base tick of the window (0 to window)
                           whose corrected values are written: the ticks the
                           window decides for */
  float **raw;       /* (M) each (C_i, T_i) raw units, as normalised into the
                        context */
  float **corrected; /* (M) each (C_i, T_i) raw units: samples t >= from *
                        rate_i are written, the others left alone */
  float **sigma;     /* (M) each (C_i, T_i) or NULL: each written sample's
                        uncertainty, raw units (0 where the input passed, NaN
                        where no estimator says) */
  /* out */
  fl_window_score sc;   /* scores, the baseline folded in (fl_detect_decide) */
  int flag;             /* debounced window flag */
  int above;            /* the window's own decision: score above threshold */
  int *mflag;             /* (M) debounced modality flags */
  unsigned char *faulty; /* (nch) channels the correction replaced */
  int intact;           /* 1: the context slot still holds the window's input
                           and mask as normalised (no channel masked) */
  int learnable;        /* intact, not flagged and not above the threshold:
                           a window the online tuner may learn from */
} fl_pipeline_window;

/* Runs the steps above over w[0..B-1], the window in slot k being w[k]
 * (B at most the context's batch).  After the call the context's slot k
 * holds window k's standardised input, mask and level unchanged when
 * w[k].intact, and the input with its faulty channels masked otherwise:
 * only intact slots (in particular the learnable ones) are the window as it
 * came.  Returns 0 or the first step's error; after an error the outputs
 * are undefined and the states of windows decided before it have moved. */
fl_pipeline_window *fl_pipeline_windows_new(const fl_model_spec *spec, int B);

/* The largest batch, from 1 to max, whose scratch fits in `bytes`: the
 * forward-only context (fl_ctx_infer_bytes) and, per window, the caller's
 * raw, corrected and sigma copies of the window.  *per_window, when given,
 * receives one window's share.  At least 1 however small `bytes` is: a
 * window is always scored.  A wide plant's window is megabytes, so a
 * daemon sizes its batch by memory rather than by count. */
int fl_pipeline_batch_for(const fl_model *m, int max, double bytes, size_t *per_window);

int fl_pipeline_run(fl_model *m, const fl_calib *cal, fl_ctx *ctx, const fl_pipeline_config *cfg,
                    int B, fl_pipeline_window *w);

#endif
