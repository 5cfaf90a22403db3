/* faultline safetensors: see include/faultline/safetensors.h for the contracts. */
#include "faultline/safetensors.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "faultline/error.h"
#include "io_atomic.h"

typedef struct {
  char *name;
  int ndim;
  int64_t shape[FL_ST_MAX_DIMS];
  size_t n;    /* prod(shape) */
  float *data; /* (n), or NULL for a tensor still in the file */
  uint64_t off; /* where a tensor still in the file starts in it */
} fl__tensor;

struct fl_st {
  fl__tensor *t; /* (nt) in insertion order */
  int nt, capt;
  char **keys, **vals; /* (nm) metadata in insertion order */
  int nm, capm;
  int fd; /* the file fl_st_read left the tensors in, or -1 */
};

/* ---- small helpers ----------------------------------------------------- */

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#define FL__BIG_ENDIAN 1
#else
#define FL__BIG_ENDIAN 0
#endif

static uint64_t fl__le64(const uint8_t *p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
  return v;
}

/* Copies n little-endian float32 values from unaligned bytes: memcpy rather
 * than a cast, since a tensor's offset in the buffer need not be aligned. */
static void fl__load_f32(float *dst, const uint8_t *src, size_t n) {
#if FL__BIG_ENDIAN
  for (size_t i = 0; i < n; i++) {
    uint8_t b[4] = {src[4 * i + 3], src[4 * i + 2], src[4 * i + 1], src[4 * i]};
    memcpy(&dst[i], b, 4);
  }
#else
  if (n) memcpy(dst, src, n * sizeof(float));
#endif
}

static void fl__store_f32(FILE *f, const float *src, size_t n) {
#if FL__BIG_ENDIAN
  uint8_t chunk[4096];
  while (n) {
    size_t k = n < sizeof chunk / 4 ? n : sizeof chunk / 4;
    for (size_t i = 0; i < k; i++) {
      uint8_t b[4];
      memcpy(b, &src[i], 4);
      chunk[4 * i] = b[3], chunk[4 * i + 1] = b[2], chunk[4 * i + 2] = b[1], chunk[4 * i + 3] = b[0];
    }
    fwrite(chunk, 4, k, f);
    src += k;
    n -= k;
  }
#else
  if (n) fwrite(src, sizeof(float), n, f);
#endif
}

/* Strict UTF-8 (no overlong forms, no surrogates, nothing past U+10FFFF),
 * because a name that jansson refuses would make the whole file unwritable
 * only at write time, far from the call that added it. */
static int fl__utf8_ok(const char *s) {
  const unsigned char *p = (const unsigned char *)s;
  while (*p) {
    unsigned c = *p;
    int k;
    unsigned min;
    if (c < 0x80) {
      p++;
      continue;
    } else if ((c & 0xe0) == 0xc0) {
      k = 1, min = 0x80, c &= 0x1f;
    } else if ((c & 0xf0) == 0xe0) {
      k = 2, min = 0x800, c &= 0x0f;
    } else if ((c & 0xf8) == 0xf0) {
      k = 3, min = 0x10000, c &= 0x07;
    } else {
      return 0;
    }
    p++;
    for (int i = 0; i < k; i++, p++) {
      if ((*p & 0xc0) != 0x80) return 0;
      c = (c << 6) | (*p & 0x3f);
    }
    if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff)) return 0;
  }
  return 1;
}

/* prod(shape) into *n, or FL_EFORMAT for a negative dimension and FL_ERANGE
 * when the product, in bytes, does not fit in 63 bits. */
static int fl__numel(const int64_t *shape, int ndim, size_t *n) {
  uint64_t prod = 1;
  int zero = 0;
  for (int i = 0; i < ndim; i++) {
    if (shape[i] < 0) return FL_EFORMAT;
    if (shape[i] == 0) zero = 1;
  }
  if (zero) {
    *n = 0;
    return 0;
  }
  const uint64_t limit = (uint64_t)INT64_MAX / 4;
  for (int i = 0; i < ndim; i++) {
    uint64_t d = (uint64_t)shape[i];
    if (prod > limit / d) return FL_ERANGE;
    prod *= d;
  }
  if (prod > SIZE_MAX / sizeof(float)) return FL_ERANGE;
  *n = (size_t)prod;
  return 0;
}

static void fl__fmt_shape(char *dst, size_t cap, const int64_t *shape, int ndim) {
  size_t k = 0;
  k += (size_t)snprintf(dst, cap, "[");
  for (int i = 0; i < ndim && k < cap; i++)
    k += (size_t)snprintf(dst + k, cap - k, i ? ", %" PRId64 : "%" PRId64, shape[i]);
  if (k < cap) snprintf(dst + k, cap - k, "]");
}

static const fl__tensor *fl__find(const fl_st *st, const char *name) {
  if (!st || !name) return NULL;
  for (int i = 0; i < st->nt; i++)
    if (strcmp(st->t[i].name, name) == 0) return &st->t[i];
  return NULL;
}

/* Appends a tensor with uninitialised data of n floats (none if lazy: the
 * data stays in st's file); the caller has checked the name and shape.
 * Returns NULL if out of memory. */
static fl__tensor *fl__append(fl_st *st, const char *name, const int64_t *shape, int ndim, size_t n,
                              int lazy) {
  if (st->nt == st->capt) {
    int cap = st->capt ? st->capt * 2 : 16;
    fl__tensor *grown = realloc(st->t, (size_t)cap * sizeof *grown);
    if (!grown) return NULL;
    st->t = grown;
    st->capt = cap;
  }
  fl__tensor *t = &st->t[st->nt];
  memset(t, 0, sizeof *t);
  t->name = strdup(name);
  t->data = lazy ? NULL : malloc((n ? n : 1) * sizeof(float));
  if (!t->name || (!lazy && !t->data)) {
    free(t->name);
    free(t->data);
    return NULL;
  }
  t->ndim = ndim;
  for (int i = 0; i < ndim; i++) t->shape[i] = shape[i];
  t->n = n;
  st->nt++;
  return t;
}

/* Appends a metadata pair; the caller has checked that the key is new. */
static int fl__append_meta(fl_st *st, const char *key, const char *value) {
  if (st->nm == st->capm) {
    int cap = st->capm ? st->capm * 2 : 8;
    char **k = realloc(st->keys, (size_t)cap * sizeof *k);
    if (!k) return FL_ENOMEM;
    st->keys = k;
    char **v = realloc(st->vals, (size_t)cap * sizeof *v);
    if (!v) return FL_ENOMEM;
    st->vals = v;
    st->capm = cap;
  }
  char *kc = strdup(key), *vc = strdup(value);
  if (!kc || !vc) {
    free(kc);
    free(vc);
    return FL_ENOMEM;
  }
  st->keys[st->nm] = kc;
  st->vals[st->nm] = vc;
  st->nm++;
  return 0;
}

/* ---- the set ----------------------------------------------------------- */

fl_st *fl_st_new(void) {
  fl_st *st = calloc(1, sizeof(fl_st));
  if (st) st->fd = -1;
  return st;
}

void fl_st_free(fl_st *st) {
  if (!st) return;
  if (st->fd >= 0) close(st->fd);
  for (int i = 0; i < st->nt; i++) {
    free(st->t[i].name);
    free(st->t[i].data);
  }
  for (int i = 0; i < st->nm; i++) {
    free(st->keys[i]);
    free(st->vals[i]);
  }
  free(st->t);
  free(st->keys);
  free(st->vals);
  free(st);
}

int fl_st_add(fl_st *st, const char *name, const float *data, const int64_t *shape, int ndim) {
  if (!st || !name || !*name || ndim < 0 || ndim > FL_ST_MAX_DIMS || (ndim > 0 && !shape)) return FL_EINVAL;
  if (strcmp(name, "__metadata__") == 0 || !fl__utf8_ok(name) || fl__find(st, name)) return FL_EINVAL;
  size_t n;
  int rc = fl__numel(shape, ndim, &n);
  if (rc == FL_EFORMAT) return FL_EINVAL;
  if (rc) return rc;
  if (n && !data) return FL_EINVAL;
  fl__tensor *t = fl__append(st, name, shape, ndim, n, 0);
  if (!t) return FL_ENOMEM;
  if (n) memcpy(t->data, data, n * sizeof(float));
  return 0;
}

int fl_st_set_meta(fl_st *st, const char *key, const char *value) {
  if (!st || !key || !value || !fl__utf8_ok(key) || !fl__utf8_ok(value)) return FL_EINVAL;
  for (int i = 0; i < st->nm; i++) {
    if (strcmp(st->keys[i], key) == 0) {
      char *v = strdup(value);
      if (!v) return FL_ENOMEM;
      free(st->vals[i]);
      st->vals[i] = v;
      return 0;
    }
  }
  return fl__append_meta(st, key, value);
}

const char *fl_st_meta(const fl_st *st, const char *key) {
  if (!st || !key) return NULL;
  for (int i = 0; i < st->nm; i++)
    if (strcmp(st->keys[i], key) == 0) return st->vals[i];
  return NULL;
}

int fl_st_meta_count(const fl_st *st) { return st ? st->nm : 0; }

const char *fl_st_meta_key(const fl_st *st, int i) {
  return st && i >= 0 && i < st->nm ? st->keys[i] : NULL;
}

int fl_st_count(const fl_st *st) { return st ? st->nt : 0; }

const char *fl_st_name(const fl_st *st, int i) { return st && i >= 0 && i < st->nt ? st->t[i].name : NULL; }

int fl_st_shape(const fl_st *st, const char *name, int64_t *shape, int *ndim) {
  const fl__tensor *t = fl__find(st, name);
  if (!t) return FL_ENOTFOUND;
  if (shape)
    for (int i = 0; i < t->ndim; i++) shape[i] = t->shape[i];
  if (ndim) *ndim = t->ndim;
  return 0;
}

/* Reads a tensor that fl_st_read left in the file into dst (t->n floats).
 * The descriptor stays on the file that was opened, so a model replaced by
 * rename meanwhile still reads as it was; FL_EIO if it was cut short. */
static int fl__load_lazy(const fl_st *st, const fl__tensor *t, float *dst) {
  uint8_t *p = (uint8_t *)dst;
  size_t left = t->n * sizeof(float);
  off_t at = (off_t)t->off;
  while (left) {
    ssize_t k = pread(st->fd, p, left, at);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) return FL_EIO;
    p += k, at += k, left -= (size_t)k;
  }
#if FL__BIG_ENDIAN
  for (size_t i = 0; i < t->n; i++) {
    uint8_t *b = (uint8_t *)&dst[i], c0 = b[0], c1 = b[1];
    b[0] = b[3], b[1] = b[2], b[2] = c1, b[3] = c0;
  }
#endif
  return 0;
}

int fl_st_get(const fl_st *st, const char *name, float *dst, const int64_t *shape, int ndim, char *err,
              size_t errlen) {
  if (!st || !name || ndim < 0 || (ndim > 0 && !shape)) {
    fl__set_err(err, errlen, "invalid argument");
    return FL_EINVAL;
  }
  const fl__tensor *t = fl__find(st, name);
  if (!t) {
    fl__set_err(err, errlen, "no tensor named \"%s\"", name);
    return FL_ENOTFOUND;
  }
  int same = t->ndim == ndim;
  for (int i = 0; same && i < ndim; i++) same = t->shape[i] == shape[i];
  if (!same) {
    char want[256], have[256];
    fl__fmt_shape(want, sizeof want, shape, ndim);
    fl__fmt_shape(have, sizeof have, t->shape, t->ndim);
    fl__set_err(err, errlen, "tensor \"%s\" has shape %s, expected %s", name, have, want);
    return FL_EMISMATCH;
  }
  if (dst && t->n) {
    if (t->data) memcpy(dst, t->data, t->n * sizeof(float));
    else if (fl__load_lazy(st, t, dst)) {
      fl__set_err(err, errlen, "tensor \"%s\": the file changed while being read", name);
      return FL_EIO;
    }
  }
  return 0;
}

/* ---- writing ----------------------------------------------------------- */

typedef struct {
  const fl_st *st;
  const char *header; /* (hlen) JSON, padded with spaces */
  size_t hlen;
} fl__wctx;

static int fl__emit_st(FILE *f, void *vctx, char *err, size_t errlen) {
  const fl__wctx *w = vctx;
  uint8_t size[8];
  for (int i = 0; i < 8; i++) size[i] = (uint8_t)((uint64_t)w->hlen >> (8 * i));
  fwrite(size, 1, 8, f);
  fwrite(w->header, 1, w->hlen, f);
  for (int i = 0; i < w->st->nt; i++) {
    const fl__tensor *t = &w->st->t[i];
    if (t->data || !t->n) {
      fl__store_f32(f, t->data, t->n);
      continue;
    }
    /* Still in the file it was read from. */
    float *tmp = malloc(t->n * sizeof(float));
    int rc = !tmp ? FL_ENOMEM : fl__load_lazy(w->st, t, tmp);
    if (!rc) fl__store_f32(f, tmp, t->n);
    free(tmp);
    if (rc) {
      fl__set_err(err, errlen, "tensor \"%s\": %s", t->name,
                  rc == FL_ENOMEM ? "out of memory" : "its source file changed while being read");
      return rc;
    }
  }
  return 0;
}

/* Builds the header: metadata first (as the reference implementation
 * writes it), then the tensors in order, laid end to end. */
static char *fl__build_header(const fl_st *st, size_t *hlen) {
  json_t *root = json_object();
  if (!root) return NULL;
  int ok = 1;
  if (st->nm) {
    json_t *meta = json_object();
    ok = meta && json_object_set_new(root, "__metadata__", meta) == 0;
    for (int i = 0; ok && i < st->nm; i++) ok = json_object_set_new(meta, st->keys[i], json_string(st->vals[i])) == 0;
  }
  uint64_t off = 0;
  for (int i = 0; ok && i < st->nt; i++) {
    const fl__tensor *t = &st->t[i];
    /* Each node is attached to the tree as soon as it exists, so that one
     * json_decref(root) frees everything whichever step fails. */
    json_t *e = json_object();
    if (!e || json_object_set_new(root, t->name, e) != 0) {
      ok = 0;
      break;
    }
    json_t *shape = json_array(), *offs = json_array();
    ok = json_object_set_new(e, "dtype", json_string("F32")) == 0;
    ok = json_object_set_new(e, "shape", shape) == 0 && ok;
    ok = json_object_set_new(e, "data_offsets", offs) == 0 && ok;
    for (int d = 0; ok && d < t->ndim; d++) ok = json_array_append_new(shape, json_integer(t->shape[d])) == 0;
    uint64_t end = off + 4 * (uint64_t)t->n;
    ok = ok && json_array_append_new(offs, json_integer((json_int_t)off)) == 0 &&
         json_array_append_new(offs, json_integer((json_int_t)end)) == 0;
    off = end;
  }
  /* json_dumpb into our own buffer rather than json_dumps, whose result
   * belongs to whatever allocator the application gave jansson. */
  size_t n = ok ? json_dumpb(root, NULL, 0, JSON_COMPACT) : 0;
  char *out = NULL;
  size_t padded = (n + 7) & ~(size_t)7;
  if (n) out = malloc(padded + 1);
  if (out && json_dumpb(root, out, n, JSON_COMPACT) != n) {
    free(out);
    out = NULL;
  }
  json_decref(root);
  if (!out) return NULL;
  /* Pad with spaces so that the data begins 8-byte aligned: the 8-byte size
   * plus a multiple of 8. */
  memset(out + n, ' ', padded - n);
  out[padded] = '\0';
  *hlen = padded;
  return out;
}

int fl_st_write(const fl_st *st, const char *path, char *err, size_t errlen) {
  if (!st || !path || !*path) {
    fl__set_err(err, errlen, "invalid argument");
    return FL_EINVAL;
  }
  fl__wctx w = {st, NULL, 0};
  char *header = fl__build_header(st, &w.hlen);
  if (!header) {
    fl__set_err(err, errlen, "%s: out of memory building the header", path);
    return FL_ENOMEM;
  }
  w.header = header;
  int rc = fl__atomic_write(path, fl__emit_st, &w, err, errlen);
  free(header);
  return rc;
}

/* ---- reading ----------------------------------------------------------- */

/* A tensor's entry from the header, before its data is copied. */
typedef struct {
  const char *name; /* borrowed from the JSON */
  int ndim;
  int64_t shape[FL_ST_MAX_DIMS];
  size_t n;
  uint64_t begin, end;
} fl__entry;

static int fl__cmp_entry(const void *a, const void *b) {
  const fl__entry *x = *(const fl__entry *const *)a, *y = *(const fl__entry *const *)b;
  if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
  if (x->end != y->end) return x->end < y->end ? -1 : 1;
  return 0;
}

/* Reads one tensor entry and checks it against itself and the buffer size. */
static int fl__parse_entry(const char *name, json_t *v, uint64_t dlen, fl__entry *e, char *err, size_t errlen) {
  memset(e, 0, sizeof *e);
  e->name = name;
  if (!json_is_object(v)) {
    fl__set_err(err, errlen, "tensor \"%s\": entry is not a JSON object", name);
    return FL_EFORMAT;
  }
  json_t *dtype = json_object_get(v, "dtype");
  json_t *shape = json_object_get(v, "shape");
  json_t *offs = json_object_get(v, "data_offsets");
  if (!json_is_string(dtype)) {
    fl__set_err(err, errlen, "tensor \"%s\": dtype missing or not a string", name);
    return FL_EFORMAT;
  }
  if (strcmp(json_string_value(dtype), "F32") != 0) {
    fl__set_err(err, errlen, "tensor \"%s\" has dtype %.32s; only F32 is supported", name,
                json_string_value(dtype));
    return FL_EFORMAT;
  }
  if (!json_is_array(shape)) {
    fl__set_err(err, errlen, "tensor \"%s\": shape missing or not an array", name);
    return FL_EFORMAT;
  }
  size_t nd = json_array_size(shape);
  if (nd > FL_ST_MAX_DIMS) {
    fl__set_err(err, errlen, "tensor \"%s\" has %zu dimensions; at most %d are supported", name, nd,
                FL_ST_MAX_DIMS);
    return FL_ERANGE;
  }
  e->ndim = (int)nd;
  for (size_t i = 0; i < nd; i++) {
    json_t *d = json_array_get(shape, i);
    if (!json_is_integer(d)) {
      fl__set_err(err, errlen, "tensor \"%s\": shape[%zu] is not an integer", name, i);
      return FL_EFORMAT;
    }
    if (json_integer_value(d) < 0) {
      fl__set_err(err, errlen, "tensor \"%s\": shape[%zu] is negative (%" JSON_INTEGER_FORMAT ")", name, i,
                  json_integer_value(d));
      return FL_EFORMAT;
    }
    e->shape[i] = (int64_t)json_integer_value(d);
  }
  char shown[256];
  fl__fmt_shape(shown, sizeof shown, e->shape, e->ndim);
  if (fl__numel(e->shape, e->ndim, &e->n) != 0) {
    fl__set_err(err, errlen, "tensor \"%s\": shape %s has too many elements", name, shown);
    return FL_ERANGE;
  }
  if (!json_is_array(offs) || json_array_size(offs) != 2 || !json_is_integer(json_array_get(offs, 0)) ||
      !json_is_integer(json_array_get(offs, 1))) {
    fl__set_err(err, errlen, "tensor \"%s\": data_offsets missing or not [begin, end]", name);
    return FL_EFORMAT;
  }
  json_int_t b = json_integer_value(json_array_get(offs, 0));
  json_int_t en = json_integer_value(json_array_get(offs, 1));
  if (b < 0 || en < b) {
    fl__set_err(err, errlen,
                "tensor \"%s\": data_offsets [%" JSON_INTEGER_FORMAT ", %" JSON_INTEGER_FORMAT
                "] are not 0 <= begin <= end",
                name, b, en);
    return FL_EFORMAT;
  }
  e->begin = (uint64_t)b;
  e->end = (uint64_t)en;
  if (e->end - e->begin != 4 * (uint64_t)e->n) {
    fl__set_err(err, errlen,
                "tensor \"%s\": data_offsets [%" PRIu64 ", %" PRIu64 "] span %" PRIu64
                " bytes but shape %s needs %" PRIu64,
                name, e->begin, e->end, e->end - e->begin, shown, 4 * (uint64_t)e->n);
    return FL_EFORMAT;
  }
  if (e->end > dlen) {
    fl__set_err(err, errlen,
                "tensor \"%s\": data ends at byte %" PRIu64 " of the buffer, which holds only %" PRIu64
                " bytes (truncated file?)",
                name, e->end, dlen);
    return FL_ETRUNC;
  }
  return 0;
}

/* fl_st_parse's work.  With fd >= 0 only the first min(len, 8 + header)
 * bytes of the len at buf are there: the tensors are validated against len
 * but stay in the file fd, which the set then owns (fl_st_read). */
static int fl__parse(const uint8_t *buf, size_t len, int fd, fl_st **out, char *err,
                     size_t errlen) {
  *out = NULL;
  if (!buf && len) {
    fl__set_err(err, errlen, "invalid argument");
    return FL_EINVAL;
  }
  if (len < 8) {
    fl__set_err(err, errlen, "file is %zu bytes, shorter than the 8-byte header size", len);
    return FL_ETRUNC;
  }
  uint64_t hlen = fl__le64(buf);
  if (hlen > FL_ST_MAX_HEADER) {
    fl__set_err(err, errlen, "header size %" PRIu64 " is absurd (more than %u bytes)", hlen, FL_ST_MAX_HEADER);
    return FL_EFORMAT;
  }
  if (hlen > len - 8) {
    fl__set_err(err, errlen, "header size %" PRIu64 " is larger than the %zu bytes that follow it", hlen, len - 8);
    return FL_ETRUNC;
  }
  const uint8_t *data = buf + 8 + hlen;
  uint64_t dlen = len - 8 - hlen;
  int lazy = fd >= 0;

  json_error_t je;
  json_t *root = json_loadb((const char *)buf + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &je);
  if (!root) {
    fl__set_err(err, errlen, "header is not valid JSON: %s (at byte %d of the header)", je.text, je.position);
    return FL_EFORMAT;
  }
  int rc = 0;
  fl_st *st = NULL;
  fl__entry *entries = NULL;
  fl__entry **order = NULL;
  if (!json_is_object(root)) {
    fl__set_err(err, errlen, "header is not a JSON object");
    rc = FL_EFORMAT;
    goto done;
  }
  st = fl_st_new();
  size_t cap = json_object_size(root);
  entries = malloc((cap ? cap : 1) * sizeof *entries);
  order = malloc((cap ? cap : 1) * sizeof *order);
  if (!st || !entries || !order) {
    fl__set_err(err, errlen, "out of memory");
    rc = FL_ENOMEM;
    goto done;
  }

  /* First every entry on its own, then the layout as a whole, and only then
   * the copies: nothing is allocated for a tensor of an invalid file. */
  size_t ne = 0;
  const char *key;
  json_t *v;
  json_object_foreach(root, key, v) {
    if (strcmp(key, "__metadata__") == 0) {
      if (!json_is_object(v)) {
        fl__set_err(err, errlen, "__metadata__ is not a JSON object");
        rc = FL_EFORMAT;
        goto done;
      }
      const char *mk;
      json_t *mv;
      json_object_foreach(v, mk, mv) {
        if (!json_is_string(mv)) {
          fl__set_err(err, errlen, "metadata \"%s\" is not a string", mk);
          rc = FL_EFORMAT;
          goto done;
        }
        /* JSON_REJECT_DUPLICATES already made the keys unique. */
        if ((rc = fl__append_meta(st, mk, json_string_value(mv))) != 0) {
          fl__set_err(err, errlen, "out of memory");
          goto done;
        }
      }
      continue;
    }
    rc = fl__parse_entry(key, v, dlen, &entries[ne], err, errlen);
    if (rc) goto done;
    order[ne] = &entries[ne];
    ne++;
  }

  qsort(order, ne, sizeof *order, fl__cmp_entry);
  uint64_t expect = 0;
  for (size_t i = 0; i < ne; i++) {
    const fl__entry *e = order[i];
    if (e->begin < expect) {
      fl__set_err(err, errlen, "malformed: tensors \"%s\" and \"%s\" overlap in the buffer", order[i - 1]->name,
                  e->name);
      rc = FL_EFORMAT;
      goto done;
    }
    if (e->begin > expect) {
      if (i)
        fl__set_err(err, errlen, "malformed: %" PRIu64 " unused bytes between tensors \"%s\" and \"%s\"",
                    e->begin - expect, order[i - 1]->name, e->name);
      else
        fl__set_err(err, errlen, "malformed: %" PRIu64 " unused bytes before tensor \"%s\"", e->begin, e->name);
      rc = FL_EFORMAT;
      goto done;
    }
    expect = e->end;
  }
  if (expect != dlen) {
    fl__set_err(err, errlen, "malformed: %" PRIu64 " bytes after the last tensor are not part of any tensor",
                dlen - expect);
    rc = FL_EFORMAT;
    goto done;
  }

  for (size_t i = 0; i < ne; i++) {
    const fl__entry *e = &entries[i];
    fl__tensor *t = fl__append(st, e->name, e->shape, e->ndim, e->n, lazy);
    if (!t) {
      fl__set_err(err, errlen, "out of memory for tensor \"%s\"", e->name);
      rc = FL_ENOMEM;
      goto done;
    }
    if (lazy) t->off = 8 + hlen + e->begin;
    else fl__load_f32(t->data, data + e->begin, e->n);
  }
  if (lazy) st->fd = fd;

done:
  free(order);
  free(entries);
  json_decref(root);
  if (rc) {
    fl_st_free(st);
    return rc;
  }
  *out = st;
  return 0;
}

int fl_st_parse(const uint8_t *buf, size_t len, fl_st **out, char *err, size_t errlen) {
  if (!out) return FL_EINVAL;
  return fl__parse(buf, len, -1, out, err, errlen);
}

/* Reads exactly n bytes at offset at; 0, or -1 on an error or a short file. */
static int fl__pread_all(int fd, uint8_t *p, size_t n, off_t at) {
  while (n) {
    ssize_t k = pread(fd, p, n, at);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) return -1;
    p += k, at += k, n -= (size_t)k;
  }
  return 0;
}

/* Only the header is read here; fl_st_get reads each tensor from the file
 * straight into the caller's buffer.  A model is loaded so into its
 * parameters without a copy of the file or of the tensors beside them: the
 * daemon's resident peak while loading is the model's size, not three
 * times it. */
int fl_st_read(const char *path, fl_st **out, char *err, size_t errlen) {
  if (!out) return FL_EINVAL;
  *out = NULL;
  if (!path) {
    fl__set_err(err, errlen, "no file name given");
    return FL_EINVAL;
  }
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    fl__set_err(err, errlen, "%s: cannot open: %s", path, strerror(errno));
    return FL_EIO;
  }
  struct stat sb;
  if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
    fl__set_err(err, errlen, "%s: not a regular file", path);
    close(fd);
    return FL_EIO;
  }
  if ((uintmax_t)sb.st_size > SIZE_MAX - 1) {
    fl__set_err(err, errlen, "%s: too large to read", path);
    close(fd);
    return FL_ENOMEM;
  }
  size_t len = (size_t)sb.st_size, have = len < 8 ? len : 8;
  uint8_t size[8];
  /* The header: as much of it as the file holds and the limit allows;
   * fl__parse says what is wrong with a short or absurd one. */
  uint8_t *buf = NULL;
  int rc = fl__pread_all(fd, size, have, 0) ? FL_EIO : 0;
  if (!rc && have == 8) {
    uint64_t hlen = fl__le64(size);
    if (hlen <= FL_ST_MAX_HEADER && hlen <= len - 8) have = 8 + (size_t)hlen;
  }
  if (!rc && !(buf = malloc(have ? have : 1))) {
    fl__set_err(err, errlen, "%s: out of memory for its header", path);
    close(fd);
    return FL_ENOMEM;
  }
  if (!rc && fl__pread_all(fd, buf, have, 0)) rc = FL_EIO;
  if (rc) {
    fl__set_err(err, errlen, "%s: read error: %s", path, errno ? strerror(errno) : "file shrank");
    free(buf);
    close(fd);
    return FL_EIO;
  }
  char inner[512];
  rc = fl__parse(buf, len, fd, out, inner, sizeof inner);
  free(buf);
  if (rc) {
    close(fd);
    fl__set_err(err, errlen, "%s: %s", path, inner);
  }
  return rc;
}
