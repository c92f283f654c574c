"""Evaluation: metrics with known answers, the baselines' outputs, and end-to-end reports."""

import argparse
import csv
import json
import os

import numpy as np
import pytest
import soundfile as sf

from collections_for_tests import tiny_waveform_model
from disentangled_ml.cli import CliError
from disentangled_ml.cli import evaluate as cli_evaluate
from disentangled_ml.config import Config
from disentangled_ml.data.eval_triplets import build_eval_triplets, write_eval_triplets
from disentangled_ml.data.labels import LabelTables
from disentangled_ml.data.manifest import Track, write_manifest
from disentangled_ml.evaluation import metrics as M
from disentangled_ml.evaluation.baselines import MFCCStats, MFCCVQ, mfcc_frames, training_crops
from disentangled_ml.evaluation.embedders import EvaluationError, SavedModelEmbedder, load_embedder
from disentangled_ml.evaluation.runner import (
    EmbedderSpec, condition_views, evaluate, evaluate_many, evaluate_run, segment_starts,
)

SR = 8000
GENRES = ["rock", "jazz", "pop"]
MOODS = ["happy", "sad"]
INSTRUMENTS = ["guitar", "piano", "drums"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def tiny_config(**overrides):
    base = {"frontend.sample_rate": SR, "frontend.segment_seconds": 1.0, "frontend.n_fft": 256,
            "frontend.hop_length": 128, "frontend.n_mels": 16, "conditions.embedding_dim": 16,
            "frontend.pitch_n_fft": 1024, "frontend.pitch_bands_per_octave": 6, "frontend.pitch_fmin": 110.0,
            "frontend.pitch_fmax": 880.0,
            "model.backbone": "plain", "model.width": 4, "data.eval_triplets_per_condition": 40}
    base.update(overrides)
    return Config().replace(**base)


def freq(i):
    return 110.0 + 20.0 * i


def write_tracks(root, n=16, seconds=3.5):
    """n WAV tracks, track i a sine at freq(i) Hz (+ noise); labels cycle, some unknown."""
    rng = np.random.default_rng(0)
    tracks = []
    for i in range(n):
        path = os.path.join(root, f"t{i:02d}.wav")
        t = np.arange(int(seconds * SR)) / SR
        y = 0.3 * np.sin(2 * np.pi * freq(i) * t) + 0.01 * rng.standard_normal(t.size)
        sf.write(path, y.astype(np.float32), SR, subtype="PCM_16")
        labels = {"genre": (GENRES[i % 3],), "mood": () if i % 7 == 6 else (MOODS[i % 2],),
                  "instrument": ("guitar", "piano") if i % 5 == 0 else (INSTRUMENTS[1 + (i // 2) % 2],)}
        tracks.append(Track(path=path, track_id=f"t{i:02d}", labels=labels, tempo=60.0 + 15.0 * (i // 2) + 3.0 * (i % 2),
                            info={"format_code": "wav:int16", "sample_rate": str(SR), "num_frames": str(t.size),
                                  "channels": "1"}))
    return tracks


class LabelEmbedder:
    """A fake model that 'knows' the labels: finds the track by its sine frequency and writes
    genre / mood / instrument one-hots and the tempo (as an angle) into their own 4-d slices.

    Every slice has unit norm (an unknown mood has its own "unknown" direction), so the
    embedding has a constant norm, as a trained model's L2-normalised output does.
    """

    def __init__(self, tracks):
        self.tracks = tracks

    def track_of(self, crop):
        spec = np.abs(np.fft.rfft(crop))
        f = np.argmax(spec) * SR / crop.size
        return int(np.argmin([abs(f - freq(i)) for i in range(len(self.tracks))]))

    def __call__(self, crops):
        out = np.zeros((len(crops), 16), np.float32)
        for b, crop in enumerate(crops):
            i = self.track_of(crop)
            t = self.tracks[i]
            for label in t.labels["genre"]:
                out[b, GENRES.index(label)] = 1
            for label in t.labels["mood"]:
                out[b, 4 + MOODS.index(label)] = 1
            if not t.labels["mood"]:
                out[b, 7] = 1
            for label in t.labels["instrument"]:
                out[b, 8 + INSTRUMENTS.index(label)] = 1 / np.sqrt(len(t.labels["instrument"]))
            theta = (t.tempo - 60.0) / 120.0 * np.pi / 2  # 5 BPM = 0.065 rad
            out[b, 12:14] = np.cos(theta), np.sin(theta)
            out[b, 15] = 1e-3 * i  # track identity, too small to reorder any label triplet
        return out


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("collection"))
    cfg = tiny_config()
    tracks = write_tracks(root)
    tables = LabelTables.from_tracks(tracks, cfg)
    train, test = list(range(0, 4)), list(range(4, 16))
    triplets = build_eval_triplets(tracks, tables, test, cfg, seed=3)
    audio = {t.track_id: sf.read(t.path, dtype="float32")[0] for t in tracks}
    return {"root": root, "cfg": cfg, "tracks": tracks, "tables": tables, "train": train, "test": test,
            "triplets": triplets, "audio": audio}


# ---------------------------------------------------------------- metrics, known answers

def test_triplet_accuracy_known_answers():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((200, 8))
    p = a + 0.01 * rng.standard_normal((200, 8))
    n = a + 5.0
    assert M.triplet_accuracy(a, p, n) == 1.0
    assert M.triplet_accuracy(a, n, p) == 0.0
    assert M.triplet_accuracy(a, a, a) == 0.0  # ties are failures
    x, y, z = (rng.standard_normal((4000, 8)) for _ in range(3))
    assert abs(M.triplet_accuracy(x, y, z) - 0.5) < 0.03
    # dims 0:4 say p is closer, dims 4:8 say n is closer (and dominate the whole vector)
    p2 = a.copy()
    p2[:, 4:] += 10.0
    n2 = a.copy()
    n2[:, :4] += 1.0
    assert M.triplet_accuracy(a, p2, n2, dims=(0, 4)) == 1.0
    assert M.triplet_accuracy(a, p2, n2, dims=(4, 8)) == 0.0
    assert M.triplet_accuracy(a, p2, n2) == 0.0
    assert M.triplet_accuracy(a, p2, n2, dims=np.arange(4)) == 1.0
    mask = np.r_[np.ones(4), np.zeros(4)]
    assert M.triplet_accuracy(a, p2, n2, dims=mask) == 1.0
    with pytest.raises(ValueError, match="does not fit"):
        M.triplet_accuracy(a, p, n, dims=(4, 12))
    lo, hi = M.wilson_interval(250, 500)
    assert lo < 0.5 < hi and 0.03 < hi - 0.5 < 0.05


def test_disentanglement_matrix_is_diagonal_for_a_disentangled_embedding():
    """Slice s encodes only condition s: condition s's triplets are solved in slice s only."""
    rng = np.random.default_rng(1)
    names = ["genre", "mood", "tempo"]
    slices = {c: (4 * i, 4 * i + 4) for i, c in enumerate(names)}
    trip = {}
    for s, cond in enumerate(names + ["track"]):
        a, p, n = (rng.standard_normal((3000, 12)) for _ in range(3))
        informative = range(12) if cond == "track" else range(4 * s, 4 * s + 4)
        for d in informative:
            p[:, d] = a[:, d] + 0.05 * rng.standard_normal(3000)
        trip[cond] = (a, p, n)
    m = M.disentanglement_matrix(trip, slices)
    assert m["rows"] == names + ["track"] and m["columns"] == names + ["whole"]
    acc = m["accuracy"]
    assert acc.shape == (4, 4)
    for s in range(3):
        assert acc[s, s] > 0.95
        for t in range(3):
            if t != s:
                assert abs(acc[s, t] - 0.5) < 0.05, (s, t, acc)
        assert 0.6 < acc[s, 3] < acc[s, s]  # whole: diluted by the other slices' noise
    assert (acc[3] > 0.95).all()  # track identity lives everywhere


def test_class_pair_accuracy_hand_computed():
    vocab = ["a", "b", "c"]
    eye = np.eye(3, dtype=bool)
    anchors = np.stack([eye[0], eye[0], eye[0], eye[1], eye[0] | eye[1]])
    negatives = np.stack([eye[1], eye[1], eye[2], eye[0], eye[2]])
    correct = np.array([True, False, True, True, False])
    r = M.class_pair_accuracy(correct, anchors, negatives, vocab)
    assert r["classes"] == vocab and r["unpaired"] == 1  # the last anchor carries two classes
    assert r["n"].tolist() == [[0, 2, 1], [1, 0, 0], [0, 0, 0]]
    acc = r["accuracy"]
    assert (acc[0, 1], acc[0, 2], acc[1, 0]) == (0.5, 1.0, 1.0) and np.isnan(acc[2]).all()
    with pytest.raises(ValueError, match="class matrices"):
        M.class_pair_accuracy(correct, anchors[:, :2], negatives, vocab)


def test_retrieval_metrics_hand_computed():
    emb = np.array([[0.0], [1.0], [2.0], [10.0]])
    label = ["A", "B", "A", "B"]
    rel = np.array([[li == lj for lj in label] for li in label])
    r = M.retrieval_metrics(emb, rel, k=2)
    # ranks by query (ties in index order): 0 -> [1,2,3]; 1 -> [0,2,3]; 2 -> [1,0,3]; 3 -> [2,1,0]
    assert r["precision_at_k"] == pytest.approx((0.5 + 0.0 + 0.5 + 0.5) / 4)
    assert r["map"] == pytest.approx((1 / 2 + 1 / 3 + 1 / 2 + 1 / 2) / 4)
    assert r["queries"] == 4 and r["skipped_queries"] == 0 and r["k"] == 2
    # a query with no relevant track is skipped and counted
    emb5 = np.vstack([emb, [[20.0]]])
    rel5 = np.zeros((5, 5), bool)
    rel5[:4, :4] = rel
    r5 = M.retrieval_metrics(emb5, rel5, k=2)
    assert r5["skipped_queries"] == 1 and r5["queries"] == 4
    # perfect clusters: everything 1; k larger than the candidates is clipped
    good = np.array([[0.0], [0.1], [5.0], [5.1]])
    rel_g = np.array([[i // 2 == j // 2 and i != j for j in range(4)] for i in range(4)])
    rg = M.retrieval_metrics(good, rel_g, k=10)
    assert rg["k"] == 3 and rg["map"] == 1.0 and rg["precision_at_k"] == pytest.approx(1 / 3)
    assert M.retrieval_metrics(good, rel_g, k=1)["precision_at_k"] == 1.0
    # a slice view: dimension 1 carries the clusters, dimension 0 is noise
    emb2 = np.c_[[100.0, -100.0, 50.0, -50.0], good[:, 0]]
    assert M.retrieval_metrics(emb2, rel_g, k=1, dims=(1, 2))["map"] == 1.0
    assert M.retrieval_metrics(emb2, rel_g, k=1)["map"] < 1.0


def test_relevance_matrix_follows_the_label_rules(collection):
    tracks, tables, cfg = collection["tracks"], collection["tables"], collection["cfg"]
    rows = list(range(8))
    rel, known = M.relevance_matrix(tables, rows, "genre", cfg)
    assert known.all() and not rel.diagonal().any()
    assert rel[0, 3] and not rel[0, 1]  # rock / rock, rock / jazz
    rel, known = M.relevance_matrix(tables, list(range(14)), "mood", cfg)
    assert not known[6] and not rel[6].any() and not rel[:, 6].any()  # unknown mood
    rel, _ = M.relevance_matrix(tables, rows, "instrument", cfg)
    assert tracks[0].labels["instrument"] == ("guitar", "piano") and tracks[1].labels["instrument"] == ("piano",)
    assert rel[0, 1] and not rel[0, 2] and rel[2, 3]  # one shared label is enough; drums share nothing with 0
    rel, _ = M.relevance_matrix(tables, rows, "tempo", cfg)
    assert rel[0, 1] and not rel[0, 2]  # 60 vs 63 BPM (<= 5), 60 vs 75


# ---------------------------------------------------------------- baselines

def test_mfcc_baselines_shapes_and_normalisation(collection):
    cfg, audio, tracks = collection["cfg"], collection["audio"], collection["tracks"]
    fit = training_crops(audio, [t.track_id for t in tracks[:4]], cfg, crops_per_track=3, seed=0)
    assert fit.shape == (12, cfg.frontend.segment_samples) and fit.dtype == np.float32
    frames = mfcc_frames(fit[:2], cfg.frontend, 13, deltas=True)
    assert frames.shape == (2, cfg.frontend.num_frames, 39)
    vq = MFCCVQ(cfg.frontend, codebook_size=16, seed=0).fit(fit)
    test = np.stack([audio[t.track_id][:SR] for t in tracks[4:9]])
    h = vq(test)
    assert h.shape == (5, 16) and h.dtype == np.float32
    assert (h >= 0).all() and np.allclose(h.sum(axis=1), 1.0)
    np.testing.assert_array_equal(h, MFCCVQ(cfg.frontend, codebook_size=16, seed=0).fit(fit)(test))  # seeded
    stats = MFCCStats(cfg.frontend).fit(fit)
    s = stats(test)
    assert s.shape == (5, 40) and np.isfinite(s).all()
    assert np.allclose(stats(fit).mean(axis=0), 0.0, atol=1e-4)  # z-scored with the training statistics
    with pytest.raises(RuntimeError, match="fit"):
        MFCCVQ(cfg.frontend)(test)
    with pytest.raises(ValueError, match="codewords"):
        MFCCVQ(cfg.frontend, codebook_size=10_000).fit(fit[:1])


def test_segment_starts_spread_without_overlap():
    np.testing.assert_array_equal(segment_starts(100, 30, 8), [0, 30, 60])
    np.testing.assert_array_equal(segment_starts(10, 30, 8), [0])  # shorter than a segment: one, padded
    s = segment_starts(300, 10, 4)
    assert len(s) == 4 and s[0] == 0 and s[-1] == 290 and (np.diff(s) >= 10).all()


# ---------------------------------------------------------------- evaluate(), end to end

def test_evaluate_with_a_label_embedder(collection, tmp_path):
    from disentangled_ml.evaluation.report import format_table, write_report

    c = collection
    cfg, tracks = c["cfg"], c["tracks"]
    fake = LabelEmbedder(tracks)
    rng = np.random.default_rng(0)
    specs = [EmbedderSpec("model", fake, views=dict(cfg.conditions.slices)),
             EmbedderSpec("noise", lambda x: rng.standard_normal((len(x), 8)), label="noise")]
    res = evaluate_many(specs, c["triplets"], c["audio"], tracks, cfg, c["test"], segments_per_track=2, k=3,
                        batch_size=16)
    assert res["conditions"] == ["genre", "mood", "instrument", "tempo", "track"]
    assert all(n == 40 for n in res["num_triplets"].values())
    assert res["retrieval_tracks"] == 12
    model = res["embedders"]["model"]
    for cond in res["conditions"]:
        assert model["triplet_accuracy"][cond]["slice"] == 1.0, cond
    assert model["triplet_accuracy"]["track"]["whole"] == 1.0
    acc = np.array(model["disentanglement"]["accuracy"])
    assert acc.shape == (5, 5)
    assert np.allclose(np.diag(acc[:4, :4]), 1.0)
    assert (acc[:4, :4][~np.eye(4, dtype=bool)] < 0.9).all()  # other slices don't solve the condition
    for cond in ("genre", "mood", "instrument", "tempo"):
        r = model["retrieval"][cond]
        assert r["map"] > 0.99 and r["queries"] == 12 - 2 * (cond == "mood"), (cond, r)  # t06, t13: mood unknown
    # tempo: each track has one partner within 5 BPM, so P@3 is at most 1/3
    assert model["retrieval"]["tempo"]["precision_at_k"] == pytest.approx(1 / 3)
    assert model["retrieval"]["genre"]["precision_at_k"] == 1.0
    noise = res["embedders"]["noise"]
    assert noise["disentanglement"] is None and not noise["sliced"]
    assert all(noise["triplet_accuracy"][c_]["slice"] is None for c_ in res["conditions"])

    # the one-embedder entry point gives the same numbers, with the config's slices
    one = evaluate(fake, c["triplets"], c["audio"], tracks, cfg, c["test"], segments_per_track=2, k=3)
    assert one["embedders"]["model"]["triplet_accuracy"] == model["triplet_accuracy"]

    paths = write_report(res, str(tmp_path / "eval"))
    data = json.load(open(paths["metrics"]))
    for cond in res["conditions"]:
        for name in ("model", "noise"):
            assert 0.0 <= data["embedders"][name]["triplet_accuracy"][cond]["whole"] <= 1.0
    # class-pair breakdown: the label embedder orders every single-class triplet correctly
    for cond in ("genre", "mood", "instrument"):
        cp = model["class_pairs"][cond]
        n = np.asarray(cp["n"])
        assert n.sum() + cp["unpaired"] == res["num_triplets"][cond] and n.sum() > 0, cond
        assert np.all(np.asarray(cp["accuracy"])[n > 0] == 1.0) and np.isnan(np.asarray(cp["accuracy"])[n == 0]).all()
        assert np.trace(n) == 0  # an anchor and its negative never share the class
    assert model["class_pairs"]["instrument"]["unpaired"] > 0  # t00, t05, t10, t15 carry two instruments
    assert set(model["class_pairs"]) == {"genre", "mood", "instrument"}  # not tempo, not track
    assert data["embedders"]["model"]["class_pairs"]["genre"]["classes"] == list(c["tables"].vocab["genre"])
    for key in ("accuracy", "disentanglement", "class_pairs"):
        with open(paths[key], "rb") as f:
            assert f.read(8) == PNG_MAGIC
        assert os.path.getsize(paths[key]) > 5000
    table = format_table(res)
    assert "model (slice)" in table and "noise" in table and "precision@3 / mAP" in table

    # per-triplet outcomes and the paired comparisons: the model (right on every triplet in its slices) against
    # its whole vector and the noise, on the same triplets
    per = res["per_triplet"]["random"]
    assert len(per["triplets"]) == sum(res["num_triplets"].values())
    assert set(per["correct"]) == {"model.slice", "model.whole", "noise.whole"} and per["correct"]["model.slice"].all()
    comp = res["comparisons"]["conditions"]
    assert list(comp) == res["conditions"]
    assert [(v["embedder"], v["view"]) for v in comp["genre"]["versus"]] == [("model", "whole"), ("noise", "whole")]
    assert comp["track"]["reference"]["view"] == "whole"  # track triplets live in the whole embedding
    assert [v["embedder"] for v in comp["track"]["versus"]] == ["noise"]
    conds = np.array([t["condition"] for t in per["triplets"]])
    for cond in ("genre", "mood", "instrument", "tempo"):
        noise_v = comp[cond]["versus"][1]
        noise_ok = per["correct"]["noise.whole"][conds == cond]
        assert noise_v["b_only"] == 0 and noise_v["a_only"] == int((~noise_ok).sum()) > 10, cond
        assert noise_v["significant"] and noise_v["p_value"] < 1e-3
        assert noise_v["accuracy_b"] == pytest.approx(model["triplet_accuracy"][cond]["slice"] - noise_v["difference"])
    assert "noise.whole" in open(paths["triplet_correct"]).readline()
    assert "comparisons" in data and "per_triplet" not in data
    genre_line = next(line for line in table.splitlines() if line.startswith("genre"))
    assert genre_line.count("*") >= 1 and "[" in genre_line and "exact McNemar" in table


def test_condition_views_per_mask_mode():
    cfg = tiny_config()
    views, cols = condition_views(cfg)
    assert views == cols == {"genre": (0, 4), "mood": (4, 8), "instrument": (8, 12), "tempo": (12, 16)}
    views, cols = condition_views(cfg.replace(**{"model.mask_mode": "none"}))
    assert all(v is None for v in views.values()) and cols["tempo"] == (12, 16)
    with pytest.raises(EvaluationError, match="masks.npy"):
        condition_views(cfg.replace(**{"model.mask_mode": "learned"}))
    m = np.random.default_rng(0).random((5, 16)).astype(np.float32)
    views, _ = condition_views(cfg.replace(**{"model.mask_mode": "learned"}), m)
    np.testing.assert_array_equal(views["mood"], m[1])


@pytest.fixture(scope="module")
def run_dir(collection, tmp_path_factory):
    c = collection
    cfg, tracks = c["cfg"], c["tracks"]
    prepared = tmp_path_factory.mktemp("prepared")
    write_manifest(tracks, str(prepared / "manifest.csv"))
    run = tmp_path_factory.mktemp("run")
    cfg.to_json(str(run / "config.json"))
    with open(run / "splits.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["track_id", "split"])
        for i, t in enumerate(tracks):
            w.writerow([t.track_id, "train" if i in c["train"] else "test"])
    write_eval_triplets(c["triplets"], str(run / "test_triplets.csv"))
    model = tiny_waveform_model(cfg)
    model.save(str(run / "embedding.keras"))
    export = tmp_path_factory.mktemp("export")
    model.export(str(export / "saved_model"), verbose=False)
    with open(export / "config.json", "w") as f:
        json.dump({"sample_rate": SR, "segment_seconds": 1.0, "embedding_dim": 16,
                   "conditions": {k: list(v) for k, v in cfg.conditions.slices.items()}}, f)
    with open(run / "run.json", "w") as f:
        json.dump({"prepared_dir": str(prepared)}, f)
    return {"run": str(run), "prepared": str(prepared), "export": str(export), "model": model}


def test_evaluate_run_with_baselines_writes_report(run_dir):
    metrics, paths = evaluate_run(run_dir["run"], run_dir["prepared"], vq_codebook=8, segments_per_track=2,
                                  batch_size=32, progress=False)
    assert paths["metrics"] == os.path.join(run_dir["run"], "eval_test", "metrics.json")
    data = json.load(open(paths["metrics"]))
    assert list(data["embedders"]) == ["model", "mfcc_vq", "mfcc_stats", "untrained"]
    assert data["baselines"]["fit_tracks"] == 4 and data["baselines"]["vq_codebook"] == 8
    assert data["embedders"]["mfcc_vq"]["dim"] == 8 and data["embedders"]["mfcc_stats"]["dim"] == 40
    assert data["embedders"]["untrained"]["dim"] == 16
    for name, emb in data["embedders"].items():
        for cond in ("genre", "mood", "instrument", "tempo", "track"):
            e = emb["triplet_accuracy"][cond]
            assert 0.0 <= e["whole"] <= 1.0 and e["n"] == 40, (name, cond)
            if name == "model":
                assert 0.0 <= e["slice"] <= 1.0
        for cond, r in emb["retrieval"].items():
            assert 0.0 <= r["precision_at_k"] <= 1.0 and 0.0 <= r["map"] <= 1.0, (name, cond)
    # each 1 s crop of a sine is the same sound: track triplets are easy for every MFCC baseline
    assert data["embedders"]["mfcc_stats"]["triplet_accuracy"]["track"]["whole"] > 0.9
    cp = data["embedders"]["model"]["class_pairs"]
    assert set(cp) == {"genre", "mood", "instrument"} and all(sum(map(sum, v["n"])) > 0 for v in cp.values())
    for key in ("accuracy", "disentanglement", "class_pairs"):
        with open(paths[key], "rb") as f:
            assert f.read(8) == PNG_MAGIC


def test_export_directory_scores_like_the_keras_model(run_dir):
    emb, kind, export_cfg = load_embedder(run_dir["export"])
    assert kind == "saved_model" and isinstance(emb, SavedModelEmbedder) and emb.input_name == "audio"
    assert export_cfg["embedding_dim"] == 16
    x = np.random.default_rng(0).uniform(-1, 1, (3, SR)).astype(np.float32)
    np.testing.assert_allclose(emb(x), run_dir["model"].predict_on_batch(x)["embedding"], atol=1e-5)
    a, _ = evaluate_run(run_dir["run"], run_dir["prepared"], baselines=False, segments_per_track=2,
                        progress=False, out_dir=os.path.join(run_dir["run"], "eval_keras"))
    b, paths = evaluate_run(run_dir["run"], run_dir["prepared"], baselines=False, segments_per_track=2,
                            progress=False, model_path=run_dir["export"])
    assert os.path.dirname(paths["metrics"]).endswith("eval_test_" + os.path.basename(run_dir["export"]))
    assert b["model_kind"] == "saved_model"
    for cond, e in a["embedders"]["model"]["triplet_accuracy"].items():
        assert b["embedders"]["model"]["triplet_accuracy"][cond]["slice"] == pytest.approx(e["slice"], abs=0.03)


def _cli_args(**kw):
    parser = argparse.ArgumentParser()
    cli_evaluate.add_arguments(parser)
    argv = [kw.pop("run_dir")] + [x for k, v in kw.items() for x in ([f"--{k}"] if v is True else [f"--{k}", str(v)])]
    return parser.parse_args(argv)


def test_cli_reads_prepared_dir_from_run_json(run_dir, tmp_path, capsys):
    args = _cli_args(run_dir=run_dir["run"], **{"no-baselines": True, "segments-per-track": 1, "no-progress": True,
                                                "out": str(tmp_path / "cli")})
    assert cli_evaluate.run(args) == 0
    out = capsys.readouterr().out
    assert "triplet accuracy (test split)" in out and "model (slice)" in out
    assert os.path.isfile(tmp_path / "cli" / "metrics.json")
    # no run.json and no --prepared: a clear error
    empty = tmp_path / "norun"
    empty.mkdir()
    with pytest.raises(CliError, match="--prepared"):
        cli_evaluate.run(_cli_args(run_dir=str(empty)))
    with pytest.raises(CliError, match="training run directory"):
        cli_evaluate.run(_cli_args(run_dir=str(empty), prepared=run_dir["prepared"]))
    with pytest.raises(CliError, match="--k 0"):
        cli_evaluate.run(_cli_args(run_dir=run_dir["run"], k=0))


def test_training_checkpoints_and_mel_models_are_evaluated_through_the_frontend(collection, tmp_path):
    """`dml evaluate --model RUN_DIR/best.keras` (a TripletModel, mel input) must work like embedding.keras."""
    from disentangled_ml.models import build_triplet_model
    from disentangled_ml.models.embedding import add_frontend

    cfg = collection["cfg"].replace(**{"model.width": 4, "model.backbone": "plain"})
    triplet_model = build_triplet_model(cfg)
    ckpt = str(tmp_path / "best.keras")
    triplet_model.save(ckpt)
    x = np.random.default_rng(1).uniform(-1, 1, (2, cfg.frontend.segment_samples)).astype(np.float32)
    expected = add_frontend(cfg, triplet_model.embedding_model).predict_on_batch(x)["embedding"]
    emb, kind, _ = load_embedder(ckpt)
    assert kind == "keras"
    np.testing.assert_allclose(emb(x), expected, atol=1e-5)
    mel_model = str(tmp_path / "mel.keras")
    triplet_model.embedding_model.save(mel_model)
    with pytest.raises(EvaluationError, match="log-mel patches"):
        load_embedder(mel_model)
    emb, _, _ = load_embedder(mel_model, config=cfg)
    np.testing.assert_allclose(emb(x), expected, atol=1e-5)
