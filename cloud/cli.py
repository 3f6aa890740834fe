"""``silencio cloud …``: serve the BentoML service, migrate the store, manage devices, the release
signing key, publish (signed) edge releases, export guides' feedback, print reports.
``python -m cloud …`` runs the same commands where only the service is installed (the container
image)."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
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

    s = g.add_parser(
        "serve",
        help="run the BentoML service (bentos.service:Silencio) until SIGTERM / Ctrl+C",
        description="Checks the port, the store and the model, then becomes the BentoML server. "
        "Exits non-zero with one line when the service cannot start.",
    )
    s.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=3000, help="port (default 3000)")
    s.add_argument("--model", help="ensemble package directory or models:/silencio-ensemble@production")
    s.add_argument(
        "--taxonomy", type=Path, help="taxonomy.csv for the BirdNET-only fallback (default: the packaged one)"
    )
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

    au = g.add_parser(
        "add-user",
        help="add an ecologists' console user (reviewer or admin) and print their login token once",
        description="Console users sign in at /console with this token. Reviewers review clips and "
        "read every page; admins may also promote and roll back releases. Device tokens never open "
        "the console.",
    )
    au.add_argument("name", help="user name, unique (shown with each verdict)")
    au.add_argument("--role", required=True, choices=["reviewer", "admin"], help="reviewer or admin")
    store_args(au)
    au.set_defaults(func=cmd_add_user)

    ru = g.add_parser("revoke-user", help="revoke a console user's token and end their sessions")
    ru.add_argument("name", help="user name")
    store_args(ru)
    ru.set_defaults(func=cmd_revoke_user)

    kg = g.add_parser(
        "keygen",
        help="create the release signing key (Ed25519) and print its public key for devices to pin",
        description="Writes the key pair under $SILENCIO_HOME/cloud/keys/ (private key 0600, never "
        "printed) and prints the public key and its key id: devices pin it with `silencio edge enroll "
        "--release-key KEY`. --rotate replaces the key; the old key signs the new one, so devices that "
        "pinned it accept releases signed by the new key.",
    )
    kgm = kg.add_mutually_exclusive_group()
    kgm.add_argument("--rotate", action="store_true", help="replace the key (the old one signs the new one)")
    kgm.add_argument("--show", action="store_true", help="only print the current public key and key id")
    kg.set_defaults(func=cmd_keygen)

    r = g.add_parser(
        "release",
        help="sign an edge model package (or release directory) and publish it as the current release",
    )
    r.add_argument(
        "package",
        type=Path,
        help="edge package directory (silencio export edge …/onnx-int8) or release directory (release.json)",
    )
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

    register_analyze_archive(g)


def _settings(args: argparse.Namespace) -> Any:
    from cloud.settings import CloudSettings

    kw: dict[str, Any] = {}
    if getattr(args, "db", None):
        kw["db"] = args.db
    if getattr(args, "database_url", None):
        kw["database_url"] = args.database_url
    return CloudSettings(**kw)


def cmd_serve(args: argparse.Namespace) -> int:
    """Check what can be checked here (paths, port, store, model), print where the service is,
    then *become* the server (``exec python -m bentos.server``): the pid stays the same, so SIGTERM
    or Ctrl+C stops the server and all its workers, and its exit status is the server's. Never
    returns when the checks pass."""
    from cloud.settings import VERBOSE_ENV

    settings, env = _serve_settings(args)
    ident = _preflight(settings, args.host, args.port)
    env[VERBOSE_ENV] = str(getattr(args, "verbose", 0) or 0)
    url = f"http://{'127.0.0.1' if args.host in ('0.0.0.0', '') else args.host}:{args.port}"
    info = ident.model_info()
    model = f"{info['name']} {info['version']}" + (
        " (BirdNET alone: birds only)" if info["birdnet_only"] else ""
    )
    me = _self_command()
    print(f"silencio cloud: {url}  model {model}, store {settings.db_path}", flush=True)
    print(
        f"  API page {url}/docs (document {url}/docs.json, device API under {url}/v1); "
        f"ready when {url}/readyz answers 200",
        flush=True,
    )
    print(
        f"  add a device: {me} cloud add-device NAME --db {shlex.quote(str(settings.db_path))}; "
        f"stop: Ctrl+C or kill {os.getpid()}",
        flush=True,
    )
    cmd = [sys.executable, "-m", "bentos.server", "--host", args.host, "--port", str(args.port)]
    if args.workers:
        cmd += ["--workers", str(args.workers)]
    os.execve(sys.executable, cmd, env)
    return 0  # pragma: no cover - execve does not return


def _absolute(value: str | os.PathLike[str]) -> str:
    """A path the user gave, against the working directory of this command (the server runs in
    another one); a URL (``postgresql://…``, ``models:/…``) is left as it is."""
    text = str(value)
    if "://" in text or text.startswith("models:/"):
        return text
    return str(Path(text).expanduser().resolve())


def _serve_settings(args: argparse.Namespace) -> tuple[Any, dict[str, str]]:
    """The settings the server will run with (flags over ``SILENCIO_CLOUD_*`` over defaults), every
    path absolute, and the environment that hands them to the server process."""
    from cloud.settings import CloudSettings

    env = dict(os.environ)
    for key, val in (("MODEL", args.model), ("TAXONOMY", args.taxonomy), ("DB", args.db)):
        if val is not None:
            env[f"SILENCIO_CLOUD_{key}"] = str(val)
    for key in ("MODEL", "TAXONOMY", "DB", "CLIP_DIR", "HOME"):
        if env.get(f"SILENCIO_CLOUD_{key}"):
            env[f"SILENCIO_CLOUD_{key}"] = _absolute(env[f"SILENCIO_CLOUD_{key}"])
    if env.get("SILENCIO_HOME"):
        env["SILENCIO_HOME"] = _absolute(env["SILENCIO_HOME"])
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        settings = CloudSettings()
        settings.taxonomy_path  # noqa: B018 - a taxonomy that does not exist fails here, with its path
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return settings, env


def _preflight(settings: Any, host: str, port: int) -> Any:
    """Fail here, with one line, on what would stop the server: a busy port, a store that cannot be
    opened, a model that cannot be loaded (missing, corrupt, other features). Returns the model."""
    import socket

    from cloud.inference import Identifier
    from cloud.service import Cloud

    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds it
            s.bind((host, port))
    except OSError as exc:
        raise CloudError(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}): is another server running there? "
            "choose another port with --port"
        ) from None
    try:
        cloud = Cloud(settings)
    except Exception as exc:  # noqa: BLE001 - any driver's failure to open the store means: cannot serve
        raise CloudError(f"cannot open the cloud store {settings.db_path}: {exc}") from None
    close = getattr(cloud.store, "close", None)
    if close is not None:
        close()
    return Identifier.load(settings.model, settings.home, settings.taxonomy_path, settings.threads)


def _self_command() -> str:
    """How to run ``silencio`` again, as this command was run (the venv need not be active)."""
    argv0 = Path(sys.argv[0])
    if argv0.name == "silencio":
        on_path = shutil.which("silencio")
        if on_path and Path(on_path).resolve() == argv0.resolve():
            return "silencio"
        return shlex.quote(str(argv0.resolve()))
    return f"{shlex.quote(sys.executable)} -m silencio"


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


def add_console_user(settings: Any, name: str, role: str) -> tuple[str, str]:
    """Add a console user to the store the settings name: ``(login token, where)``; the token is
    shown once (only its hash is stored). What ``silencio cloud add-user`` and the demo call."""
    from cloud.store import open_store

    store = open_store(settings)
    try:
        return store.add_user(name, role), store.describe()
    finally:
        store.close()


def cmd_add_user(args: argparse.Namespace) -> int:
    token, where = add_console_user(_settings(args), args.name, args.role)
    print(f"{args.role} {args.name!r} added to {where}")
    print(f"login token (shown once, only its hash is stored): {token}")
    print("sign in at http://HOST:PORT/console/login (silencio cloud serve)")
    return 0


def cmd_revoke_user(args: argparse.Namespace) -> int:
    from cloud.store import open_store

    store = open_store(_settings(args))
    try:
        user = store.revoke_user(args.name)
    finally:
        store.close()
    assert user.revoked_at is not None
    print(f"{user.role} {user.name!r} revoked at {user.revoked_at.isoformat()}: token and sessions end now")
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


def cmd_keygen(args: argparse.Namespace) -> int:
    from cloud.signing import generate_key, keys_dir, load_key, rotate_key

    home = _settings(args).home
    if args.show:
        key = load_key(home)
        if key is None:
            raise CloudError(f"no release signing key in {keys_dir(home)}: silencio cloud keygen")
        print(f"release key {key.key_id} ({key.path})")
    elif args.rotate:
        key, rotation = rotate_key(home)
        print(f"rotated the release signing key {rotation.old_key_id} → {key.key_id} ({key.path})")
        print(
            f"  the old key signed the new one: devices that pinned {rotation.old_key_id} accept releases "
            f"signed by {key.key_id}; its private key is in {keys_dir(home) / 'retired'} (destroy it once "
            "every device has installed a release signed by the new key)"
        )
    else:
        key = generate_key(home)
        print(f"release signing key {key.key_id} written to {key.path} (mode 0600)")
    print(f"public key: {key.public_key}")
    print(f"  enrol a device: silencio edge enroll --cloud URL --token TOKEN --release-key {key.public_key}")
    return 0


def cmd_release(args: argparse.Namespace) -> int:
    from cloud.service import Cloud

    info = Cloud(_settings(args)).publish_release(args.package)
    print(
        f"release {info['version']} ({info['format']}, {info['bytes'] / 1e6:.2f} MB, "
        f"sha256 {info['sha256'][:12]}…), signed by key {info['key_id']}"
    )
    if info["key_created"]:
        print(
            f"  no signing key existed: created one; devices must pin its public key to install releases:\n"
            f"  silencio edge enroll --cloud URL --token TOKEN --release-key {info['public_key']}"
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
