"""``python -m cloud …``: the ``silencio cloud`` commands where only the service is installed (the
BentoML container image carries ``cloud`` and ``shared_features`` but not the ``silencio`` command),
e.g. ``python -m cloud migrate`` before the replicas start."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from cloud.cli import USER_ERRORS, register


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cloud", description="The El Silencio cloud service.")
    sub = parser.add_subparsers(dest="group", required=True)
    register(sub)
    args = parser.parse_args(["cloud", *(sys.argv[1:] if argv is None else argv)])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
