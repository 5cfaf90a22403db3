#!/usr/bin/env bash
# The demo: on a fresh Debian 12 machine, installs what is missing, builds,
# simulates the built-in water-pump plant, trains on its first 70 %, injects
# every fault type into the held-out 30 %, evaluates detection, localisation
# and correction per fault type, and draws one episode.  Output in out/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/deps.sh
[ -f build/build.ninja ] || meson setup build >/dev/null
ninja -C build >/dev/null
fl=build/tools/faultline
mkdir -p out
rows=${DEMO_ROWS:-12000}
split=$((rows * 7 / 10))
echo "== simulate: $rows s of the plant (seed 1)"
$fl simulate --rows "$rows" --seed 1 --out out/plant.csv
head -n $((split + 1)) out/plant.csv > out/train.csv
{ head -n 1 out/plant.csv; tail -n +$((split + 2)) out/plant.csv; } > out/heldout.csv
echo "== train on the first $split s (config/plant.ini)"
$fl train --config config/plant.ini --data out/train.csv --out out/plant.model
echo "== eval: every fault type injected into the held-out $((rows - split)) s"
$fl eval --model out/plant.model --config config/plant.ini --data out/heldout.csv \
  --json out/eval.json
echo "== one episode: inject a drift, score it, draw it"
$fl inject --config config/plant.ini --in out/heldout.csv --out out/episode.csv \
  --labels out/episode-labels.csv --fault drift --count 1 --seed 7
$fl score --model out/plant.model --in out/episode.csv --out out/episode-scored.csv
/usr/bin/python3 deploy/plot_episode.py out/heldout.csv out/episode.csv \
  out/episode-labels.csv out/episode-scored.csv out/episode.svg
echo "== wrote out/plant.model, out/eval.json, out/episode.svg"
