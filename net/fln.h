/* libfaultline-net: the transport every faultline program shares.
 *
 * Logging for journald, ZeroMQ sockets in a libuv loop, CurveZMQ, an HTTP
 * endpoint driven by the loop, and sd_notify.  It knows no model, frame or
 * report: faultlined, `faultline proxy` and `faultline bridge` build their
 * own state on top and hand it to these parts as callbacks and user
 * pointers.  Names are `fln_<module>_<verb>`; functions return 0 or a
 * negative code (FL_E... from faultline/error.h, or -errno).  Everything here
 * runs on the loop's thread unless a comment says otherwise. */
#ifndef FLN_H
#define FLN_H

#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>
#include <zmq.h>

#define FLN_VERSION "0.1.0"

/* ZeroMQ endpoints of one socket at most, and the length of one. */
#define FLN_MAX_ENDPOINTS 8
#define FLN_ENDPOINT_MAX 256

/* ---- log.c --------------------------------------------------------------
 * Lines on stderr with the syslog priority prefix "<N>" that journald reads
 * (sd-daemon(3)); lines above the configured level are not written. */
enum { FLN_ERR = 3, FLN_WARNING = 4, FLN_NOTICE = 5, FLN_INFO = 6, FLN_DEBUG = 7 };
void fln_log_set_level(int level);
/* Parses "err", "warning", "notice", "info", "debug" (or 3..7). */
int fln_log_parse_level(const char *s, int *level);
void fln_log(int prio, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* A limit being hit (a cap on streams, connections, message size) logs at
 * most once per interval seconds: the first hit of an interval logs a
 * warning, with the hits that the interval before it kept quiet, so that a
 * flood never floods the journal.  Zero-initialised, then set interval. */
typedef struct {
  double interval;
  double logged; /* CLOCK_MONOTONIC seconds of the last line */
  uint64_t quiet;
} fln_limit;
void fln_limit_hit(fln_limit *l, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void fln_limit_vhit(fln_limit *l, const char *fmt, va_list ap);

/* ---- zsock.c ------------------------------------------------------------
 * A ZeroMQ socket in the loop.  ZMQ_FD is edge-triggered: it becomes
 * readable when the socket's state changes, not while messages wait.  So on
 * every wake-up the watcher drains until ZMQ_EVENTS no longer says
 * ZMQ_POLLIN, and when it stops early (budget spent, to keep the loop fair)
 * it schedules itself again with a uv_idle instead of waiting for an edge
 * that will never come. */
typedef struct fln_zwatch fln_zwatch;
/* Receives at most budget messages with ZMQ_DONTWAIT; returns the count
 * handled (0 when the socket had nothing). */
typedef int (*fln_zdrain_fn)(fln_zwatch *w, int budget);
/* Called once after a drain pass, e.g. to flush batched work. */
typedef void (*fln_zafter_fn)(fln_zwatch *w);
struct fln_zwatch {
  void *sock;
  void *user;
  int budget;
  fln_zdrain_fn drain;
  fln_zafter_fn after;
  uv_poll_t poll;
  uv_idle_t idle;
  int active, idle_on, closing;
  uint64_t wakeups, continuations;
};
int fln_zwatch_start(fln_zwatch *w, uv_loop_t *loop, void *sock, int budget,
                     fln_zdrain_fn drain, fln_zafter_fn after, void *user);
/* Stops watching; the handles close asynchronously (the loop must run once). */
void fln_zwatch_stop(fln_zwatch *w);

/* Receives one multipart message (up to max parts) without blocking.
 * Returns the number of parts, 0 on EAGAIN, a negative code on error or
 * when it has more parts than max (the rest is discarded; *overflow = 1). */
int fln_zrecv(void *sock, zmq_msg_t *parts, int max, int *overflow);
void fln_zclose_parts(zmq_msg_t *parts, int n);
/* zmq_msg_recv and zmq_send of one part, made again when a signal
 * interrupted them (EINTR: nothing was taken or sent), so that a signal never
 * fakes a lost message or leaves a multipart message half sent.
 * fln_zmsg_recv returns the part's size, fln_zsend 0; both -errno on error. */
int fln_zmsg_recv(zmq_msg_t *m, void *sock, int flags);
int fln_zsend(void *sock, const void *buf, size_t len, int flags);
/* A monitor of sock's events (zmq_socket_monitor, events a mask of
 * ZMQ_EVENT_...) published on the inproc address addr: returns the PAIR
 * socket that receives them (LINGER 0, for a fln_zwatch), or NULL. */
void *fln_zmon_open(void *zctx, void *sock, const char *addr, int events);
/* Receives one event from such a socket without blocking: its ZMQ_EVENT_
 * number, 0 when none waits, a negative code on error. */
int fln_zmon_recv(void *mon);
/* zmq_ctx_term, made again when a signal interrupted it. */
void fln_zterm(void *ctx);
/* The calls above made again after a signal interrupted them, since start
 * (all threads): tests read it to know that their signals reached the calls
 * under test. */
uint64_t fln_zsock_interrupted(void);
/* Starts fn(arg) on a thread that takes no signals (0 or -errno): the loop
 * thread handles them all, and one landing in a blocking libzmq call there
 * would end it with EINTR. */
int fln_thread_quiet(pthread_t *t, void *(*fn)(void *), void *arg);

/* ---- curve.c ------------------------------------------------------------
 * CurveZMQ: a key pair for this program, the client keys it admits, and the
 * ZAP handler (a REP socket on inproc://zeromq.zap.01 watched by the loop)
 * that admits them on every socket made a CURVE server. */
typedef struct {
  /* Set before fln_curve_start. */
  char secret_key_file[PATH_MAX]; /* relative: under $CREDENTIALS_DIRECTORY */
  char authorized_keys[PATH_MAX]; /* directory of client public keys */
  /* How error messages name the two settings, e.g. "[security] secret_key". */
  const char *secret_key_name, *authorized_keys_name;
  /* Filled by fln_curve_start. */
  int on;
  char secret[41], public[41];
  int n_keys;
  char (*keys)[41];
  void *zap_sock;
  fln_zwatch zap_w;
  uint64_t allowed, denied;       /* ZAP requests answered, by result */
} fln_curve;

/* Loads the key pair and the authorised keys and starts the ZAP handler in
 * zctx and loop; err says what failed. */
int fln_curve_start(fln_curve *c, uv_loop_t *loop, void *zctx, char *err, size_t errlen);
/* Makes sock a CURVE server with this program's key (no-op when off). */
int fln_curve_apply(const fln_curve *c, void *sock);
/* Makes sock a CURVE client, with this program's key pair, of the server
 * whose public key is in path (the bare 40 Z85 characters or a
 * certificate's public-key = "..." line). */
int fln_curve_client(const fln_curve *c, void *sock, const char *path, char *err,
                     size_t errlen);
/* Re-reads the authorised keys directory (SIGHUP); the old keys stay on
 * failure. */
int fln_curve_reload(fln_curve *c, char *err, size_t errlen);
/* Stops the ZAP handler's watcher (the loop must run once to close it). */
void fln_curve_stop(fln_curve *c);
/* Closes the ZAP socket and frees the keys, before zmq_ctx_term. */
void fln_curve_close(fln_curve *c);

/* ---- http.c -------------------------------------------------------------
 * A small read-only HTTP endpoint (libmicrohttpd in external-poll epoll
 * mode, driven by a uv_poll on its epoll fd, so that a handler reads the
 * loop's state in the loop's thread).  Each program gives a table of
 * routes, one per path.
 *
 * A route answers one request in one of two ways.  answer sets the status
 * and the body and returns 1 when the body is malloc'ed (the server frees
 * it), 0 when it is static, -1 on failure (the connection is closed).
 * render, used when answer is NULL, returns a malloc'ed body served with 200
 * (NULL on failure), e.g. a Prometheus text rendering. */
typedef int (*fln_http_fn)(void *user, const char *url, unsigned *status, const char **body,
                           size_t *len);
typedef char *(*fln_render_fn)(void *user, size_t *len);
typedef struct {
  const char *path;         /* matched exactly */
  fln_http_fn answer;
  fln_render_fn render;
  const char *content_type; /* a Content-Type header, or NULL for none */
} fln_route;

/* The Content-Type of the Prometheus text format. */
#define FLN_PROMETHEUS_TEXT "text/plain; version=0.0.4; charset=utf-8"

typedef struct {
  const fln_route *routes;
  int n_routes;
  const char *not_found;    /* the body of a 404 */
  void *user;               /* passed to every route */
} fln_http_table;

typedef struct {
  fln_http_table table;
  char listen[128];         /* "ADDR:PORT" or "[V6]:PORT"; empty: no endpoint */
  int max_connections;      /* open connections at most; more are refused */
  int max_request;          /* bytes of one request's line and headers at most */
  const char *max_connections_name; /* the setting, named in the refusal's log line */
  fln_limit refused_log;    /* its interval may be changed at any time */
  /* Counters a program's /metrics reports. */
  int open;
  uint64_t refused;
  /* The server's state. */
  struct MHD_Daemon *mhd;
  uv_poll_t poll;
  uv_timer_t timer;
  int on;
} fln_http;

/* Starts serving h->listen (a no-op when it is empty). */
int fln_http_start(fln_http *h, uv_loop_t *loop);
void fln_http_stop(fln_http *h);
/* Routes one request without the network, as the server does: anything but
 * GET and HEAD is 405, a path in no route 404 with table->not_found. */
int fln_http_route(const fln_http_table *t, const char *method, const char *url,
                   unsigned *status, const char **body, size_t *len);
/* The answer of a /healthz: 200 "ok" while serving, 503 "stopping" once a
 * stop began. */
int fln_http_health(int stopping, unsigned *status, const char **body, size_t *len);

/* ---- notify.c -----------------------------------------------------------
 * systemd's sd_notify (no-ops without NOTIFY_SOCKET, i.e. not under
 * systemd), and the watchdog ping from a loop timer: a ping then proves that
 * the loop turns, which is what systemd should restart a program for. */
double fln_now(void); /* Unix time, seconds */
/* READY=1 (at start and after a reload) with MAINPID and a STATUS= line. */
void fln_notify_ready(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void fln_notify_reloading(void);
void fln_notify_stopping(const char *status);
void fln_notify_status(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Asked before each ping: returns 0 to ping (with a STATUS= line when it
 * wrote one into status), anything else to skip this ping. */
typedef int (*fln_watchdog_fn)(void *user, char *status, size_t len);
typedef struct {
  uv_timer_t timer;
  fln_watchdog_fn check;
  void *user;
  int on;
} fln_watchdog;
/* Pings at half of WatchdogSec= while the loop turns (not started when the
 * unit has no watchdog); check may be NULL. */
int fln_watchdog_start(fln_watchdog *w, uv_loop_t *loop, fln_watchdog_fn check, void *user);
void fln_watchdog_stop(fln_watchdog *w);

#endif
