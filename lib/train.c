/* faultline train: see include/faultline/train.h for the contracts. */
#include "faultline/train.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "faultline/error.h"

void fl_train_defaults(fl_train_config *c) {
  memset(c, 0, sizeof *c);
  c->seed = 1;
  c->batch = 64;
  c->stride = 1;
  c->val_fraction = 0.2f;
  c->clamp = 10.0f;
  c->patience = 5;
  c->epochs1 = 40;
  c->lr1 = 2e-3f;
  c->epochs2 = 30;
  c->lr2 = 1e-3f;
  c->lr_dec2 = 1e-4f;
  c->p_clean = 0.25f;
  c->tau = 0.2f;
  c->w_contrast = 0.5f;
  for (int k = 0; k < FL_MOD_COUNT; k++) c->clip[k] = 1.0f;
  fl_fault_defaults(c->faults);
  c->ntypes = 0;
  for (int t = 1; t < FL_FAULT_COUNT; t++) c->types[c->ntypes++] = (fl_fault_type)t;
}

static double fl__now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int fl_train_windows(const fl_series *s, const fl_model_spec *spec,
                     const fl_train_config *cfg, int *ends, int *ntrain) {
  int n = 0, stride = cfg->stride > 0 ? cfg->stride : 1;
  for (int e = spec->window; e <= s->rows; e += stride) ends[n++] = e;
  /* The held-out windows are the last ones: on a drifting plant, the future
   * is what a model must generalise to, and a random split would leak. */
  int nval = (int)floorf(n * cfg->val_fraction + 0.5f);
  if (n >= 2 && nval < 1 && cfg->val_fraction > 0.0f) nval = 1;
  if (nval >= n) nval = n - 1;
  *ntrain = n - nval;
  return n;
}

int fl_train_normalise(fl_model *m, const fl_series *s, int ns, const fl_train_config *cfg) {
  const fl_model_spec *spec = fl_model_spec_of(m);
  float *mean = fl_model_mean(m), *std = fl_model_std(m);
  int off = 0;
  for (int i = 0; i < spec->n_mod; i++) {
    int r = spec->mod[i].rate;
    for (int c = 0; c < spec->mod[i].channels; c++, off++) {
      double sum = 0, sq = 0, n = 0;
      for (int k = 0; k < ns; k++) {
        int *ends = malloc(sizeof(int) * (s[k].rows + 1)), ntr = 0;
        if (!ends) return FL_ENOMEM;
        int nw = s[k].rows >= spec->window ? fl_train_windows(&s[k], spec, cfg, ends, &ntr) : 0;
        /* Statistics over the rows the training windows cover. */
        int last = nw > 0 ? ends[ntr - 1] : s[k].rows;
        free(ends);
        const float *x = s[k].x[i] + (size_t)c * s[k].rows * r;
        for (size_t t = 0; t < (size_t)last * r; t++)
          if (!isnan(x[t])) {
            sum += x[t];
            sq += (double)x[t] * x[t];
            n++;
          }
      }
      if (n < 2) return FL_EINVAL;
      double mu = sum / n, var = sq / n - mu * mu;
      double sd = var > 0 ? sqrt(var) : 0.0;
      /* A channel that barely moves in training still needs a finite scale;
       * a floor relative to its level keeps a small change from reading as
       * thousands of standard deviations. */
      double floor_sd = 1e-3 * (fabs(mu) + 1.0);
      mean[off] = (float)mu;
      std[off] = (float)(sd > floor_sd ? sd : floor_sd);
    }
  }
  return 0;
}

/* A window reference: recording k, end tick e. */
typedef struct {
  int k, e;
} fl__win;

typedef struct {
  fl_model *m;
  fl_ctx *ctx;
  const fl_series *s;
  const fl_train_config *cfg;
  fl__win *train, *val;
  int ntrain, nval;
  int n_mod;
  float **raw;    /* (M) one window (C, T) */
  float **target; /* (M) (B, C, T) clean standardised windows */
  float **tmask;  /* (M) (B, C, T) their masks */
  float **sd;     /* (M) (C) raw std per channel; the four share raw's allocation */
  int *label;                       /* (B) 0 clean, -1 faulted */
  float *snapshot;                  /* best parameters */
  fl_rng rng;
} fl__trainer;

static void fl__trainer_free(fl__trainer *t) {
  for (int i = 0; t->raw && i < t->n_mod; i++) {
    free(t->raw[i]);
    free(t->target[i]);
    free(t->tmask[i]);
    free(t->sd[i]);
  }
  free(t->raw);
  free(t->train);
  free(t->val);
  free(t->label);
  free(t->snapshot);
  fl_ctx_free(t->ctx);
}

static int fl__trainer_init(fl__trainer *t, fl_model *m, const fl_series *s, int ns,
                            const fl_train_config *cfg, uint64_t salt) {
  memset(t, 0, sizeof *t);
  const fl_model_spec *spec = fl_model_spec_of(m);
  if (ns <= 0 || cfg->batch <= 0) return FL_EINVAL;
  t->m = m;
  t->s = s;
  t->cfg = cfg;
  fl_rng_seed(&t->rng, cfg->seed * 1000003ULL + salt);
  int total = 0;
  for (int k = 0; k < ns; k++) total += s[k].rows + 1;
  t->train = malloc(sizeof(fl__win) * total);
  t->val = malloc(sizeof(fl__win) * total);
  int *ends = malloc(sizeof(int) * total);
  int err = FL_ENOMEM;
  if (!t->train || !t->val || !ends) goto fail;
  for (int k = 0; k < ns; k++) {
    if (s[k].rows < spec->window) continue;
    int ntr, nw = fl_train_windows(&s[k], spec, cfg, ends, &ntr);
    for (int j = 0; j < nw; j++) {
      fl__win w = {k, ends[j]};
      if (j < ntr) t->train[t->ntrain++] = w;
      else t->val[t->nval++] = w;
    }
  }
  free(ends);
  ends = NULL;
  err = FL_EINVAL;
  if (t->ntrain == 0) goto fail; /* every recording is shorter than a window */
  err = FL_ENOMEM;
  if (fl_ctx_create(&t->ctx, m, cfg->batch)) goto fail;
  if (!(t->raw = calloc(4 * (size_t)spec->n_mod, sizeof *t->raw))) goto fail;
  t->n_mod = spec->n_mod;
  t->target = t->raw + spec->n_mod;
  t->tmask = t->target + spec->n_mod;
  t->sd = t->tmask + spec->n_mod;
  size_t B = cfg->batch;
  const float *std = fl_model_std(m);
  int off = 0;
  for (int i = 0; i < spec->n_mod; i++) {
    size_t n = (size_t)spec->mod[i].channels * spec->window * spec->mod[i].rate;
    if (!(t->raw[i] = malloc(sizeof(float) * n))) goto fail;
    if (!(t->target[i] = malloc(sizeof(float) * n * B))) goto fail;
    if (!(t->tmask[i] = malloc(sizeof(float) * n * B))) goto fail;
    if (!(t->sd[i] = malloc(sizeof(float) * spec->mod[i].channels))) goto fail;
    for (int c = 0; c < spec->mod[i].channels; c++) t->sd[i][c] = std[off++];
  }
  if (!(t->label = malloc(sizeof(int) * B))) goto fail;
  if (!(t->snapshot = malloc(sizeof(float) * fl_model_param_count(m)))) goto fail;
  return 0;
fail:
  free(ends);
  fl__trainer_free(t);
  return err;
}

/* Loads windows w[0..B) into the context.  With faults, each window is
 * corrupted (with probability 1 - p_clean) in one random modality before it
 * is standardised; the clean standardised window is kept as the target. */
static int fl__load(fl__trainer *t, const fl__win *w, int B, int faults, fl_rng *rng) {
  const fl_model_spec *spec = fl_model_spec_of(t->m);
  int err;
  for (int b = 0; b < B; b++) {
    if ((err = fl_series_window(&t->s[w[b].k], spec, w[b].e, t->raw))) return err;
    int victim = -1;
    if (faults && fl_rng_uniform(rng) >= t->cfg->p_clean)
      victim = (int)fl_rng_below(rng, (uint32_t)spec->n_mod);
    t->label[b] = 0;
    for (int i = 0; i < spec->n_mod; i++) {
      size_t n = (size_t)spec->mod[i].channels * spec->window * spec->mod[i].rate;
      if ((err = fl_model_normalise(t->m, t->ctx, b, i, t->raw[i], t->cfg->clamp)))
        return err;
      memcpy(t->target[i] + b * n, fl_ctx_input(t->ctx, i) + b * n, sizeof(float) * n);
      memcpy(t->tmask[i] + b * n, fl_ctx_mask(t->ctx, i) + b * n, sizeof(float) * n);
      if (i != victim) continue;
      fl_fault_type chosen = FL_FAULT_NONE;
      err = fl_fault_random(t->cfg->faults, t->cfg->types, t->cfg->ntypes, t->raw[i], NULL,
                            spec->mod[i].channels, spec->window * spec->mod[i].rate,
                            t->sd[i], rng, &chosen);
      if (err) return err;
      if (chosen == FL_FAULT_NONE) continue;
      t->label[b] = -1;
      if ((err = fl_model_normalise(t->m, t->ctx, b, i, t->raw[i], t->cfg->clamp)))
        return err;
    }
  }
  return 0;
}

int fl_train_recon_loss(const fl_model *m, fl_ctx *ctx, int B, float *const target[],
                        float *const tmask[], float *loss, int grad) {
  const fl_model_spec *spec = fl_model_spec_of(m);
  double total = 0.0;
  for (int i = 0; i < spec->n_mod; i++) {
    size_t n = (size_t)B * spec->mod[i].channels * spec->window * spec->mod[i].rate;
    float l, *d = grad ? fl_ctx_doutput(ctx, i) : NULL;
    int err = fl_mse_loss(&l, d, fl_ctx_output(ctx, i), target[i], tmask[i], n);
    if (err) return err;
    total += l;
    if (d)
      for (size_t k = 0; k < n; k++) d[k] /= spec->n_mod;
  }
  *loss = (float)(total / spec->n_mod);
  return 0;
}

static int fl__recon_loss(fl__trainer *t, int B, float *loss, int grad) {
  return fl_train_recon_loss(t->m, t->ctx, B, t->target, t->tmask, loss, grad);
}

static void fl__shuffle(fl__win *w, int n, fl_rng *r) {
  for (int i = n - 1; i > 0; i--) {
    int j = (int)fl_rng_below(r, (uint32_t)(i + 1));
    fl__win tmp = w[i];
    w[i] = w[j];
    w[j] = tmp;
  }
}

/* One optimiser step for module mod: clip, Adam, project. */
static int fl__step(fl_model *m, fl_adam *opt, fl_module mod, float clip) {
  fl_param *ps;
  int n, err;
  fl_model_params(m, mod, &ps, &n);
  if ((err = fl_clip_grad_norm(ps, n, clip, NULL))) return err;
  fl_adam_tick(opt);
  for (int k = 0; k < n; k++)
    if ((err = fl_adam_update(opt, &ps[k]))) return err;
  return fl_model_project(m, mod, NULL);
}

int fl_train_step(fl_model *m, fl_ctx *ctx, int stage, int B, float *const target[],
                  float *const tmask[], const int *label, fl_adam opt[FL_MOD_COUNT],
                  const fl_train_config *cfg, float *work, float *loss_out, float *closs_out) {
  int err;
  fl_model_zero_grad(m);
  if ((err = fl_model_forward(m, ctx, B, stage == 2, stage == 2))) return err;
  float loss, closs = 0.0f;
  if ((err = fl_train_recon_loss(m, ctx, B, target, tmask, &loss, 1))) return err;
  if ((err = fl_model_backward_recon(m, ctx, B, stage == 1))) return err;
  if (stage == 2 && cfg->w_contrast > 0.0f) {
    const fl_model_spec *spec = fl_model_spec_of(m);
    float *de = fl_ctx_dembedding(ctx);
    err = fl_ntxent_loss(&closs, de, fl_ctx_embedding(ctx), label, B, spec->emb, cfg->tau,
                         work);
    if (err) return err;
    for (int k = 0; k < B * spec->emb; k++) de[k] *= cfg->w_contrast;
    if ((err = fl_model_backward_head(m, ctx, B, 0))) return err;
  }
  if (!isfinite(loss) || !isfinite(closs)) return FL_EDIVERGED;
  if (stage == 1) {
    if ((err = fl__step(m, &opt[FL_MOD_ENC], FL_MOD_ENC, cfg->clip[FL_MOD_ENC]))) return err;
    if ((err = fl__step(m, &opt[FL_MOD_DEC], FL_MOD_DEC, cfg->clip[FL_MOD_DEC]))) return err;
  } else {
    if ((err = fl__step(m, &opt[FL_MOD_BLOCK], FL_MOD_BLOCK, cfg->clip[FL_MOD_BLOCK])))
      return err;
    if ((err = fl__step(m, &opt[FL_MOD_HEAD], FL_MOD_HEAD, cfg->clip[FL_MOD_HEAD]))) return err;
    if (cfg->lr_dec2 > 0.0f &&
        (err = fl__step(m, &opt[FL_MOD_DEC], FL_MOD_DEC, cfg->clip[FL_MOD_DEC])))
      return err;
  }
  *loss_out = loss;
  *closs_out = closs;
  return 0;
}

/* The loss of the held-out windows, with faults drawn from a fixed seed so
 * that epochs compare like with like. */
static int fl__validate(fl__trainer *t, int stage, float *out) {
  if (t->nval == 0) {
    *out = NAN;
    return 0;
  }
  fl_rng vr;
  fl_rng_seed(&vr, t->cfg->seed ^ 0x7a11da7eULL);
  double total = 0.0;
  int count = 0, err;
  for (int i = 0; i < t->nval; i += t->cfg->batch) {
    int B = t->nval - i < t->cfg->batch ? t->nval - i : t->cfg->batch;
    if ((err = fl__load(t, t->val + i, B, stage == 2, &vr))) return err;
    if ((err = fl_model_forward(t->m, t->ctx, B, stage == 2, 0))) return err;
    float l;
    if ((err = fl__recon_loss(t, B, &l, 0))) return err;
    total += (double)l * B;
    count += B;
  }
  *out = (float)(total / count);
  return 0;
}

/* Each stage's optimisers start afresh: the moments live in the model's
 * parameter blocks, and stage 1's, read by a new optimiser at t = 1 through
 * its bias correction (x10 for the first moment, x1000 for the second),
 * gave the decoder's first stage-2 steps stage 1's direction and a size
 * unrelated to stage 2's gradients. */
static void fl__adam_reset(fl_model *m) {
  for (int mod = 0; mod < FL_MOD_COUNT; mod++) {
    fl_param *ps;
    int n;
    if (fl_model_params(m, (fl_module)mod, &ps, &n)) continue;
    for (int k = 0; k < n; k++) {
      memset(ps[k].m, 0, sizeof(float) * ps[k].n);
      memset(ps[k].v, 0, sizeof(float) * ps[k].n);
    }
  }
}

static int fl__run_stage(fl_model *m, const fl_series *s, int ns, const fl_train_config *cfg,
                         int stage, fl_train_cb cb, void *user) {
  fl__trainer t;
  int err = fl__trainer_init(&t, m, s, ns, cfg, (uint64_t)stage);
  if (err) return err;
  fl__adam_reset(m);
  fl_adam opt[FL_MOD_COUNT];
  fl_adam_init(&opt[FL_MOD_ENC], cfg->lr1);
  fl_adam_init(&opt[FL_MOD_DEC], stage == 1 ? cfg->lr1 : cfg->lr_dec2);
  fl_adam_init(&opt[FL_MOD_BLOCK], cfg->lr2);
  fl_adam_init(&opt[FL_MOD_HEAD], cfg->lr2);
  int epochs = stage == 1 ? cfg->epochs1 : cfg->epochs2, since_best = 0;
  float best = INFINITY;
  size_t np = fl_model_param_count(m);
  memcpy(t.snapshot, fl_model_param_block(m), sizeof(float) * np);
  float *work = malloc(sizeof(float) * (size_t)cfg->batch * cfg->batch);
  if (!work) {
    fl__trainer_free(&t);
    return FL_ENOMEM;
  }
  double t0 = fl__now();
  fl_train_progress p = {.stage = stage, .epochs = epochs};
  for (int ep = 1; ep <= epochs; ep++) {
    fl__shuffle(t.train, t.ntrain, &t.rng);
    double sum = 0.0;
    int seen = 0;
    for (int i = 0; i < t.ntrain; i += cfg->batch) {
      int B = t.ntrain - i < cfg->batch ? t.ntrain - i : cfg->batch;
      if (B < 2 && i > 0) break; /* a lone window makes a noisy step */
      if ((err = fl__load(&t, t.train + i, B, stage == 2, &t.rng))) goto done;
      float loss, closs = 0.0f;
      err = fl_train_step(m, t.ctx, stage, B, t.target, t.tmask, t.label, opt, cfg, work, &loss,
                          &closs);
      if (err) goto done;
      sum += (double)(loss + cfg->w_contrast * closs) * B;
      seen += B;
    }
    float val;
    if ((err = fl__validate(&t, stage, &val))) goto done;
    /* Without held-out windows the training loss decides. */
    float crit = isnan(val) ? (float)(sum / (seen ? seen : 1)) : val;
    if (crit < best) {
      best = crit;
      since_best = 0;
      memcpy(t.snapshot, fl_model_param_block(m), sizeof(float) * np);
    } else {
      since_best++;
    }
    double el = fl__now() - t0;
    p.epoch = ep;
    p.train_loss = (float)(sum / (seen ? seen : 1));
    p.val_loss = val;
    p.best_val = best;
    p.elapsed = el;
    p.eta = el / ep * (epochs - ep);
    p.done = ep == epochs || (cfg->patience > 0 && since_best >= cfg->patience);
    if (cb) cb(&p, user);
    if (p.done) break;
  }
  memcpy(fl_model_param_block(m), t.snapshot, sizeof(float) * np);
done:
  free(work);
  fl__trainer_free(&t);
  return err;
}

int fl_train_stage1(fl_model *m, const fl_series *s, int ns, const fl_train_config *cfg,
                    fl_train_cb cb, void *user) {
  if (!m || !s || !cfg) return FL_EINVAL;
  return fl__run_stage(m, s, ns, cfg, 1, cb, user);
}

int fl_train_stage2(fl_model *m, const fl_series *s, int ns, const fl_train_config *cfg,
                    fl_train_cb cb, void *user) {
  if (!m || !s || !cfg) return FL_EINVAL;
  return fl__run_stage(m, s, ns, cfg, 2, cb, user);
}
