"""Which synthetic factor does a trained model miss? Test-triplet accuracy split by the factor that differs.

The synthesiser renders a mood as two factors (``synth.MOOD_FACTORS``): the mode of
the harmony (major / minor) and the brightness of the accompaniment. A mood triplet's
anchor and negative differ in brightness, in mode, or in both; scoring the triplets of
each kind separately shows which factor the mood slice has learnt. Instrument (and
genre) triplets are split by the unordered pair (anchor's class, negative's class),
which shows which classes the slice confuses.

``--key-finding N`` also measures how much mode a 3 s crop carries for a classical
method: Krumhansl–Schmuckler key finding (correlation of the crop's mean CQT chroma,
``librosa.feature.chroma_cqt``, with the 24 rotated Krumhansl–Kessler profiles) on one
random crop of each of N tracks, scored on major/minor only. The synthesiser draws
its chords from the natural minor scale, whose triads are exactly those of the
relative major, so a crop that does not show which chord is the tonic is ambiguous.

    python benchmarks/synth_factors.py --run RUN_DIR --collection SYNTH_DIR [--model RUN_DIR/best.keras]
        [--key-finding 120] [--out benchmarks/results/synth_factors.json]

Writes the JSON and prints the tables.
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

# Krumhansl & Kessler (1982) probe-tone profiles, tonic first.
KK_MAJOR = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
KK_MINOR = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])


def mood_kind(anchor_mood: str, negative_mood: str) -> str:
    """Which of the synthesiser's mood factors differ between anchor and negative."""
    from disentangled_ml.synth import MOOD_FACTORS

    (mode_a, bright_a), (mode_n, bright_n) = MOOD_FACTORS[anchor_mood], MOOD_FACTORS[negative_mood]
    differs = [name for name, same in (("mode", mode_a == mode_n), ("brightness", bright_a == bright_n)) if not same]
    return " and ".join(differs) + " differ" if len(differs) > 1 else f"only {differs[0]} differs"


def split_accuracy(triplets: Sequence[Mapping[str, object]], correct: np.ndarray, labels: Mapping[str, Mapping[str, str]],
                   condition: str) -> Dict[str, Dict[str, float]]:
    """Accuracy of ``condition``'s triplets grouped by what separates anchor and negative.

    Args:
        triplets: evaluation triplets (``anchor``, ``negative`` track ids), all of ``condition``.
        correct: bool ``[len(triplets)]``.
        labels: ``{track_id: manifest row}``.
    Returns:
        ``{group: {"accuracy": float, "n": int}}``.
    """
    groups: Dict[str, List[bool]] = collections.defaultdict(list)
    for t, ok in zip(triplets, correct):
        a, n = labels[t["anchor"]][condition], labels[t["negative"]][condition]
        key = mood_kind(a, n) if condition == "mood" else " / ".join(sorted((a, n)))
        groups[key].append(bool(ok))
    return {k: {"accuracy": float(np.mean(v)), "n": len(v)} for k, v in sorted(groups.items())}


def key_finding_mode_accuracy(collection: str, rows: Sequence[Mapping[str, str]], sample_rate: int,
                              segment_samples: int, seed: int = 0) -> Dict[str, Dict[str, float]]:
    """Major/minor accuracy of Krumhansl–Schmuckler key finding on one random crop per track, by brightness."""
    import librosa

    from disentangled_ml.audio_io import load_audio
    from disentangled_ml.synth import MOOD_FACTORS

    profiles = [(np.roll(p, k), mode) for k in range(12) for p, mode in ((KK_MAJOR, "major"), (KK_MINOR, "minor"))]
    rng = np.random.default_rng(seed)
    hits: Dict[str, List[bool]] = collections.defaultdict(list)
    for r in rows:
        y = load_audio(os.path.join(collection, r["path"]), sample_rate)
        start = int(rng.integers(0, max(len(y) - segment_samples, 1)))
        chroma = librosa.feature.chroma_cqt(y=y[start:start + segment_samples], sr=sample_rate).mean(axis=1)
        guess = max(profiles, key=lambda pm: np.corrcoef(chroma, pm[0])[0, 1])[1]
        mode, bright = MOOD_FACTORS[r["mood"]]
        hits["bright" if bright else "dark"].append(guess == mode)
        hits["all"].append(guess == mode)
    return {k: {"accuracy": float(np.mean(v)), "n": len(v)} for k, v in hits.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="run directory (config.json, test_triplets.csv)")
    p.add_argument("--collection", required=True, help="the synthetic collection (manifest.csv and audio)")
    p.add_argument("--model", help="model to score (default: RUN/best.keras)")
    p.add_argument("--split", default="test", choices=("validation", "test"))
    p.add_argument("--key-finding", type=int, default=0, metavar="N",
                   help="also run key finding on N tracks of the collection (0: skip)")
    p.add_argument("--out", default=os.path.join(HERE, "results", "synth_factors.json"))
    args = p.parse_args(argv)

    from disentangled_ml.audio_io import load_audio
    from disentangled_ml.config import Config
    from disentangled_ml.data.eval_triplets import read_eval_triplets
    from disentangled_ml.evaluation.embedders import load_embedder
    from disentangled_ml.evaluation.metrics import triplet_correct
    from disentangled_ml.evaluation.runner import condition_views

    config = Config.from_json(os.path.join(args.run, "config.json"))
    model_path = args.model or os.path.join(args.run, "best.keras")
    embedder, _, _ = load_embedder(model_path, 64, config)
    with open(os.path.join(args.collection, "manifest.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    labels = {r["track_id"]: r for r in rows}
    views, _ = condition_views(config, np.load(os.path.join(args.run, "masks.npy"))
                               if config.model.mask_mode == "learned" else None)
    triplets = read_eval_triplets(os.path.join(args.run, f"{args.split}_triplets.csv"))
    seg, rate = config.frontend.segment_samples, config.frontend.sample_rate
    audio: Dict[str, np.ndarray] = {}

    def crop(track_id: str, start: int) -> np.ndarray:
        if track_id not in audio:
            audio[track_id] = load_audio(os.path.join(args.collection, labels[track_id]["path"]), rate)
        return audio[track_id][start:start + seg]

    result = {"run": args.run, "model": model_path, "split": args.split, "conditions": {}}
    for condition in ("mood", "instrument", "genre"):
        chosen = [t for t in triplets if t["condition"] == condition]
        if not chosen or condition not in views:
            continue
        emb = [np.asarray(embedder(np.stack([crop(t[role], t[f"{role}_start"]) for t in chosen])))
               for role in ("anchor", "positive", "negative")]
        ok = triplet_correct(*emb, dims=views[condition])
        result["conditions"][condition] = {"accuracy": float(ok.mean()), "n": len(chosen),
                                           "by_pair": split_accuracy(chosen, ok, labels, condition)}
        print(f"\n{condition}: {ok.mean():.3f} over {len(chosen)} triplets")
        for key, v in result["conditions"][condition]["by_pair"].items():
            print(f"  {key:40s} {v['accuracy']:.3f}  (n={v['n']})")
    if args.key_finding:
        rng = np.random.default_rng(0)
        sample = [rows[i] for i in rng.choice(len(rows), min(args.key_finding, len(rows)), replace=False)]
        result["key_finding_mode_accuracy"] = key_finding_mode_accuracy(args.collection, sample, rate, seg)
        print("\nKrumhansl-Schmuckler mode accuracy on one 3 s crop per track:",
              {k: round(v["accuracy"], 3) for k, v in result["key_finding_mode_accuracy"].items()})
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
