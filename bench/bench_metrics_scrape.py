"""A ``/metrics`` scrape on 50 repositories and 1,000 disks, beside the CLI's ``--json``.

The catalog (SQLite) is built through the engine's own stores: 50 local
repositories (each read once by the capacity monitor), 1,000 VM disks spread over
them, each a chain of a full and ``POINTS - 1`` incrementals (some verified, one in
fifty damaged), 20 copy rules with copies, 200 finished jobs and a lock on every
tenth point. Then, in the same run and on the same data:

- ``engine.metrics.exposition()``: what the daemon does per scrape of ``/metrics``;
- ``sendense backup list --json`` in-process: the CLI's listing of the same points;
- ``sendense metrics`` in-process: the scrape as a one-shot command (opens an engine).

Prints the median of each and the ratios. Run: ``.venv/bin/python -m bench metrics``
(``SENDENSE_BENCH_DISKS`` changes the number of disks).
"""

from __future__ import annotations

import contextlib
import io
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

from engine.clock import SYSTEM_CLOCK
from engine.config import CapacitySettings, default_settings
from engine.runtime import Engine
from sendense_tui.cli import main as cli_main

REPOSITORIES = 50
DISKS = int(os.environ.get("SENDENSE_BENCH_DISKS", "1000"))
POINTS = 3
RULES = 20
JOBS = 200
ROUNDS = 7


def build(engine: Engine, base: Path) -> int:
    """The catalog; returns the number of points."""
    now = SYSTEM_CLOCK.now() - timedelta(days=2)
    repos = []
    for i in range(REPOSITORIES):
        path = base / f"repo{i:02d}"
        path.mkdir()
        repos.append(
            engine.repository_store.add(name=f"r{i:02d}", kind="local", path=str(path), now=now)
        )
    chains = engine.chain_store
    points = 0
    first_points: list[tuple[int, int]] = []
    for d in range(DISKS):
        repo = repos[d % REPOSITORIES]
        vm, disk = f"vm{d // 2:04d}", f"sd{'ab'[d % 2]}"
        fields = {
            "path": f"{vm}/{disk}/c/0000.qcow2",
            "state": "complete",
            "point_time": now,
            "virtual_size": 1 << 30,
            "file_size": 200 << 20,
            "allocated_bytes": 200 << 20,
            "checksum": "0" * 64,
            "tracking": {"rung": "full", "bytes_written": 200 << 20, "source_held_seconds": 9.5},
            "verify_state": "ok" if d % 3 else None,
            "verified_at": now if d % 3 else None,
        }
        chain, full = chains.add_full(
            repository_id=repo.id,
            vm_name=vm,
            disk_name=disk,
            directory=f"{vm}/{disk}/c",
            now=now,
            backup=fields,
        )
        first_points.append((full.id, repo.id))
        parent = full.id
        for position in range(1, POINTS):
            row = chains.add_incremental(
                chain_id=chain.id,
                parent_id=parent,
                position=position,
                now=now,
                backup={
                    **fields,
                    "path": f"{vm}/{disk}/c/{position:04d}.qcow2",
                    "point_time": now + timedelta(hours=position),
                    "file_size": 8 << 20,
                    "verify_state": "mismatch" if d % 50 == 0 else fields["verify_state"],
                },
            )
            parent = row.id
            if row.id % 10 == 0:
                engine.lock_store.add(
                    repository_id=repo.id,
                    path=row.path,
                    expires_at=now + timedelta(days=30),
                    now=now,
                    backup_id=row.id,
                )
        points += POINTS
    copies = engine.copy_store
    for r in range(RULES):
        source, destination = repos[r], repos[(r + 1) % REPOSITORIES]
        rule = copies.add_rule(
            name=f"rule{r:02d}",
            now=now,
            source_repository_id=source.id,
            destination_repository_id=destination.id,
            max_age_hours=26,
        )
        for backup_id, repo_id in first_points:
            if repo_id == source.id:
                copy = copies.create_copy(
                    backup_id=backup_id,
                    destination_repository_id=destination.id,
                    path=f"copies/{backup_id}.qcow2",
                    size=200 << 20,
                    now=now,
                    rule_id=rule.id,
                )
                copies.update_copy(copy.id, state="completed", completed_at=now)
    jobs = engine.job_store
    for j in range(JOBS):
        start = now + timedelta(minutes=j)
        job = jobs.create(("backup", "copy", "verify")[j % 3], f"job {j}", now=start)
        jobs.claim(job.id, "bench", start, timedelta(minutes=5))
        jobs.finish(job.id, "bench", "failed" if j % 17 == 0 else "succeeded", start)
    engine.capacity.sample_all()
    return points


def median_seconds(work: Callable[[], object]) -> float:
    times = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cli(*args: str) -> Callable[[], int]:
    def run() -> int:
        with contextlib.redirect_stdout(io.TextIOWrapper(io.BytesIO())) as out:
            code = cli_main(list(args))
            out.flush()
        assert code == 0, f"sendense {' '.join(args)} exited {code}"
        return code

    return run


def main() -> None:
    with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="sendense-bench-metrics-") as tmp:
        base = Path(tmp)
        settings = replace(
            default_settings(base / "state"),
            capacity=CapacitySettings(min_free_bytes=0, poll_seconds=3600),
        )
        engine = Engine(settings).open()
        try:
            started = time.perf_counter()
            points = build(engine, base)
            print(
                f"catalog: {REPOSITORIES} repositories, {DISKS} disks, {points} points, "
                f"{RULES} copy rules, {JOBS} jobs (built in {time.perf_counter() - started:.1f} s)"
            )
            text = engine.metrics.exposition()
            series = sum(1 for line in text.splitlines() if line and not line.startswith(b"#"))
            print(f"exposition: {len(text) / 1024:.0f} KiB, {series} series")
            scrape = median_seconds(engine.metrics.exposition)
            state = ["--state-dir", str(base / "state")]
            listing = median_seconds(cli("backup", "list", "--json", *state))
            one_shot = median_seconds(cli("metrics", *state))
        finally:
            engine.close()
    print(
        f"/metrics scrape (engine.metrics.exposition): {scrape * 1000:.1f} ms (median of {ROUNDS})"
    )
    print(f"sendense backup list --json (in-process): {listing * 1000:.1f} ms")
    print(f"sendense metrics (in-process, opens an engine): {one_shot * 1000:.1f} ms")
    print(f"ratio scrape / backup list --json: {scrape / listing:.2f}x")
    print(f"ratio sendense metrics / backup list --json: {one_shot / listing:.2f}x")


if __name__ == "__main__":
    main()
    sys.exit(0)
