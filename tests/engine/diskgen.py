"""Real source disks for backup tests: random data, then known regions changed.

``SourceDisk.create(path, size, seed)`` writes a raw disk of random bytes;
``change([(offset, length), ...])`` overwrites those regions with new random
bytes and returns how many bytes changed; ``sha256()`` is the disk's content
hash at this moment (compare it with a restored point).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path

MiB = 1024 * 1024
CLUSTER = 64 * 1024


def sha256_of(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 * MiB):
            digest.update(chunk)
    return digest.hexdigest()


def cluster_span(regions: list[tuple[int, int]], cluster: int = CLUSTER) -> int:
    """Bytes of whole clusters the regions touch (what an incremental must hold)."""
    touched: set[int] = set()
    for offset, length in regions:
        touched.update(range(offset // cluster, (offset + length - 1) // cluster + 1))
    return len(touched) * cluster


@dataclass
class SourceDisk:
    path: Path
    size: int
    rng: random.Random = field(repr=False)

    @classmethod
    def create(cls, path: Path, size: int = 64 * MiB, seed: int = 1) -> SourceDisk:
        rng = random.Random(seed)
        with open(path, "wb") as f:
            left = size
            while left:
                n = min(left, 4 * MiB)
                f.write(rng.randbytes(n))
                left -= n
        return cls(Path(path), size, rng)

    def change(self, regions: list[tuple[int, int]]) -> int:
        """Overwrite each (offset, length) with fresh random bytes; returns bytes changed."""
        with open(self.path, "r+b") as f:
            for offset, length in regions:
                assert offset + length <= self.size
                f.seek(offset)
                f.write(self.rng.randbytes(length))
        return sum(length for _, length in regions)

    def sha256(self) -> str:
        return sha256_of(self.path)


# -- fixtures (import them into a test module to use them) -------------------------

import dataclasses  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402

from engine.clock import FixedClock  # noqa: E402
from engine.config import CapacitySettings, default_settings  # noqa: E402
from engine.runtime import Engine  # noqa: E402


@pytest.fixture
def bk_engine(tmp_path: Path, clock: FixedClock) -> Iterator[Engine]:
    """An opened Engine on SQLite (image-heavy tests run on one backend) with no
    capacity reserve, so small test repositories are not refused."""
    base = default_settings(tmp_path / "state")
    settings = dataclasses.replace(
        base, capacity=dataclasses.replace(CapacitySettings(), min_free_bytes=0)
    )
    engine = Engine(settings, clock=clock, owner="backup-test")
    engine.open()
    try:
        yield engine
    finally:
        engine.close()


@pytest.fixture
def repo(bk_engine: Engine, tmp_path: Path, clock: FixedClock) -> Any:
    root = tmp_path / "repo"
    root.mkdir()
    return bk_engine.repository_store.add(
        name="local", kind="local", path=str(root), now=clock.now()
    )


@pytest.fixture
def disk(tmp_path: Path) -> SourceDisk:
    return SourceDisk.create(tmp_path / "source.raw", 16 * MiB, seed=7)
