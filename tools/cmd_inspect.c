/* faultline inspect: what a model file holds — architecture, calibration,
 * every layer's spectral norm beside its target, and its lineage (the base
 * model and the online updates of a checkpoint faultlined wrote). */
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "faultline/bundle.h"
#include "faultline/error.h"

static void usage(FILE *f) {
  fprintf(f, "usage: faultline inspect MODEL [--json]\n\n"
             "Prints a model file's architecture, thresholds, each layer's spectral norm\n"
             "beside its Lipschitz target, and its lineage: the base model, the accepted\n"
             "online updates and when (checkpoints of faultlined's [tune]), or how it was\n"
             "trained.\n\n"
             "  --json   the same as one JSON object on standard output\n");
}

static void when(json_t *v, char *buf, size_t n) {
  if (!json_is_number(v)) {
    snprintf(buf, n, "-");
    return;
  }
  time_t t = (time_t)json_number_value(v);
  struct tm tm;
  gmtime_r(&t, &tm);
  strftime(buf, n, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

int cmd_inspect(int argc, char **argv) {
  static const struct option opts[] = {{"json", 0, 0, 'j'}, {"help", 0, 0, 'h'}, {0, 0, 0, 0}};
  int json = 0, o;
  while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    if (o == 'j') json = 1;
    else if (o == 'h') {
      usage(stdout);
      return 0;
    } else {
      usage(stderr);
      return 2;
    }
  }
  if (optind != argc - 1) {
    usage(stderr);
    return 2;
  }
  const char *path = argv[optind];
  fl_bundle b;
  char err[512];
  if (fl_bundle_load(&b, path, err, sizeof err)) return cli_fail("inspect", "%s", err);
  const fl_model_spec *s = fl_model_spec_of(b.model);
  json_error_t je;
  json_t *lin = json_loads(b.lineage, 0, &je);
  if (!json_is_object(lin)) {
    json_decref(lin);
    lin = json_object();
  }
  json_t *base = json_object_get(lin, "base");
  json_t *upd = json_object_get(lin, "updates");
  long long updates = json_is_integer(upd) ? (long long)json_integer_value(upd) : 0;
  char tuned[32], trained[32];
  when(json_object_get(lin, "tuned"), tuned, sizeof tuned);
  when(json_object_get(lin, "trained"), trained, sizeof trained);
  int nl = fl_model_layer_count(b.model), rc = 0;
  json_t *layers = json_array();
  float worst = 0.0f;
  for (int l = 0; l < nl; l++) {
    fl_layer *ly = fl_model_layer(b.model, l);
    float sg = -1.0f;
    if (fl_model_layer_norm(b.model, l, &sg)) sg = -1.0f;
    if (ly->target > 0 && sg / ly->target > worst) worst = sg / ly->target;
    json_array_append_new(layers, json_pack("{s:s,s:f,s:f}", "name", ly->name, "norm",
                                            (double)sg, "target", (double)ly->target));
  }
  if (json) {
    json_t *mods = json_array();
    for (int i = 0; i < s->n_mod; i++)
      json_array_append_new(mods, json_pack("{s:s,s:i,s:i,s:b}", "name", s->mod[i].name,
                                            "channels", s->mod[i].channels, "rate",
                                            s->mod[i].rate, "drifts", s->mod[i].drifts));
    json_t *out = json_pack("{s:s,s:o,s:i,s:I,s:f,s:f,s:o,s:o,s:f}", "file", path,
                            "modalities", mods, "window", s->window, "parameters",
                            (json_int_t)fl_model_param_count(b.model), "threshold",
                            (double)b.calib.threshold, "channel_threshold",
                            (double)b.calib.chan_threshold, "layers", layers, "lineage", lin,
                            "max_norm_ratio", (double)worst);
    char *text = json_dumps(out, JSON_INDENT(2));
    if (text) puts(text);
    else rc = cli_fail("inspect", "cannot render JSON");
    free(text);
    json_decref(out);
  } else {
    printf("file        %s\n", path);
    printf("modalities  %d:", s->n_mod);
    for (int i = 0; i < s->n_mod; i++)
      printf(" %s(%d ch, rate %d%s)", s->mod[i].name, s->mod[i].channels, s->mod[i].rate,
             s->mod[i].drifts ? ", drifts" : "");
    printf("\nwindow      %d ticks, %zu parameters\n", s->window, fl_model_param_count(b.model));
    printf("threshold   %.6g (window), %.6g (channel)\n", (double)b.calib.threshold,
           (double)b.calib.chan_threshold);
    if (json_is_string(base))
      printf("lineage     tuned online from base model %s: %lld accepted updates, last %s\n",
             json_string_value(base), updates, tuned);
    else
      printf("lineage     trained %s%s%s, %lld online updates\n", trained,
             json_is_string(json_object_get(lin, "data")) ? " on " : "",
             json_is_string(json_object_get(lin, "data"))
                 ? json_string_value(json_object_get(lin, "data"))
                 : "",
             updates);
    printf("layers      spectral norm / Lipschitz target (largest ratio %.4f)\n", (double)worst);
    for (int l = 0; l < nl; l++) {
      json_t *x = json_array_get(layers, l);
      double t = json_real_value(json_object_get(x, "target"));
      printf("  %-24s %8.4f", json_string_value(json_object_get(x, "name")),
             json_real_value(json_object_get(x, "norm")));
      if (t > 0) printf(" / %.4f", t);
      printf("\n");
    }
    json_decref(layers);
    json_decref(lin);
  }
  fl_bundle_free(&b);
  return rc;
}
