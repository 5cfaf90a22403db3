/* faultline: error codes shared by every module.
 *
 * Every function that can fail returns 0 or one of these negative codes; one
 * table in error.c gives the message.  Nothing in the library aborts, exits or
 * logs: the caller decides what to say. */
#ifndef FAULTLINE_ERROR_H
#define FAULTLINE_ERROR_H

enum {
  FL_OK = 0,
  FL_EINVAL = -1,     /* an argument is out of its domain */
  FL_ENOMEM = -2,     /* an allocation failed */
  FL_ESHAPE = -3,     /* tensor shapes do not fit together */
  FL_ENONFINITE = -4, /* an input holds NaN or Inf where none may be */
  FL_EIO = -5,        /* a read or write failed (errno has the cause) */
  FL_EFORMAT = -6,    /* a file or message is malformed */
  FL_ETRUNC = -7,     /* a file or message ends early */
  FL_EMISMATCH = -8,  /* a file does not match what the caller expects */
  FL_ENOTFOUND = -9,  /* a named tensor, column or key is absent */
  FL_ERANGE = -10,    /* a value is outside what the format can hold */
  FL_EDIVERGED = -11, /* training produced a non-finite loss */
};

/* Returns a static, human-readable message for an error code. */
const char *fl_strerror(int err);

#endif
