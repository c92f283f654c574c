"""Intervals and paired tests: the exact McNemar test and Newcombe's paired interval against hand-computed
cases, the comparisons and marks of the evaluation report, and the significance columns of the ablation
table (on fabricated per-triplet results). Pure numpy: no model, no audio."""

import math

import numpy as np
import pytest

from disentangled_ml.evaluation import metrics as M
from disentangled_ml.evaluation.report import format_table, significance_marks, write_triplet_correct
from disentangled_ml.evaluation.runner import EmbedderSpec, _comparisons, _correct_by_view, _file_outcomes

Z = 1.96


# ---------------------------------------------------------------- the exact McNemar p-value

@pytest.mark.parametrize("a_only, b_only, expected", [
    (5, 0, 2 / 2 ** 5),  # the most lopsided split of 5: 2 * P(X = 0)
    (0, 5, 2 / 2 ** 5),
    (6, 0, 2 / 2 ** 6),  # the smallest all-one-way count below .05
    (10, 2, 2 * (1 + 12 + 66) / 2 ** 12),  # 2 * (C(12,0) + C(12,1) + C(12,2)) / 2^12 = .0386
    (4, 5, 1.0),  # 2 * P(X <= 4 | n = 9) = 2 * 256 / 512: the two tails cover everything
    (3, 3, 1.0),
    (0, 0, 1.0),  # no discordant triplet: no evidence either way
    (1, 0, 1.0),  # 2 * 1/2
])
def test_mcnemar_exact_p_hand_computed(a_only, b_only, expected):
    assert M.mcnemar_exact_p(a_only, b_only) == pytest.approx(expected, rel=1e-12)


def test_mcnemar_exact_p_matches_scipy_binomtest_and_stays_exact_at_large_n():
    stats = pytest.importorskip("scipy.stats")
    for a_only, b_only in [(7, 19), (30, 12), (100, 131), (1, 40)]:
        want = stats.binomtest(a_only, a_only + b_only, 0.5).pvalue
        assert M.mcnemar_exact_p(a_only, b_only) == pytest.approx(want, rel=1e-9)
    # 2^-3000 underflows a float; the exact sum still gives a correctly rounded 0.0, not an error or NaN
    assert M.mcnemar_exact_p(3000, 0) == 0.0
    assert 0.0 < M.mcnemar_exact_p(600, 500) < 0.01  # 0.09 of 1100 discordant triplets: significant
    with pytest.raises(ValueError, match=">= 0"):
        M.mcnemar_exact_p(-1, 3)


# ---------------------------------------------------------------- Newcombe's paired interval

def test_newcombe_interval_hand_computed_cases():
    # (both, a_only, b_only, neither) = (0, 0, 0, 10): both accuracies 0, empty margins so phi = 0; the Wilson
    # interval of 0/10 is [0, u] with u = (z^2/10) / (1 + z^2/10) = .38416 / 1.38416, so D = 0 +- u.
    u = 0.38416 / 1.38416
    assert M.newcombe_paired_interval(0, 0, 0, 10) == pytest.approx((-u, u), abs=1e-9)
    # (10, 10, 10, 10): both .5 and AD - BC = 0, so phi = 0: square and add of two Wilson half-widths of 20/40,
    # h = 1.96 sqrt(.25/40 + 3.8416/6400) / (1 + 3.8416/40) = .148007, interval +- h sqrt(2) = +-.209314
    h = 1.96 * math.sqrt(0.25 / 40 + 3.8416 / 6400) / (1 + 3.8416 / 40)
    assert h == pytest.approx(0.148007, abs=1e-6)
    assert M.newcombe_paired_interval(10, 10, 10, 10) == pytest.approx((-h * math.sqrt(2), h * math.sqrt(2)), abs=1e-9)
    # (40, 5, 5, 50): both .45, strongly paired: AD - BC = 1975 > N/2 = 50, phi = (1975 - 50) / (45*55) = .7778;
    # Wilson(45/100) = [.356144, .547556], so dl = .093856, du = .097556 and the half-width is
    # sqrt(dl^2 - 2 phi dl du + du^2) = .063899, against sqrt(dl^2 + du^2) = .135374 unpaired
    lo, hi = M.newcombe_paired_interval(40, 5, 5, 50)
    assert (lo, hi) == pytest.approx((-0.063899, 0.063899), abs=1e-6)


def test_newcombe_interval_properties():
    # swapping A and B mirrors the interval
    lo, hi = M.newcombe_paired_interval(30, 12, 3, 5)
    assert M.newcombe_paired_interval(30, 3, 12, 5) == pytest.approx((-hi, -lo), abs=1e-12)
    assert lo < (12 - 3) / 50 < hi and -1.0 <= lo and hi <= 1.0
    # all one way at the edge: D = 1 stays inside [-1, 1]
    lo, hi = M.newcombe_paired_interval(0, 20, 0, 0)
    assert 0.0 < lo < 1.0 and hi == 1.0
    with pytest.raises(ValueError, match="positive sum"):
        M.newcombe_paired_interval(0, 0, 0, 0)


def test_newcombe_interval_covers_the_true_difference_about_95_percent():
    """Coverage on simulated paired scorings (two correlated embedders, true accuracies .70 and .65)."""
    rng = np.random.default_rng(0)
    # joint probabilities of (A right, B right): both .55, A only .15, B only .10, neither .20
    probs = np.array([0.55, 0.15, 0.10, 0.20])
    true_d = 0.15 - 0.10
    reps, covered = 1000, 0
    for _ in range(reps):
        both, a_only, b_only, neither = rng.multinomial(200, probs)
        lo, hi = M.newcombe_paired_interval(both, a_only, b_only, neither)
        covered += lo <= true_d <= hi
    assert 0.93 <= covered / reps <= 0.975


# ---------------------------------------------------------------- mcnemar_test on arrays

def test_mcnemar_test_counts_and_difference():
    a = np.array([1, 1, 1, 1, 1, 1, 0, 1, 0, 1], bool)
    b = np.array([0, 0, 0, 0, 0, 0, 0, 1, 1, 1], bool)
    r = M.mcnemar_test(a, b)
    assert (r["both"], r["a_only"], r["b_only"], r["neither"]) == (2, 6, 1, 1)
    assert r["n"] == 10 and r["accuracy_a"] == 0.8 and r["accuracy_b"] == 0.3
    assert r["difference"] == pytest.approx(0.5)
    assert r["p_value"] == pytest.approx(2 * (1 + 7) / 2 ** 7)  # k <= 1 of 7 discordant: .125
    assert r["significant"] is False and r["test"] == M.MCNEMAR_TEST
    assert r["ci95"] == pytest.approx(list(M.newcombe_paired_interval(2, 6, 1, 1)))
    # the same accuracy on different triplets is no difference; identical outcomes neither
    same = M.mcnemar_test(np.array([1, 0, 1, 0], bool), np.array([0, 1, 0, 1], bool))
    assert same["difference"] == 0.0 and same["p_value"] == 1.0 and not same["significant"]
    with pytest.raises(ValueError, match="same triplets"):
        M.mcnemar_test(a, b[:5])
    with pytest.raises(ValueError, match="no triplets"):
        M.mcnemar_test(np.zeros(0, bool), np.zeros(0, bool))


def test_mcnemar_is_more_sensitive_than_overlapping_wilson_intervals():
    """Two models that agree on 480 of 500 triplets: the one that wins 17 of the 20 disagreements is
    better (p = .003) although their Wilson intervals overlap."""
    a = np.zeros(500, bool)
    a[:300] = True  # both right on 300, wrong on 180
    b = a.copy()
    a[300:317] = True  # only A right on 17
    b[317:320] = True  # only B right on 3
    r = M.mcnemar_test(a, b)
    lo_a, hi_a = M.wilson_interval(int(a.sum()), 500)
    lo_b, hi_b = M.wilson_interval(int(b.sum()), 500)
    assert lo_a < hi_b  # the intervals overlap
    assert r["significant"] and r["p_value"] == pytest.approx(M.mcnemar_exact_p(17, 3))
    assert r["ci95"][0] > 0  # and the paired interval of the difference excludes 0


# ---------------------------------------------------------------- the runner's comparisons and the report

def _specs():
    return [EmbedderSpec("model", None, views={"genre": (0, 2), "mood": None}),
            EmbedderSpec("mfcc_vq", None, label="MFCC-VQ")]


def _fabricated_outcomes():
    """The model right on all 40 genre triplets in its slice, 24 on the whole vector; MFCC-VQ right on 21.
    Mood is scored on the whole embedding (a view of None, as with mask_mode none), so the model's slice
    and whole are one series there; track triplets likewise."""
    rng = np.random.default_rng(1)
    specs = _specs()
    outcomes = {}
    emb = rng.standard_normal((3, 40, 4))
    for cond in ("genre", "mood", "track"):
        sl, whole = _correct_by_view(specs[0], cond, *emb)
        assert (sl is whole) == (cond != "genre")
        _file_outcomes(outcomes, specs[0], cond, sl, whole)
        _file_outcomes(outcomes, specs[1], cond, None, whole)
    genre = outcomes["genre"]
    genre[("model", "slice")] = np.ones(40, bool)
    genre[("model", "whole")] = np.arange(40) < 24
    genre[("mfcc_vq", "whole")] = np.arange(40) % 2 == 0
    genre[("mfcc_vq", "whole")][1] = True  # 21 of 40
    outcomes["mood"][("mfcc_vq", "whole")] = outcomes["mood"][("model", "whole")].copy()
    return outcomes, specs


def test_comparisons_test_the_slice_against_every_other_series_and_never_a_score_against_itself():
    outcomes, specs = _fabricated_outcomes()
    comp = _comparisons(outcomes, specs)
    assert comp["test"] == M.MCNEMAR_TEST and comp["alpha"] == 0.05
    genre = comp["conditions"]["genre"]
    assert genre["reference"] == {"embedder": "model", "view": "slice", "label": "model (slice)"}
    by = {(v["embedder"], v["view"]): v for v in genre["versus"]}
    assert set(by) == {("model", "whole"), ("mfcc_vq", "whole")}
    assert (by[("model", "whole")]["a_only"], by[("model", "whole")]["b_only"]) == (16, 0)
    assert by[("model", "whole")]["p_value"] == pytest.approx(2 / 2 ** 16) and by[("model", "whole")]["significant"]
    assert by[("mfcc_vq", "whole")]["a_only"] == 19 and by[("mfcc_vq", "whole")]["label"] == "MFCC-VQ"
    assert by[("mfcc_vq", "whole")]["difference"] == pytest.approx(1 - 21 / 40)
    # the slice is the whole embedding: the reference is "whole", compared with MFCC-VQ only
    for cond in ("mood", "track"):
        entry = comp["conditions"][cond]
        assert entry["reference"]["view"] == "whole"
        assert [(v["embedder"], v["view"]) for v in entry["versus"]] == [("mfcc_vq", "whole")]
    mood = comp["conditions"]["mood"]["versus"][0]
    assert mood["a_only"] == mood["b_only"] == 0 and mood["p_value"] == 1.0 and not mood["significant"]
    # an embedder without sub-spaces first: it is the reference on its whole vector, against both model series
    swapped = _comparisons(outcomes, specs[::-1])["conditions"]["genre"]
    assert swapped["reference"] == {"embedder": "mfcc_vq", "view": "whole", "label": "MFCC-VQ"}
    assert [v["label"] for v in swapped["versus"]] == ["model (slice)", "model (whole)"]
    assert swapped["versus"][0]["difference"] == pytest.approx(21 / 40 - 1)


def _fabricated_metrics():
    outcomes, specs = _fabricated_outcomes()
    conds = ["genre", "mood", "track"]

    def entry(sl, whole):
        n = whole.size
        return {"n": n, "whole": whole.mean(), "whole_ci95": list(M.wilson_interval(int(whole.sum()), n)),
                "slice": None if sl is None else sl.mean(),
                "slice_ci95": None if sl is None else list(M.wilson_interval(int(sl.sum()), n))}

    emb = {"model": {"label": "model", "sliced": True, "retrieval": {},
                     "triplet_accuracy": {c: entry(outcomes[c][("model", "slice")], outcomes[c][("model", "whole")])
                                          for c in conds}},
           "mfcc_vq": {"label": "MFCC-VQ", "sliced": False, "retrieval": {},
                       "triplet_accuracy": {c: entry(None, outcomes[c][("mfcc_vq", "whole")]) for c in conds}}}
    return {"split": "test", "conditions": conds, "num_triplets": {c: 40 for c in conds}, "embedders": emb,
            "comparisons": _comparisons(outcomes, specs)}, outcomes


def test_table_shows_intervals_and_marks_significant_differences_only():
    metrics, _ = _fabricated_metrics()
    marks = significance_marks(metrics)
    assert marks == {("model", "whole", "genre"): "*", ("mfcc_vq", "whole", "genre"): "*"}
    table = format_table(metrics)
    lines = table.splitlines()
    genre = next(line for line in lines if line.startswith("genre"))
    mood = next(line for line in lines if line.startswith("mood"))
    assert "1.000 [0.91-1.00]" in genre and genre.count("*") == 2  # the reference itself is never marked
    assert "*" not in mood
    # the note names each condition's reference: here the slice for genre only, the whole vector for the others
    assert "exact McNemar" in table and "differs from model (whole) (genre: model (slice))" in table
    # metrics without comparisons (written before they existed) still print, with no marks and no note
    del metrics["comparisons"]
    assert "*" not in format_table(metrics) and "McNemar" not in format_table(metrics)


def test_triplet_correct_csv_has_one_row_per_triplet_and_a_column_per_series(tmp_path):
    import csv

    rows = [{"condition": "genre", "anchor": f"t{i}", "anchor_start": 0} for i in range(3)]
    per = {"random": {"triplets": rows, "correct": {"model.slice": np.array([1, 0, 1], bool),
                                                    "mfcc_vq.whole": np.array([0, 0, 1], bool)}},
           "confounded": {"triplets": rows[:1], "correct": {"model.slice": np.array([0], bool)}}}
    path = str(tmp_path / "triplet_correct.csv")
    write_triplet_correct(per, path)
    with open(path, newline="") as f:
        got = list(csv.DictReader(f))
    assert [r["set"] for r in got] == ["random"] * 3 + ["confounded"]
    assert [r["model.slice"] for r in got] == ["1", "0", "1", "0"]
    assert [r["mfcc_vq.whole"] for r in got] == ["0", "0", "1", ""]
    assert got[1]["anchor"] == "t1"


# ---------------------------------------------------------------- the tuning summary: intervals, best vs runner-up

def _fabricated_search(tmp_path, trials, objective="mean", per_condition=100):
    """A search folder as `dml tune` leaves it, without training: search.json, data/config.json,
    data/validation_triplets.csv (``per_condition`` rows per condition and track) and one trial.json per
    ``(trial_id, {metric: value}, score)``."""
    import csv
    import json
    import os

    import keras_tuner
    from keras_tuner.engine.trial import Trial

    from disentangled_ml.config import Config
    from disentangled_ml.tuning.hypermodel import SearchSpace
    from disentangled_ml.tuning.search import PROJECT_NAME

    tune = tmp_path / "tune"
    (tune / "data").mkdir(parents=True)
    cfg = Config()
    cfg.to_json(str(tune / "data" / "config.json"))
    with open(tune / "search.json", "w") as f:
        json.dump({"tuner": "random", "max_trials": len(trials), "seed": 1, "project_name": PROJECT_NAME,
                   "space": SearchSpace(objective=objective).to_dict()}, f)
    with open(tune / "data" / "validation_triplets.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["condition", "anchor", "anchor_start", "positive", "positive_start", "negative", "negative_start"])
        for cond in list(cfg.conditions.names) + ["track"]:
            for i in range(per_condition):
                w.writerow([cond, f"a{i}", 0, f"p{i}", 0, f"n{i}", 0])
    for trial_id, metrics, score in trials:
        hp = keras_tuner.HyperParameters()
        hp.Fixed("lambda", 0.5)
        hp.Fixed("margin", 0.1)
        hp.Fixed("learning_rate", 1e-3)
        t = Trial(hp, trial_id=trial_id, status="COMPLETED")
        for name, value in metrics.items():
            t.metrics.register(name, "max")
            t.metrics.update(name, value, step=0)
        t.score, t.best_step = score, 0
        os.makedirs(tune / PROJECT_NAME / f"trial_{trial_id}")
        t.save(str(tune / PROJECT_NAME / f"trial_{trial_id}" / "trial.json"))
    return str(tune)


def _accs(genre, mood, instrument, tempo):
    """float32 validation accuracies (as Keras logs them) of 100 triplets per condition, and their mean."""
    acc = {"genre": genre, "mood": mood, "instrument": instrument, "tempo": tempo}
    metrics = {f"val_acc_{c}": float(np.float32(k / 100)) for c, k in acc.items()}
    mean = float(np.mean([k / 100 for k in acc.values()]))
    return {**metrics, "val_acc_track": 0.99, "val_mean_acc": mean}, mean


def test_tuning_summary_gives_every_trial_its_interval_and_compares_the_best_with_the_runner_up(tmp_path):
    import json
    import os

    from disentangled_ml.tuning.search import format_table, summarize

    t0, s0 = _accs(81, 62, 73, 94)  # 310 of 400
    t1, s1 = _accs(80, 61, 73, 93)  # 307 of 400: runner-up, intervals overlap
    t2, s2 = _accs(60, 50, 55, 70)  # 235 of 400
    tune = _fabricated_search(tmp_path, [("0", t1, s1), ("1", t0, s0), ("2", t2, s2)])
    summary = summarize(tune)
    by_id = {r.trial_id: r for r in summary.rows}
    assert summary.best.trial_id == "1" and summary.runner_up.trial_id == "0"
    best = by_id["1"].pooled
    assert (best.correct, best.n) == (310, 400) and best.conditions == ("genre", "mood", "instrument", "tempo")
    assert best.ci95 == pytest.approx(M.wilson_interval(310, 400))
    assert best.accuracy == pytest.approx(summary.best.score)  # equal counts: pooled = the mean objective
    versus = summary.best_vs_runner_up
    assert versus["overlap"] and versus["verdict"].startswith("not shown different")
    table = format_table(summary)
    assert "0.775 [0.73-0.81]" in table and "best vs runner-up (trial 0): not shown different" in table
    assert "400 triplets of genre, mood, instrument, tempo" in table
    with open(os.path.join(tune, "results.json")) as f:
        res = json.load(f)
    assert res["best"]["val_pooled_ci95_low"] == pytest.approx(best.ci95[0]) and res["best"]["val_triplets"] == 400
    assert res["best_vs_runner_up"]["runner_up"] == "0"
    row = next(t for t in res["trials"] if t["trial_id"] == "2")
    assert row["val_pooled_acc"] == pytest.approx(235 / 400)

    # a clear winner: the intervals do not overlap, and the summary says it is better
    tune2 = _fabricated_search(tmp_path / "b", [("0", t0, s0), ("1", t2, s2)])
    versus = summarize(tune2, write=False).best_vs_runner_up
    assert not versus["overlap"] and versus["verdict"].startswith("better")


def test_tuning_summary_pools_the_objective_conditions_only(tmp_path):
    from disentangled_ml.tuning.search import summarize

    t, _ = _accs(81, 62, 73, 94)
    weighted = 0.5 * t["val_acc_genre"] + 0.5 * t["val_acc_mood"]
    tune = _fabricated_search(tmp_path, [("0", {**t, "val_objective": weighted}, weighted)],
                              objective="genre=0.5,mood=0.5")
    summary = summarize(tune, write=False)
    pooled = summary.rows[0].pooled
    assert pooled.conditions == ("genre", "mood") and (pooled.correct, pooled.n) == (143, 200)
    assert summary.runner_up is None and summary.best_vs_runner_up is None  # one trial: nothing to compare
    # a search folder without its validation triplets (e.g. copied without data/) still summarises, without intervals
    import os

    os.remove(os.path.join(tune, "data", "validation_triplets.csv"))
    assert summarize(tune, write=False).rows[0].pooled is None
