/* Internal to libfaultline: crash-safe replacement of a file, shared by the
 * modules that write files (csv, safetensors) so that the fsync and rename
 * dance is written, and reviewed, once.  Not installed. */
#ifndef FAULTLINE_IO_ATOMIC_H
#define FAULTLINE_IO_ATOMIC_H

#include <stddef.h>
#include <stdio.h>

#if defined(__GNUC__)
#define FL__HIDDEN __attribute__((visibility("hidden")))
#else
#define FL__HIDDEN
#endif

/* Writes the file's content into f.  Returns 0 or a negative FL_E* code; it
 * may ignore fwrite's results, since the caller checks the stream's error
 * flag afterwards, but should fill err when it fails for another reason. */
typedef int (*fl__emit_fn)(FILE *f, void *ctx, char *err, size_t errlen);

/* Runs emit on "<path>.tmp.<pid>", flushes and fsyncs it, renames it over
 * path and fsyncs the directory, so that a crash leaves either the old file
 * or the complete new one.  On any failure before the rename the temporary
 * file is removed.  Returns 0, emit's error, or FL_EIO / FL_ENOMEM with err
 * filled. */
FL__HIDDEN int fl__atomic_write(const char *path, fl__emit_fn emit, void *ctx,
                                char *err, size_t errlen);

/* snprintf into err when err is non-NULL and errlen > 0. */
FL__HIDDEN void fl__set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
