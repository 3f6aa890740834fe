"""Wire format v2: the payloads the edge builds (its own code; it may not import ``cloud``) validate
against the cloud's schemas — with the v2 fields filled (``SyncBatch.device``: ``DeviceStatus``;
``ClipMeta.source``/``source_offset``/``edge_top``) — and the cloud's answers carry what the edge
reads."""

from __future__ import annotations

import numpy as np
import soundfile as sf

from cloud import schemas
from edge.agent import Agent
from edge.capture import FileSource
from edge.records import SyncMarks
from edge.status import device_report
from edge.sync import WIRE_VERSION, batch_payload, clip_payload
from tests.edge.conftest import FakeScorer, tone_then_silence


def test_edge_payloads_validate_against_cloud_schemas(tmp_path, labels, edge_settings):
    assert WIRE_VERSION == schemas.WIRE_VERSION
    agent = Agent(
        edge_settings.model_copy(update={"random_clip_rate": 1.0}), scorer=FakeScorer(labels), seed=0
    )
    tour = agent.start_tour("Ana", "El Silencio")
    sf.write(tmp_path / "H02_20230420_074000.wav", np.concatenate([tone_then_silence(6, 6)]), 32_000)
    agent.run(FileSource(tmp_path / "H02_20230420_074000.wav"))
    agent.end_tour()
    st = agent.store
    det = st.detections(tour)[0]
    agent.feedback(det.uuid, "wrong_species", labels[2].code)
    batch = st.unsynced_batch(100)
    device = device_report(st, edge_settings.clip_dir, agent.scorer.version).wire()
    parsed = schemas.SyncBatch.model_validate(batch_payload(batch.tours, batch.detections, device))
    assert parsed.detections[0].species_code == det.species_code
    assert parsed.detections[0].start_time.isoformat().startswith("2023-04-20T07:40:00")  # recording time
    d = parsed.device
    assert d is not None and d.model_version == "fake-1" and d.pending_detections == len(batch.detections)
    assert d.clips_stored == len(st.clips()) > 0 and d.pending_clips == st.pending().clips
    assert d.free_bytes and d.free_bytes > 0 and d.audio_paused is False and d.speech_suppressed == 0
    assert d.app_version
    metas = [schemas.ClipMeta.model_validate(clip_payload(c)) for c in st.clips()]
    for m, c in zip(metas, st.clips()):
        assert m.source == "H02_20230420_074000.wav" and m.source_offset == c.source_offset
        top = [e.probability for e in m.edge_top]
        assert len(top) == 3 and top == sorted(top, reverse=True)  # the edge's best first
        if m.detection_uuid is not None:  # a window with a detection: its species leads
            assert m.edge_top[0].code == labels[0].code
    assert any(m.detection_uuid is not None for m in metas)
    st.mark_synced(SyncMarks([], [det.uuid], {}))
    (f,) = st.feedback_to_send()
    schemas.FeedbackIn.model_validate(
        {
            "wire_version": WIRE_VERSION,
            "uuid": f.uuid,
            "detection_uuid": f.detection_uuid,
            "kind": str(f.kind),
            "correct_code": f.correct_code,
            "note": f.note,
            "created_at": f.created_at,
        }
    )


def test_cloud_answers_carry_what_the_edge_reads():
    from edge.records import Confirmation

    ack = set(schemas.SyncAck.model_fields)
    assert {"accepted", "duplicates", "rejected"} <= ack
    conf = set(schemas.Confirmation.model_fields)
    assert {"seq", "detection_uuid", "agree", "species"} <= conf
    assert "confirmation" in schemas.ClipAck.model_fields
    wire = schemas.Confirmation(
        seq=3,
        clip_uuid="6f1e2c1e-1111-4111-8111-111111111113",
        detection_uuid="6f1e2c1e-1111-4111-8111-111111111111",
        edge_species="grekis",
        agree=True,
        species=[
            schemas.SpeciesScore(
                code="grekis",
                scientific_name="Pitangus sulphuratus",
                common_name="Great Kiskadee",
                taxon_class="Aves",
                probability=0.9,
            )
        ],
        model="ensemble 1",
        created_at="2025-01-01T00:00:00Z",
    ).model_dump(mode="json")
    c = Confirmation.from_wire(wire)
    assert c.detection_uuid == "6f1e2c1e-1111-4111-8111-111111111111" and c.agree is True and c.seq == 3
    assert c.species[0].common_name == "Great Kiskadee"


def test_v1_batches_are_still_accepted_with_their_band_names_mapped():
    """A device that has not updated yet (wire v1: bands confirmed/likely/possible) still syncs."""
    det = {
        "uuid": "6f1e2c1e-1111-4111-8111-111111111111",
        "tour_uuid": "6f1e2c1e-1111-4111-8111-111111111112",
        "species_code": "grekis",
        "start_time": "2025-04-20T07:40:00Z",
        "end_time": "2025-04-20T07:40:05Z",
        "confidence": 0.7,
        "model_version": "m1",
    }
    bands = {"confirmed": "high", "likely": "medium", "possible": "low"}
    for old, new in bands.items():
        b = schemas.SyncBatch.model_validate({"wire_version": 1, "detections": [{**det, "band": old}]})
        assert b.detections[0].band == new
    # in v2 the old names are refused: a band must never read like the cloud's verdict
    import pytest
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        schemas.SyncBatch.model_validate({"wire_version": 2, "detections": [{**det, "band": "confirmed"}]})


def test_device_status_counts_are_strict():
    """A JSON boolean is not a count (pydantic's lax mode would read ``true`` as 1)."""
    import pytest
    from pydantic import ValidationError

    for bad in ('{"free_bytes": false}', '{"pending_clips": true}', '{"audio_paused": 1}'):
        with pytest.raises(ValidationError):
            schemas.DeviceStatus.model_validate_json(bad)
    ok = schemas.DeviceStatus.model_validate_json('{"pending_clips": 3, "audio_paused": true}')
    assert ok.pending_clips == 3 and ok.audio_paused is True
