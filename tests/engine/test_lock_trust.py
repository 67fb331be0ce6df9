# ruff: noqa: F401, F811  (fixtures imported from tests.engine.diskgen)
"""Nothing in Sendense releases a lock early (issue 10, items 7-10).

- Locking is a step of the backup and copy jobs: when the flag cannot be set
  (real chattr on a real ramfs, or a lock period no calendar holds) the job ends
  ``failed_unprotected`` with a critical event, the point stays a good backup and
  shows as unprotected, and the engine still refuses to delete it.
- Every lock period, grace period, count and age is bounded, refused with one
  sentence (engine and CLI), and no expiry overflows.
- A repository is never removed (not even with --force) or moved while a lock on
  it holds, and nothing deletes a holding lock row.
- A wall clock that jumps (forwards or backwards) releases nothing: the release
  compares it with the boot clock (CLOCK_BOOTTIME) and, after a reboot, needs a
  synchronised clock. Injected wall and boot clocks (FixedClock) drive these.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from engine.bounds import LOCK_DAYS, expiry_after
from engine.catalog.jobs import FINAL_STATES
from engine.catalog.models import Job, Repository
from engine.clock import BOOT_ID_FILE, SYSTEM_CLOCK, FixedClock, kernel_clock_synchronised
from engine.config import CapacitySettings, default_settings, load_settings
from engine.errors import ConfigError, SendenseError, ValidationError
from engine.events import Event
from engine.runtime import Engine
from engine.services.backup import DiskSource
from engine.services.chains import LockedError
from engine.services.immutability import ImmutabilityError
from engine.services.policies import PolicySpec
from engine.services.probe import RepositoryCheckError
from engine.tools import attrs
from sendense_tui.hints import cli_hint
from tests.engine.copy_worker import make_chain
from tests.engine.diskgen import MiB, SourceDisk, bk_engine, sha256_of

ROOT = Path(__file__).resolve().parents[2]


# -- helpers ----------------------------------------------------------------------------


def events_of(engine: Engine) -> list[Event]:
    seen: list[Event] = []
    engine.bus.subscribe(seen.append)
    return seen


def add_repo(engine: Engine, root: Path, name: str = "vault", **kw: Any) -> Repository:
    root.mkdir(parents=True, exist_ok=True)
    return engine.repository_store.add(
        name=name, kind="local", path=str(root), now=engine.clock.now(), **kw
    )


def wait_job(engine: Engine, job_id: int, timeout: float = 90.0) -> Job:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = engine.job_store.get(job_id)
        if job.state in FINAL_STATES:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still {engine.job_store.get(job_id).state}")


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def cli(
    *args: str, state_dir: Path, prefix: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENDENSE_")}
    env["SENDENSE_CAPACITY_MIN_FREE"] = "0"  # a small loop filesystem is not "full"
    return subprocess.run(
        [*prefix, sys.executable, "-m", "sendense_tui.cli", "--state-dir", str(state_dir), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
    )


def one_sentence(stderr: str) -> None:
    """What the operator sees: no traceback, a sentence (and at most its hint)."""
    assert "Traceback" not in stderr
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert 1 <= len(lines) <= 2, stderr


# -- item 7: the lock is a step of the job -----------------------------------------------


#: run the real CLI as a service would run under a systemd unit or a container whose
#: capability bounding set lacks CAP_LINUX_IMMUTABLE: the real chattr +i then fails
#: with "Operation not permitted" on a real ext4 filesystem
WITHOUT_IMMUTABLE_CAP = ("setpriv", "--bounding-set", "-linux_immutable")


def setup_state(state_dir: Path, build: Any) -> None:
    """Prepare a catalog in ``state_dir`` with the real engine, then close it."""
    engine = Engine(default_settings(state_dir)).open()
    try:
        build(engine)
    finally:
        engine.close()


def reopen(state_dir: Path) -> Engine:
    return Engine(default_settings(state_dir)).open()


@pytest.mark.root
def test_a_flag_that_cannot_be_set_ends_the_backup_failed_unprotected_and_the_point_stays(
    loop_fs: Any, tmp_path: Path
) -> None:
    """An immutable repository on ext4 (accepted when it was made immutable); the backup
    runs without CAP_LINUX_IMMUTABLE, so the real chattr fails. The backup is good and
    stays; the job ends failed_unprotected, the console and the CLI say so."""
    state_dir = tmp_path / "state"
    fs = loop_fs("ext4", 64)
    src = SourceDisk.create(tmp_path / "disk.raw", 8 * MiB, seed=11)
    setup_state(
        state_dir,
        lambda e: e.locks.configure_repository(add_repo(e, fs.mountpoint / "vault"), 30),
    )

    run = cli(
        "backup",
        "run",
        "--repo",
        "vault",
        "--vm",
        "web01",
        "--disk",
        f"sda={src.path}",
        state_dir=state_dir,
        prefix=WITHOUT_IMMUTABLE_CAP,
    )

    assert run.returncode == 1, run.stderr
    one_sentence(run.stderr)
    assert run.stderr.startswith(
        "sendense: job 1 (back up web01 (sda) to vault) wrote its files but could NOT "
        "protect them: web01: backed up, but NOT protected: sda #1: "
        "the immutable flag could not be set"
    ), run.stderr
    assert "Operation not permitted" in run.stderr, run.stderr
    jobs = json.loads(cli("jobs", "list", "--json", state_dir=state_dir).stdout)
    assert [j["state"] for j in jobs if j["kind"] == "backup"] == ["failed_unprotected"]
    assert "failed_unprotected" in cli("jobs", "list", state_dir=state_dir).stdout
    # the critical event names the point, the file and why
    events = json.loads(cli("events", "--level", "critical", "--json", state_dir=state_dir).stdout)
    [failed] = [e for e in events if e["kind"] == "immutability.lock_failed"]
    assert failed["message"].startswith("point #1 on vault is NOT protected: the immutable flag")
    # the point is complete, restores to the source's bytes, and shows as unprotected
    [chain] = json.loads(cli("chain", "show", "--json", state_dir=state_dir).stdout)
    [point] = chain["points"]
    assert point["state"] == "complete" and point["unprotected"] and point["lock_state"] == "failed"
    assert point["path"] in failed["message"]
    path = fs.mountpoint / "vault" / point["path"]
    assert not attrs.is_immutable(path) and sha256_of(path) == point["checksum"]
    restored = tmp_path / "restored.raw"
    assert cli("restore", "disk", "1", str(restored), state_dir=state_dir).returncode == 0
    assert sha256_of(restored) == src.sha256()
    assert "NOT PROTECTED" in cli("lock", "list", "--repo", "vault", state_dir=state_dir).stdout
    assert "NOT PROTECTED" in cli("chain", "show", state_dir=state_dir).stdout
    # the engine still holds the file for the lock's time
    engine = reopen(state_dir)
    try:
        with pytest.raises(LockedError, match="is locked until"):
            engine.chains.delete_point(1)
        [view] = engine.chains.overview()
        assert view.points[0].unprotected
    finally:
        engine.close()
    # nothing was written outside the repository (its layout and its chains)
    assert {p.name for p in fs.mountpoint.iterdir()} == {"vault", "lost+found"}
    # (.sendense/ is the layout's when the daemon or the console prepared the
    # repository; this one was recorded by the store and written by a CLI backup only)
    top = {p.split("/")[0] for p in files_under(fs.mountpoint / "vault")}
    assert "chains" in top and top <= {".sendense", "chains"}
    # once the cause is gone, the lock job sets the flag it could not set
    check = cli("lock", "check", state_dir=state_dir)
    assert check.returncode == 0 and "1 removed flag set again" in check.stdout
    assert attrs.is_immutable(path)
    [chain] = json.loads(cli("chain", "show", "--json", state_dir=state_dir).stdout)
    assert chain["points"][0]["lock_state"] == "active" and not chain["points"][0]["unprotected"]


@pytest.mark.root
def test_a_copy_whose_flag_cannot_be_set_ends_the_copy_job_failed_unprotected(
    loop_fs: Any, tmp_path: Path
) -> None:
    state_dir = tmp_path / "state"
    fs = loop_fs("ext4", 64)
    made: dict[str, Any] = {}

    def build(engine: Engine) -> None:
        main = add_repo(engine, tmp_path / "main", name="main")
        engine.locks.configure_repository(add_repo(engine, fs.mountpoint / "off", name="off"), 14)
        made["chain"] = make_chain(engine, main, size_mb=2, incrementals=1)
        engine.copies.add_rule(name="offsite", source="main", destination="off")

    setup_state(state_dir, build)
    run = cli("copy", "run", "offsite", state_dir=state_dir, prefix=WITHOUT_IMMUTABLE_CAP)

    assert run.returncode == 1, run.stderr
    one_sentence(run.stderr)
    assert (
        "wrote its files but could NOT protect them: 2 copied file(s) on off are NOT protected"
        in run.stderr
    ), run.stderr
    for rel in made["chain"].paths:
        landed = fs.mountpoint / "off" / rel
        assert sha256_of(landed) == sha256_of(tmp_path / "main" / rel)
        assert not attrs.is_immutable(landed)
    engine = reopen(state_dir)
    try:
        assert {c.state for c in engine.copies.list_copies()} == {"completed"}
        assert {lk.state for lk in engine.locks.list()} == {"failed"}
        assert [j.state for j in engine.job_store.list(kind="copy")] == ["failed_unprotected"]
        critical = engine.audit.query(min_level="critical", limit=10)
        assert len([e for e in critical if e.kind == "immutability.lock_failed"]) == 2
        # a lock that fails counts against the rule like any failure
        assert engine.copies.get_rule("offsite").failures_in_row == 1
    finally:
        engine.close()


@pytest.mark.root
def test_a_grace_period_still_leaves_a_new_backup_pending_then_locks_it(
    bk_engine: Engine, loop_fs: Any, tmp_path: Path, clock: FixedClock
) -> None:
    fs = loop_fs("ext4", 64)
    repo = add_repo(bk_engine, fs.mountpoint / "vault")
    bk_engine.locks.configure_repository(repo, 7, grace_hours=2)
    src = SourceDisk.create(tmp_path / "disk.raw", 8 * MiB, seed=12)
    run = bk_engine.backups.run(repo.id, "web01", [DiskSource("sda", str(src.path))])
    assert run.ok and not run.unprotected, run.sentence()
    [disk] = run.disks
    assert disk.locked_until == (clock.now() + timedelta(days=7, hours=2)).isoformat()
    path = fs.mountpoint / "vault" / str(disk.path)
    [lock] = bk_engine.locks.list()
    assert lock.state == "pending" and not attrs.is_immutable(path)
    clock.advance(timedelta(hours=2, seconds=1))
    assert bk_engine.locks.apply_pending() == [lock.id]
    assert attrs.is_immutable(path)


@pytest.mark.root
def test_a_policy_lock_period_is_applied_by_the_backup_step(
    bk_engine: Engine, loop_fs: Any, tmp_path: Path, clock: FixedClock
) -> None:
    """The policy's lock (longer than the repository's) is set by the backup job itself."""
    fs = loop_fs("ext4", 64)
    repo = add_repo(bk_engine, fs.mountpoint / "vault")
    bk_engine.locks.configure_repository(repo, 3)
    src = SourceDisk.create(tmp_path / "disk.raw", 8 * MiB, seed=13)
    run = bk_engine.backups.run(repo.id, "web01", [DiskSource("sda", str(src.path))], lock_days=45)
    assert run.ok and not run.unprotected
    [lock] = bk_engine.locks.list()
    assert lock.state == "active" and lock.expires_at == clock.now() + timedelta(days=45)
    assert attrs.is_immutable(fs.mountpoint / "vault" / str(run.disks[0].path))


@pytest.mark.root
def test_an_overflowing_lock_period_fails_the_backup_unprotected_with_one_sentence(
    loop_fs: Any, tmp_path: Path
) -> None:
    """The issue's example, through the real CLI: a catalog holding a lock period no
    calendar holds (written before periods were bounded). It used to print a
    traceback, report success and lock nothing."""
    state_dir = tmp_path / "state"
    fs = loop_fs("ext4", 64)
    src = SourceDisk.create(tmp_path / "disk.raw", 4 * MiB, seed=14)

    def build(engine: Engine) -> None:
        repo = add_repo(engine, fs.mountpoint / "vault")
        engine.repository_store.update(
            repo.id, engine.clock.now(), immutable=True, immutable_days=10**9
        )

    setup_state(state_dir, build)

    run = cli(
        "backup",
        "run",
        "--repo",
        "vault",
        "--vm",
        "web01",
        "--disk",
        f"sda={src.path}",
        state_dir=state_dir,
    )
    assert run.returncode == 1, run.stderr
    one_sentence(run.stderr)
    assert run.stderr.startswith(
        "sendense: job 1 (back up web01 (sda) to vault) wrote its files but could NOT "
        "protect them: web01: backed up"
    ), run.stderr
    assert "lock settings are refused (a lock period must be 1-36500 days" in run.stderr

    listed = cli("jobs", "list", state_dir=state_dir)
    assert listed.returncode == 0 and "failed_unprotected" in listed.stdout
    locks = cli("lock", "list", "--repo", "vault", state_dir=state_dir)
    assert "NOT PROTECTED" in locks.stdout
    # the period itself is refused with one sentence; the longest one is accepted
    bad = cli(
        "lock", "enable", "vault", "--days", "99999999999999999999", "--yes", state_dir=state_dir
    )
    # (the command line refuses it before the engine does: argparse's usage, then why)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "out of range: give 1 to 36500 days" in bad.stderr.splitlines()[-1]
    fixed = cli("lock", "enable", "vault", "--days", "36500", "--yes", state_dir=state_dir)
    assert fixed.returncode == 0, fixed.stderr
    # the lock job (here `lock check`) sets the flag it could not set before
    check = cli("lock", "check", state_dir=state_dir)
    assert check.returncode == 0 and "1 removed flag set again" in check.stdout
    [point] = list((fs.mountpoint / "vault" / "chains").rglob("*.qcow2"))
    assert attrs.is_immutable(point)
    again = cli(
        "backup",
        "run",
        "--repo",
        "vault",
        "--vm",
        "web01",
        "--disk",
        f"sda={src.path}",
        state_dir=state_dir,
    )
    assert again.returncode == 0, again.stderr
    assert len([p for p in point.parent.glob("*.qcow2") if attrs.is_immutable(p)]) == 2


# -- item 8: bounds -----------------------------------------------------------------------


@pytest.mark.parametrize("days", [0, -5, 36501, 10**20, "ten"])
def test_lock_periods_out_of_bounds_are_refused_with_one_sentence_and_nothing_written(
    engine: Engine, tmp_path: Path, days: Any
) -> None:
    repo = add_repo(engine, tmp_path / "vault")
    with pytest.raises(ValidationError) as refused:
        engine.locks.configure_repository(repo, days)
    assert refused.value.message.startswith("a lock period must be")
    assert "1-36500 days" in refused.value.message and refused.value.hint
    assert "\n" not in refused.value.message and len(refused.value.message) < 120
    assert not engine.repository_store.get(repo.id).immutable
    assert list((tmp_path / "vault").iterdir()) == []  # no canary, nothing


def test_grace_extend_and_every_count_option_are_bounded(
    engine: Engine, tmp_path: Path, clock: FixedClock
) -> None:
    repo = add_repo(engine, tmp_path / "vault")
    with pytest.raises(ValidationError, match="grace period must be 0-72 hours"):
        engine.locks.configure_repository(repo, 30, grace_hours=73)
    lock = engine.lock_store.add(
        repository_id=repo.id,
        path="c/0.qcow2",
        expires_at=clock.now() + timedelta(days=1),
        now=clock.now(),
    )
    for until in (clock.now() + timedelta(days=36501), datetime(9999, 12, 31, tzinfo=UTC)):
        with pytest.raises(ValidationError, match="can be extended to 2126-10-31 at the latest"):
            engine.locks.extend(lock.id, until)
    assert engine.lock_store.get(lock.id).expires_at == clock.now() + timedelta(days=1)

    spec = PolicySpec(
        name="nightly",
        schedule="0 1 * * *",
        target="vault",
        sources=[{"vm": "web01", "disks": [{"name": "sda", "source": "/dev/vg/web01"}]}],
        full_every=10**9,
        retention={"keep_last": 7, "daily": 10**12},
        immutable_days=36501,
    )
    problems = engine.policies.validate(spec)
    assert problems["full_every"] == "a new full every N backups must be 1-100000, not 1000000000"
    assert problems["retention"] == "retention daily must be 0-100000, not 1000000000000"
    assert problems["immutable_days"] == "a policy's lock period must be 0-36500 days, not 36501"
    with pytest.raises(ValidationError, match="was not saved"):
        engine.policies.add(spec)
    assert engine.policies.list() == []

    add_repo(engine, tmp_path / "offsite", name="offsite")
    with pytest.raises(ValidationError, match="maximum copy age must be 1-876000 hours"):
        engine.copies.add_rule(
            name="r", source="vault", destination="offsite", max_age_hours=10**12
        )
    with pytest.raises(ValidationError, match="latest points to copy must be 1-100000"):
        engine.copies.add_rule(
            name="r",
            source="vault",
            destination="offsite",
            selection="latest",
            latest_count=10**9,
        )
    assert engine.copies.list_rules() == []


def test_a_lock_period_out_of_bounds_at_lock_time_holds_the_file_and_says_why(
    engine: Engine, tmp_path: Path, clock: FixedClock
) -> None:
    """A period that reaches the lock step out of bounds (a policy row written around
    the engine) never overflows: the file is held as long as the engine holds anything,
    reported unprotected, and the lock job sets the flag later."""
    repo = add_repo(engine, tmp_path / "vault")
    seen = events_of(engine)
    outcome = engine.locks.lock_landed(repo, "c/0.qcow2", backup_id=None, days=10**9)
    assert outcome.failure == (
        "the lock period asked for is refused (a lock period must be 1-36500 days, not 1000000000)"
    )
    assert outcome.lock is not None and outcome.lock.state == "failed"
    assert outcome.until == expiry_after(clock.now(), days=LOCK_DAYS.high)
    [event] = [e for e in seen if e.kind == "immutability.lock_failed"]
    assert event.level == "critical" and event.message.startswith("0.qcow2 on vault is NOT")


def test_expiries_never_overflow_and_config_days_are_bounded(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="ends past the last date a calendar holds"):
        expiry_after(datetime(9990, 1, 1, tzinfo=UTC), days=LOCK_DAYS.high)
    with pytest.raises(ValidationError, match="ends past the last date"):
        expiry_after(datetime(2026, 1, 1, tzinfo=UTC), days=10**12)
    assert expiry_after(datetime(2026, 1, 1, tzinfo=UTC), days=1, hours=2) == datetime(
        2026, 1, 2, 2, tzinfo=UTC
    )
    env = {"SENDENSE_STATE_DIR": str(tmp_path), "SENDENSE_VERIFY_REVERIFY_DAYS": "999999999"}
    with pytest.raises(ConfigError, match=r"SENDENSE_VERIFY_REVERIFY_DAYS.*1-36500 days"):
        load_settings(env)


# -- item 9: nothing drops a lock early -------------------------------------------------


@pytest.mark.root
def test_forced_removal_is_refused_while_a_lock_holds_and_says_until_when(
    bk_engine: Engine, loop_fs: Any, tmp_path: Path, clock: FixedClock
) -> None:
    fs = loop_fs("ext4", 64)
    repo = add_repo(bk_engine, fs.mountpoint / "vault")
    bk_engine.locks.configure_repository(repo, 30)
    src = SourceDisk.create(tmp_path / "disk.raw", 4 * MiB, seed=15)
    run = bk_engine.backups.run(repo.id, "web01", [DiskSource("sda", str(src.path))])
    point = fs.mountpoint / "vault" / str(run.disks[0].path)
    before = {lk.id: lk.state for lk in bk_engine.locks.list()}

    with pytest.raises(RepositoryCheckError) as refused:
        bk_engine.repositories.remove("vault", force=True, actor="test")
    assert refused.value.message == (
        "repository vault cannot be removed: its files are held by 1 lock "
        "until 2026-12-24 09:00 UTC"
    )
    # the engine names the action; the CLI renders it with the command to run
    assert "sendense lock list --repo vault" in (cli_hint(refused.value) or "")
    assert "not even with --force" in (cli_hint(refused.value) or "")
    # nothing changed: the repository, its rows, its locks and the flag
    assert bk_engine.repository_store.get(repo.id).immutable
    assert {lk.id: lk.state for lk in bk_engine.locks.list()} == before
    assert bk_engine.chain_store.get_backup(int(run.disks[0].backup_id)).state == "complete"
    assert attrs.is_immutable(point)
    # moving the repository elsewhere would leave its locks behind: refused too
    spec = bk_engine.repositories.spec_of(repo)
    spec.path = str(tmp_path / "elsewhere")
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(RepositoryCheckError, match="cannot be moved to another location"):
        bk_engine.repositories.edit(repo, spec)
    assert bk_engine.repository_store.get(repo.id).path == str(fs.mountpoint / "vault")

    # expired but not yet released still holds (the flag is still set)
    clock.advance(timedelta(days=31))
    with pytest.raises(RepositoryCheckError, match="expired at 2026-12-24 09:00 UTC, not yet"):
        bk_engine.repositories.remove("vault", force=True)
    assert len(bk_engine.locks.release_expired().released) == 1
    bk_engine.repositories.remove("vault", force=True, actor="test")
    assert [r.name for r in bk_engine.repository_store.list()] == []
    assert point.exists()  # a forced removal forgets rows, never files


def test_locks_on_copies_elsewhere_block_the_source_repository_removal_too(
    engine: Engine, tmp_path: Path, clock: FixedClock
) -> None:
    """A forced removal forgets the copies of the repository's backups: a lock on such
    a copy (in another repository) would go with them. Rows only, on both catalogs;
    the catalog-level guard holds even when the service check is bypassed."""
    main = add_repo(engine, tmp_path / "main", name="main")
    offsite = add_repo(engine, tmp_path / "offsite", name="offsite")
    chain = engine.chain_store.add_full(
        repository_id=main.id,
        vm_name="web01",
        disk_name="sda",
        directory="c",
        now=clock.now(),
        backup={"path": "c/0.qcow2", "state": "complete", "point_time": clock.now()},
        retire=[],
    )[1]
    copy = engine.copy_store.create_copy(
        backup_id=chain.id,
        destination_repository_id=offsite.id,
        path="c/0.qcow2",
        size=1,
        now=clock.now(),
    )
    engine.lock_store.add(
        repository_id=offsite.id,
        path="c/0.qcow2",
        copy_id=copy.id,
        expires_at=clock.now() + timedelta(days=9),
        now=clock.now(),
    )
    with pytest.raises(RepositoryCheckError, match="until 2026-12-03 09:00 UTC"):
        engine.repositories.remove("main", force=True)
    with pytest.raises(ValidationError, match=r"still held by 1 lock;"):
        engine.repository_store.delete_with_contents(main.id)
    assert [r.name for r in engine.repository_store.list()] == ["main", "offsite"]
    assert len(engine.locks.list()) == 1 and engine.copy_store.get_copy(copy.id) is not None


def test_immutability_settings_are_never_shortened_by_an_edit(
    engine: Engine, tmp_path: Path, clock: FixedClock
) -> None:
    add_repo(engine, tmp_path / "vault")
    spec = PolicySpec(
        name="nightly",
        schedule="0 1 * * *",
        target="vault",
        sources=[{"vm": "web01", "disks": [{"name": "sda", "source": "/dev/vg/web01"}]}],
        full_every=1,
        immutable_days=0,
    )
    engine.policies.add(spec)
    engine.repository_store.update(
        engine.repositories.get("vault").id, clock.now(), immutable=True, immutable_days=30
    )
    with engine.catalog.session() as session:  # a lock period set earlier (rows only)
        from engine.catalog.models import Policy

        row = session.query(Policy).one()
        row.immutable_days = 20
    shorter = dataclasses.replace(engine.policies.spec_of("nightly"), immutable_days=5)
    with pytest.raises(ValidationError, match="locks its backups for 20 days; lock periods"):
        engine.policies.update("nightly", shorter)
    assert engine.policies.get("nightly").immutable_days == 20
    with pytest.raises(ImmutabilityError, match="cannot be turned off"):
        engine.locks.disable_repository("vault")


# -- item 10: a clock jump releases nothing -----------------------------------------------


def _lock(engine: Engine, clock: FixedClock, days: int = 10) -> int:
    repo = engine.repository_store.list()[0]
    return engine.lock_store.add(
        repository_id=repo.id,
        path=f"c/{days}.qcow2",  # rows only: no file, so release touches nothing on disk
        expires_at=clock.now() + timedelta(days=days),
        now=clock.now(),
    ).id


def _released(engine: Engine) -> list[int]:
    return [lk.id for lk in engine.locks.list(states=("released",))]


def test_a_forward_jump_the_boot_clock_does_not_confirm_releases_nothing(
    engine: Engine, tmp_path: Path, clock: FixedClock
) -> None:
    add_repo(engine, tmp_path / "vault")
    lock = _lock(engine, clock)
    start = clock.now()
    assert engine.locks.release_expired().clock.ok  # type: ignore[union-attr]
    clock.advance(timedelta(hours=1))  # an hour really passes...
    clock.set(clock.now() + timedelta(days=11))  # ...then `date -s` moves 11 days ahead
    seen = events_of(engine)

    report = engine.locks.release_expired(actor="test")

    assert report.released == [] and _released(engine) == []
    assert report.clock is not None and not report.clock.ok
    [suspect] = [e for e in seen if e.kind == "immutability.clock_suspect"]
    assert suspect.level == "critical"
    assert "by the boot clock only 1.0 hours passed since the lock check at 2026-11-24 09:00" in (
        suspect.message
    )
    assert "it jumped forwards by 11.0 days" in suspect.message
    # stamped with the time the boot clock vouches for, so it does not poison the catalog
    assert suspect.at == start + timedelta(hours=1)
    # every later check of this boot still compares with the last corroborated one
    clock.advance(timedelta(days=1))
    assert engine.locks.release_expired().released == []
    # the clock set right again: releases as soon as the lock has really expired
    clock.set(start + timedelta(days=1, hours=1))
    assert engine.locks.release_expired().clock.ok  # type: ignore[union-attr]
    assert _released(engine) == []
    clock.advance(timedelta(days=9))
    assert engine.locks.release_expired().released == [lock]


def test_time_that_really_passed_releases_what_expired(
    engine: Engine, tmp_path: Path, clock: FixedClock
) -> None:
    add_repo(engine, tmp_path / "vault")
    lock = _lock(engine, clock)
    engine.locks.release_expired()
    clock.advance(timedelta(days=10, seconds=1))  # wall and boot clock move together
    report = engine.locks.release_expired()
    assert report.clock is not None and report.clock.ok, report.clock
    assert report.released == [lock]


def test_across_a_reboot_only_a_synchronised_clock_releases(
    engine: Engine, tmp_path: Path, clock: FixedClock
) -> None:
    add_repo(engine, tmp_path / "vault")
    lock = _lock(engine, clock)
    engine.locks.release_expired()
    seen = events_of(engine)
    # down for 11 days; the clock comes up unsynchronised (a wrong RTC, no NTP yet)
    clock.reboot(synchronised=False, downtime=timedelta(days=11))
    report = engine.locks.release_expired()
    assert report.released == [] and not report.clock.ok  # type: ignore[union-attr]
    [suspect] = [e for e in seen if e.kind == "immutability.clock_suspect"]
    assert suspect.level == "critical" and "restarted since the last lock check" in (
        suspect.message
    )
    clock.advance(timedelta(minutes=10))  # same boot, still unsynchronised: still nothing
    assert engine.locks.release_expired().released == []
    clock.set_synchronised(True)  # NTP synchronised
    assert engine.locks.release_expired().released == [lock]


def test_across_a_reboot_a_synchronised_clock_releases_at_once(
    engine: Engine, tmp_path: Path, clock: FixedClock
) -> None:
    add_repo(engine, tmp_path / "vault")
    lock = _lock(engine, clock)
    engine.locks.release_expired()
    clock.reboot(synchronised=True, downtime=timedelta(days=11))
    assert engine.locks.release_expired().released == [lock]
    # the new boot's reading became the one later checks compare with
    clock.set(clock.now() + timedelta(days=3))
    assert not engine.locks.release_expired().clock.ok  # type: ignore[union-attr]


def test_the_first_check_a_catalog_sees_takes_the_clock_as_it_is(
    engine: Engine, tmp_path: Path, clock: FixedClock
) -> None:
    """Nothing to compare with: an unsynchronised clock is taken (and anchors)."""
    add_repo(engine, tmp_path / "vault")
    clock.set_synchronised(False)
    status = engine.locks.clock_status()
    assert status.ok and "first lock check" in status.message
    clock.set(clock.now() + timedelta(days=2))
    assert not engine.locks.clock_status().ok


def test_the_operator_can_vouch_for_a_corrected_clock_but_not_for_one_behind_the_catalog(
    engine: Engine, tmp_path: Path, clock: FixedClock
) -> None:
    add_repo(engine, tmp_path / "vault")
    lock = _lock(engine, clock)
    engine.locks.release_expired()
    clock.set(clock.now() + timedelta(days=11))  # the clock was 11 days behind: corrected
    assert engine.locks.release_expired().released == []
    seen = events_of(engine)
    assert engine.locks.trust_clock(actor="test").ok
    [trusted] = [e for e in seen if e.kind == "immutability.clock_trusted"]
    assert trusted.level == "warning" and trusted.actor == "test"
    assert engine.locks.release_expired().released == [lock]
    # a clock behind what the catalog holds cannot be vouched for
    clock.set(clock.now() - timedelta(days=30))
    with pytest.raises(ImmutabilityError, match="behind the catalog cannot be trusted"):
        engine.locks.trust_clock(actor="test")


def test_retention_waits_for_a_trusted_clock_too(
    engine: Engine, tmp_path: Path, clock: FixedClock
) -> None:
    """Retention deletes what no longer needs keeping: never on a jumped clock either."""
    add_repo(engine, tmp_path / "vault")
    policy = engine.policies.add(
        PolicySpec(
            name="nightly",
            schedule="0 1 * * *",
            target="vault",
            sources=[{"vm": "web01", "disks": [{"name": "sda", "source": "/dev/vg/web01"}]}],
        )
    )
    assert engine.locks.clock_status().ok
    clock.set(clock.now() + timedelta(days=40))
    with pytest.raises(
        SendenseError, match=r"retention not applied: .*jumped forwards by 40\.0 days"
    ):
        engine.retention.apply(policy)


def test_the_system_clock_reads_the_kernel_boot_clock_and_boot_id() -> None:
    first = SYSTEM_CLOCK.boot()
    kernel = time.clock_gettime(time.CLOCK_BOOTTIME)
    second = SYSTEM_CLOCK.boot()
    assert first.boot_id == second.boot_id == BOOT_ID_FILE.read_text().strip()
    assert first.seconds <= kernel <= second.seconds
    assert SYSTEM_CLOCK.synchronised() is kernel_clock_synchronised()
    assert isinstance(SYSTEM_CLOCK.synchronised(), bool)


def test_a_new_or_longer_lock_period_is_saved_only_when_confirmed(
    engine: Engine, tmp_path: Path, clock: FixedClock
) -> None:
    """The rule lives in the engine (the CLI's --yes, the API's confirm_lock and the
    console's confirm dialog all ask it): a lock period that starts or grows is
    refused with the space it would hold, and saved only when confirmed."""
    from engine.errors import LockNotConfirmed
    from sendense_api.problems import api_hint
    from sendense_tui.hints import cli_hint

    add_repo(engine, tmp_path / "vault")
    spec = PolicySpec(
        name="nightly",
        schedule="0 1 * * *",
        target="vault",
        sources=[{"vm": "web01", "disks": [{"name": "sda", "source": "/dev/vg/web01"}]}],
        full_every=1,
        immutable_days=14,
    )
    assert engine.policies.lock_cost(spec) is not None
    with pytest.raises(LockNotConfirmed) as refused:
        engine.policies.add(spec)
    error = refused.value
    assert error.days == 14 and "a 14-day lock cannot be shortened later" in error.message
    assert error.estimate.sentence() in error.message  # type: ignore[attr-defined]
    assert error.hint == "confirm the lock period to save"  # the console shows this
    assert cli_hint(error) == "add --yes to confirm"
    assert api_hint(error) == 'send it again with "confirm_lock": true to confirm'
    assert engine.policies.list() == []

    saved = engine.policies.add(spec, confirm_lock=True)
    same = engine.policies.spec_of("nightly")
    assert engine.policies.lock_cost(same, existing_id=saved.id) is None  # nothing new
    engine.policies.update("nightly", dataclasses.replace(same, schedule="0 2 * * *"))
    longer = dataclasses.replace(same, immutable_days=30)
    with pytest.raises(LockNotConfirmed, match="a 30-day lock"):
        engine.policies.update("nightly", longer)
    assert engine.policies.get("nightly").immutable_days == 14
    assert engine.policies.update("nightly", longer, confirm_lock=True).immutable_days == 30
