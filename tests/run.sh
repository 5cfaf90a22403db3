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
log=build/meson-logs/testlog.json
passed=$(grep -c '"result": "OK"' "$log" 2>/dev/null || true)
failed=$(grep -cE '"result": "(FAIL|TIMEOUT|ERROR|UNEXPECTEDPASS)"' "$log" 2>/dev/null || true)
skipped=$(grep -c '"result": "SKIP"' "$log" 2>/dev/null || true)
[ "$rc" -ne 0 ] && [ "${failed:-0}" -eq 0 ] && failed=1
echo "${passed:-0} passed, ${failed:-0} failed, ${skipped:-0} skipped"
exit $rc
