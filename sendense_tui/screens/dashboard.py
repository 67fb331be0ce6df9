"""Dashboard: repositories, jobs in flight and the latest warnings at a glance."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Static

from engine.catalog.models import AuditEntry, Job, Repository
from sendense_tui.format import (
    human_duration,
    human_rate,
    level_text,
    progress_bar,
    short_time,
)
from sendense_tui.screens.base import SendenseScreen
from sendense_tui.styles import STYLES_DIR

_REPO_STATE_STYLES = {"ok": "green", "online": "green", "warning": "yellow", "critical": "red"}


@dataclass
class DashboardData:
    now: datetime
    repositories: list[Repository] = field(default_factory=list)
    running: list[Job] = field(default_factory=list)
    queued: int = 0
    paused: int = 0
    failed: int = 0
    warnings: list[AuditEntry] = field(default_factory=list)


class DashboardScreen(SendenseScreen):
    MODE = "dashboard"
    CSS_PATH = STYLES_DIR / "dashboard.tcss"

    def compose_body(self) -> ComposeResult:
        with Horizontal(id="top"):
            yield Static("loading…", id="repositories", classes="panel")
            yield Static("loading…", id="jobs", classes="panel")
        yield Static("loading…", id="warnings", classes="panel")

    def on_mount(self) -> None:
        self.query_one("#repositories").border_title = "Repositories"
        self.query_one("#jobs").border_title = "Jobs"
        self.query_one("#warnings").border_title = "Latest warnings and errors"

    def fetch(self) -> DashboardData:
        engine = self.engine
        active = engine.job_store.list(states=("running", "queued", "paused"), limit=500)
        return DashboardData(
            now=self.sendense.clock.now(),
            repositories=engine.repository_store.list(),
            running=sorted((j for j in active if j.state == "running"), key=lambda j: j.id),
            queued=sum(1 for j in active if j.state == "queued"),
            paused=sum(1 for j in active if j.state == "paused"),
            failed=len(engine.job_store.list(states=("failed",), limit=500)),
            warnings=engine.audit.query(min_level="warning", limit=20),
        )

    def apply(self, data: DashboardData) -> None:
        self.query_one("#repositories", Static).update(self._repositories(data))
        self.query_one("#jobs", Static).update(self._jobs(data))
        self.query_one("#warnings", Static).update(self._warnings(data))

    @staticmethod
    def _repositories(data: DashboardData) -> Group | Text:
        repos = data.repositories
        if not repos:
            return Text("No repository yet.\n`sendense repo add` creates one.", style="dim")
        head = Text()
        head.append(f"{len(repos)}", style="bold")
        head.append(" repositories")
        disabled = sum(1 for r in repos if not r.enabled)
        if disabled:
            head.append(f", {disabled} off", style="dim")
        table = Table.grid(padding=(0, 1), expand=True)
        table.add_column(ratio=1, no_wrap=True, overflow="ellipsis")
        table.add_column(no_wrap=True)
        table.add_column(no_wrap=True, justify="right")
        for repo in repos:
            level = repo.capacity_level or "ok"
            table.add_row(
                Text(repo.name, style="" if repo.enabled else "dim"),
                Text(repo.kind, style="dim"),
                Text(level, style=_REPO_STATE_STYLES.get(level, "")),
            )
        return Group(head, table)

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
        table = Table.grid(padding=(0, 1), expand=True)
        table.add_column(ratio=1, no_wrap=True, overflow="ellipsis")
        table.add_column(no_wrap=True)
        table.add_column(no_wrap=True, justify="right")
        for job in data.running[:6]:
            eta = human_duration(job.eta_seconds) if job.eta_seconds is not None else "-"
            table.add_row(
                Text(f"#{job.id} {job.title}"),
                progress_bar(job.bytes_done, job.bytes_total, width=8),
                Text(f"{human_rate(job.rate)} {eta}", style="dim"),
            )
        if not data.running:
            table.add_row(Text("nothing running", style="dim"), Text(""), Text(""))
        return Group(head, table)

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
                Text(entry.source, style="dim"),
                Text(entry.message),
            )
        return table
