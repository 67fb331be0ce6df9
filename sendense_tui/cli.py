"""The ``sendense`` command: no subcommand opens the console.

Errors are handled in one place (``main``): an error prints ``sendense:
<message>`` and its hint on stderr, never a traceback, and exits with its code
from the table in ``sendense_tui.exitcodes``: 1 a job (or check) ran and failed,
2 refused, 3 catalog unavailable, 4 interrupted (Ctrl+C or SIGTERM).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType
from typing import NoReturn

from engine.errors import SendenseError
from engine.private import PRIVATE_UMASK
from sendense_tui.commands import COMMON, CliContext, register_all, register_for
from sendense_tui.exitcodes import ExitCode, epilog, exit_code_for
from sendense_tui.format import printable
from sendense_tui.hints import cli_hint

EXIT_ERROR = int(ExitCode.REFUSED)
EXIT_INTERRUPTED = int(ExitCode.INTERRUPTED)
#: what textual-serve sets in a browser's console (Textual reads it to pick its driver)
WEB_DRIVER = "textual.drivers.web_driver:WebDriver"


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The whole command line, or (given the ``argv`` it will parse) only the command
    that ``argv`` runs in full, the others as help lines: a call imports just the
    modules of its own command (commands.COMMANDS)."""
    parser = argparse.ArgumentParser(
        prog="sendense",
        description="Sendense backup repository console. Without a command, opens the console.",
        parents=[COMMON],
        epilog=epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    if argv is None:
        register_all(subparsers)
    else:
        register_for(subparsers, list(argv))
    return parser


def open_console(args: argparse.Namespace, ctx: CliContext) -> int:
    """Load settings, find or start the daemon, open and start the engine, run the
    console, stop the engine.

    With a daemon (the usual case: started here in the background when none runs),
    the console's engine is its client: jobs it queues run in the daemon, mounts and
    exports it starts outlive it. Without one it runs that work itself, says so at
    the top, and asks before quitting with work of its own running."""
    if not _web_driver() and not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise SendenseError(
            "the console needs a terminal (stdin and stdout are not a TTY)",
            hint="run it from an interactive SSH session, or use a subcommand: sendense --help",
        )
    from engine.daemon import daemon_disabled, ensure_daemon, find_daemon
    from engine.runtime import Engine
    from sendense_tui.app import SendenseApp

    _log_to_file(ctx, "console.log")
    engine = Engine(ctx.settings)
    try:
        engine.open()
        if find_daemon(ctx.settings) is None and not daemon_disabled():
            # a few seconds before the screen appears: say what is happening
            print("sendense: starting the background daemon…", file=sys.stderr, flush=True)
        daemon = ensure_daemon(ctx.settings)
        if not daemon.running:
            import logging

            logging.getLogger(__name__).warning("no daemon: %s", daemon.problem)
        engine.attach_daemon(daemon)
        engine.start(run_scheduler=True)
        app = SendenseApp(engine)
        app.run()
        return int(app.return_code or 0)
    finally:
        engine.close()


def _web_driver() -> bool:
    """Whether this console is a browser's (``sendense console --web`` starts it with
    Textual's web driver, which speaks its own protocol on pipes, not a terminal's)."""
    return os.environ.get("TEXTUAL_DRIVER") == WEB_DRIVER


def _log_to_file(ctx: CliContext, name: str) -> None:
    """The terminal gets one sentence per problem: log lines go to ``name`` in the
    state dir's log dir (sendense_tui.logfile)."""
    from sendense_tui.logfile import log_to_file

    log_to_file(lambda: ctx.settings.log_dir / name, console=name == "console.log")


def _fail(message: str, hint: str | None = None, code: int = EXIT_ERROR) -> int:
    # one sentence on one line: names inside it (a file, a VM) are escaped
    print(f"sendense: {printable(message)}", file=sys.stderr)
    if hint:
        print(f"  hint: {printable(hint)}", file=sys.stderr)
    return code


def _terminate(signum: int, _frame: FrameType | None) -> None:
    """SIGTERM ends a command the way Ctrl+C does (exit 4, a waited-for job handed
    back); a second one while it winds down is ignored."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    # Sendense holds backups, catalog rows and keys: whatever it creates without an
    # explicit mode is still closed to other users (engine.private)
    os.umask(PRIVATE_UMASK)
    words = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(words)
    args = parser.parse_args(words)
    ctx = CliContext(args)
    handler = getattr(args, "func", None)
    previous = None
    if handler is None:
        handler = open_console  # Textual and the console handle their own signals
    elif args.command == "console" and not args.web:
        pass  # the same console, by its name
    elif threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        # those log themselves (the demo into its own temporary state directory)
        if handler is not open_console and args.command not in ("daemon", "demo", "console"):
            ctx.before_engine = lambda: _log_to_file(ctx, "cli.log")
            if "logging" in sys.modules:
                # the command's modules can log from now on. Else nothing can log
                # before it opens the engine (CliContext.engine, .reader), which
                # installs the file then: a command the daemon runs (restore disk,
                # a listing) or that needs nothing (version) starts without logging,
                # ~20 ms of its start with a cold page cache
                ctx.prepare_for_engine()
        code = int(handler(args, ctx))
    except SendenseError as exc:  # ConfigError, CatalogError, JobError… all land here
        return _fail(exc.message, cli_hint(exc), int(exit_code_for(exc)))
    except KeyboardInterrupt:
        return _fail("interrupted before the command finished", code=EXIT_INTERRUPTED)
    except BrokenPipeError:
        # `sendense events | head`: the reader left; say nothing more
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    finally:
        if previous is not None:  # main() called in-process (tests): leave no trace
            signal.signal(signal.SIGTERM, previous)
    if argv is None and handler is not open_console and args.command not in LIVES_ON:
        leave(code)
    return code


#: commands that end as Python ends: a terminal to give back, a server, a temporary
#: state directory of their own
LIVES_ON = ("console", "daemon", "demo")


def leave(code: int) -> NoReturn:
    """End this process as ``sys.exit(code)`` would, without Python's teardown of every
    module: unloading SQLAlchemy's and the engine's ~400 modules took a command ~0.2 s
    after its work was done. The command closed its engine already (the catalog's
    connections, its job runner and their threads); what else ``sys.exit`` does is done
    here first: other non-daemon threads are joined, atexit handlers run (logging's
    among them), and what stdout and stderr hold is written."""
    current = threading.current_thread()
    for thread in threading.enumerate():
        if thread is not current and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
