"""Where a command's log lines go: a file in the state directory's log dir, never
the terminal, which gets one sentence per problem (an outage noted by the catalog,
a warning from a job thread land here). console.log for the console, cli.log for
other commands. Its own module: ``logging`` is imported only by a command that may
log (sendense_tui.cli)."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from engine.private import make_private_dirs, open_private

#: one line per record, in the CLI's, the console's and the demo's log files
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class LogFile(logging.Handler):
    """A log file opened at its first line, where ``where()`` says (a command that
    logs nothing reads no settings and creates nothing); a file that cannot be
    written drops the lines, never prints a "Logging error" traceback."""

    def __init__(self, where: Callable[[], Path]) -> None:
        super().__init__()
        self._where = where
        self._stream: TextIO | None = None
        self._broken = False

    def emit(self, record: logging.LogRecord) -> None:
        if self._broken:
            return
        try:
            if self._stream is None:
                path = self._where()
                # log lines name repositories, points and paths: root reads them only
                make_private_dirs(path.parent)
                fd = open_private(path, os.O_WRONLY | os.O_APPEND)
                self._stream = os.fdopen(fd, "a", encoding="utf-8")
            self._stream.write(self.format(record) + "\n")
            self._stream.flush()
        except Exception:  # no settings, no room, no permission: stay quiet
            self._broken = True

    def close(self) -> None:
        if self._stream is not None:
            with contextlib.suppress(OSError):
                self._stream.close()
            self._stream = None
        super().close()


_handler: LogFile | None = None


def log_to_file(where: Callable[[], Path], *, console: bool = False) -> None:
    """Send the root logger's lines to the file ``where()`` names (replacing the
    file of an earlier call: main() runs again in one process in tests); the
    console also logs what is informational."""
    global _handler
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
        _handler.close()
    _handler = LogFile(where)
    _handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root.addHandler(_handler)
    if console:
        root.setLevel(logging.INFO)
