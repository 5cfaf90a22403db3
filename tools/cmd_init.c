/* faultline init: the modalities and defaults that train would choose for
 * a CSV without a config, written as a config a person can read and edit. */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

/* A channel name as config.c reads it back: commas separate channels. */
static int fl__listable(const char *name) { return !strchr(name, ',') && name[0] != ' '; }

/* The share fl_group_plan_table asks of a drifting sensor on `rows` rows. */
static float fl__drift_needed(const fl_group_config *gc, int rows) {
  double e = rows > 0 ? sqrt(2.0 * gc->drift_span / rows) : 0.0;
  return (float)(gc->drift_share / (1.0 + (gc->drift_se > 0.0f ? gc->drift_se * e : 0.0)));
}

static void write_plan(FILE *f, const char *data, const fl_table *t, const fl_group_plan *p,
                       const fl_group_config *gc, const fl_config *c, double period) {
  fprintf(f, "; faultline configuration chosen by `faultline init` from %s\n", data);
  fprintf(f, "; (%d rows, %d sensors).  `faultline train --config` reads it as it is; edit\n",
          t->rows, p->n_sensor);
  fprintf(f, "; freely: move channels between modalities, rename them, mark drift.\n"
             "; Keys not set here keep the defaults of faultline.ini(5).\n\n");
  fprintf(f, "[model]\n");
  if (period > 0)
    fprintf(f, "; sampled every %g s: one hour of ticks, 20 to 60, at most a sixth of the "
               "rows\n", period);
  else
    fprintf(f, "; no timestamps to read a sampling period from: 60 ticks, at most a sixth "
               "of the rows\n");
  fprintf(f, "window = %d\n", c->spec.window);
  fprintf(f, "; the compute block's width for %d channels\n", p->n_sensor);
  fprintf(f, "hidden = %d\n", c->spec.hidden);
  if (c->spec.enc2 != 32)
    fprintf(f, "; %d modalities: each encodes to %d channels, so that the fused latent stays "
               "near 8192 values\nenc2 = %d\n", c->spec.n_mod, c->spec.enc2, c->spec.enc2);
  fputc('\n', f);
  if (c->train.stride > 1) {
    fprintf(f, "[train]\n; every %d-th window, so that an epoch sees at most 4000 of them "
               "and 4000 x 64 window-channels\n", c->train.stride);
    fprintf(f, "stride = %d\n\n", c->train.stride);
  }
  fprintf(f, "[detect]\n; a twelfth of the window each way\nhysteresis_on = %d\nhysteresis_off = "
             "%d\n", c->detect.on, c->detect.off);
  if (c->detect.w_emb == 0.0f)
    fprintf(f, "; fewer than 1000 training windows: their overlap shows too little of the\n"
               "; embedding distance's and the noise collapse's clean spread to calibrate them\n"
               "embedding_weight = 0\nvariance_weight = 0\n");
  fputc('\n', f);
  for (int i = 0; i < p->n_mod; i++) {
    const fl_group_modality *m = &p->mod[i];
    fprintf(f, "[modality.%s]\n", m->name);
    /* Pairs with a drifting sensor chosen by its changes were judged so. */
    int any = 0, ch = 0;
    for (int k = 0; k < m->n; k++) {
      any |= p->sensor[m->sensor[k]].drifts;
      ch |= p->sensor[m->sensor[k]].by_change;
    }
    char of[64];
    if (ch)
      snprintf(of, sizeof of, "of %s changes over %d ticks", m->n > 1 ? "their" : "its",
               p->change_lag);
    else
      snprintf(of, sizeof of, "of %s smoothed readings", m->n > 1 ? "their" : "its");
    if (m->n == 1)
      fprintf(f, "; a sensor of its own: it moves with no other one (largest mean |correlation| "
                 "%s with another group %.2f, %.2f needed)\n",
              of, (double)m->nearest, (double)gc->min_corr);
    else if (m->forced)
      fprintf(f, "; %d sensors joined to stay within %d modalities although they move together "
                 "little (mean |correlation| %s %.2f inside, %.2f with the nearest other group)\n",
              m->n, p->max_mod, of, (double)m->cohesion, (double)m->nearest);
    else if (m->cohesion >= gc->min_corr)
      fprintf(f, "; %d sensors that move together: mean |correlation| %s %.2f inside, %.2f "
                 "with the nearest other group\n",
              m->n, of, (double)m->cohesion, (double)m->nearest);
    else if (m->drifts && !ch)
      fprintf(f, "; %d drifting sensors, together because each is judged by its shape alone "
                 "(mean |correlation| %s %.2f inside, %.2f with the nearest other group)\n",
              m->n, of, (double)m->cohesion, (double)m->nearest);
    else
      fprintf(f, "; %d sensors whose names share a prefix (worth %.2f) and that move together "
                 "somewhat: mean |correlation| %s %.2f inside, %.2f with the nearest other "
                 "group\n",
              m->n, (double)gc->prefix_bonus, of, (double)m->cohesion, (double)m->nearest);
    if (m->rate > 1)
      fprintf(f, "; %d samples per tick: the columns NAME.0 .. NAME.%d\n", m->rate, m->rate - 1);
    fprintf(f, "rate = %d\nchannels = ", m->rate);
    for (int k = 0; k < m->n; k++)
      fprintf(f, "%s%s", k ? ", " : "", p->sensor[m->sensor[k]].name);
    fputc('\n', f);
    if (m->drifts) {
      fprintf(f, "; their level wanders through the recording (a moving mean over %d ticks keeps",
              gc->drift_span);
      for (int k = 0; k < m->n; k++)
        fprintf(f, "%s %.2f", k ? "," : "", (double)p->sensor[m->sensor[k]].slow);
      fprintf(f, " of the variance, %.2f needed on %d rows): only their shape is judged\n"
                 "drifts = 1\n",
              (double)fl__drift_needed(gc, t->rows), t->rows);
    } else {
      if (any)
        fprintf(f, "; some of these drift, not all: set drifts = 1 to judge only their shape\n");
    }
    fputc('\n', f);
  }
}

int cmd_init(int argc, char **argv) {
  static const struct option opts[] = {
      {"data", 1, 0, 'd'},     {"out", 1, 0, 'o'},      {"min-corr", 1, 0, 'm'},
      {"max-size", 1, 0, 's'}, {"drift-se", 1, 0, 'e'},  {"help", 0, 0, 'h'},
      {0, 0, 0, 0}};
  const char *data = NULL, *out = NULL;
  int o;
  fl_group_config gc;
  fl_group_defaults(&gc);
  while ((o = getopt_long(argc, argv, "d:o:m:s:e:h", opts, NULL)) != -1) {
    switch (o) {
    case 'd': data = optarg; break;
    case 'o': out = optarg; break;
    case 'm': gc.min_corr = (float)atof(optarg); break;
    case 's': gc.max_size = atoi(optarg); break;
    case 'e': gc.drift_se = (float)atof(optarg); break;
    case 'h':
      printf("usage: faultline init --data CSV [--out INI] [--min-corr X] [--max-size N]\n"
             "                      [--drift-se K]\n\n"
             "Chooses what faultline train would choose for CSV without a config and\n"
             "writes it as a commented config (to stdout without --out): the modalities\n"
             "(sensors whose smoothed readings move together, drifting ones by their\n"
             "changes where more drift than fit in one, at most 8 per modality,\n"
             "columns NAME.0 .. NAME.k as one sensor at rate k+1), which of them drift,\n"
             "the window from the sampling period, the compute block's width and the\n"
             "training stride.  The choice is the same for the same data.\n\n"
             "  --min-corr X  mean |correlation| two groups need to merge (default %g)\n"
             "  --max-size N  sensors per modality at most (default %d)\n"
             "  --drift-se K  a sensor drifts unless its slow share is K standard errors\n"
             "                below half (default %g; 0: half exactly)\n",
             (double)gc.min_corr, gc.max_size, (double)gc.drift_se);
      return 0;
    default: return 2;
    }
  }
  if (!data) return cli_fail("init", "--data CSV is required (see --help)");
  fl_table t = {0};
  if (cli_read_csv("init", data, &t)) return 1;
  gc.drift_span = fl_group_window(fl_group_period(&t), t.rows) / 2;
  fl_group_plan *plan = calloc(1, sizeof *plan);
  fl_config c = {0};
  int rc = 1;
  if (!plan) {
    cli_fail("init", "out of memory");
    goto done;
  }
  if (cli_group("init", &t, &gc, plan)) goto done;
  for (int i = 0; i < plan->n_sensor; i++)
    if (!fl__listable(plan->sensor[i].name)) {
      cli_fail("init", "the column \"%s\" cannot be listed in a config (a comma or a leading "
                       "space)", plan->sensor[i].name);
      goto done;
    }
  fl_config_defaults(&c);
  if (fl_group_apply(plan, &c.spec)) {
    cli_fail("init", "the grouped modalities do not form a valid model");
    goto done;
  }
  cli_data_defaults(&c, &t);
  FILE *f = out ? fopen(out, "w") : stdout;
  if (!f) {
    cli_fail("init", "cannot write %s", out);
    goto done;
  }
  write_plan(f, data, &t, plan, &gc, &c, fl_group_period(&t));
  int bad = ferror(f);
  if (f != stdout) bad |= fclose(f);
  else bad |= fflush(f);
  if (bad) {
    cli_fail("init", "cannot write %s", out ? out : "stdout");
    goto done;
  }
  rc = 0;
done:
  fl_group_plan_free(plan);
  free(plan);
  fl_config_free(&c);
  fl_table_free(&t);
  return rc;
}
