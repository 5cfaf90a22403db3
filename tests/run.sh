#!/usr/bin/env bash
# The whole test suite on a fresh Debian 12 machine: installs what is missing,
# builds (in build/), runs every meson test, runs them again under ASan and
# UBSan (build-asan/), fuzzes (build-fuzz/, with clang), and ends with
# "N passed, N failed, N skipped" over all three.
# SKAB-dependent tests read ../shared/data/skab and say so when it is absent.
set -uo pipefail
cd "$(dirname "$0")/.."
bash deploy/deps.sh || { echo "0 passed, 1 failed"; exit 1; }
if [ ! -f build/build.ninja ]; then
  meson setup build >/dev/null || { echo "0 passed, 1 failed"; exit 1; }
fi
ninja -C build || { echo "0 passed, 1 failed"; exit 1; }
meson test -C build --print-errorlogs --num-processes 2 "$@"
rc=$?
logs=(build/meson-logs/testlog.json)
# Sanitizers: the whole suite once more in build-asan, built with
# AddressSanitizer and UndefinedBehaviorSanitizer.  -fno-sanitize-recover=all
# and halt_on_error make undefined behaviour end the program (a failed test);
# LeakSanitizer fails a program that leaks at exit.  Every test runs but these,
# excluded by name (name: reason):
asan_exclude=(
  "memcheck: valgrind memcheck cannot run an ASan-instrumented faultlined (both own the heap)"
  "systemd_sandbox: the sanitizers' runtime makes system calls of its own (LeakSanitizer stops the threads with ptrace) that the units' filter refuses; the units run the uninstrumented faultlined, tested here in build/"
  "readme_commands: runs the commands of the README and docs/, which build their own uninstrumented tree (build-rel) and run the demo; it ran in build/, and the binaries it runs are the ones every other test runs here"
)
if [ "$#" -eq 0 ]; then
  asan_ok=1
  if [ ! -f build-asan/build.ninja ]; then
    meson setup build-asan -Db_sanitize=address,undefined -Db_lundef=false \
      -Dc_args=-fno-sanitize-recover=all -Dc_link_args=-fno-sanitize-recover=all >/dev/null ||
      asan_ok=0
  fi
  [ "$asan_ok" -eq 1 ] && { ninja -C build-asan >/dev/null || asan_ok=0; }
  if [ "$asan_ok" -eq 1 ]; then
    skip_re=$(printf '%s\n' "${asan_exclude[@]}" | sed 's/:.*//' | paste -sd '|')
    asan_tests=$(meson test -C build-asan --no-rebuild --list 2>/dev/null |
      grep -E '^[A-Za-z0-9_:.-]+$' | grep -vxE "$skip_re")
    printf 'asan: not run under the sanitizers: %s\n' "${asan_exclude[@]}"
    if [ -z "$asan_tests" ]; then
      echo "asan: meson test --list found no test" >&2; rc=1
    else
      # The timeouts guard against hangs and are sized for build/; code
      # under ASan runs 2-4x slower (daemon_tune_drift: 71 s, 232 s here,
      # against 300 s), so they are tripled for it.
      # shellcheck disable=SC2086
      FAULTLINE_SANITIZED=1 ASAN_OPTIONS=detect_leaks=1 \
      UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
        meson test -C build-asan --no-rebuild --print-errorlogs --num-processes 2 \
          --timeout-multiplier 3 $asan_tests ||
        rc=1
      logs+=(build-asan/meson-logs/testlog.json)
    fi
  else
    echo "asan: the sanitizer build failed" >&2; rc=1
  fi
fi
# Fuzzing (tests/fuzz): with clang, each libFuzzer target runs FUZZ_SECONDS
# (default 20) in its own build dir, one test per target.
if command -v clang >/dev/null 2>&1 && [ "$#" -eq 0 ]; then
  fuzz_ok=1
  if [ ! -f build-fuzz/build.ninja ]; then
    CC=clang meson setup build-fuzz -Dfuzz=true >/dev/null || fuzz_ok=0
  fi
  [ "$fuzz_ok" -eq 1 ] && { ninja -C build-fuzz $(cd build-fuzz && ninja -t targets all |
    sed -n 's|^\(tests/fuzz/fuzz_[a-z]*\): .*|\1|p' | grep -v '\.p$') || fuzz_ok=0; }
  if [ "$fuzz_ok" -eq 1 ]; then
    meson test -C build-fuzz --no-rebuild --suite fuzz --num-processes 2 || rc=1
    logs+=(build-fuzz/meson-logs/testlog.json)
  else
    echo "fuzz: the clang build failed" >&2; rc=1
  fi
fi
passed=$(cat "${logs[@]}" 2>/dev/null | grep -c '"result": "OK"' || true)
failed=$(cat "${logs[@]}" 2>/dev/null | grep -cE '"result": "(FAIL|TIMEOUT|ERROR|UNEXPECTEDPASS)"' || true)
skipped=$(cat "${logs[@]}" 2>/dev/null | grep -c '"result": "SKIP"' || true)
[ "$rc" -ne 0 ] && [ "${failed:-0}" -eq 0 ] && failed=1
echo "${passed:-0} passed, ${failed:-0} failed, ${skipped:-0} skipped"
exit $rc
