"""How hard is the synthetic collection? An MFCC nearest-neighbour baseline, madmom tempo agreement, and speed.

1. ``synth``: wall time of ``dml synth`` for the collection (a fresh subprocess, as a
   user would run it), unless ``--collection`` gives an existing one.
2. ``mfcc_nn``: per track, librosa MFCCs (20 coefficients, 22,050 Hz, librosa's default
   2048/512 frames), mean and standard deviation over the track -> 40 numbers,
   z-scored over the collection. Leave-one-out 1-nearest-neighbour (Euclidean): for
   genre, mood and instrument the share of tracks whose neighbour has the same label;
   for tempo the share whose neighbour is within 5 BPM. Chance is what a random
   neighbour scores: for labels, the mean over tracks of the share of *other* tracks
   with the same label (about the sum of squared class shares); for tempo, the mean
   share of other tracks within 5 BPM. The collection is meant to be "not trivially
   easy": timbre statistics should beat chance but stay clearly below 1.
3. ``madmom``: on a sample of tracks, ``RNNBeatProcessor`` then
   ``TempoEstimationProcessor(fps=100)``, top tempo, against the manifest BPM: share
   within 4 %, and octave errors (half / double within 4 %) counted separately.
   madmom's processors expect 44.1 kHz (a numpy array is taken to be at 44.1 kHz;
   a 22,050 Hz *file* would need ffmpeg to resample), so the signal is resampled
   with librosa first.

Writes ``benchmarks/results/mfcc_baseline.json`` and prints a table.

    python benchmarks/mfcc_baseline.py [--tracks 200] [--seed 0] [--collection MANIFEST] [--madmom-tracks 20]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Sequence

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
TEMPO_TOLERANCE_BPM = 5.0  # the paper's tempo-similarity rule (ConditionConfig.tempo_positive_bpm)
MADMOM_TOLERANCE = 0.04  # relative


def time_synth(out_dir: str, tracks: int, seed: int, jobs: int) -> float:
    cmd = [sys.executable, "-m", "disentangled_ml", "synth", out_dir, "--tracks", str(tracks), "--seed", str(seed),
           "--jobs", str(jobs), "--no-progress"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t0


def mfcc_features(paths: Sequence[str], sample_rate: int) -> np.ndarray:
    """[n_tracks, 40] float64: mean and std over time of 20 MFCCs."""
    import librosa
    import soundfile as sf

    rows = []
    for p in paths:
        y, sr = sf.read(p, dtype="float32", always_2d=True)
        y = y.mean(axis=1)
        if sr != sample_rate:
            y = librosa.resample(y, orig_sr=sr, target_sr=sample_rate)
        m = librosa.feature.mfcc(y=y, sr=sample_rate, n_mfcc=20)
        rows.append(np.concatenate([m.mean(axis=1), m.std(axis=1)]))
    return np.asarray(rows, dtype=np.float64)


def nearest_neighbours(x: np.ndarray) -> np.ndarray:
    """Leave-one-out 1-NN indices under Euclidean distance on z-scored features."""
    z = (x - x.mean(axis=0)) / np.maximum(x.std(axis=0), 1e-12)
    d = np.sum((z[:, None, :] - z[None, :, :]) ** 2, axis=-1)
    np.fill_diagonal(d, np.inf)
    return np.argmin(d, axis=1)


def nn_scores(nn: np.ndarray, labels: Dict[str, List[str]], tempo: np.ndarray) -> Dict[str, Dict[str, float]]:
    n = len(nn)
    out = {}
    for cond, lab in labels.items():
        lab = np.asarray(lab)
        same = lab[:, None] == lab[None, :]
        np.fill_diagonal(same, False)
        out[cond] = {"accuracy": float(np.mean(lab[nn] == lab)), "chance": float(np.mean(same.sum(1) / (n - 1))),
                     "classes": int(len(set(lab.tolist())))}
    close = np.abs(tempo[:, None] - tempo[None, :]) <= TEMPO_TOLERANCE_BPM
    np.fill_diagonal(close, False)
    out["tempo"] = {"accuracy": float(np.mean(np.abs(tempo[nn] - tempo) <= TEMPO_TOLERANCE_BPM)),
                    "chance": float(np.mean(close.sum(1) / (n - 1))), "tolerance_bpm": TEMPO_TOLERANCE_BPM}
    return out


def madmom_agreement(paths: Sequence[str], tempi: Sequence[float]) -> Dict[str, object]:
    import librosa
    import soundfile as sf
    from madmom.features.beats import RNNBeatProcessor
    from madmom.features.tempo import TempoEstimationProcessor

    rnn, est = RNNBeatProcessor(), TempoEstimationProcessor(fps=100)
    rows, t0 = [], time.perf_counter()
    for p, bpm in zip(paths, tempi):
        y, sr = sf.read(p, dtype="float32", always_2d=True)
        y = librosa.resample(y.mean(axis=1), orig_sr=sr, target_sr=44100)
        top = float(est(rnn(y))[0, 0])
        r = top / bpm
        kind = ("match" if abs(r - 1) <= MADMOM_TOLERANCE else
                "half" if abs(r - 0.5) <= 0.5 * MADMOM_TOLERANCE else
                "double" if abs(r - 2) <= 2 * MADMOM_TOLERANCE else "other")
        rows.append({"path": os.path.basename(p), "bpm": bpm, "madmom_bpm": round(top, 2), "result": kind})
    n = len(rows)
    count = {k: sum(r["result"] == k for r in rows) for k in ("match", "half", "double", "other")}
    return {"tracks": n, "within_4pct": count["match"] / n, "octave_errors": (count["half"] + count["double"]) / n,
            "counts": count, "seconds_per_track": (time.perf_counter() - t0) / n, "per_track": rows}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--collection", help="manifest.csv of an existing synthetic collection (skips generation)")
    parser.add_argument("--tracks", type=int, default=200, help="tracks to generate")
    parser.add_argument("--seed", type=int, default=0, help="synth seed")
    parser.add_argument("--jobs", type=int, default=None, help="synth worker processes (default: all CPUs)")
    parser.add_argument("--madmom-tracks", type=int, default=20, help="tracks for the madmom check (the first N)")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "mfcc_baseline.json"), help="JSON output")
    args = parser.parse_args(argv)

    from disentangled_ml.config import FrontendConfig
    from disentangled_ml.data.manifest import read_manifest
    from disentangled_ml.synth import default_jobs

    jobs = args.jobs or default_jobs()
    result: Dict[str, object] = {
        "machine": {"python": platform.python_version(), "platform": platform.platform(), "cpus": default_jobs()},
    }
    with tempfile.TemporaryDirectory() as work:
        manifest = args.collection
        if manifest is None:
            out_dir = os.path.join(work, "synth")
            seconds = time_synth(out_dir, args.tracks, args.seed, jobs)
            manifest = os.path.join(out_dir, "manifest.csv")
            result["synth"] = {"tracks": args.tracks, "seed": args.seed, "jobs": jobs,
                               "wall_seconds": round(seconds, 2),
                               "command": f"dml synth OUT --tracks {args.tracks} --seed {args.seed} --jobs {jobs}"}
        tracks = read_manifest(manifest)
        paths = [t.path for t in tracks]
        labels = {c: [t.labels[c][0] for t in tracks] for c in ("genre", "mood", "instrument")}
        tempo = np.array([t.tempo for t in tracks], dtype=np.float64)
        t0 = time.perf_counter()
        feats = mfcc_features(paths, FrontendConfig().sample_rate)
        result["mfcc_nn"] = {"tracks": len(tracks), "features": "20 MFCC mean+std over the track, z-scored",
                             "seconds": round(time.perf_counter() - t0, 1),
                             "conditions": nn_scores(nearest_neighbours(feats), labels, tempo)}
        k = min(args.madmom_tracks, len(tracks))
        if k > 0:
            result["madmom"] = madmom_agreement(paths[:k], tempo[:k].tolist())

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")

    print(f"\nMFCC 1-NN (leave-one-out) on {len(tracks)} tracks")
    print(f"{'condition':<12}{'accuracy':>10}{'chance':>10}")
    for cond, r in result["mfcc_nn"]["conditions"].items():
        print(f"{cond:<12}{r['accuracy']:>10.3f}{r['chance']:>10.3f}")
    if "madmom" in result:
        m = result["madmom"]
        print(f"\nmadmom tempo on {m['tracks']} tracks: within 4 % {m['within_4pct']:.2f}, "
              f"octave errors {m['octave_errors']:.2f}, counts {m['counts']}")
    if "synth" in result:
        s = result["synth"]
        print(f"dml synth: {s['tracks']} tracks in {s['wall_seconds']:.1f} s with {s['jobs']} jobs")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
