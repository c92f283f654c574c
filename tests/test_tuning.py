"""`dml tune`: search space and objective validation, a small search and its outputs, resume after a kill,
and a distributed search with one chief and two workers."""

import glob
import json
import os
import signal
import socket
import subprocess
import sys
import time

import keras_tuner
import pytest
import tensorflow as tf

from disentangled_ml.cli import main as dml_main
from disentangled_ml.config import Config, ConfigError
from disentangled_ml.tuning.hypermodel import (DisentangledHyperModel, ObjectiveLogger, SearchSpace,
                                               objective_metric, parse_objective)
from disentangled_ml.tuning.search import PROJECT_NAME, format_table, make_tuner, run_search, summarize
from collections_for_tests import make_prepared, process_timeout, tiny_config

# The plain backbone at width 4 traces and trains in a few seconds: the tests are about
# the search machinery, not the model.
TUNE_OVERRIDES = {"model.width": 4, "model.backbone": "plain", "train.steps_per_epoch": 2, "train.epochs": 1,
                  "data.eval_triplets_per_condition": 8, "data.split_fractions": [0.6, 0.2, 0.2]}
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return make_prepared(tmp_path_factory.mktemp("tune"), TUNE_OVERRIDES)


def _trials(tune_dir):
    """{trial_id: trial.json dict} of a search folder (skips a file caught mid-write)."""
    out = {}
    for path in glob.glob(os.path.join(tune_dir, PROJECT_NAME, "trial_*", "trial.json")):
        try:
            with open(path) as f:
                d = json.load(f)
        except (OSError, json.JSONDecodeError):
            continue
        out[d["trial_id"]] = d
    return out


def _executions(tune_dir, trial_id):
    with open(os.path.join(tune_dir, PROJECT_NAME, f"trial_{trial_id}", "executions.jsonl")) as f:
        return [json.loads(line) for line in f]


# ----------------------------------------------------------------------------------------------
# Space, objective, errors
# ----------------------------------------------------------------------------------------------
def test_search_space_and_objective():
    s = SearchSpace(lambda_range=(0.01, 1.0), lambda_points=5)
    assert s.lambda_grid == (0.0, 0.01, 0.03162, 0.1, 0.3162, 1.0)
    assert SearchSpace(lambda_range=(0.5, 0.5), lambda_points=1, include_zero_lambda=False).lambda_grid == (0.5,)
    cfg = tiny_config()
    assert parse_objective("mean", cfg) == {} and objective_metric({}) == "val_mean_acc"
    assert objective_metric(parse_objective("genre", cfg)) == "val_acc_genre"
    assert objective_metric(parse_objective("track", cfg)) == "val_acc_track"
    w = parse_objective("genre=0.5, mood=1.5", cfg)
    assert w == {"genre": 0.5, "mood": 1.5} and objective_metric(w) == "val_objective"
    logs = {"val_acc_genre": 0.8, "val_acc_mood": 0.4}
    ObjectiveLogger(w).on_epoch_end(0, logs)
    assert logs["val_objective"] == pytest.approx((0.5 * 0.8 + 1.5 * 0.4) / 2.0)

    bad = [
        (dict(lambda_range=(1.0, 0.1)), "empty"),
        (dict(lambda_range=(-0.1, 1.0)), "lambda values must be > 0"),
        (dict(lambda_range=(0.0, 1.0)), "lambda values must be > 0"),
        (dict(margin_range=(-0.1, 0.2)), "margin must be >= 0"),
        (dict(margin_range=(0.3, 0.2)), "empty"),
        (dict(learning_rate_range=(0.0, 0.1)), "learning rates must be > 0"),
        (dict(widths=()), "empty"),
        (dict(widths=(2, 8)), "integers >= 4"),
        (dict(lambda_points=0), "lambda_points"),
        (dict(objective="genre=abc"), "not a number"),
        (dict(objective="genre=-1"), ">= 0"),
        (dict(objective="genre=0,mood=0"), "sum to 0"),
    ]
    for kwargs, message in bad:
        with pytest.raises(ConfigError, match=message):
            SearchSpace(**kwargs)
    with pytest.raises(ConfigError, match=r"unknown condition\(s\) \['timbre'\]"):
        DisentangledHyperModel(cfg, SearchSpace(objective="genre=1,timbre=1"))
    with pytest.raises(ConfigError, match="unknown condition"):
        DisentangledHyperModel(cfg, SearchSpace(objective="danceability"))


def test_config_for_and_tuner_errors(tmp_path):
    cfg = tiny_config(**TUNE_OVERRIDES)
    hm = DisentangledHyperModel(cfg, SearchSpace(widths=(4, 8)))
    hp = keras_tuner.HyperParameters()
    hm.declare_hyperparameters(hp)
    assert {p.name for p in hp.space} == {"lambda", "margin", "learning_rate", "width"}
    hp.values.update({"lambda": 0.0, "margin": 0.25, "learning_rate": 0.002, "width": 8})
    c = hm.config_for(hp)
    assert (c.loss.track_weight, c.loss.margin, c.train.learning_rate, c.model.width) == (0.0, 0.25, 0.002, 8)
    assert c.replace(**{"loss.track_weight": cfg.loss.track_weight, "loss.margin": cfg.loss.margin,
                        "train.learning_rate": cfg.train.learning_rate, "model.width": cfg.model.width}).hash() \
        == cfg.hash()  # nothing else changes
    model = hm.build(hp)
    assert model.cfg.loss.margin == 0.25 and model.cfg.model.width == 8
    # the trial's learning rate is the schedule's peak (the cosine warm-up starts below it)
    schedule = model.optimizer._learning_rate
    peak = schedule.warmup_target if model.cfg.train.lr_schedule == "cosine" and schedule.warmup_target \
        else schedule.initial_learning_rate
    assert float(peak) == pytest.approx(0.002)

    with pytest.raises(ConfigError, match="unknown tuner 'grid'"):
        make_tuner("grid", hm, str(tmp_path / "t"))
    with pytest.raises(ConfigError, match="max_trials=0"):
        make_tuner("random", hm, str(tmp_path / "t"), max_trials=0)
    with pytest.raises(ConfigError, match="do not give max_trials"):
        make_tuner("hyperband", hm, str(tmp_path / "t"), max_trials=3)
    with pytest.raises(ConfigError, match="seed"):
        make_tuner("random", hm, str(tmp_path / "t"), seed=0)
    with pytest.raises(ConfigError, match="max_trials=0"):
        run_search("nowhere", str(tmp_path / "t"), cfg, max_trials=0)
    with pytest.raises(ConfigError, match="needs the chief's address"):
        run_search("nowhere", str(tmp_path / "t"), cfg, role="worker", worker_id=0)
    with pytest.raises(ConfigError, match="unknown condition"):
        run_search("nowhere", str(tmp_path / "t"), cfg, SearchSpace(objective="timbre"))
    with pytest.raises(ConfigError, match="worker_lease_s=0"):
        run_search("nowhere", str(tmp_path / "t"), cfg, worker_lease_s=0)
    with pytest.raises(ConfigError, match="heartbeat_s=nan"):
        run_search("nowhere", str(tmp_path / "t"), cfg, heartbeat_s=float("nan"))


@pytest.mark.parametrize("argv, message", [
    (["--margin-range", "-0.1", "0.2"], "margin must be >= 0"),
    (["--lambda-range", "-1", "1"], "lambda values must be > 0"),
    (["--lambda-range", "1", "0.1"], "MIN > MAX"),
    (["--max-trials", "0"], "give at least 1 trial"),
    (["--objective", "genre=1,timbre=1"], "unknown condition"),
    (["--tuner", "grid"], "invalid choice: 'grid'"),
    (["--widths", "16,x"], "comma-separated integers"),
    (["--chief"], "need --oracle-port"),
])
def test_cli_bad_values(prepared, tmp_path, capsys, argv, message):
    prepared_dir, _, cfg_path = prepared
    with pytest.raises(SystemExit) as e:
        dml_main(["tune", prepared_dir, "--out", str(tmp_path / "t"), "--config", cfg_path] + argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "t" / PROJECT_NAME)  # failed before any trial


# ----------------------------------------------------------------------------------------------
# A search, its outputs, and retraining its best config
# ----------------------------------------------------------------------------------------------
def _hparams_sessions(tensorboard_dir):
    """{run folder name: {hparam: value}} from the HParams session summaries TensorBoard reads."""
    from tensorboard.plugins.hparams import plugin_data_pb2

    sessions, experiment = {}, None
    for path in glob.glob(os.path.join(tensorboard_dir, "**", "events.*"), recursive=True):
        for event in tf.compat.v1.train.summary_iterator(path):
            for v in event.summary.value:
                if v.metadata.plugin_data.plugin_name != "hparams":
                    continue
                d = plugin_data_pb2.HParamsPluginData.FromString(v.metadata.plugin_data.content)
                if d.WhichOneof("data") == "session_start_info":
                    run = os.path.relpath(os.path.dirname(path), tensorboard_dir)
                    sessions[run] = {k: x.number_value for k, x in d.session_start_info.hparams.items()}
                elif d.WhichOneof("data") == "experiment":
                    experiment = d.experiment
    return sessions, experiment


@pytest.mark.slow  # trains or evaluates a model end to end (pytest.ini)
def test_random_search_writes_results_and_best_config(prepared, tmp_path):
    from disentangled_ml.training import train

    prepared_dir, cfg, _ = prepared
    tune = str(tmp_path / "tune")
    space = SearchSpace(objective="genre=0.5,mood=0.5")
    summary = run_search(prepared_dir, tune, cfg, space, tuner="random", max_trials=2, seed=3, verbose=0)
    assert [r.status for r in summary.rows] == ["COMPLETED", "COMPLETED"]
    assert summary.objective == "val_objective"
    for name in ("results.csv", "results.json", "best.json", "search.json", "data/config.json",
                 "data/validation_triplets.csv"):
        assert os.path.isfile(os.path.join(tune, name)), name
    with open(os.path.join(tune, "results.csv")) as f:
        lines = f.read().splitlines()
    assert len(lines) == 3 and lines[0].startswith("trial_id,lambda,margin,learning_rate,width,epochs,objective")

    # The objective is the weighted mean of the two validation accuracies, at the best epoch.
    for r in summary.rows:
        assert r.score == pytest.approx(0.5 * r.metrics["val_acc_genre"] + 0.5 * r.metrics["val_acc_mood"])
        assert r.lam in space.lambda_grid and 0.05 <= r.values["margin"] <= 0.5

    # best.json: the full config of the best trial; retraining with it reproduces the trial's settings.
    best = summary.best
    assert best.score == max(r.score for r in summary.rows)
    best_cfg = Config.from_json(os.path.join(tune, "best.json"))
    assert best_cfg.loss.track_weight == best.values["lambda"]
    assert best_cfg.loss.margin == pytest.approx(best.values["margin"])
    assert best_cfg.train.learning_rate == pytest.approx(best.values["learning_rate"])
    assert (best_cfg.train.epochs, best_cfg.train.steps_per_epoch) == (1, 2)
    shared = Config.from_json(os.path.join(tune, "data", "config.json"))
    assert best_cfg.frontend == shared.frontend and shared.frontend.norm_std != 1.0  # measured mel statistics
    run = str(tmp_path / "retrain")
    result = train(prepared_dir, run, best_cfg, verbose=0)
    assert Config.from_json(os.path.join(run, "config.json")).hash() == best_cfg.hash()
    assert result["epochs_total"] == best_cfg.train.epochs

    # TensorBoard: one run per trial with its hyperparameters, and the experiment's domains and metrics.
    sessions, experiment = _hparams_sessions(os.path.join(tune, "tensorboard"))
    assert set(sessions) == {f"trial_{r.trial_id}" for r in summary.rows}
    for r in summary.rows:
        hp = sessions[f"trial_{r.trial_id}"]
        assert hp["lambda"] == pytest.approx(r.lam) and hp["margin"] == pytest.approx(r.values["margin"])
        assert os.listdir(os.path.join(tune, "tensorboard", f"trial_{r.trial_id}", "validation"))
    assert [h.name for h in experiment.hparam_infos] == ["lambda", "margin", "learning_rate"]
    assert ("epoch_mean_acc", "validation") in {(m.name.tag, m.name.group) for m in experiment.metric_infos}

    table = format_table(summary)
    assert "val_objective" in table and f"*{best.trial_id}" in table

    # Intervals: each trial's genre and mood accuracies are whole counts of the fixed validation triplets, pooled
    # with their Wilson interval (a condition without validation triplets, here mood, is left out); two trials,
    # so the best is compared with the runner-up.
    from disentangled_ml.tuning.search import validation_counts

    counts = validation_counts(tune)
    scored = [c for c in ("genre", "mood") if counts.get(c)]
    assert "genre" in scored
    for r in summary.rows:
        exact = sum(r.metrics[f"val_acc_{c}"] * counts[c] for c in scored)
        assert r.pooled.conditions == tuple(scored) and r.pooled.n == sum(counts[c] for c in scored)
        assert abs(r.pooled.correct - exact) < 1e-3
        assert r.pooled.ci95[0] <= r.pooled.accuracy <= r.pooled.ci95[1]
    assert summary.best_vs_runner_up["runner_up"] == next(r.trial_id for r in summary.rows if r is not best)
    assert "best vs runner-up" in table

    # Same folder, other settings: refused instead of silently mixing two searches.
    with pytest.raises(ConfigError, match=r"other settings \(space.margin_range"):
        run_search(prepared_dir, tune, cfg, SearchSpace(margin_range=(0.1, 0.2)), max_trials=2, seed=3)
    # A finished search can be extended: only the new trial runs.
    extended = run_search(prepared_dir, tune, cfg, space, tuner="random", max_trials=3, seed=3, verbose=0)
    assert [r.trial_id for r in extended.completed] == ["0", "1", "2"]
    assert [(r.values, r.score) for r in extended.rows[:2]] == [(r.values, r.score) for r in summary.rows]


# ----------------------------------------------------------------------------------------------
# Resume after a kill
# ----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_search_resumes_after_kill(prepared, tmp_path):
    prepared_dir, _, cfg_path = prepared
    tune = str(tmp_path / "tune")
    cmd = [sys.executable, "-m", "disentangled_ml", "tune", prepared_dir, "--out", tune, "--config", cfg_path,
           "--max-trials", "3", "--seed", "7", "--quiet"]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + process_timeout(180)
        first = None
        while time.time() < deadline and proc.poll() is None and first is None:
            done = [t for t in _trials(tune).values() if t["status"] == "COMPLETED"]
            first = done[0] if done else None
            time.sleep(0.2)
        assert proc.poll() is None, "the search ended before it could be interrupted: " + \
            proc.stderr.read().decode()[-2000:]
        assert first is not None, "no trial completed within 180 s"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    first_json = os.path.join(tune, PROJECT_NAME, f"trial_{first['trial_id']}", "trial.json")
    mtime = os.path.getmtime(first_json)
    before = _trials(tune)
    assert len([t for t in before.values() if t["status"] == "COMPLETED"]) < 3

    out = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=process_timeout(300))
    assert out.returncode == 0, out.stderr[-3000:]
    after = _trials(tune)
    assert sorted(after) == ["0", "1", "2"] and all(t["status"] == "COMPLETED" for t in after.values())
    # The trial finished before the kill was not rerun: same file, same score, one execution.
    assert os.path.getmtime(first_json) == mtime
    assert after[first["trial_id"]]["score"] == first["score"]
    assert [e["event"] for e in _executions(tune, first["trial_id"])] == ["begin", "end"]
    # Every trial has distinct hyperparameters (the oracle's state was restored, not restarted).
    values = [json.dumps(t["hyperparameters"]["values"], sort_keys=True) for t in after.values()]
    assert len(set(values)) == 3
    assert "3 of 3 trial(s) completed" in out.stdout


# ----------------------------------------------------------------------------------------------
# Distributed: one chief, two workers
# ----------------------------------------------------------------------------------------------
def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_all(procs, logs):
    """Kill what still runs of ``procs`` and close their log files."""
    for p in procs.values():
        if p.poll() is None:
            p.kill()
            p.wait()
    for f in logs.values():
        f.close()


@pytest.mark.slow
def test_distributed_chief_and_two_workers(prepared, tmp_path):
    prepared_dir, _, cfg_path = prepared
    tune = str(tmp_path / "tune")
    port = _free_port()
    base = [sys.executable, "-m", "disentangled_ml", "tune", prepared_dir, "--out", tune, "--config", cfg_path,
            "--max-trials", "4", "--seed", "11", "--quiet", "--oracle-ip", "127.0.0.1", "--oracle-port", str(port),
            "--connect-timeout", "120"]
    logs = {name: open(tmp_path / f"{name}.log", "w+") for name in ("chief", "worker0", "worker1")}
    procs = {}
    try:
        procs["chief"] = subprocess.Popen(base + ["--chief"], env=ENV, stdout=logs["chief"], stderr=subprocess.STDOUT)
        for i in (0, 1):
            procs[f"worker{i}"] = subprocess.Popen(base + ["--worker", str(i)], env=ENV, stdout=logs[f"worker{i}"],
                                                   stderr=subprocess.STDOUT)
        deadline = time.time() + process_timeout(300)
        for name, p in procs.items():
            p.wait(timeout=max(1, deadline - time.time()))
        for name, p in procs.items():
            logs[name].seek(0)
            assert p.returncode == 0, f"{name} failed:\n" + logs[name].read()[-3000:]
    finally:
        _stop_all(procs, logs)

    trials = _trials(tune)
    assert sorted(trials) == ["0", "1", "2", "3"]
    assert all(t["status"] == "COMPLETED" for t in trials.values())
    ran_by = {}
    for trial_id in trials:
        events = _executions(tune, trial_id)
        assert [e["event"] for e in events] == ["begin", "end"], (trial_id, events)  # ran exactly once
        ran_by[trial_id] = events[0]["tuner_id"]
    assert set(ran_by.values()) <= {"tuner0", "tuner1"}  # workers train; the chief does not
    # The chief's oracle holds every trial, and its summary (results.csv, best.json) covers all four.
    with open(os.path.join(tune, PROJECT_NAME, "oracle.json")) as f:
        oracle = json.load(f)
    assert sorted(oracle["end_order"]) == ["0", "1", "2", "3"]
    s = summarize(tune, write=False)
    assert len(s.completed) == 4 and os.path.isfile(os.path.join(tune, "best.json"))
    out = subprocess.run([sys.executable, "-m", "disentangled_ml", "tune", "--summary", tune], env=ENV,
                         capture_output=True, text=True, timeout=process_timeout(120))
    assert out.returncode == 0, out.stderr[-2000:]
    assert "4 of 4 trial(s) completed" in out.stdout


@pytest.mark.slow
def test_distributed_search_survives_a_killed_worker(prepared, tmp_path):
    # worker1 is killed while it trains trial 0; after the lease the chief puts that trial back in
    # the queue, worker0 (started only then) reruns it and trains trial 1, and the chief exits
    # instead of waiting for worker1 forever.
    prepared_dir, cfg, _ = prepared
    cfg_path = str(tmp_path / "slower.json")
    cfg.replace(**{"train.steps_per_epoch": 40}).to_json(cfg_path)  # trials of several seconds
    tune = str(tmp_path / "tune")
    port = _free_port()
    base = [sys.executable, "-m", "disentangled_ml", "tune", prepared_dir, "--out", tune, "--config", cfg_path,
            "--max-trials", "2", "--seed", "5", "--quiet", "--oracle-ip", "127.0.0.1", "--oracle-port", str(port),
            "--connect-timeout", "120", "--heartbeat", "0.5", "--worker-lease", "4"]
    logs = {name: open(tmp_path / f"{name}.log", "w+") for name in ("chief", "worker0", "worker1")}
    procs = {}

    def wait_for(condition, what, timeout_s=240):
        deadline = time.time() + process_timeout(timeout_s)
        while not condition():
            for name, p in procs.items():
                if p.poll() is not None and not (name == "worker1" and p.returncode == -signal.SIGKILL):
                    logs[name].seek(0)
                    pytest.fail(f"{name} ended ({p.returncode}) while waiting for {what}:\n{logs[name].read()[-3000:]}")
            assert time.time() < deadline, f"timed out waiting for {what}"
            time.sleep(0.1)

    def chief_log():
        with open(tmp_path / "chief.log") as f:
            return f.read()

    try:
        procs["chief"] = subprocess.Popen(base + ["--chief"], env=ENV, stdout=logs["chief"], stderr=subprocess.STDOUT)
        procs["worker1"] = subprocess.Popen(base + ["--worker", "1"], env=ENV, stdout=logs["worker1"],
                                            stderr=subprocess.STDOUT)
        began = os.path.join(tune, PROJECT_NAME, "trial_0", "executions.jsonl")
        wait_for(lambda: os.path.isfile(began) and os.path.getsize(began) > 0, "worker1 to begin trial 0")
        procs["worker1"].kill()
        procs["worker1"].wait()
        wait_for(lambda: "goes back to the queue" in chief_log(), "the chief to release trial 0")
        procs["worker0"] = subprocess.Popen(base + ["--worker", "0"], env=ENV, stdout=logs["worker0"],
                                            stderr=subprocess.STDOUT)
        for name in ("worker0", "chief"):
            procs[name].wait(timeout=process_timeout(240))
            logs[name].seek(0)
            assert procs[name].returncode == 0, f"{name} failed:\n" + logs[name].read()[-3000:]
    finally:
        _stop_all(procs, logs)

    trials = _trials(tune)
    assert sorted(trials) == ["0", "1"] and all(t["status"] == "COMPLETED" for t in trials.values()), trials
    runs = [(e["event"], e["tuner_id"]) for e in _executions(tune, "0")]
    assert runs == [("begin", "tuner1"), ("begin", "tuner0"), ("end", "tuner0")], runs
    assert [(e["event"], e["tuner_id"]) for e in _executions(tune, "1")] == [("begin", "tuner0"), ("end", "tuner0")]
    # worker0's trials outlast the lease; its heartbeats kept them
    took = [e["time"] for e in _executions(tune, "1")]
    assert took[1] - took[0] > 4, took
    log = chief_log()
    assert "no word from tuner1" in log and "no word from tuner0" not in log, log[-3000:]
