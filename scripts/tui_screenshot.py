"""Render the guide's TUI on a replayed recording and save an SVG screenshot (docs/tui.svg).

    .venv/bin/python scripts/tui_screenshot.py --package EDGE_PACKAGE --file SOUNDSCAPE [--out docs/tui.svg]

The app runs headless (Textual's pilot) with the real agent, store and model package; the
screenshot is taken once ``--detections`` detections are in the feed.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--package", type=Path, required=True)
    ap.add_argument("--file", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "tui.svg")
    ap.add_argument("--detections", type=int, default=4)
    args = ap.parse_args()

    from textual.widgets import DataTable

    from edge.agent import Agent
    from edge.detector import PackageScorer
    from edge.settings import EdgeSettings
    from edge.tui import make_app

    s = EdgeSettings(home=Path(tempfile.mkdtemp()), guide="Ana", location="El Silencio")
    agent = Agent(s, scorer=PackageScorer(args.package), seed=0)
    agent.start_tour()
    app = make_app(s, file=args.file, agent=agent, realtime=False)

    async def run() -> None:
        async with app.run_test(size=(160, 46)) as pilot:
            feed = app.query_one("#feed", DataTable)
            for _ in range(600):
                await pilot.pause(0.1)
                if feed.row_count >= args.detections:
                    break
            feed.move_cursor(row=0)
            await pilot.pause(0.3)
            args.out.write_text(app.export_screenshot(title="El Silencio Acoustic Explorer"))
            await pilot.press("q")

    asyncio.run(run())
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
