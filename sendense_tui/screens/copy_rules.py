"""Copy rules: the 3-2-1 routes, their health, and a form to add one with validation.

Pushed from the Policies section (``c`` there, or "Copy rules" in the palette).
Each rule shows when it runs next (a time for scheduled rules, "after backups" for
immediate ones, "manual", "disabled") and its state: the raised alert's level and
the failures in a row, or the last good result.
Keys (see ``actions.py``): ``a`` opens the form, ``e`` opens it filled in with the
rule under the cursor (saved through ``CopyService.update_rule``), Space enables or
disables it (disabling asks first), ``d`` removes it (after a confirmation), ``n``
runs it now, ``q``/Esc goes back. Every field of the form has its label.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, DataTable, Input, Label, Select, Static
from textual.widgets.select import InvalidSelectValueError
from textual.worker import Worker

from engine.services.copy import MODES, SELECTIONS, RuleStatus
from engine.services.scheduler import ALERT_PREFIX
from engine.views import ScheduleMark
from sendense_tui.actions import bindings_for
from sendense_tui.details import rule_detail
from sendense_tui.format import level_text, plural, safe_text, short_time
from sendense_tui.screens.base import NavBar, SendenseScreen, in_form
from sendense_tui.screens.dashboard import next_time_text
from sendense_tui.styles import STYLES_DIR
from sendense_tui.widgets.confirm import ConfirmDialog
from sendense_tui.widgets.gauge import LEVEL_COLOURS
from sendense_tui.widgets.tables import FlexTable, sync_rows

COLUMNS = ("name", "route", "select", "next", "status")
_LEVEL_ORDER = {"critical": 0, "warning": 1}


@dataclass
class RulesData:
    statuses: list[RuleStatus]
    repositories: list[str]
    now: datetime | None = None
    #: raised alerts by rule id (an ``alert:<kind>:rule:<id>`` mark)
    alerts: dict[int, list[ScheduleMark]] = field(default_factory=dict)


def next_run_text(status: RuleStatus, now: datetime) -> str:
    rule = status.rule
    if not rule.enabled:
        return "disabled"
    if rule.mode == "immediate":
        return "after backups"
    if rule.mode != "scheduled":
        return "manual"
    return next_time_text(status.next_run_at, now)


def state_text(status: RuleStatus, alerts: list[ScheduleMark], now: datetime) -> Text:
    """What needs attention first (it stays readable when the cell is cut at 80
    columns): "⚠ 3 failed · warning" in the alert's colour, then the last result."""
    rule = status.rule
    text = Text(no_wrap=True, overflow="ellipsis")
    levels = sorted((m.level or "warning" for m in alerts), key=lambda v: _LEVEL_ORDER.get(v, 2))
    trouble: list[str] = []
    if rule.failures_in_row:
        trouble.append(f"{rule.failures_in_row} failed")
    if status.problems and (not rule.failures_in_row or len(status.problems) > 1):
        trouble.append("copy too old")
    if trouble or levels:
        level = levels[0] if levels else "warning"
        text.append("⚠ ", style=LEVEL_COLOURS.get(level, "yellow"))
        text.append(", ".join(trouble) or "alert", style="bold")
        text.append(" · ")
        text.append_text(level_text(level))
    if status.in_progress:
        text.append(" · " if text.plain else "")
        text.append(f"copying {status.in_progress}", style="bold cyan")
    if not text.plain and status.last_run in ("cancelled", "failed"):
        # the last run did not finish: not "ok" until one does
        text.append(f"last run {status.last_run}", style="bold yellow")
    if not text.plain:
        text.append("ok", style="bold green")
    if status.completed:
        newest = short_time(status.newest_copy_at, now) if status.newest_copy_at else "-"
        copies = plural(status.completed, "copy", "copies")
        text.append(f" · {copies}, newest {newest}", style="dim")
    elif not trouble:
        text.append(" · no copy yet", style="dim")
    return text


class CopyRulesScreen(SendenseScreen):
    MODE = "copy_rules"
    #: read again only when the catalog changed (or REREAD_SECONDS passed), not
    #: every second: an idle console stays near no CPU
    WATCH_CHANGES = True
    TITLE = "Copy rules"
    CSS_PATH = STYLES_DIR / "copy_rules.tcss"
    BINDINGS = bindings_for("copy_rules")

    def __init__(self) -> None:
        super().__init__()
        self._repos: list[str] = []
        self._data: RulesData | None = None
        self._statuses: dict[str, RuleStatus] = {}
        #: the rule the form changes (None: it adds a new one)
        self._editing: int | None = None

    def compose(self) -> ComposeResult:
        # a page of the Policies section: that section stays lit in the bar
        for widget in super().compose():
            yield NavBar("policies") if isinstance(widget, NavBar) else widget

    def compose_body(self) -> ComposeResult:
        yield Static("Copy rules (3-2-1): where backups are copied", id="title")
        yield FlexTable(
            [
                ("name", "Rule", 12),
                ("route", "Route", 21),
                ("select", "Select", 8),
                ("next", "Next run", 14),
                ("status", "State", None),
            ],
            id="rules",
            list_name="copy rules",
        )
        # one line per row of labelled fields: the list keeps room at 80x24
        with Vertical(id="form"):
            yield Static("New copy rule", id="form-title")
            with Horizontal():
                yield Label("Name", classes="label")
                yield Input(placeholder="to-usb", id="name", compact=True)
                yield Label("From", classes="label")
                yield Select([], prompt="repository", id="source", compact=True)
                yield Label("To", classes="label")
                yield Select([], prompt="repository", id="destination", compact=True)
            with Horizontal():
                yield Label("Copy", classes="label")
                yield Select(
                    [(s, s) for s in SELECTIONS],
                    value="all",
                    id="selection",
                    allow_blank=False,
                    compact=True,
                )
                yield Label("Latest", classes="label")
                yield Input(placeholder="N", id="latest", compact=True)
                yield Label("When", classes="label")
                yield Select(
                    [(m, m) for m in MODES],
                    value="manual",
                    id="mode",
                    allow_blank=False,
                    compact=True,
                )
            with Horizontal():
                yield Label("Cron", classes="label")
                yield Input(
                    placeholder="0 3 * * * (UTC, when scheduled)", id="schedule", compact=True
                )
            with Horizontal(id="form-buttons"):
                yield Button("Save", id="save", variant="primary", compact=True)
                yield Button("Cancel", id="cancel", compact=True)
                yield Static("", id="form-error")

    def on_mount(self) -> None:
        self.query_one("#form").display = False
        self.query_one("#rules", DataTable).focus()

    def fetch(self) -> RulesData:
        alerts: dict[int, list[ScheduleMark]] = {}
        for mark in self.engine.scheduler.active_alerts():
            # alert:<kind>:rule:<id>
            parts = mark.key[len(ALERT_PREFIX) :].split(":")
            if len(parts) == 3 and parts[1] == "rule" and parts[2].isdigit():
                alerts.setdefault(int(parts[2]), []).append(mark)
        return RulesData(
            self.engine.copies.status(),
            [r.name for r in self.engine.repositories.list()],
            now=self.engine.clock.now(),
            alerts=alerts,
        )

    def apply(self, data: RulesData) -> None:
        if data.repositories != self._repos:
            self._repos = data.repositories
            options = [(name, name) for name in data.repositories]
            self.query_one("#source", Select).set_options(options)
            self.query_one("#destination", Select).set_options(options)
        now = data.now or self.engine.clock.now()
        self._statuses = {str(s.rule.id): s for s in data.statuses}
        rows: list[tuple[str, list[Any]]] = []
        for s in data.statuses:
            r = s.rule
            select = r.selection + (f" {r.latest_count}" if r.latest_count else "")
            rows.append(
                (
                    str(r.id),
                    [
                        r.name,
                        f"{s.source} → {s.destination}",
                        select,
                        next_run_text(s, now),
                        state_text(s, data.alerts.get(r.id, []), now),
                    ],
                )
            )
        sync_rows(self.query_one("#rules", DataTable), rows, COLUMNS)
        self._data = data

    # -- actions -------------------------------------------------------------------

    def _selected_rule(self) -> str | None:
        table = self.query_one("#rules", DataTable)
        if table.row_count == 0:
            return None
        key, _ = table.coordinate_to_cell_key(table.cursor_coordinate)
        return key.value

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_open_details()

    def action_open_details(self) -> None:
        """Enter: the rule in full (route, selection, schedule, state and problems)."""
        rule_id, data = self._selected_rule(), self._data
        status = (
            next((s for s in data.statuses if str(s.rule.id) == rule_id), None) if data else None
        )
        if status is None or data is None:
            return
        now = data.now or self.engine.clock.now()
        self.app.push_screen(
            rule_detail(
                status,
                state_text(status, data.alerts.get(status.rule.id, []), now),
                next_run_text(status, now),
                now,
            )
        )

    def action_add(self) -> None:
        self._editing = None
        self._open_form("New copy rule", {})

    def action_edit(self) -> None:
        status = self._status()
        if status is None:
            return
        rule = status.rule
        self._editing = rule.id
        self._open_form(
            f"Edit copy rule {rule.name}",
            {
                "name": rule.name,
                "source": status.source,
                "destination": status.destination,
                "selection": rule.selection,
                "latest": str(rule.latest_count or ""),
                "mode": rule.mode,
                "schedule": rule.schedule or "",
            },
        )

    def _open_form(self, title: str, values: dict[str, str]) -> None:
        self.query_one("#form-title", Static).update(safe_text(title, "bold"))
        for box in ("name", "latest", "schedule"):
            self.query_one(f"#{box}", Input).value = values.get(box, "")
        for choice, default in (
            ("source", None),
            ("destination", None),
            ("selection", "all"),
            ("mode", "manual"),
        ):
            select = self.query_one(f"#{choice}", Select)
            value = values.get(choice, default)
            if value is None:
                select.clear()
                continue
            try:
                select.value = value
            except InvalidSelectValueError:  # a repository gone: left blank to choose
                select.clear()
        self.query_one("#form").display = True
        self.refresh_bindings()
        self.query_one("#form-error", Static).update("")
        self.query_one("#name", Input).focus()

    def _status(self) -> RuleStatus | None:
        key = self._selected_rule()
        status = self._statuses.get(key) if key is not None else None
        if status is None:
            self.notify("Select a copy rule first (j/k or arrows).", severity="warning")
        return status

    # the console's enable/disable key, not DOMNode's toggle of an attribute
    def action_toggle(self) -> None:  # type: ignore[override]
        status = self._status()
        if status is None:
            return
        rule = status.rule
        enable = not rule.enabled

        def toggle() -> None:
            self.run_engine(
                lambda: self.engine.copies.set_rule_enabled(rule.id, enable, actor="console"),
                after=lambda r: self.notify(
                    f"Copy rule {r.name} {'enabled' if r.enabled else 'disabled'}"
                    + ("." if r.enabled else ": it copies nothing until Space enables it.")
                ),
                description="enable copy rule" if enable else "disable copy rule",
            )

        if enable:
            toggle()
            return
        self.app.push_screen(
            ConfirmDialog(
                f"Disable copy rule {rule.name}?",
                f"Nothing is copied from {status.source} to {status.destination} (not after "
                "backups, not on its schedule) until it is enabled again; the copies made "
                "stay.",
                yes_label="Disable",
            ),
            lambda yes: yes and toggle(),
        )

    def action_close_form(self) -> None:
        form = self.query_one("#form")
        if form.display:
            form.display = False
            self.query_one("#rules", DataTable).focus()
            self.refresh_bindings()

    def action_close(self) -> None:
        if in_form(self.focused):
            return  # q in a form: a letter or nothing, never a way out
        if self.query_one("#form").display:
            self.action_close_form()
        else:
            self.app.pop_screen()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # Esc closes the form; with no form open it is the app's Esc (back)
        if action == "close_form":
            found = self.query("#form")
            return bool(found) and bool(found.first().display)
        return True

    def action_remove(self) -> None:
        rule_id = self._selected_rule()
        if rule_id is None:
            return

        def answer(yes: bool | None) -> None:
            if yes:
                self.run_engine(
                    lambda: self.engine.copies.remove_rule(int(rule_id), actor="console"),
                    description="remove copy rule",
                )

        # the dialog names the rule as its row shows it: name and source → destination
        name, route = (str(c) for c in self.query_one("#rules", DataTable).get_row(rule_id)[:2])
        self.app.push_screen(
            ConfirmDialog(
                f"Remove copy rule {name} ({route})?",
                "Copies already made stay where they are.",
            ),
            answer,
        )

    def action_run(self) -> None:
        rule_id = self._selected_rule()
        if rule_id is not None:
            self.run_engine(
                lambda: self.engine.copies.run_rule(int(rule_id), actor="console"),
                after=lambda job: self.notify(f"queued job {job.id}: {job.title}"),
                description="run copy rule",
            )

    def form_values(self) -> dict[str, Any]:
        def value(selector: str) -> Any:
            v = self.query_one(selector, Select).value
            return None if v is Select.BLANK else v

        latest = self.query_one("#latest", Input).value.strip()
        return {
            "name": self.query_one("#name", Input).value.strip(),
            "source": value("#source"),
            "destination": value("#destination"),
            "selection": value("#selection") or "all",
            "latest_count": int(latest) if latest.isascii() and latest.isdigit() else None,
            "mode": value("#mode") or "manual",
            "schedule": self.query_one("#schedule", Input).value.strip() or None,
        }

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "cancel":
            self.action_close_form()
        elif event.button.id == "save":
            self.save()

    def save(self) -> None:
        values = self.form_values()
        error = self.query_one("#form-error", Static)
        if not values["source"] or not values["destination"]:
            error.update("pick a source and a destination repository")
            return

        editing = self._editing

        def done(_rule: Any) -> None:
            self.query_one("#form").display = False
            self.query_one("#rules", DataTable).focus()
            self.notify(f"copy rule {values['name']} {'saved' if editing else 'added'}")

        def add() -> Any:
            if editing is not None:
                return self.engine.copies.update_rule(editing, actor="console", **values)
            return self.engine.copies.add_rule(actor="console", **values)

        worker = self.run_worker(add, group="form", thread=True, exit_on_error=False)
        self._form_worker: tuple[Worker[Any], Callable[[Any], None]] | None = (worker, done)

    def on_worker_state_changed(self, event: Any) -> None:
        pending = getattr(self, "_form_worker", None)
        if pending is not None and event.worker is pending[0]:
            from textual.worker import WorkerState

            if event.state == WorkerState.SUCCESS:
                self._form_worker = None
                pending[1](event.worker.result)
                self.refresh_now()
            elif event.state == WorkerState.ERROR:
                self._form_worker = None
                exc = event.worker.error
                message = getattr(exc, "message", None) or str(exc)
                self.query_one("#form-error", Static).update(safe_text(f"✗ {message}"))
            return
        super().on_worker_state_changed(event)
