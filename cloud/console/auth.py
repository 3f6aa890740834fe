"""Who may use the console: login with a reviewer's or admin's token, a session cookie, CSRF
tokens, and a per-client limit on failed logins.

* The session id lives only in an ``HttpOnly``, ``SameSite=Strict`` cookie limited to the console's
  path (``Secure`` over https); the store keeps only its sha256 and an expiry.
* Every form carries the session's CSRF token (a hidden field compared in constant time) and a
  cross-site ``Origin`` is refused; the login form, which has no session yet, uses a
  double-submit cookie.
* A client (its address) that fails ``login_max_failures`` times within ``login_window_s`` is
  answered 429 for ``login_lockout_s``. The counts live in this process: with several workers or
  replicas each keeps its own (a client gets at most ``max_failures`` tries per process).
"""

from __future__ import annotations

import hmac
import threading
import time
from collections import deque
from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import Response

from cloud.console.settings import ConsoleSettings

SESSION_COOKIE = "silencio_console"
LOGIN_COOKIE = "silencio_console_login"


def client_address(request: Request, settings: ConsoleSettings) -> str:
    if settings.trust_forwarded:
        forwarded = request.headers.get("x-forwarded-for", "")
        if forwarded.strip():
            return forwarded.split(",")[0].strip()
    return request.client.host if request.client else "unknown"


def is_https(request: Request, settings: ConsoleSettings) -> bool:
    if settings.trust_forwarded and request.headers.get("x-forwarded-proto", "").lower() == "https":
        return True
    return request.url.scheme == "https"


def secure_cookie(request: Request, settings: ConsoleSettings) -> bool:
    if settings.secure_cookies == "always":
        return True
    if settings.secure_cookies == "never":
        return False
    return is_https(request, settings)


def set_cookie(
    response: Response, request: Request, settings: ConsoleSettings, name: str, value: str, max_age: int
) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=base_path(request) + "/",
        httponly=True,
        samesite="strict",
        secure=secure_cookie(request, settings),
    )


def clear_cookie(response: Response, request: Request, settings: ConsoleSettings, name: str) -> None:
    response.delete_cookie(
        name,
        path=base_path(request) + "/",
        httponly=True,
        samesite="strict",
        secure=secure_cookie(request, settings),
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


class LoginLimiter:
    """Failed logins per client: ``max_failures`` within ``window_s`` lock the client out for
    ``lockout_s``; a success clears its count. Thread-safe; bounded (old entries are dropped)."""

    def __init__(
        self,
        max_failures: int,
        window_s: float,
        lockout_s: float,
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = 10_000,
    ) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self.lockout_s = lockout_s
        self.clock = clock
        self.max_clients = max_clients
        self._failures: dict[str, deque[float]] = {}
        self._until: dict[str, float] = {}
        self._lock = threading.Lock()

    def retry_after(self, client: str) -> float | None:
        """Seconds until ``client`` may try again, or None when it may now."""
        with self._lock:
            until = self._until.get(client)
            if until is None:
                return None
            left = until - self.clock()
            if left <= 0:
                del self._until[client]
                return None
            return left

    def failure(self, client: str) -> None:
        now = self.clock()
        with self._lock:
            if len(self._failures) >= self.max_clients:
                self._prune(now)
            q = self._failures.setdefault(client, deque())
            q.append(now)
            while q and q[0] <= now - self.window_s:
                q.popleft()
            if len(q) >= self.max_failures:
                self._until[client] = now + self.lockout_s
                q.clear()

    def success(self, client: str) -> None:
        with self._lock:
            self._failures.pop(client, None)

    def _prune(self, now: float) -> None:
        for k in [k for k, q in self._failures.items() if not q or q[-1] <= now - self.window_s]:
            del self._failures[k]
        for k in [k for k, t in self._until.items() if t <= now]:
            del self._until[k]
        while len(self._failures) >= self.max_clients:  # still full: forget the oldest
            del self._failures[next(iter(self._failures))]
