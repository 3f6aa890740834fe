"""``silencio cloud …``: serve the BentoML service, migrate the store, manage devices, publish edge
releases, export guides' feedback, print reports. ``python -m cloud …`` runs the same commands
where only the service is installed (the container image)."""

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

    def store_args(p: argparse.ArgumentParser) -> None:
        common(p)
        p.add_argument(
            "--database-url",
            help="postgresql://USER:PASSWORD@HOST:PORT/DB, sqlite:///PATH or memory:// "
            "(default $SILENCIO_CLOUD_DATABASE_URL, else SQLite at --db)",
        )

    m = g.add_parser("migrate", help="apply the store's pending migrations and print their names")
    m.add_argument("--dry-run", action="store_true", help="only list the pending migrations")
    store_args(m)
    m.set_defaults(func=cmd_migrate)

    a = g.add_parser("add-device", help="register a device (or --admin) and print its token once")
    a.add_argument("name", help="device name, unique")
    a.add_argument("--admin", action="store_true", help="an admin token (reports, admin endpoints)")
    store_args(a)
    a.set_defaults(func=cmd_add_device)

    rv = g.add_parser("revoke-device", help="revoke a device's token (refused from its next request on)")
    rv.add_argument("name", help="device name")
    store_args(rv)
    rv.set_defaults(func=cmd_revoke_device)

    dv = g.add_parser("devices", help="list devices: role, last sync, last reported status")
    store_args(dv)
    dv.set_defaults(func=cmd_devices)

    r = g.add_parser("release", help="publish an edge model package as the current release")
    r.add_argument("package", type=Path, help="edge package directory (silencio export edge …/onnx-int8)")
    store_args(r)
    r.set_defaults(func=cmd_release)

    f = g.add_parser("export-feedback", help="write guides' corrections as labelled clips for training")
    f.add_argument("--out", type=Path, required=True, help="output directory (labels.csv + clips/)")
    f.add_argument("--all", action="store_true", help="include rows exported before")
    store_args(f)
    f.set_defaults(func=cmd_export_feedback)

    rp = g.add_parser("report", help="species per tour and the summary per day and guide (JSON)")
    store_args(rp)
    rp.set_defaults(func=cmd_report)


def _settings(args: argparse.Namespace) -> Any:
    from cloud.settings import CloudSettings

    kw: dict[str, Any] = {}
    if getattr(args, "db", None):
        kw["db"] = args.db
    if getattr(args, "database_url", None):
        kw["database_url"] = args.database_url
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


def cmd_migrate(args: argparse.Namespace) -> int:
    from cloud.store import open_store

    store = open_store(_settings(args), migrate=False)
    try:
        where = store.describe()
        if args.dry_run:
            pending = store.pending_migrations()
            print(f"{where}: {len(pending)} pending migration(s)" + "".join(f"\n  {n}" for n in pending))
            return 0
        before = store.applied_migrations()
        applied = store.migrate()
    finally:
        store.close()
    if applied:
        print(f"{where}: applied {len(applied)} migration(s)" + "".join(f"\n  {n}" for n in applied))
    else:
        print(f"{where}: up to date ({len(before)} migrations applied before: {', '.join(before)})")
    return 0


def cmd_add_device(args: argparse.Namespace) -> int:
    from cloud.store import open_store

    s = _settings(args)
    store = open_store(s)
    try:
        token = store.add_device(args.name, "admin" if args.admin else "device")
        where = store.describe()
    finally:
        store.close()
    print(f"{'admin' if args.admin else 'device'} {args.name!r} registered in {where}")
    print(f"token (shown once, only its hash is stored): {token}")
    return 0


def cmd_revoke_device(args: argparse.Namespace) -> int:
    from cloud.store import open_store

    store = open_store(_settings(args))
    try:
        dev = store.revoke_device(args.name)
    finally:
        store.close()
    assert dev.revoked_at is not None
    print(
        f"{dev.role} {dev.name!r} revoked at {dev.revoked_at.isoformat()}: its token is refused from now on"
    )
    return 0


def cmd_devices(args: argparse.Namespace) -> int:
    from cloud.store import open_store

    store = open_store(_settings(args))
    try:
        devices = store.devices()
    finally:
        store.close()
    for d in devices:
        last = d.last_sync_at.isoformat(timespec="seconds") if d.last_sync_at else "never synced"
        state = "revoked" if d.revoked else d.role
        status = ""
        if d.status is not None:
            st = d.status
            status = (
                f"  model {st.model_version or '?'}, app {st.app_version or '?'}, pending "
                f"{st.pending_detections} detections / {st.pending_clips} clips"
                + (", audio paused (disk)" if st.audio_paused else "")
            )
        print(f"{d.name:24s} {state:8s} {last}{status}")
    if not devices:
        print("no devices yet (silencio cloud add-device NAME)")
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
