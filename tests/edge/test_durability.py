"""A writer process killed with SIGKILL mid-stream, many times: every detection it reported as
committed is in the database afterwards, and the database is intact."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO

WRITER = r"""
import sys, numpy as np
sys.path.insert(0, {repo!r})
from tests.edge.conftest import FakeScorer, tone_then_silence
from edge.agent import Agent
from edge.settings import EdgeSettings
from shared_features import LabelSpace
labels = LabelSpace.from_taxonomy_csv({tax!r})
def shown(ev, info):
    print("COMMITTED", ev.uuid, flush=True)   # the UI would show it now
s = EdgeSettings(home={home!r}, random_clip_rate=0.3)
agent = Agent(s, scorer=FakeScorer(labels), on_detection=shown, seed={seed})
agent.start_tour("kill-test")
from edge.capture import Segment
class Gen:
    name = "gen"
    def stop(self): pass
    def segments(self):
        def chunks():
            while True:   # calls of 3 s separated by 9 s of quiet, forever
                x = tone_then_silence(3, 9)
                for i in range(0, x.size, 8000):
                    yield x[i:i + 8000]
        yield Segment("gen", chunks())
agent.run(Gen())
"""


@pytest.mark.timeout(300)
def test_sigkill_many_times_loses_nothing(tmp_path):
    from edge.store import open_store
    from tests.conftest import MINI

    committed: set[str] = set()
    for k in range(8):
        code = WRITER.format(repo=str(REPO), tax=str(MINI / "taxonomy.csv"), home=str(tmp_path), seed=k)
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=REPO)
        deadline = time.time() + 60
        got = 0
        while time.time() < deadline and got < 2 + k % 3:
            line = proc.stdout.readline()
            if line == "":  # the writer died on its own: fail with its exit code rather than hang
                pytest.fail(f"writer exited early with code {proc.wait()}")
            if line.startswith("COMMITTED"):
                committed.add(line.split()[1])
                got += 1
        time.sleep(0.05 * (k % 4))  # kill at different points of the next write
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        for line in proc.stdout:  # anything printed before the kill landed was committed too
            if line.startswith("COMMITTED"):
                committed.add(line.split()[1])
        assert got >= 2, "the writer produced no detections"
    st = open_store(tmp_path / "edge" / "edge.db")
    assert st.notice is None and st.check() == "ok"
    stored = {d.uuid for d in st.detections()}
    assert committed <= stored and len(committed) >= 16
    # recovery closes the events the kills left open, so they can be synced
    st.close_open_detections()
    assert st.pending().open_detections == 0
    assert len({d.tour_uuid for d in st.detections()}) == 8
