/* faultline simulate | train | score | detect */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "cli.h"
#include "faultline/error.h"
#include "faultline/scan.h"
#include "faultline/sim.h"

int cmd_simulate(int argc, char **argv) {
  static const struct option opts[] = {{"out", 1, 0, 'o'},       {"rows", 1, 0, 'r'},
                                       {"seed", 1, 0, 's'},      {"anomalies", 1, 0, 'a'},
                                       {"drift", 1, 0, 'd'},     {"shift", 1, 0, 'S'},
                                       {"units", 1, 0, 'u'},     {"help", 0, 0, 'h'},
                                       {0, 0, 0, 0}};
  fl_sim_config c;
  fl_sim_defaults(&c);
  const char *out = NULL;
  int o;
  while ((o = getopt_long(argc, argv, "o:r:s:a:d:S:u:h", opts, NULL)) != -1) {
    switch (o) {
    case 'o': out = optarg; break;
    case 'r': c.rows = atoi(optarg); break;
    case 's': c.seed = strtoull(optarg, NULL, 10); break;
    case 'a': c.anomalies = atoi(optarg); break;
    case 'd': c.drift = (float)atof(optarg); break;
    case 'S': c.shift = (float)atof(optarg); break;
    case 'u': c.units = atoi(optarg); break;
    case 'h':
      printf("usage: faultline simulate --out CSV [--rows N] [--seed N] [--anomalies N] "
             "[--drift X] [--shift V] [--units U]\n\n"
             "Writes the built-in water-pump plant: vibration (2 channels at 10x the base "
             "rate,\ncolumns NAME.0..NAME.9), electrical, hydraulic and thermal (2 channels "
             "each), one\nrow per second, with labels anomaly and anomaly_kind (1 valve "
             "closure,\n2 cavitation, 3 rotor imbalance).\n\n"
             "  --rows N       base ticks (default %d)\n"
             "  --seed N       random seed (default %llu)\n"
             "  --anomalies N  process-anomaly episodes (default %d; 0 = clean)\n"
             "  --drift X      scale of slow ambient drift (default %g)\n"
             "  --shift V      slow operating-point shift: the supply voltage's level moves\n"
             "                 by V volts over the first two thirds of the run, then holds\n"
             "                 (default %g)\n"
             "  --units U      a plant of U coupled pump units (default 1, at most %d): one\n"
             "                 discharge header, supply bus and tank; 26 sensor columns per\n"
             "                 unit named uNN_<column>, and the label anomaly_unit (the\n"
             "                 episode's unit); U = 20 is 160 sensors\n",
             c.rows, (unsigned long long)c.seed, c.anomalies, (double)c.drift,
             (double)c.shift, FL_SIM_MAX_UNITS);
      return 0;
    default: return 2;
    }
  }
  if (!out) return cli_fail("simulate", "--out CSV is required (see --help)");
  if (c.rows <= 0) return cli_fail("simulate", "--rows must be positive");
  if (c.units < 1 || c.units > FL_SIM_MAX_UNITS)
    return cli_fail("simulate", "--units must be 1 to %d", FL_SIM_MAX_UNITS);
  fl_table t = {0};
  int e = fl_sim_run(&c, &t);
  if (e) return cli_fail("simulate", "%s", fl_strerror(e));
  char err[512];
  e = fl_csv_write(out, &t, err, sizeof err);
  fl_table_free(&t);
  if (e) return cli_fail("simulate", "%s", err);
  return 0;
}

int cmd_train(int argc, char **argv) {
  static const struct option opts[] = {{"config", 1, 0, 'c'}, {"data", 1, 0, 'd'},
                                       {"out", 1, 0, 'o'},    {"seed", 1, 0, 's'},
                                       {"quiet", 0, 0, 'q'},  {"help", 0, 0, 'h'},
                                       {0, 0, 0, 0}};
  const char *config = NULL, *out = NULL, *data[16];
  int nd = 0, quiet = 0, o;
  long seed = -1;
  while ((o = getopt_long(argc, argv, "c:d:o:s:qh", opts, NULL)) != -1) {
    switch (o) {
    case 'c': config = optarg; break;
    case 'd':
      if (nd == 16) return cli_fail("train", "at most 16 --data files");
      data[nd++] = optarg;
      break;
    case 'o': out = optarg; break;
    case 's': seed = atol(optarg); break;
    case 'q': quiet = 1; break;
    case 'h':
      printf("usage: faultline train [--config FILE] --data CSV [--data CSV ...] --out MODEL\n"
             "                       [--seed N] [--quiet]\n\n"
             "Trains both stages on clean recordings (stage 1 reconstruction, stage 2\n"
             "correction and contrastive detection with injected faults), calibrates the\n"
             "detector on the held-out end of each recording and writes one safetensors\n"
             "model file.  More CSV files may follow --data's first one as plain arguments.\n"
             "Without modalities in the config, they are chosen from the first file as\n"
             "faultline init chooses them; without --config at all, the window, the\n"
             "block's width, the training stride and the detector's defaults too.\n");
      return 0;
    default: return 2;
    }
  }
  while (optind < argc && nd < 16) data[nd++] = argv[optind++];
  if (!nd || !out) return cli_fail("train", "--data CSV and --out MODEL are required (see --help)");
  fl_config c;
  if (cli_load_config("train", config, &c)) return 1;
  if (seed >= 0) c.train.seed = (uint64_t)seed;
  fl_table t[16];
  memset(t, 0, sizeof t);
  int rc = 1;
  for (int k = 0; k < nd; k++)
    if (cli_read_csv("train", data[k], &t[k])) goto done;
  if (cli_default_modality("train", &c, &t[0], config != NULL)) goto done;
  fl_bundle b;
  if (cli_train("train", &c, t, nd, &b, quiet)) goto done;
  snprintf(b.lineage, sizeof b.lineage,
           "{\"base\":null,\"trained\":%lld,\"data\":\"%s\",\"updates\":0}",
           (long long)time(NULL), data[0]);
  char err[512];
  if (fl_bundle_save(&b, out, err, sizeof err)) {
    cli_fail("train", "%s", err);
    fl_bundle_free(&b);
    goto done;
  }
  if (!quiet)
    fprintf(stderr, "faultline train: wrote %s (%zu parameters, threshold %.3f)\n", out,
            fl_model_param_count(b.model), (double)b.calib.threshold);
  fl_bundle_free(&b);
  rc = 0;
done:
  for (int k = 0; k < nd; k++) fl_table_free(&t[k]);
  fl_config_free(&c);
  return rc;
}

/* Writes the scan as CSV: datetime if the input had it, score, anomaly,
 * modality, then <column>_corrected for every channel column, then
 * <column>_sd (the correction's uncertainty, raw units) for every one. */
static int write_scored(const char *path, const fl_table *in, const fl_bundle *b,
                        const fl_scan_result *r, int from) {
  FILE *f = strcmp(path, "-") ? fopen(path, "w") : stdout;
  if (!f) return -1;
  const fl_model_spec *spec = fl_model_spec_of(b->model);
  char name[2 * FL_NAME_MAX];
  if (in->stamps) fprintf(f, "datetime,");
  fprintf(f, "score,anomaly,modality");
  for (int u = 0; u < 2; u++)
    for (int i = 0; i < spec->n_mod; i++)
      for (int c = 0; c < spec->mod[i].channels; c++)
        for (int k = 0; k < spec->mod[i].rate; k++) {
          fl_model_column_name(spec, i, c, k, name, sizeof name);
          strcat(name, u ? "_sd" : "_corrected");
          fputc(',', f);
          fl_csv_put_field(f, name);
        }
  fputc('\n', f);
  for (int row = from; row < r->rows; row++) {
    if (in->stamps) {
      fl_csv_put_field(f, in->stamps[row - from]);
      fputc(',', f);
    }
    if (isnan(r->score[row])) fprintf(f, ",0,");
    else
      fprintf(f, "%.6g,%d,%s", (double)r->score[row], r->flag[row],
              r->modality[row] >= 0 ? spec->mod[(int)r->modality[row]].name : "");
    for (int u = 0; u < 2; u++) {
      const fl_series *o = u ? &r->sigma : &r->corrected;
      for (int i = 0; i < spec->n_mod; i++) {
        int rate = spec->mod[i].rate;
        size_t len = (size_t)r->rows * rate;
        for (int c = 0; c < spec->mod[i].channels; c++)
          for (int k = 0; k < rate; k++) {
            float v = o->x[i][(size_t)c * len + (size_t)row * rate + k];
            if (isnan(v)) fprintf(f, ",");
            else fprintf(f, ",%.9g", (double)v);
          }
      }
    }
    fputc('\n', f);
  }
  int bad = ferror(f);
  if (f != stdout) bad |= fclose(f);
  else fflush(f);
  return bad ? -1 : 0;
}

/* faultline calibrate: the detector's statistics and thresholds are set anew
 * on clean recordings with the config's [detect] keys, the weights are kept.
 * A plant needs this after maintenance, a new sensor or a season: the model
 * still knows the process, but what counts as normal for its scores moved. */
int cmd_calibrate(int argc, char **argv) {
  static const struct option opts[] = {{"model", 1, 0, 'm'}, {"config", 1, 0, 'c'},
                                       {"data", 1, 0, 'd'},  {"out", 1, 0, 'o'},
                                       {"help", 0, 0, 'h'},  {0, 0, 0, 0}};
  const char *model = NULL, *config = NULL, *out = NULL, *data[16];
  int nd = 0, o;
  while ((o = getopt_long(argc, argv, "m:c:d:o:h", opts, NULL)) != -1) {
    switch (o) {
    case 'm': model = optarg; break;
    case 'c': config = optarg; break;
    case 'd':
      if (nd == 16) return cli_fail("calibrate", "at most 16 --data files");
      data[nd++] = optarg;
      break;
    case 'o': out = optarg; break;
    case 'h':
      printf("usage: faultline calibrate --model MODEL --data CSV [--data CSV ...]\n"
             "                           [--config FILE] --out MODEL\n\n"
             "Sets a trained model's detector anew on CLEAN recordings: the clean\n"
             "statistics of every score feature, the window and channel thresholds, and\n"
             "the embedding centroid, with the [detect] keys of --config (without it, the\n"
             "model's own).  The weights, the normalisation and the Lipschitz state stay\n"
             "as they are; the lineage records the recalibration.  --out may name the\n"
             "input model (the file is replaced atomically).  More CSV files may follow\n"
             "--data's first one as plain arguments.\n");
      return 0;
    default: return 2;
    }
  }
  while (optind < argc && nd < 16) data[nd++] = argv[optind++];
  if (!model || !nd || !out)
    return cli_fail("calibrate", "--model, --data CSV and --out MODEL are required (see --help)");
  char err[512];
  fl_bundle b;
  if (fl_bundle_load(&b, model, err, sizeof err))
    return cli_fail("calibrate", "%s: %s", model, err);
  const fl_model_spec *spec = fl_model_spec_of(b.model);
  fl_config c;
  fl_table t[16];
  fl_series s[16];
  memset(t, 0, sizeof t);
  memset(s, 0, sizeof s);
  int rc = 1, e;
  if (cli_load_config("calibrate", config, &c)) goto done;
  if (!config) c.detect = b.detect;
  if (config && c.spec.n_mod && !cli_same_layout(spec, &c.spec, err, sizeof err)) {
    cli_fail("calibrate", "%s does not describe %s: %s", config, model, err);
    goto done;
  }
  /* Windows are cut and clamped as in training. */
  c.train.clamp = b.clamp;
  for (int k = 0; k < nd; k++) {
    if (cli_read_csv("calibrate", data[k], &t[k])) goto done;
    if (cli_series("calibrate", data[k], spec, &t[k], &s[k])) goto done;
  }
  /* The loaded calibration and estimator make way for the new ones. */
  fl_calib_free(&b.calib);
  fl_estimator_free(&b.est);
  if ((e = fl_detect_calibrate(b.model, &b.calib, s, nd, &c.train, &c.detect))) {
    cli_fail("calibrate", "calibration failed: %s%s", fl_strerror(e),
             e == FL_EINVAL ? " (need at least two windows of clean data)" : "");
    goto done;
  }
  if ((e = fl_estimate_fit(b.model, &b.est, s, nd, b.calib.tail, b.clamp,
                              c.train.val_fraction))) {
    cli_fail("calibrate", "fitting the estimator failed: %s", fl_strerror(e));
    goto done;
  }
  b.detect = c.detect;
  json_error_t je;
  json_t *lin = json_loads(b.lineage, 0, &je);
  if (!json_is_object(lin)) {
    json_decref(lin);
    lin = json_object();
  }
  json_object_set_new(lin, "recalibrated", json_integer((json_int_t)time(NULL)));
  json_object_set_new(lin, "calibration_data", json_string(data[0]));
  char *js = json_dumps(lin, JSON_COMPACT);
  json_decref(lin);
  if (!js || strlen(js) >= sizeof b.lineage) {
    free(js);
    cli_fail("calibrate", "the model's lineage is too long to extend");
    goto done;
  }
  strcpy(b.lineage, js);
  free(js);
  if (fl_bundle_save(&b, out, err, sizeof err)) {
    cli_fail("calibrate", "%s", err);
    goto done;
  }
  fprintf(stderr, "faultline calibrate: wrote %s (threshold %.3f)\n", out,
          (double)b.calib.threshold);
  rc = 0;
done:
  for (int k = 0; k < nd; k++) {
    fl_series_free(&s[k]);
    fl_table_free(&t[k]);
  }
  fl_bundle_free(&b);
  fl_config_free(&c);
  return rc;
}

int cmd_score(int argc, char **argv) {
  static const struct option opts[] = {{"model", 1, 0, 'm'}, {"in", 1, 0, 'i'},
                                       {"out", 1, 0, 'o'},   {"help", 0, 0, 'h'},
                                       {0, 0, 0, 0}};
  const char *model = NULL, *in = NULL, *out = NULL;
  int o;
  while ((o = getopt_long(argc, argv, "m:i:o:h", opts, NULL)) != -1) {
    switch (o) {
    case 'm': model = optarg; break;
    case 'i': in = optarg; break;
    case 'o': out = optarg; break;
    case 'h':
      printf("usage: faultline score --model MODEL --in CSV --out CSV\n\n"
             "Scores every row causally (each row's answer uses only rows up to it) and\n"
             "writes one row per input row: datetime (if present), score, anomaly (0/1),\n"
             "modality (the faulty modality's name, or empty), <column>_corrected for\n"
             "every channel column, then <column>_sd for every one: the correction's\n"
             "standard uncertainty in the column's units (0 where the input passed, empty\n"
             "for a model without an estimator).  Rows before the first full window have no\n"
             "score.\n"
             "--out - writes to standard output.\n");
      return 0;
    default: return 2;
    }
  }
  if (!model || !in || !out) return cli_fail("score", "--model, --in and --out are required");
  char err[512];
  fl_bundle b;
  if (fl_bundle_load(&b, model, err, sizeof err)) return cli_fail("score", "%s: %s", model, err);
  fl_table t;
  fl_series s = {0};
  fl_scan_result r = {0};
  int rc = 1, e;
  if (cli_read_csv("score", in, &t)) goto done0;
  if (cli_series("score", in, fl_model_spec_of(b.model), &t, &s)) goto done;
  if ((e = fl_scan(&b, &s, 1, &r))) {
    cli_fail("score", "scoring failed: %s", fl_strerror(e));
    goto done;
  }
  if (write_scored(out, &t, &b, &r, 0)) {
    cli_fail("score", "cannot write %s", out);
    goto done;
  }
  rc = 0;
done:
  fl_scan_free(&r);
  fl_series_free(&s);
  fl_table_free(&t);
done0:
  fl_bundle_free(&b);
  return rc;
}

/* Joins the last `keep` rows of a to all of b (same columns), so that the
 * first test row already has a full window of history behind it. */
static int join_tail(fl_table *dst, const fl_table *a, int keep, const fl_table *b) {
  if (keep > a->rows) keep = a->rows;
  if (fl_table_alloc(dst, keep + b->rows, b->cols)) return -1;
  for (int j = 0; j < b->cols; j++) {
    int ja = fl_table_col(a, b->names[j]);
    if (fl_table_set_name(dst, j, b->names[j])) return -1;
    for (int r = 0; r < keep; r++)
      dst->data[(size_t)r * b->cols + j] =
          ja >= 0 ? a->data[(size_t)(a->rows - keep + r) * a->cols + ja] : NAN;
  }
  memcpy(dst->data + (size_t)keep * b->cols, b->data, sizeof(float) * b->rows * b->cols);
  return keep;
}

int cmd_detect(int argc, char **argv) {
  static const struct option opts[] = {{"train", 1, 0, 't'},  {"test", 1, 0, 'T'},
                                       {"out", 1, 0, 'o'},    {"config", 1, 0, 'c'},
                                       {"scores", 1, 0, 's'}, {"help", 0, 0, 'h'},
                                       {0, 0, 0, 0}};
  const char *train = NULL, *test = NULL, *out = NULL, *config = NULL, *scores = NULL;
  int o;
  while ((o = getopt_long(argc, argv, "t:T:o:c:s:h", opts, NULL)) != -1) {
    switch (o) {
    case 't': train = optarg; break;
    case 'T': test = optarg; break;
    case 'o': out = optarg; break;
    case 'c': config = optarg; break;
    case 's': scores = optarg; break;
    case 'h':
      printf("usage: faultline detect --train CSV --test CSV --out FILE [--config FILE]\n"
             "                        [--scores CSV]\n\n"
             "Trains on the first file and writes one 0 or 1 per row of the second, nothing\n"
             "else, causally: each row's answer uses only rows up to it (the end of the\n"
             "training file serves as the first test windows' history, as it would for a\n"
             "daemon that kept running).  Without --config the modalities and defaults\n"
             "are chosen from the training file as faultline init chooses them.  --scores\n"
             "also writes the full scored output (as faultline score does).\n");
      return 0;
    default: return 2;
    }
  }
  if (!train || !test || !out) return cli_fail("detect", "--train, --test and --out are required");
  fl_config c;
  if (cli_load_config("detect", config, &c)) return 1;
  fl_table tr = {0}, te = {0}, joined = {0};
  fl_series s = {0};
  fl_scan_result r = {0};
  fl_bundle b = {0};
  int rc = 1, e;
  if (cli_read_csv("detect", train, &tr) || cli_read_csv("detect", test, &te)) goto done;
  if (cli_default_modality("detect", &c, &tr, config != NULL)) goto done;
  if (cli_train("detect", &c, &tr, 1, &b, 1)) goto done;
  int keep = join_tail(&joined, &tr, c.spec.window - 1, &te);
  if (keep < 0) {
    cli_fail("detect", "out of memory");
    goto done;
  }
  if (cli_series("detect", test, &c.spec, &joined, &s)) goto done;
  if ((e = fl_scan(&b, &s, 1, &r))) {
    cli_fail("detect", "scoring failed: %s", fl_strerror(e));
    goto done;
  }
  FILE *f = fopen(out, "w");
  if (!f) {
    cli_fail("detect", "cannot write %s", out);
    goto done;
  }
  for (int row = keep; row < r.rows; row++) fprintf(f, "%d\n", r.flag[row]);
  if (fclose(f)) {
    cli_fail("detect", "cannot write %s", out);
    goto done;
  }
  if (scores && write_scored(scores, &te, &b, &r, keep)) {
    cli_fail("detect", "cannot write %s", scores);
    goto done;
  }
  rc = 0;
done:
  fl_scan_free(&r);
  fl_series_free(&s);
  fl_bundle_free(&b);
  fl_table_free(&tr);
  fl_table_free(&te);
  fl_table_free(&joined);
  fl_config_free(&c);
  return rc;
}
