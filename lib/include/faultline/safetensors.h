/* faultline safetensors: model files in the format PyTorch and Hugging Face
 * use, so that a faultline model can be opened and checked from Python.
 *
 * Layout: an 8-byte little-endian u64 N, then N bytes of JSON header
 *
 *   {"__metadata__": {"key": "string value", ...},
 *    "name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...}
 *
 * padded with spaces so that the data starts 8-byte aligned, then the byte
 * buffer, where each tensor's little-endian data lies at [begin, end) relative
 * to the buffer's start.  The tensors tile the buffer exactly: no gaps, no
 * overlaps, nothing after the last one.
 *
 * An fl_st is an in-memory set of named float32 tensors plus string metadata;
 * it owns copies of everything added to it.  Tensor and metadata order is
 * the order of insertion (or of the file's header), and the file writes
 * tensors in that order. */
#ifndef FAULTLINE_SAFETENSORS_H
#define FAULTLINE_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

/* The most dimensions a tensor may have. */
#define FL_ST_MAX_DIMS 8

/* Headers larger than this are refused as absurd rather than allocated. */
#define FL_ST_MAX_HEADER (100u * 1000u * 1000u)

typedef struct fl_st fl_st; /* opaque: an in-memory set of named tensors plus string metadata */

/* An empty set, or NULL if out of memory. */
fl_st *fl_st_new(void);

/* Frees the set and everything it owns.  st may be NULL. */
void fl_st_free(fl_st *st);

/* Adds a copy of a float32 tensor of shape (shape[0], ..., shape[ndim-1]);
 * ndim is 0 (a scalar, one value) to FL_ST_MAX_DIMS, every dimension >= 0,
 * and data holds their product of values (data may be NULL only if that is
 * 0).  The name must be non-empty valid UTF-8, not "__metadata__", and not
 * already in the set.  Returns FL_EINVAL for any of those, FL_ERANGE if the
 * byte size overflows, FL_ENOMEM. */
int fl_st_add(fl_st *st, const char *name, const float *data, const int64_t *shape, int ndim);

/* Sets a metadata string, replacing any previous value for the key.  Key and
 * value must be valid UTF-8 (FL_EINVAL otherwise).  Returns 0, FL_EINVAL or
 * FL_ENOMEM. */
int fl_st_set_meta(fl_st *st, const char *key, const char *value);

/* The value for key, owned by the set and valid until the key is set again
 * or the set freed; NULL if absent. */
const char *fl_st_meta(const fl_st *st, const char *key);

/* Iterates over the metadata: count, and the i-th key (NULL out of range). */
int fl_st_meta_count(const fl_st *st);
const char *fl_st_meta_key(const fl_st *st, int i);

/* Writes the set to path atomically: to "<path>.tmp.<pid>", fflush and
 * fsync, rename over path, fsync the directory, so that a crash never leaves
 * a torn model; on failure the temporary file is removed.  Two threads of one
 * process must not write the same path at once.  Returns 0, FL_EINVAL,
 * FL_ENOMEM, or FL_EIO with err (errlen bytes, may be NULL) saying why. */
int fl_st_write(const fl_st *st, const char *path, char *err, size_t errlen);

/* Reads a file into a new set (*out, to free with fl_st_free; NULL on
 * error).  Everything is validated and nothing outside the file is read; see
 * fl_st_parse for the errors.  FL_EIO if the file cannot be read.  Only the
 * header is read here: the set keeps the file open and fl_st_get (or
 * fl_st_write) reads each tensor from it when asked, so that a caller
 * copying tensors into its own buffers never holds a second copy.  A file
 * replaced by rename meanwhile still reads as it was; one cut short in place
 * makes fl_st_get return FL_EIO. */
int fl_st_read(const char *path, fl_st **out, char *err, size_t errlen);

/* As fl_st_read, from len bytes at buf.  Errors, each with a sentence in err
 * that names the offending tensor or key:
 *   FL_ETRUNC    shorter than 8 bytes, header longer than the data that
 *                follows it, a tensor's data past the end of the buffer
 *   FL_EFORMAT   header size over FL_ST_MAX_HEADER, header not JSON or not
 *                an object, a tensor entry without dtype/shape/data_offsets
 *                of the right JSON types, a dtype other than F32, a negative
 *                dimension, data_offsets not [begin <= end] or of a size
 *                other than 4 * prod(shape), tensors that overlap or leave
 *                gaps or trailing bytes, non-string metadata values
 *   FL_ERANGE    more than FL_ST_MAX_DIMS dimensions, prod(shape) overflows
 *   FL_ENOMEM */
int fl_st_parse(const uint8_t *buf, size_t len, fl_st **out, char *err, size_t errlen);

/* Copies tensor name into dst after checking that its shape is exactly
 * (shape[0], ..., shape[ndim-1]).  Returns FL_ENOTFOUND if there is no such
 * tensor, FL_EMISMATCH if the shape differs, with err naming the expected and
 * the actual shape, e.g.
 *   tensor "enc.0.weight" has shape [16, 3, 5], expected [16, 4, 5]
 * dst may be NULL to only check the shape.  FL_EIO if the tensor is still in
 * the file fl_st_read opened and that file was cut short since. */
int fl_st_get(const fl_st *st, const char *name, float *dst, const int64_t *shape, int ndim, char *err,
              size_t errlen);

/* Iterates over the tensors: how many, and the i-th name (NULL out of range),
 * in insertion or file order. */
int fl_st_count(const fl_st *st);
const char *fl_st_name(const fl_st *st, int i);

/* The shape of tensor name into shape (room for FL_ST_MAX_DIMS) and *ndim.
 * Returns FL_ENOTFOUND if absent. */
int fl_st_shape(const fl_st *st, const char *name, int64_t *shape, int *ndim);

#endif
