"""The edge writer SIGKILLed at random points, 100 times, on one database: every detection it
showed (it shows a detection only once committed) is in the database afterwards, every clip row's
file is there and whole, and the database passes its integrity check after every kill.

Cheap enough for CI: a fast fake scorer, a synthetic call pattern, and a *zygote* — one process
that imports the edge once and forks a fresh writer for each round, so a round costs the writer's
own start-up and the random time until the kill, not a Python start."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import MINI, REPO

KILLS = 100

ZYGOTE = r"""
import os, sys
sys.path.insert(0, {repo!r})
from tests.edge.conftest import FakeScorer, tone_then_silence
from edge.agent import Agent
from edge.capture import Segment
from edge.settings import EdgeSettings
from shared_features import LabelSpace

labels = LabelSpace.from_taxonomy_csv({tax!r})


def say(text):
    os.write(1, (text + "\n").encode())  # one write per line: whole lines even when killed


class Calls:
    name = "gen"

    def stop(self):
        pass

    def segments(self):
        def chunks():
            while True:  # calls of 3 s, 4 s of quiet, forever
                x = tone_then_silence(3, 4)
                for i in range(0, x.size, 8000):
                    yield x[i : i + 8000]

        yield Segment("gen", chunks())


def writer(k):
    s = EdgeSettings(home={home!r}, random_clip_rate=0.2, detection_clip_rate=0.5)
    agent = Agent(s, scorer=FakeScorer(labels), on_detection=lambda ev, info: say(f"{{k}} C {{ev.uuid}}"), seed=k)
    agent.start_tour(f"kill-{{k}}")
    say(f"{{k}} RUNNING")
    agent.run(Calls())


for line in sys.stdin:
    cmd, arg = line.split()
    if cmd == "run":
        pid = os.fork()
        if pid == 0:
            try:
                writer(int(arg))
            finally:
                os._exit(0)
        say(f"{{arg}} PID {{pid}}")
    elif cmd == "reap":
        _, status = os.waitpid(int(arg), 0)
        say(f"- REAPED {{status}}")
"""


def _check(db: Path, committed: set[str]) -> tuple[int, int]:
    from edge.store import open_store

    st = open_store(db)
    try:
        assert st.notice is None, st.notice  # never found corrupt
        assert st.check() == "ok"
        stored = {d.uuid for d in st.detections()}
        lost = committed - stored
        assert not lost, f"{len(lost)} committed detections lost"
        clips = st.clips()
        for c in clips:  # a clip row exists only once its file was written whole
            data = Path(c.path).read_bytes()
            assert len(data) == c.bytes and hashlib.sha256(data).hexdigest() == c.sha256
        return len(stored), len(clips)
    finally:
        st.close()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_edge_writer_sigkilled_100_times_at_random_points_loses_nothing(tmp_path):
    code = ZYGOTE.format(repo=str(REPO), tax=str(MINI / "taxonomy.csv"), home=str(tmp_path))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # no BLAS threads in a process that forks
    zygote = subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=env,
    )
    assert zygote.stdin is not None and zygote.stdout is not None
    rng = random.Random(16)
    committed: set[str] = set()
    kills_while_running = 0
    try:
        for k in range(KILLS):
            zygote.stdin.write(f"run {k}\n")
            zygote.stdin.flush()
            line = zygote.stdout.readline().split()
            assert line[:2] == [str(k), "PID"], line
            pid = int(line[2])
            # a random point: during start-up (store, migrations, tour), between detections, mid-write
            time.sleep(rng.uniform(0.0, 2.5))
            os.kill(pid, signal.SIGKILL)  # the writer is our own child's child
            zygote.stdin.write(f"reap {pid}\n")
            zygote.stdin.flush()
            while True:  # everything it said before the kill landed, up to the reaping
                words = zygote.stdout.readline().split()
                assert words, f"the zygote died (exit {zygote.poll()})"
                if words[:2] == ["-", "REAPED"]:
                    assert os.WIFSIGNALED(int(words[2])), f"round {k}: the writer ended by itself"
                    break
                if words[1] == "C":
                    committed.add(words[2])
                elif words[1] == "RUNNING":
                    kills_while_running += 1
            _check(tmp_path / "edge" / "edge.db", committed)  # after every kill
    finally:
        zygote.stdin.close()
        zygote.wait(30)
    n_stored, n_clips = _check(tmp_path / "edge" / "edge.db", committed)
    assert kills_while_running >= KILLS // 2  # most kills hit a running writer, some its start-up
    assert len(committed) >= KILLS // 2 and n_clips > 0  # the kills fell among writes
    print(f"\n{KILLS} kills: {len(committed)} detections shown, {n_stored} stored, {n_clips} clips, 0 lost")
