"""Small charts as inline SVG, rendered on the server (no JavaScript, no plotting library): every
label is escaped text, every shape carries a ``<title>`` for screen readers and tooltips."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from markupsafe import Markup


@dataclass(frozen=True)
class Series:
    name: str
    values: list[float | None]
    css: str  # a class of console.css: its colour


def bars(
    labels: Sequence[str],
    series: Sequence[Series],
    title: str,
    *,
    width: int = 640,
    height: int = 200,
    stacked: bool = True,
    y_label: str = "",
) -> Markup:
    """A (stacked) bar chart: one bar group per label."""
    n = max(1, len(labels))
    totals = (
        [sum(v or 0 for v in vals) for vals in zip(*(s.values for s in series))]
        if stacked
        else [v or 0 for s in series for v in s.values]
    )
    top = max(totals, default=0)
    top = max(top, 1)
    left, bottom, pad = 40, 36, 8
    plot_w, plot_h = width - left - pad, height - bottom - pad
    slot = plot_w / n
    bar_w = min(48.0, max(1.0, slot * 0.8 / (1 if stacked else max(1, len(series)))))
    out = [_open(width, height, title)]
    out.append(_axis(left, pad, plot_w, plot_h, top, y_label))
    group_w = bar_w * (1 if stacked else max(1, len(series)))
    for i, label in enumerate(labels):
        x0 = left + i * slot + (slot - group_w) / 2
        base = 0.0
        for k, s in enumerate(series):
            v = s.values[i] or 0
            if v <= 0:
                continue
            h = plot_h * v / top
            x = x0 if stacked else x0 + k * bar_w
            y = pad + plot_h - (base + h if stacked else h)
            out.append(
                f'<rect class="{escape(s.css)}" x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{h:.1f}">'
                f"<title>{escape(label)}: {escape(s.name)} {v:g}</title></rect>"
            )
            if stacked:
                base += h
        if n <= 14 or i % max(1, n // 10) == 0:
            out.append(
                f'<text class="tick" x="{left + i * slot + slot / 2:.1f}" y="{height - bottom + 14}" '
                f'text-anchor="middle">{escape(_short(label))}</text>'
            )
    out.append(_legend(series, left, height - 6))
    out.append("</svg>")
    return Markup("".join(out))


def line(
    labels: Sequence[str],
    values: Sequence[float | None],
    title: str,
    *,
    counts: Sequence[int] | None = None,
    width: int = 640,
    height: int = 200,
    y_label: str = "",
    y_max: float = 1.0,
    percent: bool = True,
) -> Markup:
    """A line over days (gaps where a value is None); ``counts`` as faint bars behind it (how many
    items each point is computed from)."""
    n = max(1, len(labels))
    left, bottom, pad = 40, 36, 8
    plot_w, plot_h = width - left - pad, height - bottom - pad
    step = plot_w / n
    out = [_open(width, height, title)]
    out.append(_axis(left, pad, plot_w, plot_h, y_max, y_label, percent=percent))
    if counts:
        most = max(max(counts), 1)
        for i, c in enumerate(counts):
            h = plot_h * 0.5 * c / most
            out.append(
                f'<rect class="count" x="{left + i * step + step * 0.2:.1f}" y="{pad + plot_h - h:.1f}" '
                f'width="{step * 0.6:.1f}" height="{h:.1f}">'
                f"<title>{escape(labels[i])}: {c} compared</title></rect>"
            )
    points: list[list[tuple[float, float, int]]] = [[]]
    for i, v in enumerate(values):
        if v is None:
            points.append([])
            continue
        x = left + i * step + step / 2
        y = pad + plot_h * (1 - min(v, y_max) / y_max)
        points[-1].append((x, y, i))
    for run in points:
        if len(run) > 1:
            d = " ".join(f"{x:.1f},{y:.1f}" for x, y, _ in run)
            out.append(f'<polyline class="rate" points="{d}" fill="none"/>')
        for x, y, i in run:
            v = values[i] or 0.0
            shown = f"{v:.0%}" if percent else f"{v:g}"
            out.append(
                f'<circle class="rate-dot" cx="{x:.1f}" cy="{y:.1f}" r="3">'
                f"<title>{escape(labels[i])}: {shown}</title></circle>"
            )
    for i, label in enumerate(labels):
        if n <= 14 or i % max(1, n // 10) == 0:
            out.append(
                f'<text class="tick" x="{left + i * step + step / 2:.1f}" y="{height - bottom + 14}" '
                f'text-anchor="middle">{escape(_short(label))}</text>'
            )
    out.append("</svg>")
    return Markup("".join(out))


def timeline(
    total_s: float,
    marks: Sequence[tuple[float, str, str, str]],
    title: str,
    *,
    lanes: Sequence[str] = ("detections",),
    lane_of: Sequence[int] | None = None,
    width: int = 640,
) -> Markup:
    """Events along a tour, one lane each: ``(seconds from the start, css class, label, link)`` per
    mark; ``lane_of[i]``: the lane of mark ``i`` (default: the first)."""
    left, pad, lane_h = 76, 8, 30
    height = pad * 2 + lane_h * len(lanes) + 14
    plot_w = width - left - pad
    total = max(total_s, 1.0)
    out = [_open(width, height, title)]
    for k, name in enumerate(lanes):
        y = pad + k * lane_h
        mid = y + lane_h / 2
        out.append(
            f'<text class="tick" x="{left - 6}" y="{mid + 3:.1f}" text-anchor="end">{escape(name)}</text>'
        )
        out.append(f'<line class="grid" x1="{left}" y1="{mid:.1f}" x2="{left + plot_w}" y2="{mid:.1f}"/>')
    for i, (t, css, label, link) in enumerate(marks):
        k = lane_of[i] if lane_of is not None else 0
        x = left + plot_w * min(max(t, 0.0), total) / total
        y = pad + k * lane_h + 4
        out.append(
            f'<a href="{escape(link)}"><rect class="{escape(css)}" x="{x - 2:.1f}" y="{y}" width="4" '
            f'height="{lane_h - 8}"><title>{escape(label)}</title></rect></a>'
        )
    base = pad + lane_h * len(lanes) + 12
    out.append(f'<text class="tick" x="{left}" y="{base}">0</text>')
    out.append(
        f'<text class="tick" x="{left + plot_w}" y="{base}" text-anchor="end">{_duration(total)}</text>'
    )
    out.append("</svg>")
    return Markup("".join(out))


def _open(width: int, height: int, title: str) -> str:
    return (
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}" '
        f'preserveAspectRatio="xMidYMid meet" xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>'
    )


def _axis(left: int, pad: int, w: float, h: float, top: float, label: str, percent: bool = False) -> str:
    parts = [
        f'<line class="axis" x1="{left}" y1="{pad}" x2="{left}" y2="{pad + h}"/>',
        f'<line class="axis" x1="{left}" y1="{pad + h}" x2="{left + w}" y2="{pad + h}"/>',
    ]
    for frac in (0.0, 0.5, 1.0):
        y = pad + h * (1 - frac)
        v = top * frac
        text = f"{v:.0%}" if percent else (f"{v:.0f}" if v >= 10 or v == int(v) else f"{v:.1f}")
        parts.append(f'<text class="tick" x="{left - 4}" y="{y + 4:.1f}" text-anchor="end">{text}</text>')
        if frac:
            parts.append(f'<line class="grid" x1="{left}" y1="{y:.1f}" x2="{left + w}" y2="{y:.1f}"/>')
    if label:
        parts.append(f'<text class="tick" x="{left + 4}" y="{pad + 10}">{escape(label)}</text>')
    return "".join(parts)


def _legend(series: Sequence[Series], x: int, y: int) -> str:
    parts = []
    for s in series:
        parts.append(f'<rect class="{escape(s.css)}" x="{x}" y="{y - 9}" width="10" height="10"/>')
        parts.append(f'<text class="tick" x="{x + 14}" y="{y}">{escape(s.name)}</text>')
        x += 24 + 7 * len(s.name)
    return "".join(parts)


def _short(label: str) -> str:
    return label[5:] if len(label) == 10 and label[4] == "-" else label  # 2026-03-14 → 03-14


def _duration(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min" if h else f"{m} min {s:02d} s"
