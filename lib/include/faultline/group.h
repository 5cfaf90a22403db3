/* faultline group: modalities chosen from the training data, for a plant
 * that comes without a configuration.
 *
 *   sensors   a column is a sensor at rate 1; the columns NAME.0 .. NAME.(r-1)
 *             (all r of them, r >= 2, the names fl_model_column_name gives)
 *             are one sensor NAME at rate r
 *   drift     a sensor drifts when its moving mean over `drift_span` ticks
 *             keeps at least `drift_share` of its variance: its level
 *             wanders slowly through the recording, beyond what its
 *             tick-to-tick noise explains, so only its shape is judged.
 *             The share measured on R rows rests on about R / drift_span
 *             independent spans, a relative standard error of
 *             e = sqrt(2 drift_span / R); a sensor counts as drifting unless
 *             its share is below drift_share by more than `drift_se` of
 *             them: share x (1 + drift_se x e) >= drift_share.  On a short
 *             recording the margin is wide (400 rows, span 30: e = 0.39), on
 *             a long one narrow (6583 rows: e = 0.095)
 *   grouping  sensors that move together form a modality: average-linkage
 *             clustering on the absolute correlation of the smoothed
 *             readings (a moving mean of `smooth` ticks), a bonus of
 *             `prefix_bonus` for a shared name prefix (the leading letters,
 *             three at least), merging the most similar pair first while it
 *             is at least `min_corr`, never above `max_size` sensors,
 *             never across rates or across drifting and steady sensors.
 *             When more
 *             than `max_modalities` groups remain (by default the larger
 *             of 8 and twice the fewest that `max_size` allows, so that a
 *             wide plant's model stays in proportion to its sensors), the
 *             most similar allowed pairs are merged whatever their
 *             similarity.
 *   drifting  while a rate's drifting sensors number `max_size` or fewer
 *             they merge with each other whatever their similarity.  With
 *             more, levels that wander through one recording would pair
 *             uncoupled sensors, so any pair with such a sensor is judged by
 *             the correlation of the changes instead: the smoothed readings'
 *             differences over `change_lag` ticks (0: `drift_span`, at most a
 *             quarter of the rows), min_corr applies (`by_change`), and
 *             their groups are not merged to fit `max_modalities`, so a plan
 *             can hold more modalities than that.
 *
 * The plan depends only on the table's values and names and the config, and
 * ties are broken by column order, so the same data gives the same modalities.
 * The library keeps no state; the caller owns the plan. */
#ifndef FAULTLINE_GROUP_H
#define FAULTLINE_GROUP_H

#include <stddef.h>

#include "faultline/csv.h"
#include "faultline/detect.h"
#include "faultline/model.h"

typedef struct {
  float min_corr;     /* similarity needed to merge two groups (0.5) */
  float prefix_bonus; /* added to the similarity of sensors with one prefix (0.2) */
  int max_size;       /* sensors per modality at most (8) */
  int max_modalities; /* groups at most; 0: max(8, 2 ceil(sensors / max_size)) (0) */
  float drift_share;  /* the slow part's share of the variance for drift (0.5) */
  float drift_se;     /* relative standard errors of margin on that share (1) */
  int drift_span;     /* ticks of the slow part's moving mean (30, half a
                         window of 60) */
  int smooth;         /* moving-mean length in ticks; 0: rows / 100, 1 to 10 */
  int change_lag;     /* ticks over which a drifting sensor's change is taken;
                         0: drift_span (at most a quarter of the rows) */
} fl_group_config;

void fl_group_defaults(fl_group_config *c);

typedef struct {
  char name[FL_NAME_MAX]; /* column name, or NAME of NAME.0 .. */
  int rate;
  int col;                /* the table's column of its first sample */
  float slow;             /* the slow part's share of its variance */
  int drifts;
  int by_change;          /* drifts, with more drifting at its rate than fit
                             in one modality: grouped by its changes */
} fl_group_sensor;

typedef struct {
  char name[FL_NAME_MAX];
  int rate, drifts;
  int n;                        /* sensors */
  int *sensor;                  /* (n) indices into the plan's sensors */
  float cohesion;               /* mean |correlation| inside (1 for one sensor) */
  float nearest;                /* largest mean |correlation| with another group */
  int forced;                   /* merged below min_corr to fit max_modalities */
} fl_group_modality;

/* The plan owns its arrays: fl_group_plan_free. */
typedef struct {
  int n_sensor, n_mod, smooth, change_lag;
  int max_mod;               /* the cap on groups that applied */
  fl_group_sensor *sensor;   /* (n_sensor) */
  fl_group_modality *mod;    /* (n_mod) */
  int *member;               /* (n_sensor) the modalities' sensor lists */
} fl_group_plan;

/* Plans the modalities of table t, skipping the columns whose skip[j] is
 * non-zero (labels; skip may be NULL).  Errors: FL_EINVAL (no sensor, fewer
 * than 8 rows, a bad config), FL_ERANGE (a column name too long: why says
 * which), FL_ENOMEM.  plan need not be initialised; free it with
 * fl_group_plan_free whatever the result. */
int fl_group_plan_table(const fl_table *t, const unsigned char *skip, const fl_group_config *c,
                        fl_group_plan *plan, char *why, size_t whylen);
void fl_group_plan_free(fl_group_plan *plan);

/* Appends the plan's modalities to spec (which should have none). */
int fl_group_apply(const fl_group_plan *plan, fl_model_spec *spec);

/* The sampling period in seconds from the table's timestamps
 * ("YYYY-MM-DD hh:mm:ss", 'T' allowed, fractions of seconds read): the
 * median of the first differences, or 0 when there are no stamps or they do
 * not parse. */
double fl_group_period(const fl_table *t);

/* A window for data sampled every `period` seconds (0: unknown) with `rows`
 * training rows: one hour of ticks, at least 20 and at most 60 (60 when the
 * period is unknown), a multiple of 4, and at most a sixth of the rows
 * (8 at least). */
int fl_group_window(double period, int rows);

/* The compute block's width for a model of `channels` channels: the
 * default 256 up to 32 channels, 512 above. */
int fl_group_hidden(int channels);

/* The encoders' output channels (enc2) for n_mod modalities and a window of
 * `window` ticks: the default 32 while the fused latent (n_mod enc2
 * window/4 values) stays within 8192, fewer above (4 at least), so that the
 * compute block and the head, dense on the latent, grow with the plant
 * linearly rather than with its square. */
int fl_group_latent(int n_mod, int window);

/* Base ticks between training windows for `rows` training rows, the window
 * and `channels` channels: 1, or more so that an epoch sees at most 4000
 * windows and at most 4000 x 64 window-channels, and one core trains a long
 * recording or a wide plant in minutes, not hours (each modality's encoder
 * still sees its own channels in every window of the epoch). */
int fl_group_train_stride(int rows, int window, int channels);

/* The detector's defaults for `rows` training rows and the window:
 * hysteresis of a twelfth of the window each way (2 at least); and with
 * fewer than 1000 training windows the embedding distance and the
 * noise-collapse feature left out, since the overlapping windows of a short
 * recording show too little of their clean spread to calibrate them. */
void fl_group_detect_defaults(fl_detect_config *d, int rows, int window);

#endif
