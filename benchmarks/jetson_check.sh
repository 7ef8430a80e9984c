#!/usr/bin/env bash
# shellcheck disable=SC2317  # the functions below run through step()
# One-shot validation of the TensorRT path on a Jetson; everything lands in one results
# folder (and OUT.tar.gz) to send back.
#
# NEVER RUN ON A REAL JETSON: this is the script for the first session on one. Tested here
# for syntax, with shellcheck and for its refusals (tests/test_jetson_scripts.py).
#
# Usage: benchmarks/jetson_check.sh BUNDLE [OUT]
#   BUNDLE  exported on a workstation with
#           dmgrd-edge export CKPT --int8 --fp16 --batch 1:4:8 --out BUNDLE
#           (copied first: this script never changes it)
#   OUT     results folder, must not exist (default: jetson-check-<date>)
# Environment: DATA (dataset root for accuracy; default: generated here for the bundle's
#   category), PRECISIONS (default "fp16 int8"), BATCH_PROFILE (default 1:4:8), BATCHES
#   (default 1,4,8), RUNS (timed calls per batch, default 30), FRAMES (video frames streamed
#   through `run`, default 600), PYTEST_TENSORRT=0 (skip the pytest step).
#
# Steps, each logged to OUT/logs/<step>.log with its exit status and seconds in
# OUT/summary.tsv (a failed step does not stop the next ones):
#   doctor, device record (nvpmodel, jetson_clocks, tegrastats during the run), pytest -m
#   tensorrt (needs torch: skipped without it), build-engine per precision, bench per
#   precision at each batch with accuracy, the ONNX Runtime reference bench, a generated
#   line video through `run --backend tensorrt`, and `report` over all bench results.
set -uo pipefail

BUNDLE="${1:?usage: benchmarks/jetson_check.sh BUNDLE [OUT]}"
OUT="${2:-jetson-check-$(date +%Y%m%d-%H%M%S)}"
PRECISIONS="${PRECISIONS:-fp16 int8}"
BATCH_PROFILE="${BATCH_PROFILE:-1:4:8}"
BATCHES="${BATCHES:-1,4,8}"
FRAMES="${FRAMES:-600}"
RUNS="${RUNS:-30}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

fail() {
  echo "error: $1" >&2
  [ -n "${2:-}" ] && echo "  fix: $2" >&2
  exit 2
}

[ -f "$BUNDLE/manifest.json" ] || fail "$BUNDLE is no bundle (no manifest.json)" \
  "export one: dmgrd-edge export CKPT --int8 --fp16 --batch $BATCH_PROFILE --out BUNDLE"
[ -e "$OUT" ] && fail "$OUT exists; earlier results are not overwritten" \
  "give another results folder, or move $OUT away"
command -v dmgrd-edge >/dev/null || fail "dmgrd-edge is not on PATH" \
  "run scripts/install-jetson.sh, then: source ~/dmgrd-venv/bin/activate"
PY="$(dirname "$(command -v dmgrd-edge)")/python"
[ -x "$PY" ] || PY=python3

WORK="${OUT}.work"  # engines, the bundle copy, data and video: not part of the results
mkdir -p "$OUT/logs" "$OUT/bench" "$OUT/run" "$WORK" || fail "cannot create $OUT" \
  "check free space and permissions"
cp -a "$BUNDLE" "$WORK/bundle" || fail "cannot copy $BUNDLE to $WORK" "check free space"
printf 'step\texit\tseconds\n' >"$OUT/summary.tsv"
FAILED=0

step() {  # step NAME COMMAND...: run it, log it, record it
  local name="$1" started code
  shift
  started=$(date +%s)
  echo "== $name: $*"
  "$@" >"$OUT/logs/$name.log" 2>&1
  code=$?
  printf '%s\t%s\t%s\n' "$name" "$code" "$(($(date +%s) - started))" >>"$OUT/summary.tsv"
  if [ "$code" -ne 0 ]; then
    FAILED=1
    echo "   failed ($code): see $OUT/logs/$name.log"
  fi
  return 0
}

skip() {
  printf '%s\tskipped\t0\t%s\n' "$1" "$2" >>"$OUT/summary.tsv"
  echo "== $1: skipped ($2)"
}

# the device, before anything loads it
if command -v tegrastats >/dev/null; then
  tegrastats --interval 1000 --logfile "$OUT/tegrastats.log" &
  TEGRASTATS=$!
  trap 'kill "$TEGRASTATS" 2>/dev/null' EXIT
fi
doctor_record() { dmgrd-edge doctor --json >"$OUT/doctor.json"; }
device_record() {
  "$PY" -c "import json; from dmgrd_edge.runtime.device_info import device_info
print(json.dumps(device_info(), indent=2))" >"$OUT/device.json"
}
step doctor doctor_record
step device device_record
if ! command -v jetson_clocks >/dev/null; then
  skip jetson-clocks "jetson_clocks is not installed (not a Jetson?)"
elif sudo -n true 2>/dev/null; then
  step jetson-clocks sudo -n jetson_clocks --show
else
  skip jetson-clocks "needs sudo without a password; run: sudo jetson_clocks --show"
fi

# the real-TensorRT test (it trains a tiny model, so it needs torch)
if [ "${PYTEST_TENSORRT:-1}" = 0 ]; then
  skip pytest-tensorrt "PYTEST_TENSORRT=0"
elif "$PY" -c "import torch, pytest" 2>/dev/null; then
  step pytest-tensorrt "$PY" -m pytest -m tensorrt -q -p no:cacheprovider "$REPO/tests"
else
  skip pytest-tensorrt "needs torch and pytest (NVIDIA's PyTorch for JetPack, pip install pytest)"
fi

CATEGORY="$("$PY" -c "import json, sys; \
print(json.load(open(sys.argv[1]))['source'].get('category') or 'washer')" "$BUNDLE/manifest.json")"
if [ -z "${DATA:-}" ]; then
  DATA="$WORK/data"
  step generate-data dmgrd-edge generate-data "$DATA" --categories "$CATEGORY"
fi

for precision in $PRECISIONS; do
  step "build-engine-$precision" dmgrd-edge build-engine "$WORK/bundle" \
    --precision "$precision" --batch "$BATCH_PROFILE"
  step "bench-tensorrt-$precision" dmgrd-edge bench "$WORK/bundle" --backend tensorrt \
    --precision "$precision" --batch "$BATCHES" --runs "$RUNS" --data "$DATA" --category "$CATEGORY" \
    --out "$OUT/bench/bench_tensorrt_$precision.json" --label "TensorRT $precision"
done
step bench-onnxruntime dmgrd-edge bench "$WORK/bundle" --backend onnxruntime \
  --batch "$BATCHES" --runs "$RUNS" --data "$DATA" --category "$CATEGORY" \
  --out "$OUT/bench/bench_onnxruntime.json" --label "ONNX Runtime (CPU)"

# a generated line video (defects known) through the line runtime on the INT8 engine
make_video() {
  "$PY" - "$WORK/line.avi" "$CATEGORY" "$FRAMES" "$OUT/run/truth.json" "$REPO/benchmarks" <<'EOF'
import json, sys
from pathlib import Path

video, category, frames, truth_file, benchmarks = sys.argv[1:]
sys.path.insert(0, benchmarks)
from runtime_stream import write_video  # noqa: E402

truth = write_video(Path(video), category, int(frames), 256, 0.1, 0, "raw")
Path(truth_file).write_text(json.dumps({"defect": truth}))
EOF
}
step video make_video
LAST="$(echo "$PRECISIONS" | awk '{print $NF}')"
step run dmgrd-edge run "$WORK/bundle" --source "$WORK/line.avi" --backend tensorrt \
  --precision "$LAST" --batch 1 --headless --sink "$OUT/run/events.jsonl" \
  --stats-json "$OUT/run/stats.json"

step report dmgrd-edge report "$OUT"/bench/*.json --out "$OUT/report"

if [ -n "${TEGRASTATS:-}" ]; then
  kill "$TEGRASTATS" 2>/dev/null
fi
cp "$WORK/bundle/manifest.json" "$OUT/manifest-with-engines.json" 2>/dev/null
tar czf "$OUT.tar.gz" -C "$(dirname "$OUT")" "$(basename "$OUT")"
echo
column -t -s "$(printf '\t')" "$OUT/summary.tsv" 2>/dev/null || cat "$OUT/summary.tsv"
echo "results: $OUT.tar.gz (send this back); engines and data: $WORK"
exit "$FAILED"
