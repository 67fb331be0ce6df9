"""The owner of an NBD export started by a command that ends right away (the CLI).

``ExportService.start_detached`` runs ``python -m engine.services.export_keeper`` in
a session of its own. The keeper starts the export itself (so it is the export's
owner, as a console is for the exports it starts), prints one JSON line on its
stdout (``{"export_id": N}`` or ``{"error": …, "hint": …, "refused": …}``), then
applies the export's idle timeout and maximum age until the export ends, whoever
ends it. SIGTERM, SIGINT or SIGHUP stop the export and the keeper. If the keeper is
killed outright, the next engine on this machine stops the export (its owner is
gone). Settings come from the environment the command passed (state directory,
catalog URL), never from the command line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from engine.catalog.audit import AuditStore
from engine.catalog.db import Catalog
from engine.config import load_settings
from engine.errors import SendenseError, ValidationError
from engine.events import EventBus
from engine.services.exports import REAP_SECONDS, ExportService, ExportView

log = logging.getLogger("sendense.export_keeper")

#: the keeper looks at least this often (short limits in tests), at most every REAP_SECONDS
MIN_INTERVAL = 0.2
#: how long a wait for the server may last before a signal is looked at
SIGNAL_SLICE = 0.5
#: after the server ended, how long the one who stopped it may take to say so
STOPPER_GRACE = 3.0


def interval_for(view: ExportView) -> float:
    """A quarter of the shorter limit, between MIN_INTERVAL and REAP_SECONDS."""
    limits = [REAP_SECONDS * 4]
    if view.idle_seconds:
        limits.append(float(view.idle_seconds))
    if view.expires_at is not None:
        limits.append((view.expires_at - view.started_at).total_seconds())
    return max(MIN_INTERVAL, min(REAP_SECONDS, min(limits) / 4))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sendense-export-keeper")
    parser.add_argument("--backup-id", type=int, required=True)
    parser.add_argument("--name")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--tls", action="store_true")
    parser.add_argument("--idle-minutes", type=float)
    parser.add_argument("--max-hours", type=float)
    parser.add_argument("--actor")
    parser.add_argument("--force", action="store_true")
    return parser


def _report(data: dict[str, Any]) -> None:
    """The one line the starting command waits for; stdout is closed afterwards (the
    command may be gone: nothing more is ever written there)."""
    try:
        sys.stdout.write(json.dumps(data) + "\n")
        sys.stdout.flush()
        sys.stdout.close()
    except (BrokenPipeError, OSError, ValueError):
        pass


def _error(exc: SendenseError) -> dict[str, Any]:
    return {
        "error": exc.message,
        "hint": exc.hint,
        "refused": isinstance(exc, ValidationError),
    }


def _stopped_by_someone(service: ExportService, export_id: int) -> bool:
    """The server ended: give whoever stopped it (``export stop``) a moment to record
    it, so it is not reported as a server that died."""
    deadline = time.monotonic() + STOPPER_GRACE
    while time.monotonic() < deadline:
        if service.store.get_export(export_id).state != "running":
            return True
        time.sleep(0.1)
    return False


def _keep(service: ExportService, view: ExportView, stop: threading.Event) -> None:
    """Apply the limits until the export ends or a signal asks to stop; the server
    ending (``sendense export stop`` from anywhere) is noticed at once."""
    interval = interval_for(view)
    while not stop.is_set():
        ended = False
        deadline = time.monotonic() + interval
        while not (ended or stop.is_set()) and time.monotonic() < deadline:
            ended = service.wait_for_server(view.id, min(SIGNAL_SLICE, interval))
        if stop.is_set():
            return
        try:
            if ended and _stopped_by_someone(service, view.id):
                return
            if not service.keep(view.id):
                return
        except SendenseError as exc:  # the catalog away: try again, but keep the limit
            log.warning("export %s: %s", view.id, exc.message)
            if ended or (view.expires_at and service.clock.now() >= view.expires_at):
                return


def _release(service: ExportService, view: ExportView) -> None:
    """The keeper leaves: an export still running goes with it (recorded when the
    catalog answers; its server is stopped either way)."""
    with contextlib.suppress(SendenseError):
        if service.store.get_export(view.id).state == "running":
            service.stop(view.id, actor="engine", reason="owner_gone")
    service.kill_server(view.id)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    try:
        settings = load_settings()
        catalog = Catalog(settings.db_url).open()
    except SendenseError as exc:
        _report(_error(exc))
        return 2
    service = ExportService(catalog, EventBus(AuditStore(catalog)), settings)
    try:
        try:
            view = service.start(
                args.backup_id,
                name=args.name,
                host=args.host,
                port=args.port,
                tls=args.tls,
                idle_minutes=args.idle_minutes,
                max_hours=args.max_hours,
                persistent=True,
                actor=args.actor,
                force=args.force,
            )
        except SendenseError as exc:
            _report(_error(exc))
            return 2
        _report({"export_id": view.id, "note": view.note})
        log.info("keeping NBD export %s (%s)", view.id, view.uri)
        try:
            _keep(service, view, stop)
        finally:
            _release(service, view)
        log.info("NBD export %s ended; keeper leaves", view.id)
        return 0
    finally:
        service.close()
        catalog.dispose()


if __name__ == "__main__":
    sys.exit(main())
