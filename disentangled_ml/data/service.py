"""The tf.data service: run the training input pipeline on other processes or machines.

Decoding, the log-mel of every excerpt and triplet mining are CPU work that can
starve a GPU. With the tf.data service the trainer serialises its dataset graph
to a *dispatcher*; *workers* (any number, on any machines) run copies of it and
stream finished triplet batches back over gRPC::

    dml data-service dispatcher --port 5050 --work-dir /shared/dispatcher
    dml data-service worker --dispatcher dispatcher-host:5050 --port 5051 --host this-host
    dml train PREPARED_DIR --out RUN_DIR --data-service grpc://dispatcher-host:5050

Processing mode: ``parallel_epochs``. The training stream is infinite (``repeat``)
and every element is a random pool-mined batch, so there is no epoch to split and
no element that must be seen exactly once. ``distributed_epoch`` would split the
*source* (the track list) between workers: each worker would then mine triplets
only among the tracks it was handed (no pool spanning the collection), its memory
cache would hold an arbitrary, changing subset, and every source of the graph
(including ``Dataset.random``) would have to be splittable. With
``parallel_epochs`` each worker runs the whole pipeline over the whole
collection. Because every worker runs the *same* serialised graph, the dataset is
built with run-time seeds (:func:`~disentangled_ml.data.pipeline.training_dataset`
``runtime_seeds=True``): otherwise all workers would stream identical batches and
two workers would only deliver every batch twice. The price is that a run through
the service is not reproducible batch for batch (the interleaving of the workers'
streams is not either).

Other consequences, handled here:

* Decode counters (:class:`~disentangled_ml.data.pipeline.DecodeStats`) are TF
  variables captured by the graph; on a worker they would count into the worker's
  copy, which the trainer never reads. They are switched off, and ``run.json``
  reports ``"decode": null`` (a worker logs the files it skips).
* A directory ``data.cache`` would have every worker writing the same cache files
  (tf.data refuses a second concurrent writer); it is replaced by ``"none"``, with
  a warning. Read audio shards (``dml prepare --cache-audio``) instead, which
  costs little more than a cache.
* Workers read the audio by the paths in the trainer's graph: the manifest's files
  or the shards (local paths, or ``gs://``/``hdfs://`` ones) must be readable at
  the same paths on every worker machine.
* A worker process must have the tensorflow-io kernels loaded (the audio decoders
  are custom ops); :func:`register_custom_ops` does it, and ``dml data-service
  worker`` calls it.

The servers listen on all interfaces (TensorFlow offers no bind address); keep the
ports behind a firewall. Addresses given to clients should be reachable names.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import signal
import threading
from typing import Callable, Optional

import tensorflow as tf

from disentangled_ml.config import Config, ConfigError

log = logging.getLogger(__name__)

__all__ = ["PROCESSING_MODE", "register_custom_ops", "service_address", "start_dispatcher", "start_worker",
           "serve_until_signal", "job_name_for", "service_config", "distribute"]

#: The processing mode for the infinite training stream (see the module docstring).
PROCESSING_MODE = "parallel_epochs"

_ADDRESS = re.compile(r"^(?:(grpc)://)?([A-Za-z0-9._\-]+|\[[0-9A-Fa-f:]+\]):(\d{1,5})$")


def register_custom_ops() -> None:
    """Load the tensorflow-io kernels into this process.

    tensorflow-io loads its op library lazily, on the first Python call of one of its
    ops. A tf.data service worker never makes that call: it receives graphs that use
    the ops, and would fail with "Op type not registered 'IO>AudioDecodeWAV'".
    """
    from tensorflow_io.python.ops import core_ops

    core_ops._load()  # the LazyLoader's own loader; no public way to force it


def service_address(address: str, what: str = "--data-service") -> str:
    """``grpc://HOST:PORT`` from ``HOST:PORT`` or ``grpc://HOST:PORT``; ConfigError otherwise."""
    m = _ADDRESS.match(address.strip())
    if not m or not 0 < int(m.group(3)) < 65536:
        raise ConfigError(f"{what} {address!r} is not an address like grpc://HOST:PORT (e.g. grpc://127.0.0.1:5050).")
    return f"grpc://{m.group(2)}:{int(m.group(3))}"


def start_dispatcher(port: int = 0, work_dir: Optional[str] = None) -> tf.data.experimental.service.DispatchServer:
    """Start a tf.data service dispatcher on ``port`` (0: a free port; read it from ``.target``).

    With ``work_dir`` (any ``tf.io.gfile`` path) the dispatcher journals its state
    there (fault-tolerant mode), so a restarted dispatcher recovers its jobs and
    workers; without, a restart loses them and every consumer fails.
    """
    if not 0 <= port < 65536:
        raise ConfigError(f"dispatcher port {port} is not in 0..65535.")
    if work_dir:
        tf.io.gfile.makedirs(work_dir)
    config = tf.data.experimental.service.DispatcherConfig(port=port, work_dir=work_dir or None,
                                                           fault_tolerant_mode=bool(work_dir))
    return tf.data.experimental.service.DispatchServer(config)


def start_worker(dispatcher: str, port: int = 0, host: str = "localhost") -> tf.data.experimental.service.WorkerServer:
    """Start a tf.data service worker that registers with ``dispatcher`` (``HOST:PORT``).

    Args:
        dispatcher: the dispatcher's address, ``HOST:PORT`` or ``grpc://HOST:PORT``.
        port: this worker's port (0: a free one).
        host: the name this worker gives the dispatcher for consumers to reach it;
            ``localhost`` works only when dispatcher, workers and trainers share one
            machine.
    """
    register_custom_ops()
    if not 0 <= port < 65536:
        raise ConfigError(f"worker port {port} is not in 0..65535.")
    target = service_address(dispatcher, "--dispatcher")
    dispatcher_host = target[len("grpc://"):].rsplit(":", 1)[0]
    if host in ("localhost", "127.0.0.1") and dispatcher_host not in ("localhost", "127.0.0.1"):
        log.warning("this worker tells the dispatcher it is at %s, but the dispatcher is on %s: trainers on other "
                    "machines cannot reach it. Give --host with this machine's name.", host, dispatcher_host)
    config = tf.data.experimental.service.WorkerConfig(dispatcher_address=target[len("grpc://"):],
                                                       worker_address=f"{host}:%port%", port=port)
    return tf.data.experimental.service.WorkerServer(config)


def serve_until_signal(server, describe: Callable[[], str], poll_seconds: float = 1.0,
                       stop_event: Optional[threading.Event] = None, stop_timeout_s: float = 15.0) -> bool:
    """Block until SIGTERM or SIGINT (or ``stop_event``), then stop ``server``.

    ``describe()`` is logged whenever its text changes (e.g. a worker's task count),
    checked every ``poll_seconds``. Returns True when the server stopped within
    ``stop_timeout_s`` seconds, False when its ``stop()`` was still blocked then (seen
    once with a worker holding a task of a consumer that stopped reading; the caller
    should then exit the process anyway).
    """
    stop = stop_event or threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, lambda signum, frame: stop.set())
    last = None
    try:
        while not stop.wait(poll_seconds):
            text = describe()
            if text != last:
                log.info("%s", text)
                last = text
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        # stop() in a thread: a stop that hangs must not keep the process alive forever
        stopper = threading.Thread(target=server.stop, name="tf.data-service-stop", daemon=True)
        stopper.start()
        stopper.join(stop_timeout_s)
    if stopper.is_alive():
        log.warning("the server did not stop within %.0f s; leaving it", stop_timeout_s)
        return False
    return True


def job_name_for(run_dir: str, config: Config) -> str:
    """A job name shared by the trainers of one run, distinct between runs on one dispatcher.

    Trainers (MultiWorkerMirroredStrategy workers, or a resumed run) that give the
    same job name read one shared stream, each batch going to one of them.
    """
    name = os.path.basename(os.path.normpath(run_dir)) or "run"
    digest = hashlib.sha1(os.path.abspath(run_dir).encode()).hexdigest()[:6]
    return f"dml-{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}-{digest}-{config.hash()}"


def service_config(config: Config) -> Config:
    """``config`` as the service runs it: a directory ``data.cache`` becomes ``"none"``."""
    if config.data.cache not in ("auto", "memory", "none"):
        log.warning("data.cache=%r is a directory: the tf.data service workers would all write the same cache files, "
                    "so the service runs without a cache. Use `dml prepare --cache-audio` shards for cheap reads.",
                    config.data.cache)
        return config.replace(**{"data.cache": "none"})
    return config


def distribute(dataset: tf.data.Dataset, service: str, job_name: Optional[str] = None) -> tf.data.Dataset:
    """``dataset`` read through the tf.data service at ``service`` (``grpc://HOST:PORT``).

    The dataset must not capture TF variables that the trainer reads (they would be
    the workers' copies) and, if it is random, must draw its seeds at run time; see
    the module docstring.
    """
    global_seed = tf.compat.v1.get_seed(None)[0]
    if global_seed is not None:
        log.warning("a global TensorFlow seed is set (tf.random.set_seed / keras.utils.set_random_seed): every "
                    "tf.data service worker draws the same pipeline seeds from it and streams the same triplets.")
    return dataset.apply(tf.data.experimental.service.distribute(
        processing_mode=PROCESSING_MODE, service=service_address(service), job_name=job_name))
