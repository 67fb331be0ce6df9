""" "Save as archive": asks for the archive's file name and its format; dismisses with
(file name, format) where format is ``tar``, ``tar.zst`` or ``zip``, or None on Esc."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, RadioButton, RadioSet, Static

from sendense_tui.format import safe_text
from sendense_tui.styles import STYLES_DIR

#: (format, what the operator reads)
FORMATS = (
    ("tar", "tar (pax: owners, links, xattrs, ACLs, sparse files)"),
    ("tar.zst", "tar compressed with zstd"),
    ("zip", "zip (for Windows: no owners, xattrs or ACLs)"),
)


class ArchiveDialog(ModalScreen["tuple[str, str] | None"]):
    """Enter saves, Esc cancels."""

    CSS_PATH = STYLES_DIR / "archive_dialog.tcss"
    BINDINGS = [Binding("escape", "cancel", "Cancel", show=False)]

    def __init__(self, what: str, suggested: str) -> None:
        super().__init__()
        self.what = what
        self.suggested = suggested

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(safe_text(f"Save {self.what} as an archive"), id="question")
            yield Input(value=self.suggested, placeholder="/srv/restore/etc.tar", id="archive-name")
            with RadioSet(id="archive-format"):
                for index, (_, label) in enumerate(FORMATS):
                    yield RadioButton(label, value=index == 0)
            yield Static("Enter saves · Esc cancels", id="consequence")

    def on_mount(self) -> None:
        self.query_one("#archive-name", Input).focus()

    def chosen_format(self) -> str:
        index = self.query_one("#archive-format", RadioSet).pressed_index
        return FORMATS[max(index, 0)][0]

    def on_radio_set_changed(self, event: RadioSet.Changed) -> None:
        """The name's ending follows the format picked."""
        event.stop()
        box = self.query_one("#archive-name", Input)
        stem = box.value
        for ending in (".tar.zst", ".tar", ".zip"):
            if stem.endswith(ending):
                stem = stem[: -len(ending)]
                break
        box.value = f"{stem}.{self.chosen_format()}"

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.dismiss((event.value.strip(), self.chosen_format()))

    def action_cancel(self) -> None:
        self.dismiss(None)
