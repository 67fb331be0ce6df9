"""``sendense daemon``: the headless engine for systemd (scheduler, jobs, monitors).

Logs go to stdout (journald keeps them); SIGTERM or SIGINT stops it cleanly:
running jobs go back to the queue for the next engine.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from typing import Any

from sendense_tui.commands import CliContext, add_parser
from sendense_tui.format import printable

log = logging.getLogger("sendense.daemon")


def register(subparsers: Any) -> None:
    parser = add_parser(
        subparsers, "daemon", help="run the scheduler and jobs headless (for systemd)"
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR")
    )
    parser.set_defaults(func=run_daemon)


def run_daemon(args: argparse.Namespace, ctx: CliContext) -> int:
    from engine.events import Event
    from engine.runtime import Engine

    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(args.log_level)
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def echo(event: Event) -> None:
        if event.kind != "job.progress":
            level = (
                logging.CRITICAL
                if event.level == "critical"
                else getattr(logging, event.level.upper(), logging.INFO)
            )
            # one event, one journal line: a crafted name cannot forge another
            log.log(level, "[%s] %s", event.kind, printable(event.message))

    engine = Engine(ctx.settings, run_scheduler=True)
    try:
        engine.open()
        engine.bus.subscribe(echo)
        engine.start()
        log.info("sendense daemon running as %s (catalog ready)", engine.jobs.owner)
        sys.stdout.flush()
        while not stop.wait(1.0):
            pass
    finally:
        engine.close()
        log.info("sendense daemon stopped")
    return 0
