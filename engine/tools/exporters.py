"""Long-running servers that expose a QCOW2 restore point read-only.

Two kinds, both started with ``subprocess.Popen`` and tracked by a pidfile so a
later engine (after a crash) can find and stop them:

- a FUSE export by ``qemu-storage-daemon``: the image's guest view (the whole
  backing chain) appears as a raw, read-only *regular file* — the way to get a
  block device without a kernel NBD module (``losetup -r`` that file);
- an NBD server by ``qemu-nbd``: read-only, on a unix socket or a TCP address,
  with an export name.

Every server is stopped by :func:`stop_pid` / :meth:`ServerProcess.stop`: TERM,
wait, KILL. A pid is only signalled after ``/proc/<pid>/cmdline`` confirms it
still runs the program we started (pids are reused).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from engine.tools.base import ToolError, first_error_line, run, start
from engine.tools.mounts import list_mounts

log = logging.getLogger(__name__)

PathLike = str | Path

START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


class ExporterError(ToolError):
    """A server exposing a restore point could not be started or stopped."""


class PortInUse(ExporterError):
    """The TCP address the operator chose is already taken."""


@dataclass
class ServerProcess:
    """A running exporter. ``proc`` is set only in the engine that started it."""

    program: str
    pid: int
    pidfile: Path
    #: a string that must appear in /proc/<pid>/cmdline (the mountpoint or socket)
    marker: str
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def alive(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            return False
        return pid_matches(self.pid, self.program, self.marker)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Terminate the server and wait for it; KILL if it does not go."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=timeout)
        else:
            stop_pid(self.pid, self.program, self.marker, timeout=timeout)
        with contextlib.suppress(FileNotFoundError):
            self.pidfile.unlink()


# -- pids ------------------------------------------------------------------------


def _cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return [part.decode("utf-8", "surrogateescape") for part in raw.split(b"\0") if part]


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"


def pid_matches(pid: int | None, program: str, marker: str) -> bool:
    """True when ``pid`` is a live ``program`` whose command line mentions ``marker``."""
    if not pid or pid <= 0:
        return False
    argv = _cmdline(pid)
    if not argv or _is_zombie(pid):
        return False
    if not os.path.basename(argv[0]).startswith(program):
        return False
    return any(marker in arg for arg in argv)


def read_pidfile(path: PathLike) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def stop_pid(pid: int | None, program: str, marker: str, *, timeout: float = STOP_TIMEOUT) -> bool:
    """Stop a server another engine started. Returns True when one was running."""
    if not pid_matches(pid, program, marker):
        return False
    assert pid is not None
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not pid_matches(pid, program, marker):
                return True
            # our own child (started by this process earlier): reap it
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.05)
    raise ExporterError(
        f"{program} (pid {pid}) did not stop within {2 * timeout:g} s",
        program=program,
        hint=f"stop it by hand: kill -9 {pid}",
    )


# -- starting --------------------------------------------------------------------


def _wait_ready(
    proc: subprocess.Popen[bytes],
    program: str,
    ready: Callable[[], bool],
    log_file: Path,
    what: str,
    timeout: float,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise _start_failed(program, log_file, what, proc.returncode)
        if ready():
            return
        time.sleep(0.02)
    proc.kill()
    proc.wait(timeout=STOP_TIMEOUT)
    raise ExporterError(
        f"{program} did not become ready within {timeout:g} s ({what})",
        program=program,
        hint="the repository storage may be slow or hung",
    )


def _start_failed(program: str, log_file: Path, what: str, code: int | None) -> ExporterError:
    try:
        stderr = log_file.read_text(errors="replace")
    except OSError:
        stderr = ""
    reason = first_error_line(stderr) or f"exit code {code}"
    if "}: " in reason:  # drop the echoed JSON option before the actual complaint
        reason = reason.rsplit("}: ", 1)[1]
    lowered = stderr.lower()
    if "address already in use" in lowered:
        return PortInUse(
            f"cannot serve {what}: the address is already in use",
            program=program,
            returncode=code,
            stderr=stderr,
            hint="pick another port or stop what listens there",
        )
    hint = None
    if any(
        word in lowered
        for word in ("qcow2", "image", "corrupt", "header", "backing", "could not open")
    ):
        hint = "the restore point may be damaged or its backing file missing: verify the chain"
    return ExporterError(
        f"cannot expose {what}: {reason}",
        program=program,
        returncode=code,
        stderr=stderr,
        hint=hint,
    )


def _qcow2_node(image: Path) -> dict[str, object]:
    return {
        "driver": "qcow2",
        "node-name": "point",
        "read-only": True,
        "file": {
            "driver": "file",
            "filename": str(image),
            "read-only": True,
            # several readers (other mounts, exports, backups) may hold the file
            "locking": "off",
        },
    }


def fuse_mounted(path: PathLike) -> bool:
    target = os.path.realpath(os.fspath(path))
    return any(m.target == target and m.fstype.startswith("fuse") for m in list_mounts())


def start_fuse_export(
    image: PathLike,
    mountpoint: PathLike,
    *,
    pidfile: PathLike,
    log_file: PathLike,
    timeout: float = START_TIMEOUT,
) -> ServerProcess:
    """Expose ``image`` (with its backing chain) as the raw read-only file ``mountpoint``.

    ``mountpoint`` is created as an empty regular file if missing (FUSE needs it).
    """
    image, mountpoint = Path(image), Path(mountpoint)
    pidfile, log_file = Path(pidfile), Path(log_file)
    if not image.is_file():
        raise ExporterError(
            f"the restore point file {image} does not exist",
            program="qemu-storage-daemon",
            hint="the repository may be unmounted, or the backup was deleted",
        )
    mountpoint.parent.mkdir(parents=True, exist_ok=True)
    if not mountpoint.exists():
        mountpoint.touch(mode=0o600)
    export = {
        "type": "fuse",
        "id": "restore",
        "node-name": "point",
        "mountpoint": str(mountpoint),
        "writable": False,
    }
    args = [
        "qemu-storage-daemon",
        "--blockdev",
        json.dumps(_qcow2_node(image)),
        "--export",
        json.dumps(export),
        "--pidfile",
        str(pidfile),
    ]
    with open(log_file, "wb") as err:
        # a server meant to outlive a CLI command (persistent exports, detached
        # mounts): not tied to this process; cleaned up at the next start instead
        proc = start(args, stdout=subprocess.DEVNULL, stderr=err, outlives_engine=True)
    try:
        _wait_ready(
            proc,
            "qemu-storage-daemon",
            lambda: fuse_mounted(mountpoint),
            log_file,
            str(image),
            timeout,
        )
    except BaseException:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT)
        fuse_unmount(mountpoint)
        raise
    pidfile.write_text(f"{proc.pid}\n")
    return ServerProcess("qemu-storage-daemon", proc.pid, pidfile, str(mountpoint), proc)


def fuse_unmount(mountpoint: PathLike, *, timeout: float = 15.0) -> None:
    """``fusermount3 -u`` a FUSE mount an exporter left behind (no-op if none)."""
    if not fuse_mounted(mountpoint):
        return
    done = run(["fusermount3", "-u", str(mountpoint)], timeout=timeout, check=False)
    if done.returncode != 0 and fuse_mounted(mountpoint):
        run(["fusermount3", "-u", "-z", str(mountpoint)], timeout=timeout)


def check_port_free(host: str, port: int) -> None:
    """Raise PortInUse when ``host:port`` cannot be bound (checked before starting)."""
    if not 0 < port < 65536:
        raise ExporterError(f"port {port} is not a TCP port (1-65535)", program="qemu-nbd")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ExporterError(
            f"cannot listen on {host}: {exc.strerror}",
            program="qemu-nbd",
            hint="use an IP address of this machine, e.g. 127.0.0.1 or 0.0.0.0",
        ) from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUse(
                    f"cannot serve on {host}:{port}: the port is already in use",
                    program="qemu-nbd",
                    hint="pick another port (or stop what listens there: ss -ltnp)",
                ) from None
            if exc.errno == errno.EADDRNOTAVAIL:
                raise ExporterError(
                    f"cannot serve on {host}:{port}: {host} is not an address of this machine",
                    program="qemu-nbd",
                ) from None
            raise ExporterError(
                f"cannot serve on {host}:{port}: {exc.strerror}", program="qemu-nbd"
            ) from None


def _connectable(host: str, port: int) -> bool:
    probe = "127.0.0.1" if host in ("0.0.0.0", "") else ("::1" if host == "::" else host)
    try:
        with socket.create_connection((probe, port), timeout=0.2):
            return True
    except OSError:
        return False


def start_nbd_server(
    image: PathLike,
    *,
    export_name: str,
    pidfile: PathLike,
    log_file: PathLike,
    socket_path: PathLike | None = None,
    host: str | None = None,
    port: int | None = None,
    description: str | None = None,
    timeout: float = START_TIMEOUT,
) -> ServerProcess:
    """Serve ``image`` read-only over NBD (unix socket, or TCP when ``port`` is given).

    The server accepts any number of clients and keeps running after they
    disconnect, until stopped.
    """
    image, pidfile, log_file = Path(image), Path(pidfile), Path(log_file)
    if not image.is_file():
        raise ExporterError(
            f"the restore point file {image} does not exist",
            program="qemu-nbd",
            hint="the repository may be unmounted, or the backup was deleted",
        )
    args = [
        "qemu-nbd",
        "--read-only",
        "--format=qcow2",
        "--persistent",
        "--shared=0",
        f"--export-name={export_name}",
        f"--pid-file={pidfile}",
    ]
    if description:
        args.append(f"--description={description}")
    if port is not None:
        bind = host or "127.0.0.1"
        check_port_free(bind, port)
        args += [f"--bind={bind}", f"--port={port}"]
        marker = f"--port={port}"
        ready = lambda: _connectable(bind, port)  # noqa: E731
        what = f"{image} on {bind}:{port}"
    else:
        if socket_path is None:
            raise ExporterError("an NBD export needs a unix socket or a TCP port")
        sock = Path(socket_path)
        sock.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()
        args.append(f"--socket={sock}")
        marker = str(sock)
        ready = sock.exists
        what = f"{image} on {sock}"
    args.append(str(image))
    with open(log_file, "wb") as err:
        # a server meant to outlive a CLI command (persistent exports, detached
        # mounts): not tied to this process; cleaned up at the next start instead
        proc = start(args, stdout=subprocess.DEVNULL, stderr=err, outlives_engine=True)
    try:
        _wait_ready(proc, "qemu-nbd", ready, log_file, what, timeout)
    except BaseException:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT)
        raise
    pidfile.write_text(f"{proc.pid}\n")
    return ServerProcess("qemu-nbd", proc.pid, pidfile, marker, proc)
