"""Throughput of the training input pipeline, side by side with its references, in one run.

Measures, in triplets per second (three 3 s log-mel patches each):

1. ``pipeline``: disentangled_ml's tf.data pipeline (decode -> excerpt -> pool ->
   log-mel -> mine -> batch), steady state after the memory cache is filled, and its
   cold first pass (decoding every file);
2. ``librosa_reference``: a straightforward Python implementation of the same work:
   mine a triplet with numpy, decode the three crops with ``librosa.load(offset,
   duration)``, ``librosa.feature.melspectrogram`` each, compress;
3. ``ceiling``: the same TF mel op on in-memory batches of waveform (no decoding, no
   mining), 3 segments per triplet;
4. ``train_step``: triplets per second consumed by the default model's training step
   (batch ``train.batch_size``), so the pipeline can be compared with its consumer.

Writes ``benchmarks/results/pipeline.json``. Ratios are the point: these machines
are shared and noisy, absolute figures move from run to run.

    python benchmarks/pipeline.py [--tracks 48] [--batches 40] [--collection DIR]
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


def _prepared(collection: str | None, tracks: int, work: str):
    from disentangled_ml.config import Config
    from disentangled_ml.data.prepare import prepare_collection
    from disentangled_ml.synth import synthesize_collection
    from disentangled_ml.training import load_prepared

    if collection is None:
        collection = os.path.join(work, "collection")
        synthesize_collection(collection, tracks, seed=0, progress=False)
    prepared = os.path.join(work, "prepared")
    prepare_collection(os.path.join(collection, "manifest.csv"), prepared, Config(), estimate_tempo=False,
                       progress=False)
    return load_prepared(prepared)


def bench_pipeline(tracks, config, batches: int):
    from disentangled_ml.data.labels import LabelTables
    from disentangled_ml.data.pipeline import training_dataset

    tables = LabelTables.from_tracks(tracks, config)
    ds = training_dataset(tracks, tables, list(range(len(tracks))), config)
    it = iter(ds)
    b = config.train.batch_size
    # Cold: until every track has been decoded once (the first pool needs pool_size tracks).
    t0 = time.perf_counter()
    n_cold = 0
    per_pass = max(1, len(tracks) * config.data.triplets_per_track // b)
    for _ in range(per_pass):
        next(it)
        n_cold += b
    cold = n_cold / (time.perf_counter() - t0)
    for _ in range(5):
        next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    warm = batches * b / (time.perf_counter() - t0)
    return {"triplets_per_s": warm, "cold_first_pass_triplets_per_s": cold}


def bench_librosa(tracks, config, n_triplets: int, seed: int = 0):
    """The naive reference: numpy mining + librosa decode and mel per crop, one triplet at a time."""
    import librosa

    from disentangled_ml.features import log_mel_librosa

    fe = config.frontend
    rng = np.random.default_rng(seed)
    genre = [t.labels.get("genre", ()) for t in tracks]
    durations = [float(t.info["duration"]) for t in tracks]
    seg = fe.segment_seconds

    def mel(path, offset):
        y, _ = librosa.load(path, sr=fe.sample_rate, mono=True, offset=offset, duration=seg)
        return log_mel_librosa(y, fe)  # the same mel (and pitch) bands as the pipeline, in librosa

    t0 = time.perf_counter()
    for _ in range(n_triplets):
        a = rng.integers(len(tracks))
        pos = [i for i in range(len(tracks)) if i != a and set(genre[i]) & set(genre[a])]
        neg = [i for i in range(len(tracks)) if not set(genre[i]) & set(genre[a])]
        p, n = rng.choice(pos), rng.choice(neg)
        for i in (a, p, n):
            mel(tracks[i].path, rng.uniform(0, durations[i] - seg))
    return {"triplets_per_s": n_triplets / (time.perf_counter() - t0)}


def bench_ceiling(config, batches: int):
    import tensorflow as tf

    from disentangled_ml.features import filterbanks, log_mel

    fe = config.frontend
    b = config.train.batch_size
    x = tf.constant(np.random.default_rng(0).uniform(-0.5, 0.5, (3 * b, fe.segment_samples)).astype(np.float32))
    banks = filterbanks(fe, as_tensors=True)
    f = tf.function(lambda w: log_mel(w, fe, banks))
    f(x).numpy()
    t0 = time.perf_counter()
    for _ in range(batches):
        f(x).numpy()
    return {"triplets_per_s": batches * b / (time.perf_counter() - t0), "segments_per_batch": 3 * b}


def bench_train_step(config, steps: int):
    import tensorflow as tf

    from disentangled_ml.models.trainer import build_triplet_model

    fe = config.frontend
    b = config.train.batch_size
    rng = np.random.default_rng(0)
    x = {k: tf.constant(rng.standard_normal((b, fe.num_frames, fe.n_bands)).astype(np.float32))
         for k in ("anchor", "positive", "negative")}
    x["condition"] = tf.constant(rng.integers(0, len(config.conditions.names) + 1, b).astype(np.int32))
    ds = tf.data.Dataset.from_tensors(x).repeat()
    model = build_triplet_model(config)
    model.fit(ds, steps_per_epoch=3, epochs=1, verbose=0)  # compile the step
    t0 = time.perf_counter()
    model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0)
    return {"triplets_per_s": steps * b / (time.perf_counter() - t0), "backbone": config.model.backbone}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--collection", help="a collection folder with manifest.csv (default: synthesise one)")
    parser.add_argument("--tracks", type=int, default=48, help="tracks to synthesise when --collection is not given")
    parser.add_argument("--batches", type=int, default=40, help="batches timed for the pipeline and the ceiling")
    parser.add_argument("--librosa-triplets", type=int, default=40, help="triplets timed for the librosa reference")
    parser.add_argument("--train-steps", type=int, default=10, help="training steps timed (0 to skip)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "pipeline.json"))
    args = parser.parse_args(argv)

    from disentangled_ml.config import Config

    config = Config()
    with tempfile.TemporaryDirectory() as work:
        tracks = _prepared(args.collection, args.tracks, work)
        results = {
            "pipeline": bench_pipeline(tracks, config, args.batches),
            "librosa_reference": bench_librosa(tracks, config, args.librosa_triplets),
            "ceiling": bench_ceiling(config, args.batches),
        }
        if args.train_steps:
            results["train_step"] = bench_train_step(config, args.train_steps)
    p = results["pipeline"]["triplets_per_s"]
    results["ratios"] = {
        "pipeline_over_librosa": p / results["librosa_reference"]["triplets_per_s"],
        "pipeline_over_ceiling": p / results["ceiling"]["triplets_per_s"],
    }
    if "train_step" in results:
        results["ratios"]["pipeline_over_train_step"] = p / results["train_step"]["triplets_per_s"]
    results["setup"] = {
        "tracks": len(tracks), "batch_size": config.train.batch_size, "pool_size": config.data.pool_size,
        "triplets_per_track": config.data.triplets_per_track, "excerpt_seconds": config.data.excerpt_seconds,
        "cpu_count": os.cpu_count(), "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)
    for k, v in results.items():
        print(f"{k:18s} {json.dumps(v)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
