"""Wire format v1: the payloads the edge builds (its own code; it may not import ``cloud``) validate
against the cloud's schemas, and the cloud's answers carry what the edge reads."""

from __future__ import annotations

import numpy as np
import soundfile as sf

from cloud import schemas
from edge.agent import Agent
from edge.capture import FileSource
from edge.sync import WIRE_VERSION, clip_payload, detection_payload, tour_payload
from tests.edge.conftest import FakeScorer, tone_then_silence


def test_edge_payloads_validate_against_cloud_schemas(tmp_path, labels, edge_settings):
    assert WIRE_VERSION == schemas.WIRE_VERSION
    agent = Agent(
        edge_settings.model_copy(update={"random_clip_rate": 1.0}), scorer=FakeScorer(labels), seed=0
    )
    tour = agent.start_tour("Ana", "El Silencio")
    sf.write(tmp_path / "a.wav", np.concatenate([tone_then_silence(6, 6)]), 32_000)
    agent.run(FileSource(tmp_path / "a.wav"))
    agent.end_tour()
    st = agent.store
    det = st.detections(tour)[0]
    agent.feedback(det["uuid"], "wrong_species", labels[2].code)
    batch = {
        "wire_version": WIRE_VERSION,
        "tours": [tour_payload(t) for t in st.query("SELECT * FROM tours")],
        "detections": [detection_payload(d) for d in st.query("SELECT * FROM detections")],
    }
    parsed = schemas.SyncBatch.model_validate(batch)
    assert parsed.detections[0].species_code == det["species_code"]
    for c in st.query("SELECT * FROM clips"):
        schemas.ClipMeta.model_validate(clip_payload(c))
    f = st.query("SELECT * FROM feedback")[0]
    schemas.FeedbackIn.model_validate(
        {
            "wire_version": WIRE_VERSION,
            **{k: f[k] for k in ("uuid", "detection_uuid", "kind", "correct_code", "note", "created_at")},
        }
    )


def test_cloud_answers_carry_what_the_edge_reads():
    ack = set(schemas.SyncAck.model_fields)
    assert {"accepted", "duplicates", "rejected"} <= ack
    conf = set(schemas.Confirmation.model_fields)
    assert {"seq", "detection_uuid", "agree", "species"} <= conf
    assert "confirmation" in schemas.ClipAck.model_fields


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
