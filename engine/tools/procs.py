"""Which processes on this machine hold a file open, and stopping them (via /proc).

Used before a dead writer's partial file is removed: a ``qemu-img`` that
outlived its engine must not keep writing into a file the next writer deletes
or, worse, re-creates. Only processes of this machine are visible here; a
process on another appliance sharing the repository shows up through qemu's
image lock instead (``qemu_img.write_locked``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from engine.platform import pid_alive

PROC = Path("/proc")


@dataclass(frozen=True)
class FileHolder:
    pid: int
    #: the program's name (the executable's file name)
    program: str

    def __str__(self) -> str:
        return f"{self.program} (pid {self.pid})"


def holders(path: str | os.PathLike[str]) -> list[FileHolder]:
    """Processes that have ``path`` open (by any descriptor), this one excluded.

    Compares the names the kernel shows for open descriptors (readlink, which never
    asks the filesystem: a stat could hang on a frozen FUSE or NFS server)."""
    target = os.path.realpath(path)
    found: list[FileHolder] = []
    me = os.getpid()
    for entry in PROC.iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            fds = list((entry / "fd").iterdir())
        except OSError:  # gone, or not ours to look at
            continue
        for fd in fds:
            try:
                name = os.readlink(fd)
            except OSError:
                continue
            if name == target:
                found.append(FileHolder(int(entry.name), program_of(int(entry.name))))
                break
    return found


def program_of(pid: int) -> str:
    try:
        return Path(os.readlink(PROC / str(pid) / "exe")).name.removesuffix(" (deleted)")
    except OSError:
        with contextlib.suppress(OSError):
            return (PROC / str(pid) / "comm").read_text().strip()
    return "?"


def kill_and_wait(pids: Iterable[int], timeout: float = 10.0) -> list[int]:
    """SIGKILL each process; returns the pids still running after ``timeout``
    (stuck in the kernel on storage that does not answer)."""
    pids = list(pids)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while True:
        left = [pid for pid in pids if pid_alive(pid)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)
