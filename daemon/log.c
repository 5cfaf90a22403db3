/* faultlined logging: see fld.h.  One fprintf per line so that lines from
 * the loop never interleave; stderr is unbuffered. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fld.h"

static int fld__level = FLD_INFO;

void fld_log_set_level(int level) { fld__level = level; }

int fld_log_parse_level(const char *s, int *level) {
  static const struct {
    const char *name;
    int level;
  } names[] = {{"err", FLD_ERR},   {"error", FLD_ERR}, {"warning", FLD_WARNING},
               {"notice", FLD_NOTICE}, {"info", FLD_INFO}, {"debug", FLD_DEBUG}};
  for (size_t i = 0; i < sizeof names / sizeof *names; i++)
    if (!strcmp(s, names[i].name)) {
      *level = names[i].level;
      return 0;
    }
  char *end;
  long v = strtol(s, &end, 10);
  if (end != s && !*end && v >= FLD_ERR && v <= FLD_DEBUG) {
    *level = (int)v;
    return 0;
  }
  return -1;
}

void fld_log(int prio, const char *fmt, ...) {
  if (prio > fld__level) return;
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

void fld_limit_hit(fld_app *app, int limit, const char *fmt, ...) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  double now = (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
  if (app->limit_logged[limit] > 0 && now - app->limit_logged[limit] < app->cfg.limit_log_interval) {
    app->limit_quiet[limit]++;
    return;
  }
  char msg[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  if (app->limit_quiet[limit])
    fld_log(FLD_WARNING, "%s (and %llu more times since the last such line)", msg,
            (unsigned long long)app->limit_quiet[limit]);
  else
    fld_log(FLD_WARNING, "%s", msg);
  app->limit_logged[limit] = now;
  app->limit_quiet[limit] = 0;
}
