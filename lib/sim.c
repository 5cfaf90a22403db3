/* faultline sim: see include/faultline/sim.h for the contracts. */
#include "faultline/sim.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "faultline/error.h"
#include "faultline/nn.h"

/* ---- layout ------------------------------------------------------------ */

static const fl_sim_modality fl__sim_layout[FL_SIM_MODALITIES] = {
    {"vibration", 2, 10, {"vib_de", "vib_nde"}},
    {"electrical", 2, 1, {"current", "voltage"}},
    {"hydraulic", 2, 1, {"pressure", "flow"}},
    {"thermal", 2, 1, {"temp_motor", "temp_fluid"}},
};

const fl_sim_modality *fl_sim_layout(int *count) {
  if (count) *count = FL_SIM_MODALITIES;
  return fl__sim_layout;
}

void fl_sim_defaults(fl_sim_config *c) {
  memset(c, 0, sizeof *c);
  c->seed = 1;
  c->rows = 3600;
  c->anomalies = 0;
  c->drift = 1.0f;
  c->noise = 1.0f;
  c->start = 1767225600; /* 2026-01-01T00:00:00Z */
  c->units = 1;
}

/* ---- plant constants --------------------------------------------------- */

enum {
  FL__SUB = 10,   /* physics steps per tick, also the vibration rate */
  /* A unit's columns: 2 x 10 vibration, then 6 single columns; one unit's
   * table has the 2 labels after them. */
  FL__COL_CURRENT = 20,
  FL__COL_VOLTAGE,
  FL__COL_PRESSURE,
  FL__COL_FLOW,
  FL__COL_TMOTOR,
  FL__COL_TFLUID,
  FL__COL_ANOMALY,
  FL__COL_KIND,
};

static const double fl__dt = 1.0 / FL__SUB; /* s */
static const double fl__pi2 = 6.283185307179586;

/* Pump and system curves in bar with q in units of 100 l/min; the values
 * give about 125 l/min at 3.1 bar at full speed and open valve. */
static const double fl__H0 = 5.0, fl__kp = 1.2, fl__Hst = 0.8, fl__ks = 1.5;
static const double fl__tau_q = 1.5;       /* s, flow's inertia */
static const double fl__eta_max = 0.65;    /* pump's best efficiency */
static const double fl__eta_motor = 0.86;
static const double fl__i_mag = 0.9;       /* A, magnetising current */
static const double fl__cm = 4800.0;       /* J/K, motor's heat capacity */
static const double fl__gm = 8.0;          /* W/K, motor's cooling at full speed */
static const double fl__cf = 72000.0;      /* J/K, fluid and tank */
static const double fl__gf = 40.0;         /* W/K, heat exchanger */
static const double fl__shaft_hz = 1.1;    /* scaled shaft frequency at full speed */

/* The state the physics integrates. */
typedef struct {
  double n, v;        /* speed (fraction of nominal), valve opening (0..1] */
  double q;           /* flow, 100 l/min */
  double tm, tf;      /* motor and fluid temperature, C */
  double phase;       /* shaft angle, rad */
  double grid;        /* line voltage's slow deviation, V */
  double wander;      /* ambient random walk, C */
  double supply;      /* supply voltage's slow shift, V */
} fl__plant;

/* The plant's instantaneous powers and readings at a state. */
typedef struct {
  double p;       /* discharge pressure, bar */
  double ph;      /* hydraulic power, W */
  double shaft;   /* shaft power, W */
  double pe;      /* electrical power, W */
  double i, u;    /* current A, line voltage V */
} fl__power;

/* The flow where pump and system curves cross. */
static double fl__q_eq(double n, double v, double h0, double hst) {
  double head = h0 * n * n - hst;
  if (head < 0.01) head = 0.01;
  return sqrt(head / (fl__kp + fl__ks / (v * v)));
}

static fl__power fl__powers(const fl__plant *s, double h0, double sag) {
  fl__power o;
  o.p = h0 * s->n * s->n - fl__kp * s->q * s->q;
  if (o.p < 0.0) o.p = 0.0;
  /* bar * 1e5 Pa times 100 l/min = 1/600 m^3/s. */
  o.ph = o.p * s->q * 1e5 / 600.0;
  /* By the affinity laws the best-efficiency flow scales with speed; away
   * from it the pump wastes more of its shaft power as heat in the fluid. */
  double rel = s->q / (s->n > 0.05 ? s->n : 0.05) - 1.0;
  double eta = fl__eta_max * (1.0 - 0.6 * rel * rel);
  if (eta < 0.15) eta = 0.15;
  o.shaft = o.ph / eta + 40.0 * s->n;
  o.pe = o.shaft / fl__eta_motor;
  o.u = 400.0 + s->supply + s->grid - sag;
  double ia = o.pe / (1.7320508 * o.u * 0.9);
  o.i = sqrt(ia * ia + fl__i_mag * fl__i_mag);
  /* The supply line's impedance makes the voltage sag with the current. */
  o.u -= 1.5 * o.i;
  return o;
}

static double fl__motor_cooling(double n) { return fl__gm * (0.4 + 0.6 * n); }

static double fl__uniform(fl_rng *r, double lo, double hi) {
  return lo + (hi - lo) * fl_rng_uniform(r);
}

/* ---- operating schedule ------------------------------------------------ */

/* A setpoint that either holds, steps, or ramps linearly between two values. */
typedef struct {
  double from, to;
  double t0, len; /* ramp start and length in s; len 0 is a step */
} fl__setpoint;

static double fl__setpoint_at(const fl__setpoint *s, double t) {
  if (s->len <= 0.0 || t >= s->t0 + s->len) return s->to;
  if (t <= s->t0) return s->from;
  return s->from + (s->to - s->from) * (t - s->t0) / s->len;
}

static void fl__setpoint_move(fl__setpoint *s, double t, double to, fl_rng *r) {
  s->from = fl__setpoint_at(s, t);
  s->to = to;
  s->t0 = t;
  /* Half the changes are steps, half ramps of 20 s to 1.5 min. */
  s->len = fl_rng_uniform(r) < 0.5f ? 0.0 : fl__uniform(r, 20.0, 90.0);
}

/* ---- anomalies --------------------------------------------------------- */

typedef struct {
  int start, len;   /* rows */
  int kind;         /* fl_sim_anomaly */
  double severity;  /* kind-specific size, drawn per episode */
} fl__episode;

/* Strength in [0, 1] of an episode at time t (s): it sets in and fades over
 * 5 s, inside its labelled rows, so that every labelled row shows it and no
 * unlabelled row carries its onset. */
static double fl__envelope(const fl__episode *e, double t) {
  double in = t - e->start, out = e->start + e->len - t;
  double a = in < out ? in : out;
  a /= 5.0;
  return a < 0.0 ? 0.0 : a > 1.0 ? 1.0 : a;
}

/* ---- stamps ------------------------------------------------------------ */

/* Gregorian date from days since 1970-01-01 (H. Hinnant's algorithm), so the
 * stamps need neither the C library's time zone nor its locale. */
static void fl__civil(int64_t z, int *y, int *m, int *d) {
  z += 719468;
  int64_t era = (z >= 0 ? z : z - 146096) / 146097;
  int64_t doe = z - era * 146097;
  int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  int64_t mp = (5 * doy + 2) / 153;
  *d = (int)(doy - (153 * mp + 2) / 5 + 1);
  *m = (int)(mp < 10 ? mp + 3 : mp - 9);
  *y = (int)(yoe + era * 400 + (*m <= 2));
}

static void fl__stamp(char *buf, size_t n, int64_t t) {
  int64_t days = t / 86400, sec = t % 86400;
  int y, m, d;
  fl__civil(days, &y, &m, &d);
  snprintf(buf, n, "%04d-%02d-%02dT%02d:%02d:%02d", y, m, d, (int)(sec / 3600),
           (int)(sec / 60 % 60), (int)(sec % 60));
}

/* ---- run --------------------------------------------------------------- */

/* Columns of one unit: 2 x 10 vibration and 6 single sensor columns. */
enum { FL__UNIT_COLS = FL__COL_ANOMALY };

static int fl__set_names(fl_table *t, int units) {
  char name[64], pre[16] = "";
  int col = 0, rc = 0, digits = units > 99 ? 3 : 2;
  for (int u = 0; u < units && !rc; u++) {
    if (units > 1) snprintf(pre, sizeof pre, "u%0*d_", digits, u + 1);
    for (int m = 0; m < FL_SIM_MODALITIES && !rc; m++) {
      const fl_sim_modality *md = &fl__sim_layout[m];
      for (int c = 0; c < md->channels && !rc; c++) {
        if (md->rate == 1) {
          snprintf(name, sizeof name, "%s%s", pre, md->channel[c]);
          rc = fl_table_set_name(t, col++, name);
          continue;
        }
        for (int k = 0; k < md->rate && !rc; k++) {
          snprintf(name, sizeof name, "%s%s.%d", pre, md->channel[c], k);
          rc = fl_table_set_name(t, col++, name);
        }
      }
    }
  }
  if (!rc) rc = fl_table_set_name(t, col++, "anomaly");
  if (!rc) rc = fl_table_set_name(t, col++, "anomaly_kind");
  if (!rc && units > 1) rc = fl_table_set_name(t, col++, "anomaly_unit");
  return rc;
}

/* One pump unit: its state, its operator's schedule and its own streams of
 * randomness (unit 0's are the single-unit plant's). */
typedef struct {
  fl__plant s;
  fl__setpoint sp_n, sp_v;
  double next_change;
  fl_rng sched, noise;
  fl__power w;      /* the powers at the last physics step */
} fl__unit;

/* The couplings between units (none with one unit): parallel pumps push into
 * one discharge header, so each unit's system curve starts higher when the
 * others pump more; the motors hang on one supply bus, so each sees the
 * others' currents as a sag; the fluid returns to one tank, so each unit's
 * fluid temperature is pulled towards the others'. */
static const double fl__k_header = 0.4;  /* bar per 100 l/min of the others' mean flow */
static const double fl__k_bus = 1.0;     /* V per A of the others' mean current */
static const double fl__g_tank = 20.0;   /* W/K towards the others' mean fluid temperature */

int fl_sim_run(const fl_sim_config *c, fl_table *out) {
  if (!c || !out || c->rows <= 0 || c->anomalies < 0) return FL_EINVAL;
  if (!isfinite(c->drift) || c->drift < 0.0f || !isfinite(c->noise) || c->noise < 0.0f)
    return FL_EINVAL;
  if (!isfinite(c->shift) || fabsf(c->shift) > 100.0f) return FL_EINVAL;
  if (c->start < 0 || c->start > INT64_C(253402300799) - c->rows) return FL_EINVAL;
  int U = c->units > 0 ? c->units : 1;
  if (U > FL_SIM_MAX_UNITS) return FL_EINVAL;

  const int cols = U * FL__UNIT_COLS + (U > 1 ? 3 : 2);
  int rc = fl_table_alloc(out, c->rows, cols);
  if (rc) return rc;
  rc = fl__set_names(out, U);
  char stamp[32];
  for (int r = 0; r < c->rows && !rc; r++) {
    fl__stamp(stamp, sizeof stamp, c->start + r);
    rc = fl_table_set_stamp(out, r, stamp);
  }
  fl__unit *un = rc ? NULL : calloc((size_t)U, sizeof *un);
  if (rc || !un) {
    fl_table_free(out);
    return rc ? rc : FL_ENOMEM;
  }

  /* Independent streams, so that switching anomalies on or changing the
   * drift leaves the operating schedule and the sensor noise as they were. */
  fl_rng amb, anom;
  for (int u = 0; u < U; u++) {
    uint64_t us = c->seed ^ (uint64_t)u * 0x9e3779b97f4a7c15ULL;
    fl_rng_seed(&un[u].sched, us ^ 0x5c4ed01e5c4ed01eULL);
    fl_rng_seed(&un[u].noise, us ^ 0x0015e0015e0015e0ULL);
  }
  fl_rng_seed(&amb, c->seed ^ 0xa3b1e47a3b1e47a3ULL);
  fl_rng_seed(&anom, c->seed ^ 0xa707a1e5a707a1e5ULL);

  /* Episodes: one per equal stretch of the run, at a random place inside,
   * each in one unit. */
  int nep = c->anomalies;
  if (nep > c->rows / 60) nep = c->rows / 60;
  fl__episode *ep = malloc(sizeof(fl__episode) * (size_t)(nep > 0 ? nep : 1));
  int *ep_unit = calloc((size_t)(nep > 0 ? nep : 1), sizeof *ep_unit);
  if (!ep || !ep_unit) {
    free(ep);
    free(ep_unit);
    free(un);
    fl_table_free(out);
    return FL_ENOMEM;
  }
  int seg = nep > 0 ? c->rows / nep : 0;
  for (int e = 0; e < nep; e++) {
    int len = 30 + (int)fl_rng_below(&anom, 151);
    if (len > seg - 20) len = seg - 20;
    ep[e].len = len;
    ep[e].start = e * seg + 10 + (int)fl_rng_below(&anom, (uint32_t)(seg - 20 - len + 1));
    ep[e].kind = 1 + (int)fl_rng_below(&anom, 3);
    switch (ep[e].kind) {
    case FL_SIM_VALVE_CLOSURE: ep[e].severity = fl__uniform(&anom, 0.25, 0.5); break;
    case FL_SIM_CAVITATION: ep[e].severity = fl__uniform(&anom, 0.12, 0.25); break;
    default: ep[e].severity = fl__uniform(&anom, 3.0, 5.0); break;
    }
    if (U > 1) ep_unit[e] = (int)fl_rng_below(&anom, (uint32_t)U);
  }

  /* Start each unit at a random operating point in thermal equilibrium, so
   * the run does not open with a warm-up no later window will show. */
  double grid = 2.0 * fl_rng_normal(&amb), wander = 0.0;
  double amb_phase = fl__pi2 * fl_rng_uniform(&amb);
  const double amb_base = 22.0;
  double ta = amb_base + c->drift * 2.0 * sin(amb_phase);
  for (int u = 0; u < U; u++) {
    fl__unit *x = &un[u];
    x->sp_n.from = x->sp_n.to = x->s.n = fl__uniform(&x->sched, 0.7, 1.0);
    x->sp_v.from = x->sp_v.to = x->s.v = fl__uniform(&x->sched, 0.4, 1.0);
    x->next_change = fl__uniform(&x->sched, 120.0, 420.0);
    x->s.q = fl__q_eq(x->s.n, x->s.v, fl__H0, fl__Hst);
    x->s.grid = grid;
  }
  /* The others' mean flow, current and fluid temperature, as unit u sees
   * them (0 with one unit). */
  double sum_q = 0.0, sum_i = 0.0, sum_tf = 0.0;
  for (int u = 0; u < U; u++) sum_q += un[u].s.q;
  for (int u = 0; u < U; u++) {
    fl__unit *x = &un[u];
    double hst = fl__Hst + (U > 1 ? fl__k_header * (sum_q - x->s.q) / (U - 1) : 0.0);
    if (U > 1) x->s.q = fl__q_eq(x->s.n, x->s.v, fl__H0, hst);
    fl__power w = fl__powers(&x->s, fl__H0, 0.0);
    x->s.tm = ta + (w.pe - w.shaft) / fl__motor_cooling(x->s.n);
    x->s.tf = ta + (w.shaft - w.ph) / fl__gf;
    x->w = w;
  }

  const double ns = c->noise;
  int cur = 0; /* next episode not yet over */
  for (int r = 0; r < c->rows; r++) {
    float *row = out->data + (size_t)r * (size_t)cols;
    while (cur < nep && ep[cur].start + ep[cur].len <= r) cur++;
    const fl__episode *e = cur < nep && ep[cur].start <= r ? &ep[cur] : NULL;
    int e_unit = e ? ep_unit[cur] : -1;
    row[U * FL__UNIT_COLS] = e ? 1.0f : 0.0f;
    row[U * FL__UNIT_COLS + 1] = e ? (float)e->kind : 0.0f;
    if (U > 1) row[U * FL__UNIT_COLS + 2] = e ? (float)(e_unit + 1) : 0.0f;

    /* Each operator moves speed, valve or both every 2 to 7 minutes. */
    for (int u = 0; u < U; u++) {
      fl__unit *x = &un[u];
      if (r < x->next_change) continue;
      float v = fl_rng_uniform(&x->sched);
      int move_speed = v < 0.4f || v >= 0.8f, move_valve = v >= 0.4f;
      if (move_speed) fl__setpoint_move(&x->sp_n, r, fl__uniform(&x->sched, 0.6, 1.0), &x->sched);
      if (move_valve) fl__setpoint_move(&x->sp_v, r, fl__uniform(&x->sched, 0.35, 1.0), &x->sched);
      x->next_change = r + fl__uniform(&x->sched, 120.0, 420.0);
    }

    /* Slow processes advance once per tick: the ambient swing (6 h period)
     * with a random walk on top (1 h correlation), and the grid voltage
     * (5 min correlation). */
    wander += -wander / 3600.0 + sqrt(2.0 / 3600.0) * fl_rng_normal(&amb);
    grid += -grid / 300.0 + 2.0 * sqrt(2.0 / 300.0) * fl_rng_normal(&amb);
    ta = amb_base + c->drift * (2.0 * sin(fl__pi2 * r / 21600.0 + amb_phase) + wander);
    /* The operating-point shift ramps over the first two thirds and holds:
     * the last third is the plant after the drift.  No random draws, so
     * the schedule and the noise stay those of the unshifted run. */
    double ramp = c->rows > 1 ? r / (c->rows * 2.0 / 3.0) : 1.0;
    double supply = c->shift * (ramp < 1.0 ? ramp : 1.0);
    for (int u = 0; u < U; u++) {
      un[u].s.grid = grid;
      un[u].s.wander = wander;
      un[u].s.supply = supply;
    }

    double cav_noise = 0.0;
    for (int k = 0; k < FL__SUB; k++) {
      double t = r + k * fl__dt;
      /* The couplings use the previous step's values of the others. */
      sum_q = sum_i = sum_tf = 0.0;
      for (int u = 0; u < U; u++) {
        sum_q += un[u].s.q;
        sum_i += un[u].w.i;
        sum_tf += un[u].s.tf;
      }
      for (int u = 0; u < U; u++) {
        fl__unit *x = &un[u];
        fl__plant *s = &x->s;
        const fl__episode *eu = u == e_unit || (U == 1 && e) ? e : NULL;
        double env = eu ? fl__envelope(eu, t) : 0.0;
        int kind = eu ? eu->kind : 0;
        double hst = fl__Hst, sag = 0.0, tank = 0.0;
        if (U > 1) {
          hst += fl__k_header * (sum_q - s->q) / (U - 1);
          sag = fl__k_bus * (sum_i - x->w.i) / (U - 1);
          tank = fl__g_tank * ((sum_tf - s->tf) / (U - 1) - s->tf);
        }

        /* The drive and the valve actuator follow their setpoints. */
        s->n += (fl__setpoint_at(&x->sp_n, t) - s->n) * fl__dt / 2.0;
        s->v += (fl__setpoint_at(&x->sp_v, t) - s->v) * fl__dt / 3.0;

        double v_eff = s->v, h0 = fl__H0, imb = 1.0, bb = 1.0;
        if (kind == FL_SIM_VALVE_CLOSURE) v_eff *= 1.0 - env * (1.0 - eu->severity);
        if (kind == FL_SIM_CAVITATION) {
          h0 *= 1.0 - env * eu->severity;
          bb += env * 3.0;
        }
        if (kind == FL_SIM_IMBALANCE) imb += env * (eu->severity - 1.0);

        s->q += (fl__q_eq(s->n, v_eff, h0, hst) - s->q) * fl__dt / fl__tau_q;
        fl__power w = fl__powers(s, h0, sag);
        x->w = w;
        s->tm += fl__dt * ((w.pe - w.shaft) - fl__motor_cooling(s->n) * (s->tm - ta)) / fl__cm;
        s->tf += fl__dt * ((w.shaft - w.ph) - fl__gf * (s->tf - ta) + tank) / fl__cf;
        s->phase = fmod(s->phase + fl__pi2 * fl__shaft_hz * s->n * fl__dt, fl__pi2);

        /* Vibration: harmonics grow with speed squared, broadband with load;
         * the non-drive end sees less of the 1x imbalance and more 3x. */
        double load = w.shaft / 1000.0, n2 = s->n * s->n, ph = s->phase;
        double de = n2 * (0.8 * imb * sin(ph) + 0.4 * sin(2 * ph + 0.7) + 0.2 * sin(3 * ph + 1.9));
        double nde = n2 * (0.6 * (1.0 + 0.7 * (imb - 1.0)) * sin(ph + 0.4) +
                           0.25 * sin(2 * ph + 2.1) + 0.3 * sin(3 * ph + 0.3));
        double bde = 0.25 * bb * (0.3 + 0.7 * load), bnde = 0.2 * bb * (0.3 + 0.7 * load);
        de += bde * fl_rng_normal(&x->noise) + ns * 0.05 * fl_rng_normal(&x->noise);
        nde += bnde * fl_rng_normal(&x->noise) + ns * 0.05 * fl_rng_normal(&x->noise);
        float *ur = row + u * FL__UNIT_COLS;
        ur[0 * FL__SUB + k] = (float)de;
        ur[1 * FL__SUB + k] = (float)nde;

        /* Cavitation's vapour bubbles make the flow and pressure restless;
         * the draws come from the anomaly stream so the clean twin's noise
         * is unchanged. */
        if (kind == FL_SIM_CAVITATION && k == FL__SUB - 1) cav_noise = env * fl_rng_normal(&anom);
      }
    }

    for (int u = 0; u < U; u++) {
      fl__unit *x = &un[u];
      const fl__power *w = &x->w;
      double cn = u == e_unit || U == 1 ? cav_noise : 0.0;
      double q_lpm = 100.0 * x->s.q;
      float *ur = row + u * FL__UNIT_COLS;
      ur[FL__COL_CURRENT] = (float)(w->i + ns * 0.02 * fl_rng_normal(&x->noise));
      ur[FL__COL_VOLTAGE] = (float)(w->u + ns * 0.5 * fl_rng_normal(&x->noise));
      ur[FL__COL_PRESSURE] =
          (float)(w->p * (1.0 + 0.05 * cn) + ns * 0.02 * fl_rng_normal(&x->noise));
      ur[FL__COL_FLOW] = (float)(q_lpm * (1.0 + 0.04 * cn) +
                                 ns * (0.5 + 0.005 * q_lpm) * fl_rng_normal(&x->noise));
      ur[FL__COL_TMOTOR] = (float)(x->s.tm + ns * 0.05 * fl_rng_normal(&x->noise));
      ur[FL__COL_TFLUID] = (float)(x->s.tf + ns * 0.03 * fl_rng_normal(&x->noise));
    }
  }
  free(ep);
  free(ep_unit);
  free(un);
  return 0;
}
