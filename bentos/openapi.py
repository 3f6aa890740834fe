"""The service's whole API as one OpenAPI 3.1 document (``/docs.json``) and its interactive page
(``/docs``): BentoML's native ``/identify``, the device API under ``/v1``, the probes and metrics.

Request and response bodies are the pydantic models of :mod:`cloud.schemas` (their JSON Schema
under ``components.schemas``); every error is an ``ErrorBody``; the device and admin endpoints
declare the bearer scheme. ``tests/cloud/test_api.py`` checks that every route the service
answers is in the document and that real answers validate against it.
"""

from __future__ import annotations

from functools import cache
from importlib import metadata
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from cloud import schemas
from shared_features.config import DEFAULT

TITLE = "El Silencio Acoustic Explorer — cloud API"
REF = "#/components/schemas/{model}"

#: Request bodies (validated) and answers (serialised) with their JSON Schema in the document.
REQUEST_MODELS: tuple[type[BaseModel], ...] = (schemas.SyncBatch, schemas.ClipMeta, schemas.FeedbackIn)
RESPONSE_MODELS: tuple[type[BaseModel], ...] = (
    schemas.ErrorBody,
    schemas.IdentifyResult,
    schemas.SyncAck,
    schemas.ClipAck,
    schemas.ConfirmationsPage,
    schemas.FeedbackAck,
    schemas.TourReport,
    schemas.SummaryReport,
    schemas.ReleaseInfo,
    schemas.ReadyStatus,
    schemas.WireSchemas,
)

_ERRORS = {
    400: "corrupt or empty audio; a clip whose bytes do not match its sha256",
    401: "missing, wrong or revoked bearer token",
    403: "a valid token without the right: another device's data, or a device token for an admin endpoint",
    429: "too many wrong tokens from this client address; the `Retry-After` header says when to retry",
    404: "not found",
    413: "body larger than the service's limit",
    415: "not audio / not the expected content type",
    422: "the request does not follow the schema (JSON, multipart fields, parameter values)",
    503: "the model is not loaded yet (or could not be)",
}


def version() -> str:
    try:
        return metadata.version("silencio")
    except metadata.PackageNotFoundError:  # a Bento image carries the code, not the distribution
        return "0+unknown"


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


def _json(model: type[BaseModel], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(model)}}}


def _errors(*codes: int) -> dict[str, Any]:
    return {str(c): _json(schemas.ErrorBody, _ERRORS[c]) for c in codes}


def _op(
    summary: str,
    ok: dict[str, Any],
    errors: tuple[int, ...],
    *,
    tag: str,
    op_id: str,
    auth: str | None = None,
    body: dict[str, Any] | None = None,
    params: list[dict[str, Any]] | None = None,
    description: str | None = None,
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": op_id,
        "summary": summary,
        "tags": [tag],
        "responses": {
            "200": ok,
            **_errors(
                *sorted(set(errors) | ({401} if auth else set()) | ({403} if auth == "admin" else set()))
            ),
        },
    }
    if description:
        op["description"] = description
    if auth:
        op["security"] = [{"bearer": []}]
        op["description"] = (op.get("description", "") + f"\n\nNeeds a {auth} token.").strip()
    if body is not None:
        op["requestBody"] = {"required": True, "content": body}
    if params:
        op["parameters"] = params
    return op


def _num(
    name: str, lo: float, hi: float, default: float | None, text: str, integer: bool = False
) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "integer" if integer else "number", "minimum": lo, "maximum": hi}
    if default is not None:
        schema["default"] = default
    return {"name": name, "in": "query", "required": False, "description": text, "schema": schema}


def _identify_params() -> list[dict[str, Any]]:
    w = DEFAULT.window_seconds
    return [
        _num("threshold", 0, 1, 0.5, "species at or above this probability are listed per window"),
        _num("top_k", 1, 50, 5, "at most this many species per window", integer=True),
        _num("stride", 0.5, w, None, f"seconds between window starts (default {w:g}: no overlap)"),
        {
            "name": "members",
            "in": "query",
            "required": False,
            "description": "also every member's best species per window",
            "schema": {"type": "boolean", "default": False},
        },
    ]


def _identify_form() -> dict[str, Any]:
    props: dict[str, Any] = {
        "audio": {"type": "string", "format": "binary", "description": "WAV, FLAC, OGG, MP3 or AIFF"}
    }
    for p in _identify_params():
        props[p["name"]] = {**p["schema"], "description": p["description"]}
    schema = {"type": "object", "required": ["audio"], "properties": props, "additionalProperties": False}
    return {"multipart/form-data": {"schema": schema}}


def _text(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"text/plain": {"schema": {"type": "string"}}}}


def paths() -> dict[str, dict[str, Any]]:
    audio_types = "WAV, FLAC, OGG Vorbis/Opus, MP3 or AIFF, at most 10 minutes"
    identify_ok = _json(schemas.IdentifyResult, "species per window and for the whole recording")
    return {
        "/identify": {
            "post": _op(
                "Identify the species in a recording (multipart upload)",
                identify_ok,
                (400, 413, 415, 422, 503),
                tag="identify",
                op_id="identify",
                body=_identify_form(),
                description=f"BentoML's native API. The file: {audio_types}. Per 5 s window the species "
                "above `threshold` (code, scientific and common name, taxon class, probability), a "
                "summary, and optionally every member's scores; `model` says which package answered "
                "(with no trained ensemble: BirdNET alone, birds only).",
            )
        },
        "/v1/identify": {
            "post": _op(
                "Identify the species in a recording (raw body or multipart)",
                identify_ok,
                (400, 413, 415, 422, 503),
                tag="identify",
                op_id="identify_v1",
                params=_identify_params(),
                body={
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "required": ["audio"],
                            "additionalProperties": False,
                            "properties": {"audio": {"type": "string", "format": "binary"}},
                        }
                    },
                },
                description=f"The recording as the body ({audio_types}) or as the multipart file "
                "`audio`; options as query parameters.",
            )
        },
        "/v1/sync": {
            "post": _op(
                "Sync tours and detections (idempotent on UUIDs)",
                _json(schemas.SyncAck, "every UUID of the batch: accepted, duplicate or rejected (why)"),
                (413, 415, 422),
                tag="device",
                op_id="sync",
                auth="device",
                body={"application/json": {"schema": _ref(schemas.SyncBatch)}},
            )
        },
        "/v1/clips": {
            "post": _op(
                "Upload a clip: stored, then re-scored by the full ensemble",
                _json(schemas.ClipAck, "the clip's confirmation (or the earlier one for a re-sent clip)"),
                (400, 403, 413, 415, 422, 503),
                tag="device",
                op_id="upload_clip",
                auth="device",
                body={
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "required": ["meta", "audio"],
                            "additionalProperties": False,
                            "properties": {
                                "meta": {
                                    **_ref(schemas.ClipMeta),
                                    "description": "the clip's ClipMeta (JSON)",
                                },
                                "audio": {"type": "string", "format": "binary"},
                            },
                        },
                        "encoding": {"meta": {"contentType": "application/json"}},
                    }
                },
            )
        },
        "/v1/confirmations": {
            "get": _op(
                "The device's confirmations after a cursor",
                _json(schemas.ConfirmationsPage, "confirmations in order; `next` is the next cursor"),
                (422,),
                tag="device",
                op_id="confirmations",
                auth="device",
                params=[
                    _num("since", 0, 2**63 - 1, 0, "the `next` of the previous page", integer=True),
                    _num("limit", 1, 1000, 200, "page size", integer=True),
                ],
            )
        },
        "/v1/feedback": {
            "post": _op(
                "A guide's flag on a detection (into the relabelling queue)",
                _json(schemas.FeedbackAck, "stored (or a duplicate of one stored before)"),
                (403, 404, 413, 415, 422),
                tag="device",
                op_id="feedback",
                auth="device",
                body={"application/json": {"schema": _ref(schemas.FeedbackIn)}},
            )
        },
        "/v1/reports/tours": {
            "get": _op(
                "Species per tour",
                _json(schemas.TourReport, "every tour (or the one asked for)"),
                (404,),
                tag="reports",
                op_id="tour_report",
                auth="admin",
                params=[
                    {
                        "name": "tour",
                        "in": "query",
                        "required": False,
                        "description": "one tour's UUID",
                        "schema": {"type": "string"},
                    }
                ],
            )
        },
        "/v1/reports/summary": {
            "get": _op(
                "Tours and species per day and per guide; edge/cloud disagreement rate",
                _json(schemas.SummaryReport, "the summary"),
                (),
                tag="reports",
                op_id="summary",
                auth="admin",
            )
        },
        "/v1/releases/current": {
            "get": _op(
                "The current edge model release",
                _json(
                    schemas.ReleaseInfo,
                    "version, sha256, feature fingerprint, metrics, and the release's Ed25519 signature",
                ),
                (404,),
                tag="device",
                op_id="release",
                auth="device",
            )
        },
        "/v1/releases/current/download": {
            "get": _op(
                "The current edge model release as a tar archive",
                {
                    "description": "the package directory as `package/…`",
                    "content": {"application/x-tar": {"schema": {"type": "string", "format": "binary"}}},
                },
                (404,),
                tag="device",
                op_id="release_download",
                auth="device",
            )
        },
        "/v1/schema": {
            "get": _op(
                "The wire format: its version and the JSON Schema of every payload",
                _json(schemas.WireSchemas, "wire version and schemas"),
                (),
                tag="device",
                op_id="wire_schema",
            )
        },
        "/v1/ready": {
            "get": _op(
                "Readiness with the model it serves",
                _json(schemas.ReadyStatus, "the model is loaded"),
                (503,),
                tag="probes",
                op_id="ready_v1",
            )
        },
        "/readyz": {
            "get": _op(
                "Readiness (BentoML): 200 once the model is loaded",
                _text("ready"),
                (503,),
                tag="probes",
                op_id="readyz",
            )
        },
        "/livez": {"get": _op("Liveness (BentoML)", _text("alive"), (), tag="probes", op_id="livez")},
        "/healthz": {"get": _op("Health (BentoML)", _text("healthy"), (), tag="probes", op_id="healthz")},
        "/metrics": {
            "get": _op(
                "Prometheus metrics: BentoML's and the service's own (`silencio_*`)",
                _text("Prometheus text format"),
                (),
                tag="probes",
                op_id="metrics",
            )
        },
        "/docs.json": {
            "get": _op(
                "This document",
                {
                    "description": "OpenAPI 3.1",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                (),
                tag="docs",
                op_id="openapi",
            )
        },
        "/docs": {"get": _op("The interactive API page", _html(), (), tag="docs", op_id="docs")},
        "/": {"get": _op("The interactive API page", _html(), (), tag="docs", op_id="index")},
        "/schema.json": {
            "get": _op(
                "BentoML's description of its native APIs (for BentoML's clients)",
                {
                    "description": "BentoML service schema",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                (),
                tag="docs",
                op_id="bentoml_schema",
            )
        },
    }


def _html() -> dict[str, Any]:
    return {"description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}}


def components() -> dict[str, Any]:
    keyed = [(m, "validation") for m in REQUEST_MODELS] + [(m, "serialization") for m in RESPONSE_MODELS]
    _, defs = models_json_schema(keyed, ref_template=REF)  # type: ignore[arg-type]
    return {
        "schemas": defs.get("$defs", {}),
        "securitySchemes": {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "a device or admin token from `silencio cloud add-device NAME [--admin]`",
            }
        },
    }


@cache
def document() -> dict[str, Any]:
    """The OpenAPI document of the whole service."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": TITLE,
            "version": version(),
            "description": "Identifies the 206 BirdCLEF 2025 species of the El Silencio Natural Reserve "
            "(birds, amphibians, insects, mammals). Devices sync detections and clips under `/v1` with a "
            f"bearer token; wire format version {schemas.WIRE_VERSION}. Every error is "
            '`{"error": message, "status": code}`.',
        },
        "servers": [{"url": "/"}],
        "tags": [
            {"name": "identify", "description": "recordings → species"},
            {"name": "device", "description": "the edge device's API (device token)"},
            {"name": "reports", "description": "for ecologists (admin token)"},
            {"name": "probes", "description": "health, readiness, metrics"},
            {"name": "docs", "description": "this document and its page"},
        ],
        "paths": _with_rate_limit(paths()),
        "components": components(),
    }


def _with_rate_limit(items: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every ``/v1`` operation may answer 429: a request that carries a token from an address that
    sent too many wrong ones is refused whatever it asks (cloud/ratelimit.py)."""
    for path, ops in items.items():
        if path.startswith("/v1/"):
            for op in ops.values():
                op["responses"] = dict(sorted({**op["responses"], **_errors(429)}.items()))
    return items


PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<link rel="stylesheet" href="/static_content/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/static_content/swagger-ui-bundle.js"></script>
<script>
window.ui = SwaggerUIBundle({{url: "/docs.json", dom_id: "#swagger-ui", deepLinking: true}});
</script>
<noscript>The API document: <a href="/docs.json">/docs.json</a></noscript>
</body>
</html>
"""


def page() -> str:
    """``/docs``: Swagger UI (the copy BentoML serves under ``/static_content``, no CDN) on
    ``/docs.json``."""
    return PAGE.format(title=TITLE)
