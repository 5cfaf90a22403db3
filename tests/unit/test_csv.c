/* Unit tests for the csv module: parsing rules, error messages, the writer's
 * round trip and atomicity, and the real SKAB recording when it is present. */
#define _GNU_SOURCE
#include <dirent.h>
#include <locale.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "faultline/csv.h"
#include "faultline/error.h"

/* ---- helpers ----------------------------------------------------------- */

static int parse(const char *text, fl_table *t, char *err, size_t errlen) {
  return fl_csv_parse(text, strlen(text), t, err, errlen);
}

/* Parses text that must fail with code, and checks the message. */
static void expect_error(const char *text, int code, const char *message) {
  fl_table t;
  char err[256] = "";
  int rc = parse(text, &t, err, sizeof err);
  if (rc != code || strcmp(err, message) != 0)
    print_error("input %s\n  got %d \"%s\"\n  want %d \"%s\"\n", text, rc, err, code, message);
  assert_int_equal(rc, code);
  assert_string_equal(err, message);
  /* A failed parse leaves the table empty, so freeing it is harmless. */
  assert_null(t.data);
  assert_int_equal(t.rows, 0);
  fl_table_free(&t);
}

static char *make_tmpdir(void) {
  const char *base = getenv("TMPDIR");
  char *dir = NULL;
  if (asprintf(&dir, "%s/fl_csv_XXXXXX", base && *base ? base : "/tmp") < 0) return NULL;
  if (!mkdtemp(dir)) {
    free(dir);
    return NULL;
  }
  return dir;
}

/* Removes the files of a flat directory and the directory. */
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

static int same_bits(float a, float b) {
  if (isnan(a) || isnan(b)) return isnan(a) && isnan(b);
  return memcmp(&a, &b, sizeof a) == 0;
}

/* ---- reading ----------------------------------------------------------- */

static void test_semicolon_with_datetime(void **state) {
  (void)state;
  fl_table t;
  char err[256] = "";
  const char *text =
      "datetime;Accel;Pressure;anomaly\n"
      "2020-03-09 10:14:33;0.0265878;0.054711;0.0\n"
      "2020-03-09 10:14:34;0.0261697;-1.5e-3;1\n";
  assert_int_equal(parse(text, &t, err, sizeof err), 0);
  assert_int_equal(t.rows, 2);
  assert_int_equal(t.cols, 3);
  assert_string_equal(t.names[0], "Accel");
  assert_string_equal(t.names[2], "anomaly");
  assert_non_null(t.stamps);
  assert_string_equal(t.stamps[0], "2020-03-09 10:14:33");
  assert_string_equal(t.stamps[1], "2020-03-09 10:14:34");
  assert_true(t.data[0] == 0.0265878f);
  assert_true(t.data[1] == 0.054711f);
  assert_true(t.data[4] == -1.5e-3f);
  assert_true(t.data[5] == 1.0f);
  fl_table_free(&t);
  fl_table_free(&t); /* freeing twice is harmless */
}

static void test_comma_without_datetime(void **state) {
  (void)state;
  fl_table t;
  char err[256] = "";
  assert_int_equal(parse("a,b\n1,2\n3,4", &t, err, sizeof err), 0);
  assert_int_equal(t.rows, 2);
  assert_int_equal(t.cols, 2);
  assert_null(t.stamps);
  assert_true(t.data[0] == 1 && t.data[1] == 2 && t.data[2] == 3 && t.data[3] == 4);
  fl_table_free(&t);

  /* A separator that occurs more often wins, so a ';' file whose names
   * contain a comma still splits on ';'. */
  assert_int_equal(parse("x,y;z;w\n1;2;3\n", &t, err, sizeof err), 0);
  assert_int_equal(t.cols, 3);
  assert_string_equal(t.names[0], "x,y");
  fl_table_free(&t);

  /* One column, no separator at all. */
  assert_int_equal(parse("only\n1\n2\n", &t, err, sizeof err), 0);
  assert_int_equal(t.cols, 1);
  assert_int_equal(t.rows, 2);
  fl_table_free(&t);
}

static void test_datetime_detection(void **state) {
  (void)state;
  fl_table t;
  char err[256] = "";
  /* Named otherwise, but the first cell looks like a timestamp. */
  assert_int_equal(parse("time,v\n2021/01/02T03:04:05Z,1\n2021/01/02T03:04:06Z,2\n", &t, err, sizeof err), 0);
  assert_int_equal(t.cols, 1);
  assert_non_null(t.stamps);
  assert_string_equal(t.names[0], "v");
  assert_string_equal(t.stamps[1], "2021/01/02T03:04:06Z");
  fl_table_free(&t);

  /* Named datetime (any case): text even when the cells are numbers. */
  assert_int_equal(parse("DateTime,v\n1583748873,1\n", &t, err, sizeof err), 0);
  assert_int_equal(t.cols, 1);
  assert_string_equal(t.stamps[0], "1583748873");
  fl_table_free(&t);

  /* A numeric first column stays numeric. */
  assert_int_equal(parse("t,v\n1583748873,1\n", &t, err, sizeof err), 0);
  assert_int_equal(t.cols, 2);
  assert_null(t.stamps);
  fl_table_free(&t);

  /* Header only: the datetime column is still reported as present. */
  assert_int_equal(parse("datetime,v\n", &t, err, sizeof err), 0);
  assert_int_equal(t.rows, 0);
  assert_int_equal(t.cols, 1);
  assert_non_null(t.stamps);
  fl_table_free(&t);
}

static void test_missing_cells_are_nan(void **state) {
  (void)state;
  fl_table t;
  char err[256] = "";
  const char *text = "a;b;c;d;e\n;NaN;nan;NA;0\n  ;na; NAN ;  2.5\t;-0\n";
  assert_int_equal(parse(text, &t, err, sizeof err), 0);
  assert_int_equal(t.rows, 2);
  for (int j = 0; j < 4; j++) assert_true(isnan(t.data[j]));
  assert_true(t.data[4] == 0.0f && !isnan(t.data[4]));
  assert_true(isnan(t.data[5]) && isnan(t.data[6]) && isnan(t.data[7]));
  assert_true(t.data[8] == 2.5f);
  assert_true(t.data[9] == 0.0f && signbit(t.data[9]));
  fl_table_free(&t);
}

static void test_line_ends_and_blank_lines(void **state) {
  (void)state;
  fl_table t;
  char err[256] = "";
  /* CRLF, a BOM, blank lines before the header, between rows and at the
   * end, and a last line without its newline. */
  const char *text = "\xEF\xBB\xBF\r\n a , b \r\n1,2\r\n\r\n3,4\r\n \r\n5,6";
  assert_int_equal(parse(text, &t, err, sizeof err), 0);
  assert_int_equal(t.rows, 3);
  assert_string_equal(t.names[0], "a");
  assert_string_equal(t.names[1], "b");
  assert_true(t.data[5] == 6.0f);
  fl_table_free(&t);

  assert_int_equal(parse("a,b\r\n1,2\r\n", &t, err, sizeof err), 0);
  assert_int_equal(t.rows, 1);
  assert_true(t.data[1] == 2.0f);
  fl_table_free(&t);
}

static void test_quoted_header(void **state) {
  (void)state;
  fl_table t;
  char err[256] = "";
  const char *text = "\"Flow; l/min\";\"say \"\"hi\"\"\";plain\n1;2;3\n";
  assert_int_equal(parse(text, &t, err, sizeof err), 0);
  assert_int_equal(t.cols, 3);
  assert_string_equal(t.names[0], "Flow; l/min");
  assert_string_equal(t.names[1], "say \"hi\"");
  assert_string_equal(t.names[2], "plain");
  assert_int_equal(fl_table_col(&t, "Flow; l/min"), 0);
  fl_table_free(&t);

  /* Quoted cells are unquoted before parsing. */
  assert_int_equal(parse("a,b\n\"1.5\", \"2\" \n", &t, err, sizeof err), 0);
  assert_true(t.data[0] == 1.5f && t.data[1] == 2.0f);
  fl_table_free(&t);
}

static void test_table_col(void **state) {
  (void)state;
  fl_table t;
  char err[256] = "";
  assert_int_equal(parse("datetime,x,Pressure\n2020-01-01 00:00:00,1,2\n", &t, err, sizeof err), 0);
  assert_int_equal(fl_table_col(&t, "x"), 0);
  assert_int_equal(fl_table_col(&t, "Pressure"), 1);
  assert_int_equal(fl_table_col(&t, "pressure"), FL_ENOTFOUND);
  assert_int_equal(fl_table_col(&t, "datetime"), FL_ENOTFOUND);
  assert_int_equal(fl_table_col(&t, NULL), FL_ENOTFOUND);
  fl_table_free(&t);
  assert_int_equal(fl_table_col(&t, "x"), FL_ENOTFOUND);
}

static void test_errors(void **state) {
  (void)state;
  expect_error("", FL_EFORMAT, "input: empty file: a header row is required");
  expect_error("\n\r\n  \n", FL_EFORMAT, "input: empty file: a header row is required");
  expect_error("1,2,3\n4,5,6\n", FL_EFORMAT,
               "line 1: no header row: the first line holds numbers, not column names");
  expect_error("2020-01-01 00:00:00;1;2\n", FL_EFORMAT,
               "line 1: no header row: the first line holds numbers, not column names");
  expect_error("a,b,a\n1,2,3\n", FL_EFORMAT, "line 1: duplicate column name \"a\" (columns 1 and 3)");
  expect_error("a,,c\n1,2,3\n", FL_EFORMAT, "line 1: column 2 has an empty name in the header");
  expect_error("a,\"b\n1,2\n", FL_EFORMAT, "line 1: column 2: unterminated quote in the header");
  expect_error("datetime;A;B;C;Pressure\n"
               "2020-03-09 10:14:33;1;2;3;4\n"
               "\n"
               "2020-03-09 10:14:34;1;2;3;1.2.3\n",
               FL_EFORMAT, "line 4: column 5 (\"Pressure\"): cannot parse \"1.2.3\" as a number");
  expect_error("a,b\n1,2\n1,2,3\n", FL_EFORMAT, "line 3: expected 2 fields as in the header, found 3");
  expect_error("a,b\n1,2\n1\n", FL_EFORMAT, "line 3: expected 2 fields as in the header, found 1");
  expect_error("a,b\n1,inf\n", FL_ENONFINITE, "line 2: column 2 (\"b\"): infinite value \"inf\"");
  expect_error("a,b\n-Infinity,1\n", FL_ENONFINITE, "line 2: column 1 (\"a\"): infinite value \"-Infinity\"");
  expect_error("a,b\n1e39,1\n", FL_ERANGE, "line 2: column 1 (\"a\"): \"1e39\" is out of range for a 32-bit float");
  expect_error("a,b\n0x10,1\n", FL_EFORMAT, "line 2: column 1 (\"a\"): cannot parse \"0x10\" as a number");
  expect_error("a,b\n1,1e\n", FL_EFORMAT, "line 2: column 2 (\"b\"): cannot parse \"1e\" as a number");
  expect_error("a,b\n1,-\n", FL_EFORMAT, "line 2: column 2 (\"b\"): cannot parse \"-\" as a number");
  expect_error("a,b\n1,1 2\n", FL_EFORMAT, "line 2: column 2 (\"b\"): cannot parse \"1 2\" as a number");
  expect_error("a,b\n1,\"2\"x\n", FL_EFORMAT, "line 2: column 2: text after the closing quote");
  /* A junk first cell that merely contains a dash is not a timestamp. */
  expect_error("t,v\n1-2,1\n", FL_EFORMAT, "line 2: column 1 (\"t\"): cannot parse \"1-2\" as a number");

  /* Underflow is not an error: the nearest float is the answer. */
  fl_table t;
  char err[128];
  assert_int_equal(parse("a\n1e-50\n", &t, err, sizeof err), 0);
  assert_true(t.data[0] == 0.0f);
  fl_table_free(&t);

  /* err may be NULL or tiny without harm. */
  assert_int_equal(parse("a,b\n1,x\n", &t, NULL, 0), FL_EFORMAT);
  char tiny[4];
  assert_int_equal(parse("a,b\n1,x\n", &t, tiny, sizeof tiny), FL_EFORMAT);
  assert_int_equal(strlen(tiny), 3);
}

static void test_read_file_errors_name_path(void **state) {
  (void)state;
  char *dir = make_tmpdir();
  assert_non_null(dir);
  char *path;
  assert_true(asprintf(&path, "%s/data.csv", dir) > 0);
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  fputs("datetime;Accel;Current;Temp;Pressure\n", f);
  for (int i = 0; i < 15; i++) fprintf(f, "2020-03-09 10:14:%02d;1;2;3;4\n", i);
  fputs("2020-03-09 10:15:00;1;2;3;1.2.3\n", f);
  fclose(f);

  fl_table t;
  char err[512] = "", want[512];
  assert_int_equal(fl_csv_read(path, &t, err, sizeof err), FL_EFORMAT);
  snprintf(want, sizeof want, "%s:17: column 5 (\"Pressure\"): cannot parse \"1.2.3\" as a number", path);
  assert_string_equal(err, want);

  char *missing;
  assert_true(asprintf(&missing, "%s/nope.csv", dir) > 0);
  assert_int_equal(fl_csv_read(missing, &t, err, sizeof err), FL_EIO);
  assert_non_null(strstr(err, "nope.csv: cannot open"));
  assert_int_equal(fl_csv_read(dir, &t, err, sizeof err), FL_EIO);
  assert_non_null(strstr(err, "is a directory"));

  free(missing);
  free(path);
  remove_tree(dir);
  free(dir);
}

/* Every prefix of a valid file, and random corruptions of it, either parse
 * or fail cleanly; under the sanitizers this also proves no over-read. */
static void test_prefixes_and_mutations(void **state) {
  (void)state;
  const char *text =
      "\xEF\xBB\xBF"
      "datetime;\"A;1\";B;C\r\n"
      "2020-03-09 10:14:33;0.5;NaN;\"3\"\r\n"
      "2020-03-09 10:14:34;;-2e-3;  4 \r\n";
  size_t n = strlen(text);
  fl_table t;
  char err[256];
  int ok = 0;
  for (size_t len = 0; len <= n; len++) {
    /* A heap copy of exactly len bytes, so that ASan sees any over-read. */
    char *buf = malloc(len ? len : 1);
    memcpy(buf, text, len);
    int rc = fl_csv_parse(buf, len, &t, err, sizeof err);
    assert_true(rc <= 0);
    if (rc == 0) {
      ok++;
      assert_true(t.rows >= 0 && t.rows <= 2);
    }
    fl_table_free(&t);
    free(buf);
  }
  assert_true(ok > 10);

  srand(12345);
  for (int iter = 0; iter < 20000; iter++) {
    char *buf = malloc(n);
    memcpy(buf, text, n);
    int flips = 1 + rand() % 4;
    for (int k = 0; k < flips; k++) {
      static const char pool[] = ";,\"\r\n .eE-+0123456789aNn\t";
      size_t at = (size_t)rand() % n;
      buf[at] = rand() % 2 ? pool[rand() % (int)(sizeof pool - 1)] : (char)(rand() % 256);
    }
    int rc = fl_csv_parse(buf, n, &t, err, sizeof err);
    assert_true(rc <= 0);
    if (rc == 0) assert_true(t.rows <= 2 && t.cols <= 4);
    fl_table_free(&t);
    free(buf);
  }
}

/* A file of blank lines under a wide header must not allocate per line. */
static void test_many_blank_lines(void **state) {
  (void)state;
  size_t cols = 5000, lines = 200000;
  size_t hdr = cols * 8;
  char *buf = malloc(hdr + lines);
  size_t k = 0;
  for (size_t j = 0; j < cols; j++) k += (size_t)sprintf(buf + k, "%sc%zu", j ? "," : "", j);
  buf[k++] = '\n';
  memset(buf + k, '\n', lines);
  k += lines;
  fl_table t;
  char err[128];
  assert_int_equal(fl_csv_parse(buf, k, &t, err, sizeof err), 0);
  assert_int_equal(t.rows, 0);
  assert_int_equal(t.cols, (int)cols);
  fl_table_free(&t);
  free(buf);
}

static void test_large_file_is_fast(void **state) {
  (void)state;
  const int rows = 100000, cols = 10;
  size_t cap = (size_t)rows * 160 + 256;
  char *buf = malloc(cap);
  size_t k = (size_t)sprintf(buf, "datetime");
  for (int j = 0; j < cols; j++) k += (size_t)sprintf(buf + k, ";col%d", j);
  buf[k++] = '\n';
  for (int i = 0; i < rows; i++) {
    k += (size_t)sprintf(buf + k, "2020-03-09 %02d:%02d:%02d", i / 3600 % 24, i / 60 % 60, i % 60);
    for (int j = 0; j < cols; j++) k += (size_t)sprintf(buf + k, ";%.6g", (double)(i * 0.001f + j));
    k += (size_t)sprintf(buf + k, "\r\n");
  }
  fl_table t;
  char err[128];
  struct timespec a, b;
  clock_gettime(CLOCK_MONOTONIC, &a);
  assert_int_equal(fl_csv_parse(buf, k, &t, err, sizeof err), 0);
  clock_gettime(CLOCK_MONOTONIC, &b);
  double s = (double)(b.tv_sec - a.tv_sec) + 1e-9 * (double)(b.tv_nsec - a.tv_nsec);
  print_message("parsed %d rows x %d columns (%.1f MB) in %.3f s\n", rows, cols, (double)k / 1e6, s);
  assert_int_equal(t.rows, rows);
  assert_int_equal(t.cols, cols);
  assert_true(fabsf(t.data[(size_t)77777 * cols + 3] - (77777 * 0.001f + 3)) < 1e-3f);
  assert_string_equal(t.stamps[rows - 1], "2020-03-09 03:46:39");
  /* Generous bound: sanitizer builds are slow, but a quadratic or
   * per-cell-realloc parser would take far longer than this. */
  assert_true(s < 10.0);
  fl_table_free(&t);
  free(buf);
}

/* ---- writing ----------------------------------------------------------- */

static void test_round_trip(void **state) {
  (void)state;
  char *dir = make_tmpdir();
  assert_non_null(dir);
  char *path;
  assert_true(asprintf(&path, "%s/out.csv", dir) > 0);

  const int rows = 500, cols = 5;
  fl_table t;
  assert_int_equal(fl_table_alloc(&t, rows, cols), 0);
  assert_true(isnan(t.data[0])); /* allocated values start missing */
  const char *names[] = {"plain", "with, comma", "quote \"q\"", " padded ", "semi;colon"};
  for (int j = 0; j < cols; j++) assert_int_equal(fl_table_set_name(&t, j, names[j]), 0);
  srand(7);
  for (int i = 0; i < rows * cols; i++) {
    uint32_t bits = (uint32_t)rand() ^ ((uint32_t)rand() << 16);
    float v;
    memcpy(&v, &bits, sizeof v);
    if (isinf(v)) v = 1.0f;
    t.data[i] = (i % 7 == 0) ? NAN : v; /* random bit patterns: subnormals, huge, tiny */
  }
  t.data[1] = -0.0f;
  t.data[2] = 3.4028235e38f;
  t.data[3] = 1.4e-45f;
  t.data[4] = 0.1f;
  for (int i = 0; i < rows; i++) {
    char s[32];
    snprintf(s, sizeof s, "2020-03-09 10:%02d:%02d", i / 60 % 60, i % 60);
    assert_int_equal(fl_table_set_stamp(&t, i, s), 0);
  }
  assert_int_equal(fl_table_set_stamp(&t, 5, ""), 0);

  char err[512] = "";
  assert_int_equal(fl_csv_write(path, &t, err, sizeof err), 0);
  assert_int_equal(count_entries(dir), 1); /* no temporary file is left */

  fl_table u;
  int rc = fl_csv_read(path, &u, err, sizeof err);
  if (rc) print_error("%s\n", err);
  assert_int_equal(rc, 0);
  assert_int_equal(u.rows, rows);
  assert_int_equal(u.cols, cols);
  assert_non_null(u.stamps);
  for (int j = 0; j < cols; j++) assert_string_equal(u.names[j], names[j]);
  for (int i = 0; i < rows; i++) assert_string_equal(u.stamps[i], t.stamps[i]);
  for (int i = 0; i < rows * cols; i++) {
    if (!same_bits(t.data[i], u.data[i])) print_error("cell %d: %.9g != %.9g\n", i, t.data[i], u.data[i]);
    assert_true(same_bits(t.data[i], u.data[i]));
  }
  fl_table_free(&u);

  /* Writing over an existing file replaces it. */
  fl_table one;
  assert_int_equal(fl_table_alloc(&one, 3, 1), 0);
  assert_int_equal(fl_table_set_name(&one, 0, "v"), 0);
  one.data[0] = 1.0f; /* rows 1 and 2 stay NaN, written "NaN" as a row's only field */
  assert_int_equal(fl_csv_write(path, &one, err, sizeof err), 0);
  assert_int_equal(fl_csv_read(path, &u, err, sizeof err), 0);
  assert_int_equal(u.rows, 3);
  assert_null(u.stamps);
  assert_true(u.data[0] == 1.0f && isnan(u.data[1]) && isnan(u.data[2]));
  fl_table_free(&u);
  fl_table_free(&one);

  fl_table_free(&t);
  assert_int_equal(count_entries(dir), 1);
  free(path);
  remove_tree(dir);
  free(dir);
}

static void test_write_refusals(void **state) {
  (void)state;
  char *dir = make_tmpdir();
  assert_non_null(dir);
  char *path;
  assert_true(asprintf(&path, "%s/out.csv", dir) > 0);
  char err[512] = "";
  fl_table t;

  assert_int_equal(fl_table_alloc(&t, 2, 2), 0);
  assert_int_equal(fl_table_set_name(&t, 0, "a"), 0);
  assert_int_equal(fl_csv_write(path, &t, err, sizeof err), FL_EINVAL); /* column 2 unnamed */
  assert_non_null(strstr(err, "column 2 has no name"));
  assert_int_equal(fl_table_set_name(&t, 1, "a"), 0);
  assert_int_equal(fl_csv_write(path, &t, err, sizeof err), FL_EINVAL);
  assert_non_null(strstr(err, "duplicate column name \"a\""));
  assert_int_equal(fl_table_set_name(&t, 1, "b"), 0);
  t.data[3] = -INFINITY;
  assert_int_equal(fl_csv_write(path, &t, err, sizeof err), FL_ENONFINITE);
  assert_non_null(strstr(err, "row 2, column \"b\": infinite value"));
  t.data[3] = 1;
  assert_int_equal(fl_table_set_name(&t, 0, "DateTime"), 0);
  assert_int_equal(fl_csv_write(path, &t, err, sizeof err), FL_EINVAL);
  assert_int_equal(fl_table_set_name(&t, 0, "line\nbreak"), 0);
  assert_int_equal(fl_csv_write(path, &t, err, sizeof err), FL_EINVAL);
  assert_int_equal(count_entries(dir), 0); /* nothing was written */

  assert_int_equal(fl_table_set_name(&t, 0, "a"), 0);
  assert_int_equal(fl_table_set_name(&t, 5, "x"), FL_EINVAL);
  assert_int_equal(fl_table_set_stamp(&t, 2, "x"), FL_EINVAL);
  assert_int_equal(fl_table_alloc(&(fl_table){0}, -1, 2), FL_EINVAL);

  /* An unwritable destination fails with the reason and leaves no file. */
  char *bad;
  assert_true(asprintf(&bad, "%s/no/such/dir/out.csv", dir) > 0);
  assert_int_equal(fl_csv_write(bad, &t, err, sizeof err), FL_EIO);
  assert_non_null(strstr(err, "cannot create"));
  /* Renaming over a directory fails after the data was written: the
   * temporary file must be removed. */
  assert_int_equal(mkdir(path, 0755), 0);
  assert_int_equal(fl_csv_write(path, &t, err, sizeof err), FL_EIO);
  assert_non_null(strstr(err, "cannot rename"));
  assert_int_equal(count_entries(dir), 1); /* only the directory */
  rmdir(path);

  fl_table_free(&t);
  free(bad);
  free(path);
  remove_tree(dir);
  free(dir);
}

/* The caller's locale must not change how numbers are read or written. */
static void test_locale_independent(void **state) {
  (void)state;
  const char *locales[] = {"de_DE.UTF-8", "de_DE.utf8", "fr_FR.UTF-8", "ru_RU.UTF-8"};
  const char *got = NULL;
  for (size_t i = 0; i < sizeof locales / sizeof *locales && !got; i++) got = setlocale(LC_ALL, locales[i]);
  if (!got) {
    print_message("no locale with a decimal comma is installed; checking the C locale only\n");
  }
  fl_table t;
  char err[256];
  assert_int_equal(parse("a;b\n1.5;2,5\n", &t, err, sizeof err), FL_EFORMAT);
  assert_int_equal(parse("a;b\n1.5;2.5\n", &t, err, sizeof err), 0);
  assert_true(t.data[0] == 1.5f && t.data[1] == 2.5f);

  char *dir = make_tmpdir();
  char *path;
  assert_true(asprintf(&path, "%s/l.csv", dir) > 0);
  assert_int_equal(fl_csv_write(path, &t, err, sizeof err), 0);
  FILE *f = fopen(path, "r");
  char text[64] = "";
  size_t n = fread(text, 1, sizeof text - 1, f);
  fclose(f);
  text[n] = '\0';
  assert_string_equal(text, "a,b\n1.5,2.5\n");
  setlocale(LC_ALL, "C");
  fl_table_free(&t);
  free(path);
  remove_tree(dir);
  free(dir);
}

/* ---- the real SKAB recording ------------------------------------------- */

static void test_skab_valve1(void **state) {
  (void)state;
  /* The tests run from the source root; the shared data lives beside it. */
  const char *path = "../shared/data/skab/valve1/0.csv";
  if (access(path, R_OK) != 0) {
    print_message("SKAB file %s (read from ../shared relative to the source root) is absent; skipping\n", path);
    skip();
  }
  fl_table t;
  char err[512] = "";
  int rc = fl_csv_read(path, &t, err, sizeof err);
  if (rc) print_error("%s\n", err);
  assert_int_equal(rc, 0);
  /* Count the file's non-blank lines independently of the parser. */
  FILE *f = fopen(path, "rb");
  assert_non_null(f);
  int lines = 0, len = 0, ch;
  while ((ch = fgetc(f)) != EOF) {
    if (ch == '\n') {
      if (len) lines++;
      len = 0;
    } else if (ch != '\r') {
      len++;
    }
  }
  if (len) lines++;
  fclose(f);
  print_message("%s: %d rows, %d numeric columns\n", path, t.rows, t.cols);
  assert_int_equal(t.rows, lines - 1);
  assert_true(t.rows > 1000);
  assert_int_equal(t.cols, 10);
  assert_non_null(t.stamps);
  assert_true(fl_table_col(&t, "anomaly") >= 0);
  assert_true(fl_table_col(&t, "changepoint") >= 0);
  assert_true(fl_table_col(&t, "Pressure") >= 0);
  assert_int_equal(strlen(t.stamps[0]), strlen("2020-03-09 10:14:33"));
  int a = fl_table_col(&t, "anomaly");
  for (int i = 0; i < t.rows; i++) {
    float v = t.data[(size_t)i * (size_t)t.cols + (size_t)a];
    assert_true(v == 0.0f || v == 1.0f);
  }
  fl_table_free(&t);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_semicolon_with_datetime),
      cmocka_unit_test(test_comma_without_datetime),
      cmocka_unit_test(test_datetime_detection),
      cmocka_unit_test(test_missing_cells_are_nan),
      cmocka_unit_test(test_line_ends_and_blank_lines),
      cmocka_unit_test(test_quoted_header),
      cmocka_unit_test(test_table_col),
      cmocka_unit_test(test_errors),
      cmocka_unit_test(test_read_file_errors_name_path),
      cmocka_unit_test(test_prefixes_and_mutations),
      cmocka_unit_test(test_many_blank_lines),
      cmocka_unit_test(test_large_file_is_fast),
      cmocka_unit_test(test_round_trip),
      cmocka_unit_test(test_write_refusals),
      cmocka_unit_test(test_locale_independent),
      cmocka_unit_test(test_skab_valve1),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
