"""``/api/v1/events``: the audit log with the filters of ``sendense events``, and
events live as server-sent events (``/events/stream``)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from engine.events import Event
from engine.names import ID_MAX
from engine.shapes import event_dict, live_event_dict
from engine.views import LEVELS
from sendense_api import sse
from sendense_api.deps import EngineDep, Reader
from sendense_api.routes._common import PAGED, After, Limit, ShapedJSON, ShapedRoute, page_response

router = APIRouter(prefix="/events", tags=["events"], route_class=ShapedRoute)

#: most audit entries one poll of the live stream sends
POLL_LIMIT = 1000

Level = Literal["debug", "info", "warning", "error", "critical"]


@router.get("", responses=PAGED)
def list_events(
    engine: EngineDep,
    _caller: Reader,
    level: Annotated[Level, Query(description="minimum level")] = "info",
    source: Annotated[str | None, Query(max_length=64)] = None,
    grep: Annotated[str | None, Query(max_length=256, description="in message or kind")] = None,
    job: Annotated[int | None, Query(ge=1, le=ID_MAX, description="only this job's")] = None,
    after_id: Annotated[int | None, Query(ge=0, le=ID_MAX)] = None,
    limit: Limit = 50,
    after: After = None,
) -> Response:
    """The newest ``limit`` entries, oldest first (as ``sendense events --json``);
    ``after_id`` gives only the ones after an entry already seen; ``after`` (the
    ``X-Next-Cursor`` of a page) the page of older entries before that page."""
    if after_id is not None:
        entries = engine.audit.query(
            min_level=level, source=source, text=grep, job_id=job, after_id=after_id, limit=limit
        )
        return ShapedJSON([event_dict(entry) for entry in reversed(entries)])
    page = engine.listings.events(
        min_level=level, source=source, text=grep, job_id=job, after=after, limit=limit
    )
    return page_response(page, [event_dict(entry) for entry in reversed(page.items)])


@router.get("/stream", response_class=StreamingResponse)
async def stream_events(
    request: Request,
    engine: EngineDep,
    _caller: Reader,
    level: Annotated[Level, Query(description="minimum level")] = "info",
    source: Annotated[str | None, Query(max_length=64)] = None,
    kind: Annotated[str | None, Query(max_length=96, description="kind prefix")] = None,
    last_event_id: Annotated[int | None, Header(ge=0, le=ID_MAX)] = None,
) -> Any:
    """Events as server-sent events (``event: <kind>``, JSON data) from now on, or
    after ``Last-Event-ID`` (a reconnecting client misses nothing).

    What the audit log records comes from the log, with its id, whichever process
    published it (the daemon, a console, a CLI command); progress, which is never
    recorded, comes live from this daemon's engine (no id). ``event: lagged`` says
    how many progress events were dropped for a client that read too slowly."""
    wanted = LEVELS[LEVELS.index(level) :]

    def accept(event: Event) -> bool:
        return (
            not event.record
            and event.level in wanted
            and (source is None or event.source == source)
            and (kind is None or event.kind.startswith(kind))
        )

    def recorded_after(after: int) -> list[Any]:
        entries = engine.audit.query(
            min_level=level, source=source, after_id=after, limit=POLL_LIMIT
        )
        return [e for e in reversed(entries) if kind is None or e.kind.startswith(kind)]

    def newest_id() -> int:
        newest = engine.audit.query(limit=1)
        return newest[0].id if newest else 0

    last = last_event_id if last_event_id is not None else await run_in_threadpool(newest_id)
    stopping = request.app.state.stopping

    async def events() -> AsyncIterator[str]:
        nonlocal last
        bridge = sse.BusBridge(engine.bus, accept)
        try:
            yield ": connected\n\n"
            quiet_since = polled = time.monotonic()
            while not stopping.is_set():
                event = await bridge.next(sse.TICK_SECONDS)
                sent = False
                if bridge.dropped:
                    yield sse.message("lagged", {"dropped": bridge.dropped})
                    bridge.dropped = 0
                if event is not None:
                    yield sse.message(event.kind, live_event_dict(event))
                    sent = True
                if time.monotonic() - polled >= sse.TICK_SECONDS:
                    polled = time.monotonic()
                    for entry in await run_in_threadpool(recorded_after, last):
                        yield sse.message(entry.kind, event_dict(entry), event_id=entry.id)
                        last, sent = entry.id, True
                if sent:
                    quiet_since = time.monotonic()
                elif time.monotonic() - quiet_since >= sse.KEEPALIVE_SECONDS:
                    yield ": keepalive\n\n"
                    quiet_since = time.monotonic()
        finally:
            bridge.close()

    return StreamingResponse(events(), media_type=sse.MEDIA_TYPE, headers=sse.HEADERS)
