/* libFuzzer target for the metrics endpoint's request routing
 * (fln_http_route through the daemon's routes, fld_http_table) on a daemon
 * state with a small model: the input is "METHOD URL", split at the first
 * space.  Only GET and HEAD of /metrics, /healthz, /readyz and /streams
 * may answer 200;
 * anything but GET and HEAD must be 405. */
#include <microhttpd.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fld.h"

static fld_app app;
static fld_engine eng;

static void fz_app(void) {
  fl_model_spec s;
  fl_model_spec_defaults(&s);
  s.window = 8;
  s.enc1 = s.enc2 = 2;
  s.hidden = s.head_hidden = 4;
  s.emb = 2;
  if (fl_model_spec_add(&s, "acc", 1, 1, (const char *const[]){"x"}) ||
      fl_model_create(&eng.b.model, &s, 1))
    abort();
  strcpy(eng.version, "0123456789abcdef");
  app.eng = &eng;
  app.cfg.max_streams = 4;
  fln_log_set_level(FLN_ERR);
  fl_model_spec_free(&s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!app.eng) fz_app();
  char *req = malloc(size + 2);
  if (!req) return 0;
  memcpy(req, data, size);
  req[size] = req[size + 1] = 0;
  char *sp = memchr(req, ' ', size);
  const char *method = req, *url = "";
  if (sp) {
    *sp = 0;
    url = sp + 1;
  }
  app.stopping = size && data[size - 1] == '!';
  unsigned status = 0;
  const char *body = NULL;
  size_t len = 0;
  fln_http_table routes = fld_http_table(&app);
  int owned = fln_http_route(&routes, method, url, &status, &body, &len);
  if (owned < 0) abort();
  int read_only = !strcmp(method, "GET") || !strcmp(method, "HEAD");
  if (!read_only && status != MHD_HTTP_METHOD_NOT_ALLOWED) abort();
  if (status == MHD_HTTP_OK && strcmp(url, "/metrics") && strcmp(url, "/healthz") &&
      strcmp(url, "/readyz") && strcmp(url, "/streams"))
    abort();
  if (!body || strlen(body) != len) abort();
  /* No secret ever reaches a scrape: the key paths are not in the text. */
  if (owned && strstr(body, "secret")) abort();
  if (owned) free((void *)body);
  free(req);
  return 0;
}
