/* ZeroMQ sockets in the libuv loop: see fln.h.
 *
 * ZMQ_FD is an edge-triggered notification fd: libzmq makes it readable when
 * something changed inside the socket and resets it when the application
 * reads ZMQ_EVENTS or receives.  Two mistakes hang a program: reading one
 * message per wake-up (the rest wait for an edge that never comes), and
 * stopping at a budget without arranging to come back.  So the watcher
 * drains until ZMQ_EVENTS lacks ZMQ_POLLIN, and when the budget runs out
 * first it keeps a uv_idle running, which makes the loop call it again on its
 * next turn after serving timers, signals and HTTP. */
#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>

#include "faultline/error.h"
#include "fln.h"

/* Every libzmq call below may fail with EINTR: it polls its command mailbox
 * even with ZMQ_DONTWAIT, and a signal for the loop (SIGHUP) can land there.
 * Nothing was taken or sent then, so the call is simply made again; giving up
 * instead would count a message that was never lost, leave a report's topic
 * part without its body, or miss the edge that ZMQ_EVENTS re-arms. */
static atomic_uint_fast64_t fln__interrupted;

/* Should the call that returned rc be made again? */
static int fln__again(int rc) {
  if (rc >= 0 || errno != EINTR) return 0;
  atomic_fetch_add_explicit(&fln__interrupted, 1, memory_order_relaxed);
  return 1;
}

uint64_t fln_zsock_interrupted(void) {
  return atomic_load_explicit(&fln__interrupted, memory_order_relaxed);
}

static int fln__pollin(void *sock) {
  int ev = 0, rc;
  size_t len = sizeof ev;
  while (fln__again(rc = zmq_getsockopt(sock, ZMQ_EVENTS, &ev, &len))) {}
  if (rc < 0) return 0;
  return (ev & ZMQ_POLLIN) != 0;
}

static void fln__idle_cb(uv_idle_t *h);

/* Drains with the budget; leaves the idle handle on if messages remain. */
static void fln__run(fln_zwatch *w) {
  if (w->closing) return;
  int left = w->budget;
  while (left > 0 && !w->closing) {
    int n = w->drain(w, left);
    if (n <= 0) break;
    left -= n;
  }
  if (w->after && !w->closing) w->after(w);
  if (w->closing) return;
  /* ZMQ_EVENTS both tells what is pending and re-arms the edge. */
  int more = fln__pollin(w->sock);
  if (more && !w->idle_on) {
    uv_idle_start(&w->idle, fln__idle_cb);
    w->idle_on = 1;
  } else if (!more && w->idle_on) {
    uv_idle_stop(&w->idle);
    w->idle_on = 0;
  }
  if (more) w->continuations++;
}

static void fln__poll_cb(uv_poll_t *h, int status, int events) {
  fln_zwatch *w = h->data;
  (void)events;
  if (status < 0) fln_log(FLN_WARNING, "poll on a ZeroMQ socket failed: %s", uv_strerror(status));
  w->wakeups++;
  fln__run(w);
}

static void fln__idle_cb(uv_idle_t *h) { fln__run(h->data); }

int fln_zwatch_start(fln_zwatch *w, uv_loop_t *loop, void *sock, int budget,
                     fln_zdrain_fn drain, fln_zafter_fn after, void *user) {
  memset(w, 0, sizeof *w);
  w->sock = sock;
  w->user = user;
  w->budget = budget > 0 ? budget : 1;
  w->drain = drain;
  w->after = after;
  int fd;
  size_t len = sizeof fd;
  if (zmq_getsockopt(sock, ZMQ_FD, &fd, &len)) return -errno;
  int rc = uv_poll_init(loop, &w->poll, fd);
  if (rc) return rc;
  uv_idle_init(loop, &w->idle);
  w->poll.data = w;
  w->idle.data = w;
  if ((rc = uv_poll_start(&w->poll, UV_READABLE, fln__poll_cb))) return rc;
  w->active = 1;
  /* Messages may already be queued (a connect completes before the loop
   * runs): without an edge they would wait, so look once now. */
  uv_idle_start(&w->idle, fln__idle_cb);
  w->idle_on = 1;
  return 0;
}

void fln_zwatch_stop(fln_zwatch *w) {
  if (!w->active) return;
  w->closing = 1;
  w->active = 0;
  uv_poll_stop(&w->poll);
  uv_idle_stop(&w->idle);
  uv_close((uv_handle_t *)&w->poll, NULL);
  uv_close((uv_handle_t *)&w->idle, NULL);
}

void fln_zclose_parts(zmq_msg_t *parts, int n) {
  for (int i = 0; i < n; i++) zmq_msg_close(&parts[i]);
}

int fln_zrecv(void *sock, zmq_msg_t *parts, int max, int *overflow) {
  int n = 0, more = 1;
  *overflow = 0;
  while (more) {
    zmq_msg_t tmp, *m = n < max ? &parts[n] : &tmp;
    zmq_msg_init(m);
    /* Only the first part may be absent: the rest of a multipart message is
     * delivered atomically with it. */
    int rc = fln_zmsg_recv(m, sock, ZMQ_DONTWAIT);
    if (rc < 0) {
      int e = -rc;
      zmq_msg_close(m);
      if (e == EAGAIN && n == 0) return 0;
      fln_zclose_parts(parts, n < max ? n : max);
      return e == EAGAIN ? FL_ETRUNC : -e;
    }
    more = zmq_msg_more(m);
    if (n < max) n++;
    else {
      zmq_msg_close(m);
      *overflow = 1;
    }
  }
  return n;
}

int fln_zmsg_recv(zmq_msg_t *m, void *sock, int flags) {
  int rc;
  while (fln__again(rc = zmq_msg_recv(m, sock, flags))) {}
  return rc < 0 ? -errno : rc;
}

int fln_zsend(void *sock, const void *buf, size_t len, int flags) {
  int rc;
  while (fln__again(rc = zmq_send(sock, buf, len, flags))) {}
  return rc < 0 ? -errno : 0;
}

void *fln_zmon_open(void *zctx, void *sock, const char *addr, int events) {
  if (zmq_socket_monitor(sock, addr, events)) return NULL;
  void *mon = zmq_socket(zctx, ZMQ_PAIR);
  if (!mon) return NULL;
  int zero = 0;
  zmq_setsockopt(mon, ZMQ_LINGER, &zero, sizeof zero);
  if (zmq_connect(mon, addr)) {
    zmq_close(mon);
    return NULL;
  }
  return mon;
}

/* An event is two parts: [event (u16) value (u32)][endpoint]. */
int fln_zmon_recv(void *mon) {
  zmq_msg_t parts[2];
  int overflow, n = fln_zrecv(mon, parts, 2, &overflow);
  if (n <= 0) return n;
  uint16_t ev = 0;
  if (zmq_msg_size(&parts[0]) >= 2) memcpy(&ev, zmq_msg_data(&parts[0]), 2);
  fln_zclose_parts(parts, n);
  return ev ? ev : FL_EFORMAT;
}

void fln_zterm(void *ctx) {
  while (fln__again(zmq_ctx_term(ctx))) {}
}

int fln_thread_quiet(pthread_t *t, void *(*fn)(void *), void *arg) {
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  int rc = pthread_create(t, NULL, fn, arg);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  return -rc;
}
