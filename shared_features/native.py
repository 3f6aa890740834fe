"""Native libraries' own lines on standard error.

LiteRT writes ``INFO: Created TensorFlow Lite XNNPACK delegate for CPU.`` straight to file
descriptor 2 when an interpreter is built, past Python's logging; a guide's terminal or an
analysis's output should not carry it. :func:`quiet_native_info` sends descriptor 2 to a
temporary file for the duration of a block and writes back every line that is not such an
``INFO:`` line (all of them when ``SILENCIO_VERBOSE`` > 0, set by ``silencio -v``)."""

from __future__ import annotations

import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager

VERBOSE_ENV = "SILENCIO_VERBOSE"
_lock = threading.Lock()  # descriptor 2 is the process's: one redirection at a time


def verbosity() -> int:
    """The ``silencio -v`` count (``SILENCIO_VERBOSE``; 0 when unset or not a number)."""
    try:
        return int(os.environ.get(VERBOSE_ENV, "0"))
    except ValueError:
        return 0


def verbose() -> bool:
    return verbosity() > 0


@contextmanager
def quiet_native_info(keep_all: bool | None = None) -> Iterator[None]:
    """Inside the block, native ``INFO: …`` lines on descriptor 2 are dropped; other lines are
    written back when it ends. ``keep_all`` (default: :func:`verbose`) keeps every line."""
    if keep_all is None:
        keep_all = verbose()
    if keep_all or not _lock.acquire(blocking=False):  # verbose, or another thread holds fd 2 already
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
        with tempfile.TemporaryFile() as tmp:
            os.dup2(tmp.fileno(), 2)
            try:
                yield
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
                os.close(saved)
                tmp.seek(0)
                lines = tmp.read().decode("utf-8", "replace").splitlines(keepends=True)
                keep = [ln for ln in lines if not ln.startswith("INFO: ")]
                if keep:
                    sys.stderr.write("".join(keep))
                    sys.stderr.flush()
    finally:
        _lock.release()
