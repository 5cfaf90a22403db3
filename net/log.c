/* Logging for journald: see fln.h.  One fprintf per line so that lines from
 * the loop never interleave; stderr is unbuffered. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fln.h"

static int fln__level = FLN_INFO;

void fln_log_set_level(int level) { fln__level = level; }

int fln_log_parse_level(const char *s, int *level) {
  static const struct {
    const char *name;
    int level;
  } names[] = {{"err", FLN_ERR},   {"error", FLN_ERR}, {"warning", FLN_WARNING},
               {"notice", FLN_NOTICE}, {"info", FLN_INFO}, {"debug", FLN_DEBUG}};
  for (size_t i = 0; i < sizeof names / sizeof *names; i++)
    if (!strcmp(s, names[i].name)) {
      *level = names[i].level;
      return 0;
    }
  char *end;
  long v = strtol(s, &end, 10);
  if (end != s && !*end && v >= FLN_ERR && v <= FLN_DEBUG) {
    *level = (int)v;
    return 0;
  }
  return -1;
}

void fln_log(int prio, const char *fmt, ...) {
  if (prio > fln__level) return;
  char line[1024];
  int n = snprintf(line, sizeof line, "<%d>", prio);
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
  va_end(ap);
  /* A message must stay one journal entry: no embedded newlines. */
  for (char *p = line + n; *p; p++)
    if (*p == '\n') *p = ' ';
  fprintf(stderr, "%s\n", line);
}

void fln_limit_vhit(fln_limit *l, const char *fmt, va_list ap) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  double now = (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
  if (l->logged > 0 && now - l->logged < l->interval) {
    l->quiet++;
    return;
  }
  char msg[256];
  vsnprintf(msg, sizeof msg, fmt, ap);
  if (l->quiet)
    fln_log(FLN_WARNING, "%s (and %llu more times since the last such line)", msg,
            (unsigned long long)l->quiet);
  else
    fln_log(FLN_WARNING, "%s", msg);
  l->logged = now;
  l->quiet = 0;
}

void fln_limit_hit(fln_limit *l, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fln_limit_vhit(l, fmt, ap);
  va_end(ap);
}
