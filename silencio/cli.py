"""``silencio``: thin argparse front end. Each group is defined by its own package's ``cli`` module
(``register(subparsers)``) and imports heavy libraries only when a command runs, so
``silencio --help`` works in an edge-only install. Library errors become CLI errors here, in one
place (exit code 2 with the message, no traceback unless ``--debug``).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from shared_features.errors import SilencioFeatureError

#: Modules whose ``register(subparsers)`` adds a command group, in help order.
GROUPS: tuple[str, ...] = (
    "shared_features.cli",
    "training.cli",
    "training.train_cli",
    "training.export_cli",
    "cloud.cli",
    "cloud.loop",
    "edge.cli",
    "silencio.demo",
)


#: Our packages: their INFO lines are the commands' own progress messages.
OWN_LOGGERS: tuple[str, ...] = ("shared_features", "training", "cloud", "bentos", "edge", "silencio")


def configure_logging(verbosity: int = 0) -> None:
    """The one logging set-up of every command: our packages log INFO; third-party libraries
    (httpx's request lines, MLflow, BentoML, Ray …) only WARNING and worse, unless ``-v`` (their
    INFO too) or ``-vv`` (DEBUG everywhere). Processes a command starts inherit the choice
    (``SILENCIO_VERBOSE``; MLflow configures its own logger from ``MLFLOW_LOGGING_LEVEL``)."""
    third = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger().setLevel(third)
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if verbosity >= 2 else logging.INFO)
    os.environ["SILENCIO_VERBOSE"] = str(max(verbosity, 0))
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", logging.getLevelName(third))


class CLIError(Exception):
    """An expected failure of a command: printed as ``error: …`` with exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="silencio",
        description="El Silencio Acoustic Explorer: identify the 206 BirdCLEF 2025 species "
        "(birds, frogs, insects, mammals) on the edge and in the cloud.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="group", metavar="COMMAND", required=True)
    for mod_name in GROUPS:
        mod = importlib.import_module(mod_name)
        mod.register(sub)
    return parser


def iter_commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()):  # type: ignore[no-untyped-def]
    """Yield ``(path, parser, help)`` for every (sub)command: used by the help-text test."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield prefix + (name,), sub, helps.get(name)
                yield from iter_commands(sub, prefix + (name,))


def user_errors() -> tuple[type[BaseException], ...]:
    """The documented exception classes of every group (their ``USER_ERRORS``)."""
    out: list[type[BaseException]] = []
    for mod_name in GROUPS:
        out.extend(getattr(importlib.import_module(mod_name), "USER_ERRORS", ()))
    return tuple(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    handler = getattr(args, "func", None)
    if handler is None:
        parser.parse_args([*(argv or sys.argv[1:]), "--help"])
        return 2
    try:
        rc = handler(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (CLIError, SilencioFeatureError, FileNotFoundError, *user_errors()) as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
