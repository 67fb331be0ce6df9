"""The one ``sendense daemon`` of a state directory: who owns long-lived work.

Jobs, restore mounts and NBD exports started from a console belong to the daemon
(or, for mounts and exports, to an owner that outlives the console), so they go
on after the console leaves, its SSH link drops or it crashes. When no daemon
runs, the console and every command that queues work start one in the
background (:func:`ensure_daemon`), the way tmux starts its server; systemd's
unit stays the way to run it on an appliance.

Presence. A daemon holds an exclusive ``flock`` on ``STATE_DIR/daemon.lock`` for
its whole life (the kernel drops it when the process ends, however it ends), so
exactly one daemon serves a state directory: a second one is refused with one
sentence. Next to it, ``daemon.json`` (0600, replaced atomically) says which
process it is, which catalog it serves (a digest of the URL, never the URL) and
whether it is ready. A record without the lock held is a leftover and means
nothing.

``SENDENSE_NO_DAEMON=1`` opts out: nothing is started and the console runs work
itself (the test suite sets it; tests of the daemon unset it).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from engine.config import Settings
from engine.errors import Action, SendenseError
from engine.platform import pid_alive
from engine.private import make_private_dir, open_private, write_private
from engine.tools.background import BackgroundProcess, reap_when_done, start_background
from engine.tools.base import ToolError

log = logging.getLogger(__name__)

LOCK_FILE = "daemon.lock"
RECORD_FILE = "daemon.json"
LOG_FILE = "daemon.log"
#: set to anything but "" or "0": no daemon is started, work runs where it is started
NO_DAEMON_ENV = "SENDENSE_NO_DAEMON"
#: how long a starter waits for a new daemon to say it is ready (catalog opened and
#: migrated, leftovers of a crash cleaned up)
START_TIMEOUT = 60.0
#: how long ``stop_daemon`` waits for the daemon to hand its jobs back and leave
STOP_TIMEOUT = 60.0
_POLL = 0.1


class DaemonRunning(SendenseError):
    """A daemon already serves this state directory."""


@dataclass(frozen=True)
class DaemonInfo:
    """What a running daemon's record says."""

    pid: int
    #: digest of the catalog URL it serves
    catalog: str
    ready: bool
    started_at: str = ""
    #: its job runner's lease owner (host:pid:token)
    owner: str = ""


@dataclass(frozen=True)
class DaemonStatus:
    """Whether a daemon owns this state directory's long-lived work."""

    #: the daemon's pid; None when there is none
    pid: int | None = None
    #: this call started it
    started: bool = False
    #: why there is no daemon, one sentence (None when there is one)
    problem: str | None = None
    log_file: Path | None = None

    @property
    def running(self) -> bool:
        return self.pid is not None


def catalog_digest(db_url: str) -> str:
    """Names a catalog in the record without writing its URL (it may hold a password)."""
    return hashlib.sha256(db_url.encode()).hexdigest()[:16]


def daemon_disabled() -> bool:
    return os.environ.get(NO_DAEMON_ENV, "") not in ("", "0")


def log_file(settings: Settings) -> Path:
    return settings.log_dir / LOG_FILE


def _lock_held(state_dir: Path) -> bool:
    """True when a process holds the daemon lock of ``state_dir``."""
    try:
        fd = os.open(state_dir / LOCK_FILE, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        return exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN)
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def _read_record(state_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((state_dir / RECORD_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("pid"), int) else None


def find_daemon(settings: Settings) -> DaemonInfo | None:
    """The daemon serving ``settings.state_dir`` (ready or still starting), or None.
    One that holds the lock but has not written its record yet reads as pid 0, not
    ready."""
    state_dir = Path(settings.state_dir)
    if not _lock_held(state_dir):
        return None
    record = _read_record(state_dir)
    if record is None or not pid_alive(int(record["pid"])):
        # the lock is held, the record is not written yet (or is a dead one's)
        return DaemonInfo(pid=0, catalog="", ready=False)
    return DaemonInfo(
        pid=int(record["pid"]),
        catalog=str(record.get("catalog", "")),
        ready=bool(record.get("ready")),
        started_at=str(record.get("started_at", "")),
        owner=str(record.get("owner", "")),
    )


class DaemonPresence:
    """Held by a running daemon: the lock, and the record that says who it is."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.state_dir = Path(settings.state_dir)
        self._fd: int | None = None
        self._started_at = datetime.now(UTC).isoformat(timespec="seconds")

    def claim(self) -> None:
        """Take the state directory's daemon lock, or raise DaemonRunning."""
        try:
            make_private_dir(self.state_dir)
            fd = open_private(self.state_dir / LOCK_FILE, os.O_RDWR)
        except OSError as exc:
            raise SendenseError(
                f"the daemon lock {self.state_dir / LOCK_FILE} cannot be created: "
                f"{exc.strerror or exc}",
                hint="the state directory must be writable (SENDENSE_STATE_DIR)",
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            record = _read_record(self.state_dir)
            which = f" (pid {record['pid']})" if record else ""
            raise DaemonRunning(
                f"a sendense daemon already runs for state directory {self.state_dir}{which}",
                action=Action("daemon_running", "see the daemon's status, or stop it"),
            ) from None
        self._fd = fd
        self._write(ready=False)

    def ready(self, owner: str) -> None:
        """Say the daemon serves the catalog now (its engine is started)."""
        self._write(ready=True, owner=owner)

    def _write(self, *, ready: bool, owner: str = "") -> None:
        record = {
            "pid": os.getpid(),
            "catalog": catalog_digest(self.settings.db_url),
            "ready": ready,
            "started_at": self._started_at,
            "owner": owner,
        }
        temporary = self.state_dir / f".{RECORD_FILE}.{os.getpid()}"
        write_private(temporary, json.dumps(record) + "\n")
        os.replace(temporary, self.state_dir / RECORD_FILE)

    def release(self) -> None:
        """Remove the record and drop the lock (the kernel drops it anyway when the
        process ends)."""
        if self._fd is None:
            return
        record = _read_record(self.state_dir)
        if record is not None and record.get("pid") == os.getpid():
            with contextlib.suppress(OSError):
                (self.state_dir / RECORD_FILE).unlink()
        with contextlib.suppress(OSError):
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None


def daemon_command() -> list[str]:
    """``sendense daemon`` as this installation runs it."""
    script = Path(sys.executable).parent / "sendense"
    if os.access(script, os.X_OK):
        return [str(script), "daemon"]
    return [sys.executable, "-m", "sendense_tui.cli", "daemon"]


def _environment(settings: Settings) -> dict[str, str]:
    """The starter's environment (config file, overrides) plus the settings it was
    given on its command line (``--state-dir``, ``--db-url``)."""
    env = dict(os.environ)
    env.update(
        SENDENSE_STATE_DIR=str(settings.state_dir),
        SENDENSE_DB_URL=settings.db_url,
        SENDENSE_MOUNT_ROOT=str(settings.mount_root),
        SENDENSE_DEFAULT_REPOSITORY=str(settings.default_repository),
    )
    env.pop(NO_DAEMON_ENV, None)
    return env


def _last_words(path: Path) -> str:
    """What a daemon that ended at its start said last in its log."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 4096))
            lines = [line.strip() for line in handle.read().decode("utf-8", "replace").splitlines()]
    except OSError:
        return ""
    lines = [line for line in lines if line]
    # the command's own sentence ("sendense: …", then "  hint: …") when it refused
    said = [line.removeprefix("sendense: ") for line in lines if line.startswith("sendense: ")]
    return said[-1] if said else (lines[-1] if lines else "")


def _other_catalog(settings: Settings, info: DaemonInfo) -> DaemonStatus:
    return DaemonStatus(
        problem=(
            f"the sendense daemon of state directory {settings.state_dir} (pid {info.pid}) "
            "serves another catalog"
        ),
        log_file=log_file(settings),
    )


def ensure_daemon(
    settings: Settings,
    *,
    command: Sequence[str] | None = None,
    timeout: float = START_TIMEOUT,
) -> DaemonStatus:
    """The daemon serving ``settings``: the running one, or one started now in the
    background (detached, logging to ``logs/daemon.log``), once it says it is ready.
    Never raises for a daemon that cannot be had: the status says why (the caller
    then runs work itself)."""
    where = log_file(settings)
    if daemon_disabled():
        return DaemonStatus(problem=f"{NO_DAEMON_ENV} is set", log_file=where)
    digest = catalog_digest(settings.db_url)
    info = find_daemon(settings)
    if info is not None and info.ready:
        if info.catalog != digest:
            return _other_catalog(settings, info)
        return DaemonStatus(pid=info.pid, log_file=where)
    proc: BackgroundProcess | None = None
    deadline = time.monotonic() + timeout
    while True:
        if info is None and proc is None:
            try:
                proc = _spawn(settings, command, where)
            except SendenseError as exc:
                return DaemonStatus(problem=exc.message, log_file=where)
        info = find_daemon(settings)
        if info is not None and info.ready:
            if proc is not None:
                reap_when_done(proc)  # ours, or the one that won a race with ours
            if info.catalog != digest:
                return _other_catalog(settings, info)
            started = proc is not None and proc.pid == info.pid
            return DaemonStatus(pid=info.pid, started=started, log_file=where)
        ended = proc is not None and proc.poll() is not None
        if ended and info is None:
            assert proc is not None
            why = _last_words(where) or f"it exited with code {proc.returncode}"
            return DaemonStatus(problem=f"the sendense daemon did not start: {why}", log_file=where)
        if time.monotonic() >= deadline:
            if proc is not None and proc.poll() is None:
                # silent so far: it owns nothing yet; leave no half-started daemon
                proc.terminate()
                reap_when_done(proc)
            return DaemonStatus(
                problem=f"the sendense daemon did not say it was ready within {timeout:g} s",
                log_file=where,
            )
        time.sleep(_POLL)


def _spawn(settings: Settings, command: Sequence[str] | None, where: Path) -> BackgroundProcess:
    try:
        make_private_dir(settings.log_dir)
        proc = start_background(
            list(command or daemon_command()), env=_environment(settings), log_file=where
        )
    except OSError as exc:
        raise SendenseError(
            f"no sendense daemon could be started: {settings.log_dir}: {exc.strerror or exc}"
        ) from None
    except ToolError as exc:
        raise SendenseError(f"no sendense daemon could be started: {exc.message}") from None
    log.info("started a sendense daemon (pid %s) for %s", proc.pid, settings.state_dir)
    return proc


def stop_daemon(settings: Settings, *, timeout: float = STOP_TIMEOUT) -> int | None:
    """SIGTERM the daemon of ``settings.state_dir`` and wait until it has left (its
    running jobs go back to the queue); returns its pid, or None when none ran."""
    info = find_daemon(settings)
    if info is None:
        return None
    deadline = time.monotonic() + timeout
    while info is not None and info.pid == 0 and time.monotonic() < deadline:
        time.sleep(_POLL)  # still writing its record
        info = find_daemon(settings)
    if info is None:
        return None
    if info.pid == 0:
        raise SendenseError(
            f"the sendense daemon of {settings.state_dir} does not say which process it is",
            hint=f"look at {log_file(settings)}",
        )
    with contextlib.suppress(ProcessLookupError):
        os.kill(info.pid, signal.SIGTERM)
    while _lock_held(Path(settings.state_dir)):
        if time.monotonic() >= deadline:
            raise SendenseError(
                f"the sendense daemon (pid {info.pid}) did not stop within {timeout:g} s",
                hint=f"its log is {log_file(settings)}; kill -KILL {info.pid} stops it at once",
            )
        time.sleep(_POLL)
    return info.pid
