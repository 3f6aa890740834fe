"""Load and a mini-soak on loopback against a real ``silencio cloud serve`` (BirdNET alone): 32
concurrent device clients mixing identify, sync and clip uploads (``benchmarks/loadmix.py``) for
20 s, then 60 s more while the server's processes are sampled from ``/proc``. Nothing fails, and
the server holds no more file descriptors after the soak than before it. Figures (60 s load,
10-minute soak) come from ``benchmarks/cloud_soak.py``; speed is not asserted here."""

from __future__ import annotations

import time

import pytest

from benchmarks.loadmix import ProcessSampler, real_clips, run_mix, sample

CLIENTS = 32
#: descriptors that may come and go between two quiet moments (a connection the server has not
#: closed yet, a thread pool's eventfd); growth with the number of requests would be hundreds
FD_SLACK = 4


def _quiet_sample(pid: int):  # type: ignore[no-untyped-def]
    time.sleep(5.0)  # keep-alive connections of the finished clients are closed by then
    return sample(pid)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_32_clients_then_a_mini_soak_no_errors_no_fd_growth(live_cloud):
    tokens = list(live_cloud.devices.values())
    clips = real_clips()
    warm = run_mix(live_cloud.url, tokens, 4, 5.0, clips=clips, seed=1)  # every path opened once
    assert warm.n_errors == 0, warm.errors
    load = run_mix(live_cloud.url, tokens, CLIENTS, 20.0, max_requests=20_000, clips=clips, seed=2)
    assert load.n_errors == 0, load.errors
    assert {"identify", "sync", "clip"} <= set(load.latencies), load.latencies.keys()
    assert load.requests >= CLIENTS  # every client got answers
    # at rest after 32 clients: the server's thread pools have grown to serve them (once)
    start = _quiet_sample(live_cloud.pid)
    with ProcessSampler(live_cloud.pid, every=5.0) as sampler:
        soak = run_mix(live_cloud.url, tokens, CLIENTS, 60.0, max_requests=60_000, clips=clips, seed=3)
    end = _quiet_sample(live_cloud.pid)
    assert soak.n_errors == 0, soak.errors
    assert end.processes == start.processes, (start, end)  # no worker died or was restarted
    assert end.fds <= start.fds + FD_SLACK, (start, end, sampler.samples)
    assert end.threads <= start.threads + FD_SLACK, (start, end, sampler.samples)
    log = live_cloud.server.log_tail(10**9)
    assert "database is locked" not in log and "Traceback" not in log, log[-3000:]
    print(
        f"\n20 s: {load.row()}\n60 s: {soak.row()}\nstart {start}\nend {end}\n"
        + "\n".join(str(s) for s in sampler.samples)
    )
