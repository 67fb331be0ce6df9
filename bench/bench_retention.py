"""Fleet bookkeeping at 100,000 points: retention, verify report, compliance, scheduler
tick and capacity accounting (issue 16 item 3: each "in seconds").

Works on copies (``cp -a``) of two seeded catalogs (``python -m bench.seed``): the fleet
(500 VMs x 2 disks x 100 points) and a small one (5 VMs x 2 disks x 100 points, 1,000
points). On each copy it adds one retention policy per repository over that
repository's VMs (keep last 7, daily 14, weekly 6, monthly 3: the fleet's 1,000 disks
in 50 policies) and, per disk, an older chain of 10 points no rule keeps (10,000 more
points on the fleet), which the real pass deletes. The seeded catalogs hold no QCOW2
files: the plan merges each current chain's head into its first kept point, which needs
the files, so the real pass runs with the policies' merges off (a lock period on the
policy, as on an immutable target) and deletes the old chains only.

Each operation is timed ROUNDS times, fleet and small taking turns, beside a reference
in the same run; prints medians, the ratio and the goal:

- retention plan of every policy, against ``sqlite3`` reading the same points (the
  rows any planner has to read);
- retention apply (real: 10,000 points deleted) of every policy, against ``sqlite3``
  marking the same points deleted; once (it deletes);
- verify report, compliance report (3-2-1 of every VM), capacity accounting (the
  Capacity screen's overview, no filesystem reading) and one scheduler tick plus an
  alert pass: the fleet against the small catalog (goal: at most 2x).

Run: ``.venv/bin/python -m bench retention``. ``SENDENSE_BENCH_FLEET100K`` and
``SENDENSE_BENCH_FLEET1K`` name the seeded catalogs (default /var/tmp/sendense-fleet/
100k and 1k; built with ``python -m bench.seed`` when missing), ``SENDENSE_BENCH_WORK``
where the copies go, ``SENDENSE_BENCH_ROUNDS`` the rounds (default 3).
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from bench.seed import START, Fleet, open_engine, seed
from engine.clock import FixedClock
from engine.config import default_settings
from engine.runtime import Engine

FLEET = Path(os.environ.get("SENDENSE_BENCH_FLEET100K", "/var/tmp/sendense-fleet/100k"))
SMALL = Path(os.environ.get("SENDENSE_BENCH_FLEET1K", "/var/tmp/sendense-fleet/1k"))
WORK = Path(os.environ.get("SENDENSE_BENCH_WORK", "/var/tmp/sendense-bench-retention"))
ROUNDS = int(os.environ.get("SENDENSE_BENCH_ROUNDS", "3"))
#: the seeded catalog's clock (bench.seed): its newest points are a day old
NOW = START + timedelta(days=100)
RULES = {"keep_last": 7, "daily": 14, "weekly": 6, "monthly": 3}
OLD_POINTS = 10

#: the points a plan reads, as sqlite3 alone reads them
PLAN_SQL = (
    "SELECT b.id, b.chain_id, b.position, b.kind, b.point_time, b.path, c.vm_name, "
    "c.disk_name FROM backups b JOIN chains c ON c.id = b.chain_id "
    "WHERE b.state = 'complete' ORDER BY b.chain_id, b.position, b.id;"
)
#: the points the real pass deletes, as sqlite3 alone marks them
APPLY_SQL = (
    "UPDATE backups SET state = 'deleted', state_detail = 'deleted by retention' "
    "WHERE chain_id IN (SELECT id FROM chains WHERE directory LIKE '%/c0');"
)


def ensure_seeded(state_dir: Path, fleet: Fleet) -> None:
    if (state_dir / "catalog.db").exists():
        return
    print(f"seeding {state_dir} (once)…")
    engine = open_engine(state_dir)
    try:
        seed(engine, fleet, say=True)
    finally:
        engine.close()


def open_copy(source: Path, name: str) -> Engine:
    """A fresh ``cp -a`` of a seeded catalog, opened on the seed's clock."""
    target = WORK / name
    if target.exists():
        shutil.rmtree(target)
    WORK.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-a", str(source), str(target)], check=True)
    settings = default_settings(target)
    settings = replace(settings, capacity=replace(settings.capacity, min_free_bytes=0))
    return Engine(settings, clock=FixedClock(NOW)).open()


def add_policies(engine: Engine) -> int:
    """One policy per repository over its VMs, and an old chain per disk no rule keeps.
    Returns the number of disks the policies cover."""
    by_repo: dict[int, dict[str, set[str]]] = {}
    for chain in engine.chain_store.list_chains():
        by_repo.setdefault(chain.repository_id, {}).setdefault(chain.vm_name, set()).add(
            chain.disk_name
        )
    disks = 0
    for repo_id, vms in sorted(by_repo.items()):
        sources = [
            {"vm": vm, "disks": [{"name": d, "source": f"/dev/vg0/{vm}-{d}"} for d in sorted(ds)]}
            for vm, ds in sorted(vms.items())
        ]
        engine.policy_store.add(
            name=f"fleet{repo_id:02d}",
            now=NOW,
            schedule="0 2 * * *",
            target_repository_id=repo_id,
            sources=sources,
            retention=dict(RULES),
            next_run_at=NOW + timedelta(hours=12),
        )
        for vm, names in sorted(vms.items()):
            for disk in sorted(names):
                disks += 1
                directory = f"chains/{vm}/{disk}/c0"
                begin = START - timedelta(days=40)
                engine.chain_store.import_chain(
                    repository_id=repo_id,
                    vm_name=vm,
                    disk_name=disk,
                    directory=directory,
                    created_at=begin,
                    state_detail=None,
                    points=[
                        {
                            "kind": "full" if i == 0 else "incremental",
                            "position": i,
                            "path": f"{directory}/{i:04d}.qcow2",
                            "state": "complete",
                            "point_time": begin + timedelta(days=i),
                            "created_at": begin + timedelta(days=i),
                            "file_size": 1024**3,
                        }
                        for i in range(OLD_POINTS)
                    ],
                )
    return disks


def plan_all(engine: Engine) -> tuple[int, int]:
    points = operations = 0
    for policy in engine.policy_store.list():
        plan = engine.retention.plan(policy)
        points += len(plan.decisions)
        operations += len(plan.operations)
    return points, operations


def apply_all(engine: Engine) -> int:
    removed = 0
    for policy in engine.policy_store.list():
        engine.policy_store.update(policy.id, immutable_days=7)
    for policy in engine.policy_store.list():
        result = engine.retention.apply(policy, actor="bench")
        assert not result.failed, result.sentence()
        removed += sum(len(o.removes) for o in result.done)
    return removed


def scheduler_pass(engine: Engine) -> None:
    engine.scheduler.tick()
    engine.scheduler.evaluate_alerts()


def sqlite3(db: Path, sql: str) -> None:
    subprocess.run(["sqlite3", str(db), sql], check=True, stdout=subprocess.DEVNULL)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    began = time.perf_counter()
    out = fn()
    return time.perf_counter() - began, out


def line(name: str, ours: list[float], ref: list[float], ref_name: str, goal: str) -> None:
    o, r = statistics.median(ours), statistics.median(ref)
    print(f"{name:<22} {o:8.3f} s   {ref_name:<26} {r:8.3f} s   ratio {o / r:7.1f}   goal: {goal}")


def main() -> None:
    ensure_seeded(FLEET, Fleet())
    ensure_seeded(SMALL, Fleet(repositories=5, vms=5, jobs=100, events=500))
    big, small = open_copy(FLEET, "100k"), open_copy(SMALL, "1k")
    try:
        disks = add_policies(big), add_policies(small)
        print(
            f"fleet: {disks[0]} disks in {len(big.policy_store.list())} policies; small: "
            f"{disks[1]} disks (load shared with other work: medians of {ROUNDS})"
        )
        db = big.settings.state_dir / "catalog.db"
        times: dict[str, list[float]] = {}
        for _ in range(ROUNDS):
            for name, fn in (
                ("plan", lambda: plan_all(big)),
                ("plan sqlite3", lambda: sqlite3(db, PLAN_SQL)),
                ("verify", lambda: big.verifier.report()),
                ("verify 1k", lambda: small.verifier.report()),
                ("compliance", lambda: big.compliance.report_all()),
                ("compliance 1k", lambda: small.compliance.report_all()),
                ("capacity", lambda: big.capacity.overview(measure=False)),
                ("capacity 1k", lambda: small.capacity.overview(measure=False)),
                ("tick", lambda: scheduler_pass(big)),
                ("tick 1k", lambda: scheduler_pass(small)),
            ):
                seconds, _out = timed(fn)
                times.setdefault(name, []).append(seconds)
        points, operations = plan_all(big)
        print(f"plan: {points:,} points decided, {operations:,} operations")
        line(
            "retention plan", times["plan"], times["plan sqlite3"], "sqlite3 reading them", "<= 5 s"
        )
        line(
            "verify report",
            times["verify"],
            times["verify 1k"],
            "verify report at 1k",
            "<= 5 s, <= 2x",
        )
        line(
            "compliance report",
            times["compliance"],
            times["compliance 1k"],
            "compliance at 1k",
            "<= 5 s, <= 2x",
        )
        line(
            "capacity accounting",
            times["capacity"],
            times["capacity 1k"],
            "capacity at 1k",
            "<= 2 s, <= 2x",
        )
        line(
            "scheduler tick+alerts", times["tick"], times["tick 1k"], "tick at 1k", "<= 1 s, <= 2x"
        )
        ref_db = WORK / "100k-sql.db"
        subprocess.run(["sqlite3", str(db), f".backup {ref_db}"], check=True)
        ref, _ = timed(lambda: sqlite3(ref_db, APPLY_SQL))
        ours, removed = timed(lambda: apply_all(big))
        print(f"apply: {removed:,} points deleted")
        line("retention apply", [ours], [ref], "sqlite3 marking them", "<= 10 s")
    finally:
        big.close()
        small.close()


if __name__ == "__main__":
    main()
