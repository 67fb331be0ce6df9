"""Textual messages made from engine events.

Engine events arrive on engine threads. The app's bus subscriber turns each
into one of these messages and posts it (``post_message`` is thread-safe);
handlers run on the UI thread, so no widget is touched from an engine thread.
"""

from __future__ import annotations

from textual.message import Message

from engine.events import Event


class EngineEvent(Message):
    """Any recorded engine event (state changes, warnings)."""

    def __init__(self, event: Event) -> None:
        super().__init__()
        self.event = event


class JobProgress(Message):
    """A ``job.progress`` event. A burst collapses into the newest per job."""

    def __init__(self, event: Event) -> None:
        super().__init__()
        self.event = event
        self.job_id = event.job_id
        data = event.data
        self.bytes_done = int(data.get("bytes_done", 0))
        self.bytes_total = int(data.get("bytes_total", 0))
        self.rate = float(data.get("rate") or 0.0)
        self.eta_seconds: float | None = data.get("eta_seconds")

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, JobProgress) and message.job_id == self.job_id


def message_for(event: Event) -> Message:
    if event.kind == "job.progress":
        return JobProgress(event)
    return EngineEvent(event)
