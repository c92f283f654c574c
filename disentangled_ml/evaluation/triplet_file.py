"""Score a CSV of audio triplets (``dml evaluate DIR --triplets FILE``), e.g. human-rated ones.

The split evaluation (:mod:`.runner`) scores triplets that ``dml train`` drew from a
prepared collection. This module scores triplets that someone else wrote down: any audio
files, any start times, with or without a condition, such as the dim-sim set of human
similarity judgements (Lee et al. 2020) once converted (README, "Triplets from a file").

The file (a CSV with a header, one triplet per row)::

    anchor,anchor_start,positive,positive_start,negative,negative_start,condition
    clips/a.mp3,12.0,clips/b.mp3,3.5,clips/c.mp3,0,
    clips/d.wav,0,clips/e.wav,0,clips/f.wav,10,genre

* ``anchor``, ``positive``, ``negative`` (required columns): audio paths; relative ones
  are relative to the CSV's folder.
* ``anchor_start``, ``positive_start``, ``negative_start`` (optional, seconds, default 0):
  where the crop of ``segment_seconds`` starts in each file.
* ``condition`` (optional): the condition whose view scores the triplet. Empty or absent:
  the triplet has no condition and is scored on the whole embedding and in every view.

Header names are matched without regard to case or surrounding spaces; other columns are
ignored and listed in the report.

A triplet is *correct* in a view when ``d(a, p) < d(a, n)``, Euclidean distances in that
view of the embedding (:class:`~disentangled_ml.condition_views.ConditionViews`: the
condition's slice, its learned mask, or the whole vector), the rule of
:func:`~disentangled_ml.evaluation.metrics.triplet_correct` (a tie is wrong). Every
scored triplet is measured in every view; the report groups triplets by their condition
(rows) and gives the accuracy in each view (columns) with a 95 % Wilson interval, plus an
overall accuracy with each triplet in its own view (its condition's, or the whole
embedding for one without a condition).

A bad row is left out and reported with its file line and reasons (:data:`BAD_ROW_REASONS`);
it never stops the run. Only a file that cannot be read as such a CSV at all (missing,
no header, a required column absent) is an :class:`~.embedders.EvaluationError`.

Each audio file is decoded once (a few files ahead, in threads) and every distinct crop
is embedded once, so memory holds one file's audio at a time and the embeddings.
"""

from __future__ import annotations

import csv
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from disentangled_ml.condition_views import ConditionViews, ConditionViewsError
from disentangled_ml.config import ConfigError
from disentangled_ml.data.eval_triplets import ROLES, waveform_crop
from disentangled_ml.data.manifest import Track
from disentangled_ml.evaluation.embedders import EvaluationError
from disentangled_ml.evaluation.metrics import WHOLE, triplet_correct, wilson_interval
from disentangled_ml.evaluation.runner import CropEmbeddings, DecodedAudio, EmbedderSpec, prefetched_audio
from disentangled_ml.run_directory import RunDirectory

log = logging.getLogger(__name__)

__all__ = ["FileTriplet", "BadRow", "TripletModel", "TripletFileResult", "read_triplet_file", "load_triplet_model",
           "score_triplet_file", "write_triplet_report", "format_triplet_report", "evaluate_triplet_file",
           "BAD_ROW_REASONS", "CONDITION_COLUMN", "START_SUFFIX", "END_TOLERANCE_SECONDS", "METRICS_FILE",
           "SCORES_FILE"]

#: The column naming a triplet's condition (optional).
CONDITION_COLUMN = "condition"
#: ``<role><START_SUFFIX>`` names a role's start column (seconds).
START_SUFFIX = "_start"
#: A crop may run this far past the end of its file and is then zero-padded: a clip cut to
#: exactly one segment can decode a few samples short (resampling, MP3 priming). 50 ms is
#: under two of the default frontend's 23 ms hops of 128 frames. A crop that runs further
#: is a bad row (``crop_past_end``): a segment padded with silence is not the music the
#: triplet's rater heard, and training never pads a crop.
END_TOLERANCE_SECONDS = 0.05
#: Report file names, in the output folder.
METRICS_FILE = "triplet_metrics.json"
SCORES_FILE = "triplet_scores.csv"

#: Why a row is left out: ``{reason: what it means}`` (also in the report).
BAD_ROW_REASONS: Dict[str, str] = {
    "malformed_row": "the row has more fields than the header",
    "missing_path": "an anchor, positive or negative path is empty",
    "bad_start": "a start time is not a number of seconds >= 0",
    "unknown_condition": "the condition is not one of the model's conditions",
    "unsupported_format": "a file's extension is not a supported audio format",
    "missing_file": "a file does not exist",
    "undecodable": "a file cannot be decoded (corrupt, truncated, not audio)",
    "start_beyond_end": "a start time is at or past the end of its file",
    "crop_past_end": f"a crop runs more than {END_TOLERANCE_SECONDS * 1000:g} ms past the end of its file",
}


@dataclass(frozen=True)
class FileTriplet:
    """One well-formed row of a triplet file.

    Attributes:
        line: the row's line in the CSV (the header is line 1; a spreadsheet's row number).
        paths: ``(anchor, positive, negative)`` absolute paths.
        starts: ``(anchor, positive, negative)`` start times in seconds, ``>= 0``.
        condition: the condition that scores it, or None (whole embedding and every view).
    """

    line: int
    paths: Tuple[str, str, str]
    starts: Tuple[float, float, float]
    condition: Optional[str]


@dataclass
class BadRow:
    """A row left out of the scores.

    Attributes:
        line: the row's line in the CSV (the header is line 1).
        reasons: codes of :data:`BAD_ROW_REASONS`, in the order found, without repeats.
        messages: one sentence per problem, naming the role and file and what to do.
        fields: the row as read (column -> text), for the scores CSV.
    """

    line: int
    reasons: List[str] = field(default_factory=list)
    messages: List[str] = field(default_factory=list)
    fields: Dict[str, str] = field(default_factory=dict)

    def add(self, reason: str, message: str) -> None:
        if reason not in BAD_ROW_REASONS:
            raise ValueError(f"unknown bad-row reason {reason!r}")
        if reason not in self.reasons:
            self.reasons.append(reason)
        self.messages.append(message)

    @property
    def message(self) -> str:
        return "; ".join(self.messages)

    def to_json(self) -> Dict[str, Any]:
        return {"line": self.line, "reasons": list(self.reasons), "message": self.message}


@dataclass
class TripletModel:
    """What scores a triplet file: a waveform embedder and the views of its embedding.

    Attributes:
        embed: float32 ``[b, segment_samples]`` waveforms in [-1, 1] -> float ``[b, D]`` embeddings.
        views: which part of the ``D``-d embedding each condition uses.
        sample_rate: Hz the audio is decoded at.
        segment_samples: samples per crop (``segment_seconds * sample_rate``).
        source: ``"run"`` (a training run directory) or ``"export"`` (an export directory).
        kind: ``"keras"``, ``"saved_model"`` or ``"tflite"``.
        path: the directory given.
        model_file: the file or folder the network was read from.
    """

    embed: Callable[[np.ndarray], np.ndarray]
    views: ConditionViews
    sample_rate: int
    segment_samples: int
    source: str
    kind: str
    path: str
    model_file: str

    @property
    def segment_seconds(self) -> float:
        return self.segment_samples / float(self.sample_rate)


@dataclass
class TripletFileResult:
    """The scores of a triplet file.

    Attributes:
        report: the JSON report (:func:`score_triplet_file` documents its keys).
        triplets: the scored triplets, in file order (``N``).
        bad_rows: the rows left out, in file order.
        view_names: ``["whole", condition, ...]``: the columns of ``distances`` and ``correct``.
        distances: ``{view: float64 [N, 2]}``: ``d(anchor, positive)`` and ``d(anchor, negative)``,
            Euclidean, in that view.
        correct: ``{view: bool [N]}``: ``d(a, p) < d(a, n)`` in that view.
    """

    report: Dict[str, Any]
    triplets: List[FileTriplet]
    bad_rows: List[BadRow]
    view_names: List[str]
    distances: Dict[str, np.ndarray]
    correct: Dict[str, np.ndarray]


# ----------------------------------------------------------------------------- reading the file


def _start_seconds(text: Optional[str]) -> Optional[float]:
    """Seconds from a start field (empty = 0), or None when it is not a finite number >= 0."""
    text = (text or "").strip()
    if not text:
        return 0.0
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def read_triplet_file(path: str, conditions: Sequence[str]
                      ) -> Tuple[List[Tuple[int, Dict[str, Any]]], List[BadRow], Dict[str, Any]]:
    """Read a triplet CSV (module docstring) and check each row's fields; no audio is touched.

    Args:
        path: the CSV.
        conditions: the model's condition names; any other ``condition`` value is a bad row.

    Returns:
        ``(rows, bad, info)``. ``rows``: ``(line, parsed)`` for every data row, with
        ``parsed`` = ``{"paths": [3 abs paths or None], "starts": [3 seconds or None],
        "condition": str | None, "fields": {column: text}}`` (None where a field is bad).
        ``bad``: a :class:`BadRow` for each row with a field problem (``malformed_row``,
        ``missing_path``, ``bad_start``, ``unknown_condition``), by line. ``info``:
        ``{"rows": data rows, "ignored_columns": [...]}``.

    Raises:
        EvaluationError: no such file, not UTF-8 text, no header, or a required column missing.
    """
    if not os.path.isfile(path):
        raise EvaluationError(f"triplet file {path} does not exist.")
    base = os.path.dirname(os.path.abspath(path))
    known = set(conditions)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: a spreadsheet's byte-order mark
            reader = csv.reader(f)
            header = next(reader, None)
            if not header or not any(h.strip() for h in header):
                raise EvaluationError(f"triplet file {path} is empty or has no header; it needs the columns "
                                      "anchor, positive, negative (README, 'Triplets from a file').")
            columns = [h.strip().lower() for h in header]
            repeated = sorted({c for c in columns if c and columns.count(c) > 1})
            if repeated:
                raise EvaluationError(f"triplet file {path}: column(s) {repeated} appear more than once in the header.")
            missing = [r for r in ROLES if r not in columns]
            if missing:
                raise EvaluationError(
                    f"triplet file {path} has no column(s) {missing} (its header: {header}); it needs anchor, "
                    "positive and negative (audio paths), optionally anchor_start, positive_start, negative_start "
                    "(seconds) and condition (README, 'Triplets from a file').")
            wanted = set(ROLES) | {r + START_SUFFIX for r in ROLES} | {CONDITION_COLUMN}
            ignored = [h for h, c in zip(header, columns) if c not in wanted]
            rows: List[Tuple[int, Dict[str, Any]]] = []
            bad: List[BadRow] = []
            for values in reader:
                line = reader.line_num  # the row's last line: a quoted field may span several
                if not any(v.strip() for v in values):
                    continue  # a blank line, or a row of empty cells from a spreadsheet
                fields = {c: (values[i] if i < len(values) else "") for i, c in enumerate(columns)}
                parsed, problems = _parse_row(fields, base, known)
                parsed["fields"] = fields
                if len(values) > len(columns) and any(v.strip() for v in values[len(columns):]):
                    problems.insert(0, ("malformed_row", f"{len(values)} fields but the header has {len(columns)} "
                                                         "(an unquoted comma in a path?)"))
                rows.append((line, parsed))
                if problems:
                    row = BadRow(line, fields=fields)
                    for reason, message in problems:
                        row.add(reason, message)
                    bad.append(row)
    except UnicodeDecodeError as e:
        raise EvaluationError(f"triplet file {path} is not UTF-8 text ({e}); save it as UTF-8 CSV.") from None
    except csv.Error as e:
        raise EvaluationError(f"triplet file {path}: not a readable CSV ({e}).") from None
    if ignored:
        log.warning("triplet file %s: column(s) %s are not used (the columns are anchor, positive, negative, "
                    "<role>_start and condition).", path, ignored)
    return rows, bad, {"rows": len(rows), "ignored_columns": ignored}


def _parse_row(fields: Mapping[str, str], base: str, known: set) -> Tuple[Dict[str, Any], List[Tuple[str, str]]]:
    """One row's paths, starts and condition, and its field problems ``[(reason, message)]``."""
    problems: List[Tuple[str, str]] = []
    paths: List[Optional[str]] = []
    starts: List[Optional[float]] = []
    for role in ROLES:
        text = fields.get(role, "").strip()
        if not text:
            problems.append(("missing_path", f"{role}: no path"))
            paths.append(None)
        else:
            paths.append(os.path.normpath(os.path.join(base, os.path.expanduser(text))))
        raw = fields.get(role + START_SUFFIX)
        start = _start_seconds(raw)
        if start is None:
            problems.append(("bad_start", f"{role}{START_SUFFIX} {raw.strip()!r} is not a number of seconds >= 0"))
        starts.append(start)
    condition = fields.get(CONDITION_COLUMN, "").strip() or None
    if condition is not None and condition not in known:
        problems.append(("unknown_condition",
                         f"condition {condition!r} is not one of the model's conditions {sorted(known)} (leave it "
                         "empty to score the triplet on the whole embedding and in every view)"))
    return {"paths": paths, "starts": starts, "condition": condition}, problems


# ----------------------------------------------------------------------------- the model


def load_triplet_model(directory: str, tflite: Optional[str] = None, batch_size: int = 64) -> TripletModel:
    """The model of a training run directory or of an export directory.

    Args:
        directory: a run directory (``dml train``: ``config.json``, ``embedding.keras`` and, for
            learned masks, ``masks.npy``) or an export directory (``dml export``: ``config.json``
            and ``saved_model/``, docs/design.md, contract 2).
        tflite: for an export, run this ``.tflite`` file of it with LiteRT (e.g. ``model.tflite``,
            ``model_int8.tflite``) instead of the SavedModel.
        batch_size: crops per forward pass.

    Raises:
        EvaluationError: neither kind of directory, or an unreadable model or config.
    """
    if not os.path.isdir(directory):
        raise EvaluationError(f"{directory} is not a directory; give a training run directory (dml train) or an "
                              "export directory (dml export).")
    if os.path.isdir(os.path.join(directory, "saved_model")):
        return _export_model(directory, tflite, batch_size)
    if tflite:
        raise EvaluationError(f"--tflite {tflite}: {directory} is not an export directory (no saved_model/); "
                              "TFLite files come with dml export.")
    run = RunDirectory(directory)
    keras_file = run.embedding_model_path
    if not os.path.isfile(keras_file):
        raise EvaluationError(f"{directory} has neither embedding.keras (a training run directory, dml train) nor "
                              "saved_model/ (an export directory, dml export).")
    from disentangled_ml.evaluation.embedders import load_embedder

    try:
        config = run.read_config()
        views = ConditionViews.from_run_dir(run, config)
    except ConfigError as e:  # ConditionViewsError is one
        raise EvaluationError(f"{directory}: {e}") from None
    embed, kind, _ = load_embedder(keras_file, batch_size=batch_size, config=config)
    fe = config.frontend
    return TripletModel(embed, views, fe.sample_rate, fe.segment_samples, "run", kind, directory, keras_file)


def _export_model(directory: str, tflite: Optional[str], batch_size: int) -> TripletModel:
    from disentangled_ml.catalogue_search import SearchError, load_export_embedder

    try:
        embed, config = load_export_embedder(directory, "tflite" if tflite else "saved_model", batch_size,
                                             tflite_file=tflite or "model.tflite")
        views = ConditionViews.from_export_config(config)
    except (SearchError, ConditionViewsError, ValueError) as e:  # ValueError: TFLiteEmbedder's signature check
        raise EvaluationError(f"{directory}: {e}") from None
    sr = int(config["sample_rate"])
    seg = int(config.get("segment_samples") or round(float(config["segment_seconds"]) * sr))
    kind, model_file = ("tflite", tflite) if tflite else ("saved_model", "saved_model")
    return TripletModel(embed, views, sr, seg, "export", kind, directory, os.path.join(directory, model_file))


# ----------------------------------------------------------------------------- scoring


def score_triplet_file(path: str, model: TripletModel, *, batch_size: int = 64,
                       progress: bool = False) -> TripletFileResult:
    """Score every good row of a triplet file with ``model``; list the bad ones.

    Args:
        path: the triplet CSV (module docstring).
        model: from :func:`load_triplet_model` (or built around any embedder).
        batch_size: crops per embedder call.
        progress: a progress bar over the audio files.

    Returns:
        A :class:`TripletFileResult`. Its ``report`` (JSON-ready)::

            {"triplet_file": abs path, "model": {"path", "source", "kind", "file", "mask_mode",
                                                 "embedding_dim", "sample_rate", "segment_seconds"},
             "rows": data rows, "scored": N, "left_out": rows left out,
             "ignored_columns": [...], "end_tolerance_seconds": float,
             "views": ["whole", condition, ...],
             "groups": [{"condition": name | None, "n": int, "primary": view,
                         "views": {view: {"correct": int, "accuracy": float | None, "ci95": [lo, hi]}}}],
             "overall": {"n", "correct", "accuracy", "ci95"},   # each triplet in its primary view
             "bad_rows": [{"line", "reasons": [...], "message"}], "reasons": BAD_ROW_REASONS}

        A group is one condition's triplets (``None``: those without one), in the model's
        condition order, then ``None``; its ``primary`` view is its condition's (``"whole"``
        for ``None``). Accuracies are None, with interval ``[0, 1]``, where ``n`` is 0.

    Raises:
        EvaluationError: an unreadable file (see :func:`read_triplet_file`) or a broken embedder
            (wrong output shape or dimension, NaN).
    """
    from tqdm.auto import tqdm

    from disentangled_ml.audio_io import AudioDecodeError, check_extension

    views, sr, seg = model.views, model.sample_rate, model.segment_samples
    rows, bad_list, info = read_triplet_file(path, views.names)
    bad: Dict[int, BadRow] = {b.line: b for b in bad_list}
    tolerance = int(round(END_TOLERANCE_SECONDS * sr))

    # Every file a row names is looked at, also for rows already bad, so that one run reports
    # every problem of a row; only the crops of rows without a field problem are embedded.
    files = list(dict.fromkeys(p for _, parsed in rows for p in parsed["paths"] if p is not None))
    file_error: Dict[str, Tuple[str, str]] = {}  # path -> (reason, message)
    decodable = []
    for p in files:
        try:
            check_extension(p)
        except AudioDecodeError as e:
            file_error[p] = ("unsupported_format", str(e))
            continue
        if not os.path.isfile(p):
            file_error[p] = ("missing_file", f"{p}: file not found")
            continue
        decodable.append(p)
    needed: Dict[str, set] = {p: set() for p in decodable}  # path -> crop starts (samples)
    for line, parsed in rows:
        if line not in bad:
            for p, s in zip(parsed["paths"], parsed["starts"]):
                if p in needed:
                    needed[p].add(_start_sample(s, sr))

    crops = CropEmbeddings([EmbedderSpec("model", model.embed)], batch_size)
    durations: Dict[str, int] = {}  # path -> decoded samples
    audio = DecodedAudio([Track(path=p, track_id=p) for p in decodable], sr)
    bar = tqdm(total=len(decodable), desc="embedding", unit="file", disable=not progress)
    for p, y, err in prefetched_audio(decodable, audio):
        bar.update(1)
        if err is not None:  # AudioDecodeError says in words what is wrong; anything else is reported too
            file_error[p] = ("undecodable", str(err).splitlines()[0] if str(err) else type(err).__name__)
            continue
        durations[p] = int(y.size)
        for start in sorted(needed[p]):
            if _crop_fault(start, y.size, seg, tolerance) is None:
                crops.add(p, start, waveform_crop(y, start, seg))  # pads at most `tolerance` samples
    crops.flush()
    bar.close()
    emb = crops.matrix("model")
    if len(emb) and emb.shape[1] != views.embedding_dim:
        raise EvaluationError(f"{model.model_file} returns {emb.shape[1]}-d embeddings but its config says "
                              f"embedding_dim={views.embedding_dim}.")

    # The audio problems of every row, in role order.
    for line, parsed in rows:
        problems = []
        for role, p, s in zip(ROLES, parsed["paths"], parsed["starts"]):
            if p is None:
                continue
            if p in file_error:
                problems.append((file_error[p][0], f"{role}: {file_error[p][1]}"))
            elif s is not None and p in durations:
                problems += _crop_problems(role, p, s, durations[p], sr, seg, tolerance)
        if problems:
            row = bad.setdefault(line, BadRow(line, fields=parsed["fields"]))
            for reason, message in problems:
                row.add(reason, message)

    triplets = [FileTriplet(line, tuple(parsed["paths"]), tuple(parsed["starts"]), parsed["condition"])
                for line, parsed in rows if line not in bad]
    bad_rows = sorted(bad.values(), key=lambda b: b.line)
    view_names = [WHOLE] + list(views.names)
    distances, correct = _score(triplets, emb, crops.index, views, sr)
    report = {
        "triplet_file": os.path.abspath(path),
        "model": {"path": os.path.abspath(model.path), "source": model.source, "kind": model.kind,
                  "file": os.path.abspath(model.model_file), "mask_mode": views.mode,
                  "embedding_dim": views.embedding_dim, "sample_rate": sr, "segment_seconds": model.segment_seconds},
        "rows": info["rows"], "scored": len(triplets), "left_out": len(bad_rows),
        "ignored_columns": info["ignored_columns"], "end_tolerance_seconds": END_TOLERANCE_SECONDS,
        "views": view_names,
        **_accuracies(triplets, correct, views.names),
        "bad_rows": [b.to_json() for b in bad_rows],
        "reasons": dict(BAD_ROW_REASONS),
    }
    if bad_rows:
        log.warning("%d of the %d rows of %s are left out (bad rows; see the report).", len(bad_rows), len(rows), path)
    return TripletFileResult(report, triplets, bad_rows, view_names, distances, correct)


def _start_sample(seconds: float, sr: int) -> int:
    """The first sample of a crop that starts at ``seconds`` (the nearest sample at ``sr`` Hz)."""
    return int(round(seconds * sr))


def _crop_fault(start: int, samples: int, seg: int, tolerance: int) -> Optional[str]:
    """None when the crop ``[start, start + seg)`` (samples) of a file of ``samples`` can be scored, else
    ``"start_beyond_end"`` or ``"crop_past_end"`` (more than ``tolerance`` samples past the end)."""
    if start >= samples:
        return "start_beyond_end"
    if start + seg > samples + tolerance:
        return "crop_past_end"
    return None


def _crop_problems(role: str, path: str, start_s: float, samples: int, sr: int, seg: int,
                   tolerance: int) -> List[Tuple[str, str]]:
    """``[(reason, message)]`` for a crop of ``seg`` samples from ``start_s`` in a file of ``samples``."""
    start = _start_sample(start_s, sr)
    length = samples / sr
    fault = _crop_fault(start, samples, seg, tolerance)
    if fault == "start_beyond_end":
        return [(fault, f"{role}: starts at {start_s:g} s, at or past the end of {path} ({length:.2f} s)")]
    if fault == "crop_past_end":
        latest = max(0.0, (samples - seg) / sr)
        fix = f"start it at {latest:.2f} s or earlier" if samples >= seg else \
            f"the file is shorter than one {seg / sr:g} s segment"
        return [("crop_past_end", f"{role}: the {seg / sr:g} s crop from {start_s:g} s runs "
                                  f"{(start + seg - samples) / sr:.2f} s past the end of {path} ({length:.2f} s); "
                                  f"{fix}")]
    return []


def _score(triplets: Sequence[FileTriplet], emb: np.ndarray, index: Mapping[Tuple[str, int], int],
           views: ConditionViews, sr: int) -> Tuple[Dict[str, np.ndarray], Dict[str, np.ndarray]]:
    """Distances ``{view: float64 [N, 2]}`` and correctness ``{view: bool [N]}`` of every triplet in every view."""
    names = [WHOLE] + list(views.names)
    if not triplets:
        return {v: np.zeros((0, 2)) for v in names}, {v: np.zeros(0, bool) for v in names}
    rows = {r: np.array([index[(t.paths[i], _start_sample(t.starts[i], sr))] for t in triplets])
            for i, r in enumerate(ROLES)}
    a, p, n = (emb[rows[r]].astype(np.float64) for r in ROLES)
    distances, correct = {}, {}
    for name in names:
        # the view as the split evaluation measures it: slice, learned mask or whole vector
        view = None if name == WHOLE else views.view(name)
        va, vp, vn = (x if name == WHOLE else views.apply(x, name) for x in (a, p, n))
        distances[name] = np.stack([np.linalg.norm(va - vp, axis=1), np.linalg.norm(va - vn, axis=1)], axis=1)
        correct[name] = triplet_correct(a, p, n, view)
    return distances, correct


def _entry(ok: np.ndarray) -> Dict[str, Any]:
    n, k = int(ok.size), int(ok.sum())
    return {"correct": k, "accuracy": k / n if n else None, "ci95": list(wilson_interval(k, n))}


def _accuracies(triplets: Sequence[FileTriplet], correct: Mapping[str, np.ndarray],
                conditions: Sequence[str]) -> Dict[str, Any]:
    """``{"groups": [...], "overall": {...}}`` of the report (:func:`score_triplet_file`)."""
    cond = np.array([t.condition or "" for t in triplets], dtype=object)
    groups = []
    for name in [c for c in conditions if (cond == c).any()] + ([None] if (cond == "").any() else []):
        mask = cond == (name or "")
        groups.append({"condition": name, "n": int(mask.sum()), "primary": name or WHOLE,
                       "views": {v: _entry(ok[mask]) for v, ok in correct.items()}})
    own = np.array([correct[t.condition or WHOLE][i] for i, t in enumerate(triplets)], dtype=bool)
    return {"groups": groups, "overall": {"n": int(own.size), **_entry(own)}}


# ----------------------------------------------------------------------------- the report


def write_triplet_report(result: TripletFileResult, out_dir: str) -> Dict[str, str]:
    """Write :data:`METRICS_FILE` (the report) and :data:`SCORES_FILE` into ``out_dir``.

    The scores CSV has one row per row of the triplet file, in file order: ``line``,
    ``status`` (``scored`` or ``left_out``), ``reasons``, ``condition``, the three paths
    (absolute) and starts (seconds), then for each view ``d_pos_<view>``,
    ``d_neg_<view>`` (Euclidean distances anchor-positive and anchor-negative) and
    ``correct_<view>`` (1 or 0); empty for a row left out.

    Returns:
        ``{"metrics": path, "scores": path}``.
    """
    from disentangled_ml.evaluation.report import write_metrics_json

    os.makedirs(out_dir, exist_ok=True)
    paths = {"metrics": os.path.join(out_dir, METRICS_FILE), "scores": os.path.join(out_dir, SCORES_FILE)}
    write_metrics_json({**result.report, "files": paths}, paths["metrics"])
    header = ["line", "status", "reasons", CONDITION_COLUMN] + \
        [c for r in ROLES for c in (r, r + START_SUFFIX)] + \
        [f"{k}_{v}" for v in result.view_names for k in ("d_pos", "d_neg", "correct")]
    out: List[Tuple[int, List[Any]]] = []
    for i, t in enumerate(result.triplets):
        scores = [x for v in result.view_names for x in (f"{result.distances[v][i, 0]:.6g}",
                                                          f"{result.distances[v][i, 1]:.6g}",
                                                          int(result.correct[v][i]))]
        out.append((t.line, [t.line, "scored", "", t.condition or ""] +
                    [x for j in range(3) for x in (t.paths[j], f"{t.starts[j]:g}")] + scores))
    for b in result.bad_rows:
        f = b.fields
        out.append((b.line, [b.line, "left_out", "|".join(b.reasons), f.get(CONDITION_COLUMN, "").strip()] +
                    [f.get(c, "").strip() for r in ROLES for c in (r, r + START_SUFFIX)] +
                    [""] * (3 * len(result.view_names))))
    tmp = paths["scores"] + ".tmp"
    with open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(row for _, row in sorted(out, key=lambda x: x[0]))
    os.replace(tmp, paths["scores"])
    return paths


def _cell(entry: Mapping[str, Any], primary: bool) -> str:
    if entry["accuracy"] is None:
        return "-"
    lo, hi = entry["ci95"]
    return f"{entry['accuracy']:.3f} [{lo:.2f}-{hi:.2f}]" + ("*" if primary else " ")


def format_triplet_report(report: Mapping[str, Any], max_bad_rows: int = 20) -> str:
    """The report as text: the accuracy table (rows: triplet groups; columns: views) and the bad rows.

    Args:
        report: :func:`score_triplet_file`'s ``report``.
        max_bad_rows: bad rows listed in full; the rest are counted (all are in the JSON).
    """
    from disentangled_ml.evaluation.report import _table

    m = report["model"]
    views = report["views"]
    out = [f"triplets: {report['triplet_file']}: {report['rows']} row(s), {report['scored']} scored, "
           f"{report['left_out']} left out",
           f"model: {m['path']} ({m['source']}, {m['kind']}; mask mode {m['mask_mode']}; "
           f"{m['segment_seconds']:g} s crops at {m['sample_rate']} Hz)"]
    if report.get("ignored_columns"):
        out.append(f"columns not used: {', '.join(report['ignored_columns'])}")
    rows = [["(none)" if g["condition"] is None else g["condition"], str(g["n"])] +
            [_cell(g["views"][v], v == g["primary"]) for v in views] for g in report["groups"]]
    o = report["overall"]
    rows.append(["overall", str(o["n"]), _cell(o, True)] + [""] * (len(views) - 1))
    out += ["", "triplet accuracy [95 % Wilson interval] by the triplets' condition (rows) and the view of the "
                "embedding they are measured in (columns); * = the triplets' own view ((none): whole embedding); "
                "overall: every triplet in its own view",
            _table(["condition", "triplets"] + views, rows)]
    bad = report["bad_rows"]
    if bad:
        out += ["", f"{len(bad)} row(s) left out (line in the file: reasons: what is wrong):"]
        out += [f"  line {b['line']}: {', '.join(b['reasons'])}: {b['message']}" for b in bad[:max_bad_rows]]
        if len(bad) > max_bad_rows:
            out.append(f"  ... and {len(bad) - max_bad_rows} more (bad_rows in {METRICS_FILE})")
    return "\n".join(out)


def default_out_dir(directory: str, triplet_file: str) -> str:
    """``DIR/eval_triplets_<file name without extension>``: next to the model, like ``eval_test``."""
    stem = os.path.splitext(os.path.basename(triplet_file))[0]
    return os.path.join(directory, f"eval_triplets_{stem}")


def evaluate_triplet_file(directory: str, triplet_file: str, *, out_dir: Optional[str] = None,
                          tflite: Optional[str] = None, batch_size: int = 64,
                          progress: bool = True) -> Tuple[TripletFileResult, Dict[str, str]]:
    """Load the model of ``directory``, score ``triplet_file`` with it and write the report.

    Args:
        directory: a training run directory or an export directory (:func:`load_triplet_model`).
        triplet_file: the CSV (module docstring).
        out_dir: where to write (default :func:`default_out_dir`).
        tflite: score this ``.tflite`` file of an export instead of its SavedModel.
        batch_size: crops per forward pass.
        progress: a progress bar over the audio files.

    Returns:
        ``(result, paths)``: :class:`TripletFileResult` and :func:`write_triplet_report`'s paths.
    """
    model = load_triplet_model(directory, tflite=tflite, batch_size=batch_size)
    result = score_triplet_file(triplet_file, model, batch_size=batch_size, progress=progress)
    if out_dir is None:
        out_dir = default_out_dir(directory, triplet_file)
        if tflite:
            out_dir += "_" + os.path.splitext(os.path.basename(tflite))[0]
    return result, write_triplet_report(result, out_dir)
