/* faultline csv: see include/faultline/csv.h for the contracts. */
#define _GNU_SOURCE /* strtof_l, newlocale and uselocale: parse in the C locale */
#include "faultline/csv.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <locale.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "faultline/error.h"
#include "io_atomic.h"

/* ---- tables ------------------------------------------------------------ */

int fl_table_alloc(fl_table *t, int rows, int cols) {
  if (!t) return FL_EINVAL;
  memset(t, 0, sizeof *t);
  if (rows < 0 || cols < 0) return FL_EINVAL;
  size_t n = (size_t)rows * (size_t)cols;
  if (cols > 0 && n / (size_t)cols != (size_t)rows) return FL_ENOMEM;
  /* At least one element each, so that a 0-sized table still has non-NULL
   * arrays and a caller can tell "allocated" from "empty". */
  t->names = calloc(cols ? (size_t)cols : 1, sizeof *t->names);
  t->data = malloc((n ? n : 1) * sizeof *t->data);
  if (!t->names || !t->data) {
    free(t->names);
    free(t->data);
    memset(t, 0, sizeof *t);
    return FL_ENOMEM;
  }
  for (size_t i = 0; i < n; i++) t->data[i] = NAN;
  t->rows = rows;
  t->cols = cols;
  return 0;
}

int fl_table_set_name(fl_table *t, int col, const char *name) {
  if (!t || !t->names || !name || col < 0 || col >= t->cols) return FL_EINVAL;
  char *copy = strdup(name);
  if (!copy) return FL_ENOMEM;
  free(t->names[col]);
  t->names[col] = copy;
  return 0;
}

int fl_table_set_stamp(fl_table *t, int row, const char *stamp) {
  if (!t || !stamp || row < 0 || row >= t->rows) return FL_EINVAL;
  char *copy = strdup(stamp);
  if (!copy) return FL_ENOMEM;
  if (!t->stamps) {
    t->stamps = calloc((size_t)t->rows, sizeof *t->stamps);
    if (!t->stamps) {
      free(copy);
      return FL_ENOMEM;
    }
    /* Every row gets its own "" so that the table frees stamps uniformly. */
    for (int i = 0; i < t->rows; i++) {
      t->stamps[i] = strdup("");
      if (!t->stamps[i]) {
        for (int j = 0; j < i; j++) free(t->stamps[j]);
        free(t->stamps);
        t->stamps = NULL;
        free(copy);
        return FL_ENOMEM;
      }
    }
  }
  free(t->stamps[row]);
  t->stamps[row] = copy;
  return 0;
}

void fl_table_free(fl_table *t) {
  if (!t) return;
  if (t->names)
    for (int i = 0; i < t->cols; i++) free(t->names[i]);
  if (t->stamps)
    for (int i = 0; i < t->rows; i++) free(t->stamps[i]);
  free(t->names);
  free(t->stamps);
  free(t->data);
  memset(t, 0, sizeof *t);
}

int fl_table_col(const fl_table *t, const char *name) {
  if (!t || !name || !t->names) return FL_ENOTFOUND;
  for (int i = 0; i < t->cols; i++)
    if (t->names[i] && strcmp(t->names[i], name) == 0) return i;
  return FL_ENOTFOUND;
}

/* ---- parsing ----------------------------------------------------------- */

/* One field of a line.  For a quoted field s and n cover the text between
 * the quotes, where "" still stands for one quote when esc is set; for an
 * unquoted field they cover the raw text, surrounding blanks included. */
typedef struct {
  const char *s;
  size_t n;
  unsigned char quoted, esc;
} fl__span;

typedef struct {
  const char *src; /* path for messages, or NULL for "line N" */
  char *err;
  size_t errlen;
  locale_t loc; /* the C locale, so that a caller's locale cannot turn '.' into ',' */
  char sep;
  int nfields;    /* fields per line, the stamp column included */
  int has_stamps; /* field 0 is the stamp column */
  char **hdr;     /* (nfields) the header's names */
  fl__span *spans; /* (nfields + 1) scratch for one line */
} fl__csv;

static int fl__fail(const fl__csv *c, int line, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int fl__fail(const fl__csv *c, int line, int code, const char *fmt, ...) {
  if (!c->err || c->errlen == 0) return code;
  int k;
  if (line <= 0)
    k = snprintf(c->err, c->errlen, "%s: ", c->src ? c->src : "input");
  else if (c->src)
    k = snprintf(c->err, c->errlen, "%s:%d: ", c->src, line);
  else
    k = snprintf(c->err, c->errlen, "line %d: ", line);
  if (k < 0) k = 0;
  if ((size_t)k < c->errlen) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err + k, c->errlen - (size_t)k, fmt, ap);
    va_end(ap);
  }
  return code;
}

static int fl__blank(char ch) { return ch == ' ' || ch == '\t'; }

static void fl__trim(const char **s, size_t *n) {
  while (*n && fl__blank(**s)) (*s)++, (*n)--;
  while (*n && fl__blank((*s)[*n - 1])) (*n)--;
}

/* Splits off the next line at *p, without its '\n' and one trailing '\r'. */
static void fl__next_line(const char **p, const char *e, const char **ls, const char **le) {
  const char *q = memchr(*p, '\n', (size_t)(e - *p));
  *ls = *p;
  *le = q ? q : e;
  *p = q ? q + 1 : e;
  if (*le > *ls && (*le)[-1] == '\r') (*le)--;
}

static int fl__is_blank_line(const char *ls, const char *le) {
  for (const char *q = ls; q < le; q++)
    if (!fl__blank(*q) && *q != '\r') return 0;
  return 1;
}

/* Splits a line into fields, storing at most max spans (spans may be NULL to
 * only count).  Returns the number of fields, or -1 for an unterminated
 * quote and -2 for text after a closing quote, with *bad the 1-based field. */
static int fl__split(const char *ls, const char *le, char sep, fl__span *spans, int max,
                     int *bad) {
  int count = 0;
  const char *p = ls;
  for (;;) {
    fl__span sp = {p, 0, 0, 0};
    const char *q = p;
    while (q < le && fl__blank(*q)) q++;
    if (q < le && *q == '"') {
      const char *a = q + 1, *b = a;
      for (;;) {
        b = memchr(b, '"', (size_t)(le - b));
        if (!b) {
          *bad = count + 1;
          return -1;
        }
        if (b + 1 < le && b[1] == '"') {
          sp.esc = 1;
          b += 2;
          continue;
        }
        break;
      }
      sp.s = a;
      sp.n = (size_t)(b - a);
      sp.quoted = 1;
      q = b + 1;
      while (q < le && fl__blank(*q)) q++;
      if (q < le && *q != sep) {
        *bad = count + 1;
        return -2;
      }
    } else {
      q = memchr(p, sep, (size_t)(le - p));
      if (!q) q = le;
      sp.n = (size_t)(q - p);
    }
    if (spans && count < max) spans[count] = sp;
    if (count == INT_MAX) return count;
    count++;
    if (q >= le) return count;
    p = q + 1; /* past the separator: a trailing separator makes an empty field */
  }
}

/* A span's text as a new string: quotes removed, "" collapsed, and blanks
 * trimmed from unquoted text. */
static char *fl__span_dup(const fl__span *sp) {
  const char *s = sp->s;
  size_t n = sp->n;
  if (!sp->quoted) fl__trim(&s, &n);
  char *out = malloc(n + 1);
  if (!out) return NULL;
  size_t k = 0;
  for (size_t i = 0; i < n; i++) {
    out[k++] = s[i];
    if (sp->esc && s[i] == '"' && i + 1 < n && s[i + 1] == '"') i++;
  }
  out[k] = '\0';
  return out;
}

/* A cell's text for an error message: at most 40 bytes, non-printable bytes
 * shown as '?', so that a binary file gives a readable message. */
static void fl__show(char *dst, size_t cap, const char *s, size_t n) {
  size_t k = 0;
  for (size_t i = 0; i < n && k + 4 < cap; i++) {
    if (i == 40) {
      memcpy(dst + k, "...", 3);
      k += 3;
      break;
    }
    unsigned char ch = (unsigned char)s[i];
    dst[k++] = (ch >= 0x20 && ch < 0x7f) ? (char)ch : '?';
  }
  dst[k] = '\0';
}

enum { FL__NUM_OK = 0, FL__NUM_MISSING = 1, FL__NUM_BAD = -1, FL__NUM_INF = -2, FL__NUM_RANGE = -3 };

/* Parses one cell.  Only decimal notation is accepted (no hex floats, no
 * "inf" that strtof would take), so the cell is screened before strtof sees
 * it; a copy is made because the input need not be NUL-terminated. */
static int fl__parse_num(const char *s, size_t n, locale_t loc, float *out) {
  fl__trim(&s, &n);
  if (n == 0 || (n == 3 && strncasecmp(s, "nan", 3) == 0) ||
      (n == 2 && strncasecmp(s, "na", 2) == 0)) {
    *out = NAN;
    return FL__NUM_MISSING;
  }
  int digits = 0;
  for (size_t i = 0; i < n; i++) {
    char ch = s[i];
    if (ch >= '0' && ch <= '9') {
      digits = 1;
    } else if (!(ch == '.' || ch == '+' || ch == '-' || ch == 'e' || ch == 'E')) {
      const char *w = s;
      size_t m = n;
      if (*w == '+' || *w == '-') w++, m--;
      if ((m == 3 && strncasecmp(w, "inf", 3) == 0) ||
          (m == 8 && strncasecmp(w, "infinity", 8) == 0))
        return FL__NUM_INF;
      return FL__NUM_BAD;
    }
  }
  if (!digits) return FL__NUM_BAD;
  char small[64];
  char *buf = n < sizeof small ? small : malloc(n + 1);
  if (!buf) return FL__NUM_BAD;
  memcpy(buf, s, n);
  buf[n] = '\0';
  char *end;
  errno = 0;
  float v = strtof_l(buf, &end, loc);
  int ok = end == buf + n;
  int erange = errno == ERANGE;
  if (buf != small) free(buf);
  if (!ok) return FL__NUM_BAD;
  /* ERANGE also flags underflow, where the result (0 or subnormal) is the
   * best float there is; only overflow is an error. */
  if (isinf(v) || (erange && fabsf(v) > 1.0f)) return FL__NUM_RANGE;
  *out = v;
  return FL__NUM_OK;
}

/* A cell that is not a number but is plausibly a timestamp: digits first,
 * only digits and date/time punctuation, at least two of '-', '/' or ':' and
 * four digits.  Strict on purpose: a numeric column whose first cell is junk
 * must give a parse error, not silently become text. */
static int fl__looks_like_date(const char *s, size_t n) {
  fl__trim(&s, &n);
  if (n < 4 || !(s[0] >= '0' && s[0] <= '9')) return 0;
  int seps = 0, digits = 0;
  for (size_t i = 0; i < n; i++) {
    char ch = s[i];
    if (ch >= '0' && ch <= '9')
      digits++;
    else if (ch == '-' || ch == '/' || ch == ':')
      seps++;
    else if (!(ch == ' ' || ch == 'T' || ch == '.' || ch == '+' || ch == 'Z'))
      return 0;
  }
  return seps >= 2 && digits >= 4;
}

typedef struct {
  const char *name;
  int idx;
} fl__named;

static int fl__cmp_named(const void *a, const void *b) {
  const fl__named *x = a, *y = b;
  int r = strcmp(x->name, y->name);
  return r ? r : (x->idx > y->idx) - (x->idx < y->idx);
}

/* Reads the header line: separator, names, and the checks that a header
 * exists and its names are usable. */
static int fl__parse_header(fl__csv *c, const char *ls, const char *le, int line) {
  int semi = 0, comma = 0, inq = 0;
  for (const char *q = ls; q < le; q++) {
    if (*q == '"') inq = !inq;
    else if (!inq && *q == ';') semi++;
    else if (!inq && *q == ',') comma++;
  }
  c->sep = semi > comma ? ';' : ',';

  int bad = 0;
  int n = fl__split(ls, le, c->sep, NULL, 0, &bad);
  if (n == -1) return fl__fail(c, line, FL_EFORMAT, "column %d: unterminated quote in the header", bad);
  if (n == -2) return fl__fail(c, line, FL_EFORMAT, "column %d: text after the closing quote in the header", bad);
  c->spans = malloc(((size_t)n + 1) * sizeof *c->spans);
  c->hdr = calloc((size_t)n, sizeof *c->hdr);
  if (!c->spans || !c->hdr) return fl__fail(c, 0, FL_ENOMEM, "out of memory");
  c->nfields = n;
  fl__split(ls, le, c->sep, c->spans, n, &bad);

  int numeric = 0;
  for (int j = 0; j < n; j++) {
    c->hdr[j] = fl__span_dup(&c->spans[j]);
    if (!c->hdr[j]) return fl__fail(c, 0, FL_ENOMEM, "out of memory");
    if (!c->hdr[j][0]) return fl__fail(c, line, FL_EFORMAT, "column %d has an empty name in the header", j + 1);
    float v;
    if (j > 0 || n == 1)
      numeric += fl__parse_num(c->spans[j].s, c->spans[j].n, c->loc, &v) == FL__NUM_OK;
  }
  /* A first line of numbers (after an optional timestamp) is data, and
   * taking it for names would silently lose a row and mislabel every column. */
  if (numeric == (n == 1 ? 1 : n - 1))
    return fl__fail(c, line, FL_EFORMAT, "no header row: the first line holds numbers, not column names");

  fl__named *sorted = malloc((size_t)n * sizeof *sorted);
  if (!sorted) return fl__fail(c, 0, FL_ENOMEM, "out of memory");
  for (int j = 0; j < n; j++) sorted[j] = (fl__named){c->hdr[j], j};
  qsort(sorted, (size_t)n, sizeof *sorted, fl__cmp_named);
  for (int j = 1; j < n; j++) {
    if (strcmp(sorted[j - 1].name, sorted[j].name) == 0) {
      char shown[64];
      fl__show(shown, sizeof shown, sorted[j].name, strlen(sorted[j].name));
      int a = sorted[j - 1].idx + 1, b = sorted[j].idx + 1;
      free(sorted);
      return fl__fail(c, line, FL_EFORMAT, "duplicate column name \"%s\" (columns %d and %d)", shown, a, b);
    }
  }
  free(sorted);
  return 0;
}

/* Splits a data line into c->spans and checks its field count. */
static int fl__split_row(fl__csv *c, const char *ls, const char *le, int line) {
  int bad = 0;
  int n = fl__split(ls, le, c->sep, c->spans, c->nfields + 1, &bad);
  if (n == -1) return fl__fail(c, line, FL_EFORMAT, "column %d: unterminated quote", bad);
  if (n == -2) return fl__fail(c, line, FL_EFORMAT, "column %d: text after the closing quote", bad);
  if (n != c->nfields)
    return fl__fail(c, line, FL_EFORMAT, "expected %d fields as in the header, found %d", c->nfields, n);
  return 0;
}

static int fl__cell_error(const fl__csv *c, int line, int j, int kind) {
  char shown[64];
  const fl__span *sp = &c->spans[j];
  const char *s = sp->s;
  size_t n = sp->n;
  fl__trim(&s, &n);
  fl__show(shown, sizeof shown, s, n);
  char name[64];
  fl__show(name, sizeof name, c->hdr[j], strlen(c->hdr[j]));
  switch (kind) {
  case FL__NUM_INF:
    return fl__fail(c, line, FL_ENONFINITE, "column %d (\"%s\"): infinite value \"%s\"", j + 1, name, shown);
  case FL__NUM_RANGE:
    return fl__fail(c, line, FL_ERANGE, "column %d (\"%s\"): \"%s\" is out of range for a 32-bit float", j + 1,
                    name, shown);
  default:
    return fl__fail(c, line, FL_EFORMAT, "column %d (\"%s\"): cannot parse \"%s\" as a number", j + 1, name,
                    shown);
  }
}

static int fl__csv_parse(const char *buf, size_t len, const char *src, fl_table *t, char *err,
                         size_t errlen) {
  if (!t) return FL_EINVAL;
  memset(t, 0, sizeof *t);
  fl__csv c = {.src = src, .err = err, .errlen = errlen};
  if (!buf && len) return fl__fail(&c, 0, FL_EINVAL, "no buffer given");
  c.loc = newlocale(LC_NUMERIC_MASK, "C", (locale_t)0);
  if (!c.loc) return fl__fail(&c, 0, FL_ENOMEM, "cannot create the C locale");

  int rc = 0;
  float *data = NULL;
  char **stamps = NULL;
  int rows = 0;
  size_t cap = 0;
  const char *p = buf, *e = buf + len, *ls, *le;
  int line = 0;

  if (len >= 3 && memcmp(p, "\xEF\xBB\xBF", 3) == 0) p += 3;
  for (;;) {
    if (p >= e) {
      rc = fl__fail(&c, 0, FL_EFORMAT, "empty file: a header row is required");
      goto done;
    }
    fl__next_line(&p, e, &ls, &le);
    line++;
    if (!fl__is_blank_line(ls, le)) break;
  }
  rc = fl__parse_header(&c, ls, le, line);
  if (rc) goto done;
  int nf = c.nfields;

  /* Whether field 0 is the stamp column: by name, or else by the first data
   * cell, which is looked at without consuming its line. */
  if (strcasecmp(c.hdr[0], "datetime") == 0) {
    c.has_stamps = 1;
  } else {
    const char *q = p, *qs, *qe;
    while (q < e) {
      fl__next_line(&q, e, &qs, &qe);
      if (fl__is_blank_line(qs, qe)) continue;
      int bad;
      fl__span first;
      if (fl__split(qs, qe, c.sep, &first, 1, &bad) > 0) {
        float v;
        if (fl__parse_num(first.s, first.n, c.loc, &v) == FL__NUM_BAD && fl__looks_like_date(first.s, first.n))
          c.has_stamps = 1;
      }
      break;
    }
  }
  int cols = nf - c.has_stamps;
  int off = c.has_stamps;

  /* One allocation for the whole table, sized by an upper bound on the rows:
   * the lines left, and the bytes left over the bytes a row needs at least
   * (its separators and newline), so that a file of empty lines cannot make
   * a wide table allocate gigabytes. */
  size_t rest = (size_t)(e - p), lines = 0;
  for (const char *q = p; q < e; lines++) {
    const char *nl = memchr(q, '\n', (size_t)(e - q));
    q = nl ? nl + 1 : e;
  }
  size_t per_row = (size_t)(nf > 1 ? nf - 1 : 1) + 1;
  cap = rest / per_row + 1;
  if (lines < cap) cap = lines;
  if (cap > (size_t)INT_MAX) cap = (size_t)INT_MAX;
  if (cols > 0 && cap > SIZE_MAX / sizeof(float) / (size_t)cols) {
    rc = fl__fail(&c, 0, FL_ENOMEM, "table too large for memory");
    goto done;
  }
  size_t cells = cap * (size_t)cols;
  data = malloc((cells ? cells : 1) * sizeof *data);
  if (c.has_stamps) stamps = calloc(cap ? cap : 1, sizeof *stamps);
  if (!data || (c.has_stamps && !stamps)) {
    rc = fl__fail(&c, 0, FL_ENOMEM, "out of memory for %zu rows of %d columns", cap, cols);
    goto done;
  }

  while (p < e) {
    fl__next_line(&p, e, &ls, &le);
    line++;
    if (fl__is_blank_line(ls, le)) continue;
    if ((size_t)rows >= cap) {
      /* Unreachable by the bound above; kept so that a wrong bound is an
       * error rather than a buffer overrun. */
      rc = fl__fail(&c, line, FL_ERANGE, "too many rows");
      goto done;
    }
    rc = fl__split_row(&c, ls, le, line);
    if (rc) goto done;
    float *row = data + (size_t)rows * (size_t)cols;
    for (int j = off; j < nf; j++) {
      int k = fl__parse_num(c.spans[j].s, c.spans[j].n, c.loc, &row[j - off]);
      if (k < 0) {
        rc = fl__cell_error(&c, line, j, k);
        goto done;
      }
    }
    if (c.has_stamps) {
      stamps[rows] = fl__span_dup(&c.spans[0]);
      if (!stamps[rows]) {
        rc = fl__fail(&c, 0, FL_ENOMEM, "out of memory");
        goto done;
      }
    }
    rows++;
  }

  /* Give back what the row bound over-estimated. */
  if ((size_t)rows < cap && rows > 0 && cols > 0) {
    float *shrunk = realloc(data, (size_t)rows * (size_t)cols * sizeof *data);
    if (shrunk) data = shrunk;
  }
  t->names = calloc(cols ? (size_t)cols : 1, sizeof *t->names);
  if (!t->names) {
    rc = fl__fail(&c, 0, FL_ENOMEM, "out of memory");
    goto done;
  }
  for (int j = 0; j < cols; j++) {
    t->names[j] = c.hdr[j + off];
    c.hdr[j + off] = NULL;
  }
  t->rows = rows;
  t->cols = cols;
  t->data = data;
  t->stamps = stamps;
  data = NULL;
  stamps = NULL;

done:
  if (stamps)
    for (int i = 0; i < rows; i++) free(stamps[i]);
  free(stamps);
  free(data);
  if (c.hdr)
    for (int j = 0; j < c.nfields; j++) free(c.hdr[j]);
  free(c.hdr);
  free(c.spans);
  freelocale(c.loc);
  if (rc) fl_table_free(t);
  return rc;
}

int fl_csv_parse(const char *buf, size_t len, fl_table *t, char *err, size_t errlen) {
  return fl__csv_parse(buf, len, NULL, t, err, errlen);
}

int fl_csv_read(const char *path, fl_table *t, char *err, size_t errlen) {
  if (!t) return FL_EINVAL;
  memset(t, 0, sizeof *t);
  if (!path) {
    fl__set_err(err, errlen, "no file name given");
    return FL_EINVAL;
  }
  FILE *f = fopen(path, "rb");
  if (!f) {
    fl__set_err(err, errlen, "%s: cannot open: %s", path, strerror(errno));
    return FL_EIO;
  }
  /* The whole file in one buffer, read in large blocks: sized from the file
   * length when there is one, doubled for pipes that have none. */
  size_t cap = 1 << 16, len = 0;
  struct stat st;
  if (fstat(fileno(f), &st) == 0) {
    if (S_ISDIR(st.st_mode)) {
      fclose(f);
      fl__set_err(err, errlen, "%s: is a directory", path);
      return FL_EIO;
    }
    if (S_ISREG(st.st_mode) && st.st_size > 0 && (uintmax_t)st.st_size < SIZE_MAX)
      cap = (size_t)st.st_size + 1;
  }
  char *buf = malloc(cap);
  int rc = 0;
  for (;;) {
    if (!buf) {
      fl__set_err(err, errlen, "%s: out of memory reading the file", path);
      rc = FL_ENOMEM;
      break;
    }
    len += fread(buf + len, 1, cap - len, f);
    if (ferror(f)) {
      fl__set_err(err, errlen, "%s: read error: %s", path, strerror(errno));
      rc = FL_EIO;
      break;
    }
    if (len < cap) break;
    char *grown = cap <= SIZE_MAX / 2 ? realloc(buf, cap * 2) : NULL;
    if (!grown) free(buf);
    buf = grown;
    cap *= 2;
  }
  fclose(f);
  if (rc == 0) rc = fl__csv_parse(buf, len, path, t, err, errlen);
  free(buf);
  return rc;
}

/* ---- writing ----------------------------------------------------------- */

/* Whether a name must be quoted to read back as itself. */
static int fl__needs_quotes(const char *s) {
  size_t n = strlen(s);
  if (n == 0 || fl__blank(s[0]) || fl__blank(s[n - 1])) return 1;
  return strpbrk(s, ",;\"") != NULL;
}

void fl_csv_put_field(FILE *f, const char *s) {
  if (!fl__needs_quotes(s)) {
    fputs(s, f);
    return;
  }
  fputc('"', f);
  for (; *s; s++) {
    if (*s == '"') fputc('"', f);
    fputc(*s, f);
  }
  fputc('"', f);
}

typedef struct {
  const fl_table *t;
  locale_t loc;
} fl__wctx;

static int fl__emit_csv(FILE *f, void *vctx, char *err, size_t errlen) {
  const fl__wctx *w = vctx;
  const fl_table *t = w->t;
  /* uselocale changes only this thread's locale, and only for the duration
   * of the write, so that %.9g always writes '.' as the decimal point. */
  locale_t old = uselocale(w->loc);
  int first = 1;
  if (t->stamps) {
    fputs("datetime", f);
    first = 0;
  }
  for (int j = 0; j < t->cols; j++) {
    if (!first) fputc(',', f);
    fl_csv_put_field(f, t->names[j]);
    first = 0;
  }
  fputc('\n', f);
  int lone = (t->cols + (t->stamps != NULL)) == 1;
  for (int i = 0; i < t->rows; i++) {
    const float *row = t->data + (size_t)i * (size_t)t->cols;
    first = 1;
    if (t->stamps) {
      const char *s = t->stamps[i] ? t->stamps[i] : "";
      fl_csv_put_field(f, s);
      first = 0;
    }
    for (int j = 0; j < t->cols; j++) {
      if (!first) fputc(',', f);
      first = 0;
      if (isnan(row[j])) {
        if (lone) fputs("NaN", f);
      } else {
        fprintf(f, "%.9g", (double)row[j]);
      }
    }
    fputc('\n', f);
    if (ferror(f)) break;
  }
  uselocale(old);
  (void)err;
  (void)errlen;
  return 0;
}

int fl_csv_write(const char *path, const fl_table *t, char *err, size_t errlen) {
  if (!path || !t || t->rows < 0 || t->cols < 0 || (!t->data && t->rows && t->cols) ||
      (!t->names && t->cols)) {
    fl__set_err(err, errlen, "invalid table or path");
    return FL_EINVAL;
  }
  if (t->cols == 0 && !t->stamps) {
    fl__set_err(err, errlen, "%s: a table without columns cannot be written as CSV", path);
    return FL_EINVAL;
  }
  /* Everything the reader would refuse is refused here, before a file is
   * touched, so that a written file always reads back. */
  for (int j = 0; j < t->cols; j++) {
    const char *nm = t->names[j];
    if (!nm || !*nm) {
      fl__set_err(err, errlen, "%s: column %d has no name", path, j + 1);
      return FL_EINVAL;
    }
    if (strpbrk(nm, "\r\n")) {
      fl__set_err(err, errlen, "%s: column %d's name contains a line break", path, j + 1);
      return FL_EINVAL;
    }
    if (t->stamps ? strcmp(nm, "datetime") == 0 : (j == 0 && strcasecmp(nm, "datetime") == 0)) {
      fl__set_err(err, errlen, "%s: numeric column %d may not be named \"%s\": it would read back as timestamps",
                  path, j + 1, nm);
      return FL_EINVAL;
    }
    for (int k = 0; k < j; k++) {
      if (strcmp(t->names[k], nm) == 0) {
        fl__set_err(err, errlen, "%s: duplicate column name \"%s\" (columns %d and %d)", path, nm, k + 1, j + 1);
        return FL_EINVAL;
      }
    }
  }
  if (t->stamps) {
    for (int i = 0; i < t->rows; i++) {
      if (t->stamps[i] && strpbrk(t->stamps[i], "\r\n")) {
        fl__set_err(err, errlen, "%s: the timestamp of row %d contains a line break", path, i + 1);
        return FL_EINVAL;
      }
    }
  }
  size_t n = (size_t)t->rows * (size_t)t->cols;
  for (size_t k = 0; k < n; k++) {
    if (isinf(t->data[k])) {
      fl__set_err(err, errlen, "%s: row %zu, column \"%s\": infinite value", path, k / (size_t)t->cols + 1,
                  t->names[k % (size_t)t->cols]);
      return FL_ENONFINITE;
    }
  }
  fl__wctx w = {t, newlocale(LC_NUMERIC_MASK, "C", (locale_t)0)};
  if (!w.loc) {
    fl__set_err(err, errlen, "cannot create the C locale");
    return FL_ENOMEM;
  }
  int rc = fl__atomic_write(path, fl__emit_csv, &w, err, errlen);
  freelocale(w.loc);
  return rc;
}
