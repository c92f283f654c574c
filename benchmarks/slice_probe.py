"""Which network hears the instrument? A supervised probe of the default backbone's slices.

Triplet training of the lean network learns the instrument slice the slowest of the four
(validation .52-.67 after 3,000 steps on the drummed collection, while genre and tempo are at
1.0 by step 750). That is either the network (it cannot resolve the lead's timbre) or the
metric-learning signal. This probe separates the two the way ``mode_probe.py`` does for mode:
it trains the real backbone of a config (``build_backbone``, every branch included) with plain
softmax heads on two of its slices -- instrument (5 classes) on the instrument slice, mood (4) on
the mood slice -- from random 3 s crops of the training tracks, and scores 8 fixed crops of every
held-out track every 250 steps. A variant is a set of config overrides, so candidate networks
are compared on the same crops, seed and steps.

    python benchmarks/mode_probe.py features --collection SYNTH_DIR --splits RUN_DIR/splits.csv --out feats.npz
    python benchmarks/slice_probe.py --features feats.npz --steps 1000 \\
        --variant "0.5=model.timbre_filters=0" --variant "0.6=" --out benchmarks/results/slice_probe.jsonl

Each checkpoint appends one JSON line to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from _common import fit_probe  # noqa: E402
from mode_probe import CROP_FRAMES_EVAL, MOODS  # noqa: E402  (same features, same held-out crops)


def _parse_variant(text: str):
    """``NAME=KEY=VALUE;KEY=VALUE`` -> (name, overrides); values are JSON where they parse."""
    name, _, rest = text.partition("=")
    overrides = {}
    for item in filter(None, rest.split(";")):
        key, _, value = item.partition("=")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return name, overrides


def probe(features_npz: str, variants, steps: int, batch: int, out: str, seed: int = 0) -> None:
    import keras
    import numpy as np

    from disentangled_ml.config import Config
    from disentangled_ml.models.backbones import build_backbone

    d = np.load(features_npz)
    tr = d["split"] == "train"

    def z(v):
        v = v.astype(np.float32)
        return (v - v[tr].mean()) / v[tr].std()

    x = np.concatenate([z(d["M"]), z(d["L"])], -1)
    instruments = sorted(set(d["instrument"]))
    y_mood = np.array([MOODS.index(m) for m in d["mood"]])
    y_inst = np.array([instruments.index(i) for i in d["instrument"]])
    excerpt = x.shape[1]
    train_idx, held_idx = np.flatnonzero(tr), np.flatnonzero(~tr)
    for name, overrides in variants:
        cfg = Config().replace(**overrides)
        frames = cfg.frontend.num_frames
        if cfg.frontend.n_bands != x.shape[-1]:
            raise SystemExit(f"variant {name}: the config has {cfg.frontend.n_bands} bands, the features "
                             f"{x.shape[-1]}: probe variants may change the network, not the frontend.")
        starts = np.linspace(0, excerpt - frames, CROP_FRAMES_EVAL).astype(int)
        xh = np.stack([x[i, s:s + frames] for i in held_idx for s in starts])
        mh, ih = np.repeat(y_mood[held_idx], CROP_FRAMES_EVAL), np.repeat(y_inst[held_idx], CROP_FRAMES_EVAL)
        rng = np.random.default_rng(seed)
        keras.utils.set_random_seed(seed)
        backbone = build_backbone(cfg)
        inp = keras.Input((frames, x.shape[-1]))
        h = backbone(inp)
        (ms, me), (is_, ie) = cfg.conditions.slices["mood"], cfg.conditions.slices["instrument"]
        model = keras.Model(inp, [keras.layers.Dense(len(MOODS), name="mood")(h[:, ms:me]),
                                  keras.layers.Dense(len(instruments), name="instrument")(h[:, is_:ie])])
        model.compile(keras.optimizers.Adam(1e-3), [keras.losses.SparseCategoricalCrossentropy(from_logits=True)] * 2)

        record = {"variant": name, "overrides": overrides, "seed": seed, "batch": batch,
                  "params": int(backbone.count_params()), "held_out_crops": int(len(ih))}
        fit_probe(model, x, y_mood, y_inst, train_idx, (xh, mh, ih), frames, batch, steps, rng, out,
                  lambda pm, pi: {**record, "instrument": round(float((pi == ih).mean()), 3),
                                  "mood": round(float((pm == mh).mean()), 3),
                                  "mode": round(float(((pm < 2) == (mh < 2)).mean()), 3)})


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--features", required=True, help="mode_probe.py features output")
    p.add_argument("--variant", action="append", required=True, metavar="NAME=KEY=VALUE;...",
                   help="a network to probe: a name, then config overrides (may be empty: 'default=')")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch", type=int, default=32, help="crops per step")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    probe(a.features, [_parse_variant(v) for v in a.variant], a.steps, a.batch, a.out, a.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
