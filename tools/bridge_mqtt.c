/* faultline bridge: the broker connection, libmosquitto driven by the loop.
 *
 * No second thread: libmosquitto's socket is watched by a uv_poll (readable,
 * and writable while libmosquitto has output queued), its loop_read and
 * loop_write run from the poll's callback and loop_misc (keepalive pings,
 * QoS 1 retries) from a timer.  libmosquitto closes its socket itself when
 * the connection drops, and a new connection brings a new descriptor; the
 * poll watches a dup() of it, so the watched descriptor stays valid until we
 * notice the change and close the watch.  Reconnection is ours: a timer with
 * a backoff from [mqtt] reconnect_min doubling to reconnect_max. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <mosquitto.h>

#include "bridge.h"

typedef struct flb_mqtt {
  struct mosquitto *m;
  uv_poll_t *poll; /* watches fd, a dup of sock */
  int sock, fd, events;
  uv_timer_t misc, retry;
  double backoff;
  int started, retrying;
} flb_mqtt;

static void flb__sync(flb_app *app);

static void flb__poll_closed(uv_handle_t *h) {
  int fd = (int)(intptr_t)h->data;
  if (fd >= 0) close(fd);
  free(h);
}

static void flb__unwatch(flb_mqtt *q) {
  if (!q->poll) return;
  uv_poll_stop(q->poll);
  q->poll->data = (void *)(intptr_t)q->fd;
  uv_close((uv_handle_t *)q->poll, flb__poll_closed);
  q->poll = NULL;
  q->fd = q->sock = -1;
  q->events = 0;
}

static void flb__poll_cb(uv_poll_t *h, int status, int events) {
  flb_app *app = h->data;
  flb_mqtt *q = app->mq;
  if (status < 0) events = UV_READABLE; /* let libmosquitto find the error */
  if (events & UV_WRITABLE) mosquitto_loop_write(q->m, 1);
  if ((events & UV_READABLE) && mosquitto_socket(q->m) == q->sock) {
    /* One call reads at most one packet: go on while bytes are waiting
     * (libmosquitto itself drains what TLS has buffered). */
    for (int i = 0; i < 4096; i++) {
      if (mosquitto_loop_read(q->m, 1) != MOSQ_ERR_SUCCESS) break;
      int avail = 0;
      if (mosquitto_socket(q->m) != q->sock || ioctl(q->sock, FIONREAD, &avail) || avail <= 0)
        break;
    }
  }
  flb__sync(app);
}

static void flb__retry_cb(uv_timer_t *t) {
  flb_app *app = t->data;
  flb_mqtt *q = app->mq;
  q->retrying = 0;
  if (app->stopping) return;
  if (app->cfg.sparkplug) flb_spb_will(app);
  int rc = q->started ? mosquitto_reconnect_async(q->m)
                      : mosquitto_connect_async(q->m, app->cfg.host, app->cfg.port,
                                                app->cfg.keepalive);
  q->started = 1;
  if (rc != MOSQ_ERR_SUCCESS)
    flb_log(7, "mqtt: connect to %s: %s", app->cfg.url,
            rc == MOSQ_ERR_ERRNO ? strerror(errno) : mosquitto_strerror(rc));
  flb__sync(app);
}

/* Matches our watch to libmosquitto's socket and what it wants to do, and
 * schedules a reconnection when there is no socket. */
static void flb__sync(flb_app *app) {
  flb_mqtt *q = app->mq;
  int s = mosquitto_socket(q->m);
  if (s != q->sock) flb__unwatch(q);
  if (s < 0) {
    if (app->connected) {
      app->connected = 0;
      app->m.disconnects++;
      app->m.down_since = flb_now();
      flb_log(4, "mqtt: connection to %s lost; reconnecting", app->cfg.url);
    }
    if (!q->retrying && !app->stopping) {
      q->retrying = 1;
      uv_timer_start(&q->retry, flb__retry_cb, (uint64_t)(q->backoff * 1000), 0);
      q->backoff *= 2;
      if (q->backoff > app->cfg.reconnect_max) q->backoff = app->cfg.reconnect_max;
    }
    return;
  }
  if (!q->poll) {
    q->fd = dup(s);
    q->sock = s;
    q->poll = malloc(sizeof *q->poll);
    if (q->fd < 0 || !q->poll || uv_poll_init(app->loop, q->poll, q->fd)) {
      flb_log(3, "mqtt: cannot watch the broker's socket");
      free(q->poll);
      q->poll = NULL;
      if (q->fd >= 0) close(q->fd);
      q->fd = q->sock = -1;
      mosquitto_disconnect(q->m);
      return;
    }
    q->poll->data = app;
  }
  int ev = UV_READABLE | (mosquitto_want_write(q->m) ? UV_WRITABLE : 0);
  if (ev != q->events) {
    uv_poll_start(q->poll, ev, flb__poll_cb);
    q->events = ev;
  }
}

static void flb__misc_cb(uv_timer_t *t) {
  flb_app *app = t->data;
  if (mosquitto_socket(app->mq->m) >= 0) mosquitto_loop_misc(app->mq->m);
  flb__sync(app);
}

static void flb__on_connect(struct mosquitto *m, void *user, int rc) {
  flb_app *app = user;
  (void)m;
  if (rc) {
    flb_log(4, "mqtt: %s refused the connection: %s", app->cfg.url, mosquitto_connack_string(rc));
    return;
  }
  app->mq->backoff = app->cfg.reconnect_min;
  app->m.connects++;
  if (app->m.down_since > 0) {
    app->m.down_seconds += flb_now() - app->m.down_since;
    app->m.down_since = 0;
  }
  app->connected = 1;
  flb_log(6, "mqtt: connected to %s", app->cfg.url);
  flb_on_connect(app);
}

static void flb__on_message(struct mosquitto *m, void *user, const struct mosquitto_message *msg) {
  (void)m;
  flb_on_message(user, msg->topic, msg->payload, (size_t)msg->payloadlen);
}

int flb_mqtt_start(flb_app *app) {
  const flb_config *c = &app->cfg;
  flb_mqtt *q = calloc(1, sizeof *q);
  if (!q) return -ENOMEM;
  app->mq = q;
  q->sock = q->fd = -1;
  q->backoff = c->reconnect_min;
  mosquitto_lib_init();
  q->m = mosquitto_new(c->client_id[0] ? c->client_id : NULL, c->clean_session, app);
  if (!q->m) return -errno;
  int rc = MOSQ_ERR_SUCCESS;
  if (c->username[0]) rc = mosquitto_username_pw_set(q->m, c->username, c->password[0] ? c->password : NULL);
  if (rc == MOSQ_ERR_SUCCESS && c->tls)
    rc = mosquitto_tls_set(q->m, c->ca_file[0] ? c->ca_file : NULL, NULL,
                           c->cert_file[0] ? c->cert_file : NULL,
                           c->key_file[0] ? c->key_file : NULL, NULL);
  if (rc == MOSQ_ERR_SUCCESS && c->tls && !c->ca_file[0])
    rc = mosquitto_tls_opts_set(q->m, 1, NULL, NULL);
  if (rc != MOSQ_ERR_SUCCESS) {
    flb_log(3, "mqtt: %s", mosquitto_strerror(rc));
    return -EINVAL;
  }
  mosquitto_connect_callback_set(q->m, flb__on_connect);
  mosquitto_message_callback_set(q->m, flb__on_message);
  uv_timer_init(app->loop, &q->misc);
  uv_timer_init(app->loop, &q->retry);
  q->misc.data = q->retry.data = app;
  uv_timer_start(&q->misc, flb__misc_cb, 250, 250);
  app->m.down_since = flb_now();
  q->retrying = 1;
  uv_timer_start(&q->retry, flb__retry_cb, 0, 0);
  return 0;
}

void flb_mqtt_stop(flb_app *app) {
  flb_mqtt *q = app->mq;
  if (!q) return;
  if (mosquitto_socket(q->m) >= 0) {
    /* A clean disconnect discards the will: our node's death is published
     * by hand first, as Sparkplug asks. */
    mosquitto_disconnect(q->m);
    mosquitto_loop_write(q->m, 1);
  }
  flb__unwatch(q);
  uv_timer_stop(&q->misc);
  uv_timer_stop(&q->retry);
  uv_close((uv_handle_t *)&q->misc, NULL);
  uv_close((uv_handle_t *)&q->retry, NULL);
}

void flb_mqtt_free(flb_app *app) {
  if (!app->mq) return;
  mosquitto_destroy(app->mq->m);
  mosquitto_lib_cleanup();
  free(app->mq);
  app->mq = NULL;
}

int flb_mqtt_subscribe(flb_app *app, const char *topic) {
  int rc = mosquitto_subscribe(app->mq->m, NULL, topic, app->cfg.qos);
  if (rc != MOSQ_ERR_SUCCESS) flb_log(4, "mqtt: subscribe %s: %s", topic, mosquitto_strerror(rc));
  return rc == MOSQ_ERR_SUCCESS ? 0 : -EIO;
}

int flb_mqtt_publish(flb_app *app, const char *topic, const void *buf, size_t len, int retain) {
  if (!app->connected) return -ENOTCONN;
  int rc = mosquitto_publish(app->mq->m, NULL, topic, (int)len, buf, app->cfg.qos, retain);
  if (rc != MOSQ_ERR_SUCCESS) {
    app->m.publish_failed++;
    return -EIO;
  }
  app->m.published++;
  flb__sync(app);
  return 0;
}

int flb_mqtt_will(flb_app *app, const char *topic, const void *buf, size_t len) {
  return mosquitto_will_set(app->mq->m, topic, (int)len, buf, app->cfg.qos, 0) ==
                 MOSQ_ERR_SUCCESS ? 0 : -EINVAL;
}
