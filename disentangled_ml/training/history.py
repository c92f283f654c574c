"""A run's history (``RUN_DIR/history.csv``, one row per epoch) and its training-curve plot.

The history is the run's record of progress: resuming reads the epochs done, the best
validation score and the training seconds so far from it, and the report plots it.
"""

from __future__ import annotations

import csv
import os
from typing import Dict, List, Optional

from disentangled_ml.run_directory import RunDirectory

#: The epoch log that picks the best checkpoint and stops early: validation mean triplet accuracy.
MONITOR = "val_mean_acc"


def read_history(run_dir: str) -> List[Dict[str, str]]:
    """The rows of a run's history.csv, oldest first ([] for a new run; an interrupted epoch may repeat)."""
    path = RunDirectory(run_dir).history_path
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return list(csv.DictReader(f))


def elapsed_seconds(run_dir: str) -> float:
    """Training seconds a run has logged so far (``elapsed_s`` of its last history row; 0 if none)."""
    values = [float(r["elapsed_s"]) for r in read_history(run_dir) if r.get("elapsed_s")]
    return values[-1] if values else 0.0


def completed_epochs(run_dir: str) -> int:
    """Epochs a run has finished, from its history.csv (0 for a new run)."""
    return len({r["epoch"] for r in read_history(run_dir)})


def best_score(run_dir: str) -> Optional[float]:
    """The best validation mean triplet accuracy in a run's history.csv (None for a new run)."""
    scores = [float(r[MONITOR]) for r in read_history(run_dir) if r.get(MONITOR)]
    return max(scores) if scores else None


def plot_history(history_csv: str, out_png: str) -> None:
    """Training curves: loss, and triplet accuracy per condition (train dashed, validation solid)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(history_csv) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    epochs = [int(r["epoch"]) + 1 for r in rows]
    acc_keys = sorted(k for k in rows[0] if k.startswith("acc_") or k == "mean_acc")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for key, ax in (("loss", ax1),):
        for prefix, style in (("", "--"), ("val_", "-")):
            if prefix + key in rows[0]:
                ax.plot(epochs, [float(r[prefix + key]) for r in rows], style, label=prefix + key)
    ax1.set_xlabel("epoch"), ax1.set_ylabel("loss"), ax1.legend(), ax1.grid(alpha=0.3)
    for i, key in enumerate(acc_keys):
        color = f"C{i}"
        for prefix, style in (("", "--"), ("val_", "-")):
            if prefix + key in rows[0]:
                ax2.plot(epochs, [float(r[prefix + key]) for r in rows], style, color=color, label=prefix + key)
    ax2.set_xlabel("epoch"), ax2.set_ylabel("triplet accuracy"), ax2.set_ylim(0, 1.02), ax2.grid(alpha=0.3)
    ax2.legend(fontsize=7, ncol=2)
    fig.suptitle("training curves (dashed: train, solid: validation)")
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)

