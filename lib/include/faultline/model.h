/* faultline model: the multimodal 1-D convolutional autoencoder.
 *
 *   x_m (B, C_m, T_m), T_m = window * rate_m, standardised per channel
 *   E_m:  Conv1d(C_m->e1, k, stride 2 rate_m) LeakyReLU Conv1d(e1->e2, k5, s2) LeakyReLU
 *         (k = 5 at rate 1, 3 rate_m taps with rate_m padding above)
 *         -> z_m (B, e2, L), L = window / 4 for every modality
 *   z  (B, M e2 L): the modality maps stacked along channels (flattened)
 *   B:    z' = z + Dense(hid) LReLU Dense(hid) LReLU Dense(|z|)       (compute block)
 *   D_m:  ConvT1d(e2->e1, k5, s2) LeakyReLU ConvT1d(e1->C_m, k, s 2 rate_m) on z'_m
 *   P:    e = normalise(Dense(head_out) . LReLU . Dense(head_hid) z)  (contrastive head)
 *
 * With the block bypassed (z' = z) the decoders give the stage-1
 * reconstruction, the high-fidelity estimate detection relies on; with the
 * block, the corrected estimate.  A model is a value the caller owns: create,
 * run, free.  It holds its parameters, their gradients and Adam moments in
 * contiguous blocks, the per-channel normalisation, and the calibration of the
 * detector that goes with it. */
#ifndef FAULTLINE_MODEL_H
#define FAULTLINE_MODEL_H

#include <stddef.h>

#include "faultline/csv.h"
#include "faultline/nn.h"

#define FL_NAME_MAX 64

typedef struct {
  char name[FL_NAME_MAX];
  int channels; /* C_m */
  int rate;     /* samples per base tick, >= 1 */
  int drifts;   /* 1: its level drifts in normal operation; judge shape, not trend */
  char (*channel)[FL_NAME_MAX]; /* (channels) column names, see fl_model_column_name;
                                 owned by the spec */
} fl_modality;

/* The modules, for per-module clipping and Lipschitz targets. */
typedef enum { FL_MOD_ENC = 0, FL_MOD_DEC, FL_MOD_BLOCK, FL_MOD_HEAD, FL_MOD_COUNT } fl_module;

/* A spec owns its modalities (and their channel names): there is no limit on
 * either count but memory.  Copy it with fl_model_spec_copy, release it with
 * fl_model_spec_free; a plain struct copy would share them. */
typedef struct {
  int n_mod;
  fl_modality *mod; /* (n_mod) */
  int window;          /* base ticks per window, a multiple of 4 (60) */
  int enc1, enc2;      /* encoder channels (16, 32) */
  int kernel;          /* kernel of the rate-1 convolutions (5) */
  int hidden;          /* compute block width (256) */
  int head_hidden;     /* (128) */
  int emb;             /* embedding size (32) */
  float leak;          /* LeakyReLU slope (0.1) */
  float target[FL_MOD_COUNT]; /* Lipschitz target per layer of each module; <= 0: none */
} fl_model_spec;

/* Defaults of the design with no modality; the caller adds modalities.  s
 * must not hold modalities (fresh, or after fl_model_spec_free). */
void fl_model_spec_defaults(fl_model_spec *s);
/* Releases the modalities and leaves s with none (the other fields kept). */
void fl_model_spec_free(fl_model_spec *s);
/* dst becomes a deep copy of src; dst must not hold modalities.  On error dst
 * holds none. */
int fl_model_spec_copy(fl_model_spec *dst, const fl_model_spec *src);
/* Appends a modality of `channels` columns named by `names` at `rate`. */
int fl_model_spec_add(fl_model_spec *s, const char *name, int rate, int channels,
                      const char *const *names);
/* The channels of s: the sum of C_m over its modalities (0 with none);
 * FL_EINVAL when s is NULL.  fl_model_channels gives the same of a model. */
int fl_model_spec_channels(const fl_model_spec *s);
/* Appends one channel named `name` to modality i. */
int fl_model_spec_add_channel(fl_model_spec *s, int i, const char *name);
/* Validates the spec: sizes, window a multiple of 4, rates, names. */
int fl_model_spec_check(const fl_model_spec *s);
/* Do models of specs a and b take the same windows: the same window length
 * and the same modalities in the same order, each with the same name, rate
 * and channels (count and names)?  Then one's streams, rows and buffered
 * windows serve the other.  Returns 1 if so, else 0 with the first
 * difference in why ("a" against "b") when why is non-NULL. */
int fl_model_spec_compatible(const fl_model_spec *a, const fl_model_spec *b, char *why,
                             size_t len);
const char *fl_module_name(fl_module m);

/* One layer as the analysis and the projection see it. */
/* A layer's name: "enc." or "dec.", a modality's name and ".0" or ".1". */
#define FL_LAYER_NAME_MAX (FL_NAME_MAX + 8)

typedef struct {
  char name[FL_LAYER_NAME_MAX]; /* e.g. "enc.hydraulic.0" */
  enum { FL_LAYER_DENSE, FL_LAYER_CONV, FL_LAYER_CONVT } kind;
  fl_module module;
  int modality; /* -1 for block and head */
  fl_conv conv; /* conv layers */
  int tin;      /* conv layers: input length the operator acts on */
  int nin, nout; /* dense layers */
  float *w, *b; /* views into the parameter block */
  float *gw, *gb;
  size_t nw, nb;
  float target; /* Lipschitz target of this layer (<= 0: none) */
  float *v;     /* power-iteration warm start, (nin) or (cin tin) */
  fl_act act;   /* activation applied after this layer */
} fl_layer;

typedef struct fl_model fl_model;

/* Creates a model with PyTorch-default initialisation from seed.  The compute
 * block's last layer starts at zero, so z' = z until stage 2 teaches it. */
int fl_model_create(fl_model **out, const fl_model_spec *spec, unsigned long seed);
void fl_model_free(fl_model *m);
const fl_model_spec *fl_model_spec_of(const fl_model *m);

/* Sizes. */
int fl_model_latent_len(const fl_model *m);  /* L */
int fl_model_latent_size(const fl_model *m); /* |z| = M e2 L */
int fl_model_input_size(const fl_model *m);  /* sum over m of C_m T_m, one window */
size_t fl_model_param_count(const fl_model *m);
int fl_model_layer_count(const fl_model *m);
fl_layer *fl_model_layer(fl_model *m, int i);

/* Normalisation: per channel, over all modalities in order (sum C_m). */
int fl_model_channels(const fl_model *m); /* sum of C_m */
float *fl_model_mean(fl_model *m);        /* (sum C_m) */
float *fl_model_std(fl_model *m);         /* (sum C_m) */

/* The parameters of one module as optimiser blocks (weights and biases). */
int fl_model_params(fl_model *m, fl_module mod, fl_param **ps, int *count);
void fl_model_zero_grad(fl_model *m);

/* Scratch space for a batch: activations kept for the backward pass.  A
 * context serves one thread; the daemon and the trainer each own one. */
typedef struct fl_ctx fl_ctx;
int fl_ctx_create(fl_ctx **out, const fl_model *m, int max_batch);
/* A context for forward passes only, as a detector that never trains needs:
 * the same inputs, outputs, latents, estimates and embedding as one from
 * fl_ctx_create, but nothing is kept for a backward pass.  Activations are
 * applied in place and the layers' intermediates share a few buffers across
 * modalities, so at the daemon's batch it holds under half the memory.
 * With it fl_ctx_preact and the gradient views return NULL and the backward
 * passes return FL_EINVAL. */
int fl_ctx_create_infer(fl_ctx **out, const fl_model *m, int max_batch);
/* The bytes fl_ctx_create_infer allocates for max_batch windows, so that a
 * caller can choose its batch by memory before creating the context. */
size_t fl_ctx_infer_bytes(const fl_model *m, int max_batch);
void fl_ctx_free(fl_ctx *c);

/* Input of a batch: one buffer per modality, x_m (B, C_m, T_m), already
 * standardised and free of NaN (see fl_model_prepare).  The view
 * fl_ctx_input(c, m) gives the buffer to fill. */
float *fl_ctx_input(fl_ctx *c, int modality);

/* Forward pass over B windows.  use_block = 0 bypasses the compute block
 * (stage 1); with_head also runs the contrastive head.  Afterwards:
 *   fl_ctx_output(c, m)  (B, C_m, T_m)  the estimate D(z')
 *   fl_ctx_latent(c)     (B, |z|)       z
 *   fl_ctx_latent2(c)    (B, |z|)       z'
 *   fl_ctx_embedding(c)  (B, emb)       unit-norm embedding */
int fl_model_forward(fl_model *m, fl_ctx *c, int B, int use_block, int with_head);
/* As fl_model_forward, but from the latent z that the previous forward over
 * the same B inputs left in c (the encoders are not run again): a second
 * pass with the block or the head switched costs only the decoders. */
int fl_model_forward_latent(fl_model *m, fl_ctx *c, int B, int use_block, int with_head);
float *fl_ctx_output(fl_ctx *c, int modality);
float *fl_ctx_latent(fl_ctx *c);
float *fl_ctx_latent2(fl_ctx *c);
float *fl_ctx_embedding(fl_ctx *c);
/* The pre-activation the last forward pass stored for layer `layer` of the
 * table (its output before the activation: (B, nout) or (B, cout, tout); the
 * head's last layer gives the embedding before L2 normalisation), or NULL
 * when that pass did not run the layer (the block when bypassed, the head
 * without with_head).  Jacobian-vector products read activation slopes here. */
const float *fl_ctx_preact(const fl_ctx *c, const fl_model *m, int layer);

/* Backward passes, accumulating into the gradients of the layers involved.
 * fl_model_backward_recon takes dL/d output_m in fl_ctx_doutput(c, m) and
 * propagates through the decoders, the block (if used in the forward pass)
 * and, if into_encoder, the encoders.  fl_model_backward_head takes dL/de in
 * fl_ctx_dembedding(c) and propagates through the head (and, if
 * into_encoder, the encoders).  Call the forward pass first. */
float *fl_ctx_doutput(fl_ctx *c, int modality);
float *fl_ctx_dembedding(fl_ctx *c);
int fl_model_backward_recon(fl_model *m, fl_ctx *c, int B, int into_encoder);
int fl_model_backward_head(fl_model *m, fl_ctx *c, int B, int into_encoder);

/* Projects every layer of the module whose spectral norm exceeds its target
 * back onto it; sigma_out (may be NULL) receives the largest norm after. */
int fl_model_project(fl_model *m, fl_module mod, float *sigma_out);
/* Spectral norm of one layer's operator (power iteration, warm-started). */
int fl_model_layer_norm(fl_model *m, int layer, float *sigma);

/* ---- data ------------------------------------------------------------- */

/* A recording in the model's layout: per modality, every channel's samples
 * in time order, (C_m, rows r_m), raw units, NaN = missing.  Built from a
 * table whose columns are named as fl_model_spec says: a rate-1 channel is
 * the column of its name, a rate-r channel the columns "<name>.0" ..
 * "<name>.<r-1>" (the sub-samples of one base tick, in time order). */
typedef struct {
  int rows; /* base ticks */
  int n_mod;
  float **x; /* (n_mod) */
} fl_series;

/* Fills s from t.  A column the spec names and t lacks is an error whose
 * text (err, errlen) names the column. */
int fl_series_from_table(fl_series *s, const fl_model_spec *spec, const fl_table *t,
                         char *err, size_t errlen);
void fl_series_free(fl_series *s);
/* Marks in unused (t->cols) the columns of t that no channel of spec reads
 * (fl_series_from_table ignores them) and returns their number, or a
 * negative error. */
int fl_series_unused(const fl_model_spec *spec, const fl_table *t, unsigned char *unused);
/* The table column name of channel c of modality i, sub-sample k. */
int fl_model_column_name(const fl_model_spec *spec, int i, int c, int k, char *buf,
                         size_t len);

/* Copies the raw window that ends before base tick `end` (ticks end - window
 * .. end - 1) into raw[i] (C_i, T_i) for every modality. */
int fl_series_window(const fl_series *s, const fl_model_spec *spec, int end,
                     float *const *raw);

/* Standardises one modality's raw window (C_i, T_i) into slot b of the
 * context's input with the model's mean and std, clamped to +-clamp
 * standard deviations; a missing value becomes 0 (the mean) there and 0 in
 * the mask fl_ctx_mask(c, i) (B, C_i, T_i), 1 elsewhere. */
int fl_model_normalise(const fl_model *m, fl_ctx *c, int b, int modality,
                       const float *raw, float clamp);
float *fl_ctx_mask(fl_ctx *c, int modality);
/* (B, C_i, T_i) scratch the detector keeps its corrected estimate in. */
float *fl_ctx_estimate(fl_ctx *c, int modality);
/* (B, C_i, 2): the trend (a, b) removed from a drifting modality's window,
 * standardised units (0 for the others); the corrected estimate adds it back. */
float *fl_ctx_level(fl_ctx *c, int modality);

/* Copies parameters (not gradients) between two models of the same spec. */
int fl_model_copy_params(fl_model *dst, const fl_model *src);
/* A model's parameters as one block, for swapping and saving. */
float *fl_model_param_block(fl_model *m);

#endif
