/* faultline replay | tail: the daemon's companions on the wire.
 *
 * replay streams a CSV recording as Frames ([frame/<stream>][Frame]), one
 * per row, optionally with one injected fault episode; tail prints the
 * Reports a daemon publishes, as text or one JSON object per line. */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <zmq.h>

#include "cli.h"
#include "faultline.pb-c.h"
#include "faultline/error.h"
#include "faultline/faults.h"

/* CurveZMQ client keys: our secret (the public key is derived from it) and
 * the server's public key, each from a file with the bare Z85 key or a
 * ZeroMQ certificate line. */
static int stream_read_key(const char *path, const char *name, char out[41]) {
  FILE *f = fopen(path, "r");
  if (!f) return -1;
  char buf[4096];
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = 0;
  const char *p = strstr(buf, name);
  if (p && (p = strchr(p, '"'))) p++;
  else for (p = buf; *p == ' ' || *p == '\n' || *p == '\t' || *p == '\r'; p++) {}
  size_t len = 0;
  while (p[len] && p[len] != '"' && p[len] != '\n' && p[len] != '\r' && p[len] != ' ') len++;
  if (len != 40) return -1;
  memcpy(out, p, 40);
  out[40] = 0;
  return 0;
}

static int stream_curve(const char *cmd, void *sock, const char *key, const char *server) {
  if (!key && !server) return 0;
  if (!key || !server) return cli_fail(cmd, "--curve-key and --curve-server-key go together");
  char sec[41], pub[41], srv[41];
  if (stream_read_key(key, "secret-key", sec) || stream_read_key(server, "public-key", srv))
    return cli_fail(cmd, "cannot read a Z85 key from %s or %s", key, server);
  if (zmq_curve_public(pub, sec)) return cli_fail(cmd, "%s is not a Z85 secret key", key);
  if (zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, sec, 40) ||
      zmq_setsockopt(sock, ZMQ_CURVE_PUBLICKEY, pub, 40) ||
      zmq_setsockopt(sock, ZMQ_CURVE_SERVERKEY, srv, 40))
    return cli_fail(cmd, "cannot enable CurveZMQ: %s", zmq_strerror(errno));
  return 0;
}

static double stream_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Injects one fault episode into modality mi of the whole recording, sized
 * in each channel's standard deviation over the file. */
static int stream_inject(const fl_model_spec *spec, fl_series *s, int mi, fl_fault_type type,
                         int ch, int at, int rows, float magnitude, uint64_t seed) {
  int C = spec->mod[mi].channels, r = spec->mod[mi].rate;
  int T = s->rows * r;
  float *sd = malloc(sizeof(float) * (size_t)C);
  if (!sd) return FL_ENOMEM;
  for (int c = 0; c < C; c++) {
    double sum = 0, sq = 0;
    int n = 0;
    for (int t = 0; t < T; t++) {
      float v = s->x[mi][(size_t)c * T + t];
      if (isnan(v)) continue;
      sum += v;
      sq += (double)v * v;
      n++;
    }
    double mu = n ? sum / n : 0, var = n ? sq / n - mu * mu : 0;
    sd[c] = (float)sqrt(var > 0 ? var : 0);
  }
  fl_fault_params p[FL_FAULT_COUNT];
  fl_fault_defaults(p);
  fl_fault_params q = p[type];
  q.jitter = 0; /* a replay injects exactly what it is told */
  if (magnitude > 0) q.magnitude = magnitude;
  if (type == FL_FAULT_TIMESHIFT) q.shift *= r;
  fl_rng rng;
  fl_rng_seed(&rng, seed);
  int e = fl_fault_inject(type, &q, s->x[mi], NULL, C, T, ch, at * r, rows * r, sd, &rng);
  free(sd);
  return e;
}

int cmd_replay(int argc, char **argv) {
  static const struct option opts[] = {
      {"in", 1, 0, 'i'},          {"connect", 1, 0, 'c'},         {"bind", 1, 0, 'b'},
      {"rate", 1, 0, 'r'},        {"stream", 1, 0, 's'},          {"inject", 1, 0, 'j'},
      {"config", 1, 0, 'C'},      {"push", 0, 0, 'p'},            {"fault-modality", 1, 0, 'M'},
      {"fault-channel", 1, 0, 'H'}, {"fault-at", 1, 0, 'A'},      {"fault-rows", 1, 0, 'R'},
      {"fault-magnitude", 1, 0, 'G'}, {"seed", 1, 0, 'S'},        {"first-seq", 1, 0, 'F'},
      {"wait", 1, 0, 'w'},        {"curve-key", 1, 0, 'k'},       {"curve-server-key", 1, 0, 'K'},
      {"help", 0, 0, 'h'},        {0, 0, 0, 0}};
  const char *in = NULL, *connect = NULL, *bind = NULL, *stream = "replay", *inject = NULL;
  const char *config = NULL, *fmodname = NULL, *ckey = NULL, *skey = NULL;
  double rate = 0, wait = 10;
  int push = 0, fch = 0, fat = -1, frows = 60, o;
  float fmag = 0;
  unsigned long long seed = 1, first = 0;
  optind = 1;
  while ((o = getopt_long(argc, argv, "i:c:b:r:s:j:C:pM:H:A:R:G:S:F:w:k:K:h", opts, NULL)) != -1) {
    switch (o) {
    case 'i': in = optarg; break;
    case 'c': connect = optarg; break;
    case 'b': bind = optarg; break;
    case 'r': rate = atof(optarg); break;
    case 's': stream = optarg; break;
    case 'j': inject = optarg; break;
    case 'C': config = optarg; break;
    case 'p': push = 1; break;
    case 'M': fmodname = optarg; break;
    case 'H': fch = atoi(optarg); break;
    case 'A': fat = atoi(optarg); break;
    case 'R': frows = atoi(optarg); break;
    case 'G': fmag = (float)atof(optarg); break;
    case 'S': seed = strtoull(optarg, NULL, 10); break;
    case 'F': first = strtoull(optarg, NULL, 10); break;
    case 'w': wait = atof(optarg); break;
    case 'k': ckey = optarg; break;
    case 'K': skey = optarg; break;
    case 'h':
      printf("usage: faultline replay --in CSV --connect|--bind ENDPOINT [--rate HZ]\n"
             "                        [--stream NAME] [--inject TYPE] [--config FILE] [--push]\n\n"
             "Streams the recording as Frames, one per row, topic frame/<stream>, sequence\n"
             "numbers from --first-seq on.  The socket is an XPUB that waits (up to --wait\n"
             "seconds) for a subscriber before sending, so that no frame falls into ZeroMQ's\n"
             "slow-joiner gap; --push uses a PUSH socket instead.  Modalities come from\n"
             "--config's [modality.NAME] sections (default: every numeric column but the\n"
             "labels is one modality \"all\").\n\n"
             "  --rate HZ            frames per second (default 0: as fast as possible)\n"
             "  --inject TYPE        one fault episode (noise, burst, spike, step, offset,\n"
             "                       drift, drift_exp, sine, dropout, missing, stuck,\n"
             "                       saturation, gain, timeshift), sized in the channel's\n"
             "                       standard deviation over the file:\n"
             "  --fault-modality NAME  (default: the first)   --fault-channel N (default 0)\n"
             "  --fault-at ROW         (default: mid-file)    --fault-rows N (default 60)\n"
             "  --fault-magnitude X    (default: the type's)  --seed N (default 1)\n"
             "  --curve-key FILE --curve-server-key FILE  CurveZMQ client secret key and the\n"
             "                       daemon's public key\n");
      return 0;
    default: return 2;
    }
  }
  if (!in || (!connect == !bind))
    return cli_fail("replay", "--in and one of --connect or --bind are required (see --help)");
  fl_config c;
  if (cli_load_config("replay", config, &c)) return 1;
  fl_table t;
  if (cli_read_csv("replay", in, &t)) {
    fl_config_free(&c);
    return 1;
  }
  fl_series s = {0};
  int rc = 1;
  void *zctx = NULL, *sock = NULL;
  if (cli_default_modality("replay", &c, &t, config != NULL)) goto done;
  if (cli_series("replay", in, &c.spec, &t, &s)) goto done;
  const fl_model_spec *spec = &c.spec;
  if (inject) {
    fl_fault_type ft;
    if (fl_fault_parse(inject, &ft) || ft == FL_FAULT_NONE) {
      cli_fail("replay", "unknown fault type \"%s\"", inject);
      goto done;
    }
    int mi = 0;
    if (fmodname) {
      for (mi = 0; mi < spec->n_mod && strcmp(spec->mod[mi].name, fmodname); mi++) {}
      if (mi == spec->n_mod) {
        cli_fail("replay", "no modality \"%s\"", fmodname);
        goto done;
      }
    }
    if (fat < 0) fat = s.rows / 2;
    if (fch < 0 || fch >= spec->mod[mi].channels || frows < 1 || fat + frows > s.rows) {
      cli_fail("replay", "the fault's channel or rows lie outside the data");
      goto done;
    }
    int e = stream_inject(spec, &s, mi, ft, fch, fat, frows, fmag, seed);
    if (e) {
      cli_fail("replay", "injection failed: %s", fl_strerror(e));
      goto done;
    }
    fprintf(stderr, "faultline replay: %s in %s channel %d, rows %d-%d\n", inject,
            spec->mod[mi].name, fch, fat, fat + frows - 1);
  }
  zctx = zmq_ctx_new();
  sock = zmq_socket(zctx, push ? ZMQ_PUSH : ZMQ_XPUB);
  int hwm = 0, linger = 10000, tmo = (int)(wait * 1000);
  zmq_setsockopt(sock, ZMQ_SNDHWM, &hwm, sizeof hwm);
  zmq_setsockopt(sock, ZMQ_LINGER, &linger, sizeof linger);
  if (stream_curve("replay", sock, ckey, skey)) goto done;
  if (bind ? zmq_bind(sock, bind) : zmq_connect(sock, connect)) {
    cli_fail("replay", "%s: %s", bind ? bind : connect, zmq_strerror(errno));
    goto done;
  }
  if (!push) {
    /* XPUB hands over the first subscription: from then on the daemon
     * receives what we send. */
    char sub[256];
    zmq_setsockopt(sock, ZMQ_RCVTIMEO, &tmo, sizeof tmo);
    if (zmq_recv(sock, sub, sizeof sub, 0) < 0)
      fprintf(stderr, "faultline replay: no subscriber after %.0f s; sending anyway\n", wait);
  }
  char topic[128];
  int tl = snprintf(topic, sizeof topic, "frame/%s", stream);
  Faultline__Block *blocks = calloc((size_t)spec->n_mod, sizeof *blocks);
  Faultline__Block **bp = calloc((size_t)spec->n_mod, sizeof *bp);
  float **samples = calloc((size_t)spec->n_mod, sizeof *samples);
  if (!blocks || !bp || !samples) {
    free(blocks);
    free(bp);
    free(samples);
    cli_fail("replay", "out of memory");
    goto done;
  }
  for (int i = 0; i < spec->n_mod; i++) {
    faultline__block__init(&blocks[i]);
    bp[i] = &blocks[i];
    blocks[i].modality = (char *)spec->mod[i].name;
    blocks[i].channels = (uint32_t)spec->mod[i].channels;
    blocks[i].n_samples = (size_t)spec->mod[i].channels * spec->mod[i].rate;
    samples[i] = malloc(sizeof(float) * blocks[i].n_samples);
    blocks[i].samples = samples[i];
  }
  struct timespec t0;
  clock_gettime(CLOCK_REALTIME, &t0);
  int64_t ts0 = (int64_t)t0.tv_sec * 1000000000LL + t0.tv_nsec;
  double start = stream_now(), period = rate > 0 ? 1.0 / rate : 0;
  uint8_t *buf = NULL;
  size_t cap = 0;
  int sent = 0;
  for (int row = 0; row < s.rows; row++) {
    Faultline__Frame f = FAULTLINE__FRAME__INIT;
    f.stream = (char *)stream;
    f.seq = first + (uint64_t)row;
    f.timestamp_ns = ts0 + (int64_t)((period > 0 ? period : 1.0) * 1e9) * row;
    f.n_blocks = (size_t)spec->n_mod;
    f.blocks = bp;
    for (int i = 0; i < spec->n_mod; i++) {
      int C = spec->mod[i].channels, r = spec->mod[i].rate;
      size_t len = (size_t)s.rows * r;
      for (int q = 0; q < r; q++)
        for (int ch = 0; ch < C; ch++)
          samples[i][(size_t)q * C + ch] = s.x[i][(size_t)ch * len + (size_t)row * r + q];
    }
    size_t n = faultline__frame__get_packed_size(&f);
    if (n > cap) {
      uint8_t *nb = realloc(buf, n);
      if (!nb) break;
      buf = nb;
      cap = n;
    }
    faultline__frame__pack(&f, buf);
    if (period > 0) {
      double due = start + row * period, now = stream_now();
      if (due > now) {
        struct timespec d = {(time_t)(due - now), (long)(fmod(due - now, 1.0) * 1e9)};
        nanosleep(&d, NULL);
      }
    }
    if (zmq_send(sock, topic, (size_t)tl, ZMQ_SNDMORE) < 0 || zmq_send(sock, buf, n, 0) < 0) {
      cli_fail("replay", "send failed: %s", zmq_strerror(errno));
      break;
    }
    sent++;
  }
  free(buf);
  for (int i = 0; i < spec->n_mod; i++) free(samples[i]);
  free(samples);
  free(bp);
  free(blocks);
  double dt = stream_now() - start;
  fprintf(stderr, "faultline replay: %d frames of stream \"%s\" in %.2f s (%.0f frames/s)\n",
          sent, stream, dt, dt > 0 ? sent / dt : 0.0);
  rc = sent == s.rows ? 0 : 1;
done:
  if (sock) zmq_close(sock);
  if (zctx) zmq_ctx_term(zctx);
  fl_series_free(&s);
  fl_table_free(&t);
  fl_config_free(&c);
  return rc;
}

static void stream_floats(FILE *f, const float *v, size_t n) {
  fputc('[', f);
  for (size_t i = 0; i < n; i++) {
    if (i) fputc(',', f);
    if (isfinite(v[i])) fprintf(f, "%.7g", (double)v[i]);
    else fputs("null", f);
  }
  fputc(']', f);
}

/* Names are validated by the daemon ([A-Za-z0-9_.:-]), but tail must not
 * print broken JSON for a peer that is not the daemon. */
static void stream_str(FILE *f, const char *s) {
  fputc('"', f);
  for (; *s; s++) {
    if (*s == '"' || *s == '\\') fprintf(f, "\\%c", *s);
    else if ((unsigned char)*s < 0x20) fprintf(f, "\\u%04x", *s);
    else fputc(*s, f);
  }
  fputc('"', f);
}

static void stream_json(FILE *f, const Faultline__Report *r) {
  fputs("{\"stream\":", f);
  stream_str(f, r->stream);
  fprintf(f, ",\"seq\":%llu,\"end_seq\":%llu,\"end_timestamp_ns\":%lld,\"score\":",
          (unsigned long long)r->seq, (unsigned long long)r->end_seq,
          (long long)r->end_timestamp_ns);
  stream_floats(f, &r->score, 1);
  fputs(",\"threshold\":", f);
  stream_floats(f, &r->threshold, 1);
  fprintf(f, ",\"anomaly\":%s,\"faulty_modality\":", r->anomaly ? "true" : "false");
  stream_str(f, r->faulty_modality);
  fprintf(f, ",\"window\":%u,\"stride\":%u,\"model_version\":", r->window, r->stride);
  stream_str(f, r->model_version);
  fprintf(f, ",\"latency_ns\":%llu,\"missing\":%u,\"modalities\":[",
          (unsigned long long)r->latency_ns, r->missing);
  for (size_t i = 0; i < r->n_modalities; i++) {
    const Faultline__ModalityReport *m = r->modalities[i];
    if (i) fputc(',', f);
    fputs("{\"modality\":", f);
    stream_str(f, m->modality);
    fprintf(f, ",\"channels\":%u,\"rate\":%u,\"score\":", m->channels, m->rate);
    stream_floats(f, &m->score, 1);
    fprintf(f, ",\"flag\":%s,\"residuals\":", m->flag ? "true" : "false");
    stream_floats(f, m->residuals, m->n_residuals);
    fputs(",\"channel_scores\":", f);
    stream_floats(f, m->channel_scores, m->n_channel_scores);
    fputs(",\"channel_faulty\":[", f);
    for (size_t c = 0; c < m->n_channel_faulty; c++)
      fprintf(f, "%s%s", c ? "," : "", m->channel_faulty[c] ? "true" : "false");
    fputs("],\"corrected\":", f);
    stream_floats(f, m->corrected, m->n_corrected);
    fputc('}', f);
  }
  fputs("]}\n", f);
}

/* tail --gaps: the newest window end of every stream seen, so that a jump
 * of more than one stride (a daemon restarted, a shard without its daemon,
 * reports dropped) is counted in windows.  Open addressing, grown at half
 * load; names are at most 64 characters (the daemon validates them). */
typedef struct {
  char name[72];
  uint64_t end_seq;
  int used, gapped;
} stream_last;

typedef struct {
  stream_last *slot;
  size_t cap, n;
  uint64_t reports, gaps, missing, streams_with_gaps;
} stream_gaps;

static uint64_t stream_hash(const char *s) {
  uint64_t h = 1469598103934665603ULL;
  for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ULL;
  return h;
}

/* Finds or adds name; NULL when out of memory. */
static stream_last *stream_gaps_get(stream_gaps *g, const char *name, int *fresh) {
  if (2 * (g->n + 1) > g->cap) {
    size_t cap = g->cap ? 2 * g->cap : 1024;
    stream_last *ns = calloc(cap, sizeof *ns);
    if (!ns) return NULL;
    for (size_t i = 0; i < g->cap; i++) {
      if (!g->slot[i].used) continue;
      size_t j = stream_hash(g->slot[i].name) & (cap - 1);
      while (ns[j].used) j = (j + 1) & (cap - 1);
      ns[j] = g->slot[i];
    }
    free(g->slot);
    g->slot = ns;
    g->cap = cap;
  }
  size_t j = stream_hash(name) & (g->cap - 1);
  while (g->slot[j].used && strcmp(g->slot[j].name, name)) j = (j + 1) & (g->cap - 1);
  *fresh = !g->slot[j].used;
  if (*fresh) {
    snprintf(g->slot[j].name, sizeof g->slot[j].name, "%s", name);
    g->slot[j].used = 1;
    g->n++;
  }
  return &g->slot[j];
}

/* Counts the windows missing before this report of its stream. */
static void stream_gaps_see(stream_gaps *g, const Faultline__Report *r) {
  int fresh;
  g->reports++;
  stream_last *l = stream_gaps_get(g, r->stream, &fresh);
  if (!l) return;
  if (!fresh && r->stride && r->end_seq > l->end_seq + r->stride) {
    uint64_t lost = (r->end_seq - l->end_seq) / r->stride - 1;
    if (lost) {
      fprintf(stderr, "faultline tail: stream %s: %llu windows missing before the one "
                      "ending at tick %llu\n", r->stream, (unsigned long long)lost,
              (unsigned long long)r->end_seq);
      g->streams_with_gaps += !l->gapped;
      l->gapped = 1;
      g->gaps++;
      g->missing += lost;
    }
  }
  l->end_seq = r->end_seq;
}

static volatile sig_atomic_t stream_stop;
static void stream_on_signal(int sig) { (void)sig; stream_stop = 1; }

int cmd_tail(int argc, char **argv) {
  static const struct option opts[] = {
      {"connect", 1, 0, 'c'}, {"bind", 1, 0, 'b'},    {"stream", 1, 0, 's'},
      {"json", 0, 0, 'j'},    {"count", 1, 0, 'n'},   {"timeout", 1, 0, 't'},
      {"curve-key", 1, 0, 'k'}, {"curve-server-key", 1, 0, 'K'}, {"gaps", 0, 0, 'g'},
      {"help", 0, 0, 'h'},      {0, 0, 0, 0}};
  const char *connect = NULL, *bind = NULL, *prefix = "", *ckey = NULL, *skey = NULL;
  int json = 0, gaps = 0, o;
  stream_gaps g = {0};
  long count = 0;
  double timeout = 0;
  optind = 1;
  while ((o = getopt_long(argc, argv, "c:b:s:jn:t:k:K:gh", opts, NULL)) != -1) {
    switch (o) {
    case 'c': connect = optarg; break;
    case 'b': bind = optarg; break;
    case 's': prefix = optarg; break;
    case 'j': json = 1; break;
    case 'n': count = atol(optarg); break;
    case 't': timeout = atof(optarg); break;
    case 'k': ckey = optarg; break;
    case 'K': skey = optarg; break;
    case 'g': gaps = 1; break;
    case 'h':
      printf("usage: faultline tail --connect|--bind ENDPOINT [--stream PREFIX] [--json]\n"
             "                      [--count N] [--timeout S] [--gaps]\n\n"
             "Prints the daemon's reports of the streams whose id starts with PREFIX: one\n"
             "line each (stream, report and frame sequence numbers, score, threshold, flag,\n"
             "faulty modality, latency), or with --json one JSON object per line with every\n"
             "field of the report.  Stops after N reports, after S seconds without one, or\n"
             "on SIGINT/SIGTERM; exits 1 if a timeout ends it before N reports.\n"
             "  --gaps               count, per stream, windows missing between two reports\n"
             "                       (end ticks more than a stride apart: a daemon was down,\n"
             "                       reports were dropped); each gap is a line on stderr, and\n"
             "                       at the end \"N streams, N reports, N streams with gaps,\n"
             "                       N windows missing\"\n"
             "  --curve-key FILE --curve-server-key FILE  CurveZMQ client keys\n");
      return 0;
    default: return 2;
    }
  }
  if (!connect == !bind) return cli_fail("tail", "one of --connect or --bind is required");
  void *zctx = zmq_ctx_new(), *sock = zmq_socket(zctx, ZMQ_SUB);
  int rc = 1, hwm = 0, zero = 0;
  zmq_setsockopt(sock, ZMQ_RCVHWM, &hwm, sizeof hwm);
  zmq_setsockopt(sock, ZMQ_LINGER, &zero, sizeof zero);
  char topic[128];
  int tl = snprintf(topic, sizeof topic, "report/%s", prefix);
  zmq_setsockopt(sock, ZMQ_SUBSCRIBE, topic, (size_t)tl);
  if (stream_curve("tail", sock, ckey, skey)) goto done;
  if (bind ? zmq_bind(sock, bind) : zmq_connect(sock, connect)) {
    cli_fail("tail", "%s: %s", bind ? bind : connect, zmq_strerror(errno));
    goto done;
  }
  signal(SIGINT, stream_on_signal);
  signal(SIGTERM, stream_on_signal);
  long got = 0;
  double last = stream_now();
  rc = 0;
  while (!stream_stop && (!count || got < count)) {
    zmq_pollitem_t it = {sock, 0, ZMQ_POLLIN, 0};
    int n = zmq_poll(&it, 1, 200);
    if (n < 0 && errno != EINTR) break;
    if (n <= 0) {
      if (timeout > 0 && stream_now() - last > timeout) {
        rc = count ? 1 : 0;
        break;
      }
      continue;
    }
    zmq_msg_t t, p;
    zmq_msg_init(&t);
    zmq_msg_init(&p);
    if (zmq_msg_recv(&t, sock, 0) < 0 || !zmq_msg_more(&t) || zmq_msg_recv(&p, sock, 0) < 0) {
      zmq_msg_close(&t);
      zmq_msg_close(&p);
      continue;
    }
    Faultline__Report *r = faultline__report__unpack(NULL, zmq_msg_size(&p), zmq_msg_data(&p));
    zmq_msg_close(&t);
    zmq_msg_close(&p);
    if (!r) {
      fprintf(stderr, "faultline tail: an undecodable report\n");
      continue;
    }
    if (gaps) stream_gaps_see(&g, r);
    if (json) stream_json(stdout, r);
    else
      printf("%s %llu end=%llu score=%.3f thr=%.3f %s%s%s latency=%.0fus\n", r->stream,
             (unsigned long long)r->seq, (unsigned long long)r->end_seq, (double)r->score,
             (double)r->threshold, r->anomaly ? "ANOMALY" : "ok", r->anomaly ? " " : "",
             r->faulty_modality, (double)r->latency_ns / 1000.0);
    fflush(stdout);
    faultline__report__free_unpacked(r, NULL);
    got++;
    last = stream_now();
  }
done:
  if (gaps)
    fprintf(stderr, "faultline tail: %zu streams, %llu reports, %llu streams with gaps, "
                    "%llu windows missing\n", g.n, (unsigned long long)g.reports,
            (unsigned long long)g.streams_with_gaps, (unsigned long long)g.missing);
  free(g.slot);
  zmq_close(sock);
  zmq_ctx_term(zctx);
  return rc;
}
