"""Can the backbone hear major from minor? A supervised probe of the frontend's two parts.

The synthetic mood is (mode, brightness). The default model trained on the paper's
log-mel frontend alone reached mood .77 with mode-only triplets at chance (.50),
while madmom's chord recogniser reads the mode off 90 % of the same 3 s crops. This
probe asks whether the frontend is the limit: it trains the default backbone
(Inception, width 64) with plain softmax heads for mood (4 classes) and instrument
on random 3 s crops of the training tracks, from

* ``mel``: the paper's 128 mel bands (``frontend.pitch_bands_per_octave = 0``);
* ``pitch``: the pitch bands alone (madmom log-frequency filterbank, 24 bands an
  octave, 65-2100 Hz, on a 4096-sample STFT centred on the same frames);
* ``both``: the default frontend, mel bands then pitch bands.

It scores 8 fixed crops of every held-out track: mood, mode (major vs minor,
whatever the brightness), brightness and instrument accuracy, every 250 steps.
Supervised classification is a proxy for the triplet slices, but it needs no
mining and runs far more steps in the same time.

Two steps, so that the training can run where TensorFlow is missing (the GPU
machines lent here have JAX and no TensorFlow; Keras 3 runs the same backbone on
either):

    # where the package is installed: 12 s excerpts of every track -> uint8 features
    python benchmarks/mode_probe.py features --collection SYNTH_DIR --splits RUN_DIR/splits.csv --out feats.npz
    # anywhere with Keras 3 (KERAS_BACKEND=jax on a GPU), numpy and this repository
    KERAS_BACKEND=jax python benchmarks/mode_probe.py train --features feats.npz --steps 3000 \\
        --variants mel,both,pitch --out benchmarks/results/mode_probe.jsonl

``train`` appends one JSON line per variant and checkpoint to ``--out``.
"""

from __future__ import annotations

import argparse
import os
import sys
import types

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from _common import fit_probe  # noqa: E402  (this folder: the scripts run from it)

MOODS = ("happy", "tender", "tense", "sad")  # synth.MOODS: (major, bright), (major, dark), (minor, bright), (minor, dark)
EXCERPT_SECONDS = 12.0
CROP_FRAMES_EVAL = 8


def features(collection: str, splits_csv: str, out: str) -> None:
    """Compressed (not standardised) mel and pitch bands of a 12 s excerpt of every track, as uint8."""
    import csv

    import numpy as np
    from tqdm import tqdm

    from disentangled_ml.audio_io import load_audio
    from disentangled_ml.config import Config
    from disentangled_ml.features import filterbanks, log_mel

    fe = Config().frontend  # the default frontend: mel bands then pitch bands, norm 0 / 1
    banks = filterbanks(fe)
    rows = list(csv.DictReader(open(os.path.join(collection, "manifest.csv"))))
    split = {r["track_id"]: r["split"] for r in csv.DictReader(open(splits_csv))}
    n = int(EXCERPT_SECONDS * fe.sample_rate)
    feats = []
    for r in tqdm(rows, desc="features", unit="track"):
        y = load_audio(os.path.join(collection, r["path"]), fe.sample_rate)
        s = max(0, (len(y) - n) // 2)
        feats.append(log_mel(y[None, s:s + n], fe, banks).numpy()[0])
    x = np.stack(feats)
    train = np.array([split[r["track_id"]] == "train" for r in rows])

    def quantise(v):  # standardise on the training tracks, then 8 bits over the central 99.9 %
        v = (v - v[train].mean()) / v[train].std()
        lo, hi = np.quantile(v, [0.0005, 0.9995])
        return np.clip(np.round((v - lo) / (hi - lo) * 255), 0, 255).astype(np.uint8)

    np.savez_compressed(out, M=quantise(x[..., :fe.n_mels]), L=quantise(x[..., fe.n_mels:]),
                        split=[split[r["track_id"]] for r in rows], mood=[r["mood"] for r in rows],
                        instrument=[r["instrument"] for r in rows], genre=[r["genre"] for r in rows])
    print(f"wrote {out}: {x.shape[0]} tracks, {x.shape[1]} frames, {fe.n_mels} mel + {fe.n_pitch_bands} pitch bands")


def _backbone_builder():
    """``build_backbone`` without importing ``disentangled_ml.models`` (its __init__ needs TensorFlow)."""
    pkg = types.ModuleType("disentangled_ml.models")
    pkg.__path__ = [os.path.join(ROOT, "disentangled_ml", "models")]
    sys.modules.setdefault("disentangled_ml.models", pkg)
    from disentangled_ml.models.backbones import build_backbone

    return build_backbone


def train(features_npz: str, variants, steps: int, width: int, batch: int, out: str, seed: int = 0) -> None:
    import keras
    import numpy as np

    from disentangled_ml.config import Config

    build_backbone = _backbone_builder()
    d = np.load(features_npz)
    tr = d["split"] == "train"

    def z(x):
        x = x.astype(np.float32)
        return (x - x[tr].mean()) / x[tr].std()

    mel, pitch = z(d["M"]), z(d["L"])
    inputs = {"mel": mel, "pitch": pitch, "both": np.concatenate([mel, pitch], -1)}
    instruments = sorted(set(d["instrument"]))
    y_mood = np.array([MOODS.index(m) for m in d["mood"]])
    y_inst = np.array([instruments.index(i) for i in d["instrument"]])
    cfg0 = Config()
    frames, excerpt = cfg0.frontend.num_frames, mel.shape[1]
    train_idx, held_idx = np.flatnonzero(tr), np.flatnonzero(~tr)
    starts = np.linspace(0, excerpt - frames, CROP_FRAMES_EVAL).astype(int)
    rng = np.random.default_rng(seed)
    for v in variants:
        x = inputs[v]
        xh = np.stack([x[i, s:s + frames] for i in held_idx for s in starts])
        mh, ih = np.repeat(y_mood[held_idx], CROP_FRAMES_EVAL), np.repeat(y_inst[held_idx], CROP_FRAMES_EVAL)
        keras.utils.set_random_seed(seed)
        # every band of the variant is fed as if it were a mel band, so the branches that read the
        # pitch bands apart from the mel bands (harmony, since 0.5) have none to read: off
        backbone = build_backbone(cfg0.replace(**{"model.width": width, "frontend.n_mels": int(x.shape[-1]),
                                                  "frontend.pitch_bands_per_octave": 0,
                                                  "model.chroma_templates": 0}))
        inp = keras.Input((frames, x.shape[-1]))
        h = backbone(inp)
        model = keras.Model(inp, [keras.layers.Dense(len(MOODS), name="mood")(h),
                                  keras.layers.Dense(len(instruments), name="instrument")(h)])
        model.compile(keras.optimizers.Adam(1e-3), [keras.losses.SparseCategoricalCrossentropy(from_logits=True)] * 2)

        record = {"variant": v, "seed": seed, "bands": int(x.shape[-1]), "width": width, "batch": batch}
        fit_probe(model, x, y_mood, y_inst, train_idx, (xh, mh, ih), frames, batch, steps, rng, out,
                  lambda pm, pi: {**record, "mood": round(float((pm == mh).mean()), 3),
                                  "mode": round(float(((pm < 2) == (mh < 2)).mean()), 3),
                                  "brightness": round(float(((pm % 2) == (mh % 2)).mean()), 3),
                                  "instrument": round(float((pi == ih).mean()), 3)})


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("features")
    f.add_argument("--collection", required=True)
    f.add_argument("--splits", required=True, help="a run's splits.csv (track_id, split)")
    f.add_argument("--out", required=True)
    t = sub.add_parser("train")
    t.add_argument("--features", required=True)
    t.add_argument("--variants", default="mel,both,pitch")
    t.add_argument("--steps", type=int, default=3000)
    t.add_argument("--width", type=int, default=64)
    t.add_argument("--batch", type=int, default=64)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", required=True)
    a = p.parse_args(argv)
    if a.cmd == "features":
        features(a.collection, a.splits, a.out)
    else:
        bad = set(a.variants.split(",")) - {"mel", "pitch", "both"}
        if bad:
            p.error(f"unknown variant(s) {sorted(bad)}; choose from mel, pitch, both")
        train(a.features, a.variants.split(","), a.steps, a.width, a.batch, a.out, a.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
