"""What the resource routes share: answers in the CLI's shapes, the 202 answer for a
queued job, and request bodies that refuse fields they do not know (a typo is a 422,
not a setting silently ignored)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any

from fastapi import Query
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict

from engine import paging
from engine.paging import CURSOR_MAX, MORE_MAX, Page
from engine.shapes import job_dict
from sendense_api.wire import API_PREFIX, MORE, NEXT_CURSOR


class ShapedRoute(APIRoute):
    """A route whose answer is an ``engine.shapes`` dict sent as it is: no response
    model is made from the return annotation, so FastAPI's ``jsonable_encoder`` writes
    it, and times read as the CLI's ``--json`` prints them (``isoformat()``:
    ``+00:00``, where a pydantic model would write ``Z``)."""

    def __init__(self, path: str, endpoint: Any, **kwargs: Any) -> None:
        kwargs["response_model"] = None
        super().__init__(path, endpoint, **kwargs)


class Body(BaseModel):
    """A request body: unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")


def job_url(job_id: int) -> str:
    return f"{API_PREFIX}/jobs/{job_id}"


def accepted(job: Any, **extra: Any) -> JSONResponse:
    """202 with the queued job and where to follow it (``Location`` too)."""
    url = job_url(job.id)
    body = {"job": job_dict(job), "url": url, **extra}
    return JSONResponse(jsonable_encoder(body), status_code=202, headers={"Location": url})


# -- pages (keyset: engine.paging) ----------------------------------------------------

#: the largest page one request reads (the CLI's --limit bound)
PAGE_MAX = 100_000

Limit = Annotated[int, Query(ge=1, le=PAGE_MAX, description="rows in the page")]
After = Annotated[
    str | None,
    Query(
        max_length=CURSOR_MAX,
        description=f"the page after this cursor (the previous page's {NEXT_CURSOR} header)",
    ),
]
#: how a listing route documents its paging headers
PAGED: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "one page, in the listing's order",
        "headers": {
            NEXT_CURSOR: {
                "description": "pass it as ``after`` for the next page; absent on the last",
                "schema": {"type": "string"},
            },
            MORE: {
                "description": "how many rows follow this page (with X-Next-Cursor): a "
                f"number, or {MORE_MAX}+ when more than {MORE_MAX:,} follow (not counted "
                "further: a page costs what it shows)",
                "schema": {"type": "string", "pattern": "^[0-9]+\\+?$"},
            },
        },
    }
}


def _shape_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return jsonable_encoder(value)


class ShapedJSON(JSONResponse):
    """``engine.shapes`` values as JSON, written by the json module in one pass: the
    bytes JSONResponse writes after FastAPI's ``jsonable_encoder`` (times as
    ``isoformat()``, anything else as that encoder says), without that encoder first
    walking every value in Python (a page of 50 chains holds 5,000 points: ~1 s)."""

    def render(self, content: Any) -> bytes:
        return json.dumps(
            content,
            ensure_ascii=False,
            allow_nan=False,
            indent=None,
            separators=(",", ":"),
            default=_shape_default,
        ).encode("utf-8")


def page_response(page: Page[Any], rows: list[dict[str, Any]]) -> ShapedJSON:
    """A page's rows (the list the CLI's ``--json`` prints) with the next page's cursor
    and the count of what follows in the headers."""
    headers: dict[str, str] = {}
    if page.next_cursor is not None:
        headers[NEXT_CURSOR] = page.next_cursor
        headers[MORE] = str(page.more) if page.more_counted else f"{paging.MORE_MAX}+"
    return ShapedJSON(rows, headers=headers)
