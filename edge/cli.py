"""``silencio edge …``: the guide's device from the command line (the TUI is ``edge tui``). Each
command parses its flags, calls the library, and prints; the store is reached only through its
named operations."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from edge.errors import EdgeError

#: a setting out of its range (``--guide`` longer than the wire allows, ``--lat 91``) is the user's error too
USER_ERRORS: tuple[type[BaseException], ...] = (EdgeError, ValidationError)
log = logging.getLogger(__name__)


def register(sub: Any) -> None:
    e = sub.add_parser(
        "edge",
        help="the guide's device: listen, analyze, watch, sync, update, export, clips, TUI",
        description="Offline detection on the device, its durable store, sync with the cloud.",
    )
    g = e.add_subparsers(dest="cmd", metavar="SUBCOMMAND", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--taxonomy", type=Path, help="taxonomy.csv (default: the packaged El Silencio taxonomy)"
        )
        p.add_argument("--threshold", type=float, help="detection threshold (default 0.5)")
        p.add_argument("--guide", help="guide's name for a new tour")
        p.add_argument("--location", help="tour location")
        coords(p)

    def coords(p: argparse.ArgumentParser) -> None:
        p.add_argument("--lat", type=float, help="latitude (WGS84) of the tour / for Darwin Core")
        p.add_argument("--lon", type=float, help="longitude (WGS84) of the tour / for Darwin Core")

    ls = g.add_parser("listen", help="detect from the microphone until Ctrl-C")
    ls.add_argument("--device", help="input device name or index (see `python -m sounddevice`)")
    ls.add_argument("--sync-every", type=float, default=0, help="background sync period in s (0: off)")
    ls.add_argument("--duration", type=float, help="stop after this many seconds of audio")
    common(ls)
    ls.set_defaults(func=cmd_listen)

    an = g.add_parser("analyze", help="detect in recordings (files or folders): a table, Raven and CSV files")
    an.add_argument("inputs", nargs="+", type=Path, help="audio files (WAV, FLAC, OGG, MP3) or folders")
    an.add_argument("--out", type=Path, help="directory for <name>.selections.txt and <name>.csv")
    an.add_argument("--realtime", action="store_true", help="replay at real-time speed (a simulated mic)")
    an.add_argument(
        "--start",
        help="when the recording began (ISO 8601, e.g. 2023-04-20T07:40:00; one recording only); "
        "default: from the file name (SITE_YYYYMMDD_HHMMSS, YYYYMMDD_HHMMSS), else its modification time",
    )
    an.add_argument("--timezone", help="time zone of file names and --start (IANA name; default UTC)")
    common(an)
    an.set_defaults(func=cmd_analyze)

    wa = g.add_parser("watch", help="process each new recording that appears in a folder")
    wa.add_argument("folder", type=Path, help="folder to watch")
    wa.add_argument("--idle-exit", type=float, help="stop after this many seconds without a new file")
    common(wa)
    wa.set_defaults(func=cmd_watch)

    sy = g.add_parser("sync", help="send detections, feedback and clips; fetch confirmations")
    sy.add_argument("--url", help="cloud URL (default SILENCIO_EDGE_CLOUD_URL)")
    sy.add_argument("--token", help="device token (default SILENCIO_EDGE_TOKEN)")
    sy.add_argument("--clips", type=int, help="at most this many clips in this run")
    sy.set_defaults(func=cmd_sync)

    en = g.add_parser(
        "enroll",
        help="pin the cloud, this device's token and the cloud's release key (once per device)",
        description="Checks that the cloud accepts the token and whether its current release verifies "
        "with the key, then writes $SILENCIO_HOME/edge/enrolment.json (mode 0600). Model updates are "
        "installed only when signed by the pinned key (or a key it rotated to).",
    )
    en.add_argument("--cloud", required=True, help="cloud URL, e.g. https://cloud.example.org")
    en.add_argument("--token", required=True, help="this device's token (silencio cloud add-device)")
    en.add_argument(
        "--release-key",
        required=True,
        help="the cloud's release public key (ed25519:…, printed by silencio cloud keygen) or its file",
    )
    en.add_argument("--offline", action="store_true", help="do not contact the cloud before writing")
    en.set_defaults(func=cmd_enroll)

    up = g.add_parser(
        "update", help="install the cloud's current edge model (signed, verified, shadow-evaluated)"
    )
    up.add_argument("--url", help="cloud URL")
    up.add_argument("--token", help="device token")
    up.add_argument("--taxonomy", type=Path, help="taxonomy.csv (to shadow-evaluate against BirdNET)")
    up.set_defaults(func=cmd_update)

    rb = g.add_parser("rollback", help="switch back to the previously installed model")
    rb.set_defaults(func=cmd_rollback)

    stt = g.add_parser("status", help="model, pending sync items, last sync, clip storage, privacy, disk")
    stt.set_defaults(func=cmd_status)

    tr = g.add_parser("tours", help="tours with their detection and species counts")
    tr.set_defaults(func=cmd_tours)

    ex = g.add_parser("export", help="detections as Raven selection table, CSV or Darwin Core")
    ex.add_argument(
        "--format", choices=["raven", "csv", "dwc"], required=True, help="Raven selections, CSV, Darwin Core"
    )
    ex.add_argument("--out", type=Path, required=True, help="output file")
    ex.add_argument("--tour", help="only this tour")
    ex.add_argument("--taxonomy", type=Path, help="taxonomy.csv for names the detections do not carry")
    coords(ex)
    ex.set_defaults(func=cmd_export)

    cl = g.add_parser("clips", help="the stored audio clips: recording, seconds in it, reason")
    cl.add_argument("--json", action="store_true", help="a JSON list (source, start, end, reason, …)")
    cl.set_defaults(func=cmd_clips)

    tu = g.add_parser("tui", help="the guide's terminal UI (microphone, or --file to replay)")
    tu.add_argument("--file", type=Path, help="replay this recording in real time instead of the mic")
    tu.add_argument("--device", help="input device name or index")
    common(tu)
    tu.set_defaults(func=cmd_tui)


def settings(args: argparse.Namespace) -> Any:
    from edge.settings import EdgeSettings

    kw: dict[str, Any] = {}
    for key, attr in (
        ("taxonomy", "taxonomy"),
        ("threshold", "threshold"),
        ("guide", "guide"),
        ("location", "location"),
        ("latitude", "lat"),
        ("longitude", "lon"),
        ("recorder_timezone", "timezone"),
    ):
        if getattr(args, attr, None) is not None:
            kw[key] = getattr(args, attr)
    for key, attr in (("cloud_url", "url"), ("token", "token")):
        if getattr(args, attr, None):
            kw[key] = getattr(args, attr)
    return EdgeSettings(**kw)


def _store(s: Any) -> Any:
    from edge.store import open_store

    return open_store(s.db_path)


def _print_detection(ev: Any, info: dict[str, Any]) -> None:
    s = ev.species
    print(
        f"{info['start_time'][11:19]}  {ev.band:6s} {ev.confidence:.2f}  {s.code:8s} {s.common_name} "
        f"({s.scientific_name}, {s.taxon_class})",
        flush=True,
    )


def cmd_listen(args: argparse.Namespace) -> int:
    import threading

    from edge.agent import Agent
    from edge.capture import MicrophoneSource

    s = settings(args)
    dev: int | str | None = int(args.device) if args.device and args.device.isdigit() else args.device
    src = MicrophoneSource(device=dev)
    agent = Agent(s, on_detection=_print_detection)
    print(f"listening ({agent.scorer.description}); Ctrl-C to stop", flush=True)
    stop = threading.Event()
    if args.sync_every and s.cloud_url and s.token:
        threading.Thread(target=_background_sync, args=(s, stop, args.sync_every), daemon=True).start()
    try:
        agent.run(src, max_seconds=args.duration)
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        agent.stop()
        agent.end_tour()
    print(
        f"overflows {src.stats.overflows}, dropped {src.stats.dropped_chunks}, "
        f"restarts {src.stats.restarts}; speech windows not kept {agent.sampler.stats.speech_suppressed}"
    )
    return 0


def _background_sync(s: Any, stop: Any, period: float) -> None:
    from edge.errors import SyncError

    store = _store(s)
    while not stop.wait(period):
        client = _client(s, store, retries=1)
        try:
            rep = client.run(clips=20)
            log.info("background sync: %s", rep.as_dict())
        except SyncError as exc:
            log.info("background sync: offline (%s)", exc)
        finally:
            client.close()


def cmd_analyze(args: argparse.Namespace) -> int:
    from edge.agent import Agent
    from edge.analyze import FileResult, analyze
    from edge.recording import parse_start

    s = settings(args)
    start = parse_start(args.start, s.recorder_timezone) if args.start else None
    agent = Agent(s)
    print(f"model: {agent.scorer.description}")
    rows_out: list[list[str]] = []

    def done(r: FileResult) -> None:
        if r.error is not None:
            print(f"error: {r.error}", file=sys.stderr)
            return
        if r.warning:
            print(f"warning: {r.path.name}: {r.warning}", file=sys.stderr)
        rec = r.recording
        when = f", start {rec.started_at[:19]}Z ({rec.start_basis})" if rec is not None else ""
        print(
            f"{r.path.name}: {r.seconds:.1f} s, {r.windows} windows, {len(r.detections)} detections, "
            f"{r.species} species{when}",
            file=sys.stderr,
        )
        for d in r.detections:
            rows_out.append(
                [
                    r.path.name,
                    f"{d.offset_start:.1f}",
                    f"{d.offset_end:.1f}",
                    d.start_time[11:19],
                    d.species_code,
                    d.common_name or "",
                    d.scientific_name or "",
                    d.taxon_class or "",
                    f"{d.confidence:.2f}",
                    d.band,
                ]
            )

    report = analyze(agent, args.inputs, start=start, realtime=args.realtime, out=args.out, on_file=done)
    header = [
        "file",
        "start",
        "end",
        "time",
        "code",
        "common name",
        "scientific name",
        "class",
        "conf",
        "band",
    ]
    widths = [max(len(str(r[i])) for r in [header, *rows_out]) for i in range(len(header))]
    for r in [header, *rows_out]:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
    if report.failed:
        print(f"{len(report.failed)} of {len(report.files)} inputs failed", file=sys.stderr)
        return 1
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    from edge.agent import Agent
    from edge.capture import DirectorySource

    s = settings(args)
    agent = Agent(s, on_detection=_print_detection)
    print(f"watching {args.folder} ({agent.scorer.description})", flush=True)
    res = None
    try:
        res = agent.run(DirectorySource(args.folder, idle_exit=args.idle_exit, tz=s.recorder_timezone))
    except KeyboardInterrupt:
        pass
    finally:
        agent.end_tour()
    for name, warning in res.warnings if res is not None else ():
        print(f"warning: {name}: {warning}", file=sys.stderr)
    return 0


def _client(s: Any, store: Any = None, retries: int | None = None) -> Any:
    from edge.status import device_report
    from edge.sync import SyncClient

    if not s.cloud_url or not s.token:
        raise EdgeError(
            "no cloud configured: silencio edge enroll --cloud URL --token TOKEN --release-key KEY "
            "(or pass --url and --token, or SILENCIO_EDGE_CLOUD_URL / _TOKEN)"
        )
    store = store if store is not None else _store(s)
    return SyncClient(
        store,
        s.cloud_url,
        s.token,
        timeout=s.sync_timeout_s,
        retries=s.sync_retries if retries is None else retries,
        batch=s.sync_batch,
        device=lambda: device_report(store, s.clip_dir).wire(),
    )


def cmd_sync(args: argparse.Namespace) -> int:
    client = _client(settings(args))
    try:
        rep = client.run(clips=args.clips)
    finally:
        client.close()
    print(json.dumps(rep.as_dict()))
    return 0


def cmd_enroll(args: argparse.Namespace) -> int:
    from edge.enrolment import enroll

    s = settings(args)
    res = enroll(s.home, args.cloud, args.token, args.release_key, check=not args.offline)
    print(f"enrolled with {res.cloud_url}: release key {res.key_id} pinned ({res.path}, mode 0600)")
    if res.release is not None:
        print(f"  {res.release}")
    return 0


def cmd_update(args: argparse.Namespace) -> int:
    import os

    from edge.detector import load_scorer
    from edge.enrolment import pin_release_key
    from edge.updater import check_and_update

    s = settings(args)
    client = _client(s)
    active = client.store.active_model()
    current = None
    try:
        current = load_scorer(Path(active.path) if active else None, s.taxonomy_path)
    except EdgeError:
        pass

    def rotated(new_key: str) -> None:
        pinned = pin_release_key(s.home, new_key)
        if os.environ.get("SILENCIO_EDGE_RELEASE_KEY") or pinned is None:
            print(
                "warning: the cloud's release key was rotated; SILENCIO_EDGE_RELEASE_KEY still names the old "
                f"key: set it to {new_key}",
                file=sys.stderr,
            )

    try:
        res = check_and_update(
            client, client.store, s.model_dir, current, release_key=s.release_key, on_key_rotated=rotated
        )
    finally:
        client.close()
    print(json.dumps(res, default=str))
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from edge.updater import rollback

    print(json.dumps(rollback(_store(settings(args)))))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from edge.status import device_report

    s = settings(args)
    st = _store(s)
    rep = device_report(st, s.clip_dir)
    out = {
        "database": str(s.db_path),
        "integrity": st.check(),
        "model": rep.model_version or "none installed (BirdNET zero-shot fallback)",
        "pending": {**rep.as_dict()["pending"]},
        "last_sync": rep.sync.last_sync,
        "last_sync_error": rep.sync.last_error_at,
        "clips_stored": rep.clips_stored,
        "clip_bytes": rep.clip_bytes,
        "clip_budget_bytes": int(s.total_clip_budget_mb * 1e6),
        "speech_suppressed": rep.speech_suppressed,
        "clips_skipped_budget": rep.clips_skipped_budget,
        "clips_skipped_space": rep.clips_skipped_space,
        "audio_paused": rep.audio_paused,
        "audio_pause_reason": rep.audio_pause.reason if rep.audio_pause else None,
        "free_bytes": rep.free_bytes,
        "free_space_watermark_bytes": int(s.min_free_mb * 1e6),
    }
    print(json.dumps(out, indent=2))
    return 0


def cmd_tours(args: argparse.Namespace) -> int:
    for ts in _store(settings(args)).tours():
        t = ts.tour
        print(
            f"{t.uuid}  {t.started_at[:19]}  {t.guide:12s} {str(t.location or ''):20s} "
            f"{ts.detections:5d} detections  {ts.species:3d} species"
        )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from edge.exports import write_csv, write_dwc, write_raven

    s = settings(args)
    st = _store(s)
    labels = _labels(st, s)
    rows = st.export_rows(args.tour)
    if args.format == "raven":
        n = write_raven(args.out, rows, labels)
    elif args.format == "csv":
        n = write_csv(args.out, rows, labels)
    else:
        n = write_dwc(args.out, rows, labels, s.latitude, s.longitude)
    print(f"{n} detections → {args.out}")
    return 0


def _labels(st: Any, s: Any) -> Any:
    """Names for detections that do not carry their own: the installed model's, else the taxonomy."""
    from shared_features import LabelSpace
    from shared_features.package import load_package

    active = st.active_model()
    if active is not None and s.taxonomy is None:
        return load_package(active.path, verify=False).labels
    return LabelSpace.from_taxonomy_csv(s.taxonomy_path)


def cmd_clips(args: argparse.Namespace) -> int:
    clips = _store(settings(args)).clips()
    items = [
        {
            "uuid": c.uuid,
            "source": c.source,
            "start": c.source_offset,
            "end": None
            if c.source_offset is None or c.duration_s is None
            else round(c.source_offset + c.duration_s, 3),
            "reason": str(c.reason),
            "detection_uuid": c.detection_uuid,
            "tour_uuid": c.tour_uuid,
            "path": c.path,
            "bytes": c.bytes,
            "recorded_at": c.recorded_at,
            "synced": c.synced_at is not None,
            "edge_top": [{"code": e.code, "probability": e.probability} for e in c.edge_top],
        }
        for c in clips
    ]
    if args.json:
        print(json.dumps(items, indent=1))
        return 0
    for it in items:
        span = (
            f"{it['start']:8.1f}–{it['end']:<8.1f}"
            if it["start"] is not None and it["end"] is not None
            else " " * 17
        )
        state = "synced" if it["synced"] else "pending"
        print(f"{it['reason']:9s} {str(it['source'] or ''):28s} {span} {state}")
    print(f"{len(items)} clips")
    return 0


def cmd_tui(args: argparse.Namespace) -> int:
    from edge.tui import run_tui

    return int(run_tui(settings(args), file=args.file, device=args.device))
