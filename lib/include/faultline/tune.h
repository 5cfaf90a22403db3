/* faultline tune: online fine-tuning of the normalisation and the compute
 * block (and, if asked, the head) on windows judged clean, as the daemon's
 * [tune] section runs it.
 *
 *   buffer   a bounded ring of clean standardised windows (input, mask and
 *            the trend removed from drifting modalities, as fl_model_normalise
 *            left them in a context slot); the oldest is overwritten
 *   job      works on private copies: fl_tune_job_begin (caller's thread)
 *            takes the current model's parameters (a copy only when they
 *            changed other than by this job) and calibration,
 *            fl_tune_job_snapshot (any thread) the buffer's windows
 *            (fl_tune_job_prepare: both); fl_tune_job_run (any thread) first lets the
 *            normalisation follow the operating point, then runs `steps`
 *            stage-2 steps (lib/train.c's fl_train_step: faults injected into
 *            the buffer windows, correction loss, and NT-Xent when the head
 *            is tuned too (lr_head > 0), per-module clipping, every layer
 *            projected under its target after every step) on the training
 *            part, then validates on the held-out part (the newest
 *            val_fraction of the windows) against the current model;
 *            fl_tune_job_apply (caller's thread) copies an accepted update
 *            into the live model and calibration, and fl_tune_job_rebase
 *            re-standardises the buffers for it.
 *
 * Why the normalisation: detection rests on the stage-1 residual (encoders
 * and decoders, block bypassed), which block tuning cannot change.  When the
 * plant's operating point drifts slowly (a supply voltage, a wearing pump),
 * a channel judged by its level meets levels the autoencoder never saw; it
 * reconstructs them with a bias towards the levels it knows, and that bias
 * is the residual that raises false alarms.  The job measures the bias of
 * each such channel on the clean training windows, in norm_parts parts of
 * consecutive windows, and moves what persists into the channel's mean: the
 * bias every part shows with one sign (the smallest), less a dead band of
 * norm_band (norm_rate of it per pass, three passes, at most norm_max
 * standard deviations per update), so the autoencoder sees the channel back
 * where it reconstructs it.  The bias of one operating point, which the
 * autoencoder reconstructs a little off, comes and goes from part to part
 * and is not followed: following it, the normalisation chased the recent
 * operating points and raised false alarms at the next one.  Only windows the gate judged clean inform it:
 * a fault enters the normalisation only if it never scored above gate x
 * threshold, so a sensor drift slow and small enough to stay below it is
 * followed like a drift of the plant.
 *
 * Validation: on the held-out windows, with faults injected from a fixed
 * seed (the same faults for both models): the correction loss, and the AUROC
 * of the faulted windows' scores against the clean windows' scores; on the
 * clean held-out windows: the false-alarm rate (score above the threshold)
 * and the mean score over the threshold.  The current model is judged with
 * its own calibration, the candidate with the current one too unless the
 * calibration has to move with it (recalibrate 1, a tuned head, or the
 * corrected residual in the score: then from the training part of the
 * buffer).  The update is
 * accepted only if neither the loss nor the mean clean score exceeds the
 * current one by more than margin (relative), the false-alarm rate does not
 * exceed it by more than margin (absolute), and the AUROC does not fall by
 * more than margin.  (The share of faulted windows above the threshold is
 * reported, not judged: a detector that was half-alarmed on drifted clean
 * windows caught faults it did not see.)  When the calibration moves with
 * an update, on acceptance it is computed on every buffered window (the held-out part alone
 * is a few dozen overlapping windows) and only loosens the one in service:
 * the buffer is a narrow slice of recent windows that the gate let through
 * for scoring low, so their feature levels are biased low and their spreads
 * narrow.  Feature levels, spreads and thresholds move up where the buffer
 * says so and stay otherwise (the variance feature's level moves down: it
 * flags a collapse).  The candidate's own calibration for the comparison is
 * merged the same way.
 *
 * Nothing here blocks, sleeps, logs or keeps global state. */
#ifndef FAULTLINE_TUNE_H
#define FAULTLINE_TUNE_H

#include <stdint.h>

#include "faultline/detect.h"
#include "faultline/model.h"
#include "faultline/train.h"

typedef struct {
  int steps;          /* stage-2 steps per update (50) */
  int batch;          /* windows per step (32) */
  float lr;           /* learning rate of the compute block (2e-4) */
  float lr_head;      /* of the contrastive head; 0 freezes it (0): the head
                       * is the detection path, and an embedding retrained on
                       * a narrow slice of windows judges the next slice worse */
  float margin;       /* tolerated worsening, see above (0.05) */
  float val_fraction; /* share of the buffer held out for validation (0.25) */
  int min_windows;    /* windows the buffer needs before an update (128) */
  float norm_rate;    /* share of the clean windows' stage-1 residual bias moved
                       * into the normalisation per pass (1); 0 keeps the
                       * normalisation as trained */
  float norm_max;     /* largest move of a channel's mean, in its standard
                       * deviations, per min_windows windows pushed into the
                       * buffer since the job's last snapshot of it (at least
                       * one unit): a rate per window of data, not per job,
                       * so that fewer jobs (a busy CPU) follow as far (0.5) */
  int norm_parts;     /* the training windows, oldest first, split into this
                       * many parts of consecutive windows (1 to 16); only the
                       * bias every part shows with one sign is followed, the
                       * smallest of them (4) */
  float norm_band;    /* dead band, in standard deviations: a persistent bias
                       * this small is not followed, a larger one less this
                       * much (0.25) */
  int recalibrate;    /* 1: an accepted update's calibration comes from the
                       * buffer, loosening only (see above); 0: the calibration
                       * in service stays unless the head is tuned or the
                       * corrected residual is scored (w_corr > 0) (0: the
                       * loosening cost AUROC of injected faults without any
                       * drift, 0.785 -> 0.752 and 0.773 -> 0.754) */
  uint64_t seed;
  fl_train_config train;   /* p_clean, tau, w_contrast, clip, faults, clamp, lr_dec2 */
  fl_detect_config detect; /* the recalibration's quantiles */
} fl_tune_config;

/* Defaults as above; train gets fl_train_defaults with lr_dec2 = 0 (the
 * decoders, hence the stage-1 estimate detection relies on, stay frozen). */
void fl_tune_defaults(fl_tune_config *c);

typedef struct fl_tune_buffer fl_tune_buffer;
int fl_tune_buffer_create(fl_tune_buffer **out, const fl_model *m, int capacity);
void fl_tune_buffer_free(fl_tune_buffer *b);
/* Copies slot b of the context (after fl_model_normalise) into the ring. */
int fl_tune_buffer_push(fl_tune_buffer *buf, fl_ctx *ctx, int b);
int fl_tune_buffer_count(const fl_tune_buffer *b);
int fl_tune_buffer_capacity(const fl_tune_buffer *b);
void fl_tune_buffer_clear(fl_tune_buffer *b);
/* Pushes into dst the window `age` pushes older than src's newest (0: the
 * newest); both buffers of the same model.  A gate that judges a window by
 * its neighbours on both sides keeps candidates in a small src and moves
 * them on once the later neighbours have been seen. */
int fl_tune_buffer_move(fl_tune_buffer *dst, const fl_tune_buffer *src, int age);

typedef struct {
  int steps;                      /* steps taken */
  int ntrain, nval;               /* windows used */
  float train_loss;               /* mean step loss (correction + contrastive) */
  float loss_old, loss_new;       /* held-out correction loss */
  float far_old, far_new;         /* held-out clean false-alarm rate */
  float det_old, det_new;         /* held-out windows with an injected fault that
                                   * score above the threshold */
  float auc_old, auc_new;         /* AUROC of the held-out windows' scores, each
                                   * with its injected fault against clean */
  float score_old, score_new;     /* mean held-out clean score over the threshold */
  float norm_shift;               /* largest move of a channel's mean, in sd */
  float threshold;                /* the new threshold (accepted updates) */
  float max_ratio;                /* largest sigma / target over the layers */
  int accepted;
  double seconds;                 /* wall time of fl_tune_job_run */
} fl_tune_result;

typedef struct fl_tune_job fl_tune_job;
/* A job for models of m's spec. */
int fl_tune_job_create(fl_tune_job **out, const fl_model *m, const fl_tune_config *cfg);
void fl_tune_job_free(fl_tune_job *j);
/* Snapshots the current model, its calibration and the buffer (FL_EINVAL
 * with fewer than cfg->min_windows windows): fl_tune_job_begin and
 * fl_tune_job_snapshot in one call. */
int fl_tune_job_prepare(fl_tune_job *j, const fl_model *cur, const fl_calib *cal,
                        const fl_tune_buffer *buf);
/* The caller's part of a snapshot, O(1) in the buffer's size: takes the
 * calibration, notes which windows of buf the run will use, and the model's
 * parameters, which it copies only when cur is not the model this job
 * last copied or applied to (the first time): a model in service changes
 * only through fl_tune_job_apply of its job, whose candidate then becomes
 * the job's reference without a copy (a new model, after a reload, gets a
 * new job).  fl_tune_job_snapshot (any thread) then copies
 * the windows; buf's windows must not change until it returns (new
 * windows wait elsewhere), and buf must live until then. */
int fl_tune_job_begin(fl_tune_job *j, const fl_model *cur, const fl_calib *cal,
                      const fl_tune_buffer *buf);
int fl_tune_job_snapshot(fl_tune_job *j);
/* Trains and validates (taking the snapshot first if fl_tune_job_begin's
 * is pending); touches nothing but the job. */
int fl_tune_job_run(fl_tune_job *j, fl_tune_result *res);
/* Copies the accepted parameters and calibration into dst (FL_EINVAL when
 * the last run was not accepted).  When dst is the model the run started
 * from, only what a run can change is copied (the compute block, the head,
 * the decoders if they train, the normalisation): not the encoders, nor the
 * decoders when frozen, which in the default model are 2 % of the
 * parameters (the dense block and head are the rest). */
int fl_tune_job_apply(fl_tune_job *j, fl_model *dst, fl_calib *cal);
/* Re-standardises the windows of b (pushed with the normalisation of the
 * model the last run started from) to the normalisation of its accepted
 * candidate, so that the windows buffered before an update and after it
 * agree.  Call after fl_tune_job_apply, for every buffer of that model
 * (FL_EINVAL when the last run was not accepted). */
int fl_tune_job_rebase(const fl_tune_job *j, fl_tune_buffer *b);
/* The move of each model channel's mean (fl_model_channels of them) that the
 * last accepted run made, in the channel's standard deviations (new - old):
 * any other state kept in standardised units (a stream's baseline level)
 * must move by -d[c] when the update is applied, as fl_tune_job_rebase moves
 * the buffers.  FL_EINVAL when the last run was not accepted. */
int fl_tune_job_norm_delta(const fl_tune_job *j, float *d);
/* The calibration of the last accepted run (NULL if not accepted). */
const fl_calib *fl_tune_job_calib(const fl_tune_job *j);
/* The candidate model of the last run (for tests and analysis). */
fl_model *fl_tune_job_model(fl_tune_job *j);

#endif
