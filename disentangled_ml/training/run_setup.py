"""Setting up a run: its config, splits, mel statistics, fixed evaluation triplets and datasets.

:func:`prepare_run` is the one set-up of a run directory, shared by ``dml train`` on one
machine (:mod:`~disentangled_ml.training.single_machine`), the multi-worker loop
(:mod:`~disentangled_ml.training.distributed`) and keras-tuner trials
(``disentangled_ml.tuning``). It returns a :class:`RunData`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
import tensorflow as tf

from disentangled_ml.config import TRACK_CONDITION, Config, ConfigError, config_for_prepared
from disentangled_ml.data.eval_triplets import (build_eval_triplets, iter_waveform_crops, load_split_audio,
                                                read_eval_triplets, write_eval_triplets)
from disentangled_ml.data.labels import LabelTables
from disentangled_ml.data.manifest import Track, read_manifest
from disentangled_ml.data.pipeline import DecodeStats, training_dataset
from disentangled_ml.data.splits import SPLITS, split_tracks
from disentangled_ml.features import filterbanks, log_mel
from disentangled_ml.run_directory import RunDirectory

log = logging.getLogger(__name__)


def load_prepared(prepared_dir: str) -> List[Track]:
    path = os.path.join(prepared_dir, "manifest.csv")
    if not os.path.isfile(path):
        raise ConfigError(f"{prepared_dir} holds no manifest.csv; run `dml prepare MANIFEST --out {prepared_dir}` first.")
    return read_manifest(path)


def estimate_norm_stats(tracks: Sequence[Track], rows: Sequence[int], config: Config, max_tracks: int = 32,
                        seed: int = 0) -> Dict[str, float]:
    """Mean and standard deviation of the compressed log-mel over a sample of training tracks.

    They become ``frontend.norm_mean`` / ``norm_std``: fixed statistics, saved with the
    run and baked into every export (docs/design.md).
    """
    from disentangled_ml.audio_io import AudioDecodeError, load_audio

    fe = dataclasses.replace(config.frontend, norm_mean=0.0, norm_std=1.0)
    rng = np.random.default_rng(seed)
    pick = rng.permutation(list(rows))[:max_tracks]
    values = []
    banks = filterbanks(fe)
    for r in pick:
        try:
            y = load_audio(tracks[r].path, fe.sample_rate)
        except AudioDecodeError as e:
            log.warning("norm statistics: %s", e)
            continue
        mid = max(0, y.size // 2 - 5 * fe.sample_rate)
        values.append(log_mel(y[None, mid:mid + 10 * fe.sample_rate], fe, banks).numpy().ravel())
    if not values:
        raise ConfigError("no training track could be decoded to measure the log-mel statistics.")
    v = np.concatenate(values)
    return {"norm_mean": float(v.mean()), "norm_std": float(max(v.std(), 1e-3))}


def _condition_ids(config: Config) -> Dict[str, int]:
    names = list(config.conditions.names) + [TRACK_CONDITION]
    return {n: i for i, n in enumerate(names)}


def eval_dataset(triplets: Sequence[dict], audio: Dict[str, np.ndarray], config: Config,
                 batch_size: int) -> tf.data.Dataset:
    """Fixed triplets as model input batches (log-mel computed in TF from waveform crops)."""
    ids = _condition_ids(config)
    seg = config.frontend.segment_samples
    fe = config.frontend
    banks = filterbanks(fe, as_tensors=True)

    def gen():
        for b in iter_waveform_crops(triplets, audio, config, batch_size):
            yield (b["anchor"], b["positive"], b["negative"], np.array([ids[c] for c in b["condition"]], np.int32))

    spec = tuple(tf.TensorSpec([None, seg], tf.float32) for _ in range(3)) + (tf.TensorSpec([None], tf.int32),)
    # Repeated, and read for exactly ceil(n / batch) steps per evaluation, so each
    # validation pass sees every fixed triplet once.
    ds = tf.data.Dataset.from_generator(gen, output_signature=spec).repeat()
    return ds.map(lambda a, p, n, c: {"anchor": log_mel(a, fe, banks), "positive": log_mel(p, fe, banks),
                                      "negative": log_mel(n, fe, banks), "condition": c}).prefetch(2)



def resolve_config(run_dir: str, prepared_dir: str, user: Optional[Config]) -> Config:
    """The run's config: an existing run's saved one (resume), else the user's, else the prepared one.

    On resume only ``train.epochs`` may change (to extend a finished or stopped run);
    any other difference is ignored with a warning, so a resumed run stays the run it was.
    """
    saved = RunDirectory(run_dir).config_path
    if os.path.isfile(saved):
        cfg = Config.from_json(saved)
        if user is None:
            return cfg
        if user.train.epochs != cfg.train.epochs:
            log.info("resuming %s with train.epochs=%d (was %d)", run_dir, user.train.epochs, cfg.train.epochs)
            cfg = cfg.replace(**{"train.epochs": user.train.epochs})
            cfg.to_json(saved)
        same = user.replace(**{"frontend.norm_mean": cfg.frontend.norm_mean, "frontend.norm_std": cfg.frontend.norm_std,
                               "conditions.class_counts": cfg.conditions.class_counts})
        if same.hash() != cfg.hash():
            log.warning("%s already holds a run with another config; resuming it with its saved config "
                        "(use a new --out to train with the new one).", run_dir)
        return cfg
    if user is not None:
        return user
    prepared = os.path.join(prepared_dir, "config.json")
    return config_for_prepared(prepared) if os.path.isfile(prepared) else Config()


@dataclasses.dataclass
class RunData:
    """Everything a run (or a tuning trial) trains and validates on; built by :func:`prepare_run`."""

    config: Config
    tracks: List[Track]
    tables: LabelTables
    splits: Dict[str, List[int]]
    triplets: Dict[str, List[dict]]
    val_audio: Dict[str, np.ndarray]
    audio_dir: Optional[str] = None  # TFRecord audio shards the training pipeline reads, if any

    def datasets(self, batch_size: int, stats: Optional[DecodeStats] = None, config: Optional[Config] = None,
                 data_service: Optional[str] = None, job_name: Optional[str] = None):
        """(train_ds, val_ds, validation_steps) for global batches of ``batch_size`` triplets.

        With ``data_service`` (``grpc://HOST:PORT``) the training pipeline runs on the
        tf.data service workers (:mod:`disentangled_ml.data.service`: run-time seeds,
        no decode counters, so ``stats`` is ignored); validation stays local.
        """
        config = config or self.config
        if data_service:
            from disentangled_ml.data import service

            train_ds = service.distribute(
                training_dataset(self.tracks, self.tables, self.splits["train"], service.service_config(config),
                                 batch_size=batch_size, audio_dir=self.audio_dir, runtime_seeds=True),
                data_service, job_name)
        else:
            train_ds = training_dataset(self.tracks, self.tables, self.splits["train"], config,
                                        batch_size=batch_size, stats=stats, audio_dir=self.audio_dir)
        val_ds = eval_dataset(self.triplets["validation"], self.val_audio, config, batch_size)
        return train_ds, val_ds, -(-len(self.triplets["validation"]) // batch_size)


def prepare_run(prepared_dir: str, run_dir: str, config: Optional[Config] = None,
                audio_dir: Optional[str] = None) -> RunData:
    """Resolve the config, split, measure mel statistics and write/read the fixed triplets of a run directory.

    ``audio_dir``: TFRecord audio shards (any tf.io.gfile path) for the training
    pipeline; default ``PREPARED_DIR/audio`` when ``dml prepare --cache-audio`` wrote it.
    """
    tracks = load_prepared(prepared_dir)
    os.makedirs(run_dir, exist_ok=True)
    config = resolve_config(run_dir, prepared_dir, config)
    tables = LabelTables.from_tracks(tracks, config)
    splits = split_tracks(tracks, config)
    usable = tables.usable_conditions(splits["train"])
    for name, ok in usable.items():
        if not ok:
            log.warning("condition %r cannot form training triplets (too few labelled tracks per class); "
                        "its slice will not be trained.", name)
    if not any(usable.values()) and config.data.track_triplet_ratio == 0:
        raise ConfigError("no condition can form triplets and data.track_triplet_ratio is 0: nothing to train.")

    run = RunDirectory(run_dir)
    config_path = run.config_path
    counts = {name: len(tables.vocab[name]) for name in config.conditions.names if name in tables.vocab}
    if not os.path.isfile(config_path):
        stats = estimate_norm_stats(tracks, splits["train"], config, seed=config.data.seed)
        config = config.replace(**{f"frontend.{k}": v for k, v in stats.items()}, **{"conditions.class_counts": counts})
        config.to_json(config_path)
        run.write_splits({tracks[r].track_id: name for name in SPLITS for r in splits[name]})
    elif config.conditions.class_counts is not None and config.conditions.class_counts != counts:
        raise ConfigError(f"{run_dir} was started on a collection with {config.conditions.class_counts} classes per "
                          f"condition, and {prepared_dir} now has {counts}: the class proxies of the saved run do not "
                          "fit it. Train into a new --out directory.")
    log.info("run %s: config %s, %d/%d/%d tracks (train/validation/test)", run_dir, config.hash(),
             *(len(splits[s]) for s in SPLITS))

    # Fixed evaluation triplets: written once, rebuilt identically from data.seed.
    triplets = {}
    for name in ("validation", "test"):
        path = run.eval_triplets_path(name)
        if not os.path.isfile(path) and len(splits[name]) >= 2:
            write_eval_triplets(build_eval_triplets(tracks, tables, splits[name], config,
                                                    seed=config.data.seed + (1 if name == "validation" else 2)), path)
        triplets[name] = read_eval_triplets(path) if os.path.isfile(path) else []
    if not triplets["validation"]:
        raise ConfigError("the validation split cannot form any triplet; add tracks or raise data.split_fractions[1].")
    val_audio = load_split_audio(tracks, triplets["validation"], config)
    if audio_dir is None and os.path.isfile(os.path.join(prepared_dir, "audio", "index.json")):
        audio_dir = os.path.join(prepared_dir, "audio")
    if audio_dir is not None:
        log.info("training audio from the TFRecord shards in %s", audio_dir)
    return RunData(config, tracks, tables, splits, triplets, val_audio, audio_dir)

