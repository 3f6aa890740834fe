"""The console's ASGI app (Starlette): routing, the session and role check every page and action
goes through, CSRF on every form, login / logout, security headers, error pages.

Every store call runs in Starlette's thread pool (the stores are synchronous); pages are rendered
with Jinja2 (:mod:`cloud.console.pages`)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import jinja2
from markupsafe import Markup
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cloud.console.auth import (
    LOGIN_COOKIE,
    SESSION_COOKIE,
    base_path,
    clear_cookie,
    client_address,
    same_origin,
    same_token,
    secure_cookie,
    set_cookie,
)
from cloud.console.settings import ConsoleSettings
from cloud.errors import CloudError, NotReady, TooManyRequests, Unauthorized
from cloud.ratelimit import BadTokenLimiter, parse_proxies
from cloud.store import ConsoleOverview, SessionRecord, Store, UserRecord, UserRole
from cloud.store.interface import new_secret
from shared_features import LabelSpace

log = logging.getLogger(__name__)
HERE = Path(__file__).parent

#: what the browser may load: only this site's scripts, styles, images (spectrograms, plots) and
#: audio; no framing, no inline script or style
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; media-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


@dataclass(frozen=True)
class ConsoleDeps:
    """What the console reads: the store, ``$SILENCIO_HOME`` (relative loop-report paths) and the
    label space every species name comes from."""

    store: Store
    home: Path
    labels: LabelSpace
    #: proxies whose ``X-Forwarded-For`` / ``-Proto`` count (:func:`cloud.ratelimit.parse_proxies`)
    trusted_proxies: tuple[Any, ...] = ()

    @classmethod
    def from_cloud(cls, cloud: Any) -> ConsoleDeps:
        """From a :class:`cloud.service.Cloud`: its store, its trusted proxies, and the label space
        of the model that confirms clips (the taxonomy setting's while no model is loaded)."""
        try:
            labels = cloud.identifier.labels
        except NotReady:
            labels = _taxonomy(Path(cloud.settings.taxonomy_path))
        proxies = tuple(parse_proxies(getattr(cloud.settings, "trusted_proxies", "")))
        return cls(cloud.store, Path(cloud.settings.home), labels, proxies)

    @classmethod
    def from_taxonomy(
        cls, store: Store, home: Path, taxonomy: Path | None = None, trusted_proxies: str = ""
    ) -> ConsoleDeps:
        """With the label space of a taxonomy CSV (default: the packaged El Silencio one)."""
        from shared_features.labels import taxonomy_path

        return cls(store, home, _taxonomy(taxonomy_path(taxonomy)), tuple(parse_proxies(trusted_proxies)))


@lru_cache(maxsize=4)
def _taxonomy(path: Path) -> LabelSpace:
    return LabelSpace.from_taxonomy_csv(path)


@dataclass
class Ctx:
    """One request of a signed-in user: what a page handler needs."""

    console: Console
    request: Request
    deps: ConsoleDeps
    session: SessionRecord
    form: dict[str, str]

    @property
    def store(self) -> Store:
        return self.deps.store

    @property
    def user(self) -> UserRecord:
        return self.session.user

    @property
    def labels(self) -> LabelSpace:
        return self.deps.labels

    @property
    def base(self) -> str:
        return base_path(self.request)

    def param(self, name: str, default: str = "") -> str:
        """A query-string parameter, stripped."""
        return self.request.query_params.get(name, default).strip()

    def render(self, template: str, http_status: int = 200, **kw: Any) -> HTMLResponse:
        return self.console.render(self.request, template, http_status, session=self.session, **kw)

    def redirect(self, url: str) -> RedirectResponse:
        return RedirectResponse(url, status_code=303)

    def safe_next(self, default: str) -> str:
        """The form's ``next`` when it is a path of this console (never another site)."""
        nxt = self.form.get("next", "")
        ok = nxt.startswith(self.base + "/") and not nxt.startswith("//") and "\\" not in nxt
        return nxt if ok else default


Handler = Callable[[Ctx], Response]


class Console:
    """The console app: ``Console(deps).app`` is a plain ASGI app to mount under ``/console``.

    ``deps``: a :class:`ConsoleDeps`, or a callable returning it per request (the service passes
    its own store that way)."""

    def __init__(
        self, deps: ConsoleDeps | Callable[[], ConsoleDeps], settings: ConsoleSettings | None = None
    ) -> None:
        from cloud.console import pages

        self._deps = deps
        self.settings = settings or ConsoleSettings()
        self._overview: dict[int, tuple[float, Store, ConsoleOverview]] = {}
        self._overview_lock = threading.Lock()
        self.limiter = BadTokenLimiter(self.settings.login_max_failures, self.settings.login_window_s)
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        pages.install_filters(self.env)
        reviewer, admin = UserRole.REVIEWER, UserRole.ADMIN
        p = self.page
        routes = [
            Route("/", p(pages.overview, reviewer), methods=["GET"]),
            Route("/login", self.login_page, methods=["GET"]),
            Route("/login", self.login, methods=["POST"]),
            Route("/logout", p(self.logout, reviewer), methods=["POST"]),
            Route("/review", p(pages.review_queue, reviewer), methods=["GET"]),
            Route("/review/{clip}", p(pages.review_clip, reviewer), methods=["GET"]),
            Route("/review/{clip}", p(pages.add_verdict, reviewer), methods=["POST"]),
            Route("/clips/{clip}/audio", p(pages.clip_audio, reviewer, page=False), methods=["GET"]),
            Route(
                "/clips/{clip}/spectrogram.png",
                p(pages.clip_spectrogram, reviewer, page=False),
                methods=["GET"],
            ),
            Route("/clips/{clip}/pin", p(pages.pin_clip, reviewer), methods=["POST"]),
            Route("/tours", p(pages.tours, reviewer), methods=["GET"]),
            Route("/tours/{tour}", p(pages.tour, reviewer), methods=["GET"]),
            Route("/species", p(pages.species_index, reviewer), methods=["GET"]),
            Route("/species/{code}", p(pages.species, reviewer), methods=["GET"]),
            Route("/models", p(pages.models, reviewer), methods=["GET"]),
            Route("/models/{version}/confirm", p(pages.confirm_release, admin), methods=["GET"]),
            Route("/models/{version}/current", p(pages.set_release, admin), methods=["POST"]),
            Route("/models/{version}/report/", p(pages.loop_report, reviewer), methods=["GET"]),
            Route(
                "/models/{version}/report/{name:path}",
                p(pages.loop_asset, reviewer, page=False),
                methods=["GET"],
            ),
            Route("/exports", p(pages.exports, reviewer), methods=["GET"]),
            Route("/exports/download", p(pages.export_download, reviewer, page=False), methods=["GET"]),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
            # every other path under the console is the console's 404 (not the API's JSON one)
            Route("/{rest:path}", self.not_found, methods=["GET", "HEAD", "POST"]),
        ]
        self.app = Starlette(routes=routes, middleware=[Middleware(SecurityHeaders)])

    # ------------------------------------------------------------------ plumbing
    def overview(self, store: Store) -> ConsoleOverview:
        """The store's overview, reused for ``overview_cache_s`` (per store, in this process)."""
        ttl = self.settings.overview_cache_s
        if ttl <= 0:
            return store.console_overview()
        now = time.monotonic()
        with self._overview_lock:
            hit = self._overview.get(id(store))
            if hit is not None and now - hit[0] < ttl and hit[1] is store:
                return hit[2]
        ov = store.console_overview()
        with self._overview_lock:
            self._overview[id(store)] = (now, store, ov)
        return ov

    def deps(self) -> ConsoleDeps:
        return self._deps() if callable(self._deps) else self._deps

    def render(
        self,
        request: Request,
        template: str,
        http_status: int = 200,
        *,
        session: SessionRecord | None = None,
        **kw: Any,
    ) -> HTMLResponse:
        base = base_path(request)
        ctx = {
            "base": base,
            "user": session.user if session else None,
            "csrf": session.csrf_token if session else "",
            "path": request.url.path,
            "request_query": str(request.url.query),
            "q": quote,
            "urlencode": urlencode,
            **kw,
        }
        if "labels" not in ctx:
            try:
                ctx["labels"] = self.deps().labels
            except Exception:  # noqa: BLE001 - an error page must render even without the label space
                ctx["labels"] = LabelSpace([])
        html = self.env.get_template(template).render(**ctx)
        return HTMLResponse(html, status_code=http_status, headers={"cache-control": "no-store"})

    def error(
        self, request: Request, status: int, message: str, session: SessionRecord | None = None
    ) -> HTMLResponse:
        return self.render(request, "error.html", status, session=session, status=status, message=message)

    def page(
        self, fn: Handler, role: UserRole, *, page: bool = True
    ) -> Callable[[Request], Awaitable[Response]]:
        """Wrap a handler: a live session (else the login page for a page, 401 for audio, images
        and downloads), the role, CSRF and origin on every POST, errors as pages."""

        async def run(request: Request) -> Response:
            try:
                deps = self.deps()
                sess = await run_in_threadpool(deps.store.session, request.cookies.get(SESSION_COOKIE))
            except CloudError as exc:
                return self.error(request, exc.status, str(exc))
            if sess is None:
                if page and request.method == "GET":
                    nxt = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                    login = f"{base_path(request)}/login?{urlencode({'next': nxt})}"
                    return RedirectResponse(login, status_code=303)
                return self.error(request, 401, "sign in first: this needs a console session")
            if role is UserRole.ADMIN and not sess.user.is_admin:
                return self.error(
                    request, 403, f"only an admin may do this ({sess.user.name} is a reviewer)", sess
                )
            form: dict[str, str] = {}
            if request.method == "POST":
                try:
                    async with request.form(max_files=0, max_fields=50, max_part_size=64 * 1024) as data:
                        form = {k: v for k, v in data.items() if not isinstance(v, UploadFile)}
                except Exception as exc:  # noqa: BLE001 - Starlette's form parser raises several kinds
                    return self.error(request, 400, f"malformed form: {str(exc)[:200]}", sess)
                if not same_origin(request):
                    return self.error(request, 403, "cross-site form refused (Origin)", sess)
                if not same_token(form.get("csrf"), sess.csrf_token):
                    return self.error(
                        request, 403, "missing or wrong CSRF token: reload the page and retry", sess
                    )
            ctx = Ctx(self, request, deps, sess, form)
            try:
                return await run_in_threadpool(fn, ctx)
            except CloudError as exc:
                log.warning("%s %s → %d: %s", request.method, request.url.path, exc.status, exc)
                return self.error(request, exc.status, str(exc), sess)
            except Exception:  # noqa: BLE001 - the boundary: a bug is a 500 page, its traceback in the log
                log.exception("%s %s → 500", request.method, request.url.path)
                return self.error(request, 500, "internal error (logged on the server)", sess)

        return run

    async def not_found(self, request: Request) -> Response:
        sess = None
        try:
            sess = await run_in_threadpool(self.deps().store.session, request.cookies.get(SESSION_COOKIE))
        except CloudError:
            pass
        if sess is None:  # nothing of the console is shown without a session, not even what exists
            return self.error(request, 401 if request.method != "GET" else 404, "not found")
        return self.error(request, 404, f"no page {request.url.path}", sess)

    # ------------------------------------------------------------------ login / logout
    async def login_page(
        self, request: Request, message: str = "", status: int = 200, next_url: str | None = None
    ) -> Response:
        token = request.cookies.get(LOGIN_COOKIE) or new_secret()
        resp = self.render(
            request,
            "login.html",
            status,
            login_csrf=token,
            message=message,
            next=request.query_params.get("next", "") if next_url is None else next_url,
            no_users=await self._no_users(),
        )
        secure = secure_cookie(request, self.settings, self.deps().trusted_proxies)
        set_cookie(resp, request, LOGIN_COOKIE, token, 3600, secure)
        return resp

    async def _no_users(self) -> bool:
        try:
            return not await run_in_threadpool(self.deps().store.users)
        except CloudError:
            return False

    async def login(self, request: Request) -> Response:
        proxies = self.deps().trusted_proxies
        client = client_address(request, proxies)
        try:
            self.limiter.check(client)
        except TooManyRequests as exc:
            wait = exc.retry_after
            resp = self.error(request, 429, f"too many failed logins from {client}: try again in {wait} s")
            resp.headers["retry-after"] = str(wait)
            return resp
        try:
            async with request.form(max_files=0, max_fields=10, max_part_size=4096) as data:
                form = {k: v for k, v in data.items() if isinstance(v, str)}
        except Exception:  # noqa: BLE001 - a malformed body is just a failed login
            form = {}
        if not same_origin(request) or not same_token(form.get("csrf"), request.cookies.get(LOGIN_COOKIE)):
            return await self.login_page(
                request, "the login form expired or came from another site: retry", 403, form.get("next", "")
            )
        store = self.deps().store
        try:
            user = await run_in_threadpool(store.authenticate_user, form.get("token", "").strip())
        except Unauthorized as exc:
            self.limiter.failed(client)
            log.warning("console login refused for %s: %s", client, exc)
            return await self.login_page(
                request, "that token does not open the console", 401, form.get("next", "")
            )
        sid, _ = await run_in_threadpool(store.create_session, user.id, self.settings.session_ttl_s)
        base = base_path(request)
        nxt = form.get("next", "")
        dest = nxt if nxt.startswith(base + "/") and not nxt.startswith("//") else base + "/"
        resp = RedirectResponse(dest, status_code=303)
        secure = secure_cookie(request, self.settings, proxies)
        set_cookie(resp, request, SESSION_COOKIE, sid, self.settings.session_ttl_s, secure)
        clear_cookie(resp, request, LOGIN_COOKIE, secure)
        log.info("console login: %s (%s) from %s", user.name, user.role, client)
        return resp

    def logout(self, ctx: Ctx) -> Response:
        sid = ctx.request.cookies.get(SESSION_COOKIE)
        if sid:
            ctx.store.delete_session(sid)
        resp = RedirectResponse(f"{ctx.base}/login", status_code=303)
        clear_cookie(
            resp,
            ctx.request,
            SESSION_COOKIE,
            secure_cookie(ctx.request, self.settings, ctx.deps.trusted_proxies),
        )
        return resp


class SecurityHeaders:
    """Headers on every console answer: the content security policy, no framing, no sniffing, no
    referrer to other sites."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [
                    (b"content-security-policy", CSP.encode()),
                    (b"x-frame-options", b"DENY"),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"same-origin"),
                ]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def make_app(
    deps: ConsoleDeps | Callable[[], ConsoleDeps], settings: ConsoleSettings | None = None
) -> Starlette:
    """The console as a plain ASGI app (mount it under ``/console``)."""
    return Console(deps, settings).app


__all__ = ["Console", "ConsoleDeps", "Ctx", "Markup", "make_app"]
