"""Resumable, distributable keras-tuner search over lambda, margin and learning rate (``dml tune``).

A search directory holds::

    TUNE_DIR/
      search.json            tuner, max_trials, seed and SearchSpace of the search
      data/                  the shared run data of every trial (prepare_run): config.json with the
                             measured mel statistics, splits.csv, validation/test triplets
      search/                keras-tuner's project: oracle.json, tuner*.json and one
        trial_<id>/          folder per trial: trial.json (values, metrics, status),
                             checkpoint.weights.h5 (best epoch), executions.jsonl (who ran it, when)
      tensorboard/           HParams experiment (hyperparameters vs validation metrics) and
        trial_<id>/          one run per trial: hparams, train/ and validation/ scalars
      results.csv            one row per trial (written when the search ends, or by --summary), with
                             the validation accuracy pooled over the objective's triplets and its
                             95 % Wilson interval (val_pooled_acc, val_pooled_ci95_low/high, val_triplets)
      results.json           the same table with the search settings, the best trial, and whether it
                             is shown better than the runner-up (best_vs_runner_up)
      best.json              the best trial's full Config:
                             ``dml train PREPARED --out RUN --config TUNE_DIR/best.json``
                             retrains it (same hyperparameters, epochs and steps per epoch)

Intervals: every trial is scored on the same fixed validation triplets
(``data/validation_triplets.csv``), so its accuracy over the triplets of the objective's conditions
(each condition's ``val_acc_<c>`` at the best epoch times its triplet count, summed) is a proportion with
a Wilson interval. The objective itself is a mean over conditions; it equals this pooled accuracy when
the objective is one condition, or the mean over conditions with as many triplets each (the default,
``data.eval_triplets_per_condition``); a weighted objective pools its conditions unweighted. A paired
test of the best trial against the runner-up (exact McNemar, as ``dml evaluate`` does) would need both
trials' per-triplet validation outcomes, which keras-tuner does not keep (only each metric's value;
re-scoring the two trials' ``checkpoint.weights.h5`` on the validation triplets would give them, and
is not done here). So the summary compares the two intervals: overlapping
intervals mean "not shown different", which is not "the same"; non-overlapping ones are a conservative
sign of a real difference.

Resume: rerun the same command. keras-tuner reloads the oracle from ``search/``
(``overwrite=False``); finished trials are kept, and the trial that was running when
the search stopped is run again from its start under the same id.

Distributed: one chief (``role="chief"``) runs the oracle as a gRPC server and trains
nothing; any number of workers (``role="worker"``, ids 0, 1, ...) ask it for trials and
train them. All of them must see the same TUNE_DIR (one machine, or a shared file
system): the data is prepared once under a file lock, and every trial writes its own
folder. keras-tuner reads the role from ``KERASTUNER_TUNER_ID`` / ``KERASTUNER_ORACLE_IP`` /
``KERASTUNER_ORACLE_PORT``; :func:`run_search` sets them for the role it is given.

A worker that dies does not stall the search: while a worker trains a trial it pings
the chief every ``heartbeat_s`` (default 10 s); when the chief has not heard from a
worker for ``worker_lease_s`` (default 600 s) it puts that worker's trial back in
keras-tuner's retry queue, where the next worker that asks for a trial (another one,
or the same id restarted) runs it again from its start, and it stops waiting for that
worker before it exits. keras-tuner alone keeps the trial assigned to the dead worker's
id and the chief waits for it forever. Keep the lease well above the heartbeat: a
live worker whose trial was given away (e.g. behind a network partition longer than
the lease) would still finish and report it.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import glob
import json
import logging
import math
import os
import shutil
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Tuple

import keras
import keras_tuner

from disentangled_ml.config import Config, ConfigError
from disentangled_ml.evaluation.metrics import wilson_interval
from disentangled_ml.run_directory import RunDirectory
from disentangled_ml.tuning.hypermodel import (HP_LAMBDA, HP_LEARNING_RATE, HP_MARGIN, HP_WIDTH, HYPERBAND_EPOCHS,
                                               DisentangledHyperModel, SearchSpace, config_from_values,
                                               objective_metric, parse_objective)

__all__ = ["run_search", "summarize", "format_table", "make_tuner", "SearchSummary", "TrialRow", "TUNERS",
           "PROJECT_NAME", "PooledAccuracy", "validation_counts", "objective_conditions", "pooled_accuracy",
           "compare_best_with_runner_up"]

log = logging.getLogger(__name__)

TUNERS = ("random", "bayesian", "hyperband")
PROJECT_NAME = "search"  # fixed, so a rerun finds (and resumes) the same keras-tuner project
ROLES = (None, "chief", "worker")
HEARTBEAT_S = 10.0  # how often a worker pings the chief while it trains a trial
WORKER_LEASE_S = 600.0  # silence after which the chief gives a worker's trial to another worker
HYPERBAND_FACTOR = 3
_ENV = ("KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT")


def _shared_run(tune_dir: str) -> RunDirectory:
    """``TUNE_DIR/data``: the run directory every trial shares (``prepare_run``: config.json with the
    measured mel statistics, splits.csv, the fixed validation and test triplets)."""
    return RunDirectory(os.path.join(tune_dir, "data"))


# ----------------------------------------------------------------------------------------------
# The tuner
# ----------------------------------------------------------------------------------------------
class _TunerMixin:
    """What every tuner of this module adds to keras-tuner's.

    * state is saved before the first trial, so a search killed during its first
      trial resumes too (keras-tuner itself only saves after a trial ends);
    * TensorBoard: each trial logs to ``tensorboard/trial_<id>`` with its effective
      hyperparameters (``lambda``, ``margin``, ...) as HParams, instead of
      keras-tuner's ``<log_dir>/<id>/execution0``; a retried trial starts a clean run;
    * ``executions.jsonl`` in each trial folder records which tuner ran it;
    * the chief serves the oracle with a 1 s poll for the end of the search
      (keras-tuner's own server sleeps 20 s at a time) and a clear error if the port
      is taken.
    """

    tensorboard_dir: str
    heartbeat_s: float = HEARTBEAT_S  # a worker's ping interval (see the module notes)
    worker_lease_s: float = WORKER_LEASE_S  # the chief's patience with a silent worker
    _heartbeat: Optional["_Heartbeat"] = None

    def on_search_begin(self):
        super().on_search_begin()
        self.save()

    def _configure_tensorboard_dir(self, callbacks, trial, execution=0):
        from tensorboard.plugins.hparams import api as hp_api

        logdir = os.path.join(self.tensorboard_dir, f"trial_{trial.trial_id}")
        for cb in list(callbacks):
            if isinstance(cb, keras.callbacks.TensorBoard):
                if execution == 0 and os.path.isdir(logdir):
                    shutil.rmtree(logdir)  # an interrupted earlier run of this trial
                cb.log_dir = logdir
                callbacks.append(hp_api.KerasCallback(writer=logdir,
                                                      hparams=self.hypermodel.hparams_values(trial.hyperparameters),
                                                      trial_id=f"trial_{trial.trial_id}"))

    def _record_execution(self, trial, event: str) -> None:
        line = {"event": event, "tuner_id": self.tuner_id, "pid": os.getpid(), "host": socket.gethostname(),
                "time": time.time(), "status": getattr(trial, "status", None)}
        with open(os.path.join(self.get_trial_dir(trial.trial_id), "executions.jsonl"), "a") as f:
            f.write(json.dumps(line) + "\n")

    def on_trial_begin(self, trial):
        super().on_trial_begin(trial)
        self._record_execution(trial, "begin")
        if os.environ.get("KERASTUNER_ORACLE_IP"):  # a distributed worker: the oracle is the chief's
            self._heartbeat = _Heartbeat(self.oracle, trial.trial_id, self.heartbeat_s)

    def on_trial_end(self, trial):
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None
        self._record_execution(trial, "end")
        super().on_trial_end(trial)

    def search(self, *fit_args, **fit_kwargs):
        from keras_tuner.src.distribute import utils as dist_utils

        if dist_utils.is_chief_oracle():
            if "verbose" in fit_kwargs:
                self.oracle.verbose = fit_kwargs["verbose"]
            self.save()
            _serve_oracle(self.oracle, os.environ["KERASTUNER_ORACLE_IP"], os.environ["KERASTUNER_ORACLE_PORT"],
                          lease_s=self.worker_lease_s)
            return
        super().search(*fit_args, **fit_kwargs)


class _RandomSearch(_TunerMixin, keras_tuner.RandomSearch):
    pass


class _BayesianOptimization(_TunerMixin, keras_tuner.BayesianOptimization):
    pass


class _Hyperband(_TunerMixin, keras_tuner.Hyperband):
    pass


class _Heartbeat:
    """A daemon thread that pings the chief (``GetTrial``) every ``interval_s`` while a trial trains."""

    def __init__(self, oracle_client, trial_id: str, interval_s: float):
        self._stop = threading.Event()

        def beat():
            while not self._stop.wait(interval_s):
                try:
                    oracle_client.get_trial(trial_id)
                except Exception as e:  # a missed beat is harmless; the lease is many beats long
                    log.debug("heartbeat for trial %s failed: %s", trial_id, e)

        self._thread = threading.Thread(target=beat, name=f"tuner-heartbeat-{trial_id}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)


def _lease_servicer(oracle):
    """keras-tuner's ``OracleServicer`` that also records when each worker (tuner id) was last heard."""
    from keras_tuner.src.distribute.oracle_chief import OracleServicer

    class LeaseServicer(OracleServicer):
        def __init__(self, oracle):
            super().__init__(oracle)
            self.last_heard: Dict[str, float] = {}

        def _heard_about(self, trial_id: str) -> None:
            for tuner_id, trial in list(self.oracle.ongoing_trials.items()):
                if trial.trial_id == trial_id:
                    self.last_heard[tuner_id] = time.monotonic()

        def CreateTrial(self, request, context):
            self.last_heard[request.tuner_id] = time.monotonic()
            return super().CreateTrial(request, context)

        def UpdateTrial(self, request, context):
            self._heard_about(request.trial_id)
            return super().UpdateTrial(request, context)

        def EndTrial(self, request, context):
            self._heard_about(request.trial.trial_id)
            return super().EndTrial(request, context)

        def GetTrial(self, request, context):
            self._heard_about(request.trial_id)
            return super().GetTrial(request, context)

    return LeaseServicer(oracle)


@keras_tuner.synchronized
def _release_silent_workers(oracle, last_heard: Dict[str, float], lease_s: float) -> List[str]:
    """Requeue the trials of workers silent for more than ``lease_s`` and stop waiting for them.

    A worker the chief has never heard from in this process (e.g. one that held a trial
    when an earlier chief stopped) gets a lease from now. Returns the released tuner ids.
    """
    now = time.monotonic()
    released = []
    for tuner_id in sorted(set(oracle.tuner_ids) | set(oracle.ongoing_trials)):
        silent = now - last_heard.setdefault(tuner_id, now)
        if silent <= lease_s:
            continue
        trial = oracle.ongoing_trials.pop(tuner_id, None)
        oracle.tuner_ids.discard(tuner_id)
        last_heard.pop(tuner_id, None)
        if trial is not None:
            oracle._retry_queue.append(trial.trial_id)  # create_trial hands these out first
            log.warning("chief: no word from %s for %.0f s; trial %s goes back to the queue for the next worker",
                        tuner_id, silent, trial.trial_id)
        else:
            log.warning("chief: no word from %s for %.0f s; not waiting for it any more", tuner_id, silent)
        released.append(tuner_id)
    if released:
        oracle.save()
    return released


def _serve_oracle(oracle, ip: str, port: str, poll_s: float = 1.0, lease_s: float = WORKER_LEASE_S) -> None:
    """Serve ``oracle`` over gRPC until every trial has ended and every worker was told to stop.

    Workers silent for more than ``lease_s`` seconds are released (:func:`_release_silent_workers`).
    """
    from concurrent import futures

    import grpc
    from keras_tuner.src import protos
    from keras_tuner.src.distribute.oracle_chief import exit_chief

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    servicer = _lease_servicer(oracle)
    protos.get_service_grpc().add_OracleServicer_to_server(servicer, server)
    try:
        bound = server.add_insecure_port(f"{ip}:{port}")
    except RuntimeError as e:
        bound, why = 0, str(e)
    else:
        why = ""
    if not bound:
        raise ConfigError(f"the chief cannot listen on {ip}:{port} ({why or 'bind failed'}); is the port taken "
                          "(another chief?) or the address not this machine's? Pick another --oracle-port.")
    server.start()
    log.info("chief: oracle listening on %s:%s", ip, port)
    try:
        while not (servicer.stop_triggered and exit_chief(oracle)):
            time.sleep(poll_s)
            _release_silent_workers(oracle, servicer.last_heard, lease_s)
    finally:
        server.stop(grace=2.0)


def make_tuner(tuner: str, hypermodel: DisentangledHyperModel, directory: str, max_trials: Optional[int] = 10,
               seed: int = 1, tensorboard_dir: Optional[str] = None):
    """A keras-tuner tuner over ``hypermodel``'s space, resuming any project in ``directory``.

    Parameters
    ----------
    tuner : {"random", "bayesian", "hyperband"}
        ``bayesian`` starts with ``max(2, min(3 * dims, max_trials // 2))`` random
        trials (keras-tuner's default, 3 per dimension, would leave a short search
        random throughout). ``hyperband`` sets its own number of trials from
        ``train.epochs`` (its max epochs) and factor 3, so ``max_trials`` must be None.
    seed : int
        Oracle seed, >= 1 (keras-tuner replaces 0 by a random seed).
    """
    if tuner not in TUNERS:
        raise ConfigError(f"unknown tuner {tuner!r}; choose one of {list(TUNERS)}.")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 1:
        raise ConfigError(f"seed={seed!r} is invalid: expected an integer >= 1 (keras-tuner treats 0 as 'random').")
    common = dict(hypermodel=hypermodel, objective=hypermodel.objective, seed=seed, directory=directory,
                  project_name=PROJECT_NAME, overwrite=False, max_retries_per_trial=0,
                  max_consecutive_failed_trials=3)
    if tuner == "hyperband":
        if max_trials is not None:
            raise ConfigError("hyperband chooses its number of trials from train.epochs (its maximum epochs per "
                              f"trial) and factor {HYPERBAND_FACTOR}; do not give max_trials with it.")
        if hypermodel.base_config.train.epochs < 2:
            raise ConfigError("hyperband needs train.epochs >= 2 (it trains trials for a growing number of epochs).")
        t = _Hyperband(max_epochs=hypermodel.base_config.train.epochs, factor=HYPERBAND_FACTOR, **common)
    else:
        if isinstance(max_trials, bool) or not isinstance(max_trials, int) or max_trials < 1:
            raise ConfigError(f"max_trials={max_trials!r} is invalid: expected an integer >= 1.")
        if tuner == "random":
            t = _RandomSearch(max_trials=max_trials, **common)
        else:
            dims = 3 + (hypermodel.space.widths is not None)
            t = _BayesianOptimization(max_trials=max_trials, num_initial_points=max(2, min(3 * dims, max_trials // 2)),
                                      **common)
    t.tensorboard_dir = tensorboard_dir or os.path.join(directory, "tensorboard")
    return t


# ----------------------------------------------------------------------------------------------
# Running a search
# ----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _file_lock(path: str) -> Iterator[None]:
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def _role_environment(role: Optional[str], worker_id: Optional[int], ip: Optional[str],
                      port: Optional[int]) -> Iterator[None]:
    """Set keras-tuner's distribution variables for the duration of a search (restored after)."""
    saved = {k: os.environ.get(k) for k in _ENV}
    try:
        if role is not None:
            os.environ["KERASTUNER_TUNER_ID"] = "chief" if role == "chief" else f"tuner{worker_id}"
            os.environ["KERASTUNER_ORACLE_IP"] = str(ip)
            os.environ["KERASTUNER_ORACLE_PORT"] = str(port)
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _check_role(role, worker_id, oracle_ip, oracle_port) -> None:
    if role not in ROLES:
        raise ConfigError(f"unknown role {role!r}; expected None (one process), 'chief' or 'worker'.")
    if role is None:
        if worker_id is not None:
            raise ConfigError("worker_id is only meaningful with role='worker'.")
        return
    if role == "worker" and (isinstance(worker_id, bool) or not isinstance(worker_id, int) or worker_id < 0):
        raise ConfigError(f"a worker needs an integer id >= 0, got {worker_id!r}.")
    if role == "chief" and worker_id is not None:
        raise ConfigError("the chief takes no worker id.")
    if not oracle_ip:
        raise ConfigError(f"role {role!r} needs the chief's address (oracle_ip, e.g. 127.0.0.1).")
    if isinstance(oracle_port, bool) or not isinstance(oracle_port, int) or not 1 <= oracle_port <= 65535:
        raise ConfigError(f"oracle_port={oracle_port!r} is invalid: expected a TCP port 1..65535.")


def _wait_for_chief(ip: str, port: int, timeout_s: float) -> None:
    import grpc

    channel = grpc.insecure_channel(f"{ip}:{port}")
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout_s)
    except grpc.FutureTimeoutError:
        raise ConfigError(f"no chief answered at {ip}:{port} within {timeout_s:.0f} s; start `dml tune ... --chief "
                          f"--oracle-port {port}` first (or the search has already ended).") from None
    finally:
        channel.close()


def _search_settings(tuner: str, max_trials: Optional[int], seed: int, space: SearchSpace) -> Dict[str, Any]:
    return {"tuner": tuner, "max_trials": max_trials, "seed": seed, "project_name": PROJECT_NAME,
            "space": space.to_dict()}


def _flat(settings: Dict[str, Any]) -> Dict[str, Any]:
    out = {k: v for k, v in settings.items() if k != "space"}
    out.update({f"space.{k}": v for k, v in settings.get("space", {}).items()})
    return out


def _write_or_check_settings(tune_dir: str, settings: Dict[str, Any]) -> None:
    """Save the search settings, or check that a resumed search uses the same ones.

    ``max_trials`` may change between runs (a finished search can be extended);
    anything else would mix two different searches in one oracle.
    """
    path = os.path.join(tune_dir, "search.json")
    if os.path.isfile(path):
        with open(path) as f:
            saved = _flat(json.load(f))
        given = _flat(settings)
        diff = [f"{k}: {saved.get(k)!r} (saved) vs {given.get(k)!r} (given)" for k in sorted(set(saved) | set(given))
                if k != "max_trials" and saved.get(k) != given.get(k)]
        if diff:
            raise ConfigError(f"{tune_dir} holds a search with other settings ({'; '.join(diff)}); resume it with "
                              "the same options, or give a new --out.")
    with open(path, "w") as f:
        json.dump(settings, f, indent=2, sort_keys=True)
        f.write("\n")


def _write_hparams_experiment(tensorboard_dir: str, hypermodel: DisentangledHyperModel) -> None:
    """The experiment-level HParams summary (domains and metrics), written once."""
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hp_api

    os.makedirs(tensorboard_dir, exist_ok=True)
    marker = os.path.join(tensorboard_dir, ".hparams_experiment")
    if os.path.exists(marker):
        return
    writer = tf.summary.create_file_writer(tensorboard_dir)
    with writer.as_default():
        hp_api.hparams_config(hparams=list(hypermodel.hparams_domains().values()),
                              metrics=hypermodel.hparams_metrics())
    writer.close()
    open(marker, "w").close()


def run_search(prepared_dir: str, tune_dir: str, base_config: Optional[Config] = None,
               space: Optional[SearchSpace] = None, tuner: str = "random", max_trials: Optional[int] = 10,
               seed: int = 1, role: Optional[str] = None, worker_id: Optional[int] = None,
               oracle_ip: Optional[str] = None, oracle_port: Optional[int] = None, verbose: int = 1,
               connect_timeout_s: float = 600.0, heartbeat_s: float = HEARTBEAT_S,
               worker_lease_s: float = WORKER_LEASE_S) -> "SearchSummary":
    """Run (or resume, or join) a hyperparameter search.

    Parameters
    ----------
    prepared_dir : str
        Folder written by ``dml prepare``.
    tune_dir : str
        Search folder (see the module notes); an existing search there is resumed.
    base_config : Config, optional
        Everything not searched: epochs (``train.epochs``) and steps per epoch of
        every trial, batch size, data, frontend, schedule. Default: the prepared
        collection's config. On resume, the config saved in ``TUNE_DIR/data`` wins.
    space : SearchSpace, optional
        Default :class:`SearchSpace()`.
    tuner : {"random", "bayesian", "hyperband"}
    max_trials : int or None
        Trials to run in total (counting those of an earlier, interrupted run);
        must be None for hyperband.
    seed : int
        Oracle seed (>= 1): the same seed draws the same hyperparameters.
    role : {None, "chief", "worker"}
        None runs the whole search in this process. A chief serves the oracle at
        ``oracle_ip:oracle_port`` and returns when every trial has ended; a worker
        (``worker_id`` >= 0) trains the trials the chief hands out.
    verbose : int
        0 silent, 1 keras-tuner's trial display and Keras progress bars, 2 one line
        per epoch.
    connect_timeout_s : float
        How long a worker waits for the chief to answer before giving up, in seconds.
    heartbeat_s : float
        A worker's ping interval while it trains a trial, in seconds.
    worker_lease_s : float
        The chief's patience with a silent worker, in seconds (see the module notes);
        keep it several heartbeats long.

    Returns
    -------
    SearchSummary
        The trials found in ``tune_dir`` when this call returns. The chief and a
        one-process search also write results.csv, results.json and best.json;
        a worker writes nothing (the chief does, once every worker is done).

    Raises
    ------
    ConfigError
        on a bad space, objective, tuner, trial count, role or port, or a
        ``tune_dir`` that holds a search with other settings.
    """
    from disentangled_ml.training import prepare_run

    space = space or SearchSpace()
    if tuner not in TUNERS:
        raise ConfigError(f"unknown tuner {tuner!r}; choose one of {list(TUNERS)}.")
    if tuner != "hyperband" and (isinstance(max_trials, bool) or not isinstance(max_trials, int) or max_trials < 1):
        raise ConfigError(f"max_trials={max_trials!r} is invalid: expected an integer >= 1.")
    _check_role(role, worker_id, oracle_ip, oracle_port)
    for name, value in (("heartbeat_s", heartbeat_s), ("worker_lease_s", worker_lease_s)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ConfigError(f"{name}={value!r} is invalid: expected a positive number of seconds.")
    if base_config is not None:
        parse_objective(space.objective, base_config)  # fail before any data work

    os.makedirs(tune_dir, exist_ok=True)
    settings = _search_settings(tuner, max_trials, seed, space)
    # The chief and the workers may start together: the first prepares, the others read.
    with _file_lock(os.path.join(tune_dir, ".lock")):
        _write_or_check_settings(tune_dir, settings)
        data = prepare_run(prepared_dir, _shared_run(tune_dir).path, base_config)
    hypermodel = DisentangledHyperModel(data.config, space, run_data=data)
    if role == "worker":
        _wait_for_chief(oracle_ip, oracle_port, connect_timeout_s)

    tensorboard_dir = os.path.join(tune_dir, "tensorboard")
    with _role_environment(role, worker_id, oracle_ip, oracle_port):
        t = make_tuner(tuner, hypermodel, tune_dir, None if tuner == "hyperband" else max_trials, seed,
                       tensorboard_dir)
        t.heartbeat_s, t.worker_lease_s = float(heartbeat_s), float(worker_lease_s)
        if role != "worker":
            _write_hparams_experiment(tensorboard_dir, hypermodel)
        callbacks = hypermodel.callbacks(verbose=1 if verbose else 0) + [
            keras.callbacks.TensorBoard(tensorboard_dir, update_freq="epoch", write_graph=False)]
        t.search(callbacks=callbacks, verbose=verbose)
    return summarize(tune_dir, write=role != "worker")


# ----------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------
@dataclass
class TrialRow:
    """One trial of a search, as read from its ``trial.json``."""

    trial_id: str
    status: str
    values: Dict[str, Any]  # the trial's hyperparameter values (keras-tuner names)
    score: Optional[float]  # the objective at the best epoch
    best_step: Optional[int]  # that epoch (0-based)
    metrics: Dict[str, float] = field(default_factory=dict)  # every metric at the best epoch
    epochs: Optional[int] = None
    message: str = ""
    pooled: Optional["PooledAccuracy"] = None  # set by summarize() when the validation triplets are known

    @property
    def lam(self) -> Optional[float]:
        return self.values.get(HP_LAMBDA)

    def as_dict(self, width: int) -> Dict[str, Any]:
        return {"trial_id": self.trial_id, "lambda": self.values.get(HP_LAMBDA),
                "margin": self.values.get(HP_MARGIN), "learning_rate": self.values.get(HP_LEARNING_RATE),
                "width": int(self.values.get(HP_WIDTH, width)), "epochs": self.epochs, "objective": self.score,
                "best_epoch": None if self.best_step is None else self.best_step + 1, "status": self.status,
                **{k: v for k, v in sorted(self.metrics.items()) if k.startswith("val_")},
                "val_pooled_acc": None if self.pooled is None else self.pooled.accuracy,
                "val_pooled_ci95_low": None if self.pooled is None else self.pooled.ci95[0],
                "val_pooled_ci95_high": None if self.pooled is None else self.pooled.ci95[1],
                "val_triplets": None if self.pooled is None else self.pooled.n,
                "message": self.message}


@dataclass(frozen=True)
class PooledAccuracy:
    """A trial's validation accuracy over the objective's triplets, and its 95 % Wilson interval.

    Attributes:
        correct: triplets ordered correctly (sum over the conditions of ``round(val_acc_c * n_c)``).
        n: the triplets (sum of ``n_c``).
        conditions: the conditions pooled.
    """

    correct: int
    n: int
    conditions: Tuple[str, ...]

    @property
    def accuracy(self) -> float:
        return self.correct / self.n

    @property
    def ci95(self) -> Tuple[float, float]:
        return wilson_interval(self.correct, self.n)


def validation_counts(tune_dir: str) -> Optional[Dict[str, int]]:
    """``{condition: triplets}`` of ``TUNE_DIR/data/validation_triplets.csv``; None without the file."""
    path = _shared_run(tune_dir).eval_triplets_path("validation")
    if not os.path.isfile(path):
        return None
    counts: Dict[str, int] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            counts[row["condition"]] = counts.get(row["condition"], 0) + 1
    return counts


def objective_conditions(weights: Dict[str, float], base: Config, counts: Dict[str, int]) -> List[str]:
    """The conditions the objective scores (those with validation triplets): every label condition for
    ``"mean"`` (what ``val_mean_acc`` averages; not the track triplets), else those with a positive weight."""
    names = list(base.conditions.names) if not weights else [c for c, w in weights.items() if w > 0]
    return [c for c in names if counts.get(c, 0) > 0]


def pooled_accuracy(metrics: Dict[str, float], conditions: List[str], counts: Dict[str, int]
                    ) -> Optional[PooledAccuracy]:
    """:class:`PooledAccuracy` of one trial's best-epoch ``val_acc_<c>``; None when one is missing.

    ``round``: a validation accuracy is (correct / n_c) in float32, so ``acc * n_c`` is within
    ``1e-7 * n_c`` of the integer count.
    """
    if not conditions or any(f"val_acc_{c}" not in metrics for c in conditions):
        return None
    correct = sum(int(round(metrics[f"val_acc_{c}"] * counts[c])) for c in conditions)
    return PooledAccuracy(correct, sum(counts[c] for c in conditions), tuple(conditions))


def compare_best_with_runner_up(best: "TrialRow", runner_up: Optional["TrialRow"]) -> Optional[Dict[str, Any]]:
    """Whether the best trial is shown different from the runner-up, by their pooled 95 % intervals.

    No paired test: a search keeps no per-triplet outcomes (module notes).

    Returns:
        ``{"best", "runner_up" (trial ids), "best_ci95", "runner_up_ci95", "overlap": bool, "method",
        "verdict": str}``; None without a runner-up or without the intervals of both.
    """
    if runner_up is None or best.pooled is None or runner_up.pooled is None:
        return None
    (lo_b, hi_b), (lo_r, hi_r) = best.pooled.ci95, runner_up.pooled.ci95
    overlap = lo_b <= hi_r and lo_r <= hi_b
    if overlap:
        verdict = ("not shown different: their 95 % intervals overlap (a paired test would need both trials' "
                   "per-triplet validation results, which the search does not keep)")
    else:
        better = "better" if best.pooled.accuracy > runner_up.pooled.accuracy else "worse"
        verdict = f"{better} on the pooled validation triplets: their 95 % intervals do not overlap"
    return {"best": best.trial_id, "runner_up": runner_up.trial_id, "best_ci95": list(best.pooled.ci95),
            "runner_up_ci95": list(runner_up.pooled.ci95), "overlap": overlap,
            "method": "overlap of the Wilson intervals of the pooled validation accuracy (no paired test)",
            "verdict": verdict}


@dataclass
class SearchSummary:
    """Everything ``summarize`` found: rows by trial id, the best trial and its Config."""

    tune_dir: str
    objective: str  # the metric maximised, e.g. "val_mean_acc"
    settings: Dict[str, Any]
    base_config: Config
    rows: List[TrialRow]
    best: Optional[TrialRow]
    best_config: Optional[Config]
    runner_up: Optional[TrialRow] = None  # the second-best COMPLETED trial
    best_vs_runner_up: Optional[Dict[str, Any]] = None  # compare_best_with_runner_up

    @property
    def completed(self) -> List[TrialRow]:
        return [r for r in self.rows if r.status == "COMPLETED"]

    def table(self) -> List[Dict[str, Any]]:
        return [r.as_dict(self.base_config.model.width) for r in self.rows]


def _float(x) -> Optional[float]:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def _read_trial(path: str, base: Config) -> TrialRow:
    from keras_tuner.engine.trial import Trial

    trial = Trial.load(path)
    values = dict(trial.hyperparameters.values)
    metrics = {}
    for name in trial.metrics.metrics:
        v = trial.metrics.get_last_value(name)
        if v is not None:
            metrics[name] = float(v)
    epochs = int(values[HYPERBAND_EPOCHS]) if HYPERBAND_EPOCHS in values else base.train.epochs
    message = (trial.message or "").strip().splitlines()
    return TrialRow(trial_id=str(trial.trial_id), status=str(trial.status), values=values,
                    score=_float(trial.score), best_step=None if trial.best_step is None else int(trial.best_step),
                    metrics=metrics, epochs=epochs, message=message[-1] if message else "")


def summarize(tune_dir: str, write: bool = True) -> SearchSummary:
    """Read every trial of a search folder; with ``write``, write results.csv/.json and best.json.

    ``best.json`` is the full Config of the best COMPLETED trial (highest objective;
    ties go to the lower trial id): the shared base config (with the mel statistics
    of ``TUNE_DIR/data``) with that trial's lambda, margin, learning rate and width.
    Every trial gets its pooled validation accuracy and 95 % interval (module notes), and
    the best is compared with the runner-up (:func:`compare_best_with_runner_up`).

    Raises
    ------
    ConfigError
        if ``tune_dir`` holds no search.
    """
    settings_path = os.path.join(tune_dir, "search.json")
    base_path = _shared_run(tune_dir).config_path
    if not (os.path.isfile(settings_path) and os.path.isfile(base_path)):
        raise ConfigError(f"{tune_dir} holds no search (search.json and data/config.json are missing); run "
                          f"`dml tune PREPARED_DIR --out {tune_dir}` first.")
    with open(settings_path) as f:
        settings = json.load(f)
    base = Config.from_json(base_path)
    space = SearchSpace.from_dict(settings["space"])
    weights = parse_objective(space.objective, base)
    objective = objective_metric(weights)
    rows = [_read_trial(p, base) for p in glob.glob(os.path.join(tune_dir, PROJECT_NAME, "trial_*", "trial.json"))]
    rows.sort(key=lambda r: (len(r.trial_id), r.trial_id))
    counts = validation_counts(tune_dir)
    if counts is not None:
        pooled_conds = objective_conditions(weights, base, counts)
        for r in rows:
            r.pooled = pooled_accuracy(r.metrics, pooled_conds, counts)
    done = [r for r in rows if r.status == "COMPLETED" and r.score is not None]
    ranked = sorted(done, key=lambda r: -r.score)  # stable: equal scores keep the lower trial id first
    best = ranked[0] if ranked else None
    runner_up = ranked[1] if len(ranked) > 1 else None
    best_config = config_from_values(base, best.values) if best else None
    summary = SearchSummary(tune_dir, objective, settings, base, rows, best, best_config, runner_up,
                            compare_best_with_runner_up(best, runner_up) if best else None)
    if write:
        _write_results(summary)
    return summary


def _write_results(s: SearchSummary) -> None:
    table = s.table()
    columns: List[str] = []
    for row in table:
        columns += [k for k in row if k not in columns]
    with open(os.path.join(s.tune_dir, "results.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        for row in table:
            w.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    best = None
    if s.best is not None:
        s.best_config.to_json(os.path.join(s.tune_dir, "best.json"))
        best = {"trial_id": s.best.trial_id, "objective": s.best.score, **{
            k: v for k, v in s.best.as_dict(s.base_config.model.width).items()
            if k in ("lambda", "margin", "learning_rate", "width", "epochs", "best_epoch", "val_pooled_acc",
                     "val_pooled_ci95_low", "val_pooled_ci95_high", "val_triplets")},
            "config": "best.json", "config_hash": s.best_config.hash()}
    out = {"objective": s.objective, "settings": s.settings,
           "base": {"epochs": s.base_config.train.epochs, "steps_per_epoch": s.base_config.train.steps_per_epoch,
                    "batch_size": s.base_config.train.batch_size, "backbone": s.base_config.model.backbone,
                    "width": s.base_config.model.width, "config_hash": s.base_config.hash()},
           "trials": table, "completed": len(s.completed), "best": best,
           "best_vs_runner_up": s.best_vs_runner_up}
    with open(os.path.join(s.tune_dir, "results.json"), "w") as f:
        json.dump(out, f, indent=2)
        f.write("\n")


def format_table(summary: SearchSummary) -> str:
    """The results as a fixed-width text table, best trial marked with ``*``, each trial's pooled validation
    accuracy with its 95 % interval, and whether the best is shown better than the runner-up."""
    extra = [] if summary.objective == "val_mean_acc" else ["val_mean_acc"]  # always shown, once
    head = ["trial", "lambda", "margin", "lr", "width", "epochs", summary.objective] + extra + \
        ["pooled [95 %]", "triplets", "status"]
    lines = []
    for r in summary.rows:
        d = r.as_dict(summary.base_config.model.width)

        def num(x, fmt):
            return "-" if x is None else format(x, fmt)

        mark = "*" if summary.best is not None and r.trial_id == summary.best.trial_id else " "
        pooled = "-" if r.pooled is None else \
            f"{r.pooled.accuracy:.3f} [{r.pooled.ci95[0]:.2f}-{r.pooled.ci95[1]:.2f}]"
        lines.append([mark + r.trial_id, num(d["lambda"], ".4g"), num(d["margin"], ".4f"),
                      num(d["learning_rate"], ".3e"), str(d["width"]), str(d["epochs"]), num(r.score, ".4f")]
                     + [num(r.metrics.get(m), ".4f") for m in extra]
                     + [pooled, "-" if r.pooled is None else str(r.pooled.n), r.status])
    widths = [max(len(h), *(len(l[i]) for l in lines)) if lines else len(h) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    out = [fmt.format(*head), fmt.format(*("-" * w for w in widths))] + [fmt.format(*l) for l in lines]
    if summary.best is not None:
        b = summary.best
        out.append(f"best: trial {b.trial_id}, {summary.objective} = {b.score:.4f} "
                   f"(lambda {b.values.get(HP_LAMBDA)}, margin {b.values.get(HP_MARGIN):.4f}, "
                   f"learning rate {b.values.get(HP_LEARNING_RATE):.3e})")
        if b.pooled is not None:
            out.append(f"pooled [95 %]: validation accuracy over the {b.pooled.n} triplets of "
                       f"{', '.join(b.pooled.conditions)}, with its Wilson interval")
        versus = summary.best_vs_runner_up
        if versus is not None:
            out.append(f"best vs runner-up (trial {versus['runner_up']}): {versus['verdict']}")
    else:
        out.append("no trial has completed yet.")
    return "\n".join(out)
