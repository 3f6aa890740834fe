"""``silencio demo``: the whole loop on an embedded default (or a real BirdCLEF 2025 download).

1. a synthetic El Silencio dataset (labelled *and* unlabelled soundscapes), validated;
2. the feature cache and the centroid baseline (the bar a network must clear);
3. a small ensemble: ResNet-50 and a CNN14 SED trained straight from audio for a fixed number of
   epochs (a few CPU minutes each), plus a head on BirdNET v2.4 embeddings — every run tracked in
   the embedded MLflow store;
4. the ensemble package (weights fitted on validation windows), registered in MLflow;
5. the edge student distilled from it (with pseudo-labelled unlabelled soundscapes);
6. edge packages (ONNX fp32, int8 — refused when worse than fp32), the gate (no production model
   yet: the candidate is judged on the held-out soundscapes alone) and the edge release;
7. the BentoML service started on 127.0.0.1 serving the ensemble, publishing the release;
   the demo ends by printing the ecologists' console's URL and a reviewer's login token; the
   service is stopped then, unless ``--keep-serving`` keeps it up until Ctrl-C;
8. the edge agent installs the release and replays a held-out soundscape (the TUI when a terminal
   is attached, plain output otherwise), syncs, and the cloud's tour report is compared with the
   soundscape's ground truth;
9. the closed loop (:mod:`silencio.demo_loop`): the device replays fresh field soundscapes (not in
   the training data, not in the held-out set), a scripted guide judges every detection from their
   truth, the verdicts sync, one ``silencio loop run`` (:func:`cloud.loop.run_loop`) re-trains,
   gates and, when it promotes, ships a release the device's updater installs; the held-out
   soundscape is replayed again and the corrected species compared before and after. A refusal
   by the gate is printed with its reasons and the demo goes on.

Steps 3–6 are the functions of :mod:`training.pipeline`, the same the ``silencio train`` and
``silencio export`` commands call; step 9 is the loop's own function. A second run reuses every
step whose recorded configuration is unchanged. Every process the demo starts is stopped before it returns.

Reproducible: ``--seed`` seeds the data, the splits, the initial weights, the augmentations and
data order, the BirdNET head, the weight search and the edge replay; training stops after a fixed
number of epochs (``--minutes`` adds a time budget, and with it the machine's speed as a source of
variation). Two runs on one machine give the same ``demo_summary.json`` figures.

Figures on synthetic data say nothing about real animals; the demo says which data each figure
comes from.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from silencio.demo_loop import EdgeRun

log = logging.getLogger(__name__)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "demo", help="run the whole loop on a synthetic dataset (or --data DIR)", description=__doc__
    )
    p.add_argument("--data", type=Path, default=None, help="a real BirdCLEF 2025 download instead")
    p.add_argument("--species", type=int, default=12, help="synthetic species")
    p.add_argument("--seed", type=int, default=0, help="seed of the data, the splits and every training step")
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
        help=f"epochs per trained member and for the student (default {MEMBER_EPOCHS} and {STUDENT_EPOCHS}; "
        "--quick: 1)",
    )
    p.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="also stop each member after this many CPU minutes (figures then depend on the machine's speed)",
    )
    p.add_argument("--quick", action="store_true", help="tiny data and models, one epoch each (CI)")
    p.add_argument("--workers", type=int, default=2, help="ETL processes")
    p.add_argument("--no-tui", action="store_true", help="plain output even on a terminal")
    p.add_argument("--port", type=int, default=0, help="port for the service (default: a free one)")
    p.add_argument(
        "--keep-serving",
        action="store_true",
        help="keep the service (and its console) running after the demo until Ctrl-C (default: stop it)",
    )
    p.set_defaults(func=cmd_demo)


#: Epochs per member and for the student in the full demo: fixed numbers (not a time budget), so two
#: runs train the same models; about what the former 1.5-minute budget allowed on 2 cores.
MEMBER_EPOCHS = 2
STUDENT_EPOCHS = 5
STEPS = 11
#: Loggers whose INFO lines are noise in the demo's output (shown again with ``-v``): third-party
#: libraries, and our own libraries too — the demo prints one line per result, bars show progress.
NOISY_LOGGERS = (
    "mlflow",
    "httpx",
    "httpcore",
    "alembic",
    "urllib3",
    "bentoml",
    "ray",
    "matplotlib",
    "PIL",
    "shared_features",
    "training",
    "cloud",
    "bentos",
    "edge",
)


def _step(i: int, text: str) -> None:
    print(f"[{i}/{STEPS}] {text}", flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def quiet_logs(verbose: int) -> Iterator[None]:
    """Without ``-v``: only warnings from libraries (ours included) — the demo prints its own
    lines and progress bars show long work. MLflow configures its loggers when first imported, so
    its level is set through its environment variable as well as on the logger. Levels are
    restored on exit (the demo also runs in-process, in tests)."""
    if verbose:
        yield
        return
    names = ("", *NOISY_LOGGERS)
    before = {n: logging.getLogger(n).level for n in names}
    env = os.environ.get("MLFLOW_LOGGING_LEVEL")
    os.environ["MLFLOW_LOGGING_LEVEL"] = "WARNING"
    for n in names:
        logging.getLogger(n).setLevel(logging.WARNING)
    try:
        yield
    finally:
        for n, level in before.items():
            logging.getLogger(n).setLevel(level)
        if env is None:
            os.environ.pop("MLFLOW_LOGGING_LEVEL", None)
        else:
            os.environ["MLFLOW_LOGGING_LEVEL"] = env


@contextlib.contextmanager
def ticking(what: str, every: float = 10.0) -> Iterator[None]:
    """For work without a progress bar of its own: a line every ``every`` seconds until it ends."""
    stop = threading.Event()
    t0 = time.monotonic()

    def tick() -> None:
        while not stop.wait(every):
            print(f"      … {what} ({time.monotonic() - t0:.0f} s)", flush=True)

    th = threading.Thread(target=tick, daemon=True)
    th.start()
    try:
        yield
    finally:
        stop.set()
        th.join()


def silencio_command() -> str:
    """How to run ``silencio`` as the user can type it: ``silencio`` when that is on PATH and is
    this installation, else the path of this virtual environment's script (relative to the working
    directory when it lies below it, e.g. ``.venv/bin/silencio``), else ``python -m silencio``."""
    script = Path(sys.executable).with_name("silencio")
    if not script.exists():
        return f"{sys.executable} -m silencio"
    on_path = shutil.which("silencio")
    if on_path and Path(on_path).resolve() == script.resolve():
        return "silencio"
    try:
        return str(script.relative_to(Path.cwd()))
    except ValueError:
        return str(script)


def _tool(name: str) -> str:
    """A console script of this environment (``mlflow``), as :func:`silencio_command` does it."""
    script = Path(sys.executable).with_name(name)
    on_path = shutil.which(name)
    if not script.exists() or (on_path and Path(on_path).resolve() == script.resolve()):
        return name
    return str(script)


def cmd_demo(args: argparse.Namespace) -> int:
    with quiet_logs(getattr(args, "verbose", 0)):
        return _demo(args)


def _demo(args: argparse.Namespace) -> int:
    from shared_features.paths import home
    from silencio.demo_loop import loop_step

    root = home() / "demo"
    data, work = _dataset(args, root)
    summary: dict[str, Any] = {"dataset": str(data), "synthetic": args.data is None, "seed": args.seed}
    server = None
    keep = bool(getattr(args, "keep_serving", False))
    console: tuple[str, str] | None = None
    try:
        _validate_and_baseline(args, data, work, summary)
        members = _members(args, data, work, summary)
        ens = _ensemble(args, data, work, members, summary)
        student = _student(args, data, work, ens, summary)
        release = _export(args, data, work, student, summary)
        server, url, tokens = _serve(args, work, ens, release)
        edge = _edge(args, data, work, url, tokens, summary)
        loop_step(args, data, work, url, tokens, edge, student, release, summary)
        console = (f"{url}/console/login", tokens["reviewer"])
        summary["console"] = console[0]
        if keep:
            _finish(work, summary, console, serving=True)
            _keep_serving(server)
    finally:
        if server is not None:
            _stop(server)
            print("      service stopped", flush=True)
    if not keep:
        _finish(work, summary, console, serving=False)
    return 0


def _finish(work: Path, summary: dict[str, Any], console: tuple[str, str] | None, serving: bool) -> None:
    """The summary file, the hints, and the console's address with a reviewer's login token."""
    (work / "demo_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    _tail(work, summary)
    if console is None:
        return
    url, token = console
    print(f"\nconsole: {url}  reviewer token: {token}")
    if serving:
        print("      the service keeps running until Ctrl-C", flush=True)
    else:
        port = url.split(":")[-1].split("/")[0]
        print(
            "      (the service has stopped: `silencio demo … --keep-serving` keeps it up, or start it "
            f"again with the `cloud serve` hint above and `--port {port}`)",
            flush=True,
        )


def _keep_serving(proc: Any, stop: threading.Event | None = None) -> None:
    """Wait while the service runs, until Ctrl-C (or ``stop`` is set; or the service exits by
    itself, which is said)."""
    stop = stop or threading.Event()
    try:
        while proc.poll() is None:
            if stop.wait(0.5):
                return
    except KeyboardInterrupt:
        print(flush=True)
        return
    print(f"      the service exited by itself (code {proc.returncode})", flush=True)


# ---------------------------------------------------------------------------------- steps
def _dataset(args: argparse.Namespace, root: Path) -> tuple[Path, Path]:
    from training.progress import bar
    from training.synth import SynthConfig, generate

    if args.data is not None:
        _step(1, f"dataset: {args.data} (real BirdCLEF 2025 layout)")
        return args.data, root / f"data_{args.data.resolve().name}"
    small = {"clips_per_species": 6, "soundscapes": 3, "unlabelled_soundscapes": 2}
    cfg = SynthConfig(
        species=args.species,
        seed=args.seed,
        **(small if args.quick else {"clips_per_species": 30, "soundscapes": 8, "unlabelled_soundscapes": 6}),
    )
    tag = (
        f"synth_s{cfg.species}_c{cfg.clips_per_species}_k{cfg.soundscapes}"
        f"_u{cfg.unlabelled_soundscapes}_seed{cfg.seed}"
    )
    data = root / tag / "dataset"
    if (data / "SYNTHETIC.md").exists() and (data / "soundscape_solution.csv").exists():
        _step(1, f"synthetic dataset: reusing {data}")
    else:
        _step(1, f"synthetic dataset ({cfg.species} species, seed {cfg.seed}; SYNTHETIC audio) → {data}")
        with bar("synth") as update:
            generate(data, cfg, progress=update)
    return data, root / tag


def _validate_and_baseline(args: argparse.Namespace, data: Path, work: Path, summary: dict[str, Any]) -> None:
    from training.baseline import CentroidBaseline
    from training.data import load_soundscapes
    from training.dataset import write_solution_csv
    from training.etl import FeatureCache, prepare_cache
    from training.progress import bar
    from training.report import write_report
    from training.validate import save_report, validate_dataset

    _step(2, "validating the dataset")
    with bar("validate") as update:
        rep = validate_dataset(data, progress=update)
    md, _ = save_report(rep, work / "validation")
    print(
        f"      {rep.n_files_ok}/{rep.n_recordings} recordings decodable, {len(rep.species_counts)} species, "
        f"{rep.n_soundscapes} soundscapes → {md}"
    )
    _step(3, "feature cache and the centroid baseline (nearest class-centroid of mel profiles)")
    with bar("prepare") as update:
        m = prepare_cache(data, work / "cache", workers=args.workers, progress=update)
    print(f"      {m['n_windows']} windows ({m['resumed_files']} files reused), features {m['fingerprint']}")
    truth = data / "soundscape_solution.csv"
    if truth.exists():
        cache = FeatureCache(work / "cache")
        scapes = load_soundscapes(cache, truth)
        pred = work / "baseline" / "predictions.csv"
        pred.parent.mkdir(parents=True, exist_ok=True)
        write_solution_csv(
            pred, scapes.row_ids, CentroidBaseline.fit(cache).predict(scapes.features), cache.labels
        )
        b = write_report(
            pred,
            truth,
            work / "baseline",
            data_name=f"held-out soundscapes of {data}",
            model_name="centroid baseline (not a trained network)",
        )
        summary["baseline_soundscape_roc_auc"] = b.macro_roc_auc
        print(f"      baseline on the held-out soundscapes: macro ROC-AUC {b.macro_roc_auc:.3f}")


def _train_config(args: argparse.Namespace, student: bool = False) -> Any:
    from training.loop import TrainConfig

    if args.quick:
        return TrainConfig(epochs=args.epochs or 1, batch_size=16, seed=args.seed, max_minutes=args.minutes)
    epochs = args.epochs or (STUDENT_EPOCHS if student else MEMBER_EPOCHS)
    return TrainConfig(epochs=epochs, lr=2e-3, patience=30, seed=args.seed, max_minutes=args.minutes)


def _tracking(name: str) -> Any:
    from training.pipeline import Tracking

    return Tracking(experiment="silencio-demo", run_name=f"demo-{name}")


def _reused(path: Path, before: float) -> bool:
    """Whether a step returned an earlier run's result (its record predates this call)."""
    rec = path / "result.json"
    return rec.exists() and rec.stat().st_mtime < before


def _members(args: argparse.Namespace, data: Path, work: Path, summary: dict[str, Any]) -> dict[str, Path]:
    from training.models import member_config
    from training.pipeline import DataSource, train_embedding_head, train_member
    from training.tracking import tracking_uri

    _step(4, f"training the ensemble members (MLflow: {tracking_uri()})")
    if args.quick:
        plans = {
            "resnet50": member_config("resnet50", timm_name="resnet10t", input_downsample=4),
            "cnn14_sed": member_config("cnn14_sed", sed_width=4, input_downsample=2),
        }
    else:
        plans = {
            "resnet50": member_config("resnet50", input_downsample=2),
            "cnn14_sed": member_config("cnn14_sed", sed_width=16, input_downsample=2),
        }
    tcfg = _train_config(args)
    source = DataSource(data_dir=data)
    out: dict[str, Path] = {}
    for name, mcfg in plans.items():
        t0 = time.time()
        res = train_member(source, mcfg, tcfg, work / "members" / name, tracking=_tracking(name), reuse=True)
        sc = f"; held-out soundscapes {res.soundscape['macro_roc_auc']:.3f}" if res.soundscape else ""
        again = "reusing: " if _reused(work / "members" / name, t0) else ""
        print(
            f"      {name}: {again}validation macro ROC-AUC {res.best_val_roc_auc:.3f}{sc} "
            f"({res.best_epoch} of {tcfg.epochs} epochs; MLflow run {res.run_id})"
        )
        summary[f"member_{name}"] = {"val": res.best_val_roc_auc, "soundscape": res.soundscape}
        out[name] = res.checkpoint
    t0 = time.time()
    head = train_embedding_head(
        data,
        work / "members" / "birdnet_head",
        seed=args.seed,
        epochs=100 if args.quick else 400,
        tracking=_tracking("birdnet_head"),
        reuse=True,
    )
    again = "reusing: " if _reused(work / "members" / "birdnet_head", t0) else ""
    sc = f"; held-out soundscapes {head.soundscape['macro_roc_auc']:.3f}" if head.soundscape else ""
    print(f"      birdnet_head: {again}validation macro ROC-AUC {head.val_roc_auc:.3f}{sc}")
    summary["member_birdnet_head"] = {"val": head.val_roc_auc, "soundscape": head.soundscape}
    out["birdnet_head"] = head.head
    return out


def _ensemble(
    args: argparse.Namespace, data: Path, work: Path, members: dict[str, Path], summary: dict[str, Any]
) -> Path:
    from training.pipeline import build_ensemble_package

    _step(5, "the ensemble package (weights fitted on validation windows)")
    t0 = time.time()
    res = build_ensemble_package(
        data,
        work / "ensemble",
        checkpoints=[members["resnet50"], members["cnn14_sed"]],
        birdnet_head=members["birdnet_head"],
        seed=args.seed,
        trials=60,
        tracking=_tracking("ensemble"),
        reuse=True,
    )
    if _reused(work / "ensemble", t0):
        print(f"      reusing {res.package}")
    w = ", ".join(f"{n} {v:.2f}" for n, v in res.weights.items())
    print(f"      weights: {w}; validation macro ROC-AUC {res.val_roc_auc:.3f}")
    summary["ensemble_val_roc_auc"] = res.val_roc_auc
    summary["ensemble_weights"] = dict(res.weights)
    if res.soundscape:
        print(f"      held-out soundscapes: ensemble macro ROC-AUC {res.soundscape['macro_roc_auc']:.3f}")
        summary["ensemble_soundscape_roc_auc"] = res.soundscape["macro_roc_auc"]
    return res.package


def _student(args: argparse.Namespace, data: Path, work: Path, ens: Path, summary: dict[str, Any]) -> Path:
    from training.distill import DistillConfig, PseudoConfig
    from training.models import member_config
    from training.pipeline import distill_student

    _step(6, "distilling the edge student from the ensemble (+ pseudo-labelled unlabelled soundscapes)")
    if args.quick:
        mcfg = member_config("student", timm_name="mobilenetv3_small_050", input_downsample=2)
    else:
        mcfg = member_config("student")
    t0 = time.time()
    res = distill_student(
        data,
        ens,
        work / "student",
        mcfg=mcfg,
        tcfg=_train_config(args, student=True),
        dcfg=DistillConfig(pseudo=PseudoConfig()),
        tracking=_tracking("student"),
        reuse=True,
    )
    if _reused(work / "student", t0):
        print(f"      reusing {res.checkpoint}")
    r = res.rounds[-1]
    sc = f"; held-out soundscapes {r['soundscape']['macro_roc_auc']:.3f}" if r.get("soundscape") else ""
    print(
        f"      student: validation macro ROC-AUC {r['best_val_roc_auc']:.3f}{sc}; "
        f"pseudo-labelled windows kept {r.get('pseudo_windows', 0)}/{r.get('unlabelled_windows', 0)}"
    )
    summary["student"] = dict(r)
    return res.checkpoint


def _export(args: argparse.Namespace, data: Path, work: Path, student: Path, summary: dict[str, Any]) -> Path:
    """Edge packages, the gate (no production model yet: judged on its own) and the release."""
    from training.gate import EdgeModel, FeedbackSet, heldout_from_dataset
    from training.pipeline import export_edge_packages, gate, make_release

    _step(7, "edge packages: ONNX fp32 (parity vs PyTorch) and int8 (checked against fp32); gate; release")
    t0 = time.time()
    with ticking("exporting, quantising and checking the edge packages"):
        exp = export_edge_packages(
            student,
            data,
            work / "edge_packages",
            name="silencio-demo-edge",
            seed=args.seed,
            tracking=_tracking("edge-export"),
            reuse=True,
        )
    if _reused(work / "edge_packages", t0):
        print(f"      reusing {work / 'edge_packages'}")
    for fmt, why in exp.refused.items():
        print(f"      {fmt}: not published — {why}")
    for fmt, path in exp.packages.items():
        man = json.loads((path / "package.json").read_text())
        v = man["validation"].get("vs_fp32")
        extra = f", top-1 agreement with fp32 {v['top1_agreement']:.3f}" if v else ""
        print(f"      {fmt}: {man['members'][0]['bytes'] / 1e6:.2f} MB{extra}")
    summary["edge_package"] = str(exp.chosen)
    candidate = EdgeModel(exp.chosen)
    if (data / "soundscape_solution.csv").exists():
        with ticking("scoring the candidate on the held-out soundscapes"):
            decision = gate(
                candidate,
                None,
                heldout_from_dataset(data),
                FeedbackSet("no verdicts yet", ()),
                work / "gate",
                registry=exp.registered,
                tracking=_tracking("gate"),
            )
        print(
            f"      gate: {decision.reason}; edge model on the held-out soundscapes: macro ROC-AUC "
            f"{decision.candidate.heldout_macro_roc_auc:.3f}"
            + (f"; {decision.alias_moved}" if decision.alias_moved else "")
        )
        summary["edge_soundscape_roc_auc"] = decision.candidate.heldout_macro_roc_auc
    else:
        decision = None
    rel = make_release(
        exp.chosen,
        work / "releases",
        decision=decision,
        source_runs={"edge_export": exp.run_id, "gate": decision.run_id if decision else None},
        tracking=_tracking("release"),
    )
    print(f"      release {rel.name} {rel.version}: {rel.archive} (sha256 {rel.sha256[:12]}…)")
    summary["release"] = str(rel.directory)
    return rel.directory


def _serve(args: argparse.Namespace, work: Path, ens: Path, release: Path) -> tuple[Any, str, dict[str, str]]:

    from cloud.service import Cloud
    from cloud.settings import CloudSettings

    _step(8, "starting the BentoML service on 127.0.0.1 (the ensemble) and publishing the edge release")
    chome = work / "cloud_home"
    settings = CloudSettings(home=chome)
    cloud = Cloud(settings)
    tokens_file = work / "demo_tokens.json"  # demo only: a real device keeps its token in its settings
    if tokens_file.exists():
        tokens = json.loads(tokens_file.read_text())
    else:
        tokens = {
            "device": cloud.store.add_device("demo-device"),
            "admin": cloud.store.add_device("demo-admin", "admin"),
        }
    if "reviewer" not in tokens:  # a console login (only its hash is stored): printed at the end
        tokens["reviewer"] = cloud.store.add_user("demo-reviewer", "reviewer")
    if not tokens_file.exists() or json.loads(tokens_file.read_text()) != tokens:
        tokens_file.write_text(json.dumps(tokens))
        tokens_file.chmod(0o600)
    rel = cloud.publish_release(release)  # package/, thresholds.json, release.json: signed as one archive
    cloud.store.close()
    print(f"      release {rel['version']} ({rel['format']}, {rel['bytes'] / 1e6:.2f} MB)")
    port = args.port or _free_port()
    env = {**os.environ, "SILENCIO_HOME": str(chome), "SILENCIO_CLOUD_MODEL": str(ens)}
    cmd = [sys.executable, "-m", "silencio", "cloud", "serve", "--port", str(port)]
    logf = open(work / "service.log", "w")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(cmd, env=env, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    with ticking("waiting for the service to load the ensemble"):
        ready = _wait_ready(proc, url, work)
    if not ready:
        _stop(proc)
        raise RuntimeError(f"the service did not become ready; see {work / 'service.log'}")
    print(f"      {url} (OpenAPI: {url}/docs), log {work / 'service.log'}")
    return proc, url, tokens


def _wait_ready(proc: Any, url: str, work: Path, seconds: int = 240) -> bool:
    import httpx

    for _ in range(seconds):
        if proc.poll() is not None:
            raise RuntimeError(f"the service exited (code {proc.returncode}); see {work / 'service.log'}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(1)
    return False


def _edge(
    args: argparse.Namespace,
    data: Path,
    work: Path,
    url: str,
    tokens: dict[str, str],
    summary: dict[str, Any],
) -> EdgeRun:
    import httpx

    from cloud.signing import load_key
    from edge.agent import Agent
    from edge.capture import FileSource
    from edge.detector import PackageScorer
    from edge.settings import EdgeSettings
    from edge.sync import SyncClient
    from edge.updater import check_and_update
    from shared_features import LabelSpace

    _step(9, "the edge agent: install the release, replay a held-out soundscape, sync")
    s = EdgeSettings(
        home=work / "edge_home",
        cloud_url=url,
        token=tokens["device"],
        guide="Demo guide",
        location="El Silencio (synthetic)" if args.data is None else "replay",
    )
    from edge.store import open_store

    store = open_store(s.db_path)
    client = SyncClient(store, url, tokens["device"], timeout=60)
    # the device pins the cloud's release public key (created when step 8 signed the release), as
    # `silencio edge enroll --release-key KEY` does on a real device
    key = load_key(work / "cloud_home")
    upd = check_and_update(client, store, s.model_dir, None, release_key=key.public_key if key else None)
    print(f"      model update: {'installed ' + upd['version'] if upd['updated'] else upd['reason']}")
    scape = _replay_file(data)
    agent = Agent(s, store=store, scorer=PackageScorer(Path(store.active_model().path)), seed=0)
    tour = agent.start_tour()
    if sys.stdout.isatty() and not args.no_tui and not args.quick:
        from edge.tui import run_tui

        print("      opening the TUI (q to quit when the replay is done) …", flush=True)
        run_tui(s, file=scape, agent=agent, realtime=True)
    else:
        shown: list[dict[str, Any]] = []
        summary["detections"] = shown

        def show(ev: Any, info: dict[str, Any]) -> None:
            sp = ev.species
            shown.append({"start": ev.start, "code": sp.code, "confidence": round(float(ev.confidence), 4)})
            print(
                f"      {ev.start:5.1f}s {ev.band:9s} {ev.confidence:.2f} {sp.code:9s} {sp.common_name} "
                f"({sp.scientific_name}, {sp.taxon_class})",
                flush=True,
            )

        agent.on_detection = show
        with ticking(f"replaying {scape.name}"):
            agent.run(FileSource(scape))
    agent.end_tour()
    with ticking("syncing (the ensemble re-scores every uploaded clip)"):
        rep = client.run()
    print(
        f"      sync: {rep.detections} detections, {rep.clips} clips, {rep.confirmations} confirmations back"
    )
    summary["sync"] = {"detections": rep.detections, "clips": rep.clips, "confirmations": rep.confirmations}
    client.close()
    _step(10, "the cloud's tour report against the soundscape's ground truth")
    r = httpx.get(
        f"{url}/v1/reports/tours",
        params={"tour": tour},
        headers={"authorization": f"Bearer {tokens['admin']}"},
        timeout=60,
    ).json()["tours"][0]
    heard = {x["code"] for x in r["species"]}
    confirmed = {x["code"] for x in r["species"] if x["confirmed"]}
    truth = _truth_species(data, scape)
    labels = LabelSpace.from_dict(
        json.loads((Path(store.active_model().path) / "package.json").read_text())["labels"]
    )
    print(
        f"      tour {tour}: {r['species_heard']} species heard, "
        f"{r['species_confirmed']} confirmed by the ensemble"
    )
    if truth is not None:
        tp = heard & truth
        print(
            f"      ground truth of {scape.name}: {len(truth)} species — heard {len(tp)} of them "
            f"(recall {len(tp) / max(1, len(truth)):.2f}), {len(heard - truth)} heard that were not there "
            f"(precision {len(tp) / max(1, len(heard)):.2f})"
        )
        for code in sorted(truth | heard):
            sp = labels[code]
            mark = ("✓ heard" if code in heard else "✗ missed") if code in truth else "✗ not in the truth"
            conf = ", confirmed" if code in confirmed else ""
            print(
                f"        {mark:18s} {code:9s} {sp.common_name} "
                f"({sp.scientific_name}, {sp.taxon_class}){conf}"
            )
        summary["tour"] = {
            "truth": sorted(truth),
            "heard": sorted(heard),
            "confirmed": sorted(confirmed),
            "recall": len(tp) / max(1, len(truth)),
            "precision": len(tp) / max(1, len(heard)),
        }
    summary["edge_db"] = str(s.db_path)
    summary["cloud_db"] = str(work / "cloud_home" / "cloud" / "cloud.db")
    store.close()
    from silencio.demo_loop import EdgeRun

    return EdgeRun(s, scape, str(tour))


def _replay_file(data: Path) -> Path:
    """A held-out labelled soundscape (the first in the truth file), else the first soundscape."""
    from training.dataset import BirdCLEFDataset

    ds = BirdCLEFDataset.load(data)
    truth = data / "soundscape_solution.csv"
    scapes = ds.soundscapes()
    if not scapes:
        raise RuntimeError(f"{data}: no soundscapes to replay")
    if truth.exists():
        first = truth.read_text().splitlines()[1].split(",")[0].rsplit("_", 1)[0]
        for p in scapes:
            if p.stem == first:
                return p
    return scapes[0]


def _truth_species(data: Path, scape: Path) -> set[str] | None:
    import csv

    truth = data / "soundscape_solution.csv"
    if not truth.exists():
        return None
    with open(truth) as fh:
        rows = [r for r in csv.DictReader(fh) if r["row_id"].rsplit("_", 1)[0] == scape.stem]
    return (
        {c for r in rows for c, v in r.items() if c != "row_id" and v.strip() in ("1", "1.0")}
        if rows
        else None
    )


def _stop(proc: Any) -> None:
    """SIGTERM the process group (the server and every worker it started), wait until none is
    left, SIGKILL what outlives 30 s."""
    pgid = proc.pid
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.time() + 30
    while time.time() < deadline:
        proc.poll()  # reap our direct child
        try:
            os.killpg(pgid, 0)  # anyone left in the group?
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def _tail(work: Path, summary: dict[str, Any]) -> None:
    from training.tracking import tracking_uri

    cli = silencio_command()
    print("\nwhere to look next (commands as printed work from this directory):")
    print(
        f"  {_tool('mlflow')} ui --backend-store-uri {tracking_uri()}    "
        "(runs, metrics, registry; http://127.0.0.1:5000)"
    )
    print(
        f"  SILENCIO_HOME={work / 'cloud_home'} {cli} cloud serve --model {work / 'ensemble'}"
        "    (the service again)"
    )
    print(
        f"  reports: {work / 'ensemble' / 'report' / 'report.md'}, {work / 'student'}, "
        f"{work / 'baseline' / 'report.md'}"
    )
    if "release" in summary:
        print(f"  edge release: {summary['release']} (release.json, thresholds.json, package/)")
    if "edge_db" in summary:
        print(
            f"  edge database: {summary['edge_db']}  "
            f"(SILENCIO_HOME={work / 'edge_home'} {cli} edge status|tours|export)"
        )
        print(f"  cloud database: {summary['cloud_db']}")
    print(f"  summary: {work / 'demo_summary.json'}")
    if summary.get("synthetic"):
        print("  (synthetic data: the figures show the system works, not how well it knows real animals)")
