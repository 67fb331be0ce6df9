"""Jobs: what runs now (live progress) and what finished, with cancel/pause/resume/retry."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from rich.text import Text
from textual.app import ComposeResult
from textual.message import Message
from textual.widgets import DataTable, Static

from engine.views import FINAL_STATES, Job
from sendense_tui.actions import bindings_for
from sendense_tui.details import job_detail
from sendense_tui.format import (
    as_utc,
    human_bytes,
    human_duration,
    human_rate,
    printable,
    progress_bar,
    short_time,
    state_text,
)
from sendense_tui.messages import EngineEvent, JobProgress
from sendense_tui.screens.base import SendenseScreen
from sendense_tui.styles import STYLES_DIR
from sendense_tui.widgets.confirm import ConfirmDialog
from sendense_tui.widgets.gauge import sparkline
from sendense_tui.widgets.tables import FlexTable, cursor_key, sync_rows

FINISHED_COLUMNS = ("id", "job", "outcome", "took", "finished")
#: throughput history per job: one sample per second, the newest kept
RATE_SAMPLES = 30
SAMPLE_SECONDS = 1.0
#: the sparkline column shows the newest samples, one per cell...
SPARK_CELLS = 12
#: ...and only when the table is at least this wide (the job title keeps its room)
SPARK_MIN_WIDTH = 100


@dataclass
class JobsData:
    now: datetime
    active: list[Job]
    finished: list[Job]


class RateHistory:
    """A job's recent throughput: one sample per ``step`` seconds (a burst of
    progress within one step averages into one sample), the newest ``size`` kept.
    Times are engine times (event stamps, the refresh's clock), never wall-clock
    time read here, so a fixed clock draws the same sparkline every time."""

    def __init__(self, size: int = RATE_SAMPLES, step: float = SAMPLE_SECONDS) -> None:
        self.step = step
        self._rates: deque[float] = deque(maxlen=size)
        self._bucket: float | None = None  # start of the newest sample's step
        self._count = 0  # readings averaged into the newest sample

    def add(self, at: datetime, rate: float) -> None:
        when = at.timestamp()
        if self._bucket is not None and self._bucket <= when < self._bucket + self.step:
            self._count += 1
            self._rates[-1] += (rate - self._rates[-1]) / self._count
            return
        if self._bucket is not None and when < self._bucket:
            return  # late and out of order: the newer sample already stands
        self._bucket, self._count = when, 1
        self._rates.append(rate)

    @property
    def rates(self) -> list[float]:
        return list(self._rates)

    def __len__(self) -> int:
        return len(self._rates)

    def spark(self, cells: int = SPARK_CELLS) -> Text:
        """The newest ``cells`` samples, right-aligned (newest at the right edge),
        scaled from 0 to the fastest sample in the whole history."""
        rates = self.rates
        if not rates:
            return Text(" " * cells)
        shown: list[float | None] = [None] * max(0, cells - len(rates)) + list(rates[-cells:])
        return sparkline(shown, low=0.0, high=max(rates))


class ActiveTable(FlexTable):
    """The running/queued table: the sparkline column shows only when wide enough."""

    def __init__(
        self,
        columns: Sequence[tuple[str, str, int | None]],
        optional: dict[str, int],
        fill: Callable[[str, str], Any],
        **kwargs: Any,
    ) -> None:
        super().__init__(columns, **kwargs)
        self.all_specs = list(columns)
        #: column key -> the narrowest table width that shows it
        self.optional = optional
        #: (row key, column key) -> the cell for a column coming back into view
        self.fill = fill

    @property
    def column_keys(self) -> list[str]:
        return [key for key, _, _ in self.column_specs]

    def _layout(self, total: int) -> None:
        specs = [s for s in self.all_specs if total >= self.optional.get(s[0], 0)]
        if specs == self.column_specs:
            super()._layout(total)
            return
        old = [column.key.value for column in self.ordered_columns]
        # every row is added with its key (a job id): never None
        rows = [
            (cast(str, key.value), dict(zip(old, self.get_row(key), strict=False)))
            for key in self.rows
        ]
        keep = cursor_key(self)
        self.column_specs = specs
        self._flex_width = self.flex_width(total)
        with self.app.batch_update():
            self.clear(columns=True)
            for key, label, fixed in specs:
                self.add_column(self.label_of(key, label), key=key, width=fixed or self._flex_width)
            for row, cells in rows:
                values = [
                    cells[key] if key in cells else self.fill(row, key) for key, _, _ in specs
                ]
                self.add_row(*values, key=row)
            if keep is not None:
                self.move_cursor(row=self.get_row_index(keep), animate=False)


def _bytes(job: Job | JobProgress) -> str:
    if job.bytes_total:
        return f"{human_bytes(job.bytes_done)}/{human_bytes(job.bytes_total)}"
    return human_bytes(job.bytes_done) if job.bytes_done else "-"


class JobsScreen(SendenseScreen):
    MODE = "jobs"
    #: read again only when the catalog changed (or REREAD_SECONDS passed), not
    #: every second: an idle console stays near no CPU
    WATCH_CHANGES = True
    CSS_PATH = STYLES_DIR / "jobs.tcss"
    BINDINGS = bindings_for("jobs")

    def __init__(self) -> None:
        super().__init__()
        self._jobs: dict[str, Job] = {}
        #: job id -> its recent throughput (running and paused jobs only)
        self.rates: dict[str, RateHistory] = {}

    def compose_body(self) -> ComposeResult:
        yield Static("Running and queued", classes="title")
        yield ActiveTable(
            [
                ("id", "ID", 3),
                ("job", "Job", None),
                ("state", "State", 9),
                ("progress", "Progress", 13),
                ("bytes", "Bytes", 9),
                ("rate", "Rate", 6),
                ("spark", "Throughput", SPARK_CELLS),
                ("eta", "ETA", 5),
            ],
            optional={"spark": SPARK_MIN_WIDTH},
            fill=self._fill,
            id="active",
            list_name="running and queued",
        )
        yield Static("Finished", classes="title")
        yield FlexTable(
            [
                ("id", "ID", 3),
                ("job", "Job", None),
                ("outcome", "Outcome", 11),
                ("took", "Took", 6),
                ("finished", "Finished", 11),
            ],
            id="finished",
            list_name="finished",
        )

    def on_mount(self) -> None:
        active = self.query_one("#active", DataTable)
        active.focus()

    # -- data --------------------------------------------------------------------

    def fetch(self) -> JobsData:
        store = self.engine.jobs
        active = store.list(states=("running", "queued", "paused"), limit=500)
        order = {"running": 0, "paused": 1, "queued": 2}
        active.sort(key=lambda j: (order.get(j.state, 3), j.priority, j.id))
        finished = store.list(states=FINAL_STATES, limit=100)
        return JobsData(now=self.sendense.clock.now(), active=active, finished=finished)

    def apply(self, data: JobsData) -> None:
        self._jobs = {str(j.id): j for j in [*data.active, *data.finished]}
        self._sample(data)
        table = self.query_one("#active", ActiveTable)
        columns = table.column_keys
        sync_rows(
            table,
            [(str(j.id), self._pick(self._active_cells(j), columns)) for j in data.active],
            columns,
        )
        sync_rows(
            self.query_one("#finished", DataTable),
            [(str(j.id), self._finished_cells(j, data.now)) for j in data.finished],
            FINISHED_COLUMNS,
        )

    def _sample(self, data: JobsData) -> None:
        """One throughput sample per running job from the refreshed rows; a job seen
        for the first time starts from its average since it started, so its line
        has a past at once (same rows, same clock: the same line every time)."""
        live = {str(j.id): j for j in data.active if j.state in ("running", "paused")}
        for key in [k for k in self.rates if k not in live]:
            del self.rates[key]
        for key, job in live.items():
            if job.state != "running":
                continue
            history = self.rates.get(key)
            if history is None:
                history = self.rates[key] = RateHistory()
                started = as_utc(job.started_at)
                elapsed = (data.now - started).total_seconds() if started else 0.0
                if elapsed > SAMPLE_SECONDS and job.bytes_done:
                    before = data.now - timedelta(seconds=SAMPLE_SECONDS)
                    history.add(before, job.bytes_done / elapsed)
            history.add(data.now, job.rate)

    def _spark(self, key: str) -> Text:
        history = self.rates.get(key)
        return history.spark() if history is not None else Text(" " * SPARK_CELLS)

    def _fill(self, row: str, column: str) -> Any:
        return self._spark(row) if column == "spark" else ""

    @staticmethod
    def _pick(cells: dict[str, Any], columns: Sequence[str]) -> tuple[Any, ...]:
        return tuple(cells[column] for column in columns)

    def _active_cells(self, job: Job) -> dict[str, Any]:
        running = job.state == "running"
        return {
            "id": str(job.id),
            "job": job.title,
            "state": state_text(job.state),
            "progress": progress_bar(job.bytes_done, job.bytes_total, width=8),
            "bytes": _bytes(job),
            "rate": human_rate(job.rate) if running else "-",
            "spark": self._spark(str(job.id)),
            "eta": (
                human_duration(job.eta_seconds) if running and job.eta_seconds is not None else "-"
            ),
        }

    @staticmethod
    def _finished_cells(job: Job, now: datetime) -> tuple[Any, ...]:
        started, finished = as_utc(job.started_at), as_utc(job.finished_at)
        took = (finished - started).total_seconds() if started and finished else None
        outcome = state_text(job.state)
        return (
            str(job.id),
            # the error's sentence (its hint, on the next line, is in the job's details)
            Text(
                printable(job.title + (f" — {job.error.splitlines()[0]}" if job.error else "")),
                overflow="ellipsis",
            ),
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
        table = self.query_one("#active", ActiveTable)
        if key not in {k.value for k in table.rows}:
            if key not in {row_key for row_key, _ in table.all_rows}:
                self.refresh_now()  # a job this list has not seen yet
            return  # (a job the filter hides: nothing to draw)
        at = message.event.at or self.sendense.clock.now()
        self.rates.setdefault(key, RateHistory()).add(at, message.rate)
        cells = {
            "progress": progress_bar(message.bytes_done, message.bytes_total, width=8),
            "bytes": _bytes(message),
            "rate": human_rate(message.rate),
            "eta": human_duration(message.eta_seconds) if message.eta_seconds is not None else "-",
        }
        if "spark" in table.column_keys:
            cells["spark"] = self._spark(key)
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

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        key = event.row_key.value
        if key is not None:
            self._open_details(int(key))

    def action_open_details(self) -> None:
        job = self._selected()
        if job is not None:
            self._open_details(job.id)

    def _open_details(self, job_id: int) -> None:
        """Enter: the job in full: title, error and what to do, and its log."""
        self.run_engine(
            lambda: self.engine.details.job(job_id),
            after=lambda details: self.app.push_screen(
                job_detail(details, self.sendense.clock.now())
            ),
            description=f"details of job {job_id}",
        )

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
