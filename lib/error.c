#include "faultline/error.h"

#include <string.h>

const char *fl_strerror(int err) {
  switch (err) {
  case FL_OK: return "success";
  case FL_EINVAL: return "invalid argument";
  case FL_ENOMEM: return "out of memory";
  case FL_ESHAPE: return "tensor shapes do not match";
  case FL_ENONFINITE: return "input contains NaN or Inf";
  case FL_EIO: return "input/output error";
  case FL_EFORMAT: return "malformed file or message";
  case FL_ETRUNC: return "file or message is truncated";
  case FL_EMISMATCH: return "file does not match the expected model or data";
  case FL_ENOTFOUND: return "not found";
  case FL_ERANGE: return "value out of range";
  case FL_EDIVERGED: return "training diverged (non-finite loss)";
  default: break;
  }
  /* Any other -errno, as a daemon's socket or file call returns it. */
  if (err < 0 && err > FL_ERRNO_LIMIT) return strerror(-err);
  return "unknown error";
}
