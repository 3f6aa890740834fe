"""Repeated wrong tokens from one client address are refused with 429 for a while.

:class:`BadTokenLimiter` counts, per client address, the requests whose bearer token was refused
(wrong or revoked; a request *without* a token does not count) in a sliding window of
``window`` seconds. Once an address reaches ``limit`` of them, every request from it that presents
a token is answered 429 with ``Retry-After`` — without looking at the token, so that guessing
stays blocked even for a guess that would be right — until the oldest counted failure leaves the
window. Requests without a token (``/identify``, ``/v1/schema``, probes) are not blocked.

The client address is the peer's, or — when the peer is a trusted proxy
(``SILENCIO_CLOUD_TRUSTED_PROXIES``: addresses or networks) — the right-most address of
``X-Forwarded-For`` that is not itself a trusted proxy (:func:`client_address`). Without that
setting, every client behind one proxy shares the proxy's address and its limit.

The counts live in the process: each replica and each BentoML worker counts on its own, so with
R replicas of W workers behind a round-robin proxy an address gets at most R × W × ``limit`` wrong
tokens per window before every process refuses it. Tokens are 256-bit random values (only their
sha256 is stored), so the limit keeps guessing noise and its database load down rather than making
guessing feasible or not; a fleet-wide limit belongs in the proxy (nginx ``limit_req``) or in the
shared database.
"""

from __future__ import annotations

import ipaddress
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence

from cloud.errors import TooManyRequests

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class BadTokenLimiter:
    """Per client address: at most ``limit`` refused tokens per ``window`` seconds (0: off)."""

    def __init__(
        self,
        limit: int,
        window: float,
        *,
        max_clients: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window = window
        self.max_clients = max_clients
        self.clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def _recent(self, client: str, now: float) -> deque[float] | None:
        times = self._failures.get(client)
        if times is None:
            return None
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._failures[client]
            return None
        return times

    def check(self, client: str) -> None:
        """:class:`TooManyRequests` (with ``retry_after`` seconds) while ``client`` is blocked."""
        if self.limit <= 0:
            return
        with self._lock:
            now = self.clock()
            times = self._recent(client, now)
            if times is not None and len(times) >= self.limit:
                wait = max(1, math.ceil(times[-self.limit] + self.window - now))
                raise TooManyRequests(
                    f"too many requests with a wrong token from {client}: retry in {wait} s", retry_after=wait
                )

    def failed(self, client: str) -> None:
        """Count a refused token from ``client``."""
        if self.limit <= 0:
            return
        with self._lock:
            now = self.clock()
            times = self._recent(client, now) or deque(maxlen=self.limit)
            times.append(now)
            self._failures[client] = times
            self._failures.move_to_end(client)
            while len(self._failures) > self.max_clients:  # bounded memory: forget the stalest
                self._failures.popitem(last=False)


def parse_proxies(spec: str | Sequence[str] | None) -> list[Network | str]:
    """``"10.0.0.0/8, 127.0.0.1, nginx"`` → networks (and host names, matched as text)."""
    items = spec.split(",") if isinstance(spec, str) else list(spec or [])
    out: list[Network | str] = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        try:
            out.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            out.append(item)
    return out


def _trusted(address: str, proxies: Sequence[Network | str]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address in proxies
    return any(not isinstance(p, str) and ip.version == p.version and ip in p for p in proxies)


def from_trusted_proxy(peer: str | None, proxies: Sequence[Network | str]) -> bool:
    """Whether a request's peer is one of the trusted proxies (so its forwarded headers count)."""
    return peer is not None and _trusted(peer, proxies)


def client_address(peer: str | None, forwarded_for: str | None, proxies: Sequence[Network | str]) -> str:
    """The address a request counts against (see the module docstring)."""
    addr = peer or "unknown"
    if not forwarded_for or not _trusted(addr, proxies):
        return addr
    for hop in reversed([h.strip() for h in forwarded_for.split(",") if h.strip()]):
        if not _trusted(hop, proxies):
            return hop[:100]
        addr = hop
    return addr
