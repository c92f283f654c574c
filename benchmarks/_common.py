"""Helpers shared by the benchmark scripts (imported as ``_common``: the scripts run from this folder)."""

from __future__ import annotations

from typing import Dict, List

#: CPU flags that make TensorFlow turn oneDNN on by itself (TensorFlow RFC 400).
ONEDNN_AUTO_FLAGS = ("avx512_vnni", "avx512_bf16", "avx_vnni", "amx")


def cpu_info() -> Dict[str, object]:
    """This machine's CPU from ``/proc/cpuinfo`` (read once): ``{"cpu": model name, "flags": [...]}``.

    Empty values where the file is missing (not Linux).
    """
    try:
        with open("/proc/cpuinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        lines = []
    cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "")
    flags: List[str] = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
    return {"cpu": cpu, "flags": flags}


def onednn_auto_flags(flags) -> List[str]:
    """The flags among ``flags`` with which TensorFlow enables oneDNN without being asked."""
    return sorted(x for x in flags if x.startswith(ONEDNN_AUTO_FLAGS))


def fit_probe(model, x, y_mood, y_inst, train_idx, held, frames: int, batch: int, steps: int, rng, out: str,
              fields) -> None:
    """Train a supervised two-head probe (mood, instrument) on random crops and score held-out crops.

    The training loop of ``mode_probe.py train`` and ``slice_probe.py``: every step ``batch``
    random crops of ``frames`` frames from the rows ``train_idx`` of ``x``; every 250 steps the
    held-out crops are classified and one JSON record is printed and appended to ``out``.

    Args:
        model: a compiled ``keras.Model`` from crops ``[n, frames, bands]`` to ``[mood logits,
            instrument logits]``.
        x: float32 ``[tracks, excerpt_frames, bands]``, the cached features.
        y_mood, y_inst: int ``[tracks]`` class indices.
        train_idx: int ``[n]`` rows of ``x`` the crops are cut from.
        held: ``(xh, mh, ih)``: held-out crops ``[m, frames, bands]`` and their classes ``[m]``.
        rng: ``numpy.random.Generator`` that draws the crops.
        out: JSON-lines file the records are appended to.
        fields: ``fields(pm, pi) -> dict``: the script's entries of a record, from the predicted
            mood and instrument classes ``[m]`` of the held-out crops; step, seconds and training
            loss are added here.
    """
    import json
    import time

    import keras
    import numpy as np

    xh, _, _ = held
    excerpt = x.shape[1]

    def batches():
        while True:
            i = rng.choice(train_idx, batch)
            s = rng.integers(0, excerpt - frames + 1, batch)
            yield np.stack([x[a, b:b + frames] for a, b in zip(i, s)]), (y_mood[i], y_inst[i])

    t0 = time.time()

    class Score(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            pm, pi = (p.argmax(1) for p in self.model.predict(xh, batch_size=128, verbose=0))
            rec = {**fields(pm, pi), "step": (epoch + 1) * 250, "seconds": round(time.time() - t0, 1),
                   "train_loss": round(float(logs["loss"]), 4)}
            print(json.dumps(rec), flush=True)
            with open(out, "a") as f:
                f.write(json.dumps(rec) + "\n")

    model.fit(batches(), steps_per_epoch=250, epochs=max(1, steps // 250), verbose=0, callbacks=[Score()])


def unit_profile(p):
    """Pitch-class profiles ``[..., 12]`` minus their mean, divided by their length: what
    :class:`~disentangled_ml.models.harmony.PitchClassProfile` outputs, in numpy."""
    import numpy as np

    p = p - p.mean(-1, keepdims=True)
    return p / np.sqrt((p * p).sum(-1, keepdims=True) + 1e-6)


def mode_probe_crops(collection: str, n_tracks: int, fe, crops_per_track: int = 4, seed: int = 0):
    """The crops the mode probes score: ``crops_per_track`` random 3 s crops of each of the first
    ``n_tracks`` tracks of a synthetic collection's manifest, in order, seeded.

    Yields ``(track_index, major, pitch_bands)``: ``major`` is the track's mode (from its mood label,
    :data:`disentangled_ml.synth.MOOD_FACTORS`), ``pitch_bands`` float32 ``[frames, n_pitch_bands]``, the
    frontend's compressed pitch bands of the crop (the harmony branch's input).
    """
    import csv
    import os

    import librosa
    import numpy as np
    import soundfile as sf

    from disentangled_ml.features import log_mel
    from disentangled_ml.synth import MOOD_FACTORS

    with open(os.path.join(collection, "manifest.csv"), newline="") as f:
        rows = list(csv.DictReader(f))[:n_tracks]
    rng = np.random.default_rng(seed)
    for i, r in enumerate(rows):
        y, sr = sf.read(os.path.join(collection, r["path"]), dtype="float32", always_2d=True)
        y = y.mean(1)
        if sr != fe.sample_rate:
            y = librosa.resample(y, orig_sr=sr, target_sr=fe.sample_rate)
        major = MOOD_FACTORS[r["mood"]][0] == "major"
        for _ in range(crops_per_track):
            s = rng.integers(0, len(y) - fe.segment_samples)
            yield i, major, log_mel(y[s:s + fe.segment_samples][None], fe).numpy()[0][:, fe.n_mels:]
