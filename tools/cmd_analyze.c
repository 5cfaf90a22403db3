/* faultline analyze: per-layer spectral norms, path bounds, and the measured
 * amplification of unit localised faults along the detection and correction
 * paths (lib/lipschitz.c does the maths; this file gathers and reports). */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "cli.h"
#include "faultline/error.h"
#include "faultline/lipschitz.h"

#define AN_BATCH 64

/* The three measurement points under the names the report uses. */
static const char *an_path_key[FL_PATH_COUNT] = {"latent", "detection", "correction"};
static const char *an_path_at[FL_PATH_COUNT] = {
    "fused latent z (encoder only)", "head output before L2 normalisation",
    "decoded estimate D(z + B(z)), all modalities"};

typedef struct {
  double min, median, max;
} an_stats;

static int an_cmp(const void *a, const void *b) {
  float x = *(const float *)a, y = *(const float *)b;
  return (x > y) - (x < y);
}

/* Statistics of n values (sorted in place). */
static an_stats an_stat(float *v, size_t n) {
  an_stats s = {NAN, NAN, NAN};
  if (!n) return s;
  qsort(v, n, sizeof *v, an_cmp);
  s.min = v[0];
  s.max = v[n - 1];
  s.median = n % 2 ? v[n / 2] : 0.5 * ((double)v[n / 2 - 1] + v[n / 2]);
  return s;
}

static const char *an_kind(const fl_layer *l) {
  return l->kind == FL_LAYER_DENSE ? "dense" : l->kind == FL_LAYER_CONV ? "conv1d" : "convt1d";
}

static const char *an_act(fl_act a) {
  return a == FL_ACT_LEAKY_RELU ? "lrelu" : a == FL_ACT_RELU ? "relu"
                                          : a == FL_ACT_TANH ? "tanh" : "-";
}

static void an_shape(const fl_layer *l, char *buf, size_t len) {
  if (l->kind == FL_LAYER_DENSE) {
    snprintf(buf, len, "%d -> %d", l->nin, l->nout);
    return;
  }
  int tout = l->kind == FL_LAYER_CONV ? fl_conv1d_len(&l->conv, l->tin)
                                      : fl_convt1d_len(&l->conv, l->tin);
  snprintf(buf, len, "(%d,%d) -> (%d,%d) k%d s%d p%d", l->conv.cin, l->tin, l->conv.cout, tout,
           l->conv.k, l->conv.stride, l->conv.pad);
}

static const char *an_paths(int p) {
  return p == (FL_ON_DETECTION | FL_ON_CORRECTION) ? "detection, correction"
         : p == FL_ON_DETECTION                    ? "detection"
         : p == FL_ON_CORRECTION                   ? "correction"
                                                   : "-";
}

/* Diverging colour of a gain: white at 1, red above (amplifies), blue below
 * (attenuates), saturated at 8x either way (log2 scale). */
static void an_colour(double g, char *buf, size_t len) {
  double t = g > 0 ? log2(g) / 3.0 : -1.0;
  if (t > 1) t = 1;
  if (t < -1) t = -1;
  int r, gr, b;
  if (t >= 0) {
    r = 255;
    gr = b = (int)lround(255 * (1 - t));
  } else {
    b = 255;
    r = gr = (int)lround(255 * (1 + t));
  }
  snprintf(buf, len, "#%02x%02x%02x", r, gr, b);
}

static void an_xml(FILE *f, const char *s) {
  for (; *s; s++) {
    if (*s == '<') fputs("&lt;", f);
    else if (*s == '>') fputs("&gt;", f);
    else if (*s == '&') fputs("&amp;", f);
    else if (*s == '"') fputs("&quot;", f);
    else fputc(*s, f);
  }
}

/* heat[i] (C_i, npos, kinds, paths): median over operating points. */
static int an_svg(const char *path, const fl_model_spec *s, float *const heat[], int npos,
                  int *const pos[], const fl_lipschitz_bound *bd) {
  FILE *f = fopen(path, "w");
  if (!f) return -1;
  int rows = fl_model_spec_channels(s);
  const int cw = 26, ch = 16, lw = 170, top = 70, gap = 40, ptitle = 34;
  int pw = npos * cw, ph = rows * ch;
  int W = lw + FL_PROBE_COUNT * (pw + gap) + 20;
  int H = top + FL_PATH_COUNT * (ph + ptitle + gap) + 60;
  fprintf(f,
          "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
          "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
          "font-family=\"sans-serif\" font-size=\"11\">\n"
          "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n"
          "<text x=\"10\" y=\"20\" font-size=\"15\">faultline analyze: amplification "
          "||J d|| / ||d|| of unit faults by channel and position</text>\n"
          "<text x=\"10\" y=\"38\">median over operating points; white = 1, red amplifies, "
          "blue attenuates (log scale, saturated at 8x and 1/8); column = fault position "
          "in base ticks</text>\n",
          W, H);
  for (int p = 0; p < FL_PATH_COUNT; p++) {
    int y0 = top + p * (ph + ptitle + gap);
    fprintf(f, "<text x=\"10\" y=\"%d\" font-size=\"13\" font-weight=\"bold\">%s path, at the ",
            y0 + 14, an_path_key[p]);
    an_xml(f, an_path_at[p]);
    fprintf(f, "</text>\n");
    for (int k = 0; k < FL_PROBE_COUNT; k++) {
      int x0 = lw + k * (pw + gap), yg = y0 + ptitle;
      fprintf(f, "<text x=\"%d\" y=\"%d\">%s</text>\n", x0, yg - 4, fl_probe_name(k));
      int row = 0;
      for (int i = 0; i < s->n_mod; i++) {
        int r = s->mod[i].rate;
        for (int c = 0; c < s->mod[i].channels; c++, row++) {
          int y = yg + row * ch;
          if (k == 0) {
            fprintf(f, "<text x=\"%d\" y=\"%d\" text-anchor=\"end\">", lw - 6, y + ch - 4);
            an_xml(f, s->mod[i].name);
            fputc('/', f);
            an_xml(f, s->mod[i].channel[c]);
            fprintf(f, "</text>\n");
          }
          for (int q = 0; q < npos; q++) {
            double g = heat[i][(((size_t)c * npos + q) * FL_PROBE_COUNT + k) * FL_PATH_COUNT + p];
            char col[8];
            an_colour(g, col, sizeof col);
            fprintf(f,
                    "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"%s\" "
                    "stroke=\"#888\" stroke-width=\"0.3\"><title>",
                    x0 + q * cw, y, cw, ch, col);
            an_xml(f, s->mod[i].name);
            fputc('/', f);
            an_xml(f, s->mod[i].channel[c]);
            fprintf(f, " %s at sample %d (tick %.1f): gain %.4g, bound %.4g</title></rect>\n",
                    fl_probe_name(k), pos[i][q], (double)pos[i][q] / r, g,
                    (double)bd->path[p][i]);
          }
        }
      }
      /* Position labels in base ticks (the first modality's positions). */
      for (int q = 0; q < npos; q++)
        fprintf(f, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\" font-size=\"9\">%d</text>\n",
                x0 + q * cw + cw / 2, yg + ph + 11, pos[0][q] / s->mod[0].rate);
    }
  }
  /* Legend. */
  int ly = H - 30;
  fprintf(f, "<text x=\"10\" y=\"%d\">gain</text>\n", ly + 12);
  const double marks[] = {0.125, 0.25, 0.5, 1, 2, 4, 8};
  for (int q = 0; q < 7; q++) {
    char col[8];
    an_colour(marks[q], col, sizeof col);
    fprintf(f,
            "<rect x=\"%d\" y=\"%d\" width=\"40\" height=\"14\" fill=\"%s\" stroke=\"#888\" "
            "stroke-width=\"0.3\"/><text x=\"%d\" y=\"%d\" text-anchor=\"middle\" "
            "font-size=\"9\">%g</text>\n",
            50 + q * 42, ly, col, 70 + q * 42, ly + 25, marks[q]);
  }
  fprintf(f, "</svg>\n");
  int bad = ferror(f);
  bad |= fclose(f);
  return bad ? -1 : 0;
}

int cmd_analyze(int argc, char **argv) {
  static const struct option opts[] = {{"model", 1, 0, 'm'},     {"data", 1, 0, 'd'},
                                       {"json", 1, 0, 'j'},      {"plot", 1, 0, 'p'},
                                       {"positions", 1, 0, 'n'}, {"windows", 1, 0, 'w'},
                                       {"seed", 1, 0, 's'},      {"help", 0, 0, 'h'},
                                       {0, 0, 0, 0}};
  const char *model = NULL, *data = NULL, *jpath = NULL, *plot = NULL;
  int npos_req = 8, nwin = 8, opt;
  unsigned long long seed = 1;
  while ((opt = getopt_long(argc, argv, "m:d:j:p:n:w:s:h", opts, NULL)) != -1) {
    switch (opt) {
    case 'm': model = optarg; break;
    case 'd': data = optarg; break;
    case 'j': jpath = optarg; break;
    case 'p': plot = optarg; break;
    case 'n': npos_req = atoi(optarg); break;
    case 'w': nwin = atoi(optarg); break;
    case 's': seed = strtoull(optarg, NULL, 10); break;
    case 'h':
      printf("usage: faultline analyze --model MODEL [--data CSV] [--json FILE] [--plot FILE]\n"
             "                         [--positions N] [--windows N] [--seed N]\n\n"
             "Prints every layer's spectral norm beside its Lipschitz target and the paths it\n"
             "is on (detection: encoders -> head; correction: encoders -> block ->\n"
             "decoders), each path's bound per modality (the product of its layers' norms\n"
             "and activation constants; the residual block counts 1 + its product), and the\n"
             "amplification of unit faults measured with Jacobian-vector products: an\n"
             "impulse and a step at each channel and at N positions (default 8), one\n"
             "modality at a time, at the latent, at the head's output before its L2\n"
             "normalisation (which is not globally Lipschitz) and at the decoded estimate.\n"
             "Operating points: N windows (default 8) spread over --data, standardised as\n"
             "the model does; without --data, the training mean (zeros) and three seeded\n"
             "N(0,1) windows.  --json writes every number, --plot an SVG heatmap of the\n"
             "gain over channel and position per path.\n");
      return 0;
    default: return 2;
    }
  }
  if (!model) return cli_fail("analyze", "--model MODEL is required (see --help)");
  if (npos_req <= 0 || nwin <= 0) return cli_fail("analyze", "--positions and --windows must be positive");
  char err[512];
  fl_bundle b;
  if (fl_bundle_load(&b, model, err, sizeof err)) return cli_fail("analyze", "%s: %s", model, err);
  fl_model *m = b.model;
  const fl_model_spec *s = fl_model_spec_of(m);
  int rc = 1, e, nops = 0, M = s->n_mod;
  fl_table t;
  memset(&t, 0, sizeof t);
  fl_series ser;
  memset(&ser, 0, sizeof ser);
  fl_ctx *c = NULL;
  /* Per modality: x0, raw, gain, heat (floats), pos (ints), per. */
  float **x0 = calloc(4 * (size_t)M, sizeof *x0), **raw = x0 ? x0 + M : NULL;
  float **gain = x0 ? raw + M : NULL, **heat = x0 ? gain + M : NULL;
  int **pos = calloc((size_t)M, sizeof *pos), npos = npos_req;
  size_t *per = calloc((size_t)M, sizeof *per);
  int *ends = NULL;
  float *buf = NULL;
  json_t *root = NULL;

  fl_lipschitz_bound bd = {0};
  if (!x0 || !pos || !per) {
    cli_fail("analyze", "out of memory");
    goto done;
  }
  if ((e = fl_lipschitz_bounds(m, &bd))) {
    cli_fail("analyze", "spectral norms failed: %s", fl_strerror(e));
    goto done;
  }
  /* Positions: the same count in every modality, so that the heatmap's
   * columns line up (a fast modality's are at the same fractions of the window). */
  if (npos > s->window) npos = s->window;
  if (data) {
    if (cli_read_csv("analyze", data, &t)) goto done;
    if (cli_series("analyze", data, s, &t, &ser)) goto done;
    if (ser.rows < s->window) {
      cli_fail("analyze", "%s: %d rows, fewer than one window of %d", data, ser.rows, s->window);
      goto done;
    }
    int span = ser.rows - s->window;
    if (nwin > span + 1) nwin = span + 1;
    nops = nwin;
  } else {
    nops = 4;
  }
  if ((e = fl_ctx_create(&c, m, AN_BATCH))) {
    cli_fail("analyze", "%s", fl_strerror(e));
    goto done;
  }
  ends = calloc(nops, sizeof *ends);
  int ok = ends != NULL;
  for (int i = 0; i < M; i++) {
    size_t n = (size_t)s->mod[i].channels * s->window * s->mod[i].rate;
    per[i] = (size_t)s->mod[i].channels * npos * FL_PROBE_COUNT * FL_PATH_COUNT;
    ok &= (x0[i] = malloc(sizeof(float) * n)) != NULL;
    ok &= (raw[i] = malloc(sizeof(float) * n)) != NULL;
    ok &= (gain[i] = malloc(sizeof(float) * per[i] * nops)) != NULL;
    ok &= (heat[i] = malloc(sizeof(float) * per[i])) != NULL;
    ok &= (pos[i] = malloc(sizeof(int) * npos)) != NULL;
    if (ok) fl_lipschitz_positions(s->window * s->mod[i].rate, npos, pos[i]);
  }
  size_t nbuf = (size_t)nops;
  for (int i = 0; i < M; i++)
    if ((size_t)nops * per[i] > nbuf) nbuf = (size_t)nops * per[i];
  ok &= (buf = malloc(sizeof(float) * nbuf)) != NULL;
  if (!ok) {
    cli_fail("analyze", "out of memory");
    goto done;
  }

  /* Measure: for every operating point and modality, every probe. */
  fl_rng rng;
  fl_rng_seed(&rng, seed);
  for (int op = 0; op < nops; op++) {
    if (data) {
      int span = ser.rows - s->window;
      ends[op] = s->window + (nops > 1 ? (int)((long long)span * op / (nops - 1)) : span / 2);
      fl_series_window(&ser, s, ends[op], raw);
      for (int i = 0; i < M; i++) {
        size_t n = (size_t)s->mod[i].channels * s->window * s->mod[i].rate;
        if ((e = fl_model_normalise(m, c, 0, i, raw[i], b.clamp))) goto fail_e;
        memcpy(x0[i], fl_ctx_input(c, i), sizeof(float) * n);
      }
    } else {
      for (int i = 0; i < M; i++) {
        size_t n = (size_t)s->mod[i].channels * s->window * s->mod[i].rate;
        for (size_t k = 0; k < n; k++) x0[i][k] = op ? fl_rng_normal(&rng) : 0.0f;
      }
    }
    for (int i = 0; i < M; i++)
      if ((e = fl_lipschitz_probe(m, c, AN_BATCH, (const float *const *)x0, i, pos[i], npos,
                                  gain[i] + per[i] * op)))
        goto fail_e;
  }

  /* ---- report ---- */
  root = json_object();
  json_t *jl = json_array();
  printf("faultline analyze: %s\n\n", model);
  printf("layers (norm: spectral norm of the layer's linear operator, by power iteration;\n"
         "target: its Lipschitz target, - for none)\n");
  printf("  %-22s %-8s %-34s %8s %7s %-6s %s\n", "layer", "type", "shape (in -> out)", "norm",
         "target", "act", "paths");
  for (int l = 0; l < bd.nlayers; l++) {
    const fl_layer *ly = fl_model_layer(m, l);
    char shape[96], tg[16];
    an_shape(ly, shape, sizeof shape);
    if (ly->target > 0) snprintf(tg, sizeof tg, "%.3f", (double)ly->target);
    else snprintf(tg, sizeof tg, "-");
    int pp = fl_lipschitz_layer_paths(ly);
    printf("  %-22s %-8s %-34s %8.4f %7s %-6s %s%s\n", ly->name, an_kind(ly), shape,
           (double)bd.sigma[l], tg, an_act(ly->act), an_paths(pp),
           ly->target > 0 && bd.sigma[l] > ly->target * 1.001f ? "  (ABOVE TARGET)" : "");
    json_t *o = json_object(), *pa = json_array();
    json_object_set_new(o, "name", json_string(ly->name));
    json_object_set_new(o, "type", json_string(an_kind(ly)));
    json_object_set_new(o, "shape", json_string(shape));
    json_object_set_new(o, "module", json_string(fl_module_name(ly->module)));
    json_object_set_new(o, "modality",
                        ly->modality >= 0 ? json_string(s->mod[ly->modality].name) : json_null());
    json_object_set_new(o, "norm", json_real(bd.sigma[l]));
    json_object_set_new(o, "target", ly->target > 0 ? json_real(ly->target) : json_null());
    json_object_set_new(o, "activation", json_string(an_act(ly->act)));
    json_object_set_new(o, "activation_lipschitz", json_real(fl_act_lipschitz(ly->act, s->leak)));
    if (pp & FL_ON_DETECTION) json_array_append_new(pa, json_string("detection"));
    if (pp & FL_ON_CORRECTION) json_array_append_new(pa, json_string("correction"));
    json_object_set_new(o, "paths", pa);
    json_array_append_new(jl, o);
  }
  json_object_set_new(root, "model", json_string(model));
  json_object_set_new(root, "layers", jl);

  printf("\npath bounds per modality (product of the layers' norms times the activations'\n"
         "Lipschitz constants, %.3g for LeakyReLU(%.3g)):\n"
         "  block z' = z + B(z) is a residual: bound 1 + prod(block) = %.4f\n"
         "  head (z -> pre-normalisation output): %.4f; decoders side by side: max = %.4f\n"
         "  the embedding's L2 normalisation is not globally Lipschitz (its Jacobian at p has\n"
         "  norm 1/||p||): the detection path is bounded and measured at the head's output\n"
         "  before normalisation\n",
         (double)fl_act_lipschitz(FL_ACT_LEAKY_RELU, s->leak), (double)s->leak,
         (double)bd.block, (double)bd.head, (double)bd.dec_max);
  printf("  %-14s %9s %9s %12s %12s\n", "modality", "encoder", "decoder", "detection", "correction");
  json_t *jb = json_object(), *jbm = json_object();
  json_object_set_new(jb, "block", json_real(bd.block));
  json_object_set_new(jb, "head", json_real(bd.head));
  json_object_set_new(jb, "decoders", json_real(bd.dec_max));
  for (int i = 0; i < M; i++) {
    printf("  %-14s %9.4f %9.4f %12.4f %12.4f\n", s->mod[i].name, (double)bd.enc[i],
           (double)bd.dec[i], (double)bd.path[FL_PATH_HEAD][i],
           (double)bd.path[FL_PATH_CORRECTED][i]);
    json_t *o = json_object();
    json_object_set_new(o, "encoder", json_real(bd.enc[i]));
    json_object_set_new(o, "decoder", json_real(bd.dec[i]));
    for (int p = 0; p < FL_PATH_COUNT; p++)
      json_object_set_new(o, an_path_key[p], json_real(bd.path[p][i]));
    json_object_set_new(jbm, s->mod[i].name, o);
  }
  json_object_set_new(jb, "modalities", jbm);
  json_object_set_new(root, "bounds", jb);

  json_t *jop = json_object(), *jw = json_array();
  if (data) {
    printf("\noperating points: %d windows of %s, ending at rows", nops, data);
    for (int op = 0; op < nops; op++) {
      printf(" %d", ends[op]);
      json_array_append_new(jw, json_integer(ends[op]));
    }
    printf(",\nstandardised with the model's mean and std (clamped to +-%g)\n", (double)b.clamp);
    json_object_set_new(jop, "source", json_string("data"));
    json_object_set_new(jop, "data", json_string(data));
    json_object_set_new(jop, "window_ends", jw);
  } else {
    printf("\noperating points (no --data): the training mean (all zeros, standardised) and %d\n"
           "windows of i.i.d. N(0,1) samples in standardised units (seed %llu)\n",
           nops - 1, seed);
    json_object_set_new(jop, "source", json_string("fixed"));
    json_array_append_new(jw, json_string("zeros"));
    for (int op = 1; op < nops; op++) json_array_append_new(jw, json_string("normal"));
    json_object_set_new(jop, "windows", jw);
    json_object_set_new(jop, "seed", json_integer((json_int_t)seed));
  }
  json_object_set_new(root, "operating_points", jop);
  json_object_set_new(root, "positions_per_channel", json_integer(npos));
  json_object_set_new(root, "fault_units",
                      json_string("unit perturbations of the standardised model input "
                                  "(after a drifting modality's detrending); gain = "
                                  "||J d|| / ||d||"));

  printf("\nmeasured amplification ||J d|| / ||d|| of unit faults d (impulse: one sample;\n"
         "step: from the position to the window's end), %d positions per channel, one\n"
         "modality at a time, Jacobian-vector products at each operating point.\n"
         "Paths: latent = at z (encoder only); detection = at the %s;\n"
         "correction = at the %s.\n"
         "verdict: amplifies if the largest gain exceeds 1, else attenuates.\n",
         npos, an_path_at[FL_PATH_HEAD], an_path_at[FL_PATH_CORRECTED]);
  for (int i = 0; i < M; i++)
    if (s->mod[i].drifts)
      printf("note: %s drifts: its windows reach the model detrended, so faults are unit\n"
             "perturbations after detrending (a step over the whole window would be removed).\n",
             s->mod[i].name);
  printf("  %-14s %-11s %-8s %9s %9s %9s %9s  %s\n", "modality", "path", "fault", "min",
         "median", "max", "bound", "verdict");
  json_t *jm = json_object(), *jh = json_object();
  for (int i = 0; i < M; i++) {
    int C = s->mod[i].channels;
    json_t *om = json_object(), *hm = json_object(), *jp = json_array();
    for (int q = 0; q < npos; q++) json_array_append_new(jp, json_integer(pos[i][q]));
    json_object_set_new(hm, "positions", jp);
    for (int p = 0; p < FL_PATH_COUNT; p++) {
      json_t *op_ = json_object(), *hp = json_object();
      double bound = bd.path[p][i], allmax = 0;
      for (int k = 0; k <= FL_PROBE_COUNT; k++) { /* k == COUNT: both kinds */
        size_t n = 0;
        for (int o2 = 0; o2 < nops; o2++)
          for (int ch = 0; ch < C; ch++)
            for (int q = 0; q < npos; q++)
              for (int kk = 0; kk < FL_PROBE_COUNT; kk++)
                if (k == FL_PROBE_COUNT || kk == k)
                  buf[n++] = gain[i][per[i] * o2 +
                                     (((size_t)ch * npos + q) * FL_PROBE_COUNT + kk) *
                                         FL_PATH_COUNT + p];
        an_stats st = an_stat(buf, n);
        const char *verdict = st.max > 1.0 ? "amplifies" : "attenuates";
        json_t *so = json_object();
        json_object_set_new(so, "min", json_real(st.min));
        json_object_set_new(so, "median", json_real(st.median));
        json_object_set_new(so, "max", json_real(st.max));
        json_object_set_new(so, "count", json_integer((json_int_t)n));
        if (k < FL_PROBE_COUNT) {
          printf("  %-14s %-11s %-8s %9.4f %9.4f %9.4f %9.4f  %s%s\n", p || k ? "" : s->mod[i].name,
                 k ? "" : an_path_key[p], fl_probe_name(k), st.min, st.median, st.max, bound,
                 verdict, st.max > bound * 1.001 ? "  (ABOVE BOUND)" : "");
          json_object_set_new(so, "verdict", json_string(verdict));
          json_object_set_new(op_, fl_probe_name(k), so);
        } else {
          allmax = st.max;
          json_object_set_new(op_, "all", so);
          json_object_set_new(op_, "verdict", json_string(verdict));
        }
      }
      json_object_set_new(op_, "bound", json_real(bound));
      json_object_set_new(op_, "bound_ratio", json_real(allmax / bound));
      json_object_set_new(op_, "measured_at", json_string(an_path_at[p]));
      json_object_set_new(om, an_path_key[p], op_);
      /* Heatmap: median over operating points per channel, position, kind. */
      for (int ch = 0; ch < C; ch++)
        for (int q = 0; q < npos; q++)
          for (int kk = 0; kk < FL_PROBE_COUNT; kk++) {
            size_t idx = (((size_t)ch * npos + q) * FL_PROBE_COUNT + kk) * FL_PATH_COUNT + p;
            for (int o2 = 0; o2 < nops; o2++) buf[o2] = gain[i][per[i] * o2 + idx];
            heat[i][idx] = (float)an_stat(buf, nops).median;
          }
      for (int kk = 0; kk < FL_PROBE_COUNT; kk++) {
        json_t *rowsj = json_array();
        for (int ch = 0; ch < C; ch++) {
          json_t *r = json_array();
          for (int q = 0; q < npos; q++)
            json_array_append_new(
                r, json_real(heat[i][(((size_t)ch * npos + q) * FL_PROBE_COUNT + kk) *
                                         FL_PATH_COUNT + p]));
          json_array_append_new(rowsj, r);
        }
        json_object_set_new(hp, fl_probe_name(kk), rowsj);
      }
      json_object_set_new(hm, an_path_key[p], hp);
    }
    json_object_set_new(jm, s->mod[i].name, om);
    json_object_set_new(jh, s->mod[i].name, hm);
  }
  json_object_set_new(root, "measurements", jm);
  json_object_set_new(root, "heatmap", jh);

  printf("\nverdicts (worst case over channels, positions, fault kinds, operating points):\n");
  for (int i = 0; i < M; i++) {
    printf("  %-14s", s->mod[i].name);
    for (int p = FL_PATH_HEAD; p < FL_PATH_COUNT; p++) {
      json_t *o2 = json_object_get(json_object_get(jm, s->mod[i].name), an_path_key[p]);
      double mx = json_real_value(json_object_get(json_object_get(o2, "all"), "max"));
      printf("  %s: %s (max %.3f, bound %.3f)", an_path_key[p],
             json_string_value(json_object_get(o2, "verdict")), mx, (double)bd.path[p][i]);
    }
    printf("\n");
  }

  if (jpath && json_dump_file(root, jpath, JSON_INDENT(1) | JSON_REAL_PRECISION(8))) {
    cli_fail("analyze", "cannot write %s", jpath);
    goto done;
  }
  if (plot && an_svg(plot, s, heat, npos, pos, &bd)) {
    cli_fail("analyze", "cannot write %s", plot);
    goto done;
  }
  rc = 0;
  goto done;
fail_e:
  cli_fail("analyze", "measurement failed: %s", fl_strerror(e));
done:
  json_decref(root);
  for (int i = 0; x0 && pos && i < M; i++) {
    free(x0[i]);
    free(raw[i]);
    free(gain[i]);
    free(heat[i]);
    free(pos[i]);
  }
  free(x0);
  free(pos);
  free(per);
  fl_lipschitz_bound_free(&bd);
  free(ends);
  free(buf);
  fl_ctx_free(c);
  fl_series_free(&ser);
  fl_table_free(&t);
  fl_bundle_free(&b);
  return rc;
}
