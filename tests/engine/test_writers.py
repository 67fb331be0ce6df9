"""One writer per disk (``engine.writers``) and takeovers of jobs whose engine died.

Runs on both catalog backends: the lease is a compare-and-set in the catalog, so
real processes race for it here, and the job runner's queue, the sentence that
names the writer and the cleanup after a dead writer are checked on each.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from engine.catalog import Catalog
from engine.catalog.models import Repository
from engine.catalog.repositories import RepositoryStore
from engine.catalog.writers import DiskKey, WriterStore
from engine.clock import FixedClock
from engine.config import CapacitySettings, JobSettings
from engine.events import Event
from engine.jobs import JobContext
from engine.platform import pid_alive
from engine.runtime import Engine
from engine.services.backup import DiskSource
from engine.tools import procs, qemu_img
from engine.tools.nbd import start_qemu_nbd
from engine.writers import DiskBusy, WriterStuck
from tests.engine.diskgen import MiB, SourceDisk
from tests.engine.test_jobs import wait_for, wait_state
from tests.plugins.common import EngineFactory

REPO_ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("writers_worker.py")
SENTENCE = r"web01/sda is being written by job {job} \({what}, started 09:00 UTC by {actor}\)"


def add_repo(engine: Engine, tmp_path: Path, clock: FixedClock) -> Repository:
    root = tmp_path / "repo"
    root.mkdir(exist_ok=True)
    return engine.repository_store.add(name="r1", kind="local", path=str(root), now=clock.now())


def events(engine: Engine, *kinds: str) -> list[Event]:
    seen: list[Event] = []
    engine.bus.subscribe(seen.append, kinds=kinds or None)
    return seen


# -- the lease in the catalog --------------------------------------------------------


def test_take_is_compare_and_set_and_a_lapsed_lease_hands_over_its_partial_file(
    catalog: Catalog, clock: FixedClock, tmp_path: Path
) -> None:
    repo = RepositoryStore(catalog).add(name="r1", kind="local", path="/srv/r1", now=clock.now())
    store = WriterStore(catalog)
    key = DiskKey(repo.id, "web01", "sda")
    lease = timedelta(seconds=30)
    partial = "chains/web01/sda/20261124T090000Z/.0000-full-20261124T090000Z.qcow2.partial"

    def take(token: str, owner: str) -> tuple[bool, Any]:
        return store.take(
            key,
            token=token,
            operation="backup",
            job_id=None,
            owner=owner,
            actor="cli",
            now=clock.now(),
            lease=lease,
        )

    assert take("a" * 32, "engine-a") == (True, None)
    assert store.set_output(key, "a" * 32, partial)
    won, holder = take("b" * 32, "engine-b")
    assert not won and holder.owner == "engine-a" and holder.actor == "cli"
    assert store.renew(key, "a" * 32, clock.now(), lease)
    assert not store.renew(key, "b" * 32, clock.now(), lease)  # B never got it

    clock.advance(31)  # A's engine died: its lease lapsed
    won, previous = take("b" * 32, "engine-b")
    assert won and previous.owner == "engine-a" and previous.output == partial
    current = store.get(key)
    # the dead writer's file stays recorded until the new writer has removed it
    assert current.owner == "engine-b" and current.output == partial
    # A, back from the dead, can neither renew, record nor release what is B's now
    assert not store.renew(key, "a" * 32, clock.now(), lease)
    assert not store.set_output(key, "a" * 32, None)
    assert not store.release(key, "a" * 32)
    assert store.release(key, "b" * 32)
    assert store.get(key) is None
    assert take("c" * 32, "engine-c") == (True, None)


def test_processes_racing_for_one_disk_write_it_one_at_a_time(
    engine_factory: EngineFactory, clock: FixedClock, tmp_path: Path
) -> None:
    engine = engine_factory(clock=clock)  # creates and migrates the catalog
    repo = add_repo(engine, tmp_path, clock)
    out, go = tmp_path / "inside.txt", tmp_path / "go"
    owners = ("proc-a", "proc-b", "proc-c")
    rounds = 12
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                str(WORKER),
                engine.settings.db_url,
                str(repo.id),
                owner,
                str(out),
                str(go),
                str(rounds),
            ],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for owner in owners
    ]
    try:
        wait_for(
            lambda: (
                all(Path(f"{go}.ready-{o}").exists() for o in owners)
                or any(w.poll() is not None for w in workers)
            ),
            timeout=60,
            what="every worker to be ready",
        )
        go.touch()
        results = [w.communicate(timeout=120) for w in workers]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait(10)
    for w, (_out, err) in zip(workers, results, strict=True):
        assert w.returncode == 0, err
    lines = out.read_text().splitlines()
    assert len(lines) == 2 * rounds * len(owners)
    for enter, leave in zip(lines[::2], lines[1::2], strict=True):
        # never two writers inside at once: each enter is followed by its own leave
        assert enter.startswith("enter ") and leave == "leave " + enter.removeprefix("enter ")
    assert {line.split()[1] for line in lines} == set(owners)
    assert WriterStore(engine.catalog).get(DiskKey(repo.id, "web01", "sda")) is None


# -- the job runner's queue ----------------------------------------------------------


def test_a_job_whose_disk_is_busy_stays_queued_and_jobs_of_other_disks_run(
    engine_factory: EngineFactory, clock: FixedClock, tmp_path: Path
) -> None:
    engine = engine_factory(
        clock=clock, owner="engine-a", jobs=JobSettings(max_concurrent=2, lease_seconds=30)
    )
    engine.jobs.poll_interval = 0.02
    repo = add_repo(engine, tmp_path, clock)
    gate = threading.Event()
    ran: list[str] = []

    def write(ctx: JobContext) -> dict[str, str]:
        ran.append(ctx.job.title)
        if ctx.params.get("hold"):
            assert gate.wait(30)
        return {}

    engine.jobs.register(
        "write", write, writes=lambda job: [DiskKey(repo.id, job.params["vm"], "sda")]
    )
    waiting = events(engine, "job.waiting")
    engine.start()
    first = engine.jobs.submit("write", "first", {"vm": "web01", "hold": True}, actor="cli")
    wait_for(lambda: ran == ["first"], what="the first job to hold web01/sda")
    second = engine.jobs.submit("write", "second", {"vm": "web01"}, actor="console")
    third = engine.jobs.submit("write", "third", {"vm": "web01"}, actor="console")
    other = engine.jobs.submit("write", "other disk", {"vm": "db01"}, actor="cli")
    # two slots, one held by `first`: the queued web01 jobs do not take the other
    assert wait_state(engine, other.id, "succeeded").state == "succeeded"
    assert ran == ["first", "other disk"]
    queued = engine.job_store.get(second.id)
    assert queued.state == "queued"
    expected = SENTENCE.format(job=first.id, what="write", actor="cli")
    assert queued.message is not None
    assert re.fullmatch("waiting: " + expected, queued.message), queued.message
    assert any(e.job_id == second.id for e in waiting)
    holder = engine.writers.store.get(DiskKey(repo.id, "web01", "sda"))
    assert holder is not None and holder.job_id == first.id

    gate.set()
    for job in (first, second, third):
        assert wait_state(engine, job.id, "succeeded", "failed").state == "succeeded"
    assert ran == ["first", "other disk", "second", "third"]  # in the order they came
    assert engine.job_store.get(second.id).message is None  # the waiting note went with it
    assert engine.writers.store.get(DiskKey(repo.id, "web01", "sda")) is None


def test_delete_waits_for_a_backup_in_another_engine_or_refuses_naming_it(
    engine_factory: EngineFactory, clock: FixedClock, tmp_path: Path
) -> None:
    settings: dict[str, Any] = {
        "capacity": dataclasses.replace(CapacitySettings(), min_free_bytes=0),
        "jobs": JobSettings(lease_seconds=30, heartbeat_seconds=5),
    }
    a = engine_factory(clock=clock, owner="engine-a", **settings)
    b = engine_factory(clock=clock, owner="engine-b", **settings)
    repo = add_repo(a, tmp_path, clock)
    src = SourceDisk.create(tmp_path / "src.raw", 2 * MiB, seed=3)
    for _ in range(2):
        assert a.backups.run(repo.id, "web01", [DiskSource("sda", str(src.path))]).ok
        clock.advance(60)
    points = [b_.id for b_, _c in a.backups.list_points()]

    key = DiskKey(repo.id, "web01", "sda")
    with a.writers.hold(repo.id, "web01", "sda", operation="backup", actor="cli"):
        with pytest.raises(DiskBusy) as busy:
            b.chains.delete_point(points[-1], actor="cli", wait=False)
        assert str(busy.value) == (
            "web01/sda is being written by a backup (started 09:02 UTC by cli, engine engine-a)"
        )
        with pytest.raises(DiskBusy):
            b.chains.consolidate(a.chain_store.list_chains()[0].id, wait=False)
        assert len(b.backups.list_points()) == 2  # refused: nothing changed

        said = events(b, "writer.waiting")
        done = threading.Event()
        deleter = threading.Thread(
            target=lambda: (b.chains.delete_point(points[-1], actor="cli"), done.set())
        )
        deleter.start()
        wait_for(lambda: said, what="the delete to say it waits")
        assert "web01/sda is being written by a backup" in said[0].message
        assert not done.wait(0.3)  # still waiting while A holds the disk
    deleter.join(30)
    assert done.is_set()
    assert [p.id for p, _c in b.backups.list_points()] == points[:1]
    assert b.writers.store.get(key) is None


# -- takeover after a crash ----------------------------------------------------------


def test_a_job_whose_engine_died_is_taken_over_once_and_its_partial_file_removed(
    engine_factory: EngineFactory, clock: FixedClock, tmp_path: Path
) -> None:
    """Engines A and B hang without heartbeats (as if SIGKILLed) after writing a
    partial file; B takes A's job over and runs it again, C finds it abandoned twice
    and fails it. Each takeover removes the partial file its dead writer recorded."""
    dead = JobSettings(lease_seconds=5, heartbeat_seconds=3600)  # never renews
    releases: list[threading.Event] = []
    repo_holder: dict[str, Any] = {}

    def hang_after_partial(engine_name: str) -> Any:
        def handler(ctx: JobContext) -> dict[str, str]:
            repo = repo_holder["repo"]
            rel = f"chains/web01/sda/x/.0000-full-by-{engine_name}.qcow2.partial"
            engine: Engine = repo_holder[engine_name]
            engine.writers.writing(DiskKey(repo.id, "web01", "sda"), rel)
            path = Path(repo.path) / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"half a backup")
            release = threading.Event()
            releases.append(release)
            assert release.wait(30)
            return {"by": engine_name}

        return handler

    engines = {}
    for name in ("a", "b", "c"):
        engine = engine_factory(clock=clock, owner=f"engine-{name}", jobs=dead)
        engine.jobs.poll_interval = 0.02
        engines[name] = repo_holder[name] = engine
    repo = add_repo(engines["a"], tmp_path, clock)
    repo_holder["repo"] = repo

    def register(name: str) -> None:
        engines[name].jobs.register(
            "write",
            hang_after_partial(name),
            writes=lambda job: [DiskKey(repo.id, "web01", "sda")],
        )

    try:
        register("a")
        engines["a"].start()
        job = engines["a"].jobs.submit("write", "write web01/sda", actor="cli")
        partial_a = Path(repo.path) / "chains/web01/sda/x/.0000-full-by-a.qcow2.partial"
        wait_for(partial_a.exists, what="engine A to write its partial file")

        register("b")
        taken = events(engines["b"], "job.taken_over", "writer.taken_over")
        engines["b"].start()
        clock.advance(6)  # A's job and disk leases lapse
        engines["b"].jobs.wake()
        partial_b = Path(repo.path) / "chains/web01/sda/x/.0000-full-by-b.qcow2.partial"
        wait_for(partial_b.exists, what="engine B to run the job again")
        assert not partial_a.exists()  # removed before B ran it
        again = engines["b"].job_store.get(job.id)
        assert again.state == "running" and again.lease_owner == "engine-b"
        assert again.takeovers == 1
        kinds = {e.kind for e in taken}
        assert kinds == {"job.taken_over", "writer.taken_over"}
        assert any(
            "partial file .0000-full-by-a.qcow2.partial was removed" in e.message for e in taken
        )

        register("c")
        engines["c"].start()
        clock.advance(6)  # B died too
        engines["c"].jobs.wake()
        failed = wait_state(engines["c"], job.id, "failed")
        assert failed.takeovers == 2
        assert failed.error == (
            "its engine stopped while running it 2 times (last engine-b); it is not run "
            "again: retry it by hand if it is still needed"
        )
        assert not partial_b.exists()
        assert not (Path(repo.path) / "chains/web01/sda/x").exists()  # no empty leftover
        assert engines["c"].writers.store.get(DiskKey(repo.id, "web01", "sda")) is None
        assert len(releases) == 2  # A and B ran it; C did not
    finally:
        for release in releases:
            release.set()


@pytest.fixture
def dead_writer(
    engine_factory: EngineFactory, clock: FixedClock, tmp_path: Path
) -> Iterator[tuple[Engine, Engine, Repository, Path]]:
    """Engine A took web01/sda, recorded a partial QCOW2 it writes, and died (its lease
    lapsed); engine B is about to write the disk."""
    a = engine_factory(
        clock=clock, owner="engine-a", jobs=JobSettings(lease_seconds=5, heartbeat_seconds=3600)
    )
    b = engine_factory(clock=clock, owner="engine-b")
    repo = add_repo(a, tmp_path, clock)
    rel = "chains/web01/sda/20261124T090000Z/.0000-full-20261124T090000Z.qcow2.partial"
    partial = Path(repo.path) / rel
    partial.parent.mkdir(parents=True)
    with a.writers.hold(repo.id, "web01", "sda", operation="backup", actor="cli"):
        a.writers.writing(DiskKey(repo.id, "web01", "sda"), rel)
        qemu_img.create(partial, 4 * MiB)
        clock.advance(6)
        yield a, b, repo, partial


def test_takeover_stops_a_qemu_writer_left_running_then_removes_its_file(
    dead_writer: tuple[Engine, Engine, Repository, Path], tmp_path: Path
) -> None:
    _a, b, repo, partial = dead_writer
    # what a pre-PDEATHSIG engine left behind: qemu still has the partial open for writing
    orphan = start_qemu_nbd(
        partial, socket_path=tmp_path / "o.sock", read_only=False, fmt="qcow2", persistent=True
    )
    assert [h.pid for h in procs.holders(partial)] == [orphan.pid]
    assert qemu_img.write_locked(partial)
    seen = events(b, "writer.")
    with b.writers.hold(repo.id, "web01", "sda", operation="backup", actor="cli"):
        assert not pid_alive(orphan.pid)
        assert not partial.exists() and not partial.parent.exists()
    orphan.stop()
    messages = [e.message for e in seen]
    assert any(f"stopped qemu-nbd (pid {orphan.pid})" in m for m in messages), messages
    assert any("taken over from a backup, whose engine engine-a stopped" in m for m in messages)


def test_takeover_waits_while_another_program_holds_the_dead_writers_file(
    dead_writer: tuple[Engine, Engine, Repository, Path],
) -> None:
    _a, b, repo, partial = dead_writer
    reader = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; f = open(sys.argv[1], 'rb'); print('open', flush=True); "
            "time.sleep(60)",
            str(partial),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert reader.stdout is not None and reader.stdout.readline().strip() == "open"
        hold = b.writers.hold(repo.id, "web01", "sda", operation="backup", actor="cli")
        with pytest.raises(WriterStuck) as stuck, hold:
            pytest.fail("the disk was handed over while its partial file was open")
        program = Path(sys.executable).resolve().name
        assert f"is still open by {program} (pid {reader.pid})" in str(stuck.value)
        assert partial.exists() and pid_alive(reader.pid)  # nothing killed, nothing removed
        held = b.writers.store.get(DiskKey(repo.id, "web01", "sda"))
        assert held is not None and held.output is not None  # the next writer tries again
    finally:
        reader.kill()
        reader.wait(10)
    with b.writers.hold(repo.id, "web01", "sda", operation="backup", actor="cli"):
        assert not partial.exists()


def test_holds_nest_in_one_thread_and_are_released_once(
    engine_factory: EngineFactory, clock: FixedClock, tmp_path: Path
) -> None:
    engine = engine_factory(clock=clock, owner="engine-a")
    repo = add_repo(engine, tmp_path, clock)
    key = DiskKey(repo.id, "web01", "sda")
    with engine.writers.hold_all([key], operation="retention", actor="cli"):
        token = engine.writers.store.get(key).token  # type: ignore[union-attr]
        with engine.writers.hold(repo.id, "web01", "sda", operation="delete", actor="cli"):
            assert engine.writers.store.get(key).token == token  # type: ignore[union-attr]
        assert engine.writers.store.get(key) is not None  # the outer hold still has it
    assert engine.writers.store.get(key) is None


def test_a_lease_released_while_the_heartbeat_renews_it_is_not_called_taken_over(
    engine_factory: EngineFactory,
    clock: FixedClock,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The heartbeat renews a snapshot of the leases held; a retention pass releasing
    a disk meanwhile made it warn "taken over by another writer" for a disk nobody
    took (found at 1,000 disks). A lease really taken over still warns."""
    engine = engine_factory(clock=clock, owner="engine-a")
    repo = add_repo(engine, tmp_path, clock)
    writers = engine.writers
    store = writers.store
    real_renew = store.renew
    released: list[bool] = []

    def renew_after_the_work_released(key: DiskKey, *args: Any) -> bool:
        if not released:  # the work ends between the snapshot and this renewal
            released.append(True)
            (holding,) = writers._live.values()
            writers._release(holding)
        return real_renew(key, *args)

    with writers.hold(repo.id, "web01", "sda", operation="backup", actor="cli"):
        monkeypatch.setattr(store, "renew", renew_after_the_work_released)
        writers.renew_all()
    assert released and "taken over" not in caplog.text

    monkeypatch.setattr(store, "renew", real_renew)
    key = DiskKey(repo.id, "sdb-vm", "sdb")
    with writers.hold(repo.id, "sdb-vm", "sdb", operation="backup", actor="cli"):
        holder = store.get(key)
        assert holder is not None
        store.release(key, holder.token)  # as a takeover does: our token no longer holds it
        writers.renew_all()
    assert "sdb-vm/sdb: writer lease taken over by another writer" in caplog.text
