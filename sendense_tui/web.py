"""The browser console: the same Textual console served by textual-serve.

Every browser session (a websocket) starts one console process with Textual's web
driver, on the state directory and catalog of the server. Nothing is served without
an admin API token (the console changes configuration): the first visit carries it as
``?token=`` or through the login form, and the server moves it into an HttpOnly,
SameSite=Strict cookie and sends the browser to the same page without it (the secret
does not stay in the address bar or the history). Every request, the websocket
included, is checked again, so a revoked token stops working at the next request.
Off loopback the server listens only with TLS.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import ipaddress
import logging
import os
import re
import ssl
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from textual_serve.app_service import AppService
from textual_serve.server import Server, to_int

from engine.errors import SendenseError, ValidationError
from engine.tools.piped import start_piped

log = logging.getLogger(__name__)

#: the cookie that carries the token after the first visit
COOKIE = "sendense_console"
#: the role a browser's token needs: the console can change configuration
NEEDED_ROLE = "admin"
#: a Host header used to build the page's own URLs (anything else: the bound address)
_HOST = re.compile(r"[A-Za-z0-9.\-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")

#: the token check: secret -> the token's role (raises SendenseError when refused)
Authenticate = Callable[[str], str]


def is_loopback(host: str) -> bool:
    """Whether ``host`` only ever reaches this machine (127.0.0.0/8, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server TLS context from PEM files, or one sentence saying which file is wrong."""
    for what, path in (("certificate", cert), ("key", key)):
        if not path.is_file():
            raise ValidationError(
                f"the TLS {what} {path} does not exist",
                hint="give the PEM files with --tls-cert and --tls-key",
            )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(cert), str(key))
    except (ssl.SSLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc.__class__.__name__
        raise ValidationError(
            f"the TLS certificate {cert} and key {key} cannot be used ({reason})",
            hint="both must be PEM files, the key matching the certificate",
        ) from None
    return context


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


class _ConsoleService(AppService):
    """One console process per browser session, started from an argument list (no
    shell: the state directory's path is never read by one)."""

    argv: Sequence[str] = ()
    extra_env: dict[str, str] = {}

    async def _open_app_process(self, width: int = 80, height: int = 24) -> Any:
        environment = {**self._build_environment(width=width, height=height), **self.extra_env}
        self._process = process = await start_piped(self.argv, env=environment)
        assert process.stdin is not None
        self._stdin = process.stdin
        return process


class WebConsole(Server):
    """textual-serve's server behind an API token check, over TLS when given."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        host: str,
        port: int,
        authenticate: Authenticate,
        ssl_context: ssl.SSLContext | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        scheme = "https" if ssl_context is not None else "http"
        super().__init__(
            " ".join(argv),
            host=host,
            port=port,
            title="Sendense",
            public_url=f"{scheme}://{_url_host(host)}:{port}",
        )
        self.argv = list(argv)
        self.env = dict(env or {})
        self.authenticate = authenticate
        self.ssl_context = ssl_context
        self._bound_url = self.public_url
        self._services: set[_ConsoleService] = set()

    # -- the token check ------------------------------------------------------------

    async def _make_app(self) -> web.Application:
        app = await super()._make_app()
        app.router.add_post("/login", self.handle_login, name="login")
        app.middlewares.append(self._guard)
        return app

    @web.middleware
    async def _guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Every page, file and websocket: a valid admin token, or 401/403."""
        origin = request.headers.get("Origin")
        if origin is not None and urlsplit(origin).netloc.lower() != request.host.lower():
            # another site's page opening our websocket or posting the form
            return self._refuse(request, 403, "a page of another site cannot use this console")
        if request.path == "/login" and request.method == "POST":
            return await handler(request)
        secret = request.query.get("token") or request.cookies.get(COOKIE)
        if not secret:
            return self._refuse(request, 401, "this console needs an API token")
        refusal = await self._check(secret)
        if refusal is not None:
            return self._refuse(request, *refusal)
        if "token" in request.query:
            # the secret leaves the address bar: from now on the cookie carries it
            query = request.rel_url.query.copy()
            del query["token"]
            return self._signed_in(request.rel_url.with_query(query).path_qs, secret)
        return await handler(request)

    async def _check(self, secret: str) -> tuple[int, str] | None:
        try:
            # a catalog read: off the event loop
            role = await asyncio.to_thread(self.authenticate, secret)
        except SendenseError as exc:
            return 401, exc.message
        if role != NEEDED_ROLE:
            return 403, f"the console needs a token with the {NEEDED_ROLE} role, not {role}"
        return None

    def _signed_in(self, where: str, secret: str) -> web.StreamResponse:
        # always a path on this server ("//host" would send the browser elsewhere)
        response = web.Response(status=303, headers={"Location": "/" + where.lstrip("/\\")})
        response.set_cookie(
            COOKIE,
            secret,
            path="/",
            httponly=True,
            samesite="Strict",
            secure=self.ssl_context is not None,
        )
        return response

    async def handle_login(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        secret = str(form.get("token", "")).strip()
        if not secret:
            return self._refuse(request, 401, "this console needs an API token")
        refusal = await self._check(secret)
        if refusal is not None:
            return self._refuse(request, *refusal)
        return self._signed_in("/", secret)

    def _refuse(self, request: web.Request, status: int, sentence: str) -> web.StreamResponse:
        response = web.Response(
            status=status,
            content_type="text/html",
            text=_LOGIN_PAGE.format(sentence=html.escape(sentence)),
        )
        if request.cookies.get(COOKIE):
            response.del_cookie(COOKIE, path="/")  # a refused cookie is not kept
        return response

    # -- pages and sessions -----------------------------------------------------------

    async def handle_index(self, request: web.Request) -> web.StreamResponse:
        # the page's websocket and file URLs on the host the browser used: the cookie
        # belongs to that host (localhost and 127.0.0.1 are two sites to a browser)
        host = request.host
        scheme = "https" if self.ssl_context is not None else "http"
        self.public_url = f"{scheme}://{host}" if _HOST.fullmatch(host) else self._bound_url
        response: web.StreamResponse = await super().handle_index(request)
        response.headers["Cache-Control"] = "no-store"
        return response

    async def handle_websocket(self, request: web.Request) -> web.WebSocketResponse:
        """textual-serve's handler, with the console started from an argument list."""
        websocket = web.WebSocketResponse(heartbeat=15)
        # a terminal a browser can show: no size the console would choke on
        width = min(max(to_int(request.query.get("width", "80"), 80), 20), 1000)
        height = min(max(to_int(request.query.get("height", "24"), 24), 5), 500)
        service: _ConsoleService | None = None
        try:
            await websocket.prepare(request)
            service = _ConsoleService(
                self.command,
                write_bytes=websocket.send_bytes,
                write_str=websocket.send_str,
                # aiohttp's close() answers a bool that textual-serve does not read
                close=websocket.close,  # type: ignore[arg-type]
                download_manager=self.download_manager,
                debug=self.debug,
            )
            service.argv = self.argv
            service.extra_env = self.env
            self._services.add(service)
            await service.start(width, height)
            await self._process_messages(websocket, service)
        except asyncio.CancelledError:
            await websocket.close()
        except Exception:
            log.exception("browser console session failed")
        finally:
            if service is not None:
                self._services.discard(service)
                await self._end(service)
        return websocket

    async def _end(self, service: _ConsoleService) -> None:
        """Ask the console to quit; one that does not within a while is terminated."""
        with contextlib.suppress(TimeoutError, ProcessLookupError, ConnectionError):
            await asyncio.wait_for(service.stop(), timeout=10)
        process = service._process
        if process is not None and process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), timeout=10)
            except TimeoutError:
                process.kill()
                await process.wait()

    async def on_startup(self, app: web.Application) -> None:
        print(
            f"sendense: the console is served on {self._bound_url}/ — open it with "
            f"?token=<an admin API token> (Ctrl+C stops it)",
            file=sys.stderr,
            flush=True,
        )

    async def on_shutdown(self, app: web.Application) -> None:
        await asyncio.gather(*(self._end(s) for s in list(self._services)))

    def serve(self, debug: bool = False) -> None:
        """Serve until Ctrl+C or SIGTERM."""
        try:
            web.run_app(
                self._make_app(),
                host=self.host,
                port=self.port,
                ssl_context=self.ssl_context,
                handle_signals=True,  # SIGTERM and Ctrl+C: a graceful stop, sessions ended
                print=None,
                access_log=None,
            )
        except OSError as exc:
            raise ValidationError(
                f"the console cannot listen on {_url_host(self.host)}:{self.port} "
                f"({os.strerror(exc.errno) if exc.errno else exc})",
                hint="pick another address or port with --host and --port",
            ) from None


_LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sendense console</title>
<meta name="referrer" content="no-referrer"></head>
<body style="font-family: sans-serif; max-width: 40em; margin: 4em auto">
<h1>Sendense console</h1>
<p>{sentence}.</p>
<form method="post" action="/login">
<label for="token">Admin API token</label>
<input id="token" name="token" type="password" autocomplete="off" size="60" autofocus>
<button type="submit">Open the console</button>
</form>
<p>Create one with <code>sendense api token create NAME --role admin</code>.</p>
</body></html>
"""
