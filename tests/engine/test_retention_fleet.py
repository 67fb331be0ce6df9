# ruff: noqa: F401, F811  (fixtures imported from tests.engine.diskgen)
"""Retention plans from grouped queries decide exactly what the row-by-row planner did.

A generated multi-policy fleet (both catalog backends): several chains per disk,
points at irregular times over more than a year (GFS buckets of every size), bad,
pending and deleted points between complete ones, locks in every state, copy rules
(all, fulls, a policy's own, a disabled one) with copies done and not done, an
immutable repository and a policy with locks (merges off), disks and VMs no policy
names. Every policy's plan from ``RetentionService.plan`` must equal, decision for
decision and operation for operation, the plan of the planner it replaced (kept below
as the reference: two queries per disk, one lock and one copy query per operation).
"""

from __future__ import annotations

import os
import random
import subprocess
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from engine.catalog import db as engine_db
from engine.catalog import locks as engine_locks
from engine.catalog.copies import COPY_DONE
from engine.catalog.models import Backup, Chain, Policy, Repository
from engine.clock import FixedClock
from engine.errors import ValidationError
from engine.events import Event
from engine.runtime import Engine
from engine.services import retention as retention_module
from engine.services.chains import RepoFiles, repo_file
from engine.services.retention import (
    Point,
    PointDecision,
    RetentionPlan,
    RetentionRules,
    RetentionService,
    gfs_keep,
    plan_chain,
)
from tests.engine.diskgen import bk_engine

# -- the planner before it was set-based (the reference) -------------------------------


def reference_series(
    service: RetentionService, policy: Policy
) -> dict[tuple[str, str], list[tuple[Chain, list[Backup]]]]:
    found: dict[tuple[str, str], list[tuple[Chain, list[Backup]]]] = {}
    for source in policy.sources or []:
        vm = str(source.get("vm"))
        for disk in source.get("disks") or []:
            name = str(disk.get("name"))
            chains = service.chain_store.list_chains(
                repository_id=policy.target_repository_id, vm_name=vm, disk_name=name
            )
            rows = []
            for chain in sorted(chains, key=lambda c: c.id):
                points = [b for b in service.chain_store.backups(chain.id) if b.state == "complete"]
                if points:
                    rows.append((chain, points))
            found[(vm, name)] = rows
    return found


def reference_missing(
    service: RetentionService, backups: list[Backup], rules: list[Any]
) -> list[str]:
    if not rules or not backups:
        return []
    repos = {r.id: r.name for r in service.repositories.list()}
    copies = service.copy_store.copies_of_backups([b.id for b in backups])
    missing = []
    for b in backups:
        done = {c.destination_repository_id for c in copies.get(b.id, []) if c.state == COPY_DONE}
        for rule in rules:
            if rule.selection == "fulls" and b.kind != "full":
                continue
            if rule.destination_repository_id not in done:
                dest = repos.get(rule.destination_repository_id, "?")
                missing.append(f"#{b.id} has no copy at {dest} yet (copy rule {rule.name})")
    return missing


def reference_plan(service: RetentionService, policy: Policy) -> RetentionPlan:
    rules = RetentionRules.from_dict(policy.retention)
    repo: Repository = service.repositories.get(policy.target_repository_id)
    merges = service.merges_allowed(policy, repo)
    plan = RetentionPlan(policy.name, rules, merges_allowed=merges)
    copy_rules = service._required_copy_rules(policy, repo)
    for (vm, disk), chains in reference_series(service, policy).items():
        every = [b for _c, points in chains for b in points]
        keep = gfs_keep([Point(b.id, b.point_time) for b in every], rules)
        for chain, points in chains:
            actions, ops = plan_chain(points, keep, merges_allowed=merges)
            by_id = {b.id: b for b in points}
            for op in ops:
                involved = [by_id[i] for i in op.removes]
                if op.kind == "merge":
                    involved.append(by_id[op.backup_id])
                whys = {b.path: service.locks.why_locked_rel(repo, b.path) for b in involved}
                op.locked = [f"#{b.id} {whys[b.path]}" for b in involved if whys.get(b.path)]
                op.missing_copies = reference_missing(
                    service, [by_id[i] for i in op.removes], copy_rules
                )
            plan.operations.extend(ops)
            blocked_by: dict[int, str] = {}
            for op in ops:
                why = op.blocked()
                if why:
                    for i in op.removes:
                        blocked_by[i] = why
            for b in points:
                action, reasons = actions[b.id]
                plan.decisions.append(
                    PointDecision(
                        backup_id=b.id,
                        vm=vm,
                        disk=disk,
                        chain_id=chain.id,
                        position=b.position,
                        kind=b.kind,
                        point_time=b.point_time,
                        action=action,
                        reasons=reasons,
                        blocked=blocked_by.get(b.id),
                    )
                )
    return plan


# -- a generated fleet -------------------------------------------------------------------

VMS = [f"vm{i}" for i in range(6)]
DISKS = ["sda", "sdb", "sdc"]


def add_repo(engine: Engine, tmp_path: Path, name: str, **fields: Any) -> Repository:
    root = tmp_path / name
    root.mkdir()
    return engine.repository_store.add(
        name=name, kind="local", path=str(root), now=engine.clock.now(), **fields
    )


def point_times(rng: random.Random, start: datetime, count: int) -> list[datetime]:
    """Irregular: several a day, gaps of days and weeks (every GFS bucket size)."""
    times, at = [], start
    for _ in range(count):
        at += rng.choice(
            [timedelta(hours=3), timedelta(hours=11), timedelta(days=1), timedelta(days=2)]
            + [timedelta(days=1)] * 4
            + [timedelta(days=9), timedelta(days=33)]
        )
        times.append(at)
    return times


def add_chains(engine: Engine, rng: random.Random, repo: Repository) -> list[Backup]:
    """Chains of every disk, older chains first; states mixed."""
    now = engine.clock.now()
    made: list[Backup] = []
    plans = [(vm, disk, rng.randint(1, 3)) for vm in VMS for disk in DISKS]
    for round_ in range(3):
        for vm, disk, chains in plans:
            if round_ >= chains:
                continue
            start = now - timedelta(days=480) + timedelta(days=150 * round_ + rng.randint(0, 20))
            count = rng.randint(4, 45)
            directory = f"{vm}/{disk}/c{round_}"
            points = []
            for position, at in enumerate(point_times(rng, start, count)):
                state = rng.choices(
                    ["complete", "bad", "deleted", "pending"], weights=[88, 4, 5, 3]
                )[0]
                points.append(
                    {
                        "kind": "full" if position == 0 else "incremental",
                        "position": position,
                        "path": f"{directory}/{position:04d}.qcow2",
                        "state": state,
                        "point_time": at,
                        "created_at": at,
                        "file_size": 1024,
                    }
                )
            _chain, rows = engine.chain_store.import_chain(
                repository_id=repo.id,
                vm_name=vm,
                disk_name=disk,
                directory=directory,
                created_at=start,
                points=points,
            )
            made.extend(rows)
    return made


def add_locks(engine: Engine, rng: random.Random, repo: Repository, points: list[Backup]) -> None:
    now = engine.clock.now()
    for b in rng.sample(points, len(points) // 12):
        state, expires = rng.choice(
            [
                ("active", now + timedelta(days=20)),
                ("active", now - timedelta(days=2)),  # expired, not yet released
                ("pending", now + timedelta(days=5)),
                ("released", now - timedelta(days=40)),
                ("failed", now + timedelta(days=9)),
            ]
        )
        engine.lock_store.add(
            repository_id=repo.id,
            path=b.path,
            expires_at=expires,
            now=now,
            state=state,
            backup_id=b.id,
        )


def add_copies(
    engine: Engine, rng: random.Random, points: list[Backup], destination: Repository
) -> None:
    now = engine.clock.now()
    for b in rng.sample(points, len(points) // 2):
        copy = engine.copy_store.create_copy(
            backup_id=b.id,
            destination_repository_id=destination.id,
            path=f"copies/{b.path}",
            size=1024,
            now=now,
        )
        state = rng.choice([COPY_DONE, COPY_DONE, COPY_DONE, "failed", "pending"])
        engine.copy_store.update_copy(copy.id, state=state)


def sources(vms: list[str], disks: list[str]) -> list[dict[str, Any]]:
    return [
        {"vm": vm, "disks": [{"name": d, "source": f"/dev/vg/{vm}-{d}"} for d in disks]}
        for vm in vms
    ]


def build_fleet(engine: Engine, tmp_path: Path, seed: int) -> list[Policy]:
    rng = random.Random(seed)
    now = engine.clock.now()
    main = add_repo(engine, tmp_path, "main")
    vault = add_repo(engine, tmp_path, "vault", immutable=True, immutable_days=14)
    offsite = add_repo(engine, tmp_path, "offsite", offsite=True)
    tape = add_repo(engine, tmp_path, "tape", offsite=True)
    on_main = add_chains(engine, rng, main)
    on_vault = add_chains(engine, rng, vault)
    add_locks(engine, rng, main, on_main)
    add_locks(engine, rng, vault, on_vault)
    add_copies(engine, rng, on_main + on_vault, offsite)
    store = engine.policy_store

    def policy(name: str, repo: Repository, vms: list[str], disks: list[str], **kw: Any) -> Policy:
        return store.add(
            name=name,
            now=now,
            schedule="0 2 * * *",
            target_repository_id=repo.id,
            sources=sources(vms, disks),
            **kw,
        )

    gfs = policy(
        "gfs",
        main,
        VMS[:3],
        ["sda", "sdb"],
        retention={"keep_last": 4, "daily": 7, "weekly": 4, "monthly": 6, "yearly": 2},
    )
    engine.copy_store.add_rule(
        name="main-offsite",
        now=now,
        source_repository_id=main.id,
        destination_repository_id=offsite.id,
        selection="all",
    )
    engine.copy_store.add_rule(
        name="main-tape-fulls",
        now=now,
        source_repository_id=main.id,
        destination_repository_id=tape.id,
        selection="fulls",
        policy_id=gfs.id,
    )
    engine.copy_store.add_rule(
        name="main-tape-off",
        now=now,
        source_repository_id=main.id,
        destination_repository_id=tape.id,
        enabled=False,
    )
    engine.copy_store.add_rule(
        name="vault-offsite-latest",
        now=now,
        source_repository_id=vault.id,
        destination_repository_id=offsite.id,
        selection="latest",
        latest_count=3,
    )
    engine.copy_store.add_rule(
        name="vault-offsite-fulls",
        now=now,
        source_repository_id=vault.id,
        destination_repository_id=offsite.id,
        selection="fulls",
    )
    return [
        gfs,
        policy("last", main, VMS[3:5], ["sda"], retention={"keep_last": 3}),
        policy(
            "locked",
            main,
            VMS[5:],
            ["sda", "sdb"],
            retention={"weekly": 3, "monthly": 2},
            immutable_days=7,
        ),
        policy("vault", vault, VMS, ["sda", "sdb"], retention={"daily": 10, "monthly": 3}),
        policy(
            "ghosts",
            main,
            ["vm1", "nobody"],
            ["sdc", "sdz"],
            retention={"keep_last": 1, "yearly": 1},
        ),
    ]


@pytest.mark.parametrize(("seed", "in_batch"), [(16, None), (1602, 3)])
def test_grouped_plans_decide_exactly_what_the_row_by_row_planner_did(
    engine: Engine,
    tmp_path: Path,
    clock: FixedClock,
    monkeypatch: pytest.MonkeyPatch,
    seed: int,
    in_batch: int | None,
) -> None:
    if in_batch is not None:
        # the stores' IN lists split in many batches, and locks read per repository
        monkeypatch.setattr(engine_db, "IN_BATCH", in_batch)
        monkeypatch.setattr(engine_locks, "IN_BATCH", in_batch)
    seen: Counter[str] = Counter()
    for policy in build_fleet(engine, tmp_path, seed):
        expected = reference_plan(engine.retention, policy).as_dict()
        planned = engine.retention.plan(policy).as_dict()
        assert planned["summary"] == expected["summary"]
        assert planned["operations"] == expected["operations"]
        assert planned["points"] == expected["points"]
        for op in planned["operations"]:
            seen[op["kind"]] += 1
            seen["locked"] += bool(op["locked"])
            seen["missing copies"] += bool(op["missing_copies"])
        for point in planned["points"]:
            seen[point["action"]] += 1
            seen["immutable base"] += "immutable target" in point["reasons"][0]
    # the fleet went through every path of the planner
    for what in ("delete", "merge", "keep", "locked", "missing copies", "immutable base"):
        assert seen[what] > 0, (what, seen)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chattr +i)")
def test_locks_of_many_files_read_as_each_file_alone(
    bk_engine: Engine, tmp_path: Path, clock: FixedClock
) -> None:
    """``why_locked_many`` resolves each directory once: it must still say what
    ``why_locked_rel`` says of every file (a catalog lock, a flag set by hand, no file,
    no directory), and still refuse a link that leads out of the repository."""
    engine = bk_engine
    main = add_repo(engine, tmp_path, "main")
    root = Path(main.path)
    chain = root / "vm1" / "sda" / "c1"
    chain.mkdir(parents=True)
    for i in range(4):
        (chain / f"{i:04d}.qcow2").write_bytes(b"x")
    flagged, locked = chain / "0001.qcow2", chain / "0002.qcow2"
    (chain / "inside.qcow2").symlink_to(flagged)
    engine.lock_store.add(
        repository_id=main.id,
        path="vm1/sda/c1/0002.qcow2",
        expires_at=clock.now() + timedelta(days=3),
        now=clock.now(),
    )
    paths = [
        "vm1/sda/c1/0000.qcow2",
        "vm1/sda/c1/0001.qcow2",
        "vm1/sda/c1/0002.qcow2",
        "vm1/sda/c1/0003.qcow2",
        "vm1/sda/c1/inside.qcow2",
        "vm1/sda/c1/gone.qcow2",
        "vm1/sda/c9/0000.qcow2",
    ]
    subprocess.run(["chattr", "+i", str(flagged), str(locked)], check=True, timeout=30)
    try:
        many = engine.locks.why_locked_many(main, paths)
        assert many == {p: engine.locks.why_locked_rel(main, p) for p in paths}
        # a link's own flag is read, as for a single file
        assert [p for p, why in many.items() if why] == paths[1:3]
        assert "without a catalog lock" in str(many["vm1/sda/c1/0001.qcow2"])
        assert "until 2026-11-27" in str(many["vm1/sda/c1/0002.qcow2"])

        outside = tmp_path / "elsewhere.qcow2"
        outside.write_bytes(b"x")
        (chain / "leak.qcow2").symlink_to(outside)
        for ask in (
            lambda: engine.locks.why_locked_rel(main, "vm1/sda/c1/leak.qcow2"),
            lambda: engine.locks.why_locked_many(main, [*paths, "vm1/sda/c1/leak.qcow2"]),
            lambda: engine.locks.why_locked_many(main, ["../elsewhere.qcow2"]),
        ):
            with pytest.raises(ValidationError, match="lies outside repository main"):
                ask()
    finally:
        subprocess.run(["chattr", "-i", str(flagged), str(locked)], check=True, timeout=30)


def test_a_pass_deletes_in_batches_what_each_delete_alone_would_and_keeps_a_chain_locked_since(
    engine: Engine, tmp_path: Path, clock: FixedClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Apply writes its deletions in batches (``ChainService.delete_many``): each
    unblocked delete removes its point and every later live point of its chain (bad
    ones too), a chain left empty is retired, one ``backup.deleted`` per operation; a
    point locked after the plan was made keeps its chain whole and the rest goes on."""
    monkeypatch.setattr(retention_module, "DELETE_BATCH", 3)
    policies = build_fleet(engine, tmp_path, 5)
    seen: list[Event] = []
    engine.bus.subscribe(seen.append)
    for policy in policies:
        plan = engine.retention.plan(policy)
        deletes = [o for o in plan.operations if o.kind == "delete" and not o.blocked(True)]
        if not deletes:
            continue
        late = deletes[len(deletes) // 2]
        engine.lock_store.add(
            repository_id=policy.target_repository_id,
            path=engine.chain_store.get_backup(late.removes[-1]).path,
            expires_at=clock.now() + timedelta(days=3),
            now=clock.now(),
            backup_id=late.removes[-1],
        )
        expected: dict[int, list[int]] = {}
        for op in deletes:
            live = [b.id for b in engine.chain_store.backups(op.chain_id)]
            expected[op.chain_id] = live[live.index(op.backup_id) :]
        seen.clear()
        result = engine.retention.apply(policy, force=True, plan=plan, actor="test")
        [(failed, why)] = [(o, w) for o, w in result.failed if o.kind == "delete"]
        assert failed is late and f"cannot delete point {late.backup_id}" in why
        assert "is locked until" in why
        assert [o for o in result.done if o.kind == "delete"] == [
            o for o in deletes if o is not late
        ]
        for op in deletes:
            states = {engine.chain_store.get_backup(i).state for i in expected[op.chain_id]}
            assert states == ({"complete", "bad"} & states if op is late else {"deleted"})
        for op in deletes:
            if op is not late and not engine.chain_store.backups(op.chain_id):
                assert engine.chain_store.get_chain(op.chain_id).state == "retired"
        deleted_events = [e for e in seen if e.kind == "backup.deleted"]
        assert sorted(e.data["deleted"] for e in deleted_events) == sorted(
            expected[o.chain_id] for o in deletes if o is not late
        )


def test_files_of_a_pass_resolve_as_each_file_alone(engine: Engine, tmp_path: Path) -> None:
    """``RepoFiles`` (a delete pass resolves each directory once) gives ``repo_file``'s
    path for every file and refuses what it refuses: a directory or a file that is a
    link out of the repository, and a path climbing out of it."""
    main = add_repo(engine, tmp_path, "main")
    root = Path(main.path)
    (root / "vm1" / "c1").mkdir(parents=True)
    (root / "vm1" / "c1" / "0000.qcow2").write_bytes(b"x")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "0000.qcow2").write_bytes(b"x")
    (root / "vm1" / "out").symlink_to(outside)
    (root / "vm1" / "c1" / "leak.qcow2").symlink_to(outside / "0000.qcow2")
    files = RepoFiles(main)
    for fine in ("vm1/c1/0000.qcow2", "vm1/c1/gone.qcow2", "vm1/c9/0000.qcow2", "vm1/c1"):
        assert files(fine) == repo_file(main, fine)
    for bad in ("vm1/out/0000.qcow2", "vm1/c1/leak.qcow2", "vm1/../..", "../outside/0000.qcow2"):
        with pytest.raises(ValidationError, match="leaves repository main"):
            repo_file(main, bad)
        with pytest.raises(ValidationError, match="leaves repository main"):
            files(bad)
