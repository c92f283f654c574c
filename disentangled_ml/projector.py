"""TensorBoard embedding-projector files for each condition's sub-space.

The sub-spaces are :class:`~disentangled_ml.condition_views.ConditionViews`': a
fixed slice, a learned mask over the whole vector, or (no masks) the whole vector alone.

Keras 3's ``TensorBoard(embeddings_freq=...)`` writes ``.weights.h5`` files that the
projector cannot read and only knows ``Embedding`` layers (keras#20210), so the
files are written here directly: a TF checkpoint holding only the embedding
variables, a metadata TSV, and ``projector_config.pbtxt`` through
``tensorboard.plugins.projector``.

TensorBoard's projector plugin looks for ``projector_config.pbtxt`` only in its runs
(and in the ``--logdir`` itself), and a run is a folder holding an event file. So the
projector folder also gets an event file with no summaries in it: without one,
``tensorboard --logdir RUN_DIR/tensorboard`` lists only ``train`` and ``validation``
and the projector finds no checkpoint (checked with tensorboard 2.16.2, with and
without ``--load_fast``; ``tests/test_projector_tensorboard.py``).
"""

from __future__ import annotations

import os
from typing import Dict, List, Mapping, Sequence, Union

import numpy as np
import tensorflow as tf
from tensorboard.plugins import projector

from disentangled_ml.condition_views import ConditionViews

METADATA = "metadata.tsv"
CHECKPOINT = "embeddings.ckpt"
EVENTS_PREFIX = "events.out.tfevents"


def _mark_as_run(log_dir: str) -> None:
    """Make ``log_dir`` a TensorBoard run: an event file (only its file-version record) unless one is there."""
    if any(name.startswith(EVENTS_PREFIX) for name in tf.io.gfile.listdir(log_dir)):
        return
    writer = tf.summary.create_file_writer(log_dir)
    writer.flush()
    writer.close()


def _tsv_cell(value: object) -> str:
    return str(value if value is not None else "").replace("\t", " ").replace("\n", " ")


def write_projector(log_dir: str, embeddings: np.ndarray,
                    views: Union[ConditionViews, Mapping[str, Sequence[int]]],
                    metadata: Sequence[Mapping[str, object]]) -> Dict[str, str]:
    """Write one projector tensor for the whole embedding and one per condition view.

    The condition tensors are ``views``' (:meth:`ConditionViews.apply`): each fixed
    slice ``[N, stop - start]``; with learned masks the masked whole vector
    ``embeddings * mask`` ``[N, D]``; without masks (``mask_mode="none"``) none at
    all, since every condition is the whole embedding, which is shown once.

    ``log_dir`` becomes a TensorBoard run of its own (see the module's docstring), so
    ``tensorboard --logdir`` of it or of any folder above it shows the projector.

    Args:
        log_dir: the projector's folder, e.g. ``RUN_DIR/tensorboard/projector``.
        embeddings: float32 [N, D].
        views: the run's :class:`~disentangled_ml.condition_views.ConditionViews`
            (e.g. ``ConditionViews.from_run_dir(run_dir, config)``), or
            ``{condition: (start, stop)}`` fixed slices.
        metadata: N dicts (e.g. track_id, genre, mood, instrument, tempo); the keys of
            the first row are the TSV columns.
    Returns:
        {tensor name: checkpoint key} of the written tensors: ``"whole"``, then the conditions.
    """
    embeddings = np.asarray(embeddings, np.float32)
    if not isinstance(views, ConditionViews):
        views = ConditionViews.from_slices(views, embeddings.shape[1])
    if views.embedding_dim != embeddings.shape[1]:
        raise ValueError(f"projector: {embeddings.shape[1]}-d embeddings but views of a {views.embedding_dim}-d one.")
    if len(metadata) != embeddings.shape[0]:
        raise ValueError(f"projector: {embeddings.shape[0]} embeddings but {len(metadata)} metadata rows.")
    os.makedirs(log_dir, exist_ok=True)
    columns: List[str] = list(metadata[0].keys()) if metadata else ["index"]
    with open(os.path.join(log_dir, METADATA), "w", encoding="utf-8") as f:
        f.write("\t".join(columns) + "\n")
        for row in metadata:
            f.write("\t".join(_tsv_cell(row.get(c)) for c in columns) + "\n")

    tensors = {"whole": embeddings}
    if views.mode != "none":
        for name in views.names:
            tensors[name] = views.apply(embeddings, name)
    variables = {name: tf.Variable(value, name=name, trainable=False) for name, value in tensors.items()}
    tf.train.Checkpoint(**variables).save(os.path.join(log_dir, CHECKPOINT))

    config = projector.ProjectorConfig()
    keys = {}
    for name in tensors:
        emb = config.embeddings.add()
        emb.tensor_name = f"{name}/.ATTRIBUTES/VARIABLE_VALUE"
        emb.metadata_path = METADATA
        keys[name] = emb.tensor_name
    projector.visualize_embeddings(log_dir, config)
    _mark_as_run(log_dir)
    return keys
