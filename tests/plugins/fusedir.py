"""A real FUSE directory that a test can freeze: the dead repository of a bad night.

``python -m tests.plugins.fusedir BACKING MOUNTPOINT`` serves BACKING at MOUNTPOINT
through libfuse 3 (a passthrough written with the pinned ``mfusepy`` ctypes binding),
in the foreground. SIGSTOP on that process freezes every call into the directory —
statvfs, stat, open — exactly as a hung FUSE server or a dead sshfs does; SIGCONT
lets them finish.

The ``fuse_dir`` fixture starts one in a subprocess, waits until it is mounted, and
always SIGCONTs, lazily unmounts (``fusermount3 -u -z``) and stops it at teardown,
so a failed test cannot leave a frozen mount that hangs the rest of the suite.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

FUSE_REASON = "needs /dev/fuse, fusermount3 and mfusepy (pip install -e '.[test]')"


class Passthrough:
    """Every call goes to the same path under the backing directory."""

    use_ns = True

    def __init__(self, root: str) -> None:
        self.root = root

    def _full(self, path: str) -> str:
        return os.path.join(self.root, path.lstrip("/"))

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        st = os.lstat(self._full(path))
        keys = ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_blocks")
        out: dict[str, Any] = {k: getattr(st, k) for k in keys}
        out.update(st_atime=st.st_atime_ns, st_mtime=st.st_mtime_ns, st_ctime=st.st_ctime_ns)
        return out

    def statfs(self, path: str) -> dict[str, int]:
        sv = os.statvfs(self._full(path))
        keys = ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree")
        return {k: getattr(sv, k) for k in (*keys, "f_favail", "f_flag", "f_namemax")}

    def readdir(self, path: str, fh: int) -> list[str]:
        return [".", "..", *os.listdir(self._full(path))]

    def access(self, path: str, amode: int) -> int:
        if not os.access(self._full(path), amode):
            raise OSError(errno.EACCES, "")
        return 0

    def mkdir(self, path: str, mode: int) -> int:
        os.mkdir(self._full(path), mode)
        return 0

    def rmdir(self, path: str) -> int:
        os.rmdir(self._full(path))
        return 0

    def unlink(self, path: str) -> int:
        os.unlink(self._full(path))
        return 0

    def rename(self, old: str, new: str) -> int:
        os.rename(self._full(old), self._full(new))
        return 0

    def chmod(self, path: str, mode: int) -> int:
        os.chmod(self._full(path), mode)
        return 0

    def chown(self, path: str, uid: int, gid: int) -> int:
        os.chown(self._full(path), uid, gid)
        return 0

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        os.utime(self._full(path), ns=times)
        return 0

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        os.truncate(self._full(path), length)
        return 0

    def open(self, path: str, flags: int) -> int:
        return os.open(self._full(path), flags)

    def create(self, path: str, mode: int, fi: Any = None) -> int:
        return os.open(self._full(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        return os.pread(fh, size, offset)

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        return os.pwrite(fh, data, offset)

    def flush(self, path: str, fh: int) -> int:
        return 0

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        os.fsync(fh)
        return 0

    def release(self, path: str, fh: int) -> int:
        os.close(fh)
        return 0


def serve(backing: str, mountpoint: str) -> None:
    import mfusepy

    mfusepy.FUSE(Passthrough(backing), mountpoint, foreground=True, nothreads=True)


def _is_mounted(path: Path) -> bool:
    real = os.path.realpath(path)
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        return any(line.split()[4] == real for line in f if len(line.split()) > 4)


@dataclass
class FuseDir:
    """A mounted passthrough: ``path`` is the FUSE directory, ``backing`` what it shows."""

    path: Path
    backing: Path
    process: subprocess.Popen[bytes]

    def freeze(self) -> None:
        """Every call into ``path`` now blocks until ``thaw``."""
        os.kill(self.process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)


def fuse_available() -> bool:
    try:
        import mfusepy  # noqa: F401
    except (ImportError, OSError):
        return False
    return os.path.exists("/dev/fuse") and shutil.which("fusermount3") is not None


@pytest.fixture
def fuse_dir(tmp_path: Path) -> Iterator[FuseDir]:
    if os.geteuid() != 0 or not fuse_available():
        pytest.skip(FUSE_REASON)
    backing = tmp_path / "fuse-backing"
    mountpoint = tmp_path / "fuse-mnt"
    backing.mkdir()
    mountpoint.mkdir()
    root = Path(__file__).resolve().parents[2]
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.plugins.fusedir", str(backing), str(mountpoint)],
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    fuse = FuseDir(mountpoint, backing, process)
    try:
        for _ in range(200):
            if _is_mounted(mountpoint) or process.poll() is not None:
                break
            time.sleep(0.05)
        if not _is_mounted(mountpoint):
            process.kill()
            err = process.communicate(timeout=10)[1].decode(errors="replace")
            pytest.fail(f"the FUSE directory did not mount: {err.strip()}")
        yield fuse
    finally:
        # never leave a frozen mount behind: it would hang whatever touches it next
        if process.poll() is None:
            fuse.thaw()
        subprocess.run(
            ["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True, timeout=30
        )
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2])
