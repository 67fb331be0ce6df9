"""Policies: schedules, retention, locks and 3-2-1 at a glance, with an editor.

List: name, schedule, target, next run, last result and the 3-2-1 badge of the
policy's VMs. Below it, the details of the policy under the cursor: sources,
target, the next five runs, fulls, retention, copy rules, verify, lock, last run
and the 3-2-1 / 3-2-1-1-0 report with each shortfall and what to add (side by
side from ``SIDE_BY_SIDE`` columns). Everything the pane shows is fetched with
the list, so moving the cursor redraws it at once. Keys (see ``actions.py``):
``a`` add (the editor), ``n`` run now, ``p`` retention preview (what would go
and why, shown in the details), ``x`` apply retention (after a confirmation),
``c`` the copy rules (3-2-1 routes), ``e`` edit (the editor, filled in with the
selected policy; saved through ``PolicyService.update``), Space enable/disable
(disabling asks first), ``d`` remove (after a confirmation; the backups stay).

The editor validates as you type: the cron expression is parsed and its next
five runs shown; everything else (retention numbers, the target repository,
sources, locks) goes through ``PolicyService.validate`` on a worker; Save
saves nothing unless all of it is right.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Button, DataTable, Input, Label, Static
from textual.worker import WorkerState

from engine.errors import LockNotConfirmed
from engine.services.compliance import Compliance
from engine.services.immutability import DOES_NOT_PROTECT, PROTECTS
from engine.services.policies import PolicySpec, cron_error, next_runs
from sendense_tui.actions import bindings_for
from sendense_tui.format import plural, printable, safe_text, short_time
from sendense_tui.screens.base import SendenseScreen
from sendense_tui.screens.copy_rules import CopyRulesScreen
from sendense_tui.styles import STYLES_DIR
from sendense_tui.widgets.confirm import ConfirmDialog
from sendense_tui.widgets.detail import DetailScreen, Heading
from sendense_tui.widgets.quiet import show
from sendense_tui.widgets.tables import FlexTable, cursor_key, sync_rows

COLUMNS = ("name", "schedule", "target", "next", "last", "badge")
RETENTION_FIELDS = ("keep_last", "daily", "weekly", "monthly", "yearly")
EDITOR_NOTE = "Esc closes · times in UTC"
#: the editor's inputs as a new policy starts them
EDITOR_DEFAULTS = {"keep_last": "7", "full_every": "7"}
EDITOR_INPUTS = (
    "name",
    "schedule",
    "target",
    "sources",
    *RETENTION_FIELDS,
    "full_every",
    "immutable_days",
)
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
#: from this many columns the details show settings and 3-2-1 side by side
SIDE_BY_SIDE = 160
#: the full lock explanation (the `?` help shows it; the details pane a short line)
LOCK_NOTE = f"Locks: {PROTECTS} {DOES_NOT_PROTECT}"
LOCK_SHORT = (
    "a lock (chattr +i) stops Sendense, its tools and non-root users, not root (? explains)"
)
_BADGE_ORDER = {"not 3-2-1": 0, "3-2-1": 1, "3-2-1-1-0": 2}


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
    #: for the details pane
    sources: list[dict[str, Any]] = field(default_factory=list)
    target_kind: str = ""
    full_every: int = 0
    full_weekday: int | None = None
    retention: dict[str, Any] = field(default_factory=dict)
    verify_after: bool = False
    last_run: Any = None
    next_runs: list[Any] = field(default_factory=list)
    #: "name → destination (mode)" of the copy rules that copy this policy's backups
    copy_rules: list[str] = field(default_factory=list)
    compliance: list[Compliance] = field(default_factory=list)

    @property
    def gaps(self) -> int:
        return sum(len(c.shortfalls) for c in self.compliance)


@dataclass
class PoliciesData:
    rows: list[PolicyRow]
    repositories: list[str]
    now: Any


def _rule_line(rule: Any, repos: dict[int, str], policy_id: int) -> str:
    """``to-usb → usb-disk (immediate, every backup in primary)``"""
    how = [rule.mode]
    if rule.selection != "all":
        how.append(rule.selection)
    if rule.policy_id != policy_id:
        how.append(f"every backup in {repos.get(rule.source_repository_id, '?')}")
    return f"{rule.name} → {repos.get(rule.destination_repository_id, '?')} ({', '.join(how)})"


def _when(value: Any, now: Any) -> str:
    return short_time(value, now) if value else "never"


def detail_settings(row: PolicyRow, now: Any) -> Table:
    """Sources, target, schedule with the next runs, fulls, retention, copy rules,
    verify, lock and the last run of one policy, as label/value rows."""
    table = Table.grid(padding=(0, 1))
    table.add_column(style="bold", no_wrap=True)
    table.add_column(ratio=1)
    sources = Text()
    for i, src in enumerate(row.sources):
        if i:
            sources.append("\n")
        sources.append(printable(src.get("vm")), style="bold")
        disks = ", ".join(f"{d.get('name')}={d.get('source')}" for d in src.get("disks") or [])
        sources.append(f": {printable(disks) or 'no disks'}")
    table.add_row("Sources", sources if row.sources else Text("none", style="yellow"))
    target = safe_text(row.target, "bold")
    if row.target_kind:
        target.append(f" ({row.target_kind})")
    if not row.enabled:
        target.append("  policy disabled", style="yellow")
    table.add_row("Target", target)
    fulls = f"full every {row.full_every}" if row.full_every else "fulls only"
    if row.full_weekday is not None and 0 <= row.full_weekday < 7:
        fulls += f" and on {WEEKDAYS[row.full_weekday]}"
    schedule = Text(f"{row.schedule} UTC")
    schedule.append(f" · {fulls}", style="")
    table.add_row("Schedule", schedule)
    runs = "  ".join(f"{r:%m-%d %H:%M}" for r in row.next_runs) if row.enabled else "off"
    table.add_row("Next", Text(runs or "none"))
    kept = [
        f"{'last' if key == 'keep_last' else key} {row.retention[key]}"
        for key in RETENTION_FIELDS
        if row.retention.get(key)
    ]
    table.add_row("Keep", Text(" · ".join(kept) if kept else "no rule: every point is kept"))
    copies = (
        Text("\n".join(printable(r) for r in row.copy_rules))
        if row.copy_rules
        else Text("none", style="dim")
    )
    table.add_row("Copies", copies)
    checks = Text(f"verify after backup: {'yes' if row.verify_after else 'no'} · lock ")
    if row.immutable_days:
        checks.append(f"{row.immutable_days} days", style="bold")
        checks.append(f" ({LOCK_SHORT})", style="dim")
    else:
        checks.append("none")
    table.add_row("Checks", checks)
    last = Text(_when(row.last_run, now))
    if row.last_result:
        ok = row.last_result in ("ok", "succeeded")
        last.append(f"  {row.last_result}", style="green" if ok else "red")
    table.add_row("Last run", last)
    return table


def detail_compliance(row: PolicyRow) -> Group | Text:
    """The 3-2-1 and 3-2-1-1-0 report of each of the policy's VMs: each shortfall
    says what to add."""
    if not row.compliance:
        return Text("3-2-1: no VM to report on (the policy has no sources)", style="yellow")
    parts: list[Text | Table] = []
    for report in row.compliance:
        head = Text()
        head.append(f"{printable(report.vm)} ", style="bold")
        colour = "yellow" if report.badge == "not 3-2-1" else "green"
        head.append(f" {report.badge} ", style=f"bold reverse {colour}")
        head.append(
            printable(
                f"  copies {report.copies} · devices {report.devices}"
                f" · offsite {', '.join(report.offsite) or 'none'}"
                f" · immutable {', '.join(report.immutable) or 'none'}"
            ),
            style="dim",
        )
        if report.verification_errors:
            errors = plural(report.verification_errors, "verify error")
            head.append(f" · {errors}", style="red")
        parts.append(head)
        table = Table.grid(padding=(0, 1))
        table.add_column(no_wrap=True)
        table.add_column(ratio=1)
        for gap in report.shortfalls:
            table.add_row(Text("✗", style="yellow"), safe_text(gap, "yellow"))
        if report.meets_321:
            table.add_row(Text("✓", style="green"), Text("3-2-1 met", style="green"))
        for gap in report.strict_shortfalls:
            table.add_row(Text("·", style="dim"), safe_text(f"for 3-2-1-1-0: {gap}", "dim"))
        parts.append(table)
    return Group(*parts)


class PoliciesScreen(SendenseScreen):
    MODE = "policies"
    #: a 100,000-point catalog is read again only when it changed
    WATCH_CHANGES = True
    CSS_PATH = STYLES_DIR / "policies.tcss"
    BINDINGS = bindings_for("policies")
    #: shown under the keys in `?` help
    HELP_NOTE = LOCK_NOTE

    def __init__(self) -> None:
        super().__init__()
        self._repos: list[str] = []
        self._rows: dict[int, PolicyRow] = {}
        self._now: Any = None
        #: (policy id, retention plan text) while a preview is shown
        self._plan: tuple[int, Text] | None = None
        self._validate_worker: Any = None
        self._save_worker: Any = None
        self.saved: list[str] = []
        #: the policy the editor changes (None: it adds a new one), and its stored spec
        #: (the settings the editor has no input for are kept from it)
        self._editing: int | None = None
        self._base: PolicySpec | None = None

    def compose_body(self) -> ComposeResult:
        # the layout's class before the widgets are styled: set once they are, every
        # widget of the screen is styled again (0.1 s on the UI thread)
        self._fit(self.app.size.width)
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
            list_name="policies",
        )
        with VerticalScroll(id="detail"):
            yield Static("", id="detail-settings")
            yield Static("", id="detail-compliance")
        with Vertical(id="editor"):
            yield Static(f"New policy · {EDITOR_NOTE}", id="editor-title")
            # every field has its label on its line; compact boxes keep the list in
            # view at 80x24
            with Horizontal():
                yield Label("Name", classes="label")
                yield Input(placeholder="nightly", id="name", compact=True)
                yield Label("Cron", classes="label")
                yield Input(placeholder="0 2 * * *", id="schedule", compact=True)
                yield Label("Target", classes="label")
                yield Input(placeholder="repository", id="target", compact=True)
            yield Static("", id="cron-help")
            with Horizontal():
                yield Label("Sources", classes="label")
                yield Input(placeholder="VM:DISK=SOURCE, …", id="sources", compact=True)
            with Horizontal(classes="numbers"):
                yield Label("Keep last", classes="label")
                yield Input(value="7", id="keep_last", compact=True)
                yield Label("daily", classes="label")
                yield Input(id="daily", compact=True)
                yield Label("weekly", classes="label")
                yield Input(id="weekly", compact=True)
                yield Label("monthly", classes="label")
                yield Input(id="monthly", compact=True)
                yield Label("yearly", classes="label")
                yield Input(id="yearly", compact=True)
            with Horizontal(classes="numbers"):
                yield Label("Full every", classes="label")
                yield Input(value="7", id="full_every", compact=True)
                yield Label("backups · Lock for", classes="label")
                yield Input(placeholder="0", id="immutable_days", compact=True)
                yield Label("days", classes="label")
            yield Static("", id="editor-error")
            with Horizontal(id="editor-buttons"):
                yield Button("Save", id="save", variant="primary", compact=True)
                yield Button("Cancel", id="cancel", compact=True)

    def on_mount(self) -> None:
        self.query_one("#editor").display = False
        self.query_one("#policies", DataTable).focus()
        self.query_one("#detail").border_title = "Details"

    def on_resize(self, event: events.Resize) -> None:
        self._fit(event.size.width)

    def _fit(self, width: int) -> None:
        self.set_class(width < SIDE_BY_SIDE, "narrow")

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._show_detail()

    def _show_detail(self) -> None:
        settings = self.query_one("#detail-settings", Static)
        report = self.query_one("#detail-compliance", Static)
        pid = self._selected()
        row = self._rows.get(pid) if pid is not None else None
        if row is None:
            show(
                settings,
                Text(
                    "No policy yet. a adds one: what to back up, where, when and how long "
                    "to keep it.",
                    style="dim",
                ),
            )
            show(report, "")
            return
        detail_box = self.query_one("#detail")
        if detail_box.border_title != f"Details · {row.name}":  # setting it repaints
            detail_box.border_title = f"Details · {row.name}"
        if self._plan is not None and self._plan[0] != row.id:
            self._plan = None
        if self._plan is not None:
            show(settings, Group(self._plan[1], detail_settings(row, self._now)))
        else:
            show(settings, detail_settings(row, self._now))
        show(report, detail_compliance(row))

    # -- data ----------------------------------------------------------------------

    def fetch(self) -> PoliciesData:
        engine = self.engine
        now = engine.clock.now()
        all_repos = {r.id: r for r in engine.repositories.list()}
        repos = {i: r.name for i, r in all_repos.items()}
        rules = engine.copies.list_rules()
        policies = engine.policies.list()
        # every policy's VMs in one set-based pass (a report per VM took minutes at 500)
        reports = engine.compliance.reports_for_vms(
            sorted({str(src.get("vm")) for p in policies for src in p.sources or []})
        )
        rows = []
        for p in policies:
            vms = [str(src.get("vm")) for src in p.sources or []]
            compliance = [reports[vm] for vm in vms]
            badge = min(
                (c.badge for c in compliance), key=_BADGE_ORDER.__getitem__, default="not 3-2-1"
            )
            copy_rules = [
                _rule_line(rule, repos, p.id)
                for rule in rules
                if rule.policy_id == p.id
                or (rule.policy_id is None and rule.source_repository_id == p.target_repository_id)
            ]
            try:
                runs = next_runs(p.schedule, now, 5)
            except (ValueError, KeyError):
                runs = []
            target = all_repos.get(p.target_repository_id)
            rows.append(
                PolicyRow(
                    id=p.id,
                    name=p.name,
                    schedule=p.schedule,
                    target=repos.get(p.target_repository_id, "?"),
                    enabled=p.enabled,
                    next_run=p.next_run_at,
                    last_result=p.last_result,
                    badge=badge,
                    immutable_days=p.immutable_days,
                    sources=list(p.sources or []),
                    target_kind=target.kind if target else "",
                    full_every=p.full_every,
                    full_weekday=p.full_weekday,
                    retention=dict(p.retention or {}),
                    verify_after=p.verify_after,
                    last_run=p.last_run_at,
                    next_runs=runs,
                    copy_rules=copy_rules,
                    compliance=compliance,
                )
            )
        return PoliciesData(rows, sorted(repos.values()), now)

    def apply(self, data: PoliciesData) -> None:
        self._repos = data.repositories
        rows = []
        self._rows = {r.id: r for r in data.rows}
        self._now = data.now
        for r in data.rows:
            if r.gaps:  # the details pane says what each one is and what to add
                badge = Text(f"✗ {plural(r.gaps, 'gap')}", style="yellow")
            else:
                badge = Text(f"✓ {r.badge}", style="green")
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
        self._show_detail()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_open_details()

    def action_open_details(self) -> None:
        """Enter: the policy's settings and 3-2-1 report in full, scrollable."""
        pid = self._selected()
        row = self._rows.get(pid) if pid is not None else None
        if row is not None:
            self.app.push_screen(
                DetailScreen(
                    f"Policy {row.name}",
                    [detail_settings(row, self._now), Heading("3-2-1"), detail_compliance(row)],
                )
            )

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
        pid = self._selected()
        if pid is not None:
            self._plan = (pid, text)
            self._show_detail()

    def action_apply(self) -> None:
        pid = self._selected()
        row = self._rows.get(pid) if pid is not None else None
        if pid is None or row is None:
            return

        def answer(yes: bool | None) -> None:
            if yes:
                self.run_engine(
                    # a disk being written refuses at once, naming its writer
                    lambda: self.engine.policies.apply_retention(pid, actor="console", wait=False),
                    after=lambda result: self.notify(result.sentence()),
                    description="apply retention",
                )

        self.app.push_screen(
            ConfirmDialog(
                f"Apply retention of policy {row.name} in {row.target} now?",
                "Points no rule keeps are deleted or merged; locked points and points "
                "without their copies stay (see the preview with p).",
            ),
            answer,
        )

    # the screen's own "toggle" (a policy on/off), not DOMNode's toggle of an attribute
    def action_toggle(self) -> None:  # type: ignore[override]
        pid = self._selected()
        row = self._rows.get(pid) if pid is not None else None
        if row is None:
            return
        enable = not row.enabled

        def toggle() -> None:
            self.run_engine(
                lambda: self.engine.policies.set_enabled(row.id, enable, actor="console"),
                after=lambda policy: self.notify(
                    f"policy {policy.name} {'enabled' if policy.enabled else 'disabled'}"
                    + ("" if policy.enabled else ": no scheduled runs until Space enables it")
                ),
                description="enable policy" if enable else "disable policy",
            )

        if enable:
            toggle()
            return
        self.app.push_screen(
            ConfirmDialog(
                f"Disable policy {row.name}?",
                f"Its schedule stops ({row.schedule}): no backups of its VMs run until it is "
                "enabled again. The backups it made stay.",
                yes_label="Disable",
            ),
            lambda yes: yes and toggle(),
        )

    def action_remove(self) -> None:
        pid = self._selected()
        row = self._rows.get(pid) if pid is not None else None
        if row is None:
            return

        def answer(yes: bool | None) -> None:
            if yes:
                self.run_engine(
                    lambda: self.engine.policies.remove(row.id, actor="console"),
                    after=lambda _: self.notify(f"policy {row.name} removed"),
                    description="remove policy",
                )

        self.app.push_screen(
            ConfirmDialog(
                f"Remove policy {row.name}?",
                f"Its schedule stops: no more runs ({row.schedule}). The backups it made "
                "stay in the repository; delete them from Chains if you want them gone.",
                yes_label="Remove",
            ),
            answer,
        )

    # -- the editor ----------------------------------------------------------------------

    def action_add(self) -> None:
        if self._editing is not None:  # the last edit's values are not a new policy's
            self._fill({field: EDITOR_DEFAULTS.get(field, "") for field in EDITOR_INPUTS})
        self._editing = None
        self._base = None
        self.query_one("#editor-title", Static).update(f"New policy · {EDITOR_NOTE}")
        self.query_one("#editor").display = True
        self.query_one("#detail").display = False
        self.query_one("#editor-error", Static).update("")
        self.query_one("#name", Input).focus()

    def action_edit(self) -> None:
        pid = self._selected()
        if pid is not None:
            self.run_engine(
                lambda: self.engine.policies.spec_of(pid),
                after=lambda spec: self._open_edit(pid, spec),
                description="edit policy",
            )

    def _open_edit(self, pid: int, spec: PolicySpec) -> None:
        self._editing = pid
        self._base = spec
        self.query_one("#editor-title", Static).update(f"Edit policy {spec.name} · {EDITOR_NOTE}")
        self.query_one("#editor").display = True
        self.query_one("#detail").display = False
        self.query_one("#editor-error", Static).update("")
        sources = ", ".join(
            f"{src.get('vm')}:{d.get('name')}={d.get('source')}"
            for src in spec.sources
            for d in src.get("disks") or []
        )
        values = {
            "name": spec.name,
            "schedule": spec.schedule,
            "target": str(spec.target),
            "sources": sources,
            "full_every": str(spec.full_every),
            "immutable_days": str(spec.immutable_days) if spec.immutable_days else "",
        }
        for key in RETENTION_FIELDS:
            value = spec.retention.get(key)
            values[key] = str(value) if value else ""
        self._fill(values)
        self.query_one("#schedule", Input).focus()

    def _fill(self, values: dict[str, str]) -> None:
        for key, value in values.items():
            self.query_one(f"#{key}", Input).value = value

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
        # an edit keeps what the editor has no input for (copy rules, full weekday, ...)
        kept = self._base.as_dict() if self._base is not None else {}
        return PolicySpec(
            **{
                **kept,
                "name": self._value("name"),
                "schedule": self._value("schedule"),
                "target": self._value("target"),
                "sources": sources,
                "full_every": full_every if isinstance(full_every, int) else 0,
                "retention": {f: number(f) for f in RETENTION_FIELDS},
                "immutable_days": lock if isinstance(lock, int) else -1,
            }
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
        editing = self._editing
        self._validate_worker = self.run_worker(
            lambda: self._problems(spec, editing),
            group="validate",
            exclusive=True,
            thread=True,
            exit_on_error=False,
        )

    def _problems(self, spec: PolicySpec, editing: int | None = None) -> dict[str, str]:
        broken = [s.get("error") for s in spec.sources if s.get("error")]
        problems = self.engine.policies.validate(
            PolicySpec(**{**spec.as_dict(), "sources": [] if broken else spec.sources}),
            existing_id=editing,
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
        for name, message in problems.items():
            text.append(f"✗ {name}: {printable(message)}\n", style="red")
        box.update(text)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "cancel":
            self.action_close_form()
        elif event.button.id == "save":
            self.save()

    def save(self, *, confirm_lock: bool = False) -> None:
        spec = self.spec()
        editing = self._editing

        def add() -> Any:
            broken = [s.get("error") for s in spec.sources if s.get("error")]
            if broken:
                from engine.errors import ValidationError

                raise ValidationError(f"policy {spec.name} was not saved: sources: {broken[0]}")
            try:
                if editing is not None:
                    return self.engine.policies.update(
                        editing, spec, actor="console", confirm_lock=confirm_lock
                    )
                return self.engine.policies.add(spec, actor="console", confirm_lock=confirm_lock)
            except LockNotConfirmed as refused:
                return refused  # a question for the operator, not a failure

        self._save_worker = self.run_worker(add, group="save", thread=True, exit_on_error=False)

    def _ask_lock(self, refused: LockNotConfirmed) -> None:
        """The engine refuses a new or longer lock period until it is confirmed: ask,
        showing what the lock would hold, and save again only on yes."""

        def answered(yes: bool | None) -> None:
            if yes:
                self.save(confirm_lock=True)
            else:
                self.query_one("#editor-error", Static).update(
                    safe_text("✗ not saved: the lock period was not confirmed", "red")
                )

        self.app.push_screen(
            ConfirmDialog(
                f"Lock these backups for {refused.days} days? It cannot be shortened later.",
                f"{refused.estimate.sentence()}.\n{PROTECTS} {DOES_NOT_PROTECT}",  # type: ignore[attr-defined]
                yes_label="Lock",
            ),
            answered,
        )

    def on_worker_state_changed(self, event: Any) -> None:
        worker = event.worker
        if worker is self._validate_worker:
            if event.state == WorkerState.SUCCESS:
                self._show_problems(worker.result)
            return
        if worker is self._save_worker:
            if event.state == WorkerState.SUCCESS and isinstance(worker.result, LockNotConfirmed):
                self._save_worker = None
                self._ask_lock(worker.result)
            elif event.state == WorkerState.SUCCESS:
                self._save_worker = None
                self.saved.append(worker.result.name)
                self.action_close_form()
                self.notify(f"policy {worker.result.name} saved")
                self.refresh_now()
            elif event.state == WorkerState.ERROR:
                self._save_worker = None
                exc = worker.error
                message = getattr(exc, "message", None) or str(exc)
                self.query_one("#editor-error", Static).update(safe_text(f"✗ {message}", "red"))
            return
        super().on_worker_state_changed(event)
