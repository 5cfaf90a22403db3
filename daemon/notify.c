/* faultlined and systemd: sd_notify messages, the watchdog, the status
 * line, and the event-loop lag probe.  See fld.h.  Without NOTIFY_SOCKET
 * (not under systemd) sd_notify does nothing, so none of this needs a flag.
 *
 * The watchdog ping is sent from a loop timer, not a thread: a ping then
 * proves that the loop turns, which is what systemd should restart us for. */
#include <stdio.h>
#include <time.h>
#include <unistd.h>

#include <systemd/sd-daemon.h>

#include "fld.h"

#define FLD_LAG_PERIOD_MS 250

double fld_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

void fld_notify_ready(fld_app *app) {
  sd_notifyf(0, "READY=1\nSTATUS=serving, model %s\nMAINPID=%lu", app->eng->version,
             (unsigned long)getpid());
}

void fld_notify_reloading(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  /* systemd (>= 253) wants the monotonic time with RELOADING=1 to tell this
   * reload from an earlier one. */
  sd_notifyf(0, "RELOADING=1\nMONOTONIC_USEC=%llu",
             (unsigned long long)ts.tv_sec * 1000000ULL + (unsigned long long)ts.tv_nsec / 1000);
}

void fld_notify_stopping(void) { sd_notify(0, "STOPPING=1\nSTATUS=stopping: draining"); }

static void fld__watchdog_cb(uv_timer_t *t) {
  (void)t;
  sd_notify(0, "WATCHDOG=1");
}

static void fld__status_cb(uv_timer_t *t) {
  fld_app *app = t->data;
  double now = fld_now(), dt = now - app->status_at;
  if (dt <= 0) return;
  double fr = (double)(app->m.received - app->status_frames) / dt;
  double rr = (double)(app->m.reports - app->status_reports) / dt;
  uint64_t rej = 0;
  for (int r = 0; r < FLD_REJ_COUNT; r++) rej += app->m.rejected[r];
  sd_notifyf(0, "STATUS=%.1f frames/s, %.1f reports/s, %d streams, %llu rejected, model %s", fr,
             rr, app->n_streams, (unsigned long long)rej, app->eng->version);
  app->status_frames = app->m.received;
  app->status_reports = app->m.reports;
  app->status_at = now;
}

/* The lag probe: a repeating timer measures how late it fires; a loop
 * blocked by a long batch or a slow syscall shows here first. */
static void fld__lag_cb(uv_timer_t *t) {
  fld_app *app = t->data;
  uint64_t now = uv_hrtime();
  if (app->lag_expect) {
    double lag = now > app->lag_expect ? (double)(now - app->lag_expect) * 1e-9 : 0.0;
    app->m.lag_last = lag;
    if (lag > app->m.lag_max) app->m.lag_max = lag;
  }
  app->lag_expect = now + (uint64_t)FLD_LAG_PERIOD_MS * 1000000ULL;
}

int fld_notify_start_timers(fld_app *app) {
  uint64_t usec = 0;
  uv_timer_init(app->loop, &app->t_watchdog);
  uv_timer_init(app->loop, &app->t_status);
  uv_timer_init(app->loop, &app->t_lag);
  app->t_watchdog.data = app->t_status.data = app->t_lag.data = app;
  if (sd_watchdog_enabled(0, &usec) > 0 && usec > 0) {
    uint64_t ms = usec / 2000; /* half the interval, as sd_watchdog_enabled(3) advises */
    if (ms == 0) ms = 1;
    uv_timer_start(&app->t_watchdog, fld__watchdog_cb, 0, ms);
    fld_log(FLD_INFO, "systemd watchdog every %llu ms", (unsigned long long)ms);
  }
  app->status_at = fld_now();
  uint64_t sms = (uint64_t)(app->cfg.status_interval * 1000.0);
  uv_timer_start(&app->t_status, fld__status_cb, sms, sms);
  uv_timer_start(&app->t_lag, fld__lag_cb, FLD_LAG_PERIOD_MS, FLD_LAG_PERIOD_MS);
  return 0;
}

void fld_notify_stop_timers(fld_app *app) {
  uv_timer_stop(&app->t_watchdog);
  uv_timer_stop(&app->t_status);
  uv_timer_stop(&app->t_lag);
  uv_close((uv_handle_t *)&app->t_watchdog, NULL);
  uv_close((uv_handle_t *)&app->t_status, NULL);
  uv_close((uv_handle_t *)&app->t_lag, NULL);
}
