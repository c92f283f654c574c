"""`dml embed` (catalogue from an export, skips, resume) and `dml similar` (per-condition, weighted, hnswlib)."""

import csv
import json
import os

import numpy as np
import pytest
import soundfile as sf

from disentangled_ml.catalogue_search import Catalogue, SearchError, embed_collection, parse_weights
from disentangled_ml.cli import main

SR = 8000


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    """A float32-only export of an untrained tiny model (1 s segments at 8 kHz)."""
    from disentangled_ml.export import export_run, tflite
    from test_export import make_run

    root = str(tmp_path_factory.mktemp("search_export"))
    run, _ = make_run(root, with_audio=False)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tflite, "VARIANTS", tuple(v for v in tflite.VARIANTS if v.name == "float32"))
        export_run(run, os.path.join(root, "export"), int8_full=False, parity_segments=4)
    return os.path.join(root, "export")


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory):
    """Five decodable tracks (one in a subfolder), one corrupt file, one shorter than a segment."""
    root = tmp_path_factory.mktemp("audio")
    rng = np.random.default_rng(0)
    t = np.arange(int(3.2 * SR)) / SR
    for i, (name, seconds) in enumerate([("a.wav", 3.2), ("b.flac", 2.0), ("c.wav", 1.0), ("d.ogg", 2.6),
                                         ("sub/e.wav", 3.0)]):
        os.makedirs(os.path.dirname(str(root / name)), exist_ok=True)
        n = int(seconds * SR)
        y = 0.3 * np.sin(2 * np.pi * (150 + 90 * i) * t[:n]) + 0.02 * rng.standard_normal(n)
        sf.write(str(root / name), y.astype(np.float32), SR)
    (root / "broken.wav").write_bytes(b"RIFF\x00\x00not really a wav file")
    sf.write(str(root / "short.wav"), np.full(SR // 2, 0.1, np.float32), SR)
    (root / "notes.txt").write_text("not audio")
    return str(root)


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow  # its export_dir fixture converts a model (pytest.ini)
def test_embed_folder_writes_catalogue_and_reports_skips(export_dir, audio_dir, tmp_path, capsys):
    from disentangled_ml.audio_io import load_audio
    from disentangled_ml.evaluation.embedders import SavedModelEmbedder

    out = str(tmp_path / "emb")
    assert main(["embed", export_dir, audio_dir, "--out", out, "--no-progress", "--hop-seconds", "0.5"]) == 0
    printed = capsys.readouterr().out
    assert "5 tracks" in printed and "2 file(s) skipped" in printed
    rows = _rows(os.path.join(out, "tracks.csv"))
    assert [r["track_id"] for r in rows] == ["a.wav", "b.flac", "c.wav", "d.ogg", "sub/e.wav"]
    # 1 s segments every 0.5 s: 1 + floor((duration - 1) / 0.5).
    assert [int(r["n_segments"]) for r in rows] == [5, 3, 1, 4, 5]
    skipped = {r["track_id"]: r["reason"] for r in _rows(os.path.join(out, "skipped.csv"))}
    assert set(skipped) == {"broken.wav", "short.wav"}
    assert "broken.wav: not a WAV file, nor any audio format the decoders know" in skipped["broken.wav"]
    assert "shorter than one segment" in skipped["short.wav"]
    tracks, segments = np.load(os.path.join(out, "tracks.npy")), np.load(os.path.join(out, "segments.npy"))
    seg_rows = _rows(os.path.join(out, "segments.csv"))
    assert tracks.shape == (5, 256) and tracks.dtype == np.float32 and segments.shape == (18, 256)
    assert len(seg_rows) == 18 and [r["start_s"] for r in seg_rows[:5]] == ["0.000", "0.500", "1.000", "1.500", "2.000"]
    np.testing.assert_allclose(np.linalg.norm(tracks, axis=1), 1.0, atol=1e-5)
    # Segment embeddings are the export's output for those crops; the track is their re-normalised mean.
    y = load_audio(os.path.join(audio_dir, "a.wav"), SR)
    crops = np.stack([y[s:s + SR] for s in range(0, 4 * SR // 2 + 1, SR // 2)])
    direct = SavedModelEmbedder(os.path.join(export_dir, "saved_model"))(crops)
    np.testing.assert_allclose(segments[:5], direct, atol=1e-5)
    # ... normalised as the model normalises a segment: each of the 4 condition slices to norm 1/2
    assert json.load(open(os.path.join(export_dir, "config.json")))["normalisation_groups"] == 4
    mean = direct.mean(axis=0).reshape(4, 64)
    np.testing.assert_allclose(tracks[0], (mean / np.linalg.norm(mean, axis=1, keepdims=True) / 2).reshape(-1),
                               atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(segments.reshape(18, 4, 64), axis=2), 0.5, atol=1e-5)
    config = json.load(open(os.path.join(out, "config.json")))
    assert config["catalogue"]["export_dir"] == os.path.abspath(export_dir)
    assert config["catalogue"]["hop_seconds"] == 0.5 and config["embedding_dim"] == 256

    # The same collection through model.tflite (LiteRT) gives the same catalogue.
    out_tfl = str(tmp_path / "emb_tflite")
    assert main(["embed", export_dir, audio_dir, "--out", out_tfl, "--no-progress", "--hop-seconds", "0.5",
                 "--tflite"]) == 0
    np.testing.assert_allclose(np.load(os.path.join(out_tfl, "tracks.npy")), tracks, atol=1e-4)

    # A different hop into the same folder is refused rather than mixed.
    with pytest.raises(SearchError, match="hop_seconds"):
        embed_collection(export_dir, audio_dir, out, hop_seconds=1.0)

    # An audio file as the query is embedded with the export named in config.json.
    cat = Catalogue(out)
    vec, index = cat.query_vector(os.path.join(audio_dir, "a.wav"))
    assert index is None
    np.testing.assert_allclose(vec, tracks[0], atol=1e-5)


@pytest.mark.slow  # its export_dir fixture converts a model (pytest.ini)
def test_embed_resumes_after_interruption(export_dir, audio_dir, tmp_path):
    from disentangled_ml.evaluation.embedders import SavedModelEmbedder

    model = SavedModelEmbedder(os.path.join(export_dir, "saved_model"))
    calls = []

    def interrupted_after_three_files(x):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(len(x))
        return model(x)

    out = str(tmp_path / "emb")
    with pytest.raises(KeyboardInterrupt):
        embed_collection(export_dir, audio_dir, out, shard_size=2, progress=False, batch_size=64,
                         embedder=interrupted_after_three_files)
    # Shards 0 (a, b) and 1 (broken, c) were saved; the third file embedded (c) sits in shard 1.
    done = sorted(n for n in os.listdir(os.path.join(out, "shards")) if n.endswith(".json"))
    assert done == ["part_00000.json", "part_00001.json"]
    assert not os.path.exists(os.path.join(out, "tracks.npy"))

    seen = []

    def counting(x):
        seen.append(len(x))
        return model(x)

    summary = embed_collection(export_dir, audio_dir, out, shard_size=2, progress=False, batch_size=64,
                               embedder=counting)
    # Only d.ogg, short.wav and sub/e.wav were left; short.wav is skipped before embedding.
    assert summary["embedded_this_run"] == 3 and len(seen) == 2
    assert summary["tracks"] == 5 and summary["skipped"] == 2
    full = str(tmp_path / "full")
    embed_collection(export_dir, audio_dir, full, progress=False, embedder=model)
    np.testing.assert_allclose(np.load(os.path.join(out, "tracks.npy")), np.load(os.path.join(full, "tracks.npy")),
                               atol=1e-6)
    assert _rows(os.path.join(out, "tracks.csv")) == _rows(os.path.join(full, "tracks.csv"))
    # Nothing left to do: a rerun embeds nothing and keeps the result.
    again = embed_collection(export_dir, audio_dir, out, progress=False, embedder=counting)
    assert again["embedded_this_run"] == 0 and again["tracks"] == 5


# --------------------------------------------------------------------------- similar, hand-made catalogues


def write_catalogue(path, embeddings, conditions, mask_mode="fixed", masks=None, labels=None):
    os.makedirs(path, exist_ok=True)
    config = {"embedding_dim": int(embeddings.shape[1]), "conditions": conditions, "mask_mode": mask_mode,
              "sample_rate": SR, "segment_seconds": 1.0, "segment_samples": SR}
    if masks is not None:
        config["condition_masks"] = {n: [float(v) for v in m] for n, m in masks.items()}
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)
    np.save(os.path.join(path, "tracks.npy"), embeddings.astype(np.float32))
    cols = ["track_id", "path", "n_segments"] + (list(labels[0]) if labels else [])
    with open(os.path.join(path, "tracks.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for i in range(len(embeddings)):
            w.writerow({"track_id": f"t{i}", "path": f"/x/t{i}.wav", "n_segments": 1, **(labels[i] if labels else {})})
    return path


@pytest.fixture
def small_catalogue(tmp_path):
    # 4-d embedding: genre = dims 0-1, mood = dims 2-3. Track t1 is t0's genre twin,
    # t2 its mood twin, t3 is far in both.
    emb = np.array([[1.0, 0.0, 0.0, 1.0],
                    [1.0, 0.1, 1.0, 0.0],
                    [0.0, 1.0, 0.0, 0.8],
                    [-1.0, 0.0, -1.0, 0.0]])
    labels = [{"genre": g, "mood": m} for g, m in [("rock", "sad"), ("rock", "happy"), ("jazz", "sad"), ("pop", "angry")]]
    return write_catalogue(str(tmp_path / "cat"), emb, {"genre": [0, 2], "mood": [2, 4]}, labels=labels), emb


def test_similar_by_condition_uses_that_slice(small_catalogue):
    path, emb = small_catalogue
    cat = Catalogue(path)
    vec, idx = cat.query_vector("t0")
    genre = cat.search(vec, condition="genre", k=3, exclude=idx)
    mood = cat.search(vec, condition="mood", k=3, exclude=idx)
    assert [cat.rows[i]["track_id"] for i, _ in genre][0] == "t1"
    assert [cat.rows[i]["track_id"] for i, _ in mood][0] == "t2"
    assert genre[0][1] == pytest.approx(0.1) and mood[0][1] == pytest.approx(0.2)
    whole = cat.search(vec, k=3, exclude=idx)
    assert [i for i, _ in whole] == list(np.argsort([np.linalg.norm(emb[0] - emb[j]) for j in (1, 2, 3)]) + 1)
    # Weighted: sqrt(w_g * d_g^2 + w_m * d_m^2), checked against the formula.
    res = cat.search(vec, weights={"genre": 0.25, "mood": 1.0}, k=3, exclude=idx)
    want = sorted((np.sqrt(0.25 * np.sum((emb[0, :2] - emb[j, :2]) ** 2) + np.sum((emb[0, 2:] - emb[j, 2:]) ** 2)), j)
                  for j in (1, 2, 3))
    assert [i for i, _ in res] == [j for _, j in want]
    np.testing.assert_allclose([d for _, d in res], [d for d, _ in want], rtol=1e-6)


def test_similar_cli_table_json_and_errors(small_catalogue, capsys):
    path, _ = small_catalogue
    assert main(["similar", path, "t0", "--condition", "mood", "--k", "2"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["rank", "track_id", "distance", "genre", "mood"]
    assert table[1].split()[:2] == ["1", "t2"] and table[1].split()[-2:] == ["jazz", "sad"]
    assert main(["similar", path, "t0", "--weights", "genre=1,mood=0", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["weights"] == {"genre": 1.0, "mood": 0.0}
    assert [r["track_id"] for r in out["results"]] == ["t1", "t2", "t3"]
    assert out["results"][0]["genre"] == "rock"

    with pytest.raises(SystemExit) as e:
        main(["similar", path, "t0", "--condition", "tempo"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "unknown condition 'tempo'" in err and "genre, mood, whole" in err
    with pytest.raises(SystemExit):
        main(["similar", path, "no-such-track", "--condition", "genre"])
    err = capsys.readouterr().err
    assert "'no-such-track' is neither a track_id" in err and "'t0'" in err
    with pytest.raises(SystemExit):
        main(["similar", path, "t0", "--weights", "colour=1"])
    assert "unknown condition 'colour'" in capsys.readouterr().err
    with pytest.raises(SearchError, match="NAME=NUMBER"):
        parse_weights("genre:1")
    with pytest.raises(SearchError, match="at least one weight"):
        Catalogue(path).search(np.zeros(4), weights={"genre": 0.0})


def test_hnswlib_path_matches_exact_search(tmp_path):
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((400, 16)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    conds = {"genre": [0, 4], "mood": [4, 8], "instrument": [8, 12], "tempo": [12, 16]}
    path = write_catalogue(str(tmp_path / "big"), emb, conds)
    exact, approx = Catalogue(path), Catalogue(path, exact_below=100)
    for q in (0, 17, 399):
        vec, idx = exact.query_vector(f"t{q}")
        for kwargs in ({"condition": "mood"}, {"condition": None}, {"weights": {"genre": 0.5, "tempo": 0.5}}):
            want = exact.search(vec, k=10, exclude=idx, **kwargs)
            got = approx.search(vec, k=10, exclude=idx, **kwargs)
            assert [i for i, _ in got] == [i for i, _ in want], (q, kwargs)
            np.testing.assert_allclose([d for _, d in got], [d for _, d in want], rtol=1e-5)
    # One cached index per sub-space used; a new Catalogue loads them instead of rebuilding.
    assert {n for n in os.listdir(path) if n.endswith(".bin")} == \
        {"index_mood.bin", "index_whole.bin", "index_genre.bin", "index_tempo.bin"}
    stamp = os.path.getmtime(os.path.join(path, "index_mood.bin"))
    again = Catalogue(path, exact_below=100)
    vec, idx = again.query_vector("t5")
    assert [i for i, _ in again.search(vec, condition="mood", k=5, exclude=idx)] == \
        [i for i, _ in exact.search(vec, condition="mood", k=5, exclude=idx)]
    assert os.path.getmtime(os.path.join(path, "index_mood.bin")) == stamp


def test_learned_masks_weight_the_whole_vector(tmp_path):
    emb = np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 1.0], [0.0, 0.2, 0.0]])
    masks = {"genre": np.array([0.0, 0.0, 1.0]), "mood": np.array([1.0, 1.0, 0.0])}
    path = write_catalogue(str(tmp_path / "learned"), emb, {"genre": [0, 3], "mood": [0, 3]}, "learned", masks)
    cat = Catalogue(path)
    vec, idx = cat.query_vector("t0")
    # genre only sees dim 2 (t2 is identical there); mood sees dims 0-1 (t1 is identical there).
    assert cat.search(vec, condition="genre", k=1, exclude=idx) == [(2, 0.0)]
    assert cat.search(vec, condition="mood", k=1, exclude=idx) == [(1, 0.0)]
