/* faultline io_atomic: see io_atomic.h. */
#include "io_atomic.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "faultline/error.h"

void fl__set_err(char *err, size_t errlen, const char *fmt, ...) {
  if (!err || errlen == 0) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, errlen, fmt, ap);
  va_end(ap);
}

/* fsyncs the directory that holds path, because a rename is only durable
 * once the directory entry itself has reached the disk. */
static int fl__fsync_dir(const char *path) {
  const char *slash = strrchr(path, '/');
  char *dir;
  if (!slash) {
    dir = strdup(".");
  } else if (slash == path) {
    dir = strdup("/");
  } else {
    dir = strndup(path, (size_t)(slash - path));
  }
  if (!dir) return ENOMEM;
  int rc = 0;
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) {
    rc = errno;
  } else {
    /* Some file systems cannot fsync a directory and say so with EINVAL;
     * there is nothing better to do on them, so that is not a failure. */
    if (fsync(fd) != 0 && errno != EINVAL) rc = errno;
    close(fd);
  }
  free(dir);
  return rc;
}

int fl__atomic_write(const char *path, fl__emit_fn emit, void *ctx, char *err,
                     size_t errlen) {
  if (!path || !*path || !emit) {
    fl__set_err(err, errlen, "no file name given");
    return FL_EINVAL;
  }
  size_t n = strlen(path) + 32;
  char *tmp = malloc(n);
  if (!tmp) {
    fl__set_err(err, errlen, "out of memory");
    return FL_ENOMEM;
  }
  snprintf(tmp, n, "%s.tmp.%ld", path, (long)getpid());

  int rc = 0;
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
  if (fd < 0) {
    fl__set_err(err, errlen, "cannot create %s: %s", tmp, strerror(errno));
    free(tmp);
    return FL_EIO;
  }
  FILE *f = fdopen(fd, "wb");
  if (!f) {
    fl__set_err(err, errlen, "cannot open %s: %s", tmp, strerror(errno));
    close(fd);
    rc = FL_EIO;
    goto fail;
  }
  rc = emit(f, ctx, err, errlen);
  if (rc == 0 && (fflush(f) != 0 || ferror(f))) {
    fl__set_err(err, errlen, "cannot write %s: %s", tmp, strerror(errno));
    rc = FL_EIO;
  }
  if (rc == 0 && fsync(fileno(f)) != 0) {
    fl__set_err(err, errlen, "cannot fsync %s: %s", tmp, strerror(errno));
    rc = FL_EIO;
  }
  /* fclose can report a deferred write error (NFS, quotas), so its result
   * matters as much as fflush's. */
  if (fclose(f) != 0 && rc == 0) {
    fl__set_err(err, errlen, "cannot close %s: %s", tmp, strerror(errno));
    rc = FL_EIO;
  }
  if (rc != 0) goto fail;
  if (rename(tmp, path) != 0) {
    fl__set_err(err, errlen, "cannot rename %s to %s: %s", tmp, path, strerror(errno));
    rc = FL_EIO;
    goto fail;
  }
  free(tmp);
  int derr = fl__fsync_dir(path);
  if (derr) {
    fl__set_err(err, errlen, "wrote %s but cannot fsync its directory: %s", path,
                strerror(derr));
    return FL_EIO;
  }
  return 0;

fail:
  unlink(tmp);
  free(tmp);
  return rc;
}
