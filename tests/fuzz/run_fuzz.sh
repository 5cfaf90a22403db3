#!/usr/bin/env bash
# Fuzzes one libFuzzer target for FUZZ_SECONDS (default 20) from its seed
# corpus and regression inputs; new inputs go to a scratch corpus, crashes to
# ./crash-* in the build directory (copy one into tests/fuzz/regress/<target>/
# so that fuzz_replay_<target> runs it from then on).  Prints libFuzzer's
# final stats (executions, coverage).
#   run_fuzz.sh EXE SEEDS REGRESS
set -uo pipefail
exe=$1 seeds=$2 regress=$3
secs=${FUZZ_SECONDS:-20}
work=$(mktemp -d "${TMPDIR:-/tmp}/fuzzcorpus.XXXXXX")
trap 'rm -rf "$work"' EXIT
set -- "$work" "$seeds"
[ -d "$regress" ] && set -- "$@" "$regress"
# A hard stop past the budget: a hang is a failure, not a stuck CI.
timeout -k 10 $((secs + 120)) "$exe" -max_total_time="$secs" -print_final_stats=1 \
  -timeout=10 -rss_limit_mb=2048 -max_len=65536 -artifact_prefix="$(pwd)/" "$@" 2>&1 |
  grep -vE '^#[0-9]+[[:space:]]+(NEW|REDUCE|pulse|INITED|RELOAD)'
exit "${PIPESTATUS[0]}"
