/* The C side of tests/bench/bench_torch.py: the whole model, loaded from its
 * safetensors file, on windows the script wrote.  One process per mode, so
 * that its peak resident memory is the mode's own.
 *
 *   bench_model parity MODEL RAW OUT          outputs for the parity check
 *   bench_model time MODEL RAW THREADS REPS   inference, floor and bound
 *   bench_model train MODEL RAW RAW2 LABELS THREADS STEPS
 *                                             one epoch of stage 1 and 2
 *   bench_model rss MODEL RAW                 peak memory of inference alone
 *   bench_model loop MODEL RAW B N [score]    N forward (or detector) passes
 *                                             at batch B, for perf/callgrind
 *
 * RAW (and RAW2, the same windows with faults) hold n raw windows, each
 * modality's (C, T) after the other's, float32; LABELS n int32 (0 clean,
 * -1 faulted).  Every mode prints "key value" lines on stdout, ending with
 * "maxrss_kb" (VmHWM), for the script to parse.  Times are medians of
 * REPS repetitions of CLOCK_MONOTONIC, each at least ~20 ms long. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cblas.h>

#include "faultline/bundle.h"
#include "faultline/detect.h"
#include "faultline/nn.h"
#include "faultline/train.h"

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static void die(const char *what) {
  fprintf(stderr, "bench_model: %s\n", what);
  exit(1);
}

static void *xmalloc(size_t n) {
  void *p = malloc(n ? n : 1);
  if (!p) die("out of memory");
  return p;
}

static float *read_all(const char *path, size_t *nfloats) {
  FILE *f = fopen(path, "rb");
  if (!f) die(path);
  fseek(f, 0, SEEK_END);
  long len = ftell(f);
  fseek(f, 0, SEEK_SET);
  float *p = xmalloc((size_t)len);
  if (fread(p, 1, (size_t)len, f) != (size_t)len) die(path);
  fclose(f);
  *nfloats = (size_t)len / sizeof(float);
  return p;
}

/* Prints the peak resident memory so far: VmHWM, the high-water mark of
 * this program's own address space.  getrusage's ru_maxrss would not do: on
 * Linux it survives exec, so a child of the (PyTorch-laden) script would
 * report the script's peak. */
static void print_rss(void) {
  FILE *f = fopen("/proc/self/status", "r");
  char line[256];
  long kb = -1;
  while (f && fgets(line, sizeof line, f))
    if (!strncmp(line, "VmHWM:", 6)) kb = atol(line + 6);
  if (f) fclose(f);
  printf("maxrss_kb %ld\n", kb);
  fflush(stdout);
}

/* Standardises windows [w0, w0 + B) of raw (wsize floats each) into ctx. */
static void load(fl_bundle *b, fl_ctx *ctx, const float *raw, size_t wsize, int w0, int B) {
  const fl_model_spec *s = fl_model_spec_of(b->model);
  for (int k = 0; k < B; k++) {
    const float *w = raw + (size_t)(w0 + k) * wsize;
    for (int i = 0; i < s->n_mod; i++) {
      if (fl_model_normalise(b->model, ctx, k, i, w, b->clamp)) die("normalise");
      w += (size_t)s->mod[i].channels * s->window * s->mod[i].rate;
    }
  }
}

/* ---- parity ---------------------------------------------------------------- */

/* Per window: the standardised input, the output with the block, the output
 * without it (stage 1), the embedding; each modality's (C, T) in turn. */
static void run_parity(fl_bundle *b, const float *raw, size_t n, size_t wsize, FILE *out) {
  const fl_model_spec *s = fl_model_spec_of(b->model);
  fl_ctx *ctx;
  int Bmax = 64;
  /* The forward-only context, the one faultlined runs. */
  if (fl_ctx_create_infer(&ctx, b->model, Bmax)) die("ctx");
  float **yb = xmalloc(sizeof(float *) * s->n_mod);
  for (int i = 0; i < s->n_mod; i++)
    yb[i] = xmalloc(sizeof(float) * Bmax * s->mod[i].channels * s->window * s->mod[i].rate);
  /* Batches of every size class of lib/nn_x86.c's dense tiles (6 rows of x,
   * and each remainder) in turn. */
  static const int sizes[] = {1, 2, 5, 8, 16, 17, 64};
  int step = 0;
  for (size_t w0 = 0, B; w0 < n; w0 += B, step++) {
    B = (size_t)sizes[step % (int)(sizeof sizes / sizeof *sizes)];
    if (B > n - w0) B = n - w0;
    load(b, ctx, raw, wsize, (int)w0, (int)B);
    if (fl_model_forward(b->model, ctx, (int)B, 1, 1)) die("forward");
    for (int i = 0; i < s->n_mod; i++)
      memcpy(yb[i], fl_ctx_output(ctx, i),
             sizeof(float) * B * s->mod[i].channels * s->window * s->mod[i].rate);
    if (fl_model_forward_latent(b->model, ctx, (int)B, 0, 0)) die("forward");
    for (size_t k = 0; k < B; k++) {
      for (int pass = 0; pass < 3; pass++)
        for (int i = 0; i < s->n_mod; i++) {
          size_t ct = (size_t)s->mod[i].channels * s->window * s->mod[i].rate;
          const float *src = pass == 0 ? fl_ctx_input(ctx, i) : pass == 1 ? yb[i]
                                                                           : fl_ctx_output(ctx, i);
          fwrite(src + k * ct, sizeof(float), ct, out);
        }
      fwrite(fl_ctx_embedding(ctx) + (size_t)k * s->emb, sizeof(float), s->emb, out);
    }
  }
  for (int i = 0; i < s->n_mod; i++) free(yb[i]);
  free(yb);
  fl_ctx_free(ctx);
}

/* ---- timing ---------------------------------------------------------------- */

typedef void (*fn_t)(void *);

/* Calls of fn for one repetition to last about 20 ms. */
static int calibrate(fn_t fn, void *arg) {
  fn(arg);
  double t0 = now();
  fn(arg);
  double one = now() - t0;
  return one > 0 ? (int)(20e-3 / one) + 1 : 1000;
}

static double per_call(fn_t fn, void *arg, int inner) {
  double s = now();
  for (int i = 0; i < inner; i++) fn(arg);
  return (now() - s) / inner;
}

/* Median seconds per call of fa(a) and of fb(b) (fb may be NULL); their
 * repetitions alternate, so that a change of load on a shared machine hits
 * both alike instead of biasing their ratio. */
static void time_pair(fn_t fa, void *a, double *ta, fn_t fb, void *b, double *tb, int reps) {
  int na = calibrate(fa, a), nb = fb ? calibrate(fb, b) : 0;
  double *t = xmalloc(sizeof(double) * 2 * reps);
  for (int r = 0; r < reps; r++) {
    t[r] = per_call(fa, a, na);
    t[reps + r] = fb ? per_call(fb, b, nb) : 0;
  }
  qsort(t, reps, sizeof(double), cmp_double);
  qsort(t + reps, reps, sizeof(double), cmp_double);
  *ta = t[reps / 2];
  if (tb) *tb = t[reps + reps / 2];
  free(t);
}

static double timeit(fn_t fn, void *arg, int reps) {
  double t;
  time_pair(fn, arg, &t, NULL, NULL, NULL, reps);
  return t;
}

typedef struct {
  fl_bundle *b;
  fl_ctx *ctx;
  int B;
} fwd_arg;

/* The model's forward pass: encoders, block, decoders, head. */
static void fwd(void *p) {
  fwd_arg *a = p;
  if (fl_model_forward(a->b->model, a->ctx, a->B, 1, 1)) die("forward");
}

/* What the daemon runs per batch: both decoder passes, head and scores. */
static fl_window_score *g_sc;
static void score(void *p) {
  fwd_arg *a = p;
  if (!g_sc) {
    const fl_model_spec *s = fl_model_spec_of(a->b->model);
    if (!(g_sc = fl_window_scores_new(256, s->n_mod, fl_model_channels(a->b->model))))
      die("scores");
  }
  if (fl_detect_score(a->b->model, &a->b->calib, a->ctx, a->B, g_sc, NULL)) die("score");
}

/* One GEMM of the forward pass at batch B, on buffers of its own. */
typedef struct {
  CBLAS_TRANSPOSE ta, tb;
  int M, N, K;
  float *a, *b, *c;
} gemm;

static void gemm_run(void *p) {
  gemm *g = p;
  cblas_sgemm(CblasRowMajor, g->ta, g->tb, g->M, g->N, g->K, 1.0f, g->a,
              g->ta == CblasNoTrans ? g->K : g->M, g->b, g->tb == CblasNoTrans ? g->N : g->K,
              0.0f, g->c, g->N);
}

/* Every GEMM of a forward pass, back to back, each on buffers of its own:
 * the same shapes and the same amount of data streamed as the model's. */
typedef struct {
  int n;
  gemm g[64];
} gemm_seq;

static void gemm_seq_run(void *p) {
  gemm_seq *q = p;
  for (int i = 0; i < q->n; i++) gemm_run(&q->g[i]);
}

/* The matrix-vector products of one pass over every weight of the model. */
typedef struct {
  int n;
  int rows[64], cols[64];
  const float *w[64];
  float *x, *y;
} gemv_pass;

static void gemv_run(void *p) {
  gemv_pass *g = p;
  for (int i = 0; i < g->n; i++)
    cblas_sgemv(CblasRowMajor, CblasNoTrans, g->rows[i], g->cols[i], 1.0f, g->w[i], g->cols[i],
                g->x, 1, 0.0f, g->y, 1);
}

/* The GEMMs lib/nn.c lowers layer l to for a batch of B, forward. */
static void layer_gemm(const fl_layer *l, int B, gemm *g) {
  memset(g, 0, sizeof *g);
  if (l->kind == FL_LAYER_DENSE) {
    *g = (gemm){.ta = CblasNoTrans, .tb = CblasTrans, .M = B, .N = l->nout, .K = l->nin};
  } else if (l->kind == FL_LAYER_CONV) {
    int tout = fl_conv1d_len(&l->conv, l->tin);
    *g = (gemm){.ta = CblasNoTrans, .tb = CblasNoTrans, .M = l->conv.cout, .N = B * tout,
                .K = l->conv.cin * l->conv.k};
  } else {
    *g = (gemm){.ta = CblasTrans, .tb = CblasNoTrans, .M = l->conv.cout * l->conv.k,
                .N = B * l->tin, .K = l->conv.cin};
  }
  fl_rng r;
  fl_rng_seed(&r, 1);
  size_t na = (size_t)g->M * g->K, nb = (size_t)g->K * g->N, nc = (size_t)g->M * g->N;
  g->a = xmalloc(sizeof(float) * na);
  g->b = xmalloc(sizeof(float) * nb);
  g->c = xmalloc(sizeof(float) * nc);
  for (size_t i = 0; i < na; i++) g->a[i] = 0.1f * fl_rng_normal(&r);
  for (size_t i = 0; i < nb; i++) g->b[i] = 0.1f * fl_rng_normal(&r);
}

static void run_time(fl_bundle *b, const float *raw, size_t n, size_t wsize, int reps) {
  fl_model *m = b->model;
  static const int batches[] = {1, 8, 64, 256};
  /* The forward-only context, the one faultlined runs (its dense
   * layers are fl_dense_infer's); a training context (sgemm) beside it. */
  fl_ctx *ctx, *tctx;
  if (fl_ctx_create_infer(&ctx, m, 256) || fl_ctx_create(&tctx, m, 256)) die("ctx");
  if (n < 256) die("need 256 windows");
  load(b, ctx, raw, wsize, 0, 256);
  load(b, tctx, raw, wsize, 0, 256);
  /* FLOPs of one forward pass (block and head on), 2 multiply-adds each,
   * from the GEMM shapes; the layers' biases and activations are left out. */
  double flops = 0;
  int nl = fl_model_layer_count(m);
  for (int i = 0; i < nl; i++) {
    gemm g;
    const fl_layer *l = fl_model_layer(m, i);
    if (l->kind == FL_LAYER_DENSE) flops += 2.0 * l->nin * l->nout;
    else {
      layer_gemm(l, 1, &g);
      flops += 2.0 * g.M * g.N * g.K;
      free(g.a), free(g.b), free(g.c);
    }
  }
  printf("flops_per_window %.0f\n", flops);
  printf("params %zu\n", fl_model_param_count(m));
  /* The floor at batch 1: one matrix-vector product over every weight
   * matrix of the model (a convolution's as (cout, cin k)), x and y in L1:
   * the model's weights are streamed once, as a batch-1 pass must. */
  gemv_pass gp = {0};
  size_t maxcol = 0, maxrow = 0;
  for (int i = 0; i < nl; i++) {
    const fl_layer *l = fl_model_layer(m, i);
    int r = l->kind == FL_LAYER_DENSE ? l->nout : l->kind == FL_LAYER_CONV ? l->conv.cout : l->conv.cin;
    int c = (int)(l->nw / (size_t)r);
    gp.rows[gp.n] = r;
    gp.cols[gp.n] = c;
    gp.w[gp.n++] = l->w;
    if ((size_t)c > maxcol) maxcol = c;
    if ((size_t)r > maxrow) maxrow = r;
  }
  gp.x = xmalloc(sizeof(float) * maxcol);
  gp.y = xmalloc(sizeof(float) * maxrow);
  for (size_t i = 0; i < maxcol; i++) gp.x[i] = 0.01f;
  for (size_t j = 0; j < sizeof batches / sizeof *batches; j++) {
    int B = batches[j];
    fwd_arg a = {b, ctx, B};
    double t, lim;
    if (B == 1) {
      time_pair(fwd, &a, &t, gemv_run, &gp, &lim, reps);
      printf("floor_gemv_s %.9f\n", lim);
    } else if (B >= 64) {
      /* The sgemm bound: the forward pass's GEMMs alone, plain sgemm. */
      gemm_seq *q = xmalloc(sizeof *q);
      q->n = nl;
      for (int i = 0; i < nl; i++) layer_gemm(fl_model_layer(m, i), B, &q->g[i]);
      time_pair(fwd, &a, &t, gemm_seq_run, q, &lim, reps);
      printf("sgemm_bound_b%d_s %.9f\n", B, lim);
      for (int i = 0; i < nl; i++) free(q->g[i].a), free(q->g[i].b), free(q->g[i].c);
      free(q);
    } else {
      t = timeit(fwd, &a, reps);
    }
    printf("forward_b%d_s %.9f\n", B, t);
    /* The same pass in a training context, alternating with it again. */
    fwd_arg ta = {b, tctx, B};
    double ti, tt;
    time_pair(fwd, &a, &ti, fwd, &ta, &tt, reps);
    printf("forward_pair_b%d_s %.9f\nforward_train_b%d_s %.9f\n", B, ti, B, tt);
  }
  for (int B = 1; B <= 64; B *= 64) {
    fwd_arg a = {b, ctx, B};
    printf("score_b%d_s %.9f\n", B, timeit(score, &a, reps));
  }
  /* The inference process's peak: the model, a context of 256 windows. */
  print_rss();
  free(gp.x);
  free(gp.y);
  fl_ctx_free(ctx);
  fl_ctx_free(tctx);
}

/* ---- training ------------------------------------------------------------- */

/* One epoch of fl_train_step over the windows in order, batches of 64 (the
 * last short batch included when it has two windows or more): the step is
 * forward, loss, backward, clipping, Adam and the Lipschitz projection.  The
 * windows are standardised beforehand, as the script's PyTorch side does, so
 * that data loading is outside the time on both sides. */
static void run_train(fl_bundle *b, const float *raw, const float *raw2, const int *label,
                      size_t n, size_t wsize, int steps_print) {
  fl_model *m = b->model;
  const fl_model_spec *s = fl_model_spec_of(m);
  const int Bmax = 64;
  fl_train_config cfg;
  fl_train_defaults(&cfg);
  fl_ctx *ctx;
  if (fl_ctx_create(&ctx, m, Bmax)) die("ctx");
  /* (n, C, T) standardised inputs per modality: clean, faulted, and masks. */
  float *xin[2][8], *tgt[8], *msk[8]; /* the benchmarked specs have few modalities */
  size_t ct[8];
  for (int i = 0; i < s->n_mod; i++) {
    ct[i] = (size_t)s->mod[i].channels * s->window * s->mod[i].rate;
    for (int v = 0; v < 2; v++) xin[v][i] = xmalloc(sizeof(float) * n * ct[i]);
    tgt[i] = xmalloc(sizeof(float) * Bmax * ct[i]);
    msk[i] = xmalloc(sizeof(float) * Bmax * ct[i]);
  }
  for (int v = 0; v < 2; v++)
    for (size_t w0 = 0; w0 < n; w0 += Bmax) {
      int B = n - w0 < (size_t)Bmax ? (int)(n - w0) : Bmax;
      load(b, ctx, v ? raw2 : raw, wsize, (int)w0, B);
      for (int i = 0; i < s->n_mod; i++)
        memcpy(xin[v][i] + w0 * ct[i], fl_ctx_input(ctx, i), sizeof(float) * B * ct[i]);
    }
  for (int i = 0; i < s->n_mod; i++)
    for (size_t k = 0; k < Bmax * ct[i]; k++) msk[i][k] = 1.0f;
  float *work = xmalloc(sizeof(float) * Bmax * Bmax);
  for (int stage = 1; stage <= 2; stage++) {
    fl_adam opt[FL_MOD_COUNT];
    fl_adam_init(&opt[FL_MOD_ENC], cfg.lr1);
    fl_adam_init(&opt[FL_MOD_DEC], stage == 1 ? cfg.lr1 : cfg.lr_dec2);
    fl_adam_init(&opt[FL_MOD_BLOCK], cfg.lr2);
    fl_adam_init(&opt[FL_MOD_HEAD], cfg.lr2);
    /* Both stages start cold, as the script's: the spectral estimates'
     * warm-start vectors of the previous stage are dropped, and so are the
     * Adam moments (model-owned; the script makes fresh optimisers, and the
     * decoder, trained in both stages, would otherwise start stage 2 with
     * stage 1's moments). */
    for (int i = 0; i < fl_model_layer_count(m); i++) {
      fl_layer *l = fl_model_layer(m, i);
      size_t nv = l->kind == FL_LAYER_DENSE ? (size_t)l->nin : (size_t)l->conv.cin * l->tin;
      memset(l->v, 0, sizeof(float) * nv);
    }
    for (int md = 0; md < FL_MOD_COUNT; md++) {
      fl_param *ps;
      int np;
      if (fl_model_params(m, (fl_module)md, &ps, &np)) die("params");
      for (int k = 0; k < np; k++) {
        memset(ps[k].m, 0, sizeof(float) * ps[k].n);
        memset(ps[k].v, 0, sizeof(float) * ps[k].n);
      }
    }
    float *start = xmalloc(sizeof(float) * fl_model_param_count(m));
    memcpy(start, fl_model_param_block(m), sizeof(float) * fl_model_param_count(m));
    double t = 0;
    int step = 0;
    for (size_t w0 = 0; w0 + 2 <= n; w0 += Bmax, step++) {
      int B = n - w0 < (size_t)Bmax ? (int)(n - w0) : Bmax;
      for (int i = 0; i < s->n_mod; i++) {
        memcpy(fl_ctx_input(ctx, i), xin[stage - 1][i] + w0 * ct[i], sizeof(float) * B * ct[i]);
        memcpy(tgt[i], xin[0][i] + w0 * ct[i], sizeof(float) * B * ct[i]);
      }
      float loss, closs;
      double t0 = now();
      int err = fl_train_step(m, ctx, stage, B, tgt, msk, label + w0, opt, &cfg, work, &loss,
                              &closs);
      t += now() - t0;
      if (err) die("train step");
      if (step < steps_print) printf("stage%d_step%d_loss %.7g %.7g\n", stage, step, loss, closs);
    }
    printf("stage%d_steps %d\nstage%d_epoch_s %.6f\n", stage, step, stage, t);
    /* Stage 2 starts from the same weights as stage 1 did, as the script's. */
    memcpy(fl_model_param_block(m), start, sizeof(float) * fl_model_param_count(m));
    free(start);
  }
  free(work);
  for (int i = 0; i < s->n_mod; i++) {
    free(xin[0][i]), free(xin[1][i]), free(tgt[i]), free(msk[i]);
  }
  fl_ctx_free(ctx);
}

int main(int argc, char **argv) {
  if (argc < 4) die("usage: see the comment at the top of tests/bench/bench_model.c");
  const char *mode = argv[1];
  int threads = !strcmp(mode, "time") && argc > 4 ? atoi(argv[4])
                : !strcmp(mode, "train") && argc > 6 ? atoi(argv[6])
                                                    : 1;
  openblas_set_num_threads(threads > 0 ? threads : 1);
  fl_bundle b;
  char err[400];
  if (fl_bundle_load(&b, argv[2], err, sizeof err)) die(err);
  size_t wsize = (size_t)fl_model_input_size(b.model), nf;
  float *raw = read_all(argv[3], &nf);
  size_t n = nf / wsize;
  if (!strcmp(mode, "parity") && argc == 5) {
    FILE *out = fopen(argv[4], "wb");
    if (!out) die(argv[4]);
    run_parity(&b, raw, n, wsize, out);
    if (fclose(out)) die(argv[4]);
  } else if (!strcmp(mode, "time") && argc == 6) {
    run_time(&b, raw, n, wsize, atoi(argv[5]));
  } else if (!strcmp(mode, "rss") && argc == 4) {
    /* What a process serving the model holds: the model, a forward-only
     * context of 64 windows (as faultlined's), forward passes at batch 1
     * and 64. */
    fl_ctx *ctx;
    if (n < 64 || fl_ctx_create_infer(&ctx, b.model, 64)) die("rss");
    load(&b, ctx, raw, wsize, 0, 64);
    for (int B = 1; B <= 64; B *= 64) {
      fwd_arg a = {&b, ctx, B};
      for (int i = 0; i < 20; i++) fwd(&a);
    }
    fl_ctx_free(ctx);
  } else if (!strcmp(mode, "loop") && argc >= 6) {
    int B = atoi(argv[4]), N = atoi(argv[5]);
    fl_ctx *ctx;
    if (B < 1 || B > 256 || (size_t)B > n || fl_ctx_create_infer(&ctx, b.model, B)) die("loop");
    load(&b, ctx, raw, wsize, 0, B);
    fwd_arg a = {&b, ctx, B};
    for (int i = 0; i < N; i++) (argc > 6 ? score : fwd)(&a);
    fl_ctx_free(ctx);
  } else if (!strcmp(mode, "train") && argc == 8) {
    size_t nf2, nl;
    float *raw2 = read_all(argv[4], &nf2);
    int *label = (int *)read_all(argv[5], &nl);
    if (nf2 != nf || nl != n) die("RAW2 and LABELS must match RAW");
    run_train(&b, raw, raw2, label, n, wsize, atoi(argv[7]));
    free(raw2);
    free(label);
  } else {
    die("bad arguments");
  }
  free(raw);
  fl_bundle_free(&b);
  if (strcmp(mode, "time")) print_rss();
  return 0;
}
