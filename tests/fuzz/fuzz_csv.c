/* libFuzzer target for the CSV parser: any input must parse or fail cleanly.
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -Ilib/include -Ilib \
 *     tests/fuzz/fuzz_csv.c lib/csv.c lib/io_atomic.c lib/error.c -lm -o fuzz_csv */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "faultline/csv.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fl_table t;
  char err[256];
  int rc = fl_csv_parse((const char *)data, size, &t, err, sizeof err);
  if (rc == 0) {
    /* Touch everything the table claims to own. */
    volatile float sink = 0;
    for (size_t i = 0; i < (size_t)t.rows * (size_t)t.cols; i++) sink += t.data[i];
    for (int j = 0; j < t.cols; j++) sink += (float)strlen(t.names[j]);
    if (t.stamps)
      for (int i = 0; i < t.rows; i++) sink += (float)strlen(t.stamps[i]);
    (void)sink;
  } else if (memchr(err, '\0', sizeof err) == NULL) {
    abort(); /* the message must be terminated */
  }
  fl_table_free(&t);
  return 0;
}
