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
