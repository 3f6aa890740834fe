"""Run ``silencio cloud serve`` replicas on this machine: each in its own process group (the server
and every worker it starts), ready when ``/readyz`` answers, stopped by signalling that group —
SIGTERM, then SIGKILL for whatever outlives the grace period. The replica test and
``benchmarks/cloud_replicas.py`` start their servers with it; it never touches a process it did
not start."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class ServeProcess:
    """One ``python -m silencio cloud serve --host HOST --port PORT [args]`` with ``env`` added to
    this process's environment; its output goes to ``log_path``."""

    def __init__(
        self,
        port: int,
        env: Mapping[str, str],
        log_path: Path,
        *,
        host: str = "127.0.0.1",
        args: Sequence[str] = (),
        cwd: Path | None = None,
    ) -> None:
        self.host, self.port = host, port
        self.env = {**os.environ, **env}
        self.log_path = Path(log_path)
        self.args = list(args)
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> ServeProcess:
        cmd = [
            sys.executable,
            "-m",
            "silencio",
            "cloud",
            "serve",
            "--host",
            self.host,
            "--port",
            str(self.port),
        ]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [*cmd, *self.args],
            env=self.env,
            cwd=self.cwd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() signals exactly these processes
        )
        log.info("started %s (pid %d, log %s)", self.url, self.proc.pid, self.log_path)
        return self

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def wait_ready(self, timeout: float = 240.0) -> None:
        """Until ``/readyz`` answers 200; RuntimeError (with the log's tail) if the server exits or
        the time is up."""
        import httpx

        assert self.proc is not None, "start() first"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.url} exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{self.url} not ready within {timeout:g} s:\n{self.log_tail()}")

    def stop(self, grace: float = 30.0) -> int | None:
        """SIGTERM the process group, wait until none of it is left (at most ``grace`` s), then
        SIGKILL the rest. Returns the server's exit code."""
        proc = self.proc
        if proc is None:
            return None
        pgid = proc.pid  # start_new_session: the group id is the leader's pid
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            proc.poll()
            if not _group_alive(pgid):
                break
            time.sleep(0.2)
        else:
            log.warning("%s outlived SIGTERM by %g s: SIGKILL", self.url, grace)
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        code = proc.wait()
        if self._log is not None:
            self._log.close()
        self.proc = None
        return code

    def __enter__(self) -> ServeProcess:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - a process of ours we may not signal: still there
        return True
    return True
