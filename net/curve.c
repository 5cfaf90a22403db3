/* CurveZMQ: every socket made a CURVE server takes this program's secret
 * key, and a ZAP handler admits only clients whose public key is in the
 * authorised directory.  See fln.h.
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
#include "fln.h"

/* Reads a Z85 key (40 characters) from a file holding either the bare key
 * or a ZeroMQ certificate line `<name> = "<key>"` (name is "secret-key" or
 * "public-key"). */
static int fln__read_key(const char *path, const char *name, char out[41]) {
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

static int fln__load_keys(const fln_curve *c, char (**keys)[41], int *n, char *err,
                          size_t errlen) {
  const char *dir = c->authorized_keys;
  DIR *d = opendir(dir);
  if (!d) {
    snprintf(err, errlen, "%s %s: %s", c->authorized_keys_name, dir, strerror(errno));
    return FL_EIO;
  }
  int cap = 16, cnt = 0;
  char(*k)[41] = malloc(sizeof *k * (size_t)cap);
  struct dirent *de;
  while (k && (de = readdir(d))) {
    if (de->d_name[0] == '.') continue;
    char path[PATH_MAX];
    struct stat sb;
    if (snprintf(path, sizeof path, "%s/%s", dir, de->d_name) >= (int)sizeof path ||
        stat(path, &sb) || !S_ISREG(sb.st_mode))
      continue;
    if (cnt == cap) {
      char(*nk)[41] = realloc(k, sizeof *k * (size_t)(cap *= 2));
      if (!nk) break;
      k = nk;
    }
    /* A key that does not parse is skipped with a warning: one bad file
     * must not lock every client out. */
    if (fln__read_key(path, "public-key", k[cnt]))
      fln_log(FLN_WARNING, "%s: %s is not a Z85 public key; ignored", c->authorized_keys_name,
              path);
    else cnt++;
  }
  closedir(d);
  if (!k) {
    snprintf(err, errlen, "out of memory");
    return FL_ENOMEM;
  }
  *keys = k;
  *n = cnt;
  return 0;
}

static int fln__zap_drain(fln_zwatch *w, int budget) {
  fln_curve *c = w->user;
  int done = 0;
  while (done < budget) {
    zmq_msg_t parts[8];
    int overflow, n = fln_zrecv(w->sock, parts, 8, &overflow);
    if (n <= 0) break;
    done++;
    /* version, request id, domain, address, identity, mechanism, key */
    const char *status = "400", *text = "unauthorised key";
    char user[41] = "";
    if (n >= 7 && !overflow && zmq_msg_size(&parts[5]) == 5 &&
        !memcmp(zmq_msg_data(&parts[5]), "CURVE", 5) && zmq_msg_size(&parts[6]) == 32) {
      char z85[41];
      zmq_z85_encode(z85, zmq_msg_data(&parts[6]), 32);
      for (int i = 0; i < c->n_keys; i++)
        if (!strcmp(c->keys[i], z85)) {
          status = "200";
          text = "OK";
          memcpy(user, z85, 41);
          break;
        }
      if (status[0] == '4') fln_log(FLN_WARNING, "CurveZMQ: refused client key %s", z85);
    } else {
      text = "CURVE required";
    }
    if (status[0] == '2') c->allowed++;
    else c->denied++;
    /* The reply echoes the request id; the socket is REP, so the answer
     * goes before the next request can be read. */
    fln_zsend(w->sock, "1.0", 3, ZMQ_SNDMORE);
    if (n >= 2) fln_zsend(w->sock, zmq_msg_data(&parts[1]), zmq_msg_size(&parts[1]), ZMQ_SNDMORE);
    else fln_zsend(w->sock, "", 0, ZMQ_SNDMORE);
    fln_zsend(w->sock, status, 3, ZMQ_SNDMORE);
    fln_zsend(w->sock, text, strlen(text), ZMQ_SNDMORE);
    fln_zsend(w->sock, user, strlen(user), ZMQ_SNDMORE);
    fln_zsend(w->sock, "", 0, 0);
    fln_zclose_parts(parts, n);
  }
  return done;
}

/* The secret key's file: an absolute path as it is; a relative name is a
 * systemd credential (LoadCredential=NAME:PATH in the unit, which lets a
 * DynamicUser service read a root-only key) read from
 * $CREDENTIALS_DIRECTORY, and without that variable it is relative to the
 * working directory. */
static int fln__secret_path(const char *name, char *out, size_t n) {
  const char *creds = getenv("CREDENTIALS_DIRECTORY");
  int len = name[0] != '/' && creds && creds[0] ? snprintf(out, n, "%s/%s", creds, name)
                                                : snprintf(out, n, "%s", name);
  return len < 0 || (size_t)len >= n ? FL_EINVAL : 0;
}

int fln_curve_start(fln_curve *c, uv_loop_t *loop, void *zctx, char *err, size_t errlen) {
  if (!c->secret_key_name) c->secret_key_name = "secret key";
  if (!c->authorized_keys_name) c->authorized_keys_name = "authorised keys";
  if (!zmq_has("curve")) {
    snprintf(err, errlen, "%s: libzmq was built without CURVE", c->secret_key_name);
    return FL_EINVAL;
  }
  char path[PATH_MAX];
  int rc = fln__secret_path(c->secret_key_file, path, sizeof path);
  if (!rc) rc = fln__read_key(path, "secret-key", c->secret);
  if (rc) {
    snprintf(err, errlen, "%s %s: not a readable Z85 secret key%s", c->secret_key_name, path,
             rc == -EACCES ? " (permission denied: under DynamicUser= pass it with "
                             "LoadCredential=, see faultline.ini(5))" : "");
    return FL_EINVAL;
  }
  zmq_curve_public(c->public, c->secret);
  if ((rc = fln__load_keys(c, &c->keys, &c->n_keys, err, errlen))) return rc;
  c->zap_sock = zmq_socket(zctx, ZMQ_REP);
  int zero = 0;
  zmq_setsockopt(c->zap_sock, ZMQ_LINGER, &zero, sizeof zero);
  if (!c->zap_sock || zmq_bind(c->zap_sock, "inproc://zeromq.zap.01")) {
    snprintf(err, errlen, "cannot start the ZAP handler: %s", zmq_strerror(errno));
    return FL_EIO;
  }
  /* Each request is answered at once, so the handler drains with the loop. */
  rc = fln_zwatch_start(&c->zap_w, loop, c->zap_sock, 64, fln__zap_drain, NULL, c);
  if (rc) {
    snprintf(err, errlen, "cannot watch the ZAP handler");
    return FL_EIO;
  }
  c->on = 1;
  fln_log(FLN_INFO, "CurveZMQ on, server public key %s, %d authorised client keys", c->public,
          c->n_keys);
  return 0;
}

int fln_curve_apply(const fln_curve *c, void *sock) {
  if (!c->on) return 0;
  int one = 1;
  if (zmq_setsockopt(sock, ZMQ_CURVE_SERVER, &one, sizeof one) ||
      zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, c->secret, 40) ||
      zmq_setsockopt(sock, ZMQ_ZAP_DOMAIN, "faultline", 9))
    return -errno;
  return 0;
}

int fln_curve_client(const fln_curve *c, void *sock, const char *path, char *err,
                     size_t errlen) {
  char key[41];
  int rc = fln__read_key(path, "public-key", key);
  if (rc) {
    snprintf(err, errlen, "%s: %s", path, rc == FL_EFORMAT ? "not a Z85 public key"
                                                           : strerror(-rc));
    return FL_EINVAL;
  }
  if (zmq_setsockopt(sock, ZMQ_CURVE_SERVERKEY, key, 40) ||
      zmq_setsockopt(sock, ZMQ_CURVE_PUBLICKEY, c->public, 40) ||
      zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, c->secret, 40)) {
    snprintf(err, errlen, "%s: not a usable Z85 public key", path);
    return FL_EINVAL;
  }
  return 0;
}

int fln_curve_reload(fln_curve *c, char *err, size_t errlen) {
  if (!c->on) return 0;
  char(*keys)[41] = NULL;
  int n = 0, rc = fln__load_keys(c, &keys, &n, err, errlen);
  if (rc) return rc;
  free(c->keys);
  c->keys = keys;
  c->n_keys = n;
  fln_log(FLN_INFO, "CurveZMQ: %d authorised client keys", n);
  return 0;
}

void fln_curve_stop(fln_curve *c) {
  if (c->zap_sock) fln_zwatch_stop(&c->zap_w);
}

void fln_curve_close(fln_curve *c) {
  if (c->zap_sock) zmq_close(c->zap_sock);
  c->zap_sock = NULL;
  free(c->keys);
  c->keys = NULL;
  c->n_keys = 0;
  c->on = 0;
}
