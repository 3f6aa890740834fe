"""Helpers for tests that start servers: a free port, and the process tree of a process the test
started. Everything here looks only at the test's own processes (the tree under a pid it
recorded), never at the machine's other processes."""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something still listens on (or holds) ``host:port``."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


@dataclass(frozen=True)
class Proc:
    """One process, identified by pid and start time (a reused pid is another process)."""

    pid: int
    start: int
    args: str

    @classmethod
    def of(cls, pid: int) -> Proc | None:
        stat = _stat(pid)
        if stat is None:
            return None
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            args = ""
        return cls(pid, int(stat[19]), args.strip())

    def alive(self) -> bool:
        """Running (a zombie has ended: only its parent has not read its exit status yet)."""
        stat = _stat(self.pid)
        return stat is not None and int(stat[19]) == self.start and stat[0] != "Z"

    def parent(self) -> int | None:
        stat = _stat(self.pid)
        return int(stat[1]) if stat is not None and int(stat[19]) == self.start else None


def _stat(pid: int) -> list[str] | None:
    """Fields of ``/proc/PID/stat`` after the command name: ``[state, ppid, pgrp, session, …]``."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()


def children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out.extend(int(c) for c in (task / "children").read_text().split())
        except OSError:
            continue
    return out


def tree(pid: int) -> list[Proc]:
    """``pid`` and every process below it (children, their children, …) right now."""
    seen: list[Proc] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        proc = Proc.of(p)
        if proc is None:
            continue
        seen.append(proc)
        todo.extend(children(p))
    return seen


def wait_gone(procs: list[Proc], timeout: float) -> list[Proc]:
    """Wait until none of ``procs`` runs; returns those still running after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    left = [p for p in procs if p.alive()]
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = [p for p in left if p.alive()]
    return left


def kill_all(procs: list[Proc]) -> None:
    """SIGKILL what is left of ``procs`` (test clean-up: only processes the test recorded)."""
    import signal

    for p in procs:
        if p.alive():
            try:
                os.kill(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


class Descendants:
    """Everything a block of test code starts, however deep: this process becomes a *child
    subreaper* for the block (``prctl(PR_SET_CHILD_SUBREAPER)``), so a process whose parent died is
    re-parented to the test instead of to init, and stays visible as the test's own child.

    ``leftover(timeout)`` lists the processes started inside the block that still run (orphans
    included); exiting the block reaps the finished orphans and ends the subreaper role."""

    def __enter__(self) -> Descendants:
        import ctypes

        self._libc = ctypes.CDLL(None, use_errno=True)
        self._before = set(children(os.getpid()))
        if self._libc.prctl(36, 1, 0, 0, 0) != 0:  # PR_SET_CHILD_SUBREAPER
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")
        return self

    def new(self) -> list[Proc]:
        out = []
        for pid in children(os.getpid()):
            if pid not in self._before:
                out.extend(tree(pid))
        return out

    def leftover(self, timeout: float = 10.0) -> list[Proc]:
        deadline = time.monotonic() + timeout
        while True:
            left = [p for p in self.new() if p.alive()]
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.2)

    def __exit__(self, *exc: object) -> None:
        self._libc.prctl(36, 0, 0, 0, 0)
        for p in self.new():
            if not p.alive() and p.parent() == os.getpid():
                try:
                    os.waitpid(p.pid, os.WNOHANG)  # an orphan re-parented to us and finished
                except ChildProcessError:
                    pass
