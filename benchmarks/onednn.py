"""Training-step time with TensorFlow's oneDNN kernels on and off, side by side.

``dml`` sets ``TF_ENABLE_ONEDNN_OPTS=1`` on x86-64 (``disentangled_ml.tf_environment``)
because TensorFlow turns oneDNN on by itself only on CPUs with AVX512_VNNI,
AVX512_BF16, AVX_VNNI or AMX. This script measures what that is worth on the machine
it runs on: the default model (Inception, fixed masks, in-batch mining, the default
frontend with pitch bands) at each width, one compiled training step on the same
random batch (``benchmarks/mining.py``'s), and the process's peak memory, in a fresh process per setting, since the
variable is read only when TensorFlow is imported. Settings alternate
(0, 1, 0, 1, ...) so a load spike on these shared machines hits both; the reference
is ``0`` (TensorFlow's own kernels) and the figure the ratio of medians.

Writes ``benchmarks/results/onednn.json`` and prints a table.

    python benchmarks/onednn.py [--widths 16 64] [--rounds 2] [--steps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from _common import cpu_info, onednn_auto_flags  # noqa: E402

SETTINGS = ("0", "1")


def _child(width: int, steps: int) -> None:
    """In a fresh process: seconds per training step, printed as JSON on the last line."""
    import resource
    import time

    sys.path.insert(0, HERE)
    from mining import compiled_train_step

    from disentangled_ml.config import Config

    cfg = Config().replace(**{"model.width": width})
    step, batch = compiled_train_step(cfg)
    t0 = time.perf_counter()
    for _ in range(steps):
        out = step((batch,))
    float(out["loss"])  # wait for the last step
    print(json.dumps({"s_per_step": (time.perf_counter() - t0) / steps, "n_bands": cfg.frontend.n_bands,
                      "batch_size": cfg.train.batch_size,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def time_setting(setting: str, width: int, steps: int) -> dict:
    env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS=setting, TF_CPP_MIN_LOG_LEVEL="2")
    out = subprocess.run([sys.executable, __file__, "--child", str(width), "--steps", str(steps)], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--widths", type=int, nargs="+", default=[16, 64], help="model.width values")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds per setting")
    ap.add_argument("--steps", type=int, default=3, help="timed training steps per process")
    ap.add_argument("--child", type=int, metavar="WIDTH", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "onednn.json"))
    args = ap.parse_args(argv)
    if args.child is not None:
        _child(args.child, args.steps)
        return 0

    results = []
    for width in args.widths:
        times = {s: [] for s in SETTINGS}
        rss = {s: [] for s in SETTINGS}
        info = {}
        for _ in range(args.rounds):
            for s in SETTINGS:
                r = time_setting(s, width, args.steps)
                times[s].append(r["s_per_step"])
                rss[s].append(r["peak_rss_mb"])
                info = r
        med = {s: float(np.median(v)) for s, v in times.items()}
        results.append({"width": width, "n_bands": info["n_bands"], "batch_size": info["batch_size"],
                        "median_s_per_step": {f"TF_ENABLE_ONEDNN_OPTS={s}": med[s] for s in SETTINGS},
                        "all_s": {f"TF_ENABLE_ONEDNN_OPTS={s}": times[s] for s in SETTINGS},
                        "peak_rss_mb": {f"TF_ENABLE_ONEDNN_OPTS={s}": max(rss[s]) for s in SETTINGS},
                        "speedup_onednn": med["0"] / med["1"]})
        print(f"width {width:3d}  {info['n_bands']} bands  batch {info['batch_size']}  "
              f"oneDNN off {med['0']:6.2f} s/step  on {med['1']:6.2f} s/step  x{med['0'] / med['1']:.2f} faster  "
              f"peak RSS {max(rss['0']):.0f} / {max(rss['1']):.0f} MB",
              flush=True)
    cpu = cpu_info()
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "cpu": cpu["cpu"],
                               "avx512_vnni_bf16_amx": onednn_auto_flags(cpu["flags"])},
                   "rounds": args.rounds, "steps_per_process": args.steps, "results": results}, f, indent=2)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
