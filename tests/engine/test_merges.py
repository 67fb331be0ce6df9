# ruff: noqa: F401, F811  (fixtures imported from tests.engine.diskgen)
"""Merges (consolidation and retention) against real qemu-img chains: a damaged input
is never merged, verification and copies agree with the catalog after merges and
deletes, and the merge intent settles what a crash left (the SIGKILL matrix itself is
tests/engine/test_crash_matrix.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from engine.catalog import Catalog
from engine.catalog.chains import ChainStore
from engine.catalog.models import Job
from engine.catalog.repositories import RepositoryStore
from engine.clock import FixedClock
from engine.errors import CatalogError
from engine.runtime import Engine
from engine.services.backup import DiskSource
from engine.services.chains import ChainError
from engine.services.policies import PolicySpec
from engine.tools import qemu_img
from tests.engine.diskgen import MiB, SourceDisk, bk_engine, disk, repo, sha256_of

ROOT = Path(__file__).resolve().parents[2]
FINAL = ("succeeded", "failed", "cancelled")


def build_chain(
    engine: Engine, repo: Any, disk: SourceDisk, clock: FixedClock, incrementals: int, vm: str
) -> tuple[list[int], dict[int, str]]:
    """A full and ``incrementals`` incrementals of ``vm``/sda; point ids and the source
    hash at each point."""
    ids: list[int] = []
    moments: dict[int, str] = {}
    for i in range(incrementals + 1):
        if i:
            disk.change([(i * 2 * MiB, 512 * 1024)])
            clock.advance(3600)
        run = engine.backups.run(repo.id, vm, [DiskSource("sda", str(disk.path))])
        assert run.ok, run.sentence()
        bid = run.disks[0].backup_id
        assert bid is not None
        ids.append(bid)
        moments[bid] = disk.sha256()
    return ids, moments


def point_path(engine: Engine, repo: Any, backup_id: int) -> Path:
    return Path(repo.path) / engine.chain_store.get_backup(backup_id).path


def restored(engine: Engine, backup_id: int, tmp_path: Path) -> str:
    target = tmp_path / f"r{backup_id}.raw"
    engine.restores.restore(backup_id, str(target), force=True)
    try:
        return sha256_of(target)
    finally:
        target.unlink()


def damage_data(path: Path) -> None:
    """Flip bytes inside a guest-data cluster the file itself holds (found with qemu-img
    map), leaving header and metadata alone: only a checksum can see this."""
    extent = next(e for e in qemu_img.map_image(path) if e.depth == 0 and e.data and e.offset)
    assert extent.offset is not None
    with open(path, "r+b") as f:
        f.seek(extent.offset + 4096)
        block = f.read(64)
        f.seek(extent.offset + 4096)
        f.write(bytes(b ^ 0xFF for b in block))
    assert qemu_img.check(path, fmt="qcow2").clean  # metadata cannot tell


def snapshot(engine: Engine, repo: Any, chain_id: int) -> tuple[dict[str, bytes], list[Any]]:
    root = Path(repo.path) / engine.chain_store.get_chain(chain_id).directory
    files = {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    rows = [
        (b.id, b.kind, b.parent_id, b.path, b.checksum, b.file_size)
        for b in engine.chain_store.backups(chain_id, include_deleted=True)
    ]
    return files, rows


def run_cli(state_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENDENSE_")}
    return subprocess.run(
        [sys.executable, "-m", "sendense_tui.cli", "--state-dir", str(state_dir), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
    )


# -- 10.3: a merge never launders damage ---------------------------------------------


@pytest.mark.parametrize("damaged", ["merged full", "target"])
def test_a_damaged_input_is_never_merged_and_nothing_changes(
    bk_engine: Engine, repo: Any, disk: SourceDisk, clock: FixedClock, damaged: str
) -> None:
    seen: list[Any] = []
    bk_engine.bus.subscribe(seen.append)
    ids, _ = build_chain(bk_engine, repo, disk, clock, incrementals=2, vm="web01")
    chain_id = bk_engine.chain_store.get_backup(ids[0]).chain_id
    # default consolidation merges the full (ids[0]) into the first incremental (ids[1])
    victim = ids[0] if damaged == "merged full" else ids[1]
    damage_data(point_path(bk_engine, repo, victim))
    files_before, rows_before = snapshot(bk_engine, repo, chain_id)

    with pytest.raises(ChainError) as refused:
        bk_engine.chains.consolidate(chain_id, actor="test")
    message = refused.value.message
    assert f"point #{victim} ({point_path(bk_engine, repo, victim).name}) failed its check" in (
        message
    )
    assert "mismatch" in message and "nothing was merged" in message
    assert "good copy" in (refused.value.hint or "")

    # nothing written, nothing recorded: same files, same rows (only the verdict is new)
    files_after, rows_after = snapshot(bk_engine, repo, chain_id)
    assert files_after == files_before
    assert rows_after == rows_before
    assert bk_engine.chain_store.open_intents() == []
    bad = bk_engine.chain_store.get_backup(victim)
    assert (bad.state, bad.verify_state) == ("bad", "mismatch")
    # the finding, and the active alert it raises at once (issue 13 item 9)
    critical = [e for e in seen if e.level == "critical"]
    assert [e.kind for e in critical] == ["verify.mismatch", "alert.verification_failed"]
    assert "NO good copy" in critical[0].message

    # asked again: refused at once, because the point is marked bad
    with pytest.raises(ChainError, match=rf"point #{victim} .* is marked bad"):
        bk_engine.chains.consolidate(chain_id)
    # and the damage is what `chain check --deep` reports, on the command line too
    report = bk_engine.chains.validate(chain_id, deep=True)
    assert not report.ok
    assert [(f.kind, f.backup_id) for f in report.findings if f.breaking] == [("changed", victim)]
    state_dir = Path(bk_engine.settings.state_dir)
    checked = run_cli(state_dir, "chain", "check", str(chain_id), "--deep")
    assert checked.returncode == 1, checked.stderr
    assert "BROKEN" in checked.stdout and "no longer matches its checksum" in checked.stdout
    assert "Traceback" not in checked.stderr


def test_retention_reports_a_damaged_chain_as_not_merged_and_merges_the_others(
    bk_engine: Engine, repo: Any, disk: SourceDisk, clock: FixedClock, tmp_path: Path
) -> None:
    other_disk = SourceDisk.create(tmp_path / "other.raw", 8 * MiB, seed=11)
    ids_a, _ = build_chain(bk_engine, repo, disk, clock, incrementals=2, vm="web01")
    ids_b, moments_b = build_chain(bk_engine, repo, other_disk, clock, incrementals=2, vm="db01")
    damage_data(point_path(bk_engine, repo, ids_a[1]))
    chain_a = bk_engine.chain_store.get_backup(ids_a[0]).chain_id
    files_a, rows_a = snapshot(bk_engine, repo, chain_a)
    bk_engine.policies.add(
        PolicySpec(
            name="keep1",
            schedule="0 2 * * *",
            target="local",
            sources=PolicySpec.sources_from(
                [f"web01:sda={disk.path}", f"db01:sda={other_disk.path}"]
            ),
            full_every=7,
            retention={"keep_last": 1},
        )
    )
    result = bk_engine.policies.apply_retention("keep1", actor="test")
    [(failed, why)] = result.failed
    assert failed.chain_id == chain_a
    assert f"point #{ids_a[1]}" in why and "nothing was merged" in why
    assert [o.chain_id for o in result.done] == [
        bk_engine.chain_store.get_backup(ids_b[0]).chain_id
    ]
    assert "1 failed" in result.sentence()
    # the damaged chain is exactly as it was (its damaged point now marked bad)
    assert snapshot(bk_engine, repo, chain_a) == (files_a, rows_a)
    assert bk_engine.chain_store.get_backup(ids_a[1]).state == "bad"
    # the other chain was merged into its newest point, which restores to its moment
    assert [
        b.id
        for b in bk_engine.chain_store.backups(bk_engine.chain_store.get_backup(ids_b[2]).chain_id)
    ] == [ids_b[2]]
    assert restored(bk_engine, ids_b[2], tmp_path) == moments_b[ids_b[2]]


# -- 11.5: positions and verification agree ------------------------------------------


def wait_job(engine: Engine, job: Job, timeout: float = 120.0) -> Job:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = engine.job_store.get(job.id)
        if row.state in FINAL:
            return row
        time.sleep(0.1)
    raise AssertionError(f"job {job.id} did not finish")


@pytest.mark.parametrize("operation", ["consolidate", "retention merge", "delete"])
def test_verify_and_copies_agree_with_the_catalog_after_merges_and_deletes(
    bk_engine: Engine,
    repo: Any,
    disk: SourceDisk,
    clock: FixedClock,
    tmp_path: Path,
    operation: str,
) -> None:
    seen: list[Any] = []
    bk_engine.bus.subscribe(seen.append)
    offsite_root = tmp_path / "offsite"
    offsite_root.mkdir()
    bk_engine.repository_store.add(
        name="offsite", kind="local", path=str(offsite_root), now=clock.now()
    )
    ids, moments = build_chain(bk_engine, repo, disk, clock, incrementals=3, vm="web01")
    chain_id = bk_engine.chain_store.get_backup(ids[0]).chain_id
    bk_engine.start()
    bk_engine.copies.add_rule(name="out", source="local", destination="offsite")
    assert wait_job(bk_engine, bk_engine.copies.run_rule("out")).state == "succeeded"

    if operation == "consolidate":
        bk_engine.chains.consolidate(chain_id)  # ids[0] into ids[1]
        bk_engine.chains.consolidate(chain_id)  # ids[1] into ids[2]: twice over the copies
        live = ids[2:]
    elif operation == "retention merge":
        bk_engine.policies.add(
            PolicySpec(
                name="keep2",
                schedule="0 2 * * *",
                target="local",
                sources=PolicySpec.sources_from([f"web01:sda={disk.path}"]),
                full_every=7,
                retention={"keep_last": 2},
            )
        )
        result = bk_engine.policies.apply_retention("keep2")
        assert not result.failed and [o.kind for o in result.done] == ["merge"]
        live = ids[2:]
    else:
        bk_engine.chains.delete_point(ids[3], actor="test")
        live = ids[:3]
    assert [b.id for b in bk_engine.chain_store.backups(chain_id)] == live

    # a point taken after the operation, copied like the others
    disk.change([(5 * MiB, 256 * 1024)])
    clock.advance(3600)
    run = bk_engine.backups.run(repo.id, "web01", [DiskSource("sda", str(disk.path))])
    assert run.ok and run.disks[0].kind == "incremental"
    newest = run.disks[0].backup_id
    assert newest is not None
    moments[newest] = disk.sha256()
    live.append(newest)

    copied = wait_job(bk_engine, bk_engine.copies.run_rule("out"))
    assert copied.state == "succeeded", copied.error
    verified = wait_job(bk_engine, bk_engine.verifier.submit("all"))
    assert verified.state == "succeeded", verified.error
    outcomes = {v.outcome for v in bk_engine.copy_store.verifications(limit=10_000)}
    assert outcomes == {"ok"}
    assert [e.message for e in seen if e.level == "critical"] == []
    copies = bk_engine.copy_store.list_copies(states=("completed",), limit=1000)
    assert {c.verify_state for c in copies} == {"ok"}
    # every point that is live has a verified copy, and the copied chain of the newest
    # point resolves inside the offsite repository
    assert set(live) <= {c.backup_id for c in copies}
    newest_copy = next(c for c in copies if c.backup_id == newest)
    for image in qemu_img.info_chain(offsite_root / newest_copy.path):
        assert Path(image.filename).resolve().is_relative_to(offsite_root.resolve())
    report = bk_engine.verifier.report()
    assert report.bad == [] and report.coverage_percent == 100.0
    for bid in live:
        assert restored(bk_engine, bid, tmp_path) == moments[bid]
    if operation == "delete":
        return
    # the copies of the points merged away still back the copies made before the merge:
    # they are verified too, and damage to one of them is found
    verified_copies = {
        v.copy_id for v in bk_engine.copy_store.verifications(job_id=verified.id) if v.copy_id
    }
    merged_copies = [c for c in copies if c.backup_id in (ids[0], ids[1])]
    assert len(merged_copies) == 2 and {c.id for c in merged_copies} <= verified_copies
    damage_data(offsite_root / merged_copies[0].path)
    again = wait_job(bk_engine, bk_engine.verifier.submit("all"))
    assert again.state == "failed" and merged_copies[0].path in (again.error or "")


# -- the merge intent ------------------------------------------------------------------


def test_merge_intents_on_both_catalogs(catalog: Catalog, clock: FixedClock) -> None:
    repos = RepositoryStore(catalog)
    r = repos.add(name="r", kind="local", path="/srv/r", now=clock.now())
    store = ChainStore(catalog)
    chain, full = store.add_full(
        repository_id=r.id,
        vm_name="vm",
        disk_name="sda",
        directory="c",
        now=clock.now(),
        backup={"path": "c/0.qcow2", "state": "complete", "point_time": clock.now()},
    )
    inc = store.add_incremental(
        chain_id=chain.id,
        parent_id=full.id,
        position=1,
        now=clock.now(),
        backup={"path": "c/1.qcow2", "state": "complete", "point_time": clock.now()},
    )
    intent = store.add_intent(
        chain_id=chain.id,
        target_id=inc.id,
        merged_ids=[full.id],
        partial_name=".1.qcow2.partial",
        old_checksum="a" * 64,
        owner="host:1:one",
        now=clock.now(),
    )
    assert [i.id for i in store.open_intents(chain.id)] == [intent.id]
    # only the owner moves it on
    assert not store.update_intent(intent.id, "host:2:two", clock.now(), step="converted")
    clock.advance(5)
    assert store.update_intent(intent.id, "host:1:one", clock.now(), step="converted")
    seen = store.get_intent(intent.id)
    assert (seen.step, seen.updated_at) == ("converted", clock.now())
    # a take-over is a compare-and-set on the heartbeat seen: one of two engines wins
    assert not store.take_over_intent(
        intent.id, "host:1:one", seen.updated_at - timedelta(seconds=1), "b", clock.now()
    )
    assert store.take_over_intent(intent.id, "host:1:one", seen.updated_at, "b", clock.now())
    assert not store.take_over_intent(intent.id, "host:1:one", seen.updated_at, "c", clock.now())
    # the catalog step records the merge and moves the intent in one transaction, only
    # for the engine that holds the intent now
    record = dict(
        backup_id=inc.id,
        path="c/1.qcow2",
        fields={"checksum": "b" * 64},
        deleted_ids=[full.id],
        detail="merged",
        intent_id=intent.id,
        now=clock.now(),
    )
    with pytest.raises(CatalogError, match="is held by b"):
        store.promote_to_full(**record, intent_owner="host:1:one")  # type: ignore[arg-type]
    assert [(b.id, b.kind, b.state) for b in store.backups(chain.id)] == [
        (full.id, "full", "complete"),
        (inc.id, "incremental", "complete"),
    ]
    assert store.get_intent(intent.id).step == "converted"
    store.promote_to_full(**record, intent_owner="b")  # type: ignore[arg-type]
    assert store.get_intent(intent.id).step == "recorded"
    assert store.open_intents(chain.id)[0].id == intent.id
    assert store.update_intent(intent.id, "b", clock.now(), step="done")
    assert store.open_intents() == []


def _intent_for(engine: Engine, chain_id: int, ids: list[int], **fields: Any) -> int:
    target = engine.chain_store.get_backup(ids[1])
    intent = engine.chain_store.add_intent(
        chain_id=chain_id,
        target_id=target.id,
        merged_ids=[ids[0]],
        partial_name=f".{Path(target.path).name}.partial",
        old_checksum=target.checksum,
        owner=fields.pop("owner"),
        now=engine.clock.now(),
    )
    if fields:
        engine.chain_store.update_intent(intent.id, intent.owner, engine.clock.now(), **fields)
    return intent.id


def test_a_merge_of_a_live_engine_is_left_alone_until_its_heartbeat_lapses(
    bk_engine: Engine, repo: Any, disk: SourceDisk, clock: FixedClock
) -> None:
    ids, _ = build_chain(bk_engine, repo, disk, clock, incrementals=1, vm="web01")
    chain_id = bk_engine.chain_store.get_backup(ids[0]).chain_id
    target = point_path(bk_engine, repo, ids[1])
    partial = target.with_name(f".{target.name}.partial")
    partial.write_bytes(b"half a full")
    # another engine (this host, a live process: ours) is half-way through a merge
    other = f"{os.uname().nodename}:{os.getpid()}:other-engine"
    intent_id = _intent_for(bk_engine, chain_id, ids, owner=other)
    assert bk_engine.chains.recover() == []
    with pytest.raises(ChainError, match=r"has a merge in progress .*other-engine"):
        bk_engine.chains.consolidate(chain_id)
    assert partial.exists()
    # its heartbeat lapses (longer than a job lease): the merge is taken over and, as it
    # never replaced the target's file, rolled back
    clock.advance(bk_engine.settings.jobs.lease_seconds + 1)
    [sentence] = bk_engine.chains.recover()
    assert "was rolled back; the chain is as it was before" in sentence
    assert not partial.exists()
    assert bk_engine.chain_store.get_intent(intent_id).step == "rolled_back"
    assert bk_engine.chains.validate(chain_id, deep=True).findings == []


def test_a_merge_whose_file_matches_neither_checksum_is_left_to_the_operator(
    bk_engine: Engine, repo: Any, disk: SourceDisk, clock: FixedClock
) -> None:
    seen: list[Any] = []
    bk_engine.bus.subscribe(seen.append)
    ids, _ = build_chain(bk_engine, repo, disk, clock, incrementals=1, vm="web01")
    chain_id = bk_engine.chain_store.get_backup(ids[0]).chain_id
    # a dead engine (no such process) had written its new full and then... the target's
    # file changed to something that is neither the old point nor the recorded new full
    intent_id = _intent_for(
        bk_engine,
        chain_id,
        ids,
        owner=f"{os.uname().nodename}:999999999:dead",
        step="converted",
        result={"checksum": "f" * 64, "file_size": 1, "virtual_size": 1, "allocated_bytes": 0},
    )
    damage_data(point_path(bk_engine, repo, ids[1]))
    files_before, rows_before = snapshot(bk_engine, repo, chain_id)
    [sentence] = bk_engine.chains.recover()
    assert "cannot be finished nor rolled back" in sentence
    assert bk_engine.chain_store.get_intent(intent_id).step == "stuck"
    assert bk_engine.chain_store.get_chain(chain_id).state == "broken"
    assert snapshot(bk_engine, repo, chain_id) == (files_before, rows_before)
    assert [e.kind for e in seen if e.level == "critical"] == ["chain.merge_recovered"]


# -- a merge while a verify or copy job runs ---------------------------------------------


def test_a_verify_run_that_started_before_a_merge_calls_nothing_bad(
    bk_engine: Engine, repo: Any, disk: SourceDisk, clock: FixedClock
) -> None:
    """The merge replaces the target's file (new checksum) and removes the merged point's
    file: a run that listed its files before must not call either of them rot."""
    seen: list[Any] = []
    bk_engine.bus.subscribe(seen.append)
    ids, _ = build_chain(bk_engine, repo, disk, clock, incrementals=2, vm="web01")
    chain_id = bk_engine.chain_store.get_backup(ids[0]).chain_id
    listed = bk_engine.verifier.targets("chain", chain_id)
    bk_engine.chains.consolidate(chain_id)
    results = bk_engine.verifier.verify_targets(listed)
    assert [(r.target.backup.id, r.outcome) for r in results] == [(ids[1], "ok"), (ids[2], "ok")]
    assert [b.state for b in bk_engine.chain_store.backups(chain_id, include_deleted=True)] == [
        "deleted",
        "complete",
        "complete",
    ]
    assert [e.message for e in seen if e.level == "critical"] == []


def test_a_copy_job_that_started_before_a_merge_copies_the_new_full(
    bk_engine: Engine, repo: Any, disk: SourceDisk, clock: FixedClock, tmp_path: Path
) -> None:
    seen: list[Any] = []
    bk_engine.bus.subscribe(seen.append)
    offsite_root = tmp_path / "offsite"
    offsite_root.mkdir()
    bk_engine.repository_store.add(
        name="offsite", kind="local", path=str(offsite_root), now=clock.now()
    )
    ids, moments = build_chain(bk_engine, repo, disk, clock, incrementals=2, vm="web01")
    chain_id = bk_engine.chain_store.get_backup(ids[0]).chain_id
    merged: list[int] = []

    def merge_once_the_full_is_copied(event: Any) -> None:
        # runs in the copy job's thread, between its first and second file
        if event.kind == "copy.completed" and event.data["backup_id"] == ids[0] and not merged:
            merged.append(bk_engine.chains.consolidate(chain_id).id)

    bk_engine.bus.subscribe(merge_once_the_full_is_copied, ("copy.completed",))
    bk_engine.start()
    bk_engine.copies.add_rule(name="out", source="local", destination="offsite")
    job = wait_job(bk_engine, bk_engine.copies.run_rule("out"))
    assert merged == [ids[1]]
    assert job.state == "succeeded", job.error
    assert [e.message for e in seen if e.level == "critical"] == []
    assert all(b.state != "bad" for b in bk_engine.chain_store.backups(chain_id))
    # the copy of the new full is the new full; the chain copied after it reads through it
    full_copy = bk_engine.copy_store.find_copy(ids[1], bk_engine.repository_store.get("offsite").id)
    assert full_copy is not None
    assert full_copy.checksum == bk_engine.chain_store.get_backup(ids[1]).checksum
    verified = wait_job(bk_engine, bk_engine.verifier.submit("all"))
    assert verified.state == "succeeded", verified.error
    assert restored(bk_engine, ids[2], tmp_path) == moments[ids[2]]
