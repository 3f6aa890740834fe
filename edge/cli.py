"""``silencio edge …``: the guide's device from the command line (the TUI is ``edge tui``)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from edge.errors import EdgeError

USER_ERRORS: tuple[type[BaseException], ...] = (EdgeError,)
log = logging.getLogger(__name__)


def register(sub: Any) -> None:
    e = sub.add_parser(
        "edge",
        help="the guide's device: listen, analyze, watch, sync, update, export, TUI",
        description="Offline detection on the device, its durable store, sync with the cloud.",
    )
    g = e.add_subparsers(dest="cmd", metavar="SUBCOMMAND", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--taxonomy", type=Path, help="taxonomy.csv (BirdNET fallback when no package)")
        p.add_argument("--threshold", type=float, help="detection threshold (default 0.5)")
        p.add_argument("--guide", help="guide's name for a new tour")
        p.add_argument("--location", help="tour location")

    ls = g.add_parser("listen", help="detect from the microphone until Ctrl-C")
    ls.add_argument("--device", help="input device name or index (see `python -m sounddevice`)")
    ls.add_argument("--sync-every", type=float, default=0, help="background sync period in s (0: off)")
    common(ls)
    ls.set_defaults(func=cmd_listen)

    an = g.add_parser("analyze", help="detect in recordings: a table, plus Raven and CSV files")
    an.add_argument("files", nargs="+", type=Path, help="audio files (WAV, FLAC, OGG, MP3)")
    an.add_argument("--out", type=Path, help="directory for <name>.selections.txt and <name>.csv")
    an.add_argument("--realtime", action="store_true", help="replay at real-time speed (a simulated mic)")
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

    up = g.add_parser("update", help="install the cloud's current edge model (verified, shadow-evaluated)")
    up.add_argument("--url", help="cloud URL")
    up.add_argument("--token", help="device token")
    up.add_argument("--taxonomy", type=Path, help="taxonomy.csv (to shadow-evaluate against BirdNET)")
    up.set_defaults(func=cmd_update)

    rb = g.add_parser("rollback", help="switch back to the previously installed model")
    rb.set_defaults(func=cmd_rollback)

    stt = g.add_parser("status", help="model, pending sync items, last sync, clip storage")
    stt.set_defaults(func=cmd_status)

    tr = g.add_parser("tours", help="tours with their detection and species counts")
    tr.set_defaults(func=cmd_tours)

    ex = g.add_parser("export", help="detections as Raven selection table, CSV or Darwin Core")
    ex.add_argument(
        "--format", choices=["raven", "csv", "dwc"], required=True, help="Raven selections, CSV, Darwin Core"
    )
    ex.add_argument("--out", type=Path, required=True, help="output file")
    ex.add_argument("--tour", help="only this tour")
    ex.add_argument("--taxonomy", type=Path, help="taxonomy.csv for names (default: the model's)")
    ex.set_defaults(func=cmd_export)

    tu = g.add_parser("tui", help="the guide's terminal UI (microphone, or --file to replay)")
    tu.add_argument("--file", type=Path, help="replay this recording in real time instead of the mic")
    tu.add_argument("--device", help="input device name or index")
    common(tu)
    tu.set_defaults(func=cmd_tui)


def settings(args: argparse.Namespace) -> Any:
    from edge.settings import EdgeSettings

    kw: dict[str, Any] = {}
    for key in ("taxonomy", "threshold", "guide", "location"):
        if getattr(args, key, None) is not None:
            kw[key] = getattr(args, key)
    for key, attr in (("cloud_url", "url"), ("token", "token")):
        if getattr(args, attr, None):
            kw[key] = getattr(args, attr)
    return EdgeSettings(**kw)


def _print_detection(ev: Any, info: dict[str, Any]) -> None:
    s = ev.species
    print(
        f"{info['start_time'][11:19]}  {ev.band:9s} {ev.confidence:.2f}  {s.code:8s} {s.common_name} "
        f"({s.scientific_name}, {s.taxon_class})",
        flush=True,
    )


def cmd_listen(args: argparse.Namespace) -> int:
    import threading

    from edge.agent import Agent
    from edge.capture import MicrophoneSource

    s = settings(args)
    agent = Agent(s, on_detection=_print_detection)
    dev: int | str | None = int(args.device) if args.device and args.device.isdigit() else args.device
    src = MicrophoneSource(device=dev)
    print(f"listening ({agent.scorer.description}); Ctrl-C to stop", flush=True)
    stop = threading.Event()
    if args.sync_every and s.cloud_url and s.token:
        threading.Thread(target=_background_sync, args=(s, stop, args.sync_every), daemon=True).start()
    try:
        agent.run(src)
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        agent.stop()
        agent.end_tour()
    print(
        f"overflows {src.stats.overflows}, dropped {src.stats.dropped_chunks}, restarts {src.stats.restarts}"
    )
    return 0


def _background_sync(s: Any, stop: Any, period: float) -> None:
    from edge.errors import SyncError
    from edge.store import EdgeStore
    from edge.sync import SyncClient

    store = EdgeStore(s.db_path)
    while not stop.wait(period):
        client = SyncClient(store, s.cloud_url, s.token, timeout=s.sync_timeout_s, retries=1)
        try:
            rep = client.run(clips=20)
            log.info("background sync: %s", rep.as_dict())
        except SyncError as exc:
            log.info("background sync: offline (%s)", exc)
        finally:
            client.close()


def cmd_analyze(args: argparse.Namespace) -> int:
    from edge.agent import Agent
    from edge.capture import FileSource
    from edge.exports import write_csv, write_raven

    agent = Agent(settings(args))
    print(f"model: {agent.scorer.description}")
    rows_out = []
    for f in args.files:
        if not f.is_file():
            raise EdgeError(f"{f}: no such file")
        tour = agent.start_tour(location=f.name)
        try:
            res = agent.run(FileSource(f, realtime=args.realtime))
        except Exception as exc:
            from shared_features.errors import SilencioFeatureError

            if isinstance(exc, SilencioFeatureError):
                print(f"{f.name}: {exc}", file=sys.stderr)
                continue
            raise
        agent.end_tour()
        dets = sorted(agent.store.detections(tour), key=lambda d: d["offset_start"])
        for d in dets:
            sp = agent.scorer.labels[d["species_code"]]
            rows_out.append(
                [
                    f.name,
                    f"{d['offset_start']:.1f}",
                    f"{d['offset_end']:.1f}",
                    sp.code,
                    sp.common_name,
                    sp.scientific_name,
                    sp.taxon_class,
                    f"{d['confidence']:.2f}",
                    d["band"],
                ]
            )
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            write_raven(args.out / f"{f.stem}.selections.txt", dets, agent.scorer.labels)
            write_csv(args.out / f"{f.stem}.csv", dets, agent.scorer.labels)
        print(
            f"{f.name}: {res.seconds:.1f} s, {res.windows} windows, {len(dets)} detections, "
            f"{len(res.species)} species",
            file=sys.stderr,
        )
    header = ["file", "start", "end", "code", "common name", "scientific name", "class", "conf", "band"]
    widths = [max(len(str(r[i])) for r in [header, *rows_out]) for i in range(len(header))]
    for r in [header, *rows_out]:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    from edge.agent import Agent
    from edge.capture import DirectorySource

    agent = Agent(settings(args), on_detection=_print_detection)
    print(f"watching {args.folder} ({agent.scorer.description})", flush=True)
    try:
        agent.run(DirectorySource(args.folder, idle_exit=args.idle_exit))
    except KeyboardInterrupt:
        pass
    finally:
        agent.end_tour()
    return 0


def _client(s: Any) -> Any:
    from edge.store import EdgeStore
    from edge.sync import SyncClient

    if not s.cloud_url or not s.token:
        raise EdgeError("no cloud configured: pass --url and --token (or SILENCIO_EDGE_CLOUD_URL / _TOKEN)")
    return SyncClient(
        EdgeStore(s.db_path),
        s.cloud_url,
        s.token,
        timeout=s.sync_timeout_s,
        retries=s.sync_retries,
        batch=s.sync_batch,
    )


def cmd_sync(args: argparse.Namespace) -> int:
    client = _client(settings(args))
    try:
        rep = client.run(clips=args.clips)
    finally:
        client.close()
    print(json.dumps(rep.as_dict()))
    return 0


def cmd_update(args: argparse.Namespace) -> int:
    from edge.detector import load_scorer
    from edge.updater import check_and_update

    s = settings(args)
    client = _client(s)
    active = client.store.active_model()
    current = None
    try:
        current = load_scorer(Path(active["path"]) if active else None, s.taxonomy_path)
    except EdgeError:
        pass
    try:
        res = check_and_update(client, client.store, s.model_dir, current)
    finally:
        client.close()
    print(json.dumps(res, default=str))
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from edge.store import EdgeStore
    from edge.updater import rollback

    print(json.dumps(rollback(EdgeStore(settings(args).db_path))))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from edge.store import EdgeStore

    s = settings(args)
    st = EdgeStore(s.db_path)
    active = st.active_model()
    out = {
        "database": str(s.db_path),
        "integrity": st.integrity(),
        "model": active["version"] if active else "none installed (BirdNET zero-shot fallback)",
        "pending": st.pending(),
        "last_sync": st.get_state("last_sync"),
        "clip_bytes": st.clip_bytes(),
        "clip_budget_bytes": int(s.total_clip_budget_mb * 1e6),
    }
    print(json.dumps(out, indent=2))
    return 0


def cmd_tours(args: argparse.Namespace) -> int:
    from edge.store import EdgeStore

    for t in EdgeStore(settings(args).db_path).tours():
        print(
            f"{t['uuid']}  {t['started_at'][:19]}  {t['guide']:12s} {str(t['location'] or ''):20s} "
            f"{t['detections']:5d} detections  {t['species']:3d} species"
        )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from edge.exports import write_csv, write_dwc, write_raven
    from edge.store import EdgeStore
    from shared_features import LabelSpace

    s = settings(args)
    st = EdgeStore(s.db_path)
    labels = _labels(st, s)
    rows = st.query(
        "SELECT d.*, (SELECT path FROM clips c WHERE c.detection_uuid = d.uuid AND c.evicted_at IS "
        "NULL LIMIT 1) "
        "AS clip_path FROM detections d"
        + (" WHERE d.tour_uuid = ?" if args.tour else "")
        + " ORDER BY d.start_time",
        [args.tour] if args.tour else [],
    )
    if args.format == "raven":
        n = write_raven(args.out, rows, labels)
    elif args.format == "csv":
        n = write_csv(args.out, rows, labels)
    else:
        n = write_dwc(args.out, rows, labels, {t["uuid"]: t for t in st.tours()})
    print(f"{n} detections → {args.out}")
    assert isinstance(labels, LabelSpace)
    return 0


def _labels(st: Any, s: Any) -> Any:
    from shared_features import LabelSpace
    from shared_features.package import load_package

    active = st.active_model()
    if active is not None:
        return load_package(active["path"], verify=False).labels
    return LabelSpace.from_taxonomy_csv(s.taxonomy_path)


def cmd_tui(args: argparse.Namespace) -> int:
    from edge.tui import run_tui

    return int(run_tui(settings(args), file=args.file, device=args.device))
