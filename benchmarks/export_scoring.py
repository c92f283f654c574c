"""How `dml export` scores its `.tflite` variants: one after the other with every core each, or side
by side with one LiteRT thread each (what `export.parity.triplet_accuracies` does since 0.8.1).

    python benchmarks/export_scoring.py EXPORT_DIR [--crops 192]

Every variant of the export embeds the same random crops (the figures do not depend on the audio)
three ways in one run: one after the other with 1 LiteRT thread each, one after the other with
every core each (the reference: what the export did before), and side by side in a thread pool
with 1 thread each. Writes ``benchmarks/results/export_scoring.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from _common import cpu_info  # benchmarks/ is the script's directory
from disentangled_ml.export.tflite import TFLiteEmbedder

FILES = ["model.tflite", "model_fp16.tflite", "model_int8.tflite", "model_int8_full.tflite"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("export_dir")
    ap.add_argument("--crops", type=int, default=192)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "export_scoring.json"))
    a = ap.parse_args(argv)
    names = [n for n in FILES if os.path.exists(os.path.join(a.export_dir, n))]
    config = json.load(open(os.path.join(a.export_dir, "config.json")))
    samples = int(config["segment_samples"])
    x = (np.random.default_rng(0).standard_normal((a.crops, samples)) * 0.1).astype(np.float32)
    cores = os.cpu_count() or 1

    def embedders(threads):
        return [TFLiteEmbedder(os.path.join(a.export_dir, n), batch_size=64, num_threads=threads) for n in names]

    results = {}
    for label, threads in (("one_after_another_1_thread", 1), ("one_after_another_all_cores", cores)):
        embs = embedders(threads)
        started = time.perf_counter()
        outs = [e(x) for e in embs]
        results[label] = round(time.perf_counter() - started, 3)
    embs = embedders(1)
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=min(len(embs), cores)) as pool:
        side = list(pool.map(lambda e: e(x), embs))
    results["side_by_side_1_thread"] = round(time.perf_counter() - started, 3)
    same = all(np.array_equal(o, s) for o, s in zip(outs, side))
    report = {"what": "wall seconds to embed the same crops with every .tflite variant of an export",
              "export_dir": os.path.abspath(a.export_dir), "variants": names, "crops": a.crops,
              "seconds": results, "speedup_vs_all_cores": round(results["one_after_another_all_cores"]
                                                                / results["side_by_side_1_thread"], 2),
              "outputs_identical": bool(same), "machine": cpu_info()}
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    json.dump(report, open(a.out, "w"), indent=1)
    print(json.dumps({k: report[k] for k in ("seconds", "speedup_vs_all_cores", "outputs_identical")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
