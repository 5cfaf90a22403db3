/* Unit tests for the plant simulator. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "faultline/csv.h"
#include "faultline/error.h"
#include "faultline/sim.h"

static int col(const fl_table *t, const char *name) {
  int c = fl_table_col(t, name);
  assert_true(c >= 0);
  return c;
}

static double mean_col(const fl_table *t, int c, int r0, int r1) {
  double s = 0.0;
  for (int r = r0; r < r1; r++) s += t->data[(size_t)r * t->cols + c];
  return s / (r1 - r0);
}

static double corr_cols(const fl_table *t, int a, int b) {
  double ma = mean_col(t, a, 0, t->rows), mb = mean_col(t, b, 0, t->rows);
  double sab = 0.0, saa = 0.0, sbb = 0.0;
  for (int r = 0; r < t->rows; r++) {
    double x = t->data[(size_t)r * t->cols + a] - ma, y = t->data[(size_t)r * t->cols + b] - mb;
    sab += x * y, saa += x * x, sbb += y * y;
  }
  return sab / sqrt(saa * sbb);
}

/* Mean square of a vibration channel's 10 sub-sample columns over rows. */
static double vib_power(const fl_table *t, const char *ch, int r0, int r1) {
  char name[32];
  double s = 0.0;
  for (int k = 0; k < 10; k++) {
    snprintf(name, sizeof name, "%s.%d", ch, k);
    int c = col(t, name);
    for (int r = r0; r < r1; r++) {
      double v = t->data[(size_t)r * t->cols + c];
      s += v * v;
    }
  }
  return s / (10.0 * (r1 - r0));
}

static void test_layout(void **state) {
  (void)state;
  int n = 0;
  const fl_sim_modality *m = fl_sim_layout(&n);
  assert_non_null(m);
  assert_int_equal(n, 4);
  assert_string_equal(m[0].name, "vibration");
  assert_int_equal(m[0].rate, 10);
  assert_string_equal(m[0].channel[0], "vib_de");
  assert_string_equal(m[0].channel[1], "vib_nde");
  assert_string_equal(m[1].name, "electrical");
  assert_string_equal(m[2].name, "hydraulic");
  assert_string_equal(m[3].name, "thermal");
  int cols = 0;
  for (int i = 0; i < n; i++) {
    assert_true(m[i].channels >= 1 && m[i].channels <= FL_SIM_MAX_CHANNELS);
    cols += m[i].channels * m[i].rate;
  }
  assert_int_equal(cols, 26);
  assert_ptr_equal(fl_sim_layout(NULL), m);
}

static void test_shape_names_stamps(void **state) {
  (void)state;
  fl_sim_config c;
  fl_sim_defaults(&c);
  c.rows = 3700;
  fl_table t = {0};
  assert_int_equal(fl_sim_run(&c, &t), 0);
  assert_int_equal(t.rows, 3700);
  assert_int_equal(t.cols, 28);
  const char *expect[] = {"vib_de.0", "vib_de.1", "vib_de.9", "vib_nde.0", "vib_nde.9",
                          "current", "voltage", "pressure", "flow", "temp_motor",
                          "temp_fluid", "anomaly", "anomaly_kind"};
  const int at[] = {0, 1, 9, 10, 19, 20, 21, 22, 23, 24, 25, 26, 27};
  for (size_t i = 0; i < sizeof at / sizeof at[0]; i++)
    assert_string_equal(t.names[at[i]], expect[i]);
  /* Column order follows the layout exactly, so a model spec built from
   * fl_sim_layout finds its channels. */
  int n, c0 = 0;
  const fl_sim_modality *m = fl_sim_layout(&n);
  char name[32];
  for (int i = 0; i < n; i++)
    for (int ch = 0; ch < m[i].channels; ch++)
      for (int k = 0; k < m[i].rate; k++) {
        if (m[i].rate == 1) snprintf(name, sizeof name, "%s", m[i].channel[ch]);
        else snprintf(name, sizeof name, "%s.%d", m[i].channel[ch], k);
        assert_string_equal(t.names[c0++], name);
      }
  assert_non_null(t.stamps);
  assert_string_equal(t.stamps[0], "2026-01-01T00:00:00");
  assert_string_equal(t.stamps[1], "2026-01-01T00:00:01");
  assert_string_equal(t.stamps[3661], "2026-01-01T01:01:01");
  fl_table_free(&t);

  /* A leap day and a year's end, to exercise the calendar. */
  c.rows = 2;
  c.start = 951868799; /* 2000-02-29T23:59:59 */
  assert_int_equal(fl_sim_run(&c, &t), 0);
  assert_string_equal(t.stamps[0], "2000-02-29T23:59:59");
  assert_string_equal(t.stamps[1], "2000-03-01T00:00:00");
  fl_table_free(&t);
  c.start = 1767225599;
  assert_int_equal(fl_sim_run(&c, &t), 0);
  assert_string_equal(t.stamps[0], "2025-12-31T23:59:59");
  assert_string_equal(t.stamps[1], "2026-01-01T00:00:00");
  fl_table_free(&t);
}

static void test_deterministic(void **state) {
  (void)state;
  fl_sim_config c;
  fl_sim_defaults(&c);
  c.rows = 1200;
  c.anomalies = 3;
  c.seed = 42;
  fl_table a = {0}, b = {0}, d = {0};
  assert_int_equal(fl_sim_run(&c, &a), 0);
  assert_int_equal(fl_sim_run(&c, &b), 0);
  size_t bytes = sizeof(float) * (size_t)a.rows * a.cols;
  assert_memory_equal(a.data, b.data, bytes);
  c.seed = 43;
  assert_int_equal(fl_sim_run(&c, &d), 0);
  assert_true(memcmp(a.data, d.data, bytes) != 0);
  fl_table_free(&a);
  fl_table_free(&b);
  fl_table_free(&d);
}

/* Every value finite and within the plant's physical ranges. */
static void test_finite_and_plausible(void **state) {
  (void)state;
  fl_sim_config c;
  fl_sim_defaults(&c);
  c.rows = 7200;
  c.anomalies = 8;
  fl_table t = {0};
  assert_int_equal(fl_sim_run(&c, &t), 0);
  for (size_t i = 0; i < (size_t)t.rows * t.cols; i++) assert_true(isfinite(t.data[i]));
  const struct {
    const char *name;
    float lo, hi;
  } range[] = {{"current", 0.8f, 3.0f},      {"voltage", 380.0f, 415.0f},
               {"pressure", 0.5f, 5.0f},     {"flow", 10.0f, 140.0f},
               {"temp_motor", 15.0f, 60.0f}, {"temp_fluid", 15.0f, 45.0f},
               {"vib_de.3", -6.0f, 6.0f}};
  for (size_t k = 0; k < sizeof range / sizeof range[0]; k++) {
    int cc = col(&t, range[k].name);
    for (int r = 0; r < t.rows; r++) {
      float v = t.data[(size_t)r * t.cols + cc];
      assert_true(v >= range[k].lo && v <= range[k].hi);
    }
  }
  fl_table_free(&t);
}

/* The pump's physics couples the modalities: more flow takes more shaft
 * power and so more current; the motor runs warmer at higher current; and
 * vibration grows with speed, which also drives flow. */
static void test_coupling(void **state) {
  (void)state;
  fl_sim_config c;
  fl_sim_defaults(&c);
  c.rows = 7200;
  for (uint64_t seed = 1; seed <= 3; seed++) {
    c.seed = seed;
    fl_table t = {0};
    assert_int_equal(fl_sim_run(&c, &t), 0);
    double r_fc = corr_cols(&t, col(&t, "flow"), col(&t, "current"));
    double r_pc = corr_cols(&t, col(&t, "pressure"), col(&t, "current"));
    assert_true(r_fc > 0.5);
    assert_true(r_pc > 0.5);
    /* Operating-point changes must actually happen: a flat run would make
     * the correlations meaningless. */
    int fc = col(&t, "flow");
    double lo = 1e9, hi = -1e9;
    for (int r = 0; r < t.rows; r++) {
      double m = mean_col(&t, fc, r, r + 1);
      lo = fmin(lo, m), hi = fmax(hi, m);
    }
    assert_true(hi - lo > 20.0);
    fl_table_free(&t);
  }
}

/* Drift is normal plant behaviour: with it, the fluid temperature wanders
 * over a day further than without it. */
static void test_drift_scale(void **state) {
  (void)state;
  fl_sim_config c;
  fl_sim_defaults(&c);
  c.rows = 6 * 3600;
  double span[2];
  for (int i = 0; i < 2; i++) {
    c.drift = i ? 1.0f : 0.0f;
    fl_table t = {0};
    assert_int_equal(fl_sim_run(&c, &t), 0);
    int tf = col(&t, "temp_fluid");
    double lo = 1e9, hi = -1e9;
    for (int r = 0; r < t.rows; r += 60) {
      double m = mean_col(&t, tf, r, r + 60);
      lo = fmin(lo, m), hi = fmax(hi, m);
    }
    span[i] = hi - lo;
    fl_table_free(&t);
  }
  assert_true(span[1] > span[0] + 1.0);
}

/* Labels: none in a clean run; with anomalies, the requested number of
 * episodes of 30 s to 3 min, kinds 1..3, and anomaly == (kind != 0). */
static void test_anomaly_labels(void **state) {
  (void)state;
  fl_sim_config c;
  fl_sim_defaults(&c);
  c.rows = 7200;
  fl_table t = {0};
  assert_int_equal(fl_sim_run(&c, &t), 0);
  int ca = col(&t, "anomaly"), ck = col(&t, "anomaly_kind");
  for (int r = 0; r < t.rows; r++) {
    assert_true(t.data[(size_t)r * t.cols + ca] == 0.0f);
    assert_true(t.data[(size_t)r * t.cols + ck] == 0.0f);
  }
  fl_table_free(&t);

  int kinds_seen[4] = {0};
  for (uint64_t seed = 1; seed <= 4; seed++) {
    c.seed = seed;
    c.anomalies = 10;
    assert_int_equal(fl_sim_run(&c, &t), 0);
    int episodes = 0, len = 0;
    float prev = 0.0f;
    for (int r = 0; r <= t.rows; r++) {
      float a = r < t.rows ? t.data[(size_t)r * t.cols + ca] : 0.0f;
      float k = r < t.rows ? t.data[(size_t)r * t.cols + ck] : 0.0f;
      assert_true(a == (k != 0.0f ? 1.0f : 0.0f));
      assert_true(k == 0.0f || k == 1.0f || k == 2.0f || k == 3.0f);
      if (k != 0.0f && prev == 0.0f) episodes++, len = 0, kinds_seen[(int)k]++;
      if (k != 0.0f) len++;
      if (k == 0.0f && prev != 0.0f) assert_in_range(len, 30, 180);
      prev = k;
    }
    assert_int_equal(episodes, 10);
    fl_table_free(&t);
  }
  for (int k = 1; k <= 3; k++) assert_true(kinds_seen[k] > 0);

  /* A run too short for its episodes gets fewer, never overlapping ones. */
  c.rows = 130;
  c.anomalies = 5;
  assert_int_equal(fl_sim_run(&c, &t), 0);
  int rows_on = 0;
  for (int r = 0; r < t.rows; r++) rows_on += t.data[(size_t)r * t.cols + ca] != 0.0f;
  assert_in_range(rows_on, 30, 2 * 45);
  fl_table_free(&t);
}

/* Each kind of episode shows its physics against the clean twin (same seed,
 * no anomalies), over the episode's rows past its 5 s onset. */
static void test_episodes_against_clean_twin(void **state) {
  (void)state;
  fl_sim_config c;
  fl_sim_defaults(&c);
  c.rows = 7200;
  int checked[4] = {0};
  for (uint64_t seed = 1; seed <= 6; seed++) {
    fl_table clean = {0}, faulty = {0};
    c.seed = seed;
    c.anomalies = 0;
    assert_int_equal(fl_sim_run(&c, &clean), 0);
    c.anomalies = 8;
    assert_int_equal(fl_sim_run(&c, &faulty), 0);
    int ck = col(&faulty, "anomaly_kind"), cf = col(&faulty, "flow");
    int cp = col(&faulty, "pressure"), ci = col(&faulty, "current");
    /* Before the first episode the two runs are the same plant. */
    int first = 0;
    while (faulty.data[(size_t)first * faulty.cols + ck] == 0.0f) first++;
    for (int r = 0; r < first; r++)
      assert_memory_equal(&faulty.data[(size_t)r * faulty.cols],
                          &clean.data[(size_t)r * clean.cols], sizeof(float) * 26);
    for (int r = 0; r < faulty.rows;) {
      int kind = (int)faulty.data[(size_t)r * faulty.cols + ck];
      if (!kind) {
        r++;
        continue;
      }
      int end = r;
      while (end < faulty.rows && faulty.data[(size_t)end * faulty.cols + ck] != 0.0f) end++;
      int a = r + 8, b = end - 5;
      if (kind == FL_SIM_VALVE_CLOSURE) {
        assert_true(mean_col(&faulty, cf, a, b) < 0.85 * mean_col(&clean, cf, a, b));
        assert_true(mean_col(&faulty, cp, a, b) > mean_col(&clean, cp, a, b) + 0.1);
        assert_true(mean_col(&faulty, ci, a, b) < mean_col(&clean, ci, a, b));
      } else if (kind == FL_SIM_CAVITATION) {
        assert_true(mean_col(&faulty, cp, a, b) < mean_col(&clean, cp, a, b) - 0.1);
        assert_true(vib_power(&faulty, "vib_de", a, b) > 1.5 * vib_power(&clean, "vib_de", a, b));
      } else {
        assert_true(vib_power(&faulty, "vib_de", a, b) > 3.0 * vib_power(&clean, "vib_de", a, b));
        /* Imbalance is mechanical: the hydraulics stay as they were. */
        assert_true(fabs(mean_col(&faulty, cf, a, b) - mean_col(&clean, cf, a, b)) < 1.0);
      }
      checked[kind]++;
      r = end;
    }
    fl_table_free(&clean);
    fl_table_free(&faulty);
  }
  for (int k = 1; k <= 3; k++) assert_true(checked[k] > 0);
}

/* A plant of units: 26 columns per unit named uNN_..., three labels, and
 * each episode in one unit; one unit is the plant of old, column for
 * column. */
static void test_units_layout(void **state) {
  (void)state;
  fl_sim_config c;
  fl_sim_defaults(&c);
  c.rows = 1200;
  c.anomalies = 4;
  fl_table one = {0}, zero = {0}, three = {0};
  assert_int_equal(fl_sim_run(&c, &one), 0);
  c.units = 0; /* counts as 1 */
  assert_int_equal(fl_sim_run(&c, &zero), 0);
  assert_int_equal(zero.cols, 28);
  assert_memory_equal(one.data, zero.data, sizeof(float) * 28 * 1200);
  c.units = 3;
  assert_int_equal(fl_sim_run(&c, &three), 0);
  assert_int_equal(three.cols, 3 * 26 + 3);
  assert_string_equal(three.names[0], "u01_vib_de.0");
  assert_string_equal(three.names[26 + 20], "u02_current");
  assert_string_equal(three.names[2 * 26 + 25], "u03_temp_fluid");
  int ca = col(&three, "anomaly"), cu = col(&three, "anomaly_unit");
  int seen = 0;
  for (int r = 0; r < three.rows; r++) {
    float a = three.data[(size_t)r * three.cols + ca], u = three.data[(size_t)r * three.cols + cu];
    if (a == 0.0f) assert_true(u == 0.0f);
    else {
      assert_true(u >= 1.0f && u <= 3.0f);
      seen++;
    }
  }
  assert_true(seen > 0);
  fl_table_free(&one);
  fl_table_free(&zero);
  fl_table_free(&three);
  c.units = FL_SIM_MAX_UNITS + 1;
  assert_int_equal(fl_sim_run(&c, &three), FL_EINVAL);
}

/* The units are coupled (a unit's flow moves the others' pressure through
 * the header) but each episode is local: against the clean twin, a valve
 * closure or cavitation moves the faulty unit's flow far more than its
 * neighbours'. */
static void test_units_coupled_faults_local(void **state) {
  (void)state;
  fl_sim_config c;
  fl_sim_defaults(&c);
  c.rows = 7200;
  c.units = 4;
  c.seed = 5;
  fl_table clean = {0}, faulty = {0};
  assert_int_equal(fl_sim_run(&c, &clean), 0);
  /* Coupling: unit 1 runs the single-unit plant's schedule and noise (the
   * same seed), so what differs is the others' doing: the header they fill
   * lowers its flow and raises its pressure the more they pump, and the bus
   * they load lowers its voltage. */
  {
    fl_table alone = {0};
    c.units = 1;
    assert_int_equal(fl_sim_run(&c, &alone), 0);
    c.units = 4;
    int cp = col(&clean, "u01_pressure"), cf = col(&clean, "u01_flow");
    int cv = col(&clean, "u01_voltage"), ap = col(&alone, "pressure");
    int af = col(&alone, "flow"), av = col(&alone, "voltage");
    assert_true(mean_col(&clean, cf, 0, clean.rows) < mean_col(&alone, af, 0, alone.rows) - 1.0);
    assert_true(mean_col(&clean, cv, 0, clean.rows) < mean_col(&alone, av, 0, alone.rows) - 0.5);
    double n = 0, sx = 0, sy = 0, sxy = 0, sxx = 0, syy = 0;
    for (int r = 0; r < clean.rows; r++) {
      double dp = clean.data[(size_t)r * clean.cols + cp] - alone.data[(size_t)r * alone.cols + ap];
      double others = 0.0;
      for (int v = 2; v <= 4; v++) {
        char fn[32];
        snprintf(fn, sizeof fn, "u%02d_flow", v);
        others += clean.data[(size_t)r * clean.cols + col(&clean, fn)];
      }
      n += 1, sx += dp, sy += others, sxy += dp * others, sxx += dp * dp, syy += others * others;
    }
    double rho = (sxy / n - sx / n * sy / n) /
                 sqrt((sxx / n - sx * sx / (n * n)) * (syy / n - sy * sy / (n * n)));
    assert_true(rho > 0.2);
    fl_table_free(&alone);
  }
  c.anomalies = 8;
  assert_int_equal(fl_sim_run(&c, &faulty), 0);
  int ck = col(&faulty, "anomaly_kind"), cu = col(&faulty, "anomaly_unit");
  int checked = 0;
  for (int r = 0; r < faulty.rows;) {
    int kind = (int)faulty.data[(size_t)r * faulty.cols + ck];
    if (kind != FL_SIM_VALVE_CLOSURE && kind != FL_SIM_CAVITATION) {
      r++;
      continue;
    }
    int unit = (int)faulty.data[(size_t)r * faulty.cols + cu], end = r;
    while (end < faulty.rows && faulty.data[(size_t)end * faulty.cols + ck] != 0.0f) end++;
    int a = r + 8, b = end - 5;
    double own = 0.0, other = 0.0;
    for (int u = 1; u <= 4; u++) {
      char fn[32];
      snprintf(fn, sizeof fn, "u%02d_flow", u);
      int cf = col(&faulty, fn);
      double d = fabs(mean_col(&faulty, cf, a, b) - mean_col(&clean, cf, a, b)) /
                 mean_col(&clean, cf, a, b);
      if (u == unit) own = d;
      else if (d > other) other = d;
    }
    assert_true(own > 0.05);
    assert_true(own > 3.0 * other);
    checked++;
    r = end;
  }
  assert_true(checked > 0);
  fl_table_free(&clean);
  fl_table_free(&faulty);
}

static void test_bad_arguments(void **state) {
  (void)state;
  fl_sim_config c;
  fl_sim_defaults(&c);
  fl_table t = {0};
  assert_int_equal(fl_sim_run(NULL, &t), FL_EINVAL);
  assert_int_equal(fl_sim_run(&c, NULL), FL_EINVAL);
  c.rows = 0;
  assert_int_equal(fl_sim_run(&c, &t), FL_EINVAL);
  fl_sim_defaults(&c);
  c.anomalies = -1;
  assert_int_equal(fl_sim_run(&c, &t), FL_EINVAL);
  fl_sim_defaults(&c);
  c.drift = NAN;
  assert_int_equal(fl_sim_run(&c, &t), FL_EINVAL);
  fl_sim_defaults(&c);
  c.noise = -1.0f;
  assert_int_equal(fl_sim_run(&c, &t), FL_EINVAL);
  fl_sim_defaults(&c);
  c.start = -5;
  assert_int_equal(fl_sim_run(&c, &t), FL_EINVAL);
  assert_null(t.data);
  assert_int_equal(t.rows, 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_layout),
      cmocka_unit_test(test_shape_names_stamps),
      cmocka_unit_test(test_deterministic),
      cmocka_unit_test(test_finite_and_plausible),
      cmocka_unit_test(test_coupling),
      cmocka_unit_test(test_drift_scale),
      cmocka_unit_test(test_anomaly_labels),
      cmocka_unit_test(test_episodes_against_clean_twin),
      cmocka_unit_test(test_units_layout),
      cmocka_unit_test(test_units_coupled_faults_local),
      cmocka_unit_test(test_bad_arguments),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
