/* faultline csv: numeric tables from and to CSV files.
 *
 * A table is what the trainer and the simulator exchange with the outside
 * world: named numeric columns, one row per sample, and optionally the text of
 * a leading timestamp column.  Timestamps stay text because the library never
 * needs to do arithmetic on them; it only carries them through so that a
 * corrected file lines up with its source.
 *
 * Missing values are NaN everywhere, never 0: a 0 is a plausible sensor
 * reading, and a model that read gaps as zeros would learn them. */
#ifndef FAULTLINE_CSV_H
#define FAULTLINE_CSV_H

#include <stddef.h>
#include <stdio.h>

typedef struct {
  int rows, cols; /* numeric columns only */
  char **names;   /* (cols) column names from the header */
  float *data;    /* (rows, cols) row-major; NaN = missing */
  char **stamps;  /* (rows) the leading datetime column's text, or NULL if the file has none */
} fl_table;

/* Allocates a table of rows x cols values, all NaN (missing until the caller
 * sets them), with every name NULL and no stamps.  rows and cols may be 0.
 * The table must not already own memory: call fl_table_free first.  Returns
 * FL_EINVAL for negative sizes, FL_ENOMEM if the allocation fails (the table
 * is then left empty). */
int fl_table_alloc(fl_table *t, int rows, int cols);

/* Copies name into column col's name, replacing any previous one.  Returns
 * FL_EINVAL if col is out of range or name is NULL, FL_ENOMEM. */
int fl_table_set_name(fl_table *t, int col, const char *name);

/* Copies stamp into row row's timestamp, creating the stamps array (every
 * other row "") on first use, so that fl_csv_write writes a datetime column.
 * Returns FL_EINVAL if row is out of range or stamp is NULL, FL_ENOMEM. */
int fl_table_set_stamp(fl_table *t, int row, const char *stamp);

/* Frees everything the table owns and leaves it zeroed, so that freeing twice
 * or freeing a zero-initialised table is harmless.  t may be NULL. */
void fl_table_free(fl_table *t);

/* The index of the numeric column with exactly this name, or FL_ENOTFOUND. */
int fl_table_col(const fl_table *t, const char *name);

/* Reads a CSV file into t, which must not own memory (it is overwritten).
 *
 * Format: a header row of column names is required.  The separator is ';' or
 * ',', whichever occurs more often (outside quotes) in the header line.
 * Header names may be quoted ("a;b", with "" for a quote) and must be
 * non-empty and distinct.  A leading column named "datetime" (any case), or
 * whose first data cell is not a number but looks like a date or time, is
 * kept as text in t->stamps; otherwise t->stamps is NULL.  Every other cell
 * must be a decimal number (surrounding spaces and tabs are ignored), or
 * empty, "NaN", "nan" or "NA" (any case), which all read as NaN.  Infinite
 * values and values beyond float range are rejected.  CRLF and LF line ends
 * are both accepted, the last line may lack its newline, a UTF-8 byte order
 * mark is skipped, and completely empty lines are skipped (as pandas does),
 * so a one-column file must spell a missing value "NaN".  A quoted field may
 * not span lines.  Numbers are parsed in the C locale whatever the caller's
 * locale is.
 *
 * On error t is left empty and err (errlen bytes, may be NULL) receives a
 * sentence naming the file, the 1-based line and, for a cell, its 1-based
 * position among the line's fields and the column name, e.g.
 *   data.csv:17: column 5 ("Pressure"): cannot parse "1.2.3" as a number
 * Returns FL_EIO if the file cannot be read, FL_EFORMAT for malformed content,
 * FL_ENONFINITE for an infinite value, FL_ERANGE for a value beyond float
 * range or a table too large for int sizes, FL_ENOMEM. */
int fl_csv_read(const char *path, fl_table *t, char *err, size_t errlen);

/* As fl_csv_read, from len bytes at buf (need not be NUL-terminated; never
 * read past len).  Error messages start with "line N:" instead of a path. */
int fl_csv_parse(const char *buf, size_t len, fl_table *t, char *err, size_t errlen);

/* Writes t as a ','-separated CSV file with a header row: a "datetime" column
 * first if t->stamps is set, then the numeric columns, floats with %.9g (so
 * that they read back bit for bit) in the C locale, NaN as an empty cell
 * (or "NaN" when it is a row's only field, since an empty line would be
 * skipped on reading).  Names and stamps that are empty or contain ',',
 * ';', '"' or blanks at either end are quoted.  What the reader would refuse
 * is refused here (FL_EINVAL), before any file is touched: an unset, empty
 * or duplicate name, a line break in a name or stamp, a first numeric column
 * named "datetime" (it would read back as timestamps), a table with no
 * column at all; infinite values give FL_ENONFINITE.  So a table written
 * reads back equal (every float bit for bit, NaN as NaN).
 *
 * The write is atomic: the data goes to "<path>.tmp.<pid>", is flushed and
 * fsync'ed, renamed over path and the directory is fsync'ed, so a crash
 * leaves either the old file or the new one; on failure the temporary file
 * is removed.  Two threads of one process must not write the same path at
 * once.  Returns FL_EINVAL, FL_ENONFINITE, FL_EIO (err says why), FL_ENOMEM. */
int fl_csv_write(const char *path, const fl_table *t, char *err, size_t errlen);

/* Writes one text field (a name or a stamp) to f as fl_csv_write does:
 * quoted, with quotes doubled, when a reader would otherwise split or trim
 * it; for callers that write CSV rows of their own. */
void fl_csv_put_field(FILE *f, const char *s);

#endif
