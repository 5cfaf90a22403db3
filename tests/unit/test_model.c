/* Unit tests for the multimodal model (lib/model.c) against its contract in
 * faultline/model.h.
 *
 * Whole-model gradient checks: for a small two-modality model (one modality
 * at rate 1 with two channels, one at rate 2 with one channel) and a fixed
 * random dout, L = sum over modalities of dout_m * out_m is evaluated in
 * double from the float forward outputs; every parameter of every encoder,
 * decoder, block (and head) layer is perturbed by +-eps in float and
 * (L+ - L-) / (w+ - w-) is compared with the analytic gradient that
 * fl_model_backward_recon (or _head, with L = sum demb * emb) accumulated.
 *
 * Tolerance: |analytic - numeric| <= ATOL + RTOL |numeric| with ATOL = 1e-2,
 * RTOL = 5e-2 at eps = 1e-2.  L sums ~100 float outputs of size ~1, so its
 * rounding over 2 eps is a few 1e-4; the truncation error of a central
 * difference through LeakyReLU is zero except when a pre-activation crosses
 * its kink within +-eps.  Such a crossing is told from a bug by a second
 * check at eps = 1e-3 (ATOL 3e-2 for the larger rounding share): a bug is
 * wrong at every step, a kink at almost none.  A parameter is accepted if
 * either check passes; wrong indexing or a missing term gives errors of
 * order 1.  The block's last layer is given random weights, because the
 * model zero-initialises it and a zero layer would hide gradients behind it. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "faultline/csv.h"
#include "faultline/error.h"
#include "faultline/model.h"
#include "faultline/nn.h"

#define NB 2 /* windows per batch */

static void small_spec(fl_model_spec *s) {
  static const char *a[] = {"a0", "a1"}, *b[] = {"b0"};
  fl_model_spec_defaults(s);
  s->window = 8;
  s->enc1 = 3;
  s->enc2 = 4;
  s->hidden = 5;
  s->head_hidden = 6;
  s->emb = 3;
  s->leak = 0.1f;
  assert_int_equal(fl_model_spec_add(s, "a", 1, 2, a), 0);
  assert_int_equal(fl_model_spec_add(s, "b", 2, 1, b), 0);
}

typedef struct {
  fl_model *m;
  fl_ctx *c;
  fl_rng rng;
  int use_block, head;
  float *dout[8], *demb; /* the test models have few modalities */
} fixture;

static size_t mod_size(const fl_model_spec *s, int i) {
  return (size_t)NB * s->mod[i].channels * s->window * s->mod[i].rate;
}

static void fixture_init(fixture *f, int use_block, int head) {
  fl_model_spec s;
  small_spec(&s);
  memset(f, 0, sizeof *f);
  f->use_block = use_block;
  f->head = head;
  assert_int_equal(fl_model_create(&f->m, &s, 7), 0);
  assert_int_equal(fl_ctx_create(&f->c, f->m, NB), 0);
  fl_rng_seed(&f->rng, 99);
  /* The block's last layer starts at zero; give it weights. */
  for (int i = 0; i < fl_model_layer_count(f->m); i++) {
    fl_layer *l = fl_model_layer(f->m, i);
    if (!strcmp(l->name, "block.2")) {
      for (size_t k = 0; k < l->nw; k++) l->w[k] = 0.4f * fl_rng_normal(&f->rng);
      for (size_t k = 0; k < l->nb; k++) l->b[k] = 0.2f * fl_rng_normal(&f->rng);
    }
  }
  for (int i = 0; i < s.n_mod; i++) {
    size_t n = mod_size(&s, i);
    float *x = fl_ctx_input(f->c, i), *mk = fl_ctx_mask(f->c, i);
    f->dout[i] = malloc(sizeof(float) * n);
    assert_non_null(f->dout[i]);
    for (size_t k = 0; k < n; k++) {
      x[k] = fl_rng_normal(&f->rng);
      mk[k] = 1.0f;
      f->dout[i][k] = fl_rng_normal(&f->rng);
    }
  }
  f->demb = malloc(sizeof(float) * NB * s.emb);
  assert_non_null(f->demb);
  for (int k = 0; k < NB * s.emb; k++) f->demb[k] = fl_rng_normal(&f->rng);
  fl_model_spec_free(&s);
}

static void fixture_free(fixture *f) {
  for (int i = 0; i < 8; i++) free(f->dout[i]);
  free(f->demb);
  fl_ctx_free(f->c);
  fl_model_free(f->m);
}

/* The scalar loss of the current parameters, in double. */
static double loss(fixture *f) {
  const fl_model_spec *s = fl_model_spec_of(f->m);
  assert_int_equal(fl_model_forward(f->m, f->c, NB, f->use_block, f->head), 0);
  double L = 0.0;
  if (f->head) {
    const float *e = fl_ctx_embedding(f->c);
    for (int k = 0; k < NB * s->emb; k++) L += (double)f->demb[k] * e[k];
  } else {
    for (int i = 0; i < s->n_mod; i++) {
      const float *o = fl_ctx_output(f->c, i);
      for (size_t k = 0; k < mod_size(s, i); k++) L += (double)f->dout[i][k] * o[k];
    }
  }
  return L;
}

static void backward(fixture *f) {
  const fl_model_spec *s = fl_model_spec_of(f->m);
  assert_int_equal(fl_model_forward(f->m, f->c, NB, f->use_block, f->head), 0);
  fl_model_zero_grad(f->m);
  if (f->head) {
    memcpy(fl_ctx_dembedding(f->c), f->demb, sizeof(float) * NB * s->emb);
    assert_int_equal(fl_model_backward_head(f->m, f->c, NB, 1), 0);
  } else {
    for (int i = 0; i < s->n_mod; i++)
      memcpy(fl_ctx_doutput(f->c, i), f->dout[i], sizeof(float) * mod_size(s, i));
    assert_int_equal(fl_model_backward_recon(f->m, f->c, NB, 1), 0);
  }
}

static double numeric(fixture *f, float *p, float eps) {
  float keep = *p;
  *p = keep + eps;
  float up = *p;
  double lp = loss(f);
  *p = keep - eps;
  float dn = *p;
  double lm = loss(f);
  *p = keep;
  return (lp - lm) / ((double)up - dn);
}

static int close_enough(double a, double n, double atol) {
  return fabs(a - n) <= atol + 5e-2 * fabs(n);
}

/* Checks every parameter of the layers of the modules in `check`; those of
 * the modules in `zero` must have exactly zero gradient and no effect on L
 * (they are not on the path).  Returns the parameters checked. */
static int check_layers(fixture *f, unsigned check, unsigned zero) {
  int checked = 0, bad = 0;
  for (int i = 0; i < fl_model_layer_count(f->m); i++) {
    fl_layer *l = fl_model_layer(f->m, i);
    unsigned bit = 1u << l->module;
    for (int wb = 0; wb < 2; wb++) {
      float *w = wb ? l->b : l->w, *g = wb ? l->gb : l->gw;
      size_t n = wb ? l->nb : l->nw;
      for (size_t k = 0; k < n; k++) {
        if (zero & bit) {
          assert_true(g[k] == 0.0f);
          continue;
        }
        if (!(check & bit)) continue;
        double a = g[k], num = numeric(f, &w[k], 1e-2f);
        if (!close_enough(a, num, 1e-2)) {
          double num2 = numeric(f, &w[k], 1e-3f);
          if (!close_enough(a, num2, 3e-2)) {
            print_error("%s %s[%zu]: analytic %.6f numeric %.6f (eps 1e-2) %.6f (eps 1e-3)\n",
                        l->name, wb ? "b" : "w", k, a, num, num2);
            bad++;
          }
        }
        checked++;
      }
    }
  }
  assert_int_equal(bad, 0);
  return checked;
}

#define BIT(m) (1u << (m))

/* At every rate the first encoder layer reads, and the last decoder layer
 * writes, every sample of the window: with positive weights, an input that is
 * 1 everywhere gives a non-zero input gradient at every sample, and the
 * decoder's output (bias 0) is non-zero at every sample. */
static void test_every_sample_covered(void **state) {
  (void)state;
  for (int r = 1; r <= 12; r++) {
    fl_model_spec s;
    fl_model_spec_defaults(&s);
    const char *names[] = {"a"};
    assert_int_equal(fl_model_spec_add(&s, "m", r, 1, names), 0);
    fl_model *m;
    fl_ctx *c;
    assert_int_equal(fl_model_create(&m, &s, 1), 0);
    assert_int_equal(fl_ctx_create(&c, m, 1), 0);
    for (int i = 0; i < fl_model_layer_count(m); i++) {
      fl_layer *l = fl_model_layer(m, i);
      for (size_t k = 0; k < l->nw; k++) l->w[k] = 0.01f;
      for (size_t k = 0; k < l->nb; k++) l->b[k] = 0.0f;
    }
    int T = s.window * r;
    for (int t = 0; t < T; t++) fl_ctx_input(c, 0)[t] = 1.0f;
    assert_int_equal(fl_model_forward(m, c, 1, 0, 0), 0);
    for (int t = 0; t < T; t++) assert_true(fl_ctx_output(c, 0)[t] > 0.0f);
    /* The encoder's first layer: its data gradient for dy = 1 everywhere. */
    fl_layer *e0 = fl_model_layer(m, 0);
    int tout = fl_conv1d_len(&e0->conv, T);
    assert_int_equal(tout, s.window / 2);
    float *dy = malloc(sizeof(float) * e0->conv.cout * tout), *dx = malloc(sizeof(float) * T);
    for (int k = 0; k < e0->conv.cout * tout; k++) dy[k] = 1.0f;
    assert_int_equal(fl_conv1d_backward(dx, NULL, NULL, dy, NULL, e0->w, &e0->conv, 1, T, NULL), 0);
    for (int t = 0; t < T; t++) assert_true(dx[t] > 0.0f);
    free(dy);
    free(dx);
    fl_ctx_free(c);
    fl_model_free(m);
    fl_model_spec_free(&s);
  }
}

/* Modalities whose names are as long as a name may be, alike but for the
 * last character, get layers of distinct, whole names (a layer's name is
 * longer than its modality's). */
static void test_layer_names_of_long_modalities(void **state) {
  (void)state;
  char a[FL_NAME_MAX], b[FL_NAME_MAX];
  memset(a, 'x', FL_NAME_MAX - 1);
  a[FL_NAME_MAX - 1] = '\0';
  memcpy(b, a, sizeof b);
  b[FL_NAME_MAX - 2] = 'y';
  fl_model_spec s;
  fl_model_spec_defaults(&s);
  const char *ca[] = {"c0"}, *cb[] = {"c1"};
  assert_int_equal(fl_model_spec_add(&s, a, 1, 1, ca), 0);
  assert_int_equal(fl_model_spec_add(&s, b, 1, 1, cb), 0);
  fl_model *m;
  assert_int_equal(fl_model_create(&m, &s, 1), 0);
  int n = fl_model_layer_count(m);
  for (int i = 0; i < n; i++) {
    const char *x = fl_model_layer(m, i)->name;
    if (fl_model_layer(m, i)->modality >= 0) assert_true(strstr(x, fl_model_layer(m, i)->modality ? b : a) != NULL);
    for (int j = 0; j < i; j++) assert_string_not_equal(x, fl_model_layer(m, j)->name);
  }
  fl_model_free(m);
  fl_model_spec_free(&s);
}

/* A spec's channel count sums its modalities' channels, follows added
 * channels, and agrees with the count of the model made from it. */
static void test_spec_channels(void **state) {
  (void)state;
  fl_model_spec s;
  fl_model_spec_defaults(&s);
  assert_int_equal(fl_model_spec_channels(&s), 0);
  assert_int_equal(fl_model_spec_channels(NULL), FL_EINVAL);
  small_spec(&s); /* a: 2 channels at rate 1, b: 1 at rate 2 */
  assert_int_equal(fl_model_spec_channels(&s), 3);
  fl_model *m;
  assert_int_equal(fl_model_create(&m, &s, 1), 0);
  assert_int_equal(fl_model_spec_channels(fl_model_spec_of(m)), fl_model_channels(m));
  fl_model_free(m);
  assert_int_equal(fl_model_spec_add_channel(&s, 1, "b1"), 0);
  assert_int_equal(fl_model_spec_channels(&s), 4);
  const char *c[] = {"c0", "c1", "c2", "c3", "c4"};
  assert_int_equal(fl_model_spec_add(&s, "c", 3, 5, c), 0);
  assert_int_equal(fl_model_spec_channels(&s), 9);
  fl_model_spec_free(&s);
  assert_int_equal(fl_model_spec_channels(&s), 0);
}

static void test_grad_recon_block(void **state) {
  (void)state;
  fixture f;
  fixture_init(&f, 1, 0);
  backward(&f);
  /* Every layer on the path must receive some gradient. */
  for (int i = 0; i < fl_model_layer_count(f.m); i++) {
    fl_layer *l = fl_model_layer(f.m, i);
    if (l->module == FL_MOD_HEAD) continue;
    double s = 0;
    for (size_t k = 0; k < l->nw; k++) s += fabs(l->gw[k]);
    assert_true(s > 0.0);
  }
  int n = check_layers(&f, BIT(FL_MOD_ENC) | BIT(FL_MOD_DEC) | BIT(FL_MOD_BLOCK),
                       BIT(FL_MOD_HEAD));
  assert_true(n > 300);
  fixture_free(&f);
}

static void test_grad_recon_no_block(void **state) {
  (void)state;
  fixture f;
  fixture_init(&f, 0, 0);
  backward(&f);
  check_layers(&f, BIT(FL_MOD_ENC) | BIT(FL_MOD_DEC), BIT(FL_MOD_BLOCK) | BIT(FL_MOD_HEAD));
  /* With the block bypassed, its parameters do not change the output. */
  fl_layer *b0 = NULL;
  for (int i = 0; i < fl_model_layer_count(f.m); i++)
    if (fl_model_layer(f.m, i)->module == FL_MOD_BLOCK) b0 = fl_model_layer(f.m, i);
  assert_non_null(b0);
  double l0 = loss(&f);
  b0->w[0] += 1.0f;
  assert_true(loss(&f) == l0);
  fixture_free(&f);
}

static void test_grad_head(void **state) {
  (void)state;
  fixture f;
  fixture_init(&f, 1, 1);
  backward(&f);
  int n = check_layers(&f, BIT(FL_MOD_ENC) | BIT(FL_MOD_HEAD),
                       BIT(FL_MOD_DEC) | BIT(FL_MOD_BLOCK));
  assert_true(n > 200);
  fixture_free(&f);
}

static void test_project(void **state) {
  (void)state;
  fl_model_spec s;
  small_spec(&s);
  for (int k = 0; k < FL_MOD_COUNT; k++) s.target[k] = 0.5f;
  fl_model *m;
  assert_int_equal(fl_model_create(&m, &s, 3), 0);
  /* Random init puts some layers above 0.5, or the test proves nothing. */
  int above = 0;
  for (int i = 0; i < fl_model_layer_count(m); i++) {
    float sg;
    assert_int_equal(fl_model_layer_norm(m, i, &sg), 0);
    above += sg > 0.5f;
  }
  assert_true(above >= 4);
  for (int mod = 0; mod < FL_MOD_COUNT; mod++) {
    float worst = -1;
    assert_int_equal(fl_model_project(m, (fl_module)mod, &worst), 0);
    assert_true(worst <= 0.5f * 1.01f);
  }
  for (int i = 0; i < fl_model_layer_count(m); i++) {
    float sg;
    assert_int_equal(fl_model_layer_norm(m, i, &sg), 0);
    if (!(sg <= 0.5f * 1.01f)) print_error("%s: %g\n", fl_model_layer(m, i)->name, sg);
    assert_true(sg <= 0.5f * 1.01f);
  }
  fl_model_free(m);
  fl_model_spec_free(&s);
}

/* A table with columns a, b.0, b.1 (and a spare) for modality "a" at rate 1
 * and "b" at rate 2. */
static void make_table(fl_table *t, int rows) {
  memset(t, 0, sizeof *t);
  assert_int_equal(fl_table_alloc(t, rows, 4), 0);
  const char *names[] = {"spare", "b.1", "a", "b.0"};
  for (int c = 0; c < 4; c++) assert_int_equal(fl_table_set_name(t, c, names[c]), 0);
  for (int r = 0; r < rows; r++) {
    t->data[r * 4 + 0] = -1.0f;
    t->data[r * 4 + 1] = 100.0f + 2 * r + 1;
    t->data[r * 4 + 2] = (float)r;
    t->data[r * 4 + 3] = 100.0f + 2 * r;
  }
}

static void series_spec(fl_model_spec *s, const char *bname) {
  static const char *a[] = {"a"};
  const char *b[] = {bname};
  fl_model_spec_defaults(s);
  s->window = 8;
  assert_int_equal(fl_model_spec_add(s, "ma", 1, 1, a), 0);
  assert_int_equal(fl_model_spec_add(s, "mb", 2, 1, b), 0);
}

static void test_series_from_table(void **state) {
  (void)state;
  fl_table t;
  make_table(&t, 12);
  fl_model_spec s;
  series_spec(&s, "b");
  fl_series ser;
  char err[256] = "";
  assert_int_equal(fl_series_from_table(&ser, &s, &t, err, sizeof err), 0);
  assert_int_equal(ser.rows, 12);
  assert_int_equal(ser.n_mod, 2);
  for (int r = 0; r < 12; r++) assert_true(ser.x[0][r] == (float)r);
  for (int k = 0; k < 24; k++) assert_true(ser.x[1][k] == 100.0f + k);

  float ra[8], rb[16];
  float *raw[] = {ra, rb};
  assert_int_equal(fl_series_window(&ser, &s, 10, raw), 0);
  for (int k = 0; k < 8; k++) assert_true(ra[k] == (float)(2 + k));
  for (int k = 0; k < 16; k++) assert_true(rb[k] == 104.0f + k);
  assert_int_equal(fl_series_window(&ser, &s, 7, raw), FL_EINVAL);
  assert_int_equal(fl_series_window(&ser, &s, 13, raw), FL_EINVAL);
  fl_series_free(&ser);

  /* A missing column is named. */
  fl_model_spec s2;
  series_spec(&s2, "zeta");
  err[0] = 0;
  assert_int_equal(fl_series_from_table(&ser, &s2, &t, err, sizeof err), FL_ENOTFOUND);
  assert_non_null(strstr(err, "zeta.0"));
  fl_series_free(&ser);
  fl_table_free(&t);
  fl_model_spec_free(&s);
  fl_model_spec_free(&s2);
}

static void test_normalise(void **state) {
  (void)state;
  fl_model_spec s;
  series_spec(&s, "b");
  s.mod[0].drifts = 1;
  fl_model *m;
  fl_ctx *c;
  assert_int_equal(fl_model_create(&m, &s, 1), 0);
  assert_int_equal(fl_ctx_create(&c, m, 2), 0);
  fl_model_mean(m)[0] = 10.0f;
  fl_model_std(m)[0] = 2.0f;
  fl_model_mean(m)[1] = -5.0f;
  fl_model_std(m)[1] = 0.5f;
  float ra[8], rb[16];
  for (int k = 0; k < 8; k++) ra[k] = 10.0f + 2.0f * k; /* standardised: k */
  ra[3] = NAN;
  for (int k = 0; k < 16; k++) rb[k] = -5.0f + 0.5f * (k - 8); /* standardised: k - 8 */
  rb[5] = NAN;
  rb[0] = 1000.0f; /* clamped */
  assert_int_equal(fl_model_normalise(m, c, 1, 0, ra, 10.0f), 0);
  assert_int_equal(fl_model_normalise(m, c, 1, 1, rb, 10.0f), 0);

  /* Drifting modality: the least-squares line through the present
   * standardised values (here exactly x = k) is removed; slot 1's trend is
   * (intercept at the window centre 3.5, slope 1). */
  const float *x = fl_ctx_input(c, 0) + 8, *mk = fl_ctx_mask(c, 0) + 8;
  assert_float_equal(fl_ctx_level(c, 0)[2], 3.5, 1e-5);
  assert_float_equal(fl_ctx_level(c, 0)[3], 1.0, 1e-5);
  for (int k = 0; k < 8; k++) {
    if (k == 3) {
      assert_true(x[k] == 0.0f);
      assert_true(mk[k] == 0.0f);
    } else {
      assert_float_equal(x[k], 0.0, 1e-5);
      assert_true(mk[k] == 1.0f);
    }
  }
  /* Not drifting: level 0, values standardised, clamped, NaN -> 0 / mask 0. */
  x = fl_ctx_input(c, 1) + 16;
  mk = fl_ctx_mask(c, 1) + 16;
  assert_true(fl_ctx_level(c, 1)[2] == 0.0f && fl_ctx_level(c, 1)[3] == 0.0f);
  assert_float_equal(x[0], 10.0f, 1e-6);
  for (int k = 1; k < 16; k++) {
    if (k == 5) {
      assert_true(x[k] == 0.0f && mk[k] == 0.0f);
    } else {
      assert_float_equal(x[k], k - 8, 1e-5);
      assert_true(mk[k] == 1.0f);
    }
  }
  /* Out-of-range slot and modality. */
  assert_int_equal(fl_model_normalise(m, c, 2, 0, ra, 10.0f), FL_EINVAL);
  assert_int_equal(fl_model_normalise(m, c, 0, 2, ra, 10.0f), FL_EINVAL);
  fl_ctx_free(c);
  fl_model_free(m);
  fl_model_spec_free(&s);
}

/* Largest |a - b| / (1 + |b|) over n floats. */
static double max_rel_diff(const float *a, const float *b, size_t n) {
  double m = 0.0;
  for (size_t i = 0; i < n; i++) {
    double d = fabs((double)a[i] - b[i]) / (1.0 + fabs((double)b[i]));
    if (!(d <= m)) m = d; /* NaN wins */
  }
  return m;
}

/* A forward-only context gives what a training context gives (with and
 * without the block, with the head, and from the latent), keeps nothing for
 * a backward pass, and refuses one.  The encoders' latent is the same bit
 * for bit; what passes a dense layer (z', the outputs, the embedding) may
 * differ by rounding, because the forward-only context's dense layers
 * (fl_dense_infer) add the same products in another order than sgemm.  The
 * tolerance, 1e-5 of 1 + |value|, is about 170 units of float's rounding:
 * the dense sums here have at most 16 terms (their own bound in test_nn is
 * below 1e-5 of their terms' absolute sum), and the layers after them carry
 * the difference at their gain.  A wrong layer or buffer gives differences
 * of the order of the values. */
static void test_ctx_infer(void **state) {
  (void)state;
  fixture f;
  fixture_init(&f, 1, 1);
  const fl_model_spec *s = fl_model_spec_of(f.m);
  fl_ctx *ci;
  assert_int_equal(fl_ctx_create_infer(&ci, f.m, NB), 0);
  for (int i = 0; i < s->n_mod; i++)
    memcpy(fl_ctx_input(ci, i), fl_ctx_input(f.c, i), sizeof(float) * mod_size(s, i));
  int Z = fl_model_latent_size(f.m);
  for (int pass = 0; pass < 3; pass++) {
    int blk = pass != 1, lat = pass == 2;
    int (*fwd)(fl_model *, fl_ctx *, int, int, int) =
        lat ? fl_model_forward_latent : fl_model_forward;
    assert_int_equal(fwd(f.m, f.c, NB, blk, 1), 0);
    assert_int_equal(fwd(f.m, ci, NB, blk, 1), 0);
    double worst = 0.0, d;
    for (int i = 0; i < s->n_mod; i++)
      if ((d = max_rel_diff(fl_ctx_output(ci, i), fl_ctx_output(f.c, i), mod_size(s, i))) > worst)
        worst = d;
    assert_memory_equal(fl_ctx_latent(ci), fl_ctx_latent(f.c), sizeof(float) * NB * Z);
    if ((d = max_rel_diff(fl_ctx_latent2(ci), fl_ctx_latent2(f.c), (size_t)NB * Z)) > worst)
      worst = d;
    if ((d = max_rel_diff(fl_ctx_embedding(ci), fl_ctx_embedding(f.c), (size_t)NB * s->emb)) >
        worst)
      worst = d;
    printf("infer context, pass %d: largest difference %.3g of 1 + |value|\n", pass, worst);
    assert_true(worst <= 1e-5);
  }
  assert_null(fl_ctx_preact(ci, f.m, 0));
  assert_null(fl_ctx_doutput(ci, 0));
  assert_null(fl_ctx_dembedding(ci));
  assert_int_equal(fl_model_backward_recon(f.m, ci, NB, 1), FL_EINVAL);
  assert_int_equal(fl_model_backward_head(f.m, ci, NB, 1), FL_EINVAL);
  fl_ctx *bad = NULL;
  assert_int_equal(fl_ctx_create_infer(&bad, f.m, 0), FL_EINVAL);
  fl_ctx_free(ci);
  fixture_free(&f);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_every_sample_covered),
      cmocka_unit_test(test_layer_names_of_long_modalities),
      cmocka_unit_test(test_spec_channels),
      cmocka_unit_test(test_grad_recon_block),
      cmocka_unit_test(test_grad_recon_no_block),
      cmocka_unit_test(test_grad_head),
      cmocka_unit_test(test_project),
      cmocka_unit_test(test_series_from_table),
      cmocka_unit_test(test_normalise),
      cmocka_unit_test(test_ctx_infer),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
