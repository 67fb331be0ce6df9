"""Repositories: a table of every repository with add (guided setup), edit, test,
enable/disable, mount/unmount and remove (asks first, naming what happens)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.widgets import DataTable, Static

from engine.services.repositories import TestReport
from engine.views import Repository
from sendense_tui.actions import bindings_for
from sendense_tui.details import repository_detail
from sendense_tui.format import (
    age_text,
    filesystem_lock_text,
    human_bytes,
    lock_text,
    printable,
    short_time,
    state_text,
)
from sendense_tui.screens.base import SendenseScreen
from sendense_tui.styles import STYLES_DIR
from sendense_tui.widgets.confirm import ConfirmDialog
from sendense_tui.widgets.gauge import LEVEL_COLOURS
from sendense_tui.widgets.quiet import show
from sendense_tui.widgets.tables import FlexTable, ListFiltered, cursor_key, sync_rows

COLUMNS = ("name", "type", "where", "state", "used", "free", "backups")
KINDS = {"local": "local", "nfs": "NFS", "cifs": "CIFS"}


@dataclass
class RepoRow:
    repo: Repository
    location: str
    used: int | None = None
    total: int | None = None
    free: int | None = None
    backups: int = 0
    #: "12m ago" when the figures are stale (the repository did not answer)
    age: str | None = None
    #: a Test of it is running
    testing: bool = False


@dataclass
class RepositoriesData:
    now: datetime
    rows: list[RepoRow] = field(default_factory=list)


def describe_report(report: TestReport) -> Text:
    """A test result as lines an operator can act on."""
    text = Text()
    for step in report.steps:
        mark, style = ("✓", "green") if step.ok else ("✗", "bold red")
        text.append(f"{mark} {step.name.replace('_', ' ')}", style=style)
        if step.detail and step.ok:
            text.append(f"  {printable(step.detail)}", style="dim")
        text.append("\n")
    if report.ok:
        text.append(
            f"Capacity found: {human_bytes(report.total)} total, {human_bytes(report.free)} free",
            style="bold",
        )
        caps = report.capabilities
        if caps:
            text.append(
                f"\n{caps.get('fs_type', '?')} {filesystem_lock_text(caps)}, reflink "
                f"{'yes' if caps.get('reflink') else 'no'}"
            )
        for warning in report.warnings:  # a reserve that leaves no room for a backup
            text.append(f"\n⚠ {printable(warning)}", style="yellow")
    else:
        text.append(printable(report.error or "the test failed"), style="bold red")
        if report.hint:
            text.append(f"\n→ {printable(report.hint)}", style="yellow")
    return text


class RepositoriesScreen(SendenseScreen):
    MODE = "repositories"
    #: read again only when the catalog changed (or REREAD_SECONDS passed), not
    #: every second: an idle console stays near no CPU
    WATCH_CHANGES = True
    CSS_PATH = STYLES_DIR / "repositories.tcss"
    BINDINGS = bindings_for("repositories")

    def __init__(self) -> None:
        super().__init__()
        self._rows: dict[str, RepoRow] = {}
        #: repositories whose Test is running (their state reads "testing…")
        self._testing: set[int] = set()

    def compose_body(self) -> ComposeResult:
        yield FlexTable(
            [
                ("name", "Name", 12),
                ("type", "Type", 5),
                ("where", "Path or server", None),
                ("state", "State", 12),
                ("used", "Used/total", 10),
                ("free", "Free", 6),
                ("backups", "Backups", 7),
            ],
            id="repositories",
            list_name="repositories",
        )
        yield Static("", id="repo-detail")

    def on_mount(self) -> None:
        self.query_one("#repositories", DataTable).focus()

    # -- data ---------------------------------------------------------------------

    def fetch(self) -> RepositoriesData:
        engine = self.engine
        data = RepositoriesData(now=self.sendense.clock.now())
        repos = engine.repositories.list()
        # every repository's figures and count in a few grouped queries, not two each
        readings = engine.capacity.last_known_all(repos)
        counts = engine.repositories.backup_counts()
        for repo in repos:
            row = RepoRow(repo, engine.repositories.describe_location(repo))
            reading = readings.get(repo.id)
            figures = reading.figures if reading is not None else None
            if reading is not None and figures is not None:
                row.used, row.total, row.free = figures.used, figures.total, figures.free
                age = reading.figures_age(data.now)
                row.age = age_text(age) if age is not None else None
            row.testing = repo.id in self._testing
            row.backups = counts.get(repo.id, 0)
            data.rows.append(row)
        return data

    def apply(self, data: RepositoriesData) -> None:
        self._rows = {str(r.repo.id): r for r in data.rows}
        table = self.query_one("#repositories", DataTable)
        sync_rows(table, [(str(r.repo.id), self._cells(r)) for r in data.rows], COLUMNS)
        self._show_detail(data.now)

    @staticmethod
    def _cells(row: RepoRow) -> tuple[Any, ...]:
        repo = row.repo
        state = repo.state if repo.enabled else "disabled"
        colour = LEVEL_COLOURS.get(repo.capacity_level or "ok", "white")
        used: Text | str = (
            Text(f"{human_bytes(row.used)}/{human_bytes(row.total)}", style=colour)
            if row.total
            else "-"
        )
        if row.age is not None and isinstance(used, Text):
            used.stylize("dim")  # stale: the detail below says how old
        return (
            repo.name,
            KINDS.get(repo.kind, repo.kind),
            Text(printable(row.location), overflow="ellipsis"),
            Text("testing…", style="bold cyan") if row.testing else state_text(state),
            used,
            human_bytes(row.free) if row.free is not None else "-",
            str(row.backups),
        )

    def _selected(self) -> RepoRow | None:
        key = cursor_key(self.query_one("#repositories", DataTable))
        return self._rows.get(key) if key else None

    def _show_detail(self, now: datetime | None = None) -> None:
        row = self._selected()
        detail = self.query_one("#repo-detail", Static)
        if row is None:
            table = self.query_one("#repositories", FlexTable)
            empty = (
                "No repository matches the filter (Esc clears it)."
                if table.all_rows
                else "No repository yet: press a to add one."
            )
            show(detail, Text(empty, style="dim"))
            return
        repo = row.repo
        text = Text()
        text.append(printable(repo.name), style="bold")
        text.append(f"  {printable(repo.path)}", style="dim")
        if repo.state_detail:
            text.append(f"\n{printable(repo.state_detail)}", style="red")
        if row.age is not None and row.total:
            text.append(
                f"\nlast figures {human_bytes(row.used)}/{human_bytes(row.total)}, "
                f"{human_bytes(row.free)} free, measured {row.age}",
                style="yellow",
            )
        caps = repo.capabilities or {}
        text.append(
            f"\n{lock_text(repo.immutable, repo.immutable_days, repo.immutable_grace_hours)}",
            style="bold" if repo.immutable else "",
        )
        if caps:
            text.append(
                f"  {caps.get('fs_type', '?')} {filesystem_lock_text(caps)}, reflink "
                f"{'yes' if caps.get('reflink') else 'no'}",
                style="dim",
            )
        if repo.last_seen_at is not None:
            text.append(f"  last seen {short_time(repo.last_seen_at, now)}", style="dim")
        if repo.capacity_level == "full":
            text.append(
                "\nFULL: takes no new backups or copies until space is freed", style="bold red"
            )
        show(detail, text)

    def on_data_table_row_highlighted(self, _event: DataTable.RowHighlighted) -> None:
        self._show_detail(self.sendense.clock.now())

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_open_details()

    def action_open_details(self) -> None:
        """Enter: the repository in full (its whole path, state, space, locks)."""
        row = self._selected()
        if row is not None:
            self.app.push_screen(
                repository_detail(
                    row.repo, row.location, row.used, row.total, row.free, row.backups
                )
            )

    def on_list_filtered(self, _event: ListFiltered) -> None:
        self._show_detail(self.sendense.clock.now())

    # -- actions ---------------------------------------------------------------------

    def action_add_repository(self) -> None:
        from sendense_tui.screens.repo_wizard import RepoWizard

        self.app.push_screen(RepoWizard(), lambda _saved: self.refresh_now())

    def action_edit_repository(self) -> None:
        from sendense_tui.screens.repo_wizard import RepoWizard

        row = self._selected()
        if row is not None:
            self.app.push_screen(RepoWizard(edit=row.repo), lambda _saved: self.refresh_now())

    def action_test_repository(self) -> None:
        row = self._selected()
        if row is None:
            return
        name, repo_id = row.repo.name, row.repo.id
        if repo_id in self._testing:
            self.notify(f"{name} is being tested already", timeout=3)
            return

        def done(report: TestReport) -> None:
            self._testing.discard(repo_id)
            if report.ok:
                self.notify(
                    f"{name}: mounted, writable, {human_bytes(report.free)} free",
                    title="Test passed",
                )
            else:
                self.notify(f"{name}: {report.error}", title="Test failed", severity="error")

        def test() -> TestReport:
            try:
                return self.engine.repositories.test_repository(repo_id)
            except Exception:
                self._testing.discard(repo_id)  # the app's error handler says why
                raise

        # "testing…" at once in its row; the result (or a timeout: a repository that
        # does not answer fails its test within the probe's timeout) replaces it
        self._testing.add(repo_id)
        self.notify(f"testing {name}…", timeout=3)
        table = self.query_one("#repositories", DataTable)
        sync_rows(table, [(k, self._cells(self._mark(r))) for k, r in self._rows.items()], COLUMNS)
        self.run_engine(test, after=done, description=f"test {name}")

    def _mark(self, row: RepoRow) -> RepoRow:
        row.testing = row.repo.id in self._testing
        return row

    def action_toggle_repository(self) -> None:
        row = self._selected()
        if row is None:
            return
        repo = row.repo
        if repo.enabled:
            self.app.push_screen(
                ConfirmDialog(
                    f"Disable repository “{repo.name}”?",
                    "No backup or copy will use it until it is enabled again"
                    + (" and it will be unmounted." if repo.kind != "local" else "."),
                    yes_label="Disable",
                ),
                lambda yes: (
                    yes
                    and self.run_engine(
                        lambda: self.engine.repositories.set_enabled(
                            repo.id, False, actor="console"
                        ),
                        description=f"disable {repo.name}",
                    )
                ),
            )
        else:
            self.run_engine(
                lambda: self.engine.repositories.set_enabled(repo.id, True, actor="console"),
                description=f"enable {repo.name}",
            )

    def action_mount_repository(self) -> None:
        row = self._selected()
        if row is None:
            return
        repo = row.repo
        if repo.kind == "local":
            self.notify(f"{repo.name} is a local directory: nothing to mount", timeout=3)
            return
        if repo.state == "mounted":
            self.app.push_screen(
                ConfirmDialog(
                    f"Unmount repository “{repo.name}”?",
                    f"{self.engine.mounts.mount_point(repo.name)} is unmounted; backups and "
                    "copies to it fail until it is mounted again.",
                    yes_label="Unmount",
                ),
                lambda yes: (
                    yes
                    and self.run_engine(
                        lambda: self.engine.repositories.unmount(repo.id, actor="console"),
                        description=f"unmount {repo.name}",
                    )
                ),
            )
        else:
            self.run_engine(
                lambda: self.engine.repositories.mount(repo.id), description=f"mount {repo.name}"
            )

    def action_remove_repository(self) -> None:
        row = self._selected()
        if row is None:
            return
        repo = row.repo
        force = row.backups > 0
        what = (
            f"It holds {row.backups} backups: the catalog forgets them (forced removal, "
            "recorded in the audit log). The files stay on disk at "
            f"{row.location}."
            if force
            else f"The catalog forgets it; files at {row.location} stay on disk."
        )
        if repo.kind != "local":
            what += " It is unmounted and its credentials file removed."
        self.app.push_screen(
            ConfirmDialog(f"Remove repository “{repo.name}”?", what, yes_label="Remove"),
            lambda yes: (
                yes
                and self.run_engine(
                    lambda: self.engine.repositories.remove(repo.id, force=force, actor="console"),
                    description=f"remove {repo.name}",
                )
            ),
        )
