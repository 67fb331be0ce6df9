"""The FastAPI application over one engine: routers, errors as problem details."""

from __future__ import annotations

import importlib
import threading
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine import __version__
from engine.errors import SendenseError
from sendense_api.auth import AuditChanges
from sendense_api.deps import Authenticate
from sendense_api.problems import problem, problem_for
from sendense_api.wire import API_PREFIX, CATALOG_HEADER, VERSION_HEADER

if TYPE_CHECKING:
    from engine.runtime import Engine


#: modules under sendense_api.routes, each with a ``router``, in OpenAPI order
ROUTERS: list[str] = [
    "system",
    "repositories",
    "jobs",
    "events",
    "chains",
    "backups",
    "copies",
    "verification",
    "policies",
    "locks",
    "restores",
    "exports",
    "notifications",
]


def create_app(engine: Engine, *, authenticate: Authenticate) -> FastAPI:
    """The API over ``engine`` (opened and started by its owner, the daemon);
    ``authenticate`` turns each request into a Caller or refuses it."""
    app = FastAPI(
        title="Sendense",
        version=__version__,
        description="Backup repositories, QCOW2 chains, copies, locks and restores.",
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url=f"{API_PREFIX}/docs",
        redoc_url=None,
    )
    app.state.engine = engine
    app.state.authenticate = authenticate
    # set when the daemon stops: live streams end instead of holding the shutdown
    app.state.stopping = threading.Event()
    app.add_middleware(AuditChanges, engine=engine)
    app.add_middleware(
        SaysWhoAnswers, version=__version__, catalog=engine.settings.catalog_identity
    )
    for name in ROUTERS:
        module = importlib.import_module(f"sendense_api.routes.{name}")
        app.include_router(module.router, prefix=API_PREFIX)
    # at the root, where Prometheus scrapes by default
    app.include_router(importlib.import_module("sendense_api.routes.metrics").router)

    @app.exception_handler(SendenseError)
    def sendense_error(_request: Request, error: SendenseError) -> JSONResponse:
        return problem_for(error)

    @app.exception_handler(HTTPException)
    def http_error(_request: Request, error: HTTPException) -> JSONResponse:
        response = problem(error.status_code, str(error.detail))
        for key, value in (error.headers or {}).items():
            response.headers[key] = value
        return response

    @app.exception_handler(RequestValidationError)
    def bad_request(_request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0] if error.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
        return problem(
            422,
            f"{where or 'the request'}: {first.get('msg', 'is not valid')}",
            hint="see /api/v1/docs for what this call takes",
        )

    return app


class SaysWhoAnswers:
    """Adds VERSION_HEADER and CATALOG_HEADER to every HTTP answer (plain ASGI: no
    request is buffered, a live stream stays live). A request that carries either
    header and names another version or catalog is refused with 412 before any
    route runs: a CLI handing its job to the daemon (sendense_tui.daemon_client)
    never has it queued by a daemon of another catalog or an older version."""

    def __init__(self, app: ASGIApp, *, version: str, catalog: str) -> None:
        self.app = app
        self.version = version
        self.catalog = catalog

    def _mismatch(self, scope: Scope) -> str | None:
        asked = Headers(scope=scope)
        version, catalog = asked.get(VERSION_HEADER), asked.get(CATALOG_HEADER)
        if version is not None and version != self.version:
            return f"this daemon runs sendense {self.version}, not {version}"
        if catalog is not None and catalog != self.catalog:
            return "this daemon serves another catalog"
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_saying_who(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers[VERSION_HEADER] = self.version
                headers[CATALOG_HEADER] = self.catalog
            await send(message)

        mismatch = self._mismatch(scope)
        if mismatch is not None:
            refusal = problem(412, mismatch, hint="ask the daemon of that catalog and version")
            await refusal(scope, receive, send_saying_who)
            return
        await self.app(scope, receive, send_saying_who)
