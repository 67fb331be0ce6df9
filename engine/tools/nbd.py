"""qemu-nbd: serve an image over NBD (a unix socket or TCP) for qemu-img and nbdfuse.

Readers reach it as ``nbd+unix:///EXPORT?socket=PATH`` or ``nbd://HOST:PORT/EXPORT``
(``NbdServer.uri``). The server is a child process; ``stop()`` ends it (also as a
context manager).
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from engine.tools.base import ToolError, ToolTimeout, start
from engine.tools.exporters import refuse_plain_tcp

PathLike = str | Path


class NbdError(ToolError):
    """qemu-nbd could not start or serve the image."""


@dataclass
class NbdServer:
    image: str
    socket_path: str | None
    host: str | None
    port: int | None
    export_name: str
    process: subprocess.Popen[bytes] = field(repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def uri(self) -> str:
        if self.socket_path is not None:
            return f"nbd+unix:///{self.export_name}?socket={self.socket_path}"
        return f"nbd://{self.host}:{self.port}/{self.export_name}"

    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate the server (SIGTERM, then SIGKILL) and remove its socket."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=timeout)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()
        if self.socket_path and os.path.exists(self.socket_path):
            os.unlink(self.socket_path)

    def __enter__(self) -> NbdServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_qemu_nbd(
    image: PathLike,
    *,
    socket_path: PathLike | None = None,
    host: str | None = None,
    port: int | None = None,
    export_name: str = "",
    read_only: bool = True,
    fmt: str = "qcow2",
    persistent: bool = True,
    pidfile: PathLike | None = None,
    shared: int = 4,
    timeout: float = 10.0,
) -> NbdServer:
    """Start qemu-nbd on ``image`` and wait until it accepts connections.

    Give either ``socket_path`` (preferred: no network exposure) or ``host``/``port``.
    """
    if (socket_path is None) == (port is None):
        raise NbdError("give either socket_path or port to start_qemu_nbd, not both or neither")
    if not persistent and socket_path is None:
        # readiness is probed by connecting, which would end a one-shot server
        raise NbdError("a one-shot (persistent=False) qemu-nbd needs a unix socket_path")
    if not os.path.exists(image):
        # qemu-nbd makes its socket before it opens the image: a probe could connect to
        # a server that is about to fail
        raise NbdError(f"cannot serve {image}: {image} does not exist", program="qemu-nbd")
    args = ["qemu-nbd", "-f", fmt, "-x", export_name, "-e", str(shared)]
    if read_only:
        args.append("--read-only")
    if persistent:
        args.append("--persistent")
    if pidfile is not None:
        args.append(f"--pid-file={pidfile}")
    if socket_path is not None:
        args += ["-k", str(socket_path)]
    else:
        # this helper has no TLS: only this machine may reach it (see exporters)
        refuse_plain_tcp(host or "127.0.0.1", int(port or 0), tls=False)
        args += ["-b", host or "127.0.0.1", "-p", str(port)]
    args.append(str(image))
    proc = start(args, stdout=subprocess.DEVNULL)
    server = NbdServer(
        image=str(image),
        socket_path=str(socket_path) if socket_path is not None else None,
        host=None if socket_path is not None else host or "127.0.0.1",
        port=port,
        export_name=export_name,
        process=proc,
    )
    try:
        if server.socket_path is not None:
            wait_for_socket(server.socket_path, timeout=timeout, process=proc, connect=persistent)
        else:
            wait_for_port(
                server.host or "127.0.0.1",
                int(port or 0),
                timeout=timeout,
                process=proc,
                what=server.image,
            )
    except BaseException:
        server.stop()
        raise
    return server


def _died(process: subprocess.Popen[bytes], what: str) -> NbdError:
    err = process.stderr.read().decode("utf-8", "replace") if process.stderr else ""
    from engine.tools.qemu_img import explain_stderr

    detail = explain_stderr(err.replace("qemu-nbd: ", "qemu-img: "), image=what)
    return NbdError(
        f"qemu-nbd stopped before serving {what}: {detail}",
        program="qemu-nbd",
        returncode=process.returncode,
        stderr=err,
        hint=detail.hint,
    )


def wait_for_socket(
    path: PathLike,
    *,
    timeout: float = 10.0,
    process: subprocess.Popen[bytes] | None = None,
    connect: bool = True,
    what: str | None = None,
) -> None:
    """Wait until a unix socket accepts a connection (or the server process died).

    ``connect=False`` only waits for the socket file (qemu-nbd creates it once it
    listens): use it for a one-shot server that would exit after a probe connection.
    """

    def ready() -> bool:
        if not connect:
            return os.path.exists(path)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(1.0)
            s.connect(os.fspath(path))
        return True

    _wait_listening(ready, str(path), timeout=timeout, process=process, what=what)


def wait_for_port(
    host: str,
    port: int,
    *,
    timeout: float = 10.0,
    process: subprocess.Popen[bytes] | None = None,
    what: str | None = None,
) -> None:
    """Wait until a TCP port accepts a connection (or the server process died)."""

    def ready() -> bool:
        with socket.create_connection((host, port), timeout=1.0):
            return True

    _wait_listening(ready, f"{host}:{port}", timeout=timeout, process=process, what=what)


def _wait_listening(
    ready: Callable[[], bool],
    shown: str,
    *,
    timeout: float,
    process: subprocess.Popen[bytes] | None,
    what: str | None,
) -> None:
    """Poll ``ready()`` (an OSError counts as not ready) until it is True; raise the
    server's own error if ``process`` dies first, ToolTimeout after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise _died(process, what or shown)
        try:
            if ready():
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise ToolTimeout(
                f"nothing listened on {shown} within {timeout:g} s", program="qemu-nbd"
            )
        time.sleep(0.02)
