"""Score embedders on a split: triplet accuracy, disentanglement, retrieval.

:func:`evaluate_many` is the core: it walks the split's tracks once, cuts every
crop the fixed evaluation triplets and the retrieval need, runs *all* embedders
on each batch of crops and keeps only embeddings, so a large test split never sits
in memory as audio and every track is decoded once whatever the number of
models. :func:`evaluate` does the same for one embedder; :func:`evaluate_run`
loads a training run (or an export) and its baselines and writes the report.

What is measured, per embedder:

* triplet accuracy of every condition's fixed triplets (and the ``track``
  triplets), in the condition's own sub-space (the paper's headline numbers) and
  on the whole embedding (both as in Lee et al. 2020, Table 1), with a 95 %
  Wilson interval;
* for every condition, the first embedder (the model) in its sub-space against every
  other scored series (its whole embedding, each baseline) on the same triplets: the
  exact McNemar test and the 95 % interval of the accuracy difference
  (:func:`~disentangled_ml.evaluation.metrics.mcnemar_test`; ``"comparisons"``), from
  each triplet's correct/incorrect outcome, which is also returned (``"per_triplet"``);
* the disentanglement matrix: every condition's triplets in every condition's
  sub-space (:func:`disentangled_ml.evaluation.metrics.disentanglement_matrix`);
* the same accuracies and matrix on the *confounded* triplets
  (:mod:`disentangled_ml.data.confounded_triplets`: the positive shares as few of the
  anchor's other labels as the split allows, the negative as many), with how many
  could be built and how confounded they are (``"confounded"`` in the result);
* retrieval per condition: each split track queries all others by its track
  embedding (the mean of up to ``segments_per_track`` non-overlapping segments'
  embeddings, L2-renormalised), searched in the condition's sub-space; relevance
  follows the training rules (shared label, or tempo within
  ``tempo_positive_bpm``); precision at ``k`` and mAP.

Baselines have no sub-spaces; they are scored on the whole vector.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from disentangled_ml.condition_views import ConditionViews, ConditionViewsError
from disentangled_ml.config import TRACK_CONDITION, Config, ConfigError
from disentangled_ml.data.eval_triplets import ROLES, waveform_crop
from disentangled_ml.data.manifest import Track
from disentangled_ml.evaluation.embedders import EvaluationError
from disentangled_ml.evaluation.metrics import (
    DEFAULT_K, DEFAULT_SEGMENTS_PER_TRACK, MCNEMAR_TEST, PAIRED_INTERVAL, SIGNIFICANCE_LEVEL, View,
    class_pair_accuracy, disentanglement_matrix, mcnemar_test, relevance_matrix, retrieval_metrics, triplet_correct,
    wilson_interval,
)
from disentangled_ml.run_directory import RunDirectory, RunDirectoryError

log = logging.getLogger(__name__)

__all__ = ["EmbedderSpec", "DecodedAudio", "condition_views", "segment_starts", "evaluate", "evaluate_many",
           "evaluate_run", "DEFAULT_SEGMENTS_PER_TRACK", "DEFAULT_K"]

Embedder = Callable[[np.ndarray], np.ndarray]


@dataclass
class EmbedderSpec:
    """One embedder to score, and how.

    Attributes:
        name: key in the results (``"model"``, ``"mfcc_vq"``, ...).
        embed: float32 ``[b, segment_samples]`` -> float ``[b, D]``.
        label: name in plots and tables (default: ``name``).
        views: ``{condition: view}`` sub-space of each condition (a ``(start, stop)``
            slice or a ``[D]`` mask, see :mod:`disentangled_ml.evaluation.metrics`);
            ``None`` scores everything on the whole vector and skips the
            disentanglement matrix (baselines).
        columns: the disentanglement matrix's columns (default: ``views``); a model
            without masks (``mask_mode="none"``) is scored on the whole vector but its
            matrix still shows what each nominal slice carries.
    """

    name: str
    embed: Embedder
    label: Optional[str] = None
    views: Optional[Mapping[str, View]] = None
    columns: Optional[Mapping[str, View]] = None

    def __post_init__(self) -> None:
        self.label = self.label or self.name
        if self.columns is None and self.views is not None and any(v is not None for v in self.views.values()):
            self.columns = self.views


class DecodedAudio(Mapping):
    """``{track_id: float32 [samples]}`` that decodes a track when it is looked up.

    Nothing is cached: the evaluation reads each track once, and keeping a whole
    test split decoded would take gigabytes.

    Args:
        tracks: the tracks that may be looked up.
        sample_rate: Hz to decode at.
    """

    def __init__(self, tracks: Sequence[Track], sample_rate: int) -> None:
        self._by_id = {t.track_id: t for t in tracks}
        self.sample_rate = int(sample_rate)

    def __getitem__(self, track_id: str) -> np.ndarray:
        from disentangled_ml.audio_io import load_audio

        return load_audio(self._by_id[track_id].path, self.sample_rate)

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_id)

    def __len__(self) -> int:
        return len(self._by_id)


def condition_views(config: Config, masks: Optional[np.ndarray] = None) -> Tuple[Dict[str, View], Dict[str, View]]:
    """The sub-space each condition is scored in, and the disentanglement columns.

    The views are :class:`~disentangled_ml.condition_views.ConditionViews`'s
    (:meth:`~disentangled_ml.condition_views.ConditionViews.metric_views`).

    Args:
        config: ``model.mask_mode`` and ``conditions``.
        masks: the learned ``[C (+ 1), D]`` mask matrix; required for ``"learned"``.

    Returns:
        ``(views, columns)``, both ``{condition: view}``: ``"fixed"`` gives the slices
        for both; ``"none"`` scores on the whole embedding (views of ``None``) with the
        nominal slices as columns; ``"learned"`` uses the mask rows for both.

    Raises:
        EvaluationError: ``"learned"`` without ``masks``, or ``masks`` of the wrong shape.
    """
    try:
        return _views_and_columns(ConditionViews.from_config(config, masks))
    except ConditionViewsError as e:
        raise EvaluationError(str(e)) from None


def _views_and_columns(views: ConditionViews) -> Tuple[Dict[str, View], Dict[str, View]]:
    """``(views, columns)`` of :func:`condition_views`: without masks the disentanglement matrix
    still shows what each nominal slice carries."""
    scored = views.metric_views()
    return scored, (dict(views.slices) if views.mode == "none" else scored)


def segment_starts(num_samples: int, segment_samples: int, max_segments: int) -> np.ndarray:
    """First samples of up to ``max_segments`` non-overlapping segments spread over a track.

    The track is cut into ``num_samples // segment_samples`` consecutive segments
    (at least one: a shorter track gives one zero-padded segment) and, when there
    are more than ``max_segments``, evenly spaced ones are kept, so the track
    embedding summarises the whole track rather than its opening.

    Returns:
        int64 ``[n]``, ``1 <= n <= max_segments``, increasing.
    """
    if max_segments < 1:
        raise ValueError(f"segment_starts: max_segments must be >= 1, got {max_segments}.")
    available = max(1, num_samples // segment_samples)
    if available <= max_segments:
        positions = np.arange(available)
    else:
        positions = np.round(np.linspace(0, available - 1, max_segments)).astype(np.int64)
    return positions.astype(np.int64) * segment_samples


def prefetched_audio(ids: Sequence[str], audio: Mapping[str, np.ndarray], workers: int = 2,
                     lookahead: int = 4) -> Iterator[Tuple[str, Optional[np.ndarray], Optional[Exception]]]:
    """``(track_id, waveform or None, error or None)`` in order, decoding ahead in threads."""
    if not isinstance(audio, DecodedAudio):
        for tid in ids:
            yield tid, np.asarray(audio[tid], np.float32), None
        return

    def load(tid):
        try:
            return audio[tid], None
        except Exception as e:  # reported per track by the caller; one bad file must not end the run
            return None, e

    with cf.ThreadPoolExecutor(max_workers=workers) as pool:
        pending: "OrderedDict[str, cf.Future]" = OrderedDict()
        it = iter(ids)
        for tid in it:
            pending[tid] = pool.submit(load, tid)
            if len(pending) >= lookahead:
                break
        while pending:
            tid, fut = pending.popitem(last=False)
            nxt = next(it, None)
            if nxt is not None:
                pending[nxt] = pool.submit(load, nxt)
            y, err = fut.result()
            yield tid, y, err


class CropEmbeddings:
    """Runs every embedder on batches of crops and files the results by (track, start)."""

    def __init__(self, specs: Sequence[EmbedderSpec], batch_size: int) -> None:
        self.specs = specs
        self.batch_size = batch_size
        self.index: Dict[Tuple[str, int], int] = {}
        self._keys: List[Tuple[str, int]] = []
        self._crops: List[np.ndarray] = []
        self.parts: Dict[str, List[np.ndarray]] = {s.name: [] for s in specs}
        self.dims: Dict[str, int] = {}

    def add(self, track_id: str, start: int, crop: np.ndarray) -> None:
        key = (track_id, int(start))
        if key in self.index or key in self._keys:
            return
        self._keys.append(key)
        self._crops.append(crop)
        if len(self._crops) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        if not self._crops:
            return
        batch = np.stack(self._crops).astype(np.float32)
        for spec in self.specs:
            emb = np.asarray(spec.embed(batch), dtype=np.float32)
            if emb.ndim != 2 or emb.shape[0] != len(batch):
                raise EvaluationError(f"embedder {spec.name!r} returned shape {emb.shape} for {len(batch)} crops; "
                                      "expected [batch, D].")
            if self.dims.setdefault(spec.name, emb.shape[1]) != emb.shape[1]:
                raise EvaluationError(f"embedder {spec.name!r} changed its output dimension.")
            if not np.isfinite(emb).all():
                raise EvaluationError(f"embedder {spec.name!r} returned NaN or infinite values; the model "
                                      "(or its export) is broken.")
            self.parts[spec.name].append(emb)
        for key in self._keys:
            self.index[key] = len(self.index)
        self._keys, self._crops = [], []

    def matrix(self, name: str) -> np.ndarray:
        parts = self.parts[name]
        return np.concatenate(parts) if parts else np.zeros((0, self.dims.get(name, 0)), np.float32)


def _condition_order(config: Config, present: Sequence[str]) -> List[str]:
    order = [c for c in config.conditions.names if c in present] + \
        ([TRACK_CONDITION] if TRACK_CONDITION in present else [])
    unknown = sorted(set(present) - set(order))
    if unknown:
        raise EvaluationError(f"evaluation triplets name condition(s) {unknown} that the run's config does not "
                              f"have (conditions.names={list(config.conditions.names)}); regenerate them with "
                              "this run's config.")
    return order


def _correct_by_view(spec: EmbedderSpec, cond: str, a: np.ndarray, p: np.ndarray,
                     n: np.ndarray) -> Tuple[Optional[np.ndarray], np.ndarray]:
    """Which of one condition's triplets ``spec`` orders correctly: ``(in its sub-space, on the whole vector)``.

    Args:
        a, p, n: float ``[N, D]`` embeddings of the anchors, positives and negatives.

    Returns:
        bool ``[N]`` twice. The first is None for an embedder without sub-spaces (a
        baseline), and *the same array* as the second where the condition's view is the
        whole embedding (the track triplets, the paper's track regulariser; ``mask_mode
        none``): :func:`_comparisons` recognises it so and does not test a score against itself.
    """
    whole = triplet_correct(a, p, n)
    if spec.views is None:
        return None, whole
    view = None if cond == TRACK_CONDITION else spec.views.get(cond)
    return (whole if view is None else triplet_correct(a, p, n, view)), whole


#: The views a triplet set's outcomes are filed under (``"<embedder>.<view>"`` in ``per_triplet``).
SLICE, WHOLE_VIEW = "slice", "whole"

Outcomes = Dict[str, Dict[Tuple[str, str], np.ndarray]]  # {condition: {(embedder, view): bool [N_c]}}


def _file_outcomes(outcomes: Outcomes, spec: EmbedderSpec, cond: str, sl: Optional[np.ndarray],
                   whole: np.ndarray) -> None:
    series = outcomes.setdefault(cond, {})
    if sl is not None:
        series[(spec.name, SLICE)] = sl
    series[(spec.name, WHOLE_VIEW)] = whole


def _series_label(spec: EmbedderSpec, view: str) -> str:
    """The series' name in tables and plots: ``"model (slice)"``, ``"model (whole)"``, ``"MFCC-VQ"``."""
    return f"{spec.label} ({view})" if spec.views is not None else str(spec.label)


def _comparisons(outcomes: Outcomes, specs: Sequence[EmbedderSpec], alpha: float = SIGNIFICANCE_LEVEL
                 ) -> Dict[str, Any]:
    """Every condition's reference series against each other series on the same triplets.

    The reference is the first embedder of ``specs`` (the model, in :func:`evaluate_run`):
    its ``slice`` series where that differs from its whole embedding, else its ``whole`` one
    (:func:`_correct_by_view` files the two as one array there, and the alias is not tested).

    Args:
        outcomes: per-triplet correctness by condition and ``(embedder, view)``
            (:func:`_file_outcomes`).
        specs: the embedders, in report order.
        alpha: significance level.

    Returns:
        ``{"test", "interval", "alpha", "conditions": {cond: {"reference": {"embedder", "view",
        "label"}, "versus": [{"embedder", "view", "label", **mcnemar_test(reference, this)}]}}}``:
        in each ``versus`` entry ``a`` is the reference and ``b`` the other series, so
        ``difference > 0`` means the reference orders more triplets correctly.
    """
    by_name = {s.name: s for s in specs}
    reference = specs[0].name
    conds: Dict[str, Any] = {}
    for cond, series in outcomes.items():
        sl = series.get((reference, SLICE))  # None for an embedder without sub-spaces
        ref_key = (reference, SLICE) if sl is not None and sl is not series[(reference, WHOLE_VIEW)] \
            else (reference, WHOLE_VIEW)
        ref = series[ref_key]
        versus = [{"embedder": name, "view": view, "label": _series_label(by_name[name], view),
                   **mcnemar_test(ref, correct, alpha=alpha)}
                  for (name, view), correct in series.items()
                  if (name, view) != ref_key and not (name == reference and correct is ref)]
        conds[cond] = {"reference": {"embedder": ref_key[0], "view": ref_key[1],
                                     "label": _series_label(by_name[reference], ref_key[1])},
                       "versus": versus}
    return {"test": MCNEMAR_TEST, "interval": PAIRED_INTERVAL, "alpha": alpha, "conditions": conds}


def _per_triplet(outcomes: Outcomes, rows: Mapping[str, Sequence[Mapping[str, Any]]]) -> Dict[str, Any]:
    """One triplet set's outcomes as columns: ``{"triplets": [rows, condition by condition],
    "correct": {"<embedder>.<view>": bool [N]}}`` (what ``triplet_correct.csv`` holds)."""
    keys: List[Tuple[str, str]] = []
    for series in outcomes.values():
        keys += [k for k in series if k not in keys]
    conds = [c for c in outcomes if rows.get(c)]
    correct = {f"{name}.{view}": np.concatenate([outcomes[c][(name, view)] for c in conds]) if conds
               else np.zeros(0, bool) for name, view in keys}
    return {"triplets": [dict(t) for c in conds for t in rows[c]], "correct": correct}


def _accuracy_entry(ok_slice: Optional[np.ndarray], ok_whole: np.ndarray) -> Dict[str, Any]:
    n = int(ok_whole.size)
    entry: Dict[str, Any] = {"n": n, "whole": float(ok_whole.mean()),
                             "whole_ci95": list(wilson_interval(int(ok_whole.sum()), n))}
    if ok_slice is None:
        entry.update({"slice": None, "slice_ci95": None})
    else:
        entry.update({"slice": float(ok_slice.mean()), "slice_ci95": list(wilson_interval(int(ok_slice.sum()), n))})
    return entry


def evaluate_many(embedders: Sequence[EmbedderSpec], triplets: Sequence[Mapping[str, Any]],
                  audio: Mapping[str, np.ndarray], tracks: Sequence[Track], config: Config,
                  rows: Optional[Sequence[int]] = None, *, tables: Any = None,
                  segments_per_track: int = DEFAULT_SEGMENTS_PER_TRACK, k: int = DEFAULT_K, batch_size: int = 64,
                  progress: bool = False,
                  confounded: Optional[Sequence[Mapping[str, Any]]] = None) -> Dict[str, Any]:
    """Score several embedders on the same triplets and tracks (each track decoded once).

    Args:
        embedders: what to score (:class:`EmbedderSpec`), in report order.
        triplets: rows of an evaluation-triplet CSV
            (:func:`disentangled_ml.data.eval_triplets.read_eval_triplets`): ``condition``,
            ``anchor``/``positive``/``negative`` track ids and ``*_start`` sample offsets.
        audio: ``{track_id: float32 [samples]}`` at ``frontend.sample_rate`` for every
            track used (a :class:`DecodedAudio` decodes lazily, a few tracks ahead).
        tracks: the collection (labels and tempo); triplet ids must be among them.
        config: the run's configuration (crop length, conditions, tempo rule).
        rows: indices into ``tracks`` of the retrieval database (the split); default:
            the tracks the triplets use.
        tables: :class:`~disentangled_ml.data.labels.LabelTables` of ``tracks``
            (built when omitted).
        segments_per_track: segments averaged into a track embedding.
        k: cutoff of the retrieval precision.
        batch_size: crops per embedder call.
        progress: show a progress bar over tracks.
        confounded: the confounded triplets
            (:func:`disentangled_ml.data.confounded_triplets.build_confounded_triplets`), rows
            like ``triplets``; scored in the same pass, reported under ``"confounded"``.

    Returns:
        A dict (NaN where a score is undefined, the matrices as numpy arrays;
        :func:`disentangled_ml.evaluation.report.to_jsonable` makes it JSON)::

            {"conditions": [...], "num_triplets": {cond: n}, "dropped_triplets": int,
             "failed_tracks": {track_id: reason}, "retrieval_tracks": N,
             "segments_per_track": int, "k": int,
             "embedders": {name: {"label": str, "dim": D, "sliced": bool,
                                  "triplet_accuracy": {cond: {"slice", "whole", "n", "slice_ci95", "whole_ci95"}},
                                  "class_pairs": {label condition: {"classes", "accuracy", "n", "unpaired"}},
                                  "disentanglement": {"rows", "columns", "accuracy"} | None,
                                  "retrieval": {cond: {"precision_at_k", "map", "k", "queries",
                                                       "skipped_queries"} | None}}},
             "comparisons": {"test", "interval", "alpha",
                             "conditions": {cond: {"reference": {"embedder", "view", "label"},
                                                   "versus": [{"embedder", "view", "label", "n", "accuracy_a",
                                                               "accuracy_b", "difference", "ci95", "both",
                                                               "a_only", "b_only", "neither", "p_value",
                                                               "significant"}]}}},
             "per_triplet": {"random": {"triplets": [rows], "correct": {"<name>.<view>": bool [N]}},
                             "confounded": {...}},
             "confounded": {"conditions": [...], "num_triplets": {label condition: n, 0 if none},
                            "dropped_triplets": int,
                            "sets": {cond: ...},  # data.confounded_triplets.confoundedness
                            "embedders": {name: {"label", "sliced", "triplet_accuracy": {cond: {...}},
                                                 "disentanglement": {...} | None}},
                            "comparisons": {...}}}
            # "confounded" only with ``confounded``; see _confounded_scores

        ``comparisons`` tests, per condition, the first embedder (the reference; in its
        sub-space, or on the whole vector where that is its view) against every other series on
        the same triplets (:func:`_comparisons`; ``a`` = the reference). ``per_triplet`` holds
        each kept triplet (its CSV row, condition by condition) and whether each series
        (``"<embedder name>.slice"`` / ``".whole"``) ordered it correctly; it is not JSON:
        :func:`~disentangled_ml.evaluation.report.write_report` writes it to
        ``triplet_correct.csv`` and leaves it out of ``metrics.json``.

    Raises:
        EvaluationError: an unknown condition or track id in the triplets, no triplets,
            or a broken embedder (wrong shape, NaN).
    """
    from tqdm.auto import tqdm

    from disentangled_ml.data.labels import LabelTables

    if not embedders:
        raise EvaluationError("evaluate: no embedder to score.")
    names = [s.name for s in embedders]
    if len(set(names)) != len(names):
        raise EvaluationError(f"evaluate: embedder names repeat: {names}.")
    if not triplets:
        raise EvaluationError("evaluate: no evaluation triplets; the split is too small to form any "
                              "(see the warnings of dml train).")
    seg = config.frontend.segment_samples
    row_of = {t.track_id: i for i, t in enumerate(tracks)}
    confounded = list(confounded) if confounded is not None else None
    missing = sorted({str(t[r]) for t in list(triplets) + (confounded or []) for r in ROLES} - set(row_of))
    if missing:
        raise EvaluationError(f"{len(missing)} track id(s) of the evaluation triplets are not in the collection "
                              f"(e.g. {missing[:3]}); evaluate with the prepared collection the run was trained on.")
    order = _condition_order(config, sorted({str(t["condition"]) for t in triplets}))
    conf_order = _condition_order(config, sorted({str(t["condition"]) for t in confounded or []}))
    if rows is None:
        rows = sorted({row_of[str(t[r])] for t in triplets for r in ROLES})
    rows = [int(r) for r in rows]
    retrieval_ids = {tracks[r].track_id for r in rows}
    starts_needed: Dict[str, set] = {}
    for t in triplets:
        for r in ROLES:
            starts_needed.setdefault(str(t[r]), set()).add(int(t[f"{r}_start"]))
    conf_needed: Dict[str, set] = {}
    for t in confounded or []:
        for r in ROLES:
            conf_needed.setdefault(str(t[r]), set()).add(int(t[f"{r}_start"]))
    visit = sorted(set(starts_needed) | set(conf_needed) | retrieval_ids, key=row_of.__getitem__)

    crops = CropEmbeddings(embedders, batch_size)
    # Crops only the confounded triplets use are embedded apart, so the random set's and the
    # retrieval's crops go through the embedders in the same batches (and give the same numbers)
    # as without confounded triplets.
    conf_crops = CropEmbeddings(embedders, batch_size)
    track_segments: Dict[str, List[int]] = {}
    failed: Dict[str, str] = {}
    bar = tqdm(total=len(visit), desc="embedding", unit="track", disable=not progress)
    for tid, y, err in prefetched_audio(visit, audio):
        bar.update(1)
        if err is not None:
            failed[tid] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
            log.warning("track %s cannot be decoded and is left out of the evaluation: %s", tid, failed[tid])
            continue
        y = np.asarray(y, np.float32)
        starts = set(starts_needed.get(tid, ()))
        if tid in retrieval_ids:
            seg_starts = [int(s) for s in segment_starts(y.size, seg, segments_per_track)]
            track_segments[tid] = seg_starts
            starts |= set(seg_starts)
        for s in sorted(starts):
            crops.add(tid, s, waveform_crop(y, s, seg))
        for s in sorted(conf_needed.get(tid, set()) - starts):
            conf_crops.add(tid, s, waveform_crop(y, s, seg))
    crops.flush()
    conf_crops.flush()
    bar.close()

    kept = [t for t in triplets if all(str(t[r]) not in failed for r in ROLES)]
    dropped = len(triplets) - len(kept)
    if dropped:
        log.warning("%d evaluation triplet(s) use undecodable tracks and are left out.", dropped)
    tables = tables if tables is not None else LabelTables.from_tracks(tracks, config)
    by_cond: Dict[str, Dict[str, np.ndarray]] = {}
    rows_by_cond: Dict[str, List[Mapping[str, Any]]] = {}  # the triplets of by_cond, in the same order
    pair_classes: Dict[str, Tuple[np.ndarray, np.ndarray]] = {}  # label conditions: anchor / negative classes
    for cond in order:
        ts = [t for t in kept if str(t["condition"]) == cond]
        if ts:
            rows_by_cond[cond] = ts
            by_cond[cond] = {r: np.array([crops.index[(str(t[r]), int(t[f"{r}_start"]))] for t in ts]) for r in ROLES}
            if cond in tables.vocab:
                m = tables.classes[tables.conditions.index(cond)]
                pair_classes[cond] = tuple(m[[row_of[str(t[r])] for t in ts]] for r in ("anchor", "negative"))
    if not by_cond:
        raise EvaluationError("evaluate: every evaluation triplet uses an undecodable track; see the warnings.")
    conf_kept = [t for t in confounded or [] if all(str(t[r]) not in failed for r in ROLES)]

    def conf_row(key: Tuple[str, int]) -> int:  # row in [crops' matrix; conf_crops' matrix]
        return crops.index[key] if key in crops.index else len(crops.index) + conf_crops.index[key]

    conf_rows = {cond: ts for cond in conf_order
                 for ts in [[t for t in conf_kept if str(t["condition"]) == cond]] if ts}
    conf_by_cond = {cond: {r: np.array([conf_row((str(t[r]), int(t[f"{r}_start"]))) for t in ts], np.int64)
                           for r in ROLES}
                    for cond, ts in conf_rows.items()}

    r_rows = [r for r in rows if tracks[r].track_id in track_segments]
    relevance = {}
    for cond in config.conditions.names:
        relevance[cond] = relevance_matrix(tables, r_rows, cond, config)

    out_emb: Dict[str, Any] = {}
    conf_emb: Dict[str, Any] = {}
    outcomes: Outcomes = {}
    conf_outcomes: Outcomes = {}
    for spec in embedders:
        emb = crops.matrix(spec.name)
        if confounded is not None:
            both = np.concatenate([emb, conf_crops.matrix(spec.name)]) if conf_crops.parts[spec.name] else emb
            conf_emb[spec.name] = _confounded_scores(spec, both, conf_by_cond, conf_outcomes)
        trip = {c: tuple(emb[ix[r]] for r in ROLES) for c, ix in by_cond.items()}
        acc, class_pairs = {}, {}
        for cond, (a, p, n) in trip.items():
            sl, whole = _correct_by_view(spec, cond, a, p, n)
            _file_outcomes(outcomes, spec, cond, sl, whole)
            acc[cond] = _accuracy_entry(sl, whole)
            if cond in pair_classes:
                class_pairs[cond] = class_pair_accuracy(whole if sl is None else sl, *pair_classes[cond],
                                                        tables.vocab[cond])
        matrix = disentanglement_matrix(trip, spec.columns) if spec.columns is not None else None

        track_emb = np.stack([emb[[crops.index[(tracks[r].track_id, s)] for s in track_segments[tracks[r].track_id]]]
                              .mean(axis=0) for r in r_rows]) if r_rows else np.zeros((0, emb.shape[1]), np.float32)
        track_emb = track_emb / np.maximum(np.linalg.norm(track_emb, axis=1, keepdims=True), 1e-12)
        retrieval: Dict[str, Any] = {}
        for cond in config.conditions.names:
            rel, known = relevance[cond]
            if known.sum() < 2:
                retrieval[cond] = None
                continue
            view = spec.views.get(cond) if spec.views is not None else None
            retrieval[cond] = retrieval_metrics(track_emb[known], rel[known][:, known], k=k, dims=view)
        out_emb[spec.name] = {
            "label": spec.label, "dim": int(emb.shape[1]), "sliced": spec.views is not None,
            "triplet_accuracy": acc, "class_pairs": class_pairs, "disentanglement": matrix, "retrieval": retrieval,
        }
    result = {
        "conditions": list(by_cond),
        "num_triplets": {c: int(len(ix["anchor"])) for c, ix in by_cond.items()},
        "dropped_triplets": int(dropped),
        "failed_tracks": failed,
        "retrieval_tracks": len(r_rows),
        "segments_per_track": int(segments_per_track),
        "k": int(k),
        "embedders": out_emb,
        "comparisons": _comparisons(outcomes, embedders),
        "per_triplet": {"random": _per_triplet(outcomes, rows_by_cond)},
    }
    if confounded is not None:
        from disentangled_ml.data.confounded_triplets import confoundedness

        result["confounded"] = {
            "conditions": list(conf_by_cond),
            "num_triplets": {c: int(len(conf_by_cond[c]["anchor"])) if c in conf_by_cond else 0
                             for c in config.conditions.names},
            "dropped_triplets": len(confounded) - len(conf_kept),
            "sets": confoundedness(conf_kept, tables, config, rows=rows, random_triplets=kept),
            "embedders": conf_emb,
            "comparisons": _comparisons(conf_outcomes, embedders),
        }
        result["per_triplet"]["confounded"] = _per_triplet(conf_outcomes, conf_rows)
    return result


def _confounded_scores(spec: EmbedderSpec, emb: np.ndarray, by_cond: Mapping[str, Mapping[str, np.ndarray]],
                       outcomes: Outcomes) -> Dict[str, Any]:
    """One embedder's entry under ``metrics["confounded"]["embedders"]``; its per-triplet outcomes go
    into ``outcomes``.

    Returns:
        ``{"label", "sliced", "triplet_accuracy": {cond: {"slice", "whole", "n", "slice_ci95",
        "whole_ci95"}}, "disentanglement": {"rows", "columns", "accuracy"} | None}``: the random
        set's schema, on the confounded triplets (``slice`` None for a baseline; the matrix
        only for an embedder with sub-spaces and at least one confounded triplet).
    """
    trip = {c: tuple(emb[ix[r]] for r in ROLES) for c, ix in by_cond.items()}
    acc = {}
    for cond, (a, p, n) in trip.items():
        sl, whole = _correct_by_view(spec, cond, a, p, n)
        _file_outcomes(outcomes, spec, cond, sl, whole)
        acc[cond] = _accuracy_entry(sl, whole)
    matrix = disentanglement_matrix(trip, spec.columns) if spec.columns is not None and trip else None
    return {"label": spec.label, "sliced": spec.views is not None, "triplet_accuracy": acc,
            "disentanglement": matrix}


def evaluate(embedder: Embedder, triplets: Sequence[Mapping[str, Any]], audio: Mapping[str, np.ndarray],
             tracks: Sequence[Track], config: Config, rows: Optional[Sequence[int]] = None, *,
             masks: Optional[np.ndarray] = None, name: str = "model", **kwargs: Any) -> Dict[str, Any]:
    """Score one embedder with its condition sub-spaces from ``config`` (see :func:`evaluate_many`).

    Args:
        embedder: float32 ``[b, segment_samples]`` -> ``[b, embedding_dim]``.
        masks: the learned mask matrix when ``model.mask_mode == "learned"``.
        name: the key of its results under ``"embedders"``.
        **kwargs: ``tables``, ``segments_per_track``, ``k``, ``batch_size``, ``progress``.

    Returns:
        :func:`evaluate_many`'s dict with one embedder.
    """
    views, columns = condition_views(config, masks)
    spec = EmbedderSpec(name, embedder, views=views, columns=columns)
    return evaluate_many([spec], triplets, audio, tracks, config, rows, **kwargs)


def _check_embedder(embedder: Embedder, config: Config, who: str, dim: Optional[int] = None) -> int:
    """Run one silent crop through ``embedder``; return its output dimension."""
    out = np.asarray(embedder(np.zeros((1, config.frontend.segment_samples), np.float32)))
    if out.ndim != 2 or out.shape[0] != 1:
        raise EvaluationError(f"{who} returns shape {out.shape} for one crop; expected [1, D].")
    if dim is not None and out.shape[1] != dim:
        raise EvaluationError(f"{who} returns {out.shape[1]}-d embeddings but the run's config says "
                              f"conditions.embedding_dim={dim}; evaluate it with the config it was trained with.")
    return int(out.shape[1])


def _export_views(export_config: Mapping[str, Any], config: Config, model_path: str) -> Optional[Dict[str, View]]:
    """Views from an export's ``config.json`` (docs/design.md, contract 2), checked against the run's config.

    Returns None when the config lists no ``[start, stop]`` conditions (and no learned masks).
    """
    fe = config.frontend
    sr, seconds = export_config.get("sample_rate"), export_config.get("segment_seconds")
    if sr is not None and int(sr) != fe.sample_rate:
        raise EvaluationError(f"{model_path}: the export takes audio at {sr} Hz but the run's config uses "
                              f"{fe.sample_rate} Hz; evaluate it against the run it was exported from.")
    if seconds is not None and abs(float(seconds) - fe.segment_seconds) > 1e-6:
        raise EvaluationError(f"{model_path}: the export takes {seconds} s segments but the run's config uses "
                              f"{fe.segment_seconds} s.")
    learned = export_config.get("mask_mode") == "learned" and isinstance(export_config.get("condition_masks"), Mapping)
    conds = export_config.get("conditions")
    # Contract 2 writes {"genre": [0, 64], ...}; anything else (e.g. a nested Config) gives no slices.
    if not learned and not (isinstance(conds, Mapping) and
                            any(isinstance(v, (list, tuple)) and len(v) == 2 for v in conds.values())):
        return None
    try:
        views = ConditionViews.from_export_config(export_config)
    except ConditionViewsError as e:
        raise EvaluationError(f"{model_path}: the export's config.json: {e}") from None
    missing = set(config.conditions.names) - set(views.names)
    if missing:
        what = "learned mask" if views.mode == "learned" else "slice"
        raise EvaluationError(f"{model_path}: the export's config.json has no {what} for condition(s) "
                              f"{sorted(missing)} of the run.")
    return {n: views.view(n) for n in config.conditions.names}


def evaluate_run(run_dir: str, prepared_dir: str, split: str = "test", baselines: bool = True, *,
                 model_path: Optional[str] = None, out_dir: Optional[str] = None,
                 segments_per_track: int = DEFAULT_SEGMENTS_PER_TRACK, k: int = DEFAULT_K,
                 vq_codebook: Optional[int] = None, fit_tracks: Optional[int] = None, seed: int = 0,
                 batch_size: int = 64, progress: bool = True,
                 confounded: bool = True) -> Tuple[Dict[str, Any], Dict[str, str]]:
    """Evaluate a training run's model and the baselines on a split; write the report.

    Reads ``RUN_DIR/config.json``, ``RUN_DIR/splits.csv``, ``RUN_DIR/<split>_triplets.csv``
    and the model (``RUN_DIR/embedding.keras``, or ``model_path``: a ``.keras`` file or
    an export directory with ``saved_model/``), and ``PREPARED_DIR/manifest.csv``.
    Writes ``metrics.json``, ``accuracy.png`` and ``disentanglement.png`` to
    ``out_dir`` (default ``RUN_DIR/eval_<split>``, or ``RUN_DIR/eval_<split>_<model name>``
    with ``model_path``).

    With ``confounded`` it also scores the confounded triplets
    (:mod:`disentangled_ml.data.confounded_triplets`): ``RUN_DIR/<split>_confounded_triplets.csv``,
    built from the split's labels with the split's seed the first time and reused after,
    as the random set is. They are reported under ``"confounded"`` in ``metrics.json``
    (with ``"file"``, ``"seed"`` and ``"reused"``), in the table, as a second panel of
    ``accuracy.png`` and in ``disentanglement_confounded.png``.

    Args:
        run_dir: the training run directory.
        prepared_dir: the prepared collection the run was trained on.
        split: ``"test"`` or ``"validation"``.
        baselines: also score MFCC-VQ, MFCC statistics and the untrained network.
        model_path: evaluate this model instead of ``RUN_DIR/embedding.keras``.
        out_dir: where to write the report.
        segments_per_track: segments per track embedding (retrieval).
        k: cutoff of the retrieval precision.
        vq_codebook: MFCC-VQ codewords (default
            :data:`~disentangled_ml.evaluation.baselines.DEFAULT_CODEBOOK_SIZE`).
        fit_tracks: training tracks sampled to fit the baselines.
        seed: seeds the baselines (crops, k-means, untrained weights).
        batch_size: crops per forward pass.
        progress: show progress bars.
        confounded: also build (or reuse) and score the confounded triplets.

    Returns:
        ``(metrics, paths)``: the metrics dict written to ``metrics.json`` and
        ``{"metrics": ..., "accuracy": ..., "disentanglement": ...}`` file paths
        (:func:`~disentangled_ml.evaluation.report.write_report`; with ``confounded`` also
        ``"confounded_triplets"``, the CSV).

    Raises:
        EvaluationError: a missing or inconsistent input; the message names it.
    """
    from disentangled_ml.data.eval_triplets import read_eval_triplets
    from disentangled_ml.data.labels import LabelError, LabelTables
    from disentangled_ml.data.manifest import ManifestError, read_manifest
    from disentangled_ml.evaluation import baselines as bl
    from disentangled_ml.evaluation.embedders import load_embedder
    from disentangled_ml.evaluation.report import write_report

    if split not in ("test", "validation"):
        raise EvaluationError(f"split {split!r}: choose 'test' or 'validation'.")
    run = RunDirectory(run_dir)
    try:
        config = run.read_config()
    except RunDirectoryError as e:
        raise EvaluationError(str(e)) from None
    except ConfigError as e:
        raise EvaluationError(f"{e} Is {run_dir} a training run directory (dml train)?") from None
    try:
        tracks = read_manifest(os.path.join(prepared_dir, "manifest.csv"))
        tables = LabelTables.from_tracks(tracks, config)
    except (ManifestError, LabelError) as e:
        raise EvaluationError(f"{e} (prepared collection {prepared_dir}; run dml prepare first)") from None
    try:
        splits = run.read_splits()
    except RunDirectoryError as e:
        raise EvaluationError(str(e)) from None
    rows = [i for i, t in enumerate(tracks) if splits.get(t.track_id) == split]
    wanted = sum(1 for s in splits.values() if s == split)
    if not rows:
        raise EvaluationError(f"none of the {wanted} {split} track(s) of {run.splits_path} is in "
                              f"{prepared_dir}/manifest.csv; give the prepared collection the run was trained on.")
    if len(rows) < wanted:
        log.warning("%d of the %d %s tracks in splits.csv are missing from the prepared manifest.",
                    wanted - len(rows), wanted, split)
    triplet_path = run.eval_triplets_path(split)
    if not os.path.isfile(triplet_path):
        raise EvaluationError(f"{triplet_path} does not exist; dml train writes the fixed {split} triplets there.")
    triplets = read_eval_triplets(triplet_path)
    conf_triplets, conf_info = _confounded_set(run, split, tracks, tables, rows, config) if confounded \
        else (None, None)

    dim = config.conditions.embedding_dim
    model_path = model_path or run.embedding_model_path
    embedder, kind, export_config = load_embedder(model_path, batch_size=batch_size, config=config)
    _check_embedder(embedder, config, f"model {model_path}", dim)
    try:
        views, columns = _views_and_columns(ConditionViews.from_run_dir(run, config))
    except ConditionViewsError as e:
        raise EvaluationError(str(e)) from None
    if kind == "saved_model":
        views = _export_views(export_config, config, model_path) or views
        columns = views if config.model.mask_mode != "none" else columns
    specs = [EmbedderSpec("model", embedder, label="model", views=views, columns=columns)]

    fit_info: Dict[str, Any] = {}
    if baselines:
        train_ids = [t.track_id for t in tracks if splits.get(t.track_id) == "train"]
        n_fit = fit_tracks or bl.DEFAULT_FIT_TRACKS
        log.info("fitting the baselines on crops of %d training track(s)", min(n_fit, len(train_ids)))
        fit = bl.training_crops(DecodedAudio(tracks, config.frontend.sample_rate), train_ids, config,
                                max_tracks=n_fit, seed=seed)
        codebook = vq_codebook or bl.DEFAULT_CODEBOOK_SIZE
        vq = bl.MFCCVQ(config.frontend, codebook_size=codebook, seed=seed).fit(fit)
        stats = bl.MFCCStats(config.frontend).fit(fit)
        specs += [EmbedderSpec("mfcc_vq", vq, label="MFCC-VQ"), EmbedderSpec("mfcc_stats", stats, label="MFCC stats")]
        fit_info = {"fit_crops": int(len(fit)), "fit_tracks": int(min(n_fit, len(train_ids))),
                    "vq_codebook": int(codebook), "seed": int(seed)}
        try:
            untrained = bl.untrained_embedder(config, seed=seed, batch_size=batch_size)
        except ImportError as e:  # the models package is optional for scoring exports
            log.warning("untrained-network baseline left out: %s", e)
        else:
            specs.append(EmbedderSpec("untrained", untrained, label="untrained"))

    metrics = evaluate_many(specs, triplets, DecodedAudio([tracks[r] for r in rows] + _triplet_tracks(
        tracks, triplets + (conf_triplets or []), rows), config.frontend.sample_rate), tracks, config, rows,
        tables=tables, segments_per_track=segments_per_track, k=k, batch_size=batch_size, progress=progress,
        confounded=conf_triplets)
    if conf_info is not None:
        metrics["confounded"] = {**conf_info, **metrics["confounded"]}
    metrics = {
        "split": split, "run_dir": os.path.abspath(run_dir), "prepared_dir": os.path.abspath(prepared_dir),
        "model": os.path.abspath(model_path), "model_kind": kind, "mask_mode": config.model.mask_mode,
        "config_hash": config.hash(), "baselines": fit_info, **metrics,
    }
    if out_dir is None:
        out_dir = run.eval_dir(split, model_path)
    paths = write_report(metrics, out_dir)
    if conf_info is not None:
        paths["confounded_triplets"] = conf_info["file"]
    return metrics, paths


def _confounded_set(run: RunDirectory, split: str, tracks: Sequence[Track], tables: Any, rows: Sequence[int],
                    config: Config) -> Tuple[List[Dict[str, Any]], Dict[str, Any]]:
    """The split's confounded triplets: read ``RUN_DIR/<split>_confounded_triplets.csv``, or build and
    write it (seeded like the random set, :func:`~disentangled_ml.data.confounded_triplets.eval_seed`).

    Returns:
        ``(triplets, info)``: the rows, and ``{"file", "seed", "reused"}`` for ``metrics.json``.
        A run directory that cannot be written to gets a warning; the set is still scored.
    """
    from disentangled_ml.data.confounded_triplets import build_confounded_triplets, eval_seed, write_confounded_triplets
    from disentangled_ml.data.eval_triplets import read_eval_triplets

    path = run.confounded_triplets_path(split)
    seed = eval_seed(config, split)
    info = {"file": os.path.abspath(path), "seed": seed, "reused": os.path.isfile(path)}
    if info["reused"]:
        return read_eval_triplets(path), info
    triplets = build_confounded_triplets(tracks, tables, rows, config, seed=seed)
    try:
        write_confounded_triplets(triplets, path)
    except OSError as e:
        log.warning("the confounded triplets cannot be saved to %s (%s); they are scored but rebuilt next time.",
                    path, e)
    return triplets, info


def _triplet_tracks(tracks: Sequence[Track], triplets: Sequence[Mapping[str, Any]], rows: Sequence[int]) -> List[Track]:
    """Tracks the triplets use that are not among ``rows`` (normally none: triplets stay in their split)."""
    in_rows = {tracks[r].track_id for r in rows}
    ids = {str(t[r]) for t in triplets for r in ROLES} - in_rows
    return [t for t in tracks if t.track_id in ids]
