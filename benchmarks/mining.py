"""Cost of in-batch mining: training-step time of every ``data.mining`` mode, side by side.

For each backbone width and batch size, one process builds the default model
(Inception, fixed masks) once per mining mode and times its compiled training step
on the same batch: random log-mel patches with random crop labels of the shape the
pipeline sends (4 conditions with 4-5 classes, tempo, track, excerpt, crop start).
The reference is ``random`` (the paper's sampled triplets); the in-batch modes add
one ``[C + 1, 3B, 3B]`` distance matrix and, for ``in_batch_all``, the
``[C + 1, 3B, 3B, 3B]`` hinge tensor.

Modes are timed in interleaved rounds (random, in_batch_all, in_batch_hard, random,
...), so a load spike on these shared machines hits them all; the medians and their
ratio to ``random`` are reported.

Writes ``benchmarks/results/mining.json`` and prints a table.

    python benchmarks/mining.py [--widths 16 64] [--batch-sizes 32] [--rounds 5] [--steps 4]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

MODES = ("random", "in_batch_all", "in_batch_hard")


def synthetic_batch(cfg, batch_size: int, seed: int = 0):
    """A training batch with the pipeline's keys (mel patches are noise: timing only)."""
    rng = np.random.default_rng(seed)
    f, m = cfg.frontend.num_frames, cfg.frontend.n_bands
    x = {r: rng.standard_normal((batch_size, f, m)).astype(np.float32) for r in ("anchor", "positive", "negative")}
    c = len(cfg.conditions.names)
    x["condition"] = rng.integers(0, c + 1, batch_size).astype(np.int32)
    x["crop_track"] = rng.integers(0, 4 * batch_size, (batch_size, 3)).astype(np.int32)
    x["crop_excerpt"] = x["crop_track"].copy()
    x["crop_frame"] = rng.integers(0, 4 * f, (batch_size, 3)).astype(np.int32)
    x["crop_tempo"] = rng.uniform(60, 180, (batch_size, 3)).astype(np.float32)
    for name in cfg.conditions.names:
        k = 5 if name == "instrument" else 4
        x[f"crop_classes_{name}"] = np.eye(k, dtype=bool)[rng.integers(0, k, (batch_size, 3))]
    return x


def compiled_train_step(cfg):
    """(step, batch): the model of ``cfg``'s compiled training step, traced and warmed up on a
    :func:`synthetic_batch` of ``train.batch_size`` triplets; call ``step((batch,))`` to time it."""
    import keras
    import tensorflow as tf

    from disentangled_ml.models import build_triplet_model

    keras.utils.set_random_seed(0)
    model = build_triplet_model(cfg)
    batch = {k: tf.constant(v) for k, v in synthetic_batch(cfg, cfg.train.batch_size).items()}
    step = tf.function(model.train_step, reduce_retracing=True)
    for _ in range(2):  # trace (twice: the first call also creates the optimizer variables) + warm up
        step((batch,))
    return step, batch


def time_modes(width: int, batch_size: int, rounds: int, steps: int):
    from disentangled_ml.config import Config

    models, batch = {}, None
    for mode in MODES:
        cfg = Config().replace(**{"model.width": width, "data.mining": mode, "train.batch_size": batch_size})
        models[mode], batch = compiled_train_step(cfg)
    times = {mode: [] for mode in MODES}
    for r in range(rounds + 1):  # round 0 is a warm-up, not timed (first runs of each graph are slow)
        for mode in MODES:
            t0 = time.perf_counter()
            for _ in range(steps):
                out = models[mode]((batch,))
            float(out["loss"])  # wait for the last step
            if r > 0:
                times[mode].append((time.perf_counter() - t0) / steps)
    med = {mode: float(np.median(v)) for mode, v in times.items()}
    return {mode: {"median_s_per_step": med[mode], "triplets_per_s": batch_size / med[mode],
                   "vs_random": med[mode] / med["random"], "all_s": times[mode]} for mode in MODES}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--widths", type=int, nargs="+", default=[16, 64], help="model.width values")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[32], help="triplets per step")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds per mode")
    ap.add_argument("--steps", type=int, default=4, help="training steps per round")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "mining.json"))
    args = ap.parse_args(argv)

    import tensorflow as tf

    results = []
    for width in args.widths:
        for b in args.batch_sizes:
            res = time_modes(width, b, args.rounds, args.steps)
            results.append({"width": width, "batch_size": b, "modes": res})
            for mode, r in res.items():
                print(f"width {width:3d}  batch {b:4d}  {mode:14s} {1000 * r['median_s_per_step']:8.1f} ms/step "
                      f"{r['triplets_per_s']:7.1f} triplets/s  x{r['vs_random']:.2f} of random", flush=True)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                               "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
                               "tensorflow": tf.__version__},
                   "rounds": args.rounds, "steps_per_round": args.steps, "results": results}, f, indent=2)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
