#!/usr/bin/env bash
# The demo: on a fresh Debian 12 machine, installs what is missing, builds,
# simulates the built-in water-pump plant, trains on its first 70 %, injects
# every fault type into the held-out 30 %, evaluates detection, localisation
# and correction per fault type, and draws one episode.  Output in out/.
# FAULTLINE_QUICK=1 (the README test): 7000 rows and 4 + 3 epochs, same steps.
# DEMO_PORTS="IN OUT METRICS" moves the daemon off 25555 25556 29108.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/deps.sh
[ -f build/build.ninja ] || meson setup build >/dev/null
ninja -C build >/dev/null
fl=build/tools/faultline
mkdir -p out
rows=${DEMO_ROWS:-12000}
cfg=config/plant.ini
if [ "${FAULTLINE_QUICK:-0}" = 1 ]; then
  rows=${DEMO_ROWS:-7000}   # the held-out 30 % still covers the replay's fault at 1800
  sed -e 's/^;epochs1 = .*/epochs1 = 4/' -e 's/^;epochs2 = .*/epochs2 = 3/' $cfg > out/plant-quick.ini
  [ "$(grep -c '^epochs[12] = [43]$' out/plant-quick.ini)" = 2 ] || { echo "demo: quick mode cannot set the epochs in $cfg" >&2; exit 1; }
  cfg=out/plant-quick.ini
  echo "== quick mode (FAULTLINE_QUICK=1): $rows rows, 4 + 3 epochs"
fi
split=$((rows * 7 / 10))
echo "== simulate: $rows s of the plant (seed 1)"
$fl simulate --rows "$rows" --seed 1 --out out/plant.csv
head -n $((split + 1)) out/plant.csv > out/train.csv
{ head -n 1 out/plant.csv; tail -n +$((split + 2)) out/plant.csv; } > out/heldout.csv
echo "== train on the first $split s ($cfg)"
$fl train --config $cfg --data out/train.csv --out out/plant.model
echo "== eval: every fault type injected into the held-out $((rows - split)) s"
$fl eval --model out/plant.model --config $cfg --data out/heldout.csv \
  --json out/eval.json
echo "== one episode: inject a dropout, score it, draw it"
$fl inject --config $cfg --in out/heldout.csv --out out/episode.csv \
  --labels out/episode-labels.csv --fault dropout --count 1 --seed 7
$fl score --model out/plant.model --in out/episode.csv --out out/episode-scored.csv
/usr/bin/python3 deploy/plot_episode.py out/heldout.csv out/episode.csv \
  out/episode-labels.csv out/episode-scored.csv out/episode.svg
echo "== stream the held-out stretch through faultlined, a pressure offset injected"
read -r pin pout pmet <<< "${DEMO_PORTS:-25555 25556 29108}"
# The training configuration (the daemon checks its [modality.*] and [detect]
# against the model) with the example's daemon sections.
{ cat $cfg; printf '\n[model]\nfile = plant.model\n\n'
  sed -n "/^; ---- the daemon's sections/,\$ p" config/faultline.ini |
  sed -e "/^\[input\]/,/^\[/ s|^endpoint = .*|endpoint = tcp://127.0.0.1:$pin|" \
      -e "/^\[output\]/,/^\[/ s|^endpoint = .*|endpoint = tcp://127.0.0.1:$pout|" \
      -e "/^\[metrics\]/,/^\[/ s|^listen = .*|listen = 127.0.0.1:$pmet|"
} > out/faultlined.ini
build/daemon/faultlined --config out/faultlined.ini 2> out/faultlined.log &
daemon=$!
trap 'kill $daemon 2>/dev/null || true' EXIT
$fl tail --connect tcp://127.0.0.1:$pout --json --timeout 10 > out/reports.jsonl &
tailer=$!
sleep 1
$fl replay --in out/heldout.csv --connect tcp://127.0.0.1:$pin --config $cfg \
  --stream pump1 --inject offset --fault-modality hydraulic --fault-channel 0 \
  --fault-at 1800 --fault-rows 120 --rate 2000
wait $tailer || true
kill -TERM $daemon && wait $daemon || true
trap - EXIT
/usr/bin/python3 - <<'PY'
import json
reps = [json.loads(l) for l in open("out/reports.jsonl")]
flag = [r for r in reps if r.get("anomaly")]
# Windows whose newest tick lies in the injected span (rows 1800..1919).
inside = [r for r in reps if 1800 <= int(r.get("end_seq", -1)) < 1920 + 60]
hit = [r for r in inside if r.get("anomaly")]
mods = sorted({r.get("faulty_modality") for r in hit})
print(f"faultlined: {len(reps)} reports, {len(flag)} flagged; "
      f"{len(hit)}/{len(inside)} windows over the pressure offset flagged, as {mods}")
if not reps:
    raise SystemExit("demo: faultlined published no report (see out/faultlined.log)")
PY
echo "== wrote out/plant.model, out/eval.json, out/episode.svg, out/reports.jsonl"
