"""The El Silencio cloud as a BentoML service: thin wrappers over :mod:`cloud`.

* ``Scorer`` — the model, behind a **batchable** API (adaptive batching of concurrent requests'
  windows into one ensemble call).
* ``Silencio`` — the public API: ``POST /identify`` (BentoML-native, multipart), and the device /
  admin API under ``/v1`` (a Starlette app mounted in the service, so that every failure has its
  exact status: 400, 401, 404, 413, 415, 422, 503 — never a 500 for bad input). BentoML adds
  ``/healthz``, ``/livez``, ``/readyz`` and Prometheus ``/metrics`` (its own metrics plus
  detections ingested, clips confirmed, and the edge/cloud disagreement rate).

The whole API is one OpenAPI document, ``/docs.json`` (page: ``/docs``; :mod:`bentos.openapi`);
every error is ``{"error": message, "status": code}`` (:mod:`bentos.http`). Readiness
(``/readyz``, ``/v1/ready``) answers 503 until the model is loaded. A model that cannot be loaded
stops the server with one line instead of a restart loop, and workers end with their parent
(:mod:`bentos.server`).

Run: ``silencio cloud serve`` (= ``python -m bentos.server``); settings come from
``SILENCIO_CLOUD_*`` environment variables (see ``cloud/settings.py``).
"""

from __future__ import annotations

import inspect
import logging
import threading
from pathlib import Path
from typing import Any

import bentoml
import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from bentos.http import (
    ApiBoundary,
    client_error,
    install_log_filter,
    query_bool,
    query_number,
    server_error,
)
from bentos.openapi import document, page
from bentos.server import configure_logging, die_with_parent, fatal, in_worker, quiet_native_info
from cloud.console import ConsoleDeps
from cloud.console import make_app as console_app
from cloud.errors import (
    CloudError,
    NotReady,
    PayloadTooLarge,
    Unauthorized,
    Unprocessable,
    UnsupportedMediaType,
)
from cloud.ratelimit import client_address
from cloud.schemas import ModelInfo, ReadyStatus
from cloud.service import Cloud
from cloud.settings import CloudSettings
from shared_features.config import DEFAULT

log = logging.getLogger(__name__)
if in_worker():
    configure_logging()  # BentoML configured the worker's logging just before importing this module


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
def _service() -> Silencio:
    svc = bentoml.get_current_service()
    if svc is None:
        raise NotReady("the service is starting")
    return svc  # type: ignore[no-any-return]


def _cloud() -> Cloud:
    return _service().cloud  # type: ignore[no-any-return,attr-defined]


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


def _bounded(request: Request, limit: float) -> Request:
    """The request, whose body refuses (413) to grow past ``limit`` bytes while it is read — also a
    chunked body without ``Content-Length``, and a multipart file part (Starlette spools those to
    disk without a limit of its own)."""
    receive = request.receive
    seen = 0

    async def bounded() -> Any:
        nonlocal seen
        message = await receive()
        if message.get("type") == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise PayloadTooLarge(f"request body exceeds the {int(limit)} byte limit")
        return message

    return Request(request.scope, bounded)


def _json_body_check(request: Request) -> None:
    ctype = request.headers.get("content-type", "application/json").split(";")[0].strip()
    if ctype not in ("application/json", ""):
        raise UnsupportedMediaType(f"expected application/json, got {ctype}")


def _handler(fn: Any) -> Any:
    """A device-API endpoint: its answer as JSON; a :class:`CloudError` as the error shape (one log
    line); anything else a 500 whose traceback goes to the log, not to the client. A request that
    presents a token is first checked against the wrong-token limit of its client address (429
    with ``Retry-After`` while blocked), and a refused token counts against it
    (:mod:`cloud.ratelimit`)."""

    async def run(request: Request) -> Response:
        client = None
        try:
            if _token(request) is not None:
                c = _cloud()
                peer = request.client.host if request.client else None
                client = client_address(peer, request.headers.get("x-forwarded-for"), c.trusted_proxies)
                c.auth_limiter.check(client)
            out = await fn(request)
        except Unauthorized as exc:
            if client is not None:
                _cloud().auth_limiter.failed(client)
            return client_error(request, exc)
        except CloudError as exc:
            return client_error(request, exc)
        except Exception as exc:  # noqa: BLE001 - the boundary: a bug answers 500 and is logged
            return server_error(request, exc)
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
            f"clip uploads are multipart/form-data (meta + audio), got {ctype.split(';')[0] or 'none'}"
        )
    async with _form(_bounded(request, limit), max_files=1, max_fields=2, max_part_size=64 * 1024) as form:
        meta, audio = form.get("meta"), form.get("audio")
        if meta is None or audio is None or isinstance(audio, str):
            raise Unprocessable("multipart needs a 'meta' JSON field and an 'audio' file")
        data = await audio.read()
        meta_json = meta if isinstance(meta, str) else await meta.read()
    return await _in_thread(c.upload_clip, _token(request), meta_json, data)


def _form(request: Request, **limits: Any) -> Any:
    """``request.form(…)`` whose parser errors (a malformed body, too many parts) are a 422."""
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def form() -> Any:
        try:
            parsed = await request.form(**limits)
        except CloudError:
            raise  # the body grew past its limit (_bounded)
        except Exception as exc:  # noqa: BLE001 - Starlette's multipart parser raises several kinds
            raise Unprocessable(f"malformed multipart body: {str(exc).splitlines()[0][:200]}") from None
        try:
            yield parsed
        finally:
            await parsed.close()

    return form()


async def _confirmations(request: Request) -> Any:
    since = query_number(request, "since", 0, 0, 2**63 - 1, integer=True)
    limit = query_number(request, "limit", 200, 1, 1000, integer=True)
    return await _in_thread(_cloud().confirmations, _token(request), since, limit)


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
    options = {
        "threshold": query_number(request, "threshold", 0.5, 0.0, 1.0),
        "top_k": query_number(request, "top_k", 5, 1, 50, integer=True),
        "stride": query_number(request, "stride", None, 0.5, DEFAULT.window_seconds),
        "members": query_bool(request, "members"),
    }
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        async with _form(_bounded(request, limit + 256 * 1024), max_files=1, max_part_size=64 * 1024) as form:
            f = form.get("audio")
            if f is None or isinstance(f, str):
                raise Unprocessable("multipart needs an 'audio' file field")
            data = await f.read()
    else:
        data = await _body(request, limit)
    await _service().wait_ready()
    return await _in_thread(c.identify, data, name="audio", **options)


async def _schema(request: Request) -> Any:
    from cloud import schemas

    names = ("SyncBatch", "SyncAck", "ClipMeta", "ClipAck", "Confirmation", "FeedbackIn", "FeedbackAck")
    return {
        "wire_version": schemas.WIRE_VERSION,
        "schemas": {n: getattr(schemas, n).model_json_schema() for n in names},
    }


async def _ready(request: Request) -> Any:
    svc = _service()
    if not await svc.__is_ready__():
        raise NotReady("the model is loading")
    info = ModelInfo.model_validate(svc.cloud.identifier.model_info())
    return ReadyStatus(ready=True, model=info).model_dump(mode="json")


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
def _start_failed(what: str, exc: BaseException) -> None:
    """A start-up error: in a served worker it stops the whole server (one line, no restart
    loop); in-process (tests) it is raised."""
    if not in_worker():
        raise exc
    log.debug("start-up failure", exc_info=exc)
    detail = str(exc) if isinstance(exc, CloudError) else f"{type(exc).__name__}: {exc}"
    fatal(f"{what}: {detail}")


#: Most windows the Scorer scores in one call (a request with more is split by the batcher).
SCORER_MAX_BATCH = 64
#: BentoML's dispatcher *cancels* (503, "process is overloaded") a queued request whose expected
#: latency exceeds this; it is a load-shedding deadline, not a batching delay (the dispatcher waits
#: only while waiting pays). At 100 ms, any queue behind a ~100 ms ensemble call was shed, so batches
#: never formed and most clip confirmations under concurrent syncs were refused on a 2-core machine
#: (tests/cloud/test_store_replicas.py); 30 s stays under the 120 s timeout.
SCORER_MAX_LATENCY_MS = 30_000
#: Concurrent ``/identify`` requests Silencio runs (BentoML's default for sync APIs is 1, which
#: sent the Scorer one request at a time: nothing to batch).
IDENTIFY_THREADS = 32

_BATCH_WINDOWS = bentoml.metrics.Histogram(
    name="silencio_scorer_batch_windows",
    documentation="Windows per ensemble call formed by the Scorer's adaptive batcher",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
_ALONE_WINDOWS = bentoml.metrics.Histogram(
    name="silencio_scorer_alone_windows",
    documentation="Windows per ensemble call of a request scored alone (nothing else in flight)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)

# BentoML's client of a dependency replaces its HTTP session every 100 requests (and every 300 s) and
# closes the old one with requests still in flight on it: each of those failed with "Server
# disconnected" (a 500) whenever more than one request was scoring — 25 of 240 requests with 32
# clients (tests/reliability/test_load.py) — and the Scorer had computed them for nothing (~30 % of
# the CPU at 32 clients, benchmarks/cloud_load.py). The scorer runs beside the API worker on this
# machine: its session never needs replacing.
_ONE_SESSION = {"max_requests": 2**31 - 1, "max_age": 10.0 * 365 * 24 * 3600}


def single_threaded_blas() -> None:
    """numpy's BLAS (OpenBLAS: 2 threads here) on one thread in this worker: the package already
    runs its work on ``threads`` pool threads, and BLAS threads on top of them only spin — the
    log-mel's filterbank product cost 7.5 instead of 2.8 CPU ms per window with 2 BLAS threads
    (``benchmarks/cloud_profile.py``). The scores differ by float rounding only (≤ 1e-6)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - a dependency of the cloud extra
        log.warning("threadpoolctl missing: numpy's BLAS keeps its own thread count")
        return
    threadpool_limits(limits=1, user_api="blas")


@bentoml.service(name="silencio_scorer", traffic={"timeout": 120}, runner_connection=_ONE_SESSION)
class Scorer:
    """The ensemble behind an adaptive-batching API: concurrent requests' windows are scored in one
    :meth:`~shared_features.package.ModelPackage.predict` call, which runs the members and
    BirdNET's chunks concurrently on ``threads`` CPU threads (``SILENCIO_CLOUD_THREADS``). Loaded and
    warmed up (one window scored, so every member's runtime is built) before the worker serves: its
    ``/readyz`` and therefore the service's answer 503 until then."""

    def __init__(self) -> None:
        die_with_parent()
        self.ready = False
        try:
            s = CloudSettings()
            from cloud.inference import Identifier

            single_threaded_blas()
            self.identifier = Identifier.load(s.model, s.home, s.taxonomy_path, s.threads)
            with quiet_native_info():  # the members the scores need (weight > 0)
                self.identifier.package.predict(
                    np.zeros((1, DEFAULT.window_samples), np.float32), members=False
                )
        except Exception as exc:  # noqa: BLE001 - whatever stops the model from loading is fatal
            _start_failed("the model could not be loaded", exc)
        self.ready = True

    @bentoml.api(
        batchable=True, batch_dim=0, max_batch_size=SCORER_MAX_BATCH, max_latency_ms=SCORER_MAX_LATENCY_MS
    )
    def score(self, windows: np.ndarray) -> np.ndarray:
        _BATCH_WINDOWS.observe(len(windows))
        return self.identifier.package.predict(np.asarray(windows, np.float32), members=False).probs

    @bentoml.api
    def score_alone(self, windows: np.ndarray) -> np.ndarray:
        """The same scores, past the batcher: for a request while no other is scoring. BentoML's
        dispatcher holds a lone request back waiting for batch-mates (its first cost model grows
        with ``max_latency_ms``): one client's p50 went from 159 to 299 ms with the 30 s deadline
        (benchmarks/cloud_load.py, README)."""
        _ALONE_WINDOWS.observe(len(windows))
        return self.identifier.package.predict(np.asarray(windows, np.float32), members=False).probs


#: the ecologists' console (cloud/console/): HTML pages behind a login, on the service's own store
console = console_app(lambda: ConsoleDeps.from_cloud(_cloud()))


@bentoml.asgi_app(console, path="/console")
@bentoml.asgi_app(v1, path="/v1")
@bentoml.service(
    name="silencio", traffic={"timeout": 120}, threads=IDENTIFY_THREADS, runner_probe={"enabled": False}
)
class Silencio:
    scorer = bentoml.depends(Scorer)

    def __init__(self) -> None:
        die_with_parent()
        install_log_filter()
        self._flight_lock = threading.Lock()
        self._in_flight = 0  # Scorer calls in flight from this worker
        try:
            single_threaded_blas()
            settings = CloudSettings()
            from cloud.inference import Identifier

            ident = Identifier.load(settings.model, settings.home, settings.taxonomy_path, settings.threads)
            ident.score = self._score
            self.cloud = Cloud(settings, identifier=ident, on_event=_event)
        except Exception as exc:  # noqa: BLE001 - a model or store that cannot be opened is fatal
            _start_failed("the service could not start", exc)

    def _score(self, windows: np.ndarray) -> np.ndarray:
        """The Scorer's probabilities. A call that lost its connection ("Connector is closed",
        "Server disconnected": BentoML 1.4's session renewal, bentoml/BentoML PR #5698, which
        ``_ONE_SESSION`` all but removes; a kept-alive connection the Scorer closed) is sent again,
        twice at most: scoring is a pure function."""
        import aiohttp  # BentoML's client

        # a request while no other is scoring goes past the batcher (nothing to batch it with)
        with self._flight_lock:
            self._in_flight += 1
            alone = self._in_flight == 1 and len(windows) <= SCORER_MAX_BATCH
        try:
            for attempt in range(3):
                try:
                    call = self.scorer.score_alone if alone else self.scorer.score
                    return np.asarray(call(windows), np.float32)
                except aiohttp.ClientConnectionError as exc:
                    if attempt == 2:
                        raise
                    log.warning("Scorer call lost its connection (%s); scoring again", exc)
            raise AssertionError("unreachable")
        finally:
            with self._flight_lock:
                self._in_flight -= 1

    async def __is_ready__(self) -> bool:
        """Ready once the scorer has loaded the model: BentoML's ``/readyz`` and ``/v1/ready`` ask
        this (BentoML's own probe of the scorer is off: it waits 5 s, this one 1 s, then 503)."""
        if getattr(self, "_scorer_ready", False):
            return True
        dep = self.scorer
        probe = getattr(type(dep), "is_ready", None)
        if probe is not None and inspect.iscoroutinefunction(probe):  # a scorer in another process
            try:
                ready = bool(await dep.is_ready(1))
            except Exception:  # noqa: BLE001 - any failure to reach the scorer means: not ready
                ready = False
        else:
            ready = bool(getattr(dep, "ready", False))
        self._scorer_ready = ready
        return ready

    async def wait_ready(self, timeout: float = 60.0) -> None:
        """Requests that need the model wait for it (while the server starts), then 503."""
        import anyio

        with anyio.move_on_after(timeout):
            while not await self.__is_ready__():
                await anyio.sleep(0.5)
            return
        raise NotReady("the model is still loading; retry shortly")

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
            data = audio.read_bytes()  # bytes, so that no message names the server's temporary file
            return self.cloud.identify(  # type: ignore[no-any-return]
                data, threshold=threshold, top_k=top_k, stride=stride, members=members, name="audio"
            )
        except CloudError as exc:
            return client_error("POST /identify", exc)  # type: ignore[return-value]


def _upload_limit() -> float:
    svc = bentoml.get_current_service()
    cloud = getattr(svc, "cloud", None)
    settings = cloud.settings if cloud is not None else CloudSettings()
    return float(settings.max_upload_mb * 1e6)


Silencio.add_asgi_middleware(
    ApiBoundary, docs=document, page=page, upload_limit=_upload_limit, passthrough=("/console",)
)
