"""One detail view for every list: Enter on a row shows the whole of it.

A list row is cut to fit its column (an event's message, a job's title, an NBD
URI at 80 columns); its detail view shows everything, wrapped, scrollable:
label/value lines, headings and any Rich renderable (a policy's settings table).
Esc or q closes it; ``c`` copies its one copyable value (an export's URI, a
file's path) to the terminal's clipboard with OSC 52, which works over SSH and
inside tmux (with ``set-clipboard on``).

>>> app.push_screen(DetailScreen("Event #12", [("message", entry.message)]))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from sendense_tui.format import printable
from sendense_tui.styles import STYLES_DIR


@dataclass(frozen=True)
class Heading:
    """A heading line between groups of fields ("Log", "Files")."""

    text: str


#: a (label, value) field, a heading, or any Rich renderable shown as it is
Part = tuple[str, object] | Heading | RenderableType


def value_text(value: object, style: str = "") -> Text:
    """A value from outside as text that wraps anywhere (a URI has no spaces):
    control characters escaped, newlines kept, never read as markup."""
    if isinstance(value, Text):
        text = value.copy()
        if text.plain != printable(text.plain, keep_newlines=True):
            text = Text(printable(text.plain, keep_newlines=True), style=text.style)
    else:
        text = Text(printable("-" if value is None else value, keep_newlines=True), style=style)
    text.overflow = "fold"
    text.no_wrap = False
    return text


def render_parts(parts: Sequence[Part]) -> Group:
    """Consecutive fields share one two-column grid, so their values line up."""
    out: list[RenderableType] = []
    grid: Table | None = None
    for part in parts:
        if isinstance(part, tuple) and len(part) == 2 and isinstance(part[0], str):
            if grid is None:
                grid = Table.grid(padding=(0, 1))
                grid.add_column(style="bold", no_wrap=True)
                grid.add_column(ratio=1, overflow="fold")
                out.append(grid)
            grid.add_row(Text(part[0]), value_text(part[1]))
            continue
        grid = None
        if isinstance(part, Heading):
            out.append(Text(f"\n{part.text}", style="bold underline"))
        elif isinstance(part, str):
            out.append(value_text(part))
        else:
            out.append(part)
    return Group(*out)


class DetailScreen(ModalScreen[None]):
    """The whole of one list row. Esc/q closes; ``c`` copies ``copy_value``."""

    CSS_PATH = STYLES_DIR / "detail.tcss"
    BINDINGS = [
        Binding("escape", "close", "Close"),
        Binding("q", "close", "Close", show=False),
        Binding("c", "copy", "Copy", show=False),
        Binding("j", "scroll('down')", "Down", show=False),
        Binding("k", "scroll('up')", "Up", show=False),
        Binding("g", "scroll('home')", "Top", show=False),
        Binding("G", "scroll('end')", "Bottom", show=False),
    ]

    def __init__(
        self,
        title: str,
        parts: Sequence[Part],
        *,
        copy_value: str | None = None,
        copy_what: str = "value",
    ) -> None:
        super().__init__()
        self.title_text = title
        self.parts = list(parts)
        self.copy_value = copy_value
        self.copy_what = copy_what

    def compose(self) -> ComposeResult:
        with Vertical(id="detail"):
            yield Static(Text(printable(self.title_text), style="bold"), id="detail-title")
            with VerticalScroll(id="detail-body"):
                yield Static(render_parts(self.parts), id="detail-content")
            yield Static(self._keys(), id="detail-keys")

    def _keys(self) -> Text:
        text = Text(style="dim")
        text.append("Esc", style="bold")
        text.append(" close  ")
        if self.copy_value is not None:
            text.append("c", style="bold")
            text.append(f" copy {self.copy_what}  ")
        text.append("j/k", style="bold")
        text.append(" scroll")
        return text

    def on_mount(self) -> None:
        self._fit(self.app.size.height)
        self.query_one("#detail-body", VerticalScroll).focus()

    def on_resize(self, event: events.Resize) -> None:
        self._fit(event.size.height)

    def _fit(self, height: int) -> None:
        # the body scrolls within what the title, the key line and the border leave,
        # so a long body never pushes the key line off the screen
        self.query_one("#detail-body", VerticalScroll).styles.max_height = max(3, height - 4)

    @property
    def content(self) -> str:
        """The body as plain text at the width it is shown (tests read it)."""
        import io

        from rich.console import Console

        width = self.query_one("#detail-content").size.width or 76
        console = Console(width=width, color_system=None, file=io.StringIO(), record=True)
        console.print(render_parts(self.parts))
        return console.export_text()

    def action_scroll(self, where: str) -> None:
        body = self.query_one("#detail-body", VerticalScroll)
        {
            "down": body.scroll_down,
            "up": body.scroll_up,
            "home": body.scroll_home,
            "end": body.scroll_end,
        }[where]()

    def action_copy(self) -> None:
        if self.copy_value is None:
            self.notify("Nothing to copy here.", severity="warning", timeout=3)
            return
        self.app.copy_to_clipboard(self.copy_value)
        self.notify(
            f"Copied the {self.copy_what} to the clipboard (OSC 52; in tmux: set-clipboard on).",
            timeout=4,
        )

    def action_close(self) -> None:
        self.dismiss(None)
