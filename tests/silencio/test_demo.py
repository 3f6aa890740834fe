"""``silencio demo --quick`` (the CI size) runs the whole loop through the pipeline functions,
prints quiet output with hints that work as printed, stops what it started, and reuses every
step on a second run."""

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
    for step in range(1, 11):
        assert f"[{step}/10]" in out
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

    assert main(["demo", "--quick", "--species", "5", "--workers", "1", "--no-tui"]) == 0
    out, _ = capfd.readouterr()
    assert "reusing" in out and "files reused" in out and "[10/10]" in out
    assert out.count("reusing") >= 6  # dataset, 3 members, ensemble, student, edge packages
