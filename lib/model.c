/* faultline model: see include/faultline/model.h for the contracts. */
#include "faultline/model.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "faultline/error.h"

/* Layer order in the table: per modality two encoder convolutions, then per
 * modality two decoder convolutions, then the block's three dense layers,
 * then the head's two: 4 M + 5 layers. */
struct fl_model {
  fl_model_spec spec;
  int L, Z, nch;          /* latent length, |z|, sum of C_m */
  int nlayers;
  fl_layer *layer;        /* (4 M + 5) */
  int (*enc)[2], (*dec)[2]; /* (M) layer indices */
  int blk[3], head[2];
  size_t nparams;
  float *params, *grads, *adam_m, *adam_v; /* (nparams) each */
  float *vbuf;                             /* power-iteration vectors */
  float *mean, *std;                       /* (nch) */
  fl_param *groups[FL_MOD_COUNT];
  int ngroup[FL_MOD_COUNT];
};

/* The per-modality buffers of a context, FL__CTX_PER of them for each
 * modality, in one array of pointers (per[k * M + i]) so that they are
 * allocated and freed as one. */
#define FL__CTX_PER 12

struct fl_ctx {
  int maxB, n_mod;
  /* A dry context allocates nothing and counts the floats it would hold,
   * so that fl_ctx_infer_bytes reads the allocator's own sizes. */
  int dry;
  size_t floats;
  float **per; /* (FL__CTX_PER M): the views below point into it */
  /* Per modality (B, C, T) input and output, encoder and decoder activations. */
  float **x, **out, **dout;
  float **mask;
  float **est;   /* (B, C, T) the detector's corrected estimate */
  float **level; /* (B, C, 2) window trend removed from a drifting modality */
  float **a1, **h1; // (B, e1, 2L)
  float **a2;       // (B, e2, L)
  float **zin;      // (B, e2, L) slice of z'
  float **d1, **e1; // (B, e1, 2L)
  float *z, *z2, *u1, *g1, *u2, *g2, *u3;                // (B, Z) and (B, H)
  float *p1, *q1, *p2, *emb, *norms;                     // head
  float *dz, *dz2, *dh, *dh2, *dhz;                      // gradient scratch
  float *gA, *gB, *gC;                                   // per-layer scratch
  float *demb;
  float *work;
  int infer;      /* forward only: the buffers below alias (fl_ctx_create_infer) */
  int used_block;
  int used_head; /* the last forward pass ran the head */
};

void fl_model_spec_defaults(fl_model_spec *s) {
  memset(s, 0, sizeof *s);
  s->window = 60;
  s->enc1 = 16;
  s->enc2 = 32;
  s->kernel = 5;
  s->hidden = 256;
  s->head_hidden = 128;
  s->emb = 32;
  s->leak = 0.1f;
  s->target[FL_MOD_ENC] = 2.0f;
  s->target[FL_MOD_HEAD] = 2.0f;
  s->target[FL_MOD_DEC] = 2.0f;
  /* The ablation (tests/bench/ablation.py, README) found one target of 2.0
   * for every layer better than the design's tighter block (1.0). */
  s->target[FL_MOD_BLOCK] = 2.0f;
}

void fl_model_spec_free(fl_model_spec *s) {
  if (!s) return;
  for (int i = 0; i < s->n_mod; i++) free(s->mod[i].channel);
  free(s->mod);
  s->mod = NULL;
  s->n_mod = 0;
}

int fl_model_spec_copy(fl_model_spec *dst, const fl_model_spec *src) {
  if (!dst || !src) return FL_EINVAL;
  *dst = *src;
  dst->mod = NULL;
  dst->n_mod = 0;
  if (!src->n_mod) return 0;
  dst->mod = calloc((size_t)src->n_mod, sizeof *dst->mod);
  if (!dst->mod) return FL_ENOMEM;
  for (int i = 0; i < src->n_mod; i++) {
    const fl_modality *a = &src->mod[i];
    fl_modality *b = &dst->mod[i];
    *b = *a;
    b->channel = NULL;
    dst->n_mod = i + 1;
    if (a->channels > 0) {
      b->channel = malloc(sizeof *b->channel * (size_t)a->channels);
      if (!b->channel) {
        fl_model_spec_free(dst);
        return FL_ENOMEM;
      }
      memcpy(b->channel, a->channel, sizeof *b->channel * (size_t)a->channels);
    }
  }
  return 0;
}

int fl_model_spec_add(fl_model_spec *s, const char *name, int rate, int channels,
                      const char *const *names) {
  if (!s || !name || !names || s->n_mod < 0) return FL_EINVAL;
  if (channels <= 0 || rate <= 0) return FL_EINVAL;
  if (strlen(name) >= FL_NAME_MAX) return FL_ERANGE;
  for (int c = 0; c < channels; c++)
    if (!names[c] || strlen(names[c]) >= FL_NAME_MAX) return FL_ERANGE;
  fl_modality *mods = realloc(s->mod, sizeof *mods * (size_t)(s->n_mod + 1));
  if (!mods) return FL_ENOMEM;
  s->mod = mods;
  fl_modality *md = &s->mod[s->n_mod];
  memset(md, 0, sizeof *md);
  md->channel = malloc(sizeof *md->channel * (size_t)channels);
  if (!md->channel) return FL_ENOMEM;
  snprintf(md->name, sizeof md->name, "%s", name);
  md->channels = channels;
  md->rate = rate;
  for (int c = 0; c < channels; c++) snprintf(md->channel[c], FL_NAME_MAX, "%s", names[c]);
  s->n_mod++;
  return 0;
}

int fl_model_spec_channels(const fl_model_spec *s) {
  if (!s) return FL_EINVAL;
  int n = 0;
  for (int i = 0; i < s->n_mod; i++) n += s->mod[i].channels;
  return n;
}

int fl_model_spec_add_channel(fl_model_spec *s, int i, const char *name) {
  if (!s || !name || i < 0 || i >= s->n_mod) return FL_EINVAL;
  if (strlen(name) >= FL_NAME_MAX) return FL_ERANGE;
  fl_modality *md = &s->mod[i];
  char (*ch)[FL_NAME_MAX] = realloc(md->channel, sizeof *ch * (size_t)(md->channels + 1));
  if (!ch) return FL_ENOMEM;
  md->channel = ch;
  snprintf(md->channel[md->channels++], FL_NAME_MAX, "%s", name);
  return 0;
}

int fl_model_spec_compatible(const fl_model_spec *a, const fl_model_spec *b, char *why,
                             size_t len) {
  char dummy[8];
  if (!why) {
    why = dummy;
    len = sizeof dummy;
  }
  if (a->window != b->window) {
    snprintf(why, len, "a window of %d ticks against %d", a->window, b->window);
    return 0;
  }
  if (a->n_mod != b->n_mod) {
    snprintf(why, len, "%d modalities against %d", a->n_mod, b->n_mod);
    return 0;
  }
  for (int i = 0; i < a->n_mod; i++) {
    const fl_modality *x = &a->mod[i], *y = &b->mod[i];
    int same = !strcmp(x->name, y->name) && x->rate == y->rate && x->channels == y->channels;
    for (int c = 0; same && c < x->channels; c++) same = !strcmp(x->channel[c], y->channel[c]);
    if (!same) {
      snprintf(why, len, "modality %d is %s (rate %d, %d channels) against %s (rate %d, %d "
               "channels) or its channels' names differ", i + 1, x->name, x->rate,
               x->channels, y->name, y->rate, y->channels);
      return 0;
    }
  }
  return 1;
}

int fl_model_spec_check(const fl_model_spec *s) {
  if (!s || s->n_mod <= 0 || !s->mod) return FL_EINVAL;
  if (s->window < 8 || s->window % 4) return FL_EINVAL;
  if (s->enc1 <= 0 || s->enc2 <= 0 || s->hidden <= 0 || s->head_hidden <= 0 ||
      s->emb <= 0 || s->kernel < 1 || s->kernel % 2 == 0)
    return FL_EINVAL;
  if (!(s->leak >= 0.0f && s->leak <= 1.0f)) return FL_EINVAL;
  for (int m = 0; m < s->n_mod; m++) {
    const fl_modality *md = &s->mod[m];
    if (md->channels <= 0 || !md->channel || md->rate <= 0 ||
        md->rate > 1000 || !md->name[0])
      return FL_EINVAL;
    for (int j = 0; j < m; j++)
      if (!strcmp(s->mod[j].name, md->name)) return FL_EINVAL;
  }
  return 0;
}

const char *fl_module_name(fl_module m) {
  static const char *names[FL_MOD_COUNT] = {"encoder", "decoder", "block", "head"};
  return (unsigned)m < FL_MOD_COUNT ? names[m] : "?";
}

/* The first encoder convolution of a modality at rate r: stride 2r, so that
 * every modality reaches the same length 2L = window / 2.  At r > 1 the
 * kernel spans 3r samples with r of padding, so that the taps of the 2L
 * outputs cover every input sample, the newest included (a kernel of 2r + 1
 * would leave the last r - 1 samples of the window unseen, and unwritten by
 * the mirrored decoder). */
static fl_conv fl__first_conv(const fl_model_spec *s, int cin, int cout, int r) {
  fl_conv c = {.cin = cin, .cout = cout, .k = r > 1 ? 3 * r : s->kernel,
               .stride = 2 * r, .pad = r > 1 ? r : s->kernel / 2, .dil = 1};
  return c;
}

static void fl__add_layer(fl_model *m, int *slot, const char *name, int kind,
                          fl_module mod, int modality, fl_conv conv, int tin, int nin,
                          int nout, fl_act act) {
  fl_layer *l = &m->layer[m->nlayers];
  *slot = m->nlayers++;
  memset(l, 0, sizeof *l);
  snprintf(l->name, sizeof l->name, "%s", name);
  l->kind = kind;
  l->module = mod;
  l->modality = modality;
  l->conv = conv;
  l->tin = tin;
  l->nin = nin;
  l->nout = nout;
  l->act = act;
  l->target = m->spec.target[mod];
  if (kind == FL_LAYER_DENSE) {
    l->nw = (size_t)nin * nout;
    l->nb = nout;
  } else {
    l->nw = (size_t)conv.cin * conv.cout * conv.k;
    l->nb = conv.cout;
  }
}

/* Input size of a layer's operator: the length of its power-iteration vector. */
static size_t fl__op_in(const fl_layer *l) {
  return l->kind == FL_LAYER_DENSE ? (size_t)l->nin : (size_t)l->conv.cin * l->tin;
}

int fl_model_create(fl_model **out, const fl_model_spec *spec, unsigned long seed) {
  if (!out) return FL_EINVAL;
  *out = NULL;
  int err = fl_model_spec_check(spec);
  if (err) return err;
  fl_model *m = calloc(1, sizeof *m);
  if (!m) return FL_ENOMEM;
  int maxl = 4 * spec->n_mod + 5;
  m->layer = calloc((size_t)maxl, sizeof *m->layer);
  m->enc = calloc((size_t)spec->n_mod, sizeof *m->enc);
  m->dec = calloc((size_t)spec->n_mod, sizeof *m->dec);
  if (!m->layer || !m->enc || !m->dec || fl_model_spec_copy(&m->spec, spec)) {
    fl_model_free(m);
    return FL_ENOMEM;
  }
  const fl_model_spec *s = &m->spec;
  m->L = s->window / 4;
  m->Z = s->n_mod * s->enc2 * m->L;
  char name[FL_LAYER_NAME_MAX];
  fl_conv none = {0};
  for (int i = 0; i < s->n_mod; i++) {
    const fl_modality *md = &s->mod[i];
    m->nch += md->channels;
    fl_conv c1 = fl__first_conv(s, md->channels, s->enc1, md->rate);
    fl_conv c2 = {.cin = s->enc1, .cout = s->enc2, .k = 5, .stride = 2, .pad = 2, .dil = 1};
    snprintf(name, sizeof name, "enc.%s.0", md->name);
    fl__add_layer(m, &m->enc[i][0], name, FL_LAYER_CONV, FL_MOD_ENC, i, c1,
                  s->window * md->rate, 0, 0, FL_ACT_LEAKY_RELU);
    snprintf(name, sizeof name, "enc.%s.1", md->name);
    fl__add_layer(m, &m->enc[i][1], name, FL_LAYER_CONV, FL_MOD_ENC, i, c2, 2 * m->L, 0,
                  0, FL_ACT_LEAKY_RELU);
  }
  for (int i = 0; i < s->n_mod; i++) {
    const fl_modality *md = &s->mod[i];
    /* The mirror of the encoder; output padding restores the exact lengths. */
    fl_conv t1 = {.cin = s->enc2, .cout = s->enc1, .k = 5, .stride = 2, .pad = 2,
                  .dil = 1, .out_pad = 1};
    fl_conv t2 = fl__first_conv(s, s->enc1, md->channels, md->rate);
    /* Output padding makes up what the strided transpose falls short of T. */
    t2.out_pad = s->window * md->rate - fl_convt1d_len(&t2, 2 * m->L);
    snprintf(name, sizeof name, "dec.%s.0", md->name);
    fl__add_layer(m, &m->dec[i][0], name, FL_LAYER_CONVT, FL_MOD_DEC, i, t1, m->L, 0, 0,
                  FL_ACT_LEAKY_RELU);
    snprintf(name, sizeof name, "dec.%s.1", md->name);
    fl__add_layer(m, &m->dec[i][1], name, FL_LAYER_CONVT, FL_MOD_DEC, i, t2, 2 * m->L, 0,
                  0, FL_ACT_IDENTITY);
  }
  fl__add_layer(m, &m->blk[0], "block.0", FL_LAYER_DENSE, FL_MOD_BLOCK, -1, none, 0, m->Z,
                s->hidden, FL_ACT_LEAKY_RELU);
  fl__add_layer(m, &m->blk[1], "block.1", FL_LAYER_DENSE, FL_MOD_BLOCK, -1, none, 0,
                s->hidden, s->hidden, FL_ACT_LEAKY_RELU);
  fl__add_layer(m, &m->blk[2], "block.2", FL_LAYER_DENSE, FL_MOD_BLOCK, -1, none, 0,
                s->hidden, m->Z, FL_ACT_IDENTITY);
  fl__add_layer(m, &m->head[0], "head.0", FL_LAYER_DENSE, FL_MOD_HEAD, -1, none, 0, m->Z,
                s->head_hidden, FL_ACT_LEAKY_RELU);
  fl__add_layer(m, &m->head[1], "head.1", FL_LAYER_DENSE, FL_MOD_HEAD, -1, none, 0,
                s->head_hidden, s->emb, FL_ACT_IDENTITY);

  /* Check the geometry once, so that no forward pass can meet a bad shape. */
  for (int i = 0; i < s->n_mod; i++) {
    int T = s->window * s->mod[i].rate;
    if (fl_conv1d_len(&m->layer[m->enc[i][0]].conv, T) != 2 * m->L ||
        fl_convt1d_len(&m->layer[m->dec[i][1]].conv, 2 * m->L) != T) {
      fl_model_free(m);
      return FL_ESHAPE;
    }
  }

  size_t nv = 0;
  for (int i = 0; i < m->nlayers; i++) {
    m->nparams += m->layer[i].nw + m->layer[i].nb;
    nv += fl__op_in(&m->layer[i]);
  }
  m->params = calloc(m->nparams, sizeof(float));
  m->grads = calloc(m->nparams, sizeof(float));
  m->adam_m = calloc(m->nparams, sizeof(float));
  m->adam_v = calloc(m->nparams, sizeof(float));
  m->vbuf = calloc(nv, sizeof(float));
  m->mean = calloc(m->nch, sizeof(float));
  m->std = calloc(m->nch, sizeof(float));
  int groups_ok = 1;
  for (int k = 0; k < FL_MOD_COUNT; k++)
    groups_ok &= (m->groups[k] = calloc(2 * (size_t)maxl, sizeof(fl_param))) != NULL;
  if (!m->params || !m->grads || !m->adam_m || !m->adam_v || !m->vbuf || !m->mean ||
      !m->std || !groups_ok) {
    fl_model_free(m);
    return FL_ENOMEM;
  }
  for (int c = 0; c < m->nch; c++) m->std[c] = 1.0f;

  fl_rng rng;
  fl_rng_seed(&rng, seed);
  size_t off = 0, voff = 0;
  for (int i = 0; i < m->nlayers; i++) {
    fl_layer *l = &m->layer[i];
    l->w = m->params + off;
    l->gw = m->grads + off;
    fl_param pw = {l->name, l->w, l->gw, m->adam_m + off, m->adam_v + off, l->nw};
    off += l->nw;
    l->b = m->params + off;
    l->gb = m->grads + off;
    fl_param pb = {l->name, l->b, l->gb, m->adam_m + off, m->adam_v + off, l->nb};
    off += l->nb;
    l->v = m->vbuf + voff;
    voff += fl__op_in(l);
    /* PyTorch's fan-in: a Conv1d's is cin k, a ConvTranspose1d's is cout k
     * (weight.size(1) * k). */
    int fan_in = l->kind == FL_LAYER_DENSE ? l->nin
                 : l->kind == FL_LAYER_CONV ? l->conv.cin * l->conv.k
                                            : l->conv.cout * l->conv.k;
    fl_init_uniform(l->w, l->nw, fan_in, &rng);
    fl_init_uniform(l->b, l->nb, fan_in, &rng);
    fl_param *g = m->groups[l->module];
    g[m->ngroup[l->module]++] = pw;
    g[m->ngroup[l->module]++] = pb;
  }
  /* A zero last layer makes the residual block the identity at the start of
   * stage 2: it begins from the stage-1 reconstruction, not from noise. */
  fl_layer *last = &m->layer[m->blk[2]];
  memset(last->w, 0, sizeof(float) * last->nw);
  memset(last->b, 0, sizeof(float) * last->nb);
  *out = m;
  return 0;
}

void fl_model_free(fl_model *m) {
  if (!m) return;
  free(m->params);
  free(m->grads);
  free(m->adam_m);
  free(m->adam_v);
  free(m->vbuf);
  free(m->mean);
  free(m->std);
  for (int k = 0; k < FL_MOD_COUNT; k++) free(m->groups[k]);
  free(m->layer);
  free(m->enc);
  free(m->dec);
  fl_model_spec_free(&m->spec);
  free(m);
}

const fl_model_spec *fl_model_spec_of(const fl_model *m) { return &m->spec; }
int fl_model_latent_len(const fl_model *m) { return m->L; }
int fl_model_latent_size(const fl_model *m) { return m->Z; }
int fl_model_channels(const fl_model *m) { return m->nch; }
float *fl_model_mean(fl_model *m) { return m->mean; }
float *fl_model_std(fl_model *m) { return m->std; }
size_t fl_model_param_count(const fl_model *m) { return m->nparams; }
int fl_model_layer_count(const fl_model *m) { return m->nlayers; }
fl_layer *fl_model_layer(fl_model *m, int i) {
  return i >= 0 && i < m->nlayers ? &m->layer[i] : NULL;
}
float *fl_model_param_block(fl_model *m) { return m->params; }

int fl_model_input_size(const fl_model *m) {
  int n = 0;
  for (int i = 0; i < m->spec.n_mod; i++)
    n += m->spec.mod[i].channels * m->spec.window * m->spec.mod[i].rate;
  return n;
}

int fl_model_params(fl_model *m, fl_module mod, fl_param **ps, int *count) {
  if (!m || (unsigned)mod >= FL_MOD_COUNT || !ps || !count) return FL_EINVAL;
  *ps = m->groups[mod];
  *count = m->ngroup[mod];
  return 0;
}

void fl_model_zero_grad(fl_model *m) { memset(m->grads, 0, sizeof(float) * m->nparams); }

int fl_model_copy_params(fl_model *dst, const fl_model *src) {
  if (!dst || !src || dst->nparams != src->nparams || dst->nch != src->nch)
    return FL_EMISMATCH;
  memcpy(dst->params, src->params, sizeof(float) * src->nparams);
  memcpy(dst->mean, src->mean, sizeof(float) * src->nch);
  memcpy(dst->std, src->std, sizeof(float) * src->nch);
  return 0;
}

/* ---- context ----------------------------------------------------------- */

static int fl__ptr_cmp(const void *a, const void *b) {
  uintptr_t x = (uintptr_t) * (float *const *)a, y = (uintptr_t) * (float *const *)b;
  return (x > y) - (x < y);
}

void fl_ctx_free(fl_ctx *c) {
  if (!c) return;
  /* A forward-only context points several fields at one buffer: free each
   * buffer once. */
  float *g[] = {c->z,  c->z2, c->u1,  c->g1, c->u2,  c->g2,  c->u3, c->p1,
                c->q1, c->p2, c->emb, c->norms, c->dz, c->dz2, c->dh, c->dh2,
                c->dhz, c->gA, c->gB, c->gC, c->demb, c->work};
  size_t ng = sizeof g / sizeof *g, np = c->per ? (size_t)FL__CTX_PER * c->n_mod : 0;
  float **p = malloc(sizeof *p * (np + ng));
  if (p) {
    /* Without the list (out of memory) the shared buffers leak rather than
     * being freed twice. */
    size_t n = 0;
    for (size_t k = 0; k < np; k++) p[n++] = c->per[k];
    for (size_t k = 0; k < ng; k++) p[n++] = g[k];
    qsort(p, n, sizeof *p, fl__ptr_cmp);
    for (size_t k = 0; k < n; k++)
      if (!k || p[k] != p[k - 1]) free(p[k]);
    free(p);
  }
  free(c->per);
  free(c);
}

/* The forward-only layout: per modality the inputs, masks, trend levels,
 * outputs and estimates as in training; every modality's encoder and decoder
 * intermediates in two shared buffers, s1 (B, e1, 2L) and s2 (B, e2, L),
 * with activations in place; the block's hidden layers in place, its last
 * layer written straight into z'; no gradient buffers. */
#define FL__ALLOC(p, n) ok &= fl__take(c, &(p), (n))

static int fl__take(fl_ctx *c, float **p, size_t n) {
  c->floats += n;
  *p = c->dry ? NULL : malloc(sizeof(float) * n);
  return c->dry || *p;
}

/* What both layouts hold per modality: inputs, masks, estimates, trend
 * levels and outputs.  Returns 1 when every allocation succeeded. */
static int fl__ctx_alloc_io(fl_ctx *c, const fl_model *m, size_t B) {
  const fl_model_spec *s = &m->spec;
  int ok = 1;
  for (int i = 0; i < s->n_mod; i++) {
    size_t T = (size_t)s->window * s->mod[i].rate, C = s->mod[i].channels;
    FL__ALLOC(c->x[i], B * C * T);
    FL__ALLOC(c->mask[i], B * C * T);
    FL__ALLOC(c->est[i], B * C * T);
    FL__ALLOC(c->level[i], B * C * 2);
    FL__ALLOC(c->out[i], B * C * T);
  }
  return ok;
}

/* A context with its per-modality pointer arrays and nothing else yet. */
static fl_ctx *fl__ctx_new(const fl_model *m, int max_batch) {
  fl_ctx *c = calloc(1, sizeof *c);
  if (!c) return NULL;
  c->maxB = max_batch;
  int M = c->n_mod = m->spec.n_mod;
  c->per = calloc((size_t)FL__CTX_PER * M, sizeof *c->per);
  if (!c->per) {
    free(c);
    return NULL;
  }
  float ***views[FL__CTX_PER] = {&c->x, &c->out, &c->dout, &c->mask, &c->est, &c->level,
                                 &c->a1, &c->h1, &c->a2, &c->zin, &c->d1, &c->e1};
  for (int k = 0; k < FL__CTX_PER; k++) *views[k] = c->per + (size_t)k * M;
  return c;
}

static size_t fl__ctx_work(const fl_model *m, int max_batch) {
  size_t work = 0;
  for (int i = 0; i < m->nlayers; i++) {
    const fl_layer *l = &m->layer[i];
    size_t w = l->kind == FL_LAYER_CONV    ? fl_conv1d_workspace(&l->conv, max_batch, l->tin)
               : l->kind == FL_LAYER_CONVT ? fl_convt1d_workspace(&l->conv, max_batch, l->tin)
                                           : 0;
    if (w > work) work = w;
  }
  return work;
}

static int fl__ctx_create_infer(fl_ctx *c, const fl_model *m, size_t B, size_t work) {
  const fl_model_spec *s = &m->spec;
  int ok = fl__ctx_alloc_io(c, m, B);
  float *s1, *s2;
  FL__ALLOC(s1, B * s->enc1 * 2 * m->L);
  FL__ALLOC(s2, B * s->enc2 * m->L);
  for (int i = 0; i < s->n_mod; i++) {
    c->a1[i] = c->h1[i] = c->d1[i] = c->e1[i] = s1;
    c->a2[i] = c->zin[i] = s2;
  }
  c->gA = s2;
  size_t Z = m->Z, H = s->hidden > s->head_hidden ? s->hidden : s->head_hidden;
  FL__ALLOC(c->z, B * Z); FL__ALLOC(c->z2, B * Z);
  c->u3 = c->z2;
  FL__ALLOC(c->u1, B * H); c->g1 = c->u1;
  FL__ALLOC(c->u2, B * H); c->g2 = c->u2;
  FL__ALLOC(c->p1, B * s->head_hidden); c->q1 = c->p1;
  FL__ALLOC(c->p2, B * s->emb); FL__ALLOC(c->emb, B * s->emb); FL__ALLOC(c->norms, B);
  FL__ALLOC(c->work, work ? work : 1);
  return ok ? 0 : FL_ENOMEM;
}


size_t fl_ctx_infer_bytes(const fl_model *m, int max_batch) {
  if (!m || max_batch <= 0) return 0;
  fl_ctx *c = fl__ctx_new(m, max_batch);
  if (!c) return 0;
  c->dry = 1;
  fl__ctx_create_infer(c, m, (size_t)max_batch, fl__ctx_work(m, max_batch));
  size_t n = c->floats;
  fl_ctx_free(c);
  return n * sizeof(float);
}

int fl_ctx_create_infer(fl_ctx **out, const fl_model *m, int max_batch) {
  if (!out || !m || max_batch <= 0) return FL_EINVAL;
  fl_ctx *c = fl__ctx_new(m, max_batch);
  if (!c) return FL_ENOMEM;
  c->infer = 1;
  int err = fl__ctx_create_infer(c, m, (size_t)max_batch, fl__ctx_work(m, max_batch));
  if (err) {
    fl_ctx_free(c);
    return err;
  }
  *out = c;
  return 0;
}

int fl_ctx_create(fl_ctx **out, const fl_model *m, int max_batch) {
  if (!out || !m || max_batch <= 0) return FL_EINVAL;
  fl_ctx *c = fl__ctx_new(m, max_batch);
  if (!c) return FL_ENOMEM;
  size_t B = (size_t)max_batch;
  const fl_model_spec *s = &m->spec;
  size_t big = 0, work = 0;
  int ok = fl__ctx_alloc_io(c, m, B);
  for (int i = 0; i < s->n_mod; i++) {
    size_t T = (size_t)s->window * s->mod[i].rate, C = s->mod[i].channels;
    FL__ALLOC(c->dout[i], B * C * T);
    FL__ALLOC(c->a1[i], B * s->enc1 * 2 * m->L);
    FL__ALLOC(c->h1[i], B * s->enc1 * 2 * m->L);
    FL__ALLOC(c->a2[i], B * s->enc2 * m->L);
    FL__ALLOC(c->zin[i], B * s->enc2 * m->L);
    FL__ALLOC(c->d1[i], B * s->enc1 * 2 * m->L);
    FL__ALLOC(c->e1[i], B * s->enc1 * 2 * m->L);
    if (C * T > big) big = C * T;
  }
  if ((size_t)s->enc1 * 2 * m->L > big) big = (size_t)s->enc1 * 2 * m->L;
  work = fl__ctx_work(m, max_batch);
  size_t Z = m->Z, H = s->hidden > s->head_hidden ? s->hidden : s->head_hidden;
  FL__ALLOC(c->z, B * Z); FL__ALLOC(c->z2, B * Z); FL__ALLOC(c->u3, B * Z);
  FL__ALLOC(c->u1, B * H); FL__ALLOC(c->g1, B * H); FL__ALLOC(c->u2, B * H);
  FL__ALLOC(c->g2, B * H);
  FL__ALLOC(c->p1, B * s->head_hidden); FL__ALLOC(c->q1, B * s->head_hidden);
  FL__ALLOC(c->p2, B * s->emb); FL__ALLOC(c->emb, B * s->emb); FL__ALLOC(c->norms, B);
  FL__ALLOC(c->demb, B * s->emb);
  FL__ALLOC(c->dz, B * Z); FL__ALLOC(c->dz2, B * Z); FL__ALLOC(c->dhz, B * Z);
  FL__ALLOC(c->dh, B * H); FL__ALLOC(c->dh2, B * H);
  FL__ALLOC(c->gA, B * big); FL__ALLOC(c->gB, B * big); FL__ALLOC(c->gC, B * big);
  FL__ALLOC(c->work, work ? work : 1);
#undef FL__ALLOC
  if (!ok) {
    fl_ctx_free(c);
    return FL_ENOMEM;
  }
  *out = c;
  return 0;
}

float *fl_ctx_input(fl_ctx *c, int i) { return c->x[i]; }
float *fl_ctx_output(fl_ctx *c, int i) { return c->out[i]; }
float *fl_ctx_mask(fl_ctx *c, int i) { return c->mask[i]; }
float *fl_ctx_estimate(fl_ctx *c, int i) { return c->est[i]; }
float *fl_ctx_level(fl_ctx *c, int i) { return c->level[i]; }
float *fl_ctx_doutput(fl_ctx *c, int i) { return c->dout[i]; }
float *fl_ctx_latent(fl_ctx *c) { return c->z; }
float *fl_ctx_latent2(fl_ctx *c) { return c->z2; }
float *fl_ctx_embedding(fl_ctx *c) { return c->emb; }
float *fl_ctx_dembedding(fl_ctx *c) { return c->demb; }

/* ---- forward ------------------------------------------------------------ */

/* Floats a layer writes for a batch of B. */
static size_t fl__layer_out(const fl_layer *l, int B) {
  if (l->kind == FL_LAYER_DENSE) return (size_t)B * l->nout;
  int t = l->kind == FL_LAYER_CONV ? fl_conv1d_len(&l->conv, l->tin)
                                   : fl_convt1d_len(&l->conv, l->tin);
  return (size_t)B * l->conv.cout * t;
}

/* y = act(layer(x)) for a batch; pre receives the pre-activation. */
static int fl__layer_fwd(const fl_model *m, fl_ctx *c, const fl_layer *l, float *pre,
                         float *post, const float *x, int B) {
  int err;
  if (l->kind == FL_LAYER_DENSE) /* a forward-only context reads W in place */
    err = c->infer ? fl_dense_infer(pre, x, l->w, l->b, B, l->nin, l->nout)
                   : fl_dense_forward(pre, x, l->w, l->b, B, l->nin, l->nout);
  else if (l->kind == FL_LAYER_CONV)
    err = fl_conv1d_forward(pre, x, l->w, l->b, &l->conv, B, l->tin, c->work);
  else
    err = fl_convt1d_forward(pre, x, l->w, l->b, &l->conv, B, l->tin, c->work);
  if (err) return err;
  size_t n = fl__layer_out(l, B);
  return post ? fl_act_forward(l->act, m->spec.leak, post, pre, n) : 0;
}

/* dx = layer^T(act'(pre) * dpost), accumulating weight gradients.  dpost is
 * overwritten (it becomes the pre-activation gradient). */
static int fl__layer_bwd(const fl_model *m, fl_ctx *c, const fl_layer *l, float *dx,
                         float *dpost, const float *pre, const float *x, int B) {
  size_t n = fl__layer_out(l, B);
  int err = fl_act_backward(l->act, m->spec.leak, dpost, dpost, pre, NULL, n);
  if (err) return err;
  if (l->kind == FL_LAYER_DENSE)
    return fl_dense_backward(dx, l->gw, l->gb, dpost, x, l->w, B, l->nin, l->nout);
  if (l->kind == FL_LAYER_CONV)
    return fl_conv1d_backward(dx, l->gw, l->gb, dpost, x, l->w, &l->conv, B, l->tin,
                              c->work);
  return fl_convt1d_backward(dx, l->gw, l->gb, dpost, x, l->w, &l->conv, B, l->tin,
                             c->work);
}

static int fl__forward(fl_model *m, fl_ctx *c, int B, int use_block, int with_head,
                       int encode) {
  if (!m || !c || B <= 0 || B > c->maxB) return FL_EINVAL;
  const fl_model_spec *s = &m->spec;
  int err, seg = s->enc2 * m->L, Z = m->Z;
  for (int i = 0; encode && i < s->n_mod; i++) {
    const fl_layer *l0 = &m->layer[m->enc[i][0]], *l1 = &m->layer[m->enc[i][1]];
    if ((err = fl__layer_fwd(m, c, l0, c->a1[i], c->h1[i], c->x[i], B))) return err;
    /* The second layer's output goes through gA, then into its slot of z. */
    if ((err = fl__layer_fwd(m, c, l1, c->a2[i], c->gA, c->h1[i], B))) return err;
    for (int b = 0; b < B; b++)
      memcpy(c->z + (size_t)b * Z + (size_t)i * seg, c->gA + (size_t)b * seg,
             sizeof(float) * seg);
  }
  c->used_block = use_block;
  if (use_block) {
    const fl_layer *b0 = &m->layer[m->blk[0]], *b1 = &m->layer[m->blk[1]],
                   *b2 = &m->layer[m->blk[2]];
    if ((err = fl__layer_fwd(m, c, b0, c->u1, c->g1, c->z, B))) return err;
    if ((err = fl__layer_fwd(m, c, b1, c->u2, c->g2, c->g1, B))) return err;
    if ((err = fl__layer_fwd(m, c, b2, c->u3, NULL, c->g2, B))) return err;
    /* In a forward-only context u3 is z2 itself: the same sum. */
    for (size_t k = 0; k < (size_t)B * Z; k++) c->z2[k] = c->z[k] + c->u3[k];
  } else {
    memcpy(c->z2, c->z, sizeof(float) * (size_t)B * Z);
  }
  for (int i = 0; i < s->n_mod; i++) {
    const fl_layer *l0 = &m->layer[m->dec[i][0]], *l1 = &m->layer[m->dec[i][1]];
    for (int b = 0; b < B; b++)
      memcpy(c->zin[i] + (size_t)b * seg, c->z2 + (size_t)b * Z + (size_t)i * seg,
             sizeof(float) * seg);
    if ((err = fl__layer_fwd(m, c, l0, c->d1[i], c->e1[i], c->zin[i], B))) return err;
    if ((err = fl__layer_fwd(m, c, l1, c->out[i], NULL, c->e1[i], B))) return err;
  }
  c->used_head = with_head;
  if (with_head) {
    const fl_layer *h0 = &m->layer[m->head[0]], *h1 = &m->layer[m->head[1]];
    if ((err = fl__layer_fwd(m, c, h0, c->p1, c->q1, c->z, B))) return err;
    if ((err = fl__layer_fwd(m, c, h1, c->p2, NULL, c->q1, B))) return err;
    if ((err = fl_l2norm_forward(c->emb, c->norms, c->p2, B, s->emb))) return err;
  }
  return 0;
}

int fl_model_forward(fl_model *m, fl_ctx *c, int B, int use_block, int with_head) {
  return fl__forward(m, c, B, use_block, with_head, 1);
}

int fl_model_forward_latent(fl_model *m, fl_ctx *c, int B, int use_block, int with_head) {
  return fl__forward(m, c, B, use_block, with_head, 0);
}

const float *fl_ctx_preact(const fl_ctx *c, const fl_model *m, int layer) {
  if (!c || !m || layer < 0 || layer >= m->nlayers || c->infer) return NULL;
  for (int i = 0; i < m->spec.n_mod; i++) {
    if (layer == m->enc[i][0]) return c->a1[i];
    if (layer == m->enc[i][1]) return c->a2[i];
    if (layer == m->dec[i][0]) return c->d1[i];
    if (layer == m->dec[i][1]) return c->out[i];
  }
  if (layer == m->blk[0]) return c->used_block ? c->u1 : NULL;
  if (layer == m->blk[1]) return c->used_block ? c->u2 : NULL;
  if (layer == m->blk[2]) return c->used_block ? c->u3 : NULL;
  if (layer == m->head[0]) return c->used_head ? c->p1 : NULL;
  if (layer == m->head[1]) return c->used_head ? c->p2 : NULL;
  return NULL;
}

/* ---- backward ----------------------------------------------------------- */

/* Propagates dz (B, |z|) through every encoder into the weight gradients. */
static int fl__encoder_bwd(fl_model *m, fl_ctx *c, const float *dz, int B) {
  const fl_model_spec *s = &m->spec;
  int err, seg = s->enc2 * m->L;
  for (int i = 0; i < s->n_mod; i++) {
    const fl_layer *l0 = &m->layer[m->enc[i][0]], *l1 = &m->layer[m->enc[i][1]];
    for (int b = 0; b < B; b++)
      memcpy(c->gA + (size_t)b * seg, dz + (size_t)b * m->Z + (size_t)i * seg,
             sizeof(float) * seg);
    if ((err = fl__layer_bwd(m, c, l1, c->gB, c->gA, c->a2[i], c->h1[i], B))) return err;
    if ((err = fl__layer_bwd(m, c, l0, NULL, c->gB, c->a1[i], c->x[i], B))) return err;
  }
  return 0;
}

int fl_model_backward_recon(fl_model *m, fl_ctx *c, int B, int into_encoder) {
  if (!m || !c || B <= 0 || B > c->maxB || c->infer) return FL_EINVAL;
  const fl_model_spec *s = &m->spec;
  int err, seg = s->enc2 * m->L, Z = m->Z;
  for (int i = 0; i < s->n_mod; i++) {
    const fl_layer *l0 = &m->layer[m->dec[i][0]], *l1 = &m->layer[m->dec[i][1]];
    size_t n = (size_t)B * s->mod[i].channels * s->window * s->mod[i].rate;
    memcpy(c->gA, c->dout[i], sizeof(float) * n); /* dout stays the caller's */
    if ((err = fl__layer_bwd(m, c, l1, c->gB, c->gA, c->out[i], c->e1[i], B))) return err;
    if ((err = fl__layer_bwd(m, c, l0, c->gC, c->gB, c->d1[i], c->zin[i], B))) return err;
    for (int b = 0; b < B; b++)
      memcpy(c->dz2 + (size_t)b * Z + (size_t)i * seg, c->gC + (size_t)b * seg,
             sizeof(float) * seg);
  }
  /* z' = z + block(z): the residual passes dz' straight through. */
  memcpy(c->dz, c->dz2, sizeof(float) * (size_t)B * Z);
  if (c->used_block) {
    const fl_layer *b0 = &m->layer[m->blk[0]], *b1 = &m->layer[m->blk[1]],
                   *b2 = &m->layer[m->blk[2]];
    memcpy(c->dhz, c->dz2, sizeof(float) * (size_t)B * Z);
    if ((err = fl__layer_bwd(m, c, b2, c->dh2, c->dhz, c->u3, c->g2, B))) return err;
    if ((err = fl__layer_bwd(m, c, b1, c->dh, c->dh2, c->u2, c->g1, B))) return err;
    if ((err = fl__layer_bwd(m, c, b0, into_encoder ? c->dhz : NULL, c->dh, c->u1, c->z,
                             B)))
      return err;
    if (into_encoder)
      for (size_t k = 0; k < (size_t)B * Z; k++) c->dz[k] += c->dhz[k];
  }
  return into_encoder ? fl__encoder_bwd(m, c, c->dz, B) : 0;
}

int fl_model_backward_head(fl_model *m, fl_ctx *c, int B, int into_encoder) {
  if (!m || !c || B <= 0 || B > c->maxB || c->infer) return FL_EINVAL;
  const fl_model_spec *s = &m->spec;
  const fl_layer *h0 = &m->layer[m->head[0]], *h1 = &m->layer[m->head[1]];
  int err;
  if ((err = fl_l2norm_backward(c->gA, c->demb, c->emb, c->norms, B, s->emb))) return err;
  if ((err = fl__layer_bwd(m, c, h1, c->dh, c->gA, c->p2, c->q1, B))) return err;
  if ((err = fl__layer_bwd(m, c, h0, into_encoder ? c->dhz : NULL, c->dh, c->p1, c->z,
                           B)))
    return err;
  return into_encoder ? fl__encoder_bwd(m, c, c->dhz, B) : 0;
}

/* ---- Lipschitz ---------------------------------------------------------- */

static int fl__layer_norm(fl_model *m, int i, float tol, float *sigma) {
  if (!m || i < 0 || i >= m->nlayers || !sigma) return FL_EINVAL;
  fl_layer *l = &m->layer[i];
  if (l->kind == FL_LAYER_DENSE)
    return fl_spectral_dense(sigma, l->w, l->nout, l->nin, 200, tol, l->v);
  if (l->kind == FL_LAYER_CONV)
    return fl_spectral_conv1d(sigma, l->w, &l->conv, l->tin, 200, tol, l->v);
  return fl_spectral_convt1d(sigma, l->w, &l->conv, l->tin, 200, tol, l->v);
}

int fl_model_layer_norm(fl_model *m, int i, float *sigma) {
  return fl__layer_norm(m, i, 1e-5f, sigma);
}

int fl_model_project(fl_model *m, fl_module mod, float *sigma_out) {
  if (!m) return FL_EINVAL;
  float worst = 0.0f;
  for (int i = 0; i < m->nlayers; i++) {
    fl_layer *l = &m->layer[i];
    if (l->module != mod || !(l->target > 0.0f)) continue;
    float sigma;
    /* After every optimiser step the weights move a little and the warm
     * start is close, often still converged (one product).  A residual
     * tolerance of 1e-4 puts sigma at most 5e-5 (relative) above the true
     * norm and not below it, so the projected layer ends within
     * [target (1 - 5e-5), target]. */
    int err = fl__layer_norm(m, i, 1e-4f, &sigma);
    if (err) return err;
    float scale = fl_lipschitz_project(l->w, l->nw, sigma, l->target);
    sigma *= scale;
    if (sigma > worst) worst = sigma;
  }
  if (sigma_out) *sigma_out = worst;
  return 0;
}

/* ---- data --------------------------------------------------------------- */

int fl_model_column_name(const fl_model_spec *spec, int i, int c, int k, char *buf,
                         size_t len) {
  if (!spec || i < 0 || i >= spec->n_mod || c < 0 || c >= spec->mod[i].channels || k < 0 ||
      k >= spec->mod[i].rate)
    return FL_EINVAL;
  int n = spec->mod[i].rate == 1
              ? snprintf(buf, len, "%s", spec->mod[i].channel[c])
              : snprintf(buf, len, "%s.%d", spec->mod[i].channel[c], k);
  return n < 0 || (size_t)n >= len ? FL_ERANGE : 0;
}

void fl_series_free(fl_series *s) {
  if (!s) return;
  if (s->x)
    for (int i = 0; i < s->n_mod; i++) free(s->x[i]);
  free(s->x);
  memset(s, 0, sizeof *s);
}

int fl_series_from_table(fl_series *s, const fl_model_spec *spec, const fl_table *t,
                         char *err, size_t errlen) {
  if (!s || !spec || !t) return FL_EINVAL;
  memset(s, 0, sizeof *s);
  s->rows = t->rows;
  s->x = calloc((size_t)spec->n_mod, sizeof *s->x);
  if (!s->x) return FL_ENOMEM;
  s->n_mod = spec->n_mod;
  char name[2 * FL_NAME_MAX];
  for (int i = 0; i < spec->n_mod; i++) {
    const fl_modality *md = &spec->mod[i];
    size_t T = (size_t)t->rows * md->rate;
    s->x[i] = malloc(sizeof(float) * (T ? T : 1) * md->channels);
    if (!s->x[i]) {
      fl_series_free(s);
      return FL_ENOMEM;
    }
    for (int c = 0; c < md->channels; c++)
      for (int k = 0; k < md->rate; k++) {
        fl_model_column_name(spec, i, c, k, name, sizeof name);
        int col = fl_table_col(t, name);
        if (col < 0) {
          if (err)
            snprintf(err, errlen, "column \"%s\" (modality %s) is not in the data", name,
                     md->name);
          fl_series_free(s);
          return FL_ENOTFOUND;
        }
        float *dst = s->x[i] + (size_t)c * T;
        for (int r = 0; r < t->rows; r++)
          dst[(size_t)r * md->rate + k] = t->data[(size_t)r * t->cols + col];
      }
  }
  return 0;
}

int fl_series_unused(const fl_model_spec *spec, const fl_table *t, unsigned char *unused) {
  if (!spec || !t || !unused) return FL_EINVAL;
  memset(unused, 1, (size_t)t->cols);
  char name[2 * FL_NAME_MAX];
  for (int i = 0; i < spec->n_mod; i++)
    for (int c = 0; c < spec->mod[i].channels; c++)
      for (int k = 0; k < spec->mod[i].rate; k++) {
        fl_model_column_name(spec, i, c, k, name, sizeof name);
        int col = fl_table_col(t, name);
        if (col >= 0) unused[col] = 0;
      }
  int n = 0;
  for (int j = 0; j < t->cols; j++) n += unused[j];
  return n;
}

int fl_series_window(const fl_series *s, const fl_model_spec *spec, int end,
                     float *const *raw) {
  if (!s || !spec || end < spec->window || end > s->rows) return FL_EINVAL;
  for (int i = 0; i < spec->n_mod; i++) {
    int r = spec->mod[i].rate, T = spec->window * r;
    size_t len = (size_t)s->rows * r, start = (size_t)(end - spec->window) * r;
    for (int c = 0; c < spec->mod[i].channels; c++)
      memcpy(raw[i] + (size_t)c * T, s->x[i] + (size_t)c * len + start, sizeof(float) * T);
  }
  return 0;
}

int fl_model_normalise(const fl_model *m, fl_ctx *c, int b, int i, const float *raw,
                       float clamp) {
  if (!m || !c || !raw || b < 0 || b >= c->maxB || i < 0 || i >= m->spec.n_mod)
    return FL_EINVAL;
  const fl_modality *md = &m->spec.mod[i];
  int T = m->spec.window * md->rate, C = md->channels, off = 0;
  for (int j = 0; j < i; j++) off += m->spec.mod[j].channels;
  float *x = c->x[i] + (size_t)b * C * T, *mk = c->mask[i] + (size_t)b * C * T;
  for (int ch = 0; ch < C; ch++) {
    float mu = m->mean[off + ch], inv = 1.0f / m->std[off + ch];
    for (int t = 0; t < T; t++) {
      float v = raw[(size_t)ch * T + t];
      size_t k = (size_t)ch * T + t;
      if (isnan(v)) {
        x[k] = 0.0f;
        mk[k] = 0.0f;
        continue;
      }
      v = (v - mu) * inv;
      /* Clamping keeps a reading of 0 or full scale from swamping a loss. */
      x[k] = v > clamp ? clamp : v < -clamp ? -clamp : v;
      mk[k] = 1.0f;
    }
    /* A drifting modality is seen relative to its own window trend (the
     * least-squares line through the window): its level and slow slope are
     * normal wherever they are, and the model judges what is left. */
    float *lv = c->level[i] + ((size_t)b * C + ch) * 2;
    lv[0] = lv[1] = 0.0f;
    if (md->drifts) {
      double n = 0, st = 0, sx = 0, stt = 0, stx = 0;
      for (int t = 0; t < T; t++) {
        size_t k = (size_t)ch * T + t;
        if (mk[k] == 0.0f) continue;
        double u = t - 0.5 * (T - 1);
        n++; st += u; sx += x[k]; stt += u * u; stx += u * x[k];
      }
      double den = n * stt - st * st;
      double slope = n > 1 && den > 0 ? (n * stx - st * sx) / den : 0.0;
      double icpt = n > 0 ? (sx - slope * st) / n : 0.0;
      lv[0] = (float)icpt;
      lv[1] = (float)slope;
      for (int t = 0; t < T; t++) {
        size_t k = (size_t)ch * T + t;
        if (mk[k] != 0.0f) x[k] -= (float)(icpt + slope * (t - 0.5 * (T - 1)));
      }
    }
  }
  return 0;
}
