"""Scaling out on TensorFlow's own engines: the tf.data service and MultiWorkerMirroredStrategy, measured in one run.

CPU run (default), all processes on this machine, talking over 127.0.0.1 only:

1. ``input``: triplets per second delivered to a consumer by
   * the in-process pipeline decoding the original files,
   * the in-process pipeline reading the TFRecord audio shards,
   * the tf.data service with 1 worker process and with 2 worker processes
     (``dml data-service worker``; the dispatcher runs in this process);
   each timed after a warm-up that fills the workers' memory caches.
2. ``training``: steps per second of the custom multi-worker loop
   (:func:`disentangled_ml.training.distributed.make_train_step`, per-replica batch
   ``train.batch_size``) with one worker process, and with two worker processes
   under MultiWorkerMirroredStrategy (TF_CONFIG on 127.0.0.1 ports). Two workers
   on one machine share its cores, so this shows the loop's overhead, not a
   cluster's speed-up.

``--gpu``: training throughput of the default model on one GPU with the in-process
pipeline, and the share of step time spent waiting for input (``next(iterator)``
timed apart from the step, whose loss is fetched so the step has finished).
Bounded by ``--gpu-seconds``; ``--allow-cpu`` runs it without a GPU (a check of
the code path). Its figures go under ``"gpu"`` in the same results file.

Writes ``benchmarks/results/scale.json`` (merging: a CPU run keeps an earlier
``"gpu"`` entry and vice versa). These machines are shared and noisy: compare
figures within one run.

    python benchmarks/scale.py [--tracks 24] [--batches 60] [--train-steps 8] [--width 16]
    python benchmarks/scale.py --gpu [--gpu-seconds 150] [--gpu-tracks 256] [--allow-cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "results", "scale.json")


# --------------------------------------------------------------------------- data

def prepare(work: str, tracks: int, seconds: float, shards: int) -> str:
    """Synthesise ``tracks`` tracks and prepare them with TFRecord audio shards; returns the prepared dir."""
    from disentangled_ml.config import Config
    from disentangled_ml.data.prepare import prepare_collection
    from disentangled_ml.synth import synthesize_collection

    collection = os.path.join(work, "collection")
    synthesize_collection(collection, tracks, seed=0, min_seconds=seconds, max_seconds=seconds, progress=False)
    prepared = os.path.join(work, "prepared")
    prepare_collection(os.path.join(collection, "manifest.csv"), prepared, Config(), estimate_tempo=False,
                       progress=False, cache_audio=True, shards=shards)
    return prepared


def _collection(prepared: str, config):
    from disentangled_ml.data.labels import LabelTables
    from disentangled_ml.training import load_prepared

    tracks = load_prepared(prepared)
    return tracks, LabelTables.from_tracks(tracks, config), list(range(len(tracks)))


def _time_batches(iterator, warmup: int, batches: int, batch_size: int) -> dict:
    t0 = time.perf_counter()
    for _ in range(warmup):
        next(iterator)
    warm_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    s = time.perf_counter() - t0
    return {"triplets_per_s": batches * batch_size / s, "batches": batches, "warmup_batches": warmup,
            "warmup_seconds": warm_s}


# --------------------------------------------------------------------------- input

def bench_in_process(prepared: str, config, batches: int, shards: bool) -> dict:
    from disentangled_ml.data.pipeline import training_dataset

    tracks, tables, rows = _collection(prepared, config)
    audio_dir = os.path.join(prepared, "audio") if shards else None
    ds = training_dataset(tracks, tables, rows, config, audio_dir=audio_dir)
    # warm-up: one pass over the collection fills the memory cache
    warmup = max(3, len(rows) * config.data.triplets_per_track // config.train.batch_size)
    return _time_batches(iter(ds), warmup, batches, config.train.batch_size)


def _start_workers(n: int, dispatcher_port: int, logs_dir: str):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    procs = []
    for i in range(n):
        log = open(os.path.join(logs_dir, f"service-worker-{i}.log"), "w")
        procs.append((subprocess.Popen(
            [sys.executable, "-m", "disentangled_ml", "data-service", "worker", "--dispatcher",
             f"127.0.0.1:{dispatcher_port}", "--port", "0", "--host", "127.0.0.1"],
            env=env, stdout=log, stderr=subprocess.STDOUT), log))
    return procs


def _stop(procs) -> None:
    for p, log in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p, log in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        log.close()


def bench_service(prepared: str, config, batches: int, workers: int, logs_dir: str,
                  min_warmup_seconds: float = 5.0) -> dict:
    from disentangled_ml.data import service
    from disentangled_ml.data.pipeline import training_dataset

    tracks, tables, rows = _collection(prepared, config)
    dispatcher = service.start_dispatcher(0)
    port = int(dispatcher.target.rsplit(":", 1)[1])
    procs = _start_workers(workers, port, logs_dir)
    try:
        deadline = time.time() + 120
        while dispatcher._num_workers() < workers:
            if time.time() > deadline or any(p.poll() is not None for p, _ in procs):
                raise RuntimeError(f"tf.data service workers did not register; see {logs_dir}")
            time.sleep(0.2)
        ds = training_dataset(tracks, tables, rows, config, audio_dir=os.path.join(prepared, "audio"),
                              runtime_seeds=True)
        ds = service.distribute(ds, f"grpc://127.0.0.1:{port}", job_name=f"bench-{workers}")
        it = iter(ds)
        # Warm-up: every worker fills its cache, and the client picks up a second
        # worker's task a little after the first one's. Consuming (not sleeping) through
        # it keeps the client's buffer from filling up and flattering the timed part.
        warmup = max(3, workers * len(rows) * config.data.triplets_per_track // config.train.batch_size)
        t0 = time.perf_counter()
        done = 0
        while done < warmup or time.perf_counter() - t0 < min_warmup_seconds:
            next(it)
            done += 1
        warm_s = time.perf_counter() - t0
        result = _time_batches(it, 0, batches, config.train.batch_size)
        result.update(warmup_batches=done, warmup_seconds=warm_s, workers=workers)
        del it  # release the job before the servers go
        return result
    finally:
        _stop(procs)
        dispatcher.stop()


# --------------------------------------------------------------------------- training

def measure_training(strategy, config, prepared: str, steps: int, warmup: int, max_seconds: float) -> dict:
    """Steps/s of the custom loop and the share of time waiting for input, in this process."""
    from disentangled_ml.data.pipeline import training_dataset
    from disentangled_ml.training.distributed import PIPELINE_SEED_STRIDE, make_train_step
    from disentangled_ml.models.trainer import build_triplet_model

    tracks, tables, rows = _collection(prepared, config)
    global_batch = config.train.batch_size * strategy.num_replicas_in_sync

    def dataset_fn(ctx):
        return training_dataset(tracks, tables, rows, config, batch_size=ctx.get_per_replica_batch_size(global_batch),
                                seed=config.data.seed + PIPELINE_SEED_STRIDE * ctx.input_pipeline_id,
                                audio_dir=os.path.join(prepared, "audio"))

    with strategy.scope():
        model = build_triplet_model(config)
        model.optimizer.build(model.trainable_variables)
    step = make_train_step(strategy, model)
    it = iter(strategy.distribute_datasets_from_function(dataset_fn))
    t0 = time.perf_counter()
    for _ in range(warmup):  # tracing, cache fill
        float(step(next(it)))
    warm_s = time.perf_counter() - t0
    waits, computes = [], []
    started = time.perf_counter()
    while len(waits) < steps and (time.perf_counter() - started < max_seconds or len(waits) < 2):
        t0 = time.perf_counter()
        batch = next(it)
        t1 = time.perf_counter()
        loss = float(step(batch))  # fetching the loss waits for the step to finish
        t2 = time.perf_counter()
        waits.append(t1 - t0)
        computes.append(t2 - t1)
    total = sum(waits) + sum(computes)
    return {
        "steps": len(waits), "warmup_steps": warmup, "warmup_seconds": warm_s,
        "steps_per_s": len(waits) / total, "global_batch": global_batch,
        "triplets_per_s": len(waits) * global_batch / total,
        "input_wait_share": sum(waits) / total,
        "median_step_s": float(np.median(computes)), "median_input_wait_s": float(np.median(waits)),
        "replicas": strategy.num_replicas_in_sync, "final_loss": loss,
    }


def _train_worker(args) -> int:
    """One training process (``--train-worker``): MultiWorkerMirroredStrategy when TF_CONFIG is set."""
    import tensorflow as tf

    from disentangled_ml.training.distributed import make_strategy, multi_worker_cluster

    # the strategy first: MultiWorkerMirroredStrategy must configure the runtime before any op
    strategy = make_strategy() if multi_worker_cluster() is not None else tf.distribute.get_strategy()
    from disentangled_ml.config import Config

    config = Config.from_json(args.config)
    result = measure_training(strategy, config, args.prepared, args.train_steps, args.warmup_steps, 600)
    with open(args.train_worker, "w") as f:
        json.dump(result, f)
    return 0


def _free_ports(n: int):
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def bench_training(prepared: str, config_path: str, workers: int, steps: int, warmup: int, work: str) -> dict:
    ports = _free_ports(workers)
    procs = []
    outs = [os.path.join(work, f"train-{workers}-{i}.json") for i in range(workers)]
    for i in range(workers):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        env.pop("TF_CONFIG", None)
        if workers > 1:
            env["TF_CONFIG"] = json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                                           "task": {"type": "worker", "index": i}})
        log = open(os.path.join(work, f"train-{workers}-{i}.log"), "w")
        procs.append((subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--train-worker", outs[i], "--prepared", prepared,
             "--config", config_path, "--train-steps", str(steps), "--warmup-steps", str(warmup)],
            env=env, stdout=log, stderr=subprocess.STDOUT), log))
    try:
        for p, _ in procs:
            p.wait(timeout=900)
    finally:
        for p, log in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            log.close()
    for (p, _), out in zip(procs, outs):
        if p.returncode != 0 or not os.path.isfile(out):
            raise RuntimeError(f"training worker failed (exit {p.returncode}); see {out.replace('.json', '.log')}")
    results = [json.load(open(o)) for o in outs]
    chief = results[0]
    chief["workers"] = workers
    chief["per_worker_steps_per_s"] = [r["steps_per_s"] for r in results]
    return chief


# --------------------------------------------------------------------------- main

def run_cpu(args) -> dict:
    from disentangled_ml.config import Config

    config = Config().replace(**{"model.width": args.width})
    with tempfile.TemporaryDirectory() as work:
        t0 = time.perf_counter()
        prepared = prepare(work, args.tracks, args.seconds, args.shards)
        prepare_s = time.perf_counter() - t0
        config_path = os.path.join(work, "config.json")
        config.to_json(config_path)
        results = {"input": {}, "training": {}}
        results["input"]["in_process_files"] = bench_in_process(prepared, config, args.batches, shards=False)
        results["input"]["in_process_shards"] = bench_in_process(prepared, config, args.batches, shards=True)
        for n in (1, 2):
            results["input"][f"service_{n}_worker{'s' if n > 1 else ''}"] = bench_service(
                prepared, config, args.batches, n, work)
        if args.train_steps:
            for n in (1, 2):
                results["training"][f"{n}_worker{'s' if n > 1 else ''}"] = bench_training(
                    prepared, config_path, n, args.train_steps, args.warmup_steps, work)
    base = results["input"]["in_process_shards"]["triplets_per_s"]
    results["ratios"] = {f"{k}_over_in_process_shards": v["triplets_per_s"] / base
                         for k, v in results["input"].items() if k != "in_process_shards"}
    if args.train_steps:
        one, two = results["training"]["1_worker"], results["training"]["2_workers"]
        results["ratios"]["training_2_workers_over_1_steps_per_s"] = two["steps_per_s"] / one["steps_per_s"]
        results["ratios"]["training_2_workers_over_1_triplets_per_s"] = two["triplets_per_s"] / one["triplets_per_s"]
    results["setup"] = {
        "tracks": args.tracks, "seconds_per_track": args.seconds, "audio_shards": args.shards,
        "batch_size_per_replica": config.train.batch_size, "pool_size": config.data.pool_size,
        "excerpt_seconds": config.data.excerpt_seconds, "triplets_per_track": config.data.triplets_per_track,
        "backbone": config.model.backbone, "width": config.model.width, "prepare_seconds": prepare_s,
        "cpu_count": os.cpu_count(), "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M"),
        "network": "127.0.0.1 only; every process on this machine",
    }
    results["notes"] = [
        "All processes share this machine's cores: service workers compete with the consumer, and two MWMS "
        "workers each get about half the cores. These figures show overheads, not a cluster's speed-up.",
        "service_*: processing_mode parallel_epochs, run-time seeds (each worker mines its own triplets).",
        "training: the custom loop's step (model.train_step under strategy.run), real input pipeline from the "
        "shards; global batch = per-replica batch x replicas, so triplets_per_s is the fair comparison.",
    ]
    return results


def run_gpu(args) -> dict:
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus and not args.allow_cpu:
        raise SystemExit("--gpu: no GPU visible to TensorFlow (pass --allow-cpu to check the code path on CPU)")
    from disentangled_ml.config import Config

    config = Config()  # the default model (inception, width 64)
    with tempfile.TemporaryDirectory() as work:
        t0 = time.perf_counter()
        prepared = prepare(work, args.gpu_tracks, args.seconds, args.shards)
        prepare_s = time.perf_counter() - t0
        result = measure_training(tf.distribute.get_strategy(), config, prepared, args.gpu_steps,
                                  args.warmup_steps, args.gpu_seconds)
    result.update({
        "device": gpus[0].name if gpus else "CPU (--allow-cpu)",
        "device_name": (tf.config.experimental.get_device_details(gpus[0]).get("device_name") if gpus else
                        platform.processor() or "cpu"),
        "backbone": config.model.backbone, "width": config.model.width, "batch_size": config.train.batch_size,
        "tracks": args.gpu_tracks, "seconds_per_track": args.seconds, "prepare_seconds": prepare_s,
        "cpu_count": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M"),
        "input_wait": "time in next(iterator) (pipeline + host-to-device copy) over input + step time",
    })
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracks", type=int, default=24, help="tracks to synthesise")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each synthesised track, s")
    parser.add_argument("--shards", type=int, default=4, help="TFRecord audio shards")
    parser.add_argument("--batches", type=int, default=60, help="batches timed per input variant")
    parser.add_argument("--train-steps", type=int, default=8, help="training steps timed per variant (0: skip)")
    parser.add_argument("--warmup-steps", type=int, default=2, help="untimed training steps (tracing, cache fill)")
    parser.add_argument("--width", type=int, default=16, help="model.width for the CPU training comparison")
    parser.add_argument("--gpu", action="store_true", help="measure one-GPU training of the default model instead")
    parser.add_argument("--gpu-steps", type=int, default=200, help="--gpu: most steps timed")
    parser.add_argument("--gpu-tracks", type=int, default=256,
                        help="--gpu: tracks to synthesise (256 fills one pool of the default config)")
    parser.add_argument("--gpu-seconds", type=float, default=150.0, help="--gpu: most seconds of timed steps")
    parser.add_argument("--allow-cpu", action="store_true", help="--gpu without a GPU (checks the code path)")
    parser.add_argument("--out", default=DEFAULT_OUT, help="results JSON (merged into)")
    # internal: one training process of bench_training
    parser.add_argument("--train-worker", help=argparse.SUPPRESS)
    parser.add_argument("--prepared", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.train_worker:
        return _train_worker(args)

    started = time.perf_counter()
    results = {}
    if os.path.isfile(args.out):
        with open(args.out) as f:
            results = json.load(f)
    if args.gpu:
        results["gpu"] = run_gpu(args)
        results["gpu"]["wall_seconds"] = time.perf_counter() - started
    else:
        results.update(run_cpu(args))
        results["setup"]["wall_seconds"] = time.perf_counter() - started
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)
    for k, v in results.items():
        print(f"{k:10s} {json.dumps(v)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
