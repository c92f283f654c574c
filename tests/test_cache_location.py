"""Where the training pipeline's cache goes: ``data.cache="auto"`` (the default) is resolved, never a directory.

Multi-worker training once took ``"auto"`` for a directory name and wrote tf.data file caches to
``./auto/pipeline-N`` in the working directory. These tests build each worker's pipeline config the
way :func:`disentangled_ml.training.distributed.train_distributed` does, from an empty working directory, and
check that nothing is written there. No training: one batch of a tiny collection at most.
"""

import os

import pytest

from disentangled_ml.data import pipeline
from disentangled_ml.data.labels import LabelTables
from disentangled_ml.data.pipeline import training_dataset
from disentangled_ml.training.distributed import PIPELINE_SEED_STRIDE, _pipeline_config
from collections_for_tests import tiny_config, write_tracks


@pytest.fixture
def collection(tmp_path):
    audio = tmp_path / "audio"
    audio.mkdir()
    tracks = write_tracks(str(audio), n=8)
    return tracks, list(range(len(tracks)))


@pytest.fixture
def empty_cwd(tmp_path, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


def test_auto_cache_resolves_as_on_one_machine_and_writes_nothing_to_the_working_directory(collection, empty_cwd):
    tracks, rows = collection
    cfg = tiny_config()
    assert cfg.data.cache == "auto"
    expected = pipeline.resolve_cache(tracks, rows, cfg)  # what the single-machine pipeline uses
    assert expected == "memory"  # a few seconds of audio fit in RAM
    for pipeline_id in (0, 1):
        pcfg = _pipeline_config(cfg, pipeline_id, tracks, rows)
        assert pcfg.data.cache == expected
        assert pcfg.data.seed == cfg.data.seed + PIPELINE_SEED_STRIDE * pipeline_id
        # the pipeline a worker runs, up to its first batch (when the file cache would be written)
        tables = LabelTables.from_tracks(tracks, pcfg)
        next(iter(training_dataset(tracks, tables, rows, pcfg)))
    assert os.listdir(empty_cwd) == []  # no ./auto/pipeline-N


def test_auto_cache_that_does_not_fit_in_memory_is_none(collection, empty_cwd, monkeypatch):
    tracks, rows = collection
    monkeypatch.setattr(pipeline, "physical_memory_bytes", lambda: 100_000)  # 100 kB of "RAM"
    pcfg = _pipeline_config(tiny_config(), 1, tracks, rows)
    assert pcfg.data.cache == "none"
    assert os.listdir(empty_cwd) == []


def test_a_cache_directory_gets_one_folder_per_pipeline(collection, empty_cwd, tmp_path):
    tracks, rows = collection
    cache = str(tmp_path / "cache")
    cfg = tiny_config(**{"data.cache": cache + "/"})
    assert _pipeline_config(cfg, 0, tracks, rows).data.cache == cache + "/pipeline-0"
    assert _pipeline_config(cfg, 3, tracks, rows).data.cache == cache + "/pipeline-3"
    assert _pipeline_config(tiny_config(**{"data.cache": "memory"}), 1, tracks, rows).data.cache == "memory"
    assert _pipeline_config(tiny_config(**{"data.cache": "none"}), 1, tracks, rows).data.cache == "none"
