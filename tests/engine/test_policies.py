# ruff: noqa: F401, F811  (fixtures imported from tests.engine.diskgen)
"""Policies: validation (nothing saved half-way), retention preview/apply against the
catalog (both backends), and a real policy run with qemu-img (SQLite)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from engine.clock import FixedClock
from engine.errors import SendenseError, ValidationError
from engine.events import Event
from engine.runtime import Engine
from engine.services.policies import PolicySpec, next_runs
from tests.engine.diskgen import MiB, SourceDisk, bk_engine


def repo(engine: Engine, tmp_path: Path, name: str, **kw: Any) -> Any:
    root = tmp_path / name
    root.mkdir(exist_ok=True)
    return engine.repository_store.add(
        name=name, kind="local", path=str(root), now=engine.clock.now(), **kw
    )


def spec(**kw: Any) -> PolicySpec:
    base: dict[str, Any] = dict(
        name="web",
        schedule="0 2 * * *",
        target="main",
        sources=PolicySpec.sources_from(["web01:sda=/dev/vg/web01"]),
        full_every=7,
        retention={"keep_last": 7},
    )
    base.update(kw)
    return PolicySpec(**base)


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"schedule": "every day at 2"}, "schedule", "needs five fields"),
        ({"schedule": "0 25 * * *"}, "schedule", "not a valid cron expression"),
        ({"retention": {"keep_last": 0, "daily": 0}}, "retention", "keeps nothing"),
        ({"retention": {"hourly": 3}}, "retention", "unknown retention rule"),
        ({"target": "nowhere"}, "target", "does not exist (repositories: main, old)"),
        ({"target": "old"}, "target", "is disabled"),
        ({"sources": []}, "sources", "at least one VM"),
        ({"full_every": 0}, "full_every", "at least 1"),
        ({"copy_rules": ["missing"]}, "copy_rules", "does not exist"),
        ({"name": "bad name!"}, "name", "letters, digits"),
    ],
)
def test_bad_input_is_refused_with_a_clear_message_and_nothing_is_saved(
    engine: Engine, tmp_path: Path, change: dict[str, Any], field: str, message: str
) -> None:
    repo(engine, tmp_path, "main")
    repo(engine, tmp_path, "old", enabled=False, state="disabled")
    bad = spec(**change)
    problems = engine.policies.validate(bad)
    assert field in problems and message in problems[field]
    with pytest.raises(ValidationError, match="was not saved") as info:
        engine.policies.add(bad)
    assert message in info.value.message
    assert engine.policy_store.list() == []


def test_a_valid_policy_is_saved_with_its_next_run_and_copy_rules(
    engine: Engine, tmp_path: Path, clock: FixedClock
) -> None:
    main = repo(engine, tmp_path, "main")
    repo(engine, tmp_path, "offsite", offsite=True)
    engine.copies.add_rule(name="to-offsite", source="main", destination="offsite")
    policy = engine.policies.add(spec(copy_rules=["to-offsite"]), actor="test")
    assert policy.target_repository_id == main.id
    # added 2026-11-24 09:00 UTC: the next 02:00 is tomorrow
    assert policy.next_run_at == datetime(2026, 11, 25, 2, tzinfo=UTC)
    assert [r.name for r in engine.policies.copy_rules(policy)] == ["to-offsite"]
    assert engine.policies.get("web").retention["keep_last"] == 7
    with pytest.raises(ValidationError, match="already exists"):
        engine.policies.add(spec())


def test_an_edit_changes_schedule_retention_and_the_next_run_from_now(
    engine: Engine, tmp_path: Path, clock: FixedClock
) -> None:
    repo(engine, tmp_path, "main")
    repo(engine, tmp_path, "offsite", offsite=True)
    engine.copies.add_rule(name="to-offsite", source="main", destination="offsite")
    engine.policies.add(spec(copy_rules=["to-offsite"]))
    seen: list[Event] = []
    engine.bus.subscribe(seen.append)
    clock.advance(timedelta(days=3))  # 2026-11-27 09:00: missed runs are not caught up
    edited = engine.policies.spec_of("web")
    edited.schedule = "30 22 * * *"
    edited.retention = {"keep_last": 3, "daily": 5}
    edited.copy_rules = []
    policy = engine.policies.update("web", edited, actor="alice")
    assert policy.schedule == "30 22 * * *"
    assert policy.next_run_at == datetime(2026, 11, 27, 22, 30, tzinfo=UTC)
    stored = engine.policies.get("web")
    assert (stored.retention["keep_last"], stored.retention["daily"]) == (3, 5)
    assert engine.policies.copy_rules(stored) == []
    assert [(e.kind, e.actor) for e in seen if e.kind.startswith("policy.")] == [
        ("policy.updated", "alice")
    ]
    # the same schedule leaves the next run where it is
    clock.advance(timedelta(hours=1))
    again = engine.policies.update("web", engine.policies.spec_of("web"))
    assert again.next_run_at == datetime(2026, 11, 27, 22, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"schedule": "0 25 * * *"}, "schedule", "not a valid cron expression"),
        ({"target": "old"}, "target", "is disabled"),
        ({"target": "nowhere"}, "target", "does not exist"),
        ({"name": "other"}, "name", "already exists"),
    ],
)
def test_a_bad_edit_is_refused_and_the_stored_policy_is_unchanged(
    engine: Engine, tmp_path: Path, change: dict[str, Any], field: str, message: str
) -> None:
    repo(engine, tmp_path, "main")
    repo(engine, tmp_path, "old", enabled=False, state="disabled")
    before = engine.policies.add(spec())
    engine.policies.add(spec(name="other"))
    edited = engine.policies.spec_of("web")
    edited.retention = {"keep_last": 2}
    for key, value in change.items():
        setattr(edited, key, value)
    with pytest.raises(ValidationError, match="was not changed") as info:
        engine.policies.update("web", edited)
    assert f"{field}: " in info.value.message and message in info.value.message
    after = engine.policies.get(before.id)
    assert (after.name, after.schedule, after.target_repository_id, after.retention) == (
        before.name,
        before.schedule,
        before.target_repository_id,
        before.retention,
    )
    with pytest.raises(SendenseError, match="does not exist"):
        engine.policies.update("ghost", edited)


def test_next_five_runs_of_a_cron_schedule() -> None:
    runs = next_runs("30 1 * * 1-5", datetime(2026, 11, 27, 12, tzinfo=UTC), 5)  # a Friday
    assert [r.strftime("%a %d %H:%M") for r in runs] == [
        "Mon 30 01:30",
        "Tue 01 01:30",
        "Wed 02 01:30",
        "Thu 03 01:30",
        "Fri 04 01:30",
    ]


def test_an_immutable_target_needs_new_fulls_within_the_lock_period(
    engine: Engine, tmp_path: Path
) -> None:
    main = repo(engine, tmp_path, "main")
    engine.repository_store.update(main.id, engine.clock.now(), immutable=True, immutable_days=7)
    problems = engine.policies.validate(spec(full_every=30))
    assert "at least every 7 backups" in problems["full_every"]
    assert "full_every" not in engine.policies.validate(spec(full_every=7))
    # twice a day: a 7-day lock allows chains of 14
    assert "full_every" not in engine.policies.validate(
        spec(schedule="0 2,14 * * *", full_every=14)
    )


@pytest.mark.root
def test_a_policy_lock_on_tmpfs_is_refused_and_not_saved(
    engine: Engine, tmpfs: Path, clock: FixedClock
) -> None:
    engine.repository_store.add(name="main", kind="local", path=str(tmpfs), now=clock.now())
    with pytest.raises(ValidationError, match="tmpfs lives in memory"):
        engine.policies.add(spec(immutable_days=14))
    assert engine.policy_store.list() == []


# -- retention against the catalog -----------------------------------------------------


def seed_two_chains(engine: Engine, repo_id: int) -> list[list[int]]:
    """Chain 1 (retired): 3 daily points; chain 2: 3 more. Returns the ids per chain."""
    store = engine.chain_store
    t0 = datetime(2026, 11, 1, 2, tzinfo=UTC)
    out = []
    for c in range(2):
        when = t0 + timedelta(days=3 * c)
        chain, full = store.add_full(
            repository_id=repo_id,
            vm_name="web01",
            disk_name="sda",
            directory=f"web01/sda/c{c}",
            now=when,
            backup={
                "path": f"web01/sda/c{c}/0000.qcow2",
                "state": "complete",
                "point_time": when,
                "file_size": 10 * MiB,
            },
        )
        ids = [full.id]
        for i in (1, 2):
            row = store.add_incremental(
                chain_id=chain.id,
                parent_id=ids[-1],
                position=i,
                now=when + timedelta(days=i),
                backup={
                    "path": f"web01/sda/c{c}/{i:04d}.qcow2",
                    "state": "complete",
                    "point_time": when + timedelta(days=i),
                    "file_size": 1 * MiB,
                },
            )
            ids.append(row.id)
        out.append(ids)
    store.update_chain(store.get_backup(out[0][0]).chain_id, state="retired")
    return out


def test_preview_says_what_goes_and_which_rule_keeps_each_point(
    engine: Engine, tmp_path: Path
) -> None:
    main = repo(engine, tmp_path, "main")
    engine.policies.add(spec(retention={"keep_last": 2, "weekly": 1}))
    old, new = seed_two_chains(engine, main.id)
    plan = engine.policies.preview("web")
    by_id = {d.backup_id: d for d in plan.decisions}
    assert [by_id[i].action for i in old] == ["delete", "delete", "delete"]
    assert by_id[old[0]].reasons == ["no rule keeps any point of this chain"]
    # chain 2: newest two kept by rule; the full kept because they build on it (no merge
    # needed: it is the base), so nothing of chain 2 goes
    assert [by_id[i].action for i in new] == ["merge", "keep", "keep"]
    assert by_id[new[2]].reasons == ["last 2", "weekly 2026-W45"]
    assert by_id[new[1]].reasons == ["last 2"]
    assert [o.kind for o in plan.operations] == ["delete", "merge"]
    assert "removes 4" in plan.sentence()


def test_apply_keeps_points_whose_copies_are_missing_unless_forced_and_audits_force(
    engine: Engine, tmp_path: Path
) -> None:
    main = repo(engine, tmp_path, "main")
    repo(engine, tmp_path, "offsite", offsite=True)
    engine.copies.add_rule(name="to-offsite", source="main", destination="offsite")
    engine.policies.add(spec(retention={"keep_last": 3}))
    old, new = seed_two_chains(engine, main.id)
    plan = engine.policies.preview("web")
    blocked = {d.backup_id: d.blocked for d in plan.decisions if d.blocked}
    assert set(blocked) == set(old)
    assert "has no copy at offsite yet (copy rule to-offsite)" in blocked[old[0]]

    result = engine.policies.apply_retention("web", actor="test")
    assert result.done == [] and len(result.skipped) == 1
    assert len(engine.chain_store.backups(engine.chain_store.get_backup(old[0]).chain_id)) == 3

    seen: list[Event] = []
    engine.bus.subscribe(seen.append)
    result = engine.policies.apply_retention("web", force=True, actor="alice")
    assert [o.removes for o in result.done] == [old]
    assert all(engine.chain_store.get_backup(i).state == "deleted" for i in old)
    assert all(engine.chain_store.get_backup(i).state == "complete" for i in new)
    [forced] = [e for e in seen if e.kind == "retention.forced"]
    assert forced.level == "warning" and forced.actor == "alice"
    assert "no copy at offsite" in forced.message


def test_apply_never_removes_a_locked_point_even_when_forced(
    engine: Engine, tmp_path: Path, clock: FixedClock
) -> None:
    main = repo(engine, tmp_path, "main")
    engine.policies.add(spec(retention={"keep_last": 3}))
    old, _new = seed_two_chains(engine, main.id)
    engine.lock_store.add(
        repository_id=main.id,
        path=f"web01/sda/c0/{1:04d}.qcow2",
        expires_at=clock.now() + timedelta(days=30),
        now=clock.now(),
        backup_id=old[1],
    )
    result = engine.policies.apply_retention("web", force=True)
    assert result.done == []
    [(_op, why)] = result.skipped
    assert f"#{old[1]} locked by immutability until 2026-12-24 09:00 UTC" in why
    assert all(engine.chain_store.get_backup(i).state == "complete" for i in old)


def test_lock_space_estimate_comes_from_recent_backup_sizes(engine: Engine, tmp_path: Path) -> None:
    main = repo(engine, tmp_path, "main")
    seed_two_chains(engine, main.id)
    est = engine.policies.lock_space_estimate("main", ["web01"], 30, "0 2 * * *")
    # six points: 2 fulls of 10 MiB + 4 incrementals of 1 MiB -> 4 MiB a run, 1 a day
    assert est.bytes == 4 * MiB * 30
    assert "a 30-day lock holds about 120.0 MiB" in est.sentence()
    assert engine.policies.lock_space_estimate("main", ["db01"], 30, "0 2 * * *").bytes is None


# -- a real run -------------------------------------------------------------------------


def wait_job(engine: Engine, job_id: int, timeout: float = 90.0) -> Any:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = engine.job_store.get(job_id)
        if job.state in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish")


def test_a_policy_run_backs_up_applies_retention_and_refuses_a_second_run(
    bk_engine: Engine, tmp_path: Path, clock: FixedClock
) -> None:
    main = repo(bk_engine, tmp_path, "main")
    src = SourceDisk.create(tmp_path / "disk.raw", 16 * MiB, seed=11)
    bk_engine.policies.add(
        spec(
            sources=PolicySpec.sources_from([f"web01:sda={src.path}"]),
            retention={"keep_last": 2},
            full_every=10,
        )
    )
    job = bk_engine.policies.run_now("web")
    with pytest.raises(SendenseError, match="already running"):
        bk_engine.policies.run_now("web")
    bk_engine.start()
    for n in range(3):
        if n:
            clock.advance(timedelta(days=1))
            src.change([(n * MiB, 64 * 1024)])
            job = bk_engine.policies.run_now("web")
        final = wait_job(bk_engine, job.id)
        assert final.state == "succeeded", final.error
    live = [b for b, _c in bk_engine.chain_store.list_backups(repository_id=main.id)]
    assert len(live) == 2  # the oldest was merged into the next, which became the full
    assert [b.kind for b in live] == ["full", "incremental"]
    policy = bk_engine.policies.get("web")
    assert policy.last_result == "ok" and policy.last_run_at == clock.now()
    assert "removed 1 point" in final.result["retention"]
