"""Sync against the real cloud app in-process, through a transport that fails at every step
(connection errors, lost responses after the cloud processed the request, 500s, dropped uploads):
after enough runs everything arrives exactly once, and confirmations come back."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import soundfile as sf

from edge.agent import Agent
from edge.capture import FileSource
from edge.errors import SyncError
from edge.sync import SyncClient

from .conftest import FakeScorer, FlakyTransport, tone_then_silence


def _record(tmp_path, labels, settings, seconds_pattern):
    agent = Agent(settings, scorer=FakeScorer(labels), seed=0)
    agent.start_tour("Ana", "El Silencio")
    x = np.concatenate([tone_then_silence(a, b) for a, b in seconds_pattern])
    sf.write(tmp_path / "rec.wav", x, 32_000)
    agent.run(FileSource(tmp_path / "rec.wav"))
    agent.end_tour()
    return agent


def test_sync_through_failures_loses_nothing_and_duplicates_nothing(tmp_path, labels, edge_settings, cloud):
    s = edge_settings.model_copy(update={"random_clip_rate": 0.5, "threshold": 0.5})
    agent = _record(tmp_path, labels, s, [(6, 8)] * 6)
    st = agent.store
    det = st.detections()[0]
    agent.feedback(det.uuid, "wrong_species", labels[3].code)
    n_det = len(st.detections())
    n_clips = len(st.clips())
    assert n_det == 6 and n_clips >= 3
    flaky = FlakyTransport(cloud["client"]._transport, p_fail=0.45, seed=1)
    client = SyncClient(
        st,
        "http://testserver",
        cloud["token"],
        transport=flaky,
        retries=1,
        batch=2,
        backoff=0.0,
        sleep=lambda s: None,
    )
    runs = failures = 0
    while runs < 60:
        runs += 1
        try:
            client.run()
        except SyncError:
            failures += 1
            continue
        if st.pending().total == 0:
            break
    assert st.pending().total == 0, st.pending()
    assert failures > 0 and len(flaky.faults) == 5, flaky.faults  # every kind of fault happened
    cs = cloud["store"]
    mine = [d.uuid for d in st.detections()]
    stored = cs.query(f"SELECT uuid FROM detections WHERE uuid IN ({','.join('?' * len(mine))})", mine)
    assert len(stored) == n_det  # exactly once (primary keys make a second copy impossible; all arrived)
    clips = cs.query(
        "SELECT count(*) AS n FROM clips c JOIN devices d ON d.id = c.device_id WHERE d.name = 'edge-test'"
    )
    assert clips[0]["n"] == n_clips
    assert cs.query("SELECT count(*) AS n FROM feedback")[0]["n"] == 1
    # confirmations came back: detections with a clip are confirmed or disputed now
    statuses = {d.status for d in st.detections() if d.cloud_species}
    assert statuses and statuses <= {"confirmed", "disputed"}
    assert st.sync_info().confirmations_cursor > 0


def test_sync_offline_keeps_everything_pending(tmp_path, labels, edge_settings):
    agent = _record(tmp_path, labels, edge_settings, [(6, 8)])
    before = agent.store.pending()

    def down(request):
        raise httpx.ConnectError("network is unreachable", request=request)

    client = SyncClient(
        agent.store,
        "http://cloud.invalid",
        "t",
        transport=httpx.MockTransport(down),
        retries=3,
        backoff=0.0,
        sleep=lambda s: None,
    )
    with pytest.raises(SyncError, match="4 attempts"):
        client.run()
    assert agent.store.pending() == before and before.detections == 1


def test_bad_token_is_a_clear_error(tmp_path, labels, edge_settings, cloud):
    agent = _record(tmp_path, labels, edge_settings, [(6, 8)])
    client = SyncClient(
        agent.store,
        "http://testserver",
        "wrong-token",
        transport=FlakyTransport(cloud["client"]._transport, 0.0),
    )
    with pytest.raises(SyncError, match="401"):
        client.run()
    assert agent.store.pending().detections == 1


def test_cloud_confirmations_change_status_counts_and_exports(tmp_path, edge_settings, cloud):
    """A real recording (Cattle Tyrant), the real BirdNET fallback on the edge, a real sync against
    the in-process cloud: every confirmation that names a detection sets its status (the cloud's
    verdict), the species counts and the exports follow, the cloud's tour report counts the species as
    confirmed — and a guide's contrary verdict stays beside it, not over it."""
    import csv

    from edge.exports import write_csv, write_dwc
    from edge.records import DetectionStatus, GuideVerdict
    from tests.conftest import MINI

    s = edge_settings.model_copy(update={"random_clip_rate": 1.0})  # every window is a clip
    agent = Agent(s, seed=0)  # BirdNET zero-shot: no package installed
    tour = agent.start_tour("Ana", "El Silencio")
    agent.run(FileSource(MINI / "train_audio" / "cattyr" / "iNat854652.ogg"))
    agent.end_tour()
    st = agent.store
    dets = [d for d in st.detections(tour) if d.species_code == "cattyr"]
    assert dets and all(d.status is DetectionStatus.PENDING for d in dets)
    agent.feedback(dets[0].uuid, "wrong_species", "trokin")  # the guide disagrees
    linked = {c.detection_uuid for c in st.clips() if c.detection_uuid}
    assert {d.uuid for d in dets} <= linked  # each detection's windows went up as its clips
    client = SyncClient(
        st, "http://testserver", cloud["token"], transport=FlakyTransport(cloud["client"]._transport, 0.0)
    )
    rep = client.run()
    assert rep.clips == len(st.clips()) and rep.confirmations_applied >= len(dets)
    assert rep.confirmed + rep.disputed == rep.confirmations_applied and rep.confirmed >= 1
    after = {d.uuid: d for d in st.detections(tour)}
    for d in dets:
        assert after[d.uuid].status is DetectionStatus.CONFIRMED, after[d.uuid]  # the cloud agreed
        assert after[d.uuid].cloud_species[0].code == "cattyr"
    assert after[dets[0].uuid].guide_verdict is GuideVerdict.WRONG_SPECIES  # kept apart
    counts = {c.code: c for c in st.species_counts(tour)}
    assert counts["cattyr"].confirmed == len(dets)
    write_csv(tmp_path / "d.csv", st.export_rows(tour))
    assert {
        r["status"] for r in csv.DictReader(open(tmp_path / "d.csv")) if r["species_code"] == "cattyr"
    } == {"confirmed"}
    write_dwc(tmp_path / "o.csv", st.export_rows(tour))
    occ = [r for r in csv.DictReader(open(tmp_path / "o.csv")) if r["scientificName"] == "Machetornis rixosa"]
    assert occ and all(r["identificationVerificationStatus"] == "verified by the cloud ensemble" for r in occ)
    # a second sync re-reads nothing twice and changes nothing
    again = client.run()
    assert again.confirmations == 0 and st.detection(dets[0].uuid).status is DetectionStatus.CONFIRMED
    # the cloud's own tour report now counts the species as confirmed
    admin = cloud["store"].add_device(f"admin-{tour[:8]}", role="admin")
    r = cloud["client"].get(
        "/v1/reports/tours", params={"tour": tour}, headers={"authorization": f"Bearer {admin}"}
    )
    assert r.status_code == 200, r.text
    assert r.json()["tours"][0]["species_confirmed"] >= 1
