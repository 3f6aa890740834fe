"""Who may use the console: login with a reviewer's or admin's token, a session cookie, CSRF
tokens, and a per-client limit on failed logins.

* The session id lives only in an ``HttpOnly``, ``SameSite=Strict`` cookie limited to the console's
  path (``Secure`` over https); the store keeps only its sha256 and an expiry.
* Every form carries the session's CSRF token (a hidden field compared in constant time) and a
  cross-site ``Origin`` is refused; the login form, which has no session yet, uses a
  double-submit cookie.
* Failed logins are counted per client address with the service's limiter
  (:class:`cloud.ratelimit.BadTokenLimiter`: ``login_max_failures`` within ``login_window_s``,
  then 429 until the oldest of them leaves the window). The client address, and whether the
  request came over https, are read from ``X-Forwarded-For`` / ``X-Forwarded-Proto`` only when the
  peer is one of the service's trusted proxies (``SILENCIO_CLOUD_TRUSTED_PROXIES``). The counts
  live in this process: each worker or replica counts on its own.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from cloud.console.settings import ConsoleSettings
from cloud.ratelimit import client_address as _client_address
from cloud.ratelimit import from_trusted_proxy

SESSION_COOKIE = "silencio_console"
LOGIN_COOKIE = "silencio_console_login"


def client_address(request: Request, proxies: Sequence[Any]) -> str:
    peer = request.client.host if request.client else None
    return _client_address(peer, request.headers.get("x-forwarded-for"), proxies)


def is_https(request: Request, proxies: Sequence[Any]) -> bool:
    if request.url.scheme == "https":
        return True
    peer = request.client.host if request.client else None
    proto = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return proto == "https" and from_trusted_proxy(peer, proxies)


def secure_cookie(request: Request, settings: ConsoleSettings, proxies: Sequence[Any]) -> bool:
    if settings.secure_cookies == "always":
        return True
    if settings.secure_cookies == "never":
        return False
    return is_https(request, proxies)


def set_cookie(
    response: Response, request: Request, name: str, value: str, max_age: int, secure: bool
) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=base_path(request) + "/",
        httponly=True,
        samesite="strict",
        secure=secure,
    )


def clear_cookie(response: Response, request: Request, name: str, secure: bool) -> None:
    response.delete_cookie(
        name, path=base_path(request) + "/", httponly=True, samesite="strict", secure=secure
    )


def base_path(request: Request) -> str:
    """Where the console is mounted (``/console`` in the service)."""
    return str(request.scope.get("root_path", "")).rstrip("/")


def same_token(a: str | None, b: str | None) -> bool:
    """Constant-time comparison of two CSRF tokens (a missing one never matches)."""
    return bool(a) and bool(b) and hmac.compare_digest(str(a).encode(), str(b).encode())


def same_origin(request: Request) -> bool:
    """A form post from this site: no ``Origin`` header (old browsers, tests) or the request's
    own scheme://host[:port]."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    host = request.headers.get("host", "")
    return origin in (f"http://{host}", f"https://{host}")
