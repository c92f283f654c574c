"""Interleaved single-thread LiteRT latency of several ``.tflite`` files, in one process.

Whole-model medians of a 3 s segment move by a millisecond between processes on these shared
machines, so comparing two exports timed minutes apart says little. This script loads every
file first, then runs ``--rounds`` rounds; in each round every file is called ``--calls`` times
on the same random segment (batch 1, one LiteRT thread, the default XNNPACK delegate) and its
median is kept. It reports, per file, the median over rounds of those medians, their range and
the fastest single call, so files are compared under the same load.

    python benchmarks/latency_ab.py OLD/model_int8.tflite NEW/model_int8.tflite ... --out results/latency_ab.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np


def interleaved_latency(paths, rounds: int = 8, calls: int = 40, warmup: int = 10) -> list:
    """Rows ``{"file", "size_bytes", "latency_ms_median_of_medians", "round_medians_ms", "latency_ms_min"}``."""
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from disentangled_ml.export.tflite import open_interpreter

    runners = {}
    for p in paths:
        interpreter = open_interpreter(p, num_threads=1)
        (name, detail), = interpreter.get_signature_runner().get_input_details().items()
        samples = int(detail["shape_signature"][-1])
        x = np.random.default_rng(0).uniform(-0.5, 0.5, (1, samples)).astype(np.float32)
        runner = interpreter.get_signature_runner()
        for _ in range(warmup):
            runner(**{name: x})
        runners[p] = (runner, name, x)
    medians = {p: [] for p in paths}
    fastest = {p: float("inf") for p in paths}
    for _ in range(rounds):
        for p in paths:
            runner, name, x = runners[p]
            times = []
            for _ in range(calls):
                t0 = time.perf_counter()
                runner(**{name: x})
                times.append((time.perf_counter() - t0) * 1e3)
            medians[p].append(float(np.median(times)))
            fastest[p] = min(fastest[p], float(np.min(times)))
    return [{"file": p, "size_bytes": os.path.getsize(p), "latency_ms_median_of_medians": float(np.median(medians[p])),
             "round_medians_ms": medians[p], "latency_ms_min": fastest[p]} for p in paths]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", help=".tflite files with one waveform input")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--calls", type=int, default=40, help="timed calls per file and round")
    parser.add_argument("--out", default=None, help="write the rows here as JSON")
    args = parser.parse_args(argv)
    for p in args.files:
        if not os.path.isfile(p):
            parser.error(f"{p}: no such file")
    rows = interleaved_latency(args.files, args.rounds, args.calls)
    for r in rows:
        print(f"{r['file']:<60} {r['size_bytes'] / 1e6:6.2f} MB  {r['latency_ms_median_of_medians']:6.2f} ms "
              f"(rounds {min(r['round_medians_ms']):.2f}-{max(r['round_medians_ms']):.2f}, fastest {r['latency_ms_min']:.2f})")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
                       "rounds": args.rounds, "calls": args.calls, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
