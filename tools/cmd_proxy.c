/* faultline proxy: the command line of the fan-in proxy (proxy.c). */
#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "proxy.h"

static void proxy_usage(FILE *f) {
  fprintf(f,
          "usage: faultline proxy --frontend ENDPOINT[,...] --backend ENDPOINT[,...]\n"
          "                       [--metrics ADDR:PORT] [--hwm N] [--max-connections N]\n"
          "                       [--curve-key FILE --authorized-keys DIR]\n"
          "                       [--frontend-server-key FILE] [--backend-server-key FILE]\n"
          "                       [--log-level LEVEL]\n\n"
          "Forwards ZeroMQ publish-subscribe traffic between many peers on each side\n"
          "(zmq_proxy_steerable, XSUB frontend, XPUB backend), so that several faultlined\n"
          "share one feed.  A site runs one proxy for frames (sensors connect to its\n"
          "frontend; every daemon connects its [input] to the backend, bind = 0, and\n"
          "subscribes to its own [input] topic prefixes) and one for reports (every\n"
          "daemon connects its [output] to the frontend, bind = 0; consumers read every\n"
          "daemon's reports from the backend).  Subscriptions travel upstream, so a\n"
          "publisher only sends the streams some daemon subscribes to.  SIGTERM or SIGINT\n"
          "stops it; SIGHUP re-reads --authorized-keys.\n\n"
          "  --frontend EP[,EP]   XSUB endpoints; \"@EP\" or a bare EP binds, \">EP\" connects\n"
          "                       (up to 8, the option may repeat)\n"
          "  --backend EP[,EP]    XPUB endpoints, the same syntax\n"
          "  --metrics ADDR:PORT  serve /metrics and /healthz over HTTP (default: none)\n"
          "  --max-connections N  open HTTP connections at most (default 16)\n"
          "  --hwm N              send and receive high-water marks, messages per peer\n"
          "                       (default 100000; 0: unlimited)\n"
          "  --curve-key FILE     CurveZMQ on: the proxy's secret key (bare Z85 or a\n"
          "                       certificate's secret-key line)\n"
          "  --authorized-keys DIR  client public keys, one per file, admitted on the\n"
          "                       sides where the proxy is the CURVE server\n"
          "  --frontend-server-key FILE, --backend-server-key FILE  that side is a CURVE\n"
          "                       client of the peers holding this public key's secret:\n"
          "                       faultlined daemons, which are always CURVE servers;\n"
          "                       without it a side is a CURVE server\n"
          "  --log-level LEVEL    err, warning, notice, info (default) or debug\n");
}

/* A usage error: the message, and exit status 2 as for unknown options. */
static int proxy_bad(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int proxy_bad(const char *fmt, ...) {
  va_list ap;
  fputs("faultline proxy: ", stderr);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  return 2;
}

static int proxy_int(const char *v, long lo, long hi, int *out) {
  char *end;
  long x = strtol(v, &end, 10);
  if (end == v || *end || x < lo || x > hi) return -1;
  *out = (int)x;
  return 0;
}

static int proxy_path(char *dst, const char *v) {
  if (!*v || strlen(v) >= PATH_MAX) return -1;
  snprintf(dst, PATH_MAX, "%s", v);
  return 0;
}

int cmd_proxy(int argc, char **argv) {
  static const struct option opts[] = {
      {"frontend", 1, 0, 'f'},        {"backend", 1, 0, 'b'},
      {"metrics", 1, 0, 'm'},         {"max-connections", 1, 0, 'M'},
      {"hwm", 1, 0, 'w'},             {"curve-key", 1, 0, 'k'},
      {"authorized-keys", 1, 0, 'a'}, {"frontend-server-key", 1, 0, 'F'},
      {"backend-server-key", 1, 0, 'B'}, {"log-level", 1, 0, 'l'},
      {"help", 0, 0, 'h'},            {0, 0, 0, 0}};
  proxy_opts o;
  proxy_defaults(&o);
  int opt;
  optind = 1;
  while ((opt = getopt_long(argc, argv, "f:b:m:M:w:k:a:F:B:l:h", opts, NULL)) != -1) {
    switch (opt) {
    case 'f':
      if (proxy_endpoints(optarg, o.front, &o.n_front))
        return proxy_bad("--frontend \"%s\": want at most %d comma-separated endpoints",
                        optarg, FLN_MAX_ENDPOINTS);
      break;
    case 'b':
      if (proxy_endpoints(optarg, o.back, &o.n_back))
        return proxy_bad("--backend \"%s\": want at most %d comma-separated endpoints",
                        optarg, FLN_MAX_ENDPOINTS);
      break;
    case 'm':
      if (strlen(optarg) >= sizeof o.metrics_listen || !strrchr(optarg, ':'))
        return proxy_bad("--metrics \"%s\": want ADDRESS:PORT", optarg);
      snprintf(o.metrics_listen, sizeof o.metrics_listen, "%s", optarg);
      break;
    case 'M':
      if (proxy_int(optarg, 1, 1024, &o.metrics_max_connections))
        return proxy_bad("--max-connections \"%s\": want 1 to 1024", optarg);
      break;
    case 'w':
      if (proxy_int(optarg, 0, 100000000, &o.hwm))
        return proxy_bad("--hwm \"%s\": want 0 to 100000000", optarg);
      break;
    case 'k':
      if (proxy_path(o.curve_key, optarg)) return proxy_bad("--curve-key: bad path");
      break;
    case 'a':
      if (proxy_path(o.authorized_keys, optarg))
        return proxy_bad("--authorized-keys: bad path");
      break;
    case 'F':
      if (proxy_path(o.front_server_key, optarg))
        return proxy_bad("--frontend-server-key: bad path");
      break;
    case 'B':
      if (proxy_path(o.back_server_key, optarg))
        return proxy_bad("--backend-server-key: bad path");
      break;
    case 'l':
      if (fln_log_parse_level(optarg, &o.log_level))
        return proxy_bad("--log-level \"%s\": want err, warning, notice, info or debug",
                        optarg);
      break;
    case 'h': proxy_usage(stdout); return 0;
    default: proxy_usage(stderr); return 2;
    }
  }
  if (optind < argc) return proxy_bad("unexpected argument \"%s\"", argv[optind]);
  if (!o.n_front || !o.n_back)
    return proxy_bad("--frontend and --backend are required (see --help)");
  if ((o.front_server_key[0] || o.back_server_key[0] || o.authorized_keys[0]) && !o.curve_key[0])
    return proxy_bad("--authorized-keys and the server keys need --curve-key");
  if (o.curve_key[0] && !o.authorized_keys[0])
    return proxy_bad("--curve-key needs --authorized-keys (the clients it admits)");
  /* Unreadable key files are the usual mistake: name the option. */
  const struct { const char *opt, *path; } files[] = {
      {"--curve-key", o.curve_key}, {"--authorized-keys", o.authorized_keys},
      {"--frontend-server-key", o.front_server_key}, {"--backend-server-key", o.back_server_key}};
  /* A relative --curve-key is a systemd credential when
   * $CREDENTIALS_DIRECTORY is set (net/curve.c reads it from there). */
  const char *creds = getenv("CREDENTIALS_DIRECTORY");
  for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
    char path[PATH_MAX + 256];
    snprintf(path, sizeof path, "%s%s%s", i == 0 && files[i].path[0] != '/' && creds && *creds
             ? creds : "", i == 0 && files[i].path[0] != '/' && creds && *creds ? "/" : "",
             files[i].path);
    if (files[i].path[0] && access(path, R_OK))
      return cli_fail("proxy", "%s %s: %s", files[i].opt, path, strerror(errno));
  }
  return proxy_run(&o);
}
