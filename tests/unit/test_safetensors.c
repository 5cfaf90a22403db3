/* Unit tests for the safetensors module: round trip, every kind of corrupt
 * file (each must give its code and a sentence, never a crash or an
 * over-read), shape checks on lookup, and the atomic write. */
#define _GNU_SOURCE
#include <dirent.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "faultline/error.h"
#include "faultline/safetensors.h"

/* ---- helpers ----------------------------------------------------------- */

static char *make_tmpdir(void) {
  const char *base = getenv("TMPDIR");
  char *dir = NULL;
  if (asprintf(&dir, "%s/fl_st_XXXXXX", base && *base ? base : "/tmp") < 0) return NULL;
  if (!mkdtemp(dir)) {
    free(dir);
    return NULL;
  }
  return dir;
}

static void remove_tree(const char *dir) {
  DIR *d = opendir(dir);
  if (d) {
    struct dirent *e;
    while ((e = readdir(d))) {
      if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
      char *p;
      if (asprintf(&p, "%s/%s", dir, e->d_name) >= 0) {
        unlink(p);
        free(p);
      }
    }
    closedir(d);
  }
  rmdir(dir);
}

static int count_entries(const char *dir) {
  DIR *d = opendir(dir);
  int n = 0;
  struct dirent *e;
  while (d && (e = readdir(d)))
    if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) n++;
  if (d) closedir(d);
  return n;
}

static uint8_t *slurp(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  rewind(f);
  uint8_t *buf = malloc(n > 0 ? (size_t)n : 1);
  *len = fread(buf, 1, (size_t)n, f);
  fclose(f);
  return buf;
}

static const int64_t W_SHAPE[3] = {16, 3, 5};
static const int64_t B_SHAPE[1] = {16};
static const int64_t E_SHAPE[2] = {0, 4};

/* A small model: a conv weight and bias, a scalar, an empty tensor, and
 * metadata with JSON text and non-ASCII characters. */
static fl_st *make_set(float *w, float *b) {
  for (int i = 0; i < 240; i++) w[i] = (float)(i % 97) * 0.125f - 6.0f;
  for (int i = 0; i < 16; i++) b[i] = -(float)i / 8.0f;
  w[7] = NAN;
  w[8] = -0.0f;
  w[9] = 1.4e-45f;
  fl_st *st = fl_st_new();
  assert_non_null(st);
  float scalar = 42.5f;
  assert_int_equal(fl_st_add(st, "enc.0.weight", w, W_SHAPE, 3), 0);
  assert_int_equal(fl_st_add(st, "enc.0.bias", b, B_SHAPE, 1), 0);
  assert_int_equal(fl_st_add(st, "scalar", &scalar, NULL, 0), 0);
  assert_int_equal(fl_st_add(st, "empty", NULL, E_SHAPE, 2), 0);
  assert_int_equal(fl_st_set_meta(st, "spec", "{\"window\": 60, \"modalities\": [\"a\", \"b\"]}"), 0);
  assert_int_equal(fl_st_set_meta(st, "unit", "\xC2\xB0" "C, \"quoted\"\n"), 0);
  assert_int_equal(fl_st_set_meta(st, "version", "0"), 0);
  assert_int_equal(fl_st_set_meta(st, "version", "1"), 0); /* replaces */
  return st;
}

/* Writes a set into a fresh temporary directory and returns the bytes. */
static uint8_t *written_bytes(size_t *len) {
  float w[240], b[16];
  fl_st *st = make_set(w, b);
  char *dir = make_tmpdir();
  char *path;
  assert_true(asprintf(&path, "%s/m.safetensors", dir) > 0);
  char err[256];
  assert_int_equal(fl_st_write(st, path, err, sizeof err), 0);
  uint8_t *buf = slurp(path, len);
  assert_non_null(buf);
  fl_st_free(st);
  free(path);
  remove_tree(dir);
  free(dir);
  return buf;
}

/* Builds a file from a header text and n data bytes (value i & 0xff). */
static uint8_t *build(const char *header, size_t ndata, size_t *len) {
  size_t h = strlen(header);
  *len = 8 + h + ndata;
  uint8_t *buf = malloc(*len);
  for (int i = 0; i < 8; i++) buf[i] = (uint8_t)((uint64_t)h >> (8 * i));
  memcpy(buf + 8, header, h);
  for (size_t i = 0; i < ndata; i++) buf[8 + h + i] = (uint8_t)i;
  return buf;
}

/* Parses a built file that must fail with code and a message containing
 * each of the given fragments. */
static void expect_bad(const char *header, size_t ndata, int code, const char *frag1, const char *frag2) {
  size_t len;
  uint8_t *buf = build(header, ndata, &len);
  fl_st *st = (fl_st *)1;
  char err[512] = "";
  int rc = fl_st_parse(buf, len, &st, err, sizeof err);
  if (rc != code || (frag1 && !strstr(err, frag1)) || (frag2 && !strstr(err, frag2)))
    print_error("header %s\n  got %d \"%s\"\n  want %d with \"%s\" and \"%s\"\n", header, rc, err, code,
                frag1 ? frag1 : "", frag2 ? frag2 : "");
  assert_int_equal(rc, code);
  assert_null(st);
  if (frag1) assert_non_null(strstr(err, frag1));
  if (frag2) assert_non_null(strstr(err, frag2));
  free(buf);
}

/* ---- tests ------------------------------------------------------------- */

static void test_round_trip(void **state) {
  (void)state;
  float w[240], b[16];
  fl_st *st = make_set(w, b);
  char *dir = make_tmpdir();
  assert_non_null(dir);
  char *path;
  assert_true(asprintf(&path, "%s/model.safetensors", dir) > 0);
  char err[512] = "";
  assert_int_equal(fl_st_write(st, path, err, sizeof err), 0);
  assert_int_equal(count_entries(dir), 1); /* no temporary file is left */

  fl_st *in = NULL;
  int rc = fl_st_read(path, &in, err, sizeof err);
  if (rc) print_error("%s\n", err);
  assert_int_equal(rc, 0);
  assert_int_equal(fl_st_count(in), 4);
  const char *order[] = {"enc.0.weight", "enc.0.bias", "scalar", "empty"};
  for (int i = 0; i < 4; i++) assert_string_equal(fl_st_name(in, i), order[i]);
  assert_null(fl_st_name(in, 4));
  assert_null(fl_st_name(in, -1));

  float w2[240], b2[16], s2 = 0;
  assert_int_equal(fl_st_get(in, "enc.0.weight", w2, W_SHAPE, 3, err, sizeof err), 0);
  assert_memory_equal(w, w2, sizeof w); /* bit for bit, NaN and -0 included */
  assert_int_equal(fl_st_get(in, "enc.0.bias", b2, B_SHAPE, 1, err, sizeof err), 0);
  assert_memory_equal(b, b2, sizeof b);
  assert_int_equal(fl_st_get(in, "scalar", &s2, NULL, 0, err, sizeof err), 0);
  assert_true(s2 == 42.5f);
  assert_int_equal(fl_st_get(in, "empty", NULL, E_SHAPE, 2, err, sizeof err), 0);

  int64_t shape[FL_ST_MAX_DIMS];
  int nd = -1;
  assert_int_equal(fl_st_shape(in, "enc.0.weight", shape, &nd), 0);
  assert_int_equal(nd, 3);
  assert_true(shape[0] == 16 && shape[1] == 3 && shape[2] == 5);
  assert_int_equal(fl_st_shape(in, "scalar", shape, &nd), 0);
  assert_int_equal(nd, 0);
  assert_int_equal(fl_st_shape(in, "nope", shape, &nd), FL_ENOTFOUND);

  assert_int_equal(fl_st_meta_count(in), 3);
  assert_string_equal(fl_st_meta_key(in, 0), "spec");
  assert_string_equal(fl_st_meta(in, "spec"), "{\"window\": 60, \"modalities\": [\"a\", \"b\"]}");
  assert_string_equal(fl_st_meta(in, "unit"), "\xC2\xB0" "C, \"quoted\"\n");
  assert_string_equal(fl_st_meta(in, "version"), "1");
  assert_null(fl_st_meta(in, "absent"));
  assert_null(fl_st_meta_key(in, 3));

  /* The file itself: header size a multiple of 8, space padding, data
   * right after it. */
  size_t len;
  uint8_t *buf = slurp(path, &len);
  uint64_t n = 0;
  for (int i = 7; i >= 0; i--) n = (n << 8) | buf[i];
  assert_int_equal(n % 8, 0);
  assert_int_equal(len, 8 + n + 4 * (240 + 16 + 1));
  assert_int_equal(buf[8], '{');
  size_t last = 8 + n - 1;
  while (buf[last] == ' ') last--;
  assert_int_equal(buf[last], '}');
  free(buf);

  fl_st_free(in);
  fl_st_free(st);
  free(path);
  remove_tree(dir);
  free(dir);
}

static void test_empty_set(void **state) {
  (void)state;
  size_t len;
  uint8_t *buf = build("{}      ", 0, &len);
  fl_st *st = NULL;
  char err[256];
  assert_int_equal(fl_st_parse(buf, len, &st, err, sizeof err), 0);
  assert_int_equal(fl_st_count(st), 0);
  assert_int_equal(fl_st_meta_count(st), 0);
  fl_st_free(st);
  free(buf);
  fl_st_free(NULL);
}

/* A file from another writer: unpadded header, keys in another order,
 * metadata last, a tensor at an unaligned offset. */
static void test_foreign_layout(void **state) {
  (void)state;
  const char *header =
      "{\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]},"
      "\"a\":{\"data_offsets\":[0,8],\"shape\":[2],\"dtype\":\"F32\",\"extra\":true},"
      "\"__metadata__\":{\"format\":\"pt\"}}";
  size_t len;
  uint8_t *buf = build(header, 12, &len);
  float a[2] = {1.5f, -2.0f}, bv = 3.25f;
  size_t h = strlen(header);
  memcpy(buf + 8 + h, a, 8);
  memcpy(buf + 8 + h + 8, &bv, 4);
  fl_st *st = NULL;
  char err[256] = "";
  int rc = fl_st_parse(buf, len, &st, err, sizeof err);
  if (rc) print_error("%s\n", err);
  assert_int_equal(rc, 0);
  assert_string_equal(fl_st_name(st, 0), "b"); /* file order */
  float got[2];
  int64_t s2 = 2, s1 = 1;
  assert_int_equal(fl_st_get(st, "a", got, &s2, 1, err, sizeof err), 0);
  assert_true(got[0] == 1.5f && got[1] == -2.0f);
  assert_int_equal(fl_st_get(st, "b", got, &s1, 1, err, sizeof err), 0);
  assert_true(got[0] == 3.25f);
  assert_string_equal(fl_st_meta(st, "format"), "pt");
  fl_st_free(st);
  free(buf);
}

static void test_corrupt_headers(void **state) {
  (void)state;
  const char *F = "\"dtype\":\"F32\"";
  char h[512];

  expect_bad("{", 0, FL_EFORMAT, "header is not valid JSON", NULL);
  expect_bad("", 0, FL_EFORMAT, "header is not valid JSON", NULL);
  expect_bad("{} x", 0, FL_EFORMAT, "header is not valid JSON", NULL);
  expect_bad("[1, 2]", 0, FL_EFORMAT, "header is not a JSON object", NULL);
  expect_bad("{\"w\": 3}", 0, FL_EFORMAT, "tensor \"w\": entry is not a JSON object", NULL);
  expect_bad("{\"w\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[0,4]}}", 4, FL_EFORMAT,
             "tensor \"w\" has dtype F16", "only F32");
  expect_bad("{\"w\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[0,4]}}", 4, FL_EFORMAT, "dtype BF16", NULL);
  expect_bad("{\"w\":{\"shape\":[2],\"data_offsets\":[0,8]}}", 8, FL_EFORMAT, "tensor \"w\": dtype missing", NULL);
  snprintf(h, sizeof h, "{\"w\":{%s,\"data_offsets\":[0,8]}}", F);
  expect_bad(h, 8, FL_EFORMAT, "tensor \"w\": shape missing", NULL);
  snprintf(h, sizeof h, "{\"w\":{%s,\"shape\":[2]}}", F);
  expect_bad(h, 8, FL_EFORMAT, "tensor \"w\": data_offsets missing", NULL);
  snprintf(h, sizeof h, "{\"w\":{%s,\"shape\":[2],\"data_offsets\":[0]}}", F);
  expect_bad(h, 8, FL_EFORMAT, "data_offsets missing or not [begin, end]", NULL);
  snprintf(h, sizeof h, "{\"w\":{%s,\"shape\":[2.0],\"data_offsets\":[0,8]}}", F);
  expect_bad(h, 8, FL_EFORMAT, "tensor \"w\": shape[0] is not an integer", NULL);
  snprintf(h, sizeof h, "{\"w\":{%s,\"shape\":[2,-1],\"data_offsets\":[0,8]}}", F);
  expect_bad(h, 8, FL_EFORMAT, "tensor \"w\": shape[1] is negative", NULL);
  snprintf(h, sizeof h, "{\"w\":{%s,\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", F);
  expect_bad(h, 4, FL_ERANGE, "tensor \"w\" has 9 dimensions", NULL);
  snprintf(h, sizeof h, "{\"w\":{%s,\"shape\":[4611686018427387904,4],\"data_offsets\":[0,8]}}", F);
  expect_bad(h, 8, FL_ERANGE, "tensor \"w\": shape [4611686018427387904, 4] has too many elements", NULL);
  snprintf(h, sizeof h, "{\"w\":{%s,\"shape\":[2147483648,2147483648,2147483648],\"data_offsets\":[0,8]}}", F);
  expect_bad(h, 8, FL_ERANGE, "too many elements", NULL);
  snprintf(h, sizeof h, "{\"w\":{%s,\"shape\":[99999999999999999999],\"data_offsets\":[0,8]}}", F);
  expect_bad(h, 8, FL_EFORMAT, "header is not valid JSON", NULL);
  snprintf(h, sizeof h, "{\"w\":{%s,\"shape\":[3],\"data_offsets\":[0,8]}}", F);
  expect_bad(h, 8, FL_EFORMAT, "tensor \"w\": data_offsets [0, 8] span 8 bytes but shape [3] needs 12", NULL);
  snprintf(h, sizeof h, "{\"w\":{%s,\"shape\":[2],\"data_offsets\":[8,0]}}", F);
  expect_bad(h, 8, FL_EFORMAT, "are not 0 <= begin <= end", NULL);
  snprintf(h, sizeof h, "{\"w\":{%s,\"shape\":[2],\"data_offsets\":[-8,0]}}", F);
  expect_bad(h, 8, FL_EFORMAT, "are not 0 <= begin <= end", NULL);
  snprintf(h, sizeof h, "{\"w\":{%s,\"shape\":[4],\"data_offsets\":[0,16]}}", F);
  expect_bad(h, 8, FL_ETRUNC, "tensor \"w\": data ends at byte 16 of the buffer, which holds only 8 bytes", NULL);
  snprintf(h, sizeof h, "{\"w\":{%s,\"shape\":[2],\"data_offsets\":[9223372036854775800,9223372036854775807]}}", F);
  expect_bad(h, 8, FL_EFORMAT, "span", NULL);
  snprintf(h, sizeof h,
           "{\"a\":{%s,\"shape\":[2],\"data_offsets\":[0,8]},\"b\":{%s,\"shape\":[2],\"data_offsets\":[4,12]}}", F, F);
  expect_bad(h, 12, FL_EFORMAT, "malformed: tensors \"a\" and \"b\" overlap", NULL);
  snprintf(h, sizeof h,
           "{\"a\":{%s,\"shape\":[2],\"data_offsets\":[0,8]},\"b\":{%s,\"shape\":[2],\"data_offsets\":[0,8]}}", F, F);
  expect_bad(h, 8, FL_EFORMAT, "overlap", NULL);
  snprintf(h, sizeof h,
           "{\"a\":{%s,\"shape\":[2],\"data_offsets\":[0,8]},\"b\":{%s,\"shape\":[2],\"data_offsets\":[12,20]}}", F, F);
  expect_bad(h, 20, FL_EFORMAT, "malformed: 4 unused bytes between tensors \"a\" and \"b\"", NULL);
  snprintf(h, sizeof h, "{\"a\":{%s,\"shape\":[2],\"data_offsets\":[4,12]}}", F);
  expect_bad(h, 12, FL_EFORMAT, "malformed: 4 unused bytes before tensor \"a\"", NULL);
  snprintf(h, sizeof h, "{\"a\":{%s,\"shape\":[2],\"data_offsets\":[0,8]}}", F);
  expect_bad(h, 12, FL_EFORMAT, "malformed: 4 bytes after the last tensor", NULL);
  expect_bad("{}", 4, FL_EFORMAT, "after the last tensor", NULL);
  snprintf(h, sizeof h,
           "{\"a\":{%s,\"shape\":[2],\"data_offsets\":[0,8]},\"a\":{%s,\"shape\":[2],\"data_offsets\":[0,8]}}", F, F);
  expect_bad(h, 8, FL_EFORMAT, "duplicate", NULL);
  expect_bad("{\"__metadata__\":{\"k\":1}}", 0, FL_EFORMAT, "metadata \"k\" is not a string", NULL);
  expect_bad("{\"__metadata__\":{\"a\":\"x\",\"k\":null}}", 0, FL_EFORMAT, "metadata \"k\" is not a string", NULL);
  expect_bad("{\"__metadata__\":[\"a\"]}", 0, FL_EFORMAT, "__metadata__ is not a JSON object", NULL);
  expect_bad("{\"w\":\"\xff\xfe\"}", 0, FL_EFORMAT, "header is not valid JSON", NULL);
}

static void test_bad_sizes(void **state) {
  (void)state;
  fl_st *st = NULL;
  char err[256] = "";
  uint8_t five[5] = {1, 2, 3, 4, 5};
  assert_int_equal(fl_st_parse(five, 5, &st, err, sizeof err), FL_ETRUNC);
  assert_string_equal(err, "file is 5 bytes, shorter than the 8-byte header size");
  assert_int_equal(fl_st_parse(NULL, 0, &st, err, sizeof err), FL_ETRUNC);

  uint8_t absurd[16] = {0};
  uint64_t big = 200000000;
  for (int i = 0; i < 8; i++) absurd[i] = (uint8_t)(big >> (8 * i));
  assert_int_equal(fl_st_parse(absurd, sizeof absurd, &st, err, sizeof err), FL_EFORMAT);
  assert_non_null(strstr(err, "header size 200000000 is absurd"));
  memset(absurd, 0xff, 8);
  assert_int_equal(fl_st_parse(absurd, sizeof absurd, &st, err, sizeof err), FL_EFORMAT);
  assert_non_null(strstr(err, "is absurd"));

  uint8_t longer[28] = {100};
  assert_int_equal(fl_st_parse(longer, sizeof longer, &st, err, sizeof err), FL_ETRUNC);
  assert_string_equal(err, "header size 100 is larger than the 20 bytes that follow it");
  assert_null(st);
  assert_int_equal(fl_st_parse(longer, sizeof longer, NULL, err, sizeof err), FL_EINVAL);
}

/* Every truncation of a valid file fails, with FL_ETRUNC: the header's
 * claims always reach past what is left. */
static void test_truncations(void **state) {
  (void)state;
  size_t len;
  uint8_t *full = written_bytes(&len);
  for (size_t cut = 0; cut < len; cut++) {
    uint8_t *buf = malloc(cut ? cut : 1); /* exact size, so that ASan sees over-reads */
    memcpy(buf, full, cut);
    fl_st *st = (fl_st *)1;
    char err[512] = "";
    int rc = fl_st_parse(buf, cut, &st, err, sizeof err);
    if (rc != FL_ETRUNC) print_error("cut at %zu of %zu: %d %s\n", cut, len, rc, err);
    assert_int_equal(rc, FL_ETRUNC);
    assert_null(st);
    assert_true(strlen(err) > 10);
    free(buf);
  }
  fl_st *st = NULL;
  assert_int_equal(fl_st_parse(full, len, &st, NULL, 0), 0);
  fl_st_free(st);
  free(full);
}

/* Flipping bytes anywhere in the size or the header gives a clean result:
 * success (a flip inside a string or in padding) or an error code. */
static void test_header_flips(void **state) {
  (void)state;
  size_t len;
  uint8_t *full = written_bytes(&len);
  uint64_t n = 0;
  for (int i = 7; i >= 0; i--) n = (n << 8) | full[i];
  const uint8_t masks[] = {0x01, 0x02, 0x08, 0x20, 0x40, 0x80, 0xff};
  int failed = 0, passed = 0;
  for (size_t at = 0; at < 8 + n; at++) {
    for (size_t m = 0; m < sizeof masks; m++) {
      uint8_t *buf = malloc(len);
      memcpy(buf, full, len);
      buf[at] ^= masks[m];
      fl_st *st = NULL;
      char err[512] = "";
      int rc = fl_st_parse(buf, len, &st, err, sizeof err);
      if (rc == 0) {
        passed++;
        assert_non_null(st);
        fl_st_free(st);
      } else {
        failed++;
        assert_true(rc == FL_EFORMAT || rc == FL_ETRUNC || rc == FL_ERANGE);
        assert_null(st);
        assert_true(err[0] != '\0');
      }
      free(buf);
    }
  }
  print_message("header flips: %d rejected, %d still valid\n", failed, passed);
  assert_true(failed > passed);

  /* Random multi-byte damage anywhere in the file. */
  srand(99);
  for (int iter = 0; iter < 20000; iter++) {
    uint8_t *buf = malloc(len);
    memcpy(buf, full, len);
    int k = 1 + rand() % 6;
    for (int j = 0; j < k; j++) {
      size_t at = (size_t)rand() % (rand() % 2 ? 8 + n : len);
      static const char pool[] = "{}[]\",:-0123456789 eE.F32";
      buf[at] = rand() % 2 ? (uint8_t)pool[rand() % (int)(sizeof pool - 1)] : (uint8_t)rand();
    }
    fl_st *st = NULL;
    int rc = fl_st_parse(buf, len, &st, NULL, 0);
    assert_true(rc <= 0);
    fl_st_free(st);
    free(buf);
  }
  free(full);
}

static void test_get_checks_shape(void **state) {
  (void)state;
  float w[240], b[16];
  fl_st *st = make_set(w, b);
  char err[256] = "";
  float dst[240];
  int64_t wrong[3] = {16, 4, 5};
  assert_int_equal(fl_st_get(st, "enc.0.weight", dst, wrong, 3, err, sizeof err), FL_EMISMATCH);
  assert_string_equal(err, "tensor \"enc.0.weight\" has shape [16, 3, 5], expected [16, 4, 5]");
  int64_t flat[1] = {240};
  assert_int_equal(fl_st_get(st, "enc.0.weight", dst, flat, 1, err, sizeof err), FL_EMISMATCH);
  assert_string_equal(err, "tensor \"enc.0.weight\" has shape [16, 3, 5], expected [240]");
  assert_int_equal(fl_st_get(st, "scalar", dst, flat, 1, err, sizeof err), FL_EMISMATCH);
  assert_string_equal(err, "tensor \"scalar\" has shape [], expected [240]");
  assert_int_equal(fl_st_get(st, "dec.0.weight", dst, wrong, 3, err, sizeof err), FL_ENOTFOUND);
  assert_string_equal(err, "no tensor named \"dec.0.weight\"");
  assert_int_equal(fl_st_get(st, "enc.0.weight", NULL, W_SHAPE, 3, NULL, 0), 0);
  fl_st_free(st);
}

static void test_add_refusals(void **state) {
  (void)state;
  fl_st *st = fl_st_new();
  float x[4] = {0};
  int64_t s[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1};
  assert_int_equal(fl_st_add(st, "x", x, s, 1), 0);
  assert_int_equal(fl_st_add(st, "x", x, s, 1), FL_EINVAL); /* duplicate */
  assert_int_equal(fl_st_add(st, "", x, s, 1), FL_EINVAL);
  assert_int_equal(fl_st_add(st, "__metadata__", x, s, 1), FL_EINVAL);
  assert_int_equal(fl_st_add(st, "bad\xff", x, s, 1), FL_EINVAL);
  assert_int_equal(fl_st_add(st, "\xed\xa0\x80", x, s, 1), FL_EINVAL); /* a surrogate */
  assert_int_equal(fl_st_add(st, "nine", x, s, 9), FL_EINVAL);
  assert_int_equal(fl_st_add(st, "eight", x, s, 8), 0);
  int64_t neg[2] = {2, -2};
  assert_int_equal(fl_st_add(st, "neg", x, neg, 2), FL_EINVAL);
  int64_t huge[2] = {INT64_MAX, 2};
  assert_int_equal(fl_st_add(st, "huge", x, huge, 2), FL_ERANGE);
  int64_t two[1] = {2};
  assert_int_equal(fl_st_add(st, "nodata", NULL, two, 1), FL_EINVAL);
  assert_int_equal(fl_st_add(st, "\xc3\xa9t\xc3\xa9", x, two, 1), 0); /* UTF-8 is fine */
  assert_int_equal(fl_st_set_meta(st, "k", "\xc0\xaf"), FL_EINVAL); /* overlong */
  assert_int_equal(fl_st_set_meta(st, NULL, "v"), FL_EINVAL);
  assert_int_equal(fl_st_count(st), 3);
  fl_st_free(st);
}

static void test_atomic_write(void **state) {
  (void)state;
  float w[240], b[16];
  fl_st *st = make_set(w, b);
  char *dir = make_tmpdir();
  char *path;
  assert_true(asprintf(&path, "%s/model.safetensors", dir) > 0);
  char err[512] = "";

  /* Replacing an existing file leaves the new one and nothing else. */
  FILE *f = fopen(path, "w");
  fputs("old", f);
  fclose(f);
  assert_int_equal(fl_st_write(st, path, err, sizeof err), 0);
  assert_int_equal(count_entries(dir), 1);
  fl_st *in = NULL;
  assert_int_equal(fl_st_read(path, &in, err, sizeof err), 0);
  assert_int_equal(fl_st_count(in), 4);
  fl_st_free(in);

  /* A missing directory: no file, the reason in err. */
  char *bad;
  assert_true(asprintf(&bad, "%s/missing/model.safetensors", dir) > 0);
  assert_int_equal(fl_st_write(st, bad, err, sizeof err), FL_EIO);
  assert_non_null(strstr(err, "cannot create"));
  assert_non_null(strstr(err, "No such file or directory"));

  /* The rename fails (a directory is in the way) after the data was
   * written and synced: the temporary file must be gone. */
  unlink(path);
  assert_int_equal(mkdir(path, 0755), 0);
  assert_int_equal(fl_st_write(st, path, err, sizeof err), FL_EIO);
  assert_non_null(strstr(err, "cannot rename"));
  assert_int_equal(count_entries(dir), 1);

  /* Reading errors name the file. */
  assert_int_equal(fl_st_read(path, &in, err, sizeof err), FL_EIO);
  assert_null(in);
  rmdir(path);
  assert_int_equal(fl_st_read(path, &in, err, sizeof err), FL_EIO);
  assert_non_null(strstr(err, "model.safetensors: cannot open"));
  f = fopen(path, "w");
  fputs("short", f);
  fclose(f);
  assert_int_equal(fl_st_read(path, &in, err, sizeof err), FL_ETRUNC);
  assert_non_null(strstr(err, "model.safetensors: file is 5 bytes"));

  fl_st_free(st);
  free(bad);
  free(path);
  remove_tree(dir);
  free(dir);
}

/* fl_st_read leaves the tensors in the file: they read as written, a file
 * replaced by rename afterwards still reads as it was, a set read so can be
 * written again, and a file cut short in place makes fl_st_get fail with
 * FL_EIO instead of returning what is not there. */
static void test_lazy_read(void **state) {
  (void)state;
  float w[240], b[16], got[240];
  fl_st *st = make_set(w, b);
  char *dir = make_tmpdir();
  char *path, *copy;
  assert_true(asprintf(&path, "%s/model.safetensors", dir) > 0);
  assert_true(asprintf(&copy, "%s/copy.safetensors", dir) > 0);
  char err[512] = "";
  assert_int_equal(fl_st_write(st, path, err, sizeof err), 0);
  fl_st *in = NULL;
  assert_int_equal(fl_st_read(path, &in, err, sizeof err), 0);
  /* Replaced by rename: the open set still reads the old file. */
  float zeros[240] = {0};
  fl_st *other = fl_st_new();
  assert_non_null(other);
  assert_int_equal(fl_st_add(other, "enc.0.weight", zeros, W_SHAPE, 3), 0);
  assert_int_equal(fl_st_write(other, path, err, sizeof err), 0);
  memset(got, 0, sizeof got);
  assert_int_equal(fl_st_get(in, "enc.0.weight", got, W_SHAPE, 3, err, sizeof err), 0);
  assert_memory_equal(got, w, sizeof w);
  /* Written again from the file it was read from. */
  assert_int_equal(fl_st_write(in, copy, err, sizeof err), 0);
  fl_st *again = NULL;
  assert_int_equal(fl_st_read(copy, &again, err, sizeof err), 0);
  assert_int_equal(fl_st_get(again, "enc.0.bias", got, B_SHAPE, 1, err, sizeof err), 0);
  assert_memory_equal(got, b, sizeof b);
  fl_st_free(again);
  fl_st_free(in);
  /* Cut short in place after the header was read. */
  assert_int_equal(fl_st_read(copy, &in, err, sizeof err), 0);
  struct stat sb;
  assert_int_equal(stat(copy, &sb), 0);
  assert_int_equal(truncate(copy, sb.st_size - 4), 0);
  assert_int_equal(fl_st_get(in, "enc.0.weight", got, W_SHAPE, 3, err, sizeof err) == FL_EIO ||
                       fl_st_get(in, "enc.0.bias", got, B_SHAPE, 1, err, sizeof err) == FL_EIO ||
                       fl_st_get(in, "scalar", got, NULL, 0, err, sizeof err) == FL_EIO,
                   1);
  assert_non_null(strstr(err, "changed while being read"));
  fl_st_free(in);
  fl_st_free(other);
  fl_st_free(st);
  free(path);
  free(copy);
  remove_tree(dir);
  free(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_round_trip),      cmocka_unit_test(test_empty_set),
      cmocka_unit_test(test_foreign_layout),  cmocka_unit_test(test_corrupt_headers),
      cmocka_unit_test(test_bad_sizes),       cmocka_unit_test(test_truncations),
      cmocka_unit_test(test_header_flips),    cmocka_unit_test(test_get_checks_shape),
      cmocka_unit_test(test_add_refusals),    cmocka_unit_test(test_atomic_write),
      cmocka_unit_test(test_lazy_read),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
