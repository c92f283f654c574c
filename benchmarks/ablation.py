"""The paper's ablation on one prepared collection, with the same budget for every run.

Masks {none, fixed, learned} × track regularisation {λ = 0, λ > 0}: six runs, each trained for
exactly ``--epochs`` × ``--steps-per-epoch`` steps (early stopping off, so the budget is equal)
from the same seed, then scored on the same fixed test triplets. "none" scores every condition on
the whole embedding (one global space); "learned" in its learned mask.

Writes ``benchmarks/results/ablation.json`` and ``ablation.md`` (a table), and keeps each run
under ``--work`` for inspection.

    python benchmarks/ablation.py --prepared PREPARED_DIR [--epochs 4 --steps-per-epoch 100 --width 16]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

MASKS = ("none", "fixed", "learned")


def run_one(prepared: str, run_dir: str, base, mask_mode: str, track_weight: float):
    from disentangled_ml.evaluation.runner import evaluate_run
    from disentangled_ml.training import train

    cfg = base.replace(**{"model.mask_mode": mask_mode, "loss.track_weight": track_weight})
    t0 = time.time()
    summary = train(prepared, run_dir, cfg, verbose=0)
    metrics, _ = evaluate_run(run_dir, prepared, split="test", baselines=False, progress=False)
    acc = metrics["embedders"]["model"]["triplet_accuracy"]
    return {
        "mask_mode": mask_mode, "track_weight": track_weight, "seconds": round(time.time() - t0, 1),
        "best_val_mean_acc": summary["best_val_mean_acc"],
        "slice": {c: v["slice"] for c, v in acc.items()},
        "whole": {c: v["whole"] for c, v in acc.items()},
        "n": {c: v["n"] for c, v in acc.items()},
    }


def to_markdown(rows, conditions) -> str:
    head = "| masks | λ | " + " | ".join(conditions) + " | mean (conditions) |"
    lines = [head, "|" + " --- |" * (len(conditions) + 3)]
    for r in rows:
        vals = [r["slice"].get(c) for c in conditions]
        cond = [v for c, v in zip(conditions, vals) if c != "track" and v is not None]
        mean = sum(cond) / len(cond) if cond else float("nan")
        cells = " | ".join("—" if v is None else f"{v:.3f}" for v in vals)
        lines.append(f"| {r['mask_mode']} | {r['track_weight']:g} | {cells} | {mean:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prepared", required=True, help="a prepared collection (dml prepare)")
    parser.add_argument("--work", default="ablation_runs", help="folder for the six run directories")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--steps-per-epoch", type=int, default=100)
    parser.add_argument("--width", type=int, default=16, help="model.width (stem filters)")
    parser.add_argument("--track-weight", type=float, default=0.5, help="the λ > 0 of the comparison")
    parser.add_argument("--mining", default="random",
                        help="data.mining of every run (default: the paper's sampled triplets, as in the table in "
                             "RESULTS.md; the library's default is in_batch_all)")
    parser.add_argument("--eval-triplets", type=int, default=200, help="test/validation triplets per condition")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "ablation.json"))
    args = parser.parse_args(argv)

    from disentangled_ml.config import Config

    base = Config().replace(**{
        "model.width": args.width, "train.epochs": args.epochs, "train.steps_per_epoch": args.steps_per_epoch,
        "train.early_stopping_patience": args.epochs, "data.eval_triplets_per_condition": args.eval_triplets,
        "data.mining": args.mining,
    })
    rows = []
    for mask_mode in MASKS:
        for lam in (0.0, args.track_weight):
            name = f"{mask_mode}_lambda{lam:g}"
            print(f"== {name}", flush=True)
            rows.append(run_one(args.prepared, os.path.join(args.work, name), base, mask_mode, lam))
            print(json.dumps(rows[-1]), flush=True)
    conditions = [c for c in list(base.conditions.names) + ["track"] if any(c in r["slice"] for r in rows)]
    result = {"budget": {"epochs": args.epochs, "steps_per_epoch": args.steps_per_epoch,
                         "batch_size": base.train.batch_size, "width": args.width, "mining": args.mining},
              "prepared": os.path.abspath(args.prepared), "runs": rows,
              "note": "triplet accuracy on the test split; conditions scored in their slice "
                      "(mask_mode none: whole embedding); track triplets on the whole embedding"}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    table = to_markdown(rows, conditions)
    with open(os.path.splitext(args.out)[0] + ".md", "w") as f:
        f.write(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
