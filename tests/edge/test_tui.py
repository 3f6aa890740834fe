"""Pilot-driven tests of the guide's TUI over a replayed recording (FakeScorer backend, real store,
real agent worker): the feed fills, keys write the guide's verdicts, the flag flow queues the clip,
the end of a replay is shown, columns fit, the status line tells pending from rejected, and the app
never touches the store from its UI thread (state comes from workers as typed messages). A real
terminal run (``silencio edge tui --file``, no flags) keeps every log line off the screen."""

from __future__ import annotations

import asyncio
import html
import os
import threading

import numpy as np
import pytest
import soundfile as sf
from textual.widgets import DataTable, OptionList, Static

from edge.agent import Agent
from edge.records import SyncMarks
from edge.store import open_store
from edge.tui import SpeciesPicker, make_app

from .conftest import FakeScorer, tone_then_silence


async def _until(pilot, cond, timeout=30.0):
    for _ in range(int(timeout / 0.05)):
        if cond():
            return
        await pilot.pause(0.05)
    raise AssertionError("condition not reached")


class UIThreadWatch:
    """The store, recording every operation called from the UI (main) thread."""

    def __init__(self, inner):
        self._inner, self.ui_thread, self.ui_calls = inner, threading.main_thread(), []

    def __getattr__(self, name):
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr

        def call(*a, **kw):
            if threading.current_thread() is self.ui_thread and self.armed:
                self.ui_calls.append(name)
            return attr(*a, **kw)

        return call

    armed = False


def test_tui_feed_keys_and_flag_flow(tmp_path, labels, edge_settings):
    x = np.concatenate([tone_then_silence(6, 8), tone_then_silence(6, 8)])
    sf.write(tmp_path / "rec.wav", x, 32_000)
    store = UIThreadWatch(open_store(edge_settings.db_path))
    agent = Agent(edge_settings, scorer=FakeScorer(labels), store=store, seed=0)
    store.armed = True
    db = store._inner  # the test's own reads, not the app's
    app = make_app(edge_settings, file=tmp_path / "rec.wav", agent=agent, realtime=False)

    async def run():
        async with app.run_test(size=(170, 48)) as pilot:
            feed = app.query_one("#feed", DataTable)
            calling = app.query_one("#calling", DataTable)
            widest = []
            await _until(
                pilot,
                lambda: (
                    widest.append(calling.virtual_size.width - calling.scrollable_content_region.width)
                    or feed.row_count == 2
                ),
            )
            assert max(widest) <= 0  # the calling-now table never needed scrolling while it filled
            first = list(app.rows)[0]
            # the replay's end is shown, and stays in the status line
            await _until(pilot, lambda: app.ended is not None)
            status = lambda: str(app.query_one("#status", Static).render())  # noqa: E731
            await _until(pilot, lambda: "rec.wav ended (2 detections)" in status())
            assert "never synced" in status() and "not synced yet" not in status()
            assert "pending 2 detections" in status()
            feed.move_cursor(row=0)
            await pilot.press("c")
            await _until(pilot, lambda: db.detection(first).guide_verdict == "confirmed")
            assert db.detection(first).status == "pending"  # the cloud's verdict is its own
            await _until(pilot, lambda: "you ✓" in str(feed.get_row(first)[-1]))
            card = str(app.query_one("#card").render())
            assert labels[0].common_name in card and "heard twice" in card
            # x → searchable species list → pick → feedback + flagged clip
            feed.move_cursor(row=1)
            second = list(app.rows)[1]
            await pilot.press("x")
            await _until(pilot, lambda: isinstance(app.screen, SpeciesPicker))
            target = labels[7]
            await pilot.press(*target.code)
            await pilot.pause(0.2)
            ol = app.screen.query_one("#choices", OptionList)
            assert ol.option_count >= 1 and ol.get_option_at_index(0).id == target.code
            await pilot.press("enter")
            await _until(pilot, lambda: db.detection(second).guide_verdict == "wrong_species")
            # the verdict is committed first, the flagged clip (gated, encoded) right after it
            await _until(pilot, lambda: any(c.detection_uuid == second for c in db.clips()))
            clip = [c for c in db.clips() if c.detection_uuid == second]
            assert clip and clip[0].reason == "flagged" and clip[0].synced_at is None
            # s without a cloud: a clear notice, nothing crashes
            await pilot.press("s")
            await pilot.pause(0.3)
            # every column fits: no horizontal scrolling in the feed or the calling-now table
            for table in app.query(DataTable):
                assert table.virtual_size.width <= table.scrollable_content_region.width, table.id
            svg = app.export_screenshot()
            text = html.unescape(svg).replace("\xa0", " ")
            assert labels[0].common_name in text and "tour summary" in text and "pending" in text
            (tmp_path / "tui.svg").write_text(svg)
            old_tour = agent.tour_uuid
            await pilot.press("n")
            await _until(pilot, lambda: agent.tour_uuid != old_tour)
            assert feed.row_count == 0
            await pilot.press("q")

    asyncio.run(run())
    assert (tmp_path / "tui.svg").stat().st_size > 10_000
    assert store.ui_calls == [], f"the UI thread called the store: {store.ui_calls}"


def test_tui_narrow_terminal_and_rejected_detections(tmp_path, labels, edge_settings):
    """100×30: the feed takes the width and its columns fit; a detection the cloud rejected is
    shown as rejected (with the reason on its card), never as pending; below the free-space
    watermark the status line says audio is paused, and why."""
    sf.write(tmp_path / "rec.wav", tone_then_silence(6, 8), 32_000)
    s = edge_settings.model_copy(update={"random_clip_rate": 1.0, "min_free_mb": 1e9})
    agent = Agent(s, scorer=FakeScorer(labels), seed=0)
    app = make_app(s, file=tmp_path / "rec.wav", agent=agent, realtime=False)

    async def run():
        async with app.run_test(size=(100, 30)) as pilot:
            feed = app.query_one("#feed", DataTable)
            await _until(pilot, lambda: feed.row_count == 1 and app.ended is not None)
            u = list(app.rows)[0]
            agent.store.mark_synced(SyncMarks([], [], {u: "species code not in the cloud's label space"}))
            app.run_sync()  # no cloud configured: the worker still posts the detections' states
            await _until(pilot, lambda: str(feed.get_row(u)[-1]) == "rejected")
            status = str(app.query_one("#status", Static).render())
            assert "pending 0 detections" in status and "1 rejected" in status
            assert "AUDIO PAUSED: free space" in status and "watermark" in status
            feed.move_cursor(row=0)
            app._show_card(u)
            assert "rejected by the cloud: species code not in" in str(app.query_one("#card").render())
            assert app.has_class("narrow")
            assert feed.virtual_size.width <= feed.scrollable_content_region.width
            await pilot.press("q")

    asyncio.run(run())


@pytest.mark.slow
def test_tui_in_a_real_terminal_keeps_logs_off_the_screen(tmp_path, mini):
    """``silencio -v edge tui --file REC`` on a fresh home, in a pseudo-terminal: LiteRT's
    C-level ``INFO: Created TensorFlow Lite XNNPACK delegate`` and Python's log lines go to the log
    file, never onto the screen; the replay's end is shown; q quits."""
    import pty
    import select
    import subprocess
    import sys
    import time

    from tests.conftest import REPO

    rec = mini / "train_audio" / "cattyr" / "iNat854652.ogg"  # 7 s
    home = tmp_path / "home"
    env = {
        **os.environ,
        "SILENCIO_HOME": str(home),
        "TERM": "xterm-256color",
        "COLUMNS": "120",
        "LINES": "36",
    }
    master, slave = pty.openpty()
    import fcntl
    import struct
    import termios

    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 36, 120, 0, 0))
    proc = subprocess.Popen(
        # -v: LiteRT's C-level INFO line is then kept (without it, it is dropped), so the test sees
        # where the TUI sends descriptor 2
        [sys.executable, "-m", "silencio.cli", "-v", "edge", "tui", "--file", str(rec)],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        cwd=REPO,
        env=env,
        start_new_session=True,
    )
    os.close(slave)
    screen = b""
    deadline = time.time() + 120
    quit_sent = False
    try:
        while time.time() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                screen += chunk
            if not quit_sent and b"ended" in screen:
                time.sleep(0.5)
                os.write(master, b"q")
                quit_sent = True
            if proc.poll() is not None and not ready:
                break
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    text = screen.decode("utf-8", "replace")
    assert quit_sent, text[-2000:]
    assert "El Silencio Acoustic Explorer" in text
    for noise in ("XNNPACK", "INFO", "WARNING", "Traceback"):
        assert noise not in text, f"{noise!r} reached the screen"
    log = (home / "edge" / "edge.log").read_text()
    assert "no trained package installed" in log  # the library's warnings are in the log file
    assert "XNNPACK" in log  # and so is LiteRT's C-level stderr
