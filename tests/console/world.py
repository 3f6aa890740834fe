"""A console test world: a cloud store with devices (and their reported status), tours with
positions, detections of real species of the label space, clips with real audio files (the El
Silencio soundscape), confirmations that agree and disagree, guides' feedback, two releases (one
with a loop report and a PNG plot), and console users. Built through the store's operations only."""

from __future__ import annotations

import hashlib
import io
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cloud.schemas import ClipMeta, DetectionIn, DeviceStatus, FeedbackIn, TourIn
from cloud.store import NewConfirmation, Store
from tests.conftest import MINI

T0 = datetime(2026, 3, 14, 6, 30, tzinfo=UTC)
SOUNDSCAPE = MINI / "train_soundscapes" / "H02_20230420_074000.ogg"


@dataclass
class World:
    store: Store
    home: Path
    tokens: dict[str, str] = field(default_factory=dict)  # user or device name → token
    tours: list[str] = field(default_factory=list)
    clips: dict[str, str] = field(default_factory=dict)  # role in the world → clip uuid
    detections: dict[str, str] = field(default_factory=dict)


def clip_audio(seconds: float = 6.0, offset: float = 0.0) -> bytes:
    """A few seconds of the real soundscape as OGG bytes."""
    import soundfile as sf

    x, sr = sf.read(SOUNDSCAPE, dtype="float32", start=int(offset * 32000), frames=int(seconds * 32000))
    buf = io.BytesIO()
    sf.write(buf, x, sr, format="OGG", subtype="VORBIS")
    return buf.getvalue()


def build(store: Store, home: Path) -> World:
    w = World(store, home)
    clip_dir = home / "cloud" / "clips"
    clip_dir.mkdir(parents=True, exist_ok=True)
    for name, role in (("ana", "reviewer"), ("bo", "admin")):
        w.tokens[name] = store.add_user(name, role)
    w.tokens["guide-device"] = store.add_device("guide-device")
    w.tokens["office-device"] = store.add_device("office-device", "admin")
    dev = store.authenticate(w.tokens["guide-device"]).id

    t1 = TourIn(
        uuid=uuid.uuid4(),
        guide="Ana Pérez",
        location="El Silencio, sendero norte",
        latitude=6.7712,
        longitude=-74.2003,
        started_at=T0,
        ended_at=T0 + timedelta(hours=2),
    )
    t2 = TourIn(
        uuid=uuid.uuid4(),
        guide="Beto",
        location=None,
        started_at=T0 + timedelta(days=1),
        ended_at=T0 + timedelta(days=1, hours=1),
    )
    plan = [  # tour, species, seconds from T0, band, confidence
        (t1, "rutjac1", 60, "high", 0.91),
        (t1, "grekis", 300, "medium", 0.62),
        (t1, "bobfly1", 900, "low", 0.41),
        (t1, "rutjac1", 1500, "high", 0.88),
        (t1, "compau", 2400, "medium", 0.55),
        (t2, "grekis", 86400 + 120, "high", 0.93),
    ]
    dets = []
    for tour, code, at, band, conf in plan:
        start = T0 + timedelta(seconds=at)
        dets.append(
            DetectionIn(
                uuid=uuid.uuid4(),
                tour_uuid=tour.uuid,
                species_code=code,
                start_time=start,
                end_time=start + timedelta(seconds=3),
                confidence=conf,
                band=band,
                model_version="student 2",
            )
        )
    status = DeviceStatus(
        model_version="student 2",
        app_version="0.3.0",
        pending_detections=3,
        pending_clips=1,
        clips_stored=42,
        speech_suppressed=7,
        audio_paused=False,
        free_bytes=12_000_000_000,
    )
    store.ingest(dev, [t1, t2], dets, status)
    w.tours = [str(t1.uuid), str(t2.uuid)]
    names = ["rutjac", "grekis", "bobfly", "rutjac_late", "compau", "grekis_b"]
    w.detections = {n: str(d.uuid) for n, d in zip(names, dets)}

    def clip(
        name: str, det: DetectionIn | None, reason: str, edge_top: list[tuple[str, float]], offset: float
    ):
        audio = clip_audio(6.0, offset)
        sha = hashlib.sha256(audio).hexdigest()
        path = clip_dir / sha[:2] / f"{sha}.ogg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(audio)
        meta = ClipMeta(
            uuid=uuid.uuid4(),
            tour_uuid=det.tour_uuid if det else None,
            detection_uuid=det.uuid if det else None,
            sha256=sha,
            bytes=len(audio),
            reason=reason,
            recorded_at=det.start_time if det else T0 + timedelta(minutes=50),
            start_offset=1.0,
            source="H02_20230420_074000.ogg",
            source_offset=offset,
            edge_top=[{"code": c, "probability": p} for c, p in edge_top],
        )
        store.add_clip(dev, meta, str(path))
        w.clips[name] = str(meta.uuid)
        return meta

    def confirm(
        meta: ClipMeta, det: DetectionIn | None, agree: bool | None, species: list[tuple[str, float]]
    ):
        store.confirm(
            NewConfirmation(
                clip_uuid=str(meta.uuid),
                device_id=dev,
                detection_uuid=str(det.uuid) if det else None,
                edge_species=det.species_code if det else None,
                agree=agree,
                species=[{"code": c, "probability": p} for c, p in species],
                model="silencio-ensemble 4",
            )
        )

    c_dis = clip("disagree", dets[1], "uncertain", [("grekis", 0.62), ("amekes", 0.2), ("rutjac1", 0.1)], 0)
    confirm(c_dis, dets[1], False, [("amekes", 0.81), ("grekis", 0.12), ("bobfly1", 0.05)])
    c_flag = clip("flagged", dets[2], "flagged", [("bobfly1", 0.41), ("yeofly1", 0.3), ("grekis", 0.1)], 6)
    confirm(c_flag, dets[2], True, [("bobfly1", 0.66), ("yeofly1", 0.2)])
    c_unc = clip("uncertain", dets[4], "uncertain", [("compau", 0.55), ("rutjac1", 0.2), ("grekis", 0.1)], 12)
    confirm(c_unc, dets[4], True, [("compau", 0.71)])
    clip("random", None, "random", [("rutjac1", 0.3)], 18)
    c_ok = clip(
        "confident", dets[0], "uncertain", [("rutjac1", 0.91), ("compau", 0.05), ("grekis", 0.01)], 24
    )
    confirm(c_ok, dets[0], True, [("rutjac1", 0.94)])
    store.feedback(
        dev,
        FeedbackIn(
            uuid=uuid.uuid4(),
            detection_uuid=dets[2].uuid,
            kind="wrong_species",
            correct_code="yeofly1",
            note="the guide saw a yellow-olive flycatcher",
            created_at=T0 + timedelta(minutes=20),
        ),
    )

    report_dir = home / "loop" / "run-1"
    report_dir.mkdir(parents=True, exist_ok=True)
    import numpy as np

    from cloud.console.spectrogram import png

    plot = np.zeros((20, 40, 3), np.uint8)
    plot[:, :20] = (200, 40, 40)
    (report_dir / "roc.png").write_bytes(png(plot))
    (report_dir / "report.md").write_text(
        "# Loop run 1\n\nMacro ROC-AUC 0.81 on the held-out verdicts.\n\n![ROC curves](roc.png)\n\n"
        "<script>alert(1)</script>\n\n| member | AUC |\n|---|---|\n| student | 0.81 |\n"
    )
    store.publish_release(
        "1",
        "a" * 64,
        "fv1-153794d7cd933cca",
        str(home / "r1.tar"),
        {"name": "student", "format_name": "onnx-int8", "metrics": {"macro_roc_auc": 0.77}},
    )
    store.publish_release(
        "2",
        "b" * 64,
        "fv1-153794d7cd933cca",
        str(home / "r2.tar"),
        {
            "name": "student",
            "format_name": "onnx-int8",
            "metrics": {"macro_roc_auc": 0.81},
            "loop_report": "loop/run-1/report.md",
        },
    )
    return w
