"""Which synthetic factor does a trained model miss? Mood-triplet accuracy split by the factor that differs.

The synthesiser renders a mood as two factors (``synth.MOOD_FACTORS``): the mode of
the harmony (major / minor) and the brightness of the accompaniment. A mood triplet's
anchor and negative differ in brightness, in mode, or in both. ``dml evaluate``
already splits every label condition's triplets by (anchor's class, negative's
class) (``class_pairs`` in its ``metrics.json``); this script sums those cells by
which factors differ, which shows what the mood slice has learnt.

``--chord-recognition N`` also measures how much mode the audio carries for the
field's chord recogniser, madmom's CNN chord features + CRF (Korzeniowski & Widmer
2016; major/minor triads in 12 roots, or no chord): on one random 3 s crop and on
the whole track, for N tracks of ``--collection``, the mode is read as whichever of
major or minor chords lasts longer. A key recogniser is the wrong probe here: the
minor mode's i, iv, v (natural minor) are the relative major's vi, ii, iii, so it
reads a minor progression as the relative major key while every chord is minor.

    python benchmarks/synth_factors.py --metrics RUN_DIR/eval_test/metrics.json [--embedder model]
        [--collection SYNTH_DIR --chord-recognition 60] [--out benchmarks/results/synth_factors.json]

Writes the JSON and prints the table.
"""

from __future__ import annotations

import argparse
import collections
import csv
import json
import os
import sys
from typing import Dict, List, Mapping, Sequence

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

def mood_kind(anchor_mood: str, negative_mood: str) -> str:
    """Which of the synthesiser's mood factors differ between anchor and negative."""
    from disentangled_ml.synth import MOOD_FACTORS

    (mode_a, bright_a), (mode_n, bright_n) = MOOD_FACTORS[anchor_mood], MOOD_FACTORS[negative_mood]
    differs = [name for name, same in (("mode", mode_a == mode_n), ("brightness", bright_a == bright_n)) if not same]
    return " and ".join(differs) + " differ" if len(differs) > 1 else f"only {differs[0]} differs"


def mood_factor_accuracy(class_pairs: Mapping[str, object]) -> Dict[str, Dict[str, float]]:
    """Sum the mood cells of a ``class_pairs`` entry (``dml evaluate``) by which factors differ.

    Returns:
        ``{"only mode differs" | "only brightness differs" | "mode and brightness differ":
        {"accuracy": float, "n": int}}``.
    """
    classes = list(class_pairs["classes"])
    acc = np.array(class_pairs["accuracy"], dtype=float)
    n = np.array(class_pairs["n"], dtype=np.int64)
    hits: Dict[str, float] = collections.defaultdict(float)
    counts: Dict[str, int] = collections.defaultdict(int)
    for i, anchor in enumerate(classes):
        for j, negative in enumerate(classes):
            if n[i, j]:
                kind = mood_kind(anchor, negative)
                hits[kind] += acc[i, j] * n[i, j]
                counts[kind] += int(n[i, j])
    return {k: {"accuracy": hits[k] / counts[k], "n": counts[k]} for k in sorted(counts)}


def chord_mode_accuracy(collection: str, rows: Sequence[Mapping[str, str]], sample_rate: int,
                        segment_samples: int, seed: int = 0) -> Dict[str, Dict[str, float]]:
    """Mode accuracy of madmom's chord recogniser on a random crop and on the whole track.

    The mode read from a piece of audio is :func:`disentangled_ml.synth.mode_heard`.

    Returns:
        ``{"crop" | "track": {"accuracy": float, "n": int}}``.
    """
    from disentangled_ml.audio_io import load_audio
    from disentangled_ml.synth import MOOD_FACTORS, mode_heard

    rng = np.random.default_rng(seed)
    hits: Dict[str, List[bool]] = collections.defaultdict(list)
    for r in rows:
        y = load_audio(os.path.join(collection, r["path"]), sample_rate)
        start = int(rng.integers(0, max(len(y) - segment_samples, 1)))
        for name, x in (("crop", y[start:start + segment_samples]), ("track", y)):
            hits[name].append(mode_heard(x, sample_rate) == MOOD_FACTORS[r["mood"]][0])
    return {k: {"accuracy": float(np.mean(v)), "n": len(v)} for k, v in hits.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--metrics", required=True, help="metrics.json written by dml evaluate")
    p.add_argument("--embedder", default="model", help="which embedder of the metrics to read")
    p.add_argument("--collection", help="the synthetic collection (manifest.csv and audio), for --chord-recognition")
    p.add_argument("--chord-recognition", type=int, default=0, metavar="N",
                   help="also run madmom's chord recogniser on N tracks of --collection (0: skip)")
    p.add_argument("--out", default=os.path.join(HERE, "results", "synth_factors.json"))
    args = p.parse_args(argv)
    if args.chord_recognition and not args.collection:
        p.error("--chord-recognition needs --collection")

    from disentangled_ml.config import FrontendConfig

    with open(args.metrics) as f:
        metrics = json.load(f)
    pairs = metrics["embedders"][args.embedder].get("class_pairs", {}).get("mood")
    if pairs is None:
        p.error(f"{args.metrics} has no mood class pairs for {args.embedder!r}; rerun dml evaluate.")
    result = {"metrics": args.metrics, "embedder": args.embedder,
              "mood_accuracy": metrics["embedders"][args.embedder]["triplet_accuracy"]["mood"],
              "mood_by_factor": mood_factor_accuracy(pairs)}
    print(f"mood triplets of {args.embedder} ({args.metrics}):")
    for kind, v in result["mood_by_factor"].items():
        print(f"  {kind:28s} {v['accuracy']:.3f}  (n={v['n']})")
    if args.chord_recognition:
        with open(os.path.join(args.collection, "manifest.csv"), newline="") as f:
            rows = list(csv.DictReader(f))
        rng = np.random.default_rng(0)
        sample = [rows[i] for i in rng.choice(len(rows), min(args.chord_recognition, len(rows)), replace=False)]
        fe = FrontendConfig()
        result["chord_mode_accuracy"] = chord_mode_accuracy(args.collection, sample, fe.sample_rate, fe.segment_samples)
        print("madmom chord recogniser, major/minor accuracy (3 s crop, whole track):",
              {k: round(v["accuracy"], 3) for k, v in result["chord_mode_accuracy"].items()})
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
