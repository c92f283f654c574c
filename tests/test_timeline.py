"""`dml timeline`: per-segment kNN classes / tempo and distance from the mean, per condition.

No training: a hand-made Keras network whose embedding is known (the mood and tempo slices
carry the spectral brightness, the genre slice the loudness) is written as a real export by
the package's own export code, a small labelled catalogue is embedded from it with
overlapping segments, and the timeline of a track that turns from dark to bright halfway
through must switch mood there.
"""

import csv
import json
import os
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf

from collections_for_tests import tiny_config
from disentangled_ml.catalogue_search import Catalogue
from disentangled_ml.cli import main
from disentangled_ml.timeline import _tempo, build_timeline, load_track, nearest_tracks

SR = 8000
HOP = 0.5  # seconds: 1-s segments every half second (dml embed --hop-seconds)
DARK = (150.0, 230.0, 310.0)  # Hz: energy in the lowest mel bands
BRIGHT = (2100.0, 2700.0, 3300.0)  # Hz: energy in the highest mel bands
QUERY_SECONDS, SWITCH_S = 12.0, 6.0  # the query is dark for 6 s, then bright


def _brightness_network(cfg):
    """mel [B, frames, bands] -> {"embedding", "raw_embedding"}: a time average, then fixed weights.

    In each 64-d slice only two dimensions are used: a feature and a constant 1 (the bias), so after
    the per-slice normalisation the slice's direction is a monotone function of the feature.
    Mood and tempo: brightness = mean of the top 6 mel bands - mean of the bottom 6. Genre:
    loudness = mean of the 16 mel bands. Instrument: mean of the pitch bands.
    """
    import keras

    from disentangled_ml.models.embedding import EMBEDDING_OUTPUT, RAW_OUTPUT, L2Normalize, normalisation_groups

    fe, slices = cfg.frontend, cfg.conditions.slices
    mel = keras.Input((fe.num_frames, fe.n_bands), name="mel")
    dense = keras.layers.Dense(cfg.conditions.embedding_dim, name="features")
    raw = dense(keras.layers.GlobalAveragePooling1D()(mel))
    emb = L2Normalize(groups=normalisation_groups(cfg), name=EMBEDDING_OUTPUT)(raw)
    model = keras.Model(mel, {EMBEDDING_OUTPUT: emb, RAW_OUTPUT: raw}, name="brightness")
    n_mels = fe.n_mels
    brightness = np.zeros(fe.n_bands)
    brightness[n_mels - 6:n_mels], brightness[:6] = 1 / 6, -1 / 6
    loudness = np.zeros(fe.n_bands)
    loudness[:n_mels] = 1 / n_mels
    pitch = np.zeros(fe.n_bands)
    pitch[n_mels:] = 1 / (fe.n_bands - n_mels)
    w, b = np.zeros((fe.n_bands, cfg.conditions.embedding_dim)), np.zeros(cfg.conditions.embedding_dim)
    for name, feature in [("genre", loudness), ("mood", brightness), ("instrument", pitch), ("tempo", brightness)]:
        start = slices[name][0]
        w[:, start], b[start + 1] = feature, 1.0
    dense.set_weights([w.astype(np.float32), b.astype(np.float32)])
    return model


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    """A float32-only export of the brightness network (1-s segments at 8 kHz), through save_run_model + export_run."""
    from disentangled_ml.export import export_run, tflite
    from disentangled_ml.models.masks import build_condition_masks
    from disentangled_ml.training import save_run_model

    root = str(tmp_path_factory.mktemp("timeline_export"))
    cfg = tiny_config()
    # save_run_model reads these two attributes of a TripletModel, nothing else
    save_run_model(os.path.join(root, "run"), cfg, SimpleNamespace(embedding_model=_brightness_network(cfg),
                                                                   condition_masks=build_condition_masks(cfg)))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tflite, "VARIANTS", tuple(v for v in tflite.VARIANTS if v.name == "float32"))
        export_run(os.path.join(root, "run"), os.path.join(root, "export"), int8_full=False, parity_segments=4)
    return os.path.join(root, "export")


def _tones(freqs, seconds, amp, rng):
    t = np.arange(int(round(seconds * SR))) / SR
    y = sum(np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi)) for f in freqs) / len(freqs)
    return (amp * y + 0.003 * rng.standard_normal(t.size)).astype(np.float32)


@pytest.fixture(scope="module")
def collection(export_dir, tmp_path_factory):
    """12 labelled 3-s tracks (bright = happy at ~140 BPM, dark = sad at ~80 BPM; loud/quiet genre; no
    instrument labels) and the 12-s dark-then-bright query, also in the catalogue without labels as
    "mixed"; embedded every HOP seconds. Returns (emb_dir, query_path, audio_dir)."""
    root = tmp_path_factory.mktemp("timeline_collection")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(12):
        bright, loud = i % 2 == 0, (i // 2) % 2 == 0
        freqs = [f + 7.0 * i for f in (BRIGHT if bright else DARK)]
        path = str(root / f"t{i:02d}.wav")
        sf.write(path, _tones(freqs, 3.0, 0.4 if loud else 0.1, rng), SR)
        rows.append({"path": path, "track_id": f"t{i:02d}", "genre": "loud" if loud else "quiet",
                     "mood": "happy" if bright else "sad", "instrument": "",
                     "tempo": f"{(140 if bright else 80) + i // 2}"})
    query = str(root / "query.wav")
    sf.write(query, np.concatenate([_tones(DARK, SWITCH_S, 0.25, rng),
                                    _tones(BRIGHT, QUERY_SECONDS - SWITCH_S, 0.25, rng)]), SR)
    rows.append({"path": query, "track_id": "mixed", "genre": "", "mood": "", "instrument": "", "tempo": ""})
    manifest = str(root / "manifest.csv")
    with open(manifest, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    emb = str(root / "emb")
    assert main(["embed", export_dir, manifest, "--out", emb, "--no-progress", "--hop-seconds", str(HOP)]) == 0
    return emb, query, str(root)


def _timeline(args, capsys):
    assert main(["timeline", *args]) == 0
    printed = capsys.readouterr().out
    out = args[args.index("--out") + 1]
    with open(os.path.join(out, "timeline.json")) as f:
        return json.load(f), printed, out


def test_embed_records_the_overlapping_hop(collection):
    emb, _, _ = collection
    with open(os.path.join(emb, "config.json")) as f:
        assert json.load(f)["catalogue"]["hop_seconds"] == HOP
    starts, segments = Catalogue(emb).track_segments("mixed")
    # 1-s segments every 0.5 s over 12 s: 1 + (12 - 1) / 0.5 = 23, starting at 0, 0.5, ..., 11
    np.testing.assert_allclose(starts, np.arange(23) * HOP)
    assert segments.shape == (23, 256) and segments.dtype == np.float32
    assert Catalogue(emb).track_segments("t00")[0].tolist() == [0.0, 0.5, 1.0, 1.5, 2.0]


def test_audio_file_timeline_switches_mood_halfway(collection, export_dir, tmp_path, capsys):
    emb, query, _ = collection
    out = str(tmp_path / "tl")
    t, printed, _ = _timeline([emb, query, "--out", out, "--export", export_dir, "--k", "5"], capsys)

    assert t["source"] == "audio_file" and t["export_dir"] == os.path.abspath(export_dir)
    assert (t["segment_seconds"], t["hop_seconds"], t["k"], t["weighting"]) == (1.0, HOP, 5, "distance")
    assert [s["start_s"] for s in t["segments"]] == pytest.approx(list(np.arange(23) * HOP))
    assert t["segments"][0] == {"index": 0, "start_s": 0.0, "end_s": 1.0, "center_s": 0.5}
    assert list(t["conditions"]) == ["genre", "mood", "instrument", "tempo"]

    mood = t["conditions"]["mood"]
    assert mood["kind"] == "classes" and mood["classes"] == ["happy", "sad"] and mood["labelled_tracks"] == 12
    winners = [s["winner"] for s in mood["segments"]]
    # one change, sad -> happy, within two segments (hops) of the switch in the audio
    assert [r["class"] for r in mood["runs"]] == ["sad", "happy"], winners
    assert abs(mood["runs"][1]["start_s"] - SWITCH_S) <= 2 * HOP
    first, last = mood["segments"][0], mood["segments"][-1]
    assert first["votes"] == {"sad": 1.0} and last["votes"] == {"happy": 1.0}
    assert [n["labels"] for n in first["neighbours"]] == [["sad"]] * 5
    assert all(a["distance"] <= b["distance"] for a, b in zip(first["neighbours"], first["neighbours"][1:]))
    # a track that is half dark, half bright is far from its own mean at both ends, nearest to it in the middle
    d = [s["distance_from_mean"] for s in mood["segments"]]
    assert min(d[0], d[-1]) > 0.05 and min(d) < 0.25 * min(d[0], d[-1])

    tempo = t["conditions"]["tempo"]
    assert tempo["kind"] == "tempo" and tempo["labelled_tracks"] == 12
    assert 80 <= tempo["segments"][0]["bpm"] <= 85 and 140 <= tempo["segments"][-1]["bpm"] <= 145
    assert tempo["segments"][0]["spread_octaves"] < 0.05
    assert {n["bpm"] for n in tempo["segments"][-1]["neighbours"]} <= {140.0, 141.0, 142.0, 143.0, 144.0, 145.0}

    assert t["conditions"]["genre"]["kind"] == "classes"
    instrument = t["conditions"]["instrument"]
    assert instrument["kind"] == "unlabelled" and "instrument" in instrument["reason"]
    assert len(instrument["segments"]) == 23 and "distance_from_mean" in instrument["segments"][0]

    with open(os.path.join(out, "timeline.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    height, width, _ = matplotlib.image.imread(os.path.join(out, "timeline.png")).shape
    assert height > 600 and width > 800  # four rows
    assert "s sad (" in printed and "happy" in printed and "distance from the mean only" in printed


def test_catalogue_track_timeline_uses_the_stored_segments(collection, export_dir, tmp_path, capsys):
    emb, query, _ = collection
    by_id, _, _ = _timeline([emb, "mixed", "--out", str(tmp_path / "id"), "--k", "5"], capsys)
    by_file, _, _ = _timeline([emb, query, "--out", str(tmp_path / "file"), "--k", "5"], capsys)  # catalogue's export
    assert by_id["source"] == "catalogue" and by_id["hop_seconds"] == HOP and by_id["export_dir"] is None
    assert by_file["export_dir"] == os.path.abspath(export_dir)
    for name in ("genre", "mood", "instrument", "tempo"):
        a, b = by_id["conditions"][name]["segments"], by_file["conditions"][name]["segments"]
        np.testing.assert_allclose([s["distance_from_mean"] for s in a], [s["distance_from_mean"] for s in b],
                                   atol=1e-4)
    assert by_id["conditions"]["mood"]["runs"][1]["start_s"] == by_file["conditions"]["mood"]["runs"][1]["start_s"]

    # A labelled track: left out of its own neighbours, and steady, so close to its mean throughout.
    t00, _, _ = _timeline([emb, "t00", "--out", str(tmp_path / "t00"), "--weighting", "uniform", "--k", "8"], capsys)
    mood = t00["conditions"]["mood"]
    assert mood["labelled_tracks"] == 11 and mood["k"] == 8
    assert all("t00" not in [n["track_id"] for n in s["neighbours"]] for s in mood["segments"])
    assert [r["class"] for r in mood["runs"]] == ["happy"]
    # equal weights: the 5 other happy tracks and the 3 nearest sad ones
    assert all(s["votes"] == {"happy": 5 / 8, "sad": 3 / 8} for s in mood["segments"])
    assert max(s["distance_from_mean"] for s in mood["segments"]) < 0.05


def test_audio_file_hop_and_conditions_options(collection, tmp_path, capsys):
    emb, query, _ = collection
    t, _, _ = _timeline([emb, query, "--out", str(tmp_path / "o"), "--hop-seconds", "1", "--conditions", "mood,tempo"],
                        capsys)
    assert t["hop_seconds"] == 1.0 and [s["start_s"] for s in t["segments"]] == [float(i) for i in range(12)]
    assert list(t["conditions"]) == ["mood", "tempo"]
    assert abs(t["conditions"]["mood"]["runs"][1]["start_s"] - SWITCH_S) <= 2 * 1.0


def _error(args, capsys):
    with pytest.raises(SystemExit) as e:
        main(["timeline", *args])
    assert e.value.code == 2
    return capsys.readouterr().err


def test_clear_errors(collection, tmp_path, capsys):
    emb, _, audio = collection
    out = str(tmp_path / "o")
    assert "'nope' is neither a track_id" in _error([emb, "nope", "--out", out], capsys)
    short = str(tmp_path / "short.wav")
    sf.write(short, _tones(DARK, 0.5, 0.3, np.random.default_rng(1)), SR)
    assert "0.50 s long, shorter than one 1 s segment" in _error([emb, short, "--out", out], capsys)
    err = _error([emb, "mixed", "--out", out, "--conditions", "mood,instrument"], capsys)
    assert "condition 'instrument' has no labels" in err and "conditions with labels here: genre, mood, tempo" in err
    assert "unknown condition 'key'" in _error([emb, "mixed", "--out", out, "--conditions", "key"], capsys)
    assert "applies to audio files only" in _error([emb, "mixed", "--out", out, "--hop-seconds", "1"], capsys)
    assert "--k 0 must be >= 1" in _error([emb, "mixed", "--out", out, "--k", "0"], capsys)
    # an export of another model: its embeddings are not comparable with the catalogue's
    other = str(tmp_path / "other_export")
    os.makedirs(other)
    with open(os.path.join(emb, "config.json")) as f:
        config = json.load(f)
    with open(os.path.join(other, "config.json"), "w") as f:
        json.dump({**config, "training_config_hash": "0123"}, f)
    assert "holds another model" in _error([emb, os.path.join(audio, "query.wav"), "--out", out, "--export", other],
                                           capsys)
    # a catalogue without labels (embedded from a folder): nothing to vote with
    bare = str(tmp_path / "bare")
    shutil.copytree(emb, bare, ignore=shutil.ignore_patterns("shards"))
    with open(os.path.join(bare, "tracks.csv"), newline="") as f:
        rows = [{k: r[k] for k in ("track_id", "path", "n_segments")} for r in csv.DictReader(f)]
    with open(os.path.join(bare, "tracks.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["track_id", "path", "n_segments"])
        w.writeheader()
        w.writerows(rows)
    err = _error([bare, "t00", "--out", out], capsys)
    assert "has no labels for any condition" in err and "dml embed EXPORT_DIR MANIFEST" in err
    assert not os.path.exists(out)


def test_nearest_tracks_is_exact_in_blocks():
    rng = np.random.default_rng(3)
    q, pool = rng.normal(size=(7, 5)), rng.normal(size=(50, 5))
    idx, dist = nearest_tracks(q, pool, k=4, block=8)
    full = np.linalg.norm(q[:, None] - pool[None], axis=-1)
    np.testing.assert_array_equal(idx, np.argsort(full, axis=1)[:, :4])
    np.testing.assert_allclose(dist, np.sort(full, axis=1)[:, :4])
    # ties go to the lower index; k larger than the pool gives the whole pool
    idx, dist = nearest_tracks(np.zeros((1, 2)), np.array([[1.0, 0], [0, 1.0], [-1.0, 0]]), k=5)
    assert idx.tolist() == [[0, 1, 2]] and dist.tolist() == [[1.0, 1.0, 1.0]]


def test_tempo_estimate_is_a_weighted_geometric_mean():
    bpm, spread = _tempo(np.array([60.0, 120.0]), np.array([1.0, 1.0]))
    assert bpm == pytest.approx(60 * 2 ** 0.5) and spread == pytest.approx(0.5)
    bpm, spread = _tempo(np.array([100.0, 100.0, 200.0]), np.array([3.0, 1.0, 0.0]))
    assert bpm == pytest.approx(100.0) and spread == pytest.approx(0.0)


def test_learned_masks_vote_in_the_masked_view(tmp_path):
    """Hand-written catalogue with learned masks: mood's mask reads dims 2-3 only."""
    cat_dir = str(tmp_path / "cat")
    os.makedirs(cat_dir)
    masks = {"genre": [1.0, 1.0, 0.0, 0.0], "mood": [0.0, 0.0, 1.0, 1.0]}
    config = {"embedding_dim": 4, "conditions": {"genre": [0, 4], "mood": [0, 4]}, "mask_mode": "learned",
              "condition_masks": masks, "sample_rate": SR, "segment_seconds": 1.0, "segment_samples": SR,
              "catalogue": {"hop_seconds": 1.0}}
    with open(os.path.join(cat_dir, "config.json"), "w") as f:
        json.dump(config, f)
    tracks = np.array([[1, 0, 1, 0], [1, 0, 0, 1], [0, 1, 1, 0], [0.5, 0.5, 0.5, 0.5]], np.float32)
    # the query track (q): its first segment is genre-like track a, mood-like track c; the second the reverse
    segments = np.array([[1, 0, 1, 0], [0, 1, 0, 1]], np.float32)
    np.save(os.path.join(cat_dir, "tracks.npy"), tracks)
    np.save(os.path.join(cat_dir, "segments.npy"), segments)
    with open(os.path.join(cat_dir, "tracks.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerows([["track_id", "path", "n_segments", "genre", "mood"], ["a", "", 0, "rock", "sad"],
                     ["b", "", 0, "rock", "happy"], ["c", "", 0, "jazz", "sad"], ["q", "", 2, "", ""]])
    with open(os.path.join(cat_dir, "segments.csv"), "w", newline="") as f:
        csv.writer(f).writerows([["track_id", "start_s"], ["q", "0.000"], ["q", "1.000"]])
    cat = Catalogue(cat_dir)
    t = build_timeline(cat, load_track(cat, "q"), k=1)
    assert [s["winner"] for s in t["conditions"]["genre"]["segments"]] == ["rock", "jazz"]
    assert [s["winner"] for s in t["conditions"]["mood"]["segments"]] == ["sad", "happy"]
    # distance from the mean (q's own track embedding, the last row) in the masked view
    assert t["conditions"]["mood"]["segments"][0]["distance_from_mean"] == pytest.approx(np.sqrt(0.5 ** 2 + 0.5 ** 2))
