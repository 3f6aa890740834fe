"""Store-and-forward sync with the cloud (wire format v1, ``cloud/schemas.py``).

Order: tours and closed detections in small batches, guides' feedback, clips by priority (flagged,
uncertain, random), then the cloud's confirmations (``since`` cursor) applied to local detections.
Every request has explicit timeouts; transient failures (connection errors, timeouts, 429, 5xx) are
retried with exponential backoff and jitter; a run that still fails leaves everything pending for
the next run — nothing is marked synced before the cloud acknowledged its UUID, and re-sending is
harmless (the cloud is idempotent on UUIDs). The transport is injectable (tests use a failing one).
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from edge.errors import SyncError
from edge.store import EdgeStore
from shared_features.sqlite import now

log = logging.getLogger(__name__)
WIRE_VERSION = 2
TRANSIENT = {429, 500, 502, 503, 504}


@dataclass
class SyncReport:
    tours: int = 0
    detections: int = 0
    duplicates: int = 0
    rejected: int = 0
    feedback: int = 0
    clips: int = 0
    confirmations: int = 0
    errors: int = 0
    online: bool = True

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class SyncClient:
    def __init__(
        self,
        store: EdgeStore,
        base_url: str,
        token: str,
        *,
        transport: httpx.BaseTransport | None = None,
        timeout: float = 10.0,
        retries: int = 4,
        batch: int = 100,
        backoff: float = 0.5,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.store = store
        self.batch = batch
        self.retries = retries
        self.backoff = backoff
        self.sleep = sleep
        self.http = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers={"authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(timeout, connect=min(5.0, timeout)),
            transport=transport,
        )

    def close(self) -> None:
        self.http.close()

    # ------------------------------------------------------------------ transport
    def _request(self, method: str, url: str, **kw: Any) -> httpx.Response:
        """A request with bounded retries; raises :class:`SyncError` when the cloud stays away."""
        last: str = ""
        for attempt in range(self.retries + 1):
            try:
                r = self.http.request(method, url, **kw)
            except httpx.HTTPError as exc:  # connection refused, timeouts, dropped connections
                last = f"{type(exc).__name__}: {exc}"
            else:
                if r.status_code not in TRANSIENT:
                    if r.status_code == 401:
                        raise SyncError(f"the cloud refused this device's token (401): {r.text[:200]}")
                    return r
                last = f"HTTP {r.status_code}"
            if attempt < self.retries:
                delay = self.backoff * 2**attempt * (0.5 + random.random())  # jitter
                log.info("sync %s %s failed (%s); retry %d in %.2f s", method, url, last, attempt + 1, delay)
                self.sleep(delay)
        raise SyncError(f"{method} {url}: {last} after {self.retries + 1} attempts")

    # ------------------------------------------------------------------ steps
    def push_detections(self, rep: SyncReport) -> None:
        st = self.store
        while True:
            dets = st.query(
                "SELECT * FROM detections WHERE synced_at IS NULL AND closed = 1 AND sync_error IS NULL "
                "ORDER BY start_time LIMIT ?",
                [self.batch],
            )
            tours = st.query("SELECT * FROM tours WHERE synced_at IS NULL")
            if not dets and not tours:
                return
            payload = {
                "wire_version": WIRE_VERSION,
                "tours": [tour_payload(t) for t in tours],
                "detections": [detection_payload(d) for d in dets],
            }
            r = self._request("POST", "/v1/sync", json=payload)
            if r.status_code != 200:
                raise SyncError(f"sync refused: HTTP {r.status_code} {r.text[:300]}")
            ack = r.json()
            ok = set(ack["accepted"]) | set(ack["duplicates"])
            stamp = now()
            with st.tx() as db:
                for t in tours:
                    if t["uuid"] in ok:
                        db.execute("UPDATE tours SET synced_at = ? WHERE uuid = ?", [stamp, t["uuid"]])
                for d in dets:
                    if d["uuid"] in ok:
                        db.execute("UPDATE detections SET synced_at = ? WHERE uuid = ?", [stamp, d["uuid"]])
                for rej in ack["rejected"]:
                    db.execute(
                        "UPDATE detections SET sync_error = ? WHERE uuid = ?", [rej["error"], rej["uuid"]]
                    )
            rep.tours += sum(1 for t in tours if t["uuid"] in set(ack["accepted"]))
            rep.detections += sum(1 for d in dets if d["uuid"] in set(ack["accepted"]))
            rep.duplicates += len(ack["duplicates"])
            rep.rejected += len(ack["rejected"])
            settled = ok | {rej["uuid"] for rej in ack["rejected"]}
            if not dets or not any(d["uuid"] in settled for d in dets):
                return  # nothing more to send (or the cloud answered for none of them: next run)

    def push_feedback(self, rep: SyncReport) -> None:
        for f in self.store.query("SELECT * FROM feedback WHERE synced_at IS NULL ORDER BY created_at"):
            det = self.store.detection(f["detection_uuid"])
            if det is None or det["synced_at"] is None:
                continue  # its detection first
            body = {
                "wire_version": WIRE_VERSION,
                "uuid": f["uuid"],
                "detection_uuid": f["detection_uuid"],
                "kind": f["kind"],
                "correct_code": f["correct_code"],
                "note": f["note"],
                "created_at": f["created_at"],
            }
            r = self._request("POST", "/v1/feedback", json=body)
            if r.status_code == 200:
                with self.store.tx() as db:
                    db.execute("UPDATE feedback SET synced_at = ? WHERE uuid = ?", [now(), f["uuid"]])
                rep.feedback += 1
            else:
                rep.errors += 1
                log.warning("feedback %s refused: HTTP %d %s", f["uuid"], r.status_code, r.text[:200])

    def push_clips(self, rep: SyncReport, limit: int | None = None) -> None:
        clips = self.store.query(
            "SELECT c.* FROM clips c LEFT JOIN detections d ON d.uuid = c.detection_uuid "
            "WHERE c.synced_at IS NULL AND c.evicted_at IS NULL AND c.sync_error IS NULL "
            "AND (c.detection_uuid IS NULL OR d.synced_at IS NOT NULL) "
            "ORDER BY CASE c.reason WHEN 'flagged' THEN 0 WHEN 'uncertain' THEN 1 ELSE 2 END, c.recorded_at"
        )
        for c in clips[:limit]:
            path = Path(c["path"])
            if not path.exists():
                with self.store.tx() as db:
                    db.execute("UPDATE clips SET sync_error = 'file missing' WHERE uuid = ?", [c["uuid"]])
                rep.errors += 1
                continue
            data = path.read_bytes()
            meta = clip_payload(c)
            r = self._request(
                "POST",
                "/v1/clips",
                data={"meta": json.dumps(meta)},
                files={"audio": (path.name, data, "audio/ogg")},
            )
            if r.status_code == 200:
                conf = r.json().get("confirmation")
                with self.store.tx() as db:
                    db.execute("UPDATE clips SET synced_at = ? WHERE uuid = ?", [now(), c["uuid"]])
                if conf:
                    self.apply_confirmation(conf)
                rep.clips += 1
            elif r.status_code in (400, 413, 415, 422):
                with self.store.tx() as db:
                    db.execute("UPDATE clips SET sync_error = ? WHERE uuid = ?", [r.text[:300], c["uuid"]])
                rep.errors += 1
            else:
                rep.errors += 1

    def apply_confirmation(self, conf: dict[str, Any]) -> bool:
        du = conf.get("detection_uuid")
        if not du or conf.get("agree") is None:
            return False
        with self.store.tx() as db:
            guided = db.execute("SELECT 1 FROM feedback WHERE detection_uuid = ?", [du]).fetchone()
            status = "confirmed" if conf["agree"] else "disputed"
            if guided:  # the guide's own verdict stands; keep the cloud's species for display
                db.execute(
                    "UPDATE detections SET cloud_species = ? WHERE uuid = ?",
                    [json.dumps(conf["species"]), du],
                )
            else:
                db.execute(
                    "UPDATE detections SET status = ?, cloud_species = ? WHERE uuid = ?",
                    [status, json.dumps(conf["species"]), du],
                )
        return True

    def pull_confirmations(self, rep: SyncReport) -> None:
        while True:
            since = int(self.store.get_state("confirmations_since", "0") or 0)
            r = self._request("GET", "/v1/confirmations", params={"since": since, "limit": 200})
            if r.status_code != 200:
                raise SyncError(f"confirmations: HTTP {r.status_code} {r.text[:200]}")
            page = r.json()
            for conf in page["confirmations"]:
                self.apply_confirmation(conf)
                rep.confirmations += 1
            self.store.set_state("confirmations_since", str(page["next"]))
            if not page["confirmations"]:
                return

    def run(self, clips: int | None = None) -> SyncReport:
        rep = SyncReport()
        try:
            self.push_detections(rep)
            self.push_feedback(rep)
            self.push_clips(rep, clips)
            self.pull_confirmations(rep)
        except SyncError:
            rep.online = False
            self.store.set_state("last_sync_error", now())
            raise
        self.store.set_state("last_sync", now())
        return rep


# ---------------------------------------------------------------------------------- payloads
def tour_payload(t: dict[str, Any]) -> dict[str, Any]:
    return {
        "uuid": t["uuid"],
        "guide": t["guide"],
        "location": t["location"],
        "latitude": t["latitude"],
        "longitude": t["longitude"],
        "started_at": t["started_at"],
        "ended_at": t["ended_at"],
    }


def detection_payload(d: dict[str, Any]) -> dict[str, Any]:
    return {
        "uuid": d["uuid"],
        "tour_uuid": d["tour_uuid"],
        "species_code": d["species_code"],
        "start_time": d["start_time"],
        "end_time": d["end_time"],
        "confidence": round(float(d["confidence"]), 4),
        "band": d["band"],
        "model_version": d["model_version"],
    }


def clip_payload(c: dict[str, Any]) -> dict[str, Any]:
    return {
        "wire_version": WIRE_VERSION,
        "uuid": c["uuid"],
        "tour_uuid": c["tour_uuid"],
        "detection_uuid": c["detection_uuid"],
        "sha256": c["sha256"],
        "bytes": c["bytes"],
        "reason": c["reason"],
        "recorded_at": c["recorded_at"],
        "start_offset": c["start_offset"],
    }
