"""Run a tf.data service dispatcher or worker, so that `dml train --data-service grpc://HOST:PORT` decodes audio,
computes log-mels and mines triplets on other processes or machines. Start one dispatcher (`dml data-service
dispatcher --port P`), then any number of workers (`dml data-service worker --dispatcher HOST:P --port Q --host
THIS_HOST`). Both run until SIGTERM or Ctrl-C, then shut down cleanly. Workers open the audio at the paths the
trainer's prepared manifest (or its --audio-shards) names, so those must be readable on every worker machine; see
docs/cluster.md.
"""

from __future__ import annotations

import argparse
import os
import sys

from disentangled_ml.cli import CliError

HELP = "run a tf.data service dispatcher or worker for `dml train --data-service`"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    roles = parser.add_subparsers(dest="role", metavar="ROLE")
    roles.required = True
    d = roles.add_parser("dispatcher", help="the dispatcher: trainers and workers connect to it",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d.add_argument("--port", type=int, required=True, help="TCP port to listen on (0: any free port, printed)")
    d.add_argument("--work-dir", metavar="DIR",
                   help="journal directory (any tf.io.gfile path); with it a restarted dispatcher recovers its "
                        "workers and jobs")
    w = roles.add_parser("worker", help="a worker: runs copies of the trainers' input pipelines",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    w.add_argument("--dispatcher", required=True, metavar="HOST:PORT", help="the dispatcher's address")
    w.add_argument("--port", type=int, required=True, help="TCP port to listen on (0: any free port, printed)")
    w.add_argument("--host", default="localhost",
                   help="the name of this machine as trainers reach it (the worker gives HOST:PORT to the "
                        "dispatcher); the default only works when everything runs on one machine")


def run(args: argparse.Namespace) -> int:
    from disentangled_ml.config import ConfigError
    from disentangled_ml.data import service

    try:
        if args.role == "dispatcher":
            server = service.start_dispatcher(args.port, args.work_dir)
            port = server.target.rsplit(":", 1)[1]
            print(f"tf.data service dispatcher ready on port {port}"
                  f"{f', journal in {args.work_dir}' if args.work_dir else ''}; stop with Ctrl-C or SIGTERM",
                  flush=True)
            clean = service.serve_until_signal(server,
                                               lambda: f"dispatcher on port {port}: {server._num_workers()} worker(s)")
        else:
            server = service.start_worker(args.dispatcher, args.port, args.host)
            address = server._address  # HOST:PORT as given to the dispatcher
            print(f"tf.data service worker ready at {address}, dispatcher {args.dispatcher}; "
                  "stop with Ctrl-C or SIGTERM", flush=True)
            clean = service.serve_until_signal(server, lambda: f"worker {address}: {server._num_tasks()} task(s)")
    except ConfigError as e:
        raise CliError(str(e)) from None
    except RuntimeError as e:  # the gRPC server could not bind (port in use) or reach the dispatcher
        raise CliError(f"could not start the {args.role} on port {args.port}: {e} (is the port in use? is the "
                       "dispatcher reachable?)") from None
    if not clean:
        print(f"tf.data service {args.role} did not shut down cleanly; exiting", file=sys.stderr, flush=True)
        os._exit(1)  # a blocked gRPC server thread would keep a normal exit waiting
    print(f"tf.data service {args.role} stopped", file=sys.stderr, flush=True)
    return 0
