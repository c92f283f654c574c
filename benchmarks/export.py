"""Size and single-thread latency of every export variant, side by side with the Keras model.

For one 3 s segment (batch 1), on one CPU thread:

* ``keras``: the waveform Keras model called through ``tf.function`` (TensorFlow
  with ``intra_op_parallelism_threads = inter_op_parallelism_threads = 1``);
* ``saved_model``: the export's ``serving_default`` signature (same TensorFlow settings);
* each ``.tflite`` variant with LiteRT (``num_threads=1``, default XNNPACK delegate,
  what a client gets).

Each is warmed up, then timed ``--repeats`` times; the median and 90th percentile
are reported, with the file size and the parity numbers of the export.

The frontend alone (waveform -> log-mel and pitch bands, float32 TFLite, the same
``disentangled_ml.features.log_mel`` the exports carry) is timed the same way twice:
with the filterbanks trimmed to the FFT bins they weight (what every export uses since
0.4) and with the full matrices (0.3's frontend, the reference), so the share of the
frontend in a variant's latency is measured, not inferred. The parts are then timed one by
one (:func:`stage_latency`): the network alone from log-mel patches (float32 and int8), the
mel spectrum as exported (a factorised DFT in matmuls) beside 0.9.1's RFFT, and the pitch
bands' decimation as exported (polyphase) beside the 0.9.0 strided convolution.

Without ``--run`` the script builds an untrained model of the default ``Config()``
(the default network, 22,050 Hz, 3 s) and exports it with synthetic calibration
audio: size and latency do not depend on the weights (the JSON says so). With
``--run RUN_DIR`` it exports that trained run instead.

The export's own wall time is reported too: ``export_seconds`` around ``export_run``, and
``export_timing``, the figures the export writes into its ``parity.json`` (``timing``: the
total and each stage, SavedModel, each conversion, calibration audio, parity, triplet
audio and scoring; with test triplets, the scoring time of each variant and how many
distinct crops it embedded).

Writes ``benchmarks/results/export.json`` and prints a table. These machines are
shared; ratios between variants are the point, absolute figures move.

    python benchmarks/export.py [--run RUN_DIR] [--repeats 30] [--warmup 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np


def _single_thread_tf():
    import tensorflow as tf

    # Must run before TensorFlow starts its thread pools, i.e. before any op.
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    return tf


def untrained_run(work: str, cfg=None, name: str = "untrained_run") -> str:
    """``work/name``: a run directory holding an untrained model of ``cfg`` (default ``Config()``),
    written as ``dml train`` writes one (config.json, embedding.keras, masks.npy); returns its path."""
    import keras

    from disentangled_ml.config import Config
    from disentangled_ml.models import build_triplet_model
    from disentangled_ml.training import save_run_model

    cfg = Config() if cfg is None else cfg
    run = os.path.join(work, name)
    os.makedirs(run)
    keras.utils.set_random_seed(0)
    save_run_model(run, cfg, build_triplet_model(cfg))
    return run


def _time(fn, warmup: int, repeats: int) -> dict:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return {"latency_ms_median": float(np.median(times)), "latency_ms_p90": float(np.percentile(times, 90)),
            "latency_ms_min": float(np.min(times))}


def tflite_latency(path: str, segment_samples: int, warmup: int = 3, repeats: int = 30) -> dict:
    """Single-thread LiteRT latency (default XNNPACK delegate) of a ``.tflite`` export on one random
    segment of ``segment_samples`` samples (batch 1): ``latency_ms_median``, ``_p90``, ``_min``."""
    from disentangled_ml.export.tflite import open_interpreter

    x = np.random.default_rng(0).uniform(-0.5, 0.5, (1, segment_samples)).astype(np.float32)
    runner = open_interpreter(path, num_threads=1).get_signature_runner()
    return _time(lambda: runner(audio=x), warmup, repeats)


def _waveform_tflite(name: str, fn, x: np.ndarray, work: str, warmup: int, repeats: int):
    """``fn`` (a float32 ``[1, samples]`` waveform -> one tensor, in TF ops) as a float32 TFLite file
    ``work/name.tflite``, run once on ``x`` and timed on one LiteRT thread. Returns ``(row, output)``:
    the row ``{"variant", "file", "size_bytes", "latency_ms_*"}`` and the output as numpy."""
    import tensorflow as tf

    from disentangled_ml.export.tflite import open_interpreter

    module = tf.Module()
    module.serve = tf.function(lambda audio: {"y": fn(audio)},
                               input_signature=[tf.TensorSpec(x.shape, tf.float32, name="audio")])
    saved = os.path.join(work, name)
    tf.saved_model.save(module, saved, signatures={"serving_default": module.serve})
    path = saved + ".tflite"
    with open(path, "wb") as f:
        f.write(tf.lite.TFLiteConverter.from_saved_model(saved).convert())
    runner = open_interpreter(path, num_threads=1).get_signature_runner()
    output = runner(audio=x)["y"]
    row = {"variant": name, "file": f"{name}.tflite (benchmark only)", "size_bytes": os.path.getsize(path),
           **_time(lambda: runner(audio=x), warmup, repeats)}
    return row, output


def frontend_latency(fe, work: str, warmup: int = 3, repeats: int = 30) -> list:
    """Single-thread LiteRT latency of the frontend alone, as float32 TFLite: as exported (trimmed
    filterbanks), with full filterbanks, without the pitch bands (the mel STFT alone: the pitch-band
    STFT's share is the difference), and with the pitch STFT at the other rate: decimated by
    :func:`~disentangled_ml.config.auto_pitch_decimation` for a full-rate config
    (``frontend_pitch_decimated``), at the full rate for a decimated one (``frontend_pitch_full_rate``);
    that row's largest difference from the exported frontend is ``max_abs_diff_vs_frontend``. Rows ``{"variant", "file",
    "size_bytes", "latency_ms_*"}``, the first with ``max_abs_diff_vs_full``; ``fe`` is a FrontendConfig."""
    import dataclasses

    from disentangled_ml.features import (Filterbanks, decimation_filter, filterbanks, log_mel, mel_filterbank,
                                          pitch_filterbank)

    seg = fe.segment_samples
    x = np.random.default_rng(0).uniform(-0.5, 0.5, (1, seg)).astype(np.float32)
    mel_only = dataclasses.replace(fe, pitch_bands_per_octave=0)
    full_pitch = pitch_filterbank(fe)
    if full_pitch is not None:  # every bin of the (possibly decimated) pitch STFT
        full_pitch = full_pitch[:fe.pitch_n_fft // fe.pitch_decimation_factor // 2 + 1]
    variants = [("frontend", fe, filterbanks(fe)),
                ("frontend_full_fb", fe, Filterbanks(mel_filterbank(fe), full_pitch, decimation=decimation_filter(fe))),
                ("frontend_mel_only", mel_only, filterbanks(mel_only))]
    if fe.pitch_bands_per_octave:
        if fe.pitch_decimation_factor == 1:
            other = ("frontend_pitch_decimated", dataclasses.replace(fe, pitch_decimation=None))  # the auto factor
        else:
            other = ("frontend_pitch_full_rate", dataclasses.replace(fe, pitch_decimation=1))
        if other[1].pitch_decimation_factor != fe.pitch_decimation_factor:
            variants.append((*other, filterbanks(other[1])))
    rows, outputs = [], {}
    for name, cfg, banks in variants:
        row, outputs[name] = _waveform_tflite(name, (lambda c, b: lambda a: log_mel(a, c, b))(cfg, banks), x, work,
                                              warmup, repeats)
        rows.append(row)
    rows[0]["max_abs_diff_vs_full"] = float(np.max(np.abs(outputs["frontend"] - outputs["frontend_full_fb"])))
    for r in rows:
        if r["variant"] in ("frontend_pitch_decimated", "frontend_pitch_full_rate"):
            r["max_abs_diff_vs_frontend"] = float(np.max(np.abs(outputs["frontend"] - outputs[r["variant"]])))
    return rows


def _decimate_strided(x, fir, factor: int):
    """The 0.9.0 decimation, the reference ``stage_decimate_polyphase`` is timed against: the
    centred FIR as one strided ``conv1d`` over a single channel (same outputs as
    ``disentangled_ml.features._decimate``, tests/test_features.py)."""
    import tensorflow as tf

    k = (int(fir.shape[0]) - 1) // 2
    flat = tf.pad(tf.reshape(x, [-1, tf.shape(x)[-1], 1]), [[0, 0], [k, k], [0, 0]])
    return tf.reshape(tf.nn.conv1d(flat, fir[:, None, None], stride=factor, padding="VALID"), [tf.shape(x)[0], -1])


def _mel_power_rfft(x, fe, banks):
    """The 0.9.1 mel spectrum, the reference ``stage_mel_stft`` is timed against: ``tf.signal.rfft``
    of the windowed frames (LiteRT's RFFT2D kernel), ``|X|^2`` of the bins the filterbank
    weights, times the trimmed filterbank (same values as ``disentangled_ml.features._filtered_power``
    to float32 rounding, tests/test_features.py)."""
    import tensorflow as tf

    from disentangled_ml.features import _frames

    spec = tf.signal.rfft(_frames(x, fe.n_fft, fe.hop_length), fft_length=[fe.n_fft])
    lo, hi = banks.mel_bins
    re, im = tf.math.real(spec)[..., lo:hi], tf.math.imag(spec)[..., lo:hi]
    power = re * re + im * im
    return tf.matmul(tf.sqrt(power) if fe.power == 1.0 else power, banks.mel)


def stage_latency(fe, export_dir: str, work: str, warmup: int = 3, repeats: int = 30) -> list:
    """Single-thread LiteRT latency of the parts of an export, each converted on its own, so the
    budget of a segment is measured part by part: ``network_float32`` / ``network_int8`` (the
    export's ``log_mel`` signature, the network after the frontend, float32 and dynamic-range
    int8), ``stage_mel_stft`` (framing, Hann window, the factorised 1024-point DFT, power and
    the mel filterbank, as exported) beside ``stage_mel_stft_rfft`` (the same with 0.9.1's
    ``tf.signal.rfft``, the reference; its largest difference is ``max_abs_diff_vs_factorised``,
    the largest filtered power ``max_abs_mel_power``), and for a decimated config ``stage_decimate_polyphase``
    (the anti-alias FIR and the every-d-th-sample pick, as exported) beside
    ``stage_decimate_strided`` (the 0.9.0 single-channel strided convolution, the reference;
    its largest difference from the polyphase output is ``max_abs_diff_vs_polyphase``)."""
    import tensorflow as tf

    from disentangled_ml.export.tflite import open_interpreter
    from disentangled_ml.features import _decimate, _filtered_power, filterbanks

    seg = fe.segment_samples
    rng = np.random.default_rng(0)
    x = rng.uniform(-0.5, 0.5, (1, seg)).astype(np.float32)
    rows, outputs = [], {}
    saved = os.path.join(export_dir, "saved_model")
    spec = tf.saved_model.load(saved).signatures["log_mel"].structured_input_signature[1]
    (feed_name, feed_spec), = spec.items()
    patch = rng.normal(size=[1 if d is None else d for d in feed_spec.shape]).astype(np.float32)
    for name, quantise in (("network_float32", False), ("network_int8", True)):
        converter = tf.lite.TFLiteConverter.from_saved_model(saved, signature_keys=["log_mel"])
        if quantise:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        path = os.path.join(work, name + ".tflite")
        with open(path, "wb") as f:
            f.write(converter.convert())
        runner = open_interpreter(path, num_threads=1).get_signature_runner("log_mel")
        rows.append({"variant": name, "file": f"{name}.tflite (benchmark only)", "size_bytes": os.path.getsize(path),
                     **_time(lambda: runner(**{feed_name: patch}), warmup, repeats)})
    banks = filterbanks(fe)
    stages = [("stage_mel_stft", lambda a: _filtered_power(a, fe.n_fft, fe.hop_length, fe.power, banks.mel_plan)),
              ("stage_mel_stft_rfft", lambda a: _mel_power_rfft(a, fe, banks))]
    d = fe.pitch_decimation_factor
    if banks.decimation is not None:
        fir = tf.constant(banks.decimation)
        stages += [("stage_decimate_polyphase", lambda a: _decimate(a, fir, d)),
                   ("stage_decimate_strided", lambda a: _decimate_strided(a, fir, d))]
    for name, fn in stages:
        row, outputs[name] = _waveform_tflite(name, fn, x, work, warmup, repeats)
        rows.append(row)
    rfft_row = rows[[r["variant"] for r in rows].index("stage_mel_stft_rfft")]
    rfft_row["max_abs_diff_vs_factorised"] = float(np.max(np.abs(outputs["stage_mel_stft_rfft"]
                                                                 - outputs["stage_mel_stft"])))
    rfft_row["max_abs_mel_power"] = float(np.max(np.abs(outputs["stage_mel_stft"])))
    if "stage_decimate_strided" in outputs:
        rows[-1]["max_abs_diff_vs_polyphase"] = float(np.max(np.abs(outputs["stage_decimate_strided"]
                                                                    - outputs["stage_decimate_polyphase"])))
    return rows


def untrained_int8(cfg, work: str, warmup: int = 3, repeats: int = 30, parity_segments: int = 4) -> dict:
    """Size and single-thread latency of the dynamic-range int8 TFLite (``model_int8.tflite``) of an
    untrained model of ``cfg``, exported under ``work`` with synthetic audio (no int8_full variant).

    Size and latency do not depend on the weights, so this prices a config before training it.
    Returns ``{"int8_bytes", "int8_mb", "latency_ms_median", "latency_ms_p90", "latency_ms_min",
    "export_seconds", "export_timing"}`` (``export_timing``: :func:`export_timing`).
    """
    from disentangled_ml.export import export_run
    from disentangled_ml.export.tflite import VARIANT_BY_NAME

    run = untrained_run(work, cfg)
    out = os.path.join(work, "export")
    t0 = time.perf_counter()
    result = export_run(run, out, int8_full=False, calibration_segments=1, parity_segments=parity_segments)
    seconds = time.perf_counter() - t0
    path = os.path.join(out, VARIANT_BY_NAME["int8"].filename)
    size = os.path.getsize(path)
    return {"int8_bytes": size, "int8_mb": size / 1e6, "export_seconds": seconds,
            "export_timing": export_timing(result["parity"]),
            **tflite_latency(path, cfg.frontend.segment_samples, warmup, repeats)}


def export_timing(parity: dict) -> dict:
    """The export's wall time from its ``parity.json`` dict: ``total_s`` and ``stages_s`` (its
    ``timing``), plus ``triplet_scoring_s`` (seconds per variant) and ``triplet_crops`` (crops in
    the triplets, distinct crops embedded) when test triplets were scored."""
    timing = {k: v for k, v in (parity.get("timing") or {}).items() if k != "note"}
    scoring = parity.get("triplet_accuracy") or {}
    if "seconds" in scoring:
        timing["triplet_scoring_s"] = scoring["seconds"]
        timing["triplet_crops"] = scoring.get("crops")
    return timing


def format_export_timing(timing: dict, export_seconds: float) -> str:
    """One or two lines: the export's wall time and its slowest stages first."""
    stages = sorted((timing.get("stages_s") or {}).items(), key=lambda kv: -kv[1])
    text = f"export: {export_seconds:.1f} s"
    if "total_s" in timing:
        text += f" ({timing['total_s']:.1f} s to parity.json)"
    if stages:
        text += ": " + ", ".join(f"{k} {v:.1f}" for k, v in stages)
    if timing.get("triplet_scoring_s"):
        crops = timing.get("triplet_crops") or {}
        text += (f"\ntriplet scoring, {crops.get('distinct', '?')} distinct of {crops.get('in_triplets', '?')} crops: "
                 + ", ".join(f"{k} {v:.1f} s" for k, v in timing["triplet_scoring_s"].items()))
    return text


def config_frontend(run: str):
    """The FrontendConfig of a run directory (or of the run holding a ``.keras`` file)."""
    from disentangled_ml.config import Config

    folder = run if os.path.isdir(run) else os.path.dirname(os.path.abspath(run))
    return Config.from_json(os.path.join(folder, "config.json")).frontend


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default=None, help="training run directory to export (default: an untrained "
                                                    "default-config model)")
    parser.add_argument("--prepared", default=None, help="prepared collection of --run (calibration/parity audio)")
    parser.add_argument("--repeats", type=int, default=30, help="timed calls per variant")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls per variant first")
    parser.add_argument("--calibration-segments", type=int, default=100, help="int8_full calibration segments")
    parser.add_argument("--parity-segments", type=int, default=20, help="segments of the parity check")
    parser.add_argument("--max-triplets", type=int, default=200,
                        help="test triplets per condition every variant is scored on (0: all); with --run")
    parser.add_argument("--keep", default=None, help="write the export here instead of a temporary folder")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                      "export.json"))
    args = parser.parse_args(argv)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    tf = _single_thread_tf()
    import keras

    import disentangled_ml
    import disentangled_ml.models  # noqa: F401 - registers the custom layers
    from disentangled_ml.export import export_run
    from disentangled_ml.export.tflite import VARIANTS, open_interpreter

    with tempfile.TemporaryDirectory() as work:
        run = args.run or untrained_run(work)
        export_dir = args.keep or os.path.join(work, "export")
        t0 = time.perf_counter()
        result = export_run(run, export_dir, prepared_dir=args.prepared, overwrite=bool(args.keep),
                            calibration_segments=args.calibration_segments, parity_segments=args.parity_segments,
                            max_triplets=args.max_triplets)
        export_seconds = time.perf_counter() - t0
        config, parity = result["config"], result["parity"]
        seg = config["segment_samples"]
        x = np.random.default_rng(0).uniform(-0.5, 0.5, (1, seg)).astype(np.float32)

        rows = []
        model = keras.saving.load_model(os.path.join(run, "embedding.keras") if os.path.isdir(run) else run)
        graph_call = tf.function(lambda a: model(a, training=False)["embedding"])
        xt = tf.constant(x)
        rows.append({"variant": "keras", "file": "embedding.keras (tf.function)",
                     "size_bytes": os.path.getsize(os.path.join(run, "embedding.keras")) if os.path.isdir(run)
                     else os.path.getsize(run), **_time(lambda: graph_call(xt).numpy(), args.warmup, args.repeats)})
        serve = tf.saved_model.load(os.path.join(export_dir, "saved_model")).signatures["serving_default"]
        rows.append({"variant": "saved_model", "file": "saved_model/",
                     "size_bytes": config["files"]["saved_model"]["size_bytes"],
                     **_time(lambda: serve(audio=xt)["embedding"].numpy(), args.warmup, args.repeats),
                     **{k: parity["variants"]["saved_model"][k] for k in ("max_abs_diff", "min_cosine")}})
        for v in VARIANTS:
            path = os.path.join(export_dir, v.filename)
            if not os.path.isfile(path):
                continue
            runner = open_interpreter(path, num_threads=1).get_signature_runner()
            rows.append({"variant": v.name, "file": v.filename, "size_bytes": os.path.getsize(path),
                         **_time(lambda: runner(audio=x), args.warmup, args.repeats),
                         **{k: parity["variants"][v.name][k] for k in ("max_abs_diff", "min_cosine")}})
        rows += frontend_latency(config_frontend(run), work, args.warmup, args.repeats)
        rows += stage_latency(config_frontend(run), export_dir, work, args.warmup, args.repeats)
        keras_ms = rows[0]["latency_ms_median"]
        for r in rows:
            r["speedup_vs_keras"] = keras_ms / r["latency_ms_median"]

    import ai_edge_litert

    out = {
        "what": "size and single-thread latency per segment (batch 1) of each export variant vs the Keras model",
        "model": {"source": os.path.abspath(args.run) if args.run else "untrained default Config() model",
                  "trained": bool(args.run),
                  "note": None if args.run else "size and latency do not depend on the weights; parity figures "
                                                "of an untrained network are only indicative",
                  "backbone": config["model"]["backbone"], "width": config["model"]["width"],
                  "parameters": config["model"]["parameters"], "sample_rate": config["sample_rate"],
                  "segment_seconds": config["segment_seconds"], "mask_mode": config["mask_mode"]},
        "threads": 1, "batch": 1, "warmup": args.warmup, "repeats": args.repeats,
        "export_seconds": export_seconds,
        "export_timing": export_timing(parity),
        # every variant on the same test triplets (with --run and its prepared collection)
        "triplet_accuracy": {k: (parity.get("triplet_accuracy") or {}).get(k) for k in ("n_triplets", "accuracy")},
        "calibration": (config.get("int8_full") or {}).get("calibration"),
        "parity_segments": parity["segments"],
        "results": rows,
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "load_average_1min": os.getloadavg()[0],
                    "python": sys.version.split()[0], "tensorflow": tf.__version__,
                    "ai_edge_litert": getattr(ai_edge_litert, "__version__", "?"),
                    "disentangled_ml": disentangled_ml.__version__},
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=2)
        f.write("\n")
    print(f"{'variant':<12}{'file':<32}{'size MB':>9}{'median ms':>11}{'p90 ms':>9}{'vs keras':>10}"
          f"{'max|diff|':>11}{'min cos':>9}")
    for r in rows:
        diff = f"{r['max_abs_diff']:.1e}" if "max_abs_diff" in r else "-"
        cos = f"{r['min_cosine']:.4f}" if "min_cosine" in r else "-"
        print(f"{r['variant']:<12}{r['file']:<32}{r['size_bytes'] / 1e6:>9.2f}{r['latency_ms_median']:>11.1f}"
              f"{r['latency_ms_p90']:>9.1f}{r['speedup_vs_keras']:>9.2f}x{diff:>11}{cos:>9}")
    acc = out["triplet_accuracy"]["accuracy"]
    if acc:
        conds = list(next(iter(acc.values())))
        print(f"\ntriplet accuracy on the same test triplets ({out['triplet_accuracy']['n_triplets']}):")
        print(f"{'variant':<12}" + "".join(f"{c:>12}" for c in conds))
        for v, per in acc.items():
            print(f"{v:<12}" + "".join(f"{per[c]:>12.3f}" for c in conds))
    print(format_export_timing(out["export_timing"], export_seconds))
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
