"""The `?` help screen, built from the live bindings of the screen beneath."""

from __future__ import annotations

from dataclasses import dataclass

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Static

from sendense_tui.actions import COMMANDS
from sendense_tui.styles import STYLES_DIR


@dataclass(frozen=True)
class HelpRow:
    keys: str
    description: str


#: cursor moves of every list (j/k, g/G) join the widgets' keys on the navigation line
_NAVIGATION_ACTIONS = ("cursor_down", "cursor_up", "first", "last")


def rows_from_bindings(screen: Screen[object]) -> list[HelpRow]:
    """One row per command of the table bound on ``screen``: the screen's own
    commands first, then those that work everywhere.

    Several keys for one action share a row; the number keys that switch
    sections are folded into one row, and the keys of the focused widget (a
    list's arrows, Page Up…) into one navigation line, so the help fits 80x24.
    """
    app = screen.app
    table = {cmd.id: (index, cmd) for index, cmd in enumerate(COMMANDS)}
    scope = getattr(screen, "MODE", "")
    # a widget that takes one of the screen's keys first (Enter on a list) still
    # ends in the screen's command (the screen acts on the widget's message)
    own = {
        key: table[cmd.id] for cmd in COMMANDS if cmd.scope == scope for key in cmd.keys.split(",")
    }
    grouped: dict[str, list[str]] = {}
    rank: dict[str, tuple[int, int, str]] = {}
    sections: list[str] = []
    navigation: list[str] = []
    for key, active in screen.active_bindings.items():
        binding: Binding = active.binding
        if binding.action.startswith("switch_mode(") or binding.action.startswith(
            "app.switch_mode("
        ):
            sections.append(f"{key} {binding.description}")
            continue
        shown = binding.key_display or app.get_key_display(binding)
        found = table.get(binding.id or "") or own.get(key)
        if found is None or found[1].action in _NAVIGATION_ACTIONS:
            # a widget's own key: only the plain ones (no Ctrl/Shift chords)
            if "+" not in key and shown not in navigation:
                navigation.append(shown)
            continue
        index, cmd = found
        described = (0 if cmd.scope == scope else 1, index, cmd.help or cmd.description)
        rank[cmd.action] = min(rank.get(cmd.action, described), described)
        keys = grouped.setdefault(cmd.action, [])
        if shown not in keys:
            keys.append(shown)
    rows = [
        HelpRow(", ".join(grouped[action]), rank[action][2])
        for action in sorted(grouped, key=lambda action: rank[action][:2])
    ]
    if sections:
        rows.append(HelpRow(f"1-{len(sections)}", "Go to a section: " + ", ".join(sections)))
    if navigation:
        rows.append(HelpRow("arrows…", "Move in the list: " + " ".join(navigation)))
    return rows


class HelpScreen(ModalScreen[None]):
    CSS_PATH = STYLES_DIR / "help.tcss"
    BINDINGS = [
        Binding("escape,q,question_mark", "close", "Close", show=True),
    ]

    def __init__(self, title: str, rows: list[HelpRow], note: str = "") -> None:
        super().__init__()
        self.title_text = title
        self.rows = rows
        #: a screen's longer explanation (its ``HELP_NOTE``), under the keys
        self.note = note

    def compose(self) -> ComposeResult:
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold", no_wrap=True)
        table.add_column(ratio=1)
        for row in self.rows:
            table.add_row(Text(row.keys), Text(row.description))
        with VerticalScroll(id="help"):
            yield Static(table, id="keys")
            if self.note:
                yield Static(Text(self.note), id="help-note")
            yield Static(Text("Esc, q or ? closes this help.", style="dim"), id="help-footer")

    def on_mount(self) -> None:
        self.query_one("#help").border_title = f"Keys — {self.title_text}"

    def action_close(self) -> None:
        self.dismiss(None)
