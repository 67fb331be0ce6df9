"""A small publish/subscribe bus for engine events, recorded in the audit log.

Services publish plain Event objects. Subscribers (the console, the CLI, tests)
are called on the publishing thread and must be quick: the console turns each
event into a Textual message and returns. Progress events are frequent and
are not written to the audit log; everything else is.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from engine.catalog.audit import AuditStore
from engine.clock import SYSTEM_CLOCK, Clock
from engine.errors import CatalogUnavailable, SendenseError

log = logging.getLogger(__name__)

Subscriber = Callable[["Event"], None]


@dataclass(frozen=True)
class Event:
    #: dotted type, e.g. "job.progress", "capacity.threshold_crossed"
    kind: str
    message: str
    level: str = "info"
    source: str = "engine"
    at: datetime | None = None
    repository_id: int | None = None
    job_id: int | None = None
    actor: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    #: False for chatty events (progress) that do not belong in the audit log
    record: bool = True


class EventBus:
    def __init__(self, audit: AuditStore | None = None, clock: Clock = SYSTEM_CLOCK) -> None:
        self._audit = audit
        self._clock = clock
        self._subscribers: list[tuple[Subscriber, tuple[str, ...] | None]] = []
        self._lock = threading.Lock()

    def subscribe(
        self, callback: Subscriber, kinds: tuple[str, ...] | None = None
    ) -> Callable[[], None]:
        """Call ``callback`` for every event (or those whose kind starts with one of
        ``kinds``). Returns a function that unsubscribes."""
        entry = (callback, kinds)
        with self._lock:
            self._subscribers.append(entry)

        def unsubscribe() -> None:
            with self._lock:
                if entry in self._subscribers:
                    self._subscribers.remove(entry)

        return unsubscribe

    def emit(self, source: str, kind: str, message: str, **fields: Any) -> Event:
        """Publish an event from ``source``; ``fields`` are the other Event fields
        (level, repository_id, job_id, actor, data, record)."""
        return self.publish(Event(kind=kind, message=message, source=source, **fields))

    def publish(self, event: Event) -> Event:
        if event.at is None:
            event = _with_time(event, self._clock.now())
        if event.record and self._audit is not None:
            try:
                self._audit.append(
                    at=event.at or self._clock.now(),
                    level=event.level,
                    source=event.source,
                    kind=event.kind,
                    message=event.message,
                    repository_id=event.repository_id,
                    job_id=event.job_id,
                    actor=event.actor,
                    data=event.data,
                )
            except CatalogUnavailable:
                pass  # must not stop the work; the catalog logs its outage once
            except SendenseError as exc:
                log.warning("could not write event %s to the audit log: %s", event.kind, exc)
            except Exception:
                log.exception("could not write event %s to the audit log", event.kind)
        with self._lock:
            subscribers = list(self._subscribers)
        for callback, kinds in subscribers:
            if kinds is not None and not event.kind.startswith(kinds):
                continue
            try:
                callback(event)
            except Exception:
                log.exception("event subscriber %r failed on %s", callback, event.kind)
        return event


def _with_time(event: Event, at: datetime) -> Event:
    from dataclasses import replace

    return replace(event, at=at)
