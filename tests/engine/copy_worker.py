"""Helpers for the copy and verify tests, and a worker process for the SIGKILL test.

- ``add_repo`` / ``make_chain``: real QCOW2 chains made with qemu-img (a full and
  incrementals whose backing references are relative), with their Repository,
  Chain and Backup rows (sha256 of every file) in the catalog.
- ``python -m tests.engine.copy_worker DB_URL STATE_DIR JOB_ID``: runs an Engine
  with a short lease that works on the queued copy jobs until killed. The test
  kills it with SIGKILL mid-file and lets another engine finish the job.

Test code may start processes directly (the engine may not).
"""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

from engine.catalog.models import Backup, Chain, Repository
from engine.config import JobSettings, default_settings
from engine.runtime import Engine

MiB = 1024 * 1024


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * MiB):
            digest.update(chunk)
    return digest.hexdigest()


def add_repo(engine: Engine, name: str, path: Path, **fields: object) -> Repository:
    path.mkdir(parents=True, exist_ok=True)
    return engine.repository_store.add(
        name=name, kind="local", path=str(path), now=engine.clock.now(), **fields
    )


def _qemu(*args: str, cwd: Path | None = None) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True, cwd=cwd, timeout=120)


@dataclass
class MadeChain:
    chain_id: int
    backup_ids: list[int]
    paths: list[str]  # relative to the repository root


def make_chain(
    engine: Engine,
    repo: Repository,
    *,
    vm: str = "web01",
    disk: str = "sda",
    size_mb: int = 16,
    incrementals: int = 2,
    seed: int = 1,
    work: Path | None = None,
) -> MadeChain:
    """A full plus ``incrementals`` incrementals of random data, in the catalog."""
    root = Path(repo.path)
    rel_dir = f"{vm}/{disk}/chain-{seed}"
    chain_dir = root / rel_dir
    chain_dir.mkdir(parents=True, exist_ok=True)
    work = work or root.parent / f".work-{repo.name}-{vm}-{disk}-{seed}"
    work.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    src = work / "disk.raw"
    src.write_bytes(rng.randbytes(size_mb * MiB))
    names = ["0000-full.qcow2"] + [f"{i:04d}-inc.qcow2" for i in range(1, incrementals + 1)]
    _qemu("convert", "-O", "qcow2", str(src), str(chain_dir / names[0]))
    for i in range(1, incrementals + 1):
        with open(src, "r+b") as f:  # change a few MiB of the disk
            for _ in range(2):
                f.seek(rng.randrange(0, size_mb) * MiB)
                f.write(rng.randbytes(MiB))
        _qemu("create", "-q", "-f", "qcow2", "-b", str(src), "-F", "raw", names[i], cwd=chain_dir)
        _qemu("rebase", "-b", names[i - 1], "-F", "qcow2", names[i], cwd=chain_dir)
    now = engine.clock.now()
    with engine.catalog.session() as session:
        chain = Chain(
            repository_id=repo.id, vm_name=vm, disk_name=disk, directory=rel_dir, created_at=now
        )
        session.add(chain)
        session.flush()
        ids: list[int] = []
        parent: int | None = None
        for pos, name in enumerate(names):
            path = chain_dir / name
            backup = Backup(
                chain_id=chain.id,
                parent_id=parent,
                kind="full" if pos == 0 else "incremental",
                position=pos,
                path=f"{rel_dir}/{name}",
                state="complete",
                point_time=now - timedelta(hours=len(names) - pos),
                created_at=now,
                virtual_size=size_mb * MiB,
                file_size=path.stat().st_size,
                checksum=sha256(path),
            )
            session.add(backup)
            session.flush()
            ids.append(backup.id)
            parent = backup.id
        chain_id = chain.id
    return MadeChain(chain_id, ids, [f"{rel_dir}/{n}" for n in names])


def main(argv: list[str]) -> int:
    db_url, state_dir, job_id = argv[0], Path(argv[1]), int(argv[2])
    settings = replace(
        default_settings(state_dir),
        db_url=db_url,
        jobs=JobSettings(max_concurrent=1, lease_seconds=1.0, heartbeat_seconds=0.2),
    )
    engine = Engine(settings, owner="worker-to-be-killed")
    engine.open()
    engine.jobs.poll_interval = 0.1
    engine.start()
    print(f"worker running job {job_id}", flush=True)
    while True:  # until SIGKILL
        time.sleep(1)
    return 0  # pragma: no cover


if __name__ == "__main__":
    os.environ.setdefault("LC_ALL", "C")
    sys.exit(main(sys.argv[1:]))
