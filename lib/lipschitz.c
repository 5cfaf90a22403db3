/* faultline lipschitz: see include/faultline/lipschitz.h for the contracts. */
#include "faultline/lipschitz.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "faultline/error.h"

const char *fl_path_name(fl_path p) {
  static const char *names[FL_PATH_COUNT] = {"latent", "head", "corrected"};
  return (unsigned)p < FL_PATH_COUNT ? names[p] : "?";
}

const char *fl_probe_name(fl_probe k) {
  static const char *names[FL_PROBE_COUNT] = {"impulse", "step"};
  return (unsigned)k < FL_PROBE_COUNT ? names[k] : "?";
}

int fl_lipschitz_layer_paths(const fl_layer *l) {
  if (!l) return 0;
  switch (l->module) {
  case FL_MOD_ENC: return FL_ON_DETECTION | FL_ON_CORRECTION;
  case FL_MOD_HEAD: return FL_ON_DETECTION;
  case FL_MOD_BLOCK:
  case FL_MOD_DEC: return FL_ON_CORRECTION;
  default: return 0;
  }
}

/* The k-th layer (in table order) of a module and modality (-1: block, head),
 * or -1.  The table's order within a module is the forward order. */
static int fl__find(fl_model *m, fl_module mod, int modality, int k) {
  int n = fl_model_layer_count(m);
  for (int i = 0; i < n; i++) {
    const fl_layer *l = fl_model_layer(m, i);
    if (l->module == mod && l->modality == modality && k-- == 0) return i;
  }
  return -1;
}

/* Per-window sizes of a layer's input and output. */
static size_t fl__in_n(const fl_layer *l) {
  return l->kind == FL_LAYER_DENSE ? (size_t)l->nin : (size_t)l->conv.cin * l->tin;
}
static size_t fl__out_n(const fl_layer *l) {
  if (l->kind == FL_LAYER_DENSE) return (size_t)l->nout;
  int t = l->kind == FL_LAYER_CONV ? fl_conv1d_len(&l->conv, l->tin)
                                   : fl_convt1d_len(&l->conv, l->tin);
  return (size_t)l->conv.cout * (size_t)t;
}

void fl_lipschitz_bound_free(fl_lipschitz_bound *b) {
  if (!b) return;
  free(b->block_);
  memset(b, 0, sizeof *b);
}

int fl_lipschitz_bounds(fl_model *m, fl_lipschitz_bound *out) {
  if (!m || !out) return FL_EINVAL;
  memset(out, 0, sizeof *out);
  const fl_model_spec *s = fl_model_spec_of(m);
  int n = fl_model_layer_count(m), M = s->n_mod;
  /* sigma (n), enc, dec, the paths (M each), then lip (n) as scratch */
  float *blk = calloc((size_t)2 * n + (size_t)(2 + FL_PATH_COUNT) * M, sizeof *blk);
  if (!blk) return FL_ENOMEM;
  out->block_ = blk;
  out->nlayers = n;
  out->n_mod = M;
  out->sigma = blk;
  out->enc = blk + n;
  out->dec = out->enc + M;
  for (int p = 0; p < FL_PATH_COUNT; p++) out->path[p] = out->dec + (size_t)(1 + p) * M;
  float *lip = out->path[FL_PATH_COUNT - 1] + M;
  for (int i = 0; i < n; i++) {
    int err = fl_model_layer_norm(m, i, &out->sigma[i]);
    if (err) {
      fl_lipschitz_bound_free(out);
      return err;
    }
    const fl_layer *l = fl_model_layer(m, i);
    lip[i] = out->sigma[i] * fl_act_lipschitz(l->act, s->leak);
  }
  for (int i = 0; i < s->n_mod; i++) {
    out->enc[i] = lip[fl__find(m, FL_MOD_ENC, i, 0)] * lip[fl__find(m, FL_MOD_ENC, i, 1)];
    out->dec[i] = lip[fl__find(m, FL_MOD_DEC, i, 0)] * lip[fl__find(m, FL_MOD_DEC, i, 1)];
    if (out->dec[i] > out->dec_max) out->dec_max = out->dec[i];
  }
  /* z' = z + B(z): the identity contributes 1, the branch its product. */
  out->block = 1.0f + lip[fl__find(m, FL_MOD_BLOCK, -1, 0)] *
                          lip[fl__find(m, FL_MOD_BLOCK, -1, 1)] *
                          lip[fl__find(m, FL_MOD_BLOCK, -1, 2)];
  out->head = lip[fl__find(m, FL_MOD_HEAD, -1, 0)] * lip[fl__find(m, FL_MOD_HEAD, -1, 1)];
  for (int i = 0; i < s->n_mod; i++) {
    out->path[FL_PATH_LATENT][i] = out->enc[i];
    out->path[FL_PATH_HEAD][i] = out->enc[i] * out->head;
    out->path[FL_PATH_CORRECTED][i] = out->enc[i] * out->block * out->dec_max;
  }
  return 0;
}

/* y (B, out) = act'(pre) * (W x) for tangents x (B, in): the layer's JVP. */
static int fl__jvp_layer(fl_model *m, fl_ctx *c, int idx, float *y, const float *x, int B) {
  const fl_layer *l = fl_model_layer(m, idx);
  const float *pre = fl_ctx_preact(c, m, idx);
  if (!l || !pre || l->act == FL_ACT_TANH) return FL_EINVAL; /* tanh would need the output */
  int err;
  if (l->kind == FL_LAYER_DENSE)
    err = fl_dense_forward(y, x, l->w, NULL, B, l->nin, l->nout);
  else if (l->kind == FL_LAYER_CONV)
    err = fl_conv1d_forward(y, x, l->w, NULL, &l->conv, B, l->tin, NULL);
  else
    err = fl_convt1d_forward(y, x, l->w, NULL, &l->conv, B, l->tin, NULL);
  if (err) return err;
  return fl_act_backward(l->act, fl_model_spec_of(m)->leak, y, y, pre, NULL,
                         (size_t)B * fl__out_n(l));
}

int fl_lipschitz_jvp(fl_model *m, fl_ctx *c, int B, fl_jvp *j) {
  if (!m || !c || !j || B <= 0) return FL_EINVAL;
  const fl_model_spec *s = fl_model_spec_of(m);
  int Z = fl_model_latent_size(m), L = fl_model_latent_len(m), seg = s->enc2 * L;
  int n = fl_model_layer_count(m);
  size_t big = (size_t)Z;
  for (int i = 0; i < n; i++) {
    const fl_layer *l = fl_model_layer(m, i);
    if (fl__in_n(l) > big) big = fl__in_n(l);
    if (fl__out_n(l) > big) big = fl__out_n(l);
  }
  float *A = malloc(sizeof(float) * B * big), *T2 = malloc(sizeof(float) * B * big);
  float *dz = j->dz ? j->dz : malloc(sizeof(float) * B * Z);
  float *dz2 = malloc(sizeof(float) * B * Z);
  int err = 0;
  if (!A || !T2 || !dz || !dz2) {
    err = FL_ENOMEM;
    goto done;
  }
  /* Encoders: each modality's tangent reaches its own slice of z only. */
  for (int i = 0; i < s->n_mod; i++) {
    if (!j->dx || !j->dx[i]) {
      for (int b = 0; b < B; b++) memset(dz + (size_t)b * Z + (size_t)i * seg, 0, sizeof(float) * seg);
      continue;
    }
    if ((err = fl__jvp_layer(m, c, fl__find(m, FL_MOD_ENC, i, 0), A, j->dx[i], B)) ||
        (err = fl__jvp_layer(m, c, fl__find(m, FL_MOD_ENC, i, 1), T2, A, B)))
      goto done;
    for (int b = 0; b < B; b++)
      memcpy(dz + (size_t)b * Z + (size_t)i * seg, T2 + (size_t)b * seg, sizeof(float) * seg);
  }
  int want_dec = 0;
  for (int i = 0; j->dout && i < s->n_mod; i++) want_dec |= j->dout[i] != NULL;
  if (want_dec) {
    int b0 = fl__find(m, FL_MOD_BLOCK, -1, 0);
    if (fl_ctx_preact(c, m, b0)) { /* dz' = dz + J_B dz: the residual */
      if ((err = fl__jvp_layer(m, c, b0, A, dz, B)) ||
          (err = fl__jvp_layer(m, c, fl__find(m, FL_MOD_BLOCK, -1, 1), T2, A, B)) ||
          (err = fl__jvp_layer(m, c, fl__find(m, FL_MOD_BLOCK, -1, 2), A, T2, B)))
        goto done;
      for (size_t k = 0; k < (size_t)B * Z; k++) dz2[k] = dz[k] + A[k];
    } else {
      memcpy(dz2, dz, sizeof(float) * (size_t)B * Z);
    }
    for (int i = 0; i < s->n_mod; i++) {
      if (!j->dout[i]) continue;
      for (int b = 0; b < B; b++)
        memcpy(A + (size_t)b * seg, dz2 + (size_t)b * Z + (size_t)i * seg, sizeof(float) * seg);
      if ((err = fl__jvp_layer(m, c, fl__find(m, FL_MOD_DEC, i, 0), T2, A, B)) ||
          (err = fl__jvp_layer(m, c, fl__find(m, FL_MOD_DEC, i, 1), j->dout[i], T2, B)))
        goto done;
    }
  }
  if (j->dhead) {
    if ((err = fl__jvp_layer(m, c, fl__find(m, FL_MOD_HEAD, -1, 0), A, dz, B)) ||
        (err = fl__jvp_layer(m, c, fl__find(m, FL_MOD_HEAD, -1, 1), j->dhead, A, B)))
      goto done;
  }
done:
  free(A);
  free(T2);
  if (dz != j->dz) free(dz);
  free(dz2);
  return err;
}

int fl_lipschitz_positions(int T, int npos, int *pos) {
  if (T <= 0 || npos <= 0 || !pos) return FL_EINVAL;
  if (npos >= T) {
    for (int p = 0; p < T; p++) pos[p] = p;
    return T;
  }
  if (npos == 1) {
    pos[0] = T / 2;
    return 1;
  }
  for (int p = 0; p < npos; p++)
    pos[p] = (int)lround((double)p * (T - 1) / (npos - 1));
  return npos;
}

static double fl__norm(const float *x, size_t n) {
  double s = 0.0;
  for (size_t k = 0; k < n; k++) s += (double)x[k] * x[k];
  return sqrt(s);
}

int fl_lipschitz_probe(fl_model *m, fl_ctx *c, int batch,
                       const float *const *x0, int modality,
                       const int *pos, int npos, float *gain) {
  if (!m || !c || batch <= 0 || !x0 || !pos || npos <= 0 || !gain) return FL_EINVAL;
  const fl_model_spec *s = fl_model_spec_of(m);
  if (modality < 0 || modality >= s->n_mod) return FL_EINVAL;
  int C = s->mod[modality].channels, T = s->window * s->mod[modality].rate;
  for (int p = 0; p < npos; p++)
    if (pos[p] < 0 || pos[p] >= T) return FL_EINVAL;
  for (int i = 0; i < s->n_mod; i++) {
    if (!x0[i]) return FL_EINVAL;
    size_t n = (size_t)s->mod[i].channels * s->window * s->mod[i].rate;
    float *x = fl_ctx_input(c, i);
    for (int b = 0; b < batch; b++) memcpy(x + (size_t)b * n, x0[i], sizeof(float) * n);
  }
  int err = fl_model_forward(m, c, batch, 1, 1);
  if (err) return err;
  int Z = fl_model_latent_size(m), E = s->emb, N = C * npos * FL_PROBE_COUNT;
  size_t CT = (size_t)C * T;
  fl_jvp j;
  memset(&j, 0, sizeof j);
  float *dx = malloc(sizeof(float) * batch * CT);
  j.dz = malloc(sizeof(float) * batch * Z);
  j.dhead = malloc(sizeof(float) * batch * E);
  j.dx = calloc((size_t)s->n_mod, sizeof *j.dx);
  j.dout = calloc((size_t)s->n_mod, sizeof *j.dout);
  int ok = dx && j.dz && j.dhead && j.dx && j.dout;
  for (int i = 0; ok && i < s->n_mod; i++) {
    j.dout[i] = malloc(sizeof(float) * batch * s->mod[i].channels * s->window * s->mod[i].rate);
    ok &= j.dout[i] != NULL;
  }
  if (!ok) {
    err = FL_ENOMEM;
    goto done;
  }
  j.dx[modality] = dx;
  for (int t0 = 0; t0 < N; t0 += batch) {
    int nb = N - t0 < batch ? N - t0 : batch;
    memset(dx, 0, sizeof(float) * nb * CT);
    for (int b = 0; b < nb; b++) {
      int t = t0 + b, kind = t % FL_PROBE_COUNT, p = (t / FL_PROBE_COUNT) % npos,
          ch = t / (FL_PROBE_COUNT * npos);
      float *d = dx + (size_t)b * CT + (size_t)ch * T;
      if (kind == FL_PROBE_IMPULSE) d[pos[p]] = 1.0f;
      else
        for (int k = pos[p]; k < T; k++) d[k] = 1.0f;
    }
    if ((err = fl_lipschitz_jvp(m, c, nb, &j))) goto done;
    for (int b = 0; b < nb; b++) {
      int t = t0 + b, kind = t % FL_PROBE_COUNT, p = (t / FL_PROBE_COUNT) % npos;
      double dn = kind == FL_PROBE_IMPULSE ? 1.0 : sqrt((double)(T - pos[p]));
      double out = 0.0;
      for (int i = 0; i < s->n_mod; i++) {
        double v = fl__norm(j.dout[i] + (size_t)b * s->mod[i].channels * s->window *
                                            s->mod[i].rate,
                            (size_t)s->mod[i].channels * s->window * s->mod[i].rate);
        out += v * v;
      }
      float *g = gain + (size_t)t * FL_PATH_COUNT;
      g[FL_PATH_LATENT] = (float)(fl__norm(j.dz + (size_t)b * Z, Z) / dn);
      g[FL_PATH_HEAD] = (float)(fl__norm(j.dhead + (size_t)b * E, E) / dn);
      g[FL_PATH_CORRECTED] = (float)(sqrt(out) / dn);
    }
  }
done:
  free(dx);
  free(j.dz);
  free(j.dhead);
  for (int i = 0; j.dout && i < s->n_mod; i++) free(j.dout[i]);
  free(j.dout);
  free(j.dx);
  return err;
}
