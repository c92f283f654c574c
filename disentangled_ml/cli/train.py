"""Train the masked triplet model on a prepared collection (resumes an interrupted run in the same --out)."""

from __future__ import annotations

import argparse
import json

from disentangled_ml.cli import CliError
from disentangled_ml.cli.common import add_config_arguments, load_config

HELP = "train on a prepared collection; rerun the same command to resume"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prepared_dir", metavar="PREPARED_DIR", help="directory written by `dml prepare`")
    parser.add_argument("--out", required=True, metavar="RUN_DIR",
                        help="run directory (checkpoints, TensorBoard logs, config); an existing run there is resumed")
    add_config_arguments(parser, "a config.json (e.g. from `dml tune` or an earlier run); "
                                 "default: PREPARED_DIR/config.json")
    parser.add_argument("--quiet", action="store_true", help="no Keras progress bar")
    parser.add_argument("--data-service", metavar="grpc://HOST:PORT",
                        help="run the training input pipeline (decode, log-mel, mining) on the workers of this "
                             "tf.data service dispatcher (`dml data-service`); validation stays here")
    parser.add_argument("--audio-shards", metavar="DIR",
                        help="read training audio from these TFRecord shards (`dml prepare --cache-audio` wrote "
                             "them to PREPARED_DIR/audio, the default when present); any tf.io.gfile path, "
                             "e.g. gs://bucket/prepared/audio")


def run(args: argparse.Namespace) -> int:
    from disentangled_ml.config import ConfigError
    from disentangled_ml.data.manifest import ManifestError
    from disentangled_ml.training import train

    cfg = load_config(args)
    try:
        if args.data_service:
            from disentangled_ml.data.service import service_address

            service_address(args.data_service)  # a malformed address fails here, not in the middle of a run
        summary = train(args.prepared_dir, args.out, cfg, verbose=0 if args.quiet else 1,
                        data_service=args.data_service, audio_dir=args.audio_shards)
    except (ConfigError, ManifestError) as e:
        raise CliError(str(e)) from None
    print(json.dumps(summary, indent=2))
    print(f"TensorBoard: tensorboard --logdir {summary['tensorboard']}")
    return 0
