/* faultline proxy: the fan-in of a site.  An XSUB frontend (publishers of
 * frames, or daemons publishing reports, connect to it) and an XPUB backend
 * (daemons subscribing to their shard of frames, or consumers of reports)
 * joined by zmq_proxy_steerable in a thread of its own; the loop thread
 * serves /metrics and /healthz, answers ZAP requests, reads the proxy's
 * STATISTICS over its control socket, and stops it with TERMINATE, all with
 * net/'s parts. */
#ifndef FAULTLINE_PROXY_H
#define FAULTLINE_PROXY_H

#include <limits.h>

#include "fln.h"

typedef struct {
  /* Endpoints: "@tcp://..." or a bare endpoint binds, ">tcp://..." connects. */
  int n_front, n_back;
  char front[FLN_MAX_ENDPOINTS][FLN_ENDPOINT_MAX];
  char back[FLN_MAX_ENDPOINTS][FLN_ENDPOINT_MAX];
  char metrics_listen[128];     /* "ADDR:PORT"; empty: no HTTP endpoint */
  int metrics_max_connections;
  int hwm;                      /* send and receive high-water marks, messages */
  int log_level;
  /* CurveZMQ: the proxy's secret key and the client keys its server sides
   * admit; a side with a server key is a CURVE client of that server (the
   * daemons are always CURVE servers), the other sides are servers. */
  char curve_key[PATH_MAX], authorized_keys[PATH_MAX];
  char front_server_key[PATH_MAX], back_server_key[PATH_MAX];
} proxy_opts;

void proxy_defaults(proxy_opts *o);
/* Splits a comma-separated endpoint list into dst (at most
 * FLN_MAX_ENDPOINTS); 0 or FL_EINVAL. */
int proxy_endpoints(const char *v, char dst[][FLN_ENDPOINT_MAX], int *n);
/* Runs the proxy until SIGTERM or SIGINT; returns the exit status (0 after a
 * clean stop, 1 when it could not start or the forwarding thread failed). */
int proxy_run(const proxy_opts *o);

#endif
