/* faultline lipschitz: per-layer bounds and the measured amplification of
 * localised faults along the model's two paths.
 *
 *   detection path   x_m -> E_m -> z -> P (before L2 normalisation)
 *   correction path  x_m -> E_m -> z -> z' = z + B(z) -> D_1..D_M
 *
 * Bounds are products of the layers' spectral norms (fl_model_layer_norm) and
 * the activations' Lipschitz constants (fl_act_lipschitz).  The block is a
 * residual, so its bound is 1 + prod(block norms).  The decoders act on the
 * slices of z' side by side (a block-diagonal map), so their joint bound is
 * the largest single decoder's.  The embedding's L2 normalisation is not
 * globally Lipschitz (its Jacobian at p has norm 1 / ||p||, unbounded as
 * p -> 0), so the detection path is bounded and measured at the head's
 * output before normalisation.
 *
 * Measurements are Jacobian-vector products in forward mode through the same
 * layers as fl_model_forward: a linear layer's JVP is the layer without its
 * bias applied to the tangent, an activation's is the tangent times the
 * activation's slope at the pre-activation the forward pass stored
 * (fl_ctx_preact).  Faults are unit perturbations of the standardised model
 * input (after a drifting modality's detrending), so gains are in standard
 * deviations out per standard deviation in. */
#ifndef FAULTLINE_LIPSCHITZ_H
#define FAULTLINE_LIPSCHITZ_H

#include "faultline/model.h"

/* Where a tangent is measured. */
typedef enum {
  FL_PATH_LATENT = 0, /* the fused latent z (encoders only; shared by both paths) */
  FL_PATH_HEAD,       /* the head's output before L2 normalisation (detection) */
  FL_PATH_CORRECTED,  /* the decoders' estimate D(z'), all modalities (correction) */
  FL_PATH_COUNT
} fl_path;

/* Unit localised faults. */
typedef enum {
  FL_PROBE_IMPULSE = 0, /* one sample of one channel */
  FL_PROBE_STEP,        /* one channel from a position to the window's end */
  FL_PROBE_COUNT
} fl_probe;

const char *fl_path_name(fl_path p);
const char *fl_probe_name(fl_probe k);

/* The arrays are views into one block fl_lipschitz_bounds allocates;
 * fl_lipschitz_bound_free releases it. */
typedef struct {
  int nlayers, n_mod;
  float *sigma;                /* (nlayers) spectral norm of each layer of the table */
  float *enc;                  /* (M) x_m -> z_m: both encoder layers, activations */
  float *dec;                  /* (M) z'_m -> out_m */
  float dec_max;               /* the decoders side by side: max of dec[] */
  float block;                 /* z -> z': 1 + prod of the block's bounds */
  float head;                  /* z -> head output before normalisation */
  float *path[FL_PATH_COUNT];  /* (M) each: per path, from modality m's input */
  float *block_;               /* the storage */
} fl_lipschitz_bound;

void fl_lipschitz_bound_free(fl_lipschitz_bound *b);

/* Which paths a layer lies on: bit (1 << 0) detection, bit (1 << 1) correction. */
#define FL_ON_DETECTION 1
#define FL_ON_CORRECTION 2
int fl_lipschitz_layer_paths(const fl_layer *l);

/* Spectral norms of every layer and the path bounds built from them; out
 * need not be initialised and is to be released with fl_lipschitz_bound_free. */
int fl_lipschitz_bounds(fl_model *m, fl_lipschitz_bound *out);

/* Tangents of one JVP batch; tangent b is taken at the primal of slot b of
 * the context's last forward pass. */
/* The caller owns dx and dout, (M) pointers each. */
typedef struct {
  const float **dx; /* in: (M) each (B, C_m, T_m); NULL = zero */
  float *dz;        /* out: (B, |z|) at z; may be NULL */
  float *dhead;     /* out: (B, emb) before normalisation; NULL skips the head */
  float **dout;     /* out: (M) each (B, C_m, T_m) at D(z'); NULL or all NULL
                       skips the decoders */
} fl_jvp;

/* Forward-mode JVP through the layers the last fl_model_forward(m, c, B, ...)
 * ran: the block only if that pass used it, the head only if it ran it
 * (FL_EINVAL when dhead is asked for without).  Allocates its scratch. */
int fl_lipschitz_jvp(fl_model *m, fl_ctx *c, int B, fl_jvp *j);

/* npos positions spread evenly over 0 .. T - 1, both ends included
 * (npos >= T gives every position). Returns the count written. */
int fl_lipschitz_positions(int T, int npos, int *pos);

/* Gains ||J d|| / ||d|| of the unit faults d of one modality at one operating
 * point x0[i] (C_i, T_i) per modality (M pointers), standardised (the model's input).
 * gain is (C_mod, npos, FL_PROBE_COUNT, FL_PATH_COUNT), row-major.  The
 * context (created with max_batch >= batch; a larger batch is faster) runs
 * the forward pass on batch copies of x0, with the block and the head; its
 * inputs are overwritten. */
int fl_lipschitz_probe(fl_model *m, fl_ctx *c, int batch,
                       const float *const *x0, int modality,
                       const int *pos, int npos, float *gain);

#endif
