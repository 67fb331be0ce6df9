"""The Sendense console: sections as app modes, live data from the engine."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import Any, ClassVar

from textual.app import App
from textual.filter import LineFilter
from textual.notifications import SeverityLevel
from textual.screen import ModalScreen

from engine.clock import SYSTEM_CLOCK, Clock
from engine.errors import SendenseError
from engine.events import Event
from engine.runtime import Engine
from sendense_tui.actions import bindings_for
from sendense_tui.format import printable
from sendense_tui.glyphs import AsciiFilter, ascii_wanted
from sendense_tui.messages import EngineEvent, JobProgress, message_for
from sendense_tui.palette import SendenseCommands
from sendense_tui.screens import SCREENS, SECTIONS
from sendense_tui.screens.base import SendenseScreen, in_form
from sendense_tui.screens.help import HelpScreen, rows_from_bindings
from sendense_tui.styles import STYLES_DIR
from sendense_tui.widgets.confirm import ConfirmDialog

log = logging.getLogger(__name__)

#: settings.theme -> Textual theme
THEMES: dict[str, str] = {"dark": "textual-dark", "light": "textual-light"}

#: how often the console checks that its terminal is still there (seconds)
TERMINAL_CHECK_SECONDS = 5.0

#: every stylesheet of the console, read once at start (app.tcss first, then each
#: screen's and dialog's own, whose rules are nested under their type names): a
#: screen's first visit then finds its CSS read already, and Textual does not parse
#: the whole stylesheet again and restyle every widget of the app on the UI thread
ALL_STYLESHEETS = [
    STYLES_DIR / "app.tcss",
    *sorted(p for p in STYLES_DIR.glob("*.tcss") if p.name != "app.tcss"),
]


class SendenseApp(App[int]):
    TITLE = "Sendense"
    CSS_PATH = ALL_STYLESHEETS
    MODES: ClassVar[dict[str, str | Callable[[], Any]]] = dict(SCREENS)  # type: ignore[arg-type]
    DEFAULT_MODE = "dashboard"
    BINDINGS = bindings_for("app")
    COMMANDS: ClassVar[set[Any]] = {SendenseCommands}
    COMMAND_PALETTE_DISPLAY = "palette"

    def __init__(
        self,
        engine: Engine,
        *,
        clock: Clock = SYSTEM_CLOCK,
        refresh_seconds: float = 1.0,
        live: bool = True,
        ascii: bool | None = None,
    ) -> None:
        super().__init__()
        #: ASCII-only drawing (None: SENDENSE_ASCII or the terminal type decides)
        self.ascii = ascii_wanted() if ascii is None else ascii
        self._ascii_filter = AsciiFilter()
        self.engine = engine
        self.clock = clock
        self.refresh_seconds = refresh_seconds
        #: False: no timers, no engine subscription, no terminal watch (snapshots)
        self.live = live
        self._unsubscribe: Callable[[], None] | None = None
        self._last_error: str | None = None
        self._terminal_lost = False
        self._hangup_installed = False
        self._asking_to_quit = False
        #: the CSS variables and sources the whole app was last restyled with
        self._styled_with: object = None
        self.theme = THEMES.get(engine.settings.theme, "textual-dark")

    def get_line_filters(self) -> list[LineFilter]:
        filters = list(super().get_line_filters())
        if self.ascii:
            filters.append(self._ascii_filter)
        return filters

    def refresh_css(self, animate: bool = True) -> None:
        """Restyle the app only when its CSS changed (a theme, a stylesheet edited).

        Textual calls this for every screen it shows for the first time: it parses
        every stylesheet again and restyles every widget of every screen, 0.1-0.3 s
        on the UI thread per section key, for CSS that is what it was. A new
        screen's widgets are styled as they mount (with the default CSS of a widget
        type seen for the first time, which Textual adds then), so nothing is lost."""
        sources = self.stylesheet.source
        styled_with = (
            tuple(self.get_css_variables().items()),
            tuple((at, css.content) for at, css in sources.items() if not css.is_defaults),
        )
        if styled_with == self._styled_with:
            return
        super().refresh_css(animate)
        self._styled_with = styled_with

    # -- lifecycle ----------------------------------------------------------------

    def on_mount(self) -> None:
        _freeze_startup_objects()
        if self.live:
            self._unsubscribe = self.engine.bus.subscribe(self._from_engine)
            self._install_hangup()
            if _stdin_is_tty():
                self.set_interval(TERMINAL_CHECK_SECONDS, self._check_terminal)
            self._check_tools()

    def on_unmount(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._hangup_installed:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)

    def _from_engine(self, event: Event) -> None:
        """Bus subscriber; runs on an engine thread. Only posts a message."""
        if event.level == "debug" and event.kind != "job.progress":
            return
        self.post_message(message_for(event))

    def on_engine_event(self, message: EngineEvent) -> None:
        if message.event.level in ("error", "critical"):
            self.notify(message.event.message, title=message.event.source, severity="error")
        screen = self.screen
        if isinstance(screen, SendenseScreen):
            screen.engine_message(message)

    def on_job_progress(self, message: JobProgress) -> None:
        screen = self.screen
        if isinstance(screen, SendenseScreen):
            screen.engine_message(message)

    def _check_tools(self) -> None:
        from engine.tools.base import ToolMissing, which

        try:
            which("qemu-img")
        except ToolMissing as exc:
            self.notify(
                f"{exc.message}: backups, copies and restores cannot run.\n{exc.hint}",
                title="qemu-img missing",
                severity="warning",
                timeout=10**9,
            )

    # -- leaving when the SSH terminal goes away -------------------------------------

    def _install_hangup(self) -> None:
        try:
            asyncio.get_running_loop().add_signal_handler(
                signal.SIGHUP, self.terminal_gone, "hangup"
            )
            self._hangup_installed = True
        except (RuntimeError, ValueError, NotImplementedError):  # not the main thread
            log.debug("no SIGHUP handler installed")

    def _check_terminal(self) -> None:
        try:
            alive = _stdin_is_tty()
        except (OSError, ValueError):
            alive = False
        if not alive:
            self.terminal_gone("terminal closed")

    def terminal_gone(self, why: str = "hangup") -> None:
        """The terminal is gone: restore nothing on it and leave; the CLI then
        stops the engine (jobs go back to the queue for the next engine)."""
        if self._terminal_lost:
            return
        self._terminal_lost = True
        log.warning("terminal gone (%s); leaving the console", why)
        # Anything Textual writes to restore the terminal goes nowhere.
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            for stream in (sys.__stdout__, sys.__stderr__):
                if stream is not None:
                    with contextlib.suppress(OSError, ValueError):
                        os.dup2(devnull, stream.fileno())
            os.close(devnull)
        self.exit(return_code=129)

    @property
    def terminal_lost(self) -> bool:
        return self._terminal_lost

    def notify(
        self,
        message: str,
        *,
        title: str = "",
        severity: SeverityLevel = "information",
        timeout: float | None = None,
        markup: bool = True,
    ) -> None:
        """Every notification carries names from outside (events, errors, file names):
        control characters are escaped and markup is never read from the text."""
        super().notify(
            printable(message, keep_newlines=True),
            title=printable(title),
            severity=severity,
            timeout=timeout,
            markup=False,
        )

    # -- the one error handler ---------------------------------------------------------

    def report_error(self, error: BaseException) -> None:
        """Every failure of a worker (fetch, action) ends here: one readable line."""
        if isinstance(error, SendenseError):
            text, title = error.for_humans(), "Sendense"
        else:
            log.error("console worker failed", exc_info=error)
            text, title = f"internal error: {error!r}", "Unexpected error"
        if text == self._last_error:
            return  # a live screen retrying against a dead catalog: say it once
        self._last_error = text
        self.notify(text, title=title, severity="error", timeout=10)

    def clear_error(self) -> None:
        self._last_error = None

    # -- actions -------------------------------------------------------------------------

    # Textual runs a plain or an async action alike; App declares its own async
    def action_back(self) -> None:  # type: ignore[override]
        """``q``: back, and from the Dashboard quit. Never from inside a form: a
        text box takes q as a letter, and a choice box or a button ignores it."""
        if in_form(self.focused):
            return
        self.go_back()

    def action_escape(self) -> None:
        """Esc: close the filter, or leave the text box or form control; only
        then go back (a dialog closes)."""
        screen = self.screen
        if isinstance(screen, SendenseScreen) and screen.escape_step():
            return
        self.go_back()

    def go_back(self) -> None:
        screen = self.screen
        if isinstance(screen, ModalScreen):
            if hasattr(screen, "action_close"):
                screen.action_close()
            else:
                screen.dismiss(None)
            return
        if len(self.screen_stack) > 1:  # a page pushed on a section (copy rules)
            self.pop_screen()
            return
        if self.current_mode != self.DEFAULT_MODE:
            self.switch_mode(self.DEFAULT_MODE)
            return
        self.request_quit()

    async def action_quit(self) -> None:
        """Ctrl+Q: leave, asking first when work of this console's own would stop."""
        self.request_quit()

    def request_quit(self) -> None:
        """Leave the console. Work a daemon owns goes on without a word; work this
        console runs itself (no daemon) would stop, so the operator is asked first."""
        if self._asking_to_quit:
            return  # the question is on the screen already
        # Textual's stubs cannot solve the result type of an async method's worker
        self.run_worker(
            self._quit_after_asking,  # type: ignore[arg-type]
            group="quit",
            exclusive=True,
        )

    async def _quit_after_asking(self) -> None:
        try:
            # reads the catalog: off the UI thread
            work = await asyncio.to_thread(self.engine.work_here)
        except Exception:  # cannot tell: do not keep the operator in
            log.exception("listing the console's own work before quitting")
            work = []
        if not work or self._terminal_lost:
            self.exit(0)
            return
        status = self.engine.daemon
        why = f" ({status.problem})" if status is not None and status.problem else ""
        shown = ", ".join(work[:4]) + (f" and {len(work) - 4} more" if len(work) > 4 else "")

        def answer(quit_anyway: bool | None) -> None:
            self._asking_to_quit = False
            if quit_anyway:
                self.exit(0)

        self._asking_to_quit = True

        self.push_screen(
            ConfirmDialog(
                "Quit and stop the work running in this console?",
                f"{shown} {'runs' if len(work) == 1 else 'run'} here, not in a sendense "
                f"daemon{why}: running jobs go back "
                "to the queue, restore mounts are unmounted and NBD exports stop.",
                yes_label="Quit",
                no_label="Stay",
            ),
            answer,
        )

    def action_help(self) -> None:
        if isinstance(self.screen, HelpScreen):
            return
        title = SECTIONS.get(self.current_mode, (self.current_mode, ""))[0]
        page = getattr(self.screen, "MODE", "")
        if page and page != self.current_mode:  # a page pushed on the section
            title += " / " + (self.screen.TITLE or page)
        note = getattr(self.screen, "HELP_NOTE", "")
        self.push_screen(HelpScreen(title, rows_from_bindings(self.screen), note))

    def action_refresh_now(self) -> None:
        screen = self.screen
        if isinstance(screen, SendenseScreen):
            screen.refresh_now()

    def action_toggle_theme(self) -> None:
        self.theme = "textual-light" if self.theme == "textual-dark" else "textual-dark"


#: the objects of the process's first console were frozen (see below)
_frozen = False


def _freeze_startup_objects() -> None:
    """What is alive when the first console mounts (the modules, the stylesheets,
    the engine) lives as long as the process: the collector stops walking it. A full
    collection walked every object of it and held the UI (or a worker, with the GIL)
    75-130 ms each time; now it walks what the screens made since (about 20 ms).
    Once per process: a process that runs many consoles (the tests) would otherwise
    freeze the garbage of the ones before for good."""
    global _frozen
    if not _frozen:
        _frozen = True
        gc.freeze()


def _stdin_is_tty() -> bool:
    stdin = sys.__stdin__
    return stdin is not None and not stdin.closed and os.isatty(stdin.fileno())
