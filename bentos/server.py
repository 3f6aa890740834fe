"""The server process of ``silencio cloud serve``, and the lifecycle rules its workers follow.

``silencio cloud serve`` checks what it can (paths, port, store, model), then *replaces itself*
(``exec``) with ``python -m bentos.server``: BentoML's supervisor (a circus arbiter) running
``bentos.service:Silencio``. So the pid that an operator, systemd or a test started is the server's:
SIGTERM / SIGINT to it stops every worker and frees the port, and its exit status is the server's.

The rules:

* **Workers die with their parent.** BentoML starts each worker in its own session, so a signal to
  the supervisor's process group does not reach them, and a supervisor killed by SIGKILL used to
  leave them running with parent 1. Each worker asks the kernel for SIGTERM when its parent dies
  (``prctl(PR_SET_PDEATHSIG)``) and runs a watchdog thread that ends it (at most
  :data:`SHUTDOWN_GRACE` seconds later) once its parent is gone, however it went.
* **A fatal start-up error stops the server, once.** A worker that cannot load its model does not
  crash into BentoML's restart loop: it records the reason (:data:`FATAL_ENV`), asks the
  supervisor to stop, and exits; the server then prints that one line and exits with status 1.
* **Shutdown is bounded.** A worker gets :data:`SHUTDOWN_GRACE` seconds after SIGTERM (BentoML's
  default is a day) before the supervisor kills it.
* **Quiet by default.** BentoML's INFO lines (the start banner, every access-log line) show only
  with ``silencio -v``; our own packages log at INFO.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

from shared_features.native import verbosity

log = logging.getLogger(__name__)

#: The service every server process runs.
SERVICE = "bentos.service:Silencio"
#: Where a worker writes the reason of a fatal start-up error for the server process to print.
FATAL_ENV = "SILENCIO_SERVE_FATAL"
#: Seconds a worker has to finish after SIGTERM (or after its parent died) before it is killed.
SHUTDOWN_GRACE = 5.0
#: Our packages in the server.
OWN_LOGGERS = ("bentos", "cloud", "shared_features")

_PR_SET_PDEATHSIG = 1


# ---------------------------------------------------------------------------------- the server process
def main(argv: list[str] | None = None) -> int:
    """``python -m bentos.server --host H --port P [--workers N]``: BentoML's supervisor for
    :data:`SERVICE`, in this process. Returns 0 after SIGTERM / SIGINT, 1 after a fatal start-up
    error of a worker (its reason printed as one line on stderr)."""
    p = argparse.ArgumentParser(prog="python -m bentos.server", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=3000)
    p.add_argument("--workers", type=int, default=None, help="API worker processes")
    args = p.parse_args(argv)

    fatal_dir = tempfile.mkdtemp(prefix="silencio-serve-")
    fatal_file = Path(fatal_dir) / "fatal"
    os.environ[FATAL_ENV] = str(fatal_file)
    try:
        _serve(args.host, args.port, args.workers)
        if fatal_file.exists():
            print(f"error: {fatal_file.read_text(encoding='utf-8').strip()}", file=sys.stderr, flush=True)
            return 1
        return 0
    finally:
        fatal_file.unlink(missing_ok=True)
        os.rmdir(fatal_dir)


def _serve(host: str, port: int, workers: int | None) -> None:
    import bentoml.serving
    from _bentoml_impl.server import serve_http
    from bentoml._internal.log import configure_server_logging
    from bentoml._internal.service.loader import load

    configure_server_logging()
    configure_logging()
    create_watcher = bentoml.serving.create_watcher

    def bounded_watcher(*a: Any, **kw: Any) -> Any:
        watcher = create_watcher(*a, **kw)
        watcher.graceful_timeout = SHUTDOWN_GRACE + 2  # BentoML waits a day for a worker to stop
        return watcher

    bentoml.serving.create_watcher = bounded_watcher  # serve_http imports it from there when called
    root = str(Path(__file__).resolve().parent.parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    svc = load(SERVICE, working_dir=root)
    if workers:
        svc.config["workers"] = workers  # type: ignore[union-attr]
    svc.inject_config()  # type: ignore[union-attr]
    serve_http(SERVICE, working_dir=root, host=host, port=port, timeout_graceful_shutdown=int(SHUTDOWN_GRACE))


def configure_logging() -> None:
    """After BentoML configured its server logging: its INFO lines (and the workers' model-loading
    lines) only with ``-v``, DEBUG with ``-vv``; the service's own (``bentos``) at INFO."""
    v = verbosity()
    third = logging.WARNING if v == 0 else logging.INFO if v == 1 else logging.DEBUG
    logging.getLogger("bentoml").setLevel(third)
    if v >= 2:
        logging.getLogger().setLevel(logging.DEBUG)
    logging.getLogger("bentos").setLevel(logging.DEBUG if v >= 2 else logging.INFO)
    for name in OWN_LOGGERS[1:]:  # the model's load lines, once per worker: already in the banner
        logging.getLogger(name).setLevel(logging.DEBUG if v >= 2 else logging.INFO if v else logging.WARNING)


# ---------------------------------------------------------------------------------- worker side
@contextlib.contextmanager
def quiet_native_info() -> Iterator[None]:
    """Native libraries' ``INFO:`` lines on stderr dropped inside the block (all kept with ``-v``):
    :func:`shared_features.native.quiet_native_info`."""
    from shared_features.native import quiet_native_info as quiet

    with quiet(verbosity() > 0):
        yield


def in_worker() -> bool:
    """Whether this process is a worker started by BentoML's supervisor (not an in-process app)."""
    import bentoml

    return bentoml.server_context.worker_index is not None


def die_with_parent() -> None:
    """In a worker: end this process when its parent (the supervisor) dies, however it died.
    Does nothing outside a served worker."""
    if not in_worker() or getattr(die_with_parent, "armed", False):
        return
    die_with_parent.armed = True  # type: ignore[attr-defined]
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            log.warning(
                "prctl(PR_SET_PDEATHSIG) failed (errno %d); the watchdog alone ends this worker",
                ctypes.get_errno(),
            )
    except (OSError, AttributeError):  # not Linux: the watchdog below still works
        pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        log.warning("the server process (pid %d) is gone: this worker stops", parent)
        os.kill(os.getpid(), signal.SIGTERM)  # a graceful stop where the worker can still do one
        time.sleep(SHUTDOWN_GRACE)
        os._exit(1)

    threading.Thread(target=watch, name="silencio-parent-watchdog", daemon=True).start()
    if os.getppid() != parent:  # the parent died before the kernel was asked to tell us
        os.kill(os.getpid(), signal.SIGTERM)


def fatal(message: str) -> NoReturn:
    """In a worker: a start-up error no restart can fix (the model cannot be loaded). Record the
    reason for the server process, ask the supervisor to stop every worker, and exit — instead of
    BentoML's restart loop. Outside a worker started by ``python -m bentos.server`` the reason is
    logged as one line."""
    path = os.environ.get(FATAL_ENV)
    written = False
    if path:
        try:
            with open(path, "x", encoding="utf-8") as fh:  # the first worker's reason wins
                fh.write(message.replace("\n", " "))
            written = True
        except FileExistsError:
            written = True
        except OSError:
            pass
    if not written:
        log.error("cannot start: %s", message.replace("\n", " "))
    for h in logging.getLogger().handlers:
        h.flush()
    os.kill(os.getppid(), signal.SIGTERM)
    os._exit(3)


if __name__ == "__main__":  # pragma: no cover - exercised by the subprocess tests
    sys.exit(main())
