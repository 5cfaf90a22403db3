/* Unit tests for training (lib/train.c) against its contracts in
 * faultline/train.h.  A small two-modality model on sines serves. */
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
#include "faultline/train.h"

static void small_spec(fl_model_spec *s) {
  static const char *a[] = {"a0", "a1"}, *b[] = {"b0"};
  fl_model_spec_defaults(s);
  s->window = 16;
  s->enc1 = 4;
  s->enc2 = 5;
  s->hidden = 12;
  s->head_hidden = 8;
  s->emb = 4;
  assert_int_equal(fl_model_spec_add(s, "a", 1, 2, a), 0);
  assert_int_equal(fl_model_spec_add(s, "b", 1, 1, b), 0);
}

static void sines(fl_series *ser, const fl_model_spec *s) {
  memset(ser, 0, sizeof *ser);
  ser->rows = 300;
  ser->n_mod = s->n_mod;
  ser->x = calloc((size_t)s->n_mod, sizeof *ser->x);
  assert_non_null(ser->x);
  for (int i = 0; i < s->n_mod; i++) {
    int C = s->mod[i].channels;
    ser->x[i] = malloc(sizeof(float) * C * ser->rows);
    assert_non_null(ser->x[i]);
    for (int c = 0; c < C; c++)
      for (int t = 0; t < ser->rows; t++)
        ser->x[i][(size_t)c * ser->rows + t] = sinf(0.3f * t + c) + 0.5f * sinf(0.05f * t) + i;
  }
}

/* Stage 2 starts with fresh optimiser moments: a model trained by stage 1
 * and a copy of its parameters that never took a step end stage 2 with the
 * same parameters (stage 1's moments, read at t = 1 through the bias
 * correction, once steered the decoder's first stage-2 steps). */
static void test_stage2_starts_with_fresh_moments(void **state) {
  (void)state;
  fl_model_spec s;
  small_spec(&s);
  fl_series ser;
  sines(&ser, &s);
  fl_train_config cfg;
  fl_train_defaults(&cfg);
  cfg.epochs1 = 2;
  cfg.epochs2 = 1;
  cfg.batch = 16;
  cfg.stride = 4;
  fl_model *a, *b;
  assert_int_equal(fl_model_create(&a, &s, 3), 0);
  assert_int_equal(fl_model_create(&b, &s, 3), 0);
  assert_int_equal(fl_train_normalise(a, &ser, 1, &cfg), 0);
  assert_int_equal(fl_train_stage1(a, &ser, 1, &cfg, NULL, NULL), 0);
  assert_int_equal(fl_model_copy_params(b, a), 0);
  size_t np = fl_model_param_count(a);
  assert_memory_equal(fl_model_param_block(a), fl_model_param_block(b), sizeof(float) * np);
  /* a's decoder moments are stage 1's, b's are zero. */
  fl_param *ps;
  int n;
  assert_int_equal(fl_model_params(a, FL_MOD_DEC, &ps, &n), 0);
  double mom = 0;
  for (int k = 0; k < n; k++)
    for (size_t i = 0; i < ps[k].n; i++) mom += fabs(ps[k].m[i]);
  assert_true(mom > 0.0);
  assert_int_equal(fl_train_stage2(a, &ser, 1, &cfg, NULL, NULL), 0);
  assert_int_equal(fl_train_stage2(b, &ser, 1, &cfg, NULL, NULL), 0);
  assert_memory_equal(fl_model_param_block(a), fl_model_param_block(b), sizeof(float) * np);
  fl_model_free(a);
  fl_model_free(b);
  fl_series_free(&ser);
  fl_model_spec_free(&s);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_stage2_starts_with_fresh_moments),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
