"""Print versions, devices, and whether tensorflow-io's native decoders and madmom load."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys

HELP = "print versions, devices and which native components load"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def _version(module: str) -> str:
    try:
        return getattr(importlib.import_module(module), "__version__", "installed")
    except Exception as e:  # report, never fail: this command is for diagnosing broken installs
        return f"NOT AVAILABLE ({type(e).__name__}: {e})"


def _tensorflow_build() -> str:
    """Which TensorFlow build loads: the CPU one (tensorflow-cpu, the default install) or CUDA (the `gpu` extra)."""
    try:
        import tensorflow as tf

        build = tf.sysconfig.get_build_info()
        if build.get("is_cuda_build"):
            return f"cuda (CUDA {build.get('cuda_version', '?')}, cuDNN {build.get('cudnn_version', '?')})"
        from importlib.metadata import PackageNotFoundError, version

        try:  # both wheels installed (Linux x86-64: `tensorflow` is the CUDA build there)
            gpu_dist = version("tensorflow") if version("tensorflow-cpu") else None
        except PackageNotFoundError:
            gpu_dist = None
        if gpu_dist:
            # both wheels installed, tensorflow-cpu's files written last (e.g. a venv that had `tensorflow` first)
            return (f"cpu, although tensorflow {gpu_dist} (CUDA) is installed: tensorflow-cpu's files were written "
                    f"over it; `pip install --force-reinstall --no-deps tensorflow=={gpu_dist}` restores it")
        if sys.platform == "linux" and platform.machine() == "x86_64":
            return "cpu (no CUDA kernels; `pip install -e \".[gpu]\"` adds them)"
        return "cpu"
    except Exception as e:
        return f"NOT AVAILABLE ({type(e).__name__}: {e})"


def _check_tfio_native() -> str:
    """Decode a tiny in-memory FLAC and WAV with tensorflow-io's native kernels."""
    try:
        import io

        import numpy as np
        import soundfile as sf
        import tensorflow as tf
        import tensorflow_io as tfio

        x = (np.sin(np.arange(2048) / 10.0) * 0.5).astype(np.float32)
        buf = io.BytesIO()
        sf.write(buf, x, 22050, format="FLAC", subtype="PCM_16")
        y = tfio.audio.decode_flac(tf.constant(buf.getvalue()), dtype=tf.int16).numpy()
        if y.shape != (2048, 1):
            return f"FAILED (decode_flac returned shape {y.shape})"
        tfio.audio.resample(tf.constant(x[:, None]), 22050, 16000)
        return "ok (decode_flac, decode_vorbis, decode_mp3, resample)"
    except Exception as e:
        return f"FAILED ({type(e).__name__}: {str(e).splitlines()[0][:200]})"


def _check_madmom() -> str:
    try:
        from madmom.features.beats import RNNBeatProcessor  # noqa: F401
        from madmom.features.tempo import TempoEstimationProcessor  # noqa: F401
        import madmom

        return f"ok ({getattr(madmom, '__version__', '?')}; models CC BY-NC-SA 4.0)"
    except Exception as e:
        return f"FAILED ({type(e).__name__}: {e})"


def collect() -> dict:
    import disentangled_ml

    info = {
        "disentangled_ml": disentangled_ml.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    for m in ("tensorflow", "keras", "tensorflow_io", "numpy", "librosa", "keras_tuner", "tensorboard", "ai_edge_litert"):
        info[m] = _version(m)
    try:
        import tensorflow as tf

        info["devices"] = [f"{d.device_type}:{d.name}" for d in tf.config.list_physical_devices()]
    except Exception as e:
        info["devices"] = f"NOT AVAILABLE ({e})"
    info["tensorflow_build"] = _tensorflow_build()
    # set by `dml` on x86-64 unless the environment already had it (disentangled_ml.tf_environment)
    info["tensorflow_onednn"] = os.environ.get(
        "TF_ENABLE_ONEDNN_OPTS", "unset (TensorFlow's default: on only with AVX512_VNNI/BF16, AVX_VNNI or AMX)")
    info["tensorflow_io_native"] = _check_tfio_native()
    info["madmom"] = _check_madmom()
    return info


def run(args: argparse.Namespace) -> int:
    info = collect()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        width = max(len(k) for k in info)
        for k, v in info.items():
            print(f"{k:<{width}}  {', '.join(v) if isinstance(v, list) else v}")
    ok = info["tensorflow_io_native"].startswith("ok") and info["madmom"].startswith("ok")
    return 0 if ok else 1
