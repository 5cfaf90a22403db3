/* faultline group: see include/faultline/group.h for the contract. */
#define _GNU_SOURCE
#include "faultline/group.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "faultline/error.h"

void fl_group_defaults(fl_group_config *c) {
  c->min_corr = 0.5f;
  c->prefix_bonus = 0.2f;
  c->max_size = 8;
  c->max_modalities = 0;
  c->drift_share = 0.5f;
  c->drift_se = 1.0f;
  c->drift_span = 30;
  c->smooth = 0;
  c->change_lag = 0;
}

/* Is column j the k-th sample "NAME.k" of NAME (base length n)? */
static int fl__sample_of(const char *col, const char *base, size_t n, int k) {
  char want[32];
  snprintf(want, sizeof want, ".%d", k);
  return !strncmp(col, base, n) && !strcmp(col + n, want);
}

/* The sensors: a run NAME.0 .. NAME.(r-1), r >= 2, is one sensor at rate r. */
static int fl__sensors(const fl_table *t, const unsigned char *skip, fl_group_plan *p, char *why,
                       size_t whylen) {
  p->n_sensor = 0;
  for (int j = 0; j < t->cols;) {
    if (skip && skip[j]) {
      j++;
      continue;
    }
    const char *nm = t->names[j];
    size_t n = strlen(nm);
    int rate = 1;
    if (n > 2 && !strcmp(nm + n - 2, ".0")) {
      while (j + rate < t->cols && !(skip && skip[j + rate]) &&
             fl__sample_of(t->names[j + rate], nm, n - 2, rate))
        rate++;
      if (rate == 1) n += 2; /* a lone NAME.0 is a column like any other */
      n -= 2;
    }
    if (n >= FL_NAME_MAX) {
      snprintf(why, whylen, "the column name \"%s\" is longer than %d characters", nm,
               FL_NAME_MAX - 1);
      return FL_ERANGE;
    }
    fl_group_sensor *s = &p->sensor[p->n_sensor++];
    memset(s, 0, sizeof *s);
    memcpy(s->name, nm, n);
    s->rate = rate;
    s->col = j;
    j += rate;
  }
  if (!p->n_sensor) {
    snprintf(why, whylen, "the data has no numeric sensor column");
    return FL_EINVAL;
  }
  return 0;
}

/* The sensor's readings per tick (the mean of its samples), missing values
 * carried forward (the first finite value backward), standardised, then
 * smoothed by a trailing moving mean of m ticks into y; returns the share of
 * the variance left in the moving mean over `span` ticks (the slow part). */
static double fl__series(const fl_table *t, const fl_group_sensor *s, int m, int span, double *y,
                         double *x) {
  int R = t->rows;
  double last = NAN;
  for (int r = 0; r < R; r++) {
    double a = 0;
    int n = 0;
    for (int k = 0; k < s->rate; k++) {
      float v = t->data[(size_t)r * t->cols + s->col + k];
      if (isfinite(v)) a += v, n++;
    }
    x[r] = n ? a / n : last;
    if (n) last = x[r];
  }
  double first = 0;
  for (int r = 0; r < R; r++)
    if (isfinite(x[r])) {
      first = x[r];
      break;
    }
  for (int r = 0; r < R && !isfinite(x[r]); r++) x[r] = first;
  double mu = 0, var = 0;
  for (int r = 0; r < R; r++) mu += x[r];
  mu /= R;
  for (int r = 0; r < R; r++) var += (x[r] - mu) * (x[r] - mu);
  double sd = sqrt(var / R);
  for (int r = 0; r < R; r++) x[r] = sd > 0 ? (x[r] - mu) / sd : 0.0;
  double acc = 0;
  for (int r = 0; r < R; r++) {
    acc += x[r];
    if (r >= m) acc -= x[r - m];
    y[r] = acc / (r + 1 < m ? r + 1 : m);
  }
  double ym = 0, yv = 0;
  for (int r = 0; r < R; r++) ym += y[r];
  ym /= R;
  for (int r = 0; r < R; r++) yv += (y[r] - ym) * (y[r] - ym);
  double ysd = sqrt(yv / R);
  for (int r = 0; r < R; r++) y[r] = ysd > 0 ? (y[r] - ym) / ysd : 0.0;
  if (!(sd > 0) || span >= R) return 0.0;
  /* The moving mean over whole spans only; x has unit variance. */
  double sum = 0, s1 = 0, s2 = 0;
  int n = 0;
  for (int r = 0; r < R; r++) {
    sum += x[r];
    if (r >= span) sum -= x[r - span];
    if (r >= span - 1) {
      double v = sum / span;
      s1 += v, s2 += v * v, n++;
    }
  }
  double mv = s1 / n;
  return s2 / n - mv * mv;
}

/* The leading letters of a name, lower case, when there are three or more. */
static void fl__prefix(const char *name, char *out, size_t len) {
  size_t n = 0;
  while (name[n] && isalpha((unsigned char)name[n]) && n + 1 < len) {
    out[n] = (char)tolower((unsigned char)name[n]);
    n++;
  }
  out[n < 3 ? 0 : n] = 0;
}

int fl_group_plan_table(const fl_table *t, const unsigned char *skip, const fl_group_config *c,
                        fl_group_plan *p, char *why, size_t whylen) {
  char dummy[8];
  if (!why) why = dummy, whylen = sizeof dummy;
  why[0] = 0;
  if (p) memset(p, 0, sizeof *p);
  if (!t || !c || !p || c->max_size < 1 || c->max_modalities < 0) return FL_EINVAL;
  if (t->rows < 8) {
    snprintf(why, whylen, "%d rows are too few to group the sensors", t->rows);
    return FL_EINVAL;
  }
  /* At most one sensor per column. */
  if (!(p->sensor = calloc((size_t)(t->cols ? t->cols : 1), sizeof *p->sensor))) return FL_ENOMEM;
  int e = fl__sensors(t, skip, p, why, whylen);
  if (e) return e;
  int N = p->n_sensor, R = t->rows;
  int cap = c->max_modalities;
  if (!cap) {
    cap = 2 * ((N + c->max_size - 1) / c->max_size);
    if (cap < 8) cap = 8;
  }
  p->max_mod = cap;
  if (!(p->mod = calloc((size_t)N, sizeof *p->mod)) ||
      !(p->member = calloc((size_t)N, sizeof *p->member)))
    return FL_ENOMEM;
  int m = c->smooth > 0 ? c->smooth : R / 100;
  if (m < 1) m = 1;
  if (m > 10 && c->smooth <= 0) m = 10;
  p->smooth = m;
  double *y = malloc(sizeof(double) * (size_t)N * R), *tmp = malloc(sizeof(double) * R);
  double *dy = malloc(sizeof(double) * (size_t)N * R); /* changes, standardised */
  double *sim = malloc(sizeof(double) * (size_t)N * N);
  double *link = malloc(sizeof(double) * (size_t)N * N); /* sum of pair similarities */
  double *corr = malloc(sizeof(double) * (size_t)N * N); /* sum of |correlation| */
  int *size = malloc(sizeof(int) * N), *of = malloc(sizeof(int) * N);
  int *frc = calloc(N, sizeof(int));
  char (*pre)[FL_NAME_MAX] = malloc(sizeof *pre * N);
  e = FL_ENOMEM;
  if (!y || !dy || !tmp || !sim || !link || !corr || !size || !of || !frc || !pre) goto done;
  int span = c->drift_span > 0 ? c->drift_span : 30;
  /* A drifting sensor judged by its level alarms for the rest of the
   * recording; a steady one judged by its shape only loses its level.  So
   * on few rows, where the share is uncertain, the doubt goes to drift. */
  double margin = 1.0 + (c->drift_se > 0.0f ? c->drift_se * sqrt(2.0 * span / R) : 0.0);
  for (int i = 0; i < N; i++) {
    fl_group_sensor *s = &p->sensor[i];
    s->slow = (float)fl__series(t, s, m, span, y + (size_t)i * R, tmp);
    s->drifts = s->slow * margin >= c->drift_share;
    fl__prefix(s->name, pre[i], sizeof pre[i]);
  }
  /* A drifting sensor's level wanders over the whole recording, so the
   * levels of any two of them correlate over one recording whether or not
   * they are coupled; what coupling shows is that they change together.
   * While all the drifting sensors of a rate fit in one modality they share
   * it and nothing is chosen.  Beyond that, partners are chosen by the
   * correlation of the changes over `lag` ticks (the smoothed series'
   * differences), min_corr applying; any pair with such a sensor is judged
   * by its changes. */
  for (int i = 0; i < N; i++) {
    int nd = 0;
    for (int j = 0; j < N && p->sensor[i].drifts; j++)
      nd += p->sensor[j].drifts && p->sensor[j].rate == p->sensor[i].rate;
    p->sensor[i].by_change = nd > c->max_size;
  }
  int lag = c->change_lag > 0 ? c->change_lag : span;
  if (lag > R / 4) lag = R / 4 > 1 ? R / 4 : 1;
  int RD = R - lag;
  p->change_lag = lag;
  for (int i = 0; i < N; i++) {
    const double *u = y + (size_t)i * R;
    double *d = dy + (size_t)i * RD, mu = 0, v = 0;
    for (int r = 0; r < RD; r++) mu += d[r] = u[r + lag] - u[r];
    mu /= RD;
    for (int r = 0; r < RD; r++) v += (d[r] - mu) * (d[r] - mu);
    double sd = sqrt(v / RD);
    for (int r = 0; r < RD; r++) d[r] = sd > 0 ? (d[r] - mu) / sd : 0.0;
  }
  for (int i = 0; i < N; i++)
    for (int j = i; j < N; j++) {
      double a = 0;
      int ch = p->sensor[i].by_change || p->sensor[j].by_change, n = ch ? RD : R;
      const double *u = ch ? dy + (size_t)i * RD : y + (size_t)i * R;
      const double *v = ch ? dy + (size_t)j * RD : y + (size_t)j * R;
      for (int r = 0; r < n; r++) a += u[r] * v[r];
      a = fabs(a / n);
      if (a > 1) a = 1;
      double b = a + (i != j && pre[i][0] && !strcmp(pre[i], pre[j]) ? c->prefix_bonus : 0);
      corr[(size_t)i * N + j] = corr[(size_t)j * N + i] = a;
      sim[(size_t)i * N + j] = sim[(size_t)j * N + i] = b;
    }
  /* Clusters: of[i] is sensor i's cluster, named by its first sensor; a
   * cluster's pair sums over its members are kept in link and corr. */
  for (int i = 0; i < N; i++) of[i] = i, size[i] = 1;
  memcpy(link, sim, sizeof(double) * (size_t)N * N);
  int groups = N;
  for (int forced = 0;; forced = 1) {
    for (;;) {
      double best = -1;
      int ba = -1, bb = -1;
      for (int a = 0; a < N; a++) {
        if (of[a] != a) continue;
        for (int b = a + 1; b < N; b++) {
          if (of[b] != b || size[a] + size[b] > c->max_size) continue;
          if (p->sensor[a].rate != p->sensor[b].rate) continue;
          int da = p->sensor[a].drifts, db = p->sensor[b].drifts;
          if (!forced && da != db) continue;
          /* Groups paired by changes are kept out of the merges past the
           * cap: uncoupled drifting sensors merged learn a joint pattern
           * that the next hour breaks. */
          if (forced && (p->sensor[a].by_change || p->sensor[b].by_change)) continue;
          double s = link[(size_t)a * N + b] / ((double)size[a] * size[b]);
          /* Drifting sensors that all fit in one are judged by their shape
           * alone: they share a modality whether or not they move together. */
          int few = da && db && !p->sensor[a].by_change;
          if (!forced && s < c->min_corr && !few) continue;
          if (s > best) best = s, ba = a, bb = b;
        }
      }
      if (ba < 0) break;
      if (forced && groups <= cap) break;
      for (int k = 0; k < N; k++) {
        if (of[k] != k) continue;
        link[(size_t)ba * N + k] += link[(size_t)bb * N + k];
        link[(size_t)k * N + ba] = link[(size_t)ba * N + k];
      }
      for (int k = 0; k < N; k++)
        if (of[k] == bb) of[k] = ba;
      size[ba] += size[bb];
      groups--;
      if (forced)
        for (int k = 0; k < N; k++)
          if (of[k] == ba) frc[k] = 1;
    }
    if (forced || groups <= cap) break;
  }
  /* Modalities in the order of their first sensor, members in column order.
   * More than cap remain only where rates or drift forbid merging: the plan
   * keeps them all. */
  int used = 0;
  for (int a = 0; a < N; a++) {
    if (of[a] != a) continue;
    fl_group_modality *md = &p->mod[p->n_mod++];
    md->sensor = p->member + used;
    used += size[a];
    md->rate = p->sensor[a].rate;
    md->drifts = 1;
    for (int k = 0; k < N; k++)
      if (of[k] == a) {
        md->sensor[md->n++] = k;
        md->drifts &= p->sensor[k].drifts;
        if (frc[k]) md->forced = 1;
      }
    double in = 0;
    int np = 0;
    for (int x = 0; x < md->n; x++)
      for (int z = x + 1; z < md->n; z++, np++)
        in += corr[(size_t)md->sensor[x] * N + md->sensor[z]];
    md->cohesion = np ? (float)(in / np) : 1.0f;
    /* A name: the members' common prefix, else drift or g<k>; unique. */
    char nm[FL_NAME_MAX];
    strcpy(nm, pre[md->sensor[0]]);
    for (int x = 1; x < md->n && nm[0]; x++)
      if (strcmp(nm, pre[md->sensor[x]])) nm[0] = 0;
    if (!nm[0] && md->drifts) strcpy(nm, "drift");
    if (!nm[0]) snprintf(nm, sizeof nm, "g%d", p->n_mod);
    for (int k = 0; k < p->n_mod - 1; k++)
      if (!strcmp(p->mod[k].name, nm)) {
        size_t l = strlen(nm);
        if (l > FL_NAME_MAX - 8) l = FL_NAME_MAX - 8;
        snprintf(nm + l, FL_NAME_MAX - l, "%d", p->n_mod);
        break;
      }
    strcpy(md->name, nm);
  }
  for (int i = 0; i < p->n_mod; i++) {
    fl_group_modality *md = &p->mod[i];
    for (int j = 0; j < p->n_mod; j++) {
      if (j == i) continue;
      double s = 0;
      for (int x = 0; x < md->n; x++)
        for (int z = 0; z < p->mod[j].n; z++)
          s += corr[(size_t)md->sensor[x] * N + p->mod[j].sensor[z]];
      s /= (double)md->n * p->mod[j].n;
      if (s > md->nearest) md->nearest = (float)s;
    }
  }
  e = 0;
done:
  free(y);
  free(dy);
  free(tmp);
  free(sim);
  free(link);
  free(corr);
  free(size);
  free(of);
  free(frc);
  free(pre);
  return e;
}

void fl_group_plan_free(fl_group_plan *p) {
  if (!p) return;
  free(p->sensor);
  free(p->mod);
  free(p->member);
  memset(p, 0, sizeof *p);
}

int fl_group_apply(const fl_group_plan *p, fl_model_spec *spec) {
  if (!p || !spec) return FL_EINVAL;
  const char **names = malloc(sizeof *names * (size_t)(p->n_sensor ? p->n_sensor : 1));
  if (!names) return FL_ENOMEM;
  int e = 0;
  for (int i = 0; i < p->n_mod && !e; i++) {
    for (int c = 0; c < p->mod[i].n; c++) names[c] = p->sensor[p->mod[i].sensor[c]].name;
    e = fl_model_spec_add(spec, p->mod[i].name, p->mod[i].rate, p->mod[i].n, names);
    if (!e) spec->mod[spec->n_mod - 1].drifts = p->mod[i].drifts;
  }
  free(names);
  return e;
}

/* Seconds since the epoch of "YYYY-MM-DD hh:mm:ss[.fff]" ('T' allowed). */
static double fl__stamp(const char *s) {
  int Y, M, D, h, mi;
  double sec;
  char sep;
  if (!s || sscanf(s, "%d-%d-%d%c%d:%d:%lf", &Y, &M, &D, &sep, &h, &mi, &sec) != 7) return NAN;
  if (sep != ' ' && sep != 'T') return NAN;
  struct tm tm = {0};
  tm.tm_year = Y - 1900;
  tm.tm_mon = M - 1;
  tm.tm_mday = D;
  tm.tm_hour = h;
  tm.tm_min = mi;
  return (double)timegm(&tm) + sec;
}

static int fl__cmpd(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

double fl_group_period(const fl_table *t) {
  if (!t || !t->stamps || t->rows < 2) return 0.0;
  double d[200];
  int n = 0;
  double prev = fl__stamp(t->stamps[0]);
  for (int r = 1; r < t->rows && n < 200; r++) {
    double now = fl__stamp(t->stamps[r]);
    if (isfinite(now) && isfinite(prev) && now > prev) d[n++] = now - prev;
    prev = now;
  }
  if (!n) return 0.0;
  qsort(d, n, sizeof *d, fl__cmpd);
  return d[n / 2];
}

int fl_group_window(double period, int rows) {
  int w = period > 0 ? (int)lround(3600.0 / period) : 60;
  if (w < 20) w = 20;
  if (w > 60) w = 60;
  if (rows > 0 && w > rows / 6) w = rows / 6;
  w -= w % 4;
  return w < 8 ? 8 : w;
}

int fl_group_hidden(int channels) { return channels <= 32 ? 256 : 512; }

int fl_group_latent(int n_mod, int window) {
  int L = window / 4 > 0 ? window / 4 : 1;
  long e = n_mod > 0 ? 8192L / ((long)n_mod * L) : 32;
  return e > 32 ? 32 : e < 4 ? 4 : (int)e;
}

int fl_group_train_stride(int rows, int window, int channels) {
  long n = rows - window + 1, cap = 4000;
  if (channels > 64) cap = 4000L * 64 / channels;
  return n > cap ? (int)((n + cap - 1) / cap) : 1;
}

void fl_group_detect_defaults(fl_detect_config *d, int rows, int window) {
  int h = window / 12 > 2 ? window / 12 : 2;
  d->on = d->off = h;
  if (rows - window + 1 < 1000) d->w_emb = d->w_var = 0.0f;
}
