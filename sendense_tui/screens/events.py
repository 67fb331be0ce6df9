"""Events: the audit log, newest first, filtered by text, level and source.

The text filter is every list's ``/`` (the shared filter bar); here it is also
handed to the audit query, so it searches the whole log, not only the rows shown."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from rich.text import Text
from textual.app import ComposeResult
from textual.widgets import DataTable, Static

from engine.views import LEVELS, AuditEntry
from sendense_tui.actions import bindings_for
from sendense_tui.details import event_detail
from sendense_tui.format import level_text, safe_text, short_time
from sendense_tui.screens.base import SendenseScreen
from sendense_tui.styles import STYLES_DIR
from sendense_tui.widgets.quiet import show
from sendense_tui.widgets.tables import FlexTable, ListFiltered, cursor_key, sync_rows

COLUMNS = ("time", "level", "source", "message")
#: the order `l` walks through minimum levels
LEVEL_CYCLE = ("info", "warning", "error", "debug")


@dataclass
class EventsData:
    now: datetime
    entries: list[AuditEntry]
    text: str
    level: str
    source: str | None
    #: repository names by id (an event's details name its repository)
    repositories: dict[int, str] = field(default_factory=dict)


class EventsScreen(SendenseScreen):
    MODE = "events"
    #: read again only when the catalog changed (or REREAD_SECONDS passed), not
    #: every second: an idle console stays near no CPU
    WATCH_CHANGES = True
    CSS_PATH = STYLES_DIR / "events.tcss"
    BINDINGS = bindings_for("events")

    def __init__(self) -> None:
        super().__init__()
        self.text = ""
        self.level = "info"
        self.source: str | None = None
        self._sources: set[str] = set()
        #: the shown entries by row key (Enter shows one in full)
        self._entries: dict[str, AuditEntry] = {}
        self._repositories: dict[int, str] = {}

    def compose_body(self) -> ComposeResult:
        yield Static(id="filters")
        yield FlexTable(
            [
                ("time", "Time", 11),
                ("level", "Level", 8),
                ("source", "Source", 10),
                ("message", "Message", None),
            ],
            id="events",
            list_name="events (message or kind, whole log)",
            local_filter=False,
        )

    def on_mount(self) -> None:
        table = self.query_one("#events", DataTable)
        self._show_filters()
        table.focus()

    def fetch(self) -> EventsData:
        text, level, source = self.text, self.level, self.source
        entries = self.engine.audit.query(
            min_level=level, source=source, text=text or None, limit=500
        )
        names = {r.id: r.name for r in self.engine.repositories.list()}
        return EventsData(self.sendense.clock.now(), entries, text, level, source, names)

    def apply(self, data: EventsData) -> None:
        if (data.text, data.level, data.source) != (self.text, self.level, self.source):
            # the filter moved while fetching: this result is stale, fetch again
            self.refresh_now()
            return
        self._sources.update(e.source for e in data.entries)
        self._entries = {str(e.id): e for e in data.entries}
        self._repositories = data.repositories
        sync_rows(
            self.query_one("#events", DataTable),
            [
                (
                    str(e.id),
                    (
                        Text(short_time(e.at, data.now), style="dim"),
                        level_text(e.level),
                        safe_text(e.source, "dim"),
                        e.message,
                    ),
                )
                for e in data.entries
            ],
            COLUMNS,
        )
        self._show_filters(len(data.entries))

    def _show_filters(self, count: int | None = None) -> None:
        text = Text()
        text.append("level ≥ ", style="dim")
        text.append(self.level, style="bold")
        text.append("  source ", style="dim")
        text.append(self.source or "all", style="bold")
        if self.text:
            text.append("  text ", style="dim")
            text.append(f"“{self.text}”", style="bold")
        if count is not None:
            text.append(f"  {count} shown", style="dim")
        show(self.query_one("#filters", Static), text)

    # -- keys ------------------------------------------------------------------------

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_open_details()

    def action_open_details(self) -> None:
        """Enter: the whole event (its message uncut, its job, repository and data)."""
        entry = self._entries.get(cursor_key(self.query_one("#events", DataTable)) or "")
        if entry is not None:
            self.app.push_screen(event_detail(entry, self._repositories))

    def on_list_filtered(self, event: ListFiltered) -> None:
        """The filter text also narrows the audit query (the whole log is searched)."""
        text = event.listing.filter_text
        if text != self.text:
            self.text = text
            self._show_filters()
            self.refresh_now()

    def action_cycle_level(self) -> None:
        index = LEVEL_CYCLE.index(self.level) if self.level in LEVEL_CYCLE else -1
        self.level = LEVEL_CYCLE[(index + 1) % len(LEVEL_CYCLE)]
        assert self.level in LEVELS
        self._show_filters()
        self.refresh_now()

    def action_cycle_source(self) -> None:
        choices: list[str | None] = [None, *sorted(self._sources)]
        index = choices.index(self.source) if self.source in choices else 0
        self.source = choices[(index + 1) % len(choices)]
        self._show_filters()
        self.refresh_now()
