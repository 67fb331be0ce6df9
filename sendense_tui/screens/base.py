"""What every console screen shares: the section bar, the footer and live refresh.

Live refresh follows one rule: a refresh never overlaps the previous one.
``fetch()`` runs in a thread worker and only talks to the engine; ``apply()``
runs on the UI thread with the result and updates widgets in place. The next
refresh is a one-shot timer armed after each draw, and only while the screen
is the one on top (a dialog or another section pauses it; resuming refreshes).
Worker errors go to ``SendenseApp.report_error``: one place, a readable
notification, never a traceback. A catalog that cannot be reached (or went
read-only, or away) is not a notification per refresh: one line at the top of
the screen says so while the screen keeps what it last read, and goes away at
the first refresh that reads the catalog again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.message import Message
from textual.screen import Screen
from textual.timer import Timer
from textual.widget import Widget
from textual.widgets import (
    Button,
    Checkbox,
    Footer,
    Input,
    RadioButton,
    RadioSet,
    Select,
    TextArea,
)
from textual.worker import Worker, WorkerState

from engine.errors import CatalogUnavailable
from sendense_tui.widgets.tables import FilterBar, ListControls

#: widgets that take typing or a choice: q and Esc never leave a screen from them
FORM_CONTROLS = (Input, Select, Checkbox, RadioSet, RadioButton, Button, TextArea)


def in_form(widget: Widget | None) -> bool:
    """Whether ``widget`` is (or is inside) a text box or another form control."""
    node: Any = widget
    while node is not None and isinstance(node, Widget):
        if isinstance(node, FORM_CONTROLS):
            return True
        node = node.parent
    return False


if TYPE_CHECKING:
    from engine.runtime import Engine
    from sendense_tui.app import SendenseApp

#: mode name -> (long title, short title), in number-key order
SECTIONS: dict[str, tuple[str, str]] = {
    "dashboard": ("Dashboard", "Dash"),
    "repositories": ("Repositories", "Repos"),
    "capacity": ("Capacity", "Capacity"),
    "chains": ("Chains", "Chains"),
    "policies": ("Policies", "Policies"),
    "jobs": ("Jobs", "Jobs"),
    "restore": ("Restore", "Restore"),
    "events": ("Events", "Events"),
    "api": ("API & notifications", "API"),
}


class NavBar(Widget):
    """One line: the product name and the numbered sections, current one lit.
    A click on a section's name (or number) goes there."""

    DEFAULT_CSS = """
    NavBar { height: 1; background: $panel; }
    """

    def __init__(self, current: str) -> None:
        super().__init__()
        self.current = current
        #: (first cell, end cell, mode) of each section as last drawn
        self.spans: list[tuple[int, int, str]] = []

    def _line(self, short: bool, brand: bool) -> Text:
        text = Text(no_wrap=True, overflow="crop")
        spans: list[tuple[int, int, str]] = []
        if brand:
            text.append(" Sendense ", style="bold reverse")
        for number, (mode, titles) in enumerate(SECTIONS.items(), start=1):
            text.append(" ")
            start = text.cell_len
            title = titles[1] if short else titles[0]
            if mode == self.current:
                text.append(f"{number} {title}", style="bold reverse")
            else:
                text.append(f"{number}", style="bold")
                text.append(f" {title}")
            spans.append((start, text.cell_len, mode))
        self.spans = spans
        return text

    def render(self) -> Text:
        width = self.size.width
        for short, brand in ((False, True), (False, False), (True, True), (True, False)):
            line = self._line(short, brand)
            if line.cell_len <= width:
                return line
        return self._line(True, False)

    def section_at(self, x: int) -> str | None:
        for start, end, mode in self.spans:
            if start <= x < end:
                return mode
        return None

    def on_click(self, event: events.Click) -> None:
        mode = self.section_at(event.x)
        if mode is not None:
            event.stop()
            self.app.switch_mode(mode)


class CatalogBanner(Widget):
    """One line under the section bar while the catalog is unavailable."""

    DEFAULT_CSS = """
    CatalogBanner { height: 1; display: none; background: $error; color: $text; }
    """

    def __init__(self) -> None:
        super().__init__(id="catalog-banner")
        self.sentence = ""

    def show(self, error: CatalogUnavailable) -> None:
        self.sentence = error.message
        self.display = True
        self.refresh()

    def hide(self) -> None:
        self.sentence = ""
        self.display = False

    def render(self) -> Text:
        text = Text(no_wrap=True, overflow="ellipsis")
        text.append(" Catalog unavailable ", style="bold reverse")
        text.append(f" {self.sentence} · showing what was last read; retrying")
        return text


class DaemonBanner(Widget):
    """One line under the section bar when no ``sendense daemon`` owns the work: jobs,
    mounts and exports started here then stop when the console quits."""

    DEFAULT_CSS = """
    DaemonBanner { height: 1; display: none; background: $warning; color: $text; }
    """

    def __init__(self) -> None:
        super().__init__(id="daemon-banner")
        self.sentence = ""

    def sync(self, engine: Engine) -> None:
        status = engine.daemon
        problem = status.problem if status is not None and not status.running else None
        if (problem or "") != self.sentence:
            self.sentence = problem or ""
            self.display = problem is not None
            self.refresh()

    def render(self) -> Text:
        text = Text(no_wrap=True, overflow="ellipsis")
        text.append(" No daemon ", style="bold reverse")
        # what it means first: the reason may hold a path and be cut at 80 columns
        text.append(f" work started here ends with the console: {self.sentence}")
        return text


#: a refresh tick reads a screen's data at least this often, changed or not (times
#: shown relative to now, a mount's expiry, a repository's free space)
REREAD_SECONDS = 30.0


@dataclass(frozen=True)
class _Read:
    """What a refresh worker read: the catalog's change mark and the screen's data."""

    mark: Any
    data: Any


#: a refresh tick found the catalog as it was: nothing to draw
_UNCHANGED = object()


class SendenseScreen(Screen[None]):
    """Base for the console's sections (app modes)."""

    #: the mode name (also the command-table scope of this screen's keys)
    MODE: ClassVar[str] = ""
    #: a screen whose data comes from the catalog sets this
    LIVE: ClassVar[bool] = True
    #: refresh ticks read again only when the catalog moved (or REREAD_SECONDS
    #: passed); False: every tick reads
    WATCH_CHANGES: ClassVar[bool] = False

    def __init__(self) -> None:
        super().__init__()
        self._loading = False
        self._again = False
        self._timer: Timer | None = None
        self._after: dict[Worker[Any], Callable[[Any], object] | None] = {}
        #: number of successful draws (tests wait on it)
        self.draws = 0
        #: the catalog's change mark at the last read, and when that read was
        self._catalog_mark: Any = None
        self._read_at = 0.0
        #: the screen was left once (a section key, a dialog): what it shows may
        #: need restyling when it comes back
        self._left_once = False

    @property
    def sendense(self) -> SendenseApp:
        return self.app  # type: ignore[return-value]

    @property
    def engine(self) -> Engine:
        return self.sendense.engine

    def post_message(self, message: Message) -> bool:
        """A screen shown for the first time is not restyled as it resumes: its
        widgets were styled as they mounted, a moment before, with the CSS of now.
        Textual restyles every widget of a screen at each resume (twice for a new
        section), a tenth of a second of the UI thread for a form page such as Copy
        rules. Once the screen was left, a resume restyles as Textual does."""
        if isinstance(message, events.ScreenSuspend):
            self._left_once = True
        elif isinstance(message, events.ScreenResume) and not self._left_once:
            message.refresh_styles = False
        return super().post_message(message)

    def compose(self) -> ComposeResult:
        yield NavBar(self.MODE)
        yield CatalogBanner()
        yield DaemonBanner()
        with Vertical(id="body"):
            yield from self.compose_body()
        yield FilterBar()
        # ":" in the footer names the palette; Textual's own "^p Palette" would repeat it
        yield Footer(show_command_palette=False)

    def compose_body(self) -> ComposeResult:
        yield from ()

    # -- lists and Esc ----------------------------------------------------------

    def lists(self) -> list[ListControls]:
        return [w for w in self.query("*") if isinstance(w, ListControls) and w.display]

    def list_target(self) -> ListControls | None:
        """The list the keys of every list act on: the focused one, else the first."""
        focused = self.focused
        if isinstance(focused, ListControls):
            return focused
        found = self.lists()
        return found[0] if found else None

    def escape_step(self) -> bool:
        """Esc on a section: first close the filter, then leave a text box or form
        control (back to the list); only then does Esc go back. True: done here."""
        bar = next(iter(self.query(FilterBar)), None)
        if bar is not None and bar.display:
            bar.clear()
            return True
        if in_form(self.focused):
            target = self.list_target()
            if isinstance(target, Widget):
                target.focus()
            else:
                self.set_focus(None)
            return True
        return False

    # -- live refresh -------------------------------------------------------

    def fetch(self) -> Any:
        """Runs on a worker thread: read from the engine, touch no widget."""
        return None

    def _read(self, tick: bool) -> Any:
        """The refresh worker: a tick reads the screen's data again only when the
        catalog moved (``engine.changes.mark``) or the last read is REREAD_SECONDS
        old; anything else (a key, an action, an engine event) always reads."""
        mark = self.engine.changes.mark() if self.WATCH_CHANGES else None
        fresh = time.monotonic() - self._read_at < REREAD_SECONDS
        if tick and mark is not None and mark == self._catalog_mark and fresh:
            return _UNCHANGED
        return _Read(mark, self.fetch())

    def apply(self, data: Any) -> None:
        """Runs on the UI thread with what ``fetch`` returned."""

    @property
    def busy(self) -> bool:
        return self._loading or bool(self._after)

    def refresh_now(self, *, tick: bool = False) -> None:
        if not self.LIVE:
            return
        if self._loading:
            self._again = True
            return
        if self._timer is not None:
            self._timer.stop()
            self._timer = None
        self._loading = True
        self.run_worker(
            lambda: self._read(tick),
            name=f"refresh {self.MODE}",
            group="refresh",
            thread=True,
            exit_on_error=False,
        )

    def on_screen_resume(self) -> None:
        for daemon in self.query(DaemonBanner):
            daemon.sync(self.engine)
        self.refresh_now()

    def on_screen_suspend(self) -> None:
        if self._timer is not None:
            self._timer.stop()
            self._timer = None

    def _schedule_next(self) -> None:
        if self.sendense.live and self.is_current and self._timer is None:
            self._timer = self.set_timer(self.sendense.refresh_seconds, self._tick)

    def _tick(self) -> None:
        self._timer = None
        if self.is_current:
            self.refresh_now(tick=True)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        worker = event.worker
        if event.state not in (WorkerState.SUCCESS, WorkerState.ERROR, WorkerState.CANCELLED):
            return
        if worker.group == "refresh":
            self._loading = False
            if event.state == WorkerState.SUCCESS and isinstance(worker.result, _Read):
                self._catalog_mark, self._read_at = worker.result.mark, time.monotonic()
                self.apply(worker.result.data)
                self.draws += 1
                self.sendense.clear_error()
                self._banner(None)
            elif event.state == WorkerState.ERROR and isinstance(worker.error, CatalogUnavailable):
                self._banner(worker.error)
            elif event.state == WorkerState.ERROR and worker.error is not None:
                self.sendense.report_error(worker.error)
            if self._again:
                self._again = False
                self.refresh_now()
            else:
                self._schedule_next()
            return
        if worker in self._after:
            after = self._after.pop(worker)
            if event.state == WorkerState.SUCCESS:
                if after is not None:
                    after(worker.result)
                self.refresh_now()
            elif event.state == WorkerState.ERROR and worker.error is not None:
                self.sendense.report_error(worker.error)

    def _banner(self, error: CatalogUnavailable | None) -> None:
        for daemon in self.query(DaemonBanner):
            daemon.sync(self.engine)
        for banner in self.query(CatalogBanner):
            if error is None:
                banner.hide()
            else:
                banner.show(error)

    def run_engine(
        self,
        call: Callable[[], Any],
        *,
        after: Callable[[Any], object] | None = None,
        description: str = "",
    ) -> None:
        """Run an engine call (cancel, pause…) off the UI thread; ``after`` gets its
        result on the UI thread, errors go to the app's one error handler."""
        worker = self.run_worker(
            call, name=description, group="action", thread=True, exit_on_error=False
        )
        self._after[worker] = after

    # -- engine events ---------------------------------------------------------

    def engine_message(self, message: Message) -> None:
        """An engine event for the screen on top; default: refresh soon."""
        from sendense_tui.messages import EngineEvent

        if isinstance(message, EngineEvent):
            self.refresh_now()
