"""Pareto table of backbone candidates: cost (parameters, MACs, training-step time) against accuracy.

For each candidate (a name and config overrides on ``Config()``):

1. **Arithmetic**: backbone parameters and MMACs per 3 s segment
   (:func:`disentangled_ml.models.profile.backbone_profile`).
2. **Training-step time**: the compiled training step of ``build_triplet_model`` on one
   fixed in-memory batch of ``train.batch_size`` triplets (``benchmarks/mining.py``'s
   ``compiled_train_step``; no input pipeline), timed in interleaved rounds across the
   candidates (``--rounds``, the first one a warm-up, ``--steps`` steps each), so a load
   spike on a shared machine hits them all. The median seconds per step and its ratio to
   ``paper_inception`` (the paper-shaped reference, when it is timed in the same run) are
   reported. ``--no-timing`` skips this.
3. **Time to accuracy** from real training runs (``--runs NAME=RUN_DIR``): from the run's
   ``history.csv``, the first epoch whose ``val_mean_acc`` reaches ``--target`` and the
   training seconds until its end (the ``elapsed_s`` column ``dml train`` logs; for runs that
   predate it, ``--run-seconds NAME=SECONDS`` spread evenly over the epochs, and the JSON's
   ``time_source`` says so); and from ``RUN_DIR/eval_test/metrics.json`` (``dml evaluate``)
   the test triplet accuracy of each condition's slice with its 95 % Wilson interval.
4. **int8 export**: the size of ``model_int8.tflite`` of ``--exports NAME=EXPORT_DIR``; with
   ``--int8`` also its single-thread LiteRT latency, and for candidates without an export an
   untrained model of the config is exported (size and latency do not depend on the weights);
   a config that does not convert gets ``int8_error`` and a note instead of stopping the run.

A candidate is marked ``pareto`` when no other candidate is at least as good on both axes
and better on one: (step_s, mean test accuracy) where both are known for at least two
candidates, else (step_s, MMACs) when timed, else (MMACs, parameters). The JSON's
``pareto_axes`` names the axes used.

Writes ``benchmarks/results/backbones.json`` (``--out``, whole file) and prints a markdown table.

    python benchmarks/backbones.py [--only lite paper_inception ...] [--rounds 3] [--steps 3]
        [--runs lite=runs/lite paper_inception=runs/paper ...] [--run-seconds paper_inception=5400]
        [--exports lite=exports/lite ...] [--int8] [--target 0.85] [--no-timing]
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import logging
import os
import sys
import tempfile
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

DEFAULT_OUT = os.path.join(HERE, "results", "backbones.json")
REFERENCE = "paper_inception"
#: name -> overrides on Config(); a family named alone gets its own width and onset branch.
CANDIDATES: Dict[str, Dict[str, Any]] = {
    "paper_plain": {"model.backbone": "plain"},
    "paper_resnet": {"model.backbone": "resnet"},
    "paper_se": {"model.backbone": "se"},
    REFERENCE: {"model.backbone": "inception"},
    "lite": {},
    # 0.3's lean network: stem stride 2 in time and frequency, the onset branch on every slice
    "lite_0.3": {"model.stem_stride": [2, 2], "model.onset_conditions": None, "model.chroma_templates": 0},
    # 0.4's: no harmony branch
    "lite_0.4": {"model.chroma_templates": 0},
    "lite_no_onset": {"model.onset_lags": 0},
    "lite_w16": {"model.width": 16},
    "lite_w48": {"model.width": 48},
}
TABLE_CONDITIONS = ("genre", "mood", "instrument", "tempo")
INT8_FILE = "model_int8.tflite"


# --------------------------------------------------------------------------- pure parts (tested)

def parse_named(items: Sequence[str], flag: str) -> Dict[str, str]:
    """``["a=x", "b=y"]`` -> ``{"a": "x", "b": "y"}``; raises ValueError naming ``flag`` on a bad item."""
    out: Dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise ValueError(f"{flag} {item!r} must look like NAME=VALUE")
        out[name.strip()] = value.strip()
    return out


def _float(value: Any) -> Optional[float]:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if np.isfinite(f) else None


def read_history(path: str) -> List[Dict[str, Optional[float]]]:
    """Rows of a ``history.csv`` (Keras' CSVLogger): ``{"epoch", "val_mean_acc", "elapsed_s"}``, floats or None.

    A run resumed after a crash may log an epoch twice; the later row wins, in epoch order.
    """
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    by_epoch: Dict[int, Dict[str, Optional[float]]] = {}
    for i, r in enumerate(rows):
        epoch = _float(r.get("epoch"))
        key = int(epoch) if epoch is not None else i
        by_epoch[key] = {"epoch": float(key), "val_mean_acc": _float(r.get("val_mean_acc")),
                         "elapsed_s": _float(r.get("elapsed_s"))}
    return [by_epoch[k] for k in sorted(by_epoch)]


def time_to_target(history: Sequence[Mapping[str, Optional[float]]], target: float,
                   run_seconds: Optional[float] = None) -> Dict[str, Any]:
    """When a run first reached ``val_mean_acc >= target``, from :func:`read_history` rows.

    Seconds come from the ``elapsed_s`` column when every row has it; otherwise from
    ``run_seconds`` (the run's total training time) divided evenly over the epochs; otherwise
    they are None (the epoch is still given).

    Returns:
        ``target``, ``epochs`` (rows), ``target_epoch`` (the epoch as logged, 0-based),
        ``epochs_to_target`` (rows up to and including it), ``time_to_target_s``,
        ``total_train_s``, ``best_val_mean_acc``, ``time_source`` (``"elapsed_s"``,
        ``"run_seconds / epochs"`` or None). Target fields are None when it was never reached.
    """
    n = len(history)
    elapsed: Optional[List[float]] = None
    source = None
    if n and all(r.get("elapsed_s") is not None for r in history):
        elapsed, source = [float(r["elapsed_s"]) for r in history], "elapsed_s"
    elif n and run_seconds is not None:
        elapsed = [run_seconds * (i + 1) / n for i in range(n)]
        source = f"run_seconds / epochs ({run_seconds:g} s over {n} epochs, evenly)"
    accs = [r.get("val_mean_acc") for r in history]
    known = [a for a in accs if a is not None]
    hit = next((i for i, a in enumerate(accs) if a is not None and a >= target), None)
    return {
        "target": target,
        "epochs": n,
        "target_epoch": None if hit is None else int(history[hit]["epoch"]),
        "epochs_to_target": None if hit is None else hit + 1,
        "time_to_target_s": None if hit is None or elapsed is None else elapsed[hit],
        "total_train_s": elapsed[-1] if elapsed else None,
        "best_val_mean_acc": max(known) if known else None,
        "time_source": source,
    }


def read_test_accuracy(metrics: Mapping[str, Any], embedder: str = "model") -> Dict[str, Dict[str, Any]]:
    """``{condition: {acc, lo, hi, n, measure}}`` of ``embedder`` in a ``dml evaluate`` metrics.json dict.

    ``acc`` is the condition's slice accuracy (the whole embedding's for a model without
    slices, ``measure`` says which); ``lo``/``hi`` the 95 % Wilson interval, from the file's
    ``*_ci95`` when present, else computed from ``acc`` and ``n``.
    """
    from disentangled_ml.evaluation.metrics import wilson_interval

    entry = (metrics.get("embedders") or {}).get(embedder)
    if entry is None:
        raise ValueError(f"no embedder {embedder!r} in the metrics (has {sorted(metrics.get('embedders') or {})})")
    out: Dict[str, Dict[str, Any]] = {}
    for cond, r in (entry.get("triplet_accuracy") or {}).items():
        measure = "slice" if r.get("slice") is not None else "whole"
        acc, n = _float(r.get(measure)), int(r.get("n") or 0)
        if acc is None:
            continue
        ci = r.get(f"{measure}_ci95")
        lo, hi = (float(ci[0]), float(ci[1])) if ci and None not in ci else wilson_interval(int(round(acc * n)), n)
        out[cond] = {"acc": acc, "lo": lo, "hi": hi, "n": n, "measure": measure}
    return out


def mean_accuracy(test: Mapping[str, Mapping[str, Any]],
                  conditions: Sequence[str] = TABLE_CONDITIONS) -> Optional[float]:
    """Mean test accuracy over ``conditions`` (None unless every one of them is known)."""
    accs = [test[c]["acc"] for c in conditions if c in test]
    return float(np.mean(accs)) if accs and len(accs) == len(conditions) else None


def _dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def pareto_axes(rows: Sequence[Mapping[str, Any]]) -> List[Tuple[str, str]]:
    """The axes :func:`mark_pareto` uses: ``[(key, "min" | "max"), (key, ...)]``."""
    def known(*keys):
        return sum(all(r.get(k) is not None for k in keys) for r in rows)

    if known("step_s", "mean_test_acc") >= 2:  # a comparison needs two
        return [("step_s", "min"), ("mean_test_acc", "max")]
    if known("step_s", "mmacs"):
        return [("step_s", "min"), ("mmacs", "min")]
    return [("mmacs", "min"), ("params", "min")]


def mark_pareto(rows: Sequence[Dict[str, Any]]) -> List[Tuple[str, str]]:
    """Set ``row["pareto"]`` on each row: True when no other row is at least as good on both axes and
    better on one, False when one is, None when the row lacks an axis. Returns the axes."""
    axes = pareto_axes(rows)

    def point(r):
        vals = [r.get(k) for k, _ in axes]
        if any(v is None for v in vals):
            return None
        return [v if d == "min" else -v for v, (_, d) in zip(vals, axes)]

    points = [point(r) for r in rows]
    for r, p in zip(rows, points):
        r["pareto"] = None if p is None else not any(q is not None and _dominates(q, p) for q in points)
    return axes


def _acc_cell(t: Optional[Mapping[str, Any]]) -> str:
    if not t:
        return "-"
    return f"{t['acc']:.3f} [{t['lo']:.3f}, {t['hi']:.3f}]"


def _duration(s: Optional[float]) -> str:
    return "-" if s is None else f"{s / 60:.1f} min"


def format_table(rows: Sequence[Mapping[str, Any]], target: float) -> str:
    """The markdown table; ``*`` after a name marks the Pareto set. int8 columns appear when any row has them."""
    with_int8 = any(r.get("int8_mb") is not None for r in rows)
    with_latency = any(r.get("int8_latency") for r in rows)
    head = ["name", "params", "MMACs", "s/step", "× paper", f"time to {target:g}".replace("0.", ".", 1),
            *TABLE_CONDITIONS] + (["int8 MB"] if with_int8 else []) + (["int8 ms (1 thread)"] if with_latency else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        run = r.get("run") or {}
        if not run:
            ttt = "-"
        elif run.get("epochs_to_target") is None:
            best = run.get("best_val_mean_acc")
            ttt = "not reached" + (f" (best {best:.3f})" if best is not None else "")
        else:
            ttt = f"{_duration(run.get('time_to_target_s'))} (epoch {run['epochs_to_target']})"
        cells = [r["name"] + (" *" if r.get("pareto") else ""),
                 f"{r['params'] / 1e6:.2f} M" if r.get("params") is not None else "-",
                 "-" if r.get("mmacs") is None else f"{r['mmacs']:.0f}" if r["mmacs"] >= 100 else f"{r['mmacs']:.1f}",
                 f"{r['step_s']:.3f}" if r.get("step_s") is not None else "-",
                 f"{r['step_ratio_vs_paper_inception']:.2f}" if r.get("step_ratio_vs_paper_inception") is not None
                 else "-",
                 ttt,
                 *[_acc_cell((r.get("test") or {}).get(c)) for c in TABLE_CONDITIONS]]
        if with_int8:
            cells.append(f"{r['int8_mb']:.2f}" if r.get("int8_mb") is not None else "-")
        if with_latency:
            lat = r.get("int8_latency")
            cells.append(f"{lat['latency_ms_median']:.1f}" if lat else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- measurements

def arithmetic(cfg) -> Dict[str, Any]:
    """Backbone parameters and MMACs per segment, and the layers the counter could not count."""
    from disentangled_ml.models.profile import backbone_profile

    prof = backbone_profile(cfg)
    return {"params": prof["total_params"], "mmacs": prof["total_macs"] / 1e6,
            "uncounted_layers": [u["layer"] for u in prof["uncounted"]]}


def time_steps(cfgs: Mapping[str, Any], rounds: int, steps: int) -> Dict[str, List[float]]:
    """Seconds per training step of each config, one entry per timed round (round 0 untimed)."""
    from mining import compiled_train_step  # benchmarks/mining.py

    compiled = {}
    for name, cfg in cfgs.items():
        t0 = time.perf_counter()
        compiled[name] = compiled_train_step(cfg)  # traced and run twice
        print(f"  compiled {name} in {time.perf_counter() - t0:.0f} s", flush=True)
    times: Dict[str, List[float]] = {name: [] for name in cfgs}
    for r in range(rounds):
        for name, (step, batch) in compiled.items():
            t0 = time.perf_counter()
            for _ in range(steps):
                out = step((batch,))
            float(out["loss"])  # wait for the last step
            if r > 0:
                times[name].append((time.perf_counter() - t0) / steps)
        print(f"  round {r + 1}/{rounds}" + (" (warm-up)" if r == 0 else ""), flush=True)
    return times


def _export_script():
    """benchmarks/export.py as a module (by path: ``import export`` could find the repository's export package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("benchmarks_export", os.path.join(HERE, "export.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_config_check(run_dir: str, cfg) -> Optional[str]:
    """A note when the run's config.json has another network than the candidate's config."""
    from disentangled_ml.config import Config, ConfigError

    path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(path):
        return f"{path} missing: the run's network was not checked against the candidate"
    try:
        run_cfg = Config.from_json(path)
    except ConfigError as e:
        return f"{path}: {e}"
    diffs = [f"{k} {getattr(run_cfg.model, k)!r} (candidate {getattr(cfg.model, k)!r})"
             for k in ("backbone", "width", "onset_lags", "mask_mode")
             if getattr(run_cfg.model, k) != getattr(cfg.model, k)]
    return ("run's network differs: " + ", ".join(diffs)) if diffs else None


# --------------------------------------------------------------------------- main

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", metavar="NAME", choices=list(CANDIDATES),
                    help="candidates to include (default all: " + ", ".join(CANDIDATES) + ")")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds; the first is a warm-up")
    ap.add_argument("--steps", type=int, default=3, help="training steps per candidate per round")
    ap.add_argument("--no-timing", action="store_true", help="skip the training-step timing")
    ap.add_argument("--runs", nargs="+", default=[], metavar="NAME=RUN_DIR", help="training runs of candidates")
    ap.add_argument("--run-seconds", nargs="+", default=[], metavar="NAME=SECONDS",
                    help="total training seconds of a run whose history.csv has no elapsed_s column")
    ap.add_argument("--exports", nargs="+", default=[], metavar="NAME=EXPORT_DIR",
                    help="`dml export` folders of candidates (int8 TFLite size)")
    ap.add_argument("--int8", action="store_true",
                    help="also time the int8 TFLite on one LiteRT thread; candidates without --exports get an "
                         "untrained export of their config")
    ap.add_argument("--int8-repeats", type=int, default=30, help="timed LiteRT calls per int8 model")
    ap.add_argument("--target", type=float, default=0.85, help="validation mean triplet accuracy to reach")
    ap.add_argument("--out", default=DEFAULT_OUT, help="results JSON (written whole)")
    args = ap.parse_args(argv)
    if args.rounds < 2 or args.steps < 1:
        ap.error("--rounds must be >= 2 (the first is a warm-up) and --steps >= 1")
    names = list(args.only or CANDIDATES)
    try:
        runs = parse_named(args.runs, "--runs")
        run_seconds = {k: float(v) for k, v in parse_named(args.run_seconds, "--run-seconds").items()}
        exports = parse_named(args.exports, "--exports")
    except ValueError as e:
        ap.error(str(e))
    for flag, given in (("--runs", runs), ("--run-seconds", run_seconds), ("--exports", exports)):
        unknown = sorted(set(given) - set(names))
        if unknown:
            ap.error(f"{flag}: {unknown} not among the candidates {names}")
    for name, d in list(runs.items()) + list(exports.items()):
        if not os.path.isdir(d):
            ap.error(f"{name}: {d} is not a directory")

    from disentangled_ml import tf_environment

    tf_environment.configure()  # before TensorFlow is imported, as `dml` does
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    from train_step import environment, git_revision  # benchmarks/train_step.py: the machine description

    from disentangled_ml.config import Config

    base = Config()
    cfgs = {name: base.replace(**CANDIDATES[name]) if CANDIDATES[name] else base for name in names}
    notes: List[str] = []
    rows: List[Dict[str, Any]] = []
    for name in names:
        cfg = cfgs[name]
        row: Dict[str, Any] = {"name": name, "overrides": CANDIDATES[name], "config_hash": cfg.hash(),
                               "backbone": cfg.model.backbone, "width": cfg.model.width,
                               "onset_lags": cfg.model.onset_lags, **arithmetic(cfg)}
        print(f"{name}: {row['backbone']} width {row['width']} onset_lags {row['onset_lags']}: "
              f"{row['params']:,d} parameters, {row['mmacs']:.1f} MMACs per segment", flush=True)
        rows.append(row)

    machine = environment()
    machine["load_average_start"] = list(os.getloadavg())
    batch_size = base.train.batch_size
    if not args.no_timing:
        print(f"timing: {args.rounds} interleaved rounds (first a warm-up) x {args.steps} steps, batch "
              f"{batch_size} triplets", flush=True)
        times = time_steps(cfgs, args.rounds, args.steps)
        for row in rows:
            t = times[row["name"]]
            row["step_s"] = float(np.median(t))
            row["step_all_s"] = t
            row["triplets_per_s"] = batch_size / row["step_s"]
        ref = next((r for r in rows if r["name"] == REFERENCE), None)
        for row in rows:
            row["step_ratio_vs_paper_inception"] = row["step_s"] / ref["step_s"] if ref else None
        if ref is None:
            notes.append(f"{REFERENCE} was not timed in this run: no step-time ratios")
    machine["load_average_end"] = list(os.getloadavg())

    for row in rows:
        name = row["name"]
        row.setdefault("step_s", None)
        row.setdefault("step_ratio_vs_paper_inception", None)
        row["target"] = args.target
        row["run"], row["test"], row["time_to_target_s"] = None, None, None
        if name in runs:
            run_dir = runs[name]
            hist = os.path.join(run_dir, "history.csv")
            if os.path.isfile(hist):
                row["run"] = {"run_dir": os.path.abspath(run_dir),
                              **time_to_target(read_history(hist), args.target, run_seconds.get(name))}
                row["time_to_target_s"] = row["run"]["time_to_target_s"]
                if row["run"]["time_source"] is None:
                    notes.append(f"{name}: {hist} has no elapsed_s column and no --run-seconds was given: "
                                 "epochs only")
                elif row["run"]["time_source"] != "elapsed_s":
                    notes.append(f"{name}: seconds from --run-seconds spread evenly over the epochs")
            else:
                notes.append(f"{name}: {hist} missing")
            check = _run_config_check(run_dir, cfgs[name])
            if check:
                notes.append(f"{name}: {check}")
            metrics_path = os.path.join(run_dir, "eval_test", "metrics.json")
            if os.path.isfile(metrics_path):
                with open(metrics_path) as f:
                    row["test"] = read_test_accuracy(json.load(f))
            else:
                notes.append(f"{name}: {metrics_path} missing (run `dml evaluate`): no test accuracy")
        row["mean_test_acc"] = mean_accuracy(row["test"]) if row["test"] else None

    with tempfile.TemporaryDirectory(prefix="backbones_int8_") as work:
        for row in rows:
            name, cfg = row["name"], cfgs[row["name"]]
            row["int8_mb"], row["int8_source"] = None, None
            path = os.path.join(exports[name], INT8_FILE) if name in exports else None
            if path and not os.path.isfile(path):
                notes.append(f"{name}: {path} missing")
                path = None
            if path:
                row["int8_mb"], row["int8_source"] = os.path.getsize(path) / 1e6, os.path.abspath(path)
                if args.int8:
                    row["int8_latency"] = _export_script().tflite_latency(path, cfg.frontend.segment_samples,
                                                         repeats=args.int8_repeats)
            elif args.int8:
                print(f"  exporting an untrained {name} to int8 TFLite", flush=True)
                try:
                    res = _export_script().untrained_int8(cfg, os.path.join(work, name), repeats=args.int8_repeats)
                except Exception as e:  # noqa: BLE001 - a config that does not convert is a result, not a crash
                    row["int8_error"] = f"{type(e).__name__}: {str(e)[:500]}"
                    notes.append(f"{name}: the untrained int8 export failed: {row['int8_error'][:200]}")
                    print(f"  {name}: export failed ({type(e).__name__})", flush=True)
                    continue
                row["int8_mb"], row["int8_source"] = res["int8_mb"], "untrained export of the config"
                row["int8_latency"] = {k: v for k, v in res.items() if k.startswith("latency")}
                row["int8_export_seconds"] = res["export_seconds"]

    axes = mark_pareto(rows)
    notes.append("pareto: not dominated on " + " and ".join(f"{k} ({d})" for k, d in axes)
                 + "; None where a candidate lacks an axis")
    doc = {
        "what": "backbone candidates: parameters, MMACs per 3 s segment (backbone), training-step time on an "
                "in-memory batch, time to validation accuracy and test accuracy of real runs, int8 export size",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "git": git_revision(),
        "command": " ".join([os.path.basename(sys.argv[0])] + (sys.argv[1:] if argv is None else list(argv))),
        "machine": machine,
        "timing": None if args.no_timing else {
            "rounds": args.rounds, "warmup_rounds": 1, "steps_per_round": args.steps, "batch_size": batch_size,
            "what": "median over timed rounds of (round seconds / steps) of the compiled training step "
                    "(benchmarks/mining.py compiled_train_step), candidates interleaved round-robin"},
        "target": args.target,
        "pareto_axes": [{"key": k, "better": d} for k, d in axes],
        "candidates": rows,
        "notes": notes,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tmp = f"{args.out}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
    os.replace(tmp, args.out)
    print()
    print(format_table(rows, args.target))
    print()
    for n in notes:
        print(f"- {n}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
