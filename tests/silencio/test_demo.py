"""``silencio demo --quick`` (the CI size) runs the whole loop through the pipeline functions,
the closed loop included (guide verdicts, one loop run, the device's update), prints quiet output
with hints that work as printed, stops what it started, and reuses every step on a second run (the
loop's with nothing new)."""

from __future__ import annotations

import json
import re
import shutil
import socket
from pathlib import Path

from silencio.cli import main
from tests.process_tree import Descendants


def _nothing_listens(port: int) -> bool:
    """No server answers on the port, and a server could bind it again (``SO_REUSEADDR``, as
    servers do: connections of the stopped one may linger in TIME_WAIT)."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return False
    except OSError:
        pass
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def test_demo_quick_runs_the_whole_loop_and_reuses(capfd, tmp_path, monkeypatch):
    monkeypatch.setenv("SILENCIO_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with Descendants() as started:  # every process the demo starts, however deep, stays ours to see
        assert main(["demo", "--quick", "--species", "5", "--workers", "1", "--no-tui"]) == 0
        # no service left running: nothing the demo started still runs (orphans included)
        left = [p for p in started.leftover(timeout=15) if "bentos" in p.args or "bentoml" in p.args]
        assert left == [], [(p.pid, p.args[:100]) for p in left]
    out, err = capfd.readouterr()
    for step in range(1, 12):
        assert f"[{step}/11]" in out
    assert "MLflow run" in out and "onnx-fp32" in out and "ground truth of SYN00" in out
    assert "service stopped" in out and "model update: installed" in out
    assert "gate: promoted: no production model" in out and "release silencio-demo-edge" in out
    # quiet: no MLflow system-metrics or httpx request lines without -v; progress bars instead
    assert "INFO mlflow" not in out + err and "HTTP Request" not in out + err
    assert "birdnet train windows" in err and "ensemble: fitting weights" in err
    work = next((tmp_path / "home" / "demo").iterdir())
    summary = json.loads((work / "demo_summary.json").read_text())
    assert summary["tour"]["truth"] and "ensemble_soundscape_roc_auc" in summary
    assert "edge_soundscape_roc_auc" in summary and summary["seed"] == 0
    assert (work / "ensemble" / "report" / "report.md").exists()
    assert (tmp_path / "home" / "mlflow" / "mlflow.db").exists()
    # every pipeline step recorded its resolved configuration and its result beside its outputs
    for d in ("members/resnet50", "members/cnn14_sed", "members/birdnet_head", "ensemble", "student"):
        assert json.loads((work / d / "step.json").read_text())["config"], d
        assert (work / d / "result.json").exists(), d
    release = Path(summary["release"])
    assert {"release.json", "thresholds.json", "package"} <= {p.name for p in release.iterdir()}
    from edge.store import open_store

    assert open_store(summary["edge_db"]).pending().detections == 0  # all synced
    # the hints work as printed: the command each names exists
    cmd = re.search(r"SILENCIO_HOME=\S+ (\S+) cloud serve", out).group(1)
    assert shutil.which(cmd) or Path(cmd).is_file(), cmd
    # what the demo started is gone: nothing listens on its service's port (its processes were
    # checked above, through the test's own process tree)
    port = int(re.search(r"http://127\.0\.0\.1:(\d+) \(OpenAPI", out).group(1))
    assert _nothing_listens(port)
    # the demo ends with the console's address (the service's) and a reviewer's login token
    console = re.search(r"console: http://127\.0\.0\.1:(\d+)/console/login  reviewer token: (\S+)\n", out)
    assert console and int(console.group(1)) == port and "the service has stopped" in out
    token = console.group(2)
    assert summary["console"] == f"http://127.0.0.1:{port}/console/login"
    from cloud.settings import CloudSettings
    from cloud.store import open_store as open_cloud_store

    cloud_store = open_cloud_store(CloudSettings(home=work / "cloud_home"))
    try:
        assert cloud_store.authenticate_user(token).role == "reviewer"  # a real login, not a device's
    finally:
        cloud_store.close()
    # the closed loop (step 11): verdicts on fresh field soundscapes (never the held-out ones), one
    # loop run, promoted or refused — either is an outcome, both are said and recorded
    loop = summary["loop"]
    assert "[11/11] the closed loop" in out and "audio for the verdicts: 4 field soundscapes FIELD00" in out
    assert loop["judged_detections"] > 0 and sum(loop["verdicts"].values()) == loop["judged_detections"]
    assert "held-out set" in loop["verdicts_from"] and "SYN" not in loop["verdicts_from"].split("FIELD")[0]
    assert loop["status"] in ("promoted", "refused"), loop
    assert Path(loop["report"]).is_file() and loop["gate"]["reason"].startswith(loop["status"])
    assert f"loop: {loop['status']}:" in out and "loop report: " in out
    if loop["status"] == "promoted":
        assert loop["device_update"]["updated"] and f"model update: installed {loop['release']}" in out
        assert loop["species"] and "held out), detections right / wrong" in out
        for sp in loop["species"]:
            assert {"code", "scientific_name", "common_name", "taxon_class", "before", "after"} <= set(sp)
            assert (
                f"{sp['code']:9s} {sp['common_name']} ({sp['scientific_name']}, {sp['taxon_class']})" in out
            )
    else:
        assert loop["release"] is None and "refused (" in out and not loop["device_update"]["updated"]
    assert re.search(r"step 11 took \d+ s", out)
    assert open_store(summary["edge_db"]).pending().detections == 0  # the field tours synced too

    assert main(["demo", "--quick", "--species", "5", "--workers", "1", "--no-tui"]) == 0
    out, _ = capfd.readouterr()
    assert "reusing" in out and "files reused" in out and "[11/11]" in out
    assert out.count("reusing") >= 7  # dataset, 3 members, ensemble, student, edge packages, verdicts
    assert f"reviewer token: {token}\n" in out  # the same login as the first run
    # the loop has nothing new: a no-op; the outcome of the first run stands and is shown again
    again = json.loads((work / "demo_summary.json").read_text())["loop"]
    assert "loop: nothing_new: nothing new since the last run" in out and again["status"] == "nothing_new"
    assert again["outcome"] == loop["status"] and again["report"] == loop["report"]
    assert again["species"] == loop["species"]  # the same figures (seeded, deterministic replay)


def test_keep_serving_waits_for_the_service_until_stopped():
    """``--keep-serving`` waits while the service runs (until Ctrl-C; here its stop event) and
    then the demo stops it; a service that dies by itself ends the wait. (The whole demo with the
    flag would take minutes: its waiting is tested here on a stand-in process.)"""
    import subprocess
    import sys
    import threading
    import time

    from silencio.cli import build_parser
    from silencio.demo import _keep_serving, _stop

    args = build_parser().parse_args(["demo", "--quick", "--keep-serving"])
    assert args.keep_serving is True
    assert build_parser().parse_args(["demo"]).keep_serving is False
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        stop = threading.Event()
        threading.Timer(1.0, stop.set).start()
        t0 = time.monotonic()
        _keep_serving(proc, stop)
        assert time.monotonic() - t0 >= 0.9 and proc.poll() is None  # it waited; the service still runs
    finally:
        _stop(proc)
    assert proc.returncode is not None
    died = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"], start_new_session=True)
    _keep_serving(died, threading.Event())  # returns by itself: the service exited
    assert died.returncode == 3
