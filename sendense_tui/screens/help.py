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


def rows_from_bindings(screen: Screen[object]) -> list[HelpRow]:
    """One row per action bound on ``screen`` (its widgets, itself, the app).

    Several keys for one action share a row; the number keys that switch
    sections are folded into one row so the list fits a small terminal.
    """
    app = screen.app
    grouped: dict[tuple[str, str], list[str]] = {}
    sections: list[str] = []
    first_id: dict[tuple[str, str], str] = {}
    for key, active in screen.active_bindings.items():
        binding: Binding = active.binding
        description = active.tooltip or binding.tooltip or binding.description
        if not description:
            continue
        if binding.action.startswith("switch_mode(") or binding.action.startswith(
            "app.switch_mode("
        ):
            sections.append(f"{key} {binding.description}")
            continue
        shown = binding.key_display or app.get_key_display(binding)
        first_id.setdefault((binding.action, description), binding.id or "")
        grouped.setdefault((binding.action, description), [])
        if shown not in grouped[(binding.action, description)]:
            grouped[(binding.action, description)].append(shown)
    order = {cmd.id: index for index, cmd in enumerate(COMMANDS)}
    ranked = sorted(
        grouped.items(), key=lambda item: order.get(first_id.get(item[0], ""), len(order))
    )
    rows = [HelpRow(", ".join(keys), description) for (_, description), keys in ranked]
    if sections:
        rows.append(HelpRow("1-8", "Go to a section: " + ", ".join(sections)))
    return rows


class HelpScreen(ModalScreen[None]):
    CSS_PATH = STYLES_DIR / "help.tcss"
    BINDINGS = [
        Binding("escape,q,question_mark", "close", "Close", show=True),
    ]

    def __init__(self, title: str, rows: list[HelpRow]) -> None:
        super().__init__()
        self.title_text = title
        self.rows = rows

    def compose(self) -> ComposeResult:
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold", no_wrap=True)
        table.add_column(ratio=1)
        for row in self.rows:
            table.add_row(Text(row.keys), Text(row.description))
        with VerticalScroll(id="help"):
            yield Static(table, id="keys")
            yield Static(Text("Esc, q or ? closes this help.", style="dim"), id="help-footer")

    def on_mount(self) -> None:
        self.query_one("#help").border_title = f"Keys — {self.title_text}"

    def action_close(self) -> None:
        self.dismiss(None)
