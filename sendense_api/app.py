"""The FastAPI application over one engine: routers, errors as problem details."""

from __future__ import annotations

import importlib
import threading
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from engine import __version__
from engine.errors import SendenseError
from sendense_api.auth import AuditChanges
from sendense_api.deps import Authenticate
from sendense_api.problems import problem, problem_for

if TYPE_CHECKING:
    from engine.runtime import Engine

API_PREFIX = "/api/v1"

#: modules under sendense_api.routes, each with a ``router``, in OpenAPI order
ROUTERS: list[str] = [
    "system",
    "repositories",
    "jobs",
    "events",
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
    for name in ROUTERS:
        module = importlib.import_module(f"sendense_api.routes.{name}")
        app.include_router(module.router, prefix=API_PREFIX)

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
