/* Report-by-exception updates into fixed base ticks (faultline/ticks.h). */
#include "faultline/ticks.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "faultline/error.h"

typedef struct {
  int64_t ts;
  float v;
} fl_ticks_upd;

/* One channel: the held sample and the updates not yet reached, sorted by
 * time (a ring of depth slots, oldest at head). */
typedef struct {
  int rate, have;
  fl_ticks_upd held;
  fl_ticks_upd *q;
  int head, n;
} fl_ticks_chan;

struct fl_ticks {
  fl_ticks_opts o;
  fl_ticks_chan *ch;
  int width;
  int started;
  int64_t next;    /* end time of the next tick to emit */
  int64_t emitted; /* end time of the newest emitted tick, valid once one was */
  int any_emitted;
  fl_ticks_stats st;
};

static int64_t fl_ticks_floor(int64_t t, int64_t p) {
  int64_t k = t / p;
  if (t % p < 0) k--;
  return k * p;
}

int fl_ticks_new(fl_ticks **out, const fl_ticks_opts *o) {
  *out = NULL;
  if (!o || o->n_channels < 1 || !o->rate || o->period_ns <= 0 || o->stale_ns <= 0 ||
      o->delay_ns < 0 || o->depth < 1 || o->max_burst < 1)
    return FL_EINVAL;
  for (int c = 0; c < o->n_channels; c++)
    if (o->rate[c] < 1 || o->period_ns / o->rate[c] < 1) return FL_EINVAL;
  fl_ticks *t = calloc(1, sizeof *t);
  if (!t) return FL_ENOMEM;
  t->o = *o;
  t->o.rate = NULL;
  t->ch = calloc((size_t)o->n_channels, sizeof *t->ch);
  if (!t->ch) goto oom;
  for (int c = 0; c < o->n_channels; c++) {
    t->ch[c].rate = o->rate[c];
    t->width += o->rate[c];
    t->ch[c].q = malloc(sizeof(fl_ticks_upd) * (size_t)o->depth);
    if (!t->ch[c].q) goto oom;
  }
  *out = t;
  return 0;
oom:
  fl_ticks_free(t);
  return FL_ENOMEM;
}

void fl_ticks_free(fl_ticks *t) {
  if (!t) return;
  if (t->ch)
    for (int c = 0; c < t->o.n_channels; c++) free(t->ch[c].q);
  free(t->ch);
  free(t);
}

int fl_ticks_put(fl_ticks *t, int ch, int64_t ts_ns, float v) {
  if (ch < 0 || ch >= t->o.n_channels) return FL_EINVAL;
  if (t->any_emitted && ts_ns <= t->emitted) {
    t->st.late++;
    return FL_TICKS_LATE;
  }
  fl_ticks_chan *c = &t->ch[ch];
  if (c->n == t->o.depth) {
    t->st.overflow++;
    return FL_TICKS_OVERFLOW;
  }
  if (!t->started) {
    /* The first tick is the one whose span holds the first update. */
    t->next = fl_ticks_floor(ts_ns, t->o.period_ns);
    if (t->next < ts_ns) t->next += t->o.period_ns;
    t->started = 1;
  }
  /* Insert after every update at or before ts_ns: in time order, and the
   * later arrival wins a tie.  Updates nearly always come in order, so the
   * walk from the tail is short. */
  int d = t->o.depth, i = c->n;
  while (i > 0 && c->q[(c->head + i - 1) % d].ts > ts_ns) {
    c->q[(c->head + i) % d] = c->q[(c->head + i - 1) % d];
    i--;
  }
  c->q[(c->head + i) % d] = (fl_ticks_upd){ts_ns, v};
  c->n++;
  t->st.accepted++;
  return FL_TICKS_OK;
}

/* The sample of channel c at time at: pops the updates reached. */
static float fl_ticks_sample(fl_ticks *t, fl_ticks_chan *c, int64_t at) {
  while (c->n && c->q[c->head].ts <= at) {
    c->held = c->q[c->head];
    c->have = 1;
    c->head = (c->head + 1) % t->o.depth;
    c->n--;
  }
  if (!c->have || at - c->held.ts > t->o.stale_ns || isnan(c->held.v)) {
    t->st.missing++;
    return NAN;
  }
  return c->held.v;
}

int fl_ticks_emit(fl_ticks *t, int64_t now_ns, float *out, uint64_t *seq, int64_t *tick_ns) {
  const int64_t P = t->o.period_ns;
  if (!t->started || now_ns - t->o.delay_ns < t->next) return 0;
  int64_t due = (now_ns - t->o.delay_ns - t->next) / P + 1;
  if (due > t->o.max_burst) {
    int64_t skip = due - t->o.max_burst;
    t->next += skip * P;
    t->st.skipped += (uint64_t)skip;
  }
  int64_t end = t->next;
  float *o = out;
  for (int ci = 0; ci < t->o.n_channels; ci++) {
    fl_ticks_chan *c = &t->ch[ci];
    int64_t step = P / c->rate;
    for (int q = 0; q < c->rate; q++)
      *o++ = fl_ticks_sample(t, c, q == c->rate - 1 ? end : end - P + (q + 1) * step);
  }
  *seq = (uint64_t)(end / P);
  *tick_ns = end;
  t->emitted = end;
  t->any_emitted = 1;
  t->next = end + P;
  t->st.emitted++;
  return 1;
}

int fl_ticks_width(const fl_ticks *t) { return t->width; }

int64_t fl_ticks_next(const fl_ticks *t) { return t->started ? t->next : INT64_MIN; }

const fl_ticks_stats *fl_ticks_stats_of(const fl_ticks *t) { return &t->st; }
