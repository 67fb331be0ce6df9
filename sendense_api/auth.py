"""Who is calling: the daemon's authenticator, and the audit of changing calls.

Over TCP every request carries ``Authorization: Bearer <secret>`` (an API token,
``sendense api token create``); no token, or one that is unknown, revoked or
expired, is answered 401 with ``WWW-Authenticate: Bearer``. On the unix socket
(0600, root's, in the 0700 state directory) whoever connects is root already:
requests are trusted as root with the admin role. The server marks a request
that came over the socket in its ASGI scope (``trust_socket``); nothing a client
sends can set that mark.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine.events import Event
from engine.services.api_tokens import Role, TokenRefused
from sendense_api.deps import Authenticate
from sendense_api.roles import Caller

if TYPE_CHECKING:
    from engine.runtime import Engine
    from engine.services.api_tokens import ApiTokenService

#: the ASGI scope key the unix-socket server sets on every request it hands on
SOCKET_SCOPE_KEY = "sendense.unix_socket"
ROOT_CALLER = Caller(name="root (unix socket)", role=Role.ADMIN, via="socket")
#: methods that read; every other call is recorded in the audit log
READING_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def token_authenticator(tokens: ApiTokenService) -> Authenticate:
    """Bearer tokens over TCP; root on the unix socket."""

    def authenticate(request: Request) -> Caller:
        if request.scope.get(SOCKET_SCOPE_KEY) is True:
            return ROOT_CALLER
        scheme, _, secret = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise TokenRefused(
                "this call needs an API token",
                hint="send 'Authorization: Bearer <secret>'; "
                "`sendense api token create NAME --role read` makes one",
            )
        view = tokens.authenticate(secret.strip())
        return Caller(name=view.name, role=view.role)

    return authenticate


def trust_socket(app: ASGIApp) -> ASGIApp:
    """``app`` as the unix-socket server runs it: every request is root's."""

    async def on_socket(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            scope = {**scope, SOCKET_SCOPE_KEY: True}
        await app(scope, receive, send)

    return on_socket


class AuditChanges:
    """ASGI middleware: every call that is not a read lands in the audit log (kind
    ``api.call``) with the caller's name, the method, the path and the status it
    got, whether it succeeded or was refused. The write runs on the thread pool
    (the catalog blocks), after the response is sent."""

    def __init__(self, app: ASGIApp, engine: Engine) -> None:
        self.app = app
        self.engine = engine

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in READING_METHODS:
            await self.app(scope, receive, send)
            return
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            await run_in_threadpool(self._record, scope, status)

    def _record(self, scope: Scope, status: int) -> None:
        caller: Any = scope.get("state", {}).get("caller")
        method, path = scope["method"], scope["path"]
        who = caller.name if isinstance(caller, Caller) else None
        outcome = "refused" if status in (401, 403) else "failed" if status >= 400 else "done"
        self.engine.bus.publish(
            Event(
                kind="api.call",
                message=f"API {method} {path} by {who or 'an unauthenticated caller'}: "
                f"{status} ({outcome})",
                level="info" if status < 400 else "warning",
                source="api",
                actor=who,
                data={
                    "method": method,
                    "path": path,
                    "status": status,
                    "via": caller.via if isinstance(caller, Caller) else None,
                },
            )
        )
