/* faultline scan: a trained bundle run over a whole recording, causally.
 *
 * Windows end at every `stride`-th base tick; each window decides for its
 * newest `stride` ticks, as the daemon does, so a row's answer uses only
 * rows up to it.  Rows before the first full window get no score (NaN),
 * flag 0, and their input as output.  Flags are debounced with the bundle's
 * hysteresis.  Each window goes through fl_pipeline_run, as in the daemon,
 * so the two agree window for window. */
#ifndef FAULTLINE_SCAN_H
#define FAULTLINE_SCAN_H

#include "faultline/bundle.h"

typedef struct {
  int rows;
  float *score;     /* (rows) window score, NaN before the first window */
  unsigned char *flag; /* (rows) debounced anomaly flag */
  signed char *modality; /* (rows) faulty modality or -1 */
  float *chan;      /* (rows, nch) channel scores */
  fl_series corrected; /* the gated correction, the input's layout */
  fl_series sigma;     /* the correction's uncertainty, raw units, the input's
                          layout: 0 where the input passed, NaN where no
                          estimator says (fl_estimate_apply) */
} fl_scan_result;

/* Runs b over s with the given stride (>= 1). */
int fl_scan(fl_bundle *b, const fl_series *s, int stride, fl_scan_result *out);
void fl_scan_free(fl_scan_result *r);

#endif
