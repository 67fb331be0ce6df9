"""A seeded catalog with fixed times: for snapshot tests, screenshots and demos.

Everything shown comes from here, so a screen rendered twice renders the same:
fixed clock, fixed job owner, fixed repository paths (no temp dirs or hosts).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from engine.clock import FixedClock
from engine.config import ApiSettings, default_settings
from engine.runtime import Engine

DEMO_TIME = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)
DEMO_OWNER = "demo-appliance:1"
GiB = 1024**3
MiB = 1024**2


def demo_clock() -> FixedClock:
    return FixedClock(DEMO_TIME)


def build_demo_engine(
    state_dir: Path, clock: FixedClock | None = None, *, theme: str = "dark"
) -> Engine:
    """An opened (migrated, not started) engine on SQLite in ``state_dir``."""
    # the API as an appliance would configure it (a fixed path, not the temp state dir);
    # nothing serves it: the demo starts no daemon
    api = ApiSettings(socket=Path("/run/sendense/api.sock"), listen=("127.0.0.1:8041",))
    settings = replace(default_settings(state_dir), theme=theme, api=api)
    engine = Engine(settings, clock=clock or demo_clock(), owner=DEMO_OWNER)
    return engine.open()


def seed_demo_catalog(engine: Engine, clock: FixedClock | None = None) -> None:
    """Repositories, jobs in every state and audit entries, all at fixed times."""
    now = (clock or demo_clock()).now()
    at = lambda minutes: now - timedelta(minutes=minutes)  # noqa: E731

    repos = engine.repository_store
    primary = repos.add(
        name="primary",
        kind="local",
        path="/srv/backups/primary",
        now=at(60 * 24 * 30),
        state="online",
        capacity_level="ok",
    )
    offsite = repos.add(
        name="offsite-nfs",
        kind="nfs",
        path="/var/lib/sendense/mounts/offsite-nfs",
        server="nas02.example",
        export="/export/backups",
        now=at(60 * 24 * 20),
        state="online",
        capacity_level="warning",
        offsite=True,
    )
    repos.add(
        name="archive-smb",
        kind="cifs",
        path="/var/lib/sendense/mounts/archive-smb",
        server="files.example",
        export="archive",
        now=at(60 * 24 * 10),
        state="online",
        capacity_level="ok",
        immutable=True,
        immutable_days=30,
    )

    store = engine.job_store
    lease = timedelta(days=365)

    def job(kind: str, title: str, created: int, repo: int, total: int) -> int:
        return store.create(kind, title, now=at(created), repository_id=repo, bytes_total=total).id

    def finish(
        job_id: int,
        started: int,
        ended: int,
        state: str,
        error: str | None = None,
        done: int = 0,
        total: int = 0,
    ) -> None:
        store.claim(job_id, DEMO_OWNER, at(started), lease)
        store.progress(
            job_id, DEMO_OWNER, bytes_done=done, bytes_total=total, rate=0.0, eta_seconds=None
        )
        store.finish(job_id, DEMO_OWNER, state, at(ended), error=error)

    full = job("backup", "backup web01/disk0 (full)", 130, primary.id, 40 * GiB)
    finish(full, 125, 83, "succeeded", done=40 * GiB, total=40 * GiB)
    copy = job("copy", "copy db01 → offsite-nfs", 80, offsite.id, 12 * GiB)
    finish(
        copy,
        78,
        71,
        "failed",
        error="offsite-nfs: no space left (needs 12G, 3.1G free)",
        done=3 * GiB,
        total=12 * GiB,
    )
    verify = job("verify", "verify web01/disk0 chain", 70, primary.id, 40 * GiB)
    finish(
        verify, 69, 62, "cancelled", error="cancelled by the operator", done=9 * GiB, total=40 * GiB
    )

    running = job("backup", "backup db01/disk0 (incremental)", 12, primary.id, 8 * GiB)
    store.claim(running, DEMO_OWNER, at(10), lease)
    store.progress(
        running,
        DEMO_OWNER,
        bytes_done=5 * GiB + 512 * MiB,
        bytes_total=8 * GiB,
        rate=96 * MiB,
        eta_seconds=27.0,
        message="copying changed clusters",
    )
    copying = job("copy", "copy web01 → archive-smb", 8, primary.id, 40 * GiB)
    store.claim(copying, DEMO_OWNER, at(6), lease)
    store.progress(
        copying,
        DEMO_OWNER,
        bytes_done=9 * GiB,
        bytes_total=40 * GiB,
        rate=41 * MiB,
        eta_seconds=774.0,
    )
    paused = job("copy", "copy mail01 → offsite-nfs", 7, offsite.id, 20 * GiB)
    store.request_pause(paused)
    job("verify", "verify db01/disk0 chain", 5, primary.id, 8 * GiB)
    job("backup", "backup mail01/disk0 (full)", 3, primary.id, 60 * GiB)
    # written, but the lock step could not set the flag: a good point, not protected
    unlocked = job("backup", "back up web01 (sdb) to primary", 50, primary.id, 2 * GiB)
    finish(
        unlocked,
        49,
        45,
        "failed_unprotected",
        error="web01: backed up, but NOT protected: sdb #9: the immutable flag could not "
        "be set (chattr: Operation not supported)",
        done=2 * GiB,
        total=2 * GiB,
    )

    audit = engine.audit
    for minutes, level, source, kind, message in (
        (130, "info", "engine", "engine.started", "engine started"),
        (125, "info", "jobs", "job.started", "started: backup web01/disk0 (full)"),
        (83, "info", "jobs", "job.succeeded", "finished: backup web01/disk0 (full)"),
        (78, "info", "jobs", "job.started", "started: copy db01 → offsite-nfs"),
        (
            71,
            "error",
            "jobs",
            "job.failed",
            "failed: copy db01 → offsite-nfs (no space left on offsite-nfs)",
        ),
        (
            70,
            "warning",
            "capacity",
            "capacity.threshold_crossed",
            "offsite-nfs is 82% full (warning at 80%)",
        ),
        (62, "warning", "jobs", "job.cancelled", "cancel: verify web01/disk0 chain"),
        (
            45,
            "critical",
            "immutability",
            "immutability.lock_failed",
            "point #9 on primary is NOT protected: the immutable flag could not be set "
            "(chattr: Operation not supported) "
            "(chains/web01/sdb/20261118T090000Z/0002-inc-20261120T090000Z.qcow2)",
        ),
        (40, "debug", "engine", "engine.heartbeat", "heartbeat"),
        (30, "info", "repositories", "repository.checked", "archive-smb mounted and writable"),
        (10, "info", "jobs", "job.started", "started: backup db01/disk0 (incremental)"),
        (7, "info", "jobs", "job.pause_requested", "pause: copy mail01 → offsite-nfs"),
        (6, "info", "jobs", "job.started", "started: copy web01 → archive-smb"),
        (
            2,
            "warning",
            "immutability",
            "lock.expiring",
            "3 locks on archive-smb expire within 24 hours",
        ),
    ):
        audit.append(at=at(minutes), level=level, source=source, kind=kind, message=message)
    seed_demo_capacity(engine, clock)
    seed_demo_copy_rules(engine, clock)


def seed_demo_copy_rules(engine: Engine, clock: FixedClock | None = None) -> None:
    """A scheduled copy rule to offsite-nfs that failed 3 times in a row (the failed
    "no space" copy job) and its raised alert, worded as the engine words it. Catalog
    rows only: no destination check, no job."""
    from engine.services.scheduler import ALERT_PREFIX

    now = (clock or demo_clock()).now()
    repos = engine.repository_store
    primary, offsite = repos.get("primary"), repos.get("offsite-nfs")
    rule = engine.copy_store.add_rule(
        name="db01-offsite",
        now=now - timedelta(days=20),
        source_repository_id=primary.id,
        destination_repository_id=offsite.id,
        selection="latest",
        latest_count=7,
        mode="scheduled",
        schedule="30 1 * * *",
    )
    for _ in range(engine.copies.alert_after_failures):
        engine.copy_store.record_rule_outcome(rule.id, ok=False)
    for alert in engine.copies.alerts():
        if alert.rule_id == rule.id:
            key = f"{ALERT_PREFIX}{alert.kind}:rule:{rule.id}"
            engine.schedule_store.raise_alert(
                key, alert.level, alert.message, now - timedelta(minutes=71)
            )


def seed_demo_capacity(engine: Engine, clock: FixedClock | None = None) -> None:
    """A day of capacity samples (every 30 minutes) for the demo repositories."""
    now = (clock or demo_clock()).now()
    TiB = 1024 * GiB
    shapes = {
        # name: (total, used a day ago, growth per day)
        "primary": (4 * TiB, int(2.1 * TiB), 20 * GiB),
        "offsite-nfs": (2 * TiB, int(1.62 * TiB), 9 * GiB),
        "archive-smb": (8 * TiB, int(3.2 * TiB), 0),
    }
    for repo in engine.repository_store.list():
        if repo.name not in shapes:
            continue
        total, start, per_day = shapes[repo.name]
        usable = int(total * 0.95)  # what an ext4-like reserve leaves writable
        for step in range(49):
            at = now - timedelta(minutes=30 * (48 - step))
            used = start + per_day * step // 48
            engine.capacity_store.add(
                repo.id, taken_at=at, total_bytes=total, used_bytes=used, free_bytes=usable - used
            )


def seed_demo_chains(engine: Engine, clock: FixedClock | None = None) -> None:
    """Backup chains in "primary": web01 (two disks, one with a retired older chain),
    db01 with a broken chain and a locked, verified full. Catalog rows only."""
    from engine.views import ImmutabilityLock

    now = (clock or demo_clock()).now()
    repo = engine.repository_store.get("primary")
    store = engine.chain_store
    gib = 1024**3

    def chain(
        vm: str, disk: str, days_ago: int, incs: list[int], size: int, rung: str = "digest"
    ) -> list[int]:
        start = now - timedelta(days=days_ago)
        directory = f"chains/{vm}/{disk}/{start:%Y%m%dT%H%M%SZ}"
        full_path = f"{directory}/0000-full-{start:%Y%m%dT%H%M%SZ}.qcow2"
        row, full = store.add_full(
            repository_id=repo.id,
            vm_name=vm,
            disk_name=disk,
            directory=directory,
            now=start,
            backup={
                "path": full_path,
                "state": "complete",
                "point_time": start,
                "virtual_size": size,
                "file_size": size * 6 // 10,
                "allocated_bytes": size * 6 // 10 - 4 * 1024**2,
                "checksum": "9f2c" * 16,
                "verify_state": "ok",
                "verified_at": start + timedelta(hours=2),
                "tracking": {
                    "rung": "full",
                    "bytes_read": size * 6 // 10,
                    "bytes_written": size * 6 // 10,
                    "source_held_seconds": size / (900 * 1024**2),
                    "checksum_seconds": size / (2400 * 1024**2),
                    "digests": "ab" * 32,
                    "digest_verified": True,
                },
            },
            retire=[
                c.id
                for c in store.list_chains(repository_id=repo.id, vm_name=vm)
                if c.disk_name == disk
            ],
            retire_detail="superseded by a new full",
        )
        ids, parent = [full.id], full.id
        for n, changed in enumerate(incs, start=1):
            when = start + timedelta(days=n)
            inc = store.add_incremental(
                chain_id=row.id,
                parent_id=parent,
                position=n,
                now=when,
                backup={
                    "path": f"{directory}/{n:04d}-inc-{when:%Y%m%dT%H%M%SZ}.qcow2",
                    "state": "complete",
                    "point_time": when,
                    "virtual_size": size,
                    "file_size": changed + 512 * 1024,
                    "allocated_bytes": changed,
                    "checksum": f"{n:04x}" * 16,
                    "tracking": {
                        "rung": rung,
                        "bytes_read": changed if rung == "bitmap" else size * 6 // 10,
                        "bytes_written": changed,
                        "changed_bytes": changed,
                        "digests": "cd" * 32,
                        "digest_verified": rung != "bitmap",
                    },
                },
            )
            ids.append(inc.id)
            parent = inc.id
        return ids

    chain("web01", "sda", 20, [300 * 1024**2], 40 * gib)
    chain("web01", "sda", 6, [120 * 1024**2, 96 * 1024**2, 410 * 1024**2], 40 * gib)
    sdb = chain("web01", "sdb", 6, [2 * 1024**3, 1024**3], 200 * gib, rung="bitmap")
    db = chain("db01", "vda", 4, [700 * 1024**2, 650 * 1024**2], 80 * gib)
    broken = store.backups(store.get_backup(db[0]).chain_id)[0].chain_id
    store.update_chain(
        broken,
        state="broken",
        state_detail=f"0001-inc file (point #{db[1]}) is missing",
    )
    with engine.catalog.session() as session:
        session.add(
            ImmutabilityLock(
                repository_id=repo.id,
                backup_id=db[0],
                path=store.get_backup(db[0]).path,
                state="active",
                locked_at=now - timedelta(days=4),
                expires_at=now + timedelta(days=26),
                created_at=now - timedelta(days=4),
            )
        )
        # a policy's lock was due on this point but the flag could not be set
        session.add(
            ImmutabilityLock(
                repository_id=repo.id,
                backup_id=sdb[-1],
                path=store.get_backup(sdb[-1]).path,
                state="failed",
                locked_at=None,
                expires_at=now + timedelta(days=26),
                created_at=now - timedelta(days=4),
            )
        )
