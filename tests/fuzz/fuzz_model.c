/* libFuzzer target for model files: fl_bundle_load (safetensors parsing plus
 * the bundle's checks of spec, shapes, normalisation and calibration) on the
 * input written to a private temporary file.  A file must load or fail with
 * a terminated message and leave nothing allocated. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "faultline/bundle.h"

static char path[64], dir[64];

/* The private directory goes when the process ends (libFuzzer exits). */
static void fz_cleanup(void) {
  unlink(path);
  rmdir(dir);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!path[0]) {
    strcpy(dir, "/tmp/fuzz_model.XXXXXX");
    if (!mkdtemp(dir)) abort();
    snprintf(path, sizeof path, "%s/m.model", dir);
    atexit(fz_cleanup);
  }
  FILE *f = fopen(path, "wb");
  if (!f) return 0;
  fwrite(data, 1, size, f);
  fclose(f);
  fl_bundle b;
  char err[512];
  int rc = fl_bundle_load(&b, path, err, sizeof err);
  if (rc) {
    if (!memchr(err, '\0', sizeof err)) abort();
    if (b.model) abort();
    return 0;
  }
  const fl_model_spec *s = fl_model_spec_of(b.model);
  if (fl_model_spec_check(s)) abort();
  if (b.calib.nch != fl_model_channels(b.model)) abort();
  for (int c = 0; c < b.calib.nch; c++)
    if (!(fl_model_std(b.model)[c] > 0.0f)) abort();
  fl_bundle_free(&b);
  return 0;
}
