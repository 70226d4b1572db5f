"""The ``ralu`` command line: generate, recipes, plugins, schedule, flops, bench, compare, one module each.

`main` parses (`ralu_core.cli.parser`, light), then imports only the module of the command asked for, so
``ralu --help`` answers at once and the commands that need no model (recipes, plugins, schedule) never import
diffusers or transformers. Defaults that depend on the model family (the recipe, the architecture counted, the
recipes benched) come from the installed adapters, not from this package.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import warnings
from collections.abc import Sequence

from ralu_core.cli.parser import build_parser
from ralu_core.errors import RaluError

__all__ = ["build_parser", "main"]


def quiet_third_party_notices() -> None:
    """Deprecation notices, optional-backend hints and loading bars of diffusers, transformers and torch
    are for library developers, not for someone generating an image; ralu says what matters itself, once.
    Set through the environment, read when those libraries first load: importing them here to set their
    loggers would cost seconds in commands that never load a model."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    for category in (FutureWarning, DeprecationWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category)
    # torchao, where installed, is imported by diffusers and logs that its GPU kernels do not load on a CPU, and
    # the torch version it was built for logs a deprecation for each of its enums: library notices too.
    # A filter, not a level: torch sets its own loggers' levels when it loads.
    for name in ("torchao", "torch.utils._pytree"):
        logging.getLogger(name).addFilter(lambda record: record.levelno >= logging.ERROR)


def main(argv: Sequence[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    quiet_third_party_notices()
    try:
        command = importlib.import_module(f"ralu_core.cli.{ns.command}")
        return int(command.run(ns))
    except KeyboardInterrupt:
        print("interrupted; nothing half-written was left behind", file=sys.stderr)
        return 130
    except (RaluError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
