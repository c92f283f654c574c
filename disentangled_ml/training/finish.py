"""The end of a training run: the model files, the validation projector, the curves and ``run.json``.

:func:`finish_run` is the one epilogue of both training paths (the multi-worker chief
runs it; the other workers write nothing to the run directory).
"""

from __future__ import annotations

import logging
import os
from typing import Dict, Optional, Sequence

import keras
import numpy as np

from disentangled_ml.config import Config
from disentangled_ml.data.manifest import Track
from disentangled_ml.data.pipeline import DecodeStats
from disentangled_ml.run_directory import RunDirectory
from disentangled_ml.training.history import best_score, completed_epochs, elapsed_seconds, plot_history
from disentangled_ml.training.run_setup import RunData

log = logging.getLogger(__name__)


def save_run_model(run_dir: str, config: Config, model) -> keras.Model:
    """Write the model files of a run directory: config.json, embedding.keras (waveform input) and masks.npy.

    Returns the waveform-input model. ``model`` is a TripletModel; these three files are all that evaluation and export read
    of the model, so a hand-made or untrained run (tests, benchmarks) uses this too.
    """
    from disentangled_ml.models.embedding import add_frontend

    run = RunDirectory(run_dir)
    os.makedirs(run.path, exist_ok=True)
    config.to_json(run.config_path)
    # The mask matrix [C + 1, D] (fixed slices, learned CSN masks or all ones): evaluation and
    # search need it for learned masks, whose sub-spaces are not contiguous slices.
    np.save(run.masks_path, keras.ops.convert_to_numpy(model.condition_masks.mask_matrix()))
    waveform_model = add_frontend(config, model.embedding_model)
    waveform_model.save(run.embedding_model_path)
    return waveform_model


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
    run = RunDirectory(run_dir)
    write_projector(run.projector_dir, emb, ConditionViews.from_run_dir(run, config), meta)
    return run.projector_dir



def finish_run(prepared_dir: str, run_dir: str, data: RunData, model: keras.Model, epochs_this_call: int,
               decode_stats: Optional[DecodeStats] = None, extra: Optional[Dict[str, object]] = None
               ) -> Dict[str, object]:
    """Write the run's model files from its best checkpoint, the projector, the curves and ``run.json``.

    Args:
        prepared_dir: the prepared collection the run trained on (recorded in run.json).
        run_dir: the run directory.
        data: the run's :class:`RunData` (config, tracks, splits, decoded validation audio).
        model: the trained TripletModel, used when no ``best.keras`` was written (no
            epoch had a validation score).
        epochs_this_call: epochs trained by this call (0 when a finished run is rerun).
        decode_stats: the local input pipeline's counters (None under the tf.data service).
        extra: more summary entries (the multi-worker loop's replica and worker counts).
    Returns:
        the summary, as written to ``RUN_DIR/run.json``.
    """
    config = data.config
    run = RunDirectory(run_dir)
    if os.path.isfile(run.best_model_path):
        model = keras.saving.load_model(run.best_model_path)
    waveform_model = save_run_model(run_dir, config, model)
    projector_dir = write_validation_projector(run_dir, waveform_model, data.tracks, data.splits["validation"], config,
                                               decoded=data.val_audio)
    plot_history(run.history_path, run.curves_path)
    summary: Dict[str, object] = {
        "prepared_dir": os.path.abspath(prepared_dir),
        "config_hash": config.hash(),
        "epochs_this_call": epochs_this_call,
        "epochs_total": completed_epochs(run_dir),  # an interrupted epoch's repeated row counts once
        "best_val_mean_acc": best_score(run_dir),
        "train_seconds": elapsed_seconds(run_dir),  # wall time of the epochs, validation included
        "decode": decode_stats.as_dict() if decode_stats is not None else None,  # None: counted on service workers
        "tensorboard": run.tensorboard_dir,
        "projector": projector_dir,
        **(extra or {}),
    }
    run.write_run_json(summary)
    return summary
