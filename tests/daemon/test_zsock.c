/* Unit tests of net/zsock.c under a storm of signals: libzmq's calls fail
 * with EINTR when a signal lands on the calling thread, even with
 * ZMQ_DONTWAIT, and the daemon's loop thread takes SIGHUP.  Each test sends
 * numbered two-part messages over a real TCP PUSH/PULL pair on loopback while
 * a second thread sends SIGUSR1 to the thread under test (handler installed
 * with SA_RESTART, as libuv does) until MIN_INTERRUPTED calls under test were
 * interrupted and made again (fln_zsock_interrupted) and N_MSG messages came,
 * however long the machine takes, and checks that every message arrives
 * once, whole and in order, and that no call reports an error:
 * fln_zrecv (no message counted that was not sent), fln_zsend (no message
 * left half sent) and fln_zwatch (the loop drains everything; ZMQ_EVENTS
 * re-arms its edge even when interrupted).  Without the retries an
 * interrupted call fails, which ends the test at once. */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdatomic.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "fln.h"

#define N_MSG 20000
/* Interrupted calls each test waits for.  Only the thread under test takes
 * signals and only the calls under test count them. */
#define MIN_INTERRUPTED 100
/* A guard against a hang, not a measure of speed. */
#define SECONDS 90ULL

static volatile sig_atomic_t n_signals;
static void on_usr1(int sig) {
  (void)sig;
  n_signals++;
}

/* ---- the storm ---------------------------------------------------------- */
typedef struct {
  pthread_t target, thread;
  atomic_int stop;
  uint64_t interrupted0; /* fln_zsock_interrupted() when it began */
} storm;

static storm the_storm;

/* Calls under test interrupted (and made again) since the storm began. */
static uint64_t interrupted(void) { return fln_zsock_interrupted() - the_storm.interrupted0; }

static void *storm_run(void *arg) {
  storm *s = arg;
  while (!atomic_load(&s->stop)) pthread_kill(s->target, SIGUSR1);
  return NULL;
}

/* Starts signalling the calling thread; threads created meanwhile block
 * every signal (fln_thread_quiet), so only the thread under test is
 * interrupted. */
static void storm_start(storm *s) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_usr1;
  sa.sa_flags = SA_RESTART;
  sigaction(SIGUSR1, &sa, NULL);
  n_signals = 0;
  s->interrupted0 = fln_zsock_interrupted();
  s->target = pthread_self();
  atomic_store(&s->stop, 0);
  assert_int_equal(fln_thread_quiet(&s->thread, storm_run, s), 0);
}

static void storm_stop(storm *s) {
  atomic_store(&s->stop, 1);
  pthread_join(s->thread, NULL);
}

/* ---- a PUSH/PULL pair on loopback --------------------------------------- */
typedef struct {
  void *ctx, *push, *pull;
  atomic_int stop;  /* tells the sending thread to end */
  atomic_int sent;  /* messages sent */
  atomic_int done;  /* the sending side ended: sent is final */
  int got, bad;     /* messages received whole and in order; anything else */
  int errors;       /* calls that failed */
  atomic_int send_errors; /* sends that failed, in the zsend test */
} pair;

static uint64_t deadline(void) { return uv_hrtime() + SECONDS * 1000000000ULL; }

/* A call failed or a message came wrong: the test has failed, and an
 * interrupted call that was not made again may have left the socket's edge
 * unarmed, so it ends now instead of at the guard. */
static int failed(const pair *p) { return p->errors || p->bad || atomic_load(&p->send_errors); }

/* Enough messages went through while enough signals landed in the calls
 * under test. */
static int stormed(const pair *p) {
  return (p->got >= N_MSG && interrupted() >= MIN_INTERRUPTED) || failed(p);
}

static void pair_open(pair *p) {
  memset(p, 0, sizeof *p);
  p->ctx = zmq_ctx_new();
  p->pull = zmq_socket(p->ctx, ZMQ_PULL);
  p->push = zmq_socket(p->ctx, ZMQ_PUSH);
  assert_non_null(p->pull);
  assert_non_null(p->push);
  assert_int_equal(zmq_bind(p->pull, "tcp://127.0.0.1:*"), 0);
  char ep[256];
  size_t len = sizeof ep;
  assert_int_equal(zmq_getsockopt(p->pull, ZMQ_LAST_ENDPOINT, ep, &len), 0);
  assert_int_equal(zmq_connect(p->push, ep), 0);
  /* A sender waiting at the high-water mark gives up when nobody drains
   * (a failing test), instead of hanging the test's join. */
  int timeout_ms = 2000;
  zmq_setsockopt(p->push, ZMQ_SNDTIMEO, &timeout_ms, sizeof timeout_ms);
}

static void pair_close(pair *p) {
  int linger = 0;
  zmq_setsockopt(p->push, ZMQ_LINGER, &linger, sizeof linger);
  zmq_close(p->push);
  zmq_close(p->pull);
  while (zmq_ctx_term(p->ctx) < 0 && errno == EINTR) {}
}

/* Message i: the part "m" and then the part i (4 bytes). */
static int send_numbered(void *sock, uint32_t i, int raw) {
  if (raw) return zmq_send(sock, "m", 1, ZMQ_SNDMORE) < 0 || zmq_send(sock, &i, 4, 0) < 0;
  return fln_zsend(sock, "m", 1, ZMQ_SNDMORE) || fln_zsend(sock, &i, 4, 0);
}

/* Checks one received message against the next number expected. */
static void take(pair *p, zmq_msg_t *parts, int n) {
  uint32_t i;
  if (n == 2 && zmq_msg_size(&parts[0]) == 1 && zmq_msg_size(&parts[1]) == 4 &&
      (memcpy(&i, zmq_msg_data(&parts[1]), 4), i == (uint32_t)p->got))
    p->got++;
  else
    p->bad++;
  fln_zclose_parts(parts, n);
}

/* Sends numbered messages until told to stop.  The receiving side keeps
 * draining meanwhile: a send may wait at the high-water mark. */
static void *sender(void *arg) {
  pair *p = arg;
  for (uint32_t i = 0; !atomic_load(&p->stop); i++) {
    if (send_numbered(p->push, i, 1)) break;
    atomic_store(&p->sent, (int)i + 1);
  }
  atomic_store(&p->done, 1);
  return NULL;
}

/* Every message the sending side sent was taken (or found wrong), or the
 * test has failed. */
static int all_in(const pair *p) {
  return (atomic_load(&p->done) && p->got + p->bad + p->errors >= atomic_load(&p->sent)) ||
         failed(p);
}

/* Takes up to budget messages with fln_zrecv; returns how many calls found
 * one (or failed). */
static int take_pending(pair *p, int budget) {
  int done = 0;
  while (done < budget) {
    zmq_msg_t parts[4];
    int overflow, n = fln_zrecv(p->pull, parts, 4, &overflow);
    if (n == 0) break;
    done++;
    if (n < 0) p->errors++;
    else if (overflow) p->bad++;
    else take(p, parts, n);
  }
  return done;
}

/* Receives until it has every message the test sent. */
static void *receiver(void *arg) {
  pair *p = arg;
  uint64_t t_end = deadline();
  while (!all_in(p) && uv_hrtime() < t_end) {
    zmq_pollitem_t it = {p->pull, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&it, 1, 100) < 0) break;
    take_pending(p, INT_MAX);
  }
  return NULL;
}

/* What a test found: every message sent came once, whole and in order,
 * while enough signals landed in the calls under test, and no call failed. */
static void check_pair(const char *what, pair *p) {
  int send_errors = atomic_load(&p->send_errors);
  uint64_t in_calls = interrupted();
  printf("%s: %d messages whole, %d wrong, %d errors, %d signals, %llu calls interrupted\n",
         what, p->got, p->bad, p->errors + send_errors, (int)n_signals,
         (unsigned long long)in_calls);
  assert_int_equal(p->errors + send_errors, 0);
  assert_true(in_calls >= MIN_INTERRUPTED);
  assert_int_equal(p->bad, 0);
  assert_int_equal(p->got, atomic_load(&p->sent));
  pair_close(p);
}

/* ---- the tests ---------------------------------------------------------- */

static void test_zrecv_interrupted(void **state) {
  (void)state;
  pair p;
  pair_open(&p);
  storm *s = &the_storm;
  storm_start(s);
  pthread_t t;
  assert_int_equal(fln_thread_quiet(&t, sender, &p), 0);
  uint64_t t_end = deadline();
  while (!all_in(&p) && uv_hrtime() < t_end) {
    if (stormed(&p)) atomic_store(&p.stop, 1);
    take_pending(&p, 1);
  }
  storm_stop(s);
  atomic_store(&p.stop, 1);
  pthread_join(t, NULL);
  check_pair("zrecv", &p);
}

static void test_zsend_interrupted(void **state) {
  (void)state;
  pair p;
  pair_open(&p);
  pthread_t t;
  assert_int_equal(fln_thread_quiet(&t, receiver, &p), 0);
  storm *s = &the_storm;
  storm_start(s);
  uint64_t t_end = deadline();
  for (uint32_t i = 0; (i < N_MSG || interrupted() < MIN_INTERRUPTED) && !failed(&p) &&
                      uv_hrtime() < t_end;
       i++) {
    atomic_fetch_add(&p.send_errors, send_numbered(p.push, i, 0));
    atomic_store(&p.sent, (int)i + 1);
  }
  atomic_store(&p.done, 1);
  storm_stop(s);
  pthread_join(t, NULL);
  check_pair("zsend", &p);
}

/* The watcher in a real loop: a drain callback takes messages; a timer
 * stops the sender once the storm has done its work and ends the loop when
 * every message sent came, or at the deadline. */
static int watch_drain(fln_zwatch *w, int budget) { return take_pending(w->user, budget); }

static uint64_t watch_deadline;
static void watch_check(uv_timer_t *t) {
  fln_zwatch *w = t->data;
  pair *p = w->user;
  if (stormed(p)) atomic_store(&p->stop, 1);
  if (all_in(p) || uv_hrtime() > watch_deadline) {
    fln_zwatch_stop(w);
    uv_close((uv_handle_t *)t, NULL);
  }
}

static void test_zwatch_interrupted(void **state) {
  (void)state;
  pair p;
  pair_open(&p);
  uv_loop_t loop;
  uv_loop_init(&loop);
  fln_zwatch w;
  assert_int_equal(fln_zwatch_start(&w, &loop, p.pull, 64, watch_drain, NULL, &p), 0);
  uv_timer_t timer;
  uv_timer_init(&loop, &timer);
  timer.data = &w;
  watch_deadline = deadline();
  uv_timer_start(&timer, watch_check, 10, 10);
  storm *s = &the_storm;
  storm_start(s);
  pthread_t t;
  assert_int_equal(fln_thread_quiet(&t, sender, &p), 0);
  uv_run(&loop, UV_RUN_DEFAULT);
  storm_stop(s);
  atomic_store(&p.stop, 1);
  pthread_join(t, NULL);
  printf("zwatch: %llu wake-ups\n", (unsigned long long)w.wakeups);
  assert_int_equal(uv_loop_close(&loop), 0);
  check_pair("zwatch", &p);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_zrecv_interrupted),
      cmocka_unit_test(test_zsend_interrupted),
      cmocka_unit_test(test_zwatch_interrupted),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
