"""A qemu-storage-daemon that lets the engine read a source and write a new point
block by block: the data path of changed-block incrementals.

One daemon per disk per run, started with every layer spelled out
(engine.tools.blockspec), dying with the engine (PDEATHSIG, engine.tools.base):

- ``target``: the new incremental, a qcow2 file whose backing is the previous
  point's chain (opened read-only, as the catalog says it is), exposed as a
  writable FUSE file. A write lands in the new file only; ``fallocate
  ZERO_RANGE`` records a zero cluster (the block became zeros) without
  uncovering the parent, which a hole punch would.
- ``source`` (optional): a source the engine cannot read as raw bytes itself (a
  qcow2 image, an NBD export), exposed as a read-only FUSE file.
- ``bitmap`` (optional): the source again as an NBD export on a unix socket with
  one dirty bitmap, for ``nbdinfo --map`` (engine.tools.nbdmap).

``close()`` ends the daemon with SIGTERM, which flushes the target; it raises
if the daemon does not exit cleanly, so a point is never sealed half-flushed.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from engine.private import make_private_dirs, open_private
from engine.tools.base import ToolError, first_error_line, kill_group, start
from engine.tools.blockspec import ImageSpec, NbdAddress
from engine.tools.exporters import fuse_mounted, fuse_unmount
from engine.tools.qemu_img import check

log = logging.getLogger(__name__)

START_TIMEOUT = 30.0
#: a session that wrote was fsynced through its view before close; the daemon's own
#: shutdown only closes the files, so a daemon that takes longer than this is stuck
STOP_TIMEOUT = 20.0
#: fallocate(2) mode: write zeros over a range (qemu: write_zeroes)
FALLOC_FL_ZERO_RANGE = 0x10

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]


class BlockIOError(ToolError):
    """The daemon that carries a changed-block backup could not start or stop cleanly."""


def zero_range(fd: int, offset: int, length: int) -> None:
    """Make ``[offset, offset+length)`` of an open target read as zeros."""
    if _libc.fallocate(fd, FALLOC_FL_ZERO_RANGE, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class BlockSession:
    """The daemon and its views. Use as a context manager; read ``target_path``,
    ``source_path`` and ``bitmap_address`` while it is open."""

    def __init__(
        self,
        target: ImageSpec | None,
        *,
        source: ImageSpec | None = None,
        bitmap: tuple[ImageSpec, str] | None = None,
        workdir: Path | None = None,
    ) -> None:
        self._own_dir = workdir is None
        self.target = target
        #: set by the caller once it fsynced the target through its view
        self.synced = False
        base = workdir or Path(tempfile.mkdtemp(prefix="sendense-blockio-"))
        make_private_dirs(base)
        self.dir = base
        self.target_path: Path | None = base / "target" if target is not None else None
        self.source_path: Path | None = base / "source" if source is not None else None
        self.bitmap_address: NbdAddress | None = None
        self._log = base / "qsd.log"
        args: list[str] = ["qemu-storage-daemon"]
        if target is not None and self.target_path is not None:
            target_node = target.options(locking=True)
            target_node["node-name"] = "target"
            args += ["--blockdev", json.dumps(target_node)]
            args += ["--export", json.dumps(self._fuse("t", "target", self.target_path, True))]
        if source is not None and self.source_path is not None:
            node = source.options(read_only=True, locking=False)
            node["node-name"] = "source"
            args += ["--blockdev", json.dumps(node)]
            args += ["--export", json.dumps(self._fuse("s", "source", self.source_path, False))]
        if bitmap is not None:
            image, name = bitmap
            node = image.options(read_only=True, locking=False)
            node["node-name"] = "tracked"
            sock = base / "bitmap.sock"
            self.bitmap_address = NbdAddress(export="tracked", socket=str(sock))
            args += ["--blockdev", json.dumps(node)]
            args += ["--nbd-server", json.dumps({"addr": {"type": "unix", "path": str(sock)}})]
            args += [
                "--export",
                json.dumps(
                    {
                        "type": "nbd",
                        "id": "b",
                        "node-name": "tracked",
                        "name": "tracked",
                        "bitmaps": [name],
                    }
                ),
            ]
        for view in (self.target_path, self.source_path):
            if view is not None and not view.exists():
                os.close(open_private(view, os.O_WRONLY | os.O_CREAT))
        with os.fdopen(open_private(self._log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "wb") as e:
            self.proc: subprocess.Popen[bytes] = start(args, stdout=subprocess.DEVNULL, stderr=e)
        try:
            self._wait_ready()
        except BaseException:
            self._kill()
            raise

    @staticmethod
    def _fuse(export_id: str, node: str, path: Path, writable: bool) -> dict[str, object]:
        return {
            "type": "fuse",
            "id": export_id,
            "node-name": node,
            "mountpoint": str(path),
            "writable": writable,
            "allow-other": "off",
        }

    def _ready(self) -> bool:
        views = [v for v in (self.target_path, self.source_path) if v is not None]
        if not all(fuse_mounted(v) for v in views):
            return False
        if self.bitmap_address is not None:
            return os.path.exists(self.bitmap_address.socket or "")
        return True

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BlockIOError(
                    f"qemu-storage-daemon could not open the images: {self._reason()}",
                    program="qemu-storage-daemon",
                    stderr=self._stderr(),
                )
            if self._ready():
                return
            time.sleep(0.02)
        raise BlockIOError(
            f"qemu-storage-daemon did not become ready within {START_TIMEOUT:g} s",
            program="qemu-storage-daemon",
            hint="the repository or source storage may be hung",
        )

    def _stderr(self) -> str:
        try:
            return self._log.read_text(errors="replace")
        except OSError:
            return ""

    def _reason(self) -> str:
        reason = first_error_line(self._stderr()) or f"exit code {self.proc.returncode}"
        return reason.rsplit("}: ", 1)[1] if "}: " in reason else reason

    def close(self) -> None:
        """Stop the daemon; raise if the new point may not be whole.

        The views are unmounted first and the daemon then ends with SIGTERM, which
        closes its images. A daemon that does not end in time is killed: that loses
        nothing once ``synced`` is set (the caller fsynced the target through its
        view, so qemu flushed the image's data and metadata), which ``qemu-img
        check`` then confirms; otherwise the point is refused.
        """
        if self.proc.poll() is None:
            for view in (self.target_path, self.source_path):
                if view is not None:
                    with contextlib.suppress(ToolError):
                        fuse_unmount(view)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                log.warning("qemu-storage-daemon did not end within %g s: killed", STOP_TIMEOUT)
                self._kill()
                if self.target is None:
                    return  # it only read: nothing was left unwritten
                if self.synced and self._target_checks_clean():
                    return
                raise BlockIOError(
                    "qemu-storage-daemon did not stop within "
                    f"{STOP_TIMEOUT:g} s; the new point was not flushed",
                    program="qemu-storage-daemon",
                ) from None
        code = self.proc.returncode
        self._cleanup()
        if code not in (0, -signal.SIGTERM):
            raise BlockIOError(
                f"qemu-storage-daemon ended with an error: {self._reason()}",
                program="qemu-storage-daemon",
                stderr=self._stderr(),
            )

    def _target_checks_clean(self) -> bool:
        assert self.target is not None
        try:
            result = check(self.target.alone())
        except ToolError:
            return False
        # leaked clusters only waste room; anything else refuses the point
        return result.corruptions == 0 and result.check_errors == 0

    def _kill(self) -> None:
        kill_group(self.proc)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=STOP_TIMEOUT)
        self._cleanup()

    def _cleanup(self) -> None:
        for view in (self.target_path, self.source_path):
            if view is not None:
                with contextlib.suppress(ToolError):
                    fuse_unmount(view)
        if self._own_dir:
            for leftover in self.dir.iterdir():
                with contextlib.suppress(OSError):
                    leftover.unlink()
            with contextlib.suppress(OSError):
                self.dir.rmdir()

    def __enter__(self) -> BlockSession:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self._kill()
