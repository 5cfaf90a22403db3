/* faultline train: the two training stages of the design.
 *
 *   normalise  per-channel mean and standard deviation of the training rows
 *   stage 1    encoders and decoders reconstruct clean windows (masked MSE)
 *   stage 2    encoders frozen; the compute block learns to map the latent of
 *              a faulted window to a latent that decodes to the clean window,
 *              and the head learns the clean-anchored contrastive embedding
 *
 * After every optimiser step each module's gradients are clipped by their
 * global norm (own limit per module) and every layer is projected back under
 * its Lipschitz target.  Each stage stops early when the loss on the held-out
 * windows (the last val_fraction of every recording) has not improved for
 * `patience` epochs, and keeps the best parameters it saw.
 *
 * Nothing here prints: progress goes to the caller's callback. */
#ifndef FAULTLINE_TRAIN_H
#define FAULTLINE_TRAIN_H

#include <stdint.h>

#include "faultline/faults.h"
#include "faultline/model.h"

typedef struct {
  uint64_t seed;
  int batch;          /* windows per step (64) */
  int stride;         /* base ticks between training windows (1) */
  float val_fraction; /* share of each recording's windows held out (0.2) */
  float clamp;        /* standardised inputs clamped to +-clamp (10) */
  int patience;       /* epochs without improvement before stopping (5) */
  /* stage 1 */
  int epochs1;        /* (40) */
  float lr1;          /* (2e-3) */
  /* stage 2 */
  int epochs2;        /* (30) */
  float lr2;          /* block and head (1e-3) */
  float lr_dec2;      /* decoder fine-tuning rate in stage 2; 0 freezes it (1e-4) */
  float p_clean;      /* probability that a stage-2 window stays clean (0.25) */
  float tau;          /* NT-Xent temperature (0.2) */
  float w_contrast;   /* weight of the contrastive loss (0.5) */
  float clip[FL_MOD_COUNT]; /* global-norm limit per module; <= 0: none (1, 1, 1, 1) */
  fl_fault_params faults[FL_FAULT_COUNT];
  fl_fault_type types[FL_FAULT_COUNT];
  int ntypes;         /* fault types drawn in stage 2 (all but none) */
} fl_train_config;

void fl_train_defaults(fl_train_config *c);

typedef struct {
  int stage;          /* 1 or 2 */
  int epoch, epochs;  /* 1-based epoch, planned epochs */
  float train_loss, val_loss, best_val;
  double elapsed, eta; /* seconds */
  int done;           /* 1 on the last call of a stage */
} fl_train_progress;

typedef void (*fl_train_cb)(const fl_train_progress *p, void *user);

/* Sets the model's per-channel mean and std from the training part of the
 * recordings (missing values skipped).  A channel that is constant there gets
 * a floor on its std so that it cannot divide by zero. */
int fl_train_normalise(fl_model *m, const fl_series *s, int ns, const fl_train_config *cfg);

/* Stage 1 and stage 2 over ns recordings; windows never cross recordings. */
int fl_train_stage1(fl_model *m, const fl_series *s, int ns, const fl_train_config *cfg,
                    fl_train_cb cb, void *user);
int fl_train_stage2(fl_model *m, const fl_series *s, int ns, const fl_train_config *cfg,
                    fl_train_cb cb, void *user);

/* The window ends of one recording, split as the trainer splits them:
 * training windows first, then the held-out ones.  Returns the number of
 * windows (ends[] needs rows floats at most), *ntrain the training count. */
int fl_train_windows(const fl_series *s, const fl_model_spec *spec,
                     const fl_train_config *cfg, int *ends, int *ntrain);

/* The pieces of a training step, for callers that bring their own batches
 * (the online tuner).  fl_train_recon_loss: the masked reconstruction loss
 * of the context's last output against target[i] (B, C_i, T_i) with masks
 * tmask[i], averaged over the modalities; grad also fills dL/d output.
 * fl_train_step: one optimiser step of `stage` on the B windows already in
 * the context (fault-free targets and masks beside them, label[b] 0 for a
 * clean window, -1 for a faulted one): forward, losses, backward, then per
 * module gradient clipping (cfg->clip), Adam (opt[module]) and projection of
 * every layer under its target.  work holds B * B floats.  Stage 2 steps the
 * block and head, and the decoders when cfg->lr_dec2 > 0. */
int fl_train_recon_loss(const fl_model *m, fl_ctx *ctx, int B, float *const target[],
                        float *const tmask[], float *loss, int grad);
int fl_train_step(fl_model *m, fl_ctx *ctx, int stage, int B, float *const target[],
                  float *const tmask[], const int *label, fl_adam opt[FL_MOD_COUNT],
                  const fl_train_config *cfg, float *work, float *loss, float *closs);

#endif
