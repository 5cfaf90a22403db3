/* faultline faults: see include/faultline/faults.h for the contracts. */
#include "faultline/faults.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "faultline/error.h"

static const char *const fl__fault_names[FL_FAULT_COUNT] = {
    [FL_FAULT_NONE] = "none",           [FL_FAULT_NOISE] = "noise",
    [FL_FAULT_BURST] = "burst",         [FL_FAULT_SPIKE] = "spike",
    [FL_FAULT_STEP] = "step",           [FL_FAULT_OFFSET] = "offset",
    [FL_FAULT_DRIFT] = "drift",         [FL_FAULT_DRIFT_EXP] = "drift_exp",
    [FL_FAULT_SINE] = "sine",           [FL_FAULT_DROPOUT] = "dropout",
    [FL_FAULT_MISSING] = "missing",     [FL_FAULT_STUCK] = "stuck",
    [FL_FAULT_SATURATION] = "saturation", [FL_FAULT_GAIN] = "gain",
    [FL_FAULT_TIMESHIFT] = "timeshift",
};

const char *fl_fault_name(fl_fault_type t) {
  if ((int)t < 0 || t >= FL_FAULT_COUNT) return NULL;
  return fl__fault_names[t];
}

int fl_fault_parse(const char *name, fl_fault_type *t) {
  if (!name || !t) return FL_EINVAL;
  for (int i = 0; i < FL_FAULT_COUNT; i++) {
    if (strcmp(name, fl__fault_names[i]) == 0) {
      *t = (fl_fault_type)i;
      return 0;
    }
  }
  return FL_ENOTFOUND;
}

void fl_fault_defaults(fl_fault_params p[FL_FAULT_COUNT]) {
  /* One row per type: magnitude, width, level, period, shift, span range.
   * The spans are fractions of the window so that the same table serves a
   * 1 Hz modality and a 10x one. */
  static const struct {
    float mag, width, level, period;
    int shift;
    float smin, smax;
  } d[FL_FAULT_COUNT] = {
      [FL_FAULT_NOISE] = {0.5f, 0, 0, 0, 0, 0.30f, 1.00f},
      [FL_FAULT_BURST] = {3.0f, 0, 0, 0, 0, 0.05f, 0.20f},
      [FL_FAULT_SPIKE] = {6.0f, 1.0f / 6.0f, 0, 0, 0, 0.03f, 0.10f},
      [FL_FAULT_STEP] = {3.0f, 0, 0, 0, 0, 0.10f, 0.80f},
      [FL_FAULT_OFFSET] = {3.0f, 0, 0, 0, 0, 0.10f, 0.50f},
      [FL_FAULT_DRIFT] = {4.0f, 0, 0, 0, 0, 0.20f, 0.80f},
      [FL_FAULT_DRIFT_EXP] = {4.0f, 0.25f, 0, 0, 0, 0.20f, 0.80f},
      [FL_FAULT_SINE] = {2.0f, 0, 0, 8.0f, 0, 0.20f, 0.80f},
      [FL_FAULT_DROPOUT] = {0, 0, 0, 0, 0, 0.05f, 0.50f},
      [FL_FAULT_MISSING] = {0, 0, 0, 0, 0, 0.05f, 0.50f},
      [FL_FAULT_STUCK] = {0, 0, 0, 0, 0, 0.10f, 0.60f},
      [FL_FAULT_SATURATION] = {0, 0, 0.7f, 0, 0, 0.20f, 0.80f},
      [FL_FAULT_GAIN] = {1.0f, 0, 0, 0, 0, 0.20f, 0.80f},
      [FL_FAULT_TIMESHIFT] = {0, 0, 0, 0, 5, 0.20f, 0.80f},
  };
  memset(p, 0, sizeof(fl_fault_params) * FL_FAULT_COUNT);
  for (int i = 1; i < FL_FAULT_COUNT; i++) {
    p[i].magnitude = d[i].mag;
    p[i].jitter = 0.5f;
    p[i].period = d[i].period;
    p[i].width = d[i].width;
    p[i].level = d[i].level;
    p[i].shift = d[i].shift;
    p[i].span_min = d[i].smin;
    p[i].span_max = d[i].smax;
  }
}

/* NaN compares unequal to itself, so "changed" needs its own test: a sample
 * that was missing and still is has not changed. */
static int fl__differs(float a, float b) {
  int na = isnan(a), nb = isnan(b);
  if (na || nb) return na != nb;
  return a != b;
}

/* Writes v into x[i] and labels the sample when the value changed. */
static void fl__put(float *x, uint8_t *label, long i, float v, uint8_t id) {
  if (fl__differs(x[i], v) && label) label[i] = id;
  x[i] = v;
}

/* A sample of u uniform in [-1, 1). */
static float fl__sym(fl_rng *rng) { return 2.0f * fl_rng_uniform(rng) - 1.0f; }

/* A random sign, so that a bias fault goes up as often as down. */
static float fl__sign(fl_rng *rng) { return (fl_rng_u64(rng) >> 63) ? 1.0f : -1.0f; }

static int fl__cmp_float(const void *a, const void *b) {
  float x = *(const float *)a, y = *(const float *)b;
  return (x > y) - (x < y);
}

/* Checks the parameters a type reads, so that a bad configuration fails
 * before anything is written. */
static int fl__check_params(fl_fault_type t, const fl_fault_params *p) {
  if (!isfinite(p->jitter) || p->jitter < 0.0f || p->jitter >= 1.0f) return FL_EINVAL;
  switch (t) {
  case FL_FAULT_NOISE:
  case FL_FAULT_BURST:
  case FL_FAULT_STEP:
  case FL_FAULT_OFFSET:
  case FL_FAULT_DRIFT:
  case FL_FAULT_GAIN:
    if (!isfinite(p->magnitude) || p->magnitude < 0.0f) return FL_EINVAL;
    break;
  case FL_FAULT_SPIKE:
  case FL_FAULT_DRIFT_EXP:
    if (!isfinite(p->magnitude) || p->magnitude < 0.0f) return FL_EINVAL;
    if (!isfinite(p->width) || p->width <= 0.0f) return FL_EINVAL;
    break;
  case FL_FAULT_SINE:
    if (!isfinite(p->magnitude) || p->magnitude < 0.0f) return FL_EINVAL;
    if (!isfinite(p->period) || p->period <= 0.0f) return FL_EINVAL;
    break;
  case FL_FAULT_SATURATION:
    if (!(p->level > 0.5f && p->level < 1.0f)) return FL_EINVAL;
    break;
  case FL_FAULT_TIMESHIFT:
    if (p->shift < 0) return FL_EINVAL;
    break;
  default:
    break;
  }
  return 0;
}

/* The quantile q of the finite values of v (n), by sorting a copy, with
 * linear interpolation between order statistics.  *found is 0 when the span
 * holds no finite value. */
static int fl__quantile(const float *v, int n, float q, float *out, int *found) {
  float *tmp = malloc(sizeof(float) * (size_t)n);
  if (!tmp) return FL_ENOMEM;
  int m = 0;
  for (int i = 0; i < n; i++)
    if (isfinite(v[i])) tmp[m++] = v[i];
  *found = m > 0;
  if (m > 0) {
    qsort(tmp, (size_t)m, sizeof(float), fl__cmp_float);
    double pos = q * (double)(m - 1);
    int lo = (int)floor(pos);
    int hi = lo + 1 < m ? lo + 1 : lo;
    double f = pos - lo;
    *out = (float)((1.0 - f) * tmp[lo] + f * tmp[hi]);
  }
  free(tmp);
  return 0;
}

int fl_fault_inject(fl_fault_type t, const fl_fault_params *p, float *x,
                    uint8_t *label, int C, int T, int ch, int t0, int len,
                    const float *sd, fl_rng *rng) {
  if (!x || !p || !rng || C <= 0 || T <= 0) return FL_EINVAL;
  if ((int)t < 0 || t >= FL_FAULT_COUNT) return FL_EINVAL;
  if (len <= 0 || t0 < 0 || t0 > T - len) return FL_EINVAL;
  if (t != FL_FAULT_TIMESHIFT && (ch < 0 || ch >= C)) return FL_EINVAL;
  if (t == FL_FAULT_NONE) return 0;
  int rc = fl__check_params(t, p);
  if (rc) return rc;
  float s = 1.0f;
  if (sd && t != FL_FAULT_TIMESHIFT) {
    s = sd[ch];
    if (!isfinite(s) || s < 0.0f) return FL_EINVAL;
  }

  const uint8_t id = (uint8_t)t;
  float *xc = x + (long)ch * T;          // (T) the faulty channel
  uint8_t *lc = label ? label + (long)ch * T : NULL;
  /* Every type draws its size first, so the stream of random numbers a type
   * consumes does not depend on the data. */
  float a = p->magnitude * (1.0f + p->jitter * fl__sym(rng));

  switch (t) {
  case FL_FAULT_NOISE:
    for (int i = 0; i < len; i++)
      fl__put(xc, lc, t0 + i, xc[t0 + i] + a * s * fl_rng_normal(rng), id);
    break;
  case FL_FAULT_BURST: {
    /* The half-sine envelope is positive on every sample of the span, so
     * every sample is disturbed, and the burst has no hard edges a detector
     * could key on instead of the noise itself. */
    const float pi = 3.14159265358979f;
    for (int i = 0; i < len; i++) {
      float env = sinf(pi * ((float)i + 0.5f) / (float)len);
      fl__put(xc, lc, t0 + i, xc[t0 + i] + a * s * env * fl_rng_normal(rng), id);
    }
    break;
  }
  case FL_FAULT_SPIKE: {
    float b = fl__sign(rng) * a * s;
    float sig = p->width * (float)len;
    if (sig < 0.25f) sig = 0.25f;
    float centre = t0 + 0.5f * (float)(len - 1);
    for (int i = 0; i < len; i++) {
      float d = ((float)(t0 + i) - centre) / sig;
      fl__put(xc, lc, t0 + i, xc[t0 + i] + b * expf(-0.5f * d * d), id);
    }
    break;
  }
  case FL_FAULT_STEP: {
    float b = fl__sign(rng) * a * s;
    for (int i = t0; i < T; i++) fl__put(xc, lc, i, xc[i] + b, id);
    break;
  }
  case FL_FAULT_OFFSET: {
    float b = fl__sign(rng) * a * s;
    for (int i = 0; i < len; i++) fl__put(xc, lc, t0 + i, xc[t0 + i] + b, id);
    break;
  }
  case FL_FAULT_DRIFT: {
    float b = fl__sign(rng) * a * s;
    for (int i = 0; i < len; i++)
      fl__put(xc, lc, t0 + i, xc[t0 + i] + b * (float)(i + 1) / (float)len, id);
    break;
  }
  case FL_FAULT_DRIFT_EXP: {
    float b = fl__sign(rng) * a * s;
    double tau = (double)p->width * len;
    double den = expm1((double)len / tau);
    for (int i = 0; i < len; i++) {
      /* For a very short time constant the ratio of the two expm1 terms
       * overflows; it equals exp((i + 1 - len) / tau) to double precision
       * long before that. */
      double f = (double)len / tau < 600.0 ? expm1((double)(i + 1) / tau) / den
                                           : exp((double)(i + 1 - len) / tau);
      fl__put(xc, lc, t0 + i, xc[t0 + i] + b * (float)f, id);
    }
    break;
  }
  case FL_FAULT_SINE: {
    /* The period varies with the same jitter as the amplitude: interference
     * from a neighbouring drive is rarely at one fixed frequency. */
    double period = (double)p->period * (1.0 + p->jitter * fl__sym(rng));
    double phase = 6.283185307179586 * fl_rng_uniform(rng);
    for (int i = 0; i < len; i++) {
      float v = (float)sin(6.283185307179586 * i / period + phase);
      fl__put(xc, lc, t0 + i, xc[t0 + i] + a * s * v, id);
    }
    break;
  }
  case FL_FAULT_DROPOUT:
  case FL_FAULT_MISSING: {
    float v = t == FL_FAULT_DROPOUT ? 0.0f : NAN;
    for (int i = 0; i < len; i++) {
      xc[t0 + i] = v;
      if (lc) lc[t0 + i] = id;
    }
    break;
  }
  case FL_FAULT_STUCK: {
    /* A sensor freezes at its last good reading; if the onset sample is
     * missing, that is the last finite one before it. */
    float v = NAN;
    for (int i = t0; i >= 0 && isnan(v); i--)
      if (isfinite(xc[i])) v = xc[i];
    for (int i = t0 + 1; i < T && isnan(v); i++)
      if (isfinite(xc[i])) v = xc[i];
    for (int i = 0; i < len; i++) {
      xc[t0 + i] = v;
      if (lc) lc[t0 + i] = id;
    }
    break;
  }
  case FL_FAULT_SATURATION: {
    int upper = fl__sign(rng) > 0.0f;
    float rail = 0.0f;
    int found = 0;
    rc = fl__quantile(xc + t0, len, upper ? p->level : 1.0f - p->level, &rail, &found);
    if (rc) return rc;
    if (!found) break;
    for (int i = 0; i < len; i++) {
      float v = xc[t0 + i];
      if (upper ? v > rail : v < rail) fl__put(xc, lc, t0 + i, rail, id);
    }
    break;
  }
  case FL_FAULT_GAIN: {
    float g = fl__sign(rng) > 0.0f ? 1.0f + a : 1.0f / (1.0f + a);
    double sum = 0.0;
    int n = 0;
    for (int i = 0; i < T; i++)
      if (isfinite(xc[i])) sum += xc[i], n++;
    float mean = n ? (float)(sum / n) : 0.0f;
    for (int i = 0; i < len; i++) {
      float v = xc[t0 + i];
      fl__put(xc, lc, t0 + i, mean + g * (v - mean), id);
    }
    break;
  }
  case FL_FAULT_TIMESHIFT: {
    int shift = (int)lrintf((float)p->shift * (1.0f + p->jitter * fl__sym(rng)));
    if (shift < 1 && p->shift > 0) shift = 1;
    /* Walking the span backwards reads every source sample (t - shift < t)
     * before it is overwritten, so the shift works in place. */
    for (int c = 0; c < C; c++) {
      float *xr = x + (long)c * T;   // (T)
      uint8_t *lr = label ? label + (long)c * T : NULL;
      for (int i = t0 + len - 1; i >= t0; i--) {
        int src = i - shift < 0 ? 0 : i - shift;
        fl__put(xr, lr, i, xr[src], id);
      }
    }
    break;
  }
  default:
    break;
  }
  return 0;
}

int fl_fault_random(const fl_fault_params p[FL_FAULT_COUNT],
                    const fl_fault_type *types, int ntypes, float *x,
                    uint8_t *label, int C, int T, const float *sd, fl_rng *rng,
                    fl_fault_type *chosen) {
  if (!p || !types || ntypes <= 0 || !x || !rng || C <= 0 || T <= 0) return FL_EINVAL;
  for (int i = 0; i < ntypes; i++)
    if ((int)types[i] < 0 || types[i] >= FL_FAULT_COUNT) return FL_EINVAL;
  /* The draws happen in a fixed order (type, channel, length, start) so that
   * a seed names one fault whatever the data. */
  fl_fault_type t = types[fl_rng_below(rng, (uint32_t)ntypes)];
  int ch = (int)fl_rng_below(rng, (uint32_t)C);
  const fl_fault_params *q = &p[t];
  if (chosen) *chosen = t;
  if (t == FL_FAULT_NONE) return 0;
  if (!(q->span_min > 0.0f && q->span_min <= q->span_max && q->span_max <= 1.0f))
    return FL_EINVAL;
  float frac = q->span_min + (q->span_max - q->span_min) * fl_rng_uniform(rng);
  int len = (int)lrintf(frac * (float)T);
  if (len < 1) len = 1;
  if (len > T) len = T;
  int t0 = t == FL_FAULT_STEP ? T - len : (int)fl_rng_below(rng, (uint32_t)(T - len + 1));
  return fl_fault_inject(t, q, x, label, C, T, ch, t0, len, sd, rng);
}
