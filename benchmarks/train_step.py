"""Where the training time of a config goes: arithmetic per layer, input pipeline, network, and ``fit``.

For one config (``--config`` and/or ``--set SECTION.KEY=VALUE``, as ``dml train`` takes them)
it reports:

1. **Arithmetic.** Multiply-accumulates (MACs) and parameters of every backbone layer for
   one 3 s segment (:mod:`disentangled_ml.models.profile`: generic over Conv*/Dense layers
   from their output and kernel shapes; layers it cannot count are listed as
   ``uncounted``), the share of MACs spent at the input's full resolution and at the first
   two resolutions, and the frontend's estimated MACs (STFTs and filterbank products of the
   mel and pitch bands), per segment and as the training pipeline spends them (one log-mel
   per excerpt, shared by ``data.triplets_per_track`` triplets). A training step is
   estimated at 3 x forward (forward plus a backward of twice its cost) over the ``3B``
   crops of a batch.
2. **Measured time per step** (median and interquartile range, and the mean):
   (a) the input pipeline alone (``training_dataset`` over the training split of a
   prepared collection, after its first pool and ``--warmup`` batches; the pipeline mines
   a pool at a time, so batch times are bursty and the count is rounded up to whole pools
   and the *mean* is its cost per batch), (b) the network alone (the compiled training
   step of ``build_triplet_model`` on one fixed random batch with the pipeline's keys,
   ``benchmarks/mining.py``'s), (c) ``model.fit`` on the real pipeline for
   first pool + ``--warmup`` + ``--steps`` steps, the last ``--steps`` timed (from one
   batch's end to the next).
3. **The machine**: CPU model, cores, TensorFlow's inter/intra-op thread settings,
   ``TF_ENABLE_ONEDNN_OPTS``, ``OMP_NUM_THREADS``, versions.

Without ``--prepared`` a tiny collection is synthesised and prepared in a temporary folder
(what ``dml synth`` and ``dml prepare`` run). Each run is stored in
``benchmarks/results/train_step.json`` (``--out``) under ``entries[--label]``, beside the
entries already there, so configs can be compared in one file::

    python benchmarks/train_step.py --label paper_inception --set model.backbone=inception
    python benchmarks/train_step.py --label resnet --set model.backbone=resnet
    python benchmarks/train_step.py --label w16 --set model.width=16 --steps 3 --warmup 1 --skip-fit
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from _common import cpu_info, onednn_auto_flags  # noqa: E402

DEFAULT_OUT = os.path.join(HERE, "results", "train_step.json")
ENV_VARS = ("TF_ENABLE_ONEDNN_OPTS", "OMP_NUM_THREADS", "TF_NUM_INTEROP_THREADS", "TF_NUM_INTRAOP_THREADS",
            "TF_CPP_MIN_LOG_LEVEL", "CUDA_VISIBLE_DEVICES")


# --------------------------------------------------------------------------- config and output

def load_config(config_path: Optional[str], sets: Sequence[str], batch_size: Optional[int]):
    """(Config, overrides): ``--config`` (default ``Config()``) with ``--set`` values and ``--batch-size``."""
    from disentangled_ml.cli.train import parse_overrides  # the parser `dml train --set` uses
    from disentangled_ml.config import Config

    cfg = Config.from_json(config_path) if config_path else Config()
    overrides = parse_overrides(sets)
    if batch_size is not None:
        overrides["train.batch_size"] = batch_size
    return (cfg.replace(**overrides) if overrides else cfg), overrides


def timing_summary(seconds: Sequence[float]) -> Dict[str, Any]:
    """Median, interquartile range and mean of per-step times, in seconds."""
    a = np.asarray(seconds, dtype=float)
    if a.size == 0:
        return {"n": 0}
    p25, p50, p75 = np.percentile(a, [25, 50, 75])
    return {"n": int(a.size), "median_s": float(p50), "iqr_s": float(p75 - p25), "p25_s": float(p25),
            "p75_s": float(p75), "mean_s": float(a.mean()), "all_s": [float(x) for x in a]}


def write_entry(path: str, label: str, entry: Dict[str, Any]) -> None:
    """Put ``entry`` at ``entries[label]`` of the JSON file at ``path`` (read, modify, replace whole)."""
    doc: Dict[str, Any] = {"entries": {}}
    if os.path.isfile(path):
        with open(path) as f:
            doc = json.load(f)
        if not isinstance(doc.get("entries"), dict):
            raise SystemExit(f"{path} is not a train_step.py results file (no 'entries' object); use another --out.")
    doc["entries"][label] = entry
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=2)
    os.replace(tmp, path)


def git_revision() -> Optional[str]:
    """``HEAD``'s short hash, with ``+`` when the working tree differs from it."""
    try:
        head = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+" if dirty else "")


# --------------------------------------------------------------------------- 1. arithmetic

def arithmetic(cfg) -> Dict[str, Any]:
    """MACs and parameters of the backbone per segment, the frontend's, and a training step's estimate."""
    from disentangled_ml.models.profile import backbone_profile, frontend_macs

    fe = cfg.frontend
    backbone = backbone_profile(cfg)
    excerpt_samples = int(round(cfg.data.excerpt_seconds * fe.sample_rate))
    excerpt_frames = 1 + (excerpt_samples - fe.n_fft) // fe.hop_length
    frontend_segment = frontend_macs(fe)
    frontend_excerpt = frontend_macs(fe, excerpt_frames)
    b = cfg.train.batch_size
    forward = 3 * b * backbone["total_macs"]
    # With data.cache_features (where the pipeline has it) the frontend runs once per track, in the
    # first pass, and later passes slice its cached output; otherwise once per excerpt every pass,
    # shared by the triplets_per_track triplets mined from that excerpt.
    cached = bool(getattr(cfg.data, "cache_features", False)) and cfg.data.cache != "none"
    frontend_step = 0 if cached else int(frontend_excerpt["total"] * b / cfg.data.triplets_per_track)
    return {
        "backbone": backbone,
        "frontend_per_segment": frontend_segment,
        "frontend_per_excerpt": frontend_excerpt,
        "per_step": {
            "batch_size": b,
            "crops": 3 * b,
            "backbone_forward_macs": forward,
            "backbone_train_macs_estimate": 3 * forward,
            "frontend_pipeline_macs_estimate": frontend_step,
            "frontend_cached": cached,
        },
    }


def print_arithmetic(macs: Dict[str, Any], top: int = 15) -> None:
    bb = macs["backbone"]
    total = bb["total_macs"] or 1
    rows = sorted(bb["layers"], key=lambda r: -r["macs"])[:top]
    print(f"backbone: {bb['total_macs'] / 1e6:,.1f} MMACs per segment, {bb['total_params']:,} parameters, "
          f"input {'x'.join(map(str, bb['input_resolution']))}")
    print(f"  {'layer':28s} {'type':20s} {'output':>16s} {'MMACs':>9s} {'share':>6s} {'params':>9s}")
    for r in rows:
        shape = "x".join(str(d) for d in r["output_shape"])
        print(f"  {r['layer'][:28]:28s} {r['type'][:20]:20s} {shape:>16s} {r['macs'] / 1e6:9.2f} "
              f"{100 * r['macs'] / total:5.1f}% {r['params']:9,d}")
    print(f"  full resolution {100 * bb['full_resolution_share']:.1f}% of MACs, first two resolutions "
          f"{100 * bb['first_two_resolutions_share']:.1f}%; by resolution: " +
          ", ".join(f"{'x'.join(map(str, e['resolution'])) or 'vector'} {100 * e['share']:.1f}%"
                    for e in bb["by_resolution"] if e["macs"]))
    if bb["uncounted"]:
        print("  uncounted (0 MACs assumed): " + "; ".join(f"{u['layer']} ({u['reason']})" for u in bb["uncounted"]))
    seg, exc = macs["frontend_per_segment"], macs["frontend_per_excerpt"]
    pitch = f" + pitch {seg['pitch']['total'] / 1e6:.1f}" if seg["pitch"] else ""
    print(f"frontend: {seg['total'] / 1e6:.1f} MMACs per segment ({seg['num_frames']} frames: mel "
          f"{seg['mel']['total'] / 1e6:.1f}{pitch}), {exc['total'] / 1e6:.1f} per excerpt ({exc['num_frames']} frames)")
    st = macs["per_step"]
    print(f"per step (batch {st['batch_size']}, {st['crops']} crops): backbone forward "
          f"{st['backbone_forward_macs'] / 1e9:.2f} GMACs, training ~{st['backbone_train_macs_estimate'] / 1e9:.2f} "
          f"GMACs (3x forward); frontend in the pipeline ~{st['frontend_pipeline_macs_estimate'] / 1e9:.3f} GMACs"
          + (" (features cached after the first pass)" if st["frontend_cached"] else ""))


# --------------------------------------------------------------------------- 3. the machine

def environment() -> Dict[str, Any]:
    import keras
    import tensorflow as tf

    cpu = cpu_info()
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:
        available = os.cpu_count()
    return {
        "cpu": cpu["cpu"],
        "onednn_auto_flags": onednn_auto_flags(cpu["flags"]),
        "cpu_count": os.cpu_count(),
        "cpus_available": available,
        "inter_op_parallelism_threads": tf.config.threading.get_inter_op_parallelism_threads(),
        "intra_op_parallelism_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "threads_note": "0 = TensorFlow's default (one per available core)",
        "env": {k: os.environ.get(k) for k in ENV_VARS},
        "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


# --------------------------------------------------------------------------- 2. timing

def synthesise_prepared(work: str, cfg, tracks: int) -> str:
    """A tiny collection, as ``dml synth`` and ``dml prepare`` write it, under ``work``; returns the prepared folder."""
    from disentangled_ml import synth
    from disentangled_ml.data.prepare import prepare_collection

    lo = min(max(cfg.data.excerpt_seconds + 2.0, synth.MIN_TRACK_SECONDS), synth.MAX_TRACK_SECONDS)
    manifest = synth.synthesize_collection(os.path.join(work, "collection"), tracks, seed=0, min_seconds=lo,
                                           max_seconds=min(lo + 4.0, synth.MAX_TRACK_SECONDS), jobs=1,
                                           progress=False)
    prepared = os.path.join(work, "prepared")
    prepare_collection(manifest, prepared, cfg, jobs=0, estimate_tempo=False, progress=False)
    return prepared


class Collection:
    """A prepared collection's training split, as ``dml train`` streams it."""

    def __init__(self, prepared: str, cfg) -> None:
        from disentangled_ml.data.labels import LabelTables
        from disentangled_ml.data.splits import split_tracks
        from disentangled_ml.training import load_prepared

        self.prepared = prepared
        self.tracks = load_prepared(prepared)
        self.tables = LabelTables.from_tracks(self.tracks, cfg)
        self.rows = split_tracks(self.tracks, cfg)["train"]
        audio = os.path.join(prepared, "audio")
        self.audio_dir = audio if os.path.isfile(os.path.join(audio, "index.json")) else None
        pool = min(cfg.data.pool_size, len(self.rows))
        # at most this many batches come out of a pool (triplets that cannot be mined are dropped)
        self.batches_per_pool = max(1, pool * cfg.data.triplets_per_track // cfg.train.batch_size)

    def dataset(self, cfg):
        from disentangled_ml.data.pipeline import training_dataset

        return training_dataset(self.tracks, self.tables, self.rows, cfg, audio_dir=self.audio_dir)

    def describe(self) -> Dict[str, Any]:
        return {"prepared": self.prepared, "tracks": len(self.tracks), "train_tracks": len(self.rows),
                "audio_shards": self.audio_dir is not None, "batches_per_pool_max": self.batches_per_pool}


def time_pipeline(cfg, collection: Collection, steps: int, warmup: int) -> Dict[str, Any]:
    """(a) Seconds per batch of the input pipeline alone, after its first pool and ``warmup`` batches."""
    bpp = collection.batches_per_pool
    it = iter(collection.dataset(cfg))
    t0 = time.perf_counter()
    for _ in range(bpp):  # the first pool: decoding (and filling the cache), first log-mels and mining
        next(it)
    first_pool_s = time.perf_counter() - t0
    for _ in range(warmup):
        next(it)
    n = bpp * math.ceil(max(steps, 1) / bpp)  # whole pools: the pool's cost lands on one batch of it
    times = []
    for _ in range(n):
        t = time.perf_counter()
        batch = next(it)
        times.append(time.perf_counter() - t)
    del batch
    out = timing_summary(times)
    out.update({"first_pool_s": first_pool_s, "warmup_batches": bpp + warmup, "timed_batches": n,
                "triplets_per_s": cfg.train.batch_size / out["mean_s"] if out["mean_s"] > 0 else None,
                "note": "batches come a pool at a time: mean_s is the cost per batch, the median that of "
                        "a batch of an already mined pool"})
    return out


def time_network(cfg, steps: int, warmup: int) -> Dict[str, Any]:
    """(b) Seconds per compiled training step on one fixed in-memory batch (no input pipeline)."""
    from mining import compiled_train_step  # benchmarks/mining.py: the model, a random batch, the traced step

    step, batch = compiled_train_step(cfg)  # traced and run twice already
    for _ in range(warmup):
        float(step((batch,))["loss"])
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        out = step((batch,))
        float(out["loss"])  # wait for the step
        times.append(time.perf_counter() - t)
    res = timing_summary(times)
    res["warmup_steps"] = 2 + warmup
    return res


def time_fit(cfg, collection: Collection, steps: int, warmup: int) -> Dict[str, Any]:
    """(c) Seconds per ``model.fit`` step on the real pipeline; the first pool and ``warmup`` steps untimed."""
    import keras

    from disentangled_ml.models import build_triplet_model

    class StepTimes(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.ends: List[float] = []
            self.begin = None

        def on_train_batch_begin(self, batch, logs=None):
            if self.begin is None:
                self.begin = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):  # logs arrive as numbers: the step has finished
            self.ends.append(time.perf_counter())

    keras.utils.set_random_seed(0)
    model = build_triplet_model(cfg)
    skip = collection.batches_per_pool + max(warmup, 1)  # the first step also traces the graph
    timer = StepTimes()
    t0 = time.perf_counter()
    model.fit(collection.dataset(cfg), epochs=1, steps_per_epoch=skip + steps, verbose=0, callbacks=[timer],
              shuffle=False)
    wall = time.perf_counter() - t0
    ends = np.asarray(timer.ends)
    res = timing_summary(np.diff(ends)[skip - 1:])
    res.update({"warmup_steps": skip, "fit_wall_s": wall, "jit_compile": bool(getattr(model, "jit_compile", False)),
                "covers_a_whole_pool": steps >= collection.batches_per_pool})
    return res


def _ms(t: Dict[str, Any]) -> str:
    if not t.get("n"):
        return "-"
    return (f"median {1000 * t['median_s']:8.1f} ms  IQR {1000 * t['iqr_s']:7.1f} ms  "
            f"mean {1000 * t['mean_s']:8.1f} ms  (n={t['n']})")


def breakdown(timing: Dict[str, Any], macs: Dict[str, Any]) -> Dict[str, Any]:
    """Ratios of the measured parts, and the network's achieved arithmetic rate."""
    out: Dict[str, Any] = {}
    net, pipe, fit = (timing.get(k) for k in ("network", "pipeline", "fit"))
    if net and net.get("n"):
        out["network_gmacs_per_s_estimate"] = macs["per_step"]["backbone_train_macs_estimate"] / net["median_s"] / 1e9
    if pipe and pipe.get("n") and net and net.get("n"):
        out["pipeline_mean_over_network_median"] = pipe["mean_s"] / net["median_s"]
    if fit and fit.get("n") and net and net.get("n"):
        out["fit_median_over_network_median"] = fit["median_s"] / net["median_s"]
        out["fit_minus_network_median_s"] = fit["median_s"] - net["median_s"]
        out["fit_mean_minus_network_median_s"] = fit["mean_s"] - net["median_s"]
    return out


# --------------------------------------------------------------------------- main

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", metavar="CONFIG_JSON", help="a config.json (default: Config())")
    ap.add_argument("--set", action="extend", nargs="+", default=[], metavar="SECTION.KEY=VALUE",
                    help="config overrides, as for `dml train` (repeatable; VALUE parsed as JSON when it can be)")
    ap.add_argument("--batch-size", type=int, help="triplets per step (train.batch_size)")
    ap.add_argument("--prepared", metavar="DIR", help="a collection written by `dml prepare` (default: synthesise "
                                                       "a tiny one in a temporary folder)")
    ap.add_argument("--synth-tracks", type=int, default=24, help="tracks to synthesise without --prepared")
    ap.add_argument("--steps", type=int, default=10, help="timed steps (batches) per measurement")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps before each measurement")
    ap.add_argument("--skip-pipeline", action="store_true", help="skip (a) the input pipeline alone")
    ap.add_argument("--skip-network", action="store_true", help="skip (b) the network alone")
    ap.add_argument("--skip-fit", action="store_true", help="skip (c) fit on the pipeline")
    ap.add_argument("--top", type=int, default=15, help="layers printed, by MACs")
    ap.add_argument("--label", help="entry name in the results file (default: the overrides, or 'default')")
    ap.add_argument("--out", default=DEFAULT_OUT, help="results JSON; entries of other labels are kept")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        ap.error("--steps must be >= 1 and --warmup >= 0")

    from disentangled_ml import tf_environment

    tf_environment.configure()  # before TensorFlow is imported, as `dml` does
    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # tensorflow-io's resampler warns on every trace
    from disentangled_ml.cli import CliError
    from disentangled_ml.config import ConfigError

    try:
        cfg, overrides = load_config(args.config, args.set, args.batch_size)
    except (CliError, ConfigError) as e:
        ap.error(str(e))
    label = args.label or (",".join(f"{k}={v}" for k, v in overrides.items()) or "default")

    macs = arithmetic(cfg)
    print_arithmetic(macs, args.top)
    env = environment()
    print(f"machine: {env['cpu'] or platform.machine()}, {env['cpus_available']}/{env['cpu_count']} cores, "
          f"TF {env['tensorflow']} inter/intra-op threads {env['inter_op_parallelism_threads']}/"
          f"{env['intra_op_parallelism_threads']}, TF_ENABLE_ONEDNN_OPTS={env['env']['TF_ENABLE_ONEDNN_OPTS']}, "
          f"OMP_NUM_THREADS={env['env']['OMP_NUM_THREADS']}, GPUs {env['gpus'] or 'none'}", flush=True)

    timing: Dict[str, Any] = {}
    collection_info = None
    if not args.skip_network:
        timing["network"] = time_network(cfg, args.steps, args.warmup)
        print(f"(b) network fwd+bwd, in-memory batch:   {_ms(timing['network'])}", flush=True)
    if not (args.skip_pipeline and args.skip_fit):
        with tempfile.TemporaryDirectory(prefix="train_step_") as work:
            if args.prepared:
                prepared = args.prepared
            else:
                t = time.perf_counter()
                prepared = synthesise_prepared(work, cfg, args.synth_tracks)
                print(f"synthesised and prepared {args.synth_tracks} tracks in {time.perf_counter() - t:.0f} s",
                      flush=True)
            collection = Collection(prepared, cfg)
            collection_info = collection.describe()
            if args.prepared is None:
                collection_info["prepared"] = f"synthesised ({args.synth_tracks} tracks)"
            if not args.skip_pipeline:
                timing["pipeline"] = time_pipeline(cfg, collection, args.steps, args.warmup)
                p = timing["pipeline"]
                print(f"(a) input pipeline alone, per batch:    {_ms(p)}; first pool {p['first_pool_s']:.1f} s, "
                      f"{p['triplets_per_s']:.0f} triplets/s", flush=True)
            if not args.skip_fit:
                timing["fit"] = time_fit(cfg, collection, args.steps, args.warmup)
                f = timing["fit"]
                note = "" if f["covers_a_whole_pool"] else (
                    f"  [--steps < {collection.batches_per_pool} batches a pool: a pool's mining may fall "
                    "outside the timed steps]")
                print(f"(c) fit on the pipeline, per step:      {_ms(f)}{note}", flush=True)
    ratios = breakdown(timing, macs)
    if ratios:
        print("breakdown: " + ", ".join(f"{k} {v:.3g}" for k, v in ratios.items()))

    entry = {
        "label": label,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "git": git_revision(),
        "command": " ".join([os.path.basename(sys.argv[0])] + (sys.argv[1:] if argv is None else list(argv))),
        "overrides": overrides,
        "config_hash": cfg.hash(),
        "config": cfg.to_dict(),
        "steps": args.steps,
        "warmup": args.warmup,
        "macs": macs,
        "collection": collection_info,
        "timing": timing,
        "breakdown": ratios,
        "environment": env,
    }
    write_entry(args.out, label, entry)
    print(f"wrote {args.out} [entries.{label}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
