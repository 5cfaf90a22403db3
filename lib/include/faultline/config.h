/* faultline config: the INI file (libinih) that sizes the model and sets
 * training and detection.  Sections: [model], [train], [detect], and one
 * [modality.NAME] per modality (in file order) with `rate` and `channels`
 * (comma-separated column names).  The daemon's sections ([input],
 * [output], [metrics], [security], [tune], [log]) and [model] file are accepted
 * and left to it.
 * Every key is documented in config/faultline.ini. */
#ifndef FAULTLINE_CONFIG_H
#define FAULTLINE_CONFIG_H

#include <stddef.h>

#include "faultline/detect.h"
#include "faultline/model.h"
#include "faultline/train.h"

typedef struct {
  fl_model_spec spec;
  fl_train_config train;
  fl_detect_config detect;
} fl_config;

/* Defaults everywhere, no modality. */
void fl_config_defaults(fl_config *c);
/* Reads path over the defaults.  An unknown section or key, a value that is
 * not a number where one is needed, or an invalid model spec is an error
 * whose text names the file, line and key. */
int fl_config_load(fl_config *c, const char *path, char *err, size_t errlen);
/* As fl_config_load, from a string (for tests and fuzzing). */
int fl_config_parse(fl_config *c, const char *text, char *err, size_t errlen);

#endif
