/* libFuzzer target for configuration parsing: the library's fl_config_parse
 * on the input as a string, and faultlined's fld_config_load on the same text
 * in a file.  Either must succeed or fail with a terminated message. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "faultline/config.h"
#include "fld.h"

static char path[64], dir[64];

/* The private directory goes when the process ends (libFuzzer exits). */
static void fz_cleanup(void) {
  unlink(path);
  rmdir(dir);
}

static void fz_check_err(const char *err, size_t n) {
  if (!memchr(err, '\0', n)) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char *text = malloc(size + 1);
  if (!text) return 0;
  memcpy(text, data, size);
  text[size] = 0;
  fl_config lc;
  char err[512];
  fl_config_defaults(&lc);
  int rc = fl_config_parse(&lc, text, err, sizeof err);
  if (rc) fz_check_err(err, sizeof err);
  else if (lc.spec.n_mod && fl_model_spec_check(&lc.spec)) abort(); /* accepted means valid */
  fl_config_free(&lc);

  if (!path[0]) {
    strcpy(dir, "/tmp/fuzz_config.XXXXXX");
    if (!mkdtemp(dir)) abort();
    snprintf(path, sizeof path, "%s/x.ini", dir);
    atexit(fz_cleanup);
  }
  FILE *f = fopen(path, "w");
  if (f) {
    fwrite(data, 1, size, f);
    fclose(f);
    fld_config dc;
    rc = fld_config_load(&dc, path, err, sizeof err);
    if (rc) fz_check_err(err, sizeof err);
    else if (dc.max_streams < 1 || dc.max_message_bytes < 1 || !dc.model_file[0]) abort();
    fld_config_free(&dc);
  }
  free(text);
  return 0;
}
