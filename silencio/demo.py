"""``silencio demo``: the whole loop on an embedded default (or a real BirdCLEF 2025 download).

1. a synthetic El Silencio dataset (labelled *and* unlabelled soundscapes), validated;
2. the feature cache and the centroid baseline (the bar a network must clear);
3. a small ensemble: ResNet-50 and a CNN14 SED trained straight from audio for a few CPU minutes
   each, plus a head on BirdNET v2.4 embeddings — every run tracked in the embedded MLflow store;
4. the ensemble package (weights fitted on validation windows), registered in MLflow;
5. the edge student distilled from it (with pseudo-labelled unlabelled soundscapes);
6. edge packages (ONNX fp32, int8 — refused when worse than fp32), published as the cloud release;
7. the BentoML service started on 127.0.0.1 serving the ensemble;
8. the edge agent installs the release and replays a held-out soundscape (the TUI when a terminal
   is attached, plain output otherwise), syncs, and the cloud's tour report is compared with the
   soundscape's ground truth.

A second run reuses what exists. Every process the demo starts is stopped before it returns.
Figures on synthetic data say nothing about real animals; the demo says which data each figure
comes from.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "demo", help="run the whole loop on a synthetic dataset (or --data DIR)", description=__doc__
    )
    p.add_argument("--data", type=Path, default=None, help="a real BirdCLEF 2025 download instead")
    p.add_argument("--species", type=int, default=12, help="synthetic species")
    p.add_argument("--seed", type=int, default=0, help="synthetic dataset seed")
    p.add_argument(
        "--minutes", type=float, default=1.5, help="CPU minutes per trained member and the student"
    )
    p.add_argument("--quick", action="store_true", help="tiny data and models, one epoch each (CI)")
    p.add_argument("--workers", type=int, default=2, help="ETL processes")
    p.add_argument("--no-tui", action="store_true", help="plain output even on a terminal")
    p.add_argument("--port", type=int, default=0, help="port for the service (default: a free one)")
    p.set_defaults(func=cmd_demo)


def _step(i: int, text: str) -> None:
    print(f"[{i}/10] {text}", flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cmd_demo(args: argparse.Namespace) -> int:
    from shared_features.paths import home

    root = home() / "demo"
    data, work = _dataset(args, root)
    summary: dict[str, Any] = {"dataset": str(data), "synthetic": args.data is None}
    server = None
    try:
        _validate_and_baseline(args, data, work, summary)
        members = _members(args, data, work, summary)
        ens = _ensemble(data, work, members, summary)
        student = _student(args, data, work, ens, summary)
        edge_pkg = _export(data, work, student, summary)
        server, url, tokens = _serve(args, work, ens, edge_pkg)
        _edge(args, data, work, url, tokens, summary)
    finally:
        if server is not None:
            _stop(server)
            print("      service stopped", flush=True)
    (work / "demo_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    _tail(work, summary)
    return 0


# ---------------------------------------------------------------------------------- steps
def _dataset(args: argparse.Namespace, root: Path) -> tuple[Path, Path]:
    from training.cli import _bar
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
        update, close = _bar("synth")
        try:
            generate(data, cfg, progress=update)
        finally:
            close()
    return data, root / tag


def _validate_and_baseline(args: argparse.Namespace, data: Path, work: Path, summary: dict[str, Any]) -> None:
    from training.baseline import CentroidBaseline
    from training.cli import _bar
    from training.data import load_soundscapes
    from training.dataset import write_solution_csv
    from training.etl import FeatureCache, prepare_cache
    from training.report import write_report
    from training.validate import save_report, validate_dataset

    _step(2, "validating the dataset")
    rep = validate_dataset(data)
    md, _ = save_report(rep, work / "validation")
    print(
        f"      {rep.n_files_ok}/{rep.n_recordings} recordings decodable, {len(rep.species_counts)} species, "
        f"{rep.n_soundscapes} soundscapes → {md}"
    )
    _step(3, "feature cache and the centroid baseline (nearest class-centroid of mel profiles)")
    update, close = _bar("prepare")
    try:
        m = prepare_cache(data, work / "cache", workers=args.workers, progress=update)
    finally:
        close()
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


def _members(args: argparse.Namespace, data: Path, work: Path, summary: dict[str, Any]) -> dict[str, Path]:
    from shared_features import DEFAULT
    from training.birdnet_head import train_birdnet_head
    from training.data import from_audio
    from training.loop import TrainConfig, fit
    from training.models import member_config
    from training.tracking import MLflowTracker, tracking_uri

    _step(4, f"training the ensemble members (MLflow: {tracking_uri()})")
    if args.quick:
        plans = {
            "resnet50": member_config("resnet50", timm_name="resnet10t", input_downsample=4),
            "cnn14_sed": member_config("cnn14_sed", sed_width=4, input_downsample=2),
        }
        tcfg = TrainConfig(epochs=1, batch_size=16)
    else:
        plans = {
            "resnet50": member_config("resnet50", input_downsample=2),
            "cnn14_sed": member_config("cnn14_sed", sed_width=16, input_downsample=2),
        }
        tcfg = TrainConfig(epochs=40, lr=2e-3, patience=30, max_minutes=args.minutes)
    out: dict[str, Path] = {}
    train_data = None
    for name, mcfg in plans.items():
        ckpt = work / "members" / name / "model.pt"
        if ckpt.exists():
            print(f"      {name}: reusing {ckpt}")
        else:
            train_data = train_data or from_audio(data, DEFAULT)
            tracker = MLflowTracker("silencio-demo", run_name=f"demo-{name}")
            try:
                res = fit(mcfg, tcfg, train_data, ckpt.parent, tracker=tracker)
            except BaseException:
                tracker.end("FAILED")
                raise
            tracker.end()
            sc = f"; held-out soundscapes {res.soundscape['macro_roc_auc']:.3f}" if res.soundscape else ""
            print(
                f"      {name}: validation macro ROC-AUC {res.best_val_roc_auc:.3f}{sc} "
                f"(MLflow run {res.run_id})"
            )
            summary[f"member_{name}"] = {"val": res.best_val_roc_auc, "soundscape": res.soundscape}
        out[name] = ckpt
    head = work / "members" / "birdnet_head" / "head.npz"
    if head.exists():
        print(f"      birdnet_head: reusing {head}")
    else:
        tracker = MLflowTracker("silencio-demo", run_name="demo-birdnet_head")
        try:
            r = train_birdnet_head(data, head.parent, epochs=100 if args.quick else 400, tracker=tracker)
        finally:
            tracker.end()
        print(f"      birdnet_head: validation macro ROC-AUC {r['val'].get('val_roc_auc', float('nan')):.3f}")  # type: ignore[union-attr]
    out["birdnet_head"] = head
    return out


def _ensemble(data: Path, work: Path, members: dict[str, Path], summary: dict[str, Any]) -> Path:
    from training.bundle import build_ensemble
    from training.tracking import MLflowTracker

    pkg = work / "ensemble"
    _step(5, "the ensemble package (weights fitted on validation windows)")
    if (pkg / "package.json").exists() and (pkg / "report").exists():
        print(f"      reusing {pkg}")
        man = json.loads((pkg / "package.json").read_text())
    else:
        tracker = MLflowTracker("silencio-demo", run_name="demo-ensemble")
        try:
            build_ensemble(
                data,
                pkg,
                checkpoints=[members["resnet50"], members["cnn14_sed"]],
                birdnet_head=members["birdnet_head"],
                tracker=tracker,
                trials=60,
            )
            tracker.register("silencio-ensemble", "model", alias="candidate")
        finally:
            tracker.end()
        man = json.loads((pkg / "package.json").read_text())
    w = ", ".join(f"{m['name']} {m['weight']:.2f}" for m in man["members"])
    print(f"      weights: {w}; validation macro ROC-AUC {man['weights_fit']['val_roc_auc']:.3f}")
    if "soundscape" in man:
        print(f"      held-out soundscapes: ensemble macro ROC-AUC {man['soundscape']['macro_roc_auc']:.3f}")
        summary["ensemble_soundscape_roc_auc"] = man["soundscape"]["macro_roc_auc"]
    return pkg


def _student(args: argparse.Namespace, data: Path, work: Path, ens: Path, summary: dict[str, Any]) -> Path:
    from training.distill import DistillConfig, PseudoConfig, distill
    from training.loop import TrainConfig
    from training.models import member_config
    from training.tracking import MLflowTracker

    _step(6, "distilling the edge student from the ensemble (+ pseudo-labelled unlabelled soundscapes)")
    ckpt = work / "student" / "round1" / "model.pt"
    if ckpt.exists():
        print(f"      reusing {ckpt}")
        return ckpt
    if args.quick:
        mcfg = member_config("student", timm_name="mobilenetv3_small_050", input_downsample=2)
        tcfg = TrainConfig(epochs=1, batch_size=16)
    else:
        mcfg = member_config("student")
        tcfg = TrainConfig(epochs=40, lr=2e-3, patience=12, max_minutes=args.minutes)
    tracker = MLflowTracker("silencio-demo", run_name="demo-student")
    try:
        res = distill(
            data,
            ens,
            work / "student",
            mcfg=mcfg,
            tcfg=tcfg,
            dcfg=DistillConfig(pseudo=PseudoConfig()),
            tracker=tracker,
        )
    finally:
        tracker.end()
    r = res["rounds"][-1]
    sc = f"; held-out soundscapes {r['soundscape']['macro_roc_auc']:.3f}" if r.get("soundscape") else ""
    print(
        f"      student: validation macro ROC-AUC {r['best_val_roc_auc']:.3f}{sc}; "
        f"pseudo-labelled windows kept {r.get('pseudo_windows', 0)}/{r.get('unlabelled_windows', 0)}"
    )
    summary["student"] = r
    return ckpt


def _export(data: Path, work: Path, student: Path, summary: dict[str, Any]) -> Path:
    from shared_features import DEFAULT, log_mel
    from training.bundle import windows_of
    from training.data import from_audio
    from training.export import ExportError, export_edge

    _step(7, "edge packages: ONNX fp32 (parity vs PyTorch) and int8 (checked against fp32)")
    out = work / "edge_packages"
    if (out / "onnx-fp32" / "package.json").exists():
        print(f"      reusing {out}")
    else:
        d = from_audio(data, DEFAULT, soundscapes=False)
        xt, _ = windows_of(d.train)
        xv, yv = windows_of(d.val)
        from training.export_cli import calibration_windows

        ft, fv = log_mel(calibration_windows(data, xt)), log_mel(xv)
        for fmt in ("onnx-fp32", "onnx-int8"):
            try:
                export_edge(
                    student,
                    out,
                    parity=fv[:8],
                    calibration=ft,
                    check=fv,
                    check_targets=yv,
                    name="silencio-demo-edge",
                    version=time.strftime("%Y%m%d%H%M%S"),
                    formats=(fmt,),
                )
            except ExportError as exc:  # refused honestly; the fp32 package is used instead
                print(f"      {fmt}: not published — {exc}")
    for fmt in ("onnx-fp32", "onnx-int8"):
        mf = out / fmt / "package.json"
        if mf.exists():
            man = json.loads(mf.read_text())
            v = man["validation"].get("vs_fp32")
            extra = f", top-1 agreement with fp32 {v['top1_agreement']:.3f}" if v else ""
            print(f"      {fmt}: {man['members'][0]['bytes'] / 1e6:.2f} MB{extra}")
    chosen = out / "onnx-int8" if (out / "onnx-int8" / "package.json").exists() else out / "onnx-fp32"
    summary["edge_package"] = str(chosen)
    return chosen


def _serve(
    args: argparse.Namespace, work: Path, ens: Path, edge_pkg: Path
) -> tuple[Any, str, dict[str, str]]:
    import httpx

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
        tokens_file.write_text(json.dumps(tokens))
        tokens_file.chmod(0o600)
    rel = cloud.publish_release(edge_pkg)
    cloud.store.close()
    print(f"      release {rel['version']} ({rel['format']}, {rel['bytes'] / 1e6:.2f} MB)")
    port = args.port or _free_port()
    env = {**os.environ, "SILENCIO_HOME": str(chome), "SILENCIO_CLOUD_MODEL": str(ens)}
    cmd = [sys.executable, "-m", "silencio", "cloud", "serve", "--port", str(port)]
    logf = open(work / "service.log", "w")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(cmd, env=env, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(240):
        if proc.poll() is not None:
            raise RuntimeError(f"the service exited (code {proc.returncode}); see {work / 'service.log'}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(1)
    else:
        _stop(proc)
        raise RuntimeError(f"the service did not become ready; see {work / 'service.log'}")
    print(f"      {url} (OpenAPI: {url}/docs), log {work / 'service.log'}")
    return proc, url, tokens


def _edge(
    args: argparse.Namespace,
    data: Path,
    work: Path,
    url: str,
    tokens: dict[str, str],
    summary: dict[str, Any],
) -> None:
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

        def show(ev: Any, info: dict[str, Any]) -> None:
            sp = ev.species
            print(
                f"      {ev.start:5.1f}s {ev.band:9s} {ev.confidence:.2f} {sp.code:9s} {sp.common_name} "
                f"({sp.scientific_name}, {sp.taxon_class})",
                flush=True,
            )

        agent.on_detection = show
        agent.run(FileSource(scape))
    agent.end_tour()
    rep = client.run()
    print(
        f"      sync: {rep.detections} detections, {rep.clips} clips, {rep.confirmations} confirmations back"
    )
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
        summary["tour"] = {"truth": sorted(truth), "heard": sorted(heard), "confirmed": sorted(confirmed)}
    summary["edge_db"] = str(s.db_path)
    summary["cloud_db"] = str(work / "cloud_home" / "cloud" / "cloud.db")


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

    print("\nwhere to look next:")
    print(
        f"  mlflow ui --backend-store-uri {tracking_uri()}    (runs, metrics, registry; http://127.0.0.1:5000)"
    )
    print(
        f"  SILENCIO_HOME={work / 'cloud_home'} silencio cloud serve --model {work / 'ensemble'}"
        "    (the service again)"
    )
    print(
        f"  reports: {work / 'ensemble' / 'report' / 'report.md'}, {work / 'student'}, "
        f"{work / 'baseline' / 'report.md'}"
    )
    if "edge_db" in summary:
        print(
            f"  edge database: {summary['edge_db']}  "
            f"(SILENCIO_HOME={work / 'edge_home'} silencio edge status|tours|export)"
        )
        print(f"  cloud database: {summary['cloud_db']}")
    print(f"  summary: {work / 'demo_summary.json'}")
    if summary.get("synthetic"):
        print("  (synthetic data: the figures show the system works, not how well it knows real animals)")
