/* Unit tests of lib/error.c: one error space shared with errno. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

#include "faultline/error.h"

static const int g_own[] = {FL_ESHAPE, FL_ENONFINITE, FL_EFORMAT, FL_ETRUNC,
                            FL_EMISMATCH, FL_ENOTFOUND, FL_EDIVERGED};
static const int g_errno[] = {FL_EINVAL, FL_ENOMEM, FL_EIO, FL_ERANGE};

static void test_codes_with_an_errno_meaning_are_errno(void **state) {
  (void)state;
  assert_int_equal(FL_EINVAL, -EINVAL);
  assert_int_equal(FL_ENOMEM, -ENOMEM);
  assert_int_equal(FL_EIO, -EIO);
  assert_int_equal(FL_ERANGE, -ERANGE);
}

static void test_own_codes_lie_beyond_errno(void **state) {
  (void)state;
  /* Below the limit and apart from each other, so that no -errno a caller
   * passes on can be read as one of them. */
  for (size_t i = 0; i < sizeof g_own / sizeof *g_own; i++) {
    assert_true(g_own[i] <= FL_ERRNO_LIMIT);
    for (size_t j = 0; j < i; j++) assert_int_not_equal(g_own[i], g_own[j]);
  }
#ifdef EHWPOISON
  assert_true(-EHWPOISON > FL_ERRNO_LIMIT); /* the largest errno Linux defines */
#endif
}

static void test_strerror_names_every_code(void **state) {
  (void)state;
  const char *unknown = fl_strerror(FL_ERRNO_LIMIT - 1000);
  assert_string_equal(unknown, "unknown error");
  assert_string_equal(fl_strerror(1), "unknown error");
  assert_string_equal(fl_strerror(FL_OK), "success");
  for (size_t i = 0; i < sizeof g_own / sizeof *g_own; i++)
    assert_string_not_equal(fl_strerror(g_own[i]), unknown);
  assert_string_equal(fl_strerror(FL_ENOMEM), "out of memory");
  for (size_t i = 0; i < sizeof g_errno / sizeof *g_errno; i++)
    assert_string_not_equal(fl_strerror(g_errno[i]), unknown);
  /* Another -errno gets the system's message. */
  assert_string_equal(fl_strerror(-ENOENT), strerror(ENOENT));
  assert_string_equal(fl_strerror(-EAGAIN), strerror(EAGAIN));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_codes_with_an_errno_meaning_are_errno),
      cmocka_unit_test(test_own_codes_lie_beyond_errno),
      cmocka_unit_test(test_strerror_names_every_code),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
