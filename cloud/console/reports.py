"""A release's loop report (``manifest["loop_report"]``: a markdown file with PNG plots beside it,
written by ``silencio loop run``) rendered as HTML for the Models page. Raw HTML in the markdown is
not rendered; only image files inside the report's own directory are served."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from markupsafe import Markup

IMAGE_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
}


def report_path(manifest: dict[str, Any], home: Path) -> Path | None:
    """The report's file (a relative path is taken under ``$SILENCIO_HOME``), None when the
    manifest names none."""
    raw = manifest.get("loop_report")
    if not raw or not isinstance(raw, str):
        return None
    p = Path(raw).expanduser()
    return p if p.is_absolute() else home / p


def render(path: Path) -> Markup:
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark", {"html": False, "linkify": False}).enable("table")
    return Markup(md.render(path.read_text(encoding="utf-8", errors="replace")))


def asset(report: Path, name: str) -> tuple[Path, str] | None:
    """An image beside the report (or below its directory): its path and media type; None for
    anything else (another type, a path outside the directory, a missing file)."""
    root = report.parent.resolve()
    target = (root / name).resolve()
    media = IMAGE_TYPES.get(target.suffix.lower())
    if media is None or not target.is_relative_to(root) or not target.is_file():
        return None
    return target, media
