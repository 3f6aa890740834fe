"""Progress for long work: a tqdm bar on stderr, driven by ``update(done, total)`` callbacks (the
shape every long-running library function here accepts as ``progress=``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

Progress = Callable[[int, int], None]


def progress_bar(desc: str, unit: str = "file") -> tuple[Progress, Callable[[], None]]:
    """``(update, close)``: ``update(done, total)`` creates the bar on first use and moves it."""
    from tqdm import tqdm

    state: dict[str, Any] = {}

    def update(done: int, total: int) -> None:
        if "bar" not in state:
            state["bar"] = tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, mininterval=0.5)
        bar = state["bar"]
        bar.total = total
        bar.update(done - bar.n)

    def close() -> None:
        if "bar" in state:
            state["bar"].close()

    return update, close


@contextmanager
def bar(desc: str, unit: str = "file") -> Iterator[Progress]:
    """``with bar("prepare") as update: work(progress=update)``; the bar closes on exit."""
    update, close = progress_bar(desc, unit)
    try:
        yield update
    finally:
        close()
