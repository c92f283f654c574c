"""What ``dml train`` and ``dml tune`` share: the config options and how they are read.

A subcommand module imports this, never another subcommand (tests/test_layering.py).
"""

from __future__ import annotations

import argparse
import json

from disentangled_ml.cli import CliError
from disentangled_ml.config import TrainConfig

__all__ = ["add_config_arguments", "parse_overrides", "load_config"]


def add_config_arguments(parser: argparse.ArgumentParser, config_help: str,
                         epochs_help: str = "maximum epochs (train.epochs{default})") -> None:
    """--config, --set, --epochs, --steps-per-epoch and --batch-size, read back by :func:`load_config`.

    ``epochs_help`` may hold ``{default}``, filled with today's default: the help quotes
    :class:`~disentangled_ml.config.TrainConfig`, so it cannot fall behind it.
    """
    train = TrainConfig()
    epochs_help = epochs_help.format(default=f"; default {train.epochs}")
    parser.add_argument("--config", metavar="CONFIG_JSON", help=config_help)
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one config value, e.g. --set loss.margin=0.2 --set model.backbone=resnet "
                             "(repeatable; VALUE is parsed as JSON when it can be)")
    parser.add_argument("--epochs", type=int, help=epochs_help)
    parser.add_argument("--steps-per-epoch", type=int,
                        help="training steps (batches of triplets) per epoch "
                             f"(train.steps_per_epoch; default {train.steps_per_epoch})")
    parser.add_argument("--batch-size", type=int,
                        help=f"triplets per step (train.batch_size; default {train.batch_size})")


def parse_overrides(items, args=None):
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise CliError(f"--set {item!r} must look like SECTION.KEY=VALUE, e.g. loss.margin=0.2")
        try:
            overrides[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key.strip()] = value
    if args is not None:
        for flag, key in (("epochs", "train.epochs"), ("steps_per_epoch", "train.steps_per_epoch"),
                          ("batch_size", "train.batch_size")):
            if getattr(args, flag) is not None:
                overrides[key] = getattr(args, flag)
    return overrides


def load_config(args):
    import os

    from disentangled_ml.config import Config, ConfigError, config_for_prepared

    try:
        if args.config:
            cfg = Config.from_json(args.config)
        elif os.path.isfile(os.path.join(args.prepared_dir, "config.json")):
            cfg = config_for_prepared(os.path.join(args.prepared_dir, "config.json"))
        else:
            cfg = Config()
        overrides = parse_overrides(args.set, args)
        return cfg.replace(**overrides) if overrides else cfg
    except ConfigError as e:
        raise CliError(str(e)) from None
