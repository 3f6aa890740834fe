"""Debian's Chromium driven by Playwright for Python — for the console's real-browser tests and the
README's screenshots. Browsers are never downloaded: Playwright launches ``/usr/bin/chromium``
(``apt-get install chromium``; ``scripts/bootstrap.sh`` installs it when run as root)."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHROMIUM = Path(os.environ.get("SILENCIO_CHROMIUM", "/usr/bin/chromium"))
#: headless, no sandbox (containers, root), nothing reaching for the network by itself
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


def chromium_path() -> Path | None:
    """Debian's Chromium, when installed."""
    if CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    found = shutil.which("chromium")
    return Path(found) if found else None


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium (Playwright ``Browser``); raises ``RuntimeError`` when it is missing."""
    path = chromium_path()
    if path is None:
        raise RuntimeError(
            f"Chromium not found at {CHROMIUM}: install Debian's package (sudo apt-get install chromium) "
            "or run scripts/bootstrap.sh as root"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(path), args=LAUNCH_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def serve(app: Any, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve an ASGI app with uvicorn in a thread of this process; yields its base URL and stops it
    (and frees the port) when the block ends."""
    import socket

    import uvicorn

    sock = socket.socket()
    sock.bind((host, port))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the console server did not start on {host}:{port}")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
