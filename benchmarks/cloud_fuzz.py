"""API fuzzing of the live cloud service with Schemathesis, against its own OpenAPI document.

    .venv/bin/python benchmarks/cloud_fuzz.py [--max-examples 300] [--seeds 1 2 3]

Starts ``silencio cloud serve`` (BirdNET alone, the default model) in a temporary home, registers
a device and an admin in its store, and runs ``st run …/docs.json`` once per seed with every
check Schemathesis has (``tests/reliability/schemathesis.toml`` says which one is turned off where,
and why) over every operation — the device API under ``/v1`` with the device token, the reports
with the admin token — in all phases (coverage, fuzzing, stateful). Prints, per seed, the cases
generated, the failures, the answers by status, and the tracebacks the server logged; exits 1 if
anything failed. ``tests/reliability/test_fuzz.py`` runs the same with few examples.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))
from benchmarks._table import table  # noqa: E402

REPO = _HERE.parent
CONFIG = REPO / "tests" / "reliability" / "schemathesis.toml"


def schemathesis_run(
    url: str,
    device_token: str,
    admin_token: str,
    report_dir: Path,
    *,
    max_examples: int,
    seed: int,
    workers: int = 1,
    deterministic: bool = False,
    timeout: float = 3600,
) -> dict[str, Any]:
    """``st run URL/docs.json`` with :data:`CONFIG`; returns its JSON report plus ``stdout``,
    ``statuses`` (answers by HTTP status, from the NDJSON event log) and ``returncode``.
    ``deterministic``: the same cases every run (the seed is then not used)."""
    report_dir.mkdir(parents=True, exist_ok=True)
    st = Path(sys.executable).parent / "st"
    cmd = [
        str(st),
        "--config-file",
        str(CONFIG),
        "run",
        f"{url}/docs.json",
        "--max-examples",
        str(max_examples),
        "--seed",
        str(seed),
        *(["--generation-deterministic"] if deterministic else []),
        "--workers",
        str(workers),
        "--report",
        "json,ndjson",
        "--report-dir",
        str(report_dir),
        "--no-color",
    ]
    env = {
        **os.environ,
        "SILENCIO_FUZZ_DEVICE_TOKEN": device_token,
        "SILENCIO_FUZZ_ADMIN_TOKEN": admin_token,
    }
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=report_dir)
    reports = sorted(report_dir.glob("json-*.json"))
    if not reports:
        raise RuntimeError(f"schemathesis wrote no report (exit {proc.returncode}):\n{proc.stdout[-3000:]}")
    report: dict[str, Any] = json.loads(reports[-1].read_text())
    report["stdout"] = proc.stdout + proc.stderr
    report["returncode"] = proc.returncode
    report["statuses"] = _statuses(sorted(report_dir.glob("ndjson-*.ndjson"))[-1])
    return report


def _statuses(ndjson: Path) -> Counter[int]:
    """HTTP statuses of every answer the run received."""
    out: Counter[int] = Counter()
    with open(ndjson) as fh:
        for line in fh:
            if '"status_code"' not in line:
                continue
            _walk(json.loads(line), out)
    return out


def _walk(obj: Any, out: Counter[int]) -> None:
    if isinstance(obj, dict):
        resp = obj.get("response")
        if isinstance(resp, dict) and isinstance(resp.get("status_code"), int):
            out[resp["status_code"]] += 1
        for v in obj.values():
            _walk(v, out)
    elif isinstance(obj, list):
        for v in obj:
            _walk(v, out)


def tracebacks(log_text: str) -> int:
    return log_text.count("Traceback (most recent call last)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-examples", type=int, default=300, help="per operation and phase")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()

    from cloud.replicas import ServeProcess, free_port
    from tests.reliability.conftest import register, serve_env

    rows, failed = [], False
    with tempfile.TemporaryDirectory(prefix="silencio-fuzz-") as tmp:
        home = Path(tmp)
        devices, admin = register(home, ["fuzz-device"])
        with ServeProcess(free_port(), serve_env(home), home / "serve.log", cwd=REPO) as server:
            server.wait_ready(300)
            for seed in args.seeds:
                before = tracebacks(server.log_tail(10**9))
                rep = schemathesis_run(
                    server.url,
                    devices["fuzz-device"],
                    admin,
                    home / f"report-{seed}",
                    max_examples=args.max_examples,
                    seed=seed,
                    workers=args.workers,
                )
                logged = tracebacks(server.log_tail(10**9)) - before
                st = rep["statuses"]
                tc = rep["test_cases"]
                failed |= rep["returncode"] != 0 or bool(rep["failures"]) or logged > 0
                rows.append(
                    [
                        seed,
                        rep["operations"]["tested"],
                        tc["generated"],
                        sum(st.values()),
                        sum(n for s, n in st.items() if 200 <= s < 300),
                        sum(n for s, n in st.items() if 400 <= s < 500),
                        sum(n for s, n in st.items() if s >= 500),
                        tc["unique_failures"],
                        logged,
                        f"{rep['running_time']:.0f}",
                    ]
                )
                print(f"seed {seed}: statuses {dict(sorted(st.items()))}", flush=True)
                if rep["failures"] or rep["returncode"] != 0:
                    print(rep["stdout"][-6000:])
    print(
        f"\nSchemathesis {rep['schemathesis_version']}, every check (tests/reliability/schemathesis.toml), "
        f"--max-examples {args.max_examples}, phases coverage + fuzzing + stateful\n"
    )
    print(
        table(
            [
                "seed",
                "operations",
                "cases",
                "answers",
                "2xx",
                "4xx",
                "5xx",
                "failures",
                "tracebacks logged",
                "s",
            ],
            rows,
        )
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
