/* faultlined: the streaming daemon's internal interfaces.
 *
 * The daemon is glue around libfaultline: one libuv loop owns every socket,
 * timer and signal; frames come in over ZeroMQ, windows go through the
 * library's model and detector, reports go out over ZeroMQ, and health is
 * served over HTTP.  Internal names are `fld_<concern>_<verb>`; functions
 * return 0 or a negative code (FL_E... from the library, or -errno).  Nothing
 * here calls exit() outside main(). */
#ifndef FLD_H
#define FLD_H

#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <uv.h>
#include <zmq.h>

#include "faultline.pb-c.h"
#include "faultline/bundle.h"
#include "faultline/config.h"
#include "faultline/model.h"
#include "faultline/pipeline.h"

#define FLD_VERSION "0.1.0"

/* ---- log.c --------------------------------------------------------------
 * Lines on stderr with the syslog priority prefix "<N>" that journald reads
 * (sd-daemon(3)); lines above the configured level are not written. */
enum { FLD_ERR = 3, FLD_WARNING = 4, FLD_NOTICE = 5, FLD_INFO = 6, FLD_DEBUG = 7 };
void fld_log_set_level(int level);
/* Parses "err", "warning", "notice", "info", "debug" (or 3..7). */
int fld_log_parse_level(const char *s, int *level);
void fld_log(int prio, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---- dconfig.c ----------------------------------------------------------
 * The daemon's configuration: the library's settings as fl_config_load_with
 * parses them (the model file, [detect] hysteresis, the tuner's options of
 * [tune]), and the daemon's own sections ([input], [output], [metrics],
 * [security], [log]) and keys of [tune], parsed in the same pass.  One file
 * serves `faultline train` and the daemon.  Every key is documented in
 * config/faultline.ini. */
#define FLD_MAX_ENDPOINTS 8
#define FLD_ENDPOINT_MAX 256
/* Subscription prefixes of one daemon: its shard of the stream names. */
#define FLD_MAX_TOPICS 16
#define FLD_TOPIC_MAX 128

enum { FLD_IN_SUB = 0, FLD_IN_PULL = 1 };

typedef struct {
  fl_config lib;                /* the library's sections and keys */
  char model_file[PATH_MAX];    /* lib.model_file, relative to the file's directory */
  /* [input] */
  int in_type;                  /* FLD_IN_SUB or FLD_IN_PULL */
  int in_bind;                  /* 1: bind the endpoints, 0: connect to them */
  int n_in;
  char in_endpoint[FLD_MAX_ENDPOINTS][FLD_ENDPOINT_MAX];
  int n_topics;
  char in_topic[FLD_MAX_TOPICS][FLD_TOPIC_MAX]; /* SUB: prefixes, each "frame/..." */
  int max_streams;
  long max_message_bytes;
  int drain_budget;             /* messages per loop turn before yielding */
  int rcvhwm;
  /* [output] */
  int out_bind;
  int n_out;
  char out_endpoint[FLD_MAX_ENDPOINTS][FLD_ENDPOINT_MAX];
  int stride;                   /* base ticks between windows */
  int batch;                    /* windows per model call at most */
  int score;                    /* 0: ingest only, no window is scored */
  int sndhwm;
  /* [metrics] */
  char metrics_listen[128];     /* "ADDR:PORT"; empty: no HTTP endpoint */
  int metrics_max_connections;  /* open HTTP connections at most; more are refused */
  int metrics_max_request;      /* bytes of one request's line and headers at most */
  double status_interval;       /* seconds between STATUS= updates */
  /* [security] */
  int curve;
  char secret_key_file[PATH_MAX];
  char authorized_keys[PATH_MAX]; /* directory of client public keys */
  /* [tune]: when and where the tuner runs (tune.c); the job's own options
   * are the library's (lib.tune) */
  int tune_enabled;
  int tune_buffer;              /* windows in the replay buffer */
  double tune_gate;             /* clean: score below gate x threshold */
  int tune_span;                /* windows around a clean one without a flag; 0: on + off */
  double tune_max_per_hour;     /* updates started per hour at most */
  double tune_cpu_share;        /* share of one core the training may take */
  char tune_checkpoint[PATH_MAX]; /* empty: none; relative: under $STATE_DIRECTORY */
  int tune_checkpoint_every;    /* accepted updates between checkpoints */
  int tune_idle;                /* 1: the worker under SCHED_IDLE, 0: nice 10 */
  /* [log] */
  int log_level;
  double limit_log_interval;    /* seconds between log lines of one limit being hit */
} fld_config;

void fld_config_defaults(fld_config *c);
/* Loads and validates path (library sections included); err names the file,
 * line and key of the first problem. */
int fld_config_load(fld_config *c, const char *path, char *err, size_t errlen);
/* SIGHUP: the settings a reload cannot change (sockets, keys and listeners
 * set up once, the tuning thread's priority), one table in dconfig.c,
 * documented in faultline.ini(5).  Copies them from the configuration in
 * service `old` into the new one `nc` ([input] topic too when the socket's
 * type is kept) and returns how many differed, their names in `names`
 * ("[input] endpoint, ..."). */
int fld_config_keep_fixed(fld_config *nc, const fld_config *old, char *names, size_t len);

/* ---- metrics.c ----------------------------------------------------------
 * Counters the loop updates and the HTTP endpoint reads, in the same thread
 * (the HTTP server is polled by the loop), so they need no locks. */
enum {
  FLD_REJ_UNDECODABLE = 0,
  FLD_REJ_BAD_STREAM,
  FLD_REJ_UNKNOWN_MODALITY,
  FLD_REJ_INCONSISTENT_MODALITY,
  FLD_REJ_CHANNEL_COUNT,
  FLD_REJ_NONFINITE,
  FLD_REJ_OVERSIZE,
  FLD_REJ_DUPLICATE,
  FLD_REJ_OLD,
  FLD_REJ_COUNT
};
enum { FLD_DROP_STREAM_LIMIT = 0, FLD_DROP_COUNT };
const char *fld_reject_name(int reason);
const char *fld_drop_name(int reason);

#define FLD_LAT_BUCKETS 14
#define FLD_MAX_MODNAMES 32

typedef struct {
  uint64_t received, processed;
  uint64_t rejected[FLD_REJ_COUNT];
  uint64_t dropped[FLD_DROP_COUNT];
  uint64_t gaps, gap_ticks, stream_resets;
  uint64_t reports, reports_failed, windows_flagged;
  /* anomalies by modality name, names kept across model reloads so that a
   * counter never disappears while the process lives */
  int n_modnames;
  char modname[FLD_MAX_MODNAMES][FL_NAME_MAX];
  uint64_t anomalies[FLD_MAX_MODNAMES];
  /* processing latency histogram, seconds */
  uint64_t lat_bucket[FLD_LAT_BUCKETS + 1];
  double lat_sum;
  uint64_t lat_count;
  /* event-loop lag: the latest sample and the largest since start, seconds */
  double lag_last, lag_max;
  uint64_t reloads_ok, reloads_failed;
  uint64_t zap_allowed, zap_denied, input_disconnects;
  uint64_t http_refused;        /* connections over [metrics] max_connections */
  int http_open;
  int64_t subscriptions;
  double start_time;
} fld_metrics;

int fld_metrics_modality(fld_metrics *m, const char *name);
void fld_metrics_latency(fld_metrics *m, double seconds);

struct fld_app;
/* Starts the HTTP endpoint (libmicrohttpd in external-poll epoll mode,
 * driven by a uv_poll on its epoll fd) on cfg.metrics_listen. */
int fld_http_start(struct fld_app *app);
void fld_http_stop(struct fld_app *app);
/* Routes one HTTP request without the network: sets the status and body;
 * returns 1 when the body is malloc'ed (the caller frees it), 0 when it is
 * static, -1 on failure.  Anything but GET and HEAD is 405. */
int fld_http_route(struct fld_app *app, const char *method, const char *url, unsigned *status,
                   const char **body, size_t *len);
/* Renders /metrics in the Prometheus text format into a malloc'ed string. */
char *fld_metrics_render(struct fld_app *app, size_t *len);

/* ---- zsock.c ------------------------------------------------------------
 * A ZeroMQ socket in the loop.  ZMQ_FD is edge-triggered: it becomes
 * readable when the socket's state changes, not while messages wait.  So on
 * every wake-up the watcher drains until ZMQ_EVENTS no longer says
 * ZMQ_POLLIN, and when it stops early (budget spent, to keep the loop fair)
 * it schedules itself again with a uv_idle instead of waiting for an edge
 * that will never come. */
typedef struct fld_zwatch fld_zwatch;
/* Receives at most budget messages with ZMQ_DONTWAIT; returns the count
 * handled (0 when the socket had nothing). */
typedef int (*fld_zdrain_fn)(fld_zwatch *w, int budget);
/* Called once after a drain pass, e.g. to flush batched work. */
typedef void (*fld_zafter_fn)(fld_zwatch *w);
struct fld_zwatch {
  void *sock;
  void *user;
  int budget;
  fld_zdrain_fn drain;
  fld_zafter_fn after;
  uv_poll_t poll;
  uv_idle_t idle;
  int active, idle_on, closing;
  uint64_t wakeups, continuations;
};
int fld_zwatch_start(fld_zwatch *w, uv_loop_t *loop, void *sock, int budget,
                     fld_zdrain_fn drain, fld_zafter_fn after, void *user);
/* Stops watching; the handles close asynchronously (the loop must run once). */
void fld_zwatch_stop(fld_zwatch *w);
/* Re-checks ZMQ_EVENTS, e.g. after a send on a socket that is also read. */
void fld_zwatch_kick(fld_zwatch *w);

/* Receives one multipart message (up to max parts) without blocking.
 * Returns the number of parts, 0 on EAGAIN, a negative code on error or
 * when it has more parts than max (the rest is discarded; *overflow = 1). */
int fld_zrecv(void *sock, zmq_msg_t *parts, int max, int *overflow);
void fld_zclose_parts(zmq_msg_t *parts, int n);
/* zmq_msg_recv and zmq_send of one part, made again when a signal
 * interrupted them (EINTR: nothing was taken or sent), so that a signal never
 * fakes a lost message or leaves a multipart message half sent.
 * fld_zmsg_recv returns the part's size, fld_zsend 0; both -errno on error. */
int fld_zmsg_recv(zmq_msg_t *m, void *sock, int flags);
int fld_zsend(void *sock, const void *buf, size_t len, int flags);
/* zmq_ctx_term, made again when a signal interrupted it. */
void fld_zterm(void *ctx);
/* Starts fn(arg) on a thread that takes no signals (0 or -errno): the loop
 * thread handles them all, and one landing in a blocking libzmq call there
 * would end it with EINTR. */
int fld_thread_quiet(pthread_t *t, void *(*fn)(void *), void *arg);

/* CurveZMQ: loads the server keys and authorised client keys and starts
 * the ZAP handler (a REP socket on inproc://zeromq.zap.01 in the loop). */
int fld_curve_start(struct fld_app *app, char *err, size_t errlen);
/* Makes sock a CURVE server with the daemon's key. */
int fld_curve_apply(struct fld_app *app, void *sock);
/* Re-reads the authorised keys directory (SIGHUP). */
int fld_curve_reload(struct fld_app *app, char *err, size_t errlen);
void fld_curve_stop(struct fld_app *app);

/* ---- engine.c -----------------------------------------------------------
 * A loaded model and the scratch it needs to score a batch of windows. */
#define FLD_MAX_BATCH 64

typedef struct {
  fl_bundle b;
  fl_ctx *ctx;
  int batch;
  /* The batch's windows: raw and corrected (C_i, T_i) buffers of their own,
   * scores and decisions (fl_pipeline_run). */
  fl_pipeline_window win[FLD_MAX_BATCH];
  size_t maxct;                               /* largest C_i T_i */
  float *rep;                                 /* (2, n_mod, maxct): report rows,
                                                 corrected then uncertainty */
  char version[40];                           /* hex of a 64-bit file hash, -uN when tuned */
  double load_time;                           /* Unix seconds */
  int n_layers;
  char (*layer_name)[FL_NAME_MAX];
  float *layer_norm, *layer_target;
  int hyst_on, hyst_off;
} fld_engine;

int fld_engine_load(fld_engine **out, const char *path, const fld_config *cfg, char *err,
                    size_t errlen);
void fld_engine_free(fld_engine *e);
/* Do two engines take the same frames (same window, modalities, channels,
 * rates)?  Streams survive a reload only then. */
int fld_engine_compatible(const fld_engine *a, const fld_engine *b);

/* ---- streams (ingest.c) -------------------------------------------------
 * Per-stream state: the last `window` ticks of every modality in a ring
 * (channel-major, each modality at its own rate), sequence tracking and
 * what the per-window pipeline carries from one window to the next. */
typedef struct {
  char name[65];
  int have_seq;
  uint64_t last_seq;
  int64_t last_ts;
  uint64_t ticks;      /* ticks held since the last reset */
  int head;            /* ring slot of the next tick */
  float *ring[FL_MAX_MODALITIES]; /* (C_i, window * rate_i) */
  fl_stream_state state; /* baseline and hysteresis (fl_pipeline_run) */
  uint64_t report_seq;
  uint64_t frames;
  struct fld_tune_stream *tune; /* the tuning gate's candidates (tune.c) */
} fld_stream;

/* A window waiting in the batch: its stream and what the report needs. */
typedef struct {
  fld_stream *st;
  uint64_t end_seq;
  int64_t end_ts;
  uint64_t t_recv; /* uv_hrtime() at the arrival of its newest frame */
  int missing;
} fld_slot;

/* ---- main.c: the application ------------------------------------------- */
enum { FLD_LIMIT_STREAMS = 0, FLD_LIMIT_MESSAGE, FLD_LIMIT_HTTP, FLD_LIMIT_COUNT };

typedef struct fld_app {
  uv_loop_t *loop;
  char config_path[PATH_MAX];
  fld_config cfg;
  void *zctx;
  void *in_sock, *out_sock, *mon_sock;
  fld_zwatch in_w, out_w, mon_w;
  fld_engine *eng;
  fld_stream **streams;
  int n_streams;
  fld_slot pending[FLD_MAX_BATCH];
  int n_pending;
  fld_metrics m;
  /* HTTP */
  struct MHD_Daemon *mhd;
  uv_poll_t mhd_poll;
  uv_timer_t mhd_timer;
  int mhd_on;
  /* CurveZMQ */
  void *zap_sock;
  fld_zwatch zap_w;
  char server_secret[41], server_public[41];
  int n_keys;
  char (*keys)[41];
  /* life cycle */
  uv_signal_t sig_hup, sig_term, sig_int;
  uv_timer_t t_watchdog, t_status, t_lag;
  uint64_t lag_expect;
  int stopping;
  int exit_code;
  uint64_t status_frames, status_reports;
  double status_at;
  struct fld_tuner *tuner;       /* NULL unless [tune] enabled */
  /* Set while tuning is on: renders the tune metrics (tune.c), a pointer so
   * that metrics.c links without the tuner. */
  void (*tune_metrics)(struct fld_app *app, FILE *f);
  /* Set by another program built on these parts (faultline proxy): renders
   * its /metrics instead of the daemon's. */
  char *(*render_metrics)(struct fld_app *app, size_t *len);
  /* Limits hit: the first hit of an interval logs, with the hits that the
   * interval before it kept quiet; a flood never floods the journal. */
  double limit_logged[FLD_LIMIT_COUNT];
  uint64_t limit_quiet[FLD_LIMIT_COUNT];
} fld_app;

/* log.c: logs that a limit was hit, at most once per
 * [log] limit_interval seconds per limit. */
void fld_limit_hit(fld_app *app, int limit, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* frame.c: decodes and validates one message (total: the size of all its
 * parts, payload: the last part) against the model's layout, touching no
 * state.  Returns -1 when the frame is valid (*out decoded, by_mod[i] the
 * block of modality i or NULL), else the FLD_REJ_ reason; *out is set
 * whenever the payload decoded and the caller frees it with
 * faultline__frame__free_unpacked. */
int fld_frame_check(const fl_model_spec *spec, long max_bytes, size_t total,
                    const uint8_t *payload, size_t len, Faultline__Frame **out,
                    Faultline__Block *by_mod[FL_MAX_MODALITIES]);
int fld_frame_valid_name(const char *s);

/* ingest.c: handles one received message (the parts of one frame). */
void fld_ingest_message(fld_app *app, zmq_msg_t *parts, int nparts, uint64_t t_recv);
/* Scores the pending windows and publishes their reports. */
void fld_ingest_flush(fld_app *app);
/* Frees every stream (model change with another layout, shutdown). */
void fld_streams_clear(fld_app *app);

/* report.c: builds and sends the report of one window of the batch, as
 * fl_pipeline_run left it (scores, flags, corrected values). */
int fld_report_publish(fld_app *app, const fl_pipeline_window *w, const fld_slot *slot);

/* tune.c, tune_worker.c, tune_ckpt.c (tune_int.h between them): online
 * fine-tuning ([tune]).  fld_tune_start (after the model is
 * loaded) builds the tuner and puts the newest valid checkpoint of this base
 * model in service; fld_tune_observe sees every scored window (slot k of the
 * engine's context after fl_pipeline_run) and keeps the clean ones: those
 * the pipeline calls learnable (their slot intact) that also pass the
 * tuner's score gate; fld_tune_poll hands a training job to the tuner's
 * worker thread when one is due; an accepted update is swapped in
 * on the loop thread, between batches.  fld_tune_stop writes the shutdown
 * checkpoint (the after-work callback does when a job is in flight: the loop
 * runs until it has); fld_tune_free releases the rest. */
struct fld_tuner;
struct fld_tune_stream;
int fld_tune_start(fld_app *app, char *err, size_t errlen);
/* After a reload: the tuner follows the new model and [tune] (off: tuning
 * stops; the checkpoint on disk holds the last accepted update). */
int fld_tune_reload(fld_app *app, char *err, size_t errlen);
void fld_tune_observe(fld_app *app, int k, fld_stream *st, float score, int learnable);
void fld_tune_poll(fld_app *app);
void fld_tune_stop(fld_app *app);
void fld_tune_free(fld_app *app);
void fld_tune_stream_free(fld_stream *st);
void fld_tune_metrics(fld_app *app, FILE *f);
/* notify.c: sd_notify life cycle (no-ops without NOTIFY_SOCKET). */
void fld_notify_ready(fld_app *app);
void fld_notify_reloading(void);
void fld_notify_stopping(void);
int fld_notify_start_timers(fld_app *app);
void fld_notify_stop_timers(fld_app *app);

double fld_now(void); /* Unix time, seconds */

/* ---- proxy.c ------------------------------------------------------------
 * faultline proxy: the fan-in of a site.  An XSUB frontend (publishers of
 * frames, or daemons publishing reports, connect to it) and an XPUB backend
 * (daemons subscribing to their shard of frames, or consumers of reports)
 * joined by zmq_proxy_steerable in a thread of its own; the loop thread
 * serves /metrics and /healthz with the daemon's HTTP code, answers ZAP
 * requests with the daemon's CurveZMQ code, reads the proxy's STATISTICS
 * over its control socket, and stops it with TERMINATE. */
typedef struct {
  /* Endpoints: "@tcp://..." or a bare endpoint binds, ">tcp://..." connects. */
  int n_front, n_back;
  char front[FLD_MAX_ENDPOINTS][FLD_ENDPOINT_MAX];
  char back[FLD_MAX_ENDPOINTS][FLD_ENDPOINT_MAX];
  char metrics_listen[128];     /* "ADDR:PORT"; empty: no HTTP endpoint */
  int metrics_max_connections;
  int hwm;                      /* send and receive high-water marks, messages */
  int log_level;
  /* CurveZMQ: the proxy's secret key and the client keys its server sides
   * admit; a side with a server key is a CURVE client of that server (the
   * daemons are always CURVE servers), the other sides are servers. */
  char curve_key[PATH_MAX], authorized_keys[PATH_MAX];
  char front_server_key[PATH_MAX], back_server_key[PATH_MAX];
} fld_proxy_opts;

void fld_proxy_defaults(fld_proxy_opts *o);
/* Splits a comma-separated endpoint list into dst (at most
 * FLD_MAX_ENDPOINTS); 0 or FL_EINVAL. */
int fld_proxy_endpoints(const char *v, char dst[][FLD_ENDPOINT_MAX], int *n);
/* Runs the proxy until SIGTERM or SIGINT; returns the exit status (0 after a
 * clean stop, 1 when it could not start or the forwarding thread failed). */
int fld_proxy_run(const fld_proxy_opts *o);

#endif
