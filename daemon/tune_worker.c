/* faultlined tune worker: the thread that runs tuning jobs.  See
 * tune_int.h.
 *
 * One job at a time, on the tuner's own thread, which runs under
 * SCHED_IDLE (nice 10 where that is refused or with idle = 0); within a job
 * it works in short slices with sleeps between them so that training takes
 * about cpu_share of one core (see fld__pace).
 *
 * No lock: a thread at idle priority must never hold anything the loop
 * waits for: preempted (any wakeup on its core preempts it) it may not run
 * again for hundreds of milliseconds on a busy machine, and the loop would
 * stall as long.  The libuv thread pool does exactly that at the end of
 * every job (the worker takes the loop's work-queue mutex and calls
 * uv_async_send, whose loop side spins until the sender is done), so the
 * tuner does not use it: the loop hands a job over with a semaphore post and
 * the worker reports with an atomic flag and one byte into a pipe that the
 * loop polls.  Neither side takes a lock the other holds.
 */
#define _GNU_SOURCE /* SCHED_IDLE */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "faultline/error.h"
#include "tune_int.h"

/* The worker thread's side of a tuner: allocated apart, so that a thread
 * told to quit while the loop goes on (tuning switched off by a reload)
 * may wake up and free it after the tuner is gone. */
struct fld_tune_thread {
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
};
typedef struct fld_tune_thread fld_tune_thread;

/* The pipe the worker writes one byte into when a job is done, and the
 * loop's poll handle on its read end (freed by the close callback). */
struct fld_tune_wake {
  uv_poll_t h;
  int fd[2];
};
typedef struct fld_tune_wake fld_tune_wake;

/* The priority of the thread that runs tuning jobs.  Training competes
 * with the loop thread for the cores.  Under SCHED_IDLE (Linux) the worker
 * runs only on a core nothing else wants, and a frame that wakes the loop
 * preempts it at once; nice 10 (the fallback elsewhere) still gets a
 * weighted share of a contended core and lets the loop wait for its slice
 * to end.  The thread is the tuner's alone and keeps its priority for its
 * life (without CAP_SYS_NICE it could not raise it back anyway), which is
 * why it must never hold a lock the loop takes (see the top of the file). */
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
  if (t->save_due) fld_tune_ckpt_candidate(t);
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
void fld_tune_worker_close_wake(fld_tuner *t) {
  if (!t->wake) return;
  t->wake->h.data = t->wake;
  uv_close((uv_handle_t *)&t->wake->h, fld__wake_closed);
  t->wake = NULL;
}

static void fld__wake_cb(uv_poll_t *h, int status, int events) {
  fld_tuner *t = h->data;
  (void)status;
  (void)events;
  char b[64];
  while (read(t->wake->fd[0], b, sizeof b) > 0) {}
  if (!t->busy || !atomic_load_explicit(&t->done, memory_order_acquire)) return;
  atomic_store_explicit(&t->done, 0, memory_order_relaxed);
  uv_unref((uv_handle_t *)&t->wake->h); /* referenced only while a job runs */
  fld_tune_after(t);
}

/* The worker thread (its signals blocked: the loop handles them) and the
 * pipe it reports through, at the first job (the loop exists by then). */
int fld_tune_worker_start(fld_tuner *t) {
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
void fld_tune_worker_stop(fld_tuner *t, int join) {
  if (!t->th) return;
  atomic_store_explicit(&t->th->quit, 1, memory_order_release);
  uv_sem_post(&t->th->go);
  if (join) pthread_join(t->thread, NULL);
  else pthread_detach(t->thread);
  t->th = NULL;
}

void fld_tune_worker_post(fld_tuner *t) {
  uv_ref((uv_handle_t *)&t->wake->h); /* the loop waits for the job */
  t->th->t = t;
  uv_sem_post(&t->th->go); /* publishes everything the loop wrote to the worker */
}
