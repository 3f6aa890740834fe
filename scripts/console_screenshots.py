"""Screenshots of the ecologists' console for the README, from a real cloud home (the demo's):

    .venv/bin/python scripts/console_screenshots.py --home CLOUD_HOME [--taxonomy CSV] [--out docs]

Opens the home's store, adds a reviewer (``cloud.cli.add_console_user``, what ``silencio cloud
add-user`` does), serves the console on a free local port, and drives Debian's Chromium: signs in
with the keyboard, saves the overview, reviews the first clips of the queue with the keyboard
(accept, not an animal, skip), saves the review queue and the tour page. ``--taxonomy``: the label
space the home's model uses (the demo's synthetic species: its dataset's taxonomy.csv).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", type=Path, required=True, help="a cloud SILENCIO_HOME (with cloud/cloud.db)")
    ap.add_argument(
        "--taxonomy", type=Path, help="taxonomy.csv of the home's label space (default: packaged)"
    )
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs")
    ap.add_argument(
        "--reviews", type=int, default=3, help="clips to review with the keyboard before the shots"
    )
    args = ap.parse_args()

    from starlette.applications import Starlette
    from starlette.routing import Mount

    from cloud.cli import add_console_user
    from cloud.console import Console, ConsoleDeps
    from cloud.console.browser import chromium, serve
    from cloud.settings import CloudSettings
    from cloud.store import open_store

    settings = CloudSettings(home=args.home)
    token, where = add_console_user(settings, f"reviewer-{int(time.time())}", "reviewer")
    print(f"reviewer added to {where}")
    store = open_store(settings)
    deps = ConsoleDeps.from_taxonomy(store, args.home, args.taxonomy)
    app = Starlette(routes=[Mount("/console", Console(deps).app)])
    args.out.mkdir(parents=True, exist_ok=True)
    tour = next(iter(store.tours(limit=1)), None)
    with serve(app) as url, chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 1000}, device_scale_factor=1)
        page.goto(f"{url}/console/")
        page.keyboard.type(token)
        page.keyboard.press("Enter")
        page.wait_for_url(f"{url}/console/")
        page.screenshot(path=str(args.out / "console-overview.png"), full_page=True)
        page.goto(f"{url}/console/review")
        for key in ["a", "n", "s"][: args.reviews]:
            if page.locator("#clip").count() == 0:
                break
            before = page.locator("#clip").get_attribute("data-clip")
            page.keyboard.press(key)
            page.wait_for_function(
                "b => !document.querySelector('#clip') || document.querySelector('#clip').dataset.clip !== b",
                arg=before,
            )
        page.wait_for_load_state("networkidle")
        page.screenshot(path=str(args.out / "console-review.png"))  # the screen the reviewer sees
        if tour is not None:
            page.goto(f"{url}/console/tours/{tour.uuid}")
            page.screenshot(path=str(args.out / "console-tour.png"))
    store.close()
    for name in ("overview", "review", "tour"):
        p = args.out / f"console-{name}.png"
        if p.exists():
            print(f"{p} ({p.stat().st_size / 1e3:.0f} kB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
