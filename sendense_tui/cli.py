"""The ``sendense`` command: no subcommand opens the console.

Errors are handled in one place (``main``): an operator error prints
``sendense: <message>`` and its hint on stderr and exits 2, never a traceback;
a catalog that cannot be reached exits 3, Ctrl+C exits 4 (the table is in
``sendense_tui.exitcodes``).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

from engine.errors import CatalogUnavailable, SendenseError
from sendense_tui.commands import COMMON, CliContext, register_all
from sendense_tui.exitcodes import ExitCode, epilog

EXIT_ERROR = int(ExitCode.REFUSED)
EXIT_INTERRUPTED = int(ExitCode.INTERRUPTED)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sendense",
        description="Sendense backup repository console. Without a command, opens the console.",
        parents=[COMMON],
        epilog=epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    register_all(subparsers)
    return parser


def open_console(args: argparse.Namespace, ctx: CliContext) -> int:
    """Load settings, open and start the engine, run the console, stop the engine."""
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise SendenseError(
            "the console needs a terminal (stdin and stdout are not a TTY)",
            hint="run it from an interactive SSH session, or use a subcommand: sendense --help",
        )
    from engine.runtime import Engine
    from sendense_tui.app import SendenseApp

    _log_to_file(ctx, "console.log")
    engine = Engine(ctx.settings)
    try:
        engine.open()
        engine.start(run_scheduler=True)
        app = SendenseApp(engine)
        app.run()
        return int(app.return_code or 0)
    finally:
        engine.close()


class _LogFile(logging.Handler):
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
                path.parent.mkdir(parents=True, exist_ok=True)
                self._stream = path.open("a", encoding="utf-8")
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


_log_handler: _LogFile | None = None


def _log_to_file(ctx: CliContext, name: str) -> None:
    """The terminal gets one sentence per problem: log lines (an outage noted by the
    catalog, a warning from a job thread) go to a file in the state dir's log dir,
    console.log for the console and cli.log for other commands."""
    global _log_handler
    root = logging.getLogger()
    if _log_handler is not None:  # main() called again in one process (tests)
        root.removeHandler(_log_handler)
        _log_handler.close()
    _log_handler = _LogFile(lambda: ctx.settings.log_dir / name)
    _log_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(_log_handler)
    if name == "console.log":
        root.setLevel(logging.INFO)


def _fail(message: str, hint: str | None = None, code: int = EXIT_ERROR) -> int:
    print(f"sendense: {message}", file=sys.stderr)
    if hint:
        print(f"  hint: {hint}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    ctx = CliContext(args)
    handler = getattr(args, "func", None) or open_console
    try:
        if handler is not open_console and args.command != "daemon":  # those log themselves
            _log_to_file(ctx, "cli.log")
        return int(handler(args, ctx))
    except CatalogUnavailable as exc:
        return _fail(exc.message, exc.hint, int(ExitCode.CATALOG_UNAVAILABLE))
    except SendenseError as exc:  # ConfigError, CatalogError, JobError… all land here
        return _fail(exc.message, exc.hint)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `sendense events | head`: the reader left; say nothing more
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
