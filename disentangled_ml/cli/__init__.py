"""The ``dml`` command.

Each subcommand is a module in this package with ``HELP`` (one line), a
``add_arguments(parser)`` function and a ``run(args) -> int`` function. Adding a
subcommand means adding its module name to ``SUBCOMMANDS``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import List, Optional

from disentangled_ml import tf_environment

# name on the command line -> module in disentangled_ml.cli
SUBCOMMANDS = {
    "info": "info",
    "synth": "synth",
    "import-jamendo": "import_jamendo",
    "prepare": "prepare",
    "train": "train",
    "evaluate": "evaluate",
    "tune": "tune",
    "export": "export",
    "embed": "embed",
    "similar": "similar",
    "serve": "serve",
    "timeline": "timeline",
    "data-service": "data_service",
}


class CliError(Exception):
    """A user-facing error: printed as ``dml <cmd>: error: <message>``, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dml",
        description="Disentangled multidimensional metric learning for music similarity (Lee et al., ICASSP 2020).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, module_name in SUBCOMMANDS.items():
        module = importlib.import_module(f"disentangled_ml.cli.{module_name}")
        p = sub.add_parser(
            name,
            help=module.HELP,
            description=(module.__doc__ or module.HELP).strip(),
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        )
        module.add_arguments(p)
        p.set_defaults(_module=module, _parser=p)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    # before any subcommand imports TensorFlow: its log level and, on x86-64, its oneDNN kernels
    tf_environment.configure()
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args._module.run(args) or 0)
    except CliError as e:
        args._parser.error(str(e))  # exits with status 2 and the usage line
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
