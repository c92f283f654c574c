#!/usr/bin/env bash
# The main job end to end on a fresh synthetic collection: synth -> prepare -> train -> evaluate.
# Usage: scripts/demo.sh VENV_BIN OUT_DIR N_TRACKS   (called by `make demo`)
set -euo pipefail
BIN=${1:-.venv/bin}
OUT=${2:-demo_out}
TRACKS=${3:-120}
DML="$BIN/dml"
export TF_CPP_MIN_LOG_LEVEL=2

rm -rf "$OUT"
mkdir -p "$OUT"
echo "== 1/4 synthesise $TRACKS tracks"
"$DML" synth "$OUT/collection" --tracks "$TRACKS" --seed 0
echo "== 2/4 prepare (validate, tempo with madmom where missing, label summary)"
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
echo "== 3/4 train (a short run; see README for full-size settings)"
"$DML" train "$OUT/prepared" --out "$OUT/run" \
  --set model.width=16 --set data.eval_triplets_per_condition=100 \
  --epochs "${DEMO_EPOCHS:-4}" --steps-per-epoch "${DEMO_STEPS:-40}"
echo "== 4/4 evaluate on the test split, against the MFCC-VQ, MFCC and untrained baselines"
"$DML" evaluate "$OUT/run" --prepared "$OUT/prepared"
echo
echo "Done. TensorBoard (scalars and the embedding projector): $BIN/tensorboard --logdir $OUT/run/tensorboard"
echo "Plots: $OUT/run/training_curves.png $OUT/run/eval_test/accuracy.png $OUT/run/eval_test/disentanglement.png"
