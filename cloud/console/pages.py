"""The console's pages and actions: each takes the request's :class:`~cloud.console.app.Ctx`
(session, store, label space) and returns a response. They read and write only through the
store's named operations."""

from __future__ import annotations

import threading
from collections import OrderedDict
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jinja2
from markupsafe import Markup
from starlette.responses import FileResponse, Response, StreamingResponse

from cloud.console import charts, reports, spectrogram
from cloud.console import exports as export_files
from cloud.console.app import Ctx
from cloud.errors import BadRequest, NotFound, Unprocessable
from cloud.store import (
    DetectionStatus,
    DeviceRecord,
    QueueFilter,
    QueueReason,
    ReleaseRecord,
    ReviewItem,
    ReviewVerdict,
)
from shared_features import LabelSpace

AUDIO_TYPES = {
    "ogg": "audio/ogg",
    "oga": "audio/ogg",
    "wav": "audio/wav",
    "flac": "audio/flac",
    "mp3": "audio/mpeg",
}
CLASS_ORDER = ("Aves", "Amphibia", "Insecta", "Mammalia")


# ---------------------------------------------------------------------------------- template helpers
def species_markup(labels: LabelSpace, code: str | None) -> Markup:
    """Every species a user sees: code, scientific name, common name and taxon class."""
    if code is None:
        return Markup('<span class="sp none">—</span>')
    if code == "":
        return Markup('<span class="sp none">not an animal</span>')
    if code in labels:
        s = labels[code]
        return Markup(
            '<span class="sp"><code>{}</code> <i>{}</i> <span class="common">{}</span> '
            '<span class="cls cls-{}">{}</span></span>'
        ).format(s.code, s.scientific_name, s.common_name, s.taxon_class.lower(), s.taxon_class)
    return Markup('<span class="sp unknown"><code>{}</code> (not in the label space)</span>').format(code)


def when(dt: datetime | None) -> str:
    return "—" if dt is None else dt.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def ago(dt: datetime | None) -> str:
    if dt is None:
        return "never"
    s = (datetime.now(UTC) - dt).total_seconds()
    if s < 90:
        return "just now"
    for unit, size in (("day", 86400), ("h", 3600), ("min", 60)):
        if s >= size:
            n = int(s // size)
            return f"{n} {unit}{'s' if unit == 'day' and n > 1 else ''} ago"
    return "just now"


def size(n: int | None) -> str:
    if n is None:
        return "—"
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return f"{n:.1f} PB"


def install_filters(env: jinja2.Environment) -> None:
    env.filters.update(when=when, ago=ago, size=size, pct=lambda v: "—" if v is None else f"{v:.0%}")
    env.globals.update(
        species=lambda labels, code: species_markup(labels, code),
        reasons=list(QueueReason),
        verdicts=ReviewVerdict,
    )


# ---------------------------------------------------------------------------------- overview
def overview(ctx: Ctx) -> Response:
    ov = ctx.console.overview(ctx.store)
    labels = ctx.labels
    days = list(ov.tours_per_day)[-30:]
    weeks: dict[str, int] = {}
    for day, n in ov.tours_per_day.items():
        y, w, _ = date.fromisoformat(day).isocalendar()
        weeks[f"{y}-W{w:02d}"] = weeks.get(f"{y}-W{w:02d}", 0) + n
    week_keys = list(weeks)[-12:]
    classes: dict[str, dict[str, int]] = {
        c: {
            "in_label_space": n,
            "heard": 0,
            "confirmed": 0,
            "rejected": 0,
            "detections": 0,
            "det_confirmed": 0,
            "det_rejected": 0,
        }
        for c, n in sorted(labels.class_counts().items(), key=lambda kv: _class_rank(kv[0]))
    }
    for s in ov.species:
        cls = labels[s.code].taxon_class if s.code in labels else "unknown"
        row = classes.setdefault(
            cls,
            {
                "in_label_space": 0,
                "heard": 0,
                "confirmed": 0,
                "rejected": 0,
                "detections": 0,
                "det_confirmed": 0,
                "det_rejected": 0,
            },
        )
        row["heard"] += s.detections > 0
        row["confirmed"] += s.confirmed > 0
        row["rejected"] += s.rejected > 0 and s.confirmed == 0
        row["detections"] += s.detections
        row["det_confirmed"] += s.confirmed
        row["det_rejected"] += s.rejected
    rates = ov.disagreement_per_day[-60:]
    rate_chart = charts.line(
        [r.day for r in rates],
        [r.rate for r in rates],
        "Edge/cloud disagreement rate per day (clips recorded that day)",
        counts=[r.compared for r in rates],
        y_label="disagreement",
    )
    tours_chart = charts.bars(
        days, [charts.Series("tours", [ov.tours_per_day[d] for d in days], "tours")], "Tours per day"
    )
    weeks_chart = charts.bars(
        week_keys, [charts.Series("tours", [weeks[w] for w in week_keys], "tours")], "Tours per week"
    )
    releases = ctx.store.releases() if ov.devices else []
    compared = sum(r.compared for r in ov.disagreement_per_day)
    bad = sum(r.disagreements for r in ov.disagreement_per_day)
    return ctx.render(
        "overview.html",
        page="overview",
        title="Overview",
        ov=ov,
        classes=classes,
        rate_chart=rate_chart,
        tours_chart=tours_chart,
        weeks_chart=weeks_chart,
        weeks=weeks,
        overall_rate=bad / compared if compared else None,
        compared=compared,
        device_rows=[_device_row(d, releases) for d in ov.devices],
    )


def _class_rank(name: str) -> int:
    return CLASS_ORDER.index(name) if name in CLASS_ORDER else len(CLASS_ORDER)


def _device_row(d: DeviceRecord, releases: list[ReleaseRecord]) -> dict[str, Any]:
    return {"device": d, "release": device_release(d, releases)}


def device_release(d: DeviceRecord, releases: list[ReleaseRecord]) -> ReleaseRecord | None:
    """The release a device runs, by the model version it reported (``"<name> <version>"`` as the
    edge writes it, or the bare version)."""
    mv = d.status.model_version if d.status else None
    if not mv:
        return None
    for r in releases:
        name = r.manifest.get("name")
        if mv in (r.version, f"{name} {r.version}"):
            return r
    return None


# ---------------------------------------------------------------------------------- review
def _filters(ctx: Ctx) -> tuple[QueueFilter, dict[str, str]]:
    raw = {k: ctx.param(k) for k in ("species", "device", "since", "until", "reason")}
    raw = {k: v for k, v in raw.items() if v}
    if "species" in raw and raw["species"] not in ctx.labels:
        raise Unprocessable(f"species filter: unknown species code {raw['species']!r}")
    reason = None
    if "reason" in raw:
        try:
            reason = QueueReason(raw["reason"])
        except ValueError:
            raise Unprocessable(
                f"reason filter: {raw['reason']!r} is not one of {', '.join(r.value for r in QueueReason)}"
            ) from None
    since = _day(raw.get("since"), "since")
    until = _day(raw.get("until"), "until")
    f = QueueFilter(
        species=raw.get("species"),
        device=raw.get("device"),
        since=since,
        until=None if until is None else until + timedelta(days=1),  # the whole last day
        reason=reason,
    )
    return f, raw


def _day(value: str | None, name: str) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.combine(date.fromisoformat(value), time(0), UTC)
    except ValueError:
        raise Unprocessable(f"{name}: expected a date YYYY-MM-DD, got {value[:40]!r}") from None


def _offset(ctx: Ctx) -> int:
    raw = ctx.param("offset", "0") or "0"
    if not raw.isdigit() or int(raw) > 10**7:
        raise Unprocessable(f"offset: expected a whole number, got {raw[:20]!r}")
    return int(raw)


def candidates(item: ReviewItem, labels: LabelSpace) -> list[str]:
    """The species shown for "accept": the edge's detection first, then the edge's and the cloud's
    top-3 (each once, only species of the label space)."""
    out: list[str] = []
    if item.detection is not None:
        out.append(item.detection.species_code)
    out += [e.code for e in item.clip.edge_top[:3]]
    if item.confirmation is not None:
        out += [str(s["code"]) for s in item.confirmation.species[:3] if s.get("code")]
    return [c for c in dict.fromkeys(out) if c in labels]


def review_queue(ctx: Ctx) -> Response:
    f, raw = _filters(ctx)
    offset = _offset(ctx)
    page = ctx.store.review_queue(f, limit=ctx.console.settings.queue_page, offset=offset)
    current = page.items[0] if page.items else None
    return _review_page(ctx, current, page.items[1:], page.total, offset, raw)


def review_clip(ctx: Ctx) -> Response:
    item = ctx.store.review_item(ctx.request.path_params["clip"])
    if item is None:
        raise NotFound(f"no clip {ctx.request.path_params['clip'][:40]}")
    f, raw = _filters(ctx)
    page = ctx.store.review_queue(f, limit=ctx.console.settings.queue_page)
    upcoming = [i for i in page.items if i.clip.uuid != item.clip.uuid]
    back = ctx.param("back")
    return _review_page(ctx, item, upcoming, page.total, 0, raw, back=back, paged=False)


def _review_page(
    ctx: Ctx,
    current: ReviewItem | None,
    upcoming: list[ReviewItem],
    total: int,
    offset: int,
    raw: dict[str, str],
    back: str = "",
    paged: bool = True,
) -> Response:
    queue_url = f"{ctx.base}/review" + (f"?{urlencode(raw)}" if raw else "")
    nxt = back if back.startswith(ctx.base + "/") and not back.startswith("//") else queue_url
    saved = None
    if ctx.param("saved").isdigit():
        found = ctx.store.review_verdicts(int(ctx.param("saved")) - 1)
        saved = found[0] if found else None
    species_list = sorted(ctx.labels.species, key=lambda s: (_class_rank(s.taxon_class), s.common_name))
    size = ctx.console.settings.queue_page
    return ctx.render(
        "review.html",
        page="review",
        title="Review queue",
        item=current,
        choices=candidates(current, ctx.labels) if current else [],
        upcoming=upcoming,
        total=total,
        offset=offset,
        filters=raw,
        devices=[d.name for d in ctx.store.devices()],
        next_url=nxt,
        saved=saved,
        species_list=species_list,
        duration=_duration(current),
        prev_offset=max(offset - size, 0) if offset and paged else None,
        next_offset=offset + size if paged and total > offset + size else None,
    )


def _duration(item: ReviewItem | None) -> float | None:
    if item is None or item.detection is None:
        return None
    return max(0.0, (item.detection.end_time - item.detection.start_time).total_seconds())


def add_verdict(ctx: Ctx) -> Response:
    clip = ctx.request.path_params["clip"]
    item = ctx.store.review_item(clip)
    if item is None:
        raise NotFound(f"no clip {clip[:40]}")
    try:
        verdict = ReviewVerdict(ctx.form.get("verdict", ""))
    except ValueError:
        raise Unprocessable(
            f"verdict: {ctx.form.get('verdict', '')[:40]!r} is not one of "
            f"{', '.join(v.value for v in ReviewVerdict)}"
        ) from None
    code: str | None = ctx.form.get("species_code", "").strip() or None
    if verdict is ReviewVerdict.ACCEPT:
        shown = candidates(item, ctx.labels)
        code = code or (shown[0] if shown else None)
        if code not in shown:
            raise Unprocessable(
                f"accept: {code!r} is not one of the species shown for this clip "
                f"({', '.join(shown) or 'none'})"
            )
    elif verdict is ReviewVerdict.RELABEL:
        if code is None or code not in ctx.labels:
            raise Unprocessable(f"relabel: choose one of the {len(ctx.labels)} species (got {code!r})")
    else:
        code = None
    rec = ctx.store.add_review_verdict(item.clip.uuid, ctx.user.name, verdict, code)
    dest = ctx.safe_next(f"{ctx.base}/review")
    sep = "&" if "?" in dest else "?"
    return ctx.redirect(f"{dest}{sep}saved={rec.seq}")


def clip_audio(ctx: Ctx) -> Response:
    clip = ctx.store.clip(ctx.request.path_params["clip"])
    if clip is None or not Path(clip.path).is_file():
        raise NotFound("no such clip audio")
    ext = Path(clip.path).suffix.lstrip(".").lower()
    resp = FileResponse(clip.path, media_type=AUDIO_TYPES.get(ext, "application/octet-stream"))
    resp.headers["cache-control"] = "private, max-age=3600"
    return resp


_SPEC_CACHE: OrderedDict[tuple[str, float], bytes] = OrderedDict()
_SPEC_LOCK = threading.Lock()


def clip_spectrogram(ctx: Ctx) -> Response:
    clip = ctx.store.clip(ctx.request.path_params["clip"])
    if clip is None or not Path(clip.path).is_file():
        raise NotFound("no such clip audio")
    key = (clip.path, Path(clip.path).stat().st_mtime)
    with _SPEC_LOCK:
        data = _SPEC_CACHE.get(key)
        if data is not None:
            _SPEC_CACHE.move_to_end(key)
    if data is None:
        try:
            data = spectrogram.render(clip.path, ctx.console.settings.spectrogram_max_s)
        except Exception as exc:  # noqa: BLE001 - a clip that cannot be decoded: say so, keep serving
            raise BadRequest(f"clip {clip.uuid} cannot be decoded: {exc}") from None
        with _SPEC_LOCK:
            _SPEC_CACHE[key] = data
            while len(_SPEC_CACHE) > 128:
                _SPEC_CACHE.popitem(last=False)
    return Response(data, media_type="image/png", headers={"cache-control": "private, max-age=86400"})


def pin_clip(ctx: Ctx) -> Response:
    clip = ctx.request.path_params["clip"]
    pinned = ctx.form.get("pinned") == "1"
    rec = ctx.store.pin_clip(clip, pinned)
    return ctx.redirect(ctx.safe_next(f"{ctx.base}/review/{rec.uuid}"))


# ---------------------------------------------------------------------------------- tours
def tours(ctx: Ctx) -> Response:
    offset = _offset(ctx)
    items = ctx.store.tours(limit=50, offset=offset)
    return ctx.render("tours.html", page="tours", title="Tours", tours=items, offset=offset)


def tour(ctx: Ctx) -> Response:
    tl = ctx.store.tour_timeline(ctx.request.path_params["tour"])
    if tl is None:
        raise NotFound(f"no tour {ctx.request.path_params['tour'][:40]}")
    start = tl.tour.started_at
    ends = [tl.tour.ended_at or start]
    ends += [e.detection.end_time for e in tl.entries[-1:]] + [c.clip.recorded_at for c in tl.clips]
    total = max((max(ends) - start).total_seconds(), 1.0)
    marks, lanes = [], []
    for e in tl.entries:
        d, j = e.detection, e.judgement
        at = (d.start_time - start).total_seconds()
        name = _plain(ctx.labels, d.species_code)
        label = f"+{at:.0f} s: {name} ({d.band}, {d.confidence:.2f}) {j.status.value}"
        marks.append((at, f"mark {j.status.value} band-{d.band}", label, f"#det-{d.uuid}"))
        lanes.append(0)
    for c in tl.clips:
        at = (c.clip.recorded_at - start).total_seconds()
        done = c.latest is not None and c.latest.verdict is not ReviewVerdict.SKIP
        verdict = c.latest.verdict.value.replace("_", " ") if done and c.latest else "not reviewed"
        marks.append(
            (
                at,
                f"mark clip {'reviewed' if done else 'waiting'}",
                f"+{at:.0f} s: clip, {verdict}",
                f"#clip-{c.clip.uuid}",
            )
        )
        lanes.append(1)
    per_species = []
    for code, entries in tl.species.items():
        st = [e.judgement.status for e in entries]
        per_species.append(
            {
                "code": code,
                "detections": len(entries),
                "first": entries[0].detection.start_time,
                "confirmed": st.count(DetectionStatus.CONFIRMED),
                "rejected": st.count(DetectionStatus.REJECTED),
                "pending": st.count(DetectionStatus.PENDING),
            }
        )
    return ctx.render(
        "tour.html",
        page="tours",
        title=f"Tour of {tl.tour.guide}",
        tl=tl,
        timeline=charts.timeline(
            total, marks, "Detections and clips along the tour", lanes=("detections", "clips"), lane_of=lanes
        ),
        per_species=per_species,
        start=start,
        back=ctx.request.url.path,
    )


def _plain(labels: LabelSpace, code: str) -> str:
    if code in labels:
        s = labels[code]
        return f"{s.code} {s.scientific_name} ({s.common_name}, {s.taxon_class})"
    return code


# ---------------------------------------------------------------------------------- species
def species_index(ctx: Ctx) -> Response:
    ov = ctx.console.overview(ctx.store)
    counts = {s.code: s for s in ov.species}
    groups: dict[str, list[Any]] = {}
    for s in sorted(ctx.labels.species, key=lambda s: (_class_rank(s.taxon_class), s.common_name)):
        groups.setdefault(s.taxon_class, []).append((s, counts.get(s.code)))
    unknown = [c for c in counts if c not in ctx.labels]
    return ctx.render(
        "species_index.html", page="species", title="Species", groups=groups, unknown=unknown, counts=counts
    )


def species(ctx: Ctx) -> Response:
    code = ctx.request.path_params["code"]
    if code not in ctx.labels and ctx.store.species_page(code).detections == 0:
        raise NotFound(f"no species {code[:40]!r} in the label space")
    sp = ctx.store.species_page(code)
    days = [d.day for d in sp.per_day][-60:]
    per = {d.day: d for d in sp.per_day}
    chart = charts.bars(
        days,
        [
            charts.Series("confirmed", [per[d].confirmed for d in days], "confirmed"),
            charts.Series("rejected", [per[d].rejected for d in days], "rejected"),
            charts.Series(
                "not judged",
                [per[d].detections - per[d].confirmed - per[d].rejected for d in days],
                "pending",
            ),
        ],
        "Detections per day",
    )
    return ctx.render(
        "species.html",
        page="species",
        title=_plain(ctx.labels, code),
        sp=sp,
        code=code,
        chart=chart,
        back=ctx.request.url.path,
    )


# ---------------------------------------------------------------------------------- models
def models(ctx: Ctx) -> Response:
    rels = list(reversed(ctx.store.releases()))
    devices = ctx.store.devices()
    running: dict[str, list[DeviceRecord]] = {}
    rows = []
    for d in devices:
        r = device_release(d, rels)
        if r is not None:
            running.setdefault(r.version, []).append(d)
        rows.append({"device": d, "release": r})
    current = next((r for r in rels if r.current), None)
    return ctx.render(
        "models.html",
        page="models",
        title="Models and releases",
        releases=rels,
        running=running,
        device_rows=rows,
        current=current,
        report=lambda r: reports.report_path(r.manifest, ctx.deps.home),
        flat=_flat_metrics,
        changed=ctx.param("changed"),
    )


def _flat_metrics(manifest: dict[str, Any]) -> list[tuple[str, str]]:
    out = []
    for group in ("metrics", "validation"):
        val = manifest.get(group)
        if isinstance(val, dict):
            for k, v in val.items():
                if isinstance(v, int | float) and not isinstance(v, bool):
                    out.append((k if group == "metrics" else f"{group}.{k}", f"{v:.4g}"))
                elif isinstance(v, str | bool):
                    out.append((k if group == "metrics" else f"{group}.{k}", str(v)))
    return out[:12]


def _release(ctx: Ctx) -> ReleaseRecord:
    version = ctx.request.path_params["version"]
    found = next((r for r in ctx.store.releases() if r.version == version), None)
    if found is None:
        raise NotFound(f"no release {version[:40]!r}")
    return found


def confirm_release(ctx: Ctx) -> Response:
    rel = _release(ctx)
    current = ctx.store.current_release()
    action = "promote" if current is None or rel.created_at >= current.created_at else "roll back"
    return ctx.render(
        "confirm_release.html",
        page="models",
        title=f"Make release {rel.version} current",
        rel=rel,
        current=current,
        action=action,
    )


def set_release(ctx: Ctx) -> Response:
    rel = _release(ctx)
    if ctx.form.get("confirm") != rel.version:
        raise Unprocessable(f"confirm by sending confirm={rel.version!r} (the confirmation page does)")
    ctx.store.set_current_release(rel.version)
    return ctx.redirect(f"{ctx.base}/models?{urlencode({'changed': rel.version})}")


def loop_report(ctx: Ctx) -> Response:
    rel = _release(ctx)
    path = reports.report_path(rel.manifest, ctx.deps.home)
    if path is None:
        raise NotFound(f"release {rel.version} has no loop report")
    if not path.is_file():
        raise NotFound(f"release {rel.version}'s loop report is not on this server ({path.name})")
    return ctx.render(
        "report.html",
        page="models",
        title=f"Loop report of release {rel.version}",
        rel=rel,
        body=reports.render(path),
    )


def loop_asset(ctx: Ctx) -> Response:
    rel = _release(ctx)
    path = reports.report_path(rel.manifest, ctx.deps.home)
    found = None if path is None else reports.asset(path, ctx.request.path_params["name"])
    if found is None:
        raise NotFound("no such image in the loop report")
    return FileResponse(found[0], media_type=found[1], headers={"cache-control": "private, max-age=3600"})


# ---------------------------------------------------------------------------------- exports
def _range(ctx: Ctx) -> tuple[date, date]:
    today = datetime.now(UTC).date()
    since = _day(ctx.param("since"), "since")
    until = _day(ctx.param("until"), "until")
    lo = since.date() if since else today - timedelta(days=30)
    hi = until.date() if until else today
    if hi < lo:
        raise Unprocessable(f"the range ends ({hi}) before it starts ({lo})")
    return lo, hi


def exports(ctx: Ctx) -> Response:
    lo, hi = _range(ctx)
    return ctx.render(
        "exports.html",
        page="exports",
        title="Exports",
        formats=list(export_files.ExportFormat),
        since=lo,
        until=hi,
    )


def export_download(ctx: Ctx) -> Response:
    lo, hi = _range(ctx)
    try:
        fmt = export_files.ExportFormat(ctx.param("format", "csv"))
    except ValueError:
        raise Unprocessable(
            f"format: {ctx.param('format')[:20]!r} is not one of "
            f"{', '.join(f.value for f in export_files.ExportFormat)}"
        ) from None
    since = datetime.combine(lo, time(0), UTC)
    until = datetime.combine(hi + timedelta(days=1), time(0), UTC)
    body = export_files.stream(fmt, export_files.rows(ctx.store, since, until), ctx.labels)
    name = f"silencio-{fmt.value}-{lo}-{hi}.{fmt.extension}"
    return StreamingResponse(
        body,
        media_type=f"{fmt.media_type}; charset=utf-8",
        headers={"content-disposition": f'attachment; filename="{name}"', "cache-control": "no-store"},
    )
