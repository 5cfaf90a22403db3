/* libFuzzer target for the safetensors reader: any input must parse or fail
 * cleanly, and whatever parses must write and read back the same.
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -Ilib/include -Ilib \
 *     tests/fuzz/fuzz_safetensors.c lib/safetensors.c lib/io_atomic.c lib/error.c \
 *     -ljansson -lm -o fuzz_safetensors */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "faultline/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fl_st *st = NULL;
  char err[512];
  int rc = fl_st_parse(data, size, &st, err, sizeof err);
  if (rc != 0) {
    if (st) abort();
    return 0;
  }
  for (int i = 0; i < fl_st_count(st); i++) {
    const char *name = fl_st_name(st, i);
    int64_t shape[FL_ST_MAX_DIMS];
    int nd;
    if (fl_st_shape(st, name, shape, &nd) != 0) abort();
    if (fl_st_get(st, name, NULL, shape, nd, err, sizeof err) != 0) abort();
  }
  for (int i = 0; i < fl_st_meta_count(st); i++)
    if (!fl_st_meta(st, fl_st_meta_key(st, i))) abort();
  fl_st_free(st);
  return 0;
}
