"""The real ``sendense`` console on a real pseudo-terminal: what a terminal (and an
SSH link) receives, byte for byte."""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import select
import signal
import struct
import sys
import termios
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

SENDENSE = Path(sys.executable).with_name("sendense")


class PtyConsole:
    def __init__(self, pid: int, fd: int) -> None:
        self.pid = pid
        self.fd = fd
        self.received = bytearray()

    def read(self, seconds: float) -> bytes:
        """Everything the console writes in the next ``seconds``."""
        got = bytearray()
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            ready, _, _ = select.select([self.fd], [], [], min(left, 0.1))
            if ready:
                try:
                    chunk = os.read(self.fd, 65536)
                except OSError:  # the console left
                    break
                if not chunk:
                    break
                got += chunk
        self.received += got
        return bytes(got)

    def settle(self, quiet: float = 2.0, limit: float = 60.0) -> None:
        """Read until the console has written nothing for ``quiet`` seconds (it drew
        the screen and its first refreshes); give up after ``limit``."""
        end = time.monotonic() + limit
        while not self.received and time.monotonic() < end:
            self.read(0.5)  # the console is still starting
        while time.monotonic() < end:
            if not self.read(quiet):
                return
        raise AssertionError(f"the console never went quiet for {quiet} s in {limit} s")

    def send(self, keys: str) -> None:
        os.write(self.fd, keys.encode())


@contextlib.contextmanager
def console_on_pty(
    env: dict[str, str],
    args: Sequence[str] = (),
    *,
    size: tuple[int, int] = (100, 30),
) -> Iterator[PtyConsole]:
    pid, fd = pty.fork()
    if pid == 0:  # the child: the console on the pty's slave side
        try:
            os.environ.update(env)
            os.execv(str(SENDENSE), [str(SENDENSE), *args])
        finally:
            os._exit(127)
    columns, lines = size
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", lines, columns, 0, 0))
    console = PtyConsole(pid, fd)
    try:
        yield console
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            console.read(0.2)  # keep the pty drained so its exit is not blocked
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                break
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(fd)
