"""Tiny labelled collections for the tests: short tone tracks, a small frontend, and a prepared folder.

Shared by the test modules so every test builds its collection the same way.
"""

import os

import numpy as np
import soundfile as sf

from disentangled_ml.audio_io import probe_audio
from disentangled_ml.config import Config
from disentangled_ml.data.manifest import Track, write_manifest

#: Multiplies every subprocess time limit in the tests (DML_TEST_TIMEOUT_SCALE, default 1). The
#: limits guard against hangs, not speed: each is a measured worst case on the 2-core CI machine
#: times a wide margin; raise the scale on a slower or busier machine.
TIMEOUT_SCALE = float(os.environ.get("DML_TEST_TIMEOUT_SCALE", "1"))
#: Margin over the measured worst case.
TIMEOUT_MARGIN = 4.0


def process_timeout(worst_seconds: float) -> float:
    """The time limit, in seconds, for a test subprocess whose measured worst case is ``worst_seconds``."""
    return worst_seconds * TIMEOUT_MARGIN * TIMEOUT_SCALE


GENRES = ["rock", "jazz", "pop"]
MOODS = ["happy", "sad"]


def tiny_config(**overrides):
    base = {
        "frontend.sample_rate": 8000, "frontend.segment_seconds": 1.0, "frontend.n_fft": 256,
        "frontend.hop_length": 128, "frontend.n_mels": 16, "data.excerpt_seconds": 2.5,
        # a few pitch bands keep the default frontend's two parts in every test, at a tiny cost
        "frontend.pitch_n_fft": 1024, "frontend.pitch_bands_per_octave": 6,
        "frontend.pitch_fmin": 110.0, "frontend.pitch_fmax": 880.0,
        # 1 s segments have 61 frames: a short onset branch keeps the default network's shape
        "model.onset_lags": 16,
        "data.pool_size": 8, "data.triplets_per_track": 4, "train.batch_size": 8,
    }
    base.update(overrides)
    return Config().replace(**base)


def assert_backbone_reloads(cfg, tmp_path):
    """Build ``cfg``'s backbone, save it as .keras, load it without custom_objects and check the
    reloaded network computes the same output on a random patch."""
    import keras

    from disentangled_ml.models.backbones import build_backbone

    net = build_backbone(cfg)
    path = str(tmp_path / "net.keras")
    net.save(path)
    loaded = keras.saving.load_model(path)
    x = np.random.default_rng(1).normal(size=(2, cfg.frontend.num_frames, cfg.frontend.n_bands)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(net(x)), atol=1e-5)


def tiny_waveform_model(cfg):
    """waveform -> {"embedding", "raw_embedding"}: a frame-energy summary and a dense layer (standard
    Keras layers only, seeded), standing in for a trained network where only the plumbing is tested."""
    import keras

    seg = cfg.frontend.segment_samples
    audio = keras.Input((seg,), name="audio")
    x = keras.layers.Reshape((seg // 100, 100))(audio)
    x = keras.layers.Dense(8, activation="tanh")(x)
    x = keras.layers.GlobalAveragePooling1D()(x)
    x = keras.layers.Dense(cfg.conditions.embedding_dim)(x)
    emb = keras.layers.UnitNormalization(name="embedding")(x)
    keras.utils.set_random_seed(0)
    return keras.Model(audio, {"embedding": emb, "raw_embedding": x})


def write_tracks(root, n=12, seconds=3.0, sr=8000, seed=0):
    """n short tracks with labels; genre/mood cycle, tempo spread, some unknown labels."""
    rng = np.random.default_rng(seed)
    tracks = []
    for i in range(n):
        ext = [".wav", ".flac", ".ogg"][i % 3]
        path = os.path.join(root, f"t{i:02d}{ext}")
        t = np.arange(int(seconds * sr)) / sr
        y = 0.3 * np.sin(2 * np.pi * (110 + 20 * i) * t) + 0.05 * rng.standard_normal(t.size)
        sf.write(path, y.astype(np.float32), sr)
        info = probe_audio(path)
        labels = {
            "genre": (GENRES[i % 3],),
            "mood": () if i % 5 == 4 else (MOODS[i % 2],),  # some unknown
            "instrument": ("guitar", "piano") if i % 4 == 0 else (("piano",) if i % 2 else ("drums",)),
        }
        tracks.append(Track(path=path, track_id=f"t{i:02d}", labels=labels, tempo=60.0 + 15.0 * (i // 2) + 3.0 * (i % 2),
                            info={"format_code": info.format_code, "sample_rate": str(info.sample_rate),
                                  "num_frames": str(info.num_frames), "channels": str(info.channels)}))
    return tracks


def make_prepared(root, overrides, n=20, seconds=3.0, **prepare_kwargs):
    """Write ``n`` tiny tracks and a manifest under ``root`` and run ``dml prepare`` on them.

    Returns:
        (prepared_dir, config, config_path): the prepared folder, the tiny Config with
        ``overrides`` applied, and that config written as JSON.
    """
    from disentangled_ml.data.prepare import prepare_collection

    audio = os.path.join(str(root), "audio")
    os.makedirs(audio, exist_ok=True)
    tracks = write_tracks(audio, n=n, seconds=seconds)
    for t in tracks:
        t.info = {}  # a raw manifest: prepare measures the audio itself
    manifest = os.path.join(str(root), "manifest.csv")
    write_manifest(tracks, manifest)
    cfg = tiny_config(**overrides)
    prepared = os.path.join(str(root), "prepared")
    prepare_collection(manifest, prepared, cfg, jobs=0, estimate_tempo=False, progress=False, **prepare_kwargs)
    cfg_path = os.path.join(str(root), "config.json")
    cfg.to_json(cfg_path)
    return prepared, cfg, cfg_path
