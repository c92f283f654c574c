"""The pure parts of benchmarks/backbones.py: time to target from history.csv, test intervals, Pareto marks."""

import csv
import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import backbones as bb  # noqa: E402


def write_history(path, rows):
    keys = list(rows[0])
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    return str(path)


def test_time_to_target_from_elapsed_s(tmp_path):
    path = write_history(tmp_path / "history.csv", [
        {"epoch": 0, "loss": 0.2, "val_mean_acc": 0.70, "elapsed_s": 100.0},
        {"epoch": 1, "loss": 0.1, "val_mean_acc": 0.86, "elapsed_s": 210.0},
        {"epoch": 2, "loss": 0.1, "val_mean_acc": 0.90, "elapsed_s": 330.0},
    ])
    t = bb.time_to_target(bb.read_history(path), 0.85)
    assert t["target_epoch"] == 1 and t["epochs_to_target"] == 2
    assert t["time_to_target_s"] == pytest.approx(210.0)
    assert t["total_train_s"] == pytest.approx(330.0)
    assert t["best_val_mean_acc"] == pytest.approx(0.90)
    assert t["time_source"] == "elapsed_s"

    never = bb.time_to_target(bb.read_history(path), 0.95)
    assert never["target_epoch"] is None and never["time_to_target_s"] is None
    assert never["total_train_s"] == pytest.approx(330.0)


def test_time_to_target_without_elapsed_s(tmp_path):
    path = write_history(tmp_path / "history.csv", [
        {"epoch": e, "val_mean_acc": a} for e, a in enumerate([0.6, 0.8, 0.84, 0.851])
    ])
    hist = bb.read_history(path)
    t = bb.time_to_target(hist, 0.85, run_seconds=400.0)
    assert t["epochs_to_target"] == 4 and t["target_epoch"] == 3
    assert t["time_to_target_s"] == pytest.approx(400.0)
    assert t["time_source"].startswith("run_seconds")
    t = bb.time_to_target(hist, 0.8, run_seconds=400.0)
    assert t["time_to_target_s"] == pytest.approx(200.0)  # second of four epochs, evenly spread
    bare = bb.time_to_target(hist, 0.8)  # no seconds at all: the epoch alone
    assert bare["epochs_to_target"] == 2 and bare["time_to_target_s"] is None and bare["time_source"] is None


def test_resumed_history_keeps_the_last_row_of_an_epoch(tmp_path):
    path = write_history(tmp_path / "history.csv", [
        {"epoch": 0, "val_mean_acc": 0.5, "elapsed_s": 10},
        {"epoch": 1, "val_mean_acc": 0.6, "elapsed_s": 20},
        {"epoch": 1, "val_mean_acc": 0.9, "elapsed_s": 25},
    ])
    hist = bb.read_history(path)
    assert [r["epoch"] for r in hist] == [0, 1]
    assert bb.time_to_target(hist, 0.85)["time_to_target_s"] == pytest.approx(25)


def test_test_accuracy_intervals_from_metrics_json(tmp_path):
    metrics = {"embedders": {
        "model": {"triplet_accuracy": {
            "genre": {"n": 50, "slice": 0.9, "whole": 0.8},  # no interval in the file: Wilson from acc and n
            "mood": {"n": 500, "slice": 0.5, "whole": 0.5, "slice_ci95": [0.45, 0.55], "whole_ci95": [0.4, 0.6]},
            "track": {"n": 10, "slice": None, "whole": 1.0, "slice_ci95": None, "whole_ci95": None},
        }},
        "mfcc_vq": {"triplet_accuracy": {"genre": {"n": 50, "slice": None, "whole": 0.6}}},
    }}
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(metrics))
    with open(path) as f:
        test = bb.read_test_accuracy(json.load(f))
    g = test["genre"]
    assert g["acc"] == pytest.approx(0.9) and g["n"] == 50 and g["measure"] == "slice"
    assert g["lo"] == pytest.approx(0.786, abs=1e-3) and g["hi"] == pytest.approx(0.957, abs=1e-3)
    assert (test["mood"]["lo"], test["mood"]["hi"]) == (0.45, 0.55)  # the file's own interval
    assert test["track"]["measure"] == "whole" and test["track"]["acc"] == 1.0
    assert bb.mean_accuracy(test) is None  # instrument and tempo unknown
    assert bb.mean_accuracy(test, ("genre", "mood")) == pytest.approx(0.7)
    with pytest.raises(ValueError, match="no embedder"):
        bb.read_test_accuracy(metrics, embedder="missing")


def test_pareto_on_step_time_and_accuracy():
    rows = [
        {"name": "fast_good", "step_s": 1.0, "mean_test_acc": 0.90, "mmacs": 100},
        {"name": "slow_better", "step_s": 3.0, "mean_test_acc": 0.92, "mmacs": 900},
        {"name": "slow_worse", "step_s": 2.0, "mean_test_acc": 0.85, "mmacs": 50},  # dominated by fast_good
        {"name": "tie", "step_s": 1.0, "mean_test_acc": 0.90, "mmacs": 100},  # equal: neither dominates
        {"name": "untrained", "step_s": 0.5, "mean_test_acc": None, "mmacs": 10},
    ]
    axes = bb.mark_pareto(rows)
    assert axes == [("step_s", "min"), ("mean_test_acc", "max")]
    assert {r["name"]: r["pareto"] for r in rows} == {
        "fast_good": True, "slow_better": True, "slow_worse": False, "tie": True, "untrained": None}


def test_pareto_falls_back_to_cost_axes():
    rows = [{"name": "a", "step_s": 1.0, "mmacs": 200, "params": 5},
            {"name": "b", "step_s": 2.0, "mmacs": 100, "params": 1},
            {"name": "c", "step_s": 2.5, "mmacs": 300, "params": 1}]
    assert bb.mark_pareto(rows) == [("step_s", "min"), ("mmacs", "min")]
    assert [r["pareto"] for r in rows] == [True, True, False]
    untimed = [{"name": "a", "mmacs": 200, "params": 5}, {"name": "b", "mmacs": 100, "params": 1}]
    assert bb.mark_pareto(untimed) == [("mmacs", "min"), ("params", "min")]
    assert [r["pareto"] for r in untimed] == [False, True]


def test_table_has_a_row_per_candidate():
    rows = [{"name": "lite", "params": 1.2e6, "mmacs": 150.0, "step_s": 0.5, "step_ratio_vs_paper_inception": 0.2,
             "pareto": True, "run": {"epochs_to_target": 3, "time_to_target_s": 600.0},
             "test": {"genre": {"acc": 0.9, "lo": 0.786, "hi": 0.957, "n": 50}}}]
    table = bb.format_table(rows, 0.85).splitlines()
    assert "time to .85" in table[0] and len(table) == 3
    assert table[2].startswith("| lite * | 1.20 M | 150 | 0.500 | 0.20 | 10.0 min (epoch 3) | 0.900 [0.786, 0.957]")


def test_parse_named():
    assert bb.parse_named(["a=x", "b = y"], "--runs") == {"a": "x", "b": "y"}
    with pytest.raises(ValueError, match="--runs"):
        bb.parse_named(["a"], "--runs")
