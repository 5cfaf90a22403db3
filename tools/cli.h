/* The `faultline` command: shared helpers of the subcommands. */
#ifndef FAULTLINE_CLI_H
#define FAULTLINE_CLI_H

#include <stdio.h>

#include "faultline/bundle.h"
#include "faultline/config.h"
#include "faultline/csv.h"
#include "faultline/group.h"

/* Prints "faultline <cmd>: <message>" to stderr and returns 1 (exit code). */
int cli_fail(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Reads a CSV or fails with the parser's line-and-column message. */
int cli_read_csv(const char *cmd, const char *path, fl_table *t);

/* Loads the config, or the defaults when path is NULL. */
int cli_load_config(const char *cmd, const char *path, fl_config *c);

/* Groups the table's sensors (every numeric column except the label
 * columns) into modalities (fl_group_plan_table with gc, or the defaults
 * when gc is NULL). */
int cli_group(const char *cmd, const fl_table *t, const fl_group_config *gc,
              fl_group_plan *plan);

/* The defaults that follow from the data: the window from its sampling
 * period, the block's width from the channels of c's modalities, the
 * training stride from its length. */
void cli_data_defaults(fl_config *c, const fl_table *t);

/* Without modalities in the config: the modalities cli_group chooses; with
 * no config file at all (from_file 0) also cli_data_defaults. */
int cli_default_modality(const char *cmd, fl_config *c, const fl_table *t, int from_file);

/* Do the model's modalities (names, rates, channels) equal the config's?  If
 * not, says which differ in why and returns 0: the config belongs to another
 * model. */
int cli_same_layout(const fl_model_spec *a, const fl_model_spec *b, char *why, size_t len);

/* Is this a label column (anomaly, changepoint, anomaly_kind)? */
int cli_is_label(const char *name);
/* fl_series_from_table with its error said as `cmd: what: ...`; a sensor
 * column the model does not read is named on stderr, not lost silently. */
int cli_series(const char *cmd, const char *what, const fl_model_spec *spec, const fl_table *t,
               fl_series *s);

/* Trains a bundle on the tables (both stages and calibration); progress to
 * stderr unless quiet. */
int cli_train(const char *cmd, fl_config *c, const fl_table *tables, int n, fl_bundle *out,
              int quiet);

int cmd_simulate(int argc, char **argv);
int cmd_train(int argc, char **argv);
int cmd_calibrate(int argc, char **argv);
int cmd_score(int argc, char **argv);
int cmd_detect(int argc, char **argv);
int cmd_inject(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_replay(int argc, char **argv);
int cmd_tail(int argc, char **argv);
int cmd_proxy(int argc, char **argv);
int cmd_bridge(int argc, char **argv);
int cmd_analyze(int argc, char **argv);
int cmd_inspect(int argc, char **argv);
int cmd_init(int argc, char **argv);

#endif
