#!/usr/bin/env bash
# The main job end to end on a fresh synthetic collection:
# synth -> prepare -> train -> evaluate -> export -> embed -> similar.
# Usage: scripts/demo.sh VENV_BIN OUT_DIR N_TRACKS   (called by `make demo`)
# Budget knobs (defaults in brackets): DEMO_MIN_SECONDS/DEMO_MAX_SECONDS track lengths [8/12],
# DEMO_WIDTH model.width [16], DEMO_EPOCHS x DEMO_STEPS [4 x 125], DEMO_SET extra --set options.
set -euo pipefail
BIN=${1:-.venv/bin}
OUT=${2:-demo_out}
TRACKS=${3:-300}
DML="$BIN/dml"
export TF_CPP_MIN_LOG_LEVEL=2

rm -rf "$OUT"
mkdir -p "$OUT"
# wall time of each stage, listed at the end
STAGE_NAME=""; STAGE_START=$SECONDS; TIMES=""
stage() {
  if [ -n "$STAGE_NAME" ]; then
    TIMES="$TIMES$(printf '  %-10s %4d s' "$STAGE_NAME" $((SECONDS - STAGE_START)))\n"
  fi
  STAGE_NAME=$1; STAGE_START=$SECONDS
}
stage synth
echo "== 1/7 synthesise $TRACKS tracks"
"$DML" synth "$OUT/collection" --tracks "$TRACKS" --seed 0 \
  --min-seconds "${DEMO_MIN_SECONDS:-8}" --max-seconds "${DEMO_MAX_SECONDS:-12}"
stage prepare
echo "== 2/7 prepare (validate, tempo with madmom where missing, label summary)"
# The synthesiser writes exact BPM; drop it for a third of the tracks so madmom estimates those.
"$BIN/python" - "$OUT/collection/manifest.csv" <<'PY'
import csv, sys
path = sys.argv[1]
rows = list(csv.DictReader(open(path)))
for i, r in enumerate(rows):
    if i % 3 == 0:
        r["tempo"] = ""
with open(path, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0]))
    w.writeheader(); w.writerows(rows)
PY
"$DML" prepare "$OUT/collection/manifest.csv" --out "$OUT/prepared"
stage train
# The demo's budget, measured (benchmarks/RESULTS.md, "The 0.8.1 demo"): many short tracks rather than few
# long ones (what the network generalises from is the number of tracks; the audio to synthesise and
# prepare is the same as 120 tracks of 25 s), and the default network at half its width, whose
# steps take half the time, for 4 x 125 steps. The full default (width 32, 12 x 250 steps) takes
# ~50 min on 2 cores.
echo "== 3/7 train the default network at width ${DEMO_WIDTH:-16} for ${DEMO_EPOCHS:-4} x ${DEMO_STEPS:-125} steps (the default: width 32, 12 x 250 steps, ~50 min on 2 cores)"
"$DML" train "$OUT/prepared" --out "$OUT/run" \
  --set model.width="${DEMO_WIDTH:-16}" --set data.eval_triplets_per_condition=100 --set train.warmup_steps=50 \
  ${DEMO_SET:-} --epochs "${DEMO_EPOCHS:-4}" --steps-per-epoch "${DEMO_STEPS:-125}"
stage evaluate
echo "== 4/7 evaluate on the test split, against the MFCC-VQ, MFCC and untrained baselines"
"$DML" evaluate "$OUT/run" --prepared "$OUT/prepared"
stage export
echo "== 5/7 export: SavedModel + TFLite (float32, fp16, int8) with the mel frontend inside, parity checked"
"$DML" export "$OUT/run" --out "$OUT/export" --calibration-segments 50 --parity-segments 50 --max-triplets 50
stage embed
echo "== 6/7 embed the collection with the export"
"$DML" embed "$OUT/export" "$OUT/prepared/manifest.csv" --out "$OUT/catalogue"
QUERY=$(awk -F, 'NR==2 {print $2}' "$OUT/prepared/manifest.csv")
stage similar
echo "== 7/7 nearest tracks to $QUERY, by mood and by instrument"
"$DML" similar "$OUT/catalogue" "$QUERY" --condition mood --k 5
"$DML" similar "$OUT/catalogue" "$QUERY" --condition instrument --k 5
stage ""
echo
printf "Wall time by stage:\n$TIMES  %-10s %4d s\n" total $SECONDS
echo "Done. TensorBoard: $BIN/tensorboard --logdir $OUT/run/tensorboard"
echo "  (scalars: runs train and validation; the embedding projector: PROJECTOR tab, run projector)"
echo "Plots: $OUT/run/training_curves.png $OUT/run/eval_test/accuracy.png $OUT/run/eval_test/disentanglement.png $OUT/run/eval_test/class_pairs.png"
echo "Export: $OUT/export (config.json, saved_model/, model*.tflite, parity.json)"
echo "Explore the catalogue in the browser (http://127.0.0.1:8000/; drop an audio file to query by it):"
echo "  $DML serve $OUT/catalogue --export $OUT/export"
