"""Peak memory and throughput of the training input pipeline, against an earlier revision, in one run.

Each measurement is a fresh process that builds ``training_dataset`` on a prepared
collection and reads ``--batches`` batches from it (the first pass decodes and
fills the memory cache), then reports its peak resident memory (``ru_maxrss``) and
the triplets per second of the batches after the first pool. The reference is the
same measurement on another git revision of this repository (``--ref``, checked
out in a temporary worktree and put first on ``PYTHONPATH``), so a change to the
pipeline is measured beside what it replaced. Revisions alternate over ``--rounds``.

Writes ``benchmarks/results/pipeline_memory.json`` and prints a table.

    python benchmarks/pipeline_memory.py PREPARED_DIR --ref b1c752e [--pool-size 64] [--batches 24]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def _child(prepared: str, pool_size: int, batches: int) -> None:
    import resource
    import time

    import disentangled_ml
    from disentangled_ml.config import Config
    from disentangled_ml.data.labels import LabelTables
    from disentangled_ml.data.pipeline import training_dataset
    from disentangled_ml.training import load_prepared

    tracks = load_prepared(prepared)
    config = Config.from_json(os.path.join(prepared, "config.json")).replace(**{"data.pool_size": pool_size})
    tables = LabelTables.from_tracks(tracks, config)
    it = iter(training_dataset(tracks, tables, list(range(len(tracks))), config))
    per_pool = pool_size * config.data.triplets_per_track // config.train.batch_size
    for _ in range(per_pool):  # the first pool: decoding and cache filling
        next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    rate = batches * config.train.batch_size / (time.perf_counter() - t0)
    print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "triplets_per_s": rate, "n_bands": config.frontend.n_bands,
                      "package": os.path.dirname(disentangled_ml.__file__)}))


def measure(source_root: str, prepared: str, pool_size: int, batches: int) -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=source_root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # as `dml` sets it on x86-64
    out = subprocess.run([sys.executable, os.path.abspath(__file__), prepared, "--child", "--pool-size",
                          str(pool_size), "--batches", str(batches)], env=env, cwd=tempfile.gettempdir(),
                         capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"measurement on {source_root} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("prepared", metavar="PREPARED_DIR", help="a collection written by `dml prepare`")
    ap.add_argument("--ref", help="git revision to measure beside the working tree (the reference)")
    ap.add_argument("--pool-size", type=int, default=64, help="data.pool_size (tracks per pool; default 64)")
    ap.add_argument("--batches", type=int, default=24, help="batches timed after the first pool")
    ap.add_argument("--rounds", type=int, default=1, help="alternating rounds per revision")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "pipeline_memory.json"))
    args = ap.parse_args(argv)
    if args.child:
        _child(args.prepared, args.pool_size, args.batches)
        return 0

    prepared = os.path.abspath(args.prepared)
    head = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        roots = {f"working tree ({head}+)": REPO}
        if args.ref:
            ref_dir = os.path.join(tmp, "ref")
            subprocess.run(["git", "-C", REPO, "worktree", "add", "--detach", ref_dir, args.ref], check=True,
                           capture_output=True)
            roots = {f"ref {args.ref}": ref_dir, **roots}
        try:
            runs = {name: [] for name in roots}
            for _ in range(args.rounds):
                for name, root in roots.items():
                    r = measure(root, prepared, args.pool_size, args.batches)
                    if os.path.realpath(r["package"]) != os.path.realpath(os.path.join(root, "disentangled_ml")):
                        raise RuntimeError(f"{name}: the child imported {r['package']}, not {root}'s package")
                    runs[name].append(r)
        finally:
            if args.ref:
                subprocess.run(["git", "-C", REPO, "worktree", "remove", "--force", ref_dir], capture_output=True)
    results = {name: {"peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
                      "triplets_per_s": sorted(r["triplets_per_s"] for r in rs)[len(rs) // 2],
                      "n_bands": rs[0]["n_bands"], "all": rs} for name, rs in runs.items()}
    for name, r in results.items():
        print(f"{name:32s} peak RSS {r['peak_rss_mb']:8.0f} MB  {r['triplets_per_s']:7.1f} triplets/s")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"prepared": args.prepared, "pool_size": args.pool_size, "batches": args.batches,
                   "rounds": args.rounds, "cpus": os.cpu_count(), "results": results}, f, indent=2)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
