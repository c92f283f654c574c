"""``dml prepare``: validate a labelled collection, fill in tempo, summarise its labels.

Every file of a manifest (docs/design.md, contract 1) is decoded once, at the
frontend's sample rate and mono, with :mod:`disentangled_ml.audio_io` (the
decoder training uses), and is either accepted or rejected with a reason:

=====================  ==========================================================
code                   meaning
=====================  ==========================================================
``unsupported_format`` extension not in :data:`audio_io.SUPPORTED_EXTENSIONS`
``missing_file``       the path does not exist or is not a regular file
``undecodable``        corrupt, truncated or not audio (:class:`AudioDecodeError`)
``too_short``          fewer decoded samples than one segment
                       (``Config.frontend.segment_samples``)
``silent``             whole-file RMS below ``Config.data.silence_rms_db`` dBFS
``error``              anything unexpected (a bug, or a decoder that crashed its
                       worker process); the run goes on
``bad_manifest_row``   the manifest row itself is bad (empty path, a tempo that
                       is not a BPM, a track id repeated on another file or with
                       other labels); only with ``skip_bad_rows``
=====================  ==========================================================

The whole manifest is checked before any work
(:func:`~disentangled_ml.data.manifest.check_manifest`). Bad rows are written,
every one with its line and what is wrong, to ``manifest_problems.csv``
(:data:`MANIFEST_PROBLEM_COLUMNS`); then the run stops with a
:class:`~disentangled_ml.data.manifest.ManifestError` listing them, having
decoded nothing, unless ``skip_bad_rows`` is set (``dml prepare
--skip-bad-rows``): then the good rows are prepared and the bad ones are listed
in ``rejected.csv`` with the reason ``bad_manifest_row``. A row repeating an
earlier one exactly counts once, with a warning.

The RMS is taken over the whole decoded file, ``20 log10(sqrt(mean(y**2)))``
dBFS (a full-scale sine is -3 dBFS). A file that is mostly digital silence with
a short loud passage therefore passes when that passage carries enough energy;
this keeps the rule simple and predictable.

Where the manifest gives no tempo, it is estimated with madmom
(:func:`disentangled_ml.data.tempo.estimate_tempo`); such labels are estimates,
and the prepared manifest says so in ``tempo_source`` (``manifest`` or ``madmom``).

Work runs in worker processes (``spawn`` context: TensorFlow is not fork-safe
once initialised), one file end to end per task. Each result is written to a
per-file cache as soon as the file is done, keyed by the SHA-1 of the file's
bytes and of every parameter that changes the result, so an interrupted run, a
rerun or a run over a grown collection only analyses files it has not seen.

Outputs in ``out_dir``:

* ``manifest.csv``: accepted tracks, tempo filled, with the
  :data:`~disentangled_ml.data.manifest.PREPARED_COLUMNS` describing the file
  (its own rate, frames, channels, decoder code, duration in s, SHA-1, tempo
  source); paths still point at the original files.
* ``rejected.csv``: ``path, track_id, reason, message, detail``: ``message`` says in
  words what is wrong with the file and what to do (``"x.flac: truncated or corrupt
  FLAC (...): re-encode or re-download it."``); ``detail`` is the decoder's own error
  text, for bug reports (empty when the check was this package's own).
* ``labels.json``: classes and counts per condition, with the problems found
  (see :func:`label_report`).
* ``config.json``: the configuration used.
* ``summary.json``: the counts of :class:`PrepareSummary`.
* ``errors.log``: tracebacks of ``error`` rejections, when there are any.
* ``manifest_problems.csv``: ``line, track_id, path, problem``, the manifest's bad
  rows (``path`` as written in the manifest), when there are any.
* ``audio/`` (``cache_audio=True``): the decoded audio as TFRecord shards, see
  :mod:`disentangled_ml.data.shards`.
* ``cache/``: the per-file cache (a small JSON per file, plus the file's int16
  audio as ``.npy`` with ``cache_audio``, from which the shards are packed, so
  the audio is stored twice); delete it to force a full re-analysis.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import hashlib
import json
import logging
import math
import multiprocessing
import os
import time
import traceback
import uuid
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from disentangled_ml.config import Config
from disentangled_ml.data.manifest import (
    ManifestError, ManifestProblem, Track, check_manifest, format_problems, resolve_path, tag_conditions,
    write_manifest,
)
from disentangled_ml.data.shards import (
    INDEX_FILE, INT16_SCALE, audio_example, is_shard_name, new_index, shard_name,
)

log = logging.getLogger(__name__)

#: Rejection codes and what they mean (the message of each rejection gives the details).
REJECTION_REASONS: Dict[str, str] = {
    "unsupported_format": "the file's extension is not a supported audio format",
    "missing_file": "the file does not exist",
    "undecodable": "the file is corrupt, truncated or not audio",
    "too_short": "the file is shorter than one segment",
    "silent": "the file's RMS level is below the silence threshold",
    "error": "an unexpected error while analysing the file",
    "bad_manifest_row": "the manifest row is malformed (skipped with skip_bad_rows / --skip-bad-rows)",
}

#: Columns of ``rejected.csv`` (docs/design.md, contract 1).
REJECTED_COLUMNS = ("path", "track_id", "reason", "message", "detail")
#: Columns of ``manifest_problems.csv``: the manifest's bad rows (``path`` as written there).
MANIFEST_PROBLEM_COLUMNS = ("line", "track_id", "path", "problem")
#: Bump when the content of cache entries changes meaning; old entries are then ignored.
#: 2: WAV/FLAC sample types come from libsndfile (32-bit integer WAV, once accepted as
#: float32 and decoded to NaN, is now rejected).
CACHE_FORMAT = 2
#: Tracks per TFRecord shard when ``shards`` is not given.
TRACKS_PER_SHARD = 256
TEMPO = "tempo"


class PrepareError(ValueError):
    """The collection cannot be prepared as asked; the message says why and what to do."""


@dataclass
class PrepareSummary:
    """What a ``prepare`` run did.

    ``total == from_cache + processed + prechecked``: files are either taken from
    the cache, analysed (decoded) in this run, or rejected before decoding
    (missing file, unsupported extension, or a bad manifest row skipped with
    ``skip_bad_rows``). Rows repeating another row exactly count once.
    """

    out_dir: str
    total: int = 0
    accepted: int = 0
    rejected: Dict[str, int] = field(default_factory=dict)  # reason code -> files
    from_cache: int = 0
    processed: int = 0
    prechecked: int = 0
    tempo_manifest: int = 0  # accepted tracks whose tempo came from the manifest
    tempo_estimated: int = 0  # ... estimated with madmom
    tempo_unknown: int = 0  # ... without a tempo (--no-tempo, or madmom found none / failed)
    tempo_failed: int = 0  # madmom raised on the file (tempo left unknown; retried on the next run)
    seconds: float = 0.0  # wall-clock time of the run
    seconds_per_file: float = 0.0  # median worker time per analysed (not cached) file
    unusable_conditions: List[str] = field(default_factory=list)
    # Groups of accepted track ids whose files have identical bytes: the same recording
    # twice would leak between training and test splits.
    duplicates: List[List[str]] = field(default_factory=list)
    audio_shards: List[str] = field(default_factory=list)  # relative to out_dir
    labels: Dict[str, Any] = field(default_factory=dict)  # label_report(...)

    @property
    def num_rejected(self) -> int:
        return sum(self.rejected.values())

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["num_rejected"] = self.num_rejected
        return d


# --------------------------------------------------------------------------- per-file work

def file_sha1(path: str, chunk_bytes: int = 1 << 20) -> str:
    """SHA-1 of a file's bytes (hex), read in chunks so memory stays flat."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_bytes), b""):
            h.update(chunk)
    return h.hexdigest()


def analysis_params(config: Config) -> Dict[str, Any]:
    """The parameters that change a file's analysis; part of every cache key."""
    from disentangled_ml import __version__

    return {
        "sample_rate": config.frontend.sample_rate,
        "segment_seconds": config.frontend.segment_seconds,
        "segment_samples": config.frontend.segment_samples,
        "silence_rms_db": config.data.silence_rms_db,
        "tempo_min_bpm": config.data.tempo_min_bpm,
        "tempo_max_bpm": config.data.tempo_max_bpm,
        "version": __version__,
        "cache_format": CACHE_FORMAT,
    }


def cache_key(content_sha1: str, params: Mapping[str, Any]) -> str:
    blob = json.dumps({"content": content_sha1, **params}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()


def _entry_paths(cache_dir: str, key: str) -> Tuple[str, str]:
    folder = os.path.join(cache_dir, key[:2])  # 256 sub-folders keep directories small
    return os.path.join(folder, key + ".json"), os.path.join(folder, key + ".int16.npy")


def _atomic_write(path: str, write: Callable[[Any], None], mode: str = "w") -> None:
    """Write via a unique temporary file + rename, so readers never see half a file."""
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".tmp-{uuid.uuid4().hex}-{os.path.basename(path)}")  # unique per writer
    try:
        with open(tmp, mode) as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _read_entry(path: str) -> Optional[Dict[str, Any]]:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None  # absent, or damaged by something outside our atomic writes: recompute


def _rejection(job: Mapping[str, Any], reason: str, message: str, detail: str = "", **extra: Any) -> Dict[str, Any]:
    return {"index": job["index"], "status": "rejected", "reason": reason, "message": message, "detail": detail,
            "from_cache": False, "cacheable": False, **extra}


def process_file(job: Mapping[str, Any]) -> Dict[str, Any]:
    """Analyse one file end to end; never raises.

    ``job`` holds ``index``, ``path``, ``need_tempo`` (estimate a tempo), ``params``
    (:func:`analysis_params`), ``cache_dir`` and ``cache_audio``. Returns a small
    JSON-able dict (no audio): ``status`` ``accepted``/``rejected``, ``reason``,
    ``message``, ``detail`` (rejections: the decoder's raw error text, or ""), ``sha1``,
    ``info``, ``rms_db``, ``tempo`` (madmom's estimate, BPM,
    or None), ``tempo_estimated``, ``from_cache``, ``seconds``.
    """
    start = time.perf_counter()
    try:
        result = _process_file(job)
    except Exception as e:  # a run never dies on one file
        result = _rejection(job, "error", f"{job['path']}: unexpected {type(e).__name__}: {e} (a bug? the "
                                          "traceback is in errors.log)", detail=f"{type(e).__name__}: {e}",
                            traceback=traceback.format_exc())
    if not result.get("from_cache"):
        result["seconds"] = time.perf_counter() - start
    return result


def _process_file(job: Mapping[str, Any]) -> Dict[str, Any]:
    from disentangled_ml import audio_io

    path = job["path"]
    ext = os.path.splitext(path)[1].lower()
    if ext not in audio_io.SUPPORTED_EXTENSIONS:
        return _rejection(job, "unsupported_format",
                          f"{path}: unsupported format {ext or '(no extension)'!r}; convert it to one of "
                          f"{', '.join(audio_io.SUPPORTED_EXTENSIONS)}.", prechecked=True)
    if not os.path.isfile(path):
        return _rejection(job, "missing_file", f"{path}: file not found; check the manifest's path column.",
                          prechecked=True)

    params = job["params"]
    sha1 = file_sha1(path)
    entry_path, npy_path = _entry_paths(job["cache_dir"], cache_key(sha1, params))
    entry = _read_entry(entry_path)
    if entry is not None and entry["status"] == "rejected" and entry["reason"] == "undecodable" \
            and "detail" not in entry:
        entry = None  # cached before rejections said why in words (and kept the decoder's text): redo it
    if entry is not None and (
        entry["status"] == "rejected"
        or ((not job["need_tempo"] or entry.get("tempo_estimated"))
            and (not job["cache_audio"] or os.path.isfile(npy_path)))
    ):
        return {**entry, "index": job["index"], "from_cache": True}

    result: Dict[str, Any] = {"index": job["index"], "sha1": sha1, "from_cache": False, "cacheable": True}
    try:
        info = audio_io.probe_audio(path)
        y = audio_io.load_audio(path, params["sample_rate"])
    except audio_io.AudioDecodeError as e:
        result.update(status="rejected", reason="undecodable", message=str(e), detail=e.detail)
        return _store(entry_path, result)

    result["info"] = {"sample_rate": info.sample_rate, "num_frames": info.num_frames, "channels": info.channels,
                      "format_code": info.format_code, "duration": info.duration}
    result["decoded_samples"] = int(y.shape[0])
    rms = float(np.sqrt(np.mean(np.square(y, dtype=np.float64))))
    rms_db = 20.0 * math.log10(rms) if rms > 0 else None  # None = digital silence (-inf dBFS)
    result["rms_db"] = rms_db
    segment = params["segment_samples"]
    rate = params["sample_rate"]
    if y.shape[0] < segment:
        result.update(status="rejected", reason="too_short", detail="",
                      message=f"{path}: {y.shape[0] / rate:.2f} s long, shorter than one "
                              f"{segment / rate:g} s segment (frontend.segment_seconds).")
        return _store(entry_path, result)
    if rms_db is None or rms_db < params["silence_rms_db"]:
        level = "digital silence" if rms_db is None else f"RMS {rms_db:.1f} dBFS"
        result.update(status="rejected", reason="silent", detail="",
                      message=f"{path}: {level}, below the {params['silence_rms_db']:g} dBFS silence threshold "
                              "(data.silence_rms_db).")
        return _store(entry_path, result)

    result.update(status="accepted", reason="", message="", tempo=None, tempo_estimated=False)
    if job["need_tempo"]:
        from disentangled_ml.data.tempo import estimate_tempo

        try:
            bpm = estimate_tempo(y, rate, params["tempo_min_bpm"], params["tempo_max_bpm"])
            result["tempo"] = None if bpm is None else round(bpm, 2)  # madmom's bins are far coarser
            result["tempo_estimated"] = True
        except Exception as e:  # keep the track; its tempo stays unknown and is retried next run
            result["tempo_error"] = f"{type(e).__name__}: {e}"
    if job["cache_audio"]:
        pcm = np.clip(np.round(y * INT16_SCALE), -32768, 32767).astype("<i2")
        _atomic_write(npy_path, lambda f: np.save(f, pcm), mode="wb")
    return _store(entry_path, result)


def _store(entry_path: str, result: Dict[str, Any]) -> Dict[str, Any]:
    entry = {k: v for k, v in result.items() if k not in ("index", "from_cache")}
    _atomic_write(entry_path, lambda f: json.dump(entry, f))
    return result


# --------------------------------------------------------------------------- running the work

def _init_worker(threads: int) -> None:
    # Runs in each spawned worker before TensorFlow is imported, so the thread pools of
    # TF, onnxruntime and BLAS share the cores instead of each taking all of them.
    for var in ("TF_NUM_INTRAOP_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    os.environ["TF_NUM_INTEROP_THREADS"] = "1"
    # Every worker would repeat TensorFlow's start-up lines (and its kernel warnings for
    # each bad file) under the progress bar; decode errors reach the user as messages
    # anyway, and --jobs 0 shows everything.
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # tfio's resample warns about retracing


def _run_marked(worker: Callable[[Mapping[str, Any]], Dict[str, Any]], job: Mapping[str, Any],
                inflight_dir: str) -> Dict[str, Any]:
    # A marker file per in-flight job: if the worker process dies (a decoder segfault),
    # the markers it leaves name the files that were being analysed.
    marker = os.path.join(inflight_dir, str(job["index"]))
    with open(marker, "w"):
        pass
    result = worker(job)
    os.unlink(marker)
    return result


def run_jobs(jobs: Sequence[Mapping[str, Any]], workers: int, on_result: Callable[[Dict[str, Any]], None],
             scratch_dir: str, worker: Callable[[Mapping[str, Any]], Dict[str, Any]] = process_file) -> None:
    """Run ``worker`` over ``jobs`` in ``workers`` spawned processes (0: in this process).

    ``on_result`` is called in this process with each result as it completes.
    A worker process that dies takes only its own file down: the files that were
    in flight are retried one at a time, and the one that kills a process again
    is reported as an ``error`` rejection.
    """
    if workers <= 0:
        for job in jobs:
            on_result(worker(job))
        return
    pending = {job["index"]: job for job in jobs}
    threads = max(1, (os.cpu_count() or 1) // max(1, min(workers, len(pending))))
    context = multiprocessing.get_context("spawn")
    inflight = os.path.join(scratch_dir, "inflight")

    def run_pool(batch: List[Mapping[str, Any]], n: int) -> Optional[List[int]]:
        """Run a batch; None if all went well, else the indices that were in flight when a worker died."""
        if os.path.isdir(inflight):
            for name in os.listdir(inflight):
                os.unlink(os.path.join(inflight, name))
        os.makedirs(inflight, exist_ok=True)
        pool = ProcessPoolExecutor(max_workers=n, mp_context=context, initializer=_init_worker, initargs=(threads,))
        try:
            futures = {pool.submit(_run_marked, worker, job, inflight): job["index"] for job in batch}
            for future in as_completed(futures):
                result = future.result()
                pending.pop(futures[future], None)
                on_result(result)
        except BrokenProcessPool:
            pool.shutdown(wait=True)
            return [i for i in map(int, os.listdir(inflight)) if i in pending]
        except BaseException:
            # Ctrl-C (or a bug here): drop the queued files rather than work through them;
            # the in-flight ones finish or die with the signal. (Not a `with` block: its
            # exit would call shutdown(cancel_futures=False) and undo the cancellation.)
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
        return None

    while pending:
        suspects = run_pool(list(pending.values()), min(workers, len(pending)))
        if suspects is None:
            continue
        if not suspects:
            raise PrepareError("worker processes die before they start on a file; run with --jobs 0 "
                               "(in this process) to see the error.")
        for index in suspects:  # alone, so a crash is surely this file's
            if index in pending and run_pool([pending[index]], 1) is not None:
                job = pending.pop(index)
                log.warning("%s: the worker process died while analysing it", job["path"])
                on_result(_rejection(job, "error", f"{job['path']}: the worker process died while decoding or "
                                                   "analysing this file (a crash in a native decoder?); "
                                                   "re-encode it or leave it out."))


# --------------------------------------------------------------------------- labels

def _tempo_bin(bpm: float, width: float) -> Tuple[float, str]:
    lo = math.floor(bpm / width) * width
    return lo, f"{lo:g}-{lo + width:g}"


def label_report(tracks: Sequence[Track], conditions: Sequence[str], tempo_bin_bpm: float = 10.0,
                 tempo_positive_bpm: float = 5.0, tempo_negative_bpm: float = 10.0) -> Dict[str, Any]:
    """Classes and their counts per condition, with the problems that block training.

    Tag conditions: a track with several labels counts in each; a track with none
    counts as ``unknown``. A class with one track cannot give a positive pair
    (``single_member``). A condition is unusable with fewer than two classes of at
    least two tracks each, or with no labelled track.

    Tempo: classes are ``tempo_bin_bpm``-wide BPM bins (for reading only). Similarity
    uses the BPM values (docs/design.md), so usability is judged on them: some pair must
    lie within ``tempo_positive_bpm`` (a positive pair) and some pair further apart
    than ``tempo_negative_bpm`` (a negative). ``isolated`` lists nothing but counts
    the tracks with no other track within ``tempo_positive_bpm``.

    Returns:
        ``{"num_tracks": N, "conditions": {name: {"kind", "classes": {class: count},
        "labelled", "unknown", "single_member": [...], "usable": bool, "problems": [str]}}}``
        (tempo adds ``bin_bpm``, ``isolated`` and ``sources``).
    """
    report: Dict[str, Any] = {"num_tracks": len(tracks), "conditions": {}}
    for name in conditions:
        if name == TEMPO:
            report["conditions"][name] = _tempo_report(tracks, tempo_bin_bpm, tempo_positive_bpm, tempo_negative_bpm)
            continue
        counts: Dict[str, int] = collections.Counter()
        labelled = 0
        for t in tracks:
            labels = t.labels.get(name, ())
            labelled += bool(labels)
            counts.update(labels)
        classes = dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
        single = [c for c, n in classes.items() if n == 1]
        problems = []
        if single:
            problems.append(f"{len(single)} single-member class(es): cannot form a positive pair ({', '.join(single)})")
        if labelled == 0:
            problems.append(f"unusable: no track has a {name!r} label (add a {name!r} column or drop the condition)")
        elif sum(n >= 2 for n in classes.values()) < 2:
            problems.append("unusable: fewer than 2 classes with >= 2 tracks, so no triplet can be formed "
                            "(label more tracks or drop the condition)")
        report["conditions"][name] = {
            "kind": "tag", "classes": classes, "labelled": labelled, "unknown": len(tracks) - labelled,
            "single_member": single, "usable": not any(p.startswith("unusable") for p in problems),
            "problems": problems,
        }
    return report


def _tempo_report(tracks: Sequence[Track], bin_bpm: float, positive_bpm: float, negative_bpm: float) -> Dict[str, Any]:
    bpms = np.sort(np.array([t.tempo for t in tracks if t.tempo is not None], dtype=np.float64))
    bins: Dict[float, Tuple[str, int]] = {}
    for bpm in bpms:
        lo, label = _tempo_bin(float(bpm), bin_bpm)
        bins[lo] = (label, bins.get(lo, (label, 0))[1] + 1)
    classes = {label: n for _, (label, n) in sorted(bins.items())}
    sources = collections.Counter(t.info.get("tempo_source") or "manifest" for t in tracks if t.tempo is not None)
    isolated = 0
    has_positive = has_negative = False
    if len(bpms) >= 2:
        gaps = np.diff(bpms)
        near = np.zeros(len(bpms), dtype=bool)
        near[:-1] |= gaps <= positive_bpm
        near[1:] |= gaps <= positive_bpm
        isolated = int((~near).sum())
        has_positive = bool(near.any())
        has_negative = bool(bpms[-1] - bpms[0] > negative_bpm)
    else:
        isolated = len(bpms)
    problems = []
    if isolated:
        problems.append(f"{isolated} track(s) with no other track within {positive_bpm:g} BPM: "
                        "cannot form a positive pair")
    if len(bpms) == 0:
        problems.append("unusable: no track has a tempo (give a tempo column or run without --no-tempo)")
    elif not (has_positive and has_negative):
        problems.append(f"unusable: needs two tracks within {positive_bpm:g} BPM and two more than "
                        f"{negative_bpm:g} BPM apart")
    return {
        "kind": "tempo", "bin_bpm": bin_bpm, "classes": classes, "labelled": int(len(bpms)),
        "unknown": len(tracks) - int(len(bpms)), "single_member": [], "isolated": isolated,
        "sources": dict(sorted(sources.items())),
        "usable": not any(p.startswith("unusable") for p in problems), "problems": problems,
    }


def format_label_report(report: Mapping[str, Any]) -> str:
    """The label report as a plain-text table, one block per condition."""
    lines = [f"labels of {report['num_tracks']} accepted track(s):"]
    for name, c in report["conditions"].items():
        head = f"{name}: {c['labelled']} labelled, {c['unknown']} unknown, {len(c['classes'])} class(es)"
        if c["kind"] == "tempo":
            src = ", ".join(f"{n} {s}" for s, n in c["sources"].items())
            head = (f"{name} (BPM, {c['bin_bpm']:g}-BPM bins): {c['labelled']} with tempo"
                    f"{f' ({src})' if src else ''}, {c['unknown']} unknown")
        lines.append(head + ("" if c["usable"] else "  ** UNUSABLE **"))
        width = max((len(k) for k in c["classes"]), default=0)
        for cls, n in c["classes"].items():
            flag = "  single-member: cannot form a positive pair" if cls in c["single_member"] else ""
            lines.append(f"    {cls:<{width}}  {n:>6}{flag}")
        for p in c["problems"]:
            if "single-member class(es)" not in p:  # those are flagged class by class above
                lines.append(f"    ! {p}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- the decoded-audio cache

def _write_audio_shards(out_dir: str, cache_dir: str, tracks: Sequence[Tuple[Track, str]], shards: Optional[int],
                        params: Mapping[str, Any]) -> List[str]:
    """Pack the cached int16 audio of the accepted tracks into TFRecord shards, one track at a time."""
    import tensorflow as tf

    audio_dir = os.path.join(out_dir, "audio")
    os.makedirs(audio_dir, exist_ok=True)
    n = len(tracks)
    num_shards = 0 if n == 0 else min(n, shards or math.ceil(n / TRACKS_PER_SHARD))
    index = new_index(params["sample_rate"])
    names = []
    for s in range(num_shards):
        name = shard_name(s, num_shards)
        part = tracks[s * n // num_shards:(s + 1) * n // num_shards]
        tmp = os.path.join(audio_dir, f".tmp-{uuid.uuid4().hex}-{name}")
        with tf.io.TFRecordWriter(tmp) as writer:
            for track, key in part:
                writer.write(audio_example(track.track_id, np.load(_entry_paths(cache_dir, key)[1])))
        os.replace(tmp, os.path.join(audio_dir, name))
        names.append(name)
        index["shards"].append({"path": name, "num_records": len(part), "track_ids": [t.track_id for t, _ in part]})
    for old in os.listdir(audio_dir):  # shards of an earlier run with another shard count
        if is_shard_name(old) and old not in names:
            os.unlink(os.path.join(audio_dir, old))
    _atomic_write(os.path.join(audio_dir, INDEX_FILE), lambda f: json.dump(index, f, indent=2))
    return [os.path.join("audio", name) for name in names]


# --------------------------------------------------------------------------- the whole collection

def prepare_collection(manifest_path: str, out_dir: str, config: Optional[Config] = None,
                       jobs: Optional[int] = None, estimate_tempo: bool = True, cache_audio: bool = False,
                       shards: Optional[int] = None, progress: bool = True,
                       tempo_bin_bpm: float = 10.0, skip_bad_rows: bool = False) -> PrepareSummary:
    """Validate every file of a manifest, fill in tempo, and write a prepared collection.

    Parameters
    ----------
    manifest_path : str
        Manifest CSV (docs/design.md, contract 1).
    out_dir : str
        Output folder (created); see the module notes for what it holds.
    config : Config, optional
        ``frontend.sample_rate``, ``frontend.segment_seconds``, ``data.silence_rms_db``
        and ``data.tempo_min_bpm``/``tempo_max_bpm`` matter here. Default ``Config()``.
    jobs : int, optional
        Worker processes; default ``os.cpu_count()``. 0 runs in this process
        (faster to start, but a crashing decoder then ends the run). Workers are
        *spawned*, so a script calling this with ``jobs >= 1`` needs the usual
        ``if __name__ == "__main__":`` guard.
    estimate_tempo : bool
        Estimate missing tempi with madmom. False leaves them unknown.
    cache_audio : bool
        Also write the decoded mono audio (int16 at ``frontend.sample_rate``) as
        TFRecord shards under ``out_dir/audio``.
    shards : int, optional
        Number of audio shards; default ``ceil(accepted / 256)``.
    progress : bool
        Show a tqdm progress bar on stderr.
    tempo_bin_bpm : float
        Width of the tempo bins in the label report, BPM.
    skip_bad_rows : bool
        Bad manifest rows (listed in ``out_dir/manifest_problems.csv`` either way)
        do not stop the run: the other rows are prepared and the bad ones are listed
        in ``rejected.csv`` as ``bad_manifest_row``.

    Returns
    -------
    PrepareSummary

    Raises
    ------
    ManifestError
        The manifest cannot be read, or (without ``skip_bad_rows``) has bad rows:
        the message lists them (``.problems`` holds them all) and names
        ``out_dir/manifest_problems.csv``; nothing has been decoded. With
        ``skip_bad_rows``, raised only when no row is good.
    PrepareError
        Bad arguments, or ``out_dir`` would overwrite the input manifest.
    """
    started = time.perf_counter()
    config = config or Config()
    jobs = (os.cpu_count() or 1) if jobs is None else jobs
    if jobs < 0:
        raise PrepareError(f"jobs={jobs}: give a number of worker processes >= 1, or 0 to work in this process.")
    if shards is not None and shards < 1:
        raise PrepareError(f"shards={shards}: give a number of audio shards >= 1 (or leave it unset).")
    if tempo_bin_bpm <= 0:
        raise PrepareError(f"tempo_bin_bpm={tempo_bin_bpm}: give a bin width > 0 BPM.")
    out_manifest = os.path.join(out_dir, "manifest.csv")
    if os.path.abspath(out_manifest) == os.path.abspath(manifest_path):
        raise PrepareError(f"writing to {out_dir} would overwrite the input manifest {manifest_path}; "
                           "choose another --out folder.")
    tracks, problems = check_manifest(manifest_path)
    problems_csv = os.path.join(out_dir, "manifest_problems.csv")
    if problems:
        _write_manifest_problems(problems_csv, problems)
        if not skip_bad_rows:
            raise ManifestError(
                f"manifest {manifest_path} has {len(problems)} bad row(s), listed in {problems_csv}; nothing was "
                "prepared. Fix them and run again, or pass --skip-bad-rows to prepare the other rows without "
                "them (they then go to rejected.csv):\n  " + format_problems(manifest_path, problems), problems)
        if not tracks:
            raise ManifestError(f"every row of manifest {manifest_path} is bad ({len(problems)}, listed in "
                                f"{problems_csv}); there is nothing to prepare: fix them and run again.", problems)
        log.warning("manifest %s: skipping %d bad row(s), listed in %s and rejected.csv.", manifest_path,
                    len(problems), problems_csv)
    elif os.path.exists(problems_csv):
        os.unlink(problems_csv)  # from an earlier run of a manifest since fixed
    cache_dir = os.path.join(out_dir, "cache")
    os.makedirs(cache_dir, exist_ok=True)
    params = analysis_params(config)

    job_list = [{
        "index": i, "path": t.path, "need_tempo": bool(estimate_tempo and t.tempo is None), "params": params,
        "cache_dir": cache_dir, "cache_audio": bool(cache_audio),
    } for i, t in enumerate(tracks)]
    results: Dict[int, Dict[str, Any]] = {}
    from tqdm import tqdm

    bar = tqdm(total=len(job_list), desc="prepare", unit="file", disable=not progress, dynamic_ncols=True)
    status_counts: Dict[str, int] = collections.Counter()

    def on_result(result: Dict[str, Any]) -> None:
        results[result["index"]] = result
        status_counts["cached" if result.get("from_cache") else result["status"]] += 1
        bar.set_postfix(status_counts, refresh=False)
        bar.update(1)

    try:
        run_jobs(job_list, jobs, on_result, scratch_dir=cache_dir)
    finally:
        bar.close()

    summary = PrepareSummary(out_dir=out_dir, total=len(tracks) + len(problems), prechecked=len(problems))
    if problems:
        summary.rejected["bad_manifest_row"] = len(problems)
    accepted: List[Track] = []
    accepted_keys: List[Tuple[Track, str]] = []
    rejected_rows = [[resolve_path(manifest_path, p.path) if p.path else "", p.track_id, "bad_manifest_row",
                      f"{manifest_path}, line {p.line}: {p.problem}", ""] for p in problems]
    errors = []
    worker_seconds = []
    for i, track in enumerate(tracks):
        r = results[i]
        if r.get("from_cache"):
            summary.from_cache += 1
        elif r.get("prechecked"):
            summary.prechecked += 1
        else:
            summary.processed += 1
            if "seconds" in r:
                worker_seconds.append(r["seconds"])
        if r["status"] != "accepted":
            summary.rejected[r["reason"]] = summary.rejected.get(r["reason"], 0) + 1
            rejected_rows.append([track.path, track.track_id, r["reason"], r["message"], r.get("detail", "")])
            if r.get("traceback"):
                errors.append(f"{track.path}:\n{r['traceback']}")
            continue
        info = {k: ("" if v is None else str(v)) for k, v in r["info"].items()}
        info["sha1"] = r["sha1"]
        tempo = track.tempo
        if tempo is not None:
            # A prepared manifest fed back in keeps saying where its tempo came from.
            info["tempo_source"] = track.info.get("tempo_source") or "manifest"
            summary.tempo_manifest += 1
        elif estimate_tempo and r.get("tempo") is not None:
            tempo = float(r["tempo"])
            info["tempo_source"] = "madmom"
            summary.tempo_estimated += 1
        else:
            info["tempo_source"] = ""
            summary.tempo_unknown += 1
            summary.tempo_failed += bool(r.get("tempo_error"))
        prepared = dataclasses.replace(track, tempo=tempo, info={**track.info, **info})
        accepted.append(prepared)
        accepted_keys.append((prepared, cache_key(r["sha1"], params)))
    summary.accepted = len(accepted)
    by_content: Dict[str, List[str]] = collections.defaultdict(list)
    for t in accepted:
        by_content[t.info["sha1"]].append(t.track_id)
    summary.duplicates = [ids for ids in by_content.values() if len(ids) > 1]
    summary.rejected = dict(sorted(summary.rejected.items()))
    # The median, because each worker's first file also pays for importing TensorFlow (seconds).
    summary.seconds_per_file = float(np.median(worker_seconds)) if worker_seconds else 0.0

    write_manifest(accepted, out_manifest, tag_columns=tag_conditions(tracks))
    _write_rejected(os.path.join(out_dir, "rejected.csv"), rejected_rows)
    errors_log = os.path.join(out_dir, "errors.log")
    if errors:
        _atomic_write(errors_log, lambda f: f.write("\n".join(errors)))
    elif os.path.exists(errors_log):
        os.unlink(errors_log)  # from an earlier run; those files are now fine or cached as rejected

    conditions = list(config.conditions.names) + [c for c in tag_conditions(tracks) if c not in config.conditions.names]
    summary.labels = label_report(accepted, conditions, tempo_bin_bpm, config.conditions.tempo_positive_bpm,
                                  config.conditions.tempo_negative_bpm)
    summary.unusable_conditions = [c for c, r in summary.labels["conditions"].items() if not r["usable"]]
    _atomic_write(os.path.join(out_dir, "labels.json"), lambda f: json.dump(summary.labels, f, indent=2))
    config.to_json(os.path.join(out_dir, "config.json"))

    if cache_audio:
        summary.audio_shards = _write_audio_shards(out_dir, cache_dir, accepted_keys, shards, params)
    summary.seconds = time.perf_counter() - started
    _atomic_write(os.path.join(out_dir, "summary.json"), lambda f: json.dump(summary.to_dict(), f, indent=2))
    return summary


def _write_manifest_problems(path: str, problems: Sequence[ManifestProblem]) -> None:
    def write(f):
        w = csv.writer(f)
        w.writerow(MANIFEST_PROBLEM_COLUMNS)
        w.writerows([p.line, p.track_id, p.path, p.problem] for p in problems)

    _atomic_write(path, write)


def _write_rejected(path: str, rows: Iterable[Sequence[str]]) -> None:
    def write(f):
        w = csv.writer(f)
        w.writerow(REJECTED_COLUMNS)
        w.writerows(rows)

    _atomic_write(path, write)


def format_summary(summary: PrepareSummary) -> str:
    """The run's counts as a few lines of text."""
    rejected = ", ".join(f"{k} {v}" for k, v in summary.rejected.items())
    lines = [
        f"{summary.total} file(s) in {summary.seconds:.1f} s: {summary.accepted} accepted, "
        f"{summary.num_rejected} rejected{f' ({rejected})' if rejected else ''}",
        f"analysed {summary.processed} (median {summary.seconds_per_file:.2f} s/file in a worker), "
        f"taken from the cache {summary.from_cache}, rejected before decoding {summary.prechecked}",
        f"tempo: {summary.tempo_manifest} from the manifest, {summary.tempo_estimated} estimated with madmom, "
        f"{summary.tempo_unknown} unknown" + (f" ({summary.tempo_failed} madmom failure(s))" if summary.tempo_failed else ""),
    ]
    if summary.duplicates:
        shown = "; ".join(", ".join(ids) for ids in summary.duplicates[:5])
        more = f" and {len(summary.duplicates) - 5} more" if len(summary.duplicates) > 5 else ""
        lines.append(f"{len(summary.duplicates)} group(s) of tracks with identical files ({shown}{more}): "
                     "remove the copies, or they leak between splits (see summary.json)")
    if summary.unusable_conditions:
        lines.append(f"unusable condition(s): {', '.join(summary.unusable_conditions)} (see labels.json)")
    if summary.audio_shards:
        lines.append(f"decoded audio: {len(summary.audio_shards)} TFRecord shard(s) in "
                     f"{os.path.join(summary.out_dir, 'audio')}")
    return "\n".join(lines)
