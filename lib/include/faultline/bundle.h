/* faultline bundle: a trained model with everything needed to run it.
 *
 * One safetensors file holds the layers' tensors under PyTorch's names and
 * shapes ("enc.<modality>.0.weight" (cout, cin, k), "block.0.weight"
 * (out, in), ...), the per-channel normalisation ("norm.mean", "norm.std"),
 * the detector's calibration ("calib.*"), and in its metadata the
 * architecture ("faultline.spec", JSON), the detector settings and
 * thresholds ("faultline.detect", JSON), the correction's estimator
 * ("estimate.*", optional) and the model's lineage
 * ("faultline.lineage", JSON).  Files are written atomically. */
#ifndef FAULTLINE_BUNDLE_H
#define FAULTLINE_BUNDLE_H

#include <stddef.h>

#include "faultline/detect.h"
#include "faultline/estimate.h"
#include "faultline/model.h"

typedef struct {
  fl_model *model;
  fl_calib calib;
  fl_detect_config detect;
  fl_estimator est;     /* the correction's causal estimator (est.on 0: absent) */
  float clamp;          /* standardised inputs are clamped to +-clamp */
  char lineage[1024];   /* JSON object: base model, updates, times */
} fl_bundle;

int fl_bundle_save(const fl_bundle *b, const char *path, char *err, size_t errlen);
/* Loads a bundle; on error b is left empty and err says what is wrong. */
int fl_bundle_load(fl_bundle *b, const char *path, char *err, size_t errlen);
void fl_bundle_free(fl_bundle *b);

#endif
