"""The pure parts of benchmarks/ablation.py: per-triplet records, intervals and McNemar tests against the
reference variant, and the Markdown table, on fabricated per-triplet results (the ablation itself trains six
models and is not run here)."""

import os
import sys

import numpy as np
import pytest

from disentangled_ml.evaluation.metrics import mcnemar_exact_p, wilson_interval

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import ablation  # noqa: E402

CONDS = ["genre", "mood", "instrument", "tempo", "track"]
N = 200


def triplet_rows(seed=0):
    """N fabricated test-triplet rows per condition, as evaluate_many's per_triplet lists them."""
    return [{"condition": c, "anchor": f"{c}{i}", "anchor_start": 0, "positive": f"p{i}", "positive_start": 10 * seed,
             "negative": f"n{i}", "negative_start": 0} for c in CONDS for i in range(N)]


def run_row(mask_mode, lam, right, seed=0, old_format=False):
    """A run of ablation.json: ``right[c]`` = how many of condition c's N triplets it orders correctly
    (the first ones); ``seed`` != 0 gives other triplets (other crop starts)."""
    correct = np.concatenate([np.arange(N) < right[c] for c in CONDS])
    row = {"mask_mode": mask_mode, "track_weight": lam, "slice": {c: right[c] / N for c in CONDS},
           "n": {c: N for c in CONDS}}
    if not old_format:
        row.update(ablation.per_triplet_record({"triplets": triplet_rows(seed), "correct": {"model.slice": correct}}))
    return row


REF = {"genre": 160, "mood": 120, "instrument": 140, "tempo": 180, "track": 190}


def fabricated_runs():
    return [
        run_row("none", 0.0, {**REF, "genre": 100}),  # 60 genre triplets worse, none better
        run_row("fixed", 0.0, {**REF, "genre": 163}),  # 3 better: not shown different
        run_row("fixed", 0.5, REF),  # the reference
        run_row("learned", 0.5, {**REF, "genre": 100}, seed=1),  # scored on other triplets: not testable
        run_row("learned", 0.0, {**REF, "genre": 100}, old_format=True),  # an ablation.json of before the tests
    ]


def test_per_triplet_record_keeps_order_and_identifies_the_triplets():
    rec = ablation.per_triplet_record({"triplets": triplet_rows()[:3] + triplet_rows()[N:N + 2],
                                       "correct": {"model.slice": np.array([1, 0, 1, 1, 0], bool)}})
    assert rec["correct"] == {"genre": "101", "mood": "10"}
    assert set(rec["triplets_sha1"]) == {"genre", "mood"}
    other = ablation.per_triplet_record({"triplets": triplet_rows(seed=1)[:3],
                                         "correct": {"model.slice": np.ones(3, bool)}})
    assert other["triplets_sha1"]["genre"] != rec["triplets_sha1"]["genre"]  # other crop starts, other hash


def test_summarize_intervals_and_tests_against_the_reference():
    s = ablation.summarize(fabricated_runs(), CONDS, reference=("fixed", 0.5))
    assert s["reference"] == {"mask_mode": "fixed", "track_weight": 0.5}
    assert s["columns"] == CONDS + [ablation.POOLED]
    none, fixed0, ref, learned, old = s["variants"]
    assert ref["is_reference"] and not none["is_reference"]
    # every cell has its Wilson interval, from the per-triplet results or (old format) from accuracy x n
    for v in s["variants"]:
        for col in CONDS:
            cell = v["cells"][col]
            assert cell["ci95"] == pytest.approx(list(wilson_interval(round(cell["accuracy"] * N), N)))
    g = none["cells"]["genre"]["versus_reference"]
    assert (g["a_only"], g["b_only"]) == (0, 60) and g["difference"] == pytest.approx(-0.3) and g["significant"]
    assert none["cells"]["mood"]["versus_reference"]["p_value"] == 1.0  # identical outcomes
    pooled = none["cells"][ablation.POOLED]
    assert pooled["n"] == 4 * N and pooled["accuracy"] == pytest.approx((100 + 120 + 140 + 180) / (4 * N))
    assert pooled["versus_reference"]["b_only"] == 60 and pooled["versus_reference"]["significant"]
    f = fixed0["cells"]["genre"]["versus_reference"]
    assert (f["a_only"], f["b_only"]) == (3, 0) and f["p_value"] == pytest.approx(mcnemar_exact_p(3, 0))
    assert not f["significant"]
    assert ref["cells"]["genre"]["versus_reference"] is None and ref["cells"]["genre"]["why_untested"] is None
    assert learned["cells"]["genre"]["why_untested"] == "not the same test triplets"
    assert old["cells"]["genre"]["why_untested"] == "no per-triplet results"
    assert old["cells"][ablation.POOLED]["accuracy"] == pytest.approx((100 + 120 + 140 + 180) / (4 * N))


def test_markdown_marks_significant_differences_and_says_what_the_marks_mean():
    table = ablation.to_markdown(ablation.summarize(fabricated_runs(), CONDS, reference=("fixed", 0.5)))
    lines = table.splitlines()
    assert lines[0] == "| masks | λ | genre | mood | instrument | tempo | track | all conditions |"
    none, fixed0, ref, learned, old = lines[2:7]
    assert none.split(" | ")[2] == "0.500 [0.43–0.57]\\*"  # genre: 60 triplets worse
    assert none.count("\\*") == 2  # genre and the pooled column; the rest are the reference's outcomes
    assert "\\*" not in fixed0 and ref.startswith("| **fixed** | 0.5 |")
    assert learned.count("†") == 6 and "\\*" not in learned  # no test on other triplets, not even for equal ones
    assert old.count("†") == 6
    assert "exact McNemar" in table and "not the same test triplets" in table and "no per-triplet results" in table
    # without the reference variant: intervals only, and the note says so
    alone = ablation.to_markdown(ablation.summarize(fabricated_runs(), CONDS, reference=("fixed", 1.0)))
    assert "\\*" not in alone.split("\n\n")[0] and "†" not in alone and "No reference variant" in alone
