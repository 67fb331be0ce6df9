"""NBD exports: serve a restore point read-only to another machine or tool.

``qemu-nbd`` serves the QCOW2 read-only (an incremental serves its whole
chain's view, each layer spelled out as the catalog records it after its header
was checked: engine.services.images) on a unix socket under the state directory
by default, or on a TCP address the operator chooses, under an export name. A
bad point is served from a verified copy, or refused, or with ``force`` served
anyway and reported as unverified. Each export is a
catalog row with its URI and pid; a server found dead is marked ``dead``.

Who can connect: the unix socket and its folder are root's only. A TCP export
on anything but a loopback address must use TLS (a pre-shared key made for it,
kept 0600 next to the socket, removed with the export); without TLS it is
refused before anything listens.

How long it lives: every export has an idle timeout (no client connected for
that long) and a maximum age (defaults in ``[exports]``), and an owner, the
engine that started it. The owner's reaper stops it when either limit passes;
any engine on this machine stops it when its owner is gone (at its start and in
its reaper). An export started from the command line is owned by a small
keeper process (``engine.services.export_keeper``) that outlives the command.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import json
import logging
import math
import os
import shlex
import shutil
import socket
import tempfile
import threading
import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import quote

from engine.catalog.copies import CopyStore
from engine.catalog.db import Catalog
from engine.catalog.models import NbdExport
from engine.catalog.restore import RestoreStore
from engine.clock import SYSTEM_CLOCK, Clock, as_utc
from engine.config import EXPORT_IDLE_MINUTES_MAX, EXPORT_MAX_HOURS_MAX, Settings
from engine.errors import Action, SendenseError, ValidationError
from engine.events import Event, EventBus
from engine.names import name_error
from engine.owners import owner_alive
from engine.private import make_private_dir, make_private_dirs
from engine.services.images import ImageGuard, PointReader, PointUnreadable
from engine.tools import exporters
from engine.tools.base import ToolError

log = logging.getLogger(__name__)

PROGRAM = "qemu-nbd"
#: the longest unix socket path the kernel takes (sun_path less its terminating NUL)
_SUN_PATH_MAX = 107
EXPORT_NAME_MAX = 128
_HOST = socket.gethostname()
_LIVE_OWNERS: set[str] = set()
#: how often an engine looks at its exports' clients and limits
REAP_SECONDS = 30.0
#: how long a command waits for the keeper of its export to report
KEEPER_REPORT_TIMEOUT = exporters.START_TIMEOUT + 30

#: why an export ended, in words (stop_reason -> sentence end)
STOP_REASONS = {
    "operator": "stopped by an operator",
    "idle": "no client was connected for its idle timeout",
    "max_age": "it reached its maximum age",
    "owner_gone": "the engine that owned it is gone",
    "server_died": "its server stopped",
}


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
    #: how the point is read when that is not the plain way (a verified copy, or a
    #: bad point forced and unverified); set by start() only
    note: str | None = None
    #: "psk" when clients must use TLS with the export's pre-shared key
    tls: str | None = None
    #: the pre-shared key a TLS client needs (root-only, removed with the export)
    key_file: str | None = None
    idle_seconds: int | None = None
    last_active_at: datetime | None = None
    #: stopped at this time at the latest
    expires_at: datetime | None = None
    #: why it ended (see STOP_REASONS)
    stop_reason: str | None = None

    def connect_lines(self) -> list[str]:
        """How a client reads this export, one command a line."""
        if self.tls != "psk" or self.key_file is None:
            return [f"qemu-img info '{self.uri}'"]
        host = self.tcp_host or "127.0.0.1"
        key_dir = os.path.dirname(self.key_file).replace(",", ",,")
        creds = (
            f"tls-creds-psk,id=tls0,endpoint=client,dir={key_dir},username={exporters.PSK_IDENTITY}"
        )
        image = f"driver=nbd,host={host},port={self.tcp_port},export={self.name},tls-creds=tls0"
        return [
            f"nbdinfo {shlex.quote(f'{self.uri}?tls-psk-file={self.key_file}')}",
            f"qemu-img info --object {shlex.quote(creds)} --image-opts {shlex.quote(image)}",
        ]


def _on_this_host(owner: str | None) -> bool:
    return not owner or owner.partition(":")[0] == _HOST


def _marker(row: NbdExport) -> str:
    return row.socket_path if row.socket_path else f"--port={row.tcp_port}"


def _files_base(root: Path, row: NbdExport) -> str:
    if row.socket_path:
        return row.socket_path.removesuffix(".sock")
    return str(root / f"{row.export_name}-tcp{row.tcp_port}")


def _limit(value: float | None, default: float, upper: float, what: str, unit: str) -> float:
    number = default if value is None else float(value)
    if not (math.isfinite(number) and 0 < number <= upper):
        raise ValidationError(
            f"the export's {what} must be more than 0 and at most {upper:g} {unit}, got {value!r}",
            hint=f"the default comes from [exports] in the config ({default:g} {unit})",
        )
    return number


class ExportService:
    def __init__(
        self,
        catalog: Catalog,
        bus: EventBus,
        settings: Settings,
        reader: PointReader | None = None,
        *,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.store = RestoreStore(catalog)
        self.bus = bus
        #: opens points the catalog's way and picks a verified copy for a bad one
        self.reader = reader or PointReader(self.store.chains, CopyStore(catalog), ImageGuard(bus))
        self.clock = clock
        self.settings = settings
        self.root = Path(settings.state_dir) / "exports"
        self.owner = f"{_HOST}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        _LIVE_OWNERS.add(self.owner)
        self._lock = threading.Lock()
        self._reaper: threading.Thread | None = None
        self._reaper_stop = threading.Event()
        #: the servers this engine started, by export id (their processes are children)
        self._servers: dict[int, exporters.ServerProcess] = {}
        #: exports started here are handed to a keeper and outlive this engine (a
        #: console whose daemon owns the work)
        self.detach = False

    def set_detach(self, detach: bool) -> None:
        """Whether exports started from now on outlive this engine (``Engine.attach_daemon``:
        while a daemon runs, a console's exports are handed to a keeper)."""
        self.detach = detach

    def _view(self, row: NbdExport) -> ExportView:
        label = ""
        with contextlib.suppress(SendenseError):
            label = self.store.locate(row.backup_id).label
        key_file = None
        if row.tls == "psk":
            key_file = str(Path(_files_base(self.root, row) + ".tls") / exporters.PSK_FILE)
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
            tls=row.tls,
            key_file=key_file,
            idle_seconds=row.idle_seconds,
            last_active_at=as_utc(row.last_active_at),
            expires_at=as_utc(row.expires_at),
            stop_reason=row.stop_reason,
        )

    # -- starting ----------------------------------------------------------------

    def _check_request(
        self,
        name: str | None,
        host: str | None,
        port: int | None,
        tls: bool,
        idle_minutes: float | None,
        max_hours: float | None,
    ) -> tuple[float, float]:
        """Everything about a start that can be refused before anything runs; returns
        the idle timeout and maximum age in seconds."""
        problem = None if name is None else name_error(name, max_length=EXPORT_NAME_MAX)
        if problem:
            raise ValidationError(f"export name {name!r} is not allowed: {problem}")
        if host is not None and port is None:
            raise ValidationError("a TCP export needs a port (--port)")
        if tls and port is None:
            raise ValidationError(
                "TLS is for TCP exports (--port): a unix socket is reachable by root on "
                "this machine only"
            )
        if port is not None:
            try:
                exporters.refuse_plain_tcp(host or "127.0.0.1", port, tls=tls)
            except exporters.PlainTcpRefused as exc:
                raise ValidationError(exc.message, action=exc.action) from None
        defaults = self.settings.exports
        idle = _limit(
            idle_minutes, defaults.idle_minutes, EXPORT_IDLE_MINUTES_MAX, "idle timeout", "minutes"
        )
        age = _limit(max_hours, defaults.max_hours, EXPORT_MAX_HOURS_MAX, "maximum age", "hours")
        return idle * 60, age * 3600

    def start(
        self,
        backup_id: int,
        *,
        name: str | None = None,
        host: str | None = None,
        port: int | None = None,
        tls: bool = False,
        idle_minutes: float | None = None,
        max_hours: float | None = None,
        persistent: bool = False,
        actor: str | None = None,
        force: bool = False,
    ) -> ExportView:
        """Serve a restore point read-only, owned by this engine. TCP when ``port`` is
        given (host defaults to 127.0.0.1; any other address needs ``tls``), else a
        unix socket under the state directory. ``idle_minutes``/``max_hours`` default
        to the ``[exports]`` settings. With ``self.detach`` the export is started by
        a keeper of its own instead (start_detached) and outlives this engine."""
        if self.detach and not persistent:
            return self.start_detached(
                backup_id,
                name=name,
                host=host,
                port=port,
                tls=tls,
                idle_minutes=idle_minutes,
                max_hours=max_hours,
                actor=actor,
                force=force,
            )
        idle, max_age = self._check_request(name, host, port, tls, idle_minutes, max_hours)
        point = self.store.locate(backup_id)
        name = name or f"point-{backup_id}"
        try:
            read = self.reader.open(backup_id, force=force)
        except PointUnreadable as exc:
            raise ExportError(
                f"cannot serve restore point {backup_id}: {exc.message}",
                hint=exc.hint,
                action=None
                if exc.hint
                else Action("check_repository_mounted", "is the repository mounted?"),
            ) from None
        with self._lock:
            self.refresh()
            if self.store.export_named(name, states=("running",)) is not None:
                raise ExportError(
                    f"an export named {name!r} is already running",
                    action=Action(
                        "export_name_taken", "stop it first or choose another name", name
                    ),
                )
            make_private_dir(self.root)
            if port is not None:
                base = self.root / f"{name}-tcp{port}"
            else:
                base = self._socket_base(uuid.uuid4().hex[:12])
                make_private_dirs(base.parent)
            pidfile, log_file = Path(f"{base}.pid"), Path(f"{base}.log")
            socket_path = None if port is not None else Path(f"{base}.sock")
            bind = (host or "127.0.0.1") if port is not None else None
            credential = None
            try:
                if tls:
                    # a leftover of a crashed export of the same name and port
                    shutil.rmtree(f"{base}.tls", ignore_errors=True)
                    credential = exporters.make_psk_credential(f"{base}.tls")
                server = exporters.start_nbd_server(
                    read.spec,
                    export_name=name,
                    pidfile=pidfile,
                    log_file=log_file,
                    socket_path=socket_path,
                    host=bind,
                    port=port,
                    description=point.label,
                    tls=credential,
                )
            except (ToolError, OSError) as exc:
                for leftover in (log_file, pidfile):
                    with contextlib.suppress(OSError):
                        leftover.unlink()
                shutil.rmtree(f"{base}.tls", ignore_errors=True)
                if isinstance(exc, ToolError):
                    raise ExportError(str(exc), hint=exc.hint, action=exc.action) from None
                raise ExportError(f"cannot prepare the export: {exc.strerror}") from None
            if port is not None:
                shown = f"[{bind}]" if bind and ":" in bind else bind
                scheme = f"nbds://{exporters.PSK_IDENTITY}@" if tls else "nbd://"
                uri = f"{scheme}{shown}:{port}/{quote(name)}"
            else:
                uri = f"nbd+unix:///{quote(name)}?socket={socket_path}"
            now = self.clock.now()
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
                started_at=now,
                tls="psk" if tls else None,
                idle_seconds=round(idle),
                last_active_at=now,
                expires_at=now + timedelta(seconds=max_age),
            )
            self._servers[row.id] = server
        self.bus.publish(
            Event(
                kind="export.started",
                message=f"serving {point.label} over NBD at {uri}"
                + (f" ({read.note})" if read.note else "")
                + (" (TLS, pre-shared key)" if tls else ""),
                level="warning" if read.plan.unverified else "info",
                source="exports",
                actor=actor,
                data={"export_id": row.id, "backup_id": backup_id, "uri": uri, **read.as_dict()},
            )
        )
        return replace(self._view(row), note=read.note)

    def _socket_base(self, key: str) -> Path:
        """Where a unix-socket export's files go (``.sock``, ``.pid``, ``.log``): in the
        state directory, or, when that path is too long for a unix socket (the kernel
        takes 107 bytes), in a root-only folder under /run named after it. Named by a
        short key, not the export's name (up to 128 characters)."""
        base = self.root / key
        if len(os.fsencode(base)) + len(".sock") <= _SUN_PATH_MAX:
            return base
        digest = hashlib.sha256(os.fsencode(self.root)).hexdigest()[:16]
        runtime = Path("/run") if os.geteuid() == 0 else Path(tempfile.gettempdir())
        return runtime / f"sendense-{os.geteuid()}" / digest / key

    def start_detached(
        self,
        backup_id: int,
        *,
        name: str | None = None,
        host: str | None = None,
        port: int | None = None,
        tls: bool = False,
        idle_minutes: float | None = None,
        max_hours: float | None = None,
        actor: str | None = None,
        force: bool = False,
    ) -> ExportView:
        """Like start(), for a command that ends right after: the export is started and
        owned by a keeper process of its own, which enforces its limits and stops it
        when it ends. Returns once the keeper reports the export running (or raises
        what it reported)."""
        self._check_request(name, host, port, tls, idle_minutes, max_hours)
        args = ["--backup-id", str(backup_id)]
        for flag, value in (
            ("--name", name),
            ("--host", host),
            ("--port", port),
            ("--idle-minutes", idle_minutes),
            ("--max-hours", max_hours),
            ("--actor", actor),
        ):
            if value is not None:
                args += [flag, str(value)]
        if tls:
            args.append("--tls")
        if force:
            args.append("--force")
        make_private_dir(self.root)
        log_file = self.root / "keeper.log"
        env = {
            "SENDENSE_STATE_DIR": str(self.settings.state_dir),
            "SENDENSE_DB_URL": self.settings.db_url,
            "SENDENSE_MOUNT_ROOT": str(self.settings.mount_root),
            "SENDENSE_DEFAULT_REPOSITORY": str(self.settings.default_repository),
        }
        try:
            keeper = exporters.start_export_keeper(args, env=env, log_file=log_file)
        except ToolError as exc:
            raise ExportError(exc.message, hint=exc.hint, action=exc.action) from None
        line = exporters.read_report(keeper, KEEPER_REPORT_TIMEOUT)
        try:
            report = json.loads(line) if line else {}
        except ValueError:
            report = {}
        if "export_id" in report:
            return replace(self.get(int(report["export_id"])), note=report.get("note"))
        if keeper.poll() is None:
            keeper.kill()  # silent: it never reported, so it owns nothing yet
        keeper.wait(timeout=exporters.STOP_TIMEOUT)
        if "error" in report:
            kind = ValidationError if report.get("refused") else ExportError
            raise kind(str(report["error"]), hint=report.get("hint"))
        raise ExportError(
            "the process that keeps the export did not report back",
            hint=f"its messages are in {log_file}",
        )

    # -- watching ----------------------------------------------------------------

    def refresh(self) -> list[int]:
        """Mark running exports of this machine whose server died as ``dead``; returns
        their ids."""
        dead = []
        for row in self.store.exports(states=("running",)):
            if not _on_this_host(row.owner):
                continue  # another appliance's pid means nothing here
            if not exporters.pid_matches(row.pid, PROGRAM, _marker(row)):
                if not self.store.end_running_export(
                    row.id, state="dead", stopped_at=self.clock.now(), stop_reason="server_died"
                ):
                    continue  # stopped meanwhile (its keeper, an operator): that stands
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

    def enforce(self, *, only: int | None = None) -> list[tuple[int, str]]:
        """Apply the limits: stop this engine's exports whose maximum age passed or
        that had no client for their idle timeout, and this machine's exports whose
        owner is gone. Returns (export id, reason) of those stopped."""
        self.refresh()
        now = self.clock.now()
        ended: list[tuple[int, str]] = []
        for row in self.store.exports(states=("running",)):
            if (only is not None and row.id != only) or not _on_this_host(row.owner):
                continue
            if row.owner != self.owner:
                reason = None if owner_alive(row.owner, live_here=_LIVE_OWNERS) else "owner_gone"
            else:
                reason = self._limit_passed(row, now)
            if reason is not None:
                try:
                    self.stop(row.id, actor="engine", reason=reason)
                    ended.append((row.id, reason))
                except SendenseError as exc:
                    log.warning("cannot stop NBD export %s (%s): %s", row.id, reason, exc)
        return ended

    def _limit_passed(self, row: NbdExport, now: datetime) -> str | None:
        expires = as_utc(row.expires_at)
        if expires is not None and now >= expires:
            return "max_age"
        clients = exporters.nbd_client_count(row.pid)
        if clients:
            self.store.update_export(row.id, last_active_at=now)
            return None
        last = as_utc(row.last_active_at) or as_utc(row.started_at) or now
        if clients == 0 and row.idle_seconds and now - last >= timedelta(seconds=row.idle_seconds):
            return "idle"
        return None

    def keep(self, export_id: int) -> bool:
        """One round of a keeper: apply the limits to one export; False once it is no
        longer running (stopped by anyone, idle, too old, or its server died)."""
        self.enforce(only=export_id)
        return self.store.get_export(export_id).state == "running"

    def wait_for_server(self, export_id: int, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the server of an export this engine started to
        end (stopped by anyone, or died); True when it has ended. Reaps it."""
        server = self._servers.get(export_id)
        return server is None or server.wait_ended(timeout)

    def kill_server(self, export_id: int) -> None:
        """Stop the server of an export this engine started without the catalog (when
        the catalog cannot be reached and a limit passed); the next engine marks the
        row dead."""
        server = self._servers.get(export_id)
        if server is not None:
            server.stop()

    def start_reaper(self, interval: float = REAP_SECONDS) -> None:
        """Apply the limits every ``interval`` s on a thread until close()."""
        if self._reaper is not None:
            return
        self._reaper_stop.clear()

        def loop() -> None:
            while not self._reaper_stop.wait(interval):
                try:
                    self.enforce()
                except Exception:
                    log.exception("NBD export reaper")

        self._reaper = threading.Thread(target=loop, name="export-reaper", daemon=True)
        self._reaper.start()

    # -- listing -----------------------------------------------------------------

    def list(self, *, include_stopped: bool = False) -> list[ExportView]:
        self.refresh()
        states = None if include_stopped else ("running",)
        return [self._view(row) for row in self.store.exports(states=states)]

    def get(self, ref: int | str) -> ExportView:
        return self._view(self._row(ref))

    def _row(self, ref: int | str) -> NbdExport:
        """By name (a running or dead export), else by ``#ID`` / ``ID``."""
        return self.store.export_by_ref(ref, name_states=("running", "dead"))

    # -- stopping ----------------------------------------------------------------

    def stop(
        self, ref: int | str, *, actor: str | None = None, reason: str = "operator"
    ) -> ExportView:
        row = self._row(ref)
        own = self._servers.pop(row.id, None)
        if row.state == "running" or own is not None:
            try:
                if own is not None:
                    own.stop()  # our child: waited for, so it does not linger as a zombie
                else:
                    exporters.stop_pid(row.pid, PROGRAM, _marker(row))
            except ToolError as exc:
                raise ExportError(str(exc), hint=exc.hint, action=exc.action) from None
        self._remove_files(row)
        if row.state == "running":
            row = self.store.update_export(
                row.id, state="stopped", stopped_at=self.clock.now(), stop_reason=reason
            )
        else:
            row = self.store.update_export(row.id, state="stopped")
        why = STOP_REASONS.get(reason, reason)
        self.bus.publish(
            Event(
                kind="export.stopped",
                message=f"stopped NBD export {row.export_name} ({row.uri}): {why}",
                source="exports",
                actor=actor,
                level="warning" if reason == "owner_gone" else "info",
                data={"export_id": row.id, "reason": reason},
            )
        )
        return self._view(row)

    def _remove_files(self, row: NbdExport) -> None:
        base = _files_base(self.root, row)
        for suffix in (".sock", ".pid", ".log"):
            with contextlib.suppress(OSError):
                Path(base + suffix).unlink()
        # the export's key goes with it: a copied key opens nothing afterwards
        shutil.rmtree(base + ".tls", ignore_errors=True)

    def own_exports(self) -> builtins.list[str]:
        """Names of the running exports this engine owns (stopped when it closes)."""
        rows = self.store.exports(states=("running",))
        return [row.export_name for row in rows if row.owner == self.owner]

    def own_servers(self) -> builtins.list[int]:
        """Ids of the exports whose servers this engine started (no catalog needed)."""
        return sorted(self._servers)

    def stop_all(self, *, include_persistent: bool = False, mine_only: bool = True) -> int:
        count = 0
        for row in self.store.exports(states=("running",)):
            if row.persistent and not include_persistent:
                continue
            if mine_only and row.owner != self.owner:
                continue
            self.stop(row.id, actor="engine", reason="owner_gone")
            count += 1
        return count

    def cleanup_leftovers(self) -> builtins.list[int]:
        """At start: mark dead servers, stop this machine's exports whose owner (an
        engine or a keeper) is gone, persistent or not."""
        return [export_id for export_id, _ in self.enforce()]

    def close(self) -> None:
        self._reaper_stop.set()
        if self._reaper is not None:
            self._reaper.join(timeout=5)
            self._reaper = None
        try:
            self.stop_all()
        finally:
            _LIVE_OWNERS.discard(self.owner)

    def abandon(self) -> None:
        """Forget this engine's exports without stopping them (what a crash does)."""
        self._reaper_stop.set()
        self._servers.clear()
        _LIVE_OWNERS.discard(self.owner)
