/* The small two-modality model with random weights that the detector's and
 * the pipeline's unit tests share: modality a of two channels, b of one,
 * a window of W ticks (W defined by the includer); modality b drifts when
 * drifts_b is 1.  Properties tested on it do not depend on training. */
#ifndef FL_TEST_SMALL_MODEL_H
#define FL_TEST_SMALL_MODEL_H

#include "faultline/model.h"

static fl_model *small_model(int drifts_b) {
  static const char *a[] = {"a0", "a1"}, *b[] = {"b0"};
  fl_model_spec s;
  fl_model_spec_defaults(&s);
  s.window = W;
  s.enc1 = 3;
  s.enc2 = 4;
  s.hidden = 5;
  s.head_hidden = 6;
  s.emb = 3;
  assert_int_equal(fl_model_spec_add(&s, "a", 1, 2, a), 0);
  assert_int_equal(fl_model_spec_add(&s, "b", 1, 1, b), 0);
  s.mod[1].drifts = drifts_b;
  fl_model *m = NULL;
  assert_int_equal(fl_model_create(&m, &s, 7), 0);
  fl_model_spec_free(&s);
  return m;
}

#endif
