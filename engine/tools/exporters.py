"""Long-running servers that expose a QCOW2 restore point read-only.

Two kinds, both started with ``subprocess.Popen`` and tracked by a pidfile so a
later engine (after a crash) can find and stop them:

- a FUSE export by ``qemu-storage-daemon``: the image's guest view (the whole
  backing chain) appears as a raw, read-only *regular file* — the way to get a
  block device without a kernel NBD module (``losetup -r`` that file);
- an NBD server by ``qemu-nbd``: read-only, on a unix socket or a TCP address,
  with an export name.

Both take the image as an ImageSpec: every layer of the chain is given, so no
header decides what the server reads.

Every server is stopped by :func:`stop_pid` / :meth:`ServerProcess.stop`: TERM,
wait, KILL. A pid is only signalled after ``/proc/<pid>/cmdline`` confirms it
still runs the program we started (pids are reused).
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import json
import logging
import os
import secrets
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import Action
from engine.platform import is_zombie
from engine.private import (
    PRIVATE_FILE,
    PRIVATE_UMASK,
    make_private_dirs,
    open_private,
    write_private,
)
from engine.tools.base import ToolError, first_error_line, run, start, tool_env
from engine.tools.blockspec import ImageSpec
from engine.tools.mounts import list_mounts

log = logging.getLogger(__name__)

PathLike = str | Path

START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


class ExporterError(ToolError):
    """A server exposing a restore point could not be started or stopped."""


class PortInUse(ExporterError):
    """The TCP address the operator chose is already taken."""


class PlainTcpRefused(ExporterError):
    """An NBD export on an address other machines can reach, without TLS."""


#: the PSK identity (qemu's "username") clients present with the export's key
PSK_IDENTITY = "sendense"
#: qemu's name for the file in a tls-creds-psk directory
PSK_FILE = "keys.psk"


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

    def wait_ended(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for a server this engine started to end (reaping
        it); True when it has ended."""
        if self.proc is None:
            return True
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

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


def pid_matches(pid: int | None, program: str, marker: str) -> bool:
    """True when ``pid`` is a live ``program`` whose command line mentions ``marker``."""
    if not pid or pid <= 0:
        return False
    argv = _cmdline(pid)
    if not argv or is_zombie(pid):
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


def _reap(pid: int) -> None:
    """Collect ``pid`` if it is an ended child of this process (one an earlier engine in
    this process started), so it does not stay behind as a zombie."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


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
            _reap(pid)
            if not pid_matches(pid, program, marker):
                _reap(pid)  # it may have ended between the two looks
                return True
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


def _point_node(image: ImageSpec) -> dict[str, object]:
    # several readers (other mounts, exports, backups) may hold the files: no locking
    node = image.options(read_only=True, locking=False)
    node["node-name"] = "point"
    return node


def fuse_mounted(path: PathLike) -> bool:
    target = os.path.realpath(os.fspath(path))
    return any(m.target == target and m.fstype.startswith("fuse") for m in list_mounts())


def _missing(image: ImageSpec, program: str) -> ExporterError | None:
    for layer in image.layers():
        if layer.protocol == "file" and not os.path.isfile(layer.filename):
            return ExporterError(
                f"the restore point file {layer.filename} does not exist",
                program=program,
                hint="the repository may be unmounted, or the backup was deleted",
            )
    return None


def start_fuse_export(
    image: ImageSpec,
    mountpoint: PathLike,
    *,
    pidfile: PathLike,
    log_file: PathLike,
    timeout: float = START_TIMEOUT,
) -> ServerProcess:
    """Expose ``image`` (every layer spelled out) as the raw read-only file ``mountpoint``.

    ``mountpoint`` is created as an empty regular file if missing (FUSE needs it).
    """
    mountpoint = Path(mountpoint)
    pidfile, log_file = Path(pidfile), Path(log_file)
    missing = _missing(image, "qemu-storage-daemon")
    if missing is not None:
        raise missing
    make_private_dirs(mountpoint.parent)
    if not mountpoint.exists():
        os.close(open_private(mountpoint))
    export = {
        "type": "fuse",
        "id": "restore",
        "node-name": "point",
        "mountpoint": str(mountpoint),
        "writable": False,
        # only the user who mounted it (root) may read the disk, whatever its mode says
        "allow-other": "off",
    }
    args = [
        "qemu-storage-daemon",
        "--blockdev",
        json.dumps(_point_node(image)),
        "--export",
        json.dumps(export),
        "--pidfile",
        str(pidfile),
    ]
    with os.fdopen(open_private(log_file), "wb") as err:
        # a server meant to outlive a CLI command (persistent exports, detached
        # mounts): not tied to this process; cleaned up at the next start instead
        proc = start(args, stdout=subprocess.DEVNULL, stderr=err, outlives_engine=True)
    try:
        _wait_ready(
            proc,
            "qemu-storage-daemon",
            lambda: fuse_mounted(mountpoint),
            log_file,
            image.shown,
            timeout,
        )
    except BaseException:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT)
        fuse_unmount(mountpoint)
        raise
    write_private(pidfile, f"{proc.pid}\n")
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


def is_loopback(host: str) -> bool:
    """True when ``host`` only ever means this machine (127.0.0.0/8, ::1, a name that
    resolves to nothing else). ``0.0.0.0`` and ``::`` mean every address: not loopback."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return False
    return bool(infos) and all(
        ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]).is_loopback for info in infos
    )


def refuse_plain_tcp(host: str, port: int, *, tls: bool) -> None:
    """An NBD export serves the whole disk to whoever connects: off the loopback
    address it must ask for TLS, or it is refused (before anything listens)."""
    if tls or is_loopback(host):
        return
    raise PlainTcpRefused(
        f"refusing to serve on {host}:{port} without TLS: anyone who can reach that "
        "address could read the whole disk",
        program="qemu-nbd",
        action=Action(
            "export_tls",
            "serve with TLS (a pre-shared key is made), or on 127.0.0.1 or a unix socket",
        ),
    )


@dataclass(frozen=True)
class PskCredential:
    """A TLS pre-shared key for one export: ``directory/keys.psk`` (0600) in qemu's
    ``identity:hexkey`` form; the same file serves qemu-nbd, qemu-img and libnbd."""

    directory: Path
    identity: str = PSK_IDENTITY

    @property
    def key_file(self) -> Path:
        return self.directory / PSK_FILE


def make_psk_credential(directory: PathLike) -> PskCredential:
    """A fresh 256-bit key in a new root-only directory (never on a command line)."""
    folder = Path(directory)
    make_private_dirs(folder.parent)
    folder.mkdir(mode=0o700)
    credential = PskCredential(folder)
    fd = open_private(credential.key_file, os.O_WRONLY | os.O_EXCL)
    with os.fdopen(fd, "w") as out:
        out.write(f"{credential.identity}:{secrets.token_hex(32)}\n")
    return credential


def _qemu_option_value(value: str) -> str:
    """A value inside a qemu ``key=value,…`` option: commas are doubled."""
    return value.replace(",", ",,")


def nbd_client_count(pid: int | None) -> int | None:
    """How many clients are connected to the NBD server ``pid`` now: its established
    TCP or connected unix sockets (listening ones do not count). None when the
    process is gone or cannot be inspected."""
    if not pid or pid <= 0:
        return None
    inodes: set[str] = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[len("socket:[") : -1])
    except OSError:
        return None
    connected = 0
    # /proc/PID/net/*: the server's own network namespace; st 01 = ESTABLISHED
    for table, inode_col, state_col, connected_state in (
        ("tcp", 9, 3, "01"),
        ("tcp6", 9, 3, "01"),
        ("unix", 6, 5, "03"),  # SS_CONNECTED; a listening socket is SS_UNCONNECTED
    ):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > inode_col and fields[inode_col] in inodes:
                connected += fields[state_col] == connected_state
    return connected


def _connectable(host: str, port: int) -> bool:
    probe = "127.0.0.1" if host in ("0.0.0.0", "") else ("::1" if host == "::" else host)
    try:
        with socket.create_connection((probe, port), timeout=0.2):
            return True
    except OSError:
        return False


def start_nbd_server(
    image: ImageSpec,
    *,
    export_name: str,
    pidfile: PathLike,
    log_file: PathLike,
    socket_path: PathLike | None = None,
    host: str | None = None,
    port: int | None = None,
    description: str | None = None,
    tls: PskCredential | None = None,
    timeout: float = START_TIMEOUT,
) -> ServerProcess:
    """Serve ``image`` (every layer spelled out) read-only over NBD (unix socket, or
    TCP when ``port`` is given).

    The server accepts any number of clients and keeps running after they
    disconnect, until stopped. With ``tls`` clients must speak TLS with that
    pre-shared key (a plain client is turned away); TCP on anything but a loopback
    address is refused without it.
    """
    pidfile, log_file = Path(pidfile), Path(log_file)
    if port is not None:
        # before anything else, whoever calls: no plain TCP off loopback
        refuse_plain_tcp(host or "127.0.0.1", port, tls=tls is not None)
    missing = _missing(image, "qemu-nbd")
    if missing is not None:
        raise missing
    args = [
        "qemu-nbd",
        "--read-only",
        "--persistent",
        "--shared=0",
        f"--export-name={export_name}",
        f"--pid-file={pidfile}",
    ]
    if description:
        args.append(f"--description={description}")
    if tls is not None:
        directory = _qemu_option_value(str(tls.directory))
        args += [
            "--object",
            f"tls-creds-psk,id=tls0,endpoint=server,dir={directory}",
            "--tls-creds=tls0",
        ]
    if port is not None:
        bind = host or "127.0.0.1"
        refuse_plain_tcp(bind, port, tls=tls is not None)
        check_port_free(bind, port)
        args += [f"--bind={bind}", f"--port={port}"]
        marker = f"--port={port}"
        ready = lambda: _connectable(bind, port)  # noqa: E731
        what = f"{image.shown} on {bind}:{port}"
    else:
        if socket_path is None:
            raise ExporterError("an NBD export needs a unix socket or a TCP port")
        sock = Path(socket_path)
        # whoever reaches the socket reads the whole disk: its folder is root's only,
        # and qemu-nbd runs with umask 077 (engine.tools.base), so the socket is too
        make_private_dirs(sock.parent)
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()
        args.append(f"--socket={sock}")
        marker = str(sock)
        ready = sock.exists
        what = f"{image.shown} on {sock}"
    args.append(image.json_name())
    with os.fdopen(open_private(log_file), "wb") as err:
        # a server meant to outlive a CLI command (persistent exports, detached
        # mounts): not tied to this process; cleaned up at the next start instead
        proc = start(args, stdout=subprocess.DEVNULL, stderr=err, outlives_engine=True)
    try:
        _wait_ready(proc, "qemu-nbd", ready, log_file, what, timeout)
        if socket_path is not None:
            # made 0700 under umask 077 in a 0700 folder; no execute bit on a socket
            os.chmod(socket_path, PRIVATE_FILE)
    except BaseException:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT)
        raise
    write_private(pidfile, f"{proc.pid}\n")
    return ServerProcess("qemu-nbd", proc.pid, pidfile, marker, proc)


# -- the keeper of a detached export ----------------------------------------------

KEEPER_MODULE = "engine.services.export_keeper"


def start_export_keeper(
    args: Sequence[str], *, env: Mapping[str, str], log_file: PathLike
) -> subprocess.Popen[bytes]:
    """Start the process that owns an export started from a short-lived command (the
    CLI): ``python -m engine.services.export_keeper ARGS`` in a session of its own, so
    it outlives that command and its terminal. It reports on its stdout (one line,
    see :func:`read_report`); its stderr goes to ``log_file``. Settings reach it
    through ``env``, never on its command line (a catalog URL may hold a password)."""
    with os.fdopen(open_private(log_file, os.O_WRONLY | os.O_APPEND), "wb") as err:
        try:
            return subprocess.Popen(
                [sys.executable, "-m", KEEPER_MODULE, *args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
                env={**tool_env(), **env},
                close_fds=True,
                start_new_session=True,
                umask=PRIVATE_UMASK,
            )
        except OSError as exc:
            raise ExporterError(
                f"cannot start the export keeper: {exc.strerror}", program=KEEPER_MODULE
            ) from None


def read_report(proc: subprocess.Popen[bytes], timeout: float) -> str | None:
    """The first line ``proc`` writes to its stdout, or None when it exits or stays
    silent for ``timeout`` s; its stdout is closed afterwards either way."""
    assert proc.stdout is not None
    line = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not selector.select(left):
                break
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            line += chunk
    proc.stdout.close()
    return line.decode("utf-8", "replace").strip() if line.endswith(b"\n") else None
