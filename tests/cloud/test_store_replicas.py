"""Two ``silencio cloud serve`` replicas on different ports over one real PostgreSQL and one clip
directory; 2 × 16 client threads sync overlapping, retried (re-sent to the other replica) and
duplicated (the same batch sent to both replicas at once) batches, clip uploads and feedback for the
same two devices. Every detection, clip and feedback is stored exactly once, every clip has one
confirmation that both replicas report the same, a device paging confirmations across both
replicas gets each once in order, and nothing answers 5xx."""

from __future__ import annotations

import io
import json
import random
import threading
import uuid
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from cloud.replicas import ServeProcess, free_port
from tests.conftest import MINI, REPO

SOUNDSCAPE = MINI / "train_soundscapes" / "H02_20230420_074000.ogg"
THREADS_PER_REPLICA = 16
ROUNDS = 5
T0 = datetime(2026, 3, 14, 6, 30, tzinfo=UTC)


def clips_of(n: int, seconds: float = 5.0) -> list[bytes]:
    """``n`` different 5 s OGG clips cut from the real El Silencio soundscape."""
    import soundfile as sf

    x, sr = sf.read(SOUNDSCAPE, dtype="float32")
    out = []
    for k in range(n):
        start = int(k * 4.3 * sr) % (len(x) - int(seconds * sr))
        buf = io.BytesIO()
        sf.write(buf, x[start : start + int(seconds * sr)], sr, format="OGG", subtype="VORBIS")
        out.append(buf.getvalue())
    return out


def device_data(name: str, audio: list[bytes]) -> dict:
    import hashlib

    tours = [
        {"uuid": str(uuid.uuid4()), "guide": name, "location": "El Silencio", "started_at": T0.isoformat()}
        for _ in range(2)
    ]
    dets = []
    for i in range(120):
        start = T0 + timedelta(seconds=7 * i)
        dets.append(
            {
                "uuid": str(uuid.uuid4()),
                "tour_uuid": tours[i % 2]["uuid"],
                "species_code": ["rutjac1", "grekis", "bobfly1"][i % 3],
                "start_time": start.isoformat(),
                "end_time": (start + timedelta(seconds=3)).isoformat(),
                "confidence": 0.7,
                "band": "medium",
                "model_version": "student 1",
            }
        )
    clips = []
    for k, data in enumerate(audio):  # clip k belongs to detection k (always in every batch)
        meta = {
            "uuid": str(uuid.uuid4()),
            "tour_uuid": dets[k]["tour_uuid"],
            "detection_uuid": dets[k]["uuid"],
            "sha256": hashlib.sha256(data).hexdigest(),
            "bytes": len(data),
            "reason": "uncertain",
            "recorded_at": T0.isoformat(),
            "source": "microphone",
            "source_offset": 7.0 * k,
            "edge_top": [{"code": dets[k]["species_code"], "probability": 0.7}],
        }
        clips.append((json.dumps(meta), data))
    return {"tours": tours, "detections": dets, "clips": clips}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_replicas_over_one_postgres_store_everything_exactly_once(tmp_path, postgres):
    from cloud.store import open_url

    url = postgres.create_database("replicas")
    store = open_url(url)
    names = ["guide-a", "guide-b"]
    tokens = {n: store.add_device(n) for n in names}
    ids = {n: store.authenticate(tokens[n]).id for n in names}
    audio = clips_of(8)
    data = {"guide-a": device_data("guide-a", audio[:4]), "guide-b": device_data("guide-b", audio[4:])}

    clip_dir = tmp_path / "clips"
    env = {
        "SILENCIO_CLOUD_DATABASE_URL": url,
        "SILENCIO_CLOUD_CLIP_DIR": str(clip_dir),
        "SILENCIO_CLOUD_TAXONOMY": str(MINI / "taxonomy.csv"),
        "SILENCIO_CLOUD_DB_POOL_SIZE": "8",
    }
    replicas = [
        ServeProcess(
            free_port(),
            {
                **env,
                "SILENCIO_HOME": str(tmp_path / f"home{k}"),
                "BENTOML_HOME": str(tmp_path / f"bentoml{k}"),
            },
            tmp_path / f"replica{k}.log",
            cwd=REPO,
        )
        for k in range(2)
    ]
    try:
        for r in replicas:
            r.start()
        for r in replicas:
            r.wait_ready(300)
        results = _run_clients(replicas, tokens, data)
        # ---------------------------------------------------------------- nothing failed
        statuses = Counter(s for s, _, _ in results)
        assert not [s for s in statuses if s >= 500], statuses
        assert set(statuses) == {200}, [r for r in results if r[0] != 200][:5]
        # ---------------------------------------------------------------- detections: exactly once
        accepted: Counter[str] = Counter()
        sent: set[str] = set()
        for _, kind, body in results:
            if kind == "sync":
                assert body["rejected"] == []
                accepted.update(body["accepted"])
                sent.update(body["accepted"], body["duplicates"])
        assert max(accepted.values()) == 1 and set(accepted) == sent  # each accepted by one replica
        counts = store.counts()
        every_det = {d["uuid"] for n in names for d in data[n]["detections"]}
        assert counts["detections"] == len(sent & every_det) and counts["tours"] == 4
        for n in names:
            for d in data[n]["detections"]:
                if d["uuid"] in sent:
                    assert store.detection(ids[n], d["uuid"]) is not None
        # ---------------------------------------------------------------- clips and confirmations
        per_clip = defaultdict(list)
        for _, kind, body in results:
            if kind == "clip":
                per_clip[body["uuid"]].append(body)
        assert len(per_clip) == 8 and counts["clips"] == 8 and counts["confirmations"] == 8
        for clip_uuid, acks in per_clip.items():
            assert sum(1 for a in acks if a["duplicate"] is False) == 1  # stored by one replica
            confs = {json.dumps(a["confirmation"], sort_keys=True) for a in acks}
            assert len(confs) == 1, f"replicas answered different confirmations for {clip_uuid}"
            assert store.clip(clip_uuid).source == "microphone"
        files = sorted(p.name for p in clip_dir.rglob("*") if p.is_file())
        assert len(files) == 8 and not [f for f in files if f.endswith(".part")]
        # ---------------------------------------------------------------- feedback once
        fb_uuids = {body["uuid"] for _, kind, body in results if kind == "feedback"}
        assert counts["feedback"] == len(fb_uuids) > 0
        fresh = Counter(
            body["uuid"] for _, kind, body in results if kind == "feedback" and not body["duplicate"]
        )
        assert set(fresh.values()) == {1} and set(fresh) == fb_uuids
        # ---------------------------------------------------------------- paging across replicas
        for n in names:
            seqs, cursor, k = [], 0, 0
            while True:
                page = httpx.get(
                    f"{replicas[k % 2].url}/v1/confirmations",
                    params={"since": cursor, "limit": 3},
                    headers={"authorization": f"Bearer {tokens[n]}"},
                    timeout=30,
                ).json()
                k += 1
                if not page["confirmations"]:
                    break
                seqs += [c["seq"] for c in page["confirmations"]]
                cursor = page["next"]
            assert seqs == sorted(seqs) and len(seqs) == len(set(seqs)) == 4
            assert seqs == [c.seq for c in store.confirmations_since(ids[n], 0)]
        # ---------------------------------------------------------------- device status
        for n in names:
            dev = next(d for d in store.devices() if d.name == n)
            assert dev.last_sync_at is not None and dev.status.app_version == "replica-test"
    finally:
        for r in replicas:
            r.stop()
        store.close()


def _body(r: httpx.Response) -> dict:
    try:
        return dict(r.json())
    except ValueError:
        return {"status": r.status_code, "text": r.text[:500]}


def _run_clients(
    replicas: list[ServeProcess], tokens: dict[str, str], data: dict
) -> list[tuple[int, str, dict]]:
    """2 × 16 threads. Threads ``i`` and ``i + 16`` run the same seeded script against different
    replicas at the same time (duplicated batches); every sync is re-sent to the other replica (a
    client retrying after a lost answer, by failover); clips and feedback likewise."""
    results: list[tuple[int, str, dict]] = []
    lock = threading.Lock()
    n_threads = 2 * THREADS_PER_REPLICA
    barrier = threading.Barrier(n_threads)
    errors: list[BaseException] = []

    def client(i: int) -> None:
        rng = random.Random(i % THREADS_PER_REPLICA)  # pairs share a script
        name = ["guide-a", "guide-b"][(i % THREADS_PER_REPLICA) % 2]
        d = data[name]
        headers = {"authorization": f"Bearer {tokens[name]}"}
        home, away = replicas[i // THREADS_PER_REPLICA].url, replicas[1 - i // THREADS_PER_REPLICA].url
        out = []
        try:
            with httpx.Client(timeout=180) as http:
                barrier.wait()
                for _ in range(ROUNDS):
                    batch = {
                        "wire_version": 2,
                        "tours": d["tours"],
                        "detections": d["detections"][:4] + rng.sample(d["detections"][4:], 20),
                        "device": {"app_version": "replica-test", "pending_detections": rng.randint(0, 50)},
                    }
                    for base in (home, away):  # sent, then retried on the other replica
                        r = http.post(f"{base}/v1/sync", json=batch, headers=headers)
                        out.append((r.status_code, "sync", _body(r)))
                    meta, audio = rng.choice(d["clips"])
                    r = http.post(
                        f"{rng.choice((home, away))}/v1/clips",
                        data={"meta": meta},
                        files={"audio": ("c.ogg", audio, "audio/ogg")},
                        headers=headers,
                    )
                    out.append((r.status_code, "clip", _body(r)))
                    det = rng.choice(batch["detections"])
                    fb = {
                        "uuid": str(uuid.uuid5(uuid.NAMESPACE_URL, det["uuid"])),
                        "detection_uuid": det["uuid"],
                        "kind": "confirmed",
                        "created_at": T0.isoformat(),
                    }
                    r = http.post(f"{home}/v1/feedback", json=fb, headers=headers)
                    out.append((r.status_code, "feedback", _body(r)))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        with lock:
            results.extend(out)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [], errors[:3]
    return results
