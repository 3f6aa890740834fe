"""The HTTP boundary of the service: one error shape, request checks, and how errors are logged.

* **One error shape** for every endpoint, BentoML's own included: ``{"error": str, "status": int}``
  (:class:`cloud.schemas.ErrorBody`). :class:`ApiBoundary` (an ASGI middleware on the service)
  rewrites whatever BentoML or Starlette answer on their own — ``[{"error": …}]`` from a native
  API, ``{"error", "detail"}`` for a request that does not validate, plain-text 404 / 405 / 503 —
  into it; request-validation errors of a native API become **422** (BentoML says 400).
* **Client errors are logged as one line** (WARNING, no traceback); server errors (5xx other than
  a model that is not ready) as ERROR with the traceback.
* ``/docs`` (and ``/``) serve the interactive API page, ``/docs.json`` the whole OpenAPI document
  (:mod:`bentos.openapi`), instead of BentoML's, which knows only its native APIs.
* ``POST /identify`` is checked before BentoML parses it: multipart with an ``audio`` *file*
  (BentoML would fetch a URL given as a string), within the upload limit.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from http import HTTPStatus
from typing import Any

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse

from cloud.errors import CloudError, PayloadTooLarge, Unprocessable, UnsupportedMediaType

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: BentoML-native APIs of the service (answers and validation errors are BentoML's own).
NATIVE_APIS = ("/identify",)
#: The message of every unexpected server error (the traceback is in the server's log).
INTERNAL = "internal server error (logged on the server)"


def error_response(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status)


def client_error(where: Request | str, exc: CloudError) -> JSONResponse:
    """A :class:`CloudError` as the error shape, logged as one line (``where``: the request, or
    ``"METHOD /path"``)."""
    if isinstance(where, Request):
        where = f"{where.method} {where.url.path}"
    log.warning("%s → %d: %s", where, exc.status, one_line(str(exc)))
    resp = error_response(exc.status, str(exc))
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None:  # 429: when to try again
        resp.headers["retry-after"] = str(int(retry_after))
    return resp


def one_line(text: str) -> str:
    """A message for the log as one line: control characters (a client's input may carry line
    breaks) escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def server_error(request: Request, exc: BaseException) -> JSONResponse:
    log.error("%s %s → 500", request.method, request.url.path, exc_info=exc)
    return error_response(500, INTERNAL)


# ---------------------------------------------------------------------------------- parameters
def query_number(
    request: Request, name: str, default: float | None, lo: float, hi: float, *, integer: bool = False
) -> Any:
    """A query parameter as a number within ``[lo, hi]``; 422 when it is not one."""
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value: float = int(raw) if integer else float(raw)
    except ValueError:
        kind = "an integer" if integer else "a number"
        raise Unprocessable(f"{name}: must be {kind}, got {raw[:40]!r}") from None
    if not lo <= value <= hi:  # NaN fails this too
        raise Unprocessable(f"{name}: must be in [{lo:g}, {hi:g}], got {raw[:40]}")
    return value


def query_bool(request: Request, name: str, default: bool = False) -> bool:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    low = raw.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise Unprocessable(f"{name}: must be true or false, got {raw[:40]!r}")


# ---------------------------------------------------------------------------------- the middleware
class ApiBoundary:
    """ASGI middleware of the ``Silencio`` service (see the module docstring).

    ``docs``: a callable returning the OpenAPI document; ``page``: the ``/docs`` HTML;
    ``upload_limit``: a callable returning the largest ``/identify`` body in bytes;
    ``passthrough``: path prefixes served as they are (the console's HTML pages and their own
    error pages)."""

    def __init__(
        self,
        app: Callable[[Scope, Receive, Send], Awaitable[None]],
        docs: Callable[[], dict[str, Any]],
        page: Callable[[], str],
        upload_limit: Callable[[], float],
        passthrough: tuple[str, ...] = (),
    ) -> None:
        self.app = app
        self.passthrough = passthrough
        self.docs = docs
        self.page = page
        self.upload_limit = upload_limit
        self._doc: bytes | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, method = scope["path"], scope["method"]
        if path in self.passthrough:  # the bare prefix: to its index
            from starlette.responses import RedirectResponse

            await RedirectResponse(path + "/", status_code=308)(scope, receive, send)
            return
        if any(path.startswith(p + "/") for p in self.passthrough):
            await self.app(scope, receive, send)
            return
        if path in ("/docs", "/docs.json", "/"):
            if method in ("GET", "HEAD"):
                await self._serve_docs(path, scope, receive, send)
            else:
                resp = error_response(405, "Method Not Allowed")
                resp.headers["allow"] = "GET, HEAD"
                await resp(scope, receive, send)
            return
        if path in NATIVE_APIS and method == "POST":
            checked = await self._check_upload(scope, receive, send)
            if checked is None:
                return
            receive = checked
        await self.app(scope, receive, _ErrorShaper(send, native=path in NATIVE_APIS).send)

    async def _serve_docs(self, path: str, scope: Scope, receive: Receive, send: Send) -> None:
        from starlette.responses import HTMLResponse, Response

        resp: Response
        if path == "/docs.json":
            if self._doc is None:
                self._doc = json.dumps(self.docs()).encode()
            resp = Response(self._doc, media_type="application/json")
        else:
            resp = HTMLResponse(self.page())
        await resp(scope, receive, send)

    async def _check_upload(self, scope: Scope, receive: Receive, send: Send) -> Receive | None:
        """Buffer a native upload, check it, and hand BentoML a replay of it; None when answered."""
        request = Request(scope, receive)
        limit = self.upload_limit() + 256 * 1024  # the audio plus the multipart framing
        try:
            ctype = request.headers.get("content-type", "")
            if not ctype.startswith("multipart/form-data"):
                raise UnsupportedMediaType(
                    f"expected multipart/form-data with an 'audio' file, got {ctype.split(';')[0] or 'none'}"
                )
            declared = request.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > limit:
                raise PayloadTooLarge(f"request body of {declared} bytes exceeds the {int(limit)} byte limit")
            chunks, size = [], 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"request body exceeds the {int(limit)} byte limit")
                chunks.append(chunk)
            body = b"".join(chunks)
            replay = _replay(body)
            try:
                async with Request(scope, replay()).form(max_files=1, max_fields=8) as form:
                    if not isinstance(form.get("audio"), UploadFile):
                        raise Unprocessable("audio: a file upload is required (multipart field 'audio')")
            except CloudError:
                raise
            except Exception as exc:  # noqa: BLE001 - Starlette's multipart parser raises several kinds
                raise Unprocessable(f"malformed multipart body: {_first_line(exc)}") from None
        except CloudError as exc:
            await client_error(request, exc)(scope, receive, send)
            return None
        return replay()

    def invalidate(self) -> None:
        self._doc = None


def _replay(body: bytes) -> Callable[[], Receive]:
    def make() -> Receive:
        sent = False

        async def receive() -> Message:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        return receive

    return make


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:200]


class _ErrorShaper:
    """Wraps ``send``: an error answer (status ≥ 400) that is not in the error shape yet is
    buffered and rewritten into it."""

    def __init__(self, send: Send, native: bool) -> None:
        self._send = send
        self.native = native
        self._start: Message | None = None
        self._body: list[bytes] = []

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            if message["status"] >= 400:
                self._start = message
                return
        elif message["type"] == "http.response.body" and self._start is not None:
            self._body.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            await self._flush()
            return
        await self._send(message)

    async def _flush(self) -> None:
        assert self._start is not None
        status = int(self._start["status"])
        headers = [(k, v) for k, v in self._start.get("headers", []) if k.lower() != b"content-length"]
        raw = b"".join(self._body)
        ctype = next((v for k, v in headers if k.lower() == b"content-type"), b"")
        shaped = reshape(status, raw, ctype.decode("latin-1"), native=self.native)
        if shaped is not None:
            status, raw = shaped
            headers = [(k, v) for k, v in headers if k.lower() != b"content-type"]
            headers.append((b"content-type", b"application/json"))
        headers.append((b"content-length", str(len(raw)).encode()))
        await self._send({**self._start, "status": status, "headers": headers})
        await self._send({"type": "http.response.body", "body": raw, "more_body": False})


def reshape(status: int, raw: bytes, ctype: str, native: bool = False) -> tuple[int, bytes] | None:
    """``(status, body)`` in the error shape for an error answer, None when it already is one."""
    data: Any = None
    if "json" in ctype:
        try:
            data = json.loads(raw)
        except ValueError:
            data = None
    if isinstance(data, dict) and set(data) == {"error", "status"}:
        return None
    message = ""
    if isinstance(data, list) and data and isinstance(data[0], dict) and "error" in data[0]:
        message = str(data[0]["error"])  # a BentoMLException on a native API
    elif isinstance(data, dict) and isinstance(data.get("detail"), list):
        message = validation_message(data["detail"])  # a request that does not validate
        if native and status == 400:
            status = 422
    elif isinstance(data, dict) and ("error" in data or "detail" in data):
        message = str(data.get("error") or data.get("detail"))
    elif raw and "json" not in ctype:
        message = raw.decode("utf-8", "replace").strip()[:500]
    if status >= 500 and status != 503:
        message = INTERNAL  # BentoML's own 500 text says the same; never an exception's text
    message = message or HTTPStatus(status).phrase
    return status, json.dumps({"error": message, "status": status}).encode()


def validation_message(errors: list[Any]) -> str:
    """pydantic's error list as ``field: message; …`` (at most five)."""
    parts = []
    for e in errors[:5]:
        if isinstance(e, dict):
            loc = ".".join(str(x) for x in e.get("loc", ())) or "body"
            parts.append(f"{loc}: {e.get('msg', 'invalid')}")
    return "; ".join(parts) or "the request does not validate"


# ---------------------------------------------------------------------------------- logging
class ClientErrorLogFilter(logging.Filter):
    """BentoML logs a native API's request-validation error as an ERROR with its traceback; it is
    the client's error: one WARNING line (server errors keep their traceback)."""

    def filter(self, record: logging.LogRecord) -> bool:
        from pydantic import ValidationError

        exc = record.exc_info[1] if record.exc_info else None
        status, message = None, ""
        if isinstance(exc, ValidationError):
            status, message = 422, validation_message(exc.errors(include_url=False, include_input=False))
        elif exc is not None and 400 <= int(getattr(getattr(exc, "error_code", None), "value", 0)) < 500:
            status, message = int(exc.error_code.value), _first_line(exc)  # type: ignore[attr-defined]
        if status is not None:
            path, method = (record.args or ("?", "?"))[:2]  # type: ignore[misc]
            record.msg, record.args = "%s %s → %d: %s", (method, path, status, one_line(message))
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def install_log_filter() -> None:
    from bentoml._internal.server import http_app

    logger = http_app.logger
    if not any(isinstance(f, ClientErrorLogFilter) for f in logger.filters):
        logger.addFilter(ClientErrorLogFilter())
