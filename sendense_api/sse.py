"""Server-sent events (text/event-stream) from engine events.

The engine's bus calls subscribers on the publishing thread (a job's worker, the
capacity monitor…); ``BusBridge`` hands each event to the event loop with
``loop.call_soon_threadsafe`` into a bounded queue, so a slow client never slows
the engine: when its queue is full, events are dropped and the client is told
how many (an ``event: lagged`` message).
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

from engine.events import Event, EventBus

#: a comment line this often keeps proxies from closing an idle stream
KEEPALIVE_SECONDS = 15.0
#: how often a stream looks whether the daemon is stopping
TICK_SECONDS = 0.5
QUEUE_SIZE = 1000
MEDIA_TYPE = "text/event-stream"
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def message(event: str, data: Any, *, event_id: int | None = None) -> str:
    """One SSE message; the JSON is on one line (a newline would end the field)."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, default=_default)}\n\n"


class BusBridge:
    """Events of ``bus`` that ``accept``, as an async iterator on the running loop."""

    def __init__(self, bus: EventBus, accept: Callable[[Event], bool]) -> None:
        self.bus = bus
        self.accept = accept
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=QUEUE_SIZE)
        self.dropped = 0
        self._lock = threading.Lock()
        self._unsubscribe = bus.subscribe(self._on_event)

    def _on_event(self, event: Event) -> None:  # on the publishing thread
        if self.accept(event):
            self.loop.call_soon_threadsafe(self._put, event)

    def _put(self, event: Event) -> None:  # on the loop
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1

    def close(self) -> None:
        self._unsubscribe()

    async def next(self, timeout: float) -> Event | None:
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            return None
