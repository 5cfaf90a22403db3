/* faultline ticks: report-by-exception updates into fixed base ticks.
 *
 * Plant buses send a tag when it changes, each tag at its own time; the
 * model wants every channel sampled on one grid.  One fl_ticks assembles one
 * stream: channels (all modalities' in model order, each with its rate of
 * samples per base tick) receive timestamped values with fl_ticks_put, and
 * fl_ticks_emit hands out the stream's ticks in order once each is due.
 *
 * The grid.  Tick k covers the time (k P - P, k P] for the period P; its
 * number k = floor-aligned Unix time / P is the frame's sequence number, so
 * a restarted bridge continues the same numbering.  A channel of rate r is
 * sampled at k P - P + (q + 1) P / r, q = 0 .. r - 1 (the last sample at the
 * tick's end).  The first tick of a stream is the one containing its first
 * update.
 *
 * Sample and hold.  A sample takes the newest update whose time is at or
 * before the sample time.  If that update is older than the staleness limit,
 * or there is none, or its value is NaN (a device death), the sample is
 * missing: NaN, which faultlined masks and estimates.
 *
 * Due time.  Tick k is emitted once the clock passed k P + delay: delay is
 * the allowance for messages in flight.  The late rule: an update whose time
 * is at or before the newest emitted tick's end can no longer change anything
 * already emitted; it is dropped and counted (late).  Updates within the
 * allowance may arrive out of order; they are held sorted by time (up to
 * depth per channel; one more is dropped and counted, overflow).
 *
 * Catching up.  When more than max_burst ticks are due at once (the clock
 * jumped, the caller stalled), the oldest are skipped and counted; the
 * sequence numbers keep their gap and faultlined fills it as missing. */
#ifndef FAULTLINE_TICKS_H
#define FAULTLINE_TICKS_H

#include <stdint.h>

typedef struct {
  int n_channels;   /* >= 1 */
  const int *rate;  /* (n_channels): samples per tick, >= 1 */
  int64_t period_ns;
  int64_t stale_ns; /* > 0 */
  int64_t delay_ns; /* >= 0 */
  int depth;        /* updates waiting per channel, >= 1 */
  int max_burst;    /* ticks emitted in a row at most, >= 1 */
} fl_ticks_opts;

typedef struct {
  uint64_t accepted; /* updates taken */
  uint64_t late;     /* dropped: at or before the newest emitted tick */
  uint64_t overflow; /* dropped: depth updates already waiting */
  uint64_t emitted;  /* ticks emitted */
  uint64_t skipped;  /* ticks skipped while catching up */
  uint64_t missing;  /* samples emitted as NaN (never set, stale or dead) */
} fl_ticks_stats;

/* What fl_ticks_put did with an update (all but FL_TICKS_OK drop it). */
enum { FL_TICKS_OK = 0, FL_TICKS_LATE = 1, FL_TICKS_OVERFLOW = 2 };

typedef struct fl_ticks fl_ticks;

/* 0, FL_EINVAL (an option out of its domain) or FL_ENOMEM. */
int fl_ticks_new(fl_ticks **out, const fl_ticks_opts *o);
void fl_ticks_free(fl_ticks *t);

/* Offers channel ch the value v, taken at ts_ns (Unix ns).  NaN is a value:
 * from ts_ns on the channel is missing until the next update.  Returns
 * FL_TICKS_OK, FL_TICKS_LATE, FL_TICKS_OVERFLOW, or FL_EINVAL for a channel
 * out of range. */
int fl_ticks_put(fl_ticks *t, int ch, int64_t ts_ns, float v);

/* Emits the oldest due tick at the clock now_ns: writes its samples to out,
 * channel after channel, each channel's rate samples in time order (width
 * floats, see fl_ticks_width), its number to *seq and its end time to
 * *tick_ns, and returns 1.  Returns 0 when no tick is due (or the stream
 * has had no update yet). */
int fl_ticks_emit(fl_ticks *t, int64_t now_ns, float *out, uint64_t *seq, int64_t *tick_ns);

/* Floats of one emitted tick: the sum of the channels' rates. */
int fl_ticks_width(const fl_ticks *t);

/* The end time of the next tick to emit, or INT64_MIN before the first
 * update. */
int64_t fl_ticks_next(const fl_ticks *t);

const fl_ticks_stats *fl_ticks_stats_of(const fl_ticks *t);

#endif
