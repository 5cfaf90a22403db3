/* libFuzzer target for faultlined's frame decoding and validation
 * (fld_frame_check): any message must be rejected with one reason or accepted
 * with blocks that match the model's layout exactly. */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fld.h"

/* The plant layout of the process tests: vibration at 10x, three at 1x. */
static fl_model_spec spec;

static void fz_spec(void) {
  static const char *const names[] = {"vibration", "electrical", "hydraulic", "thermal"};
  static const char *const ch[] = {"a", "b"};
  static const int rates[] = {10, 1, 1, 1};
  fl_model_spec_defaults(&spec);
  for (int i = 0; i < 4; i++)
    if (fl_model_spec_add(&spec, names[i], rates[i], 2, ch)) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!spec.n_mod) fz_spec();
  Faultline__Frame *f = NULL;
  Faultline__Block *by_mod[8]; /* the fuzzed spec has fewer modalities */
  /* The first byte picks the size limit, so that the oversize path is hit. */
  long max = size && data[0] == 0xff ? 16 : 65536;
  int reason = fld_frame_check(&spec, max, size, data, size, &f, by_mod);
  if (reason < -1 || reason >= FLD_REJ_COUNT) abort();
  if (reason == -1) {
    if (!f || !fld_frame_valid_name(f->stream)) abort();
    /* Everything the ingest path reads of an accepted frame. */
    volatile float sink = 0;
    for (int i = 0; i < spec.n_mod; i++) {
      if (!by_mod[i]) continue;
      size_t n = (size_t)spec.mod[i].channels * spec.mod[i].rate;
      if (by_mod[i]->n_samples != n) abort();
      for (size_t s = 0; s < n; s++) {
        if (isinf(by_mod[i]->samples[s])) abort();
        sink += by_mod[i]->samples[s];
      }
    }
    (void)sink;
  }
  if (f) faultline__frame__free_unpacked(f, NULL);
  return 0;
}
