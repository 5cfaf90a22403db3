/* A small program for tests/reference/check_safetensors.py, which checks the
 * safetensors module against an independent reader and writer in Python.
 *
 *   st_writer write PATH   writes the fixed set of tensors and metadata below
 *   st_writer dump PATH    reads PATH with fl_st_read and prints, in file
 *                          order, "tensor NAME NDIM D0 D1 ..." and a line of
 *                          the values' bit patterns in hex, then "meta KEY"
 *                          and "value VALUE" lines
 *
 * Bit patterns rather than decimals so that the comparison is exact. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "faultline/error.h"
#include "faultline/safetensors.h"

static int write_set(const char *path) {
  float w[16 * 3 * 5], b[16], specials[6] = {1e-30f, -0.0f, 3.0e38f, 0.1f, NAN, 1.4e-45f}, scalar = 42.5f;
  /* Values exact in binary, so that Python can recompute them. */
  for (int i = 0; i < 240; i++) w[i] = (float)(i % 97) * 0.125f - 6.0f;
  for (int i = 0; i < 16; i++) b[i] = -(float)i / 8.0f;
  const int64_t ws[3] = {16, 3, 5}, bs[1] = {16}, ss[1] = {6}, es[2] = {0, 4};
  fl_st *st = fl_st_new();
  int rc = st ? 0 : FL_ENOMEM;
  if (!rc) rc = fl_st_add(st, "enc.0.weight", w, ws, 3);
  if (!rc) rc = fl_st_add(st, "enc.0.bias", b, bs, 1);
  if (!rc) rc = fl_st_add(st, "specials", specials, ss, 1);
  if (!rc) rc = fl_st_add(st, "scalar", &scalar, NULL, 0);
  if (!rc) rc = fl_st_add(st, "empty", NULL, es, 2);
  if (!rc) rc = fl_st_set_meta(st, "format", "pt");
  if (!rc) rc = fl_st_set_meta(st, "spec", "{\"window\": 60, \"modalities\": [\"vib\", \"temp\"]}");
  if (!rc) rc = fl_st_set_meta(st, "unit", "\xC2\xB0" "C");
  char err[512] = "";
  if (!rc) rc = fl_st_write(st, path, err, sizeof err);
  fl_st_free(st);
  if (rc) fprintf(stderr, "st_writer: %s (%s)\n", fl_strerror(rc), err);
  return rc ? 1 : 0;
}

static int dump(const char *path) {
  fl_st *st = NULL;
  char err[512] = "";
  int rc = fl_st_read(path, &st, err, sizeof err);
  if (rc) {
    fprintf(stderr, "st_writer: %s\n", err);
    return 1;
  }
  for (int i = 0; i < fl_st_count(st); i++) {
    const char *name = fl_st_name(st, i);
    int64_t shape[FL_ST_MAX_DIMS];
    int nd = 0;
    fl_st_shape(st, name, shape, &nd);
    size_t n = 1;
    printf("tensor %s %d", name, nd);
    for (int d = 0; d < nd; d++) {
      printf(" %lld", (long long)shape[d]);
      n *= (size_t)shape[d];
    }
    printf("\n");
    float *v = malloc((n ? n : 1) * sizeof *v);
    if (!v || fl_st_get(st, name, v, shape, nd, err, sizeof err) != 0) {
      fprintf(stderr, "st_writer: %s\n", err);
      free(v);
      fl_st_free(st);
      return 1;
    }
    for (size_t k = 0; k < n; k++) {
      uint32_t bits;
      memcpy(&bits, &v[k], 4);
      printf(k ? " %08x" : "%08x", (unsigned)bits);
    }
    printf("\n");
    free(v);
  }
  for (int i = 0; i < fl_st_meta_count(st); i++) {
    const char *k = fl_st_meta_key(st, i);
    printf("meta %s\nvalue %s\n", k, fl_st_meta(st, k));
  }
  fl_st_free(st);
  return 0;
}

int main(int argc, char **argv) {
  if (argc == 3 && strcmp(argv[1], "write") == 0) return write_set(argv[2]);
  if (argc == 3 && strcmp(argv[1], "dump") == 0) return dump(argv[2]);
  fprintf(stderr, "usage: st_writer write|dump PATH\n");
  return 2;
}
