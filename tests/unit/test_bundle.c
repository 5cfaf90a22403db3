/* Unit tests for model files (lib/bundle.c) and an end-to-end smoke test of
 * train -> calibrate -> scan on a small simulated-like recording. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "faultline/bundle.h"
#include "faultline/error.h"
#include "faultline/safetensors.h"
#include "faultline/scan.h"
#include "faultline/train.h"

static void small_spec(fl_model_spec *s) {
  static const char *a[] = {"m0", "m1"}, *b[] = {"e0"};
  fl_model_spec_defaults(s);
  s->window = 16;
  s->enc1 = 4;
  s->enc2 = 8;
  s->hidden = 16;
  s->head_hidden = 16;
  s->emb = 8;
  assert_int_equal(fl_model_spec_add(s, "mech", 1, 2, a), 0);
  assert_int_equal(fl_model_spec_add(s, "elec", 2, 1, b), 0);
  s->mod[1].drifts = 1;
  s->target[FL_MOD_BLOCK] = 0.8f;
}

static void tmp_path(char *path, size_t n) {
  snprintf(path, n, "/tmp/fl_test_bundle_XXXXXX");
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  close(fd);
}

static unsigned char *read_all(const char *path, size_t *n) {
  FILE *f = fopen(path, "rb");
  assert_non_null(f);
  fseek(f, 0, SEEK_END);
  long len = ftell(f);
  fseek(f, 0, SEEK_SET);
  unsigned char *buf = malloc(len);
  assert_non_null(buf);
  assert_int_equal(fread(buf, 1, len, f), (size_t)len);
  fclose(f);
  *n = (size_t)len;
  return buf;
}

static void write_all(const char *path, const unsigned char *buf, size_t n) {
  FILE *f = fopen(path, "wb");
  assert_non_null(f);
  assert_int_equal(fwrite(buf, 1, n, f), n);
  fclose(f);
}

static void make_bundle(fl_bundle *b) {
  fl_model_spec s;
  small_spec(&s);
  memset(b, 0, sizeof *b);
  assert_int_equal(fl_model_create(&b->model, &s, 11), 0);
  int nch = fl_model_channels(b->model);
  assert_int_equal(fl_calib_alloc(&b->calib, nch), 0);
  for (int c = 0; c < nch; c++) {
    fl_model_mean(b->model)[c] = 1.5f * c - 2.0f;
    fl_model_std(b->model)[c] = 0.25f + c;
    b->calib.res_mu[c] = 0.1f * c;
    b->calib.res_sd[c] = 1.0f + 0.2f * c;
    b->calib.var_mu[c] = -0.3f * c;
    b->calib.var_sd[c] = 2.0f + c;
  }
  b->calib.nch = nch;
  b->calib.emb = s.emb;
  for (int k = 0; k < s.emb; k++) b->calib.centroid[k] = 0.125f * k - 0.5f;
  b->calib.emb_mu = 0.3f;
  b->calib.emb_sd = 0.07f;
  b->calib.threshold = 4.25f;
  b->calib.chan_threshold = 3.5f;
  b->calib.tail = 6;
  b->calib.w_emb = 0.0f;
  b->calib.w_var = 0.5f;
  fl_detect_defaults(&b->detect);
  b->detect.tail = 6;
  b->detect.quantile = 0.97f;
  b->detect.margin = 1.1f;
  b->detect.on = 4;
  b->detect.off = 5;
  b->detect.w_emb = 0.0f;
  b->clamp = 8.0f;
  snprintf(b->lineage, sizeof b->lineage, "{\"base\":\"test\"}");
  fl_model_spec_free(&s);
}

static void test_roundtrip(void **state) {
  (void)state;
  fl_bundle b, r;
  char path[64], err[512] = "";
  make_bundle(&b);
  tmp_path(path, sizeof path);
  int rc = fl_bundle_save(&b, path, err, sizeof err);
  if (rc) print_error("%s\n", err);
  assert_int_equal(rc, 0);
  rc = fl_bundle_load(&r, path, err, sizeof err);
  if (rc) print_error("%s\n", err);
  assert_int_equal(rc, 0);

  size_t np = fl_model_param_count(b.model);
  assert_int_equal(fl_model_param_count(r.model), np);
  assert_memory_equal(fl_model_param_block(r.model), fl_model_param_block(b.model),
                      np * sizeof(float));
  int nch = fl_model_channels(b.model);
  assert_int_equal(fl_model_channels(r.model), nch);
  assert_memory_equal(fl_model_mean(r.model), fl_model_mean(b.model), nch * sizeof(float));
  assert_memory_equal(fl_model_std(r.model), fl_model_std(b.model), nch * sizeof(float));
  assert_int_equal(r.calib.nch, nch);
  assert_int_equal(r.calib.emb, b.calib.emb);
  assert_memory_equal(r.calib.res_mu, b.calib.res_mu, nch * sizeof(float));
  assert_memory_equal(r.calib.res_sd, b.calib.res_sd, nch * sizeof(float));
  assert_memory_equal(r.calib.var_mu, b.calib.var_mu, nch * sizeof(float));
  assert_memory_equal(r.calib.var_sd, b.calib.var_sd, nch * sizeof(float));
  assert_memory_equal(r.calib.centroid, b.calib.centroid, b.calib.emb * sizeof(float));
  assert_float_equal(r.calib.emb_mu, b.calib.emb_mu, 1e-6);
  assert_float_equal(r.calib.emb_sd, b.calib.emb_sd, 1e-6);
  assert_float_equal(r.calib.threshold, b.calib.threshold, 1e-6);
  assert_float_equal(r.calib.chan_threshold, b.calib.chan_threshold, 1e-6);
  assert_float_equal(r.calib.w_emb, b.calib.w_emb, 1e-6);
  assert_float_equal(r.calib.w_var, b.calib.w_var, 1e-6);
  assert_int_equal(r.calib.tail, b.calib.tail);
  assert_int_equal(r.detect.tail, b.calib.tail);
  assert_float_equal(r.detect.quantile, b.detect.quantile, 1e-6);
  assert_float_equal(r.detect.margin, b.detect.margin, 1e-6);
  assert_int_equal(r.detect.on, b.detect.on);
  assert_int_equal(r.detect.off, b.detect.off);
  assert_float_equal(r.clamp, b.clamp, 1e-6);
  assert_string_equal(r.lineage, b.lineage);
  /* Without an estimator the file has none, and the load says so. */
  assert_int_equal(r.est.on, 0);

  const fl_model_spec *s = fl_model_spec_of(b.model), *t = fl_model_spec_of(r.model);
  assert_int_equal(t->n_mod, s->n_mod);
  assert_int_equal(t->window, s->window);
  assert_int_equal(t->enc1, s->enc1);
  assert_int_equal(t->enc2, s->enc2);
  assert_int_equal(t->kernel, s->kernel);
  assert_int_equal(t->hidden, s->hidden);
  assert_int_equal(t->head_hidden, s->head_hidden);
  assert_int_equal(t->emb, s->emb);
  assert_float_equal(t->leak, s->leak, 1e-7);
  for (int k = 0; k < FL_MOD_COUNT; k++) assert_float_equal(t->target[k], s->target[k], 1e-6);
  for (int i = 0; i < s->n_mod; i++) {
    assert_string_equal(t->mod[i].name, s->mod[i].name);
    assert_int_equal(t->mod[i].rate, s->mod[i].rate);
    assert_int_equal(t->mod[i].drifts, s->mod[i].drifts);
    assert_int_equal(t->mod[i].channels, s->mod[i].channels);
    for (int c = 0; c < s->mod[i].channels; c++)
      assert_string_equal(t->mod[i].channel[c], s->mod[i].channel[c]);
  }
  assert_int_equal(t->mod[1].drifts, 1);
  fl_bundle_free(&r);
  fl_bundle_free(&b);
  remove(path);
}

/* The estimator's tensors round-trip when present. */
static void test_roundtrip_estimator(void **state) {
  (void)state;
  fl_bundle b, r;
  char path[64], err[512] = "";
  make_bundle(&b);
  int nch = fl_model_channels(b.model);
  assert_int_equal(fl_estimator_alloc(&b.est, nch), 0);
  b.est.on = 1;
  for (int k = 0; k < nch; k++) {
    b.est.vm[k] = 0.5f + k;
    b.est.vmw[k] = 0.75f + k;
    b.est.alpha[k] = 1.0f / (float)(1 << (k % 4));
    for (int j = 0; j < nch; j++) b.est.w[k * nch + j] = j == k ? 0.0f : 0.1f * (j - k);
    for (int l = 0; l < FL_ESTIMATE_LAGS; l++) b.est.v[k * FL_ESTIMATE_LAGS + l] = 0.01f * (l + 1);
  }
  tmp_path(path, sizeof path);
  assert_int_equal(fl_bundle_save(&b, path, err, sizeof err), 0);
  int rc = fl_bundle_load(&r, path, err, sizeof err);
  if (rc) print_error("%s\n", err);
  assert_int_equal(rc, 0);
  assert_int_equal(r.est.on, 1);
  assert_int_equal(r.est.nch, nch);
  assert_memory_equal(r.est.w, b.est.w, sizeof(float) * nch * nch);
  assert_memory_equal(r.est.v, b.est.v, sizeof(float) * nch * FL_ESTIMATE_LAGS);
  assert_memory_equal(r.est.vm, b.est.vm, sizeof(float) * nch);
  assert_memory_equal(r.est.vmw, b.est.vmw, sizeof(float) * nch);
  assert_memory_equal(r.est.alpha, b.est.alpha, sizeof(float) * nch);
  /* Without the kernel's tensors (a model from before it): no memory. */
  assert_int_equal(r.est.nmem, 0);
  fl_bundle_free(&r);
  /* With them: the memory, bandwidths and variances come back. */
  assert_int_equal(fl_estimator_alloc_memory(&b.est, 3), 0);
  for (int j = 0; j < 3 * nch; j++) b.est.mem[j] = 0.25f * (float)(j % 7) - 0.5f;
  for (int k = 0; k < nch; k++) {
    b.est.h[k] = 0.5f + 0.1f * k;
    b.est.va[k] = 0.2f + 0.01f * k;
  }
  assert_int_equal(fl_bundle_save(&b, path, err, sizeof err), 0);
  rc = fl_bundle_load(&r, path, err, sizeof err);
  if (rc) print_error("%s\n", err);
  assert_int_equal(rc, 0);
  assert_int_equal(r.est.nmem, 3);
  assert_memory_equal(r.est.mem, b.est.mem, sizeof(float) * 3 * nch);
  assert_memory_equal(r.est.h, b.est.h, sizeof(float) * nch);
  assert_memory_equal(r.est.va, b.est.va, sizeof(float) * nch);
  fl_bundle_free(&r);
  fl_bundle_free(&b);
  remove(path);
}

static void expect_load_fails(const char *path, const char *what, size_t at) {
  fl_bundle r;
  char err[512];
  memset(err, 0, sizeof err);
  int rc = fl_bundle_load(&r, path, err, sizeof err);
  if (rc >= 0 || !err[0]) print_error("%s at %zu: rc %d err \"%s\"\n", what, at, rc, err);
  assert_true(rc < 0);
  assert_true(err[0] != 0);
  assert_null(r.model);
  fl_bundle_free(&r);
}

static void test_corrupt(void **state) {
  (void)state;
  fl_bundle b;
  char path[64], bad[64], err[512] = "";
  make_bundle(&b);
  tmp_path(path, sizeof path);
  tmp_path(bad, sizeof bad);
  assert_int_equal(fl_bundle_save(&b, path, err, sizeof err), 0);
  size_t n;
  unsigned char *buf = read_all(path, &n);
  uint64_t hlen = 0;
  for (int k = 7; k >= 0; k--) hlen = hlen << 8 | buf[k];
  assert_true(hlen > 100 && 8 + hlen < n);

  /* Truncations: inside the length prefix, the header and the data. */
  size_t cuts[] = {0, 1, 7, 8, 9, 8 + hlen / 2, 8 + hlen - 1, 8 + hlen, 8 + hlen + 3,
                   (8 + hlen + n) / 2, n - 4, n - 1};
  for (size_t i = 0; i < sizeof cuts / sizeof *cuts; i++) {
    write_all(bad, buf, cuts[i]);
    expect_load_fails(bad, "truncated", cuts[i]);
  }
  /* The length prefix: too long, too short, absurd. */
  unsigned char *cp = malloc(n);
  assert_non_null(cp);
  for (int k = 0; k < 8; k++) {
    memcpy(cp, buf, n);
    cp[k] ^= 0xFF;
    write_all(bad, cp, n);
    expect_load_fails(bad, "length byte flipped", (size_t)k);
  }
  /* Every byte of the JSON header replaced by a control character, which
   * JSON allows nowhere (not even inside strings). */
  for (size_t k = 8; k < 8 + hlen; k += 7) {
    memcpy(cp, buf, n);
    cp[k] = 0x01;
    write_all(bad, cp, n);
    expect_load_fails(bad, "header byte", k);
  }
  free(cp);
  free(buf);

  /* A valid safetensors file that is not a faultline model. */
  fl_st *st = fl_st_new();
  assert_non_null(st);
  float w[6] = {1, 2, 3, 4, 5, 6};
  int64_t shape[2] = {2, 3};
  assert_int_equal(fl_st_add(st, "enc.mech.0.weight", w, shape, 2), 0);
  assert_int_equal(fl_st_set_meta(st, "format", "pt"), 0);
  assert_int_equal(fl_st_write(st, bad, err, sizeof err), 0);
  fl_st_free(st);
  fl_bundle r;
  err[0] = 0;
  assert_int_equal(fl_bundle_load(&r, bad, err, sizeof err), FL_EMISMATCH);
  assert_true(err[0] != 0);
  assert_null(r.model);
  remove(bad);
  remove(path);
  fl_bundle_free(&b);
}

/* ---- end to end ------------------------------------------------------- */

#define ROWS 600

/* Columns m0, m1 (mech, rate 1) and e0.0, e0.1 (elec, rate 2). */
static void make_table(fl_table *t, uint64_t seed) {
  memset(t, 0, sizeof *t);
  assert_int_equal(fl_table_alloc(t, ROWS, 4), 0);
  const char *names[] = {"m0", "m1", "e0.0", "e0.1"};
  for (int c = 0; c < 4; c++) assert_int_equal(fl_table_set_name(t, c, names[c]), 0);
  fl_rng r;
  fl_rng_seed(&r, seed);
  for (int i = 0; i < ROWS; i++) {
    float ph = 2.0f * 3.14159265f * i / 25.0f;
    t->data[i * 4 + 0] = 5.0f + 2.0f * sinf(ph) + 0.1f * fl_rng_normal(&r);
    t->data[i * 4 + 1] = -1.0f + 1.0f * cosf(ph) + 0.1f * fl_rng_normal(&r);
    for (int k = 0; k < 2; k++) {
      float ph2 = 2.0f * 3.14159265f * (2 * i + k) / 30.0f;
      t->data[i * 4 + 2 + k] = 20.0f + 3.0f * sinf(ph2) + 0.2f * fl_rng_normal(&r);
    }
  }
}

typedef struct {
  float val[8];
  int n;
} progress;

static void on_progress(const fl_train_progress *p, void *user) {
  progress *pr = user;
  if (p->stage == 1 && pr->n < 8) pr->val[pr->n++] = p->val_loss;
}

static int cmpf(const void *a, const void *b) {
  float x = *(const float *)a, y = *(const float *)b;
  return (x > y) - (x < y);
}

static void test_end_to_end(void **state) {
  (void)state;
  fl_model_spec s;
  small_spec(&s);
  s.mod[1].drifts = 0;
  fl_table t;
  make_table(&t, 5);
  fl_series ser;
  char err[256] = "";
  assert_int_equal(fl_series_from_table(&ser, &s, &t, err, sizeof err), 0);

  fl_train_config cfg;
  fl_train_defaults(&cfg);
  cfg.epochs1 = 3;
  cfg.epochs2 = 2;
  cfg.batch = 16;
  cfg.stride = 2;
  fl_bundle b;
  memset(&b, 0, sizeof b);
  assert_int_equal(fl_model_create(&b.model, &s, 3), 0);
  assert_int_equal(fl_train_normalise(b.model, &ser, 1, &cfg), 0);
  progress pr = {{0}, 0};
  assert_int_equal(fl_train_stage1(b.model, &ser, 1, &cfg, on_progress, &pr), 0);
  assert_int_equal(pr.n, 3);
  print_message("stage-1 val loss %g -> %g\n", pr.val[0], pr.val[pr.n - 1]);
  assert_true(pr.val[pr.n - 1] < pr.val[0]);
  assert_int_equal(fl_train_stage2(b.model, &ser, 1, &cfg, NULL, NULL), 0);

  fl_detect_defaults(&b.detect);
  b.detect.tail = 8;
  assert_int_equal(fl_detect_calibrate(b.model, &b.calib, &ser, 1, &cfg, &b.detect), 0);
  b.clamp = cfg.clamp;
  assert_true(isfinite(b.calib.threshold) && b.calib.threshold > 0.0f);

  fl_scan_result clean, dirty;
  assert_int_equal(fl_scan(&b, &ser, 1, &clean), 0);
  float *sc = malloc(sizeof(float) * ROWS);
  int ns = 0;
  for (int r = s.window; r < ROWS - 100; r++)
    if (isfinite(clean.score[r])) sc[ns++] = clean.score[r];
  assert_true(ns > 400);
  qsort(sc, ns, sizeof(float), cmpf);
  float med = sc[ns / 2];

  /* A 20-sd step on m0 over the last 100 rows. */
  float sd = fl_model_std(b.model)[0];
  for (int r = ROWS - 100; r < ROWS; r++) t.data[r * 4 + 0] += 20.0f * sd;
  fl_series ser2;
  assert_int_equal(fl_series_from_table(&ser2, &s, &t, err, sizeof err), 0);
  assert_int_equal(fl_scan(&b, &ser2, 1, &dirty), 0);
  /* Rows whose window tail lies wholly inside the step. */
  int flagged = 0, right = 0, nd = 0;
  for (int r = ROWS - 100 + b.calib.tail; r < ROWS; r++) {
    sc[nd++] = dirty.score[r];
    if (dirty.flag[r]) {
      flagged++;
      right += dirty.modality[r] == 0;
    }
  }
  qsort(sc, nd, sizeof(float), cmpf);
  print_message("clean median %g, threshold %g, step median %g, flagged %d/%d, right %d\n",
                med, b.calib.threshold, sc[nd / 2], flagged, nd, right);
  /* Scores are z-scores of log features, so a 20-sd step lands near 10, not
   * near 400: far above means several times the clean median and twice the
   * threshold. */
  assert_true(sc[nd / 2] > 3.0f * fabsf(med) && sc[nd / 2] > med + 4.0f);
  assert_true(sc[nd / 2] > 2.0f * b.calib.threshold);
  assert_true(flagged > nd / 2);
  assert_int_equal(right, flagged);
  /* Before the step the two scans agree (the scan is causal). */
  for (int r = 0; r < ROWS - 100; r++)
    assert_true(isnan(clean.score[r]) ? isnan(dirty.score[r])
                                      : clean.score[r] == dirty.score[r]);
  free(sc);
  fl_scan_free(&clean);
  fl_scan_free(&dirty);
  fl_series_free(&ser);
  fl_series_free(&ser2);
  fl_table_free(&t);
  fl_bundle_free(&b);
  fl_model_spec_free(&s);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_roundtrip),
      cmocka_unit_test(test_roundtrip_estimator),
      cmocka_unit_test(test_corrupt),
      cmocka_unit_test(test_end_to_end),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
