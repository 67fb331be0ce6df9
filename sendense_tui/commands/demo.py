"""``sendense demo``: the console on a real, small demo in a temporary directory."""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.errors import SendenseError
from sendense_tui.commands import CliContext, add_parser

if TYPE_CHECKING:
    from sendense_tui.demo_mode import DemoWorld


def register(subparsers: Any) -> None:
    parser = add_parser(
        subparsers,
        "demo",
        help="open the console on a demo: real small backups in a temporary directory",
        description="Builds three repositories, two VMs' disk files, three nights of "
        "backups, copies, locks and verifications in a temporary directory (about a "
        "minute), opens the console on them, and removes it all when the console closes. "
        "Your own catalog and settings are not touched.",
    )
    parser.set_defaults(func=demo)


def _demo_log(world: DemoWorld) -> logging.Handler:
    """The demo's log lines go to its own state directory (removed with it), never
    to the real one."""
    from sendense_tui.logfile import LOG_FORMAT, LogFile

    handler = LogFile(lambda: world.state_dir / "log" / "console.log")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    return handler


def demo(args: argparse.Namespace, ctx: CliContext) -> int:
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise SendenseError(
            "the demo opens the console, which needs a terminal (stdin and stdout are not a TTY)",
            hint="run it from an interactive terminal",
        )
    from sendense_tui.app import SendenseApp
    from sendense_tui.demo_mode import DemoWorld, demo_world

    root = Path(tempfile.mkdtemp(prefix="sendense-demo-")) / "demo"
    print(f"building the demo in {root.parent} (removed when the console closes)")
    log = logging.getLogger()
    handler = _demo_log(DemoWorld(root))
    log.addHandler(handler)

    def stop_logging() -> None:
        # before the directory goes: a later line would make its log folder again
        log.removeHandler(handler)
        handler.close()

    try:
        with demo_world(root, say=lambda line: print(f"  {line}", flush=True)) as world:
            engine = world.engine()
            try:
                engine.start(run_scheduler=True)
                app = SendenseApp(engine)
                app.run()
                return int(app.return_code or 0)
            finally:
                engine.close()
                stop_logging()
    finally:
        stop_logging()
        if root.parent.exists():
            root.parent.rmdir()
