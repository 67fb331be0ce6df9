"""Jobs: what runs now (live progress) and what finished, with cancel/pause/resume/retry."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.message import Message
from textual.widgets import DataTable, Static

from engine.catalog.jobs import FINAL_STATES
from engine.catalog.models import Job
from sendense_tui.actions import bindings_for
from sendense_tui.format import (
    as_utc,
    human_bytes,
    human_duration,
    human_rate,
    progress_bar,
    short_time,
    state_text,
)
from sendense_tui.messages import EngineEvent, JobProgress
from sendense_tui.screens.base import SendenseScreen
from sendense_tui.styles import STYLES_DIR
from sendense_tui.widgets.confirm import ConfirmDialog
from sendense_tui.widgets.tables import FlexTable, cursor_key, sync_rows

ACTIVE_COLUMNS = ("id", "job", "state", "progress", "bytes", "rate", "eta")
FINISHED_COLUMNS = ("id", "job", "outcome", "took", "finished")


@dataclass
class JobsData:
    now: datetime
    active: list[Job]
    finished: list[Job]


def _bytes(job: Job | JobProgress) -> str:
    if job.bytes_total:
        return f"{human_bytes(job.bytes_done)}/{human_bytes(job.bytes_total)}"
    return human_bytes(job.bytes_done) if job.bytes_done else "-"


class JobsScreen(SendenseScreen):
    MODE = "jobs"
    CSS_PATH = STYLES_DIR / "jobs.tcss"
    BINDINGS = bindings_for("jobs")

    def __init__(self) -> None:
        super().__init__()
        self._jobs: dict[str, Job] = {}

    def compose_body(self) -> ComposeResult:
        yield Static("Running and queued", classes="title")
        yield FlexTable(
            [
                ("id", "ID", 3),
                ("job", "Job", None),
                ("state", "State", 9),
                ("progress", "Progress", 13),
                ("bytes", "Bytes", 9),
                ("rate", "Rate", 6),
                ("eta", "ETA", 5),
            ],
            id="active",
        )
        yield Static("Finished", classes="title")
        yield FlexTable(
            [
                ("id", "ID", 3),
                ("job", "Job", None),
                ("outcome", "Outcome", 9),
                ("took", "Took", 6),
                ("finished", "Finished", 11),
            ],
            id="finished",
        )

    def on_mount(self) -> None:
        active = self.query_one("#active", DataTable)
        active.focus()

    # -- data --------------------------------------------------------------------

    def fetch(self) -> JobsData:
        store = self.engine.job_store
        active = store.list(states=("running", "queued", "paused"), limit=500)
        order = {"running": 0, "paused": 1, "queued": 2}
        active.sort(key=lambda j: (order.get(j.state, 3), j.priority, j.id))
        finished = store.list(states=FINAL_STATES, limit=100)
        return JobsData(now=self.sendense.clock.now(), active=active, finished=finished)

    def apply(self, data: JobsData) -> None:
        self._jobs = {str(j.id): j for j in [*data.active, *data.finished]}
        sync_rows(
            self.query_one("#active", DataTable),
            [(str(j.id), self._active_cells(j)) for j in data.active],
            ACTIVE_COLUMNS,
        )
        sync_rows(
            self.query_one("#finished", DataTable),
            [(str(j.id), self._finished_cells(j, data.now)) for j in data.finished],
            FINISHED_COLUMNS,
        )

    @staticmethod
    def _active_cells(job: Job) -> tuple[Any, ...]:
        running = job.state == "running"
        return (
            str(job.id),
            job.title,
            state_text(job.state),
            progress_bar(job.bytes_done, job.bytes_total, width=8),
            _bytes(job),
            human_rate(job.rate) if running else "-",
            human_duration(job.eta_seconds) if running and job.eta_seconds is not None else "-",
        )

    @staticmethod
    def _finished_cells(job: Job, now: datetime) -> tuple[Any, ...]:
        started, finished = as_utc(job.started_at), as_utc(job.finished_at)
        took = (finished - started).total_seconds() if started and finished else None
        outcome = state_text(job.state)
        return (
            str(job.id),
            Text(job.title + (f" — {job.error}" if job.error else ""), overflow="ellipsis"),
            outcome,
            human_duration(took),
            short_time(finished, now),
        )

    def engine_message(self, message: Message) -> None:
        if isinstance(message, JobProgress):
            self._progress(message)
        elif isinstance(message, EngineEvent) and message.event.kind.startswith("job."):
            self.refresh_now()

    def _progress(self, message: JobProgress) -> None:
        """Live bytes/rate/ETA between refreshes, straight from the engine event."""
        key = str(message.job_id)
        table = self.query_one("#active", DataTable)
        if key not in {k.value for k in table.rows}:
            self.refresh_now()
            return
        cells = {
            "progress": progress_bar(message.bytes_done, message.bytes_total, width=8),
            "bytes": _bytes(message),
            "rate": human_rate(message.rate),
            "eta": human_duration(message.eta_seconds) if message.eta_seconds is not None else "-",
        }
        for column, value in cells.items():
            table.update_cell(key, column, value)

    # -- actions -------------------------------------------------------------------

    def _selected(self) -> Job | None:
        focused = self.focused
        tables = [self.query_one("#active", DataTable), self.query_one("#finished", DataTable)]
        if isinstance(focused, DataTable) and focused in tables:
            tables.remove(focused)
            tables.insert(0, focused)
        for table in tables:
            key = cursor_key(table)
            if key is not None:
                return self._jobs.get(key)
            if table is focused:
                break
        self.notify("Select a job first (j/k or arrows).", severity="warning")
        return None

    def action_cursor_down(self) -> None:
        table = self.focused if isinstance(self.focused, DataTable) else None
        if table is not None:
            table.action_cursor_down()

    def action_cursor_up(self) -> None:
        table = self.focused if isinstance(self.focused, DataTable) else None
        if table is not None:
            table.action_cursor_up()

    def action_cancel_job(self) -> None:
        job = self._selected()
        if job is None:
            return
        if job.state in FINAL_STATES:
            self.notify(f"Job {job.id} already {job.state}; nothing to cancel.")
            return
        consequence = (
            "The running work stops at its next check and the job ends as cancelled."
            if job.state == "running"
            else "The job leaves the queue and will not run."
        )

        def answered(yes: bool | None) -> None:
            if yes:
                self.run_engine(
                    lambda: self.engine.jobs.cancel(job.id, actor="console"),
                    after=lambda _: self.notify(f"Cancel requested for job {job.id}."),
                    description=f"cancel job {job.id}",
                )

        self.app.push_screen(
            ConfirmDialog(
                f"Cancel job {job.id} “{job.title}”?", consequence, yes_label="Cancel job"
            ),
            answered,
        )

    def _steer(self, verb: str, call: Any, job: Job | None) -> None:
        if job is None:
            return
        self.run_engine(
            lambda: call(job.id, actor="console"),
            after=lambda _: self.notify(f"Job {job.id}: {verb}."),
            description=f"{verb} job {job.id}",
        )

    def action_pause_job(self) -> None:
        self._steer("pause requested", self.engine.jobs.pause, self._selected())

    def action_resume_job(self) -> None:
        self._steer("resumed", self.engine.jobs.resume, self._selected())

    def action_retry_job(self) -> None:
        self._steer("queued again", self.engine.jobs.retry, self._selected())
