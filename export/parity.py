"""Parity of every export variant with the Keras model it came from.

For each variant (the SavedModel's two signatures and each ``.tflite`` file) on
the same waveform segments:

* ``max_abs_diff``: the largest absolute difference to Keras over every output
  (``embedding`` and each condition output);
* ``min_cosine``: the smallest cosine similarity of the ``embedding`` rows;
* triplet accuracy per condition on the run's fixed test triplets, in each
  condition's sub-space (its slice, its learned mask, or the whole embedding),
  next to the Keras model's.

The float32 variants (``saved_model``, ``saved_model_log_mel``, ``float32``)
must match Keras within :data:`FLOAT_TOLERANCE`; :func:`check_parity` raises
otherwise. The quantised variants are reported, not enforced.
"""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from disentangled_ml.condition_views import ConditionViews
from disentangled_ml.config import TRACK_CONDITION, Config

log = logging.getLogger(__name__)

__all__ = ["FLOAT_TOLERANCE", "ENFORCED", "ParityError", "audio_like_segments", "split_segments", "compare",
           "condition_views", "triplet_accuracies", "output_parity", "first_per_condition", "check_parity"]

#: Largest absolute difference a float32 variant may show against Keras (any output).
FLOAT_TOLERANCE = 1e-4
#: Variants whose parity is enforced.
ENFORCED: Tuple[str, ...] = ("saved_model", "saved_model_log_mel", "float32")


class ParityError(RuntimeError):
    """A float32 variant of the export does not reproduce the Keras model."""


def audio_like_segments(n: int, segment_samples: int, sample_rate: int, seed: int = 0) -> np.ndarray:
    """Random signals with music-like spectra, for parity when no audio collection is at hand.

    Each segment mixes a few harmonic tones (random fundamentals 55-880 Hz, 1/k
    partials), an amplitude envelope with onsets, and coloured noise, scaled to a
    random peak in [0.1, 0.9].

    Returns:
        float32 ``[n, segment_samples]`` in [-1, 1].
    """
    rng = np.random.default_rng(seed)
    t = np.arange(segment_samples) / float(sample_rate)
    out = np.zeros((n, segment_samples), np.float32)
    nyquist = sample_rate / 2
    for i in range(n):
        y = np.zeros(segment_samples)
        for _ in range(rng.integers(1, 4)):
            f0 = 55.0 * 2 ** rng.uniform(0, 4)
            for k in range(1, 8):
                if k * f0 < nyquist:
                    y += np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 2 * np.pi)) / k
        rate = rng.uniform(1, 6)  # onsets per second
        env = np.exp(-((t * rate) % 1.0) * rng.uniform(2, 10))
        noise = np.cumsum(rng.standard_normal(segment_samples)) * 0.01  # brown-ish noise
        noise -= np.convolve(noise, np.ones(64) / 64, mode="same")  # without the DC drift
        y = y * env + noise * rng.uniform(0, 2)
        out[i] = (y / (np.abs(y).max() + 1e-9) * rng.uniform(0.1, 0.9)).astype(np.float32)
    return out


def split_segments(tracks: Sequence[Any], track_ids: Sequence[str], n: int, segment_samples: int,
                   sample_rate: int, seed: int = 0, max_tracks: Optional[int] = None) -> Tuple[np.ndarray, int]:
    """Up to ``n`` random segments from the given tracks, spread over as many tracks as possible.

    Args:
        tracks: :class:`~disentangled_ml.data.manifest.Track` list (a prepared manifest).
        track_ids: the tracks to draw from (e.g. a split's).
        n: segments wanted.
        segment_samples, sample_rate: the crop length and decode rate.
        seed: seeds the track order and crop starts.
        max_tracks: decode at most this many tracks (default ``n``).

    Returns:
        ``(segments float32 [m, segment_samples], tracks_used)`` with ``m <= n``;
        undecodable tracks are skipped with a warning, tracks shorter than a segment
        are zero-padded.
    """
    from disentangled_ml.audio_io import AudioDecodeError, load_audio

    by_id = {t.track_id: t for t in tracks}
    ids = [i for i in track_ids if i in by_id]
    rng = np.random.default_rng(seed)
    order = [ids[i] for i in rng.permutation(len(ids))][: (max_tracks or n)]
    waves = []
    for tid in order:
        try:
            waves.append(load_audio(by_id[tid].path, sample_rate))
        except AudioDecodeError as e:
            log.warning("parity/calibration segments: %s", e)
    if not waves:
        return np.zeros((0, segment_samples), np.float32), 0
    out = np.zeros((n, segment_samples), np.float32)
    for i in range(n):
        y = waves[i % len(waves)]
        start = int(rng.integers(0, max(1, y.size - segment_samples + 1)))
        crop = y[start:start + segment_samples]
        out[i, :crop.size] = crop
    return out, len(waves)


def compare(reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray]) -> Dict[str, Any]:
    """Differences of one variant's outputs to the reference outputs.

    Returns:
        ``{"max_abs_diff": float, "min_cosine": float, "max_abs_diff_per_output": {name: float},
        "finite": bool}``; a missing output or a NaN makes ``max_abs_diff`` infinite.
    """
    per = {}
    finite = True
    for name, ref in reference.items():
        if name not in candidate:
            per[name] = float("inf")
            continue
        cand = np.asarray(candidate[name], np.float64)
        if cand.shape != ref.shape:
            per[name] = float("inf")
            continue
        finite &= bool(np.isfinite(cand).all())
        per[name] = float(np.abs(cand - ref).max()) if np.isfinite(cand).all() else float("inf")
    ref, cand = np.asarray(reference["embedding"], np.float64), np.asarray(candidate.get("embedding"), np.float64)
    if cand.shape == ref.shape and np.isfinite(cand).all():
        cos = np.sum(ref * cand, axis=1) / np.maximum(np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1),
                                                      1e-12)
        min_cos = float(cos.min())
    else:
        min_cos = float("nan")
    return {"max_abs_diff": max(per.values()), "min_cosine": min_cos, "max_abs_diff_per_output": per,
            "finite": finite}


def condition_views(config: Config, masks: np.ndarray) -> Dict[str, Any]:
    """``{condition: view}`` for :func:`disentangled_ml.evaluation.metrics.triplet_accuracy`:
    the slice (fixed), the mask row (learned) or None (no masks), from
    :class:`~disentangled_ml.condition_views.ConditionViews`; and None for ``track``
    (track triplets are scored on the whole embedding)."""
    return {**ConditionViews.from_config(config, masks).metric_views(), TRACK_CONDITION: None}


def triplet_accuracies(triplets: Sequence[Mapping[str, Any]], audio: Mapping[str, np.ndarray], config: Config,
                       masks: np.ndarray, embedders: Mapping[str, Callable[[np.ndarray], np.ndarray]],
                       batch_size: int = 64) -> Dict[str, Any]:
    """Triplet accuracy per condition (in its sub-space) for several embedders on the same crops.

    Each distinct crop (same track, same start) is embedded once per embedder, however
    many triplets use it, and every triplet is scored from those embeddings: the same
    figures as embedding each triplet's three crops, for fewer forward passes.

    Args:
        triplets: rows of ``RUN_DIR/test_triplets.csv``
            (:func:`disentangled_ml.data.eval_triplets.read_eval_triplets`).
        audio: ``{track_id: float32 waveform}`` for every track the triplets use.
        config: the run's config.
        masks: the condition mask matrix ``[C + 1, D]``.
        embedders: ``{variant: f(waveforms [b, samples]) -> embeddings [b, D]}``.
        batch_size: crops per batch.

    Returns:
        ``{"n_triplets": {condition: n}, "crops": {"in_triplets": 3 x triplets, "distinct": n},
        "seconds": {variant: embedding wall time}, "accuracy": {variant: {condition: float}}}``.
        The ``.tflite`` variants (:class:`~disentangled_ml.export.tflite.TFLiteEmbedder`) run side
        by side, one a core, so their seconds overlap.
    """
    from disentangled_ml.data.eval_triplets import ROLES, distinct_segments, iter_segment_crops
    from disentangled_ml.evaluation.metrics import triplet_accuracy
    from disentangled_ml.export.tflite import TFLiteEmbedder

    views = condition_views(config, masks)
    segments, index = distinct_segments(triplets)
    parts: Dict[str, List[np.ndarray]] = {v: [] for v in embedders}
    seconds = {v: 0.0 for v in embedders}
    # LiteRT interpreters run side by side, one Python thread each (LiteRT releases the GIL while
    # it computes; each interpreter is used by one thread only); TensorFlow's embedders, which
    # already use every core, run alone before them.
    side_by_side = [v for v, f in embedders.items() if isinstance(f, TFLiteEmbedder)]
    alone = [v for v in embedders if v not in side_by_side]

    def run(v: str, crops: np.ndarray) -> None:
        started = time.perf_counter()
        parts[v].append(np.asarray(embedders[v](crops), np.float32))
        seconds[v] += time.perf_counter() - started

    # chunks of several batches: enough work per thread, a bounded amount of audio in memory
    chunk = max(1, 4 * batch_size)
    with ThreadPoolExecutor(max_workers=max(1, min(len(side_by_side), os.cpu_count() or 1))) as pool:
        for crops in iter_segment_crops(segments, audio, config, chunk):
            for v in alone:
                run(v, crops)
            for future in [pool.submit(run, v, crops) for v in side_by_side]:
                future.result()
    condition = np.array([str(t["condition"]) for t in triplets])
    names = [c for c in list(config.conditions.names) + [TRACK_CONDITION] if c in set(condition)]
    result: Dict[str, Any] = {"n_triplets": {c: int((condition == c).sum()) for c in names},
                              "crops": {"in_triplets": len(ROLES) * len(triplets), "distinct": len(segments)},
                              "seconds": {v: round(t, 3) for v, t in seconds.items()}, "accuracy": {}}
    for v in embedders:
        if not parts[v]:
            result["accuracy"][v] = {}
            continue
        emb = np.concatenate(parts[v])
        a, p, n = (emb[index[r]] for r in ROLES)
        result["accuracy"][v] = {c: triplet_accuracy(a[condition == c], p[condition == c], n[condition == c],
                                                     dims=views[c]) for c in names}
    return result


def output_parity(run: Any, heads: Mapping[str, Mapping[str, Any]], saved_model_dir: str, out_dir: str,
                  variants: Sequence[Any], segments: np.ndarray, batch_size: int = 64
                  ) -> Tuple[Dict[str, Any], Dict[str, Callable[[np.ndarray], np.ndarray]]]:
    """Every variant's outputs against the Keras model's on the same waveform segments.

    Args:
        run: the :class:`~disentangled_ml.export.savedmodel.LoadedRun` the export came from.
        heads: its condition outputs (:func:`~disentangled_ml.export.savedmodel.condition_heads`).
        saved_model_dir: the export's SavedModel (both signatures are compared).
        out_dir: the export directory holding each variant's ``.tflite`` file.
        variants: the :class:`~disentangled_ml.export.tflite.TFLiteVariant` s written.
        segments: float32 ``[n, segment_samples]``.
        batch_size: segments per call.

    Returns:
        ``(report, embedders)``: ``{variant: {"file", ["signature"], **compare(...)}}`` for
        ``saved_model``, ``saved_model_log_mel`` and each ``.tflite`` file; and
        ``{"keras", "saved_model", <variant>...: f(waveforms [b, samples]) -> embeddings [b, D]}``
        for the triplet scoring (:func:`triplet_accuracies`).
    """
    import tensorflow as tf

    from disentangled_ml.export import savedmodel as sm
    from disentangled_ml.export import tflite as tfl
    from disentangled_ml.features import log_mel

    fe = run.config.frontend
    wf = run.waveform_model

    def keras_embed(x):
        return np.concatenate([np.asarray(wf.predict_on_batch(x[i:i + batch_size])[sm.EMBEDDING_OUTPUT])
                               for i in range(0, len(x), batch_size)])

    ref = {k: np.asarray(v, np.float64) for k, v in sm.apply_heads(keras_embed(segments), heads).items()}
    loaded = tf.saved_model.load(saved_model_dir)
    serve, from_mel = loaded.signatures[sm.SERVING_SIGNATURE], loaded.signatures[sm.MEL_SIGNATURE]

    def saved_model_all(x, fn=serve, key=sm.AUDIO_INPUT):
        parts = [fn(**{key: tf.constant(x[i:i + batch_size])}) for i in range(0, len(x), batch_size)]
        return {k: np.concatenate([p[k].numpy() for p in parts]) for k in parts[0]}

    mel = log_mel(segments, fe).numpy()
    ref_mel = {k: np.asarray(v, np.float64) for k, v in sm.apply_heads(np.concatenate(
        [np.asarray(run.mel_model.predict_on_batch(mel[i:i + batch_size])[sm.EMBEDDING_OUTPUT])
         for i in range(0, len(mel), batch_size)]), heads).items()}
    report: Dict[str, Any] = {
        "saved_model": {"file": "saved_model", "signature": sm.SERVING_SIGNATURE, **compare(ref, saved_model_all(segments))},
        "saved_model_log_mel": {"file": "saved_model", "signature": sm.MEL_SIGNATURE,
                                **compare(ref_mel, saved_model_all(mel, from_mel, sm.MEL_INPUT))},
    }
    tfl_embedders = {}
    for v in variants:
        emb = tfl.TFLiteEmbedder(os.path.join(out_dir, v.filename), batch_size=batch_size, outputs="all")
        report[v.name] = {"file": v.filename, **compare(ref, emb.run(segments))}
        # One LiteRT thread each: triplet_accuracies runs the variants side by side, one a core,
        # which scored 4 variants 1.5-1.8 times faster than one after the other with every core
        # each (benchmarks/export_scoring.py; much of the frontend, the FFTs, runs on one thread
        # anyway). Outputs do not depend on the thread count (measured).
        tfl_embedders[v.name] = tfl.TFLiteEmbedder(os.path.join(out_dir, v.filename), batch_size=batch_size,
                                                   num_threads=1)
    embedders = {"keras": keras_embed,
                 "saved_model": lambda x: saved_model_all(x)[sm.EMBEDDING_OUTPUT], **tfl_embedders}
    return report, embedders


def first_per_condition(triplets: Sequence[Mapping[str, Any]], max_triplets: Optional[int]) -> List[Mapping[str, Any]]:
    """The first ``max_triplets`` triplets of each condition, in file order (all of them for None or 0)."""
    if not max_triplets:
        return list(triplets)
    seen: Dict[str, int] = {}
    kept = []
    for t in triplets:
        seen[t["condition"]] = seen.get(t["condition"], 0) + 1
        if seen[t["condition"]] <= max_triplets:
            kept.append(t)
    return kept


def check_parity(report: Mapping[str, Any], tolerance: Optional[float] = None) -> List[str]:
    """The enforced variants that differ from Keras by more than ``tolerance``.

    Args:
        report: the ``parity.json`` dict (``{"variants": {name: compare(...)}}``).
        tolerance: default :data:`FLOAT_TOLERANCE` (read at call time, so tests can patch it).

    Returns:
        One message per failing variant (empty when all pass).
    """
    tol = FLOAT_TOLERANCE if tolerance is None else tolerance
    failures = []
    for name in ENFORCED:
        entry = report.get("variants", {}).get(name)
        if entry is None:
            continue
        diff = entry["max_abs_diff"]
        if not (np.isfinite(diff) and diff <= tol):
            worst = max(entry["max_abs_diff_per_output"].items(), key=lambda kv: kv[1])
            failures.append(f"{name}: max |output - keras| = {diff:.3g} > {tol:g} (worst output "
                            f"{worst[0]!r}: {worst[1]:.3g})")
    return failures
