"""Fixtures for real filesystems: loop-mounted ext4/xfs, tmpfs, ramfs; random images.

- ``loop_fs``: factory ``loop_fs(fstype="ext4", size_mb=64, label=None, read_only=False)``
  returning ``LoopFs(image, device, mountpoint)``: a sparse image in tmp_path, mkfs,
  a loop device, mounted. Teardown (even after a failure): clear ``i``/``a`` flags
  recursively, umount (lazily if busy), detach the loop device.
- ``tmpfs``: a 16 MiB tmpfs mounted on a tmp dir (note: since Linux 6.0 tmpfs DOES
  support chattr +i, so it is not the "unsupported" case).
- ``ramfs``: a ramfs mounted on a tmp dir: chattr/lsattr fail with "Operation not
  supported" there, the stand-in for NFS/CIFS in immutability-unsupported tests.
- ``make_random_image(path, size, seed)``: deterministic random content (raw, or
  qcow2 through qemu-img), optionally with zero holes.
- Tests marked ``@pytest.mark.root`` are skipped with a reason when not run as root.

Setup here calls mkfs/mount/losetup directly (tests may; the engine may not).
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

IS_ROOT = os.geteuid() == 0
ROOT_REASON = "needs root (mounts, loop devices, chattr); run the suite as root"
MiB = 1024 * 1024


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("root") is not None and not IS_ROOT:
        pytest.skip(ROOT_REASON)


def require_root() -> None:
    if not IS_ROOT:
        pytest.skip(ROOT_REASON)


def _sh(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> None:
    full_env = {**os.environ, "LC_ALL": "C", **(env or {})}
    proc = subprocess.run(
        list(args), capture_output=True, text=True, env=full_env, timeout=timeout, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")


def _quiet(*args: str, timeout: float = 30) -> int:
    return subprocess.run(list(args), capture_output=True, timeout=timeout, check=False).returncode


def _is_mounted(path: Path) -> bool:
    real = os.path.realpath(path)
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        return any(
            line.split()[4].replace("\\040", " ") == real for line in f if len(line.split()) > 4
        )


def _umount(path: Path) -> None:
    for _ in range(5):  # stacked mounts
        if not _is_mounted(path):
            return
        if _quiet("umount", str(path)) != 0:
            _quiet("umount", "--lazy", str(path))


@dataclass(frozen=True)
class LoopFs:
    image: Path
    device: str
    mountpoint: Path
    fstype: str

    def fill(self, name: str, size: int) -> Path:
        """Write ``size`` bytes of random data into a file on the filesystem."""
        path = self.mountpoint / name
        with open(path, "wb") as f:
            left = size
            while left > 0:
                n = min(left, 4 * MiB)
                f.write(os.urandom(n))
                left -= n
            f.flush()
            os.fsync(f.fileno())
        return path


LoopFsFactory = Callable[..., LoopFs]


@pytest.fixture
def loop_fs(tmp_path: Path) -> Iterator[LoopFsFactory]:
    """Factory for loop-mounted ext4/xfs filesystems, torn down after the test."""
    require_root()
    made: list[LoopFs] = []
    counter = iter(range(1000))

    def make(
        fstype: str = "ext4",
        size_mb: int = 64,
        label: str | None = None,
        read_only: bool = False,
    ) -> LoopFs:
        n = next(counter)
        image = tmp_path / f"loopfs-{n}.img"
        mountpoint = tmp_path / f"loopfs-{n}.mnt"
        mountpoint.mkdir()
        with open(image, "wb") as f:
            f.truncate(size_mb * MiB)
        if fstype == "ext4":
            cmd = ["mkfs.ext4", "-q", "-F"] + (["-L", label] if label else [])
            _sh(*cmd, str(image))
        elif fstype == "xfs":
            cmd = ["mkfs.xfs", "-q", "-f"] + (["-L", label] if label else [])
            # mkfs.xfs refuses filesystems under 300 MB unless told this is a test
            _sh(*cmd, str(image), env={"TEST_DEV": "1", "TEST_DIR": "1", "QA_CHECK_FS": "1"})
        else:
            raise ValueError(f"loop_fs supports ext4 and xfs, not {fstype}")
        losetup = ["losetup", "--find", "--show"] + (["--read-only"] if read_only else [])
        device = subprocess.run(
            [*losetup, str(image)], capture_output=True, text=True, timeout=30, check=True
        ).stdout.strip()
        fs = LoopFs(image=image, device=device, mountpoint=mountpoint, fstype=fstype)
        made.append(fs)
        _sh("mount", "-o", "ro" if read_only else "rw", device, str(mountpoint))
        return fs

    yield make

    for fs in reversed(made):
        if _is_mounted(fs.mountpoint):
            _quiet("chattr", "-R", "-i", "-a", str(fs.mountpoint))
        _umount(fs.mountpoint)
        _quiet("losetup", "--detach", fs.device)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs (supports chattr +i on Linux >= 6.0)."""
    require_root()
    target = tmp_path / "tmpfs"
    target.mkdir()
    _sh("mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(target))
    try:
        yield target
    finally:
        _quiet("chattr", "-R", "-i", "-a", str(target))
        _umount(target)


@pytest.fixture
def ramfs(tmp_path: Path) -> Iterator[Path]:
    """A ramfs: no file attributes at all (chattr says "Operation not supported")."""
    require_root()
    target = tmp_path / "ramfs"
    target.mkdir()
    _sh("mount", "-t", "ramfs", "ramfs", str(target))
    try:
        yield target
    finally:
        _umount(target)


def make_random_image(
    path: str | os.PathLike[str],
    size: int,
    seed: int = 0,
    *,
    fmt: str = "raw",
    hole_every: int | None = None,
    chunk: int = MiB,
) -> Path:
    """Write an image of ``size`` bytes whose content depends only on ``seed``.

    ``hole_every=k`` leaves every k-th ``chunk`` as zeros (sparse in the raw file), so
    map/convert have zero extents to find. ``fmt="qcow2"`` converts the raw data
    into a qcow2 at ``path``.
    """
    path = Path(path)
    rng = random.Random(seed)
    raw = path if fmt == "raw" else path.with_name(path.name + ".raw-tmp")
    with open(raw, "wb") as f:
        f.truncate(size)
        for i, offset in enumerate(range(0, size, chunk)):
            n = min(chunk, size - offset)
            block = rng.randbytes(n)
            if hole_every and i % hole_every == hole_every - 1:
                continue
            f.seek(offset)
            f.write(block)
    if fmt != "raw":
        qemu_img = shutil.which("qemu-img") or "qemu-img"
        _sh(qemu_img, "convert", "-f", "raw", "-O", fmt, str(raw), str(path))
        raw.unlink()
    return path
