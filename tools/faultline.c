/* faultline: train, evaluate and run the fault monitor's models offline. */
#include <stdarg.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <cblas.h>

#include "cli.h"
#include "faultline/error.h"

static const struct {
  const char *name;
  int (*fn)(int, char **);
  const char *help;
} cmds[] = {
    {"simulate", cmd_simulate, "write the built-in water-pump plant's data as CSV"},
    {"init", cmd_init, "choose modalities and defaults from a CSV; write them as a config"},
    {"train", cmd_train, "train a model (stage 1, stage 2, calibration) on CSV files"},
    {"calibrate", cmd_calibrate, "re-set a model's detector on clean CSV files, weights kept"},
    {"score", cmd_score, "score a CSV file: score, flag, modality, corrected channels"},
    {"detect", cmd_detect, "train on one CSV and write 0/1 per row of another (SKAB runner)"},
    {"inject", cmd_inject, "inject labelled faults into a clean CSV"},
    {"eval", cmd_eval, "evaluate detection, localisation and correction per fault type"},
    {"replay", cmd_replay, "stream a CSV to faultlined as frames (optionally with a fault)"},
    {"tail", cmd_tail, "print the reports faultlined publishes"},
    {"proxy", cmd_proxy, "forward frames or reports between many daemons and peers (fan-in)"},
    {"bridge", cmd_bridge, "join an MQTT bus (Sparkplug B, JSON): tags in, reports out"},
    {"analyze", cmd_analyze, "per-layer norms, path bounds and measured fault amplification"},
    {"inspect", cmd_inspect, "a model file's architecture, thresholds, layer norms and lineage"},
};

static void usage(FILE *f) {
  fprintf(f, "usage: faultline COMMAND [OPTIONS]   (faultline COMMAND --help for each)\n\n"
             "commands:\n");
  for (size_t i = 0; i < sizeof cmds / sizeof *cmds; i++)
    fprintf(f, "  %-9s  %s\n", cmds[i].name, cmds[i].help);
  fprintf(f, "\nfaultline %s\n", "0.1.0");
}

int main(int argc, char **argv) {
  if (argc < 2) {
    usage(stderr);
    return 2;
  }
  if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
    usage(stdout);
    return 0;
  }
  if (!strcmp(argv[1], "--version")) {
    printf("faultline 0.1.0\n");
    return 0;
  }
  /* Offline work is many small GEMMs: one thread unless the user says more. */
  if (!getenv("OPENBLAS_NUM_THREADS")) openblas_set_num_threads(1);
  for (size_t i = 0; i < sizeof cmds / sizeof *cmds; i++)
    if (!strcmp(argv[1], cmds[i].name)) return cmds[i].fn(argc - 1, argv + 1);
  fprintf(stderr, "faultline: unknown command \"%s\"\n\n", argv[1]);
  usage(stderr);
  return 2;
}

int cli_fail(const char *cmd, const char *fmt, ...) {
  va_list ap;
  fprintf(stderr, "faultline %s: ", cmd);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  return 1;
}

int cli_read_csv(const char *cmd, const char *path, fl_table *t) {
  char err[512];
  memset(t, 0, sizeof *t);
  if (fl_csv_read(path, t, err, sizeof err)) return cli_fail(cmd, "%s", err);
  return 0;
}

int cli_load_config(const char *cmd, const char *path, fl_config *c) {
  char err[512];
  fl_config_defaults(c);
  if (path && fl_config_load(c, path, err, sizeof err)) {
    fl_config_free(c);
    return cli_fail(cmd, "%s", err);
  }
  /* FAULTLINE_QUICK=1: a smoke run (the README test runs every README
   * command so): training stops after 4 + 3 epochs. */
  const char *quick = getenv("FAULTLINE_QUICK");
  if (quick && !strcmp(quick, "1") && (c->train.epochs1 > 4 || c->train.epochs2 > 3)) {
    if (c->train.epochs1 > 4) c->train.epochs1 = 4;
    if (c->train.epochs2 > 3) c->train.epochs2 = 3;
    fprintf(stderr, "faultline %s: FAULTLINE_QUICK=1: at most 4 + 3 epochs\n", cmd);
  }
  return 0;
}

int cli_is_label(const char *name) {
  return !strcmp(name, "anomaly") || !strcmp(name, "changepoint") ||
         !strcmp(name, "anomaly_kind") || !strcmp(name, "anomaly_unit");
}

int cli_series(const char *cmd, const char *what, const fl_model_spec *spec, const fl_table *t,
               fl_series *s) {
  char err[512];
  if (fl_series_from_table(s, spec, t, err, sizeof err))
    return cli_fail(cmd, "%s: %s", what, err);
  unsigned char *unused = malloc(t->cols ? (size_t)t->cols : 1);
  if (!unused) return 0;
  int n = 0, shown = 0;
  if (fl_series_unused(spec, t, unused) > 0)
    for (int j = 0; j < t->cols; j++) n += unused[j] && !cli_is_label(t->names[j]);
  if (n) {
    fprintf(stderr, "faultline %s: %s: %d column%s not in the model, ignored:", cmd, what, n,
            n == 1 ? "" : "s");
    for (int j = 0; j < t->cols && shown < 5; j++)
      if (unused[j] && !cli_is_label(t->names[j]))
        fprintf(stderr, "%s %s", shown++ ? "," : "", t->names[j]);
    fprintf(stderr, "%s\n", n > shown ? ", ..." : "");
  }
  free(unused);
  return 0;
}

int cli_group(const char *cmd, const fl_table *t, const fl_group_config *gc,
              fl_group_plan *plan) {
  unsigned char *skip = calloc(t->cols ? t->cols : 1, 1);
  if (!skip) return cli_fail(cmd, "out of memory");
  for (int j = 0; j < t->cols; j++) skip[j] = (unsigned char)cli_is_label(t->names[j]);
  fl_group_config dflt;
  fl_group_defaults(&dflt);
  dflt.drift_span = fl_group_window(fl_group_period(t), t->rows) / 2;
  char why[300];
  int e = fl_group_plan_table(t, skip, gc ? gc : &dflt, plan, why, sizeof why);
  free(skip);
  if (e) return cli_fail(cmd, "%s", why[0] ? why : fl_strerror(e));
  return 0;
}

void cli_data_defaults(fl_config *c, const fl_table *t) {
  c->spec.window = fl_group_window(fl_group_period(t), t->rows);
  int nch = fl_model_spec_channels(&c->spec);
  c->spec.hidden = fl_group_hidden(nch);
  c->spec.enc2 = fl_group_latent(c->spec.n_mod, c->spec.window);
  c->train.stride = fl_group_train_stride(t->rows, c->spec.window, nch);
  fl_group_detect_defaults(&c->detect, t->rows, c->spec.window);
}

int cli_default_modality(const char *cmd, fl_config *c, const fl_table *t, int from_file) {
  if (c->spec.n_mod > 0) return 0;
  fl_group_plan *plan = calloc(1, sizeof *plan);
  if (!plan) return cli_fail(cmd, "out of memory");
  int rc = cli_group(cmd, t, NULL, plan);
  if (!rc && fl_group_apply(plan, &c->spec))
    rc = cli_fail(cmd, "the grouped modalities do not form a valid model");
  fl_group_plan_free(plan);
  free(plan);
  if (!rc && !from_file) cli_data_defaults(c, t);
  return rc;
}

int cli_same_layout(const fl_model_spec *a, const fl_model_spec *b, char *why, size_t len) {
  char d[300];
  if (fl_model_spec_compatible(a, b, d, sizeof d)) return 1;
  snprintf(why, len, "the model against the config: %s", d);
  return 0;
}

typedef struct {
  int quiet, tty;
} cli_progress;

static void cli_progress_cb(const fl_train_progress *p, void *user) {
  cli_progress *cp = user;
  if (cp->quiet) return;
  if (cp->tty) {
    int width = 24, fill = p->epochs ? width * p->epoch / p->epochs : width;
    char bar[32];
    for (int i = 0; i < width; i++) bar[i] = i < fill ? '#' : '.';
    bar[width] = 0;
    fprintf(stderr, "\rstage %d [%s] epoch %3d/%-3d loss %.4f val %.4f ETA %4.0fs ", p->stage,
            bar, p->epoch, p->epochs, (double)p->train_loss, (double)p->val_loss, p->eta);
    if (p->done) fprintf(stderr, "\n");
  } else {
    fprintf(stderr, "stage %d epoch %d/%d loss %.5f val %.5f elapsed %.1fs%s\n", p->stage,
            p->epoch, p->epochs, (double)p->train_loss, (double)p->val_loss, p->elapsed,
            p->done ? " (done)" : "");
  }
}

int cli_train(const char *cmd, fl_config *c, const fl_table *tables, int n, fl_bundle *out,
              int quiet) {
  fl_series s[16];
  if (n > 16) return cli_fail(cmd, "at most 16 data files");
  memset(out, 0, sizeof *out);
  memset(s, 0, sizeof s);
  int rc = 1, e, k;
  for (k = 0; k < n; k++) {
    char what[32];
    snprintf(what, sizeof what, "data file %d", k + 1);
    if (cli_series(cmd, what, &c->spec, &tables[k], &s[k])) goto done;
  }
  if ((e = fl_model_create(&out->model, &c->spec, c->train.seed))) {
    cli_fail(cmd, "cannot build the model: %s", fl_strerror(e));
    goto done;
  }
  if ((e = fl_train_normalise(out->model, s, n, &c->train))) {
    cli_fail(cmd, "not enough data to normalise: %s (need more rows than one window of %d)",
             fl_strerror(e), c->spec.window);
    goto done;
  }
  cli_progress cp = {quiet, isatty(2)};
  if ((e = fl_train_stage1(out->model, s, n, &c->train, cli_progress_cb, &cp)) ||
      (e = fl_train_stage2(out->model, s, n, &c->train, cli_progress_cb, &cp))) {
    cli_fail(cmd, "training failed: %s", fl_strerror(e));
    goto done;
  }
  if ((e = fl_detect_calibrate(out->model, &out->calib, s, n, &c->train, &c->detect))) {
    cli_fail(cmd, "calibration failed: %s", fl_strerror(e));
    goto done;
  }
  if ((e = fl_estimate_fit(out->model, &out->est, s, n, out->calib.tail, c->train.clamp,
                            c->train.val_fraction))) {
    cli_fail(cmd, "fitting the estimator failed: %s", fl_strerror(e));
    goto done;
  }
  out->detect = c->detect;
  out->clamp = c->train.clamp;
  rc = 0;
done:
  for (k = 0; k < n; k++) fl_series_free(&s[k]);
  if (rc) fl_bundle_free(out);
  return rc;
}
