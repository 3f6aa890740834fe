"""API fuzzing: Schemathesis against the live service's own OpenAPI document (``/docs.json``) —
every operation, the device API under ``/v1`` with a device token registered in the served store
and the reports with an admin token — with every check Schemathesis has (no server error, status
codes, content types and bodies conform to the document, schema-violating requests refused,
schema-valid ones accepted, no auth ignored, …; ``tests/reliability/schemathesis.toml`` turns off
one check on four operations and says why), in the coverage, fuzzing and stateful phases.
Bounded (few examples, a fixed seed, deterministic generation); ``benchmarks/cloud_fuzz.py`` runs
the long version."""

from __future__ import annotations

import httpx
import pytest

from benchmarks.cloud_fuzz import schemathesis_run, tracebacks

MAX_EXAMPLES = 20


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_schemathesis_every_operation_every_check(live_cloud, tmp_path):
    doc = httpx.get(f"{live_cloud.url}/docs.json", timeout=30).json()
    # Schemathesis leaves out the document it was loaded from (/docs.json); it fetched it, though
    operations = sum(len(ops) for path, ops in doc["paths"].items() if path != "/docs.json")
    assert operations >= 19 and sum(p.startswith("/v1/") for p in doc["paths"]) >= 11
    before = tracebacks(live_cloud.server.log_tail(10**9))
    rep = schemathesis_run(
        live_cloud.url,
        live_cloud.devices["load-0"],
        live_cloud.admin,
        tmp_path / "schemathesis",
        max_examples=MAX_EXAMPLES,
        seed=1,
        deterministic=True,
        timeout=500,
    )
    detail = rep["stdout"][-6000:]
    assert rep["returncode"] == 0 and rep["failures"] == [] and rep["errors"] == [], detail
    assert rep["operations"]["tested"] == operations == rep["operations"]["total"], detail
    assert rep["operations"]["errored"] == 0 and rep["complete"], detail
    assert {rep["phases"][p]["status"] for p in ("coverage", "fuzzing", "stateful")} == {"success"}, detail
    statuses = rep["statuses"]
    assert not [s for s in statuses if s >= 500], statuses  # no server error, not even a 503
    # the device API was reached with valid tokens: accepted syncs, and refusals that are not 401
    assert statuses[200] > 50 and statuses[422] > 50, statuses
    assert rep["test_cases"]["generated"] >= 10 * operations
    # a client's error is one log line, never a traceback
    assert tracebacks(live_cloud.server.log_tail(10**9)) == before, live_cloud.server.log_tail()
