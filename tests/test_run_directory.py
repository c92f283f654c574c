"""disentangled_ml.run_directory: the layout of a training run directory and its shared readers.

The layout is the on-disk contract between dml train and everything that reads a run (evaluate,
export, tune, the explorer): the names asserted here are the ones runs saved by earlier
versions hold, so a change to any of them breaks old runs and must fail here first.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from disentangled_ml.config import Config, ConfigError
from disentangled_ml.run_directory import MASKS_FILE, RunDirectory, RunDirectoryError

REPO = Path(__file__).resolve().parents[1]


def _write_run(root, *, splits=None, masks=None, run_json=None):
    """A small run directory as dml train leaves it: config.json, splits.csv, masks.npy, run.json."""
    run = RunDirectory(root)
    os.makedirs(run.path, exist_ok=True)
    config = Config().replace(**{"conditions.embedding_dim": 8, "model.mask_mode": "learned"})
    config.to_json(run.config_path)
    if splits is not None:
        run.write_splits(splits)
    if masks is not None:
        np.save(run.masks_path, masks)
    if run_json is not None:
        run.write_run_json(run_json)
    return run, config


def _prepared(root):
    os.makedirs(root, exist_ok=True)
    Path(root, "manifest.csv").write_text("path,track_id\n")
    return str(root)


def test_layout_names_every_file_of_a_run(tmp_path):
    run = RunDirectory(tmp_path / "run")  # a pathlib path works; every path is a str joined onto it
    base = str(tmp_path / "run")
    assert run.path == base and os.fspath(run) == base
    expected = {
        run.config_path: "config.json", run.splits_path: "splits.csv", run.checkpoints_dir: "checkpoints",
        run.last_checkpoint_path: "checkpoints/last.keras",
        run.distributed_checkpoints_dir: "checkpoints/distributed", run.backup_dir: "backup",
        run.best_model_path: "best.keras", run.embedding_model_path: "embedding.keras",
        run.masks_path: MASKS_FILE, run.run_json_path: "run.json", run.history_path: "history.csv",
        run.curves_path: "training_curves.png", run.tensorboard_dir: "tensorboard",
        run.projector_dir: "tensorboard/projector",
        run.eval_triplets_path("test"): "test_triplets.csv",
        run.eval_triplets_path("validation"): "validation_triplets.csv",
        run.confounded_triplets_path("test"): "test_confounded_triplets.csv",
        run.eval_dir("test"): "eval_test", run.eval_dir("validation"): "eval_validation",
    }
    for path, name in expected.items():
        assert path == os.path.join(base, *name.split("/")), name
    assert MASKS_FILE == "masks.npy"
    # the run's own model writes eval_<split>; another model gets its name appended
    assert run.eval_dir("test", run.embedding_model_path) == os.path.join(base, "eval_test")
    assert run.eval_dir("test", "/models/best.keras") == os.path.join(base, "eval_test_best")
    assert run.eval_dir("validation", "/exports/v1/") == os.path.join(base, "eval_validation_v1")
    # a RunDirectory is itself accepted where a run directory's path is, and is frozen
    assert RunDirectory(run) == run
    with pytest.raises(AttributeError):
        run.path = "elsewhere"


def test_reads_config_splits_and_masks_of_a_run(tmp_path):
    splits = {"t3": "train", "t1": "train", "t2": "validation", "t0": "test"}
    masks = np.arange(5 * 8, dtype=np.float64).reshape(5, 8) / 40
    run, config = _write_run(tmp_path / "run", splits=splits, masks=masks)
    assert run.exists() and run.check() is run
    assert run.read_config().hash() == config.hash()
    got = run.read_splits()
    assert got == splits and list(got) == list(splits)  # file order is kept
    with open(run.splits_path) as f:
        assert f.readline().strip() == "track_id,split"
    m = run.read_masks()
    assert m.dtype == np.float32 and m.shape == (5, 8)
    np.testing.assert_allclose(m, masks, rtol=1e-6)


def test_run_json_round_trip(tmp_path):
    summary = {"prepared_dir": "/data/prepared", "epochs_total": 3, "best_val_mean_acc": 0.75}
    run, _ = _write_run(tmp_path / "run", run_json=summary)
    assert run.read_run_json() == summary
    Path(run.run_json_path).write_text("[1, 2]")
    with pytest.raises(RunDirectoryError, match="run.json is not a JSON object"):
        run.read_run_json()


def test_missing_files_are_named_with_what_to_do(tmp_path):
    run, _ = _write_run(tmp_path / "run")
    with pytest.raises(RunDirectoryError, match=r"splits\.csv does not exist; is .* a training run directory"):
        run.read_splits()
    with pytest.raises(RunDirectoryError, match=r"masks\.npy does not exist; a run with learned masks"):
        run.read_masks()
    with pytest.raises(RunDirectoryError, match=r"run\.json does not exist; dml train writes it when a run ends"):
        run.read_run_json()
    Path(run.splits_path).write_text("id,part\nt0,test\n")
    with pytest.raises(RunDirectoryError, match="must have columns track_id,split"):
        run.read_splits()


def test_a_folder_that_is_not_a_run_directory(tmp_path):
    missing = RunDirectory(tmp_path / "nowhere")
    assert not missing.exists()
    with pytest.raises(RunDirectoryError, match="nowhere does not exist; give the --out folder of dml train"):
        missing.check()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RunDirectoryError, match="is not a training run directory .* holds no config.json"):
        RunDirectory(empty).read_config()
    # a RunDirectoryError is a ConfigError: callers that turn unreadable configs into their own error catch it
    assert issubclass(RunDirectoryError, ConfigError)
    # an unreadable config.json is the config loader's error, naming the file
    Path(empty, "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="config.json is not valid JSON"):
        RunDirectory(empty).read_config()


def test_prepared_dir_explicit_recorded_and_missing(tmp_path, caplog):
    prepared = _prepared(tmp_path / "prepared")
    other = _prepared(tmp_path / "other")
    run, _ = _write_run(tmp_path / "run", run_json={"prepared_dir": prepared})
    # recorded in run.json; an explicit --prepared wins
    assert run.prepared_dir() == prepared
    assert run.prepared_dir(other) == other
    with pytest.raises(RunDirectoryError, match=r"--prepared .*nothing holds no manifest\.csv"):
        run.prepared_dir(str(tmp_path / "nothing"))
    with pytest.raises(RunDirectoryError, match=r"--prepared .*nothing holds no manifest\.csv"):
        run.prepared_dir(str(tmp_path / "nothing"), required=False)  # a wrong argument is never ignored

    # a relative path is read against the run directory
    _prepared(tmp_path / "run" / "coll")
    run.write_run_json({"prepared_dir": "coll"})
    assert run.prepared_dir() == os.path.join(run.path, "coll")

    # recorded, but gone: an error naming both files, or (not required) a warning and None
    run.write_run_json({"prepared_dir": str(tmp_path / "gone")})
    with pytest.raises(RunDirectoryError, match=r"gone recorded in .*run\.json does not exist.*pass --prepared"):
        run.prepared_dir()
    with caplog.at_level("WARNING", logger="disentangled_ml.run_directory"):
        assert run.prepared_dir(required=False) is None
    assert "gone recorded in" in caplog.text

    # nothing recorded
    run.write_run_json({"epochs_total": 1})
    with pytest.raises(RunDirectoryError, match=r"run\.json records no prepared_dir; pass --prepared"):
        run.prepared_dir()
    assert run.prepared_dir(required=False) is None
    os.remove(run.run_json_path)
    with pytest.raises(RunDirectoryError, match=r"no --prepared given and .*run\.json does not exist; pass --prepared"):
        run.prepared_dir()
    assert run.prepared_dir(required=False) is None
    assert run.prepared_dir(other) == other  # no run.json is no problem when --prepared is given


def test_imports_no_tensorflow_and_sits_low():
    """The CLI checks a run directory before anything heavy loads; the layering keeps it near config."""
    code = ("import sys, disentangled_ml.run_directory; "
            "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"

    from test_layering import CONFIG_MAY_IMPORT, import_graph

    imported = set(import_graph()["disentangled_ml.run_directory"])
    assert imported <= {"disentangled_ml.config", "disentangled_ml.errors"} | CONFIG_MAY_IMPORT, imported
