"""Store-and-forward sync with the cloud (wire format v2, ``cloud/schemas.py``).

Order: tours and pending detections in small batches (with the device's status,
``DeviceStatus``), guides' feedback, clips by priority (flagged, uncertain, random; each with the
recording it was cut from and the edge's top species), then the cloud's confirmations (``since``
cursor), each of which sets its detection's status (confirmed / disputed — the cloud's verdict,
kept apart from the guide's). Every request has explicit timeouts; transient failures (connection
errors, timeouts, 429, 5xx) are retried with exponential backoff and jitter; a run that still fails
leaves everything pending for the next run — nothing is marked synced before the cloud
acknowledged its UUID, and re-sending is harmless (the cloud is idempotent on UUIDs). The transport
is injectable (tests use a failing one). All reads and writes go through the store's named
operations.
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
from edge.records import Clip, Confirmation, ConfirmationResult, Detection, SyncMarks, Tour
from edge.status import device_report
from edge.store import Store

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
    #: confirmations received, and how many of them changed a detection's status
    confirmations: int = 0
    confirmations_applied: int = 0
    confirmed: int = 0
    disputed: int = 0
    errors: int = 0
    online: bool = True

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class SyncClient:
    def __init__(
        self,
        store: Store,
        base_url: str,
        token: str,
        *,
        transport: httpx.BaseTransport | None = None,
        timeout: float = 10.0,
        retries: int = 4,
        batch: int = 100,
        backoff: float = 0.5,
        sleep: Callable[[float], None] = time.sleep,
        device: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        """``device``: the ``DeviceStatus`` to send with each batch (default: from the store)."""
        self.store = store
        self.batch = batch
        self.retries = retries
        self.backoff = backoff
        self.sleep = sleep
        self.device = device or (lambda: device_report(store).wire())
        self.http = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers={"authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(timeout, connect=min(5.0, timeout)),
            transport=transport,
        )

    def close(self) -> None:
        self.http.close()

    # ------------------------------------------------------------------ transport
    def request(self, method: str, url: str, **kw: Any) -> httpx.Response:
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
        while True:
            batch = self.store.unsynced_batch(self.batch)
            if batch.empty:
                return
            payload = batch_payload(batch.tours, batch.detections, self.device())
            r = self.request("POST", "/v1/sync", json=payload)
            if r.status_code != 200:
                raise SyncError(f"sync refused: HTTP {r.status_code} {r.text[:300]}")
            ack = r.json()
            accepted = {str(u) for u in ack["accepted"]}
            duplicates = {str(u) for u in ack["duplicates"]}
            rejected = {str(x["uuid"]): str(x["error"]) for x in ack["rejected"]}
            ok = accepted | duplicates
            self.store.mark_synced(
                SyncMarks(
                    tours=[t.uuid for t in batch.tours if t.uuid in ok],
                    detections=[d.uuid for d in batch.detections if d.uuid in ok],
                    rejected=rejected,
                )
            )
            rep.tours += sum(1 for t in batch.tours if t.uuid in accepted)
            rep.detections += sum(1 for d in batch.detections if d.uuid in accepted)
            rep.duplicates += len(duplicates)
            rep.rejected += len(rejected)
            settled = ok | set(rejected)
            if not batch.detections or not any(d.uuid in settled for d in batch.detections):
                return  # nothing more to send (or the cloud answered for none of them: next run)

    def push_feedback(self, rep: SyncReport) -> None:
        for f in self.store.feedback_to_send():
            body = {
                "wire_version": WIRE_VERSION,
                "uuid": f.uuid,
                "detection_uuid": f.detection_uuid,
                "kind": str(f.kind),
                "correct_code": f.correct_code,
                "note": f.note,
                "created_at": f.created_at,
            }
            r = self.request("POST", "/v1/feedback", json=body)
            if r.status_code == 200:
                self.store.mark_feedback_synced(f.uuid)
                rep.feedback += 1
            else:
                rep.errors += 1
                log.warning("feedback %s refused: HTTP %d %s", f.uuid, r.status_code, r.text[:200])

    def push_clips(self, rep: SyncReport, limit: int | None = None) -> None:
        for c in self.store.clips_to_send(limit):
            path = Path(c.path)
            if not path.exists():
                self.store.mark_clip_failed(c.uuid, "file missing")
                rep.errors += 1
                continue
            data = path.read_bytes()
            r = self.request(
                "POST",
                "/v1/clips",
                data={"meta": json.dumps(clip_payload(c))},
                files={"audio": (path.name, data, "audio/ogg")},
            )
            if r.status_code == 200:
                self.store.mark_clip_synced(c.uuid)
                conf = r.json().get("confirmation")
                if conf:
                    self._apply(Confirmation.from_wire(conf), rep)
                rep.clips += 1
            elif r.status_code in (400, 413, 415, 422):
                self.store.mark_clip_failed(c.uuid, r.text[:300])
                rep.errors += 1
            else:
                rep.errors += 1

    def _apply(self, conf: Confirmation, rep: SyncReport) -> ConfirmationResult:
        res = self.store.apply_confirmation(conf)
        if res is ConfirmationResult.APPLIED:
            rep.confirmations_applied += 1
            if conf.agree:
                rep.confirmed += 1
            else:
                rep.disputed += 1
        elif res is ConfirmationResult.UNKNOWN_DETECTION:
            log.warning("confirmation for unknown detection %s ignored", conf.detection_uuid)
        return res

    def pull_confirmations(self, rep: SyncReport) -> None:
        while True:
            since = self.store.sync_info().confirmations_cursor
            r = self.request("GET", "/v1/confirmations", params={"since": since, "limit": 200})
            if r.status_code != 200:
                raise SyncError(f"confirmations: HTTP {r.status_code} {r.text[:200]}")
            page = r.json()
            for conf in page["confirmations"]:
                rep.confirmations += 1
                self._apply(Confirmation.from_wire(conf), rep)
            self.store.set_confirmations_cursor(int(page["next"]))
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
            self.store.record_sync(ok=False)
            raise
        self.store.record_sync(ok=True)
        return rep


# ---------------------------------------------------------------------------------- payloads
def batch_payload(
    tours: list[Tour], detections: list[Detection], device: dict[str, Any] | None
) -> dict[str, Any]:
    """``SyncBatch``."""
    out: dict[str, Any] = {
        "wire_version": WIRE_VERSION,
        "tours": [tour_payload(t) for t in tours],
        "detections": [detection_payload(d) for d in detections],
    }
    if device is not None:
        out["device"] = device
    return out


def tour_payload(t: Tour) -> dict[str, Any]:
    return {
        "uuid": t.uuid,
        "guide": t.guide,
        "location": t.location,
        "latitude": t.latitude,
        "longitude": t.longitude,
        "started_at": t.started_at,
        "ended_at": t.ended_at,
    }


def detection_payload(d: Detection) -> dict[str, Any]:
    return {
        "uuid": d.uuid,
        "tour_uuid": d.tour_uuid,
        "species_code": d.species_code,
        "start_time": d.start_time,
        "end_time": d.end_time,
        "confidence": round(float(d.confidence), 4),
        "band": d.band,
        "model_version": d.model_version,
    }


def clip_payload(c: Clip) -> dict[str, Any]:
    """``ClipMeta``."""
    return {
        "wire_version": WIRE_VERSION,
        "uuid": c.uuid,
        "tour_uuid": c.tour_uuid,
        "detection_uuid": c.detection_uuid,
        "sha256": c.sha256,
        "bytes": c.bytes,
        "reason": str(c.reason),
        "recorded_at": c.recorded_at,
        "start_offset": c.start_offset,
        "source": c.source,
        "source_offset": None if c.source_offset is None else round(float(c.source_offset), 3),
        "edge_top": [{"code": s.code, "probability": s.probability} for s in c.edge_top],
    }
