"""A fleet-sized catalog for benchmarks: ``python -m bench.seed --state-dir DIR``.

Built through the engine's own stores (the rows the screens, the CLI and the API
read are the rows a real appliance writes), deterministic (a fixed start time and
no randomness: the same arguments give the same catalog), catalog only (no QCOW2
files: listings never read them). Defaults match the fleet of issue 16: 50
repositories, 500 VMs with 2 disks each, 100 points per disk (100,000 restore
points), 10,000 finished jobs and 50,000 audit events.

    python -m bench.seed --state-dir /tmp/fleet            # SQLite in /tmp/fleet
    python -m bench.seed --state-dir /tmp/fleet --db-url mysql+pymysql://...
    sendense --state-dir /tmp/fleet backup list --json | head

A directory that already holds a seeded catalog is left alone (delete it to
build again); ``--vms 5 --points 10`` makes a quick small one.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from engine.clock import FixedClock
from engine.config import default_settings, sqlite_url
from engine.runtime import Engine

#: every seeded catalog starts here, so two runs give the same rows
START = datetime(2026, 1, 1, 1, 0, tzinfo=UTC)
MARKER = "seeded-by-bench"


@dataclass(frozen=True)
class Fleet:
    repositories: int = 50
    vms: int = 500
    disks: int = 2
    points: int = 100
    jobs: int = 10_000
    events: int = 50_000

    @property
    def restore_points(self) -> int:
        return self.vms * self.disks * self.points


def open_engine(state_dir: Path, db_url: str | None = None) -> Engine:
    settings = default_settings(state_dir)
    if db_url:
        settings = replace(settings, db_url=db_url)
    return Engine(settings, clock=FixedClock(START + timedelta(days=100))).open()


def seed(engine: Engine, fleet: Fleet, *, say: bool = True) -> None:
    state_dir = engine.settings.state_dir
    repos = []
    for index in range(fleet.repositories):
        path = state_dir / "repositories" / f"repo{index:02d}"
        path.mkdir(parents=True, exist_ok=True)
        repos.append(
            engine.repository_store.add(
                name=f"repo{index:02d}",
                kind="local",
                path=str(path),
                now=START,
                state_detail=MARKER if index == 0 else None,
            )
        )
    began = time.monotonic()
    for vm in range(fleet.vms):
        repo = repos[vm % len(repos)]
        for disk in range(fleet.disks):
            disk_name = f"sd{chr(ord('a') + disk)}"
            directory = f"chains/vm{vm:04d}/{disk_name}/c1"
            points = []
            for position in range(fleet.points):
                at = START + timedelta(days=position, minutes=vm % 60)
                points.append(
                    {
                        "kind": "full" if position == 0 else "incremental",
                        "position": position,
                        "path": f"{directory}/{position:04d}.qcow2",
                        "state": "complete",
                        "point_time": at,
                        "created_at": at,
                        "source": f"/dev/vg0/vm{vm:04d}-{disk_name}",
                        "virtual_size": 64 * 1024**3,
                        "file_size": (8 if position == 0 else 1) * 1024**3,
                        "allocated_bytes": (8 if position == 0 else 1) * 1024**3,
                        "checksum": f"{vm:04d}{disk:02d}{position:04d}".ljust(64, "0"),
                        "verify_state": "ok" if position % 3 == 0 else None,
                        "verified_at": at + timedelta(hours=2) if position % 3 == 0 else None,
                    }
                )
            engine.chain_store.import_chain(
                repository_id=repo.id,
                vm_name=f"vm{vm:04d}",
                disk_name=disk_name,
                directory=directory,
                created_at=START,
                points=points,
            )
        if say and vm % 50 == 49:
            done = (vm + 1) * fleet.disks * fleet.points
            print(f"  {done:,} points ({time.monotonic() - began:.0f} s)", file=sys.stderr)
    owner = "bench-seed"
    for index in range(fleet.jobs):
        at = START + timedelta(minutes=index * 10)
        job = engine.job_store.create(
            "backup",
            f"backup vm{index % fleet.vms:04d}",
            now=at,
            repository_id=repos[index % len(repos)].id,
            bytes_total=1024**3,
        )
        engine.job_store.claim_queued(job.id, owner, at, timedelta(seconds=30))
        failed = index % 20 == 0
        engine.job_store.finish(
            job.id,
            owner,
            "failed" if failed else "succeeded",
            at + timedelta(minutes=3),
            error="the source did not answer" if failed else None,
        )
    for index in range(fleet.events):
        engine.audit.append(
            at=START + timedelta(minutes=index),
            level="warning" if index % 10 == 0 else "info",
            source="backup",
            kind="backup.finished",
            message=f"vm{index % fleet.vms:04d}/sda: point {index % fleet.points} written",
            repository_id=repos[index % len(repos)].id,
        )


def copy_catalog(source_url: str, target_url: str, *, batch: int = 5000) -> int:
    """Copy every row of one catalog into another, empty one of the same schema (the
    target is migrated first): a MariaDB twin of a seeded SQLite fleet in a minute,
    where seeding it again through the stores takes many. Returns the rows copied.
    Bench-only: the product moves no catalog this way."""
    from engine.catalog import Base, Catalog

    source = Catalog(source_url).open(migrate=False)
    target = Catalog(target_url).open()
    copied = 0
    try:
        with source.engine.connect() as read, target.engine.begin() as write:
            if target.dialect in ("mysql", "mariadb"):
                # rows arrive table by table; a row naming a later one is checked once
                # both are in (every key was valid in the source)
                write.exec_driver_sql("SET FOREIGN_KEY_CHECKS=0")
            for table in Base.metadata.sorted_tables:
                if write.execute(table.select().limit(1)).first() is not None:
                    raise ValueError(f"{target.shown_url}: table {table.name} is not empty")
                result = read.execution_options(yield_per=batch).execute(table.select())
                for rows in result.mappings().partitions(batch):
                    write.execute(table.insert(), [dict(row) for row in rows])
                    copied += len(rows)
            if target.dialect in ("mysql", "mariadb"):
                write.exec_driver_sql("SET FOREIGN_KEY_CHECKS=1")
    finally:
        source.dispose()
        target.dispose()
    return copied


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.seed", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--db-url", help="catalog URL (default: SQLite in the state directory)")
    defaults = Fleet()
    for name in ("repositories", "vms", "disks", "points", "jobs", "events"):
        parser.add_argument(f"--{name}", type=int, default=getattr(defaults, name))
    args = parser.parse_args(argv)
    fleet = Fleet(args.repositories, args.vms, args.disks, args.points, args.jobs, args.events)
    state_dir = args.state_dir.absolute()
    engine = open_engine(state_dir, args.db_url)
    try:
        if engine.repository_store.list():
            print(f"{state_dir} already holds a catalog; left alone", file=sys.stderr)
            return 0
        began = time.monotonic()
        seed(engine, fleet)
        print(
            f"seeded {fleet.restore_points:,} restore points, {fleet.jobs:,} jobs, "
            f"{fleet.events:,} events in {time.monotonic() - began:.0f} s: "
            f"{args.db_url or sqlite_url(state_dir / 'catalog.db')}"
        )
    finally:
        engine.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
