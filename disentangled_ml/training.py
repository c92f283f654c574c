"""`dml train`: fit the masked triplet model on a prepared collection.

A run directory holds everything needed to resume, evaluate and export::

    RUN_DIR/
      config.json                 the Config of the run (mel statistics filled in)
      run.json                    prepared_dir, decode statistics, epochs, best score
      splits.csv                  track_id -> train | validation | test
      validation_triplets.csv     fixed evaluation triplets (rebuilt from data.seed)
      test_triplets.csv
      backup/                     BackupAndRestore state: a killed run resumes here
      checkpoints/last.keras      the TripletModel after every epoch
      best.keras                  the TripletModel with the best validation mean accuracy
      masks.npy                   its condition mask matrix, float32 [conditions + 1, embedding_dim]
      embedding.keras             waveform -> {"embedding"} model of the best weights
      history.csv, training_curves.png
      tensorboard/                scalars (train/, validation/) and projector/

The schedule is ``train.lr_schedule``: by default Adam on a warm-up + cosine decay over
``train.epochs * train.steps_per_epoch`` steps; ``"plateau"`` is the paper's (Adam at
``train.learning_rate``, multiplied by ``train.lr_factor`` when the validation loss
stalls). Both stop early on the validation mean triplet accuracy (``val_mean_acc``).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
import time
from typing import Dict, List, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

from disentangled_ml.config import TRACK_CONDITION, Config, ConfigError
from disentangled_ml.data.eval_triplets import (build_eval_triplets, iter_waveform_crops, load_split_audio,
                                                read_eval_triplets, write_eval_triplets)
from disentangled_ml.data.labels import LabelTables
from disentangled_ml.data.manifest import Track, read_manifest
from disentangled_ml.data.pipeline import DecodeStats, training_dataset
from disentangled_ml.data.splits import SPLITS, split_tracks
from disentangled_ml.features import filterbanks, log_mel

log = logging.getLogger(__name__)

MONITOR = "val_mean_acc"


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


class _LearningRateLogger(keras.callbacks.Callback):
    """Puts the optimizer's learning rate into the epoch logs (TensorBoard, CSV)."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


class _ElapsedTimeLogger(keras.callbacks.Callback):
    """Puts ``elapsed_s`` into the epoch logs: wall seconds of training so far, validation included.

    It is what "time to accuracy" is read from (``benchmarks/backbones.py``). A resumed run
    continues from the last logged value, so the figure counts the time spent training, not
    the time a killed run lay idle.
    """

    def __init__(self, start_s: float = 0.0):
        super().__init__()
        self.start_s = float(start_s)
        self._t0 = None

    def on_train_begin(self, logs=None):
        self._t0 = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and self._t0 is not None:
            logs["elapsed_s"] = self.start_s + time.monotonic() - self._t0


class _DecodeStatsLogger(keras.callbacks.Callback):
    def __init__(self, stats: DecodeStats):
        super().__init__()
        self.stats = stats

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["skipped_files"] = float(self.stats.skipped)
        if self.stats.skipped:
            log.warning("%d file(s) failed to decode at train time and were skipped.", self.stats.skipped)


class _AtomicCheckpoints(keras.callbacks.Callback):
    """Saves ``last.keras`` every epoch and ``best.keras`` on a new best ``val_mean_acc``.

    Unlike ``keras.callbacks.ModelCheckpoint``, which writes the file in place, each file is
    written beside its target and renamed over it, so a run killed mid-save keeps the previous
    complete checkpoint instead of a truncated zip.
    """

    def __init__(self, last_path: str, best_path: str, best: Optional[float] = None):
        super().__init__()
        self.last_path, self.best_path = last_path, best_path
        self.best = -np.inf if best is None else best

    def _save(self, path: str) -> None:
        tmp = path[: -len(".keras")] + ".tmp.keras"
        self.model.save(tmp, overwrite=True)
        os.replace(tmp, path)

    def on_epoch_end(self, epoch, logs=None):
        self._save(self.last_path)
        score = (logs or {}).get(MONITOR)
        if score is not None and score > self.best:
            self.best = float(score)
            self._save(self.best_path)


class _AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """``keras.callbacks.BackupAndRestore`` whose two files are replaced whole.

    Keras writes ``latest.weights.h5`` in place. A kill during that write leaves a truncated
    file, and when there is no earlier copy to fall back on (``double_checkpoint`` only has
    one from the second save on) the resumed run dies on it ("bad object header version
    number"). Here each file is written beside its target and renamed over it, so the backup
    always holds a whole epoch's state. A kill between the two renames leaves the new weights
    with the previous epoch number: that epoch runs again, as with Keras's own order.
    """

    def _save_model(self):
        tf.io.gfile.makedirs(self.backup_dir)
        partial = self._weights_path[: -len(".weights.h5")] + ".partial.weights.h5"
        self.model.save_weights(partial, overwrite=True)
        with tf.io.gfile.GFile(self._training_metadata_path + ".partial", "w") as f:
            f.write(json.dumps({"epoch": self._current_epoch, "batch": self._last_batch_seen}))
        tf.io.gfile.rename(partial, self._weights_path, overwrite=True)
        tf.io.gfile.rename(self._training_metadata_path + ".partial", self._training_metadata_path, overwrite=True)


def _write_splits(path: str, tracks: Sequence[Track], splits: Dict[str, List[int]]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["track_id", "split"])
        for name in SPLITS:
            for r in splits[name]:
                w.writerow([tracks[r].track_id, name])


def resolve_config(run_dir: str, prepared_dir: str, user: Optional[Config]) -> Config:
    """The run's config: an existing run's saved one (resume), else the user's, else the prepared one.

    On resume only ``train.epochs`` may change (to extend a finished or stopped run);
    any other difference is ignored with a warning, so a resumed run stays the run it was.
    """
    saved = os.path.join(run_dir, "config.json")
    if os.path.isfile(saved):
        cfg = Config.from_json(saved)
        if user is None:
            return cfg
        if user.train.epochs != cfg.train.epochs:
            log.info("resuming %s with train.epochs=%d (was %d)", run_dir, user.train.epochs, cfg.train.epochs)
            cfg = cfg.replace(**{"train.epochs": user.train.epochs})
            cfg.to_json(saved)
        same = user.replace(**{"frontend.norm_mean": cfg.frontend.norm_mean, "frontend.norm_std": cfg.frontend.norm_std})
        if same.hash() != cfg.hash():
            log.warning("%s already holds a run with another config; resuming it with its saved config "
                        "(use a new --out to train with the new one).", run_dir)
        return cfg
    if user is not None:
        return user
    prepared = os.path.join(prepared_dir, "config.json")
    return Config.from_json(prepared) if os.path.isfile(prepared) else Config()


def _history(run_dir: str) -> List[Dict[str, str]]:
    path = os.path.join(run_dir, "history.csv")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return list(csv.DictReader(f))


def elapsed_seconds(run_dir: str) -> float:
    """Training seconds a run has logged so far (``elapsed_s`` of its last history row; 0 if none)."""
    values = [float(r["elapsed_s"]) for r in _history(run_dir) if r.get("elapsed_s")]
    return values[-1] if values else 0.0


def completed_epochs(run_dir: str) -> int:
    """Epochs a run has finished, from its history.csv (0 for a new run)."""
    return len({r["epoch"] for r in _history(run_dir)})


def best_score(run_dir: str) -> Optional[float]:
    """The best validation mean triplet accuracy in a run's history.csv (None for a new run)."""
    scores = [float(r[MONITOR]) for r in _history(run_dir) if r.get(MONITOR)]
    return max(scores) if scores else None


def save_run_model(run_dir: str, config: Config, model) -> keras.Model:
    """Write the model files of a run directory: config.json, embedding.keras (waveform input) and masks.npy.

    Returns the waveform-input model. ``model`` is a TripletModel; these three files are all that evaluation and export read
    of the model, so a hand-made or untrained run (tests, benchmarks) uses this too.
    """
    from disentangled_ml.models.embedding import add_frontend

    os.makedirs(run_dir, exist_ok=True)
    config.to_json(os.path.join(run_dir, "config.json"))
    # The mask matrix [C + 1, D] (fixed slices, learned CSN masks or all ones): evaluation and
    # search need it for learned masks, whose sub-spaces are not contiguous slices.
    np.save(os.path.join(run_dir, "masks.npy"), keras.ops.convert_to_numpy(model.condition_masks.mask_matrix()))
    waveform_model = add_frontend(config, model.embedding_model)
    waveform_model.save(os.path.join(run_dir, "embedding.keras"))
    return waveform_model


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


def write_validation_projector(run_dir: str, embedding_model: keras.Model, tracks: Sequence[Track],
                               rows: Sequence[int], config: Config, segments_per_track: int = 4,
                               decoded: Optional[Dict[str, np.ndarray]] = None) -> str:
    """Projector run over validation segments: the whole embedding and every condition's view
    (its slice, its learned mask times the embedding, or nothing more without masks;
    :class:`~disentangled_ml.condition_views.ConditionViews` from the run's config and ``masks.npy``).

    ``decoded``: {track_id: waveform} already in memory (the validation triplets' audio),
    so those tracks are not decoded a second time.
    """
    from disentangled_ml.audio_io import AudioDecodeError, load_audio
    from disentangled_ml.condition_views import ConditionViews
    from disentangled_ml.projector import write_projector

    fe = config.frontend
    seg = fe.segment_samples
    crops, meta = [], []
    for r in rows:
        t = tracks[r]
        try:
            y = decoded[t.track_id] if decoded and t.track_id in decoded else load_audio(t.path, fe.sample_rate)
        except AudioDecodeError as e:
            log.warning("projector: %s", e)
            continue
        n = max(1, min(segments_per_track, y.size // seg))
        for k in range(n):
            c = y[k * seg:(k + 1) * seg]
            crops.append(np.pad(c, (0, seg - c.size)))
            meta.append({"track_id": t.track_id, "segment": k,
                         **{c_: "|".join(v) for c_, v in t.labels.items()},
                         "tempo": "" if t.tempo is None else f"{t.tempo:.1f}"})
    emb = embedding_model.predict(np.stack(crops), batch_size=64, verbose=0)
    emb = emb["embedding"] if isinstance(emb, dict) else emb
    out = os.path.join(run_dir, "tensorboard", "projector")
    write_projector(out, emb, ConditionViews.from_run_dir(run_dir, config), meta)
    return out


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

    config_path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(config_path):
        stats = estimate_norm_stats(tracks, splits["train"], config, seed=config.data.seed)
        config = config.replace(**{f"frontend.{k}": v for k, v in stats.items()})
        config.to_json(config_path)
        _write_splits(os.path.join(run_dir, "splits.csv"), tracks, splits)
    log.info("run %s: config %s, %d/%d/%d tracks (train/validation/test)", run_dir, config.hash(),
             *(len(splits[s]) for s in SPLITS))

    # Fixed evaluation triplets: written once, rebuilt identically from data.seed.
    triplets = {}
    for name in ("validation", "test"):
        path = os.path.join(run_dir, f"{name}_triplets.csv")
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


def schedule_callbacks(config: Config, verbose: int = 1) -> List[keras.callbacks.Callback]:
    """The learning-rate logger, the schedule's callbacks and early stopping on val_mean_acc.

    ``train.lr_schedule="plateau"`` (the paper's) divides the learning rate when the validation
    loss stalls; ``"cosine"`` is a schedule inside the optimizer
    (:func:`disentangled_ml.models.trainer.learning_rate`) and needs no callback.
    """
    plateau = [keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=config.train.lr_factor,
                                                 patience=config.train.lr_patience, verbose=verbose)] \
        if config.train.lr_schedule == "plateau" else []
    return [_LearningRateLogger()] + plateau + [
        keras.callbacks.EarlyStopping(monitor=MONITOR, mode="max", patience=config.train.early_stopping_patience,
                                      restore_best_weights=True, verbose=verbose),
    ]


def train(prepared_dir: str, run_dir: str, config: Optional[Config] = None, verbose: int = 1,
          data_service: Optional[str] = None, audio_dir: Optional[str] = None) -> Dict[str, object]:
    """Train (or resume) a run. Returns the summary written to ``run.json``.

    ``data_service``: ``grpc://HOST:PORT`` of a tf.data service dispatcher that runs the
    training pipeline (:mod:`disentangled_ml.data.service`). ``audio_dir``: audio shards
    (:func:`prepare_run`). With TF_CONFIG naming more than one worker, the run goes to
    :func:`disentangled_ml.distributed.train_distributed` (MultiWorkerMirroredStrategy).
    """
    from disentangled_ml.models.trainer import build_triplet_model
    from disentangled_ml import distributed

    if distributed.multi_worker_cluster() is not None:
        return distributed.train_distributed(prepared_dir, run_dir, config, verbose=verbose,
                                             data_service=data_service, audio_dir=audio_dir)
    data = prepare_run(prepared_dir, run_dir, config, audio_dir=audio_dir)
    config, tracks, splits = data.config, data.tracks, data.splits
    # Under the tf.data service the pipeline (and its counters) runs on the workers.
    decode_stats = None if data_service else DecodeStats()
    strategy = tf.distribute.MirroredStrategy() if len(tf.config.list_logical_devices("GPU")) > 1 \
        else tf.distribute.get_strategy()
    batch = config.train.batch_size * strategy.num_replicas_in_sync
    job_name = None
    if data_service:
        from disentangled_ml.data.service import job_name_for

        job_name = job_name_for(run_dir, config)
    train_ds, val_ds, val_steps = data.datasets(batch, decode_stats, data_service=data_service, job_name=job_name)

    # A run that finished (or stopped early) has no BackupAndRestore state left; rerunning it
    # continues from its last checkpoint when train.epochs was raised, and trains nothing otherwise.
    ckpt_dir = os.path.join(run_dir, "checkpoints")
    done = completed_epochs(run_dir)
    finished = done > 0 and not os.path.isdir(os.path.join(run_dir, "backup")) \
        and os.path.isfile(os.path.join(ckpt_dir, "last.keras"))
    with strategy.scope():
        model = keras.saving.load_model(os.path.join(ckpt_dir, "last.keras")) if finished \
            else build_triplet_model(config)
    initial_epoch = done if finished else 0
    if finished and done >= config.train.epochs:
        log.info("%s already trained %d of %d epochs; raise --epochs to continue it.", run_dir, done,
                 config.train.epochs)

    os.makedirs(ckpt_dir, exist_ok=True)

    lr_logger, *schedule = schedule_callbacks(config, verbose)
    # Order matters at each epoch end: loggers that add to the logs (learning rate, decode
    # counts) first, then the CSV/TensorBoard writers and checkpoints, the schedule, and the
    # BackupAndRestore state last. A kill between two of them then repeats at most one epoch's
    # history row instead of losing it; the backup's files are replaced whole, so a kill inside
    # the backup write itself leaves the previous epoch's.
    # With several GPUs the replicas' batch-norm statistics are averaged first, before anything
    # reads or saves them.
    callbacks = [distributed.AverageMovingStatistics(strategy), lr_logger,
                 _ElapsedTimeLogger(elapsed_seconds(run_dir))] + (
        [_DecodeStatsLogger(decode_stats)] if decode_stats is not None else []) + [
        keras.callbacks.CSVLogger(os.path.join(run_dir, "history.csv"), append=True),
        keras.callbacks.TensorBoard(os.path.join(run_dir, "tensorboard"), update_freq="epoch"),
        _AtomicCheckpoints(os.path.join(ckpt_dir, "last.keras"), os.path.join(run_dir, "best.keras"),
                           best=best_score(run_dir)),
    ] + schedule + [
        _AtomicBackupAndRestore(os.path.join(run_dir, "backup")),
    ]
    history = model.fit(train_ds, epochs=config.train.epochs, steps_per_epoch=config.train.steps_per_epoch,
                        validation_data=val_ds, validation_steps=val_steps, initial_epoch=initial_epoch,
                        callbacks=callbacks, verbose=verbose) if initial_epoch < config.train.epochs else None

    best_path = os.path.join(run_dir, "best.keras")
    if os.path.isfile(best_path):
        model = keras.saving.load_model(best_path)
    waveform_model = save_run_model(run_dir, config, model)
    projector_dir = write_validation_projector(run_dir, waveform_model, tracks, splits["validation"], config,
                                               decoded=data.val_audio)
    plot_history(os.path.join(run_dir, "history.csv"), os.path.join(run_dir, "training_curves.png"))

    summary = {
        "prepared_dir": os.path.abspath(prepared_dir),
        "config_hash": config.hash(),
        "epochs_this_call": len(history.history.get("loss", [])) if history is not None else 0,
        "epochs_total": completed_epochs(run_dir),
        "best_val_mean_acc": best_score(run_dir),
        "train_seconds": elapsed_seconds(run_dir),  # wall time of the epochs, validation included
        "decode": decode_stats.as_dict() if decode_stats is not None else None,  # None: counted on service workers
        "tensorboard": os.path.join(run_dir, "tensorboard"),
        "projector": projector_dir,
    }
    with open(os.path.join(run_dir, "run.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary
