"""``sendense daemon``: the headless engine that owns long-lived work.

It runs the scheduler, the job runner, lock release, the capacity monitor and the
reapers of restore mounts and NBD exports. One runs per state directory: it holds
``STATE_DIR/daemon.lock`` while it lives, and a second one is refused with one
sentence (exit 2). Two ways it starts:

- the console, or a command that queues work and returns (``--no-wait``,
  ``policy run``), starts it in the background when none runs (engine.daemon):
  detached from the terminal, logging to ``STATE_DIR/logs/daemon.log``, so jobs,
  mounts and exports carry on after the console leaves;
- systemd's unit (deploy/sendense.service) on an appliance: logs go to stdout,
  which journald keeps.

It serves the HTTP API (sendense_api.serve): on ``STATE_DIR/api.sock`` always,
and on the TCP addresses of ``[api] listen``.

SIGTERM or SIGINT stops it cleanly (running jobs go back to the queue, exit 0);
``sendense daemon --stop`` does that for the daemon of this state directory and
waits until it has left; ``--status`` says whether one runs.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from typing import Any

from sendense_tui.commands import CliContext, add_parser
from sendense_tui.format import printable

log = logging.getLogger("sendense.daemon")


def register(subparsers: Any) -> None:
    parser = add_parser(
        subparsers,
        "daemon",
        help="run the scheduler, jobs, mounts and exports headless (started by the "
        "console when none runs; or by systemd)",
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR")
    )
    what = parser.add_mutually_exclusive_group()
    what.add_argument(
        "--stop",
        action="store_true",
        help="stop the daemon of this state directory (its jobs go back to the queue)",
    )
    what.add_argument("--status", action="store_true", help="say whether a daemon runs here")
    parser.set_defaults(func=run_daemon)


def run_daemon(args: argparse.Namespace, ctx: CliContext) -> int:
    if args.stop:
        return _stop(ctx)
    if args.status:
        return _status(ctx)
    return _serve(args, ctx)


def _stop(ctx: CliContext) -> int:
    from engine.daemon import stop_daemon

    pid = stop_daemon(ctx.settings)
    if ctx.json:
        ctx.print_json({"stopped": pid})
    elif pid is None:
        print(f"no sendense daemon runs for {ctx.settings.state_dir}")
    else:
        print(f"stopped the sendense daemon (pid {pid}); its running jobs went back to the queue")
    return 0


def _status(ctx: CliContext) -> int:
    from engine.daemon import catalog_digest, find_daemon, log_file
    from sendense_api.serve import listening

    info = find_daemon(ctx.settings)
    where = log_file(ctx.settings)
    api = listening(ctx.settings)
    if ctx.json:
        ctx.print_json(
            {
                "running": info is not None,
                "pid": info.pid if info else None,
                "ready": bool(info and info.ready),
                "same_catalog": bool(info and info.catalog == catalog_digest(ctx.settings.db_url)),
                "started_at": info.started_at if info else None,
                "log": str(where),
                "api": api["addresses"],
                "api_tls_fingerprint": api["tls_fingerprint"],
            }
        )
    elif info is None:
        print(f"no sendense daemon runs for {ctx.settings.state_dir}")
    else:
        state = "running" if info.ready else "starting"
        print(f"sendense daemon {state}: pid {info.pid}, since {info.started_at}; log {where}")
        for address in api["addresses"]:
            print(printable(f"  HTTP API on {address}"))
        if api["tls_fingerprint"]:
            print(f"  TLS certificate SHA-256 fingerprint {api['tls_fingerprint']}")
    return 0 if info is not None else 1


def _serve(args: argparse.Namespace, ctx: CliContext) -> int:
    from engine.daemon import DaemonPresence
    from engine.events import Event
    from engine.runtime import Engine
    from sendense_api.serve import ApiServer

    # one daemon per state directory: refused before anything is opened or cleaned up
    presence = DaemonPresence(ctx.settings)
    presence.claim()
    handler = logging.StreamHandler(sys.stdout)
    # journald stamps its lines; a log file of the background daemon needs the time
    stamp = "" if os.environ.get("JOURNAL_STREAM") else "%(asctime)s "
    handler.setFormatter(logging.Formatter(stamp + "%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(args.log_level)
    logging.getLogger("alembic").setLevel(logging.WARNING)
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
    api = ApiServer(engine, ctx.settings)
    try:
        engine.open()
        engine.bus.subscribe(echo)
        engine.start()
        # the HTTP API answers once the engine runs; an address it cannot serve
        # stops the daemon with one sentence (exit 2) rather than serving less
        api.start()
        presence.ready(engine.jobs.owner)
        log.info(
            "sendense daemon running as %s for %s (catalog ready)",
            engine.jobs.owner,
            ctx.settings.state_dir,
        )
        sys.stdout.flush()
        while not stop.wait(1.0):
            pass
    finally:
        try:
            api.stop()
            engine.close()
        finally:
            presence.release()
        log.info("sendense daemon stopped")
    return 0
