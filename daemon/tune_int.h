/* faultlined tune: what the three parts of the online tuner share.
 *
 *   tune.c         the gate, the schedule and the swap, on the loop thread
 *   tune_worker.c  the worker thread, its priority and its pacing
 *   tune_ckpt.c    checkpoints: resume at start, write after updates
 *
 * Private to daemon/tune*.c; the daemon's interface is in fld.h. */
#ifndef FLD_TUNE_INT_H
#define FLD_TUNE_INT_H

#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "faultline/tune.h"
#include "fld.h"

struct fld_tune_stream {
  fl_tune_buffer *cand; /* the last span + 1 windows that passed the score test */
  int run;              /* consecutive windows without alarm */
};

struct fld_tune_thread;
struct fld_tune_wake;

typedef struct fld_tuner {
  fld_app *app;
  fl_tune_config cfg;
  fl_tune_buffer *buf;
  fl_tune_buffer *inbox;   /* windows that passed while the worker copied buf */
  fl_tune_buffer *retired; /* the buffer a job in flight may still copy */
  fl_tune_job *job;
  struct fld_tune_thread *th; /* NULL until the first job */
  pthread_t thread;
  struct fld_tune_wake *wake;
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
  /* What the checkpoint of a candidate takes besides the job's model and
   * calibration, set on the loop when the job starts: the worker writes it,
   * and a reload meanwhile frees the engine and rewrites cfg, base and
   * path.  est points at the tuner's estimator of that moment (est_job
   * keeps it alive until the job is done). */
  fl_detect_config save_detect;
  float save_clamp;
  const fl_estimator *save_est;
  char save_base[17];
  char save_path[PATH_MAX];
  fl_estimator *est;     /* a copy of the engine's estimator (fld_tune_start) */
  fl_estimator *est_job; /* the one a job in flight saves, if a reload replaced est */
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

/* The worker's nice value where SCHED_IDLE is refused (tune_worker.c). */
#define FLD_TUNE_NICE 10

/* tune.c, on the loop thread */
void fld_tune_set_version(fld_tuner *t);
void fld_tune_measure_norms(fld_engine *e);
/* A job is done (the worker's report seen): its outcome applied. */
void fld_tune_after(fld_tuner *t);

/* tune_worker.c: the thread and the pipe it reports through are made at
 * the first job (start: 0 or FL_ENOMEM); post hands it the job that
 * fl_tune_job_begin prepared; close_wake closes the loop's end once no job
 * is in flight (the loop can then end); stop tells the thread to quit,
 * joined (join 1, at shutdown) or detached. */
int fld_tune_worker_start(fld_tuner *t);
void fld_tune_worker_post(fld_tuner *t);
void fld_tune_worker_close_wake(fld_tuner *t);
void fld_tune_worker_stop(fld_tuner *t, int join);

/* tune_ckpt.c: resume puts the newest valid checkpoint of the base model in
 * service (at start); lineage writes the JSON lineage of the model after
 * `updates` updates; now writes the model in service (shutdown) and counts
 * the result; candidate writes the job's accepted candidate, on the worker
 * (t->save_rc, t->save_err). */
void fld_tune_ckpt_resume(fld_tuner *t);
void fld_tune_ckpt_lineage(fld_tuner *t, uint64_t updates, char *out, size_t len);
int fld_tune_ckpt_now(fld_tuner *t);
void fld_tune_ckpt_candidate(fld_tuner *t);

#endif
