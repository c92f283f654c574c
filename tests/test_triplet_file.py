"""`dml evaluate DIR --triplets FILE`: a CSV of audio triplets scored with a run or an export.

The run and its export score a file identically; distances are those of the crops the rows
name; every kind of bad row is reported, never raised; the README's dim-sim conversion runs.
"""

import argparse
import csv
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from disentangled_ml.cli import CliError
from disentangled_ml.cli import evaluate as cli_evaluate
from disentangled_ml.condition_views import ConditionViews
from disentangled_ml.evaluation.triplet_file import (
    BAD_ROW_REASONS, END_TOLERANCE_SECONDS, TripletModel, evaluate_triplet_file, read_triplet_file,
    score_triplet_file,
)
from collections_for_tests import process_timeout, tiny_config

SR = 8000  # tiny_config: 8 kHz, 1 s segments
HEADER = ["anchor", "anchor_start", "positive", "positive_start", "negative", "negative_start", "condition"]
README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def _config():
    # a small real network (the SavedModel path is what is under test, not the backbone)
    return tiny_config(**{"model.backbone": "plain", "model.width": 4, "conditions.embedding_dim": 16})


def write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return str(path)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """A run directory (dml train's model files, untrained) and its export by `dml export` (float32 TFLite only,
    as tests/test_search.py does: the quantised conversions are tested in tests/test_export.py)."""
    import keras

    from disentangled_ml.export import export_run, tflite
    from disentangled_ml.models import build_triplet_model
    from disentangled_ml.training import save_run_model

    root = tmp_path_factory.mktemp("models")
    cfg = _config()
    run = str(root / "run")
    keras.utils.set_random_seed(0)
    model = save_run_model(run, cfg, build_triplet_model(cfg))
    export = str(root / "export")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tflite, "VARIANTS", tuple(v for v in tflite.VARIANTS if v.name == "float32"))
        export_run(run, export, int8_full=False, calibration_segments=4, parity_segments=4)
    return {"run": run, "export": export, "model": model, "cfg": cfg}


@pytest.fixture(scope="module")
def audio(tmp_path_factory):
    """Four 3 s clips of different sounds, a text file named .wav, and a .txt file."""
    root = tmp_path_factory.mktemp("audio")
    rng = np.random.default_rng(0)
    t = np.arange(3 * SR) / SR
    for i in range(4):
        y = 0.3 * np.sin(2 * np.pi * (150 + 170 * i) * t * (1 + 0.2 * t)) + 0.05 * rng.standard_normal(t.size)
        sf.write(str(root / f"c{i}.wav"), y.astype(np.float32), SR)
    (root / "broken.wav").write_text("this is not audio\n")
    (root / "notes.txt").write_text("nor is this\n")
    return root


def _good_rows():
    """Six triplets in the `clips/` folder: two genre, one mood, three without a condition."""
    return [["clips/c0.wav", "0", "clips/c1.wav", "0.5", "clips/c2.wav", "1", ""],
            ["clips/c0.wav", "1.25", "clips/c0.wav", "2", "clips/c3.wav", "", "genre"],
            ["clips/c1.wav", "", "clips/c2.wav", "0.75", "clips/c3.wav", "2", "genre"],
            ["clips/c2.wav", "2", "clips/c3.wav", "0", "clips/c0.wav", "0.5", "mood"],
            ["clips/c3.wav", "1", "clips/c3.wav", "0", "clips/c1.wav", "1", ""],
            ["clips/c1.wav", "2", "clips/c0.wav", "0", "clips/c2.wav", "1.5", ""]]


def _place(tmp_path, audio):
    """A folder with `clips/` linked to the clips, where the CSVs go: paths resolve against the CSV's folder."""
    os.symlink(str(audio), str(tmp_path / "clips"))
    return tmp_path


def test_run_and_export_give_the_same_scores(model_dirs, audio, tmp_path):
    here = _place(tmp_path, audio)
    path = write_csv(here / "mine.csv", HEADER, _good_rows())
    run_res, run_paths = evaluate_triplet_file(model_dirs["run"], path, progress=False)
    exp_res, exp_paths = evaluate_triplet_file(model_dirs["export"], path, progress=False)
    assert run_res.report["model"]["kind"] == "keras" and exp_res.report["model"]["kind"] == "saved_model"
    assert run_paths["metrics"] == os.path.join(model_dirs["run"], "eval_triplets_mine", "triplet_metrics.json")
    assert exp_paths["metrics"] == os.path.join(model_dirs["export"], "eval_triplets_mine", "triplet_metrics.json")
    for res in (run_res, exp_res):
        assert res.report["scored"] == 6 and res.report["left_out"] == 0 and not res.bad_rows
        assert [(g["condition"], g["n"], g["primary"]) for g in res.report["groups"]] == \
            [("genre", 2, "genre"), ("mood", 1, "mood"), (None, 3, "whole")]
        assert res.view_names == ["whole", "genre", "mood", "instrument", "tempo"]
    # the same accuracies, intervals and counts everywhere; distances within float tolerance
    assert exp_res.report["groups"] == run_res.report["groups"]
    assert exp_res.report["overall"] == run_res.report["overall"]
    for v in run_res.view_names:
        np.testing.assert_array_equal(exp_res.correct[v], run_res.correct[v])
        np.testing.assert_allclose(exp_res.distances[v], run_res.distances[v], atol=1e-5)
    # the JSON says what the result says, and the scores CSV has every row in file order
    data = json.load(open(exp_paths["metrics"]))
    assert data["groups"] == exp_res.report["groups"] and data["model"]["source"] == "export"
    with open(exp_paths["scores"], newline="") as f:
        scores = list(csv.DictReader(f))
    assert [int(r["line"]) for r in scores] == list(range(2, 8)) and {r["status"] for r in scores} == {"scored"}
    assert float(scores[1]["d_pos_genre"]) == pytest.approx(exp_res.distances["genre"][1, 0], rel=1e-5)
    assert scores[1]["anchor"] == os.path.join(str(here), "clips", "c0.wav")

    # The distances are those of the crops the rows name, in each condition's slice: embed the crops here.
    from disentangled_ml.audio_io import load_audio

    seg = SR
    crops = []
    for row in _good_rows()[1:3]:  # the genre triplets
        for p, s in ((row[0], row[1]), (row[2], row[3]), (row[4], row[5])):
            start = int(round(float(s or 0) * SR))
            crops.append(load_audio(str(here / p), SR)[start:start + seg])
    emb = np.asarray(model_dirs["model"].predict_on_batch(np.stack(crops))["embedding"], np.float64)
    lo, hi = model_dirs["cfg"].conditions.slices["genre"]
    for k in range(2):
        a, p, n = emb[3 * k:3 * k + 3, lo:hi]
        np.testing.assert_allclose(run_res.distances["genre"][k + 1], [np.linalg.norm(a - p), np.linalg.norm(a - n)],
                                   rtol=1e-4)
    # overall = each triplet in its own view: the genre slice for genre rows, the whole embedding without one
    own = [run_res.correct[t.condition or "whole"][i] for i, t in enumerate(run_res.triplets)]
    assert run_res.report["overall"]["correct"] == sum(own) and run_res.report["overall"]["n"] == 6


def _cli(directory, triplets, **kw):
    parser = argparse.ArgumentParser()
    cli_evaluate.add_arguments(parser)
    argv = [directory, "--triplets", triplets, "--no-progress"] + \
        [x for k, v in kw.items() for x in ([f"--{k}"] if v is True else [f"--{k}", str(v)])]
    return cli_evaluate.run(parser.parse_args(argv))


def test_every_kind_of_bad_row_is_reported_not_raised(model_dirs, audio, tmp_path, capsys):
    here = _place(tmp_path, audio)
    good = _good_rows()[:2]
    bad = [  # (line in the file, row, the reasons it must get)
        (4, ["clips/c0.wav", "0", "clips/absent.wav", "0", "clips/c1.wav", "0", ""], ["missing_file"]),
        (5, ["clips/c0.wav", "0", "clips/c1.wav", "0", "clips/broken.wav", "0", ""], ["undecodable"]),
        (6, ["clips/notes.txt", "0", "clips/c1.wav", "0", "clips/c2.wav", "0", ""], ["unsupported_format"]),
        (7, ["clips/c0.wav", "3", "clips/c1.wav", "0", "clips/c2.wav", "0", ""], ["start_beyond_end"]),
        (8, ["clips/c0.wav", "0", "clips/c1.wav", "2.5", "clips/c2.wav", "0", ""], ["crop_past_end"]),
        (9, ["clips/c0.wav", "0", "clips/c1.wav", "0", "clips/c2.wav", "0", "genr"], ["unknown_condition"]),
        (10, ["clips/c0.wav", "0", "", "0", "clips/c2.wav", "0", ""], ["missing_path"]),
        (11, ["clips/c0.wav", "-1", "clips/c1.wav", "soon", "clips/c2.wav", "0", ""], ["bad_start"]),
        (12, ["clips/c0.wav", "0", "clips/c1.wav", "0", "clips/c2.wav", "0", "", "extra"], ["malformed_row"]),
        # several problems in one row: all of them, in role order after the field checks
        (13, ["clips/absent.wav", "0", "clips/c1.wav", "9", "clips/c2.wav", "0", "tempo"],
         ["missing_file", "start_beyond_end"]),
    ]
    assert {r for _, _, reasons in bad for r in reasons} == set(BAD_ROW_REASONS)  # every kind is in the file
    path = write_csv(here / "bad.csv", HEADER, good + [row for _, row, _ in bad] + [good[0]])
    out_dir = str(tmp_path / "report")
    assert _cli(model_dirs["run"], path, out=out_dir) == 0
    printed = capsys.readouterr().out
    data = json.load(open(os.path.join(out_dir, "triplet_metrics.json")))
    assert data["rows"] == 13 and data["scored"] == 3 and data["left_out"] == 10
    assert [(b["line"], b["reasons"]) for b in data["bad_rows"]] == [(line, r) for line, _, r in bad]
    by_line = {b["line"]: b["message"] for b in data["bad_rows"]}
    assert "absent.wav" in by_line[4] and by_line[4].startswith("positive:")
    assert "not an audio file" in by_line[5]  # audio_io's explanation of what is wrong with the file
    assert "start it at 2.00 s or earlier" in by_line[8] and "genr" in by_line[9]
    assert by_line[13].count(";") == 1 and "9 s" in by_line[13]
    for line, _, reasons in bad:
        assert f"line {line}: {', '.join(reasons)}:" in printed
    assert "10 row(s) left out" in printed and "overall" in printed
    # the good rows around the bad ones are scored: the last line repeats the first
    assert [g["n"] for g in data["groups"]] == [1, 2] and data["overall"]["n"] == 3
    with open(os.path.join(out_dir, "triplet_scores.csv"), newline="") as f:
        scores = {int(r["line"]): r for r in csv.DictReader(f)}
    assert scores[14]["d_pos_whole"] == scores[2]["d_pos_whole"] != ""
    assert scores[13]["status"] == "left_out" and scores[13]["reasons"] == "missing_file|start_beyond_end"

    # a file with no good row still gets its report; the exit status says nothing was scored
    only_bad = write_csv(here / "only_bad.csv", HEADER, [row for _, row, _ in bad[:3]])
    assert _cli(model_dirs["export"], only_bad, out=str(tmp_path / "none")) == 1
    data = json.load(open(tmp_path / "none" / "triplet_metrics.json"))
    assert data["scored"] == 0 and data["overall"]["accuracy"] is None and data["groups"] == []
    assert "3 row(s) left out" in capsys.readouterr().out


def test_problems_with_the_file_or_the_command_are_errors(model_dirs, audio, tmp_path):
    here = _place(tmp_path, audio)
    no_negative = write_csv(here / "two.csv", ["anchor", "positive"], [["clips/c0.wav", "clips/c1.wav"]])
    with pytest.raises(CliError, match=r"no column\(s\) \['negative'\]"):
        _cli(model_dirs["run"], no_negative)
    with pytest.raises(CliError, match="does not exist"):
        _cli(model_dirs["run"], str(here / "nowhere.csv"))
    good = write_csv(here / "good.csv", HEADER, _good_rows()[:1])
    with pytest.raises(CliError, match="--prepared"):
        _cli(model_dirs["run"], good, prepared=str(here))
    with pytest.raises(CliError, match="not an export directory"):
        _cli(model_dirs["run"], good, tflite="model.tflite")
    with pytest.raises(CliError, match="does not exist"):  # this export has no .tflite file
        _cli(model_dirs["export"], good, tflite="model_int8.tflite")
    with pytest.raises(CliError, match="neither embedding.keras"):
        _cli(str(here), good)


def _ramp_model(views):
    """A model whose embedding is known by hand: ``[first sample] * 2 + [last sample] * 2`` of each crop,
    on audio that is a ramp, so a crop's embedding says where it starts and whether it was padded."""
    def embed(x):
        x = np.asarray(x, np.float64)
        return np.stack([x[:, 0], x[:, 0], x[:, -1], x[:, -1]], axis=1)

    return TripletModel(embed, views, SR, SR, "run", "keras", ".", "fake")


def test_starts_ends_and_the_padding_tolerance(tmp_path):
    y = np.linspace(0.0, 0.5, 2 * SR, endpoint=False).astype(np.float32)  # 2 s ramp: sample i = i / (4 SR)
    sf.write(str(tmp_path / "ramp.wav"), y, SR, subtype="FLOAT")
    views = ConditionViews.from_slices({"first": (0, 2), "last": (2, 4)}, 4)
    inside = 1.0 + 0.8 * END_TOLERANCE_SECONDS  # the crop ends 40 ms past the end: padded with zeros
    beyond = 1.0 + 1.2 * END_TOLERANCE_SECONDS
    rows = [["ramp.wav", "0.5", "ramp.wav", "0.25", "ramp.wav", "1", "first"],
            ["ramp.wav", "0", "ramp.wav", str(inside), "ramp.wav", "0.5", "last"],
            ["ramp.wav", "0", "ramp.wav", "0", "ramp.wav", str(beyond), ""]]
    path = write_csv(tmp_path / "ramp.csv", HEADER, rows)
    res = score_triplet_file(path, _ramp_model(views))
    assert [b.reasons for b in res.bad_rows] == [["crop_past_end"]] and res.bad_rows[0].line == 4
    first = lambda s: s / 4  # noqa: E731 - the ramp's value at s seconds
    # row 1: anchor at .5 s, positive at .25 s, negative at 1 s; in "first": |.125 - .0625| * sqrt(2)
    np.testing.assert_allclose(res.distances["first"][0], np.sqrt(2) * np.array(
        [first(0.5) - first(0.25), first(1.0) - first(0.5)]), rtol=1e-5)
    np.testing.assert_allclose(res.distances["whole"][0, 0], 2 * first(0.25), rtol=1e-4)  # 4 dims, each .0625 apart
    # row 2: the padded positive's last sample is 0; the anchor's is the ramp at 1 s - 1 sample
    last_anchor = first(1.0 - 1 / SR)
    np.testing.assert_allclose(res.distances["last"][1], np.sqrt(2) * np.array(
        [last_anchor, first(1.5 - 1 / SR) - last_anchor]), rtol=1e-4)
    assert res.correct["first"][0] and not res.correct["last"][1]
    assert res.report["groups"][1]["views"]["last"] == {"correct": 0, "accuracy": 0.0,
                                                        "ci95": pytest.approx([0.0, 0.7935], abs=1e-4)}


def test_learned_masks_measure_masked_distances(tmp_path):
    y = np.linspace(-0.5, 0.5, 2 * SR, endpoint=False).astype(np.float32)
    sf.write(str(tmp_path / "ramp.wav"), y, SR, subtype="FLOAT")
    masks = np.array([[1.0, 0.0, 0.5, 0.0], [0.0, 2.0, 0.0, 0.0]], np.float32)
    views = ConditionViews("learned", {"a": (0, 4), "b": (0, 4)}, 4, masks)
    path = write_csv(tmp_path / "t.csv", ["anchor", "positive", "negative", "positive_start", "negative_start"],
                     [["ramp.wav", "ramp.wav", "ramp.wav", "0.5", "0.9"]])
    res = score_triplet_file(path, _ramp_model(views))
    e = np.array([_ramp_model(views).embed(y[int(s * SR):int(s * SR) + SR][None])[0] for s in (0, 0.5, 0.9)])
    for name, m in zip("ab", masks):
        np.testing.assert_allclose(res.distances[name][0], [np.linalg.norm(m * (e[0] - e[1])),
                                                            np.linalg.norm(m * (e[0] - e[2]))], rtol=1e-5)
    assert res.report["model"]["mask_mode"] == "learned"


def test_header_is_read_leniently_and_unknown_columns_are_listed(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("\ufeff Anchor ,POSITIVE,negative,Negative_Start,rating\n"
                    "a.wav,b.wav,c.wav,1.5,4\n\n,,,,\n/abs/d.wav,e.wav,f.wav,,\n")
    rows, bad, info = read_triplet_file(str(path), ["genre"])
    assert info == {"rows": 2, "ignored_columns": ["rating"]} and not bad  # blank lines are not rows
    (line1, r1), (line2, r2) = rows
    assert (line1, line2) == (2, 5)
    assert r1["paths"] == [str(tmp_path / n) for n in ("a.wav", "b.wav", "c.wav")] and r1["starts"] == [0, 0, 1.5]
    assert r2["paths"][0] == "/abs/d.wav" and r2["condition"] is None


def test_readme_dimsim_conversion(tmp_path):
    """The README's command turns a dim-sim-style CSV into a triplet file with the chosen clip as positive."""
    text = open(README).read()
    block = re.search(r"```\n(cd dim-sim && python -c \".*?\n\" )&& dml evaluate", text, re.S)
    assert block, "the dim-sim conversion block is missing from the README"
    command = block.group(1).replace("cd dim-sim && python ", f"{sys.executable} ")
    (tmp_path / "clean-dim-sim.csv").write_text(
        "anchor_id,anchor_start_seconds,song1_id,song1_start_seconds,song2_id,song2_start_seconds,song1_vote\n"
        "TRA,12.0,TRB,3.5,TRC,7.25,1\n"
        "TRD,0.0,TRE,1.0,TRF,2.0,0\n")
    subprocess.run(["bash", "-c", command], cwd=str(tmp_path), check=True, timeout=process_timeout(10))
    rows, bad, info = read_triplet_file(str(tmp_path / "dimsim_triplets.csv"), ["genre"])
    assert not bad and info["ignored_columns"] == []
    audio = tmp_path / "audio"
    assert [(r["paths"], r["starts"], r["condition"]) for _, r in rows] == [
        ([str(audio / "TRA.mp3"), str(audio / "TRB.mp3"), str(audio / "TRC.mp3")], [12.0, 3.5, 7.25], None),
        ([str(audio / "TRD.mp3"), str(audio / "TRF.mp3"), str(audio / "TRE.mp3")], [0.0, 2.0, 1.0], None)]
    (tmp_path / "clean-dim-sim.csv").write_text(
        "anchor_id,anchor_start_seconds,song1_id,song1_start_seconds,song2_id,song2_start_seconds,song1_vote\n"
        "TRA,12.0,TRB,3.5,TRC,7.25,0.6\n")
    failed = subprocess.run(["bash", "-c", command], cwd=str(tmp_path), capture_output=True, text=True,
                            timeout=process_timeout(10))
    assert failed.returncode != 0 and "KeyError" in failed.stderr  # an unexpected vote stops it, loudly


def test_the_exports_tflite_file_scores_like_the_run(model_dirs, audio, tmp_path):
    """--tflite model.tflite (LiteRT) against the run directory's Keras model."""
    here = _place(tmp_path, audio)
    path = write_csv(here / "mine.csv", HEADER, _good_rows())
    run_res, _ = evaluate_triplet_file(model_dirs["run"], path, out_dir=str(tmp_path / "run"), progress=False)
    tfl_res, paths = evaluate_triplet_file(model_dirs["export"], path, tflite="model.tflite", progress=False)
    assert paths["metrics"] == os.path.join(model_dirs["export"], "eval_triplets_mine_model", "triplet_metrics.json")
    assert tfl_res.report["model"]["kind"] == "tflite" and tfl_res.report["model"]["file"].endswith("model.tflite")
    assert tfl_res.report["groups"] == run_res.report["groups"]
    for v in run_res.view_names:
        np.testing.assert_allclose(tfl_res.distances[v], run_res.distances[v], atol=1e-4)
