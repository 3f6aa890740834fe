"""Pilot-driven tests of the guide's TUI over a replayed recording (FakeScorer backend, real store,
real agent worker): the feed fills, keys write feedback to the store, the flag flow queues the clip,
and an SVG screenshot shows species by name."""

from __future__ import annotations

import asyncio
import html

import numpy as np
import soundfile as sf
from textual.widgets import DataTable, OptionList

from edge.agent import Agent
from edge.tui import SpeciesPicker, make_app

from .conftest import FakeScorer, tone_then_silence


async def _until(pilot, cond, timeout=30.0):
    for _ in range(int(timeout / 0.05)):
        if cond():
            return
        await pilot.pause(0.05)
    raise AssertionError("condition not reached")


def test_tui_feed_keys_and_flag_flow(tmp_path, labels, edge_settings):
    x = np.concatenate([tone_then_silence(6, 8), tone_then_silence(6, 8)])
    sf.write(tmp_path / "rec.wav", x, 32_000)
    agent = Agent(edge_settings, scorer=FakeScorer(labels), seed=0)
    app = make_app(edge_settings, file=tmp_path / "rec.wav", agent=agent, realtime=False)

    async def run():
        async with app.run_test(size=(170, 48)) as pilot:
            feed = app.query_one("#feed", DataTable)
            await _until(pilot, lambda: feed.row_count == 2)
            first = list(app.rows)[0]
            feed.move_cursor(row=0)
            await pilot.press("c")
            await _until(pilot, lambda: agent.store.detection(first)["status"] == "confirmed")
            assert agent.store.query("SELECT kind FROM feedback")[0]["kind"] == "confirmed"
            card = str(app.query_one("#card").render())
            assert labels[0].common_name in card and "heard 2 times" in card
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
            await _until(pilot, lambda: agent.store.detection(second)["status"] == "disputed")
            fb = agent.store.query("SELECT * FROM feedback WHERE detection_uuid = ?", [second])[0]
            assert fb["kind"] == "wrong_species" and fb["correct_code"] == target.code
            clip = agent.store.query("SELECT reason, synced_at FROM clips WHERE detection_uuid = ?", [second])
            assert clip and clip[0]["reason"] == "flagged" and clip[0]["synced_at"] is None
            # s without a cloud: a clear notice, nothing crashes
            await pilot.press("s")
            await pilot.pause(0.3)
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
