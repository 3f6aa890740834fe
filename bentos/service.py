"""The El Silencio cloud as a BentoML service: thin wrappers over :mod:`cloud`.

* ``Scorer`` — the model, behind a **batchable** API (adaptive batching of concurrent requests'
  windows into one ensemble call).
* ``Silencio`` — the public API: ``POST /identify`` (BentoML-native, multipart, in the OpenAPI
  document at ``/docs``), and the device / admin API under ``/v1`` (a Starlette app mounted in the
  service, so that every failure has its exact status: 400, 401, 404, 413, 415, 422, 503 — never a
  500 for bad input). BentoML adds ``/healthz``, ``/livez``, ``/readyz`` and Prometheus ``/metrics``
  (its own metrics plus detections ingested, clips confirmed, and the edge/cloud disagreement rate).

Run: ``silencio cloud serve`` (= ``bentoml serve bentos.service:Silencio``); settings come from
``SILENCIO_CLOUD_*`` environment variables (see ``cloud/settings.py``).
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from pathlib import Path
from typing import Any

import bentoml
import numpy as np
from bentoml.exceptions import BentoMLException
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from cloud.errors import CloudError, PayloadTooLarge, UnsupportedMediaType
from cloud.service import Cloud
from cloud.settings import CloudSettings

log = logging.getLogger(__name__)


class _HTTPError(BentoMLException):
    """A :class:`cloud.errors.CloudError` on a BentoML-native endpoint."""

    def __init__(self, exc: CloudError) -> None:
        super().__init__(str(exc))
        self.error_code = HTTPStatus(exc.status)


# ---------------------------------------------------------------------------------- metrics
_DETECTIONS = bentoml.metrics.Counter(
    name="silencio_detections_ingested", documentation="New detections stored from device syncs"
)
_CLIPS = bentoml.metrics.Counter(
    name="silencio_clips_confirmed", documentation="Clips re-scored by the ensemble"
)
_DISAGREE = bentoml.metrics.Counter(
    name="silencio_clip_disagreements",
    documentation="Confirmed clips where the ensemble disagreed with the edge",
)
_RATE = bentoml.metrics.Gauge(
    name="silencio_disagreement_rate", documentation="Edge/cloud disagreement rate over all confirmed clips"
)
_COUNTS = {"clips_confirmed": 0.0, "disagreements": 0.0}


def _event(name: str, value: float) -> None:
    if name == "detections_ingested":
        _DETECTIONS.inc(value)
    elif name == "clips_confirmed":
        _CLIPS.inc(value)
        _COUNTS[name] += value
    elif name == "disagreements":
        _DISAGREE.inc(value)
        _COUNTS[name] += value
    if _COUNTS["clips_confirmed"]:
        _RATE.set(_COUNTS["disagreements"] / _COUNTS["clips_confirmed"])


# ---------------------------------------------------------------------------------- the device API
def _cloud() -> Cloud:
    svc = bentoml.get_current_service()
    return svc.cloud  # type: ignore[no-any-return,union-attr]


def _token(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    return auth[7:].strip() if auth.lower().startswith("bearer ") else None


async def _body(request: Request, limit: float) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds the {int(limit)} byte limit")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the {int(limit)} byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


def _json_body_check(request: Request) -> None:
    ctype = request.headers.get("content-type", "application/json").split(";")[0].strip()
    if ctype not in ("application/json", ""):
        raise UnsupportedMediaType(f"expected application/json, got {ctype}")


def _handler(fn: Any) -> Any:
    async def run(request: Request) -> Response:
        try:
            out = await fn(request)
        except CloudError as exc:
            return JSONResponse({"error": str(exc), "status": exc.status}, status_code=exc.status)
        except ValueError as exc:  # query parameters that are not numbers, and the like
            return JSONResponse({"error": str(exc), "status": 400}, status_code=400)
        return out if isinstance(out, Response) else JSONResponse(out)

    return run


async def _sync(request: Request) -> Any:
    _json_body_check(request)
    c = _cloud()
    body = await _body(request, c.settings.max_json_kb * 1024)
    return await _in_thread(c.sync, _token(request), body)


async def _clips(request: Request) -> Any:
    c = _cloud()
    limit = c.settings.max_clip_mb * 1e6 + 256 * 1024
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"clip upload of {declared} bytes exceeds {c.settings.max_clip_mb:g} MB")
    c.store.authenticate(_token(request))  # 401 before reading the body
    ctype = request.headers.get("content-type", "")
    if not ctype.startswith("multipart/form-data"):
        raise UnsupportedMediaType(
            f"clip uploads are multipart/form-data (meta + audio), got {ctype or 'none'}"
        )
    async with request.form(max_files=1, max_fields=2, max_part_size=int(limit)) as form:
        meta, audio = form.get("meta"), form.get("audio")
        if meta is None or audio is None or isinstance(audio, str):
            from cloud.errors import Unprocessable

            raise Unprocessable("multipart needs a 'meta' JSON field and an 'audio' file")
        data = await audio.read()  # type: ignore[union-attr]
    return await _in_thread(
        c.upload_clip, _token(request), meta if isinstance(meta, str) else await meta.read(), data
    )


async def _confirmations(request: Request) -> Any:
    q = request.query_params
    return await _in_thread(
        _cloud().confirmations, _token(request), int(q.get("since", 0)), int(q.get("limit", 200))
    )


async def _feedback(request: Request) -> Any:
    _json_body_check(request)
    body = await _body(request, 64 * 1024)
    return await _in_thread(_cloud().feedback, _token(request), body)


async def _tours(request: Request) -> Any:
    return await _in_thread(_cloud().tour_report, _token(request), request.query_params.get("tour"))


async def _summary(request: Request) -> Any:
    return await _in_thread(_cloud().summary, _token(request))


async def _release(request: Request) -> Any:
    return await _in_thread(_cloud().release_info, _token(request))


async def _release_download(request: Request) -> Any:
    path = await _in_thread(_cloud().release_file, _token(request))
    return FileResponse(path, media_type="application/x-tar", filename=Path(path).name)


async def _identify_v1(request: Request) -> Any:
    """``POST /v1/identify``: the audio as the raw body (or multipart field ``audio``); query
    parameters ``threshold``, ``top_k``, ``stride``, ``members``."""
    c = _cloud()
    limit = c.settings.max_upload_mb * 1e6
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        async with request.form(max_files=1, max_part_size=int(limit)) as form:
            f = form.get("audio")
            if f is None or isinstance(f, str):
                from cloud.errors import Unprocessable

                raise Unprocessable("multipart needs an 'audio' file field")
            data, name = await f.read(), f.filename or "upload"  # type: ignore[union-attr]
    else:
        data, name = await _body(request, limit), "body"
    q = request.query_params
    return await _in_thread(
        c.identify,
        data,
        threshold=float(q.get("threshold", 0.5)),
        top_k=int(q.get("top_k", 5)),
        stride=float(q["stride"]) if "stride" in q else None,
        members=q.get("members", "false").lower() in ("1", "true", "yes"),
        name=name,
    )


async def _schema(request: Request) -> Any:
    from cloud import schemas

    names = ("SyncBatch", "SyncAck", "ClipMeta", "ClipAck", "Confirmation", "FeedbackIn", "FeedbackAck")
    return {
        "wire_version": schemas.WIRE_VERSION,
        "schemas": {n: getattr(schemas, n).model_json_schema() for n in names},
    }


async def _ready(request: Request) -> Any:
    return await _in_thread(_cloud().ready)


async def _in_thread(fn: Any, *args: Any, **kw: Any) -> Any:
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(fn, *args, **kw)


v1 = Starlette(
    routes=[
        Route("/identify", _handler(_identify_v1), methods=["POST"]),
        Route("/sync", _handler(_sync), methods=["POST"]),
        Route("/clips", _handler(_clips), methods=["POST"]),
        Route("/confirmations", _handler(_confirmations), methods=["GET"]),
        Route("/feedback", _handler(_feedback), methods=["POST"]),
        Route("/reports/tours", _handler(_tours), methods=["GET"]),
        Route("/reports/summary", _handler(_summary), methods=["GET"]),
        Route("/releases/current", _handler(_release), methods=["GET"]),
        Route("/releases/current/download", _handler(_release_download), methods=["GET"]),
        Route("/schema", _handler(_schema), methods=["GET"]),
        Route("/ready", _handler(_ready), methods=["GET"]),
    ]
)


# ---------------------------------------------------------------------------------- services
#: Most windows the Scorer scores in one call (a request with more is split by the batcher).
SCORER_MAX_BATCH = 64
#: BentoML's dispatcher *cancels* (503) a queued request whose expected latency exceeds this; it is
#: a load-shedding deadline, not a batching delay (the dispatcher waits only while waiting pays).
#: At 100 ms, any queue behind a ~100 ms ensemble call was shed, so batches never formed.
SCORER_MAX_LATENCY_MS = 30_000
#: Concurrent ``/identify`` requests Silencio runs (BentoML's default for sync APIs is 1, which
#: sent the Scorer one request at a time: nothing to batch).
IDENTIFY_THREADS = 32

_BATCH_WINDOWS = bentoml.metrics.Histogram(
    name="silencio_scorer_batch_windows",
    documentation="Windows per ensemble call formed by the Scorer's adaptive batcher",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)


@bentoml.service(
    name="silencio_scorer",
    traffic={"timeout": 120},
    # BentoML's client renews its session every 100 calls by default, breaking the calls in flight on
    # it (the Scorer computes them for nothing; Silencio sends them again): at 32 concurrent
    # requests that wasted ~30 % of the CPU. Once a day is enough.
    runner_connection={"max_requests": 1_000_000_000, "max_age": 86_400.0},
)
class Scorer:
    """The ensemble behind an adaptive-batching API: concurrent requests' windows are scored in one
    :meth:`~shared_features.package.ModelPackage.predict` call, which runs the members and
    BirdNET's chunks concurrently on ``threads`` CPU threads (``SILENCIO_CLOUD_THREADS``)."""

    def __init__(self) -> None:
        s = CloudSettings()
        from cloud.inference import Identifier

        self.identifier = Identifier.load(s.model, s.home, s.taxonomy_path, s.threads)

    @bentoml.api(
        batchable=True, batch_dim=0, max_batch_size=SCORER_MAX_BATCH, max_latency_ms=SCORER_MAX_LATENCY_MS
    )
    def score(self, windows: np.ndarray) -> np.ndarray:
        _BATCH_WINDOWS.observe(len(windows))
        return self.identifier.package.predict(np.asarray(windows, np.float32)).probs


@bentoml.asgi_app(v1, path="/v1")
@bentoml.service(name="silencio", traffic={"timeout": 120}, threads=IDENTIFY_THREADS)
class Silencio:
    scorer = bentoml.depends(Scorer)

    def __init__(self) -> None:
        self.cloud = Cloud(CloudSettings(), on_event=_event)
        try:
            ident = self.cloud.identifier
            ident.score = self._score
        except CloudError as exc:  # the device API works without a model; identify answers 503
            log.error("no model loaded: %s", exc)

    def _score(self, windows: np.ndarray) -> np.ndarray:
        """The Scorer's probabilities. BentoML 1.4's client closes its session every 100 calls even
        with calls in flight on it ("Connector is closed", "Server disconnected"; bentoml/BentoML
        PR #5698, open): with concurrent requests some calls fail that way. Scoring is a pure
        function, so such a call is sent again (twice at most)."""
        import aiohttp  # BentoML's client

        for attempt in range(3):
            try:
                return np.asarray(self.scorer.score(windows), np.float32)
            except aiohttp.ClientConnectionError as exc:
                if attempt == 2:
                    raise
                log.warning("Scorer call lost its connection (%s); scoring again", exc)
        raise AssertionError("unreachable")

    @bentoml.api
    def identify(
        self,
        audio: Path,
        threshold: float = 0.5,
        top_k: int = 5,
        stride: float | None = None,
        members: bool = False,
    ) -> dict[str, Any]:
        """Identify the species in an audio file (WAV, FLAC, OGG, MP3): per 5 s window the species
        above ``threshold`` (code, scientific and common name, taxon class, probability), a clip
        summary, and optionally every member's scores."""
        try:
            return self.cloud.identify(
                audio, threshold=threshold, top_k=top_k, stride=stride, members=members, name=audio.name
            )
        except CloudError as exc:
            raise _HTTPError(exc) from None
