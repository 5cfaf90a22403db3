#!/usr/bin/env bash
# The whole test suite on a fresh Debian 12 machine: installs what is missing,
# builds (in build/), runs every meson test, and ends with "N passed, N failed".
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
