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
