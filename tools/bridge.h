/* faultline bridge: the plant's MQTT bus (Sparkplug B, JSON) in and out of
 * faultlined's ZeroMQ frames and reports.
 *
 * One libuv loop owns everything: the broker connection (libmosquitto's
 * socket polled by the loop, bridge_mqtt.c), the tick assemblers (one
 * fl_ticks per stream, lib/ticks.c) that turn report-by-exception updates
 * into frames, the PUB socket of frames and the SUB socket of reports,
 * and the HTTP endpoint (bridge_http.c).  Names are flb_<concern>_<verb>;
 * functions return 0 or a negative code. */
#ifndef FLB_BRIDGE_H
#define FLB_BRIDGE_H

#include <limits.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "faultline.pb-c.h"
#include "faultline/config.h"
#include "faultline/ticks.h"
#include "fln.h"
#include "sparkplug_b.pb-c.h"

#define FLB_NAME 128
#define FLB_TOPIC 256
/* Emitted ticks kept per stream, so that a report's raw values can be
 * published beside its corrected ones. */
#define FLB_RAW_RING 128

enum { FLB_SRC_SPARKPLUG = 0, FLB_SRC_JSON = 1 };

/* Bad input, each counted under its reason. */
enum {
  FLB_BAD_UNDECODABLE = 0, /* not a Sparkplug payload / not the JSON expected */
  FLB_BAD_UNKNOWN_ALIAS,   /* a DATA alias (or name) before its birth */
  FLB_BAD_TYPE_CHANGED,    /* a metric's type differs from its birth's */
  FLB_BAD_NOT_NUMERIC,     /* a mapped metric whose value is not a number */
  FLB_BAD_UNMAPPED_TOPIC,  /* a topic that maps to no stream */
  FLB_BAD_SEQ,             /* a node's seq out of order */
  FLB_BAD_COUNT
};
const char *flb_bad_name(int reason);

/* ---- bridge_config.c ------------------------------------------------- */
typedef struct {
  char sec[FLB_NAME];       /* its [map.NAME] section's NAME */
  char name[65];            /* faultline stream id */
  int source;               /* FLB_SRC_* */
  char group[FLB_NAME], node[FLB_NAME], device[FLB_NAME]; /* Sparkplug; device "" = node */
  char topic[FLB_TOPIC];    /* JSON: the template with {stream} filled in */
  /* The metric (Sparkplug) or JSON key feeding each channel, in model order
   * (modality after modality); default the channel's name.  One per channel
   * of the model, allocated by flb_config_load. */
  char (*metric)[FLB_NAME];
} flb_map;

typedef struct {
  char model_config[PATH_MAX]; /* the model's faultline.ini: modalities, channels, rates */
  fl_config model;             /* loaded from it */
  /* [bridge] */
  double tick, stale, delay;   /* seconds */
  int depth, max_burst;
  double rebirth_interval;     /* seconds between rebirth requests to one node */
  int arrival_time;            /* 1: updates take their arrival time, not the message's */
  /* [mqtt] */
  char url[FLB_TOPIC];
  char host[FLB_TOPIC];
  int port, tls;
  char client_id[FLB_NAME], username[FLB_NAME], password[FLB_NAME];
  char ca_file[PATH_MAX], cert_file[PATH_MAX], key_file[PATH_MAX];
  int clean_session, qos, keepalive;
  double reconnect_min, reconnect_max;
  /* [faultlined] */
  char frames[FLB_TOPIC], reports[FLB_TOPIC];
  int frames_bind, reports_bind, sndhwm;
  /* [publish] */
  int sparkplug, json;
  char group[FLB_NAME], node[FLB_NAME];
  char json_topic[FLB_TOPIC], state_topic[FLB_TOPIC];
  /* [input] */
  char json_in[FLB_TOPIC];     /* default JSON topic template */
  /* [metrics] */
  char listen[128];
  double log_interval;
  /* [log] */
  int log_level;
  /* [map.*]: as many as the file has, the table grown while parsing */
  int n_map, cap_map;
  flb_map *map;
} flb_config;

void flb_config_defaults(flb_config *c);
/* Reads the bridge's INI file and the model config it names; err says which
 * file, line and key is wrong.  Any width of model is taken: the maps' metric
 * tables are allocated for its channels.  Whether it succeeds or not, the
 * caller releases c with flb_config_free. */
int flb_config_load(flb_config *c, const char *path, char *err, size_t errlen);
/* Frees what flb_config_load allocated (the model config, the maps and their
 * tables); c may be only defaulted. */
void flb_config_free(flb_config *c);
/* Channels of the model: the length of every per-channel table. */
int flb_config_channels(const flb_config *c);

/* ---- the running bridge (cmd_bridge.c) -------------------------------- */
typedef struct flb_stream {
  const flb_map *map;
  fl_ticks *ticks;
  int width;                /* floats per tick */
  int *off;                 /* n_ch: channel -> offset in a tick */
  int *rate;                /* n_ch */
  int n_ch;
  float *ring;              /* [FLB_RAW_RING][n_ch]: newest sample of each channel per tick */
  uint64_t ring_seq[FLB_RAW_RING];
  int dev_online;           /* Sparkplug: its device (or node) is born */
  /* publishing */
  int state_known, state_anomaly;
  char state_modality[FL_NAME_MAX];
  Faultline__Report *last;  /* newest report (for births), owned */
  uint64_t frames, reports, missing_while_down;
} flb_stream;

/* One Sparkplug edge node feeding us. */
typedef struct {
  uint64_t alias;   /* the key: device and alias, or device and name */
  int stream, ch;   /* -1: not mapped */
  uint32_t type;    /* the birth's datatype */
  int used;
} flb_alias;

typedef struct {
  char group[FLB_NAME], node[FLB_NAME];
  int born;
  int have_seq;
  unsigned seq;       /* last seq seen */
  uint64_t bdseq;
  double rebirth_at;  /* last rebirth request, monotonic seconds */
  flb_alias *tab;     /* open addressing on the alias */
  size_t cap, n;
} flb_node;

typedef struct {
  uint64_t msgs_in, updates, unmapped_metrics, rebirths_sent, births, deaths;
  uint64_t bad[FLB_BAD_COUNT];
  uint64_t frames_out, frames_failed, reports_in, reports_bad, published, publish_failed;
  uint64_t connects, disconnects;
  double down_seconds, down_since;  /* broker time lost (monotonic seconds) */
  uint64_t ticks_while_down;
  double start;
} flb_metrics;

struct flb_mqtt;
typedef struct flb_app {
  uv_loop_t *loop;
  flb_config cfg;
  int n_streams;
  flb_stream *st;
  int n_nodes;
  flb_node *nodes;
  flb_metrics m;
  struct flb_mqtt *mq;
  int connected;
  /* our own Sparkplug edge node */
  uint64_t out_bdseq;
  unsigned out_seq;
  /* ZeroMQ */
  void *zctx, *pub, *sub;
  uv_poll_t sub_poll;
  uv_timer_t tick_timer, misc_timer;
  fln_watchdog watchdog;
  uv_signal_t sig_term, sig_int;
  /* /metrics and /healthz (net/'s endpoint) */
  fln_http http;
  int stopping;
  /* bounded logging of bad input: one line per reason per interval */
  fln_limit bad_log[FLB_BAD_COUNT];
  uint8_t *buf;
  size_t cap;
  /* Scratch sized once at start from the model (every stream has its
   * layout), so that no frame or report allocates: a tick and a frame's
   * samples (the widest tick's floats), a frame's blocks (one per
   * modality), a report's values per channel and per modality. */
  float *tick, *samples;
  Faultline__Block *blocks, **bp;
  float *raw, *corr, *mscore;
  int *faulty;
  /* bridge_sparkplug.c's: one stream's outgoing metrics (DBIRTH, DDATA) */
  Org__Eclipse__Tahu__Protobuf__Payload__Metric *spb_ms, **spb_mp;
  int spb_n;
} flb_app;

double flb_now(void);        /* monotonic seconds */
int64_t flb_wall_ns(void);   /* Unix nanoseconds */
/* net/'s log lines, each naming the bridge (journald's identifier is the
 * unit's; a terminal shows several programs' lines). */
#define flb_log(prio, fmt, ...) fln_log(prio, "faultline bridge: " fmt, ##__VA_ARGS__)
/* Counts bad input and logs it at most once per [metrics] log_interval per
 * reason, with the count that interval kept quiet. */
void flb_bad(flb_app *app, int reason, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* One update of a stream's channel (from either payload). */
void flb_update(flb_app *app, int stream, int ch, int64_t ts_ns, float v);
/* Marks every channel of a stream missing from ts_ns on (a death). */
void flb_stream_dead(flb_app *app, int stream, int64_t ts_ns);
int flb_stream_find(const flb_app *app, const char *name);
/* The newest values of a report, per channel in model order: raw (the
 * bridge's own sample of the report's end tick; NaN once it left the ring),
 * corrected, faulty (1, 0, or -1 unknown); and each modality's score. */
void flb_report_values(const flb_app *app, int s, const Faultline__Report *r, float *raw,
                       float *corr, int *faulty, float *mscore);
/* A buffer of at least n bytes, kept across calls. */
uint8_t *flb_scratch(flb_app *app, size_t n);

/* ---- bridge_mqtt.c: libmosquitto in the loop ------------------------- */
/* Connects (asynchronously) and keeps reconnecting with backoff; on each
 * connection flb_on_connect runs, every message goes to flb_on_message. */
int flb_mqtt_start(flb_app *app);
void flb_mqtt_stop(flb_app *app);
void flb_mqtt_free(flb_app *app);
int flb_mqtt_subscribe(flb_app *app, const char *topic);
int flb_mqtt_publish(flb_app *app, const char *topic, const void *buf, size_t len, int retain);
/* Sets the message the broker publishes when the bridge dies (before connecting). */
int flb_mqtt_will(flb_app *app, const char *topic, const void *buf, size_t len);
void flb_on_connect(flb_app *app);
void flb_on_message(flb_app *app, const char *topic, const void *buf, size_t len);

/* ---- bridge_sparkplug.c ---------------------------------------------- */
int flb_spb_init(flb_app *app);
void flb_spb_free(flb_app *app);
/* The topics to subscribe to (one per fed node, and our node's NCMD). */
int flb_spb_subscribe(flb_app *app);
/* Handles a message on spBv1.0/...; returns 0 if it was not Sparkplug. */
int flb_spb_message(flb_app *app, const char *topic, const void *buf, size_t len);
/* Our edge node: NDEATH as the will, NBIRTH and DBIRTHs, DDATA of a report. */
int flb_spb_will(flb_app *app);
void flb_spb_births(flb_app *app);
void flb_spb_report(flb_app *app, int stream, const Faultline__Report *r);

/* ---- bridge_json.c ----------------------------------------------------- */
int flb_json_subscribe(flb_app *app);
/* Handles a message on a JSON stream's topic; 0 if it matches none. */
int flb_json_message(flb_app *app, const char *topic, const void *buf, size_t len);
void flb_json_report(flb_app *app, int stream, const Faultline__Report *r);

/* ---- bridge_http.c: the routes of net/'s HTTP endpoint ---------------- */
/* Sets up app->http for [metrics] listen (started by fln_http_start). */
void flb_http_init(flb_app *app);
char *flb_metrics_render(flb_app *app, size_t *len);

#endif
