"""A training run directory: the one place that knows where ``dml train`` puts each file.

``dml train PREPARED_DIR --out RUN_DIR`` writes (docs/design.md, "Data flow")::

    RUN_DIR/
      config.json                 the Config of the run (mel statistics filled in)
      splits.csv                  track_id,split: train | validation | test
      validation_triplets.csv     fixed evaluation triplets (rebuilt from data.seed)
      test_triplets.csv
      backup/                     BackupAndRestore state: a killed run resumes here
      checkpoints/last.keras      the TripletModel after every epoch
      checkpoints/distributed/    the multi-worker loop's resume state (instead of backup/)
      best.keras                  the TripletModel with the best validation mean accuracy
      history.csv                 one row per epoch (the Keras CSVLogger)
      tensorboard/                scalars (train/, validation/) and projector/
    and when the run ends:
      masks.npy                   the condition mask matrix, float32 [conditions + 1, embedding_dim]
      embedding.keras             waveform -> {"embedding"} model of the best weights
      training_curves.png
      run.json                    prepared_dir, decode statistics, epochs, best score
    and later, dml evaluate:
      <split>_confounded_triplets.csv   the confounded triplets (built once, then reused)
      eval_<split>[_<model>]/           the report (metrics.json, plots)

Training, evaluation, export, tuning (``TUNE_DIR/data`` is a run directory shared by the
trials) and the multi-worker loop (a non-chief worker's scratch folder has the same layout)
take every path and the shared readers from :class:`RunDirectory`; the file names have not
changed since the first release, so runs saved by earlier versions load as they did.

It imports only numpy, :mod:`disentangled_ml.config` and :mod:`disentangled_ml.errors`: no
TensorFlow, so the CLI can check a directory before anything heavy loads.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional

import numpy as np

from disentangled_ml.config import Config
from disentangled_ml.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["RunDirectory", "RunDirectoryError", "MASKS_FILE", "SPLITS_COLUMNS"]

#: The mask matrix file of a run directory: float32 ``[conditions (+ 1 track row), embedding_dim]``.
MASKS_FILE = "masks.npy"
#: The header of ``splits.csv``.
SPLITS_COLUMNS = ("track_id", "split")
#: What makes a folder a prepared collection (``dml prepare``): its manifest.
_PREPARED_MANIFEST = "manifest.csv"


class RunDirectoryError(ConfigError):
    """A path is not a training run directory, or lacks a file; the message names it and what to do.

    A :class:`~disentangled_ml.config.ConfigError`, so callers that already turn an unreadable
    run config into their own error (evaluation, export) catch this too.
    """


@dataclass(frozen=True)
class RunDirectory:
    """The files of one training run directory (module notes), and the readers several stages share.

    Paths are joined onto :attr:`path` as given (not made absolute), so they read as the user
    typed them in messages and in ``run.json``. Nothing is checked or created on construction.

    Attributes:
        path: the run directory (``dml train --out``); any ``os.PathLike`` is accepted.
    """

    path: str

    def __post_init__(self) -> None:
        # str, so that the joined paths are str too (tests pass pathlib paths), and a RunDirectory
        # itself is accepted (it is os.PathLike).
        object.__setattr__(self, "path", os.fspath(self.path))

    def __fspath__(self) -> str:
        return self.path

    def _file(self, *parts: str) -> str:
        return os.path.join(self.path, *parts)

    # ------------------------------------------------------------------ written when a run starts

    @property
    def config_path(self) -> str:
        """``config.json``: the run's :class:`~disentangled_ml.config.Config`, mel statistics and class counts
        filled in; a resumed run keeps it (only ``train.epochs`` may change)."""
        return self._file("config.json")

    @property
    def splits_path(self) -> str:
        """``splits.csv``: one row per track, columns ``track_id,split`` (``train``, ``validation`` or ``test``)."""
        return self._file("splits.csv")

    def eval_triplets_path(self, split: str) -> str:
        """``<split>_triplets.csv``: the fixed evaluation triplets of ``validation`` or ``test``
        (:func:`~disentangled_ml.data.eval_triplets.read_eval_triplets` reads them)."""
        return self._file(f"{split}_triplets.csv")

    # ------------------------------------------------------------------ written during training

    @property
    def checkpoints_dir(self) -> str:
        """``checkpoints/``: :attr:`last_checkpoint_path` and :attr:`distributed_checkpoints_dir`."""
        return self._file("checkpoints")

    @property
    def last_checkpoint_path(self) -> str:
        """``checkpoints/last.keras``: the TripletModel after the last complete epoch (mel input)."""
        return self._file("checkpoints", "last.keras")

    @property
    def distributed_checkpoints_dir(self) -> str:
        """``checkpoints/distributed/``: the multi-worker loop's ``tf.train`` checkpoints (its resume state)."""
        return self._file("checkpoints", "distributed")

    @property
    def backup_dir(self) -> str:
        """``backup/``: Keras's BackupAndRestore state on one machine; gone once the run has finished."""
        return self._file("backup")

    @property
    def best_model_path(self) -> str:
        """``best.keras``: the TripletModel (mel input, masks inside) of the best ``val_mean_acc`` so far."""
        return self._file("best.keras")

    @property
    def history_path(self) -> str:
        """``history.csv``: one row per epoch, the logs of every epoch (an interrupted epoch may repeat)."""
        return self._file("history.csv")

    @property
    def tensorboard_dir(self) -> str:
        """``tensorboard/``: TensorBoard's ``train/`` and ``validation/`` scalars, and :attr:`projector_dir`."""
        return self._file("tensorboard")

    @property
    def projector_dir(self) -> str:
        """``tensorboard/projector/``: the validation segments' embeddings, one tensor per condition view."""
        return self._file("tensorboard", "projector")

    # ------------------------------------------------------------------ written when a run ends

    @property
    def embedding_model_path(self) -> str:
        """``embedding.keras``: the best weights as ``waveform float32 [B, segment_samples] -> {"embedding": [B, D]}``."""
        return self._file("embedding.keras")

    @property
    def masks_path(self) -> str:
        """``masks.npy``: the condition mask matrix, float32 ``[C + 1, D]`` (the last row is the ``track``
        row): fixed slices, learned CSN masks or all ones. Learned masks are not contiguous slices, so
        evaluation, export and the projector need this file to cut the condition sub-spaces."""
        return self._file(MASKS_FILE)

    @property
    def curves_path(self) -> str:
        """``training_curves.png``: loss and per-condition triplet accuracy over the epochs of ``history.csv``."""
        return self._file("training_curves.png")

    @property
    def run_json_path(self) -> str:
        """``run.json``: the run's summary (``prepared_dir``, ``config_hash``, epochs, best score, decode
        statistics, the TensorBoard folders), rewritten whenever a call of ``dml train`` ends."""
        return self._file("run.json")

    # ------------------------------------------------------------------ written by dml evaluate

    def confounded_triplets_path(self, split: str) -> str:
        """``<split>_confounded_triplets.csv``: the confounded triplets of ``split``, next to the random set
        (:mod:`disentangled_ml.data.confounded_triplets`): built by the first ``dml evaluate``, reused after."""
        return self._file(f"{split}_confounded_triplets.csv")

    def eval_dir(self, split: str, model_path: Optional[str] = None) -> str:
        """``eval_<split>/``: ``dml evaluate``'s report on ``split`` for the run's :attr:`embedding_model_path`.

        Another model (``model_path``: a ``.keras`` file or an export directory) gets
        ``eval_<split>_<its name without .keras>/``, so the run's own report is not overwritten.
        """
        if model_path is None or model_path == self.embedding_model_path:
            return self._file(f"eval_{split}")
        return self._file(f"eval_{split}_" + os.path.basename(os.path.normpath(model_path)).replace(".keras", ""))

    # ------------------------------------------------------------------ checks

    def exists(self) -> bool:
        """True when :attr:`path` holds ``config.json``, the file a run directory has from its first moment."""
        return os.path.isfile(self.config_path)

    def check(self) -> "RunDirectory":
        """This run directory, or :class:`RunDirectoryError` saying why :attr:`path` is not one."""
        if not os.path.isdir(self.path):
            raise RunDirectoryError(f"run directory {self.path} does not exist; give the --out folder of dml train.")
        if not self.exists():
            raise RunDirectoryError(f"{self.path} is not a training run directory (dml train): it holds no "
                                    f"config.json; give the --out folder of dml train.")
        return self

    def _missing(self, path: str, why: str) -> RunDirectoryError:
        return RunDirectoryError(f"{path} does not exist; {why}")

    # ------------------------------------------------------------------ readers and writers

    def read_config(self) -> Config:
        """The run's config (``config.json``), read as every stage reads configs (:meth:`Config.from_json`).

        Raises:
            RunDirectoryError: :attr:`path` is not a run directory (:meth:`check`).
            ConfigError: an unreadable or invalid ``config.json``.
        """
        self.check()
        return Config.from_json(self.config_path)

    def read_splits(self) -> Dict[str, str]:
        """``splits.csv`` as ``{track_id: split}``, in file order.

        Raises:
            RunDirectoryError: no ``splits.csv``, or one without the columns ``track_id,split``.
        """
        path = self.splits_path
        if not os.path.isfile(path):
            raise self._missing(path, f"is {self.path} a training run directory (dml train)?")
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not set(SPLITS_COLUMNS) <= set(reader.fieldnames):
                raise RunDirectoryError(f"{path} must have columns {','.join(SPLITS_COLUMNS)} "
                                        f"(has {reader.fieldnames}).")
            return {row["track_id"]: row["split"] for row in reader if row["track_id"]}

    def write_splits(self, splits: Mapping[str, str]) -> None:
        """Write ``{track_id: split}`` as ``splits.csv``, in the mapping's order (:meth:`read_splits` reads it)."""
        with open(self.splits_path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(SPLITS_COLUMNS)
            w.writerows(splits.items())

    def read_masks(self) -> np.ndarray:
        """``masks.npy`` as float32 ``[C + 1, D]`` (or ``[C, D]``, as a hand-made run may save it).

        The shape is checked by the reader that knows the run's conditions
        (:class:`~disentangled_ml.condition_views.ConditionViews`, the export).

        Raises:
            RunDirectoryError: no ``masks.npy``.
        """
        path = self.masks_path
        if not os.path.isfile(path):
            raise self._missing(path, "a run with learned masks needs its mask matrix, which dml train writes "
                                      "when the run ends.")
        return np.load(path).astype(np.float32)

    def read_run_json(self) -> Dict[str, Any]:
        """``run.json``, the summary of the last call of ``dml train`` (:attr:`run_json_path`).

        Raises:
            RunDirectoryError: no ``run.json`` (the run has not finished), or not a JSON object.
        """
        path = self.run_json_path
        if not os.path.isfile(path):
            raise self._missing(path, "dml train writes it when a run ends.")
        try:
            with open(path) as f:
                summary = json.load(f)
        except json.JSONDecodeError as e:
            raise RunDirectoryError(f"{path} is not a JSON object ({e}).") from None
        if not isinstance(summary, dict):
            raise RunDirectoryError(f"{path} is not a JSON object (it holds a {type(summary).__name__}).")
        return summary

    def write_run_json(self, summary: Mapping[str, Any]) -> None:
        """Write the run's summary as ``run.json`` (:meth:`read_run_json` reads it)."""
        with open(self.run_json_path, "w") as f:
            json.dump(summary, f, indent=2)

    def prepared_dir(self, explicit: Optional[str] = None, *, required: bool = True) -> Optional[str]:
        """The prepared collection (``dml prepare``'s folder) the run trained on.

        ``explicit`` (a ``--prepared`` argument) when given, else the ``prepared_dir`` that
        ``run.json`` records (a relative one is read against the run directory first, then
        against the working directory).

        Args:
            explicit: the user's choice; it must hold ``manifest.csv``.
            required: False (``dml export``, which falls back on synthetic audio): return None
                when ``run.json`` records no collection, and log a warning and return None when
                the recorded one is gone.

        Raises:
            RunDirectoryError: ``explicit`` holds no ``manifest.csv``; or, when ``required``, no
                ``run.json``, one that records no ``prepared_dir``, or a recorded collection that is
                not there. Each message ends with what to do: pass ``--prepared PREPARED_DIR``.
        """
        if explicit:
            if not os.path.isfile(os.path.join(explicit, _PREPARED_MANIFEST)):
                raise RunDirectoryError(f"--prepared {explicit} holds no {_PREPARED_MANIFEST} (the folder dml "
                                        "prepare wrote).")
            return explicit
        run_json = self.run_json_path
        try:
            recorded = self.read_run_json().get("prepared_dir")
        except RunDirectoryError as e:
            if not required:
                return None
            if not os.path.isfile(run_json):
                raise RunDirectoryError(f"no --prepared given and {run_json} does not exist; pass --prepared "
                                        "PREPARED_DIR (the folder dml prepare wrote).") from None
            raise RunDirectoryError(f"{e} Pass --prepared PREPARED_DIR.") from None
        if not recorded:
            if not required:
                return None
            raise RunDirectoryError(f"{run_json} records no prepared_dir; pass --prepared PREPARED_DIR.")
        prepared = str(recorded)
        if not os.path.isabs(prepared):
            # finish_run records an absolute path; a hand-written run.json may give one relative to the run
            candidates = [self._file(prepared), prepared]
            prepared = next((c for c in candidates if os.path.isfile(os.path.join(c, _PREPARED_MANIFEST))),
                            candidates[0])
        if os.path.isfile(os.path.join(prepared, _PREPARED_MANIFEST)):
            return prepared
        if not required:
            log.warning("the prepared collection %s recorded in %s is not there; pass --prepared PREPARED_DIR to "
                        "use its audio.", prepared, run_json)
            return None
        raise RunDirectoryError(f"the prepared collection {prepared} recorded in {run_json} does not exist (or holds "
                                f"no {_PREPARED_MANIFEST}); pass --prepared PREPARED_DIR.")
