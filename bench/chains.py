"""Real QCOW2 chains recorded through the engine's own stores, for the data-path benchmarks.

``make_random_chain`` writes a full of random data and incrementals of changed
ranges with qemu-img (relative backing names, like the engine writes them);
``record_chain`` puts their Repository, Chain and Backup rows (with each file's
sha256, as a backup records it) into a catalog.
"""

from __future__ import annotations

import os
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

from engine.catalog.chains import ChainStore
from engine.catalog.repositories import RepositoryStore
from engine.hashing import sha256_file
from engine.runtime import Engine

MiB = 1024 * 1024
#: bytes of the disk an incremental changes
CHANGE = 64 * MiB


def qemu_img(*args: str, cwd: Path | None = None) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True, timeout=3600, cwd=cwd)


def make_random_chain(chain_dir: Path, work: Path, size: int, incrementals: int) -> list[Path]:
    """A full of ``size`` random bytes and ``incrementals`` points of CHANGE bytes each,
    full first. The raw disk is written in ``work`` and removed."""
    chain_dir.mkdir(parents=True)
    raw = work / "disk.raw"
    block = os.urandom(16 * MiB)
    with open(raw, "wb") as f:
        for at in range(0, size, len(block)):
            f.write(block[: min(len(block), size - at)])
            block = block[1:] + block[:1]  # different content in every block
    files = [chain_dir / "0000.qcow2"]
    qemu_img("convert", "-f", "raw", "-O", "qcow2", str(raw), str(files[0]))
    for i in range(1, incrementals + 1):
        with open(raw, "r+b") as f:
            f.seek((i * 37 * MiB) % max(MiB, size - CHANGE))
            f.write(os.urandom(min(CHANGE, size)))
        name = f"{i:04d}.qcow2"
        # an overlay on the new disk, rebased onto the previous point: only what
        # differs from it lands in the incremental
        qemu_img("create", "-q", "-f", "qcow2", "-b", str(raw), "-F", "raw", name, cwd=chain_dir)
        qemu_img("rebase", "-f", "qcow2", "-b", files[-1].name, "-F", "qcow2", name, cwd=chain_dir)
        files.append(chain_dir / name)
    raw.unlink()
    return files


def record_chain(
    engine: Engine,
    repo_name: str,
    repo_dir: Path,
    files: list[Path],
    virtual_size: int,
    *,
    checksums: bool = True,
) -> list[int]:
    """Record a repository at ``repo_dir`` and the chain of ``files`` (full first,
    inside ``repo_dir/VM/DISK``) in the catalog; the points' ids, full first."""
    now = datetime.now(UTC)
    repo = RepositoryStore(engine.catalog).add(
        name=repo_name, kind="local", path=str(repo_dir), now=now
    )
    chains = ChainStore(engine.catalog)
    directory = str(files[0].parent.relative_to(repo_dir))

    def fields(i: int) -> dict[str, object]:
        return {
            "path": str(files[i].relative_to(repo_dir)),
            "state": "complete",
            "point_time": now + timedelta(hours=i),
            "virtual_size": virtual_size,
            "file_size": files[i].stat().st_size,
            "checksum": sha256_file(files[i]) if checksums else None,
        }

    vm, disk = directory.split("/")[:2]
    chain, full = chains.add_full(
        repository_id=repo.id,
        vm_name=vm,
        disk_name=disk,
        directory=directory,
        now=now,
        backup=fields(0),
    )
    ids = [full.id]
    for i in range(1, len(files)):
        ids.append(
            chains.add_incremental(
                chain_id=chain.id, parent_id=ids[-1], position=i, now=now, backup=fields(i)
            ).id
        )
    return ids
