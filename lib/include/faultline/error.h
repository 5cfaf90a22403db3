/* faultline: error codes shared by every module.
 *
 * Every function that can fail returns 0 or one of these negative codes; one
 * table in error.c gives the message.  Nothing in the library aborts, exits or
 * logs: the caller decides what to say.
 *
 * One error space, as libuv's: a code that has an errno meaning is that
 * errno negated (FL_EINVAL == -EINVAL), so code that also meets system calls
 * may return -errno in the same int without a clash, and faultline's own
 * codes lie at FL_ERRNO_LIMIT and below, beyond every errno value.
 * fl_strerror answers for both.  Compare codes by name, never by number. */
#ifndef FAULTLINE_ERROR_H
#define FAULTLINE_ERROR_H

#include <errno.h>

/* Codes above this (and below 0) are -errno values. */
#define FL_ERRNO_LIMIT (-4000)

enum {
  FL_OK = 0,
  FL_EINVAL = -EINVAL, /* an argument is out of its domain */
  FL_ENOMEM = -ENOMEM, /* an allocation failed */
  FL_EIO = -EIO,       /* a read or write failed (errno has the cause) */
  FL_ERANGE = -ERANGE, /* a value is outside what the format can hold */
  FL_ESHAPE = FL_ERRNO_LIMIT - 1, /* tensor shapes do not fit together */
  FL_ENONFINITE = FL_ERRNO_LIMIT - 2, /* an input holds NaN or Inf where none may be */
  FL_EFORMAT = FL_ERRNO_LIMIT - 3,    /* a file or message is malformed */
  FL_ETRUNC = FL_ERRNO_LIMIT - 4,     /* a file or message ends early */
  FL_EMISMATCH = FL_ERRNO_LIMIT - 5,  /* a file does not match what the caller expects */
  FL_ENOTFOUND = FL_ERRNO_LIMIT - 6,  /* a named tensor, column or key is absent */
  FL_EDIVERGED = FL_ERRNO_LIMIT - 7,  /* training produced a non-finite loss */
};

/* Returns a static, human-readable message for an error code: faultline's
 * own wording for the codes above, strerror's for any other -errno, and
 * "unknown error" for anything else. */
const char *fl_strerror(int err);

#endif
