/* Benchmark of the numeric core at the default model's shapes.
 *
 * For every layer shape it times plain cblas_sgemm on the GEMM(s) that
 * lib/nn.c lowers the layer to (im2col with one GEMM over the whole batch),
 * then the layer itself, and prints both rates and their ratio.  The ratio
 * is the share of sgemm's speed the layer keeps after its data movement
 * (im2col, col2im, layout changes, bias): close to 1 means the GEMM
 * dominates, well below 1 means the glue does.
 *
 * FLOPs are counted as 2 M N K of the GEMMs (for a convolution this equals
 * the direct convolution's multiply-adds, padding taps included); a backward
 * pass is dx plus dW, two GEMMs of the forward's size.  Times are medians
 * over repetitions on CLOCK_MONOTONIC; each repetition runs enough calls to
 * last at least ~5 ms, and sgemm's and the layer's repetitions alternate.
 * The table is printed once for one OpenBLAS thread and once for
 * OpenBLAS's default thread count.  On a shared or loaded machine the
 * absolute rates move from run to run; the ratios move less.
 *
 * A second table, on one thread, times fl_dense_infer (the forward-only
 * context's dense kernel) against the same layer through sgemm, per dense
 * shape of the default model and batch 1 .. 256.
 *
 * Usage: bench_nn [repetitions [infer]]   (default 15; 3 with
 * FAULTLINE_QUICK=1, the README test's quick mode; "infer": the second
 * table alone) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cblas.h>

#include "faultline/error.h"
#include "faultline/nn.h"

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static int g_reps = 15;

/* Calls of fn(ctx) needed for one repetition to last about 5 ms. */
static int calibrate(void (*fn)(void *), void *ctx) {
  fn(ctx); /* warm caches and OpenBLAS's thread pool */
  double t0 = now();
  fn(ctx);
  double one = now() - t0;
  return one > 0 ? (int)(5e-3 / one) + 1 : 1000;
}

static double per_call(void (*fn)(void *), void *ctx, int inner) {
  double s = now();
  for (int i = 0; i < inner; i++) fn(ctx);
  return (now() - s) / inner;
}

/* Median seconds per call of fa(a) and of fb(b).  The repetitions of the
 * two alternate, so that a change of load or clock speed on a shared
 * machine hits both alike instead of biasing their ratio. */
static void time_pair(void (*fa)(void *), void *a, double *ta, void (*fb)(void *), void *b,
                      double *tb) {
  int na = calibrate(fa, a), nb = calibrate(fb, b);
  double *t = malloc(sizeof(double) * 2 * (size_t)g_reps);
  if (!t) abort();
  for (int r = 0; r < g_reps; r++) {
    t[r] = per_call(fa, a, na);
    t[g_reps + r] = per_call(fb, b, nb);
  }
  qsort(t, (size_t)g_reps, sizeof(double), cmp_double);
  qsort(t + g_reps, (size_t)g_reps, sizeof(double), cmp_double);
  *ta = t[g_reps / 2];
  *tb = t[g_reps + g_reps / 2];
  free(t);
}

static float *randbuf(size_t n, fl_rng *r) {
  float *p = malloc(sizeof(float) * (n ? n : 1));
  if (!p) abort();
  for (size_t i = 0; i < n; i++) p[i] = 0.1f * fl_rng_normal(r);
  return p;
}

/* ---- plain sgemm ---------------------------------------------------------- */

typedef struct {
  CBLAS_TRANSPOSE ta, tb;
  int M, N, K;
  float beta;
  float *a, *b, *c;
} gemm;

static void gemm_init(gemm *g, CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int M, int N, int K,
                      float beta, fl_rng *r) {
  g->ta = ta;
  g->tb = tb;
  g->M = M;
  g->N = N;
  g->K = K;
  g->beta = beta;
  g->a = randbuf((size_t)M * K, r);
  g->b = randbuf((size_t)K * N, r);
  g->c = randbuf((size_t)M * N, r);
}

static void gemm_free(gemm *g) {
  free(g->a);
  free(g->b);
  free(g->c);
}

/* Row-major with the leading dimensions a packed matrix has. */
static void gemm_run(void *p) {
  gemm *g = p;
  int lda = g->ta == CblasNoTrans ? g->K : g->M;
  int ldb = g->tb == CblasNoTrans ? g->N : g->K;
  cblas_sgemm(CblasRowMajor, g->ta, g->tb, g->M, g->N, g->K, 1.0f, g->a, lda, g->b, ldb,
              g->beta, g->c, g->N);
}

static double gemm_flops(const gemm *g) { return 2.0 * g->M * g->N * g->K; }

/* Median seconds of a sequence of GEMMs run back to back. */
typedef struct {
  gemm *g;
  int n;
} gemm_seq;

static void gemm_seq_run(void *p) {
  gemm_seq *s = p;
  for (int i = 0; i < s->n; i++) gemm_run(&s->g[i]);
}

/* ---- layers ------------------------------------------------------------- */

typedef struct {
  int kind; /* 0 dense, 1 conv1d, 2 convt1d */
  int backward;
  fl_conv c;
  int B, tin, nin, nout;
  float *x, *w, *b, *y, *dy, *dx, *dw, *db, *work;
} layer;

static void layer_run(void *p) {
  layer *L = p;
  int rc;
  if (L->kind == 0)
    rc = L->backward ? fl_dense_backward(L->dx, L->dw, L->db, L->dy, L->x, L->w, L->B, L->nin, L->nout)
                     : fl_dense_forward(L->y, L->x, L->w, L->b, L->B, L->nin, L->nout);
  else if (L->kind == 1)
    rc = L->backward ? fl_conv1d_backward(L->dx, L->dw, L->db, L->dy, L->x, L->w, &L->c, L->B,
                                          L->tin, L->work)
                     : fl_conv1d_forward(L->y, L->x, L->w, L->b, &L->c, L->B, L->tin, L->work);
  else
    rc = L->backward ? fl_convt1d_backward(L->dx, L->dw, L->db, L->dy, L->x, L->w, &L->c, L->B,
                                           L->tin, L->work)
                     : fl_convt1d_forward(L->y, L->x, L->w, L->b, &L->c, L->B, L->tin, L->work);
  if (rc) {
    fprintf(stderr, "bench_nn: layer call failed: %s\n", fl_strerror(rc));
    exit(1);
  }
}

static void print_header(void) {
  printf("%-34s %-26s %9s %9s %7s %10s\n", "layer", "GEMMs (M x N x K)", "sgemm", "layer",
         "ratio", "layer time");
  printf("%-34s %-26s %9s %9s %7s %10s\n", "", "", "GFLOP/s", "GFLOP/s", "", "us");
}

static void print_row(const char *name, const gemm *g, int ng, double t_gemm, double t_layer) {
  double flops = 0.0;
  char shapes[64] = "";
  for (int i = 0; i < ng; i++) {
    flops += gemm_flops(&g[i]);
    char one[32];
    snprintf(one, sizeof(one), "%s%dx%dx%d", i ? " + " : "", g[i].M, g[i].N, g[i].K);
    strncat(shapes, one, sizeof(shapes) - strlen(shapes) - 1);
  }
  double rg = flops / t_gemm * 1e-9, rl = flops / t_layer * 1e-9;
  printf("%-34s %-26s %9.2f %9.2f %7.2f %10.1f\n", name, shapes, rg, rl, rl / rg, t_layer * 1e6);
}

/* Times one layer direction against the GEMMs it lowers to. */
static void bench_layer(const char *name, layer *L, gemm *g, int ng) {
  gemm_seq s = {g, ng};
  double tg, tl;
  time_pair(gemm_seq_run, &s, &tg, layer_run, L, &tl);
  print_row(name, g, ng, tg, tl);
}

static void bench_dense(int B, int nin, int nout, fl_rng *r) {
  layer L = {.kind = 0, .B = B, .nin = nin, .nout = nout};
  L.x = randbuf((size_t)B * nin, r);
  L.w = randbuf((size_t)nout * nin, r);
  L.b = randbuf((size_t)nout, r);
  L.y = randbuf((size_t)B * nout, r);
  L.dy = randbuf((size_t)B * nout, r);
  L.dx = randbuf((size_t)B * nin, r);
  L.dw = randbuf((size_t)nout * nin, r);
  L.db = randbuf((size_t)nout, r);
  char name[64];
  gemm g[2];
  /* y (B, nout) = x (B, nin) W^T. */
  gemm_init(&g[0], CblasNoTrans, CblasTrans, B, nout, nin, 1.0f, r);
  snprintf(name, sizeof(name), "dense fwd %d->%d", nin, nout);
  bench_layer(name, &L, g, 1);
  gemm_free(&g[0]);
  /* dx (B, nin) = dy (B, nout) W (nout, nin);  dW (nout, nin) += dy^T x. */
  gemm_init(&g[0], CblasNoTrans, CblasNoTrans, B, nin, nout, 0.0f, r);
  gemm_init(&g[1], CblasTrans, CblasNoTrans, nout, nin, B, 1.0f, r);
  L.backward = 1;
  snprintf(name, sizeof(name), "dense bwd %d->%d", nin, nout);
  bench_layer(name, &L, g, 2);
  gemm_free(&g[0]);
  gemm_free(&g[1]);
  free(L.x);
  free(L.w);
  free(L.b);
  free(L.y);
  free(L.dy);
  free(L.dx);
  free(L.dw);
  free(L.db);
}

static void bench_conv(int transposed, fl_conv c, int B, int tin, fl_rng *r) {
  int tout = transposed ? fl_convt1d_len(&c, tin) : fl_conv1d_len(&c, tin);
  if (tout <= 0) {
    fprintf(stderr, "bench_nn: bad conv shape\n");
    exit(1);
  }
  layer L = {.kind = transposed ? 2 : 1, .c = c, .B = B, .tin = tin};
  size_t nx = (size_t)B * c.cin * tin, ny = (size_t)B * c.cout * tout;
  size_t nw = (size_t)c.cin * c.cout * c.k;
  size_t ws = transposed ? fl_convt1d_workspace(&c, B, tin) : fl_conv1d_workspace(&c, B, tin);
  L.x = randbuf(nx, r);
  L.w = randbuf(nw, r);
  L.b = randbuf((size_t)c.cout, r);
  L.y = randbuf(ny, r);
  L.dy = randbuf(ny, r);
  L.dx = randbuf(nx, r);
  L.dw = randbuf(nw, r);
  L.db = randbuf((size_t)c.cout, r);
  /* A caller-owned workspace, as the model passes one, so that malloc is
   * not part of the measurement. */
  L.work = randbuf(ws, r);
  char name[64];
  gemm g[2];
  if (!transposed) {
    int K = c.cin * c.k, N = B * tout;
    /* y (cout, B tout) = W (cout, cin k) cols (cin k, B tout). */
    gemm_init(&g[0], CblasNoTrans, CblasNoTrans, c.cout, N, K, 0.0f, r);
    snprintf(name, sizeof(name), "conv1d fwd %d->%d T%d->%d", c.cin, c.cout, tin, tout);
    bench_layer(name, &L, g, 1);
    gemm_free(&g[0]);
    /* dW (cout, cin k) += dY cols^T;  dcols (cin k, B tout) = W^T dY. */
    gemm_init(&g[0], CblasNoTrans, CblasTrans, c.cout, K, N, 1.0f, r);
    gemm_init(&g[1], CblasTrans, CblasNoTrans, K, N, c.cout, 0.0f, r);
    snprintf(name, sizeof(name), "conv1d bwd %d->%d T%d->%d", c.cin, c.cout, tin, tout);
  } else {
    int K = c.cout * c.k, N = B * tin;
    /* cols (cout k, B tin) = W^T (cout k, cin) X (cin, B tin). */
    gemm_init(&g[0], CblasTrans, CblasNoTrans, K, N, c.cin, 0.0f, r);
    snprintf(name, sizeof(name), "convt1d fwd %d->%d T%d->%d", c.cin, c.cout, tin, tout);
    bench_layer(name, &L, g, 1);
    gemm_free(&g[0]);
    /* dW (cin, cout k) += X cols^T;  dX (cin, B tin) = W cols. */
    gemm_init(&g[0], CblasNoTrans, CblasTrans, c.cin, K, N, 1.0f, r);
    gemm_init(&g[1], CblasNoTrans, CblasNoTrans, c.cin, N, K, 0.0f, r);
    snprintf(name, sizeof(name), "convt1d bwd %d->%d T%d->%d", c.cin, c.cout, tin, tout);
  }
  L.backward = 1;
  bench_layer(name, &L, g, 2);
  gemm_free(&g[0]);
  gemm_free(&g[1]);
  free(L.x);
  free(L.w);
  free(L.b);
  free(L.y);
  free(L.dy);
  free(L.dx);
  free(L.dw);
  free(L.db);
  free(L.work);
}

/* ---- the forward-only dense kernel against sgemm ------------------------- */

typedef struct {
  fl_dense_kernel k;
  int B, nin, nout;
  float *x, *w, *b, *y;
} infer_call;

static void infer_run(void *p) {
  infer_call *c = p;
  int rc = fl_dense_infer_with(c->k, c->y, c->x, c->w, c->b, c->B, c->nin, c->nout);
  if (rc) {
    fprintf(stderr, "bench_nn: fl_dense_infer_with failed: %s\n", fl_strerror(rc));
    exit(1);
  }
}

/* fl_dense_infer's kernel (AUTO: what the CPU gets) against the same layer
 * through sgemm (BLAS: fl_dense_forward, bias and finiteness check
 * included on both sides), alternating, per dense shape of the default
 * model and per batch. */
static void run_infer_table(fl_rng *r) {
  static const int shapes[][2] = {{1920, 256}, {256, 256}, {256, 1920}, {1920, 128}, {128, 32}};
  static const int batches[] = {1, 8, 16, 32, 64, 256};
  printf("%-22s %5s %11s %11s %9s %9s %7s\n", "dense forward", "batch", "sgemm us",
         "kernel us", "sgemm", "kernel", "speed");
  printf("%-22s %5s %11s %11s %9s %9s %7s\n", "", "", "", "", "GFLOP/s", "GFLOP/s", "up");
  for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++)
    for (size_t j = 0; j < sizeof batches / sizeof *batches; j++) {
      int nin = shapes[s][0], nout = shapes[s][1], B = batches[j];
      infer_call k = {.k = FL_DENSE_AUTO, .B = B, .nin = nin, .nout = nout}, g;
      k.x = randbuf((size_t)B * nin, r);
      k.w = randbuf((size_t)nout * nin, r);
      k.b = randbuf((size_t)nout, r);
      k.y = randbuf((size_t)B * nout, r);
      g = k;
      g.k = FL_DENSE_BLAS;
      double tg, tk;
      time_pair(infer_run, &g, &tg, infer_run, &k, &tk);
      double fl = 2.0 * B * nin * nout;
      char name[32];
      snprintf(name, sizeof name, "%d->%d", nin, nout);
      printf("%-22s %5d %11.1f %11.1f %9.2f %9.2f %6.2fx\n", name, B, tg * 1e6, tk * 1e6,
             fl / tg * 1e-9, fl / tk * 1e-9, tg / tk);
      free(k.x), free(k.w), free(k.b), free(k.y);
    }
}

static void run_table(fl_rng *r) {
  const int B = 64;
  print_header();
  /* The compute block on a latent of 1920 (e.g. 4 modalities x 32 channels
   * x 15 steps): 1920 -> 256 -> 256 -> 1920. */
  bench_dense(B, 1920, 256, r);
  bench_dense(B, 256, 256, r);
  bench_dense(B, 256, 1920, r);
  /* Encoder and decoder layers: k 5, stride 2, pad 2 (out_pad 1 in the
   * decoder so that lengths mirror the encoder's). */
  fl_conv e1 = {.cin = 8, .cout = 16, .k = 5, .stride = 2, .pad = 2, .dil = 1};
  fl_conv e2 = {.cin = 16, .cout = 32, .k = 5, .stride = 2, .pad = 2, .dil = 1};
  fl_conv d1 = {.cin = 32, .cout = 16, .k = 5, .stride = 2, .pad = 2, .dil = 1, .out_pad = 1};
  fl_conv d2 = {.cin = 16, .cout = 8, .k = 5, .stride = 2, .pad = 2, .dil = 1, .out_pad = 1};
  bench_conv(0, e1, B, 60, r);
  bench_conv(0, e2, B, 60, r);
  bench_conv(0, e2, B, 30, r);
  bench_conv(1, d1, B, 15, r);
  bench_conv(1, d1, B, 30, r);
  bench_conv(1, d2, B, 30, r);
}

int main(int argc, char **argv) {
  const char *quick = getenv("FAULTLINE_QUICK");
  if (quick && !strcmp(quick, "1")) g_reps = 3;
  if (argc > 1) {
    g_reps = atoi(argv[1]);
    if (g_reps < 1) g_reps = 1;
  }
  fl_rng r;
  fl_rng_seed(&r, 1);
  int threads = openblas_get_num_threads();
  printf("faultline nn benchmark: batch 64, median of %d repetitions, OpenBLAS %s\n", g_reps,
         openblas_get_config());
  printf("\n-- 1 OpenBLAS thread --\n");
  openblas_set_num_threads(1);
  if (argc > 2 && !strcmp(argv[2], "infer")) { /* the kernel table alone */
    run_infer_table(&r);
    return 0;
  }
  run_table(&r);
  printf("\n");
  run_infer_table(&r);
  if (threads > 1) {
    printf("\n-- %d OpenBLAS threads --\n", threads);
    openblas_set_num_threads(threads);
    run_table(&r);
  }
  return 0;
}
