"""Confounded evaluation triplets (issue 17, item 1): the builder's choices on a hand-made label
table, conditions without any valid triplet, determinism, the confoundedness statistics, and
their place in ``evaluate_many`` / ``evaluate_run`` and the report."""

import csv
import json
import os
import re

import numpy as np
import pytest
import soundfile as sf

from collections_for_tests import tiny_config, tiny_waveform_model
from disentangled_ml.data.confounded_triplets import (
    CONFOUNDED_COLUMNS, build_confounded_triplets, confoundedness, eval_seed, pair_relations,
)
from disentangled_ml.data.labels import LabelTables
from disentangled_ml.data.manifest import Track

SR = 8000
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CONDITIONS = ["genre", "mood", "instrument", "tempo"]

#: id, genre, mood, instrument, tempo (None = unknown). With the ±5 / >10 BPM rule a0, a1 and a3
#: are one tempo, a2 and a5 another, a4 a third; a7 (108 BPM) is in the gap of a0, a1 and a3.
TABLE = [
    ("a0", "rock", "happy", "guitar", 100.0),
    ("a1", "rock", "happy", "guitar", 102.0),
    ("a2", "jazz", "happy", "piano", 140.0),
    ("a3", "rock", "sad", "guitar", 101.0),
    ("a4", "pop", "sad", "drums", 60.0),
    ("a5", "jazz", "sad", "piano", 141.0),
    ("a6", None, "happy", None, None),
    ("a7", "rock", None, "guitar", 108.0),
]

#: {anchor: (allowed positives, allowed negatives)}, worked out by hand from TABLE.
#: mood (other labels: genre, instrument, tempo). a0 and a1's twins share everything, so the
#: positive is a2 (shares nothing) and the negative a3 (shares all three). a4's negative is a6:
#: no known negative shares anything, and a6, whose other labels are unknown, differs in none.
MOOD = {
    "a0": ({"a2"}, {"a3"}), "a1": ({"a2"}, {"a3"}), "a2": ({"a0", "a1"}, {"a5"}),
    "a3": ({"a4", "a5"}, {"a0", "a1"}), "a4": ({"a3", "a5"}, {"a6"}), "a5": ({"a3", "a4"}, {"a2"}),
    "a6": ({"a0", "a1", "a2"}, {"a3", "a4", "a5"}),
}
#: tempo (other labels: genre, mood, instrument). a0's positives: a1 shares three, a3 two (not the
#: mood) -> a3; negatives: a2 shares the mood, a4 and a5 nothing -> a2. a4 (no tempo within 5 BPM),
#: a6 (unknown) and a7 (only gap tempi nearby) can anchor nothing.
TEMPO = {
    "a0": ({"a3"}, {"a2"}), "a1": ({"a3"}, {"a2"}), "a2": ({"a5"}, {"a0", "a1"}),
    "a3": ({"a0", "a1"}, {"a4", "a5"}), "a5": ({"a2"}, {"a3", "a4"}),
}


def hand_tracks(table=TABLE, seconds=3.0):
    tracks = []
    for tid, genre, mood, instrument, tempo in table:
        labels = {"genre": (genre,) if genre else (), "mood": (mood,) if mood else (),
                  "instrument": (instrument,) if instrument else ()}
        tracks.append(Track(path=f"/nonexistent/{tid}.wav", track_id=tid, labels=labels, tempo=tempo,
                            info={"format_code": "wav:int16", "sample_rate": str(SR),
                                  "num_frames": str(int(seconds * SR)), "channels": "1"}))
    return tracks


def hand_config(**overrides):
    return tiny_config(**{"conditions.embedding_dim": 16, "data.eval_triplets_per_condition": 60, **overrides})


@pytest.fixture(scope="module")
def hand():
    cfg = hand_config()
    assert list(cfg.conditions.names) == CONDITIONS
    tracks = hand_tracks()
    tables = LabelTables.from_tracks(tracks, cfg)
    return {"cfg": cfg, "tracks": tracks, "tables": tables, "rows": list(range(len(tracks)))}


# ---------------------------------------------------------------- the builder

def test_positive_shares_fewest_and_negative_most_other_labels(hand):
    trip = build_confounded_triplets(hand["tracks"], hand["tables"], hand["rows"], hand["cfg"], seed=2)
    by_cond = {c: [t for t in trip if t["condition"] == c] for c in CONDITIONS}
    assert all(len(v) == 60 for v in by_cond.values())
    for cond, expected in (("mood", MOOD), ("tempo", TEMPO)):
        anchors = {t["anchor"] for t in by_cond[cond]}
        assert anchors <= set(expected), (cond, anchors - set(expected))  # never an anchor without both
        assert len(anchors) >= 4, (cond, anchors)  # anchors are drawn across the valid ones
        for t in by_cond[cond]:
            positives, negatives = expected[t["anchor"]]
            assert t["positive"] in positives, (cond, t)
            assert t["negative"] in negatives, (cond, t)
    # the unique choices, exactly
    mood = {(t["anchor"], t["positive"], t["negative"]) for t in by_cond["mood"] if t["anchor"] in ("a0", "a1", "a5")}
    assert mood <= {("a0", "a2", "a3"), ("a1", "a2", "a3"), ("a5", "a3", "a2"), ("a5", "a4", "a2")} and mood
    # the CSV columns record how many other labels each shares, and crops stay inside the 3 s tracks
    seg = hand["cfg"].frontend.segment_samples
    for t in trip:
        assert set(t) == set(CONFOUNDED_COLUMNS)
        assert all(0 <= t[f"{r}_start"] <= 3 * SR - seg for r in ("anchor", "positive", "negative"))
        assert t["anchor"] not in (t["positive"], t["negative"])
    assert {t["negative_shared"] for t in by_cond["mood"] if t["anchor"] == "a0"} == {3}
    assert {t["positive_shared"] for t in by_cond["mood"] if t["anchor"] == "a0"} == {0}
    assert {(t["positive_shared"], t["negative_shared"]) for t in by_cond["tempo"] if t["anchor"] == "a0"} == {(2, 1)}


def test_pair_relations_follow_the_training_rules(hand):
    """The numpy relations give the same pairs as the sampler's TF masks (pair_masks.similarity_masks)."""
    import tensorflow as tf

    from disentangled_ml.pair_masks import similarity_masks

    cfg, tables = hand["cfg"], hand["tables"]
    rows = np.arange(len(TABLE))
    pos, neg = similarity_masks(CONDITIONS, [tf.constant(m) for m in tables.classes], tf.constant(tables.tempo),
                                tf.constant(rows), cfg)
    for s, cond in enumerate(CONDITIONS):
        sim, dis = pair_relations(tables, cond, cfg, rows, rows)
        np.testing.assert_array_equal(sim, pos[s].numpy(), err_msg=cond)
        np.testing.assert_array_equal(dis, neg[s].numpy(), err_msg=cond)
    sim, dis = pair_relations(tables, "tempo", cfg, rows, rows)
    assert not sim[0, 7] and not dis[0, 7]  # 100 vs 108 BPM: the gap, neither


def test_conditions_without_a_valid_triplet_report_zero(hand):
    cfg = hand["cfg"]
    table = [(tid, g, m, "guitar", None) for tid, g, m, _, _ in TABLE]  # one instrument, no tempo at all
    tracks = hand_tracks(table)
    tables = LabelTables.from_tracks(tracks, cfg)
    rows = list(range(len(tracks)))
    trip = build_confounded_triplets(tracks, tables, rows, cfg, seed=2)
    assert {t["condition"] for t in trip} == {"genre", "mood"}
    stats = confoundedness(trip, tables, cfg, rows=rows)
    assert set(stats) == set(CONDITIONS)
    for cond in ("instrument", "tempo"):
        s = stats[cond]
        assert s["triplets"] == 0 and s["anchors"] == 0, (cond, s)
        assert s["positive_shared_mean"] is None and s["negative_shared_mean"] is None
        assert s["negative_shared_counts"] == [0, 0, 0, 0]
    assert stats["tempo"]["labelled_tracks"] == 0 and stats["instrument"]["labelled_tracks"] == 8
    assert stats["mood"]["triplets"] == 60
    # a split of one track: nothing at all, and no crash
    assert build_confounded_triplets(tracks, tables, [0], cfg, seed=2) == []
    assert all(s["triplets"] == 0 and s["anchors"] == 0 for s in confoundedness([], tables, cfg, rows=[0]).values())


def test_the_set_is_a_function_of_the_seed(hand):
    args = (hand["tracks"], hand["tables"], hand["rows"], hand["cfg"])
    a = build_confounded_triplets(*args, seed=7)
    assert build_confounded_triplets(*args, seed=7) == a
    b = build_confounded_triplets(*args, seed=8)
    assert b != a and len(b) == len(a)
    assert eval_seed(hand["cfg"], "test") == hand["cfg"].data.seed + 2
    assert eval_seed(hand["cfg"], "validation") == hand["cfg"].data.seed + 1


def test_confoundedness_statistics_by_hand(hand):
    cfg, tables = hand["cfg"], hand["tables"]

    def t(cond, a, p, n):
        return {"condition": cond, "anchor": a, "positive": p, "negative": n}

    trip = [t("mood", "a0", "a2", "a3"),  # positive shares 0 of genre/instrument/tempo, negative 3
            t("mood", "a1", "a2", "a3"),  # 0, 3
            t("mood", "a0", "a1", "a4"),  # 3, 0
            t("tempo", "a0", "a3", "a2"),  # genre + instrument (2); the mood (1)
            t("track", "a0", "a0", "a1")]  # not a label condition: ignored
    random = [t("mood", "a0", "a1", "a4"), t("mood", "a4", "a5", "a2")]  # 3, 0 and 0, 0
    s = confoundedness(trip, tables, cfg, rows=hand["rows"], random_triplets=random)
    mood, tempo, genre = s["mood"], s["tempo"], s["genre"]
    assert mood["other_labels"] == ["genre", "instrument", "tempo"]
    assert tempo["other_labels"] == ["genre", "mood", "instrument"]
    assert mood["triplets"] == 3 and tempo["triplets"] == 1 and genre["triplets"] == 0
    assert mood["positive_shared_mean"] == pytest.approx(1.0) and mood["negative_shared_mean"] == pytest.approx(2.0)
    assert mood["positive_shared_counts"] == [2, 0, 0, 1] and mood["negative_shared_counts"] == [1, 0, 0, 2]
    assert (tempo["positive_shared_mean"], tempo["negative_shared_mean"]) == (2.0, 1.0)
    assert tempo["positive_shared_counts"] == [0, 0, 1, 0] and tempo["negative_shared_counts"] == [0, 1, 0, 0]
    assert genre["positive_shared_mean"] is None
    assert mood["random_positive_shared_mean"] == pytest.approx(1.5) and mood["random_negative_shared_mean"] == 0.0
    assert tempo["random_positive_shared_mean"] is None
    # tracks that can anchor: mood a0-a6 (a7 unknown); tempo a0, a1, a2, a3, a5; genre and instrument
    # every labelled track but a4 (the only pop / drums track has no positive)
    assert (mood["anchors"], tempo["anchors"], genre["anchors"], s["instrument"]["anchors"]) == (7, 5, 6, 6)
    assert (mood["labelled_tracks"], tempo["labelled_tracks"], genre["labelled_tracks"]) == (7, 7, 7)


# ---------------------------------------------------------------- scoring: evaluate_many and the report

GENRES, MOODS, INSTRUMENTS = ["rock", "jazz", "pop"], ["happy", "sad"], ["guitar", "piano", "drums"]


def label_vectors(tracks):
    """[N, 16]: 4-d genre / mood / instrument one-hots (an unknown label has its own direction) and the
    tempo as an angle (zero when unknown)."""
    out = np.zeros((len(tracks), 16), np.float32)
    for i, t in enumerate(tracks):
        for s, vocab in enumerate((GENRES, MOODS, INSTRUMENTS)):
            labels = t.labels[("genre", "mood", "instrument")[s]]
            out[i, 4 * s + (vocab.index(labels[0]) if labels else 3)] = 1.0
        if t.tempo is not None:
            theta = (t.tempo - 60.0) / 120.0 * np.pi / 2
            out[i, 12:14] = np.cos(theta), np.sin(theta)
    return out


def test_evaluate_many_scores_confounded_triplets_beside_the_random_ones(hand, tmp_path):
    from disentangled_ml.evaluation.report import format_table, write_report
    from disentangled_ml.evaluation.runner import EmbedderSpec, evaluate_many

    cfg, tracks, tables = hand["cfg"], hand["tracks"], hand["tables"]
    # track i's audio is the constant (i + 1) / 16, so an embedder can tell which track a crop is from
    audio = {t.track_id: np.full(3 * SR, (i + 1) / 16, np.float32) for i, t in enumerate(tracks)}
    vectors = label_vectors(tracks)

    def labels_of(crops):
        return vectors[np.rint(crops[:, 0] * 16).astype(int) - 1]

    specs = [EmbedderSpec("model", labels_of, views=dict(cfg.conditions.slices)),  # disentangled: slice = label
             EmbedderSpec("entangled", labels_of, label="entangled")]  # the same vector, scored whole
    rows = hand["rows"]
    conf = build_confounded_triplets(tracks, tables, rows, cfg, seed=2, per_condition=40)
    random = [{"condition": "mood", "anchor": "a0", "positive": "a1", "negative": "a4", "anchor_start": 0,
               "positive_start": 800, "negative_start": 1600}]
    res = evaluate_many(specs, random, audio, tracks, cfg, rows, tables=tables, segments_per_track=1, k=2,
                        confounded=conf)
    plain = evaluate_many(specs, random, audio, tracks, cfg, rows, tables=tables, segments_per_track=1, k=2)
    assert "confounded" not in plain
    old_keys = [k for k in res if k not in ("confounded", "per_triplet")]
    assert _jsonable({k: res[k] for k in old_keys}) == _jsonable({k: plain[k] for k in old_keys})  # unchanged
    assert _jsonable(res["per_triplet"]["random"]) == _jsonable(plain["per_triplet"]["random"])

    c = res["confounded"]
    assert c["conditions"] == CONDITIONS and c["num_triplets"] == {k: 40 for k in CONDITIONS}
    assert c["dropped_triplets"] == 0
    model, ent = c["embedders"]["model"], c["embedders"]["entangled"]
    for cond in CONDITIONS:
        e = model["triplet_accuracy"][cond]
        assert e["n"] == 40 and e["slice"] == 1.0, (cond, e)  # each slice holds only its own label
        assert e["slice_ci95"][0] < 0.95 and e["slice_ci95"][1] == pytest.approx(1.0)
        assert ent["triplet_accuracy"][cond]["slice"] is None
    # lumped together, the other labels outvote the mood on confounded triplets (in this table genre and
    # instrument move together, so their negatives cannot share much: no such claim for them)
    e = ent["triplet_accuracy"]["mood"]
    assert e["whole"] < 0.5 and e["whole_ci95"][0] <= e["whole"] <= e["whole_ci95"][1], e
    assert res["embedders"]["entangled"]["triplet_accuracy"]["mood"]["whole"] == 1.0  # the random a0 / a1 / a4
    m = model["disentanglement"]
    assert m["rows"] == CONDITIONS and m["columns"] == CONDITIONS + ["whole"]
    assert np.allclose(np.diag(np.asarray(m["accuracy"])[:, :4]), 1.0)
    assert ent["disentanglement"] is None
    mood = c["sets"]["mood"]
    assert mood["triplets"] == 40 and mood["anchors"] == 7
    assert mood["negative_shared_mean"] > mood["positive_shared_mean"]
    assert mood["random_negative_shared_mean"] == 0.0  # a0 / a4

    paths = write_report(res, str(tmp_path / "eval"))
    data = json.load(open(paths["metrics"]))
    assert data["confounded"]["embedders"]["entangled"]["triplet_accuracy"]["mood"]["n"] == 40
    for key in ("accuracy", "disentanglement_confounded"):
        with open(paths[key], "rb") as f:
            assert f.read(8) == PNG_MAGIC, key
    table = format_table(res)
    assert "confounded triplets" in table and "neg. shares" in table
    lines = table.splitlines()
    start = next(i for i, x in enumerate(lines) if x.startswith("confounded triplets"))
    mood_line = next(x for x in lines[start:] if x.startswith("mood"))
    assert "1.000 [" in mood_line and re.search(r"\b40\s+7\s", mood_line)  # the model's slice; 40 built, 7 anchors
    assert (" <" in mood_line) == (e["whole_ci95"][1] < 0.5)  # '<': an interval wholly below chance
    # the disentangled slice against the entangled whole vector on the same confounded mood triplets: every
    # triplet the entangled vector gets wrong is one only the slice gets right, and that is significant
    mood_test = c["comparisons"]["conditions"]["mood"]
    assert mood_test["reference"]["label"] == "model (slice)"
    ent_test = next(v for v in mood_test["versus"] if v["embedder"] == "entangled")
    assert ent_test["b_only"] == 0 and ent_test["a_only"] == round(40 * (1 - e["whole"])) and ent_test["significant"]
    assert "*" in mood_line.split("1.000 [", 1)[1] and "exact McNemar" in "\n".join(lines[start:])
    assert data["confounded"]["comparisons"]["conditions"]["mood"]["versus"] == _jsonable(mood_test["versus"])
    assert len(res["per_triplet"]["confounded"]["triplets"]) == 4 * 40


    # no confounded triplet at all: reported as zeros, and the report still writes
    empty = evaluate_many(specs, random, audio, tracks, cfg, rows, tables=tables, segments_per_track=1, k=2,
                          confounded=[])
    assert empty["confounded"]["conditions"] == [] and set(empty["confounded"]["num_triplets"].values()) == {0}
    paths = write_report(empty, str(tmp_path / "empty"))
    assert "disentanglement_confounded" not in paths and "confounded triplets" in format_table(empty)


def _jsonable(x):
    from disentangled_ml.evaluation.report import to_jsonable

    return to_jsonable(x)


# ---------------------------------------------------------------- evaluate_run on a tiny run

@pytest.mark.slow  # trains or evaluates a model end to end (pytest.ini)
def test_evaluate_run_writes_confounded_entries_for_model_and_baselines(tmp_path):
    from disentangled_ml.data.eval_triplets import build_eval_triplets, write_eval_triplets
    from disentangled_ml.data.manifest import write_manifest
    from disentangled_ml.evaluation.runner import evaluate_run

    cfg = hand_config(**{"model.backbone": "plain", "model.width": 4, "data.eval_triplets_per_condition": 12})
    # the hand-made table twice over (b* a copy of a*, a 3 Hz-apart sine each), four training tracks first
    table = [(f"tr{i}", "rock", "happy", "guitar", 90.0) for i in range(4)] + TABLE + \
        [("b" + r[0][1:],) + r[1:] for r in TABLE]
    tracks = hand_tracks(table)
    t = np.arange(3 * SR) / SR
    for i, tr in enumerate(tracks):
        tr.path = str(tmp_path / f"{tr.track_id}.wav")
        sf.write(tr.path, (0.3 * np.sin(2 * np.pi * (110 + 30 * i) * t)).astype(np.float32), SR, subtype="PCM_16")
    tables = LabelTables.from_tracks(tracks, cfg)
    test_rows = list(range(4, len(tracks)))
    prepared, run = tmp_path / "prepared", tmp_path / "run"
    prepared.mkdir()
    run.mkdir()
    write_manifest(tracks, str(prepared / "manifest.csv"))
    cfg.to_json(str(run / "config.json"))
    with open(run / "splits.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["track_id", "split"])
        w.writerows([tr.track_id, "test" if i in test_rows else "train"] for i, tr in enumerate(tracks))
    write_eval_triplets(build_eval_triplets(tracks, tables, test_rows, cfg, seed=eval_seed(cfg, "test")),
                        str(run / "test_triplets.csv"))
    tiny_waveform_model(cfg).save(str(run / "embedding.keras"))

    metrics, paths = evaluate_run(str(run), str(prepared), vq_codebook=4, segments_per_track=1, batch_size=32,
                                  progress=False)
    conf_csv = run / "test_confounded_triplets.csv"
    assert paths["confounded_triplets"] == str(conf_csv) and conf_csv.is_file()
    with open(conf_csv, newline="") as f:
        assert next(csv.reader(f)) == CONFOUNDED_COLUMNS
    data = json.load(open(paths["metrics"]))
    c = data["confounded"]
    assert c["seed"] == cfg.data.seed + 2 and c["reused"] is False and c["file"] == str(conf_csv)
    assert c["conditions"] == CONDITIONS and c["num_triplets"] == {k: 12 for k in CONDITIONS}
    assert list(c["embedders"]) == ["model", "mfcc_vq", "mfcc_stats", "untrained"]
    for name, emb in c["embedders"].items():
        for cond in CONDITIONS:
            e = emb["triplet_accuracy"][cond]
            assert e["n"] == 12 and e["whole_ci95"][0] <= e["whole"] <= e["whole_ci95"][1], (name, cond, e)
            assert (e["slice"] is None) == (name != "model"), (name, cond, e)
        assert (emb["disentanglement"] is None) == (name != "model")
    assert c["embedders"]["model"]["disentanglement"]["rows"] == CONDITIONS
    for cond in CONDITIONS:
        s = c["sets"][cond]
        assert s["triplets"] == 12 and s["negative_shared_mean"] is not None and s["anchors"] > 0, (cond, s)
    assert set(data["embedders"]) == {"model", "mfcc_vq", "mfcc_stats", "untrained"}  # the old keys stay
    assert data["num_triplets"] == {k: 12 for k in CONDITIONS + ["track"]}
    with open(paths["disentanglement_confounded"], "rb") as f:
        assert f.read(8) == PNG_MAGIC

    # the second evaluation reuses the file and gets the same confounded numbers ...
    again, _ = evaluate_run(str(run), str(prepared), baselines=False, segments_per_track=1, batch_size=32,
                            progress=False, out_dir=str(tmp_path / "again"))
    assert again["confounded"]["reused"] is True
    assert _jsonable(again["confounded"]["embedders"]["model"]) == c["embedders"]["model"]
    # ... and without confounded triplets, the random set's numbers are exactly those of the first run
    without, _ = evaluate_run(str(run), str(prepared), baselines=False, segments_per_track=1, batch_size=32,
                              progress=False, out_dir=str(tmp_path / "without"), confounded=False)
    assert "confounded" not in without
    assert _jsonable(without["embedders"]["model"]) == data["embedders"]["model"]


def test_accuracy_plot_takes_a_wilson_bound_a_rounding_error_inside_the_value(tmp_path):
    """At an accuracy of 1.0 the Wilson upper bound can be 0.9999999999999999: the whiskers must not fail."""
    import matplotlib

    matplotlib.use("Agg")
    from disentangled_ml.evaluation.report import _bar_panel
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    _bar_panel(ax, ["genre", "mood"], [("model", [1.0, 0.5], [(0.99, 0.9999999999999999), (0.4, 0.6)])],
               whiskers=True)
    fig.savefig(str(tmp_path / "p.png"))
    assert (tmp_path / "p.png").stat().st_size > 0
