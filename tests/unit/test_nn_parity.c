/* Parity of lib/nn.c with PyTorch.
 *
 * tests/reference/torch_ref.py writes reference values (format described in
 * that script: one record "NAME COUNT V1 ... VCOUNT" per line) computed in
 * float64 from float32 inputs; this test reads the same inputs, recomputes
 * every output and gradient with lib/nn.c in float32 and compares.
 *
 * Tolerance for layers, activations and losses: element i passes when
 *   |c_i - r_i| <= 1e-4 |r_i| + 1e-5 max_j |r_j|,
 * i.e. 1e-4 relative, with elements that cancel to near zero judged at the
 * tensor's scale (float32 sums of up to ~400 products carry about 1e-6 of
 * the scale in rounding, so an error at 1e-5 of the scale is already ten
 * times that).  Largest singular values from power iteration must match the
 * SVD of the explicit operator matrix within 1e-3 relative.
 *
 * The reference file's path comes from argv[1] or the environment variable
 * FL_TORCH_REF; meson generates it and passes it as the argument.  A missing
 * file fails every test with a message that says so. */
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "faultline/error.h"
#include "faultline/nn.h"

#define PARITY_RTOL 1e-4
#define PARITY_SCALE_TOL 1e-5
#define SIGMA_RTOL 1e-3

/* ---- the reference file -------------------------------------------------- */

typedef struct {
  char *name;
  size_t n;
  double *v; /* (n) */
} record;

static record *g_recs;
static size_t g_nrecs;
static const char *g_path;
static char g_load_error[512];

static void free_records(void) {
  for (size_t i = 0; i < g_nrecs; i++) {
    free(g_recs[i].name);
    free(g_recs[i].v);
  }
  free(g_recs);
  g_recs = NULL;
  g_nrecs = 0;
}

/* Reads the whole file; returns 0 or sets g_load_error.  Each line is
 * tokenised with strtod/strtoul so that "nan" parses as a NaN. */
static int load_records(const char *path) {
  FILE *f = fopen(path, "r");
  if (!f) {
    snprintf(g_load_error, sizeof(g_load_error), "cannot open torch reference file '%s': %s",
             path, strerror(errno));
    return -1;
  }
  size_t cap = 0, linecap = 0;
  char *line = NULL;
  ssize_t len;
  long lineno = 0;
  int rc = 0;
  while ((len = getline(&line, &linecap, f)) >= 0) {
    lineno++;
    if (len == 0 || line[0] == '#' || line[0] == '\n') continue;
    char *p = line, *end;
    while (*p && *p != ' ') p++;
    if (*p != ' ') {
      rc = -1;
      break;
    }
    *p++ = '\0';
    unsigned long n = strtoul(p, &end, 10);
    if (end == p) {
      rc = -1;
      break;
    }
    p = end;
    double *v = malloc(sizeof(double) * (n ? n : 1));
    if (!v) {
      rc = -1;
      break;
    }
    for (unsigned long i = 0; i < n; i++) {
      v[i] = strtod(p, &end);
      if (end == p) {
        rc = -1;
        break;
      }
      p = end;
    }
    if (rc) {
      free(v);
      break;
    }
    if (g_nrecs == cap) {
      cap = cap ? 2 * cap : 256;
      record *grown = realloc(g_recs, cap * sizeof(record));
      if (!grown) {
        free(v);
        rc = -1;
        break;
      }
      g_recs = grown;
    }
    g_recs[g_nrecs].name = strdup(line);
    g_recs[g_nrecs].n = n;
    g_recs[g_nrecs].v = v;
    g_nrecs++;
  }
  free(line);
  fclose(f);
  if (rc) {
    snprintf(g_load_error, sizeof(g_load_error), "malformed torch reference file '%s' at line %ld",
             path, lineno);
    free_records();
  } else if (g_nrecs == 0) {
    snprintf(g_load_error, sizeof(g_load_error), "torch reference file '%s' holds no records",
             path);
    rc = -1;
  }
  return rc;
}

/* Every test starts here, so that a missing file fails each of them with
 * the reason rather than passing vacuously. */
static void require_reference(void) {
  if (!g_nrecs)
    fail_msg("%s (generate it with: /usr/bin/python3 tests/reference/torch_ref.py FILE, and "
             "pass FILE as argv[1] or in FL_TORCH_REF)",
             g_load_error[0] ? g_load_error : "no torch reference file given");
}

static const record *find(const char *name) {
  for (size_t i = 0; i < g_nrecs; i++)
    if (strcmp(g_recs[i].name, name) == 0) return &g_recs[i];
  return NULL;
}

/* The record PREFIX.FIELD with exactly n values (n == 0: any count). */
static const record *need(const char *prefix, const char *field, size_t n) {
  char name[128];
  snprintf(name, sizeof(name), "%s%s", prefix, field);
  const record *r = find(name);
  if (!r) fail_msg("record '%s' missing from %s", name, g_path);
  if (n && r->n != n) fail_msg("record '%s' has %zu values, want %zu", name, r->n, n);
  return r;
}

static int count_of(const char *kind) {
  char name[64];
  snprintf(name, sizeof(name), "%s.count", kind);
  const record *r = find(name);
  if (!r || r->n != 1 || r->v[0] < 1) fail_msg("record '%s' missing or empty", name);
  return (int)r->v[0];
}

/* The record's values as floats (exact: the script wrote float32 values). */
static float *as_floats(const record *r) {
  float *f = malloc(sizeof(float) * (r->n ? r->n : 1));
  assert_non_null(f);
  for (size_t i = 0; i < r->n; i++) f[i] = (float)r->v[i];
  return f;
}

static float *zeros(size_t n) {
  float *f = calloc(n ? n : 1, sizeof(float));
  assert_non_null(f);
  return f;
}

/* The largest err / tolerance seen in the current test, reported on success
 * so that the margin is visible in the log. */
static double g_worst;
static char g_worst_name[128];

static void compare(const char *prefix, const char *field, const float *got, const record *want) {
  double scale = 0.0;
  for (size_t i = 0; i < want->n; i++)
    if (isfinite(want->v[i]) && fabs(want->v[i]) > scale) scale = fabs(want->v[i]);
  for (size_t i = 0; i < want->n; i++) {
    double tol = PARITY_RTOL * fabs(want->v[i]) + PARITY_SCALE_TOL * scale;
    double err = fabs((double)got[i] - want->v[i]);
    if (!(err <= tol))
      fail_msg("%s%s[%zu]: lib/nn.c %.9g, torch %.9g (|err| %.3g > tol %.3g)", prefix, field, i,
               (double)got[i], want->v[i], err, tol);
    if (tol > 0 && err / tol > g_worst) {
      g_worst = err / tol;
      snprintf(g_worst_name, sizeof(g_worst_name), "%s%s", prefix, field);
    }
  }
}

static void begin(void) {
  require_reference();
  g_worst = 0.0;
  g_worst_name[0] = '\0';
}

static void report(const char *what, int cases) {
  print_message("  %s: %d cases, worst |err|/tol %.3f (%s)\n", what, cases, g_worst,
                g_worst_name[0] ? g_worst_name : "-");
}

/* ---- layers -------------------------------------------------------------- */

static void test_parity_dense(void **state) {
  (void)state;
  begin();
  int count = count_of("dense");
  for (int k = 0; k < count; k++) {
    char p[64];
    snprintf(p, sizeof(p), "dense.%d.", k);
    const record *cfg = need(p, "cfg", 3);
    int B = (int)cfg->v[0], I = (int)cfg->v[1], O = (int)cfg->v[2];
    float *x = as_floats(need(p, "x", (size_t)B * I));   // (B, I)
    float *w = as_floats(need(p, "w", (size_t)O * I));   // (O, I)
    float *b = as_floats(need(p, "b", (size_t)O));       // (O)
    float *dy = as_floats(need(p, "dy", (size_t)B * O)); // (B, O)
    float *y = zeros((size_t)B * O), *dx = zeros((size_t)B * I);
    float *dw = zeros((size_t)O * I), *db = zeros((size_t)O);
    assert_int_equal(fl_dense_forward(y, x, w, b, B, I, O), 0);
    compare(p, "y", y, need(p, "y", (size_t)B * O));
    assert_int_equal(fl_dense_backward(dx, dw, db, dy, x, w, B, I, O), 0);
    compare(p, "dx", dx, need(p, "dx", (size_t)B * I));
    compare(p, "dw", dw, need(p, "dw", (size_t)O * I));
    compare(p, "db", db, need(p, "db", (size_t)O));
    free(x);
    free(w);
    free(b);
    free(dy);
    free(y);
    free(dx);
    free(dw);
    free(db);
  }
  report("dense", count);
}

static fl_conv conv_from_cfg(const record *cfg, int *B, int *tin) {
  fl_conv c = {.cin = (int)cfg->v[0], .cout = (int)cfg->v[1], .k = (int)cfg->v[2],
               .stride = (int)cfg->v[3], .pad = (int)cfg->v[4], .dil = (int)cfg->v[5],
               .out_pad = (int)cfg->v[6]};
  *B = (int)cfg->v[7];
  *tin = (int)cfg->v[8];
  return c;
}

static void check_conv_kind(int transposed) {
  const char *kind = transposed ? "convt1d" : "conv1d";
  begin();
  int count = count_of(kind);
  for (int k = 0; k < count; k++) {
    char p[64];
    snprintf(p, sizeof(p), "%s.%d.", kind, k);
    int B, tin;
    fl_conv c = conv_from_cfg(need(p, "cfg", 9), &B, &tin);
    int tout = transposed ? fl_convt1d_len(&c, tin) : fl_conv1d_len(&c, tin);
    if (tout <= 0) fail_msg("%s: length function rejects torch's shape (%d)", p, tout);
    size_t nx = (size_t)B * c.cin * tin, nw = (size_t)c.cin * c.cout * c.k;
    size_t ny = (size_t)B * c.cout * tout;
    float *x = as_floats(need(p, "x", nx));   // (B, cin, tin)
    float *w = as_floats(need(p, "w", nw));   // (cout, cin, k) or (cin, cout, k)
    float *b = as_floats(need(p, "b", (size_t)c.cout));
    float *dy = as_floats(need(p, "dy", ny)); // (B, cout, tout)
    float *y = zeros(ny), *dx = zeros(nx), *dw = zeros(nw), *db = zeros((size_t)c.cout);
    if (transposed) {
      assert_int_equal(fl_convt1d_forward(y, x, w, b, &c, B, tin, NULL), 0);
      assert_int_equal(fl_convt1d_backward(dx, dw, db, dy, x, w, &c, B, tin, NULL), 0);
    } else {
      assert_int_equal(fl_conv1d_forward(y, x, w, b, &c, B, tin, NULL), 0);
      assert_int_equal(fl_conv1d_backward(dx, dw, db, dy, x, w, &c, B, tin, NULL), 0);
    }
    compare(p, "y", y, need(p, "y", ny));
    compare(p, "dx", dx, need(p, "dx", nx));
    compare(p, "dw", dw, need(p, "dw", nw));
    compare(p, "db", db, need(p, "db", (size_t)c.cout));
    free(x);
    free(w);
    free(b);
    free(dy);
    free(y);
    free(dx);
    free(dw);
    free(db);
  }
  report(kind, count);
}

static void test_parity_conv1d(void **state) {
  (void)state;
  check_conv_kind(0);
}

static void test_parity_convt1d(void **state) {
  (void)state;
  check_conv_kind(1);
}

/* ---- activations and losses ---------------------------------------------- */

static void test_parity_activations(void **state) {
  (void)state;
  begin();
  int count = count_of("act");
  for (int k = 0; k < count; k++) {
    char p[64];
    snprintf(p, sizeof(p), "act.%d.", k);
    const record *cfg = need(p, "cfg", 2);
    fl_act a = (fl_act)(int)cfg->v[0];
    float alpha = (float)cfg->v[1];
    const record *rx = need(p, "x", 0);
    size_t n = rx->n;
    float *x = as_floats(rx), *dy = as_floats(need(p, "dy", n));
    float *y = zeros(n), *dx = zeros(n);
    assert_int_equal(fl_act_forward(a, alpha, y, x, n), 0);
    assert_int_equal(fl_act_backward(a, alpha, dx, dy, x, y, n), 0);
    compare(p, "y", y, need(p, "y", n));
    compare(p, "dx", dx, need(p, "dx", n));
    free(x);
    free(dy);
    free(y);
    free(dx);
  }
  report("activations", count);
}

static void test_parity_mse_masked(void **state) {
  (void)state;
  begin();
  int count = count_of("mse");
  for (int k = 0; k < count; k++) {
    char p[64];
    snprintf(p, sizeof(p), "mse.%d.", k);
    size_t n = (size_t)need(p, "cfg", 1)->v[0];
    float *pred = as_floats(need(p, "pred", n)); // (n), NaN where masked out
    float *target = as_floats(need(p, "target", n));
    const record *rm = need(p, "mask", 0);
    if (rm->n != 0 && rm->n != n) fail_msg("%smask has %zu values", p, rm->n);
    float *mask = rm->n ? as_floats(rm) : NULL;
    float *dpred = zeros(n), loss = -1.0f;
    assert_int_equal(fl_mse_loss(&loss, dpred, pred, target, mask, n), 0);
    compare(p, "loss", &loss, need(p, "loss", 1));
    compare(p, "dpred", dpred, need(p, "dpred", n));
    free(pred);
    free(target);
    free(mask);
    free(dpred);
  }
  report("mse", count);
}

static void test_parity_ntxent(void **state) {
  (void)state;
  begin();
  int count = count_of("ntxent");
  for (int k = 0; k < count; k++) {
    char p[64];
    snprintf(p, sizeof(p), "ntxent.%d.", k);
    const record *cfg = need(p, "cfg", 3);
    int B = (int)cfg->v[0], D = (int)cfg->v[1];
    float tau = (float)cfg->v[2];
    size_t n = (size_t)B * D;
    float *x = as_floats(need(p, "x", n)); // (B, D) raw embeddings
    const record *rl = need(p, "label", (size_t)B);
    int *label = malloc(sizeof(int) * (size_t)B);
    assert_non_null(label);
    for (int i = 0; i < B; i++) label[i] = (int)rl->v[i];
    float *z = zeros(n), *norms = zeros((size_t)B), *dz = zeros(n), *dx = zeros(n);
    float loss = -1.0f;
    /* The chain the model runs: normalise, loss, back through the norm. */
    assert_int_equal(fl_l2norm_forward(z, norms, x, B, D), 0);
    assert_int_equal(fl_ntxent_loss(&loss, dz, z, label, B, D, tau, NULL), 0);
    assert_int_equal(fl_l2norm_backward(dx, dz, z, norms, B, D), 0);
    compare(p, "loss", &loss, need(p, "loss", 1));
    compare(p, "dx", dx, need(p, "dx", n));
    free(x);
    free(label);
    free(z);
    free(norms);
    free(dz);
    free(dx);
  }
  report("ntxent", count);
}

/* ---- spectral norms ------------------------------------------------------ */

static void check_spectral_kind(int transposed) {
  const char *kind = transposed ? "spec_convt1d" : "spec_conv1d";
  require_reference();
  int count = count_of(kind);
  double worst = 0.0;
  for (int k = 0; k < count; k++) {
    char p[64];
    snprintf(p, sizeof(p), "%s.%d.", kind, k);
    int B, tin;
    fl_conv c = conv_from_cfg(need(p, "cfg", 9), &B, &tin);
    float *w = as_floats(need(p, "w", (size_t)c.cin * c.cout * c.k));
    double want = need(p, "sigma", 1)->v[0];
    float sigma = -1.0f;
    /* Many iterations and a tight tolerance: this checks the operator, not
     * the convergence speed. */
    int rc = transposed ? fl_spectral_convt1d(&sigma, w, &c, tin, 5000, 1e-9f, NULL)
                        : fl_spectral_conv1d(&sigma, w, &c, tin, 5000, 1e-9f, NULL);
    assert_int_equal(rc, 0);
    double rel = fabs(sigma - want) / want;
    if (!(rel <= SIGMA_RTOL))
      fail_msg("%ssigma: lib/nn.c %.7g, SVD %.7g (rel err %.3g > %.g)", p, (double)sigma, want,
               rel, SIGMA_RTOL);
    if (rel > worst) worst = rel;
    free(w);
  }
  print_message("  %s: %d cases, worst rel err %.3g\n", kind, count, worst);
}

static void test_parity_spectral_conv1d(void **state) {
  (void)state;
  check_spectral_kind(0);
}

static void test_parity_spectral_convt1d(void **state) {
  (void)state;
  check_spectral_kind(1);
}

int main(int argc, char **argv) {
  g_path = argc > 1 ? argv[1] : getenv("FL_TORCH_REF");
  if (g_path && g_path[0]) {
    if (load_records(g_path) != 0) fprintf(stderr, "test_nn_parity: %s\n", g_load_error);
  } else {
    g_path = "(none)";
    snprintf(g_load_error, sizeof(g_load_error),
             "no torch reference file: pass its path as argv[1] or in FL_TORCH_REF");
    fprintf(stderr, "test_nn_parity: %s\n", g_load_error);
  }
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_parity_dense),
      cmocka_unit_test(test_parity_conv1d),
      cmocka_unit_test(test_parity_convt1d),
      cmocka_unit_test(test_parity_activations),
      cmocka_unit_test(test_parity_mse_masked),
      cmocka_unit_test(test_parity_ntxent),
      cmocka_unit_test(test_parity_spectral_conv1d),
      cmocka_unit_test(test_parity_spectral_convt1d),
  };
  int failed = cmocka_run_group_tests(tests, NULL, NULL);
  free_records();
  return failed;
}
