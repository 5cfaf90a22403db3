/* faultline sim: the built-in plant simulator.
 *
 * A water-pump loop: a motor drives a centrifugal pump that pushes water
 * through a control valve and a heat exchanger back to its tank.  Four
 * modalities watch it, physically coupled so that a model has something to
 * learn across them:
 *
 *   vibration   vib_de, vib_nde      m/s^2   10 samples per tick
 *   electrical  current (A), voltage (V)     1 sample per tick
 *   hydraulic   pressure (bar), flow (l/min) 1 sample per tick
 *   thermal     temp_motor, temp_fluid (C)   1 sample per tick
 *
 * The physics, integrated at 10 Hz:
 *   - The pump curve H = H0 n^2 - kp q^2 meets the system curve
 *     H = Hst + ks q^2 / v^2 (n speed, v valve opening, q flow); flow follows
 *     the intersection with a time constant of 1.5 s, and the pressure gauge
 *     reads the pump's head at that flow.  Opening the valve raises flow and
 *     lowers pressure; speeding up raises both.
 *   - Shaft power is hydraulic power over an efficiency that peaks at the
 *     best-efficiency flow; the motor's current follows its electrical power,
 *     so current rises with flow.  The line voltage wanders slowly and sags a
 *     little under load.
 *   - Motor temperature is first order (time constant about 10 min) in the
 *     motor's losses, with cooling that improves with speed; the fluid is
 *     heated by the pump's losses and cooled towards ambient (about 30 min).
 *     Ambient temperature drifts slowly (a multi-hour swing plus a random
 *     walk), as real plants do, so the thermal channels meet levels a short
 *     recording never saw.  Optionally (shift) the supply voltage's level
 *     moves slowly too, as a transformer tap change or a season moves it:
 *     a normal change of operating point that the voltage channel, judged by
 *     its level, has never seen, and that the current follows a little.
 *   - Vibration is the first three shaft harmonics, growing with speed
 *     squared, plus broadband noise growing with load.  The shaft frequency is
 *     scaled down (1.1 Hz at full speed) so that the three harmonics fall
 *     below the 5 Hz Nyquist frequency of a 10 Hz stream: only the spectral
 *     pattern matters to the model, and an aliased 24 Hz shaft would not have
 *     one.
 *
 * Every few minutes the operator changes the operating point: a speed or
 * valve setpoint (or both) steps or ramps to a new value.  With anomalies
 * enabled, labelled process anomalies happen at random times, each lasting
 * 30 s to 3 min:
 *   valve closure  the valve partly closes: flow drops, pressure rises,
 *                  current falls;
 *   cavitation     the pump loses head: pressure and flow drop, flow becomes
 *                  noisy and broadband vibration grows several-fold;
 *   imbalance      the rotor's 1x vibration harmonic grows several-fold.
 *
 * A plant of several units (units > 1) runs that many pumps side by side,
 * physically coupled: they push into one discharge header (each unit's
 * system curve starts higher when the others pump more), their motors hang
 * on one supply bus (each sees the others' currents as a voltage sag), their
 * fluid returns to one tank (each unit's fluid temperature is pulled towards
 * the others'), and they share the ambient temperature, the grid's wander and
 * the supply shift.  Each unit has its own operator (schedule) and sensor
 * noise; each anomaly episode happens in one unit.
 *
 * Randomness comes from independent streams derived from the seed (operating
 * schedule, sensor noise, ambient drift, anomalies), so the same seed with and
 * without anomalies gives the same plant up to the first episode, and an
 * episode's effect can be measured against its clean twin. */
#ifndef FAULTLINE_SIM_H
#define FAULTLINE_SIM_H

#include <stdint.h>

#include "faultline/csv.h"

/* ---- layout ------------------------------------------------------------ */

enum { FL_SIM_MODALITIES = 4, FL_SIM_MAX_CHANNELS = 2, FL_SIM_MAX_UNITS = 999 };

/* One modality of the simulator as the model spec needs it. */
typedef struct {
  const char *name;                           /* "vibration", ... */
  int channels;                               /* channels in use */
  int rate;                                   /* samples per base tick */
  const char *channel[FL_SIM_MAX_CHANNELS];   /* channel names */
} fl_sim_modality;

/* The simulator's modalities in column order (vibration, electrical,
 * hydraulic, thermal); *count (may be NULL) receives FL_SIM_MODALITIES.  The
 * array is static and read-only.
 *
 * Column convention (project-wide): one row per base tick; a channel of rate
 * r > 1 occupies r columns "<channel>.0" .. "<channel>.<r-1>", sub-samples in
 * time order; a rate-1 channel is the single column "<channel>".  The
 * simulator's table is these 26 sensor columns in layout order followed by
 * "anomaly" and "anomaly_kind": 28 columns.  A plant of U > 1 units has
 * each unit's 26 columns in unit order, named "uNN_<column>" (NN from 01,
 * three digits from 100 units), then "anomaly", "anomaly_kind" and
 * "anomaly_unit" (the episode's unit, from 1; 0 outside episodes):
 * 26 U + 3 columns. */
const fl_sim_modality *fl_sim_layout(int *count);

/* ---- anomalies --------------------------------------------------------- */

/* Values of the "anomaly_kind" column. */
typedef enum {
  FL_SIM_NORMAL = 0,
  FL_SIM_VALVE_CLOSURE = 1,
  FL_SIM_CAVITATION = 2,
  FL_SIM_IMBALANCE = 3,
} fl_sim_anomaly;

/* ---- running ----------------------------------------------------------- */

typedef struct {
  uint64_t seed;
  int rows;       /* base ticks, one per second */
  int anomalies;  /* process-anomaly episodes to place; 0 = clean */
  float drift;    /* scale of the slow ambient drift: 1 default, 0 none */
  float noise;    /* scale of the sensor noise: 1 default, 0 none */
  float shift;    /* slow operating-point shift: the supply voltage's level
                   * moves by `shift` volts, linearly over the first two
                   * thirds of the run, and holds for the last third (0) */
  int64_t start;  /* Unix time (UTC) of the first row's stamp */
  int units;      /* coupled pump units, 1..FL_SIM_MAX_UNITS (0 counts as 1);
                   * one unit is the plant described above, column for
                   * column */
} fl_sim_config;

/* seed 1, rows 3600 (one hour), anomalies 0, drift 1, noise 1, shift 0,
 * start 2026-01-01T00:00:00, units 1. */
void fl_sim_defaults(fl_sim_config *c);

/* Runs the simulator into out, which must not own memory (it is
 * overwritten): c->rows rows of the columns described at fl_sim_layout,
 * stamps "YYYY-MM-DDTHH:MM:SS" (UTC) one second apart from c->start.
 * "anomaly" is 1 on every row of an episode and 0 elsewhere; "anomaly_kind"
 * holds its fl_sim_anomaly.  Episodes are spread over the run (the run is cut
 * into c->anomalies equal stretches, one episode placed at random inside
 * each, in a unit drawn at random), so a run too short for them all (under
 * 60 rows per episode) gets fewer.  The result depends only on the configuration.
 *
 * Returns FL_EINVAL if c or out is NULL, rows <= 0, anomalies < 0, drift or
 * noise negative or not finite, shift not finite or beyond +-100 V, units
 * above FL_SIM_MAX_UNITS, or start before 1970 or after 9999;
 * FL_ENOMEM (out is then left empty). */
int fl_sim_run(const fl_sim_config *c, fl_table *out);

#endif
