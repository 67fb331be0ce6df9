"""Policies: schedules, retention, locks and 3-2-1 at a glance, with an editor.

List: name, schedule, target, next run, last result and the 3-2-1 badge of the
policy's VMs. Keys (see ``actions.py``): ``a`` add (the editor), ``n`` run now, ``p``
retention preview (what would go and why), ``x`` apply retention (after a
confirmation), ``c`` the copy rules (3-2-1 routes).

The editor validates as you type: the cron expression is parsed and its next
five runs shown; everything else (retention numbers, the target repository,
sources, locks) goes through ``PolicyService.validate`` on a worker; Save
saves nothing unless all of it is right.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, DataTable, Input, Static
from textual.worker import WorkerState

from engine.services.immutability import DOES_NOT_PROTECT, PROTECTS
from engine.services.policies import PolicySpec, cron_error, next_runs
from sendense_tui.actions import bindings_for
from sendense_tui.format import short_time
from sendense_tui.screens.base import SendenseScreen
from sendense_tui.screens.copy_rules import CopyRulesScreen
from sendense_tui.styles import STYLES_DIR
from sendense_tui.widgets.confirm import ConfirmDialog
from sendense_tui.widgets.tables import FlexTable, cursor_key, sync_rows

COLUMNS = ("name", "schedule", "target", "next", "last", "badge")
RETENTION_FIELDS = ("keep_last", "daily", "weekly", "monthly", "yearly")


@dataclass
class PolicyRow:
    id: int
    name: str
    schedule: str
    target: str
    enabled: bool
    next_run: Any
    last_result: str | None
    badge: str
    immutable_days: int


@dataclass
class PoliciesData:
    rows: list[PolicyRow]
    repositories: list[str]
    now: Any


class PoliciesScreen(SendenseScreen):
    MODE = "policies"
    CSS_PATH = STYLES_DIR / "policies.tcss"
    BINDINGS = bindings_for("policies")

    def __init__(self) -> None:
        super().__init__()
        self._repos: list[str] = []
        self._validate_worker: Any = None
        self._save_worker: Any = None
        self.saved: list[str] = []

    def compose_body(self) -> ComposeResult:
        yield FlexTable(
            [
                ("name", "Policy", 12),
                ("schedule", "Schedule", 13),
                ("target", "Target", 10),
                ("next", "Next run", 11),
                ("last", "Last", 8),
                ("badge", "3-2-1", None),
            ],
            id="policies",
        )
        yield Static("", id="detail")
        with Vertical(id="editor"):
            yield Static(
                "New policy · Esc closes · cron in UTC · retention: last, daily, weekly, "
                "monthly, yearly · a full every N · lock days",
                id="editor-title",
            )
            with Horizontal():
                yield Input(placeholder="name", id="name")
                yield Input(placeholder="cron, e.g. 0 2 * * *", id="schedule")
                yield Input(placeholder="target repository", id="target")
            yield Static("", id="cron-help")
            yield Input(placeholder="sources: VM:DISK=SOURCE, VM:DISK=SOURCE", id="sources")
            with Horizontal():
                yield Input(value="7", placeholder="last", id="keep_last")
                yield Input(placeholder="daily", id="daily")
                yield Input(placeholder="weekly", id="weekly")
                yield Input(placeholder="monthly", id="monthly")
                yield Input(placeholder="yearly", id="yearly")
                yield Input(value="7", placeholder="full/N", id="full_every")
                yield Input(placeholder="lock d", id="immutable_days")
            yield Static("", id="editor-error")
            with Horizontal(id="editor-buttons"):
                yield Button("Save", id="save", variant="primary")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#editor").display = False
        self.query_one("#policies", DataTable).focus()
        self._show_lock_text()

    def _show_lock_text(self) -> None:
        text = Text()
        text.append("Locks: ", style="bold")
        text.append(PROTECTS + " ")
        text.append(DOES_NOT_PROTECT, style="italic")
        self.query_one("#detail", Static).update(text)

    # -- data ----------------------------------------------------------------------

    def fetch(self) -> PoliciesData:
        engine = self.engine
        repos = {r.id: r.name for r in engine.repository_store.list()}
        rows = [
            PolicyRow(
                id=p.id,
                name=p.name,
                schedule=p.schedule,
                target=repos.get(p.target_repository_id, "?"),
                enabled=p.enabled,
                next_run=p.next_run_at,
                last_result=p.last_result,
                badge=engine.compliance.for_policy(p),
                immutable_days=p.immutable_days,
            )
            for p in engine.policies.list()
        ]
        return PoliciesData(rows, sorted(repos.values()), engine.clock.now())

    def apply(self, data: PoliciesData) -> None:
        self._repos = data.repositories
        rows = []
        for r in data.rows:
            badge = Text(r.badge, style="green" if r.badge != "not 3-2-1" else "yellow")
            if r.immutable_days:
                badge.append(f" · lock {r.immutable_days}d")
            rows.append(
                (
                    str(r.id),
                    [
                        r.name,
                        r.schedule,
                        r.target,
                        short_time(r.next_run, data.now) if r.enabled else "off",
                        r.last_result or "never",
                        badge,
                    ],
                )
            )
        table = self.query_one("#policies", DataTable)
        sync_rows(table, rows, COLUMNS)

    # -- list actions ------------------------------------------------------------------

    def _selected(self) -> int | None:
        key = cursor_key(self.query_one("#policies", DataTable))
        return int(key) if key else None

    def action_run(self) -> None:
        pid = self._selected()
        if pid is not None:
            self.run_engine(
                lambda: self.engine.policies.run_now(pid, actor="console"),
                after=lambda job: self.notify(f"queued job {job.id}: {job.title}"),
                description="run policy",
            )

    def action_preview(self) -> None:
        pid = self._selected()
        if pid is not None:
            self.run_engine(
                lambda: self.engine.policies.preview(pid),
                after=self._show_plan,
                description="retention preview",
            )

    def _show_plan(self, plan: Any) -> None:
        text = Text()
        text.append(plan.sentence() + "\n", style="bold")
        for d in plan.decisions[-12:]:
            style = "" if d.action == "keep" else ("red" if d.blocked else "yellow")
            why = ("blocked: " + d.blocked) if d.blocked else "; ".join(d.reasons)
            text.append(
                f"#{d.backup_id} {d.vm}/{d.disk} {d.point_time:%m-%d %H:%M} {d.action:<6} {why}\n",
                style=style,
            )
        if not plan.merges_allowed:
            text.append("immutable target: no merges, chains go whole\n", style="italic")
        self.query_one("#detail", Static).update(text)

    def action_apply(self) -> None:
        pid = self._selected()
        if pid is None:
            return

        def answer(yes: bool | None) -> None:
            if yes:
                self.run_engine(
                    lambda: self.engine.policies.apply_retention(pid, actor="console"),
                    after=lambda result: self.notify(result.sentence()),
                    description="apply retention",
                )

        self.app.push_screen(
            ConfirmDialog(
                "Apply retention now?",
                "Points no rule keeps are deleted or merged; locked points and points "
                "without their copies stay (see the preview with p).",
            ),
            answer,
        )

    # -- the editor ----------------------------------------------------------------------

    def action_add(self) -> None:
        self.query_one("#editor").display = True
        self.query_one("#detail").display = False
        self.query_one("#editor-error", Static).update("")
        self.query_one("#name", Input).focus()

    def action_close_form(self) -> None:
        editor = self.query_one("#editor")
        if editor.display:
            editor.display = False
            self.query_one("#detail").display = True
            self.query_one("#policies", DataTable).focus()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # Esc closes the editor; with no editor open it is the app's Esc (back)
        if action == "close_form":
            found = self.query("#editor")
            return bool(found) and bool(found.first().display)
        return True

    def action_copy_rules(self) -> None:
        self.app.push_screen(CopyRulesScreen())

    def _value(self, field: str) -> str:
        return self.query_one(f"#{field}", Input).value.strip()

    def spec(self) -> PolicySpec:
        """The editor's values as a spec (bad numbers are left for validation to name)."""

        def number(field: str, default: int = 0) -> Any:
            raw = self._value(field)
            if not raw:
                return default
            return int(raw) if raw.isdigit() else raw

        sources: list[dict[str, Any]] = []
        parts = [p.strip() for p in self._value("sources").split(",") if p.strip()]
        try:
            sources = PolicySpec.sources_from(parts)
        except Exception as exc:  # shown by validation as a sources problem
            sources = [{"vm": "", "disks": [], "error": getattr(exc, "message", str(exc))}]
        full_every = number("full_every", 7)
        lock = number("immutable_days", 0)
        return PolicySpec(
            name=self._value("name"),
            schedule=self._value("schedule"),
            target=self._value("target"),
            sources=sources,
            full_every=full_every if isinstance(full_every, int) else 0,
            retention={f: number(f) for f in RETENTION_FIELDS},
            immutable_days=lock if isinstance(lock, int) else -1,
        )

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "schedule":
            self._show_cron(event.value)
        if self.query_one("#editor").display:
            self._validate_soon()

    def _show_cron(self, schedule: str) -> None:
        help_text = self.query_one("#cron-help", Static)
        error = cron_error(schedule)
        if error:
            help_text.update(Text(f"✗ {error}", style="red"))
            return
        runs = next_runs(schedule, self.sendense.clock.now(), 5)
        help_text.update(
            Text("next: " + " · ".join(f"{r:%a %d %H:%M}" for r in runs), style="green")
        )

    def _validate_soon(self) -> None:
        spec = self.spec()
        self._validate_worker = self.run_worker(
            lambda: self._problems(spec),
            group="validate",
            exclusive=True,
            thread=True,
            exit_on_error=False,
        )

    def _problems(self, spec: PolicySpec) -> dict[str, str]:
        broken = [s.get("error") for s in spec.sources if s.get("error")]
        problems = self.engine.policies.validate(
            PolicySpec(**{**spec.as_dict(), "sources": [] if broken else spec.sources})
        )
        if broken:
            problems["sources"] = str(broken[0])
        return problems

    def _show_problems(self, problems: dict[str, str]) -> None:
        box = self.query_one("#editor-error", Static)
        if not problems:
            box.update(Text("✓ ready to save", style="green"))
            return
        text = Text()
        for field, message in problems.items():
            text.append(f"✗ {field}: {message}\n", style="red")
        box.update(text)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "cancel":
            self.action_close_form()
        elif event.button.id == "save":
            self.save()

    def save(self) -> None:
        spec = self.spec()

        def add() -> Any:
            broken = [s.get("error") for s in spec.sources if s.get("error")]
            if broken:
                from engine.errors import ValidationError

                raise ValidationError(f"policy {spec.name} was not saved: sources: {broken[0]}")
            return self.engine.policies.add(spec, actor="console")

        self._save_worker = self.run_worker(add, group="save", thread=True, exit_on_error=False)

    def on_worker_state_changed(self, event: Any) -> None:
        worker = event.worker
        if worker is self._validate_worker:
            if event.state == WorkerState.SUCCESS:
                self._show_problems(worker.result)
            return
        if worker is self._save_worker:
            if event.state == WorkerState.SUCCESS:
                self._save_worker = None
                self.saved.append(worker.result.name)
                self.action_close_form()
                self.notify(f"policy {worker.result.name} saved")
                self.refresh_now()
            elif event.state == WorkerState.ERROR:
                self._save_worker = None
                exc = worker.error
                message = getattr(exc, "message", None) or str(exc)
                self.query_one("#editor-error", Static).update(Text(f"✗ {message}", style="red"))
            return
        super().on_worker_state_changed(event)
