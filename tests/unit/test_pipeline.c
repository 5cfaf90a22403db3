/* Unit tests for the per-window pipeline (lib/pipeline.c) against its
 * contract in faultline/pipeline.h: windows of two streams interleaved in
 * one batch get the answers each stream gets alone, the stream state
 * carries from one call to the next, and the context slots of intact
 * windows still hold their input as normalised.  A small two-modality model
 * with random weights serves; the properties do not depend on training. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "faultline/error.h"
#include "faultline/model.h"
#include "faultline/pipeline.h"

#define W 16
#define TAIL 4
#define STRIDE 4
#define NWIN 12                        /* windows per stream */
#define ROWS (W + STRIDE * (NWIN - 1)) /* ticks per stream */
#define NCH 3
#define CLAMP 10.0f

#include "small_model.h"
#include "test_keep.h"

/* Stream `id`'s ticks, channel-major per modality: a (2, ROWS), b (ROWS).
 * Stream 0 has a step on a0 halfway, so that its later windows score high
 * and its baseline matters. */
static void stream(int id, float *a, float *b) {
  for (int t = 0; t < ROWS; t++) {
    a[t] = sinf(0.4f * t + (float)id) + (id == 0 && t >= ROWS / 2 ? 6.0f : 0.0f);
    a[ROWS + t] = cosf(0.3f * t + 0.5f * (float)id);
    b[t] = 0.05f * t - 0.5f + 0.3f * sinf(1.7f * t * (float)(id + 1));
  }
}

/* A calibration with the baseline feature on; thresholds set by the caller. */
static void calib(const fl_model *m, fl_calib *cal) {
  test_calib(m, cal);
  cal->tail = TAIL;
  cal->w_base = 1.0f;
  cal->base_span = 20;
  cal->threshold = 1e30f;
  cal->chan_threshold = 1e30f;
  for (int c = 0; c < cal->nch; c++) {
    cal->res_sd[c] = cal->var_sd[c] = 1.0f;
    cal->bas_mu[c] = 1.0f;
    cal->bas_sd[c] = 1.0f;
    cal->bas_v0[c] = 0.01f;
  }
}

typedef struct {
  float a[2 * ROWS], b[ROWS];
  fl_stream_state st;
  int next; /* the next window to run */
} test_stream;

/* One window's buffers: raw (a, b) and corrected (a, b). */
typedef struct {
  float ra[2 * W], rb[W], ca[2 * W], cb[W];
} test_buf;

/* Sets up window x for window j of stream s in slot k of ctx. */
static void load(fl_model *m, fl_ctx *ctx, int k, test_stream *s, int j, test_buf *buf,
                 fl_pipeline_window *x) {
  int e = W + STRIDE * j;
  for (int t = 0; t < W; t++) {
    buf->ra[t] = s->a[e - W + t];
    buf->ra[W + t] = s->a[ROWS + e - W + t];
    buf->rb[t] = s->b[e - W + t];
  }
  memset(buf->ca, 0, sizeof buf->ca);
  memset(buf->cb, 0, sizeof buf->cb);
  x->st = &s->st;
  x->ticks = STRIDE;
  x->from = W - STRIDE;
  x->raw[0] = buf->ra;
  x->raw[1] = buf->rb;
  x->corrected[0] = buf->ca;
  x->corrected[1] = buf->cb;
  assert_int_equal(fl_model_normalise(m, ctx, k, 0, buf->ra, CLAMP), 0);
  assert_int_equal(fl_model_normalise(m, ctx, k, 1, buf->rb, CLAMP), 0);
}

/* What a run of one window gave, kept for comparison. */
typedef struct {
  fl_pipeline_window w;
  test_buf buf;
} test_out;

static void *dup_of(const void *p, size_t n) {
  void *q = test_keep(malloc(n));
  memcpy(q, p, n);
  return q;
}

/* The window's arrays are the batch's, overwritten by the next call: the
 * kept copy has its own. */
static void keep(test_out *o, const fl_pipeline_window *x, const test_buf *buf) {
  o->w = *x;
  o->w.mflag = dup_of(x->mflag, sizeof(int) * 2);
  o->w.faulty = dup_of(x->faulty, NCH);
  o->w.sc.chan = dup_of(x->sc.chan, sizeof(float) * NCH);
  o->w.sc.mod_score = dup_of(x->sc.mod_score, sizeof(float) * 2);
  o->buf = *buf;
}

/* Runs the windows of the listed streams (order[n] of them, each the
 * stream's next window) through the pipeline, batch windows per call, and
 * keeps each window's outputs in out[stream][window].  Checks after every
 * call that intact slots still hold their input. */
static void run(fl_model *m, const fl_calib *cal, const fl_pipeline_config *pc,
                test_stream *s, const int *order, int n, int batch,
                test_out out[2][NWIN], int *masked) {
  fl_ctx *ctx = NULL;
  assert_int_equal(fl_ctx_create_infer(&ctx, m, batch), 0);
  fl_pipeline_window *x = test_keep(fl_pipeline_windows_new(fl_model_spec_of(m), 8));
  test_buf buf[8];
  int who[8], idx[8];
  size_t ct[2] = {2 * W, W};
  float in[8][2][2 * W], mask[8][2][2 * W];
  for (int p = 0; p < n;) {
    int B = n - p < batch ? n - p : batch;
    for (int k = 0; k < B; k++) {
      who[k] = order[p + k];
      idx[k] = s[who[k]].next++;
      load(m, ctx, k, &s[who[k]], idx[k], &buf[k], &x[k]);
      for (int i = 0; i < 2; i++) {
        memcpy(in[k][i], fl_ctx_input(ctx, i) + k * ct[i], sizeof(float) * ct[i]);
        memcpy(mask[k][i], fl_ctx_mask(ctx, i) + k * ct[i], sizeof(float) * ct[i]);
      }
    }
    assert_int_equal(fl_pipeline_run(m, cal, ctx, pc, B, x), 0);
    for (int k = 0; k < B; k++) {
      keep(&out[who[k]][idx[k]], &x[k], &buf[k]);
      int same = 1;
      for (int i = 0; i < 2; i++)
        same &= !memcmp(in[k][i], fl_ctx_input(ctx, i) + k * ct[i], sizeof(float) * ct[i]) &&
                !memcmp(mask[k][i], fl_ctx_mask(ctx, i) + k * ct[i], sizeof(float) * ct[i]);
      if (x[k].intact) assert_true(same);
      else (*masked)++, assert_false(same);
      assert_int_equal(x[k].learnable, x[k].intact && !x[k].flag && !x[k].above);
    }
    p += B;
  }
  fl_ctx_free(ctx);
}

static void same(const test_out *a, const test_out *b) {
  assert_int_equal(a->w.flag, b->w.flag);
  assert_int_equal(a->w.above, b->w.above);
  assert_int_equal(a->w.intact, b->w.intact);
  assert_int_equal(a->w.sc.modality, b->w.sc.modality);
  assert_float_equal(a->w.sc.score, b->w.sc.score, 1e-4 * (1.0 + fabsf(a->w.sc.score)));
  for (int i = 0; i < 2; i++) assert_int_equal(a->w.mflag[i], b->w.mflag[i]);
  for (int c = 0; c < NCH; c++) {
    assert_int_equal(a->w.faulty[c], b->w.faulty[c]);
    assert_float_equal(a->w.sc.chan[c], b->w.sc.chan[c], 1e-4 * (1.0 + fabsf(a->w.sc.chan[c])));
  }
  /* The ticks the window decides for, corrected; the rest left alone. */
  for (int c = 0; c < 2; c++)
    for (int t = 0; t < W; t++) {
      float x = a->buf.ca[c * W + t], y = b->buf.ca[c * W + t];
      if (t < W - STRIDE) assert_float_equal(x, 0.0f, 0.0);
      assert_float_equal(x, y, 1e-4 * (1.0 + fabsf(x)));
    }
  for (int t = W - STRIDE; t < W; t++)
    assert_float_equal(a->buf.cb[t], b->buf.cb[t], 1e-4 * (1.0 + fabsf(a->buf.cb[t])));
}

static void reset(const fl_model *m, test_stream *s) {
  for (int i = 0; i < 2; i++) {
    stream(i, s[i].a, s[i].b);
    if (!s[i].st.mhyst) test_stream_state(m, &s[i].st);
    fl_stream_state_reset(&s[i].st);
    s[i].next = 0;
  }
}

static int by_value(const void *a, const void *b) {
  float x = *(const float *)a, y = *(const float *)b;
  return (x > y) - (x < y);
}

/* Two streams interleaved in batches of four get, window for window, what
 * each gets alone one window per call (the state carried across calls) or
 * in batches of three. */
static void test_interleaved_streams_match_each_alone(void **state) {
  (void)state;
  fl_model *m = small_model(0);
  fl_calib cal;
  calib(m, &cal);
  fl_pipeline_config pc = {2, 2, CLAMP, NULL};
  static test_stream s[2];
  static test_out alone[2][NWIN], mixed[2][NWIN];
  int order[2 * NWIN], masked = 0;
  /* Thresholds from the scores themselves, so that some windows flag. */
  reset(m, s);
  for (int j = 0; j < 2 * NWIN; j++) order[j] = j % 2;
  run(m, &cal, &pc, s, order, 2 * NWIN, 4, mixed, &masked);
  float sc[2 * NWIN], ch[2 * NWIN * NCH];
  for (int j = 0; j < 2 * NWIN; j++) {
    sc[j] = mixed[j % 2][j / 2].w.sc.score;
    for (int c = 0; c < NCH; c++) ch[j * NCH + c] = mixed[j % 2][j / 2].w.sc.chan[c];
  }
  qsort(sc, 2 * NWIN, sizeof(float), by_value);
  qsort(ch, 2 * NWIN * NCH, sizeof(float), by_value);
  cal.threshold = sc[NWIN];
  cal.chan_threshold = ch[NWIN * NCH];

  reset(m, s);
  masked = 0;
  run(m, &cal, &pc, s, order, 2 * NWIN, 4, mixed, &masked);
  int zeros[NWIN] = {0}, ones[NWIN];
  for (int j = 0; j < NWIN; j++) ones[j] = 1;
  int unused = 0;
  reset(m, s);
  run(m, &cal, &pc, s, zeros, NWIN, 1, alone, &unused);
  run(m, &cal, &pc, s, ones, NWIN, 3, alone, &unused);
  int flags = 0, clear = 0;
  for (int i = 0; i < 2; i++)
    for (int j = 0; j < NWIN; j++) {
      same(&alone[i][j], &mixed[i][j]);
      flags += mixed[i][j].w.flag;
      clear += !mixed[i][j].w.flag;
    }
  /* The comparison covered flagged windows, clean ones and re-estimated
   * (masked) ones. */
  assert_true(flags > 0);
  assert_true(clear > 0);
  assert_true(masked > 0);
  fl_model_free(m);
}

/* The state is what carries a stream: its last window run with a fresh
 * state answers otherwise than with the state of the windows before it. */
static void test_state_carries_across_calls(void **state) {
  (void)state;
  fl_model *m = small_model(0);
  fl_calib cal;
  calib(m, &cal);
  cal.threshold = -1e30f; /* every window above: the hysteresis alone decides */
  fl_pipeline_config pc = {3, 3, CLAMP, NULL};
  static test_stream s[2];
  static test_out out[2][NWIN];
  int zeros[NWIN] = {0}, masked = 0;
  reset(m, s);
  run(m, &cal, &pc, s, zeros, 2, 1, out, &masked);
  /* Two windows above with on = 3: not yet flagged; the third call is. */
  assert_int_equal(out[0][1].w.flag, 0);
  run(m, &cal, &pc, s, zeros, 1, 1, out, &masked);
  assert_int_equal(out[0][2].w.flag, 1);
  assert_true(s[0].st.base.init);
  /* The same third window from a fresh state: not flagged, and without the
   * baseline the earlier windows set, another score. */
  test_out again[2][NWIN];
  fl_stream_state_reset(&s[0].st);
  s[0].next = 2;
  run(m, &cal, &pc, s, zeros, 1, 1, again, &masked);
  assert_int_equal(again[0][2].w.flag, 0);
  assert_true(again[0][2].w.sc.score != out[0][2].w.sc.score);
  fl_model_free(m);
}

/* Bad arguments are refused before anything runs. */
static void test_invalid_arguments(void **state) {
  (void)state;
  fl_model *m = small_model(0);
  fl_calib cal;
  calib(m, &cal);
  fl_ctx *ctx = NULL;
  assert_int_equal(fl_ctx_create_infer(&ctx, m, 1), 0);
  fl_pipeline_config pc = {1, 1, CLAMP, NULL};
  fl_pipeline_window *x = test_keep(fl_pipeline_windows_new(fl_model_spec_of(m), 1));
  assert_int_equal(fl_pipeline_run(m, &cal, ctx, &pc, 1, x), FL_EINVAL); /* no state */
  fl_stream_state st;
  test_stream_state(m, &st);
  x->st = &st;
  x->from = W + 1;
  assert_int_equal(fl_pipeline_run(m, &cal, ctx, &pc, 1, x), FL_EINVAL);
  assert_int_equal(fl_pipeline_run(m, &cal, ctx, &pc, 0, x), FL_EINVAL);
  fl_ctx_free(ctx);
  fl_model_free(m);
}

/* The batch by memory: the largest that fits, never below 1, the whole
 * request when the budget holds it, and the sizes are the context's own
 * (a context of the chosen batch can be made). */
static void test_batch_for_fits_budget(void **state) {
  (void)state;
  fl_model *m = small_model(0);
  size_t one = 0;
  assert_int_equal(fl_pipeline_batch_for(m, 8, 1e12, &one), 8);
  assert_true(one >= fl_ctx_infer_bytes(m, 1));
  assert_int_equal(fl_pipeline_batch_for(m, 8, 0.0, NULL), 1);
  /* The budget of exactly 3 windows' scratch gives 3, a byte less 2. */
  size_t copies = one - fl_ctx_infer_bytes(m, 1);
  double three = (double)(fl_ctx_infer_bytes(m, 3) + 3 * copies);
  assert_int_equal(fl_pipeline_batch_for(m, 8, three, NULL), 3);
  assert_int_equal(fl_pipeline_batch_for(m, 8, three - 1, NULL), 2);
  assert_int_equal(fl_pipeline_batch_for(m, 2, three, NULL), 2);
  assert_int_equal(fl_pipeline_batch_for(m, 0, three, NULL), FL_EINVAL);
  assert_int_equal(fl_pipeline_batch_for(NULL, 8, three, NULL), FL_EINVAL);
  /* More windows hold more scratch. */
  assert_true(fl_ctx_infer_bytes(m, 4) > fl_ctx_infer_bytes(m, 3));
  fl_ctx *ctx = NULL;
  assert_int_equal(fl_ctx_create_infer(&ctx, m, 3), 0);
  fl_ctx_free(ctx);
  fl_model_free(m);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_interleaved_streams_match_each_alone),
      cmocka_unit_test(test_state_carries_across_calls),
      cmocka_unit_test(test_invalid_arguments),
      cmocka_unit_test(test_batch_for_fits_budget),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
