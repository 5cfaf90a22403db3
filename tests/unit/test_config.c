/* Unit tests for the configuration reader (lib/config.c) against its contract
 * in faultline/config.h: every key sets its field, errors name their line,
 * and the shipped SKAB configuration loads. */
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

#include "faultline/config.h"
#include "faultline/error.h"
#include "faultline/faults.h"

static const char *full_config =
    "; every key the library reads\n"
    "[model]\n"
    "window = 24\n"
    "enc1 = 6\n"
    "enc2 = 10\n"
    "kernel = 7\n"
    "hidden = 33\n"
    "head_hidden = 17\n"
    "embedding = 9\n"
    "leak = 0.2\n"
    "target_encoder = 1.5\n"
    "target_decoder = 1.25\n"
    "target_block = 0.75\n"
    "target_head = 3.5\n"
    "\n"
    "[train]\n"
    "seed = 12345\n"
    "batch = 20\n"
    "stride = 3\n"
    "val_fraction = 0.3\n"
    "clamp = 7.5\n"
    "patience = 4\n"
    "epochs1 = 11\n"
    "lr1 = 0.004\n"
    "epochs2 = 13\n"
    "lr2 = 0.0005\n"
    "lr_decoder2 = 0.00002\n"
    "p_clean = 0.4\n"
    "temperature = 0.15\n"
    "w_contrast = 0.7\n"
    "clip_encoder = 2.5\n"
    "clip_decoder = 3.5\n"
    "clip_block = 4.5\n"
    "clip_head = 5.5\n"
    "faults = step, spike ,stuck\n"
    "\n"
    "[detect]\n"
    "tail = 10\n"
    "quantile = 0.95\n"
    "margin = 1.2\n"
    "channel_quantile = 0.9\n"
    "embedding_weight = 0\n"
    "min_spread = 0.4\n"
    "variance_weight = 0\n"
    "correction_weight = 1\n"
    "calibrate_all = 0\n"
    "hysteresis_on = 4\n"
    "hysteresis_off = 6\n"
    "\n"
    "[modality.mech]\n"
    "rate = 1\n"
    "channels = Accel X, accel_y\n"
    "\n"
    "[modality.elec]\n"
    "rate = 3\n"
    "drifts = 1\n"
    "channels = current\n"
    "\n"
    "[tune]\n"
    "steps = 7\n"
    "lr = 0.001\n"
    "margin = 0.2\n"
    "min_windows = 40\n"
    "val_fraction = 0.3\n"
    "norm_rate = 0.5\n"
    "norm_max = 0.75\n"
    "norm_parts = 3\n"
    "norm_band = 0.125\n"
    "recalibrate = yes\n"
    "enabled = 1\n"
    "\n"
    "[input]\n"
    "anything = left to the daemon\n";

static void test_full(void **state) {
  (void)state;
  fl_config c = {0};
  char err[512] = "";
  fl_config_free(&c);
  fl_config_defaults(&c);
  int rc = fl_config_parse(&c, full_config, err, sizeof err);
  if (rc) print_error("%s\n", err);
  assert_int_equal(rc, 0);
  const fl_model_spec *s = &c.spec;
  assert_int_equal(s->window, 24);
  assert_int_equal(s->enc1, 6);
  assert_int_equal(s->enc2, 10);
  assert_int_equal(s->kernel, 7);
  assert_int_equal(s->hidden, 33);
  assert_int_equal(s->head_hidden, 17);
  assert_int_equal(s->emb, 9);
  assert_float_equal(s->leak, 0.2, 1e-7);
  assert_float_equal(s->target[FL_MOD_ENC], 1.5, 1e-7);
  assert_float_equal(s->target[FL_MOD_DEC], 1.25, 1e-7);
  assert_float_equal(s->target[FL_MOD_BLOCK], 0.75, 1e-7);
  assert_float_equal(s->target[FL_MOD_HEAD], 3.5, 1e-7);
  const fl_train_config *t = &c.train;
  assert_true(t->seed == 12345);
  assert_int_equal(t->batch, 20);
  assert_int_equal(t->stride, 3);
  assert_float_equal(t->val_fraction, 0.3, 1e-7);
  assert_float_equal(t->clamp, 7.5, 1e-7);
  assert_int_equal(t->patience, 4);
  assert_int_equal(t->epochs1, 11);
  assert_float_equal(t->lr1, 0.004, 1e-9);
  assert_int_equal(t->epochs2, 13);
  assert_float_equal(t->lr2, 0.0005, 1e-9);
  assert_float_equal(t->lr_dec2, 0.00002, 1e-10);
  assert_float_equal(t->p_clean, 0.4, 1e-7);
  assert_float_equal(t->tau, 0.15, 1e-7);
  assert_float_equal(t->w_contrast, 0.7, 1e-7);
  assert_float_equal(t->clip[FL_MOD_ENC], 2.5, 1e-7);
  assert_float_equal(t->clip[FL_MOD_DEC], 3.5, 1e-7);
  assert_float_equal(t->clip[FL_MOD_BLOCK], 4.5, 1e-7);
  assert_float_equal(t->clip[FL_MOD_HEAD], 5.5, 1e-7);
  assert_int_equal(t->ntypes, 3);
  assert_int_equal(t->types[0], FL_FAULT_STEP);
  assert_int_equal(t->types[1], FL_FAULT_SPIKE);
  assert_int_equal(t->types[2], FL_FAULT_STUCK);
  const fl_detect_config *d = &c.detect;
  assert_int_equal(d->tail, 10);
  assert_float_equal(d->quantile, 0.95, 1e-7);
  assert_float_equal(d->margin, 1.2, 1e-7);
  assert_float_equal(d->chan_quantile, 0.9, 1e-7);
  assert_float_equal(d->w_emb, 0.0, 0);
  assert_float_equal(d->min_spread, 0.4, 1e-6);
  assert_float_equal(d->w_var, 0.0, 0);
  assert_float_equal(d->w_corr, 1.0, 0);
  assert_int_equal(d->calibrate_all, 0);
  assert_int_equal(d->on, 4);
  assert_int_equal(d->off, 6);
  assert_int_equal(c.on_given, 1);
  assert_int_equal(c.off_given, 1);
  const fl_tune_config *u = &c.tune;
  assert_int_equal(u->steps, 7);
  assert_float_equal(u->lr, 0.001, 1e-9);
  assert_float_equal(u->margin, 0.2, 1e-7);
  assert_int_equal(u->min_windows, 40);
  assert_float_equal(u->val_fraction, 0.3, 1e-7);
  assert_float_equal(u->norm_rate, 0.5, 1e-7);
  assert_float_equal(u->norm_max, 0.75, 1e-7);
  assert_int_equal(u->norm_parts, 3);
  assert_float_equal(u->norm_band, 0.125, 1e-7);
  assert_int_equal(u->recalibrate, 1);
  assert_int_equal(s->n_mod, 2);
  assert_string_equal(s->mod[0].name, "mech");
  assert_int_equal(s->mod[0].rate, 1);
  assert_int_equal(s->mod[0].drifts, 0);
  assert_int_equal(s->mod[0].channels, 2);
  assert_string_equal(s->mod[0].channel[0], "Accel X");
  assert_string_equal(s->mod[0].channel[1], "accel_y");
  assert_string_equal(s->mod[1].name, "elec");
  assert_int_equal(s->mod[1].rate, 3);
  assert_int_equal(s->mod[1].drifts, 1);
  assert_int_equal(s->mod[1].channels, 1);
  assert_string_equal(s->mod[1].channel[0], "current");
  assert_int_equal(fl_model_spec_check(s), 0);
  fl_config_free(&c);
}

/* Parses text and expects an error whose message holds "line <line>". */
static void expect_error(const char *text, int line, const char *also) {
  fl_config c = {0};
  char err[512] = "", want[32];
  fl_config_free(&c);
  fl_config_defaults(&c);
  int rc = fl_config_parse(&c, text, err, sizeof err);
  snprintf(want, sizeof want, "line %d", line);
  if (rc >= 0 || !strstr(err, want) || (also && !strstr(err, also)))
    print_error("rc %d, err \"%s\", wanted \"%s\" and \"%s\"\n", rc, err, want,
                also ? also : "");
  assert_true(rc < 0);
  assert_non_null(strstr(err, want));
  if (also) assert_non_null(strstr(err, also));
  fl_config_free(&c);
}

static void test_errors(void **state) {
  (void)state;
  const char *mod = "[modality.m]\nchannels = x\n";
  char buf[512];
  snprintf(buf, sizeof buf, "%s[model]\nwindow = 8\nbogus = 1\n", mod);
  expect_error(buf, 5, "bogus");
  snprintf(buf, sizeof buf, "%s\n[nosuch]\nkey = 1\n", mod);
  expect_error(buf, 5, "nosuch");
  snprintf(buf, sizeof buf, "%s[train]\nbatch = 1\nlr1 = fast\n", mod);
  expect_error(buf, 5, "lr1");
  snprintf(buf, sizeof buf, "%s[train]\nepochs1 = 2.5\n", mod);
  expect_error(buf, 4, "epochs1");
  snprintf(buf, sizeof buf, "%s[train]\nfaults = step, nosuchfault\n", mod);
  expect_error(buf, 4, "faults");
  snprintf(buf, sizeof buf, "%s[modality.m]\nrate = 0\n", mod);
  expect_error(buf, 4, "rate");
  /* A modality without channels: the error names its section's line. */
  snprintf(buf, sizeof buf, "%s\n[modality.empty]\nrate = 2\n", mod);
  expect_error(buf, 4, "empty");
  /* A window that is not a multiple of 4 (or below 8). */
  snprintf(buf, sizeof buf, "%s[model]\nenc1 = 4\nwindow = 30\n", mod);
  expect_error(buf, 5, "window");
  snprintf(buf, sizeof buf, "%s[model]\nwindow = 4\n", mod);
  expect_error(buf, 4, "window");
  snprintf(buf, sizeof buf, "%s[model]\nkernel = 4\n", mod);
  expect_error(buf, 4, "kernel");
  /* The library's [tune] keys are checked here, with their ranges. */
  snprintf(buf, sizeof buf, "%s[tune]\nnorm_parts = 17\n", mod);
  expect_error(buf, 4, "norm_parts");
  snprintf(buf, sizeof buf, "%s[tune]\nrecalibrate = maybe\n", mod);
  expect_error(buf, 4, "recalibrate");
  snprintf(buf, sizeof buf, "%s[detect]\nhysteresis_on = 0\n", mod);
  expect_error(buf, 4, "hysteresis_on");
  /* Not an INI line at all. */
  snprintf(buf, sizeof buf, "%s[model]\nthis is not a key\n", mod);
  expect_error(buf, 4, NULL);
}

/* One default per setting: the tuner's are fl_tune_defaults', the
 * hysteresis is not "given" unless the file gives it, and no model file. */
static void test_defaults(void **state) {
  (void)state;
  fl_config c = {0};
  fl_tune_config t;
  char err[512] = "";
  fl_config_free(&c);
  fl_config_defaults(&c);
  fl_tune_defaults(&t);
  assert_int_equal(fl_config_parse(&c, "[modality.m]\nchannels = x\n", err, sizeof err), 0);
  assert_int_equal(c.tune.min_windows, 128);
  assert_int_equal(c.tune.min_windows, t.min_windows);
  assert_int_equal(c.tune.steps, t.steps);
  assert_float_equal(c.tune.lr, t.lr, 0);
  assert_int_equal(c.on_given, 0);
  assert_int_equal(c.off_given, 0);
  assert_string_equal(c.model_file, "");
  fl_config_free(&c);
}

/* A program's keys: its function sees the keys of its sections the library
 * does not read; what it refuses is an error naming the line and key, with
 * its reason when it gives one. */
static int app_key(void *user, const char *section, const char *key, const char *value,
                   char *why, size_t whylen) {
  int *seen = user;
  (*seen)++;
  if (!strcmp(section, "model") || !strcmp(section, "detect")) return 0; /* never asked */
  if (!strcmp(key, "port")) return atoi(value) > 0 ? 1 : -1;
  if (!strcmp(key, "name")) {
    if (strlen(value) > 3) snprintf(why, whylen, "longer than 3");
    return strlen(value) > 3 ? -1 : 1;
  }
  return 0;
}

static void load_with(const char *text, int *seen, char *err, size_t errlen, int *rc,
                      fl_config *c) {
  char path[] = "/tmp/faultline-test-config-XXXXXX";
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  FILE *f = fdopen(fd, "w");
  fputs(text, f);
  fclose(f);
  fl_config_free(c);
  fl_config_defaults(c);
  *seen = 0;
  *rc = fl_config_load_with(c, path, app_key, seen, err, errlen);
  unlink(path);
}

static void test_program_keys(void **state) {
  (void)state;
  static fl_config c;
  char err[512] = "";
  int seen, rc;
  const char *ok = "[modality.m]\nchannels = x\n[model]\nfile = m.model\n"
                   "[tune]\nsteps = 9\nport = 5\n[input]\nname = abc\n";
  load_with(ok, &seen, err, sizeof err, &rc, &c);
  if (rc) print_error("%s\n", err);
  assert_int_equal(rc, 0);
  assert_int_equal(seen, 2); /* port and name; steps and file are the library's */
  assert_int_equal(c.tune.steps, 9);
  assert_string_equal(c.model_file, "m.model");
  load_with("[modality.m]\nchannels = x\n[input]\nbogus = 1\n", &seen, err, sizeof err, &rc,
            &c);
  assert_true(rc < 0);
  assert_non_null(strstr(err, "line 4"));
  assert_non_null(strstr(err, "bogus"));
  load_with("[modality.m]\nchannels = x\n[tune]\nport = 0\n", &seen, err, sizeof err, &rc, &c);
  assert_true(rc < 0);
  assert_non_null(strstr(err, "line 4"));
  assert_non_null(strstr(err, "port"));
  load_with("[modality.m]\nchannels = x\n[log]\nname = abcd\n", &seen, err, sizeof err, &rc,
            &c);
  assert_true(rc < 0);
  assert_non_null(strstr(err, "longer than 3"));
  /* Without a function the same keys are left to the program. */
  fl_config_free(&c);
  fl_config_defaults(&c);
  assert_int_equal(fl_config_parse(&c, "[modality.m]\nchannels = x\n[input]\nbogus = 1\n", err,
                                   sizeof err), 0);
  /* A section nobody owns is an error either way. */
  load_with("[modality.m]\nchannels = x\n[nosuch]\nport = 1\n", &seen, err, sizeof err, &rc,
            &c);
  assert_true(rc < 0);
  assert_non_null(strstr(err, "nosuch"));
  assert_int_equal(seen, 0);
}

/* The one layout check: window, modalities in order, rates, channels and
 * their names; each difference is named. */
static void test_spec_compatible(void **state) {
  (void)state;
  static fl_config a, b;
  char err[512] = "", why[300];
  const char *base = "[model]\nwindow = 16\n[modality.m]\nrate = 2\nchannels = x, y\n";
  fl_config_free(&a);
  fl_config_defaults(&a);
  assert_int_equal(fl_config_parse(&a, base, err, sizeof err), 0);
  fl_config_free(&b);
  fl_config_defaults(&b);
  assert_int_equal(fl_config_parse(&b, base, err, sizeof err), 0);
  assert_int_equal(fl_model_spec_compatible(&a.spec, &b.spec, why, sizeof why), 1);
  const char *other[] = {
      "[model]\nwindow = 20\n[modality.m]\nrate = 2\nchannels = x, y\n",
      "[model]\nwindow = 16\n[modality.m]\nrate = 1\nchannels = x, y\n",
      "[model]\nwindow = 16\n[modality.m]\nrate = 2\nchannels = x, z\n",
      "[model]\nwindow = 16\n[modality.n]\nrate = 2\nchannels = x, y\n",
      "[model]\nwindow = 16\n[modality.m]\nrate = 2\nchannels = x, y\n[modality.n]\n"
      "channels = z\n",
  };
  const char *named[] = {"window", "modality 1", "modality 1", "modality 1", "modalities"};
  for (size_t i = 0; i < sizeof other / sizeof *other; i++) {
    fl_config_free(&b);
    fl_config_defaults(&b);
    assert_int_equal(fl_config_parse(&b, other[i], err, sizeof err), 0);
    why[0] = 0;
    assert_int_equal(fl_model_spec_compatible(&a.spec, &b.spec, why, sizeof why), 0);
    assert_non_null(strstr(why, named[i]));
    assert_int_equal(fl_model_spec_compatible(&b.spec, &a.spec, NULL, 0), 0);
  }
}

static void test_skab(void **state) {
  (void)state;
  fl_config c = {0};
  char err[512] = "";
  fl_config_free(&c);
  fl_config_defaults(&c);
  int rc = fl_config_load(&c, "config/skab.ini", err, sizeof err);
  if (rc) print_error("%s\n", err);
  assert_int_equal(rc, 0);
  assert_int_equal(c.spec.n_mod, 4);
  assert_int_equal(c.spec.window, 60);
  assert_string_equal(c.spec.mod[2].channel[1], "Volume Flow RateRMS");
  assert_int_equal(c.spec.mod[3].drifts, 1);
  assert_int_equal(fl_model_spec_check(&c.spec), 0);
  /* A missing file is an I/O error naming the file. */
  fl_config_free(&c);
  fl_config_defaults(&c);
  err[0] = 0;
  assert_int_equal(fl_config_load(&c, "config/no-such-file.ini", err, sizeof err), FL_EIO);
  assert_non_null(strstr(err, "no-such-file.ini"));
  fl_config_free(&c);
}

static void test_load_error_names_file_and_line(void **state) {
  (void)state;
  char path[] = "/tmp/fl_test_config_XXXXXX";
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  FILE *f = fdopen(fd, "w");
  assert_non_null(f);
  fputs("[modality.m]\nchannels = x\n\n[modality.nochan]\nrate = 1\n", f);
  fclose(f);
  fl_config c = {0};
  char err[512] = "";
  fl_config_free(&c);
  fl_config_defaults(&c);
  assert_true(fl_config_load(&c, path, err, sizeof err) < 0);
  if (!strstr(err, "line 4")) print_error("%s\n", err);
  assert_non_null(strstr(err, path));
  assert_non_null(strstr(err, "line 4"));
  remove(path);
  fl_config_free(&c);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_full),
      cmocka_unit_test(test_errors),
      cmocka_unit_test(test_defaults),
      cmocka_unit_test(test_program_keys),
      cmocka_unit_test(test_spec_compatible),
      cmocka_unit_test(test_skab),
      cmocka_unit_test(test_load_error_names_file_and_line),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
