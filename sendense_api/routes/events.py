"""``/api/v1/events``: the audit log with the filters of ``sendense events``, and
every engine event live as server-sent events (``/events/stream``)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from engine.catalog.audit import LEVELS
from engine.events import Event
from engine.names import ID_MAX
from engine.shapes import event_dict, live_event_dict
from sendense_api import sse
from sendense_api.deps import EngineDep, Reader

router = APIRouter(prefix="/events", tags=["events"])

Level = Literal["debug", "info", "warning", "error", "critical"]


@router.get("")
def list_events(
    engine: EngineDep,
    _caller: Reader,
    level: Annotated[Level, Query(description="minimum level")] = "info",
    source: Annotated[str | None, Query(max_length=64)] = None,
    grep: Annotated[str | None, Query(max_length=256, description="in message or kind")] = None,
    after_id: Annotated[int | None, Query(ge=0, le=ID_MAX)] = None,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 50,
) -> list[dict[str, Any]]:
    """The newest ``limit`` entries, oldest first (as ``sendense events --json``);
    ``after_id`` gives only the ones after an entry already seen."""
    entries = engine.audit.query(
        min_level=level, source=source, text=grep, after_id=after_id, limit=limit
    )
    return [event_dict(entry) for entry in reversed(entries)]


@router.get("/stream", response_class=StreamingResponse)
async def stream_events(
    request: Request,
    engine: EngineDep,
    _caller: Reader,
    level: Annotated[Level, Query(description="minimum level")] = "info",
    source: Annotated[str | None, Query(max_length=64)] = None,
    kind: Annotated[str | None, Query(max_length=96, description="kind prefix")] = None,
) -> Any:
    """Every event this daemon's engine publishes from now on, as server-sent events
    (``event: <kind>``, JSON data), progress included; ``event: lagged`` says how
    many were dropped for a client that read too slowly."""
    wanted = LEVELS[LEVELS.index(level) :]

    def accept(event: Event) -> bool:
        return (
            event.level in wanted
            and (source is None or event.source == source)
            and (kind is None or event.kind.startswith(kind))
        )

    stopping = request.app.state.stopping

    async def events() -> AsyncIterator[str]:
        bridge = sse.BusBridge(engine.bus, accept)
        try:
            yield ": connected\n\n"
            quiet_since = time.monotonic()
            while not stopping.is_set():
                event = await bridge.next(sse.TICK_SECONDS)
                if bridge.dropped:
                    yield sse.message("lagged", {"dropped": bridge.dropped})
                    bridge.dropped = 0
                if event is not None:
                    yield sse.message(event.kind, live_event_dict(event))
                    quiet_since = time.monotonic()
                elif time.monotonic() - quiet_since >= sse.KEEPALIVE_SECONDS:
                    yield ": keepalive\n\n"
                    quiet_since = time.monotonic()
        finally:
            bridge.close()

    return StreamingResponse(events(), media_type=sse.MEDIA_TYPE, headers=sse.HEADERS)
