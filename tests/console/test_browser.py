"""The console in a real browser: Debian's Chromium driven by Playwright for Python (never a
downloaded browser), against the console served over HTTP on a SQLite store. Log in; review three
clips with the keyboard only; the verdicts appear on the tour page and in the store; an admin rolls
back a release; a device token is refused; a phone-sized screen; a label on every control.

Skipped only when Chromium is missing and we are not root (as root, scripts/bootstrap.sh installs
it, so a missing browser fails)."""

from __future__ import annotations

import os

import pytest

from cloud.console.browser import chromium, chromium_path, serve
from tests.console.conftest import mounted
from tests.console.world import build

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def browser():  # type: ignore[no-untyped-def]
    if chromium_path() is None:
        if os.geteuid() == 0:
            pytest.fail("Chromium is missing although we are root: scripts/bootstrap.sh installs it (apt)")
        pytest.skip("Chromium is not installed and we are not root: sudo apt-get install chromium")
    with chromium() as b:
        yield b


@pytest.fixture
def live(tmp_path):  # type: ignore[no-untyped-def]
    """The console over HTTP (uvicorn in a thread) on a SQLite store with the test world."""
    from cloud.console import Console, ConsoleDeps
    from cloud.store import SQLiteCloudStore

    store = SQLiteCloudStore(tmp_path / "cloud.db")
    world = build(store, tmp_path / "home")
    with serve(mounted(Console(ConsoleDeps.from_taxonomy(store, world.home)))) as url:
        yield url, world
    store.close()


@pytest.fixture
def page(browser):  # type: ignore[no-untyped-def]
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    p = ctx.new_page()
    p.set_default_timeout(15_000)
    errors: list[str] = []
    p.on("pageerror", lambda e: errors.append(str(e)))
    # an error answer (401, 403) is logged as "Failed to load resource"; anything else (a script
    # error, a refused inline script or style) fails the test
    p.on(
        "console",
        lambda m: (
            errors.append(m.text)
            if m.type == "error" and not m.text.startswith("Failed to load resource")
            else None
        ),
    )
    yield p
    ctx.close()
    assert errors == []  # no script error, no CSP violation on any page


def sign_in(page, url: str, token: str) -> None:  # type: ignore[no-untyped-def]
    page.goto(f"{url}/console/")
    assert "/console/login" in page.url
    page.keyboard.type(token)  # the token field has the focus
    page.keyboard.press("Enter")
    page.wait_for_url(f"{url}/console/")


def test_log_in_and_a_device_token_is_refused(page, live):
    url, world = live
    page.goto(f"{url}/console/review")
    assert "/console/login" in page.url and page.get_by_label("Login token").is_visible()
    page.get_by_label("Login token").fill(world.tokens["guide-device"])
    page.get_by_role("button", name="Sign in").click()
    assert page.get_by_role("alert").inner_text() == "that token does not open the console"
    assert "/console/login" in page.url
    assert not any(c["name"] == "silencio_console" for c in page.context.cookies())
    page.get_by_label("Login token").fill(world.tokens["ana"])
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{url}/console/review")
    cookie = next(c for c in page.context.cookies() if c["name"] == "silencio_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/console/"
    assert page.evaluate("document.cookie") == ""  # invisible to scripts
    page.get_by_role("link", name="Overview").click()
    assert page.get_by_role("heading", name="Overview", exact=True).is_visible()
    page.get_by_role("button", name="Log out").click()
    page.wait_for_url(f"{url}/console/login")
    page.goto(f"{url}/console/")
    assert "/console/login" in page.url


def test_review_three_clips_with_the_keyboard_only(page, live):
    from cloud.store import ReviewVerdict

    url, world = live
    page.goto(f"{url}/console/review")  # → the login page, the token field focused
    page.keyboard.type(world.tokens["ana"])
    page.keyboard.press("Enter")
    page.wait_for_url(f"{url}/console/review")
    c = world.clips
    # 1: the edge/cloud disagreement first: choose the cloud's species (key 2), accept (A)
    assert page.locator("#clip").get_attribute("data-clip") == c["disagree"]
    page.keyboard.press("2")
    assert page.locator('#accept-form input[value="amekes"]').is_checked()
    page.keyboard.press("a")
    page.wait_for_selector(".flash")
    assert (
        "accepted" in page.locator(".flash").inner_text() and "amekes" in page.locator(".flash").inner_text()
    )
    # 2: the guide's flag: relabel (R), search, Enter
    assert page.locator("#clip").get_attribute("data-clip") == c["flagged"]
    page.keyboard.press("r")
    assert page.evaluate("document.activeElement.id") == "relabel-search"
    page.keyboard.type("yellow-olive")
    assert "1 matching species" in page.locator("#relabel-count").inner_text()
    page.keyboard.press("Enter")
    page.wait_for_selector(f'#clip[data-clip="{c["uncertain"]}"]')
    assert "relabelled" in page.locator(".flash").inner_text()
    # 3: not an animal (N)
    page.keyboard.press("n")
    page.wait_for_selector(f'#clip:not([data-clip="{c["uncertain"]}"])')
    got = [(v.clip_uuid, v.reviewer, v.verdict, v.species_code) for v in world.store.review_verdicts()]
    assert got == [
        (c["disagree"], "ana", ReviewVerdict.ACCEPT, "amekes"),
        (c["flagged"], "ana", ReviewVerdict.RELABEL, "yeofly1"),
        (c["uncertain"], "ana", ReviewVerdict.NOT_AN_ANIMAL, None),
    ]
    # the verdicts on the tour page
    page.goto(f"{url}/console/tours/{world.tours[0]}")
    for clip, words in (
        (c["disagree"], "accepted"),
        (c["flagged"], "relabelled"),
        (c["uncertain"], "not an animal"),
    ):
        row = page.locator(f'[id="clip-{clip}"]').inner_text()
        assert words in row and "by ana" in row, row
    det = page.locator(f'[id="det-{world.detections["grekis"]}"]').inner_text()
    assert "rejected" in det and "amekes" in det and "American Kestrel" in det


def test_an_admin_rolls_back_a_release(page, live):
    url, world = live
    sign_in(page, url, world.tokens["bo"])
    page.get_by_role("link", name="Models").click()
    assert (
        "current" in page.locator("tr.current").inner_text()
        and "student 2" in page.locator("tr.current").inner_text()
    )
    page.get_by_role("link", name="Roll back to 1").click()
    assert page.get_by_role("heading").first.inner_text().startswith("Roll back: make release 1 current?")
    assert world.store.current_release().version == "2"  # nothing happens before the confirmation
    page.get_by_role("button", name="Yes, roll back to 1").click()
    page.wait_for_selector(".flash")
    assert "Release 1 is now current" in page.locator(".flash").inner_text()
    assert world.store.current_release().version == "1"
    assert "student 1" in page.locator("tr.current").inner_text()


def test_a_reviewer_cannot_switch_releases(page, live):
    url, world = live
    sign_in(page, url, world.tokens["ana"])
    page.goto(f"{url}/console/models")
    assert page.get_by_role("link", name="Roll back to 1").count() == 0
    r = page.goto(f"{url}/console/models/1/confirm")
    assert r.status == 403 and "only an admin" in page.locator(".error").inner_text()


@pytest.mark.parametrize(
    "path",
    [
        "/console/",
        "/console/review",
        "tour",
        "/console/species/grekis",
        "/console/models",
        "/console/exports",
    ],
)
def test_phone_screen_and_labels_on_every_control(page, live, path):
    url, world = live
    sign_in(page, url, world.tokens["bo"])
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(url + (f"/console/tours/{world.tours[0]}" if path == "tour" else path))
    # nothing wider than the phone's screen but the scrollable tables inside their own box
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 1, f"{path}: the page is {overflow}px wider than the screen"
    assert page.get_by_role("navigation", name="Console sections").is_visible()
    unlabelled = page.evaluate(
        """() => Array.from(document.querySelectorAll('input:not([type=hidden]), select, textarea, button, audio'))
            .filter(el => {
              if (el.tagName === 'BUTTON') return !el.textContent.trim() && !el.getAttribute('aria-label');
              if (el.getAttribute('aria-label') || el.getAttribute('aria-labelledby')) return false;
              return !(el.labels && el.labels.length) && !el.closest('label');
            }).map(el => el.outerHTML.slice(0, 120))"""
    )
    assert unlabelled == [], unlabelled
