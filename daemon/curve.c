/* faultlined CurveZMQ: every socket is a CURVE server with the daemon's
 * secret key, and a ZAP handler admits only clients whose public key is in
 * the authorised directory.  See fld.h.
 *
 * The handler is a REP socket on inproc://zeromq.zap.01 watched by the
 * loop like any other socket: libzmq's I/O threads ask it and wait for the
 * answer without blocking the loop, so no thread is needed. */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "faultline/error.h"
#include "fld.h"

/* Reads a Z85 key (40 characters) from a file holding either the bare key
 * or a ZeroMQ certificate line `<name> = "<key>"` (name is "secret-key" or
 * "public-key"). */
static int fld__read_key(const char *path, const char *name, char out[41]) {
  FILE *f = fopen(path, "r");
  if (!f) return -errno;
  char buf[4096];
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = 0;
  const char *p = strstr(buf, name);
  if (p) {
    p = strchr(p, '"');
    if (!p) return FL_EFORMAT;
    p++;
  } else {
    p = buf;
    while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r') p++;
  }
  size_t len = 0;
  while (p[len] && p[len] != '"' && p[len] != '\n' && p[len] != '\r' && p[len] != ' ') len++;
  if (len != 40) return FL_EFORMAT;
  memcpy(out, p, 40);
  out[40] = 0;
  uint8_t bin[32];
  if (!zmq_z85_decode(bin, out)) return FL_EFORMAT;
  return 0;
}

static int fld__load_keys(fld_app *app, const char *dir, char (**keys)[41], int *n, char *err,
                          size_t errlen) {
  DIR *d = opendir(dir);
  if (!d) {
    snprintf(err, errlen, "[security] authorized_keys %s: %s", dir, strerror(errno));
    return FL_EIO;
  }
  int cap = 16, cnt = 0;
  char(*k)[41] = malloc(sizeof *k * (size_t)cap);
  struct dirent *de;
  while (k && (de = readdir(d))) {
    if (de->d_name[0] == '.') continue;
    char path[PATH_MAX];
    struct stat sb;
    snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
    if (stat(path, &sb) || !S_ISREG(sb.st_mode)) continue;
    if (cnt == cap) {
      char(*nk)[41] = realloc(k, sizeof *k * (size_t)(cap *= 2));
      if (!nk) break;
      k = nk;
    }
    /* A key that does not parse is skipped with a warning: one bad file
     * must not lock every client out. */
    if (fld__read_key(path, "public-key", k[cnt]))
      fld_log(FLD_WARNING, "[security] %s is not a Z85 public key; ignored", path);
    else cnt++;
  }
  closedir(d);
  if (!k) {
    snprintf(err, errlen, "out of memory");
    return FL_ENOMEM;
  }
  (void)app;
  *keys = k;
  *n = cnt;
  return 0;
}

static int fld__zap_drain(fld_zwatch *w, int budget) {
  fld_app *app = w->user;
  int done = 0;
  while (done < budget) {
    zmq_msg_t parts[8];
    int overflow, n = fld_zrecv(w->sock, parts, 8, &overflow);
    if (n <= 0) break;
    done++;
    /* version, request id, domain, address, identity, mechanism, key */
    const char *status = "400", *text = "unauthorised key";
    char user[41] = "";
    if (n >= 7 && !overflow && zmq_msg_size(&parts[5]) == 5 &&
        !memcmp(zmq_msg_data(&parts[5]), "CURVE", 5) && zmq_msg_size(&parts[6]) == 32) {
      char z85[41];
      zmq_z85_encode(z85, zmq_msg_data(&parts[6]), 32);
      for (int i = 0; i < app->n_keys; i++)
        if (!strcmp(app->keys[i], z85)) {
          status = "200";
          text = "OK";
          memcpy(user, z85, 41);
          break;
        }
      if (status[0] == '4') fld_log(FLD_WARNING, "CurveZMQ: refused client key %s", z85);
    } else {
      text = "CURVE required";
    }
    if (status[0] == '2') app->m.zap_allowed++;
    else app->m.zap_denied++;
    /* The reply echoes the request id; the socket is REP, so the answer
     * goes before the next request can be read. */
    fld_zsend(w->sock, "1.0", 3, ZMQ_SNDMORE);
    if (n >= 2) fld_zsend(w->sock, zmq_msg_data(&parts[1]), zmq_msg_size(&parts[1]), ZMQ_SNDMORE);
    else fld_zsend(w->sock, "", 0, ZMQ_SNDMORE);
    fld_zsend(w->sock, status, 3, ZMQ_SNDMORE);
    fld_zsend(w->sock, text, strlen(text), ZMQ_SNDMORE);
    fld_zsend(w->sock, user, strlen(user), ZMQ_SNDMORE);
    fld_zsend(w->sock, "", 0, 0);
    fld_zclose_parts(parts, n);
  }
  return done;
}

/* The secret key's file: an absolute path as it is; a relative name is a
 * systemd credential (LoadCredential=NAME:PATH in the unit, which lets a
 * DynamicUser service read a root-only key) read from
 * $CREDENTIALS_DIRECTORY, and without that variable it is relative to the
 * working directory. */
static int fld__secret_path(const char *name, char *out, size_t n) {
  const char *creds = getenv("CREDENTIALS_DIRECTORY");
  int len = name[0] != '/' && creds && creds[0] ? snprintf(out, n, "%s/%s", creds, name)
                                                : snprintf(out, n, "%s", name);
  return len < 0 || (size_t)len >= n ? FL_EINVAL : 0;
}

int fld_curve_start(fld_app *app, char *err, size_t errlen) {
  if (!app->cfg.curve) return 0;
  if (!zmq_has("curve")) {
    snprintf(err, errlen, "[security] curve = 1 but libzmq was built without CURVE");
    return FL_EINVAL;
  }
  char path[PATH_MAX];
  int rc = fld__secret_path(app->cfg.secret_key_file, path, sizeof path);
  if (!rc) rc = fld__read_key(path, "secret-key", app->server_secret);
  if (rc) {
    snprintf(err, errlen, "[security] secret_key %s: not a readable Z85 secret key%s", path,
             rc == -EACCES ? " (permission denied: under DynamicUser= pass it with "
                             "LoadCredential=, see faultline.ini(5))" : "");
    return FL_EINVAL;
  }
  zmq_curve_public(app->server_public, app->server_secret);
  if ((rc = fld__load_keys(app, app->cfg.authorized_keys, &app->keys, &app->n_keys, err, errlen)))
    return rc;
  app->zap_sock = zmq_socket(app->zctx, ZMQ_REP);
  int zero = 0;
  zmq_setsockopt(app->zap_sock, ZMQ_LINGER, &zero, sizeof zero);
  if (!app->zap_sock || zmq_bind(app->zap_sock, "inproc://zeromq.zap.01")) {
    snprintf(err, errlen, "cannot start the ZAP handler: %s", zmq_strerror(errno));
    return FL_EIO;
  }
  /* Each request is answered at once, so the handler drains with the loop. */
  rc = fld_zwatch_start(&app->zap_w, app->loop, app->zap_sock, 64, fld__zap_drain, NULL, app);
  if (rc) {
    snprintf(err, errlen, "cannot watch the ZAP handler");
    return FL_EIO;
  }
  fld_log(FLD_INFO, "CurveZMQ on, server public key %s, %d authorised client keys",
          app->server_public, app->n_keys);
  return 0;
}

int fld_curve_apply(fld_app *app, void *sock) {
  if (!app->cfg.curve) return 0;
  int one = 1;
  if (zmq_setsockopt(sock, ZMQ_CURVE_SERVER, &one, sizeof one) ||
      zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, app->server_secret, 40) ||
      zmq_setsockopt(sock, ZMQ_ZAP_DOMAIN, "faultline", 9))
    return -errno;
  return 0;
}

int fld_curve_reload(fld_app *app, char *err, size_t errlen) {
  if (!app->cfg.curve || !app->zap_sock) return 0;
  char(*keys)[41] = NULL;
  int n = 0, rc = fld__load_keys(app, app->cfg.authorized_keys, &keys, &n, err, errlen);
  if (rc) return rc;
  free(app->keys);
  app->keys = keys;
  app->n_keys = n;
  fld_log(FLD_INFO, "CurveZMQ: %d authorised client keys", n);
  return 0;
}

void fld_curve_stop(fld_app *app) {
  if (!app->zap_sock) return;
  fld_zwatch_stop(&app->zap_w);
}
