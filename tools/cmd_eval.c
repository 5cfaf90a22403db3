/* faultline inject | eval
 *
 * inject corrupts a clean recording with labelled fault episodes; eval does
 * the same to a clean held-out recording once per fault type, runs a model
 * over each corrupted copy as the daemon would (causally, one window per
 * tick) and scores detection, localisation and correction against the
 * labels and the clean original. */
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "faultline/error.h"
#include "faultline/eval.h"
#include "faultline/faults.h"
#include "faultline/metrics.h"
#include "faultline/scan.h"

/* Episode geometry, in base ticks.  Spans of 20 to 120 ticks cover a fault
 * seen within one default window (60) and one that outlasts two; the gap
 * keeps episodes apart so that each is scored on its own. */
enum { EV_SPAN_MIN = 20, EV_SPAN_MAX = 120, EV_GAP = 10, EV_CONTEXT = 60 };

/* ---- the data being corrupted ------------------------------------------ */

/* A recording grouped as the model groups it: per modality, every channel's
 * samples in time order (C, rows rate), the table column each sub-sample
 * came from, the channel's standard deviation over the file (raw units) and
 * a label per sample (the fault type id, 0 clean).  Unlike fl_series it has
 * no limit on the channels of a modality, since inject without a config puts
 * every column of a wide file into one. */
typedef struct {
  int rows, n_mod, cap;
  char (*name)[FL_NAME_MAX]; /* (n_mod) each of these */
  int *C, *rate;
  int **col;    /* (C rate) table column of channel c, sub-sample k */
  float **x;    /* (C, rows rate) raw, NaN = missing */
  uint8_t **lab; /* (C, rows rate) */
  float **sd;   /* (C) */
} ev_data;

static void ev_data_free(ev_data *d) {
  for (int i = 0; i < d->n_mod; i++) {
    free(d->col[i]);
    free(d->x[i]);
    free(d->lab[i]);
    free(d->sd[i]);
  }
  free(d->name);
  free(d->C);
  free(d->rate);
  free(d->col);
  free(d->x);
  free(d->lab);
  free(d->sd);
  memset(d, 0, sizeof *d);
}

/* Room for one more modality. */
static int ev_data_grow(ev_data *d) {
  if (d->n_mod < d->cap) return 0;
  int cap = d->cap ? 2 * d->cap : 8;
#define EV_GROW(f)                                                      \
  do {                                                                  \
    void *q = realloc(d->f, sizeof *d->f * (size_t)cap);                \
    if (!q) return FL_ENOMEM;                                           \
    d->f = q;                                                           \
    memset(d->f + d->cap, 0, sizeof *d->f * (size_t)(cap - d->cap));    \
  } while (0)
  EV_GROW(name);
  EV_GROW(C);
  EV_GROW(rate);
  EV_GROW(col);
  EV_GROW(x);
  EV_GROW(lab);
  EV_GROW(sd);
#undef EV_GROW
  d->cap = cap;
  return 0;
}

/* Adds modality `name` whose channel c, sub-sample k is table column
 * cols[c rate + k], copying the values and measuring each channel's std. */
static int ev_data_add(ev_data *d, const fl_table *t, const char *name, int C, int rate,
                       const int *cols) {
  if (ev_data_grow(d)) return FL_ENOMEM;
  int i = d->n_mod;
  size_t len = (size_t)t->rows * rate;
  snprintf(d->name[i], FL_NAME_MAX, "%s", name);
  d->C[i] = C;
  d->rate[i] = rate;
  d->col[i] = malloc(sizeof(int) * C * rate);
  d->x[i] = malloc(sizeof(float) * (len ? len : 1) * C);
  d->lab[i] = calloc((len ? len : 1) * C, 1);
  d->sd[i] = malloc(sizeof(float) * C);
  d->n_mod++;
  if (!d->col[i] || !d->x[i] || !d->lab[i] || !d->sd[i]) return FL_ENOMEM;
  memcpy(d->col[i], cols, sizeof(int) * C * rate);
  for (int c = 0; c < C; c++) {
    for (int k = 0; k < rate; k++)
      for (int r = 0; r < t->rows; r++)
        d->x[i][(size_t)c * len + (size_t)r * rate + k] =
            t->data[(size_t)r * t->cols + cols[c * rate + k]];
    d->sd[i][c] = fl_eval_spread(d->x[i] + (size_t)c * len, len);
  }
  return 0;
}

/* The model's layout: every column the spec names must be in the table. */
static int ev_data_from_spec(ev_data *d, const fl_model_spec *spec, const fl_table *t,
                             char *err, size_t errlen) {
  memset(d, 0, sizeof *d);
  d->rows = t->rows;
  char name[2 * FL_NAME_MAX];
  for (int i = 0; i < spec->n_mod; i++) {
    const fl_modality *md = &spec->mod[i];
    int *cols = malloc(sizeof(int) * md->channels * md->rate), e = 0;
    if (!cols) {
      snprintf(err, errlen, "out of memory");
      return FL_ENOMEM;
    }
    for (int c = 0; c < md->channels && !e; c++)
      for (int k = 0; k < md->rate && !e; k++) {
        fl_model_column_name(spec, i, c, k, name, sizeof name);
        if ((cols[c * md->rate + k] = fl_table_col(t, name)) < 0) {
          snprintf(err, errlen, "column \"%s\" (modality %s) is not in the data", name,
                   md->name);
          e = FL_ENOTFOUND;
        }
      }
    if (!e && (e = ev_data_add(d, t, md->name, md->channels, md->rate, cols)))
      snprintf(err, errlen, "out of memory");
    free(cols);
    if (e) return e;
  }
  return 0;
}

/* Without a config: every numeric column but the label columns is a rate-1
 * channel of one modality "all". */
static int ev_data_all_columns(ev_data *d, const fl_table *t, char *err, size_t errlen) {
  memset(d, 0, sizeof *d);
  d->rows = t->rows;
  int *cols = malloc(sizeof(int) * (t->cols ? t->cols : 1)), n = 0;
  if (!cols) return FL_ENOMEM;
  for (int j = 0; j < t->cols; j++)
    if (!cli_is_label(t->names[j])) cols[n++] = j;
  int e = 0;
  if (!n) {
    snprintf(err, errlen, "the data has no numeric sensor column");
    e = FL_EINVAL;
  } else if ((e = ev_data_add(d, t, "all", n, 1, cols))) {
    snprintf(err, errlen, "out of memory");
  }
  free(cols);
  return e;
}

static void ev_clear_labels(ev_data *d) {
  for (int i = 0; i < d->n_mod; i++)
    memset(d->lab[i], 0, (size_t)d->C[i] * d->rows * d->rate[i]);
}

/* ---- injection --------------------------------------------------------- */

/* The most episodes that fit between row `from` and the end. */
static int ev_max_episodes(int rows, int from) {
  return rows > from ? (rows - from) / (EV_SPAN_MIN + EV_GAP) : 0;
}

/* Injects `count` episodes into d over rows [from, rows): the stretch is cut
 * into count equal parts and each part gets one episode of 20-120 ticks
 * (shorter if the part is short) that ends at least EV_GAP ticks before the
 * part does.  Types cycle through types[] in an order shuffled afresh each
 * cycle, so every type appears once before any appears twice; the channel
 * is uniform over all channels (timeshift: the modality is uniform over the
 * modalities).  Each fault is written into a copy of its modality's block
 * from up to EV_CONTEXT ticks before the episode to its end, so that a step
 * ends with the episode, a gain scales about the recent level and a time
 * shift replays real history; labels go into d->lab. */
static int ev_inject(ev_data *d, const fl_fault_params params[FL_FAULT_COUNT],
                     const fl_fault_type *types, int ntypes, int count, int from,
                     uint64_t seed, fl_eval_episode *eps, char *err, size_t errlen) {
  int part = count > 0 ? (d->rows - from) / count : 0;
  if (count <= 0 || from < 0 || part < EV_SPAN_MIN + EV_GAP) {
    snprintf(err, errlen,
             "%d episodes do not fit in rows %d..%d: each needs %d rows, so at most %d fit",
             count, from, d->rows - 1, EV_SPAN_MIN + EV_GAP, ev_max_episodes(d->rows, from));
    return FL_EINVAL;
  }
  int total_ch = 0;
  for (int i = 0; i < d->n_mod; i++) total_ch += d->C[i];
  size_t maxblk = 0;
  for (int i = 0; i < d->n_mod; i++) {
    size_t n = (size_t)d->C[i] * (EV_CONTEXT + EV_SPAN_MAX) * d->rate[i];
    if (n > maxblk) maxblk = n;
  }
  float *blk = malloc(sizeof(float) * maxblk);
  uint8_t *bl = malloc(maxblk);
  fl_fault_type order[FL_FAULT_COUNT];
  if (!blk || !bl) {
    free(blk);
    free(bl);
    snprintf(err, errlen, "out of memory");
    return FL_ENOMEM;
  }
  fl_rng rng;
  fl_rng_seed(&rng, seed);
  int e = 0;
  for (int k = 0; k < count; k++) {
    if (k % ntypes == 0) {
      memcpy(order, types, sizeof(fl_fault_type) * ntypes);
      for (int j = ntypes - 1; j > 0; j--) {
        int r = (int)fl_rng_below(&rng, (uint32_t)j + 1);
        fl_fault_type tmp = order[j];
        order[j] = order[r];
        order[r] = tmp;
      }
    }
    fl_eval_episode *ep = &eps[k];
    ep->type = order[k % ntypes];
    if (ep->type == FL_FAULT_TIMESHIFT) {
      ep->mod = (int)fl_rng_below(&rng, (uint32_t)d->n_mod);
      ep->ch = -1;
    } else {
      int g = (int)fl_rng_below(&rng, (uint32_t)total_ch);
      for (ep->mod = 0; g >= d->C[ep->mod]; ep->mod++) g -= d->C[ep->mod];
      ep->ch = g;
    }
    int longest = part - EV_GAP < EV_SPAN_MAX ? part - EV_GAP : EV_SPAN_MAX;
    ep->len = EV_SPAN_MIN + (int)fl_rng_below(&rng, (uint32_t)(longest - EV_SPAN_MIN + 1));
    ep->start = from + k * part +
                (int)fl_rng_below(&rng, (uint32_t)(part - EV_GAP - ep->len + 1));
    int i = ep->mod, C = d->C[i], rate = d->rate[i];
    int pre = ep->start < EV_CONTEXT ? ep->start : EV_CONTEXT;
    int T = (pre + ep->len) * rate;
    size_t len = (size_t)d->rows * rate, b0 = (size_t)(ep->start - pre) * rate;
    for (int c = 0; c < C; c++)
      memcpy(blk + (size_t)c * T, d->x[i] + (size_t)c * len + b0, sizeof(float) * T);
    memset(bl, 0, (size_t)C * T);
    fl_fault_params p = params[ep->type];
    /* The configured shift is in base ticks' samples of a rate-1 stream. */
    p.shift *= rate;
    if ((e = fl_fault_inject(ep->type, &p, blk, bl, C, T, ep->ch < 0 ? 0 : ep->ch, pre * rate,
                             ep->len * rate, d->sd[i], &rng))) {
      snprintf(err, errlen, "injecting %s into modality %s failed: %s",
               fl_fault_name(ep->type), d->name[i], fl_strerror(e));
      break;
    }
    ep->labelled = 0;
    for (int c = 0; c < C; c++) {
      memcpy(d->x[i] + (size_t)c * len + b0, blk + (size_t)c * T, sizeof(float) * T);
      for (int t = 0; t < T; t++)
        if (bl[(size_t)c * T + t]) {
          d->lab[i][(size_t)c * len + b0 + t] = (uint8_t)ep->type;
          ep->labelled++;
        }
    }
  }
  free(blk);
  free(bl);
  return e;
}

/* Row r's fault type (0 if none of its samples is labelled) and modality. */
static int ev_row_label(const ev_data *d, int r, int *modality) {
  for (int i = 0; i < d->n_mod; i++) {
    size_t len = (size_t)d->rows * d->rate[i];
    for (int c = 0; c < d->C[i]; c++)
      for (int k = 0; k < d->rate[i]; k++) {
        uint8_t l = d->lab[i][(size_t)c * len + (size_t)r * d->rate[i] + k];
        if (l) {
          if (modality) *modality = i;
          return l;
        }
      }
  }
  if (modality) *modality = -1;
  return 0;
}

/* Parses a fault type name, or explains which names exist. */
static int ev_parse_fault(const char *cmd, const char *name, fl_fault_type *t) {
  if (!fl_fault_parse(name, t) && *t != FL_FAULT_NONE) return 0;
  char list[512] = "";
  for (int k = 1; k < FL_FAULT_COUNT; k++) {
    strcat(list, fl_fault_name((fl_fault_type)k));
    if (k + 1 < FL_FAULT_COUNT) strcat(list, ", ");
  }
  return cli_fail(cmd, "unknown fault type \"%s\"; valid types: %s", name, list);
}

static int ev_parse_int(const char *cmd, const char *opt, const char *v, long lo, long hi,
                        long *out) {
  char *end;
  long x = strtol(v, &end, 10);
  if (end == v || *end || x < lo || x > hi)
    return cli_fail(cmd, "%s must be an integer in [%ld, %ld], not \"%s\"", opt, lo, hi, v);
  *out = x;
  return 0;
}

static int ev_parse_seed(const char *cmd, const char *v, uint64_t *out) {
  char *end;
  if (*v == '-') return cli_fail(cmd, "--seed must be a non-negative integer, not \"%s\"", v);
  unsigned long long x = strtoull(v, &end, 10);
  if (end == v || *end) return cli_fail(cmd, "--seed must be a non-negative integer, not \"%s\"", v);
  *out = x;
  return 0;
}

/* The labels file: datetime (if the data has one), fault, fault_name,
 * modality, then <column>_label for every channel column in the data's
 * column order.  Written to a temporary name and renamed. */
static int ev_write_labels(const char *path, const fl_table *t, const ev_data *d) {
  /* For every table column, where its samples live (modality, channel,
   * sub-sample), or -1 for a column that is not a channel. */
  int *where = malloc(sizeof(int) * 3 * (t->cols ? t->cols : 1));
  char tmp[4096];
  if (!where) return -1;
  snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
  FILE *f = fopen(tmp, "w");
  if (!f) {
    free(where);
    return -1;
  }
  for (int j = 0; j < t->cols; j++) where[3 * j] = -1;
  for (int i = 0; i < d->n_mod; i++)
    for (int c = 0; c < d->C[i]; c++)
      for (int k = 0; k < d->rate[i]; k++) {
        int j = d->col[i][c * d->rate[i] + k];
        where[3 * j] = i;
        where[3 * j + 1] = c;
        where[3 * j + 2] = k;
      }
  if (t->stamps) fputs("datetime,", f);
  fputs("fault,fault_name,modality", f);
  char name[1024];
  for (int j = 0; j < t->cols; j++)
    if (where[3 * j] >= 0) {
      snprintf(name, sizeof name, "%s_label", t->names[j]);
      fputc(',', f);
      fl_csv_put_field(f, name);
    }
  fputc('\n', f);
  for (int r = 0; r < t->rows; r++) {
    int mod, l = ev_row_label(d, r, &mod);
    if (t->stamps) {
      fl_csv_put_field(f, t->stamps[r]);
      fputc(',', f);
    }
    fprintf(f, "%d,%s,%d", l, fl_fault_name((fl_fault_type)l), mod);
    for (int j = 0; j < t->cols; j++) {
      int i = where[3 * j];
      if (i < 0) continue;
      size_t len = (size_t)d->rows * d->rate[i];
      uint8_t v = d->lab[i][(size_t)where[3 * j + 1] * len + (size_t)r * d->rate[i] +
                            where[3 * j + 2]];
      fputs(v ? ",1" : ",0", f);
    }
    fputc('\n', f);
  }
  free(where);
  int bad = ferror(f);
  bad |= fflush(f) != 0;
  bad |= fsync(fileno(f)) != 0;
  bad |= fclose(f) != 0;
  if (bad || rename(tmp, path)) {
    unlink(tmp);
    return -1;
  }
  return 0;
}

/* ---- inject ------------------------------------------------------------ */

int cmd_inject(int argc, char **argv) {
  static const struct option opts[] = {
      {"in", 1, 0, 'i'},   {"out", 1, 0, 'o'},   {"labels", 1, 0, 'l'}, {"fault", 1, 0, 'f'},
      {"seed", 1, 0, 's'}, {"config", 1, 0, 'c'}, {"count", 1, 0, 'n'}, {"from", 1, 0, 'F'},
      {"help", 0, 0, 'h'}, {0, 0, 0, 0}};
  const char *in = NULL, *out = NULL, *labels = NULL, *config = NULL;
  fl_fault_type types[FL_FAULT_COUNT];
  int ntypes = 0, o;
  long count = 20, from = 0;
  uint64_t seed = 1;
  optind = 1;
  while ((o = getopt_long(argc, argv, "i:o:l:f:s:c:n:F:h", opts, NULL)) != -1) {
    switch (o) {
    case 'i': in = optarg; break;
    case 'o': out = optarg; break;
    case 'l': labels = optarg; break;
    case 'c': config = optarg; break;
    case 'f':
      if (ev_parse_fault("inject", optarg, &types[0])) return 1;
      ntypes = 1;
      break;
    case 's':
      if (ev_parse_seed("inject", optarg, &seed)) return 1;
      break;
    case 'n':
      if (ev_parse_int("inject", "--count", optarg, 1, 1000000, &count)) return 1;
      break;
    case 'F':
      if (ev_parse_int("inject", "--from", optarg, 0, 2000000000, &from)) return 1;
      break;
    case 'h':
      printf("usage: faultline inject --in CSV --out CSV --labels CSV [--fault TYPE]\n"
             "                        [--seed N] [--config FILE] [--count N] [--from ROW]\n\n"
             "Corrupts a clean recording with labelled fault episodes.  The rows from ROW on\n"
             "are cut into N equal stretches and each gets one episode of %d-%d rows that\n"
             "ends at least %d rows before its stretch does.  An episode is one fault (the\n"
             "types in turn, in a seeded random order, or only TYPE) on one random channel\n"
             "(timeshift: on a whole modality), sized in that channel's standard deviation\n"
             "over the file, in raw units.  With --config, channels are grouped into the\n"
             "config's modalities (a channel at rate r spans columns NAME.0..NAME.<r-1>);\n"
             "without, every numeric column except anomaly, anomaly_kind and changepoint is\n"
             "a channel of one modality.  The same seed gives the same faults.\n\n"
             "  --out CSV     the corrupted data: the same columns, datetime kept\n"
             "  --labels CSV  one row per input row: fault (type id, 0 none), fault_name,\n"
             "                modality (index, -1 none) and COLUMN_label (0/1) for every\n"
             "                channel column, 1 where the fault changed or killed the sample\n"
             "  --fault TYPE  noise, burst, spike, step, offset, drift, drift_exp, sine,\n"
             "                dropout, missing, stuck, saturation, gain or timeshift\n"
             "                (default: all of them)\n"
             "  --count N     episodes (default 20)\n"
             "  --from ROW    first row that may be corrupted (default 0)\n"
             "  --seed N      random seed (default 1)\n",
             EV_SPAN_MIN, EV_SPAN_MAX, EV_GAP);
      return 0;
    default: return 2;
    }
  }
  if (optind < argc) return cli_fail("inject", "unexpected argument \"%s\"", argv[optind]);
  if (!in || !out || !labels)
    return cli_fail("inject", "--in, --out and --labels are required (see --help)");
  if (!ntypes)
    for (int k = 1; k < FL_FAULT_COUNT; k++) types[ntypes++] = (fl_fault_type)k;
  fl_config c;
  if (cli_load_config("inject", config, &c)) return 1;
  fl_table t;
  if (cli_read_csv("inject", in, &t)) {
    fl_config_free(&c);
    return 1;
  }
  ev_data d;
  fl_eval_episode *eps = NULL;
  char err[512];
  int rc = 1;
  int e = c.spec.n_mod ? ev_data_from_spec(&d, &c.spec, &t, err, sizeof err)
                       : ev_data_all_columns(&d, &t, err, sizeof err);
  if (e) {
    cli_fail("inject", "%s: %s", in, err);
    goto done;
  }
  if (from >= t.rows) {
    cli_fail("inject", "--from %ld is past the data's last row (%d rows)", from, t.rows);
    goto done;
  }
  if (!(eps = calloc((size_t)count, sizeof *eps))) {
    cli_fail("inject", "out of memory");
    goto done;
  }
  if (ev_inject(&d, c.train.faults, types, ntypes, (int)count, (int)from, seed, eps, err,
                sizeof err)) {
    cli_fail("inject", "%s", err);
    goto done;
  }
  /* Back into the table: only channel columns change. */
  for (int i = 0; i < d.n_mod; i++) {
    size_t len = (size_t)d.rows * d.rate[i];
    for (int ch = 0; ch < d.C[i]; ch++)
      for (int k = 0; k < d.rate[i]; k++) {
        int j = d.col[i][ch * d.rate[i] + k];
        for (int r = 0; r < t.rows; r++)
          t.data[(size_t)r * t.cols + j] = d.x[i][(size_t)ch * len + (size_t)r * d.rate[i] + k];
      }
  }
  if (fl_csv_write(out, &t, err, sizeof err)) {
    cli_fail("inject", "%s", err);
    goto done;
  }
  if (ev_write_labels(labels, &t, &d)) {
    cli_fail("inject", "cannot write %s", labels);
    goto done;
  }
  rc = 0;
done:
  free(eps);
  ev_data_free(&d);
  fl_table_free(&t);
  fl_config_free(&c);
  return rc;
}

/* ---- eval -------------------------------------------------------------- */

/* Correction estimates scored on the faulted samples. */
enum {
  EST_INPUT, EST_CORRECTED, EST_INTERP, EST_STAGE1, EST_BLOCK, EST_HOLD, EST_AAKR, EST_ORACLE,
  EST_COUNT
};
static const char *const est_key[EST_COUNT] = {"input",    "corrected", "interp",
                                               "stage1",   "estimate",  "hold",
                                               "aakr",     "oracle_mask"};
/* AAKR's memory (rows of the training recording) and bandwidth (std units). */
enum { EV_AAKR_MEMORY = 600 };
#define EV_AAKR_H 1.0f

typedef struct {
  const char *name;
  uint64_t seed;         /* of the injection (faultline inject --seed) */
  double auroc;
  fl_binary_stats st;
  size_t rows_faulty, rows_clean;
  fl_eval_detection det;
  double se[EST_COUNT];  /* squared errors in std units */
  size_t n[EST_COUNT];
  int nm;                /* modalities */
  double *se_mod;        /* (EST_COUNT, nm) the same, per faulted modality */
  size_t *n_mod;         /* (EST_COUNT, nm) */
  /* Clean rows, all of them and the settled ones: at least one window after
   * the end of every earlier episode, where the detector's window no longer
   * holds a faulted sample. */
  size_t clean_rows, settled_rows, settled_alarms;
  double se_clean, se_settled; /* corrected vs input, std units */
  size_t n_clean, n_settled;
} ev_result;

static int ev_result_init(ev_result *r, int nm) {
  r->nm = nm;
  r->se_mod = calloc((size_t)EST_COUNT * (nm ? nm : 1), sizeof *r->se_mod);
  r->n_mod = calloc((size_t)EST_COUNT * (nm ? nm : 1), sizeof *r->n_mod);
  return r->se_mod && r->n_mod ? 0 : FL_ENOMEM;
}

static void ev_result_free(ev_result *r) {
  free(r->se_mod);
  free(r->n_mod);
  r->se_mod = NULL;
  r->n_mod = NULL;
}

static int ev_pool_stats(const fl_eval_pool *p, ev_result *r) {
  int e = fl_eval_pool_stats(p, &r->auroc, &r->st);
  if (e) return e;
  r->rows_faulty = r->st.tp + r->st.fn;
  r->rows_clean = r->st.fp + r->st.tn;
  return 0;
}

/* The model's estimate of the newest tick of the window ending at every
 * row that holds a labelled sample, as fl_scan's stride-1 windows give it:
 * stage 1 alone (compute block bypassed) into est[EST_STAGE1] and the
 * corrected estimate (block on, not gated) into est[EST_BLOCK], raw units,
 * NaN on rows with no label. */
static int ev_estimates(fl_bundle *b, const ev_data *d, const fl_series *s,
                        float **est1, float **est2) {
  enum { BATCH = 64 };
  fl_model *m = b->model;
  const fl_model_spec *spec = fl_model_spec_of(m);
  int W = spec->window, e = FL_ENOMEM, ends[BATCH], nb = 0;
  int *all = malloc(sizeof(int) * (size_t)fl_model_channels(m));
  float **raw[BATCH] = {0}, *buf = NULL;
  fl_ctx *ctx = NULL;
  size_t maxct = 0;
  if (!all) goto done;
  for (int c = 0; c < fl_model_channels(m); c++) all[c] = 1;
  for (int k = 0; k < BATCH; k++)
    if (!(raw[k] = calloc((size_t)d->n_mod, sizeof *raw[k]))) goto done;
  for (int i = 0; i < d->n_mod; i++) {
    size_t n = (size_t)d->C[i] * d->rows * d->rate[i];
    if ((size_t)d->C[i] * W * d->rate[i] > maxct) maxct = (size_t)d->C[i] * W * d->rate[i];
    for (size_t k = 0; k < n; k++) est1[i][k] = est2[i][k] = NAN;
    for (int k = 0; k < BATCH; k++)
      if (!(raw[k][i] = malloc(sizeof(float) * d->C[i] * W * d->rate[i]))) goto done;
  }
  if (!(buf = malloc(sizeof(float) * maxct))) goto done;
  if ((e = fl_ctx_create(&ctx, m, BATCH))) goto done;
  for (int r = W - 1; r < d->rows; r++) {
    if (ev_row_label(d, r, NULL)) ends[nb++] = r + 1;
    if (!(nb == BATCH || (r == d->rows - 1 && nb > 0))) continue;
    for (int k = 0; k < nb; k++) {
      if ((e = fl_series_window(s, spec, ends[k], raw[k]))) goto done;
      for (int i = 0; i < d->n_mod; i++)
        if ((e = fl_model_normalise(m, ctx, k, i, raw[k][i], b->clamp))) goto done;
    }
    for (int pass = 0; pass < 2; pass++) {
      if ((e = fl_model_forward(m, ctx, nb, pass, 0))) goto done;
      /* fl_detect_correct substitutes the detector's estimate slot. */
      for (int i = 0; i < d->n_mod; i++)
        memcpy(fl_ctx_estimate(ctx, i), fl_ctx_output(ctx, i),
               sizeof(float) * nb * d->C[i] * W * d->rate[i]);
      float *const *dst = pass ? est2 : est1;
      for (int i = 0; i < d->n_mod; i++) {
        int C = d->C[i], rate = d->rate[i], T = W * rate;
        size_t len = (size_t)d->rows * rate;
        /* The gate wide open gives the estimate in raw units, exactly as
         * the detector would substitute it. */
        for (int k = 0; k < nb; k++) {
          if ((e = fl_detect_correct(m, ctx, k, i, raw[k][i], all, 0.0f, buf))) goto done;
          for (int c = 0; c < C; c++)
            for (int q = 0; q < rate; q++)
              dst[i][(size_t)c * len + (size_t)(ends[k] - 1) * rate + q] =
                  buf[(size_t)c * T + (size_t)(W - 1) * rate + q];
        }
      }
    }
    nb = 0;
  }
  e = 0;
done:
  for (int k = 0; k < BATCH; k++) {
    for (int i = 0; raw[k] && i < d->n_mod; i++) free(raw[k][i]);
    free(raw[k]);
  }
  free(all);
  free(buf);
  fl_ctx_free(ctx);
  return e;
}

/* The interpolation and hold-last-clean baselines of every channel
 * (fl_eval_interpolate, fl_eval_hold_last). */
static void ev_interpolate(const ev_data *d, float **out, float **hold) {
  for (int i = 0; i < d->n_mod; i++) {
    size_t len = (size_t)d->rows * d->rate[i];
    for (int c = 0; c < d->C[i]; c++) {
      fl_eval_interpolate(out[i] + (size_t)c * len, d->x[i] + (size_t)c * len,
                          d->lab[i] + (size_t)c * len, len);
      fl_eval_hold_last(hold[i] + (size_t)c * len, d->x[i] + (size_t)c * len,
                        d->lab[i] + (size_t)c * len, len);
    }
  }
}

/* One row per base tick: every channel standardised with the model's
 * normalisation (a fast channel: the mean of its sub-samples), NaN where a
 * sub-sample is missing. */
static void ev_tick_row(const fl_bundle *b, const ev_data *d, const float *const x[], int r,
                        float *row) {
  const float *mean = fl_model_mean(b->model), *std = fl_model_std(b->model);
  for (int i = 0, off = 0; i < d->n_mod; off += d->C[i], i++) {
    size_t len = (size_t)d->rows * d->rate[i];
    for (int c = 0; c < d->C[i]; c++) {
      double a = 0;
      for (int q = 0; q < d->rate[i]; q++)
        a += x[i][(size_t)c * len + (size_t)r * d->rate[i] + q];
      row[off + c] = (float)((a / d->rate[i] - mean[off + c]) / std[off + c]);
    }
  }
}

/* The AAKR (MSET) baseline: every labelled sample of channel c estimated by
 * kernel regression of c on the other channels at its tick, on a memory of
 * clean training rows, given the true faulty channel. */
static int ev_aakr(const fl_bundle *b, const ev_data *d, const float *mem, int nmem, int d_all,
                   float **out) {
  const float *mean = fl_model_mean(b->model), *std = fl_model_std(b->model);
  float *row = malloc(sizeof(float) * d_all), *q = malloc(sizeof(float) * d_all);
  if (!row || !q) {
    free(row);
    free(q);
    return FL_ENOMEM;
  }
  const float *const *x = (const float *const *)d->x;
  int e = 0;
  for (int i = 0; i < d->n_mod; i++)
    for (size_t k = 0; k < (size_t)d->C[i] * d->rows * d->rate[i]; k++) out[i][k] = NAN;
  for (int r = 0; r < d->rows && !e; r++) {
    int any = 0;
    for (int i = 0; i < d->n_mod; i++)
      for (int c = 0; c < d->C[i]; c++)
        for (int k = 0; k < d->rate[i]; k++)
          any |= d->lab[i][(size_t)c * d->rows * d->rate[i] + (size_t)r * d->rate[i] + k] != 0;
    if (!any) continue;
    ev_tick_row(b, d, x, r, row);
    for (int i = 0, off = 0; i < d->n_mod && !e; off += d->C[i], i++) {
      size_t len = (size_t)d->rows * d->rate[i];
      for (int c = 0; c < d->C[i] && !e; c++) {
        int hit = 0;
        for (int k = 0; k < d->rate[i]; k++) hit |= d->lab[i][(size_t)c * len + (size_t)r * d->rate[i] + k] != 0;
        if (!hit) continue;
        /* The other faulted channels of the tick are no evidence either. */
        for (int j2 = 0, o2 = 0; j2 < d->n_mod; o2 += d->C[j2], j2++)
          for (int c2 = 0; c2 < d->C[j2]; c2++) {
            size_t l2 = (size_t)d->rows * d->rate[j2];
            int bad = 0;
            for (int k = 0; k < d->rate[j2]; k++) bad |= d->lab[j2][(size_t)c2 * l2 + (size_t)r * d->rate[j2] + k] != 0;
            q[o2 + c2] = bad ? NAN : row[o2 + c2];
          }
        float z;
        if ((e = fl_eval_aakr(&z, mem, nmem, d_all, q, off + c, EV_AAKR_H))) break;
        for (int k = 0; k < d->rate[i]; k++)
          out[i][(size_t)c * len + (size_t)r * d->rate[i] + k] = z * std[off + c] + mean[off + c];
      }
    }
  }
  free(row);
  free(q);
  return e;
}

/* The oracle mask: the corrupted copy with every labelled sample missing,
 * through the same scan as the corrected output (network, estimator and
 * stream state), so that only estimation is judged, not detection. */
static int ev_oracle(fl_bundle *b, const ev_data *d, float **out) {
  fl_series s = {.rows = d->rows, .n_mod = d->n_mod, .x = out};
  fl_scan_result r = {0};
  for (int i = 0; i < d->n_mod; i++) {
    size_t n = (size_t)d->C[i] * d->rows * d->rate[i];
    for (size_t k = 0; k < n; k++) out[i][k] = d->lab[i][k] ? NAN : d->x[i][k];
  }
  int e = fl_scan(b, &s, 1, &r);
  for (int i = 0; i < d->n_mod && !e; i++)
    memcpy(out[i], r.corrected.x[i], sizeof(float) * d->C[i] * d->rows * d->rate[i]);
  fl_scan_free(&r);
  return e;
}

/* Scores the scan of one corrupted copy: rows into the pools, episodes,
 * and the correction errors of every estimate.  Each channel's errors go
 * into the totals and the modality's as separate sums in the same order. */
static int ev_score(fl_bundle *b, const ev_data *clean, const ev_data *d,
                    const fl_eval_episode *eps, int neps, const fl_scan_result *sr,
                    float **est[EST_COUNT], fl_eval_pool *pool,
                    fl_eval_pool *all, ev_result *res) {
  const float *std = fl_model_std(b->model);
  int W = fl_model_spec_of(b->model)->window, e = FL_ENOMEM, maxlen = 1;
  for (int i = 0; i < d->n_mod; i++)
    if (d->rows * d->rate[i] > maxlen) maxlen = d->rows * d->rate[i];
  size_t rows = d->rows ? (size_t)d->rows : 1;
  uint8_t *faulty = malloc(rows), *settled = malloc(rows);
  uint8_t *keep = malloc((size_t)maxlen), *keep_settled = malloc((size_t)maxlen);
  if (!faulty || !settled || !keep || !keep_settled) goto done;
  fl_eval_settled(settled, d->rows, eps, neps, W);
  for (int r = 0; r < d->rows; r++) faulty[r] = ev_row_label(d, r, NULL) != 0;
  if ((e = fl_eval_pool_add(pool, sr->score, sr->flag, faulty, d->rows)) ||
      (all && (e = fl_eval_pool_add(all, sr->score, sr->flag, faulty, d->rows))) ||
      (e = fl_eval_detect(&res->det, eps, neps, sr->flag, sr->modality, d->n_mod)))
    goto done;
  for (int r = 0; r < d->rows; r++)
    if (!isnan(sr->score[r]) && !faulty[r] && settled[r]) {
      res->settled_rows++;
      res->settled_alarms += sr->flag[r] != 0;
    }
  int off = 0;
  for (int i = 0; i < d->n_mod; i++) {
    int rate = d->rate[i];
    size_t len = (size_t)d->rows * rate;
    for (int c = 0; c < d->C[i]; c++) {
      size_t o = (size_t)c * len;
      double inv = 1.0 / std[off + c];
      /* The faulted samples (none in a run without episodes): every
       * estimate against the clean original. */
      for (int j = 0; j < EST_COUNT && neps > 0; j++) {
        fl_eval_sq_error(&res->se[j], &res->n[j], est[j][i] + o, clean->x[i] + o,
                         d->lab[i] + o, len, inv);
        fl_eval_sq_error(&res->se_mod[(size_t)j * res->nm + i],
                         &res->n_mod[(size_t)j * res->nm + i], est[j][i] + o,
                         clean->x[i] + o, d->lab[i] + o, len, inv);
      }
      /* The clean rows with a score (rows before the first window are
       * passed through unscored): the corrected output against the input. */
      for (int r = 0; r < d->rows; r++)
        for (int q = 0; q < rate; q++) {
          size_t k = (size_t)r * rate + q;
          keep[k] = !faulty[r] && !isnan(sr->score[r]) && !isnan(clean->x[i][o + k]);
          keep_settled[k] = keep[k] && settled[r];
        }
      fl_eval_sq_error(&res->se_clean, &res->n_clean, sr->corrected.x[i] + o, d->x[i] + o,
                       keep, len, inv);
      fl_eval_sq_error(&res->se_settled, &res->n_settled, sr->corrected.x[i] + o,
                       d->x[i] + o, keep_settled, len, inv);
    }
    off += d->C[i];
  }
  e = 0;
done:
  free(faulty);
  free(settled);
  free(keep);
  free(keep_settled);
  return e;
}

static void ev_add(ev_result *to, const ev_result *from) {
  to->det.episodes += from->det.episodes;
  to->det.detected += from->det.detected;
  to->det.localised += from->det.localised;
  to->det.delay_sum += from->det.delay_sum;
  for (int j = 0; j < EST_COUNT; j++) {
    to->se[j] += from->se[j];
    to->n[j] += from->n[j];
    for (int i = 0; i < to->nm && i < from->nm; i++) {
      to->se_mod[(size_t)j * to->nm + i] += from->se_mod[(size_t)j * from->nm + i];
      to->n_mod[(size_t)j * to->nm + i] += from->n_mod[(size_t)j * from->nm + i];
    }
  }
  to->settled_rows += from->settled_rows;
  to->settled_alarms += from->settled_alarms;
  to->se_clean += from->se_clean;
  to->n_clean += from->n_clean;
  to->se_settled += from->se_settled;
  to->n_settled += from->n_settled;
}

static void ev_num(char *buf, size_t n, double v, const char *fmt) {
  if (isnan(v)) snprintf(buf, n, "-");
  else snprintf(buf, n, fmt, v);
}

#define EV_ROW_FMT \
  "%-11s %6s %6s %6s %6s  %7s %5s %5s  %7s %9s %7s %7s %8s %6s %6s %6s  %6s %6s\n"

static void ev_print_header(FILE *f) {
  fprintf(f, EV_ROW_FMT, "", "rows", "", "", "", "episodes", "", "", "RMSE on", "faulted",
          "samples", "(sd)", "", "", "", "", "clean", "rows");
  fprintf(f, EV_ROW_FMT, "fault", "AUROC", "F1", "FAR", "FARw", "det", "loc", "delay", "input",
          "corrected", "interp*", "stage1", "estimate", "hold", "aakr", "oracle", "RMSE",
          "RMSEw");
}

static void ev_print_row(FILE *f, const ev_result *r, int detection) {
  char a[16], f1[16], far[16], farw[16], det[24], loc[16], dl[16], est[EST_COUNT][16], cl[16],
      clw[16];
  ev_num(a, sizeof a, detection ? r->auroc : NAN, "%.3f");
  ev_num(f1, sizeof f1, detection ? r->st.f1 : NAN, "%.3f");
  ev_num(far, sizeof far, r->st.far, "%.4f");
  ev_num(farw, sizeof farw,
         fl_eval_rate((double)r->settled_alarms, (double)r->settled_rows), "%.4f");
  if (r->det.episodes) snprintf(det, sizeof det, "%d/%d", r->det.detected, r->det.episodes);
  else snprintf(det, sizeof det, "-");
  ev_num(loc, sizeof loc, fl_eval_rate(r->det.localised, r->det.detected), "%.2f");
  ev_num(dl, sizeof dl, fl_eval_rate(r->det.delay_sum, r->det.detected), "%.1f");
  for (int j = 0; j < EST_COUNT; j++)
    ev_num(est[j], sizeof est[j], fl_eval_rmse(r->se[j], r->n[j]), "%.3f");
  ev_num(cl, sizeof cl, fl_eval_rmse(r->se_clean, r->n_clean), "%.4f");
  ev_num(clw, sizeof clw, fl_eval_rmse(r->se_settled, r->n_settled), "%.4f");
  fprintf(f, EV_ROW_FMT, r->name, a, f1, far, farw, det, loc, dl, est[0], est[1], est[2],
          est[3], est[4], est[5], est[6], est[7], cl, clw);
}

static json_t *ev_real(double v) { return isfinite(v) ? json_real(v) : json_null(); }

static json_t *ev_json(const ev_result *r, int detection, const ev_data *d) {
  json_t *o = json_object(), *rm = json_object(), *ns = json_object();
  if (detection) {
    if (r->seed) json_object_set_new(o, "seed", json_integer((json_int_t)r->seed));
    json_object_set_new(o, "auroc", ev_real(r->auroc));
    json_object_set_new(o, "f1", ev_real(r->st.f1));
    json_object_set_new(o, "precision", ev_real(r->st.precision));
    json_object_set_new(o, "recall", ev_real(r->st.recall));
  }
  json_object_set_new(o, "far", ev_real(r->st.far));
  json_object_set_new(o, "far_settled",
                      ev_real(fl_eval_rate((double)r->settled_alarms, (double)r->settled_rows)));
  json_object_set_new(o, "rows_faulty", json_integer((json_int_t)r->rows_faulty));
  json_object_set_new(o, "rows_clean", json_integer((json_int_t)r->rows_clean));
  json_object_set_new(o, "rows_settled", json_integer((json_int_t)r->settled_rows));
  json_object_set_new(o, "false_alarm_rows", json_integer((json_int_t)r->st.fp));
  if (detection) {
    json_object_set_new(o, "episodes", json_integer(r->det.episodes));
    json_object_set_new(o, "detected", json_integer(r->det.detected));
    json_object_set_new(o, "localised", json_integer(r->det.localised));
    json_object_set_new(o, "detection_rate",
                        ev_real(fl_eval_rate(r->det.detected, r->det.episodes)));
    json_object_set_new(o, "localisation",
                        ev_real(fl_eval_rate(r->det.localised, r->det.detected)));
    json_object_set_new(o, "delay", ev_real(fl_eval_rate(r->det.delay_sum, r->det.detected)));
    for (int j = 0; j < EST_COUNT; j++) {
      json_object_set_new(rm, est_key[j], ev_real(fl_eval_rmse(r->se[j], r->n[j])));
      json_object_set_new(ns, est_key[j], json_integer((json_int_t)r->n[j]));
    }
  }
  json_object_set_new(rm, "clean", ev_real(fl_eval_rmse(r->se_clean, r->n_clean)));
  json_object_set_new(rm, "clean_settled", ev_real(fl_eval_rmse(r->se_settled, r->n_settled)));
  json_object_set_new(ns, "clean", json_integer((json_int_t)r->n_clean));
  json_object_set_new(ns, "clean_settled", json_integer((json_int_t)r->n_settled));
  json_object_set_new(o, "rmse", rm);
  json_object_set_new(o, "samples", ns);
  if (detection) {
    json_t *bm = json_object();
    for (int i = 0; i < d->n_mod; i++) {
      json_t *mo = json_object();
      for (int j = 0; j < EST_COUNT; j++)
        json_object_set_new(mo, est_key[j], ev_real(fl_eval_rmse(r->se_mod[(size_t)j * r->nm + i],
                                                                   r->n_mod[(size_t)j * r->nm + i])));
      json_object_set_new(mo, "samples",
                          json_integer((json_int_t)r->n_mod[(size_t)EST_CORRECTED * r->nm + i]));
      json_object_set_new(bm, d->name[i], mo);
    }
    json_object_set_new(o, "rmse_by_modality", bm);
  }
  return o;
}

int cmd_eval(int argc, char **argv) {
  static const struct option opts[] = {
      {"model", 1, 0, 'm'},    {"data", 1, 0, 'd'}, {"config", 1, 0, 'c'},
      {"seed", 1, 0, 's'},     {"episodes", 1, 0, 'n'}, {"json", 1, 0, 'j'},
      {"fault", 1, 0, 'f'},    {"memory", 1, 0, 'M'}, {"help", 0, 0, 'h'}, {0, 0, 0, 0}};
  const char *model = NULL, *data = NULL, *config = NULL, *json = NULL, *memory = NULL;
  fl_fault_type types[FL_FAULT_COUNT];
  int ntypes = 0, o;
  long episodes = 20;
  uint64_t seed = 1;
  optind = 1;
  while ((o = getopt_long(argc, argv, "m:d:c:s:n:j:f:M:h", opts, NULL)) != -1) {
    switch (o) {
    case 'm': model = optarg; break;
    case 'M': memory = optarg; break;
    case 'd': data = optarg; break;
    case 'c': config = optarg; break;
    case 'j': json = optarg; break;
    case 'f':
      if (ev_parse_fault("eval", optarg, &types[0])) return 1;
      ntypes = 1;
      break;
    case 's':
      if (ev_parse_seed("eval", optarg, &seed)) return 1;
      break;
    case 'n':
      if (ev_parse_int("eval", "--episodes", optarg, 1, 1000000, &episodes)) return 1;
      break;
    case 'h':
      printf(
          "usage: faultline eval --model MODEL --data CSV [--config FILE] [--seed N]\n"
          "                      [--episodes N] [--fault TYPE] [--json FILE]\n"
          "                      [--memory TRAIN_CSV]\n\n"
          "Evaluates a model on a CLEAN held-out recording.  For each fault type it injects\n"
          "N episodes (as faultline inject does, from the first full window on, a seed per\n"
          "type) into a copy, runs the model over it causally with one window per row, and\n"
          "reports per type and overall:\n"
          "  AUROC   row-level window score against the labels (a row is faulty if any of\n"
          "          its samples is), over rows with a score; ties count one half\n"
          "  F1      of the debounced flag, row level\n"
          "  FAR     false-alarm rate: flagged clean rows / clean rows (the row \"clean\"\n"
          "          is the uncorrupted recording); it includes the rows just after an\n"
          "          episode, while the detector's window still holds faulted samples\n"
          "  FARw    the same over settled clean rows only: a window or more after every\n"
          "          episode's end\n"
          "  det     episodes with a flagged row inside their span / episodes\n"
          "  loc     share of detected episodes whose most frequently flagged modality\n"
          "          inside the span is the faulted one\n"
          "  delay   mean rows from an episode's onset to its first flag\n"
          "  RMSE    on the faulted samples, in the model's per-channel std units, of the\n"
          "          corrupted input, the gated corrected output, linear interpolation\n"
          "          across each labelled run (interp*: it knows the labels and the\n"
          "          future, not causal), the stage-1 estimate (compute block bypassed),\n"
          "          the corrected estimate (block on, ungated), each the newest tick of\n"
          "          its window; hold: the last clean value before the fault (causal,\n"
          "          knows the labels); aakr: kernel regression of the faulty channel on\n"
          "          the others (MSET's estimator, %d rows of --memory, bandwidth %.1f\n"
          "          sd, knows the faulty channel); oracle: the corrected output with\n"
          "          the labelled samples masked (estimation without detection)\n"
          "  clean   RMSE of the corrected output against the input on the clean rows\n"
          "          (no label), std units: gating should leave them untouched; RMSEw\n"
          "          on the settled clean rows only\n\n"
          "  --episodes N  episodes per fault type (default 20)\n"
          "  --fault TYPE  evaluate one fault type only\n"
          "  --config FILE the model's configuration: its modalities must match the\n"
          "                model's, and its [train] faults list selects the types evaluated\n"
          "  --seed N      random seed (default 1)\n"
          "  --memory CSV  clean training rows for the aakr baseline (without: no aakr)\n"
          "  --json FILE   also write every number as JSON (NaN as null)\n",
          EV_AAKR_MEMORY, (double)EV_AAKR_H);
      return 0;
    default: return 2;
    }
  }
  if (optind < argc) return cli_fail("eval", "unexpected argument \"%s\"", argv[optind]);
  if (!model || !data) return cli_fail("eval", "--model and --data are required (see --help)");
  char err[512];
  fl_config cfg;
  if (cli_load_config("eval", config, &cfg)) return 1;
  fl_bundle b;
  if (fl_bundle_load(&b, model, err, sizeof err)) return cli_fail("eval", "%s", err);
  const fl_model_spec *spec = fl_model_spec_of(b.model);
  int rc = 1, e;
  fl_table t = {0};
  ev_data clean = {0}, d = {0};
  fl_eval_episode *eps = NULL;
  ev_result *res = NULL, total = {0}, base = {0};
  fl_eval_pool pool = {0}, all = {0};
  fl_scan_result sr = {0};
  float *mem = NULL;
  int nmem = 0, d_all = fl_model_channels(b.model);
  float **est[EST_COUNT] = {0};
  json_t *root = NULL;
  for (int j = 0; j < EST_COUNT; j++)
    if (!(est[j] = calloc((size_t)spec->n_mod, sizeof *est[j]))) {
      cli_fail("eval", "out of memory");
      goto done;
    }
  if (ev_result_init(&total, spec->n_mod) || ev_result_init(&base, spec->n_mod)) {
    cli_fail("eval", "out of memory");
    goto done;
  }
  if (config && cfg.spec.n_mod && !cli_same_layout(spec, &cfg.spec, err, sizeof err)) {
    cli_fail("eval", "%s does not describe %s: %s", config, model, err);
    goto done;
  }
  if (!ntypes) {
    if (config)
      for (int k = 0; k < cfg.train.ntypes; k++)
        if (cfg.train.types[k] != FL_FAULT_NONE) types[ntypes++] = cfg.train.types[k];
    if (!ntypes)
      for (int k = 1; k < FL_FAULT_COUNT; k++) types[ntypes++] = (fl_fault_type)k;
  }
  if (cli_read_csv("eval", data, &t)) goto done;
  int ja = fl_table_col(&t, "anomaly");
  if (ja >= 0)
    for (int r = 0; r < t.rows; r++)
      if (t.data[(size_t)r * t.cols + ja] > 0) {
        fprintf(stderr,
                "faultline eval: warning: %s has labelled anomalies (row %d on); eval expects "
                "clean data and counts them as clean rows\n",
                data, r + 1);
        break;
      }
  if (ev_data_from_spec(&clean, spec, &t, err, sizeof err) ||
      ev_data_from_spec(&d, spec, &t, err, sizeof err)) {
    cli_fail("eval", "%s: %s", data, err);
    goto done;
  }
  int W = spec->window;
  if (ev_max_episodes(t.rows, W) < episodes) {
    cli_fail("eval", "%s has %d rows: after the first window (%d rows) at most %d episodes "
             "fit, not %ld; pass fewer --episodes",
             data, t.rows, W, ev_max_episodes(t.rows, W), episodes);
    goto done;
  }
  for (int j = 0; j < EST_COUNT; j++)
    for (int i = 0; i < d.n_mod; i++)
      if (j != EST_INPUT && j != EST_CORRECTED &&
          !(est[j][i] = malloc(sizeof(float) * d.C[i] * (size_t)d.rows * d.rate[i]))) {
        cli_fail("eval", "out of memory");
        goto done;
      }
  eps = calloc((size_t)episodes, sizeof *eps);
  res = calloc((size_t)ntypes, sizeof *res);
  int res_ok = eps && res;
  for (int k = 0; res_ok && k < ntypes; k++) res_ok = !ev_result_init(&res[k], spec->n_mod);
  if (!res_ok) {
    cli_fail("eval", "out of memory");
    goto done;
  }
  if (memory) {
    fl_table mt = {0};
    ev_data md = {0};
    float *rows = NULL;
    if (cli_read_csv("eval", memory, &mt)) goto done;
    e = ev_data_from_spec(&md, spec, &mt, err, sizeof err);
    if (!e && (!(rows = malloc(sizeof(float) * (size_t)(mt.rows ? mt.rows : 1) * d_all)) ||
               !(mem = malloc(sizeof(float) * EV_AAKR_MEMORY * (size_t)d_all))))
      e = FL_ENOMEM;
    if (!e) {
      const float *const *mx = (const float *const *)md.x;
      for (int r = 0; r < md.rows; r++) ev_tick_row(&b, &md, mx, r, rows + (size_t)r * d_all);
      nmem = fl_eval_aakr_memory(mem, EV_AAKR_MEMORY, rows, md.rows, d_all);
      if (nmem < 1) e = FL_EINVAL;
    }
    free(rows);
    ev_data_free(&md);
    fl_table_free(&mt);
    if (e) {
      cli_fail("eval", "%s: %s", memory, e == FL_EINVAL ? "no complete row" : err);
      goto done;
    }
  }
  fl_series s = {.rows = d.rows, .n_mod = d.n_mod, .x = d.x};

  /* The uncorrupted recording: false alarms and the untouched pass-through. */
  if ((e = fl_scan(&b, &s, 1, &sr))) {
    cli_fail("eval", "scoring failed: %s", fl_strerror(e));
    goto done;
  }
  base.name = "clean";
  if ((e = ev_score(&b, &clean, &d, eps, 0, &sr, est, &pool, NULL, &base)) ||
      (e = ev_pool_stats(&pool, &base))) {
    cli_fail("eval", "%s", fl_strerror(e));
    goto done;
  }
  fl_scan_free(&sr);

  for (int k = 0; k < ntypes; k++) {
    ev_result *r = &res[k];
    r->name = fl_fault_name(types[k]);
    for (int i = 0; i < d.n_mod; i++)
      memcpy(d.x[i], clean.x[i], sizeof(float) * d.C[i] * (size_t)d.rows * d.rate[i]);
    ev_clear_labels(&d);
    /* Each type its own seed, so that adding a type changes no other's. */
    uint64_t ts = seed * 1000003ULL + (uint64_t)types[k] * 7919ULL;
    r->seed = ts;
    if (ev_inject(&d, cfg.train.faults, &types[k], 1, (int)episodes, W, ts, eps, err,
                  sizeof err)) {
      cli_fail("eval", "%s", err);
      goto done;
    }
    if ((e = fl_scan(&b, &s, 1, &sr)) ||
        (e = ev_estimates(&b, &d, &s, est[EST_STAGE1], est[EST_BLOCK])) ||
        (e = ev_oracle(&b, &d, est[EST_ORACLE]))) {
      cli_fail("eval", "scoring %s failed: %s", r->name, fl_strerror(e));
      goto done;
    }
    ev_interpolate(&d, est[EST_INTERP], est[EST_HOLD]);
    if (mem) e = ev_aakr(&b, &d, mem, nmem, d_all, est[EST_AAKR]);
    else
      for (int i = 0; i < d.n_mod; i++)
        for (size_t q = 0; q < (size_t)d.C[i] * d.rows * d.rate[i]; q++) est[EST_AAKR][i][q] = NAN;
    if (e) {
      cli_fail("eval", "%s", fl_strerror(e));
      goto done;
    }
    for (int i = 0; i < d.n_mod; i++) {
      est[EST_INPUT][i] = d.x[i];
      est[EST_CORRECTED][i] = sr.corrected.x[i];
    }
    pool.n = 0;
    e = ev_score(&b, &clean, &d, eps, (int)episodes, &sr, est, &pool, &all, r);
    if (!e) e = ev_pool_stats(&pool, r);
    for (int i = 0; i < d.n_mod; i++) est[EST_INPUT][i] = est[EST_CORRECTED][i] = NULL;
    fl_scan_free(&sr);
    if (e) {
      cli_fail("eval", "%s", fl_strerror(e));
      goto done;
    }
    ev_add(&total, r);
  }
  total.name = "overall";
  if ((e = ev_pool_stats(&all, &total))) {
    cli_fail("eval", "%s", fl_strerror(e));
    goto done;
  }

  printf("model %s, data %s (%d rows), %ld episodes per type, seed %llu\n", model, data,
         t.rows, episodes, (unsigned long long)seed);
  ev_print_header(stdout);
  ev_print_row(stdout, &base, 0);
  for (int k = 0; k < ntypes; k++) ev_print_row(stdout, &res[k], 1);
  ev_print_row(stdout, &total, 1);

  if (json) {
    root = json_object();
    json_t *per = json_object();
    json_object_set_new(root, "model", json_string(model));
    json_object_set_new(root, "data", json_string(data));
    json_object_set_new(root, "rows", json_integer(t.rows));
    json_object_set_new(root, "seed", json_integer((json_int_t)seed));
    json_object_set_new(root, "episodes_per_type", json_integer(episodes));
    /* With each type's seed, these reproduce an injection with faultline
     * inject --fault TYPE --seed SEED --count N --from FROM. */
    json_object_set_new(root, "from", json_integer(W));
    json_object_set_new(root, "threshold", ev_real(b.calib.threshold));
    json_object_set_new(root, "clean", ev_json(&base, 0, &d));
    for (int k = 0; k < ntypes; k++) json_object_set_new(per, res[k].name, ev_json(&res[k], 1, &d));
    json_object_set_new(root, "faults", per);
    json_object_set_new(root, "overall", ev_json(&total, 1, &d));
    if (json_dump_file(root, json, JSON_INDENT(2) | JSON_REAL_PRECISION(6))) {
      cli_fail("eval", "cannot write %s", json);
      goto done;
    }
  }
  rc = 0;
done:
  json_decref(root);
  free(mem);
  for (int j = 0; j < EST_COUNT; j++) {
    if (j != EST_INPUT && j != EST_CORRECTED)
      for (int i = 0; est[j] && i < spec->n_mod; i++) free(est[j][i]);
    free(est[j]);
  }
  for (int k = 0; res && k < ntypes; k++) ev_result_free(&res[k]);
  ev_result_free(&total);
  ev_result_free(&base);
  fl_scan_free(&sr);
  fl_eval_pool_free(&pool);
  fl_eval_pool_free(&all);
  free(eps);
  free(res);
  ev_data_free(&clean);
  ev_data_free(&d);
  fl_table_free(&t);
  fl_bundle_free(&b);
  fl_config_free(&cfg);
  return rc;
}
