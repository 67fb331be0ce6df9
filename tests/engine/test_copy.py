"""Copy rules and copy jobs on real QCOW2 chains and real (loop-mounted) filesystems."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest

from engine.catalog.models import Backup, Job
from engine.copier import TokenBucket, copy_file
from engine.errors import SendenseError, ValidationError
from engine.events import Event
from engine.fsutil import partial_path
from engine.runtime import Engine
from sendense_tui.hints import cli_hint
from tests.engine.copy_worker import MiB, add_repo, make_chain, sha256

SQLITE_ONLY = pytest.mark.parametrize("catalog_url", ["sqlite"], indirect=True)
FINAL = ("succeeded", "failed", "cancelled", "paused")


ROOT = Path(__file__).resolve().parents[2]


def worker_argv(catalog_url: str, state_dir: Path, job_id: int) -> list[str]:
    """A copy worker process (tests.engine.copy_worker) that runs job ``job_id``."""
    return [
        sys.executable,
        "-m",
        "tests.engine.copy_worker",
        catalog_url,
        str(state_dir),
        str(job_id),
    ]


def wait_job(engine: Engine, job_id: int, states: tuple[str, ...] = FINAL, timeout=60.0) -> Job:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = engine.job_store.get(job_id)
        if job.state in states:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still {engine.job_store.get(job_id).state}")


def backing_chain(path: Path) -> list[dict]:
    out = subprocess.run(
        ["qemu-img", "info", "--output=json", "-U", "--backing-chain", str(path)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout)


# -- rules --------------------------------------------------------------------------


def test_rule_validation_gives_clear_messages(engine: Engine, tmp_path: Path) -> None:
    src = add_repo(engine, "main", tmp_path / "main")
    dst = add_repo(engine, "offsite", tmp_path / "offsite")
    add_repo(engine, "off", tmp_path / "off", enabled=False)
    gone = add_repo(engine, "gone", tmp_path / "gone")
    os.rmdir(gone.path)

    with pytest.raises(ValidationError, match="both 'main'"):
        engine.copies.add_rule(name="r", source="main", destination="main")
    with pytest.raises(ValidationError, match="destination repository off is disabled"):
        engine.copies.add_rule(name="r", source="main", destination="off")
    with pytest.raises(ValidationError, match=r"destination repository gone: .* does not exist"):
        engine.copies.add_rule(name="r", source="main", destination="gone")
    with pytest.raises(ValidationError, match="latest N"):
        engine.copies.add_rule(name="r", source="main", destination="offsite", selection="latest")
    with pytest.raises(ValidationError, match="not a cron expression"):
        engine.copies.add_rule(
            name="r", source="main", destination="offsite", mode="scheduled", schedule="nope"
        )
    with pytest.raises(ValidationError, match="locking copies needs a lock period") as refused:
        engine.copies.add_rule(name="r", source="main", destination="offsite", lock_copies=True)
    # the engine names the action; the CLI renders it with the command to run
    assert "sendense lock enable offsite" in (cli_hint(refused.value) or "")
    assert engine.copies.list_rules() == []

    rule = engine.copies.add_rule(
        name="nightly",
        source=src.id,
        destination="offsite",
        selection="latest",
        latest_count=2,
        mode="scheduled",
        schedule="0 2 * * *",
        bandwidth_limit=50 * MiB,
    )
    assert [r.name for r in engine.copies.list_rules()] == ["nightly"]
    assert rule.destination_repository_id == dst.id and not rule.lock_copies
    assert engine.copies.next_run(rule).hour == 2
    with pytest.raises(ValidationError, match="already exists"):
        engine.copies.add_rule(name="nightly", source="main", destination="offsite")
    engine.copies.remove_rule("nightly")
    assert engine.copies.list_rules() == []


def test_latest_selection_brings_the_bases_along(engine: Engine, tmp_path: Path) -> None:
    src = add_repo(engine, "main", tmp_path / "main")
    add_repo(engine, "offsite", tmp_path / "offsite")
    chain = make_chain(engine, src, size_mb=2, incrementals=3)
    rule = engine.copies.add_rule(
        name="last1", source="main", destination="offsite", selection="latest", latest_count=1
    )
    picked = engine.copies.select(rule)
    # the newest point is the third incremental: it needs every file below it, base first
    assert [b.id for b in picked] == chain.backup_ids
    fulls = engine.copies.add_rule(
        name="fulls", source="main", destination="offsite", selection="fulls"
    )
    assert [b.id for b in engine.copies.select(fulls)] == chain.backup_ids[:1]


# -- copying ------------------------------------------------------------------------


@pytest.mark.root
@SQLITE_ONLY
def test_copy_chain_between_two_loop_mounted_repositories(
    engine: Engine, loop_fs, tmp_path: Path
) -> None:
    a = loop_fs("ext4", 64)
    b = loop_fs("ext4", 64)
    src = add_repo(engine, "main", a.mountpoint / "repo")
    dst = add_repo(engine, "offsite", b.mountpoint / "repo")
    chain = make_chain(engine, src, size_mb=8, incrementals=2, work=tmp_path / "w")
    rule = engine.copies.add_rule(name="all", source="main", destination="offsite")
    seen: list[Event] = []
    engine.bus.subscribe(seen.append, ("job.progress", "copy."))
    engine.start()
    job = wait_job(engine, engine.copies.run_rule(rule.id).id)
    assert job.state == "succeeded", job.error
    assert job.bytes_done == job.bytes_total > 0

    for rel in chain.paths:
        assert sha256(Path(dst.path) / rel) == sha256(Path(src.path) / rel)
    top = Path(dst.path) / chain.paths[-1]
    images = backing_chain(top)
    assert len(images) == 3
    for image in images:  # every link resolves inside the destination
        assert image["filename"].startswith(str(dst.path))
    copies = engine.copies.list_copies(rule_id=rule.id)
    assert {c.state for c in copies} == {"completed"}
    assert {c.verify_state for c in copies} == {"ok"}  # verify_after is on by default
    assert not any(p.name.endswith(".partial") for p in Path(dst.path).rglob("*"))
    assert any(e.kind == "job.progress" and e.data["bytes_done"] for e in seen)
    assert sum(e.kind == "copy.completed" for e in seen) == 3

    # a second run has nothing to do
    again = wait_job(engine, engine.copies.run_rule(rule.id).id)
    assert again.state == "succeeded" and again.result["copied"] == 0
    assert engine.copies.protection(chain.backup_ids[0]) == {
        "copies": 2,
        "devices": 2,
        "offsite": False,
    }


@SQLITE_ONLY
def test_rotten_source_is_not_copied(engine: Engine, tmp_path: Path) -> None:
    src = add_repo(engine, "main", tmp_path / "main")
    dst = add_repo(engine, "offsite", tmp_path / "offsite")
    chain = make_chain(engine, src, size_mb=2, incrementals=1)
    full = Path(src.path) / chain.paths[0]
    with open(full, "r+b") as f:  # bit rot in the middle of the data
        f.seek(full.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0x10]))
    seen: list[Event] = []
    engine.bus.subscribe(seen.append, ("copy.",))
    engine.copies.add_rule(name="r", source="main", destination="offsite")
    engine.start()
    job = wait_job(engine, engine.copies.run_rule("r").id)
    assert job.state == "failed"
    assert "does not match its recorded checksum" in job.error
    assert "its base was not copied" in job.error  # the incremental waited for its base
    assert not (Path(dst.path) / chain.paths[0]).exists()
    assert not partial_path(Path(dst.path) / chain.paths[0]).exists()
    assert engine.copy_store.source_backup(chain.backup_ids[0]).state == "bad"
    assert any(e.kind == "copy.failed" and e.level == "critical" for e in seen)


def leak_a_cluster(image: Path) -> None:
    """A cluster counted in the refcounts but used by nothing, past the file's end: the
    image stays readable (headers, data) and ``qemu-img check`` reports a leak."""
    with open(image, "r+b") as f:
        head = f.read(104)
        cluster = 1 << struct.unpack(">I", head[20:24])[0]
        table = struct.unpack(">Q", head[48:56])[0]
        f.seek(table)
        block = struct.unpack(">Q", f.read(8))[0]
        index = -(-f.seek(0, os.SEEK_END) // cluster)  # the first cluster past the end
        f.seek(block + 2 * index)  # 16-bit refcounts (qemu-img's default)
        f.write(struct.pack(">H", 1))
        f.truncate((index + 1) * cluster)


@SQLITE_ONLY
def test_an_incremental_copied_while_its_base_is_checked_is_withdrawn_when_the_check_fails(
    engine: Engine, tmp_path: Path
) -> None:
    src = add_repo(engine, "main", tmp_path / "main")
    dst = add_repo(engine, "offsite", tmp_path / "offsite")
    chain = make_chain(engine, src, size_mb=8, incrementals=2)
    full = Path(src.path) / chain.paths[0]
    leak_a_cluster(full)  # recorded as it is now: the copy's checksum matches, its check fails
    with engine.catalog.session() as session:
        row = session.get(Backup, chain.backup_ids[0])
        assert row is not None
        row.checksum, row.file_size = sha256(full), full.stat().st_size
    first_inc = partial_path(Path(dst.path) / chain.paths[1])
    copied_meanwhile: list[bool] = []

    def on_check(event: Event) -> None:
        # the full's check failed: the job goes on copying the incremental on top of it
        # meanwhile (its partial appears while this check is not over)
        if event.kind != "verify.ok" and not copied_meanwhile:
            deadline = time.monotonic() + 10
            while not first_inc.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            copied_meanwhile.append(first_inc.exists())

    engine.bus.subscribe(on_check, ("verify.",))
    engine.copies.add_rule(name="r", source="main", destination="offsite")
    engine.start()
    job = wait_job(engine, engine.copies.run_rule("r").id)

    assert copied_meanwhile == [True]
    assert job.state == "failed"
    assert job.error.startswith("3 of 3 files could not be copied to offsite: ")
    assert f"{chain.paths[0]} at offsite failed verification after the copy" in job.error
    for rel in chain.paths[1:]:
        assert f"{rel}: its base was not copied, so it was skipped" in job.error
        # nothing of the incrementals is left at the destination or in the catalog
        assert not (Path(dst.path) / rel).exists()
        assert not partial_path(Path(dst.path) / rel).exists()
    [copy] = engine.copies.list_copies()
    assert copy.backup_id == chain.backup_ids[0] and copy.state == "failed"
    assert "verification after the copy" in (copy.error or "")


@pytest.mark.root
@SQLITE_ONLY
def test_enospc_mid_file_removes_partial_and_fails_clearly(
    engine: Engine, loop_fs, tmp_path: Path
) -> None:
    dst_fs = loop_fs("ext4", 32)
    src = add_repo(engine, "main", tmp_path / "main")
    # thresholds off: this test is about the filesystem filling up mid-file, not the gate
    dst = add_repo(
        engine, "small", dst_fs.mountpoint / "repo", full_percent=100.0, min_free_bytes=0
    )
    chain = make_chain(engine, src, size_mb=24, incrementals=0)
    st = os.statvfs(dst_fs.mountpoint)
    free = st.f_bavail * st.f_frsize
    dst_fs.fill("ballast", free - 8 * MiB)  # leaves 8 MiB for a 24 MiB file
    before = sha256(Path(src.path) / chain.paths[0])
    engine.copies.add_rule(name="r", source="main", destination="small")
    engine.start()
    job = wait_job(engine, engine.copies.run_rule("r").id)
    assert job.state == "failed"
    assert "no space left on repository small" in job.error
    assert "needs 24." in job.error and "source is untouched" in job.error
    target = Path(dst.path) / chain.paths[0]
    assert not target.exists() and not partial_path(target).exists()
    assert sha256(Path(src.path) / chain.paths[0]) == before
    [copy] = engine.copies.list_copies()
    assert copy.state == "failed" and "no space" in copy.error


@SQLITE_ONLY
def test_pause_keeps_the_partial_and_resume_finishes(engine: Engine, tmp_path: Path) -> None:
    src = add_repo(engine, "main", tmp_path / "main")
    dst = add_repo(engine, "offsite", tmp_path / "offsite")
    chain = make_chain(engine, src, size_mb=8, incrementals=0)
    rule = engine.copies.add_rule(
        name="slow", source="main", destination="offsite", bandwidth_limit=4 * MiB
    )
    events: list[Event] = []
    engine.bus.subscribe(events.append, ("copy.completed",))
    engine.jobs.progress_write_interval = 0.05
    engine.start()
    job = engine.copies.run_rule(rule.id)
    target = Path(dst.path) / chain.paths[0]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        part = partial_path(target)
        if part.exists() and part.stat().st_size >= 2 * MiB:
            break
        time.sleep(0.02)
    engine.jobs.pause(job.id)
    paused = wait_job(engine, job.id)
    assert paused.state == "paused"
    assert not target.exists() and partial_path(target).stat().st_size > 0
    [copy] = engine.copies.list_copies()
    assert copy.state == "pending"
    engine.jobs.resume(job.id)
    done = wait_job(engine, job.id, ("succeeded", "failed"))
    assert done.state == "succeeded", done.error
    assert sha256(target) == sha256(Path(src.path) / chain.paths[0])
    assert "resumed at" in events[-1].message


@SQLITE_ONLY
def test_retries_then_fails_and_a_rerun_by_hand_succeeds(engine: Engine, tmp_path: Path) -> None:
    src = add_repo(engine, "main", tmp_path / "main")
    add_repo(engine, "offsite", tmp_path / "offsite")
    chain = make_chain(engine, src, size_mb=1, incrementals=0)
    full = Path(src.path) / chain.paths[0]
    hidden = full.with_suffix(".away")
    full.rename(hidden)
    engine.copies.backoff_seconds = 0.01
    engine.copies.alert_after_failures = 2
    events: list[Event] = []
    engine.bus.subscribe(events.append, ("copy.",))
    alerts: list[Event] = []
    engine.bus.subscribe(alerts.append, ("alert.",))
    engine.copies.add_rule(name="r", source="main", destination="offsite")
    engine.start()
    for _ in range(2):
        job = wait_job(engine, engine.copies.run_rule("r").id)
        assert job.state == "failed" and "source file" in job.error
    [copy] = engine.copies.list_copies()
    assert copy.state == "failed" and copy.attempts == 2 * engine.copies.max_attempts
    assert any(e.kind == "copy.failed" and "after 3 attempts" in e.message for e in events)
    assert [a.kind for a in engine.copies.alerts()] == ["rule_failing"]
    # raised once, at the second failure in a row, without waiting for the scheduler
    assert [(e.kind, e.level) for e in alerts] == [("alert.rule_failing", "warning")]

    hidden.rename(full)
    job = wait_job(engine, engine.copies.rerun(copy.id).id)
    assert job.state == "succeeded", job.error
    assert engine.copy_store.get_copy(copy.id).state == "completed"
    assert engine.copies.get_rule("r").failures_in_row == 0
    assert [e.kind for e in alerts][-1] == "alert.rule_failing.cleared" and len(alerts) == 2
    with pytest.raises(ValidationError, match="only a failed copy"):
        engine.copies.rerun(copy.id)


def test_immediate_rule_follows_landed_backups(engine: Engine, tmp_path: Path) -> None:
    src = add_repo(engine, "main", tmp_path / "main")
    add_repo(engine, "offsite", tmp_path / "offsite")
    engine.copies.add_rule(name="now", source="main", destination="offsite", mode="immediate")
    engine.copies.add_rule(name="later", source="main", destination="offsite", mode="manual")
    for _ in range(2):  # a second landing while one job is queued adds no job
        engine.bus.publish(
            Event(kind="backup.completed", message="backup done", repository_id=src.id)
        )
    jobs = engine.job_store.list(kind="copy")
    assert len(jobs) == 1 and jobs[0].params == {"rule_id": engine.copies.get_rule("now").id}


def test_a_rule_is_edited_and_disabled_with_the_checks_of_a_new_one(
    engine: Engine, tmp_path: Path
) -> None:
    add_repo(engine, "main", tmp_path / "main")
    add_repo(engine, "offsite", tmp_path / "offsite")
    add_repo(engine, "usb", tmp_path / "usb")
    engine.copies.add_rule(name="other", source="main", destination="usb", mode="manual")
    rule = engine.copies.add_rule(name="now", source="main", destination="offsite")
    seen: list[Event] = []
    engine.bus.subscribe(seen.append)

    # refused as add_rule refuses, naming why; nothing changes
    with pytest.raises(ValidationError, match="both 'main'"):
        engine.copies.update_rule(rule.id, destination="main")
    with pytest.raises(ValidationError, match="named 'other' already exists"):
        engine.copies.update_rule(rule.id, name="other")
    with pytest.raises(ValidationError, match="not a cron expression"):
        engine.copies.update_rule(rule.id, mode="scheduled", schedule="nope")
    with pytest.raises(ValidationError, match="no setting 'enabled'"):
        engine.copies.update_rule(rule.id, enabled=False)
    unchanged = engine.copies.get_rule(rule.id)
    assert (unchanged.name, unchanged.destination_repository_id, unchanged.mode) == (
        "now",
        rule.destination_repository_id,
        "manual",
    )

    edited = engine.copies.update_rule(
        "now", destination="usb", mode="scheduled", schedule="0 3 * * *", actor="test"
    )
    assert edited.id == rule.id and edited.schedule == "0 3 * * *"
    assert edited.destination_repository_id == engine.repository_store.get("usb").id
    assert [e.kind for e in seen] == ["copy.rule_changed"]
    assert "now changed: main -> usb (scheduled)" in seen[0].message

    engine.copies.set_rule_enabled(rule.id, False, actor="test")
    assert engine.copies.get_rule(rule.id).enabled is False
    assert seen[-1].kind == "copy.rule_disabled"
    engine.copies.set_rule_enabled(rule.id, True)
    assert engine.copies.get_rule(rule.id).enabled is True


def test_destination_too_old_alert(engine: Engine, clock, tmp_path: Path) -> None:
    add_repo(engine, "main", tmp_path / "main")
    add_repo(engine, "offsite", tmp_path / "offsite")
    engine.copies.add_rule(name="r", source="main", destination="offsite", max_age_hours=24)
    assert engine.copies.alerts() == []  # a rule added just now is not blamed yet
    clock.advance(timedelta(hours=25))
    [alert] = engine.copies.alerts()
    assert alert.kind == "copy_too_old" and alert.level == "warning"
    assert "destination offsite (copy rule r) has no copy yet" in alert.message
    clock.advance(timedelta(hours=24))
    assert engine.copies.alerts()[0].level == "critical"


# -- the file copier ------------------------------------------------------------------


@pytest.mark.root
def test_clone_on_xfs_counts_as_same_device(loop_fs, tmp_path: Path) -> None:
    fs = loop_fs("xfs", 320)
    src = fs.mountpoint / "a" / "f.bin"
    src.parent.mkdir()
    src.write_bytes(os.urandom(3 * MiB))
    result = copy_file(src, fs.mountpoint / "b" / "f.bin", expected_checksum=sha256(src))
    assert result.cloned and result.checksum == sha256(src)
    assert (fs.mountpoint / "b" / "f.bin").read_bytes() == src.read_bytes()


def test_copy_file_resumes_from_a_partial_and_restarts_a_bad_one(tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(5 * MiB + 123))
    want = sha256(src)
    dst = tmp_path / "out" / "dst.bin"
    dst.parent.mkdir()
    part = partial_path(dst)
    part.write_bytes(src.read_bytes()[: 3 * MiB + 5])  # a crash left 3 MiB and a bit
    r = copy_file(src, dst, expected_checksum=want, chunk_size=MiB, try_clone=False)
    assert r.resumed_from == 3 * MiB and r.checksum == want and not part.exists()
    assert sha256(dst) == want

    dst.unlink()
    part.write_bytes(b"\0" * 2 * MiB)  # garbage in the partial: restart from zero
    r = copy_file(src, dst, expected_checksum=want, chunk_size=MiB, try_clone=False)
    assert r.resumed_from == 0 and sha256(dst) == want


def test_token_bucket_limits_the_rate() -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    bucket = TokenBucket(1000, burst=100, monotonic=lambda: now[0], sleep=sleep)
    for _ in range(10):
        bucket.take(100)
    assert now[0] == pytest.approx(0.9)  # 1000 bytes at 1000 B/s, less the burst


# -- crash -----------------------------------------------------------------------------


@SQLITE_ONLY
def test_sigkill_mid_file_then_another_engine_finishes(
    engine_factory, catalog_url: str, tmp_path: Path
) -> None:
    from engine.config import JobSettings

    setup = engine_factory(owner="setup")
    src = add_repo(setup, "main", tmp_path / "main")
    dst = add_repo(setup, "offsite", tmp_path / "offsite")
    chain = make_chain(setup, src, size_mb=12, incrementals=0)
    setup.copies.add_rule(
        name="slow", source="main", destination="offsite", bandwidth_limit=4 * MiB
    )
    job = setup.copies.run_rule("slow")
    target = Path(dst.path) / chain.paths[0]
    worker = subprocess.Popen(
        worker_argv(catalog_url, tmp_path / "w", job.id),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            part = partial_path(target)
            if part.exists() and part.stat().st_size >= 3 * MiB:
                break
            assert worker.poll() is None, worker.stderr.read().decode()
            time.sleep(0.02)
        else:
            raise AssertionError("the worker never started copying")
    finally:
        worker.kill()  # SIGKILL: no cleanup at all
        worker.wait(10)
    assert not target.exists()
    [copy] = setup.copies.list_copies()
    assert copy.state == "copying"  # not completed: no half copy recorded as whole
    assert setup.job_store.get(job.id).state == "running"

    resumer = engine_factory(
        owner="resumer", jobs=JobSettings(max_concurrent=1, lease_seconds=1, heartbeat_seconds=0.2)
    )
    resumer.copies.get_rule("slow")
    resumer.copy_store.update_rule(copy.rule_id, bandwidth_limit=None)  # finish quickly
    resumer.start()
    done = wait_job(resumer, job.id, ("succeeded", "failed"), timeout=60)
    assert done.state == "succeeded", done.error
    assert done.attempts == 2
    assert sha256(target) == sha256(Path(src.path) / chain.paths[0])
    assert resumer.copy_store.get_copy(copy.id).state == "completed"


def test_sigkill_while_a_file_is_checked_and_the_next_copied_is_resumed(
    engine_factory, catalog_url: str, tmp_path: Path
) -> None:
    from engine.config import JobSettings
    from engine.failpoints import ENV

    setup = engine_factory(owner="setup")
    src = add_repo(setup, "main", tmp_path / "main")
    dst = add_repo(setup, "offsite", tmp_path / "offsite")
    chain = make_chain(setup, src, size_mb=8, incrementals=2)
    setup.copies.add_rule(name="r", source="main", destination="offsite")
    job = setup.copies.run_rule("r")
    # killed in the full's check after the copy (its row written, the verification not
    # done), while the job copies the first incremental on top of it
    worker = subprocess.run(
        worker_argv(catalog_url, tmp_path / "w", job.id),
        cwd=ROOT,
        env={**os.environ, ENV: "copy.after_record"},
        capture_output=True,
        timeout=60,
    )
    assert worker.returncode == -9, worker.stderr.decode()
    assert not [c for c in setup.copies.list_copies() if c.state == "completed"]
    for rel in chain.paths[1:]:  # nothing published on top of the unchecked full
        assert not (Path(dst.path) / rel).exists()

    resumer = engine_factory(
        owner="resumer", jobs=JobSettings(max_concurrent=1, lease_seconds=1, heartbeat_seconds=0.2)
    )
    resumer.start()
    done = wait_job(resumer, job.id, ("succeeded", "failed"), timeout=60)
    assert done.state == "succeeded", done.error
    for rel in chain.paths:
        assert sha256(Path(dst.path) / rel) == sha256(Path(src.path) / rel)
    assert not any(p.name.endswith(".partial") for p in Path(dst.path).rglob("*"))
    copies = resumer.copies.list_copies()
    assert sorted(c.backup_id for c in copies if c.state == "completed") == chain.backup_ids
    assert {c.verify_state for c in copies if c.state == "completed"} == {"ok"}


@SQLITE_ONLY
def test_a_full_destination_takes_no_copy(engine: Engine, tmp_path: Path) -> None:
    src = add_repo(engine, "main", tmp_path / "main")
    add_repo(
        engine,
        "offsite",
        tmp_path / "offsite",
        full_percent=1.0,
        warning_percent=0.5,
        critical_percent=0.8,
    )
    make_chain(engine, src, size_mb=1, incrementals=0)
    engine.copies.add_rule(name="r", source="main", destination="offsite")
    engine.start()
    job = wait_job(engine, engine.copies.run_rule("r").id)
    assert job.state == "failed" and "repository offsite is full" in job.error
    assert engine.copies.list_copies() == []


# -- lock_copies -----------------------------------------------------------------------


@pytest.mark.root
def test_lock_copies_locks_what_lands_through_the_rule_on_ext4(
    engine: Engine, loop_fs, tmpfs: Path, tmp_path: Path
) -> None:
    """An immutable source (30 days) copied to a plain ext4 destination by a rule with
    lock_copies: each copy is chattr +i there and held as long as the original."""
    src = add_repo(engine, "main", loop_fs("ext4", 64).mountpoint / "repo")
    dst_fs = loop_fs("ext4", 64)
    add_repo(engine, "offsite", dst_fs.mountpoint / "repo")
    add_repo(engine, "scratch", tmpfs / "repo")
    engine.locks.configure_repository("main", 30)
    chain = make_chain(engine, engine.repository_store.get(src.id), size_mb=1, incrementals=1)
    with pytest.raises(SendenseError, match="tmpfs"):
        engine.copies.add_rule(name="t", source="main", destination="scratch", lock_copies=True)
    assert engine.copies.list_rules() == []
    engine.copies.add_rule(name="locked", source="main", destination="offsite", lock_copies=True)
    engine.start()
    job = wait_job(engine, engine.copies.run_rule("locked").id)
    assert job.state == "succeeded", job.error
    now = engine.clock.now()
    for rel in chain.paths:
        landed = dst_fs.mountpoint / "repo" / rel
        assert "i" in attrs_of(landed)
        with pytest.raises(PermissionError):
            landed.unlink()
        reason = engine.locks.why_locked(landed)
        assert reason is not None and "2026-12-24" in reason  # 30 days after 11-24
    locks = [lk for lk in engine.locks.list() if lk.copy_id is not None]
    assert len(locks) == 2 and {lk.expires_at for lk in locks} == {now + timedelta(days=30)}


def attrs_of(path: Path) -> str:
    out = subprocess.run(["lsattr", "-d", str(path)], capture_output=True, text=True, check=True)
    return out.stdout.split()[0]


def test_a_cancelled_copy_is_not_counted_as_a_backup_and_its_rule_is_not_ok(
    engine: Engine, tmp_path: Path
) -> None:
    from sendense_tui.screens.copy_rules import state_text

    src = add_repo(engine, "main", tmp_path / "main")
    dst = add_repo(engine, "offsite", tmp_path / "offsite")
    chain = make_chain(engine, src, size_mb=8, incrementals=0)
    rule = engine.copies.add_rule(
        name="slow", source="main", destination="offsite", bandwidth_limit=4 * MiB
    )
    engine.jobs.progress_write_interval = 0.05
    engine.start()
    job = engine.copies.run_rule(rule.id)
    target = Path(dst.path) / chain.paths[0]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        part = partial_path(target)
        if part.exists() and part.stat().st_size >= 2 * MiB:
            break
        time.sleep(0.02)
    engine.jobs.cancel(job.id)
    assert wait_job(engine, job.id).state == "cancelled"
    [copy] = engine.copies.list_copies()
    assert copy.state == "failed" and copy.size > 0  # the row remembers the planned size
    assert not target.exists() and not partial_path(target).exists()

    # nothing landed: no backup bytes and no backup counted at the destination
    assert engine.capacity_store.breakdown(dst.id, engine.clock.now()).used == 0
    assert engine.repository_store.backup_count(dst.id) == 0
    # the rule does not read "ok" after a run that copied nothing it promised
    [status] = engine.copies.status()
    assert status.last_run == "cancelled" and status.health == "cancelled"
    shown = state_text(status, [], engine.clock.now()).plain
    assert shown.startswith("last run cancelled") and "ok" not in shown

    # a run that finishes: "ok", and the copy counts as a backup of the destination
    done = wait_job(engine, engine.copies.run_rule(rule.id).id)
    assert done.state == "succeeded", done.error
    [status] = engine.copies.status()
    assert status.health == "ok"
    assert state_text(status, [], engine.clock.now()).plain.startswith("ok · 1 copy, newest")
    assert engine.repository_store.backup_count(dst.id) == 1
    assert engine.repository_store.backup_count(src.id) == 1
    assert engine.capacity_store.breakdown(dst.id, engine.clock.now()).used == target.stat().st_size
