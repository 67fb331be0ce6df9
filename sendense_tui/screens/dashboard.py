"""Dashboard: repositories, jobs in flight, active alerts with the verification
coverage, and the latest warnings at a glance.

Each repository is one line: a capacity gauge coloured by its threshold level,
used %, free space and days until full (the Capacity screen has the rest). A
line is its own widget holding a frozen value, so a refresh that changes
nothing redraws nothing, and a resize re-lays the line to the new width.

The Alerts panel lists the alerts raised now (each fires once and clears once,
see ``engine.services.scheduler``), then one line of verification coverage:
"97% of bytes verified in the last 30 days · 2 overdue · next verification 03:00".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.reactive import reactive
from textual.widget import Widget
from textual.widgets import Static

from engine.services.capacity import NEED_HISTORY, Reading, RepositoryCapacity
from engine.services.verify import Coverage
from engine.views import UNPROTECTED_STATES, AuditEntry, Job, ScheduleMark
from sendense_tui.format import (
    age_text,
    human_bytes,
    human_duration,
    human_rate,
    level_text,
    plural,
    printable,
    progress_bar,
    safe_text,
    short_time,
)
from sendense_tui.screens.base import SendenseScreen
from sendense_tui.screens.capacity import KINDS, is_unresponsive, level_of
from sendense_tui.styles import STYLES_DIR
from sendense_tui.widgets.gauge import LEVEL_COLOURS, gauge
from sendense_tui.widgets.keyed import reconcile
from sendense_tui.widgets.quiet import show

#: longest repository name shown before it is cut with "…"
NAME_WIDTH = 16
#: alert lines shown before "… and N more"
MAX_ALERTS = 4


def next_time_text(at: datetime | None, now: datetime) -> str:
    """A coming time, UTC like every time in the console: "03:00" later today,
    "tomorrow 03:00", "11-30 03:00" further on, "due now" once it has come."""
    if at is None:
        return "-"
    at, now = at.astimezone(UTC), now.astimezone(UTC)
    if at <= now:
        return "due now"
    if at.date() == now.date():
        return f"{at:%H:%M}"
    if at.date() == now.date() + timedelta(days=1):
        return f"tomorrow {at:%H:%M}"
    return f"{at:%m-%d %H:%M}"


def _reading_error(reading: Reading | None) -> str | None:
    if reading is None:
        return "not measured yet"
    return printable(reading.error) if reading.error else None


@dataclass(frozen=True)
class RepoGaugeLine:
    """What one repository line shows (equal values: no redraw)."""

    name: str
    kind: str
    enabled: bool
    level: str
    percent: float | None = None
    used: int = 0
    free: int = 0
    total: int = 0
    days_until_full: float | None = None
    trend: str = "not enough history"
    marks: tuple[float, ...] = ()
    error: str | None = None
    name_width: int = 12
    #: the repository does not answer: the figures are its last good ones
    unresponsive: bool = False
    #: "12m ago" when the figures are stale
    age: str | None = None
    #: why there is no "days until full" yet
    reason: str | None = None

    @classmethod
    def of(cls, item: RepositoryCapacity, name_width: int, now: datetime) -> RepoGaugeLine:
        repo, reading, th, fc = item.repository, item.reading, item.thresholds, item.forecast
        measured = reading is not None and not reading.error
        unresponsive = is_unresponsive(item)
        age = reading.figures_age(now) if reading is not None else None
        if unresponsive and reading is not None and reading.figures is not None:
            reading, measured = reading.figures, True  # the last figures, with their age
        return cls(
            name=printable(repo.name),
            kind=KINDS.get(repo.kind, repo.kind),
            enabled=repo.enabled,
            level=level_of(item),
            percent=reading.percent if measured and reading else None,
            used=reading.used if reading else 0,
            free=reading.free if reading else 0,
            total=reading.total if reading else 0,
            days_until_full=fc.days_until_full if fc.trend == "growing" else None,
            trend=fc.trend,
            marks=(th.warning, th.critical, th.full),
            error=_reading_error(reading),
            name_width=name_width,
            unresponsive=unresponsive,
            age=age_text(age) if age is not None else None,
            reason=fc.reason,
        )

    def days_text(self, long: bool) -> str:
        if self.days_until_full is not None:
            days = self.days_until_full
            if days >= 3650:
                return "full in >10 years" if long else ">10y to full"
            return f"full in {days:.0f} days" if long else f"{days:.0f}d to full"
        if self.trend == "not growing":
            return "not growing" if long else "steady"
        if self.reason == NEED_HISTORY:
            return "forecast after 24h" if long else "need 24h"
        return "no forecast yet" if long else "no trend"

    def render(self, width: int) -> Text:
        """The line at ``width`` cells: the gauge takes what the words leave (8-40)."""
        colour = LEVEL_COLOURS.get(self.level, "white")
        name = self.name if len(self.name) <= self.name_width else self.name[: self.name_width - 1]
        if name != self.name:
            name += "…"
        text = Text(no_wrap=True, overflow="ellipsis")
        text.append(name.ljust(self.name_width), style="bold" if self.enabled else "dim")
        if self.unresponsive:
            text.append(" UNRESPONSIVE", style="bold red")
            if self.percent is not None:
                text.append(f" {self.percent:.1f}% {human_bytes(self.free)} free", style="dim")
            text.append(f" {self.age or 'never measured'}", style="dim")
            return text
        if self.percent is None:
            text.append(" ")
            text.append(gauge(None, "unknown", 8))
            text.append(f" {self.error or 'not measured yet'}", style="dim")
            return text
        long = width >= 100
        # fixed-width fields, so every line's gauge has the same length
        kind = f" {self.kind:<5}" if long else ""
        pct = f" {self.percent:5.1f}%"
        if self.level != "ok":
            lvl = f" {self.level.upper():<8}"
        else:
            lvl = f" {'off' if not self.enabled else '':<8}"
        free = f"  {human_bytes(self.free):>5} free"
        if long:
            free = f"  {human_bytes(self.used):>5} used of {human_bytes(self.total):>5}" + free
        days = f"  {self.days_text(long):<{18 if long else 12}}"
        words = len(kind) + len(pct) + len(lvl) + len(free) + len(days)
        bar = max(8, min(40, width - self.name_width - 1 - words))
        text.append(kind, style="dim")
        text.append(" ")
        text.append(gauge(self.percent, self.level, bar, self.marks))
        text.append(pct, style=f"bold {colour}")
        text.append(lvl, style=f"bold {colour}" if self.level != "ok" else "dim")
        text.append(free)
        text.append(days, style="bold" if self.level != "ok" else "")
        return text


class RepoGauge(Widget):
    """One repository's capacity line on the dashboard."""

    DEFAULT_CSS = """
    RepoGauge { height: 1; }
    """

    line: reactive[RepoGaugeLine | None] = reactive(None)

    def render(self) -> Text:
        if self.line is None:
            return Text("")
        return self.line.render(self.size.width)


@dataclass
class DashboardData:
    now: datetime
    repositories: list[RepositoryCapacity] = field(default_factory=list)
    used: int = 0
    free: int = 0
    total: int = 0
    running: list[Job] = field(default_factory=list)
    queued: int = 0
    paused: int = 0
    failed: int = 0
    #: jobs whose files landed but could not be locked
    unprotected_jobs: int = 0
    #: points and copies whose lock is due but whose flag is not set
    unprotected_files: int = 0
    warnings: list[AuditEntry] = field(default_factory=list)
    alerts: list[ScheduleMark] = field(default_factory=list)
    coverage: Coverage | None = None
    next_verification: datetime | None = None


class DashboardScreen(SendenseScreen):
    MODE = "dashboard"
    #: a 100,000-point catalog is read again only when it changed
    WATCH_CHANGES = True
    CSS_PATH = STYLES_DIR / "dashboard.tcss"

    def __init__(self) -> None:
        super().__init__()
        self._repo_ids: list[int] | None = None

    def compose_body(self) -> ComposeResult:
        with VerticalScroll(id="repositories", classes="panel"):
            yield Static("loading…", id="repo-summary")
        yield Static("loading…", id="jobs", classes="panel")
        yield Static("loading…", id="alerts", classes="panel")
        yield Static("loading…", id="warnings", classes="panel")

    def on_mount(self) -> None:
        self.query_one("#repositories").border_title = "Repositories"
        self.query_one("#jobs").border_title = "Jobs"
        self.query_one("#alerts").border_title = "Alerts"
        self.query_one("#warnings").border_title = "Latest warnings and errors"

    def fetch(self) -> DashboardData:
        engine = self.engine
        active = engine.jobs.list(states=("running", "queued", "paused"), limit=500)
        items = engine.capacity.overview(history_span=timedelta(0), buckets=1, measure=False)
        total, used, free = engine.capacity.totals([i.reading for i in items if i.reading])
        return DashboardData(
            now=self.sendense.clock.now(),
            repositories=items,
            used=used,
            free=free,
            total=total,
            running=sorted((j for j in active if j.state == "running"), key=lambda j: j.id),
            queued=sum(1 for j in active if j.state == "queued"),
            paused=sum(1 for j in active if j.state == "paused"),
            failed=len(engine.jobs.list(states=("failed",), limit=500)),
            unprotected_jobs=len(engine.jobs.list(states=("failed_unprotected",), limit=500)),
            unprotected_files=len(engine.locks.list(states=UNPROTECTED_STATES)),
            warnings=engine.audit.query(min_level="warning", limit=20),
            alerts=engine.scheduler.active_alerts(),
            coverage=engine.verifier.coverage(),
            next_verification=engine.scheduler.next_verification(),
        )

    def apply(self, data: DashboardData) -> None:
        self._apply_repositories(data)
        show(self.query_one("#jobs", Static), self._jobs(data))
        alerts = self.query_one("#alerts", Static)
        show(alerts, self._alerts(data))
        count = len(data.alerts) + (1 if data.unprotected_files else 0)
        title = f"Alerts ({count})" if count else "Alerts"
        if alerts.border_title != title:  # setting it repaints, even to the same words
            alerts.border_title = title
        show(self.query_one("#warnings", Static), self._warnings(data))

    def _apply_repositories(self, data: DashboardData) -> None:
        box = self.query_one("#repositories", VerticalScroll)
        show(self.query_one("#repo-summary", Static), self._summary(data))
        ids = [item.repository.id for item in data.repositories]
        if ids != self._repo_ids:  # repositories came or went: keyed update of the lines
            reconcile(
                box,
                RepoGauge,
                [f"gauge-{i}" for i in ids],
                lambda wid: RepoGauge(id=wid, classes="repo-gauge"),
                after="#repo-summary",
            )
            self._repo_ids = ids
        width = min(NAME_WIDTH, max((len(i.repository.name) for i in data.repositories), default=8))
        # the lines by id in one pass over the box (a query per line parsed a selector
        # and walked the box 50 times: a third of a second on the UI thread)
        gauges = {w.id: w for w in box.query_children(RepoGauge)}
        for item in data.repositories:
            widget = gauges.get(f"gauge-{item.repository.id}")
            if widget is not None:
                # a reactive: redraws only if the value changed
                widget.line = RepoGaugeLine.of(item, width, data.now)

    @staticmethod
    def _summary(data: DashboardData) -> Text:
        repos = data.repositories
        if not repos:
            return Text("No repository yet.\n`sendense repo add` creates one.", style="dim")
        head = Text(no_wrap=True, overflow="ellipsis")
        head.append(f"{len(repos)}", style="bold")
        head.append(" repository" if len(repos) == 1 else " repositories")
        disabled = sum(1 for r in repos if not r.repository.enabled)
        if disabled:
            head.append(f", {disabled} off", style="dim")
        if data.total:
            head.append(
                f" · {human_bytes(data.used)} used, {human_bytes(data.free)} free of "
                f"{human_bytes(data.total)}"
            )
        attention = [
            i.repository.name
            for i in repos
            if level_of(i) not in ("ok", "unknown") or is_unresponsive(i)
        ]
        if attention:
            head.append(" · check ", style="dim")
            head.append(printable(", ".join(attention)), style="bold yellow")
        return head

    @staticmethod
    def _jobs(data: DashboardData) -> Group:
        head = Text()
        head.append(f"{len(data.running)}", style="bold green")
        head.append(" running · ")
        head.append(f"{data.queued}", style="bold cyan")
        head.append(" queued · ")
        head.append(f"{data.paused}", style="bold yellow")
        head.append(" paused · ")
        head.append(f"{data.failed}", style="bold red" if data.failed else "bold")
        head.append(" failed")
        if data.unprotected_jobs:
            head.append(" · ")
            head.append(f"{data.unprotected_jobs} unprotected", style="bold white on red")
        table = Table.grid(padding=(0, 1), expand=True)
        table.add_column(ratio=1, no_wrap=True, overflow="ellipsis")
        table.add_column(no_wrap=True)
        table.add_column(no_wrap=True, justify="right")
        for job in data.running[:6]:
            eta = human_duration(job.eta_seconds) if job.eta_seconds is not None else "-"
            table.add_row(
                safe_text(f"#{job.id} {job.title}"),
                progress_bar(job.bytes_done, job.bytes_total, width=8),
                Text(f"{human_rate(job.rate)} {eta}", style="dim"),
            )
        if not data.running:
            table.add_row(Text("nothing running", style="dim"), Text(""), Text(""))
        return Group(head, table)

    @staticmethod
    def _alerts(data: DashboardData) -> Group:
        """The raised alerts (level, since, message), then the verification line."""
        table = Table.grid(padding=(0, 1), expand=True)
        table.add_column(no_wrap=True, width=8)
        table.add_column(no_wrap=True)
        # an alert is read whole: at 80 columns it wraps rather than being cut
        table.add_column(ratio=1, overflow="fold")
        order = {"critical": 0, "warning": 1}
        shown = sorted(data.alerts, key=lambda m: (order.get(m.level or "", 2), m.key))
        if data.unprotected_files:
            # not a raised alert but a standing fact: locked files without their flag
            table.add_row(
                level_text("critical"),
                Text("now", style="dim"),
                Text(
                    f"{plural(data.unprotected_files, 'locked file')} NOT protected: the immutable "
                    "flag is not set (sendense lock list)"
                ),
            )
        for mark in shown[:MAX_ALERTS]:
            level = mark.level or "warning"
            table.add_row(
                level_text(level),
                Text(short_time(mark.updated_at, data.now), style="dim"),
                safe_text(mark.message or mark.key),
            )
        if len(shown) > MAX_ALERTS:
            # copy alerts are in `copy status`, bad files in `verify report`
            where = (
                "verify report"
                if shown[MAX_ALERTS].key.startswith("alert:verification_")
                else "copy status"
            )
            more = Text(f"… and {len(shown) - MAX_ALERTS} more (sendense {where})")
            table.add_row(Text(""), Text(""), more)
        if not shown and not data.unprotected_files:
            table.add_row(Text("✓", style="bold green"), Text(""), Text("no active alerts"))
        return Group(table, DashboardScreen._verification(data))

    @staticmethod
    def _verification(data: DashboardData) -> Text:
        text = Text()  # wraps at 80 columns when there are bad points to name
        report = data.coverage
        # compact, so it fits 80 columns: "verified 97% of bytes in 30 days · 2 overdue ·
        # next tomorrow 03:00" (the Chains screen and `sendense verify report` say more)
        if report is None or report.files_total == 0:
            text.append("verified: nothing to verify yet", style="dim")
        else:
            pct = report.coverage_percent
            text.append("verified ")
            text.append(f"{pct:.0f}%", style="bold green" if pct >= 90 else "bold yellow")
            text.append(f" of bytes in {report.days} days")
            overdue = report.overdue
            text.append(" · ")
            text.append(f"{overdue} overdue", style="bold yellow" if overdue else "")
            if report.bad:
                text.append(" · ")
                text.append(f"{report.bad} bad", style="bold red")
        text.append(" · ", style="dim")
        if data.next_verification is None:
            text.append("scheduled verification off", style="dim")
        else:
            text.append(
                f"next check {next_time_text(data.next_verification, data.now)}", style="dim"
            )
        return text

    @staticmethod
    def _warnings(data: DashboardData) -> Table | Text:
        if not data.warnings:
            return Text("No warnings. All quiet.", style="dim")
        table = Table.grid(padding=(0, 1), expand=True)
        table.add_column(no_wrap=True)
        table.add_column(no_wrap=True, width=8)
        table.add_column(no_wrap=True, width=10, overflow="ellipsis")
        table.add_column(ratio=1, no_wrap=True, overflow="ellipsis")
        for entry in data.warnings:
            table.add_row(
                Text(short_time(entry.at, data.now), style="dim"),
                level_text(entry.level),
                safe_text(entry.source, "dim"),
                safe_text(entry.message),
            )
        return table
