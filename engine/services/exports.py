"""NBD exports: serve a restore point read-only to another machine or tool.

``qemu-nbd`` serves the QCOW2 read-only (an incremental serves its whole
chain's view) on a unix socket under the state directory by default, or on a
TCP address the operator chooses, under an export name. Each export is a
catalog row with its URI and pid; a server found dead is marked ``dead``.
Exports not marked persistent are stopped when the engine closes, and at the
next start when the engine that made them is gone.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from urllib.parse import quote

from engine.catalog.db import Catalog
from engine.catalog.models import NbdExport
from engine.catalog.restore import RestoreStore
from engine.clock import SYSTEM_CLOCK, Clock, as_utc
from engine.config import Settings
from engine.errors import SendenseError, ValidationError
from engine.events import Event, EventBus
from engine.names import name_error
from engine.tools import exporters
from engine.tools.base import ToolError

PROGRAM = "qemu-nbd"
EXPORT_NAME_MAX = 128
_HOST = socket.gethostname()
_LIVE_OWNERS: set[str] = set()


class ExportError(SendenseError):
    """An NBD export cannot be started or stopped."""


@dataclass(frozen=True)
class ExportView:
    id: int
    backup_id: int
    name: str
    uri: str
    state: str
    persistent: bool
    pid: int | None
    socket_path: str | None
    tcp_host: str | None
    tcp_port: int | None
    started_at: datetime
    stopped_at: datetime | None
    point_label: str = ""


def _owner_alive(owner: str | None) -> bool:
    if not owner:
        return False
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != _HOST:
        return True
    if not pid_text.isdigit():
        return False
    if int(pid_text) == os.getpid():
        return owner in _LIVE_OWNERS
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _marker(row: NbdExport) -> str:
    return row.socket_path if row.socket_path else f"--port={row.tcp_port}"


class ExportService:
    def __init__(
        self, catalog: Catalog, bus: EventBus, settings: Settings, *, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self.store = RestoreStore(catalog)
        self.bus = bus
        self.clock = clock
        self.root = Path(settings.state_dir) / "exports"
        self.owner = f"{_HOST}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        _LIVE_OWNERS.add(self.owner)
        self._lock = threading.Lock()

    def _view(self, row: NbdExport) -> ExportView:
        label = ""
        with contextlib.suppress(SendenseError):
            label = self.store.locate(row.backup_id).label
        return ExportView(
            id=row.id,
            backup_id=row.backup_id,
            name=row.export_name,
            uri=row.uri,
            state=row.state,
            persistent=row.persistent,
            pid=row.pid,
            socket_path=row.socket_path,
            tcp_host=row.tcp_host,
            tcp_port=row.tcp_port,
            started_at=as_utc(row.started_at) or row.started_at,
            stopped_at=as_utc(row.stopped_at),
            point_label=label,
        )

    def start(
        self,
        backup_id: int,
        *,
        name: str | None = None,
        host: str | None = None,
        port: int | None = None,
        persistent: bool = False,
        actor: str | None = None,
    ) -> ExportView:
        """Serve a restore point read-only. TCP when ``port`` is given (host defaults
        to 127.0.0.1), else a unix socket under the state directory."""
        point = self.store.locate(backup_id)
        name = name or f"point-{backup_id}"
        problem = name_error(name, max_length=EXPORT_NAME_MAX)
        if problem:
            raise ValidationError(f"export name {name!r} is not allowed: {problem}")
        if host is not None and port is None:
            raise ValidationError("a TCP export needs a port (--port)")
        if not os.path.isfile(point.path):
            raise ExportError(
                f"the file of restore point {backup_id} is missing: {point.path}",
                hint="is the repository mounted? `sendense repo list` shows its state",
            )
        with self._lock:
            self.refresh()
            if self.store.export_named(name, states=("running",)) is not None:
                raise ExportError(
                    f"an export named {name!r} is already running",
                    hint="stop it first or choose another --name",
                )
            self.root.mkdir(parents=True, exist_ok=True)
            key = f"tcp{port}" if port is not None else uuid.uuid4().hex[:8]
            pidfile = self.root / f"{name}-{key}.pid"
            log_file = self.root / f"{name}-{key}.log"
            socket_path = None if port is not None else self.root / f"{name}-{key}.sock"
            bind = (host or "127.0.0.1") if port is not None else None
            try:
                server = exporters.start_nbd_server(
                    point.path,
                    export_name=name,
                    pidfile=pidfile,
                    log_file=log_file,
                    socket_path=socket_path,
                    host=bind,
                    port=port,
                    description=point.label,
                )
            except ToolError as exc:
                with contextlib.suppress(OSError):
                    log_file.unlink()
                raise ExportError(str(exc), hint=exc.hint) from None
            if port is not None:
                shown = f"[{bind}]" if bind and ":" in bind else bind
                uri = f"nbd://{shown}:{port}/{quote(name)}"
            else:
                uri = f"nbd+unix:///{quote(name)}?socket={socket_path}"
            row = self.store.add_export(
                backup_id=backup_id,
                export_name=name,
                socket_path=str(socket_path) if socket_path else None,
                tcp_host=bind,
                tcp_port=port,
                uri=uri,
                pid=server.pid,
                persistent=persistent,
                state="running",
                owner=self.owner,
                started_at=self.clock.now(),
            )
        self.bus.publish(
            Event(
                kind="export.started",
                message=f"serving {point.label} over NBD at {uri}",
                source="exports",
                actor=actor,
                data={"export_id": row.id, "backup_id": backup_id, "uri": uri},
            )
        )
        return self._view(row)

    def refresh(self) -> list[int]:
        """Mark running exports whose server died as ``dead``; returns their ids."""
        dead = []
        for row in self.store.exports(states=("running",)):
            if not exporters.pid_matches(row.pid, PROGRAM, _marker(row)):
                self.store.update_export(row.id, state="dead", stopped_at=self.clock.now())
                self._remove_files(row)
                dead.append(row.id)
                self.bus.publish(
                    Event(
                        kind="export.dead",
                        message=f"NBD export {row.export_name} ({row.uri}) is no longer running",
                        source="exports",
                        level="warning",
                        data={"export_id": row.id},
                    )
                )
        return dead

    def list(self, *, include_stopped: bool = False) -> list[ExportView]:
        self.refresh()
        states = None if include_stopped else ("running",)
        return [self._view(row) for row in self.store.exports(states=states)]

    def get(self, ref: int | str) -> ExportView:
        return self._view(self._row(ref))

    def _row(self, ref: int | str) -> NbdExport:
        """By name (a running or dead export), else by ``#ID`` / ``ID``."""
        return self.store.export_by_ref(ref, name_states=("running", "dead"))

    def stop(self, ref: int | str, *, actor: str | None = None) -> ExportView:
        row = self._row(ref)
        if row.state == "running":
            try:
                exporters.stop_pid(row.pid, PROGRAM, _marker(row))
            except ToolError as exc:
                raise ExportError(str(exc), hint=exc.hint) from None
        self._remove_files(row)
        row = self.store.update_export(row.id, state="stopped", stopped_at=self.clock.now())
        self.bus.publish(
            Event(
                kind="export.stopped",
                message=f"stopped NBD export {row.export_name} ({row.uri})",
                source="exports",
                actor=actor,
                data={"export_id": row.id},
            )
        )
        return self._view(row)

    def _remove_files(self, row: NbdExport) -> None:
        if row.socket_path:
            with contextlib.suppress(OSError):
                Path(row.socket_path).unlink()
            base = row.socket_path.removesuffix(".sock")
        else:
            base = str(self.root / f"{row.export_name}-tcp{row.tcp_port}")
        for suffix in (".pid", ".log"):
            with contextlib.suppress(OSError):
                Path(base + suffix).unlink()

    def stop_all(self, *, include_persistent: bool = False, mine_only: bool = True) -> int:
        count = 0
        for row in self.store.exports(states=("running",)):
            if row.persistent and not include_persistent:
                continue
            if mine_only and row.owner != self.owner:
                continue
            self.stop(row.id, actor="engine")
            count += 1
        return count

    def cleanup_leftovers(self) -> list[int]:
        """At start: mark dead servers, stop non-persistent exports whose engine is gone."""
        self.refresh()
        stopped = []
        for row in self.store.exports(states=("running",)):
            if row.persistent or _owner_alive(row.owner):
                continue
            self.stop(row.id, actor="engine")
            stopped.append(row.id)
        return stopped

    def close(self) -> None:
        try:
            self.stop_all()
        finally:
            _LIVE_OWNERS.discard(self.owner)

    def abandon(self) -> None:
        """Forget this engine's exports without stopping them (what a crash does)."""
        _LIVE_OWNERS.discard(self.owner)
