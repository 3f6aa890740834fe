"""``silencio cloud …``: serve the BentoML service, manage devices, publish edge releases, export
guides' feedback, print reports."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from cloud.errors import CloudError

USER_ERRORS: tuple[type[BaseException], ...] = (CloudError,)


def register(sub: Any) -> None:
    c = sub.add_parser(
        "cloud",
        help="the cloud service: serve, devices, releases, feedback, reports",
        description="The BentoML ensemble service and its store.",
    )
    g = c.add_subparsers(dest="cmd", metavar="SUBCOMMAND", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--db", type=Path, help="store database (default $SILENCIO_HOME/cloud/cloud.db)")

    s = g.add_parser("serve", help="run the BentoML service (bentoml serve bentos.service:Silencio)")
    s.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=3000, help="port (default 3000)")
    s.add_argument("--model", help="ensemble package directory or models:/silencio-ensemble@production")
    s.add_argument("--taxonomy", type=Path, help="taxonomy.csv for the BirdNET-only fallback")
    s.add_argument("--workers", type=int, help="API worker processes")
    common(s)
    s.set_defaults(func=cmd_serve)

    a = g.add_parser("add-device", help="register a device (or --admin) and print its token once")
    a.add_argument("name", help="device name, unique")
    a.add_argument("--admin", action="store_true", help="an admin token (reports, admin endpoints)")
    common(a)
    a.set_defaults(func=cmd_add_device)

    r = g.add_parser("release", help="publish an edge model package as the current release")
    r.add_argument("package", type=Path, help="edge package directory (silencio export edge …/onnx-int8)")
    common(r)
    r.set_defaults(func=cmd_release)

    f = g.add_parser("export-feedback", help="write guides' corrections as labelled clips for training")
    f.add_argument("--out", type=Path, required=True, help="output directory (labels.csv + clips/)")
    f.add_argument("--all", action="store_true", help="include rows exported before")
    common(f)
    f.set_defaults(func=cmd_export_feedback)

    rp = g.add_parser("report", help="species per tour and the summary per day and guide (JSON)")
    common(rp)
    rp.set_defaults(func=cmd_report)

    register_analyze_archive(g)


def _settings(args: argparse.Namespace) -> Any:
    from cloud.settings import CloudSettings

    kw: dict[str, Any] = {}
    if getattr(args, "db", None):
        kw["db"] = args.db
    return CloudSettings(**kw)


def cmd_serve(args: argparse.Namespace) -> int:
    import bentos

    env = dict(os.environ)
    for key, val in (("MODEL", args.model), ("TAXONOMY", args.taxonomy), ("DB", args.db)):
        if val is not None:
            env[f"SILENCIO_CLOUD_{key}"] = str(val)
    cmd = [
        sys.executable,
        "-m",
        "bentoml",
        "serve",
        "bentos.service:Silencio",
        "--host",
        args.host,
        "--port",
        str(args.port),
        "--working-dir",
        str(Path(bentos.__file__).resolve().parent.parent),
    ]
    print(f"serving on http://{args.host}:{args.port} (OpenAPI: /docs; device API: /v1)", flush=True)
    return subprocess.call(cmd, env=env)


def cmd_add_device(args: argparse.Namespace) -> int:
    from cloud.store import CloudStore

    s = _settings(args)
    store = CloudStore(s.db_path, s.clips_path)
    try:
        token = store.add_device(args.name, "admin" if args.admin else "device")
    except ValueError as exc:
        raise CloudError(str(exc)) from None
    print(f"{'admin' if args.admin else 'device'} {args.name!r} registered in {s.db_path}")
    print(f"token (shown once, only its hash is stored): {token}")
    return 0


def cmd_release(args: argparse.Namespace) -> int:
    from cloud.service import Cloud

    info = Cloud(_settings(args)).publish_release(args.package)
    print(
        f"release {info['version']} ({info['format']}, {info['bytes'] / 1e6:.2f} MB, "
        f"sha256 {info['sha256'][:12]}…)"
    )
    return 0


def cmd_export_feedback(args: argparse.Namespace) -> int:
    from cloud.service import Cloud

    res = Cloud(_settings(args)).export_feedback(args.out, include_exported=args.all)
    print(f"{res['rows']} feedback rows → {res['path']}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from cloud.service import Cloud

    cloud = Cloud(_settings(args))
    print(
        json.dumps(
            {"summary": cloud.summary(None, check=False), **cloud.tour_report(None, check=False)}, indent=2
        )
    )
    return 0


def register_analyze_archive(g: Any) -> None:
    aa = g.add_parser(
        "analyze-archive",
        help="score every recording under a folder with the full ensemble (Parquet, CSV, Raven, summary)",
        description="Analyse a recorder archive: every WAV/FLAC/OGG/MP3 under DIR (recursive) in 5 s windows "
        "through the cloud's model package, locally or on Ray Data. Resumable: files finished in OUT are "
        "skipped; unreadable files are listed in OUT/failed.csv.",
    )
    aa.add_argument("dir", type=Path, help="archive folder (searched recursively)")
    aa.add_argument(
        "--out", type=Path, required=True, help="output folder (created; an existing one is resumed)"
    )
    aa.add_argument(
        "--model",
        help="model package directory or models:/silencio-ensemble@production "
        "(default: SILENCIO_CLOUD_MODEL as the service, else BirdNET v2.4 alone)",
    )
    aa.add_argument("--taxonomy", type=Path, help="taxonomy.csv for the BirdNET-only fallback")
    aa.add_argument("--threshold", type=float, default=0.5, help="report window scores ≥ this (default 0.5)")
    aa.add_argument(
        "--ray",
        action="store_true",
        help="run on Ray Data: a local Ray cluster, or the one at RAY_ADDRESS (needs silencio[train])",
    )
    aa.add_argument(
        "--workers",
        type=int,
        default=1,
        help="with --ray: actors, each holding one loaded model (default 1); without: inference threads",
    )
    aa.add_argument("--retry-failed", action="store_true", help="analyse failed / partial files again")
    aa.add_argument("--no-progress", action="store_true", help="no progress bar")
    aa.set_defaults(func=cmd_analyze_archive)


def cmd_analyze_archive(args: argparse.Namespace) -> int:
    from cloud.archive import ModelSpec, analyze_archive
    from shared_features.labels import taxonomy_path

    s = _settings(args)
    taxonomy = args.taxonomy if args.taxonomy is not None else s.taxonomy
    spec = ModelSpec(args.model or s.model, s.home, taxonomy_path(taxonomy))
    r = analyze_archive(
        args.dir,
        args.out,
        spec,
        threshold=args.threshold,
        ray=args.ray,
        workers=args.workers,
        retry_failed=args.retry_failed,
        progress=not args.no_progress,
    )
    m = r.model
    where = f"Ray Data, {r.workers} actor(s)" if r.ray else f"local, {r.workers} thread(s)"
    print(
        f"model: {m['name']} {m['version']} ({', '.join(m['members'])})"
        + (" — BirdNET v2.4 only: no trained ensemble" if m["birdnet_only"] else "")
    )
    print(
        f"this run ({where}): {r.files_done + r.files_partial} files analysed "
        f"({r.files_partial} only in part), "
        f"{r.files_failed} unreadable, {r.files_skipped} finished before; {r.audio_hours:.2f} h of audio in "
        f"{r.wall_seconds:.0f} s ({r.hours_per_hour:.0f} audio hours per hour)"
    )
    t = r.totals
    print(
        f"{r.out}: {t['files_analysed']} files, {t['audio_hours']:.2f} h, {t['detections']} detections of "
        f"{t['species']} species ≥ {args.threshold:g}; {t['files_failed'] + t['files_partial']} in failed.csv"
    )
    for name in ("detections.parquet", "detections.csv", "summary.md", "summary.csv", "failed.csv", "raven"):
        print(f"  {r.outputs[name]}")
    return 0
