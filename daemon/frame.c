/* faultlined frame check: decode and validate one received message without
 * sockets, streams or counters, so that it can be fuzzed on its own.  See
 * fld.h (fld_frame_check). */
#include <math.h>
#include <string.h>

#include "fld.h"

/* Stream ids go into topics and logs: keep them short and printable. */
int fld_frame_valid_name(const char *s) {
  size_t n = strlen(s);
  if (n < 1 || n > 64) return 0;
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
          c == '_' || c == '.' || c == ':' || c == '-'))
      return 0;
  }
  return 1;
}

int fld_frame_check(const fl_model_spec *spec, long max_bytes, size_t total,
                    const uint8_t *payload, size_t len, Faultline__Frame **out,
                    Faultline__Block **by_mod) {
  *out = NULL;
  for (int i = 0; i < spec->n_mod; i++) by_mod[i] = NULL;
  if ((long)total > max_bytes || total < len) return FLD_REJ_OVERSIZE;
  Faultline__Frame *f = faultline__frame__unpack(NULL, len, payload);
  if (!f) return FLD_REJ_UNDECODABLE;
  *out = f;
  if (!fld_frame_valid_name(f->stream)) return FLD_REJ_BAD_STREAM;
  for (size_t j = 0; j < f->n_blocks; j++) {
    Faultline__Block *b = f->blocks[j];
    int i;
    for (i = 0; i < spec->n_mod; i++)
      if (!strcmp(spec->mod[i].name, b->modality)) break;
    if (i == spec->n_mod) return FLD_REJ_UNKNOWN_MODALITY;
    if (by_mod[i]) return FLD_REJ_INCONSISTENT_MODALITY;
    if ((int)b->channels != spec->mod[i].channels) return FLD_REJ_CHANNEL_COUNT;
    /* The samples must be exactly one tick at the modality's rate. */
    if (b->n_samples != (size_t)spec->mod[i].rate * spec->mod[i].channels)
      return FLD_REJ_INCONSISTENT_MODALITY;
    for (size_t s = 0; s < b->n_samples; s++)
      if (isinf(b->samples[s])) return FLD_REJ_NONFINITE;
    by_mod[i] = b;
  }
  return -1;
}
