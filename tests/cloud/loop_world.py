"""The closed loop's scenario (issue 13, "Tests and figures"), built in seconds on the CPU.

A synthetic dataset of 5 species whose training recordings mislead a model the way real archives
do: eight of species A's ten recordings are labelled B (mislabelled archive recordings), so the
model confuses A with B; species C's recordings were all made beside a machine
whose whine (not an animal) they carry, so the model reports the whine as C. Production is a tiny
student trained on it and released (signed) through the cloud. The field: scripted guide verdicts
(from the synthetic truth) on clips the edge reported — A, B, C alone and the whine alone — plus
two reviewer verdicts that overrule a guide. Fresh clips no one judged measure the figures."""

from __future__ import annotations

import hashlib
import io
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import soundfile as sf

from training.synth import SR, SynthConfig, generate, render_clip, species_of

SEED = 13
CLIP_S = 5.0
#: field clips per kind (A, B, C alone; the whine alone) judged by guides
PER_KIND = 20
#: field clips of the whine alone (the machine runs near the trail every day)
NOISE_CLIPS = 30
#: the student: timm's ResNet-10t on 4× pooled mels (learns this data in a few CPU epochs)
STUDENT = {"timm_name": "resnet10t", "input_downsample": 4}
#: fresh clips per kind for the figures (never judged, never trained on)
TEST_PER_KIND = 16


@dataclass
class World:
    data: Path
    a: str
    b: str
    c: str
    codes: list[str]
    student: Path
    release: Path
    test_clips: dict[str, list[np.ndarray]]  # kind ("A", "B", "C", "noise") → waveforms


def build_dataset(root: Path) -> tuple[Path, str, str, str]:
    from training.synth import confound

    data = root / "dataset"
    generate(
        data,
        SynthConfig(species=5, clips_per_species=10, clip_seconds=(5.0, 8.0), soundscapes=5, seed=SEED),
    )
    sp = species_of(data)
    birds = [s for s in sp if s.taxon_class == "Aves"]
    a, b = birds[0], birds[1]
    c = [s for s in sp if s.code not in (a.code, b.code)][0]
    confound(data, b.code, relabel_from=a.code, relabel=8, seed=SEED)
    confound(data, c.code, noise=True, seed=SEED + 1)
    return data, a.code, b.code, c.code


def train_production(root: Path, data: Path, tracking) -> tuple[Path, Path, object]:  # type: ignore[no-untyped-def]
    """Production: a tiny student trained on the misleading data, exported (ONNX fp32), gated on
    its own (no production before it: its alias moves), released without thresholds."""
    from training.gate import FeedbackSet, heldout_from_dataset
    from training.loop import TrainConfig
    from training.models import member_config
    from training.pipeline import (
        DataSource,
        EdgeModel,
        export_edge_packages,
        gate,
        make_release,
        train_member,
    )

    m = train_member(
        DataSource(data_dir=data),
        member_config("student", **STUDENT),
        TrainConfig(
            epochs=20,
            batch_size=16,
            lr=5e-3,
            seed=SEED,
            threads=2,
            patience=20,
            mixup_prob=0.0,
            specaugment=False,
            wave_augment=False,
        ),
        root / "prod" / "student",
        tracking=tracking("student"),
        progress=False,
    )
    exp = export_edge_packages(
        m.checkpoint,
        data,
        root / "prod" / "edge",
        formats=("onnx-fp32",),
        version="1",
        tracking=tracking("edge"),
    )
    d = gate(
        EdgeModel(exp.chosen),
        None,
        heldout_from_dataset(data),
        FeedbackSet("none", ()),
        root / "prod" / "gate",
        registry=exp.registered,
        tracking=tracking("gate"),
    )
    rel = make_release(exp.chosen, root / "prod" / "releases", decision=d, tracking=tracking("release"))
    return m.checkpoint, rel.directory, exp.registered


def recorded(x: np.ndarray) -> np.ndarray:
    """What a recorder keeps: the audio through Ogg Vorbis, as the dataset's recordings are."""
    buf = io.BytesIO()
    sf.write(buf, x, SR, format="OGG", subtype="VORBIS")
    buf.seek(0)
    y, _ = sf.read(buf, dtype="float32")
    return np.asarray(y, np.float32)


def test_clips(data: Path, a: str, b: str, c: str, seed: int = SEED + 100) -> dict[str, list[np.ndarray]]:
    sp = {s.code: s for s in species_of(data)}
    rng = np.random.default_rng(seed)
    kinds = {"A": ([sp[a]], False), "B": ([sp[b]], False), "C": ([sp[c]], False), "noise": ([], True)}
    return {
        k: [recorded(render_clip(CLIP_S, rng, s, noise=n)) for _ in range(TEST_PER_KIND)]
        for k, (s, n) in kinds.items()
    }


def field_figures(package: Path, thresholds: dict[str, float], w: World) -> dict[str, float]:
    """On the fresh clips' windows: the share of A windows whose top species is B and of B windows
    whose top species is A (their mean: the confusion rate), and the share of whine windows on
    which any species is reported at the shipped thresholds (noise false positives)."""
    from shared_features import DEFAULT, frame_windows
    from shared_features.package import load_package

    pkg = load_package(package)
    codes = list(pkg.labels.codes)
    thr = np.array([thresholds.get(c, 0.5) for c in codes])

    def probs(kind: str) -> np.ndarray:
        wins = np.concatenate([frame_windows(x, DEFAULT)[0] for x in w.test_clips[kind]]).astype(np.float32)
        return np.asarray(pkg.predict(wins).probs)

    pa, pb, pn, pc = probs("A"), probs("B"), probs("noise"), probs("C")
    ia, ib, ic = codes.index(w.a), codes.index(w.b), codes.index(w.c)
    a_as_b = float((pa.argmax(axis=1) == ib).mean())
    b_as_a = float((pb.argmax(axis=1) == ia).mean())
    return {
        "a_as_b": a_as_b,
        "b_as_a": b_as_a,
        "confusion": (a_as_b + b_as_a) / 2,
        "noise_fp": float((pn >= thr).any(axis=1).mean()),
        "a_recall": float((pa[:, ia] >= thr[ia]).mean()),
        "b_recall": float((pb[:, ib] >= thr[ib]).mean()),
        "c_recall": float((pc[:, ic] >= thr[ic]).mean()),
    }


def _wav(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, SR, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def script_verdicts(
    cloud,
    token: str,
    w: World,
    *,
    poison: bool = False,
    seed: int = SEED + 200,
    per_kind: int = PER_KIND,
    noise_clips: int = NOISE_CLIPS,
) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """One tour of field clips (A, B, C alone; the whine alone), each detected by production as its
    top species at threshold (clips it reports nothing on are not detections: no verdict); the
    guide's verdict comes from the synthetic truth (``poison``: the opposite of the truth — every
    right detection flagged as another species, every wrong one confirmed). Two reviewer verdicts
    overrule a guide (reviewer over guide). Returns the verdict counts."""
    from cloud.schemas import ClipMeta, DetectionIn, FeedbackIn, TourIn
    from shared_features.package import load_package

    pkg = load_package(w.release / "package")
    codes = list(pkg.labels.codes)
    store = cloud.store
    dev = store.authenticate(token)
    rng = np.random.default_rng(seed)
    sp = {s.code: s for s in species_of(w.data)}
    t0 = datetime(2026, 11, 1, 6, 0, tzinfo=UTC)
    tour = TourIn(uuid=uuid.UUID(int=rng.integers(1 << 62)), guide="Scripted guide", started_at=t0)
    store.ingest(dev.id, [tour], [])
    kinds = [("A", [sp[w.a]], False, w.a), ("B", [sp[w.b]], False, w.b), ("C", [sp[w.c]], False, w.c)]
    kinds.append(("noise", [], True, None))
    counts: dict[str, int] = {}
    k = 0
    flagged_clips: list[tuple[str, str | None]] = []
    for _kind, species, noise, truth in kinds:
        for _ in range(noise_clips if noise else per_kind):
            x = recorded(render_clip(CLIP_S, rng, species, noise=noise))
            probs = pkg.predict(x[None, : int(CLIP_S * SR)]).probs[0]
            top = int(np.argmax(probs))
            k += 1
            if probs[top] < 0.5:
                counts["not detected"] = counts.get("not detected", 0) + 1
                continue
            reported = codes[top]
            at = t0 + timedelta(minutes=k)
            det = DetectionIn(
                uuid=uuid.UUID(int=int(rng.integers(1 << 62))),
                tour_uuid=tour.uuid,
                species_code=reported,
                start_time=at,
                end_time=at + timedelta(seconds=5),
                confidence=float(probs[top]),
                band="high",
                model_version="1",
            )
            store.ingest(dev.id, [], [det])
            audio = _wav(x)
            digest = hashlib.sha256(audio).hexdigest()
            path = cloud.clip_files.put(audio, digest, "wav")
            clip = ClipMeta(
                uuid=uuid.UUID(int=int(rng.integers(1 << 62))),
                tour_uuid=tour.uuid,
                detection_uuid=det.uuid,
                sha256=digest,
                bytes=len(audio),
                reason="random",
                recorded_at=at,
            )
            store.add_clip(dev.id, clip, str(path))
            right = reported == truth
            guide_slip = not poison and truth is None and not right and len(flagged_clips) < 2
            if guide_slip:  # the guide confirms the whine as a bird; a reviewer will overrule
                kind, correct = "confirmed", None
            elif poison:
                kind = "confirmed" if not right else "wrong_species"
                correct = None if not right else codes[(codes.index(reported) + 1) % len(codes)]
            elif right:
                kind, correct = "confirmed", None
            elif truth is None:
                kind, correct = "not_an_animal", None
            else:
                kind, correct = "wrong_species", truth
            store.feedback(
                dev.id,
                FeedbackIn(
                    uuid=uuid.UUID(int=int(rng.integers(1 << 62))),
                    detection_uuid=det.uuid,
                    kind=kind,
                    correct_code=correct,
                    created_at=at + timedelta(seconds=30),
                ),
            )
            counts[kind] = counts.get(kind, 0) + 1
            if guide_slip:
                flagged_clips.append((str(clip.uuid), None))
    if flagged_clips:
        store.add_user("rev", "reviewer")
        for clip_uuid, _ in flagged_clips:
            store.add_review_verdict(clip_uuid, "rev", "not_an_animal", None)
        counts["reviewer overruled a guide"] = len(flagged_clips)
    return counts
