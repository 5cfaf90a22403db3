/* faultlined tune checkpoints: see tune_int.h.
 *
 * Every checkpoint_every accepted updates the worker writes the accepted
 * model (fl_bundle_save: temporary file, fsync, rename, fsync of the
 * directory), the previous one kept as PATH.1, and once more on shutdown;
 * at start the newest valid checkpoint of the same base model is put in
 * service, else the base. */
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "faultline/error.h"
#include "tune_int.h"

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
void fld_tune_ckpt_resume(fld_tuner *t) {
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
    /* Same windows (its calibration fits the streams) and same parameters. */
    if (u < 0 || !fl_model_spec_compatible(fl_model_spec_of(b.model), fl_model_spec_of(e->b.model),
                                           NULL, 0) ||
        fl_model_param_count(b.model) != fl_model_param_count(e->b.model)) {
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
  if (fl_model_copy_params(e->b.model, best.model) || fl_calib_copy(&e->b.calib, &best.calib)) {
    fld_log(FLD_WARNING, "tune: checkpoint %s does not fit the model; serving the base", from);
  } else {
    t->updates = (uint64_t)best_u;
    snprintf(t->lineage, sizeof t->lineage, "%s", best.lineage);
    fld_tune_measure_norms(e);
    fld_tune_set_version(t);
    fld_log(FLD_NOTICE, "tune: resumed from checkpoint %s (%ld updates on model %s)", from,
            best_u, t->base);
  }
  fl_bundle_free(&best);
}

static void fld__lineage(const fld_tuner *t, const char *base, uint64_t updates, char *out,
                         size_t len) {
  snprintf(out, len,
           "{\"base\":\"%s\",\"updates\":%" PRIu64 ",\"tuned\":%.0f,"
           "\"val_loss\":%.6g,\"false_alarm_rate\":%.6g}",
           base, updates, fld_now(), (double)t->res.loss_new, (double)t->res.far_new);
}

void fld_tune_ckpt_lineage(fld_tuner *t, uint64_t updates, char *out, size_t len) {
  fld__lineage(t, t->base, updates, out, len);
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

int fld_tune_ckpt_now(fld_tuner *t) {
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

void fld_tune_ckpt_candidate(fld_tuner *t) {
  /* The checkpoint is the accepted model: the job's candidate and its new
   * calibration, which the loop is about to copy into the engine, with the
   * rest of the engine's bundle as it was when the job started (the
   * save_* fields: this runs on the worker, which must not read the
   * engine).  Without the estimator, a daemon serving the file or
   * `faultline score` on it would correct with the network alone. */
  fld__lineage(t, t->save_base, t->save_updates, t->save_lineage, sizeof t->save_lineage);
  fl_bundle b;
  memset(&b, 0, sizeof b);
  b.model = fl_tune_job_model(t->job);
  b.calib = *fl_tune_job_calib(t->job);
  b.detect = t->save_detect;
  if (t->save_est) b.est = *t->save_est;
  b.clamp = t->save_clamp;
  snprintf(b.lineage, sizeof b.lineage, "%s", t->save_lineage);
  fld__keep_previous(t->save_path);
  t->save_rc = fl_bundle_save(&b, t->save_path, t->save_err, sizeof t->save_err);
}
