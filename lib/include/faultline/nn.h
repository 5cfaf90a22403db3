/* faultline nn: the numeric core.
 *
 * Plain functions over float32 arrays in the manner of llm.c: each layer is a
 * forward/backward pair, shapes are given in the comments, and the caller owns
 * every buffer.  Layouts are batch-major and match PyTorch:
 *
 *   dense            x (B, nin)      W (nout, nin)      b (nout)  y (B, nout)
 *   conv1d           x (B, Cin, T)   W (Cout, Cin, K)   b (Cout)  y (B, Cout, T')
 *   conv-transpose1d x (B, Cin, T)   W (Cin, Cout, K)   b (Cout)  y (B, Cout, T')
 *
 * Backward functions ACCUMULATE into weight and bias gradients (dW += ...,
 * db += ...), so a caller zeroes them once per step, and OVERWRITE the input
 * gradient dx.  Any gradient pointer may be NULL to skip that gradient.
 *
 * Forward functions check their input for NaN and Inf and return
 * FL_ENONFINITE rather than propagate them: missing values are the model's
 * business (it masks and fills them) and never reach a layer.
 *
 * Threading: the heavy loops call cblas_sgemm; how many threads OpenBLAS uses
 * is the caller's choice (openblas_set_num_threads).  Results are deterministic
 * for a given seed and thread count. */
#ifndef FAULTLINE_NN_H
#define FAULTLINE_NN_H

#include <stddef.h>
#include <stdint.h>

/* ---- random numbers ---------------------------------------------------- */

/* xoshiro256** seeded through splitmix64: small, fast, reproducible. */
typedef struct {
  uint64_t s[4];
} fl_rng;

void fl_rng_seed(fl_rng *r, uint64_t seed);
uint64_t fl_rng_u64(fl_rng *r);
/* Uniform in [0, 1). */
float fl_rng_uniform(fl_rng *r);
/* Standard normal (Box-Muller). */
float fl_rng_normal(fl_rng *r);
/* Uniform integer in [0, n). */
uint32_t fl_rng_below(fl_rng *r, uint32_t n);

/* ---- utilities --------------------------------------------------------- */

/* Returns FL_ENONFINITE if any of the n values is NaN or Inf, else 0. */
int fl_check_finite(const float *x, size_t n);

/* Kaiming-uniform initialisation as PyTorch's default for Linear and Conv:
 * w ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (a = sqrt(5)), same bound for b. */
void fl_init_uniform(float *w, size_t n, int fan_in, fl_rng *r);

/* ---- dense ------------------------------------------------------------- */

/* y (B, nout) = x (B, nin) W^T + b.  b may be NULL. */
int fl_dense_forward(float *y, const float *x, const float *w, const float *b,
                     int B, int nin, int nout);

/* dx (B, nin) = dy W;  dW (nout, nin) += dy^T x;  db (nout) += sum over B of dy. */
int fl_dense_backward(float *dx, float *dw, float *db, const float *dy,
                      const float *x, const float *w, int B, int nin, int nout);

/* y (B, nout) = x (B, nin) W^T + b for forward-only passes (the inference
 * context).  Same contract as fl_dense_forward, but W is read in place
 * instead of being packed by sgemm on every call, and each output is summed
 * in one fixed order that does not depend on B or on the row's place in
 * the batch.  Against fl_dense_forward the outputs differ by rounding only
 * (each within (nin / 16 + 6) 2^-24 of the sum of |b| and the terms' |x w|
 * of the exact value with AVX-512, nin / 8 with AVX2: test_nn's bound);
 * training stays on fl_dense_forward, whose order the PyTorch parity checks
 * follow. */
int fl_dense_infer(float *y, const float *x, const float *w, const float *b,
                   int B, int nin, int nout);

/* The kernels fl_dense_infer chooses from: AUTO picks the widest the CPU
 * runs (AVX-512, else AVX2 with FMA, else BLAS, which is fl_dense_forward).
 * fl_dense_infer_with forces one, for tests and benchmarks, and returns
 * FL_EINVAL when the CPU lacks it. */
typedef enum {
  FL_DENSE_AUTO,
  FL_DENSE_BLAS,
  FL_DENSE_AVX2,
  FL_DENSE_AVX512
} fl_dense_kernel;

int fl_dense_infer_with(fl_dense_kernel k, float *y, const float *x, const float *w,
                        const float *b, int B, int nin, int nout);

/* 1 if this CPU runs kernel k (BLAS and AUTO: always), else 0. */
int fl_dense_kernel_available(fl_dense_kernel k);

/* ---- 1-D convolutions -------------------------------------------------- */

typedef struct {
  int cin, cout;  /* channels in and out */
  int k;          /* kernel size */
  int stride;     /* >= 1 */
  int pad;        /* zero padding on both ends, >= 0 */
  int dil;        /* dilation, >= 1 */
  int out_pad;    /* conv-transpose only: extra length at the end, < stride or < dil */
} fl_conv;

/* Output length, or a negative error code if the shape is impossible.
 *   conv1d:  (T + 2 pad - dil (k - 1) - 1) / stride + 1
 *   convt1d: (T - 1) stride - 2 pad + dil (k - 1) + out_pad + 1 */
int fl_conv1d_len(const fl_conv *c, int tin);
int fl_convt1d_len(const fl_conv *c, int tin);

/* Floats of scratch memory one call needs for a batch of B inputs of length
 * tin.  Passing work == NULL makes the call allocate (and free) it itself. */
size_t fl_conv1d_workspace(const fl_conv *c, int B, int tin);
size_t fl_convt1d_workspace(const fl_conv *c, int B, int tin);

/* y (B, cout, tout) = conv1d(x (B, cin, tin), W (cout, cin, k)) + b. */
int fl_conv1d_forward(float *y, const float *x, const float *w, const float *b,
                      const fl_conv *c, int B, int tin, float *work);
/* dx (B, cin, tin);  dW (cout, cin, k) +=;  db (cout) +=.  dy (B, cout, tout). */
int fl_conv1d_backward(float *dx, float *dw, float *db, const float *dy,
                       const float *x, const float *w, const fl_conv *c, int B,
                       int tin, float *work);

/* y (B, cout, tout) = conv_transpose1d(x (B, cin, tin), W (cin, cout, k)) + b. */
int fl_convt1d_forward(float *y, const float *x, const float *w, const float *b,
                       const fl_conv *c, int B, int tin, float *work);
/* dx (B, cin, tin);  dW (cin, cout, k) +=;  db (cout) +=.  dy (B, cout, tout). */
int fl_convt1d_backward(float *dx, float *dw, float *db, const float *dy,
                        const float *x, const float *w, const fl_conv *c, int B,
                        int tin, float *work);

/* ---- activations ------------------------------------------------------- */

typedef enum {
  FL_ACT_IDENTITY = 0,
  FL_ACT_RELU,
  FL_ACT_LEAKY_RELU, /* slope alpha below zero */
  FL_ACT_TANH,
} fl_act;

/* y = act(x) elementwise over n values; y == x (in place) is allowed. */
int fl_act_forward(fl_act a, float alpha, float *y, const float *x, size_t n);
/* dx = dy * act'(x).  x is the forward input, y its output; tanh reads y,
 * the others read x.  dx == dy (in place) is allowed. */
int fl_act_backward(fl_act a, float alpha, float *dx, const float *dy,
                    const float *x, const float *y, size_t n);
/* The activation's Lipschitz constant (1 for all of these when alpha <= 1). */
float fl_act_lipschitz(fl_act a, float alpha);

/* ---- losses ------------------------------------------------------------ */

/* Mean squared error over the elements whose mask is non-zero (mask NULL:
 * all).  loss = sum m (p - t)^2 / sum m;  dpred = 2 m (p - t) / sum m
 * (dpred may be NULL).  With no element counted, loss and gradient are 0.
 * Masked-out elements of pred and target are never read as numbers, so they
 * may hold NaN. */
int fl_mse_loss(float *loss, float *dpred, const float *pred,
                const float *target, const float *mask, size_t n);

/* Row-wise L2 normalisation: y (B, D) = x / max(||x||, 1e-12).
 * norms (B) receives the norms for the backward pass. */
int fl_l2norm_forward(float *y, float *norms, const float *x, int B, int D);
int fl_l2norm_backward(float *dx, const float *dy, const float *y,
                       const float *norms, int B, int D);

/* NT-Xent in its supervised form over L2-normalised embeddings z (B, D):
 *
 *   loss = mean over anchors i of
 *          -1/|P(i)| sum_{p in P(i)} log( exp(s_ip/tau) / sum_{a != i} exp(s_ia/tau) )
 *
 * with s the cosine similarity (dot product of unit rows).  P(i) holds the
 * samples j != i with label[j] == label[i].  A sample with a negative label
 * is never an anchor and never a positive, only a negative: the design's
 * clean-anchored form gives clean windows label 0 and faulted ones -1, so
 * clean windows attract each other and faulted ones are only pushed away.
 * Anchors without positives are skipped; with no anchor, loss and dz are 0.
 * dz (B, D) may be NULL.  work needs B * B floats (NULL: allocated). */
int fl_ntxent_loss(float *loss, float *dz, const float *z, const int *label,
                   int B, int D, float tau, float *work);

/* ---- optimiser --------------------------------------------------------- */

/* A named block of parameters and their gradients, n floats each, with the
 * optimiser state m and v (n floats each, zeroed by the owner). */
typedef struct {
  const char *name;
  float *w, *g, *m, *v;
  size_t n;
} fl_param;

/* Adam with bias correction; weight_decay > 0 makes it AdamW (decoupled). */
typedef struct {
  float lr, beta1, beta2, eps, weight_decay;
  long t; /* steps taken */
} fl_adam;

/* lr as given, beta (0.9, 0.999), eps 1e-8, no weight decay, t = 0. */
void fl_adam_init(fl_adam *opt, float lr);
/* Advances the step count; call once per optimiser step, before the updates. */
void fl_adam_tick(fl_adam *opt);
/* Updates one parameter block with its gradient. */
int fl_adam_update(const fl_adam *opt, fl_param *p);

/* Clips a group of parameter blocks by their global gradient norm: if
 * ||g|| > max_norm > 0, every gradient is scaled by max_norm / ||g||.
 * norm_out (may be NULL) receives the norm before clipping. */
int fl_clip_grad_norm(fl_param *ps, int count, float max_norm, float *norm_out);

/* ---- spectral norms and Lipschitz projection --------------------------- */

/* Largest singular value of a layer's linear operator A by Lanczos on
 * A^T A (restarted every 24 steps), run until the top Ritz value theta has a
 * residual r <= tol * theta (tol floored at 1e-6) or iters products with A
 * and A^T pass.  sigma is sqrt(theta + max(r, tol theta)): an upper-side
 * figure, at most a relative tol / 2 above the true norm when converged and
 * not below it
 * (unless the start vector is orthogonal to the top singular vector), also
 * on flat top spectra where a rule on the change of the estimate stops
 * early below it.
 * v holds the right singular vector estimate between calls (a warm start
 * makes repeated calls during training cheap: one product when it is still
 * converged); v == NULL starts from a fixed seeded vector.  Its length is
 * the operator's input size:
 *   dense:   nin                  (operator W, (nout, nin))
 *   conv1d:  cin * tin          (the convolution on inputs of length tin)
 *   convt1d: cin * tin
 * For convolutions this is the norm of the convolution operator itself, with
 * its padding and stride, not of the reshaped kernel. */
int fl_spectral_dense(float *sigma, const float *w, int nout, int nin, int iters,
                      float tol, float *v);
int fl_spectral_conv1d(float *sigma, const float *w, const fl_conv *c, int tin,
                       int iters, float tol, float *v);
int fl_spectral_convt1d(float *sigma, const float *w, const fl_conv *c, int tin,
                        int iters, float tol, float *v);

/* W <- W * min(1, target / sigma).  Returns the scale applied (1 when the
 * layer is already within its target, or when target <= 0: no constraint). */
float fl_lipschitz_project(float *w, size_t n, float sigma, float target);

#endif
