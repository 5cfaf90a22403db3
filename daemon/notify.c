/* faultlined and systemd: the watchdog, the status line of rates and the
 * event-loop lag probe (which also evicts idle streams and polls the
 * tuner), all loop timers.  See fld.h; the sd_notify messages themselves
 * are net/notify.c's. */
#include <stdio.h>

#include "fld.h"

#define FLD_LAG_PERIOD_MS 250

static void fld__status_cb(uv_timer_t *t) {
  fld_app *app = t->data;
  double now = fln_now(), dt = now - app->status_at;
  if (dt <= 0) return;
  double fr = (double)(app->m.received - app->status_frames) / dt;
  double rr = (double)(app->m.reports - app->status_reports) / dt;
  uint64_t rej = 0;
  for (int r = 0; r < FLD_REJ_COUNT; r++) rej += app->m.rejected[r];
  fln_notify_status("%.1f frames/s, %.1f reports/s, %d streams, %llu rejected, model %s", fr, rr,
                    app->n_streams, (unsigned long long)rej, app->eng->version);
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
  /* Idle streams go once a second: [input] stream_idle is minutes. */
  if (++app->lag_ticks % (1000 / FLD_LAG_PERIOD_MS) == 0) fld_streams_evict(app, fln_now());
  /* Windows kept for tuning start their job when it is due even while no
   * frame arrives (a paused input, a quiet night). */
  if (app->tuner) fld_tune_poll(app);
}

int fld_notify_start_timers(fld_app *app) {
  uv_timer_init(app->loop, &app->t_status);
  uv_timer_init(app->loop, &app->t_lag);
  app->t_status.data = app->t_lag.data = app;
  /* A ping proves that the loop turns: nothing else to check. */
  fln_watchdog_start(&app->watchdog, app->loop, NULL, NULL);
  app->status_at = fln_now();
  uint64_t sms = (uint64_t)(app->cfg.status_interval * 1000.0);
  uv_timer_start(&app->t_status, fld__status_cb, sms, sms);
  uv_timer_start(&app->t_lag, fld__lag_cb, FLD_LAG_PERIOD_MS, FLD_LAG_PERIOD_MS);
  return 0;
}

void fld_notify_stop_timers(fld_app *app) {
  fln_watchdog_stop(&app->watchdog);
  uv_timer_stop(&app->t_status);
  uv_timer_stop(&app->t_lag);
  uv_close((uv_handle_t *)&app->t_status, NULL);
  uv_close((uv_handle_t *)&app->t_lag, NULL);
}
