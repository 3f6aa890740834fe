"""``silencio loop run``: the closed loop from guides' and reviewers' verdicts to a better edge model.

One run, under a lock (``$SILENCIO_HOME/loop/loop.lock``; a second concurrent run says so and
exits without touching anything):

1. **Collect** every judged clip into one versioned feedback dataset (:mod:`cloud.loop.feedback`:
   the conflict rule, the content hash, counts per species and verdict), logged to MLflow as the
   loop run's dataset input (``mlflow.log_input``) with the dataset files as artifacts. When its
   hash equals the last run's (``loop/state.json``) nothing is new: the run says so and changes
   nothing.
2. **Learn**: the clips are split, per (reported species, verdict), into a training part and a
   held-back part (``holdback``, by the clip UUID's hash, or with ``split_by="audio"`` by the hash
   of its decoded samples: deterministic), with a calibration part (``calibration``) between them.
   The student is re-trained from production's checkpoint (``init_from``) on the dataset plus the
   training part's clips (``wrong_species`` → the species it was, ``confirmed`` → the reported one,
   ``not_an_animal`` → an all-zero target), locally or under Ray Train (``--ray`` /
   ``RAY_ADDRESS``); the BirdNET embedding head likewise when production has one. The candidate is
   exported as an edge package and per-species thresholds are fitted to its scores on the
   calibration part's verdicts (clips it never trained on, so their scores are honest)
   (:func:`training.pipeline.fit_species_thresholds`: precision target 0.9, minimum evidence,
   shrinkage).
3. **Gate** (:func:`training.pipeline.gate`): candidate vs production on the dataset's frozen
   held-out soundscapes and on the held-back feedback clips; MLflow aliases move only on promotion;
   a refusal is recorded with its reasons.
4. **Ship** (promotion only): the edge release (model + ``thresholds.json`` + the label space's
   digest + ``loop_report`` in its manifest), signed and published by the cloud
   (:meth:`cloud.service.Cloud.publish_release`); devices' updaters shadow-evaluate and install
   it. ``loop/production.json`` then names the new production (and the one before it):
   ``silencio loop rollback`` switches the cloud back to the previous release in one command.
5. **Report**: ``loop/reports/<run>/report.md`` with PNG plots (per species precision / recall at
   the shipped thresholds on the held-out soundscapes, before and after; confusions on the
   held-back clips; verdict counts; the gate's figures), attached to the loop's MLflow run and
   named by the release manifest (the console shows it on the Models page).

Only this package of ``cloud`` (``cloud.loop``) imports ``training``
(tests/contract/test_import_boundaries.py), and only inside functions, so ``silencio --help``
stays light.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cloud.errors import CloudError
from cloud.loop.feedback import FeedbackRow, collect

log = logging.getLogger(__name__)

LOOP_DIR = "loop"
STATE_FILE = "state.json"
PRODUCTION_FILE = "production.json"


class LoopError(CloudError):
    """The loop cannot run: no production model to start from, no dataset, bad configuration."""


class LoopBusy(LoopError):
    """Another ``silencio loop run`` holds the lock."""

    status = 409


USER_ERRORS: tuple[type[BaseException], ...] = (LoopError,)
SPLIT_BY = ("uuid", "audio")


# ------------------------------------------------------------------------------ configuration
@dataclass(frozen=True)
class LoopConfig:
    """What one loop run does. ``data_dir``: the training dataset (BirdCLEF layout) whose
    ``soundscape_solution.csv`` is the frozen held-out set. ``student``/``head``/
    ``production_release``: production on the first run (later runs read ``loop/production.json``)."""

    data_dir: Path
    student: Path | None = None
    head: Path | None = None
    production_release: Path | None = None
    epochs: int = 5
    batch_size: int = 16
    lr: float = 5e-4
    seed: int = 0
    threads: int | None = None
    augment: bool = True
    head_epochs: int = 200
    holdback: float = 0.3
    calibration: float = 0.2
    feedback_weight: int = 5
    target_precision: float = 0.9
    min_verdicts: int = 3
    formats: tuple[str, ...] = ("onnx-fp32", "onnx-int8")
    use_cloud_confirmations: bool = True
    ray: bool = False
    ray_workers: int = 2
    #: what orders the clips for the split (:func:`split_feedback`): ``uuid`` (the clip's UUID, drawn
    #: by the device) or ``audio`` (its decoded samples: the same audio splits the same way on every
    #: run, e.g. the demo's, whatever UUIDs the device drew)
    split_by: str = "uuid"
    track: bool = True
    dry_run: bool = False

    def __post_init__(self) -> None:
        if not 0.0 < self.holdback < 1.0 or not 0.0 <= self.calibration < 1.0 - self.holdback:
            raise LoopError(
                "need 0 < holdback < 1 and 0 ≤ calibration < 1 − holdback, "
                f"got {self.holdback} and {self.calibration}"
            )
        if self.split_by not in SPLIT_BY:
            raise LoopError(f"split_by must be one of {SPLIT_BY}, got {self.split_by!r}")


@dataclass(frozen=True)
class Production:
    """The model in production: its edge package, its thresholds, and what it was trained from."""

    edge_package: Path
    student: Path
    head: Path | None
    thresholds: dict[str, float]
    default_threshold: float
    release_version: str | None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Production:
        return cls(
            Path(d["edge_package"]),
            Path(d["student"]),
            Path(d["head"]) if d.get("head") else None,
            {str(k): float(v) for k, v in dict(d.get("thresholds") or {}).items()},
            float(d.get("default_threshold", 0.5)),
            d.get("release_version"),
        )


@dataclass(frozen=True)
class LoopResult:
    """``status``: ``nothing_new``, ``promoted``, ``refused`` or ``dry_run``."""

    status: str
    message: str
    dataset: dict[str, Any] | None = None
    decision: dict[str, Any] | None = None
    release: dict[str, Any] | None = None
    report: Path | None = None
    run_id: str | None = None
    seconds: float = 0.0
    figures: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------ home files
def loop_dir(home: Path) -> Path:
    return Path(home) / LOOP_DIR


@contextlib.contextmanager
def loop_lock(home: Path) -> Iterator[Path]:
    """An exclusive, non-blocking lock on ``loop/loop.lock`` (released when the process dies,
    so a killed run never blocks the next); :class:`LoopBusy` when another run holds it."""
    d = loop_dir(home)
    d.mkdir(parents=True, exist_ok=True)
    path = d / "loop.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            held = path.read_text().strip() or "another process"
            raise LoopBusy(f"another loop run holds {path} ({held}); nothing was changed") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} since {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}".encode())
        yield path
    finally:
        os.close(fd)


def read_state(home: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((loop_dir(home) / STATE_FILE).read_text()))
    except (OSError, ValueError):
        return {}


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


def resolve_production(home: Path, cfg: LoopConfig) -> Production:
    """``loop/production.json`` (written by the last promotion), else the configuration's
    ``student`` + ``production_release`` (a release directory: ``package/``, ``thresholds.json``,
    ``release.json``) or an edge package directory."""
    f = loop_dir(home) / PRODUCTION_FILE
    if f.exists():
        return Production.from_dict(json.loads(f.read_text())["current"])
    if cfg.student is None or cfg.production_release is None:
        raise LoopError(
            f"no production model yet ({f} is missing): give --student CHECKPOINT and "
            "--production-release DIR (the release or edge package in production)"
        )
    rel = Path(cfg.production_release)
    if (rel / "release.json").exists():
        man = json.loads((rel / "release.json").read_text())
        thr = json.loads((rel / "thresholds.json").read_text()) if (rel / "thresholds.json").exists() else {}
        return Production(
            rel / "package",
            Path(cfg.student),
            Path(cfg.head) if cfg.head else None,
            {str(k): float(v) for k, v in thr.items()},
            float(man.get("default_threshold", 0.5)),
            str(man.get("version")),
        )
    if not (rel / "package.json").exists():
        raise LoopError(f"{rel}: neither a release directory (release.json) nor an edge package")
    return Production(rel, Path(cfg.student), Path(cfg.head) if cfg.head else None, {}, 0.5, None)


# ------------------------------------------------------------------------------ splits
def audio_key(path: str | Path) -> str:
    """The sha256 of a clip's decoded samples: the same audio gives the same key however it was
    encoded (an Ogg stream carries a random serial number, so two encodings of one clip differ in
    their bytes); a file that does not decode is keyed by its bytes."""
    import soundfile

    try:
        x, sr = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, OSError, ValueError):
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return hashlib.sha256(str(sr).encode() + x.tobytes()).hexdigest()


def split_feedback(
    rows: tuple[FeedbackRow, ...], holdback: float, calibration: float = 0.0, split_by: str = "uuid"
) -> tuple[list[FeedbackRow], list[FeedbackRow], list[FeedbackRow]]:
    """(training part, calibration part, held-back part). Per (reported species, verdict), the
    clips sorted by the sha256 of their UUID (``split_by="audio"``: by :func:`audio_key`, the
    UUID breaking ties): the first ``round(n·holdback)`` are held back for the
    gate (at least one of a group of two or more), the next ``round(n·calibration)`` calibrate the
    thresholds (never trained on, so the candidate's scores on them are honest), the rest train.
    Deterministic; re-drawn each run from all verdicts. A clip without a reported species (a
    reviewer's verdict on a random clip) can only train."""
    groups: dict[tuple[str, str], list[FeedbackRow]] = {}
    for r in rows:
        if not Path(r.path).is_file():
            continue
        groups.setdefault((r.reported or "", r.verdict), []).append(r)
    train: list[FeedbackRow] = []
    calib: list[FeedbackRow] = []
    held: list[FeedbackRow] = []
    for key in sorted(groups):
        if split_by == "audio":
            g = sorted(groups[key], key=lambda r: (audio_key(r.path), r.clip_uuid))
        else:
            g = sorted(groups[key], key=lambda r: hashlib.sha256(r.clip_uuid.encode()).hexdigest())
        if not key[0]:
            train += g
            continue
        k = round(len(g) * holdback)
        if len(g) >= 2:
            k = max(1, k)
        c = round(len(g) * calibration)
        held += g[:k]
        calib += g[k : k + c]
        train += g[k + c :]
    return train, calib, held


# ------------------------------------------------------------------------------ the run
def run_loop(cfg: LoopConfig, *, home: Path | None = None, cloud: Any | None = None) -> LoopResult:
    """One loop run (the module docstring); ``cloud``: a :class:`cloud.service.Cloud` (default:
    the home's). Raises :class:`LoopBusy` when another run holds the lock."""
    from shared_features.paths import home as default_home

    home = Path(home) if home is not None else default_home()
    t0 = time.monotonic()
    with loop_lock(home):
        own = cloud is None
        if cloud is None:
            from cloud.service import Cloud
            from cloud.settings import CloudSettings

            cloud = Cloud(CloudSettings(home=home))
        try:
            res = _run_locked(cfg, home, cloud)
        finally:
            if own:
                cloud.store.close()
    return _with_seconds(res, time.monotonic() - t0)


def _with_seconds(res: LoopResult, s: float) -> LoopResult:
    from dataclasses import replace

    return replace(res, seconds=s)


def _run_locked(cfg: LoopConfig, home: Path, cloud: Any) -> LoopResult:
    state = read_state(home)
    ds = collect(cloud.store, use_cloud=cfg.use_cloud_confirmations)
    if not ds.rows:
        return LoopResult("nothing_new", "no verdicts yet: nothing to learn from", ds.summary())
    if state.get("dataset_sha256") == ds.sha256:
        return LoopResult(
            "nothing_new",
            f"nothing new since the last run ({ds.name}, {len(ds.rows)} judged clips; "
            f"last run {state.get('last_run_at')}: {state.get('last_status')})",
            ds.summary(),
        )
    production = resolve_production(home, cfg)
    train_rows, calib_rows, held_rows = split_feedback(ds.rows, cfg.holdback, cfg.calibration, cfg.split_by)
    if cfg.dry_run:
        return LoopResult(
            "dry_run",
            f"would learn from {ds.name}: {len(train_rows)} training clips, {len(calib_rows)} for the "
            f"thresholds, {len(held_rows)} held back; "
            f"production {production.release_version or production.edge_package}",
            ds.summary(),
        )
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    work = loop_dir(home) / "runs" / stamp
    from cloud.loop.learn import learn_gate_ship

    out = learn_gate_ship(cfg, home, cloud, ds, production, train_rows, calib_rows, held_rows, work, stamp)
    _write_json(
        loop_dir(home) / STATE_FILE,
        {
            "dataset_sha256": ds.sha256,
            "dataset": ds.name,
            "cursor": asdict(ds.cursor),
            "last_run_at": stamp,
            "last_status": out.status,
            "last_message": out.message,
            "last_report": str(out.report) if out.report else None,
        },
    )
    return out


# ------------------------------------------------------------------------------ rollback
def rollback(home: Path | None = None, cloud: Any | None = None) -> dict[str, Any]:
    """Switch the cloud back to the release before the loop's last promotion (devices install it
    on their next check) and make it production again in ``loop/production.json``."""
    from shared_features.paths import home as default_home

    home = Path(home) if home is not None else default_home()
    f = loop_dir(home) / PRODUCTION_FILE
    if not f.exists():
        raise LoopError(f"{f}: the loop has promoted nothing, so there is nothing to roll back")
    with loop_lock(home):
        rec = json.loads(f.read_text())
        prev = rec.get("previous")
        if not prev or not prev.get("release_version"):
            raise LoopError("no previous release recorded to roll back to")
        own = cloud is None
        if cloud is None:
            from cloud.service import Cloud
            from cloud.settings import CloudSettings

            cloud = Cloud(CloudSettings(home=home))
        try:
            cloud.store.set_current_release(str(prev["release_version"]))
        finally:
            if own:
                cloud.store.close()
        _write_json(f, {"current": prev, "previous": rec["current"], "rolled_back_at": time.time()})
    return {"active": prev["release_version"], "was": rec["current"].get("release_version")}


# ------------------------------------------------------------------------------ CLI
def register(sub: Any) -> None:
    g = sub.add_parser(
        "loop", help="the closed loop: verdicts → thresholds + retraining → gate → signed release"
    ).add_subparsers(dest="loop_cmd", metavar="COMMAND", required=True)
    r = g.add_parser(
        "run", help="one loop run (locked, idempotent: safe to schedule nightly)", description=__doc__
    )
    r.add_argument(
        "--home", type=Path, default=None, help="the SILENCIO_HOME to use (default $SILENCIO_HOME)"
    )
    r.add_argument(
        "--data", type=Path, required=True, help="training dataset (its soundscapes: the held-out set)"
    )
    r.add_argument("--student", type=Path, default=None, help="production student checkpoint (first run)")
    r.add_argument("--head", type=Path, default=None, help="production BirdNET head (head.npz; first run)")
    r.add_argument(
        "--production-release",
        type=Path,
        default=None,
        help="release (or edge package) in production (first run)",
    )
    r.add_argument("--epochs", type=int, default=5, help="re-training epochs from production")
    r.add_argument("--seed", type=int, default=0, help="seed of the re-training")
    r.add_argument("--holdback", type=float, default=0.3, help="share of judged clips held back for the gate")
    r.add_argument(
        "--calibration", type=float, default=0.2, help="share of judged clips that only fit the thresholds"
    )
    r.add_argument(
        "--no-augment", action="store_true", help="re-train without mixup, SpecAugment, waveform augmentation"
    )
    r.add_argument("--no-int8", action="store_true", help="publish ONNX fp32 only")
    r.add_argument("--no-cloud-confirmations", action="store_true", help="human verdicts only")
    r.add_argument(
        "--ray", action="store_true", help="re-train under Ray Train (also when RAY_ADDRESS is set)"
    )
    r.add_argument("--ray-workers", type=int, default=2, help="Ray Train workers (with --ray)")
    r.add_argument("--no-mlflow", action="store_true", help="track nothing (tests)")
    r.add_argument(
        "--dry-run", action="store_true", help="collect and say what would be learnt; change nothing"
    )
    r.set_defaults(func=cmd_run)
    rb = g.add_parser(
        "rollback", help="switch the cloud back to the release before the loop's last promotion"
    )
    rb.add_argument("--home", type=Path, default=None, help="the SILENCIO_HOME to use")
    rb.set_defaults(func=cmd_rollback)
    st = g.add_parser("status", help="the last run, the dataset it saw and production")
    st.add_argument("--home", type=Path, default=None, help="the SILENCIO_HOME to use")
    st.set_defaults(func=cmd_status)


def _home(args: argparse.Namespace) -> Path:
    from shared_features.paths import home

    if args.home is not None:
        os.environ["SILENCIO_HOME"] = str(args.home)
    return Path(args.home) if args.home is not None else home()


def cmd_run(args: argparse.Namespace) -> int:
    home = _home(args)
    cfg = LoopConfig(
        data_dir=args.data,
        student=args.student,
        head=args.head,
        production_release=args.production_release,
        epochs=args.epochs,
        seed=args.seed,
        holdback=args.holdback,
        calibration=args.calibration,
        augment=not args.no_augment,
        formats=("onnx-fp32",) if args.no_int8 else ("onnx-fp32", "onnx-int8"),
        use_cloud_confirmations=not args.no_cloud_confirmations,
        ray=bool(args.ray or os.environ.get("RAY_ADDRESS")),
        ray_workers=args.ray_workers,
        track=not args.no_mlflow,
        dry_run=args.dry_run,
    )
    res = run_loop(cfg, home=home)
    print(f"{res.status}: {res.message}")
    if res.dataset:
        d = res.dataset
        print(
            f"  feedback dataset {d['name']}: {d['clips']} clips, verdicts {d['verdicts']}, "
            f"sources {d['by_source']}, conflicts {d['conflicts'] or 'none'}"
        )
    if res.decision:
        print(f"  gate: {res.decision['reason']}")
    if res.release:
        print(f"  release {res.release['version']} published, signed by key {res.release.get('key_id')}")
    if res.report:
        print(f"  report: {res.report}")
    if res.run_id:
        print(f"  MLflow run {res.run_id}")
    print(f"  ({res.seconds:.1f} s)")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    res = rollback(_home(args))
    print(
        f"release {res['active']} is current again (was {res['was']}); devices install it on their next check"
    )
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    home = _home(args)
    state = read_state(home)
    print(json.dumps(state or {"last_run_at": None}, indent=2, sort_keys=True))
    f = loop_dir(home) / PRODUCTION_FILE
    if f.exists():
        print(json.dumps(json.loads(f.read_text())["current"], indent=2, sort_keys=True))
    return 0
