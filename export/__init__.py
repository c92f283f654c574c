"""SavedModel / TFLite export and parity checks (installed as ``disentangled_ml.export``).

:func:`export_run` turns a training run into an export directory (docs/design.md,
contract 2)::

    EXPORT_DIR/
      config.json              sample rate, segment length, embedding size, condition slices,
                               mask mode, the whole frontend, model, versions, the training config
      saved_model/             signatures serving_default (audio) and log_mel (log-mel input)
      model.tflite             float32
      model_fp16.tflite        float16 weights
      model_int8.tflite        dynamic-range int8
      model_int8_full.tflite   full integer (frontend and output head float), unless disabled
      parity.json              every variant against the Keras model, and the export's wall time per stage
      README.md                what the files are and how to call them

Submodules: :mod:`.savedmodel` (loading a run, the SavedModel), :mod:`.tflite`
(conversion, LiteRT runner), :mod:`.parity` (comparisons). TensorFlow is imported
only when an export is made, so :class:`~.tflite.TFLiteEmbedder` stays usable
without it.
"""

from __future__ import annotations

import csv
import datetime
import json
import logging
import os
import shutil
import time
from typing import Any, Dict, Mapping, Optional

import numpy as np

from disentangled_ml.condition_views import ConditionViews

log = logging.getLogger(__name__)

__all__ = ["export_run", "DEFAULT_CALIBRATION_SEGMENTS", "DEFAULT_PARITY_SEGMENTS", "FORMAT_VERSION",
           "ExportError", "ParityError", "load_export_config"]

#: Training-split segments used to calibrate the full-integer model.
DEFAULT_CALIBRATION_SEGMENTS = 200
#: Segments every variant is compared on.
DEFAULT_PARITY_SEGMENTS = 100
#: Test triplets per condition each variant is scored on in parity.json. Every variant is scored
#: on the same triplets, so a variant that loses accuracy shows against the others even at this
#: size; the whole test set (0: all) took 14.5 of the 18 minutes of one export on 2 cores.
DEFAULT_MAX_TRIPLETS = 100
#: Version of the export directory layout written to config.json.
FORMAT_VERSION = 1
#: config.json's "condition_outputs_note": what a condition output is, per mask mode.
CONDITION_OUTPUTS_NOTE = {
    "fixed": "its slice of the embedding",
    "learned": "the whole embedding multiplied by the condition's learned mask (condition_masks)",
    "none": "the whole embedding: one global space (mask_mode none)",
}

from disentangled_ml.export.parity import ParityError  # noqa: E402  (numpy only)
from disentangled_ml.export.savedmodel import ExportError  # noqa: E402  (numpy only; TF is lazy)


def load_export_config(export_dir: str) -> Dict[str, Any]:
    """Read and check ``EXPORT_DIR/config.json``.

    Raises:
        ExportError: missing/invalid file, or an export whose parity check failed.
    """
    path = os.path.join(export_dir, "config.json")
    if not os.path.isfile(path):
        raise ExportError(f"{path} does not exist; is {export_dir} an export directory (dml export)?")
    try:
        with open(path) as f:
            cfg = json.load(f)
    except json.JSONDecodeError as e:
        raise ExportError(f"{path} is not valid JSON: {e}") from None
    for key in ("sample_rate", "segment_seconds", "embedding_dim", "conditions"):
        if key not in cfg:
            raise ExportError(f"{path} has no {key!r}; it is not an export config (docs/design.md, contract 2).")
    if cfg.get("parity_passed") is False:
        raise ExportError(f"{export_dir} failed its parity check (see {export_dir}/parity.json); re-export it.")
    return cfg


def _dir_size(path: str) -> int:
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)


def _prepared_dir(run_dir: Optional[str], prepared_dir: Optional[str]) -> Optional[str]:
    if prepared_dir:
        if not os.path.isfile(os.path.join(prepared_dir, "manifest.csv")):
            raise ExportError(f"--prepared {prepared_dir} holds no manifest.csv (the folder dml prepare wrote).")
        return prepared_dir
    run_json = os.path.join(run_dir or "", "run.json")
    if not run_dir or not os.path.isfile(run_json):
        return None
    try:
        with open(run_json) as f:
            prepared = json.load(f).get("prepared_dir")
    except (json.JSONDecodeError, AttributeError):
        return None
    if prepared and not os.path.isabs(prepared):
        prepared = os.path.join(run_dir, prepared)
    if prepared and os.path.isfile(os.path.join(prepared, "manifest.csv")):
        return prepared
    log.warning("the prepared collection %s recorded in %s is not there; pass --prepared to calibrate and "
                "check parity on real audio.", prepared, run_json)
    return None


def _read_splits(run_dir: Optional[str]) -> Dict[str, str]:
    path = os.path.join(run_dir or "", "splits.csv")
    if not run_dir or not os.path.isfile(path):
        return {}
    with open(path, newline="") as f:
        return {r["track_id"]: r["split"] for r in csv.DictReader(f) if r.get("track_id")}


def _readme(config: Mapping[str, Any]) -> str:
    conds = ", ".join(f"`{n}` {v}" for n, v in config["conditions"].items())
    lines = [
        "# disentangled_ml export",
        "",
        f"Input: mono waveform, float32 `[batch, {config['segment_samples']}]` in [-1, 1] at "
        f"{config['sample_rate']} Hz ({config['segment_seconds']} s). The frontend (log-mel, then pitch bands) "
        "is inside every model.",
        f"Outputs: `embedding` float32 `[batch, {config['embedding_dim']}]` (unit L2 norm) and one output per "
        f"condition ({config['condition_outputs_note']}). Condition dimensions: {conds}.",
        "Similarity: Euclidean distance on a condition's output (or the whole embedding).",
        "",
        "- `saved_model/`: signatures `serving_default` (input `audio`) and `log_mel` (input `log_mel`, "
        "`[batch, frames, n_bands]`, the frontend's output: `n_mels` mel bands then `n_pitch_bands` pitch bands).",
    ]
    for name, f in config["files"].items():
        if name.endswith(".tflite"):
            lines.append(f"- `{name}`: {f['quantization']} ({f['size_bytes']} bytes).")
    lines += [
        "- `parity.json`: every variant against the Keras model (max |diff|, min cosine, triplet accuracy), "
        "and the export's wall time per stage (`timing`).",
        "",
        "TFLite: use the signature runner, which maps the names above to tensors "
        "(`Interpreter(model_path).get_signature_runner()(audio=x)`); runs with `ai-edge-litert` alone.",
        "In `model_int8_full.tflite` the STFT, power spectrum, mel filterbank and log stay float32 between "
        "QUANTIZE/DEQUANTIZE ops, as does the L2-normalised output head; the convolutions run in int8.",
        "",
    ]
    return "\n".join(lines)


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
    from disentangled_ml import __version__
    from disentangled_ml.export import parity as par
    from disentangled_ml.export import savedmodel as sm
    from disentangled_ml.export import tflite as tfl
    from disentangled_ml.features import filterbank_weight_shapes

    if calibration_segments < 1 or parity_segments < 1:
        raise ExportError("calibration and parity segment counts must be >= 1.")
    if max_triplets is not None and max_triplets < 0:
        raise ExportError(f"max_triplets={max_triplets}: give the test triplets per condition to score (>= 1), "
                          "or 0 for all of them.")
    started = time.perf_counter()
    stages: Dict[str, float] = {}  # wall-clock seconds of each stage, for parity.json's "timing"

    def timed(stage: str, since: float) -> float:
        now = time.perf_counter()
        stages[stage] = round(stages.get(stage, 0.0) + now - since, 3)
        return now

    run = sm.load_run(source)
    cfg, fe = run.config, run.config.frontend
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        if not overwrite:
            raise ExportError(f"{out_dir} exists and is not empty; choose another --out or pass --overwrite.")
        shutil.rmtree(out_dir)
    os.makedirs(out_dir, exist_ok=True)

    t0 = timed("load_run", started)
    log.info("writing the SavedModel")
    saved_model_dir = os.path.join(out_dir, "saved_model")
    signatures = sm.write_saved_model(run, saved_model_dir)
    t0 = timed("saved_model", t0)
    heads = sm.condition_heads(cfg, run.masks)
    output_names = [sm.EMBEDDING_OUTPUT] + list(heads)

    # Audio for calibration (training split) and parity (test split), when the
    # prepared collection is at hand.
    prepared = _prepared_dir(run.run_dir, prepared_dir)
    splits = _read_splits(run.run_dir)
    tracks = None
    if prepared:
        from disentangled_ml.data.manifest import read_manifest

        tracks = read_manifest(os.path.join(prepared, "manifest.csv"))
        if not splits:
            log.warning("%s/splits.csv is missing: the split of each track is unknown.", run.run_dir)

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

    variants = [v for v in tfl.VARIANTS if int8_full or v.name != "int8_full"]
    calib_info = None
    files: Dict[str, Any] = {"saved_model": {"format": "TensorFlow SavedModel",
                                             "signatures": sorted(signatures), "size_bytes": _dir_size(saved_model_dir)}}
    int8_full_info: Dict[str, Any] = {}
    float_content: Optional[bytes] = None
    tflite_source = saved_model_dir  # replaced by a frozen copy if LiteRT returns NaN
    for v in variants:
        log.info("converting %s", v.filename)
        kwargs: Dict[str, Any] = {}
        if v.name == "int8_full":
            calib, calib_info = segments_of("train", calibration_segments, seed)
            t0 = timed("calibration_audio", t0)

            def representative(calib=calib):
                for row in calib:
                    yield {sm.AUDIO_INPUT: row[None, :]}
            kwargs = {"representative": representative, "input_samples": fe.segment_samples,
                      "float_node_pattern": sm.frontend_node_pattern(run.frontend_layer_name)}
        if v.name == "int8_full" and float_content is not None:
            kwargs["float_model"] = float_content
        if v.name == "int8":
            kwargs["frontend_weight_shapes"] = filterbank_weight_shapes(fe)
        try:
            result = tfl.convert_variant(tflite_source, v.name, **kwargs)
            if v.name == "float32" and not tfl.outputs_finite(result["content"], fe.segment_samples):
                # docs/design.md: a variable left as a resource makes LiteRT return NaN; freeze and redo.
                log.warning("model.tflite returns NaN/inf under LiteRT; converting from a frozen copy of the "
                            "SavedModel (variables folded into constants) instead.")
                tflite_source = tfl.freeze_saved_model(saved_model_dir, os.path.join(out_dir, ".frozen_saved_model"))
                result = tfl.convert_variant(tflite_source, v.name, **kwargs)
                if not tfl.outputs_finite(result["content"], fe.segment_samples):
                    raise ExportError("model.tflite returns NaN/inf under LiteRT even from frozen variables.")
        except tfl.TFLiteConversionError as e:
            raise ExportError(str(e)) from None
        if v.name == "float32":
            float_content = result["content"]
        path = os.path.join(out_dir, v.filename)
        with open(path, "wb") as f:
            f.write(result["content"])
        try:
            sigs = tfl.check_signature(path, output_names)
        except ValueError as e:
            raise ExportError(f"{path}: {e}") from None
        files[v.filename] = {"variant": v.name, "weights": v.weights, "compute": v.compute,
                             "quantization": v.quantization, "size_bytes": os.path.getsize(path),
                             "signatures": sigs, "ops_by_dtype": tfl.op_dtypes(path)}
        if v.name == "int8_full":
            int8_full_info = {"calibration": calib_info, "float_islands": [
                "frontend: frame, window, RFFT, power, mel matrix, log, standardisation",
                "onset branch (if any): spectral flux and its autocorrelation",
                "output head: L2 normalisation and condition outputs"],
                "float_nodes": len(result["float_nodes"]),
                "degenerate_nodes_kept_float": result["extra_float_nodes"]}
            files[v.filename]["calibration"] = calib_info
        t0 = timed(f"convert_{v.name}", t0)

    frozen = tflite_source != saved_model_dir
    shutil.rmtree(os.path.join(out_dir, ".frozen_saved_model"), ignore_errors=True)

    # ---------------------------------------------------------------- parity
    log.info("checking parity on %d segments", parity_segments)
    segs, seg_info = segments_of("test", parity_segments, seed + 1)
    wf = run.waveform_model

    def keras_embed(x):
        return np.concatenate([np.asarray(wf.predict_on_batch(x[i:i + batch_size])[sm.EMBEDDING_OUTPUT])
                               for i in range(0, len(x), batch_size)])

    ref = {k: np.asarray(v, np.float64) for k, v in sm.apply_heads(keras_embed(segs), heads).items()}
    import tensorflow as tf

    from disentangled_ml.features import log_mel

    loaded = tf.saved_model.load(saved_model_dir)
    serve, from_mel = loaded.signatures[sm.SERVING_SIGNATURE], loaded.signatures[sm.MEL_SIGNATURE]

    def saved_model_all(x, fn=serve, key=sm.AUDIO_INPUT):
        parts = [fn(**{key: tf.constant(x[i:i + batch_size])}) for i in range(0, len(x), batch_size)]
        return {k: np.concatenate([p[k].numpy() for p in parts]) for k in parts[0]}

    mel = log_mel(segs, fe).numpy()
    ref_mel = {k: np.asarray(v, np.float64) for k, v in sm.apply_heads(np.concatenate(
        [np.asarray(run.mel_model.predict_on_batch(mel[i:i + batch_size])[sm.EMBEDDING_OUTPUT])
         for i in range(0, len(mel), batch_size)]), heads).items()}
    report: Dict[str, Any] = {
        "tolerance": par.FLOAT_TOLERANCE, "enforced": list(par.ENFORCED), "segments": seg_info,
        "variants": {
            "saved_model": {"file": "saved_model", "signature": sm.SERVING_SIGNATURE, **par.compare(ref, saved_model_all(segs))},
            "saved_model_log_mel": {"file": "saved_model", "signature": sm.MEL_SIGNATURE,
                                    **par.compare(ref_mel, saved_model_all(mel, from_mel, sm.MEL_INPUT))},
        },
    }
    tfl_embedders = {}
    for v in variants:
        emb = tfl.TFLiteEmbedder(os.path.join(out_dir, v.filename), batch_size=batch_size, outputs="all")
        report["variants"][v.name] = {"file": v.filename, **par.compare(ref, emb.run(segs))}
        # every core for the scoring: LiteRT's outputs are the same with 1 or 2 threads (measured)
        tfl_embedders[v.name] = tfl.TFLiteEmbedder(os.path.join(out_dir, v.filename), batch_size=batch_size,
                                                   num_threads=os.cpu_count())
    t0 = timed("parity", t0)

    triplet_path = os.path.join(run.run_dir or "", "test_triplets.csv")
    if tracks is not None and os.path.isfile(triplet_path):
        from disentangled_ml.data.eval_triplets import load_split_audio, read_eval_triplets

        triplets = read_eval_triplets(triplet_path)
        if max_triplets:
            seen: Dict[str, int] = {}
            kept = []
            for t in triplets:
                seen[t["condition"]] = seen.get(t["condition"], 0) + 1
                if seen[t["condition"]] <= max_triplets:
                    kept.append(t)
            triplets = kept
        log.info("triplet accuracy of every variant on %d test triplets", len(triplets))
        audio = load_split_audio(tracks, triplets, cfg)
        embedders = {"keras": keras_embed,
                     "saved_model": lambda x: saved_model_all(x)[sm.EMBEDDING_OUTPUT], **tfl_embedders}
        t0 = timed("triplet_audio", t0)
        acc = par.triplet_accuracies(triplets, audio, cfg, run.masks, embedders, batch_size)
        report["triplet_accuracy"] = {"source": os.path.abspath(triplet_path), **acc}
        t0 = timed("triplet_accuracy", t0)
    else:
        report["triplet_accuracy"] = {"skipped": "no test triplets with audio (needs RUN_DIR/test_triplets.csv "
                                                 "and the prepared collection)"}
    failures = par.check_parity(report)
    report["passed"] = not failures
    report["failures"] = failures
    report["timing"] = {"total_s": round(time.perf_counter() - started, 3), "stages_s": stages,
                        "note": "wall-clock seconds of this export up to writing parity.json; "
                                "triplet_accuracy.seconds splits the triplet scoring by variant"}
    with open(os.path.join(out_dir, "parity.json"), "w") as f:
        json.dump(report, f, indent=2, default=float)
        f.write("\n")

    # ---------------------------------------------------------------- config.json
    dim = cfg.conditions.embedding_dim
    views = ConditionViews.from_config(cfg, run.masks).to_export_config()
    mode = views["mask_mode"]
    conditions = views["conditions"]
    note = CONDITION_OUTPUTS_NOTE[mode]
    config: Dict[str, Any] = {
        "format": "disentangled_ml.export", "format_version": FORMAT_VERSION,
        "sample_rate": fe.sample_rate, "segment_seconds": fe.segment_seconds,
        "segment_samples": fe.segment_samples, "num_frames": fe.num_frames, "n_mels": fe.n_mels,
        "n_bands": fe.n_bands, "n_pitch_bands": fe.n_pitch_bands,
        "embedding_dim": dim, "conditions": conditions, "condition_names": list(heads),
        "mask_mode": mode, "condition_outputs_note": note,
        "frontend": {**cfg.to_dict()["frontend"], "mel_fmax": fe.mel_fmax, "center": False,
                     "window": "hann (periodic)", "mel_scale": "slaney", "compression": "log10(1 + log_multiplier * S)",
                     "standardisation": "(x - norm_mean) / norm_std",
                     "pitch_filterbank": "madmom LogarithmicFilterbank (A4 = 440 Hz, unit-area triangles, merged "
                                         "duplicates) on a pitch_n_fft periodic-Hann STFT of the waveform zero-padded "
                                         "by (pitch_n_fft - n_fft) / 2 at each end, same hop; 0 bands per octave = "
                                         "none"},
        "model": {"name": wf.name, "backbone": cfg.model.backbone, "width": cfg.model.width,
                  "parameters": int(wf.count_params()), "source": run.model_path},
        "package": {"name": "disentangled_ml", "version": __version__},
        "version": __version__,
        "tensorflow": tf.__version__,
        "training_config_hash": cfg.hash(),
        "training_config": cfg.to_dict(),
        "signatures": signatures,
        "files": files,
        "int8_full": int8_full_info or None,
        "tflite_from_frozen_variables": frozen,
        "parity_passed": not failures,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if "condition_masks" in views:
        config["condition_masks"] = views["condition_masks"]
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    with open(os.path.join(out_dir, "README.md"), "w") as f:
        f.write(_readme(config))
    if failures:
        raise ParityError(f"the export in {out_dir} does not reproduce the Keras model: " + "; ".join(failures)
                          + f". Details in {out_dir}/parity.json; the export is marked invalid.")
    return {"out_dir": out_dir, "config": config, "parity": report}
