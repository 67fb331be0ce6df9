"""The failpoint kill matrix: the real ``sendense`` command killed with SIGKILL at every
named failpoint (engine.failpoints.POINTS), then a restart, then the promises checked.

Each row names a failpoint and the scenario that reaches it. A scenario builds its
starting state with an in-process engine on a state directory (small images: a few
MiB), then runs one ``sendense`` command in a subprocess with
``SENDENSE_FAILPOINT=<name>``, which must die by SIGKILL (returncode -9). Then:

1. ``sendense chain check`` (a fresh process: engine start, which settles interrupted
   merges) exits 0: every chain is consistent, at worst with orphan files it names;
2. an engine with a short job lease starts and runs until no job is queued or running
   (a job whose process died is taken over: re-run or failed, either is fine here);
3. no job is left ``running``; no merge intent is left open; every chain checks OK
   deep (every recorded file matches its sha256), and every file in a chain directory
   is a recorded point or an orphan that the check names; every copy recorded as done
   matches its checksum and verifies; every recorded point restores to the bytes its
   source had at that point's moment (the test kept the sha256 of the source at each
   backup; a point made after the kill is of the source as it is now).

To cover a new failpoint add one line to ROWS (a scenario may be reused or added);
``test_every_failpoint_is_in_the_matrix`` fails until every name in POINTS has a row.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from engine.catalog.models import ImmutabilityLock
from engine.config import CapacitySettings, JobSettings, Settings, default_settings
from engine.failpoints import POINTS
from engine.runtime import Engine
from engine.services import imports
from engine.services.backup import DiskSource
from engine.services.policies import PolicySpec
from engine.tools import attrs
from tests.engine.diskgen import MiB, SourceDisk, sha256_of

ROOT = Path(__file__).resolve().parents[2]
#: a lapsed job is taken over within a few seconds
LEASE_SECONDS = 2.0
SETTLE_TIMEOUT = 120.0


@dataclass
class World:
    """One row's state directory, repositories, source disk and what each point holds."""

    tmp: Path
    state_dir: Path
    config: Path
    disk: SourceDisk
    #: backup id -> sha256 of the source when that point was taken
    moments: dict[int, str] = field(default_factory=dict)
    #: what the killed command needs (chain id, point id, rule name, ...)
    refs: dict[str, Any] = field(default_factory=dict)
    #: a MariaDB catalog instead of SQLite in the state directory
    db_url: str | None = None

    def settings(self) -> Settings:
        base = default_settings(self.state_dir)
        return dataclasses.replace(
            base,
            db_url=self.db_url or base.db_url,
            capacity=dataclasses.replace(CapacitySettings(), min_free_bytes=0),
            jobs=JobSettings(max_concurrent=2, lease_seconds=LEASE_SECONDS, heartbeat_seconds=0.5),
        )

    def engine(self) -> Engine:
        return Engine(self.settings()).open()

    def repo_dir(self, name: str) -> Path:
        path = self.tmp / name
        path.mkdir(exist_ok=True)
        return path

    def backup(self, engine: Engine, repo: str = "main", vm: str = "vm1", **kw: Any) -> int:
        run = engine.backups.run(repo, vm, [DiskSource("sda", str(self.disk.path))], **kw)
        assert run.ok, run.sentence()
        bid = run.disks[0].backup_id
        assert bid is not None
        self.moments[bid] = self.disk.sha256()
        return bid

    def change(self, n: int) -> None:
        self.disk.change([((n % 3) * MiB + 4096 * n, 256 * 1024)])

    def sendense(
        self, *args: str, failpoint: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SENDENSE_")}
        env["SENDENSE_CONFIG"] = str(self.config)
        if failpoint:
            env["SENDENSE_FAILPOINT"] = failpoint
        catalog = ["--db-url", self.db_url] if self.db_url else []
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "sendense_tui.cli",
                "--state-dir",
                str(self.state_dir),
                *catalog,
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=180,
            env=env,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
        )


# -- scenarios: a starting state and the command that is killed --------------------------

Setup = Callable[[World, Engine], None]
Command = Callable[[World], list[str]]


def chain_of_three(world: World, engine: Engine) -> None:
    """main: vm1/sda full + 2 incrementals."""
    engine.repository_store.add(
        name="main", kind="local", path=str(world.repo_dir("main")), now=engine.clock.now()
    )
    ids = []
    for n in range(3):
        if n:
            world.change(n)
        ids.append(world.backup(engine))
    world.refs["ids"] = ids
    world.refs["chain"] = engine.chain_store.get_backup(ids[0]).chain_id


def then_change_source(world: World, engine: Engine) -> None:
    chain_of_three(world, engine)
    world.change(7)  # the killed backup reads this


def with_offsite_rule(world: World, engine: Engine) -> None:
    chain_of_three(world, engine)
    engine.repository_store.add(
        name="offsite", kind="local", path=str(world.repo_dir("offsite")), now=engine.clock.now()
    )
    engine.copies.add_rule(name="out", source="main", destination="offsite")


def with_queued_consolidation(world: World, engine: Engine) -> None:
    chain_of_three(world, engine)
    engine.chains.submit_consolidate(world.refs["chain"], actor="test")


def two_chains_and_policy(world: World, engine: Engine) -> None:
    """vm1/sda: an old chain (full + 1) and a current one (full + 2); a policy keeping the
    last two points: the old chain is deleted, the current full merged into the next."""
    engine.repository_store.add(
        name="main", kind="local", path=str(world.repo_dir("main")), now=engine.clock.now()
    )
    world.backup(engine)
    world.change(1)
    world.backup(engine)
    world.change(2)
    world.backup(engine, mode="full")
    for n in (3, 4):
        world.change(n)
        world.backup(engine)
    engine.policies.add(
        PolicySpec(
            name="keep2",
            schedule="0 2 * * *",
            target="main",
            sources=PolicySpec.sources_from([f"vm1:sda={world.disk.path}"]),
            full_every=7,
            retention={"keep_last": 2},
        )
    )


def locked_and_expired(world: World, engine: Engine) -> None:
    """An immutable repository (ext4 on a loop device) holding a chain whose locks have
    expired: the release clears the flags (the expiry is moved back in the catalog)."""
    root = world.refs["immutable_root"]
    repo = engine.repository_store.add(
        name="main", kind="local", path=str(root), now=engine.clock.now()
    )
    engine.locks.configure_repository(repo.id, 1)
    world.backup(engine)
    world.change(1)
    world.backup(engine)
    past = engine.clock.now() - timedelta(hours=1)
    with engine.catalog.session() as session:
        locks = list(session.scalars(select(ImmutabilityLock)))
        assert len(locks) == 2, "every landed point is locked"
        for lock in locks:
            lock.expires_at = past


def in_another_catalog(world: World, engine: Engine) -> None:
    """vm1/sda full + 2 incrementals written by another appliance (its own catalog) into
    a repository this catalog has never seen: `repo import` reads it back. What each
    point holds is kept by file name (the import gives the points new ids)."""
    other_state = world.tmp / "other-appliance"
    other = Engine(
        dataclasses.replace(
            world.settings(),
            state_dir=other_state,
            db_url=default_settings(other_state).db_url,
            mount_root=other_state / "mounts",
        )
    ).open()
    try:
        chain_of_three(world, other)
        world.refs["by_file"] = {
            Path(other.chain_store.get_backup(i).path).name: world.moments[i]
            for i in world.refs["ids"]
        }
    finally:
        other.close()
    world.moments.clear()


@dataclass(frozen=True)
class Scenario:
    setup: Setup
    command: Command
    needs_root: bool = False


SCENARIOS: dict[str, Scenario] = {
    "backup": Scenario(
        then_change_source,
        lambda w: [
            "backup",
            "run",
            "--repo",
            "main",
            "--vm",
            "vm1",
            "--disk",
            f"sda={w.disk.path}",
        ],
    ),
    "copy": Scenario(with_offsite_rule, lambda w: ["copy", "run", "out"]),
    "consolidate": Scenario(
        chain_of_three, lambda w: ["chain", "consolidate", str(w.refs["chain"])]
    ),
    # the same merge as a job, run by the daemon (the console submits it this way)
    "consolidate job": Scenario(with_queued_consolidation, lambda w: ["daemon"]),
    "retention": Scenario(
        two_chains_and_policy, lambda w: ["policy", "preview", "keep2", "--apply"]
    ),
    "delete": Scenario(
        chain_of_three, lambda w: ["chain", "delete", str(w.refs["ids"][1]), "--yes"]
    ),
    "lock release": Scenario(locked_and_expired, lambda w: ["lock", "release-expired"], True),
    "import": Scenario(
        in_another_catalog,
        lambda w: ["repo", "import", "main", "--path", str(w.repo_dir("main"))],
    ),
}


@dataclass(frozen=True)
class Row:
    failpoint: str
    scenario: str


ROWS: list[Row] = [
    Row("backup.after_write", "backup"),
    Row("backup.after_seal", "backup"),
    Row("backup.after_publish", "backup"),
    Row("backup.after_record", "backup"),
    Row("copy.after_write", "copy"),
    Row("copy.after_rename", "copy"),
    Row("copy.after_record", "copy"),
    Row("consolidate.after_intent", "consolidate"),
    Row("consolidate.after_convert", "consolidate"),
    Row("consolidate.after_replace", "consolidate"),
    Row("consolidate.after_record", "consolidate"),
    Row("consolidate.after_unlink", "consolidate"),
    Row("consolidate.after_replace", "consolidate job"),
    Row("consolidate.after_record", "consolidate job"),
    Row("delete.after_record", "delete"),
    Row("retention.after_delete", "retention"),
    Row("retention.after_merge", "retention"),
    Row("consolidate.after_replace", "retention"),
    Row("delete.after_record", "retention"),
    Row("locks.after_unlock", "lock release"),
    Row("locks.after_release", "lock release"),
    Row("import.chain_recorded", "import"),
    Row("import.locks_recorded", "import"),
]


#: rows also run on a throwaway MariaDB catalog (the intent's transactions and
#: compare-and-sets, a job's lease on another backend)
MARIADB_ROWS: list[Row] = [
    Row("consolidate.after_replace", "consolidate"),
    Row("consolidate.after_record", "consolidate job"),
    Row("backup.after_record", "backup"),
]


def test_every_failpoint_is_in_the_matrix() -> None:
    covered = {row.failpoint for row in ROWS}
    assert [p for p in POINTS if p not in covered] == []
    assert [r.failpoint for r in ROWS + MARIADB_ROWS if r.failpoint not in POINTS] == []
    assert {r.scenario for r in ROWS + MARIADB_ROWS} <= set(SCENARIOS)


# -- the test ----------------------------------------------------------------------------


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    config = tmp_path / "sendense.toml"
    config.write_text(
        "[capacity]\nmin_free = 0\n\n"
        f"[jobs]\nlease_seconds = {LEASE_SECONDS}\nheartbeat_seconds = 0.5\n"
    )
    disk = SourceDisk.create(tmp_path / "source.raw", 4 * MiB, seed=5)
    yield World(tmp=tmp_path, state_dir=tmp_path / "state", config=config, disk=disk)


def _ids(rows: list[Row]) -> list[str]:
    return [f"{r.failpoint}@{r.scenario.replace(' ', '-')}" for r in rows]


@pytest.mark.parametrize("row", ROWS, ids=_ids(ROWS))
def test_sigkill_at_a_failpoint_loses_nothing(
    world: World, row: Row, request: pytest.FixtureRequest
) -> None:
    kill_restart_and_check(world, row, request)


@pytest.mark.parametrize("row", MARIADB_ROWS, ids=_ids(MARIADB_ROWS))
def test_sigkill_at_a_failpoint_loses_nothing_on_mariadb(
    world: World, row: Row, request: pytest.FixtureRequest, mariadb_url: str
) -> None:
    world.db_url = mariadb_url
    kill_restart_and_check(world, row, request)


def kill_restart_and_check(world: World, row: Row, request: pytest.FixtureRequest) -> None:
    scenario = SCENARIOS[row.scenario]
    if scenario.needs_root:
        loop_fs = request.getfixturevalue("loop_fs")
        world.refs["immutable_root"] = loop_fs("ext4", 64).mountpoint
    engine = world.engine()
    try:
        scenario.setup(world, engine)
    finally:
        engine.close()

    killed = world.sendense(*scenario.command(world), failpoint=row.failpoint)
    assert killed.returncode == -9, (
        f"`sendense {' '.join(scenario.command(world))}` did not reach {row.failpoint}: "
        f"exit {killed.returncode}\n{killed.stdout}\n{killed.stderr}"
    )

    # a fresh process right after the crash: consistent chains, at worst named orphans
    checked = world.sendense("chain", "check", "--json")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    for report in json.loads(checked.stdout):
        assert {f["kind"] for f in report["findings"]} <= {"orphan"}, report

    engine = world.engine().start()
    try:
        settle_jobs(engine)
        assert_nothing_lost(world, engine)
        assert_fix_cleans_up(world, engine, request)
        if row.scenario == "lock release":
            assert_locks_agree_with_flags(engine)
        if row.scenario == "consolidate job":
            # the merge asked for happened once: the full was merged into the next point
            ids = world.refs["ids"]
            assert [b.id for b in engine.chain_store.backups(world.refs["chain"])] == ids[1:]
    finally:
        engine.close()


def settle_jobs(engine: Engine) -> None:
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while time.monotonic() < deadline:
        active = engine.job_store.list(states=("queued", "running"))
        if not active:
            return
        time.sleep(0.2)
    raise AssertionError(f"jobs still active after the restart: {active}")


def assert_nothing_lost(world: World, engine: Engine) -> None:
    assert engine.job_store.list(states=("running",)) == []
    assert engine.chain_store.open_intents() == []
    now_sha = world.disk.sha256()
    repos = {r.id: r for r in engine.repository_store.list()}
    for report in engine.chains.check_all(deep=True):
        assert report.ok, report.sentence()
        assert {f.kind for f in report.findings} <= {"orphan"}, report.sentence()
        chain = engine.chain_store.get_chain(report.chain_id)
        root = Path(repos[chain.repository_id].path)
        directory = root / chain.directory
        points = engine.chain_store.backups(chain.id)
        recorded = {Path(b.path).name for b in points}
        # each point carries its manifest (engine.services.manifests)
        # and its digest table (engine.digests)
        recorded |= {f"{name}{side}" for name in recorded for side in (".json", ".digests")}
        named = {Path(f.path).name for f in report.findings if f.path}
        # an orphan point's manifest and digest table
        named |= {f"{name}{side}" for name in named for side in (".json", ".digests")}
        if directory.is_dir():
            on_disk = {p.name for p in directory.iterdir()}
            assert on_disk <= recorded | named, f"unnamed files in {directory}"
        for b in points:
            path = root / b.path
            assert path.stat().st_size == b.file_size and sha256_of(path) == b.checksum
            target = world.tmp / f"restored-{b.id}.raw"
            engine.restores.restore(b.id, str(target), overwrite=True)
            imported = world.refs.get("by_file", {}).get(Path(b.path).name)
            want = imported or world.moments.get(b.id, now_sha)
            assert sha256_of(target) == want, f"point #{b.id} does not restore to its moment"
            target.unlink()
    done = engine.copy_store.list_copies(states=("completed",), limit=10_000)
    for copy in done:
        path = Path(repos[copy.destination_repository_id].path) / copy.path
        assert sha256_of(path) == copy.checksum, f"copy {copy.id} is not what was recorded"
    if done:
        results = engine.verifier.verify_targets(
            [t for t in engine.verifier.targets("all") if t.copy is not None]
        )
        assert {r.outcome for r in results} == {"ok"}, [r.as_dict() for r in results]


def deleted_points(engine: Engine) -> set[int]:
    return {
        b.id
        for c in engine.chain_store.list_chains()
        for b in engine.chain_store.backups(c.id, include_deleted=True)
        if b.state == "deleted"
    }


def assert_fix_cleans_up(world: World, engine: Engine, request: pytest.FixtureRequest) -> None:
    """`chain check --fix` cleans up what is safe to: a stale partial is removed, a
    finished orphan that extends its chain imported (and it restores to its moment),
    the file of a point recorded as deleted removed; a deleted point never comes back.
    What it leaves (a finished point whose place a re-run took) it says it left, and
    `chain check` still names."""
    monkeypatch = request.getfixturevalue("monkeypatch")
    # the crash was a moment ago; fix otherwise waits before it calls a file stale
    monkeypatch.setattr(imports, "PARTIAL_QUIET_SECONDS", 0)
    deleted = deleted_points(engine)
    fixed = engine.imports.fix(actor="test")
    said = "\n".join(fixed.left_alone)
    for report in engine.chains.check_all(deep=True):
        for finding in report.findings:
            assert finding.kind == "orphan", finding.message
            assert finding.path and Path(finding.path).name in said, (finding.message, said)
    assert deleted <= deleted_points(engine), "a deleted point came back"
    assert_nothing_lost(world, engine)


def assert_locks_agree_with_flags(engine: Engine) -> None:
    """Released locks have no flag; locks still held have it (a cleared flag whose row
    was not released yet is set again or released by the lock job)."""
    engine.locks.maintain(actor="test")
    repos = {r.id: r for r in engine.repository_store.list()}
    for lock in engine.locks.list():
        path = Path(repos[lock.repository_id].path) / lock.path
        if not path.exists():
            continue
        holding = lock.state in ("pending", "active", "drift")
        assert attrs.is_immutable(path) == (holding and lock.state != "pending"), lock.state
