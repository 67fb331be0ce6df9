"""Errors as RFC 9457 problem details: the CLI's sentence and hint, as JSON.

``{"type": "about:blank", "title": "Not Found", "status": 404, "detail": "<the
sentence>", "hint": "<what to do>"}`` with ``Content-Type:
application/problem+json``. The status follows the error's class the way the CLI's
exit code does (engine.errors): a missing object 404, bad input 422, a conflict
with running work 409, the catalog down 503.
"""

from __future__ import annotations

from http import HTTPStatus

from fastapi.responses import JSONResponse

from engine.errors import CatalogUnavailable, JobError, NotFoundError, NotPermitted, SendenseError
from engine.services.api_tokens import TokenRefused
from engine.writers import DiskBusy

PROBLEM_JSON = "application/problem+json"


def status_for(error: SendenseError) -> int:
    if isinstance(error, TokenRefused):
        return 401
    if isinstance(error, NotPermitted):
        return 403
    if isinstance(error, NotFoundError):
        return 404
    if isinstance(error, CatalogUnavailable):
        return 503
    if isinstance(error, JobError | DiskBusy):
        return 409
    return 422


def problem(status: int, detail: str, *, hint: str | None = None) -> JSONResponse:
    body: dict[str, object] = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }
    if hint:
        body["hint"] = hint
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON)


#: action key -> the hint the API gives for it (its own syntax: a request field)
API_ACTIONS: dict[str, str] = {
    "confirm_lock": 'send it again with "confirm_lock": true to confirm',
    # tokens are made on the server, by its administrator: the API cannot make one
    "create_api_token": "create one with `sendense api token create NAME --role read`",
}


def api_hint(error: SendenseError) -> str | None:
    """An engine action the API can name in its own terms, else the engine's hint."""
    action = error.action
    if action is not None and action.key in API_ACTIONS:
        return API_ACTIONS[action.key]
    return error.hint


def problem_for(error: SendenseError) -> JSONResponse:
    response = problem(status_for(error), error.message, hint=api_hint(error))
    if response.status_code == 401:
        # RFC 6750: a request without a (valid) token is told which scheme to use
        response.headers["WWW-Authenticate"] = "Bearer"
    return response
