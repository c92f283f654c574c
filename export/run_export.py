"""``dml export``: a training run -> an export directory (docs/design.md, contract 2).

:func:`export_run` runs the stages in order and times each for ``parity.json``:
load the run and write the SavedModel (:mod:`.savedmodel`), convert the TFLite
variants (:mod:`.conversion`), compare every variant with Keras and score the test
triplets (:mod:`.parity`), then write ``config.json`` and ``README.md``
(:mod:`.export_config`). TensorFlow is imported by those stages only.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from typing import Any, Dict, Optional

from disentangled_ml.export.parity import ParityError
from disentangled_ml.export.savedmodel import ExportError
from disentangled_ml.run_directory import RunDirectory, RunDirectoryError

log = logging.getLogger(__name__)

__all__ = ["export_run", "DEFAULT_CALIBRATION_SEGMENTS", "DEFAULT_PARITY_SEGMENTS", "DEFAULT_MAX_TRIPLETS"]

#: Training-split segments used to calibrate the full-integer model.
DEFAULT_CALIBRATION_SEGMENTS = 200
#: Segments every variant is compared on.
DEFAULT_PARITY_SEGMENTS = 100
#: Test triplets per condition each variant is scored on in parity.json. Every variant is scored
#: on the same triplets, so a variant that loses accuracy shows against the others even at this
#: size; the whole test set (0: all) took 14.5 of the 18 minutes of one export on 2 cores.
DEFAULT_MAX_TRIPLETS = 100


class _StageTimer:
    """Wall-clock seconds per stage (parity.json's ``timing.stages_s``): :meth:`lap` closes a stage."""

    def __init__(self) -> None:
        self.started = self.last = time.perf_counter()
        self.stages: Dict[str, float] = {}

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.stages[stage] = round(self.stages.get(stage, 0.0) + now - self.last, 3)
        self.last = now

    def total(self) -> float:
        return round(time.perf_counter() - self.started, 3)


def _dir_size(path: str) -> int:
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)


def export_run(source: str, out_dir: str, prepared_dir: Optional[str] = None, int8_full: bool = True,
               calibration_segments: int = DEFAULT_CALIBRATION_SEGMENTS,
               parity_segments: int = DEFAULT_PARITY_SEGMENTS, max_triplets: Optional[int] = DEFAULT_MAX_TRIPLETS,
               overwrite: bool = False, seed: int = 0, batch_size: int = 64) -> Dict[str, Any]:
    """Export a trained run: SavedModel, TFLite variants, config.json and parity.json.

    Args:
        source: the training run directory (``dml train``) or a ``.keras`` file in it.
        out_dir: the export directory to create.
        prepared_dir: the prepared collection the run was trained on (default: the
            ``prepared_dir`` in ``RUN_DIR/run.json``). Gives the training-split
            calibration segments, the test-split parity segments and the audio of the
            test triplets. Without it, calibration and parity use synthetic
            audio-like signals and the triplet accuracies are left out.
        int8_full: also write ``model_int8_full.tflite``.
        calibration_segments: training-split segments that calibrate the int8_full model.
        parity_segments: segments each variant is compared on.
        max_triplets: score at most this many test triplets per condition (None or 0: all).
        overwrite: replace an existing non-empty ``out_dir``.
        seed: seeds the choice of segments.
        batch_size: crops per forward pass.

    Returns:
        ``{"out_dir", "config": config.json dict, "parity": parity.json dict}``.

    Raises:
        ExportError: unreadable run, existing output, conversion failure.
        ParityError: a float32 variant differs from Keras by more than
            :data:`~.parity.FLOAT_TOLERANCE` (config.json records ``parity_passed: false``
            and readers refuse the export).
    """
    from disentangled_ml.export import parity as par
    from disentangled_ml.export import savedmodel as sm
    from disentangled_ml.export import tflite as tfl
    from disentangled_ml.export.conversion import convert_variants
    from disentangled_ml.export.export_config import build_export_config, write_export_config

    if calibration_segments < 1 or parity_segments < 1:
        raise ExportError("calibration and parity segment counts must be >= 1.")
    if max_triplets is not None and max_triplets < 0:
        raise ExportError(f"max_triplets={max_triplets}: give the test triplets per condition to score (>= 1), "
                          "or 0 for all of them.")
    timer = _StageTimer()  # wall-clock seconds of each stage, for parity.json's "timing"

    run = sm.load_run(source)
    cfg, fe = run.config, run.config.frontend
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        if not overwrite:
            raise ExportError(f"{out_dir} exists and is not empty; choose another --out or pass --overwrite.")
        shutil.rmtree(out_dir)
    os.makedirs(out_dir, exist_ok=True)

    timer.lap("load_run")
    log.info("writing the SavedModel")
    saved_model_dir = os.path.join(out_dir, "saved_model")
    signatures = sm.write_saved_model(run, saved_model_dir)
    timer.lap("saved_model")
    heads = sm.condition_heads(cfg, run.masks)
    output_names = [sm.EMBEDDING_OUTPUT] + list(heads)

    # Audio for calibration (training split) and parity (test split), when the prepared collection is
    # at hand; without it (or without splits.csv) they fall back on synthetic audio-like signals.
    run_dir = RunDirectory(run.run_dir)
    try:
        prepared = run_dir.prepared_dir(prepared_dir, required=False)
        splits = run_dir.read_splits() if os.path.isfile(run_dir.splits_path) else {}
    except RunDirectoryError as e:
        raise ExportError(str(e)) from None
    tracks = None
    if prepared:
        from disentangled_ml.data.manifest import read_manifest

        tracks = read_manifest(os.path.join(prepared, "manifest.csv"))
        if not splits:
            log.warning("%s is missing: the split of each track is unknown.", run_dir.splits_path)

    def segments_of(split: str, n: int, seed_: int):
        ids = [t.track_id for t in tracks or [] if splits.get(t.track_id) == split]
        if ids:
            segs, used = par.split_segments(tracks, ids, n, fe.segment_samples, fe.sample_rate, seed=seed_)
            if len(segs):
                return segs, {"source": f"{split} split of {os.path.abspath(prepared)}", "tracks": used,
                              "segments": int(len(segs))}
        log.warning("no %s-split audio available (pass --prepared PREPARED_DIR); using %d synthetic "
                    "audio-like segments instead.", split, n)
        return (par.audio_like_segments(n, fe.segment_samples, fe.sample_rate, seed=seed_),
                {"source": "synthetic audio-like signals (no prepared collection)", "tracks": 0, "segments": n})

    # ---------------------------------------------------------------- TFLite
    variants = [v for v in tfl.VARIANTS if int8_full or v.name != "int8_full"]
    files: Dict[str, Any] = {"saved_model": {"format": "TensorFlow SavedModel",
                                             "signatures": sorted(signatures), "size_bytes": _dir_size(saved_model_dir)}}
    tflite_files, int8_full_info, frozen = convert_variants(
        run, saved_model_dir, out_dir, variants, output_names,
        calibration=lambda: segments_of("train", calibration_segments, seed), lap=timer.lap)
    files.update(tflite_files)

    # ---------------------------------------------------------------- parity
    log.info("checking parity on %d segments", parity_segments)
    segs, seg_info = segments_of("test", parity_segments, seed + 1)
    variant_report, embedders = par.output_parity(run, heads, saved_model_dir, out_dir, variants, segs, batch_size)
    report: Dict[str, Any] = {"tolerance": par.FLOAT_TOLERANCE, "enforced": list(par.ENFORCED), "segments": seg_info,
                              "variants": variant_report}
    timer.lap("parity")

    triplet_path = run_dir.eval_triplets_path("test")
    if tracks is not None and os.path.isfile(triplet_path):
        from disentangled_ml.data.eval_triplets import load_split_audio, read_eval_triplets

        triplets = par.first_per_condition(read_eval_triplets(triplet_path), max_triplets)
        log.info("triplet accuracy of every variant on %d test triplets", len(triplets))
        audio = load_split_audio(tracks, triplets, cfg)
        timer.lap("triplet_audio")
        acc = par.triplet_accuracies(triplets, audio, cfg, run.masks, embedders, batch_size)
        report["triplet_accuracy"] = {"source": os.path.abspath(triplet_path), **acc}
        timer.lap("triplet_accuracy")
    else:
        report["triplet_accuracy"] = {"skipped": "no test triplets with audio (needs RUN_DIR/test_triplets.csv "
                                                 "and the prepared collection)"}
    failures = par.check_parity(report)
    report["passed"] = not failures
    report["failures"] = failures
    report["timing"] = {"total_s": timer.total(), "stages_s": timer.stages,
                        "note": "wall-clock seconds of this export up to writing parity.json; "
                                "triplet_accuracy.seconds splits the triplet scoring by variant"}
    with open(os.path.join(out_dir, "parity.json"), "w") as f:
        json.dump(report, f, indent=2, default=float)
        f.write("\n")

    # ---------------------------------------------------------------- config.json
    config = build_export_config(run, signatures=signatures, files=files, int8_full_info=int8_full_info,
                                 frozen=frozen, parity_passed=not failures)
    write_export_config(out_dir, config)
    if failures:
        raise ParityError(f"the export in {out_dir} does not reproduce the Keras model: " + "; ".join(failures)
                          + f". Details in {out_dir}/parity.json; the export is marked invalid.")
    return {"out_dir": out_dir, "config": config, "parity": report}
