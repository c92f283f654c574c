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

import numpy as np

# the timing loop of benchmarks/export.py (this folder is on sys.path when a script here runs)
from export import _time  # noqa: E402


def interleaved_latency(paths, rounds: int = 8, calls: int = 40, warmup: int = 10) -> list:
    """Rows ``{"file", "size_bytes", "latency_ms_median_of_medians", "round_medians_ms", "latency_ms_min"}``."""
    from disentangled_ml.export.tflite import open_interpreter

    calls_of = {}
    for p in paths:
        interpreter = open_interpreter(p, num_threads=1)
        (name, detail), = interpreter.get_signature_runner().get_input_details().items()
        x = np.random.default_rng(0).uniform(-0.5, 0.5, (1, int(detail["shape_signature"][-1]))).astype(np.float32)
        runner = interpreter.get_signature_runner()
        calls_of[p] = (lambda r, n, a: lambda: r(**{n: a}))(runner, name, x)
        for _ in range(warmup):
            calls_of[p]()
    rounds_of = {p: [] for p in paths}
    for _ in range(rounds):
        for p in paths:
            rounds_of[p].append(_time(calls_of[p], warmup=0, repeats=calls))
    rows = []
    for p in paths:
        medians = [r["latency_ms_median"] for r in rounds_of[p]]
        rows.append({"file": p, "size_bytes": os.path.getsize(p), "latency_ms_median_of_medians": float(np.median(medians)),
                     "round_medians_ms": medians, "latency_ms_min": min(r["latency_ms_min"] for r in rounds_of[p])})
    return rows


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
