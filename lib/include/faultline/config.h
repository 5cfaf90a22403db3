/* faultline config: the INI file (libinih) that sizes the model and sets
 * training, detection and the online tuner.  One file serves `faultline
 * train` and the daemon, and every setting has one owner:
 *
 *   the library  [model] (file included), [modality.NAME] (one per modality,
 *                in file order, with `rate` and `channels`: comma-separated
 *                column names), [train], [detect], and the tuner's options in
 *                [tune] (fl_tune_config), parsed here with their defaults
 *   a program    its own sections ([input], [output], [metrics], [security],
 *                [log]) and its own keys of [tune], through the key function
 *                of fl_config_load_with; without one they are accepted
 *                unread (a training run leaves them to the daemon)
 *
 * The list of known sections is in lib/config.c; any other section is an
 * error.  Every key is documented in config/faultline.ini and
 * faultline.ini(5). */
#ifndef FAULTLINE_CONFIG_H
#define FAULTLINE_CONFIG_H

#include <limits.h>
#include <stddef.h>

#include "faultline/detect.h"
#include "faultline/model.h"
#include "faultline/train.h"
#include "faultline/tune.h"

typedef struct {
  fl_model_spec spec;
  fl_train_config train;
  fl_detect_config detect;
  /* [detect] hysteresis_on / hysteresis_off were in the file: the daemon
   * then uses them instead of the model's own */
  int on_given, off_given;
  fl_tune_config tune;       /* [tune]: the tuner's options */
  char model_file[PATH_MAX]; /* [model] file: the model the daemon serves, as
                                written ("" when absent) */
} fl_config;

/* Defaults everywhere, no modality.  c must hold no modalities (fresh, or
 * after fl_config_free). */
void fl_config_defaults(fl_config *c);
/* Releases what loading added (the modalities); c is then as after
 * fl_config_defaults but without them. */
void fl_config_free(fl_config *c);
/* Reads path over the defaults.  An unknown section or key, a value that is
 * not a number where one is needed, or an invalid model spec is an error
 * whose text names the file, line and key. */
int fl_config_load(fl_config *c, const char *path, char *err, size_t errlen);
/* As fl_config_load, from a string (for tests and fuzzing). */
int fl_config_parse(fl_config *c, const char *text, char *err, size_t errlen);

/* A boolean value: 1, true, yes, on or 0, false, no, off; 0 or -1. */
int fl_config_bool(const char *v, int *out);

/* A program's keys: called for every key of a section the program owns
 * (alone or with the library) that the library does not read.  Returns 1
 * when the key is the program's and its value valid, 0 when it is not one
 * of its keys (an error: unknown key), -1 when the value is invalid (why
 * gets the reason, or stays empty for the usual message). */
typedef int (*fl_config_key_fn)(void *user, const char *section, const char *key,
                                const char *value, char *why, size_t whylen);
/* fl_config_load with the program's keys parsed by fn in the same pass, so
 * that an error anywhere names the file, line and key the same way. */
int fl_config_load_with(fl_config *c, const char *path, fl_config_key_fn fn, void *user,
                        char *err, size_t errlen);

#endif
