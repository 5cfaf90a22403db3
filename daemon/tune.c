/* faultlined tune: online fine-tuning (the normalisation follows the
 * operating point, the compute block trains).  See fld.h.
 *
 * The maths is lib/tune.c's; this file decides which windows are clean,
 * when a job may run, and moves weights and files around:
 *
 *   gate       a window is clean when its score is below gate x threshold
 *              and no window of its stream within `span` windows before or
 *              after it was above the threshold or flagged; candidates wait
 *              in a per-stream ring until their later neighbours are seen
 *   schedule   one job at a time, on the tuner's own thread, which runs
 *              under SCHED_IDLE (nice 10 where that is refused or with
 *              idle = 0), at most max_updates_per_hour; within a job it
 *              works in short slices with sleeps between them so that
 *              training takes about cpu_share of one core (see fld__pace)
 *   no lock    a thread at idle priority must never hold anything the loop
 *              waits for: preempted (any wakeup on its core preempts it) it
 *              may not run again for hundreds of milliseconds on a busy
 *              machine, and the loop would stall as long.  The libuv
 *              thread pool does exactly that at the end of every job (the
 *              worker takes the loop's work-queue mutex and calls
 *              uv_async_send, whose loop side spins until the sender is done),
 *              so the tuner does not use it: the loop hands a job over with
 *              a semaphore post and the worker reports with an atomic flag
 *              and one byte into a pipe that the loop polls.  Neither side
 *              takes a lock the other holds.
 *   snapshot   the loop's part of a job start is O(1): it notes the buffer's
 *              windows and the calibration (the parameters are the job's
 *              already, see fl_tune_job_begin); the worker copies the
 *              windows, and until it has, windows that pass the gate wait in
 *              a small inbox instead of overwriting the ring it reads
 *   swap       the job trains on private copies; when it is done the loop,
 *              between batches, copies what an update changes (block, head,
 *              normalisation: 98 % of the default model's parameters, about
 *              5 MB, 0.7-0.9 ms) and the calibration into the engine (and
 *              re-standardises the buffered windows),
 *              so a window is scored entirely by the old or entirely by the
 *              new model
 *   files      every checkpoint_every accepted updates the worker writes the
 *              accepted model (fl_bundle_save: temporary file, fsync, rename,
 *              fsync of the directory), the previous one kept as PATH.1, and
 *              once more on shutdown; at start the newest valid checkpoint
 *              of the same base model is put in service, else the base.
 */
#define _GNU_SOURCE /* SCHED_IDLE */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <fcntl.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "faultline/error.h"
#include "faultline/tune.h"
#include "fld.h"

struct fld_tune_stream {
  fl_tune_buffer *cand; /* the last span + 1 windows that passed the score test */
  int run;              /* consecutive windows without alarm */
};

/* The worker thread's side of a tuner: allocated apart, so that a thread
 * told to quit while the loop goes on (tuning switched off by a reload)
 * may wake up and free it after the tuner is gone. */
typedef struct {
  uv_sem_t go;          /* posted by the loop: a job (or quit) is waiting */
  atomic_int quit;
  struct fld_tuner *t;  /* read by the worker only after a post of a job */
  int idle;             /* [tune] idle when the thread started */
  int wfd;              /* the write end of the wake pipe */
  uint64_t slice0;      /* the worker's CPU time (ns) when its last pause
                         * began (the job's start before the first) */
  double slice_ns, rest; /* the job's pacing (fld__pace_job): slice, and
                          * pause per nanosecond run (1 / cpu_share - 1) */
  timer_t timer;        /* signals the worker while a job runs (fld__pace) */
  int timed;            /* timer set up */
} fld_tune_thread;

/* The pipe the worker writes one byte into when a job is done, and the
 * loop's poll handle on its read end (freed by the close callback). */
typedef struct {
  uv_poll_t h;
  int fd[2];
} fld_tune_wake;

typedef struct fld_tuner {
  fld_app *app;
  fl_tune_config cfg;
  fl_tune_buffer *buf;
  fl_tune_buffer *inbox;   /* windows that passed while the worker copied buf */
  fl_tune_buffer *retired; /* the buffer a job in flight may still copy */
  fl_tune_job *job;
  fld_tune_thread *th;     /* NULL until the first job */
  pthread_t thread;
  fld_tune_wake *wake;
  atomic_int snapped;    /* the worker has copied the buffer's windows */
  atomic_int done;       /* the worker has finished the job */
  atomic_int hurry;      /* shutdown or reload waits for the job: no more pauses */
  double share;          /* [tune] cpu_share when the job started */
  double work_cpu, work_wall; /* the worker's CPU and wall time for the job (s) */
  int busy;              /* a job is with the worker */
  int stale;             /* the engine changed while it ran: discard */
  int stop_pending;      /* shutdown waits for the job, then checkpoints */
  int disable;           /* tuning was switched off while a job ran */
  int span;
  uint64_t new_windows;  /* kept since the last job started */
  double next_at;        /* uv_now (s) before which no job starts */
  char base[17];         /* the base model's hash */
  char path[PATH_MAX];   /* checkpoint; empty: none */
  /* the job's outcome, written by the worker, read after it */
  fl_tune_result res;
  int rc, save_rc, save_due;
  int nice_failed;       /* a worker could not lower its priority (logged once) */
  int pace_failed;       /* a worker has no pacing timer (1: to log, 2: logged) */
  uint64_t save_updates;
  char save_err[400];
  char lineage[1024];      /* of the model in service */
  char save_lineage[1024]; /* of the update the worker may checkpoint */
  float *cand_norm;        /* (n_layers) the candidate's spectral norms, measured by
                            * the worker so that the swap does not stall the loop */
  int n_norm;
  double swap_ms, swap_max_ms; /* loop time of the last and the slowest swap */
  double prep_ms, prep_max_ms; /* of the last and the slowest job's start */
  /* metrics */
  uint64_t updates;      /* accepted updates in this model's lineage */
  uint64_t steps, accepted, rejected, failed, ckpt_ok, ckpt_failed;
  double seconds;
  fl_tune_result last;
  int have_last;
} fld_tuner;

static double fld__mono(fld_app *app) { return (double)uv_now(app->loop) / 1000.0; }

void fld_tune_stream_free(fld_stream *st) {
  if (!st || !st->tune) return;
  fl_tune_buffer_free(st->tune->cand);
  free(st->tune);
  st->tune = NULL;
}

static void fld__set_version(fld_tuner *t) {
  fld_engine *e = t->app->eng;
  if (t->updates)
    snprintf(e->version, sizeof e->version, "%s-u%" PRIu64, t->base, t->updates);
  else
    snprintf(e->version, sizeof e->version, "%s", t->base);
}

static void fld__measure_norms(fld_engine *e) {
  for (int l = 0; l < e->n_layers; l++)
    if (fl_model_layer_norm(e->b.model, l, &e->layer_norm[l])) e->layer_norm[l] = -1.0f;
}

/* The updates count of a checkpoint's lineage, -1 if it is not one of ours
 * for this base model. */
static long fld__lineage_updates(const char *lin, const char *base) {
  char want[64];
  snprintf(want, sizeof want, "\"base\":\"%s\"", base);
  if (!strstr(lin, want)) return -1;
  const char *u = strstr(lin, "\"updates\":");
  if (!u) return -1;
  return strtol(u + 10, NULL, 10);
}

/* Sizes the array the worker measures the candidate's norms into for a
 * model of nl layers; on failure it keeps the old one (the swap then
 * measures on the loop).  Only while no job is in flight: one writes it. */
static int fld__size_norms(fld_tuner *t, int nl) {
  if (t->n_norm == nl) return 0;
  float *n = realloc(t->cand_norm, sizeof(float) * (size_t)(nl > 0 ? nl : 1));
  if (!n) return FL_ENOMEM;
  t->cand_norm = n;
  t->n_norm = nl;
  return 0;
}

static int fld__same_spec(const fl_model *a, const fl_model *b) {
  const fl_model_spec *x = fl_model_spec_of(a), *y = fl_model_spec_of(b);
  if (fl_model_param_count(a) != fl_model_param_count(b) || x->window != y->window ||
      x->n_mod != y->n_mod)
    return 0;
  for (int i = 0; i < x->n_mod; i++)
    if (strcmp(x->mod[i].name, y->mod[i].name) || x->mod[i].channels != y->mod[i].channels ||
        x->mod[i].rate != y->mod[i].rate)
      return 0;
  return 1;
}

/* A daemon killed while writing a checkpoint leaves PATH.tmp.PID (and
 * perhaps PATH.1.lnk) behind; the files of processes that are gone are
 * removed, so that a crash loop cannot fill the state directory. */
static void fld__sweep(const char *path) {
  const char *slash = strrchr(path, '/');
  char dir[PATH_MAX];
  snprintf(dir, sizeof dir, "%.*s", slash ? (int)(slash - path) : 1, slash ? path : ".");
  if (slash == path) snprintf(dir, sizeof dir, "/");
  const char *base = slash ? slash + 1 : path;
  size_t bl = strlen(base);
  DIR *d = opendir(dir);
  if (!d) return;
  struct dirent *de;
  while ((de = readdir(d))) {
    const char *n = de->d_name;
    if (strncmp(n, base, bl)) continue;
    const char *rest = n + bl;
    int stale = !strcmp(rest, ".1.lnk");
    if (!strncmp(rest, ".tmp.", 5)) {
      char *end;
      long pid = strtol(rest + 5, &end, 10);
      stale = !*end && pid > 0 && pid != (long)getpid() && kill((pid_t)pid, 0) != 0 &&
              errno == ESRCH;
    }
    if (!stale) continue;
    char full[PATH_MAX + 256];
    snprintf(full, sizeof full, "%s/%s", dir, n);
    if (unlink(full) == 0) fld_log(FLD_INFO, "tune: removed %s, left by an interrupted write", full);
  }
  closedir(d);
}

/* Puts the newest valid checkpoint of this base model in service. */
static void fld__resume(fld_tuner *t) {
  if (!t->path[0]) return;
  fld__sweep(t->path);
  fld_engine *e = t->app->eng;
  char alt[PATH_MAX + 4];
  snprintf(alt, sizeof alt, "%s.1", t->path);
  const char *paths[2] = {t->path, alt};
  fl_bundle best;
  long best_u = -1;
  int have = 0;
  const char *from = NULL;
  for (int k = 0; k < 2; k++) {
    if (access(paths[k], F_OK)) continue;
    fl_bundle b;
    char msg[400];
    if (fl_bundle_load(&b, paths[k], msg, sizeof msg)) {
      fld_log(FLD_WARNING, "tune: ignoring checkpoint: %s", msg);
      continue;
    }
    long u = fld__lineage_updates(b.lineage, t->base);
    if (u < 0 || !fld__same_spec(b.model, e->b.model)) {
      fld_log(FLD_NOTICE, "tune: checkpoint %s belongs to another base model; ignored",
              paths[k]);
      fl_bundle_free(&b);
      continue;
    }
    if (u > best_u) {
      if (have) fl_bundle_free(&best);
      best = b;
      best_u = u;
      have = 1;
      from = paths[k];
    } else {
      fl_bundle_free(&b);
    }
  }
  if (!have) return;
  if (fl_model_copy_params(e->b.model, best.model)) {
    fld_log(FLD_WARNING, "tune: checkpoint %s does not fit the model; serving the base", from);
  } else {
    e->b.calib = best.calib;
    t->updates = (uint64_t)best_u;
    snprintf(t->lineage, sizeof t->lineage, "%s", best.lineage);
    fld__measure_norms(e);
    fld__set_version(t);
    fld_log(FLD_NOTICE, "tune: resumed from checkpoint %s (%ld updates on model %s)", from,
            best_u, t->base);
  }
  fl_bundle_free(&best);
}

int fld_tune_start(fld_app *app, char *err, size_t errlen) {
  const fld_config *c = &app->cfg;
  if (!c->tune_enabled) return 0;
  fld_tuner *t = app->tuner;
  if (!t) {
    if (!(t = calloc(1, sizeof *t))) return FL_ENOMEM;
    app->tuner = t;
    t->app = app;
  }
  fld_engine *e = app->eng;
  /* The base's identity is its file hash (a reload brings a new one). */
  snprintf(t->base, sizeof t->base, "%.16s", e->version);
  fl_tune_defaults(&t->cfg);
  t->cfg.steps = c->tune_steps;
  t->cfg.lr = (float)c->tune_lr;
  t->cfg.margin = (float)c->tune_margin;
  t->cfg.val_fraction = (float)c->tune_val_fraction;
  t->cfg.min_windows = c->tune_min_windows;
  t->cfg.norm_rate = (float)c->tune_norm_rate;
  t->cfg.norm_max = (float)c->tune_norm_max;
  t->cfg.norm_parts = c->tune_norm_parts;
  t->cfg.norm_band = (float)c->tune_norm_band;
  t->cfg.recalibrate = c->tune_recalibrate;
  t->cfg.detect = e->b.detect;
  t->cfg.train.clamp = e->b.clamp;
  t->span = c->tune_span > 0 ? c->tune_span : e->hyst_on + e->hyst_off;
  t->path[0] = 0;
  if (c->tune_checkpoint[0]) {
    const char *sd = getenv("STATE_DIRECTORY");
    int n;
    if (c->tune_checkpoint[0] == '/')
      n = snprintf(t->path, sizeof t->path, "%s", c->tune_checkpoint);
    else if (!sd || !*sd) /* not where the working directory happens to be */
      n = 0;
    else /* systemd may list several directories, colon-separated: the first */
      n = snprintf(t->path, sizeof t->path, "%.*s/%s", (int)strcspn(sd, ":"), sd,
                   c->tune_checkpoint);
    if (n < 0 || (size_t)n >= sizeof t->path) {
      snprintf(err, errlen, "[tune] checkpoint path is too long");
      return FL_EINVAL;
    }
  }
  /* A job in flight may still be copying the old buffer's windows: it is
   * freed once the job is done. */
  if (t->busy && !t->retired) t->retired = t->buf;
  else fl_tune_buffer_free(t->buf);
  fl_tune_buffer_free(t->inbox);
  t->buf = t->inbox = NULL;
  int rc = fl_tune_buffer_create(&t->buf, e->b.model, c->tune_buffer);
  int in_cap = c->tune_buffer / 4 > 2 ? c->tune_buffer / 4 : 2;
  if (!rc) rc = fl_tune_buffer_create(&t->inbox, e->b.model, in_cap);
  /* A job in flight writes the old array; it is resized once it is done. */
  if (!rc && !t->busy) rc = fld__size_norms(t, e->n_layers);
  if (!rc && !t->busy) {
    fl_tune_job_free(t->job);
    t->job = NULL;
    rc = fl_tune_job_create(&t->job, e->b.model, &t->cfg);
  } else if (!rc) {
    t->stale = 1; /* the job in flight belongs to the old model */
    atomic_store_explicit(&t->hurry, 1, memory_order_relaxed);
  }
  if (rc) {
    snprintf(err, errlen, "[tune] cannot set up tuning: %s", fl_strerror(rc));
    return rc;
  }
  for (int s = 0; s < app->n_streams; s++) fld_tune_stream_free(app->streams[s]);
  t->updates = 0;
  snprintf(t->lineage, sizeof t->lineage, "%s", e->b.lineage);
  t->new_windows = 0;
  t->next_at = 0;
  fld__resume(t);
  fld_log(FLD_NOTICE, "tune: on (buffer %d windows, gate %.2f x threshold, span %d, %d steps, "
                      "checkpoint %s)", c->tune_buffer, c->tune_gate, t->span, c->tune_steps,
          t->path[0] ? t->path : "none");
  return 0;
}

/* Moves the windows that waited in the inbox into the buffer, oldest
 * first.  Only while the worker does not read the buffer. */
static void fld__drain_inbox(fld_tuner *t) {
  int n = fl_tune_buffer_count(t->inbox);
  if (!n) return;
  for (int age = n - 1; age >= 0; age--) fl_tune_buffer_move(t->buf, t->inbox, age);
  fl_tune_buffer_clear(t->inbox);
}

void fld_tune_observe(fld_app *app, int k, fld_stream *st, float score, int flagged) {
  fld_tuner *t = app->tuner;
  if (!t || app->stopping) return;
  fld_engine *e = app->eng;
  if (!st->tune) {
    if (!(st->tune = calloc(1, sizeof *st->tune))) return;
    if (fl_tune_buffer_create(&st->tune->cand, e->b.model, t->span + 1)) {
      free(st->tune);
      st->tune = NULL;
      return;
    }
  }
  struct fld_tune_stream *ts = st->tune;
  int ok = !flagged && score < (float)app->cfg.tune_gate * e->b.calib.threshold;
  if (!ok) {
    /* This alarm disqualifies the span windows before it, and the run
     * restarts: the next span windows are disqualified too. */
    ts->run = 0;
    fl_tune_buffer_clear(ts->cand);
    return;
  }
  fl_tune_buffer_push(ts->cand, e->ctx, k);
  ts->run++;
  /* The window span back has span clean windows on either side. */
  if (ts->run >= 2 * t->span + 1) {
    fl_tune_buffer *dst = t->buf;
    if (t->busy && !atomic_load_explicit(&t->snapped, memory_order_acquire)) dst = t->inbox;
    else fld__drain_inbox(t);
    if (!fl_tune_buffer_move(dst, ts->cand, t->span)) t->new_windows++;
  }
}

static void fld__lineage(fld_tuner *t, uint64_t updates, char *out, size_t len) {
  snprintf(out, len,
           "{\"base\":\"%s\",\"updates\":%" PRIu64 ",\"tuned\":%.0f,"
           "\"val_loss\":%.6g,\"false_alarm_rate\":%.6g}",
           t->base, updates, fld_now(), (double)t->res.loss_new, (double)t->res.far_new);
}

/* Keeps the current checkpoint as PATH.1 before a new one replaces PATH: a
 * hard link renamed over PATH.1, so that PATH itself never goes missing and
 * fl_bundle_save's rename replaces it atomically.  Some valid checkpoint
 * exists at every instant. */
static void fld__keep_previous(const char *path) {
  char prev[PATH_MAX + 4], tmp[PATH_MAX + 8];
  snprintf(prev, sizeof prev, "%s.1", path);
  snprintf(tmp, sizeof tmp, "%s.1.lnk", path);
  unlink(tmp);
  if (link(path, tmp) == 0 && rename(tmp, prev) != 0) unlink(tmp);
}

/* The priority of the thread that runs tuning jobs.  Training competes
 * with the loop thread for the cores.  Under SCHED_IDLE (Linux) the worker
 * runs only on a core nothing else wants, and a frame that wakes the loop
 * preempts it at once; nice 10 (the fallback elsewhere) still gets a
 * weighted share of a contended core and lets the loop wait for its slice
 * to end.  The thread is the tuner's alone and keeps its priority for its
 * life (without CAP_SYS_NICE it could not raise it back anyway), which is
 * why it must never hold a lock the loop takes (see the top of the file). */
#define FLD_TUNE_NICE 10

static int fld__lower_priority(int idle) {
#ifdef SCHED_IDLE
  struct sched_param sp;
  memset(&sp, 0, sizeof sp);
  if (idle && pthread_setschedparam(pthread_self(), SCHED_IDLE, &sp) == 0) return 0;
#else
  (void)idle;
#endif
  /* On Linux a nice value belongs to the thread. */
  return setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), FLD_TUNE_NICE) ? -1 : 1;
}

/* Pacing.  While a job runs, the worker alternates short slices of work
 * and pauses so that it uses about cpu_share of a core: slices of
 * share x FLD_TUNE_PERIOD_NS of its CPU time (at least FLD_TUNE_SLICE_NS),
 * each followed by a pause of ran (1 / cpu_share - 1) (at least
 * FLD_TUNE_PAUSE_NS, at most FLD_TUNE_PAUSE_MAX_NS; a smaller share is
 * made up between jobs, see fld__after).  At the default share 0.25 that
 * is 50 us of work, then 150 us of sleep.  `ran` is the CPU time since the
 * last pause began, not the slice: it includes the pacing's own costs (the
 * timer's signal, the handler, the sleep and its wakeup, a slice overrun),
 * which are the thread's CPU time too; paced by the slice, the worker took
 * 0.27-0.29 of a core at share 0.25, and 0.31 under ASan.
 *
 * Why pauses, when the worker runs under SCHED_IDLE: on Linux 6.6 and
 * later (EEVDF) a thread at idle priority can keep its core until the next
 * scheduler tick (4 ms at HZ 250) while a normal thread waits in that
 * core's queue: a queued thread that is not "eligible" yet is not picked
 * before it, and a running thread is preempted for another only when that
 * one wakes up.  A core that runs an idle-priority thread does not count as
 * idle either, so a thread queued behind a busy one on the other core is
 * not pulled over.  On the 2-core benchmark machine a perf sched trace
 * showed ZeroMQ's I/O threads waiting up to 7 ms so; a SCHED_IDLE spinner
 * with no pauses beside tuning off raised frame-to-subscriber p99 from 1.2
 * to 2.0-4.5 ms, one that slept 30 us every 200 us did not.  A pause
 * leaves the core to whatever waits, and an idle core pulls work.
 *
 * Why short ones: on a virtual machine a core that sleeps longer than the
 * host's halt polling is given to another guest, and a wakeup sent to it
 * waits until the host runs it again (1.1 ms in a trace with 600 us
 * pauses).  Pauses of a few hundred microseconds at most keep it ready.
 *
 * How: a one-shot CLOCK_MONOTONIC timer signals the worker thread when
 * its slice should be spent; the handler reads the thread's CPU time,
 * sleeps if it is (else waits for the rest), and sets the timer again.
 * The worker thus sleeps at arbitrary points of the job, as it is
 * preempted at arbitrary points at idle priority: the rule at the top of
 * this file (it holds nothing the loop waits for) covers both.
 * clock_gettime, clock_nanosleep and timer_settime are async-signal-safe. */
#define FLD_TUNE_PERIOD_NS 200000.0
#define FLD_TUNE_SLICE_NS 50000.0
#define FLD_TUNE_PAUSE_NS 20000.0
#define FLD_TUNE_PAUSE_MAX_NS 2000000.0

static uint64_t fld__cpu_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* The worker whose job is being paced, on its own thread (NULL between
 * jobs): what the handler reads. */
static _Thread_local fld_tune_thread *fld__paced;

/* Signals the worker in ns nanoseconds (at least 1 us); ns 0 disarms. */
static void fld__pace_after(fld_tune_thread *th, double ns) {
  struct itimerspec it;
  memset(&it, 0, sizeof it);
  if (ns > 0.0) it.it_value.tv_nsec = ns > 1000.0 ? (long)ns : 1000;
  timer_settime(th->timer, 0, &it, NULL);
}

static void fld__pace(int sig) {
  (void)sig;
  fld_tune_thread *th = fld__paced;
  if (!th) return;
  int saved = errno;
  uint64_t now = fld__cpu_ns();
  double ran = (double)(now - th->slice0);
  if (ran < th->slice_ns) {
    /* Preempted for part of the slice: the rest of it. */
    fld__pace_after(th, th->slice_ns - ran);
  } else if (!atomic_load_explicit(&th->t->hurry, memory_order_relaxed)) {
    double pause = ran * th->rest;
    pause = pause < FLD_TUNE_PAUSE_NS       ? FLD_TUNE_PAUSE_NS
            : pause > FLD_TUNE_PAUSE_MAX_NS ? FLD_TUNE_PAUSE_MAX_NS
                                            : pause;
    struct timespec ts = {0, (long)pause};
    th->slice0 = now;
    clock_nanosleep(CLOCK_MONOTONIC, 0, &ts, NULL);
    fld__pace_after(th, th->slice_ns);
  }
  errno = saved;
}

/* Sets up the calling worker thread's pacing: the handler, the signal
 * unblocked on this thread alone, a timer that signals it (th->timed).
 * Without them the worker runs unpaced, at its priority only, and waits
 * between jobs for its share. */
static void fld__pace_init(fld_tune_thread *th) {
  int sig = SIGRTMIN + 2;
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = fld__pace;
  sa.sa_flags = SA_RESTART;
  sigemptyset(&sa.sa_mask);
  if (sigaction(sig, &sa, NULL)) return;
  struct sigevent ev;
  memset(&ev, 0, sizeof ev);
  ev.sigev_notify = SIGEV_THREAD_ID;
  ev.sigev_signo = sig;
  ev._sigev_un._tid = (pid_t)syscall(SYS_gettid);
  if (timer_create(CLOCK_MONOTONIC, &ev, &th->timer)) return;
  th->timed = 1;
  sigset_t one;
  sigemptyset(&one);
  sigaddset(&one, sig);
  pthread_sigmask(SIG_UNBLOCK, &one, NULL);
  /* Pauses of tens of microseconds: the default slack would add 50. */
  prctl(PR_SET_TIMERSLACK, 5000UL, 0, 0, 0);
}

/* Starts (share > 0) or stops pacing the calling worker's job. */
static void fld__pace_job(fld_tune_thread *th, double share) {
  if (!th->timed) return;
  if (share > 0.0) {
    double slice = share * FLD_TUNE_PERIOD_NS;
    if (slice < FLD_TUNE_SLICE_NS) slice = FLD_TUNE_SLICE_NS;
    th->slice_ns = slice;
    th->rest = share < 1.0 ? 1.0 / share - 1.0 : 0.0;
    th->slice0 = fld__cpu_ns();
    fld__paced = th;
    fld__pace_after(th, slice);
  } else {
    fld__paced = NULL;
    fld__pace_after(th, 0.0);
  }
}

static void fld__job(fld_tuner *t) {
  t->rc = fl_tune_job_snapshot(t->job);
  /* From here on the loop may write the buffer again. */
  atomic_store_explicit(&t->snapped, 1, memory_order_release);
  if (!t->rc) t->rc = fl_tune_job_run(t->job, &t->res);
  t->save_rc = 0;
  if (t->rc || !t->res.accepted) return;
  /* The power iterations of every layer take tens of milliseconds: here,
   * on the job's private candidate, not on the loop after the swap. */
  fl_model *cand = fl_tune_job_model(t->job);
  for (int l = 0; l < t->n_norm; l++)
    if (fl_model_layer_norm(cand, l, &t->cand_norm[l])) t->cand_norm[l] = -1.0f;
  if (!t->save_due) return;
  /* The checkpoint is the accepted model: the job's candidate and its new
   * calibration, which the loop is about to copy into the engine. */
  fld__lineage(t, t->save_updates, t->save_lineage, sizeof t->save_lineage);
  fl_bundle b;
  memset(&b, 0, sizeof b);
  b.model = cand;
  b.calib = *fl_tune_job_calib(t->job);
  b.detect = t->cfg.detect;
  b.clamp = t->cfg.train.clamp;
  snprintf(b.lineage, sizeof b.lineage, "%s", t->save_lineage);
  fld__keep_previous(t->path);
  t->save_rc = fl_bundle_save(&b, t->path, t->save_err, sizeof t->save_err);
}

/* One job on the worker, timed: its CPU time sets the wait before the next
 * (fld__after). */
static void fld__work(fld_tune_thread *th, fld_tuner *t) {
  uint64_t w0 = uv_hrtime(), c0 = fld__cpu_ns();
  fld__pace_job(th, t->share);
  fld__job(t);
  fld__pace_job(th, 0.0);
  t->work_cpu = (double)(fld__cpu_ns() - c0) * 1e-9;
  t->work_wall = (double)(uv_hrtime() - w0) * 1e-9;
}

static int fld__checkpoint_now(fld_tuner *t) {
  if (!t->path[0] || !t->updates) return 0;
  fld_engine *e = t->app->eng;
  fl_bundle b = e->b;
  char err[400];
  snprintf(b.lineage, sizeof b.lineage, "%s", t->lineage);
  fld__keep_previous(t->path);
  int rc = fl_bundle_save(&b, t->path, err, sizeof err);
  if (rc) {
    t->ckpt_failed++;
    fld_log(FLD_ERR, "tune: checkpoint failed: %s", err);
  } else {
    t->ckpt_ok++;
    fld_log(FLD_INFO, "tune: checkpoint %s (%" PRIu64 " updates)", t->path, t->updates);
  }
  return rc;
}

static void *fld__thread(void *arg) {
  fld_tune_thread *th = arg;
  pthread_setname_np(pthread_self(), "fld-tune"); /* in ps -L, top -H, perf */
  int r = fld__lower_priority(th->idle), first = 1;
  fld__pace_init(th);
  for (;;) {
    uv_sem_wait(&th->go);
    if (atomic_load_explicit(&th->quit, memory_order_acquire)) break;
    fld_tuner *t = th->t;
    if (first) {
      first = 0;
      if (r < 0) t->nice_failed = 1;
      else if (r > 0 && th->idle) t->nice_failed = 3;
      if (!th->timed) t->pace_failed = 1;
    }
    fld__work(th, t);
    atomic_store_explicit(&t->done, 1, memory_order_release);
    /* No lock, no handle: one byte the loop's poll sees. */
    char c = 1;
    while (write(th->wfd, &c, 1) < 0 && errno == EINTR) {}
  }
  if (th->timed) timer_delete(th->timer);
  uv_sem_destroy(&th->go);
  free(th);
  return NULL;
}

static void fld__wake_closed(uv_handle_t *h) {
  fld_tune_wake *w = h->data;
  close(w->fd[0]);
  close(w->fd[1]);
  free(w);
}

/* Closes the loop's end of the worker's reports (once no job is in flight):
 * the loop can then end. */
static void fld__close_wake(fld_tuner *t) {
  if (!t->wake) return;
  t->wake->h.data = t->wake;
  uv_close((uv_handle_t *)&t->wake->h, fld__wake_closed);
  t->wake = NULL;
}

static void fld__after(fld_tuner *t);

static void fld__wake_cb(uv_poll_t *h, int status, int events) {
  fld_tuner *t = h->data;
  (void)status;
  (void)events;
  char b[64];
  while (read(t->wake->fd[0], b, sizeof b) > 0) {}
  if (!t->busy || !atomic_load_explicit(&t->done, memory_order_acquire)) return;
  atomic_store_explicit(&t->done, 0, memory_order_relaxed);
  fld__after(t);
}

/* The worker thread (its signals blocked: the loop handles them) and the
 * pipe it reports through, at the first job (the loop exists by then). */
static int fld__start_thread(fld_tuner *t) {
  if (t->th) return 0;
  fld_tune_wake *w = calloc(1, sizeof *w);
  fld_tune_thread *th = calloc(1, sizeof *th);
  if (!w || !th) goto fail;
  if (pipe2(w->fd, O_CLOEXEC | O_NONBLOCK)) goto fail;
  if (uv_sem_init(&th->go, 0)) {
    close(w->fd[0]);
    close(w->fd[1]);
    goto fail;
  }
  th->idle = t->app->cfg.tune_idle;
  th->wfd = w->fd[1];
  if (fld_thread_quiet(&t->thread, fld__thread, th)) {
    uv_sem_destroy(&th->go);
    close(w->fd[0]);
    close(w->fd[1]);
    goto fail;
  }
  uv_poll_init(t->app->loop, &w->h, w->fd[0]);
  w->h.data = t;
  uv_poll_start(&w->h, UV_READABLE, fld__wake_cb);
  uv_unref((uv_handle_t *)&w->h); /* referenced only while a job runs */
  t->wake = w;
  t->th = th;
  return 0;
fail:
  free(w);
  free(th);
  return FL_ENOMEM;
}

/* Tells the worker to quit: joined at shutdown (the loop is done), else
 * detached, so that the loop never waits for a thread at idle priority. */
static void fld__stop_thread(fld_tuner *t, int join) {
  if (!t->th) return;
  atomic_store_explicit(&t->th->quit, 1, memory_order_release);
  uv_sem_post(&t->th->go);
  if (join) pthread_join(t->thread, NULL);
  else pthread_detach(t->thread);
  t->th = NULL;
}

static void fld__after(fld_tuner *t) {
  fld_app *app = t->app;
  t->busy = 0;
  if (t->wake) uv_unref((uv_handle_t *)&t->wake->h);
  fl_tune_buffer_free(t->retired);
  t->retired = NULL;
  /* Windows that waited while the worker copied join the buffer before it
   * is re-standardised for an update. */
  fld__drain_inbox(t);
  if (t->nice_failed == 3) {
    t->nice_failed = 2;
    fld_log(FLD_INFO, "tune: SCHED_IDLE unavailable; the worker runs at nice %d", FLD_TUNE_NICE);
  } else if (t->nice_failed == 1) {
    t->nice_failed = 2;
    fld_log(FLD_WARNING, "tune: cannot lower the worker's priority: training competes with "
                         "the loop at its priority");
  }
  if (t->pace_failed == 1) {
    t->pace_failed = 2;
    fld_log(FLD_WARNING, "tune: cannot set up the worker's pacing timer: jobs run unpaced "
                         "and may keep a core from the loop for milliseconds");
  }
  double secs = t->res.seconds;
  t->seconds += t->work_cpu;
  t->steps += (uint64_t)t->res.steps;
  /* The job paced itself to cpu_share of a core (fld__pace); what the
   * pauses' cap or a hurry left over is made up here. */
  double gap = 3600.0 / app->cfg.tune_max_per_hour,
         rest = t->work_cpu / t->share - t->work_wall;
  t->next_at = fld__mono(app) + (gap > rest ? gap : rest);
  if (t->stale) {
    t->stale = 0;
    fl_tune_job_free(t->job);
    t->job = NULL;
    if (!app->stopping && !t->disable &&
        fl_tune_job_create(&t->job, app->eng->b.model, &t->cfg))
      fld_log(FLD_ERR, "tune: cannot set up the next job");
    fld__size_norms(t, app->eng->n_layers);
  } else if (t->rc) {
    t->failed++;
    fld_log(FLD_ERR, "tune: update failed: %s", fl_strerror(t->rc));
  } else {
    t->last = t->res;
    t->have_last = 1;
    if (t->res.accepted) {
      fld_engine *e = app->eng;
      uint64_t sw0 = uv_hrtime();
      /* The swap: between batches on the loop thread, so no window sees
       * half the new weights. */
      if (fl_tune_job_apply(t->job, e->b.model, &e->b.calib) == 0) {
        /* Windows buffered so far were standardised as the old model
         * standardises; the next job's must agree with the new one. */
        fl_tune_job_rebase(t->job, t->buf);
        for (int s = 0; s < app->n_streams; s++)
          if (app->streams[s]->tune) fl_tune_job_rebase(t->job, app->streams[s]->tune->cand);
        /* So were the streams' baseline levels: a moved mean must not look
         * like a step of every stream's level. */
        float d[FL_MAX_TOTAL_CHANNELS];
        if (fl_tune_job_norm_delta(t->job, d) == 0)
          for (int s = 0; s < app->n_streams; s++)
            for (int c = 0; c < fl_model_channels(e->b.model); c++)
              app->streams[s]->base.level[c] -= d[c];
        t->accepted++;
        t->updates++;
        fld__lineage(t, t->updates, t->lineage, sizeof t->lineage);
        if (t->n_norm == e->n_layers)
          memcpy(e->layer_norm, t->cand_norm, sizeof(float) * (size_t)e->n_layers);
        else
          fld__measure_norms(e);
        fld__set_version(t);
        t->swap_ms = (double)(uv_hrtime() - sw0) / 1e6;
        if (t->swap_ms > t->swap_max_ms) t->swap_max_ms = t->swap_ms;
        fld_log(FLD_INFO, "tune: update %" PRIu64 " accepted (loss %.4g -> %.4g, false alarms "
                          "%.3f -> %.3f, faults caught %.3f -> %.3f, clean score %.3f -> %.3f, "
                          "normalisation moved %.3f sd, threshold %.4g, %d steps in %.2f s, "
                          "swapped in %.2f ms); model %s",
                t->updates, (double)t->res.loss_old, (double)t->res.loss_new,
                (double)t->res.far_old, (double)t->res.far_new, (double)t->res.det_old,
                (double)t->res.det_new, (double)t->res.score_old, (double)t->res.score_new,
                (double)t->res.norm_shift, (double)t->res.threshold, t->res.steps, secs,
                t->swap_ms, e->version);
        if (t->save_due) {
          if (t->save_rc) {
            t->ckpt_failed++;
            fld_log(FLD_ERR, "tune: checkpoint failed: %s", t->save_err);
          } else {
            t->ckpt_ok++;
          }
        }
      }
    } else {
      t->rejected++;
      fld_log(FLD_INFO, "tune: update rejected (loss %.4g -> %.4g, false alarms %.3f -> %.3f, "
                        "faults caught %.3f -> %.3f, normalisation moved %.3f sd)",
              (double)t->res.loss_old, (double)t->res.loss_new, (double)t->res.far_old,
              (double)t->res.far_new, (double)t->res.det_old, (double)t->res.det_new,
              (double)t->res.norm_shift);
    }
  }
  if (t->stop_pending) {
    t->stop_pending = 0;
    fld__checkpoint_now(t);
  }
  if (app->stopping) fld__close_wake(t);
  if (t->disable) fld_tune_free(app);
}

void fld_tune_poll(fld_app *app) {
  fld_tuner *t = app->tuner;
  if (!t || t->busy || app->stopping || !t->job) return;
  if (fl_tune_buffer_count(t->buf) < t->cfg.min_windows || t->new_windows == 0) return;
  if (fld__mono(app) < t->next_at) return;
  if (fld__start_thread(t)) {
    fld_log(FLD_ERR, "tune: cannot start the worker thread");
    t->next_at = fld__mono(app) + 60.0;
    return;
  }
  fld__drain_inbox(t);
  uint64_t p0 = uv_hrtime();
  if (fl_tune_job_begin(t->job, app->eng->b.model, &app->eng->b.calib, t->buf)) return;
  t->prep_ms = (double)(uv_hrtime() - p0) / 1e6;
  if (t->prep_ms > t->prep_max_ms) t->prep_max_ms = t->prep_ms;
  t->new_windows = 0;
  /* The lineage the checkpoint of this update will carry. */
  t->save_due = t->path[0] && app->cfg.tune_checkpoint_every > 0 &&
                (t->updates + 1) % (uint64_t)app->cfg.tune_checkpoint_every == 0;
  t->save_updates = t->updates + 1;
  atomic_store_explicit(&t->snapped, 0, memory_order_relaxed);
  atomic_store_explicit(&t->done, 0, memory_order_relaxed);
  atomic_store_explicit(&t->hurry, 0, memory_order_relaxed);
  t->share = app->cfg.tune_cpu_share;
  t->busy = 1;
  uv_ref((uv_handle_t *)&t->wake->h); /* the loop waits for the job */
  t->th->t = t;
  uv_sem_post(&t->th->go); /* publishes everything above to the worker */
}

void fld_tune_stop(fld_app *app) {
  fld_tuner *t = app->tuner;
  if (!t) return;
  if (t->busy) {
    t->stop_pending = 1; /* the job's end writes it */
    atomic_store_explicit(&t->hurry, 1, memory_order_relaxed);
  } else {
    fld__checkpoint_now(t);
    fld__close_wake(t);
  }
}

int fld_tune_reload(fld_app *app, char *err, size_t errlen) {
  fld_tuner *t = app->tuner;
  if (app->cfg.tune_enabled) return fld_tune_start(app, err, errlen);
  if (!t) return 0;
  /* The tuned weights belonged to the old engine; the checkpoint on disk
   * already holds the last accepted update. */
  for (int s = 0; s < app->n_streams; s++) fld_tune_stream_free(app->streams[s]);
  if (t->busy) {
    t->stale = 1;
    t->disable = 1;
    atomic_store_explicit(&t->hurry, 1, memory_order_relaxed);
  } else {
    fld_tune_free(app);
  }
  return 0;
}

void fld_tune_free(fld_app *app) {
  fld_tuner *t = app->tuner;
  if (!t) return;
  /* Never with a job in flight: shutdown and reloads wait for its end. */
  fld__close_wake(t);
  fld__stop_thread(t, app->stopping);
  fl_tune_job_free(t->job);
  fl_tune_buffer_free(t->buf);
  fl_tune_buffer_free(t->inbox);
  fl_tune_buffer_free(t->retired);
  free(t->cand_norm);
  free(t);
  app->tuner = NULL;
}

void fld_tune_metrics(fld_app *app, FILE *f) {
  fld_tuner *t = app->tuner;
  fprintf(f, "# HELP faultline_tune_enabled Online fine-tuning on (1) or off (0).\n"
             "# TYPE faultline_tune_enabled gauge\nfaultline_tune_enabled %d\n", t != NULL);
  fprintf(f, "# HELP faultline_model_updates Accepted tuning updates in the served model's "
             "lineage (its version's -uN).\n# TYPE faultline_model_updates gauge\n"
             "faultline_model_updates %" PRIu64 "\n", t ? t->updates : 0);
  fprintf(f, "# HELP faultline_tune_updates_total Tuning updates validated, by result.\n"
             "# TYPE faultline_tune_updates_total counter\n"
             "faultline_tune_updates_total{result=\"accepted\"} %" PRIu64 "\n"
             "faultline_tune_updates_total{result=\"rejected\"} %" PRIu64 "\n",
          t ? t->accepted : 0, t ? t->rejected : 0);
  if (!t) return;
  fprintf(f, "# HELP faultline_tune_failures_total Tuning jobs that ended in an error.\n"
             "# TYPE faultline_tune_failures_total counter\nfaultline_tune_failures_total %"
             PRIu64 "\n", t->failed);
  fprintf(f, "# HELP faultline_tune_steps_total Optimiser steps taken by tuning.\n"
             "# TYPE faultline_tune_steps_total counter\nfaultline_tune_steps_total %" PRIu64
             "\n", t->steps);
  fprintf(f, "# HELP faultline_tune_seconds_total CPU time the tuning worker spent in jobs.\n"
             "# TYPE faultline_tune_seconds_total counter\nfaultline_tune_seconds_total %.6f\n",
          t->seconds);
  fprintf(f, "# HELP faultline_tune_buffer_windows Clean windows in the replay buffer.\n"
             "# TYPE faultline_tune_buffer_windows gauge\nfaultline_tune_buffer_windows %d\n",
          fl_tune_buffer_count(t->buf));
  fprintf(f, "# HELP faultline_tune_buffer_capacity Capacity of the replay buffer.\n"
             "# TYPE faultline_tune_buffer_capacity gauge\nfaultline_tune_buffer_capacity %d\n",
          fl_tune_buffer_capacity(t->buf));
  fprintf(f, "# HELP faultline_tune_checkpoints_total Checkpoints written, by result.\n"
             "# TYPE faultline_tune_checkpoints_total counter\n"
             "faultline_tune_checkpoints_total{result=\"ok\"} %" PRIu64 "\n"
             "faultline_tune_checkpoints_total{result=\"failed\"} %" PRIu64 "\n",
          t->ckpt_ok, t->ckpt_failed);
  if (t->have_last) {
    fprintf(f, "# HELP faultline_tune_validation_loss Held-out correction loss of the last "
               "validation, by model.\n# TYPE faultline_tune_validation_loss gauge\n"
               "faultline_tune_validation_loss{model=\"current\"} %.6g\n"
               "faultline_tune_validation_loss{model=\"candidate\"} %.6g\n",
            (double)t->last.loss_old, (double)t->last.loss_new);
    fprintf(f, "# HELP faultline_tune_validation_false_alarm_rate Held-out clean windows "
               "above the threshold in the last validation, by model.\n"
               "# TYPE faultline_tune_validation_false_alarm_rate gauge\n"
               "faultline_tune_validation_false_alarm_rate{model=\"current\"} %.6g\n"
               "faultline_tune_validation_false_alarm_rate{model=\"candidate\"} %.6g\n",
            (double)t->last.far_old, (double)t->last.far_new);
  }
  fprintf(f, "# HELP faultline_tune_loop_seconds Loop-thread time of tuning's two steps there: "
             "a job's snapshot (prepare) and an accepted update's swap (parameters, "
             "calibration, buffers re-standardised), the last and the longest.\n"
             "# TYPE faultline_tune_loop_seconds gauge\n"
             "faultline_tune_loop_seconds{step=\"prepare\",stat=\"last\"} %.6f\n"
             "faultline_tune_loop_seconds{step=\"prepare\",stat=\"max\"} %.6f\n"
             "faultline_tune_loop_seconds{step=\"swap\",stat=\"last\"} %.6f\n"
             "faultline_tune_loop_seconds{step=\"swap\",stat=\"max\"} %.6f\n",
          t->prep_ms / 1e3, t->prep_max_ms / 1e3, t->swap_ms / 1e3, t->swap_max_ms / 1e3);
  fld_engine *e = app->eng;
  fprintf(f, "# HELP faultline_layer_norm_ratio Spectral norm over Lipschitz target of each "
             "layer that has one (<= 1 after every update).\n"
             "# TYPE faultline_layer_norm_ratio gauge\n");
  for (int l = 0; l < e->n_layers; l++)
    if (e->layer_target[l] > 0)
      fprintf(f, "faultline_layer_norm_ratio{layer=\"%s\"} %.6g\n", e->layer_name[l],
              (double)(e->layer_norm[l] / e->layer_target[l]));
}
