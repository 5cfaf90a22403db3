/* systemd: sd_notify messages and the watchdog.  See fln.h.  Without
 * NOTIFY_SOCKET (not under systemd) sd_notify does nothing, so none of this
 * needs a flag.
 *
 * The watchdog ping is sent from a loop timer, not a thread: a ping then
 * proves that the loop turns, which is what systemd should restart us for. */
#include <stdarg.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

#include <systemd/sd-daemon.h>

#include "fln.h"

double fln_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* A STATUS= line, after READY=1 (with MAINPID) when ready. */
__attribute__((format(printf, 2, 0))) static void fln__status(int ready, const char *fmt,
                                                            va_list ap) {
  char status[512];
  vsnprintf(status, sizeof status, fmt, ap);
  if (ready) sd_notifyf(0, "READY=1\nSTATUS=%s\nMAINPID=%lu", status, (unsigned long)getpid());
  else sd_notifyf(0, "STATUS=%s", status);
}

void fln_notify_ready(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fln__status(1, fmt, ap);
  va_end(ap);
}

void fln_notify_reloading(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  /* systemd (>= 253) wants the monotonic time with RELOADING=1 to tell this
   * reload from an earlier one. */
  sd_notifyf(0, "RELOADING=1\nMONOTONIC_USEC=%llu",
             (unsigned long long)ts.tv_sec * 1000000ULL + (unsigned long long)ts.tv_nsec / 1000);
}

void fln_notify_stopping(const char *status) {
  sd_notifyf(0, "STOPPING=1\nSTATUS=%s", status);
}

void fln_notify_status(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fln__status(0, fmt, ap);
  va_end(ap);
}

static void fln__watchdog_cb(uv_timer_t *t) {
  fln_watchdog *w = t->data;
  char status[512] = "";
  if (w->check && w->check(w->user, status, sizeof status)) return;
  if (status[0]) sd_notifyf(0, "WATCHDOG=1\nSTATUS=%s", status);
  else sd_notify(0, "WATCHDOG=1");
}

int fln_watchdog_start(fln_watchdog *w, uv_loop_t *loop, fln_watchdog_fn check, void *user) {
  uint64_t usec = 0;
  w->on = 0;
  w->check = check;
  w->user = user;
  if (sd_watchdog_enabled(0, &usec) <= 0 || usec == 0) return 0;
  uint64_t ms = usec / 2000; /* half the interval, as sd_watchdog_enabled(3) advises */
  if (ms == 0) ms = 1;
  int rc = uv_timer_init(loop, &w->timer);
  if (rc) return rc;
  w->timer.data = w;
  uv_timer_start(&w->timer, fln__watchdog_cb, 0, ms);
  w->on = 1;
  fln_log(FLN_INFO, "systemd watchdog every %llu ms", (unsigned long long)ms);
  return 0;
}

void fln_watchdog_stop(fln_watchdog *w) {
  if (!w->on) return;
  uv_timer_stop(&w->timer);
  uv_close((uv_handle_t *)&w->timer, NULL);
  w->on = 0;
}
