"""The paper's ablation on one prepared collection, with the same budget for every run.

Masks {none, fixed, learned} × track regularisation {λ = 0, λ > 0}: six runs, each trained for
exactly ``--epochs`` × ``--steps-per-epoch`` steps (early stopping off, so the budget is equal)
from the same seed, then scored on the same fixed test triplets. "none" scores every condition on
the whole embedding (one global space); "learned" in its learned mask.

Writes ``benchmarks/results/ablation.json`` and ``ablation.md`` (a table), and keeps each run
under ``--work`` for inspection.

Every accuracy comes with its 95 % Wilson interval, and every variant is compared with the
reference variant (fixed masks, λ = ``--track-weight``: the library's default config when that is
0.5) on the same test triplets with the exact McNemar test (:func:`summarize`); the table marks
the differences with p < .05. ``ablation.json`` keeps each run's per-triplet outcomes
(``correct``: one ``0``/``1`` character per test triplet of a condition, in the order of the run's
``test_triplets.csv``) and a hash of the triplets they belong to, so the table can be remade from
it (``to_markdown(summarize(...))``) and a pair is only tested on identical triplets.

    python benchmarks/ablation.py --prepared PREPARED_DIR [--epochs 4 --steps-per-epoch 100 --width 16]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from disentangled_ml.evaluation.metrics import (MCNEMAR_TEST, PAIRED_INTERVAL, SIGNIFICANCE_LEVEL, mcnemar_test,
                                                wilson_interval)

MASKS = ("none", "fixed", "learned")
#: The pooled column: every label condition's triplets together (not the track triplets).
POOLED = "all conditions"
TRACK = "track"


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
        "slice_ci95": {c: v["slice_ci95"] for c, v in acc.items()},
        "whole": {c: v["whole"] for c, v in acc.items()},
        "n": {c: v["n"] for c, v in acc.items()},
        **per_triplet_record(metrics["per_triplet"]["random"]),
    }


def per_triplet_record(per_triplet: Mapping[str, Any], series: str = "model.slice") -> Dict[str, Dict[str, str]]:
    """A run's per-triplet outcomes in its condition's view, for ``ablation.json``.

    Args:
        per_triplet: ``metrics["per_triplet"]["random"]`` of
            :func:`~disentangled_ml.evaluation.runner.evaluate_run` (``{"triplets": [rows],
            "correct": {series: bool [N]}}``).
        series: the model's view of each condition (``model.slice``: the condition's slice, learned
            mask, or the whole embedding with ``mask_mode none`` and for the track triplets).

    Returns:
        ``{"correct": {cond: "0110..."}, "triplets_sha1": {cond: hex}}``: one character per triplet
        in file order, and a hash of the condition's triplets (tracks and crop starts) that says
        whether two runs were scored on the same ones.
    """
    correct = np.asarray(per_triplet["correct"][series], dtype=bool)
    rows = per_triplet["triplets"]
    by_cond: Dict[str, List[int]] = {}
    for i, t in enumerate(rows):
        by_cond.setdefault(str(t["condition"]), []).append(i)
    keys = ("anchor", "anchor_start", "positive", "positive_start", "negative", "negative_start")
    return {
        "correct": {c: "".join("1" if correct[i] else "0" for i in ix) for c, ix in by_cond.items()},
        "triplets_sha1": {c: hashlib.sha1(json.dumps([[str(rows[i][k]) for k in keys] for i in ix]).encode())
                          .hexdigest() for c, ix in by_cond.items()},
    }


def _variant(row: Mapping[str, Any]) -> Tuple[str, float]:
    return str(row["mask_mode"]), float(row["track_weight"])


def _outcomes(row: Mapping[str, Any], conds: Sequence[str]) -> Optional[np.ndarray]:
    """bool ``[N]``: the run's outcomes on ``conds``' triplets, one after the other; None without them."""
    stored = row.get("correct") or {}
    if not conds or any(c not in stored for c in conds):
        return None
    return np.array([ch == "1" for c in conds for ch in stored[c]], dtype=bool)


def _triplets_id(row: Mapping[str, Any], conds: Sequence[str]) -> Optional[Tuple[str, ...]]:
    hashes = row.get("triplets_sha1") or {}
    return tuple(hashes[c] for c in conds) if all(c in hashes for c in conds) else None


def summarize(rows: Sequence[Mapping[str, Any]], conditions: Sequence[str],
              reference: Optional[Tuple[str, float]] = None, alpha: float = SIGNIFICANCE_LEVEL) -> Dict[str, Any]:
    """Accuracy, 95 % Wilson interval and, against the reference variant, the exact McNemar test.

    For every variant (a row of ``ablation.json``'s ``runs``) and every condition, and for
    :data:`POOLED` (the label conditions' triplets together; its accuracy is their mean when every
    condition has the same number of triplets).

    Args:
        rows: the runs, each with ``mask_mode``, ``track_weight``, ``slice`` and ``n`` per condition, and
            (from :func:`per_triplet_record`) ``correct`` and ``triplets_sha1``. Rows without
            ``correct`` (ablation.json of before the tests) get intervals from ``slice`` and ``n`` and
            no test.
        conditions: the table's columns, e.g. ``["genre", "mood", "instrument", "tempo", "track"]``.
        reference: ``(mask_mode, track_weight)`` of the variant every other is compared with; None,
            or a variant not among ``rows``, compares nothing.
        alpha: significance level.

    Returns:
        ``{"reference": {"mask_mode", "track_weight"} | None, "test", "interval", "alpha", "columns":
        [conditions..., POOLED], "variants": [{"mask_mode", "track_weight", "is_reference", "cells":
        {column: {"accuracy", "ci95", "n", "versus_reference": mcnemar_test(variant, reference) |
        None, "why_untested": str | None}}}]}``; in ``versus_reference`` ``a`` is the variant, so
        ``difference > 0`` means it beats the reference.
    """
    labels = [c for c in conditions if c != TRACK]
    columns = list(conditions) + [POOLED]
    ref_row = next((r for r in rows if reference is not None and _variant(r) == tuple(reference)), None)
    variants = []
    for row in rows:
        is_ref = ref_row is not None and row is ref_row
        cells: Dict[str, Any] = {}
        for col in columns:
            conds = labels if col == POOLED else [col]
            present = [c for c in conds if row["n"].get(c) and row["slice"].get(c) is not None]
            if not present or (col == POOLED and len(present) < len(conds)):
                cells[col] = None
                continue
            mine = _outcomes(row, conds)
            if mine is not None:
                k, n = int(mine.sum()), int(mine.size)
            else:  # an old ablation.json: the count back from the accuracy (exact: n <= 10^6 triplets)
                n = int(sum(row["n"][c] for c in conds))
                k = int(sum(round(row["slice"][c] * row["n"][c]) for c in conds))
            test, why = None, None
            if ref_row is None or is_ref:
                why = None if is_ref else "no reference variant"
            else:
                theirs = _outcomes(ref_row, conds)
                if mine is None or theirs is None:
                    why = "no per-triplet results"
                elif _triplets_id(row, conds) != _triplets_id(ref_row, conds) or mine.size != theirs.size:
                    why = "not the same test triplets"
                else:
                    test = mcnemar_test(mine, theirs, alpha=alpha)
            cells[col] = {"accuracy": k / n, "ci95": list(wilson_interval(k, n)), "n": n,
                          "versus_reference": test, "why_untested": why}
        variants.append({"mask_mode": row["mask_mode"], "track_weight": row["track_weight"], "is_reference": is_ref,
                         "cells": cells})
    return {"reference": None if ref_row is None else {"mask_mode": ref_row["mask_mode"],
                                                       "track_weight": ref_row["track_weight"]},
            "test": MCNEMAR_TEST, "interval": PAIRED_INTERVAL, "alpha": alpha, "columns": columns,
            "variants": variants}


def to_markdown(summary: Mapping[str, Any]) -> str:
    """The ablation table of :func:`summarize`: accuracy [95 % Wilson interval] per variant and column, ``*``
    where the variant differs from the reference on the same triplets (exact McNemar p < alpha), ``†``
    where it could not be tested, and a note that says so under the table."""
    columns = summary["columns"]
    head = "| masks | λ | " + " | ".join(columns) + " |"
    lines = [head, "|" + " --- |" * (len(columns) + 2)]
    untested = set()
    for v in summary["variants"]:
        cells = []
        for col in columns:
            cell = v["cells"].get(col)
            if cell is None:
                cells.append("—")
                continue
            lo, hi = cell["ci95"]
            mark = ""
            if cell["versus_reference"] is not None and cell["versus_reference"]["significant"]:
                mark = "\\*"  # escaped: a bare * starts emphasis in Markdown
            elif cell["why_untested"] and summary["reference"] is not None:
                mark = "†"
                untested.add(cell["why_untested"])
            cells.append(f"{cell['accuracy']:.3f} [{lo:.2f}–{hi:.2f}]{mark}")
        name = f"**{v['mask_mode']}**" if v["is_reference"] else v["mask_mode"]
        lines.append(f"| {name} | {v['track_weight']:g} | " + " | ".join(cells) + " |")
    ref = summary["reference"]
    notes = ["", "Accuracy on the test triplets [95 % Wilson interval]; conditions in their own slice (no masks: "
                 f"the whole embedding), track triplets on the whole embedding; *{POOLED}*: the label conditions' "
                 "triplets pooled (their mean when each has as many)."]
    if ref is None:
        notes.append("No reference variant was run, so no difference is tested.")
    else:
        notes.append(f"Reference (bold): masks {ref['mask_mode']}, λ = {ref['track_weight']:g}. "
                     "\\* = differs from the "
                     f"reference on the same test triplets ({summary['test']}, p < {summary['alpha']:g}, each "
                     "comparison on its own, no multiplicity correction); no mark = not shown different."
                     + (f" † = not tested: {'; '.join(sorted(untested))}." if untested else ""))
    return "\n".join(lines + notes) + "\n"


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
    conditions = [c for c in list(base.conditions.names) + [TRACK] if any(c in r["slice"] for r in rows)]
    # the library's default masks with the λ > 0 of the comparison (the default config when that is 0.5)
    summary = summarize(rows, conditions, reference=(base.model.mask_mode, args.track_weight))
    result = {"budget": {"epochs": args.epochs, "steps_per_epoch": args.steps_per_epoch,
                         "batch_size": base.train.batch_size, "width": args.width, "mining": args.mining},
              "prepared": os.path.abspath(args.prepared), "runs": rows, "significance": summary,
              "note": "triplet accuracy on the test split; conditions scored in their slice "
                      "(mask_mode none: whole embedding); track triplets on the whole embedding; "
                      "significance: each variant against the reference on the same triplets"}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    table = to_markdown(summary)
    with open(os.path.splitext(args.out)[0] + ".md", "w") as f:
        f.write(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
