"""``engine.metrics``: the exposition after a real backup, copy and verify.

One module scene (SQLite, a fixed clock) runs the real jobs once: a full and an
incremental of a 4 MiB raw disk into QCOW2, a backup that fails, a copy rule that
copies both points to a second repository, a verification of everything. It
scrapes after each step, and the tests read those scrapes with prometheus-client's
own parser, the way Prometheus would. The aggregate queries are checked against the
row-by-row figures the console shows, on SQLite and on MariaDB; a frozen FUSE
repository shows as unresponsive without the scrape touching it.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString

from engine.catalog.models import Backup, Copy
from engine.clock import FixedClock
from engine.config import CapacitySettings, default_settings
from engine.runtime import Engine
from engine.services.backup import DiskSource
from engine.services.metrics import CONTENT_TYPE, DURATION_BUCKETS
from tests.engine.copy_worker import add_repo, make_chain
from tests.engine.diskgen import MiB, SourceDisk
from tests.engine.test_verify import flip_byte
from tests.plugins.fusedir import FuseDir

ROOT = Path(__file__).resolve().parents[2]
FINAL = ("succeeded", "failed", "failed_unprotected", "cancelled")
SQLITE_ONLY = pytest.mark.parametrize("catalog_url", ["sqlite"], indirect=True)

Labels = tuple[tuple[str, str], ...]


@dataclass
class Scrape:
    """One exposition parsed: sample name -> {sorted labels: value}, and the types."""

    text: str
    samples: dict[str, dict[Labels, float]] = field(default_factory=dict)
    types: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, raw: bytes) -> Scrape:
        text = raw.decode()
        out = cls(text)
        for family in text_string_to_metric_families(text):
            out.types[family.name] = family.type
            for sample in family.samples:
                key = tuple(sorted(sample.labels.items()))
                out.samples.setdefault(sample.name, {})[key] = sample.value
        return out

    def value(self, name: str, **labels: str) -> float:
        series = self.samples.get(name, {})
        key = tuple(sorted(labels.items()))
        assert key in series, f"{name}{labels} not in the exposition: {sorted(series)}"
        return series[key]

    def has(self, name: str, **labels: str) -> bool:
        return tuple(sorted(labels.items())) in self.samples.get(name, {})


def wait_job(engine: Engine, job_id: int, timeout: float = 120.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = engine.job_store.get(job_id).state
        if state in FINAL:
            return state
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish")


@dataclass
class Scene:
    engine: Engine
    clock: FixedClock
    main_id: int
    offsite_id: int
    after_full: Scrape
    after_incremental: Scrape
    final: Scrape
    full: Backup
    incremental: Backup
    copies: list[Copy]
    locked_bytes: int
    damaged: Scrape


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scene]:
    base = tmp_path_factory.mktemp("metrics")
    clock = FixedClock()
    settings = replace(
        default_settings(base / "state"),
        capacity=replace(CapacitySettings(), min_free_bytes=0, poll_seconds=3600),
    )
    engine = Engine(settings, clock=clock, owner="metrics-test").open()
    try:
        main = add_repo(engine, "main", base / "main")
        offsite = add_repo(engine, "offsite", base / "offsite")
        source = SourceDisk.create(base / "web01-sda.raw", 4 * MiB, seed=5)
        disks = [DiskSource("sda", str(source.path))]
        engine.start()

        job = engine.backups.submit("main", "web01", disks)
        assert wait_job(engine, job.id) == "succeeded", engine.job_store.get(job.id).error
        after_full = Scrape.parse(engine.metrics.exposition())

        clock.advance(3600)
        source.change([(1 * MiB, 256 * 1024)])
        job = engine.backups.submit("main", "web01", disks)
        assert wait_job(engine, job.id) == "succeeded", engine.job_store.get(job.id).error
        after_incremental = Scrape.parse(engine.metrics.exposition())
        # a backup that fails: its source does not exist
        gone = [DiskSource("sda", str(base / "no-such-disk.raw"))]
        job = engine.backups.submit("main", "db01", gone)
        assert wait_job(engine, job.id) == "failed"

        engine.copies.add_rule(
            name="to-offsite", source="main", destination="offsite", max_age_hours=24
        )
        job = engine.copies.run_rule("to-offsite")
        assert wait_job(engine, job.id) == "succeeded", engine.job_store.get(job.id).error
        clock.advance(600)
        job = engine.verifier.submit("all")
        assert wait_job(engine, job.id) == "succeeded", engine.job_store.get(job.id).error

        chain = engine.chain_store.current_chain(main.id, "web01", "sda")
        assert chain is not None
        full, incremental = engine.chain_store.backups(chain.id)
        # a lock in its grace period holds the incremental (catalog only: no flag yet)
        engine.lock_store.add(
            repository_id=main.id,
            path=incremental.path,
            expires_at=clock.now() + timedelta(days=7),
            now=clock.now(),
            state="pending",
            backup_id=incremental.id,
        )
        # the monitor stops sampling (other writers share this filesystem): the last
        # readings stay what the final scrape saw
        engine.capacity.stop()
        engine.capacity.sample_all()
        final = Scrape.parse(engine.metrics.exposition())
        copies = engine.copy_store.list_copies(states=("completed",))

        # a bad night: one flipped byte in the full, found by the next verification
        flip_byte(Path(main.path) / full.path)
        job = engine.verifier.submit("backup", full.id)
        assert wait_job(engine, job.id) == "failed"
        damaged = Scrape.parse(engine.metrics.exposition())
        yield Scene(
            engine,
            clock,
            main.id,
            offsite.id,
            after_full,
            after_incremental,
            final,
            full,
            incremental,
            copies,
            incremental.file_size,
            damaged,
        )
    finally:
        engine.close()


DISK = {"repository": "main", "vm": "web01", "disk": "sda"}


def test_the_last_backup_time_is_the_newest_points_time_and_the_chain_grows(
    scene: Scene,
) -> None:
    first, second = scene.after_full, scene.after_incremental
    name = "sendense_disk_last_backup_timestamp_seconds"
    assert first.value(name, **DISK) == scene.full.point_time.timestamp()
    assert second.value(name, **DISK) == scene.incremental.point_time.timestamp()
    assert second.value(name, **DISK) - first.value(name, **DISK) == 3600
    assert first.value("sendense_disk_chain_length", **DISK) == 1
    assert second.value("sendense_disk_chain_length", **DISK) == 2
    # what the newest point wrote and how long it held the source, as it recorded them
    tracking = scene.incremental.tracking or {}
    assert tracking["bytes_written"] > 0
    assert (
        second.value("sendense_disk_last_backup_written_bytes", **DISK)
        == (tracking["bytes_written"])
    )
    assert second.value("sendense_disk_last_backup_duration_seconds", **DISK) == pytest.approx(
        tracking["source_held_seconds"] + tracking["checksum_seconds"]
    )
    # the failed backup of db01 wrote no point: no series pretends it has one
    assert not second.has(name, repository="main", vm="db01", disk="sda")
    assert not scene.final.has(name, repository="main", vm="db01", disk="sda")


def test_the_copy_age_counts_from_the_rules_newest_copy(scene: Scene) -> None:
    final = scene.final
    assert len(scene.copies) == 2
    newest = max(c.completed_at for c in scene.copies if c.completed_at is not None)
    rule = {"rule": "to-offsite"}
    assert final.value("sendense_copy_rule_last_copy_timestamp_seconds", **rule) == (
        newest.timestamp()
    )
    # the verify ran 600 s after the copy; the clock has not moved since
    assert final.value("sendense_copy_rule_last_copy_age_seconds", **rule) == 600
    assert final.value("sendense_copy_rule_max_age_seconds", **rule) == 24 * 3600
    assert final.value("sendense_copy_rule_failures_in_row", **rule) == 0


def test_a_verified_disk_shows_its_time_state_and_full_coverage(scene: Scene) -> None:
    final, before = scene.final, scene.after_incremental
    assert before.value("sendense_disk_verification", **DISK, state="unverified") == 1
    assert not before.has("sendense_disk_verification", **DISK, state="ok")
    assert not before.has("sendense_disk_last_verified_timestamp_seconds", **DISK)
    # one series per disk: its state now
    assert final.value("sendense_disk_verification", **DISK, state="ok") == 1
    assert len(final.samples["sendense_disk_verification"]) == 1
    verified = scene.engine.chain_store.get_backup(scene.incremental.id).verified_at
    assert verified is not None
    assert final.value("sendense_disk_last_verified_timestamp_seconds", **DISK) == (
        verified.timestamp()
    )
    # two points on main, their two copies on offsite: all verified inside the window
    for repository in ("main", "offsite"):
        assert final.value("sendense_verification_files", repository=repository) == 2
        assert final.value("sendense_verification_verified_files", repository=repository) == 2
        assert final.value("sendense_verification_coverage_ratio", repository=repository) == 1
        assert final.value("sendense_verification_failed_files", repository=repository) == 0
    report = scene.engine.verifier.report()
    assert (
        sum(final.value("sendense_verification_bytes", repository=r) for r in ("main", "offsite"))
        == report.bytes_total
    )
    # before the verify, nothing on main was verified
    assert before.value("sendense_verification_coverage_ratio", repository="main") == 0


def test_a_damaged_point_turns_its_disk_and_repository_red(scene: Scene) -> None:
    damaged = scene.damaged
    assert damaged.value("sendense_disk_verification", **DISK, state="mismatch") == 1
    assert len(damaged.samples["sendense_disk_verification"]) == 1
    assert damaged.value("sendense_verification_failed_files", repository="main") == 1
    assert damaged.value("sendense_verification_verified_files", repository="main") == 1
    assert damaged.value("sendense_verification_coverage_ratio", repository="main") == 0.5
    # its copy on offsite is still good; the newest complete point is still the last backup
    assert damaged.value("sendense_verification_failed_files", repository="offsite") == 0
    assert damaged.value("sendense_disk_last_backup_timestamp_seconds", **DISK) == (
        scene.incremental.point_time.timestamp()
    )
    assert damaged.value("sendense_jobs", kind="verify", state="failed") == 1


def test_repository_figures_are_the_monitors_last_reading(scene: Scene) -> None:
    final = scene.final
    for repo_id, name in ((scene.main_id, "main"), (scene.offsite_id, "offsite")):
        reading = scene.engine.capacity.reading(repo_id)
        assert reading is not None and reading.error is None
        assert final.value("sendense_repository_free_bytes", repository=name) == reading.free
        assert final.value("sendense_repository_used_bytes", repository=name) == reading.used
        assert final.value("sendense_repository_size_bytes", repository=name) == reading.total
        assert final.value("sendense_repository_unresponsive", repository=name) == 0
        assert final.value("sendense_repository_capacity_level", repository=name, state="ok") == 1
        for state in ("warning", "critical", "full"):
            assert (
                final.value("sendense_repository_capacity_level", repository=name, state=state) == 0
            )
    # the pending lock holds the incremental's bytes; nothing is reclaimable
    assert final.value("sendense_repository_locked_bytes", repository="main") == (
        scene.locked_bytes
    )
    assert final.value("sendense_repository_reclaimable_bytes", repository="main") == 0
    assert final.value("sendense_locks", repository="main", state="pending") == 1
    expiry = scene.clock.now() + timedelta(days=7)
    assert final.value("sendense_lock_next_expiry_timestamp_seconds", repository="main") == (
        expiry.timestamp()
    )


def test_jobs_by_state_and_the_duration_histogram_count_the_real_jobs(scene: Scene) -> None:
    final = scene.final
    assert final.value("sendense_jobs", kind="backup", state="succeeded") == 2
    assert final.value("sendense_jobs", kind="backup", state="failed") == 1
    assert final.value("sendense_jobs", kind="copy", state="succeeded") == 1
    assert final.value("sendense_jobs", kind="verify", state="succeeded") == 1
    assert final.types["sendense_jobs_finished"] == "counter"
    assert final.value("sendense_jobs_finished_total", kind="backup", state="failed") == 1
    assert final.value("sendense_jobs_finished_total", kind="backup", state="succeeded") == 2
    assert final.types["sendense_job_duration_seconds"] == "histogram"
    # three backup jobs ran (the clock stood still during each: 0 s, in every bucket)
    assert final.value("sendense_job_duration_seconds_count", kind="backup") == 3
    assert final.value("sendense_job_duration_seconds_bucket", kind="backup", le="+Inf") == 3
    assert final.value("sendense_job_duration_seconds_bucket", kind="backup", le="1.0") == 3
    assert final.value("sendense_up") == 1
    assert final.value("sendense_build_info", version=__import__("engine").__version__) == 1


def test_the_exposition_is_the_text_format_prometheus_parses() -> None:
    assert CONTENT_TYPE == CONTENT_TYPE_PLAIN_0_0_4


# -- the aggregates against the row-by-row figures -------------------------------------


def test_space_and_lock_aggregates_agree_with_the_breakdown_the_console_shows(
    engine: Engine, tmp_path: Path
) -> None:
    """On SQLite and MariaDB: released points, points under live, expired and released
    locks, copies in every state; the GROUP BY figures equal CapacityStore.breakdown."""
    repo = add_repo(engine, "main", tmp_path / "main")
    other = add_repo(engine, "offsite", tmp_path / "offsite")
    now = engine.clock.now()
    made = make_chain(engine, repo, size_mb=1, incrementals=3)
    released, expired_lock, live_lock, plain = made.backup_ids
    sizes = {}
    with engine.catalog.session() as session:
        for backup_id in made.backup_ids:
            row = session.get(Backup, backup_id)
            assert row is not None
            sizes[backup_id] = row.file_size
            if backup_id in (released, expired_lock, live_lock):
                row.state = "expired"
        copies = []
        for state, size in (("completed", 5000), ("expired", 7000), ("failed", 11000)):
            copy = Copy(
                backup_id=plain,
                destination_repository_id=other.id,
                path=f"web01/sda/copy-{state}.qcow2",
                state=state,
                size=size,
                created_at=now,
                completed_at=now,
            )
            session.add(copy)
            session.flush()
            copies.append(copy.id)
    locks = engine.lock_store
    locks.add(
        repository_id=repo.id,
        path="x",
        expires_at=now - timedelta(hours=1),
        now=now,
        backup_id=expired_lock,
    )
    locks.add(
        repository_id=repo.id,
        path="y",
        expires_at=now + timedelta(days=3),
        now=now,
        backup_id=live_lock,
    )
    locks.add(
        repository_id=repo.id,
        path="z",
        expires_at=now + timedelta(days=1),
        now=now,
        backup_id=plain,
        state="released",
    )
    locks.add(
        repository_id=other.id,
        path="c",
        expires_at=now + timedelta(days=2),
        now=now,
        copy_id=copies[1],
        state="drift",
    )
    space = engine.metrics.store.space(now)
    for repository in (repo, other):
        breakdown = engine.capacity_store.breakdown(repository.id, now)
        assert space[repository.id].reclaimable == breakdown.reclaimable_now
        assert space[repository.id].locked == breakdown.locked
    # the figures themselves: released and unlocked (or its lock expired) is reclaimable
    assert space[repo.id].reclaimable == sizes[released] + sizes[expired_lock]
    assert space[repo.id].locked == sizes[live_lock]
    assert space[other.id].reclaimable == 0 and space[other.id].locked == 7000

    scrape = Scrape.parse(engine.metrics.exposition())
    # the holding locks only (a released one holds nothing), by state
    assert scrape.value("sendense_locks", repository="main", state="active") == 2
    assert not scrape.has("sendense_locks", repository="main", state="released")
    assert scrape.value("sendense_locks", repository="offsite", state="drift") == 1
    assert (
        scrape.value("sendense_lock_next_expiry_timestamp_seconds", repository="main")
        == (now - timedelta(hours=1)).timestamp()
    )


def test_the_duration_histogram_counts_each_finished_job_once_and_none_from_before(
    engine: Engine, clock: FixedClock
) -> None:
    """On SQLite and MariaDB: jobs finished before the engine started are not in the
    histogram; each one finished since is counted once, however many scrapes see it,
    in the right bucket, also when it committed its end after a newer one."""
    store, lease = engine.job_store, timedelta(minutes=5)

    def ran(kind: str, seconds: float, state: str = "succeeded", ago: float = 0) -> None:
        """A job of ``seconds`` that ended ``ago`` seconds before now."""
        end = clock.now() - timedelta(seconds=ago)
        start = end - timedelta(seconds=seconds)
        job = store.create(kind, f"a {kind}", now=start)
        assert store.claim(job.id, "other", start, lease) is not None
        store.finish(job.id, "other", state, end)

    clock.advance(-3600)
    ran("backup", 5)  # finished an hour before the engine's metrics started
    clock.advance(3600 - 1)
    ran("backup", 7)  # a second before: inside the slack a scrape reads back, not counted
    clock.advance(1 + 100)
    ran("backup", 90)
    ran("copy", 4000, state="failed")
    first = Scrape.parse(engine.metrics.exposition())
    # ended a minute before the jobs above but committed after the scrape that saw them
    ran("backup", 10, ago=60)
    clock.advance(30000)
    ran("backup", 20000)
    second = Scrape.parse(engine.metrics.exposition())
    third = Scrape.parse(engine.metrics.exposition())

    assert first.value("sendense_job_duration_seconds_count", kind="backup") == 1
    assert first.value("sendense_job_duration_seconds_sum", kind="backup") == 90
    assert first.value("sendense_jobs_finished_total", kind="copy", state="failed") == 1
    for scrape in (second, third):
        assert scrape.value("sendense_job_duration_seconds_count", kind="backup") == 3
        assert scrape.value("sendense_job_duration_seconds_sum", kind="backup") == 20100
        buckets = {
            bound: scrape.value(
                "sendense_job_duration_seconds_bucket", kind="backup", le=floatToGoString(bound)
            )
            for bound in DURATION_BUCKETS
        }
        assert buckets[15.0] == 1 and buckets[60.0] == 1 and buckets[300.0] == 2
        assert buckets[14400.0] == 2 and buckets[28800.0] == 3
        assert scrape.value("sendense_job_duration_seconds_count", kind="copy") == 1
        assert scrape.value("sendense_jobs_finished_total", kind="backup", state="succeeded") == 3
    # the catalog-wide count includes the jobs from before
    assert third.value("sendense_jobs", kind="backup", state="succeeded") == 5


# -- bad nights ------------------------------------------------------------------------


@SQLITE_ONLY
def test_a_lost_catalog_answers_with_sendense_up_0_and_the_version(
    engine: Engine, catalog_url: str
) -> None:
    assert Scrape.parse(engine.metrics.exposition()).value("sendense_up") == 1
    Path(catalog_url.removeprefix("sqlite:///")).unlink()
    scrape = Scrape.parse(engine.metrics.exposition())
    assert scrape.value("sendense_up") == 0
    assert scrape.has("sendense_build_info", version=__import__("engine").__version__)
    assert set(scrape.samples) == {"sendense_up", "sendense_build_info"}


@pytest.mark.root
def test_a_frozen_repository_shows_unresponsive_with_its_last_figures_and_no_scrape_hangs(
    fuse_dir: FuseDir, tmp_path: Path
) -> None:
    settings = replace(
        default_settings(tmp_path / "state"),
        capacity=CapacitySettings(min_free_bytes=0, poll_seconds=3600),
    )
    engine = Engine(settings, clock=FixedClock()).open()
    try:
        now = engine.clock.now()
        frozen = engine.repository_store.add(
            name="frozen", kind="local", path=str(fuse_dir.path), now=now, state="ready"
        )
        engine.capacity.reading_timeout = 1.0
        good = engine.capacity.sample(frozen)
        assert good.error is None and good.total > 0
        fuse_dir.freeze()
        try:
            assert engine.capacity.sample(frozen).unresponsive
            # a scrape reads no filesystem: it answers while the directory is frozen
            out: list[bytes] = []
            scraper = threading.Thread(target=lambda: out.append(engine.metrics.exposition()))
            scraper.start()
            scraper.join(timeout=60)
            assert out, "the scrape hung on the frozen repository"
        finally:
            fuse_dir.thaw()
        scrape = Scrape.parse(out[0])
        assert scrape.value("sendense_repository_unresponsive", repository="frozen") == 1
        # its last good figures, with the time they were measured
        assert scrape.value("sendense_repository_free_bytes", repository="frozen") == good.free
        assert (
            scrape.value("sendense_repository_reading_timestamp_seconds", repository="frozen")
            == good.taken_at.timestamp()
        )
    finally:
        engine.close()


# -- the command and the deploy files ----------------------------------------------------


def test_sendense_metrics_prints_the_exposition(tmp_path: Path) -> None:
    state = tmp_path / "state"
    done = subprocess.run(
        [sys.executable, "-m", "sendense_tui.cli", "metrics", "--state-dir", str(state)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    scrape = Scrape.parse(done.stdout.encode())
    assert scrape.value("sendense_up") == 1
    # the default repository a first command makes is there
    assert scrape.value("sendense_repository_unresponsive", repository="local") == 0


def _names_in(text: str) -> set[str]:
    return set(re.findall(r"\bsendense_[a-z0-9_]*[a-z0-9]", text))


def test_the_alert_rules_and_the_dashboard_use_only_metrics_that_exist(scene: Scene) -> None:
    alerts_file = ROOT / "deploy" / "prometheus" / "sendense-alerts.yml"
    dashboard_file = ROOT / "deploy" / "grafana" / "sendense-dashboard.json"
    rules = yaml.safe_load(alerts_file.read_text())
    dashboard = json.loads(dashboard_file.read_text())
    exprs = [r["expr"] for group in rules["groups"] for r in group["rules"]]
    assert all(r.get("alert") for group in rules["groups"] for r in group["rules"])
    targets = [
        t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", []) if "expr" in t
    ]
    templating = [v.get("query", "") for v in dashboard.get("templating", {}).get("list", [])]
    exposed = set(scene.final.samples) | set(scene.final.types)
    used = set()
    for text in [*exprs, *targets, *map(str, templating)]:
        used |= _names_in(text)
    assert len(exprs) >= 6 and len(targets) >= 6
    missing = sorted(name for name in used if name not in exposed)
    assert not missing, f"deploy files use metrics Sendense does not expose: {missing}"
    # every alert the issue asks for is there
    names = {r["alert"] for group in rules["groups"] for r in group["rules"]}
    for wanted in (
        "SendenseBackupOlderThanRPO",
        "SendenseCopyRPOMissed",
        "SendenseRepositoryCritical",
        "SendenseRepositoryFull",
        "SendenseRepositoryUnresponsive",
        "SendenseVerificationFailed",
        "SendenseJobsFailing",
        "SendenseDown",
    ):
        assert wanted in names
