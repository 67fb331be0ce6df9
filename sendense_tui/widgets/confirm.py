"""A reusable confirmation dialog: names the object and what will happen."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Label, Static

from sendense_tui.format import safe_text
from sendense_tui.styles import STYLES_DIR


class ConfirmDialog(ModalScreen[bool]):
    """``y`` confirms, ``n`` or Esc declines. Dismisses with True or False.

    >>> app.push_screen(ConfirmDialog("Cancel job 7 “nightly web01”?",
    ...                 "The copy stops and the partial file is removed."), on_answer)
    """

    CSS_PATH = STYLES_DIR / "confirm.tcss"
    BINDINGS = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n", "answer(False)", "No"),
        Binding("escape", "answer(False)", "No", show=False),
        Binding("q", "answer(False)", "No", show=False),
    ]

    def __init__(
        self,
        question: str,
        consequence: str = "",
        *,
        yes_label: str = "Yes",
        no_label: str = "No",
        destructive: bool = True,
    ) -> None:
        super().__init__()
        self.question = question
        self.consequence = consequence
        self.yes_label = yes_label
        self.no_label = no_label
        self.destructive = destructive

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            # both name things from outside (a file, a VM): shown as text, never markup
            yield Label(safe_text(self.question), id="question")
            if self.consequence:
                yield Static(safe_text(self.consequence), id="consequence")
            with Horizontal(id="buttons"):
                yield Button(
                    f"{self.yes_label} (y)",
                    id="yes",
                    variant="error" if self.destructive else "primary",
                )
                yield Button(f"{self.no_label} (n)", id="no", variant="default")

    def on_mount(self) -> None:
        # Focus "No": a stray Enter must never confirm something destructive.
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.dismiss(event.button.id == "yes")

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)

    def action_close(self) -> None:
        self.dismiss(False)
