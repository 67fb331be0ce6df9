"""What the resource routes share: answers in the CLI's shapes, the 202 answer for a
queued job, and request bodies that refuse fields they do not know (a typo is a 422,
not a setting silently ignored)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Query, Response
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict

from engine import paging
from engine.paging import CURSOR_MAX, MORE_MAX, Page
from engine.shapes import job_dict
from sendense_api.app import API_PREFIX


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
NEXT_CURSOR = "X-Next-Cursor"
MORE = "X-More"

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


def send_page(response: Response, page: Page[Any]) -> None:
    """Put the next page's cursor and the count of what follows in the headers (the
    body stays the list the CLI's ``--json`` prints)."""
    if page.next_cursor is not None:
        response.headers[NEXT_CURSOR] = page.next_cursor
        response.headers[MORE] = str(page.more) if page.more_counted else f"{paging.MORE_MAX}+"
