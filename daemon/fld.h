/* faultlined: the streaming daemon's internal interfaces.
 *
 * The daemon is glue around libfaultline and the transport of net/fln.h: one
 * libuv loop owns every socket, timer and signal; frames come in over
 * ZeroMQ, windows go through the library's model and detector, reports go
 * out over ZeroMQ, and health is served over HTTP.  Internal names are
 * `fld_<concern>_<verb>`; functions return 0 or a negative code (FL_E...
 * from the library, or -errno).  Nothing here calls exit() outside main(). */
#ifndef FLD_H
#define FLD_H

#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "faultline.pb-c.h"
#include "faultline/bundle.h"
#include "faultline/config.h"
#include "faultline/model.h"
#include "faultline/pipeline.h"
#include "fln.h"

#define FLD_VERSION FLN_VERSION

/* The daemon's modules log, send and start threads with net/'s parts under
 * these names. */
#define FLD_ERR FLN_ERR
#define FLD_WARNING FLN_WARNING
#define FLD_NOTICE FLN_NOTICE
#define FLD_INFO FLN_INFO
#define FLD_DEBUG FLN_DEBUG
#define fld_log fln_log
#define fld_log_set_level fln_log_set_level
#define fld_log_parse_level fln_log_parse_level
#define fld_zsend fln_zsend
#define fld_thread_quiet fln_thread_quiet
#define fld_now fln_now

/* ---- dconfig.c ----------------------------------------------------------
 * The daemon's configuration: the library's settings as fl_config_load_with
 * parses them (the model file, [detect] hysteresis, the tuner's options of
 * [tune]), and the daemon's own sections ([input], [output], [metrics],
 * [security], [log]) and keys of [tune], parsed in the same pass.  One file
 * serves `faultline train` and the daemon.  Every key is documented in
 * config/faultline.ini. */
#define FLD_MAX_ENDPOINTS FLN_MAX_ENDPOINTS
#define FLD_ENDPOINT_MAX FLN_ENDPOINT_MAX
/* Subscription prefixes of one daemon: its shard of the stream names. */
#define FLD_MAX_TOPICS 16
#define FLD_TOPIC_MAX 128

enum { FLD_IN_SUB = 0, FLD_IN_PULL = 1 };

typedef struct {
  fl_config lib;                /* the library's sections and keys */
  /* Keys the file gives that the model also carries: checked against the
   * model at every load (fld_engine_load) */
  int window_given;             /* [model] window */
  int n_detect_given;
  char detect_given[24][32];    /* [detect] keys, by name */
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
  double stream_idle;           /* seconds without a frame before a stream is evicted; 0: never */
  uint64_t max_seq_jump;        /* ticks a seq may jump forward at most */
  /* [output] */
  int out_bind;
  int n_out;
  char out_endpoint[FLD_MAX_ENDPOINTS][FLD_ENDPOINT_MAX];
  int stride;                   /* base ticks between windows */
  int batch;                    /* windows per model call at most */
  double batch_memory;          /* MB of scratch the batch may hold */
  int score;                    /* 0: ingest only, no window is scored */
  int sndhwm;
  /* [metrics] */
  char metrics_listen[128];     /* "ADDR:PORT"; empty: no HTTP endpoint */
  int metrics_max_connections;  /* open HTTP connections at most; more are refused */
  int metrics_max_request;      /* bytes of one request's line and headers at most */
  double status_interval;       /* seconds between STATUS= updates */
  double stale_after;           /* /readyz: seconds without a frame before "not ready" */
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
/* Releases what loading allocated (the library's modalities), whatever
 * fld_config_load returned. */
void fld_config_free(fld_config *c);
/* SIGHUP: the settings a reload cannot change (sockets, keys and listeners
 * set up once, the tuning thread's priority), one table in dconfig.c,
 * documented in faultline.ini(5).  Copies them from the configuration in
 * service `old` into the new one `nc` ([input] topic too when the socket's
 * type is kept) and returns how many differed, their names in `names`
 * ("[input] endpoint, ..."). */
int fld_config_keep_fixed(fld_config *nc, const fld_config *old, char *names, size_t len);

/* ---- metrics.c ----------------------------------------------------------
 * Counters the loop updates and the HTTP endpoint reads, in the same thread
 * (the HTTP server is polled by the loop), so they need no locks.  The
 * connections and ZAP requests are counted by net/'s parts (fln_http,
 * fln_curve). */
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
  FLD_REJ_SEQ_JUMP,
  FLD_REJ_TOPIC_MISMATCH,
  FLD_REJ_COUNT
};
enum { FLD_DROP_STREAM_LIMIT = 0, FLD_DROP_COUNT };
const char *fld_reject_name(int reason);
const char *fld_drop_name(int reason);

#define FLD_LAT_BUCKETS 14

typedef struct {
  uint64_t received, processed;
  uint64_t rejected[FLD_REJ_COUNT];
  uint64_t dropped[FLD_DROP_COUNT];
  uint64_t gaps, gap_ticks, stream_resets;
  uint64_t stream_restarts, streams_evicted;
  double last_frame;            /* fln_now() of the newest processed frame, 0: none yet */
  uint64_t reports, reports_failed, windows_flagged;
  /* anomalies by modality name, names kept across model reloads so that a
   * counter never disappears while the process lives */
  int n_modnames, cap_modnames;
  char (*modname)[FL_NAME_MAX]; /* (cap_modnames), grown as models name more */
  uint64_t *anomalies;          /* (cap_modnames) */
  /* processing latency histogram, seconds */
  uint64_t lat_bucket[FLD_LAT_BUCKETS + 1];
  double lat_sum;
  uint64_t lat_count;
  /* event-loop lag: the latest sample and the largest since start, seconds */
  double lag_last, lag_max;
  uint64_t reloads_ok, reloads_failed;
  uint64_t input_disconnects;
  int64_t subscriptions;
  double start_time;
} fld_metrics;

/* The anomaly counter's index of a modality name, added at 0 when new (the
 * table grows: a model may have any number of modalities); -1 only when
 * memory runs out before any name is held. */
int fld_metrics_modality(fld_metrics *m, const char *name);
void fld_metrics_latency(fld_metrics *m, double seconds);

struct fld_app;
/* Starts the HTTP endpoint on [metrics] listen: /metrics, /healthz,
 * /readyz and /streams. */
int fld_http_start(struct fld_app *app);
/* The daemon's routes, as the endpoint serves them (for tests). */
fln_http_table fld_http_table(struct fld_app *app);
/* Renders /metrics (of the fld_app user) in the Prometheus text format into
 * a malloc'ed string. */
char *fld_metrics_render(void *user, size_t *len);

/* ---- engine.c -----------------------------------------------------------
 * A loaded model and the scratch it needs to score a batch of windows. */
#define FLD_MAX_BATCH 64

typedef struct {
  fl_bundle b;
  fl_ctx *ctx;
  int batch;
  /* The batch's windows: raw and corrected (C_i, T_i) buffers of their own,
   * scores and decisions (fl_pipeline_run). */
  fl_pipeline_window *win;   /* (batch) fl_pipeline_windows_new */
  Faultline__Block **by_mod; /* (M) fld_ingest_message's scratch */
  /* fld_report_publish's scratch */
  Faultline__ModalityReport *mr, **mrp; /* (M) each */
  float *resid, *cscore;                /* (nch) each */
  protobuf_c_boolean *cfaulty;          /* (nch) */
  size_t maxct;                               /* largest C_i T_i */
  float *rep;                                 /* (2, n_mod, maxct): report rows,
                                                 corrected then uncertainty */
  char version[40];                           /* hex of a 64-bit file hash, -uN when tuned */
  double load_time;                           /* Unix seconds */
  int n_layers;
  char (*layer_name)[FL_LAYER_NAME_MAX];
  float *layer_norm, *layer_target;
  int hyst_on, hyst_off;
} fld_engine;

/* Loads the model at path for cfg.  The file's [modality.*] (and [model]
 * window) must describe the model's layout, and its [detect] keys either
 * take effect here (hysteresis_on, hysteresis_off, margin: the thresholds
 * scaled) or equal the model's calibration; err names the difference. */
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
  float **ring;         /* (M) each (C_i, window * rate_i) */
  fl_stream_state state; /* baseline and hysteresis (fl_pipeline_run) */
  uint64_t report_seq;
  uint64_t frames;
  uint64_t epoch;      /* the publisher's session of the last frame (0: none given) */
  double last_recv;    /* fln_now() at its last processed frame */
  /* The last window's verdict, for /streams and the per-stream gauges. */
  int last_flag;
  float last_score;
  char last_faulty[FL_NAME_MAX]; /* the faulty modality ("" when none) */
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
enum { FLD_LIMIT_STREAMS = 0, FLD_LIMIT_MESSAGE, FLD_LIMIT_COUNT };

typedef struct fld_app {
  uv_loop_t *loop;
  char config_path[PATH_MAX];
  fld_config cfg;
  void *zctx;
  void *in_sock, *out_sock, *mon_sock;
  fln_zwatch in_w, out_w, mon_w;
  fld_engine *eng;
  fld_stream **streams;
  int n_streams;
  fld_slot pending[FLD_MAX_BATCH];
  int n_pending;
  fld_metrics m;
  fln_http http;
  fln_curve curve;
  /* life cycle */
  uv_signal_t sig_hup, sig_term, sig_int;
  fln_watchdog watchdog;
  uv_timer_t t_status, t_lag;
  uint64_t lag_expect;
  unsigned lag_ticks;
  int stopping;
  int exit_code;
  uint64_t status_frames, status_reports;
  double status_at;
  struct fld_tuner *tuner;       /* NULL unless [tune] enabled */
  /* Limits hit, each logged at most once per [log] limit_interval (the
   * endpoint's connection cap has its own, http.refused_log). */
  fln_limit limit[FLD_LIMIT_COUNT];
} fld_app;

/* metrics.c: logs that a limit was hit, at most once per
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
                    Faultline__Block **by_mod);
int fld_frame_valid_name(const char *s);

/* ingest.c: handles one received message (the parts of one frame). */
void fld_ingest_message(fld_app *app, zmq_msg_t *parts, int nparts, uint64_t t_recv);
/* Scores the pending windows and publishes their reports. */
void fld_ingest_flush(fld_app *app);
/* Frees every stream (model change with another layout, shutdown). */
void fld_streams_clear(fld_app *app);
/* Frees the streams without a frame for [input] stream_idle seconds at
 * `now` (fln_now()); returns how many. */
int fld_streams_evict(fld_app *app, double now);

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
/* notify.c: the timers of the daemon's life cycle under systemd: the
 * watchdog, the STATUS= line of rates and the event-loop lag probe. */
int fld_notify_start_timers(fld_app *app);
void fld_notify_stop_timers(fld_app *app);

#endif
