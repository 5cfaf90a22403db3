/* A read-only HTTP endpoint in the loop: see fln.h.
 *
 * libmicrohttpd runs in external-poll epoll mode: its epoll fd is watched by
 * the loop and MHD_run() is called from the loop, so a route reads the
 * program's state in the thread that writes it and nothing needs a lock. */
#include <arpa/inet.h>
#include <microhttpd.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "faultline/error.h"
#include "fln.h"

static const fln_route *fln__find(const fln_http_table *t, const char *url) {
  for (int i = 0; i < t->n_routes; i++)
    if (!strcmp(url, t->routes[i].path)) return &t->routes[i];
  return NULL;
}

int fln_http_route(const fln_http_table *t, const char *method, const char *url,
                   unsigned *status, const char **body, size_t *len) {
  /* Only reads: a scrape must not be able to change anything. */
  if (strcmp(method, "GET") && strcmp(method, "HEAD")) {
    static const char msg[] = "method not allowed\n";
    *status = MHD_HTTP_METHOD_NOT_ALLOWED;
    *body = msg;
    *len = sizeof msg - 1;
    return 0;
  }
  const fln_route *r = fln__find(t, url);
  if (r && r->answer) return r->answer(t->user, url, status, body, len);
  if (r) {
    char *b = r->render(t->user, len);
    if (!b) return -1;
    *status = MHD_HTTP_OK;
    *body = b;
    return 1;
  }
  *status = MHD_HTTP_NOT_FOUND;
  *body = t->not_found ? t->not_found : "not found\n";
  *len = strlen(*body);
  return 0;
}

int fln_http_health(int stopping, unsigned *status, const char **body, size_t *len) {
  *body = stopping ? "stopping\n" : "ok\n";
  *len = strlen(*body);
  *status = stopping ? MHD_HTTP_SERVICE_UNAVAILABLE : MHD_HTTP_OK;
  return 0;
}

static enum MHD_Result fln__answer(void *cls, struct MHD_Connection *conn, const char *url,
                                   const char *method, const char *version,
                                   const char *upload, size_t *upload_size, void **con_cls) {
  fln_http *h = cls;
  (void)version;
  (void)upload;
  (void)con_cls;
  /* A request body is never read: refuse one rather than buffer it. */
  if (*upload_size) return MHD_NO;
  unsigned status;
  const char *body;
  size_t len = 0;
  int owned = fln_http_route(&h->table, method, url, &status, &body, &len);
  if (owned < 0) return MHD_NO;
  struct MHD_Response *r = MHD_create_response_from_buffer(
      len, (void *)body, owned ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT);
  if (!r) {
    if (owned) free((void *)body);
    return MHD_NO;
  }
  /* The route that answered gives the type of its body. */
  const fln_route *route = status != MHD_HTTP_METHOD_NOT_ALLOWED ? fln__find(&h->table, url) : NULL;
  if (route && route->content_type) MHD_add_response_header(r, "Content-Type", route->content_type);
  enum MHD_Result ret = MHD_queue_response(conn, status, r);
  MHD_destroy_response(r);
  return ret;
}

/* The connection cap is ours rather than MHD's: MHD at its limit stops
 * accepting and lets connections wait in the backlog, unseen; here one over
 * the cap is accepted, closed at once and counted. */
static enum MHD_Result fln__accept(void *cls, const struct sockaddr *addr, socklen_t len) {
  fln_http *h = cls;
  (void)addr;
  (void)len;
  if (h->open < h->max_connections) return MHD_YES;
  h->refused++;
  fln_limit_hit(&h->refused_log, "metrics connection refused: %d open (%s)", h->open,
                h->max_connections_name ? h->max_connections_name : "max_connections");
  return MHD_NO;
}

static void fln__conn_notify(void *cls, struct MHD_Connection *c, void **sctx,
                             enum MHD_ConnectionNotificationCode toe) {
  fln_http *h = cls;
  (void)c;
  (void)sctx;
  if (toe == MHD_CONNECTION_NOTIFY_STARTED) h->open++;
  else if (toe == MHD_CONNECTION_NOTIFY_CLOSED && h->open > 0) h->open--;
}

static void fln__timer_cb(uv_timer_t *t) {
  fln_http *h = t->data;
  MHD_run(h->mhd);
}

static void fln__poll_cb(uv_poll_t *p, int status, int events) {
  fln_http *h = p->data;
  (void)status;
  (void)events;
  MHD_run(h->mhd);
  /* Idle connections time out inside MHD: give it a turn when it asks. */
  MHD_UNSIGNED_LONG_LONG ms;
  if (MHD_get_timeout(h->mhd, &ms) == MHD_YES)
    uv_timer_start(&h->timer, fln__timer_cb, ms, 0);
}

int fln_http_start(fln_http *h, uv_loop_t *loop) {
  const char *listen = h->listen;
  if (!listen[0]) return 0;
  char host[128];
  const char *colon = strrchr(listen, ':');
  if (!colon) {
    fln_log(FLN_ERR, "HTTP listen address %s: want ADDRESS:PORT", listen);
    return FL_EINVAL;
  }
  snprintf(host, sizeof host, "%.*s", (int)(colon - listen), listen);
  /* "[::1]:9108" */
  if (host[0] == '[') {
    memmove(host, host + 1, strlen(host));
    char *e = strchr(host, ']');
    if (e) *e = 0;
  }
  struct addrinfo hints = {0}, *ai = NULL;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV | AI_PASSIVE;
  int g = getaddrinfo(host[0] ? host : NULL, colon + 1, &hints, &ai);
  if (g) {
    fln_log(FLN_ERR, "[metrics] listen = %s: %s", listen, gai_strerror(g));
    return FL_EINVAL;
  }
  unsigned flags = MHD_USE_EPOLL | (ai->ai_family == AF_INET6 ? MHD_USE_IPv6 : 0);
  uint16_t port = ntohs(ai->ai_family == AF_INET6
                            ? ((struct sockaddr_in6 *)ai->ai_addr)->sin6_port
                            : ((struct sockaddr_in *)ai->ai_addr)->sin_port);
  h->open = 0;
  h->mhd = MHD_start_daemon(flags, port, fln__accept, h, fln__answer, h, MHD_OPTION_SOCK_ADDR,
                            ai->ai_addr, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)10,
                            MHD_OPTION_CONNECTION_LIMIT, (unsigned)h->max_connections + 8,
                            /* The request line and headers must fit: larger is 431/414. */
                            MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)h->max_request + 2048,
                            MHD_OPTION_NOTIFY_CONNECTION, fln__conn_notify, h, MHD_OPTION_END);
  freeaddrinfo(ai);
  if (!h->mhd) {
    fln_log(FLN_ERR, "cannot serve metrics on %s (address in use?)", listen);
    return FL_EIO;
  }
  const union MHD_DaemonInfo *info = MHD_get_daemon_info(h->mhd, MHD_DAEMON_INFO_EPOLL_FD);
  if (!info) {
    MHD_stop_daemon(h->mhd);
    h->mhd = NULL;
    return FL_EIO;
  }
  uv_poll_init(loop, &h->poll, info->epoll_fd);
  uv_timer_init(loop, &h->timer);
  h->poll.data = h;
  h->timer.data = h;
  uv_poll_start(&h->poll, UV_READABLE, fln__poll_cb);
  h->on = 1;
  fln_log(FLN_INFO, "metrics on http://%s/metrics", listen);
  return 0;
}

void fln_http_stop(fln_http *h) {
  if (!h->on) return;
  uv_poll_stop(&h->poll);
  uv_timer_stop(&h->timer);
  uv_close((uv_handle_t *)&h->poll, NULL);
  uv_close((uv_handle_t *)&h->timer, NULL);
  MHD_stop_daemon(h->mhd);
  h->mhd = NULL;
  h->on = 0;
}
