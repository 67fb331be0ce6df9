"""A seeded catalog with fixed times: for snapshot tests, screenshots and demos.

Everything shown comes from here, so a screen rendered twice renders the same:
fixed clock, fixed job owner, fixed repository paths (no temp dirs or hosts).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from engine.clock import FixedClock
from engine.config import default_settings
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
    settings = replace(default_settings(state_dir), theme=theme)
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
