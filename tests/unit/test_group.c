/* Unit tests for the automatic modalities. */
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
#include "faultline/group.h"

/* A deterministic noise in [-0.5, 0.5). */
static double noise(uint32_t *s) {
  *s = *s * 1664525u + 1013904223u;
  return (*s >> 8) / 16777216.0 - 0.5;
}

/* Columns: flow_a, flow_b (one fast signal), Power1, Power2 (another),
 * temp (a trend), vib.0 .. vib.2 (a rate-3 sensor), anomaly (a label). */
static void plant(fl_table *t, int rows) {
  static const char *names[] = {"flow_a", "flow_b", "Power1", "Power2", "temp",
                                "vib.0",  "vib.1",  "vib.2",  "anomaly"};
  assert_int_equal(fl_table_alloc(t, rows, 9), 0);
  for (int j = 0; j < 9; j++) assert_int_equal(fl_table_set_name(t, j, names[j]), 0);
  uint32_t s = 7;
  for (int r = 0; r < rows; r++) {
    double u = sin(r / 3.0), v = cos(r / 2.3) * sin(r / 7.0);
    float *x = t->data + (size_t)r * 9;
    x[0] = (float)(u + 0.2 * noise(&s));
    x[1] = (float)(3 * u + 5 + 0.5 * noise(&s));
    x[2] = (float)(v + 0.2 * noise(&s));
    x[3] = (float)(-2 * v + 0.3 * noise(&s));
    x[4] = (float)(20 + 0.01 * r + 0.3 * noise(&s));
    for (int k = 0; k < 3; k++) x[5 + k] = (float)noise(&s);
    x[8] = 0;
    char stamp[32];
    snprintf(stamp, sizeof stamp, "2024-01-01 %02d:%02d:%02d", r * 5 / 3600, r * 5 / 60 % 60,
             r * 5 % 60);
    assert_int_equal(fl_table_set_stamp(t, r, stamp), 0);
  }
}

static int mod_of(const fl_group_plan *p, const char *sensor) {
  for (int i = 0; i < p->n_mod; i++)
    for (int c = 0; c < p->mod[i].n; c++)
      if (!strcmp(p->sensor[p->mod[i].sensor[c]].name, sensor)) return i;
  return -1;
}

static void test_groups_sensors_that_move_together(void **state) {
  (void)state;
  fl_table t = {0};
  plant(&t, 600);
  unsigned char skip[9] = {0, 0, 0, 0, 0, 0, 0, 0, 1};
  fl_group_config c;
  fl_group_defaults(&c);
  fl_group_plan *p = malloc(sizeof *p);
  char why[200];
  assert_int_equal(fl_group_plan_table(&t, skip, &c, p, why, sizeof why), 0);
  assert_int_equal(p->n_sensor, 6); /* vib.0..2 is one sensor, the label none */
  assert_int_equal(mod_of(p, "flow_a"), mod_of(p, "flow_b"));
  assert_int_equal(mod_of(p, "Power1"), mod_of(p, "Power2"));
  assert_int_not_equal(mod_of(p, "flow_a"), mod_of(p, "Power1"));
  int tm = mod_of(p, "temp"), vm = mod_of(p, "vib");
  assert_true(tm >= 0 && vm >= 0);
  assert_int_equal(p->mod[tm].drifts, 1);
  assert_int_equal(p->mod[tm].n, 1);
  assert_int_equal(p->mod[mod_of(p, "flow_a")].drifts, 0);
  assert_int_equal(p->mod[vm].rate, 3);
  assert_int_equal(p->mod[vm].n, 1);
  assert_true(p->mod[mod_of(p, "flow_a")].cohesion > 0.9f);
  /* The shared prefix names the group. */
  assert_string_equal(p->mod[mod_of(p, "Power1")].name, "power");

  /* The plan becomes a valid spec that reads the table back. */
  fl_model_spec spec;
  fl_model_spec_defaults(&spec);
  assert_int_equal(fl_group_apply(p, &spec), 0);
  assert_int_equal(fl_model_spec_check(&spec), 0);
  fl_series s;
  assert_int_equal(fl_series_from_table(&s, &spec, &t, why, sizeof why), 0);
  fl_series_free(&s);

  /* Deterministic. */
  fl_group_plan *q = malloc(sizeof *q);
  assert_int_equal(fl_group_plan_table(&t, skip, &c, q, why, sizeof why), 0);
  assert_int_equal(p->n_sensor, q->n_sensor);
  assert_int_equal(p->n_mod, q->n_mod);
  assert_memory_equal(p->sensor, q->sensor, sizeof *p->sensor * (size_t)p->n_sensor);
  for (int i = 0; i < p->n_mod; i++) {
    assert_string_equal(p->mod[i].name, q->mod[i].name);
    assert_int_equal(p->mod[i].n, q->mod[i].n);
    assert_memory_equal(p->mod[i].sensor, q->mod[i].sensor, sizeof(int) * (size_t)p->mod[i].n);
  }
  fl_group_plan_free(q);

  /* A cap of one sensor keeps every sensor apart. */
  c.max_size = 1;
  assert_int_equal(fl_group_plan_table(&t, skip, &c, q, why, sizeof why), 0);
  assert_int_equal(q->n_mod, 6);
  fl_model_spec_free(&spec);
  fl_group_plan_free(p);
  fl_group_plan_free(q);
  free(p);
  free(q);
  fl_table_free(&t);
}

static void test_period_and_window(void **state) {
  (void)state;
  fl_table t = {0};
  plant(&t, 600);
  assert_true(fabs(fl_group_period(&t) - 5.0) < 1e-9);
  /* One hour of ticks within 20..60, a multiple of 4, a sixth of the rows. */
  assert_int_equal(fl_group_window(1.0, 100000), 60);
  assert_int_equal(fl_group_window(180.0, 100000), 20);
  assert_int_equal(fl_group_window(0.0, 100000), 60);
  assert_int_equal(fl_group_window(1.0, 240), 40);
  assert_int_equal(fl_group_window(1.0, 20), 8);
  assert_int_equal(fl_group_hidden(8), 256);
  assert_int_equal(fl_group_hidden(52), 512);
  assert_int_equal(fl_group_train_stride(400, 60, 8), 1);
  assert_int_equal(fl_group_train_stride(100000, 60, 8), 25);
  /* 504 channels: at most 4000 x 64 / 504 = 507 windows of 3541. */
  assert_int_equal(fl_group_train_stride(3600, 60, 504), 7);
  assert_int_equal(fl_group_train_stride(3600, 60, 64), 1);
  fl_table_free(&t);
  fl_table none = {0};
  assert_true(fl_group_period(&none) == 0.0);
}

/* Width has no limit: 1,000 sensors of a few shared signals group into
 * modalities of at most max_size, none left out. */
static void test_many_sensors(void **state) {
  (void)state;
  int n = 1000;
  fl_table t = {0};
  assert_int_equal(fl_table_alloc(&t, 20, n), 0);
  for (int j = 0; j < n; j++) {
    char name[16];
    snprintf(name, sizeof name, "s%d", j);
    assert_int_equal(fl_table_set_name(&t, j, name), 0);
  }
  uint32_t s = 5;
  for (int r = 0; r < 20; r++)
    for (int j = 0; j < n; j++)
      t.data[(size_t)r * n + j] = (float)((r * (j % 5 + 1)) % 7) + 0.01f * (float)noise(&s);
  fl_group_config c;
  fl_group_defaults(&c);
  fl_group_plan *p = malloc(sizeof *p);
  char why[200];
  assert_int_equal(fl_group_plan_table(&t, NULL, &c, p, why, sizeof why), 0);
  int total = 0;
  for (int i = 0; i < p->n_mod; i++) {
    assert_true(p->mod[i].n >= 1 && p->mod[i].n <= c.max_size);
    total += p->mod[i].n;
  }
  assert_int_equal(total, n);
  assert_true(p->n_mod <= p->max_mod);
  fl_model_spec spec;
  fl_model_spec_defaults(&spec);
  assert_int_equal(fl_group_apply(p, &spec), 0);
  assert_int_equal(spec.n_mod, p->n_mod);
  fl_model_spec_free(&spec);
  fl_group_plan_free(p);
  /* Too few rows, no sensor. */
  t.rows = 4;
  assert_int_equal(fl_group_plan_table(&t, NULL, &c, p, why, sizeof why), FL_EINVAL);
  fl_group_plan_free(p);
  free(p);
  fl_table_free(&t);
}

/* More groups than modalities: the closest are merged to fit. */
static void test_forced_to_fit(void **state) {
  (void)state;
  int n = 40;
  fl_table t = {0};
  assert_int_equal(fl_table_alloc(&t, 300, n), 0);
  uint32_t s = 3;
  for (int j = 0; j < n; j++) {
    char name[16];
    snprintf(name, sizeof name, "x%d", j);
    assert_int_equal(fl_table_set_name(&t, j, name), 0);
  }
  for (int r = 0; r < 300; r++)
    for (int j = 0; j < n; j++) t.data[(size_t)r * n + j] = (float)noise(&s);
  fl_group_config c;
  fl_group_defaults(&c);
  fl_group_plan *p = malloc(sizeof *p);
  char why[200];
  assert_int_equal(fl_group_plan_table(&t, NULL, &c, p, why, sizeof why), 0);
  assert_int_equal(p->max_mod, 10); /* 40 sensors, at most 8 each: twice the fewest, 5 */
  assert_true(p->n_mod <= 10);
  int total = 0, forced = 0;
  for (int i = 0; i < p->n_mod; i++) {
    assert_true(p->mod[i].n <= c.max_size);
    total += p->mod[i].n;
    forced |= p->mod[i].forced;
  }
  assert_int_equal(total, n);
  assert_true(forced);
  fl_group_plan_free(p);
  free(p);
  fl_table_free(&t);
}

/* A sensor whose slow share lies between the two thresholds: a slow sine
 * under white noise.  On 400 rows the doubt goes to drift; without the
 * margin, or on 20000 rows where the margin is small, it does not drift. */
static void slow_sine(fl_table *t, int rows) {
  assert_int_equal(fl_table_alloc(t, rows, 2), 0);
  assert_int_equal(fl_table_set_name(t, 0, "wander"), 0);
  assert_int_equal(fl_table_set_name(t, 1, "other"), 0);
  uint32_t s = 11;
  for (int r = 0; r < rows; r++) {
    t->data[(size_t)r * 2] = (float)(0.36 * sin(r / 40.0) + noise(&s));
    t->data[(size_t)r * 2 + 1] = (float)noise(&s);
  }
}

static void test_drift_margin_on_few_rows(void **state) {
  (void)state;
  fl_group_config c;
  fl_group_defaults(&c);
  fl_group_plan *p = malloc(sizeof *p);
  char why[200];
  for (int k = 0; k < 2; k++) {
    int rows = k ? 20000 : 400;
    fl_table t = {0};
    slow_sine(&t, rows);
    c.drift_se = 1.0f;
    double need = c.drift_share / (1.0 + c.drift_se * sqrt(2.0 * c.drift_span / rows));
    assert_int_equal(fl_group_plan_table(&t, NULL, &c, p, why, sizeof why), 0);
    float slow = p->sensor[0].slow;
    assert_true(slow < c.drift_share);
    assert_int_equal(p->sensor[0].drifts, slow >= need);
    assert_int_equal(p->sensor[1].drifts, 0);
    if (!k) assert_true(slow >= need); /* the case the margin is for */
    if (k) assert_int_equal(p->sensor[0].drifts, 0);
    fl_group_plan_free(p);
    c.drift_se = 0.0f;
    assert_int_equal(fl_group_plan_table(&t, NULL, &c, p, why, sizeof why), 0);
    assert_int_equal(p->sensor[0].drifts, 0);
    fl_group_plan_free(p);
    fl_table_free(&t);
  }
  free(p);
}

/* Three drifting sensors on a shared upward trend: ta and tb follow one
 * random walk, tc another.  Their levels all correlate through the trend.
 * All three fit in one modality and share it; with room for two only,
 * partners are chosen by their changes: ta and tb, tc alone. */
static void test_drifting_grouped_by_changes(void **state) {
  (void)state;
  int rows = 1200;
  fl_table t = {0};
  assert_int_equal(fl_table_alloc(&t, rows, 3), 0);
  static const char *names[] = {"ta", "tb", "tc"};
  for (int j = 0; j < 3; j++) assert_int_equal(fl_table_set_name(&t, j, names[j]), 0);
  uint32_t s = 17;
  double w1 = 0, w2 = 0;
  for (int r = 0; r < rows; r++) {
    w1 += 0.1 * noise(&s);
    w2 += 0.1 * noise(&s);
    t.data[(size_t)r * 3] = (float)(0.01 * r + w1 + 0.05 * noise(&s));
    t.data[(size_t)r * 3 + 1] = (float)(0.02 * r + 2 * w1 + 0.05 * noise(&s));
    t.data[(size_t)r * 3 + 2] = (float)(0.01 * r + w2 + 0.05 * noise(&s));
  }
  /* The levels of ta and tc correlate: the case the rule is for. */
  double sa = 0, sc = 0, saa = 0, scc = 0, sac = 0;
  for (int r = 0; r < rows; r++) {
    double a = t.data[(size_t)r * 3], b = t.data[(size_t)r * 3 + 2];
    sa += a, sc += b, saa += a * a, scc += b * b, sac += a * b;
  }
  double cov = sac / rows - sa / rows * sc / rows;
  double level =
      cov / sqrt((saa / rows - sa * sa / rows / rows) * (scc / rows - sc * sc / rows / rows));
  assert_true(level > 0.5);
  fl_group_config c;
  fl_group_defaults(&c);
  fl_group_plan *p = malloc(sizeof *p);
  char why[200];
  assert_int_equal(fl_group_plan_table(&t, NULL, &c, p, why, sizeof why), 0);
  for (int i = 0; i < 3; i++) assert_int_equal(p->sensor[i].drifts, 1);
  assert_int_equal(p->n_mod, 1);
  assert_int_equal(p->sensor[0].by_change, 0);
  fl_group_plan_free(p);
  c.max_size = 2;
  assert_int_equal(fl_group_plan_table(&t, NULL, &c, p, why, sizeof why), 0);
  assert_int_equal(p->max_mod, 8);
  for (int i = 0; i < 3; i++) assert_int_equal(p->sensor[i].by_change, 1);
  assert_int_equal(p->change_lag, c.drift_span);
  assert_int_equal(mod_of(p, "ta"), mod_of(p, "tb"));
  assert_int_not_equal(mod_of(p, "ta"), mod_of(p, "tc"));
  assert_true(p->mod[mod_of(p, "ta")].cohesion >= c.min_corr);
  assert_true(p->mod[mod_of(p, "tc")].nearest < c.min_corr);
  fl_group_plan_free(p);
  /* Nor are they merged to fit a cap. */
  c.max_modalities = 1;
  assert_int_equal(fl_group_plan_table(&t, NULL, &c, p, why, sizeof why), 0);
  assert_int_equal(p->n_mod, 2);
  assert_int_equal(p->mod[0].forced + p->mod[1].forced, 0);
  fl_group_plan_free(p);
  free(p);
  fl_table_free(&t);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_groups_sensors_that_move_together),
      cmocka_unit_test(test_period_and_window),
      cmocka_unit_test(test_many_sensors),
      cmocka_unit_test(test_forced_to_fit),
      cmocka_unit_test(test_drift_margin_on_few_rows),
      cmocka_unit_test(test_drifting_grouped_by_changes),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
