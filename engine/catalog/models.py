"""Catalog tables as SQLAlchemy 2 typed models.

Conventions, so the same schema works on SQLite and MariaDB/MySQL:
- every string column has a length (MySQL needs one for VARCHAR);
- times are UTC; ``UTCDateTime`` stores them naive with microseconds and
  hands them back timezone-aware;
- sizes are BigInteger bytes;
- free-form settings (mount options, retention rules) are JSON.

Any change here needs a new Alembic revision in ``migrations/versions``;
``tests/engine/test_catalog.py::test_schema_from_migrations_matches_the_models``
fails (on SQLite and on MariaDB) when the two disagree.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in Python, naive UTC (with microseconds) in the database."""

    impl = DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> Any:
        if dialect.name in ("mysql", "mariadb"):
            # imported here: the MySQL dialect costs a SQLite catalog ~0.1 s at every start
            from sqlalchemy.dialects import mysql

            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(DateTime())

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    type_annotation_map = {
        datetime: UTCDateTime,
        dict[str, Any]: JSON,
        list[Any]: JSON,
    }


def _fk(target: str, *, cascade: bool = False, nullable: bool = False) -> Any:
    return mapped_column(
        ForeignKey(target, ondelete="CASCADE" if cascade else "SET NULL" if nullable else None),
        nullable=nullable,
        index=True,
    )


class Repository(Base):
    """A place backups are kept: a local directory, an NFS export or a CIFS share."""

    __tablename__ = "repositories"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(16))  # local | nfs | cifs
    #: local: the directory; network kinds: the mount point under the mount root
    path: Mapped[str] = mapped_column(String(1024))
    server: Mapped[str | None] = mapped_column(String(255))
    #: NFS export path or CIFS share name
    export: Mapped[str | None] = mapped_column(String(1024))
    #: kind-specific settings: nfs version, mount options, cifs domain/user/smb version
    options: Mapped[dict[str, Any]] = mapped_column(default=dict)
    #: encrypted secret (CIFS password); never clear text
    secret: Mapped[str | None] = mapped_column(Text)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    #: unknown | ready | mounted | unmounted | unresponsive | error | disabled
    state: Mapped[str] = mapped_column(String(16), default="unknown")
    state_detail: Mapped[str | None] = mapped_column(Text)
    last_seen_at: Mapped[datetime | None]
    offsite: Mapped[bool] = mapped_column(Boolean, default=False)
    immutable: Mapped[bool] = mapped_column(Boolean, default=False)
    immutable_days: Mapped[int] = mapped_column(Integer, default=0)
    immutable_grace_hours: Mapped[int] = mapped_column(Integer, default=0)
    #: per-repository thresholds; None means the configured default
    warning_percent: Mapped[float | None] = mapped_column(Float)
    critical_percent: Mapped[float | None] = mapped_column(Float)
    full_percent: Mapped[float | None] = mapped_column(Float)
    min_free_bytes: Mapped[int | None] = mapped_column(BigInteger)
    #: probed once with a canary file: {"immutable": bool, "reflink": bool, "fs_type": str}
    capabilities: Mapped[dict[str, Any]] = mapped_column(default=dict)
    #: which capacity level is raised now (ok|warning|critical|full), so a crossing fires once
    capacity_level: Mapped[str] = mapped_column(String(16), default="ok")
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class CapacitySample(Base):
    __tablename__ = "capacity_samples"
    __table_args__ = (Index("ix_capacity_samples_repo_time", "repository_id", "taken_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    repository_id: Mapped[int] = mapped_column(
        ForeignKey("repositories.id", ondelete="CASCADE"), index=True
    )
    taken_at: Mapped[datetime]
    total_bytes: Mapped[int] = mapped_column(BigInteger)
    used_bytes: Mapped[int] = mapped_column(BigInteger)
    free_bytes: Mapped[int] = mapped_column(BigInteger)
    #: raw samples are downsampled into hour and day rows for history
    resolution: Mapped[str] = mapped_column(String(8), default="raw")


class Chain(Base):
    """One full backup and the incrementals that build on it, for one VM disk."""

    __tablename__ = "chains"
    __table_args__ = (
        UniqueConstraint("repository_id", "directory"),
        # listings page chains and their points in this order (keyset, never OFFSET)
        Index("ix_chains_listing", "vm_name", "disk_name", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    repository_id: Mapped[int] = mapped_column(ForeignKey("repositories.id"), index=True)
    vm_name: Mapped[str] = mapped_column(String(128))
    disk_name: Mapped[str] = mapped_column(String(128))
    #: relative to the repository root
    directory: Mapped[str] = mapped_column(String(1024))
    #: ok | broken | retired (a newer full superseded it)
    state: Mapped[str] = mapped_column(String(16), default="ok")
    state_detail: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    checked_at: Mapped[datetime | None]


class Backup(Base):
    """One QCOW2 file: a full, or an incremental whose backing file is its parent."""

    __tablename__ = "backups"
    __table_args__ = (Index("ix_backups_chain_position", "chain_id", "position"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    chain_id: Mapped[int] = mapped_column(ForeignKey("chains.id"), index=True)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("backups.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # full | incremental
    position: Mapped[int] = mapped_column(Integer)  # 0 for the full
    #: relative to the repository root
    path: Mapped[str] = mapped_column(String(1024))
    #: pending | complete | bad | deleted
    state: Mapped[str] = mapped_column(String(16), default="pending")
    state_detail: Mapped[str | None] = mapped_column(Text)
    point_time: Mapped[datetime]
    created_at: Mapped[datetime]
    source: Mapped[str | None] = mapped_column(String(1024))
    compression: Mapped[str | None] = mapped_column(String(16))
    virtual_size: Mapped[int] = mapped_column(BigInteger, default=0)
    file_size: Mapped[int] = mapped_column(BigInteger, default=0)
    allocated_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    checksum: Mapped[str | None] = mapped_column(String(128))
    checksum_algo: Mapped[str] = mapped_column(String(16), default="sha256")
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    #: ok | mismatch | missing | check_failed | None (never verified)
    verify_state: Mapped[str | None] = mapped_column(String(16))
    verified_at: Mapped[datetime | None]
    #: how the point's data was found: rung, why, bytes read/written, digest table
    #: checksum, the source bitmap added at it (engine.services.changes.Tracking)
    tracking: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)


class Policy(Base):
    __tablename__ = "policies"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    schedule: Mapped[str] = mapped_column(String(128))  # cron expression
    target_repository_id: Mapped[int] = mapped_column(ForeignKey("repositories.id"), index=True)
    #: [{"vm": "web01", "disks": [{"name": "sda", "source": "/dev/vg/web01"}]}]
    sources: Mapped[list[Any]] = mapped_column(default=list)
    full_every: Mapped[int] = mapped_column(Integer, default=7)
    full_weekday: Mapped[int | None] = mapped_column(Integer)
    #: {"keep_last": 7, "daily": 7, "weekly": 4, "monthly": 12, "yearly": 3}
    retention: Mapped[dict[str, Any]] = mapped_column(default=dict)
    verify_after: Mapped[bool] = mapped_column(Boolean, default=False)
    immutable_days: Mapped[int] = mapped_column(Integer, default=0)
    compression: Mapped[str | None] = mapped_column(String(16))
    last_run_at: Mapped[datetime | None]
    next_run_at: Mapped[datetime | None]
    last_result: Mapped[str | None] = mapped_column(String(16))
    created_at: Mapped[datetime]


class CopyRule(Base):
    __tablename__ = "copy_rules"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    source_repository_id: Mapped[int] = mapped_column(ForeignKey("repositories.id"), index=True)
    destination_repository_id: Mapped[int] = mapped_column(
        ForeignKey("repositories.id"), index=True
    )
    policy_id: Mapped[int | None] = mapped_column(
        ForeignKey("policies.id", ondelete="SET NULL"), index=True
    )
    selection: Mapped[str] = mapped_column(String(16), default="all")  # all | fulls | latest
    latest_count: Mapped[int | None] = mapped_column(Integer)
    mode: Mapped[str] = mapped_column(String(16), default="immediate")  # immediate|scheduled|manual
    schedule: Mapped[str | None] = mapped_column(String(128))
    priority: Mapped[int] = mapped_column(Integer, default=100)
    lock_copies: Mapped[bool] = mapped_column(Boolean, default=False)
    verify_after: Mapped[bool] = mapped_column(Boolean, default=True)
    bandwidth_limit: Mapped[int | None] = mapped_column(BigInteger)  # bytes per second
    max_age_hours: Mapped[int | None] = mapped_column(Integer)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    failures_in_row: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime]


class ScheduleMark(Base):
    """Scheduler state shared by every engine on the catalog, keyed by name.

    ``schedule:<what>`` rows carry the next run time (``due_at``), moved with a
    compare-and-set so only one engine starts a run; ``alert:<kind>:<subject>``
    rows exist while an alert is raised (``level``, ``message``), so it fires once,
    clears once and survives a restart.
    """

    __tablename__ = "schedule_marks"

    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    due_at: Mapped[datetime | None]
    level: Mapped[str | None] = mapped_column(String(16))
    message: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime]


class Copy(Base):
    """A backup file copied to another repository."""

    __tablename__ = "copies"

    id: Mapped[int] = mapped_column(primary_key=True)
    backup_id: Mapped[int] = mapped_column(ForeignKey("backups.id"), index=True)
    rule_id: Mapped[int | None] = mapped_column(
        ForeignKey("copy_rules.id", ondelete="SET NULL"), index=True
    )
    destination_repository_id: Mapped[int] = mapped_column(
        ForeignKey("repositories.id"), index=True
    )
    path: Mapped[str] = mapped_column(String(1024))
    #: the copy (in the same repository) this copy's file is backed by; None for a full.
    #: A copy keeps the lineage it was made with: a later consolidation of the source
    #: chain turns the source point into a full but leaves the copied file as it was.
    parent_copy_id: Mapped[int | None] = _fk("copies.id", nullable=True)
    #: pending | copying | verifying | completed | failed
    state: Mapped[str] = mapped_column(String(16), default="pending")
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_done: Mapped[int] = mapped_column(BigInteger, default=0)
    checksum: Mapped[str | None] = mapped_column(String(128))
    cloned: Mapped[bool] = mapped_column(Boolean, default=False)
    verify_state: Mapped[str | None] = mapped_column(String(16))
    verified_at: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    created_at: Mapped[datetime]
    completed_at: Mapped[datetime | None]


class MergeIntent(Base):
    """A consolidation (or retention merge) in progress, written before its first durable
    step and moved on at each one, so an engine that starts after a crash finishes the
    merge or rolls it back (engine.services.chains explains the steps)."""

    __tablename__ = "merge_intents"

    id: Mapped[int] = mapped_column(primary_key=True)
    chain_id: Mapped[int] = mapped_column(ForeignKey("chains.id"), index=True)
    #: the point that becomes the full (its file is replaced by the merged one)
    target_id: Mapped[int] = mapped_column(ForeignKey("backups.id"))
    #: the points merged into it (deleted once the merge is recorded), oldest first
    merged_ids: Mapped[list[Any]] = mapped_column(default=list)
    #: the name, in the chain directory, the new full is written under
    partial_name: Mapped[str] = mapped_column(String(255))
    #: the target's recorded sha256 before the merge
    old_checksum: Mapped[str | None] = mapped_column(String(128))
    #: the new full's facts once written: checksum, file_size, virtual_size,
    #: allocated_bytes, compression
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    #: started | converted | recorded | done | rolled_back | stuck
    step: Mapped[str] = mapped_column(String(16), default="started")
    detail: Mapped[str | None] = mapped_column(Text)
    #: the engine doing the merge (host:pid:token); updated_at is its heartbeat
    owner: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class Job(Base):
    """Long work (backup, copy, verify, restore) with a state machine and a lease.

    queued -> running -> succeeded | failed | failed_unprotected | cancelled; a
    running job whose lease expired (its engine died) can be claimed again by
    another engine. ``failed_unprotected``: the work landed (the files are good
    restore points) but the lock it had to set could not be set.
    """

    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_state_created", "state", "created_at"),
        Index("ix_jobs_state_id", "state", "id"),
        Index("ix_jobs_kind_id", "kind", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    title: Mapped[str] = mapped_column(String(255))
    #: queued | running | paused | succeeded | failed | failed_unprotected | cancelled
    state: Mapped[str] = mapped_column(String(32), default="queued")
    priority: Mapped[int] = mapped_column(Integer, default=100)
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    repository_id: Mapped[int | None] = mapped_column(
        ForeignKey("repositories.id", ondelete="SET NULL"), index=True
    )
    bytes_done: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_total: Mapped[int] = mapped_column(BigInteger, default=0)
    rate: Mapped[float] = mapped_column(Float, default=0.0)  # bytes per second
    eta_seconds: Mapped[float | None] = mapped_column(Float)
    message: Mapped[str | None] = mapped_column(String(255))
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None]
    heartbeat_at: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    #: how often another engine took the job over after its lease lapsed (its engine
    #: died); it is re-run at most once, then failed
    takeovers: Mapped[int] = mapped_column(Integer, default=0)
    #: who asked for it: cli, console, scheduler, policy:NAME...
    actor: Mapped[str | None] = mapped_column(String(128))
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    pause_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    #: where the work can pick up after a crash (e.g. bytes already copied)
    resume_point: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


class DiskWriter(Base):
    """The one writer of a VM disk's chains in a repository (one row per disk).

    Backup, consolidation, point deletion, retention and import of a disk take
    this lease (a compare-and-set on ``token``) before they touch a file and keep
    it alive with a heartbeat; ``token`` is None when nobody writes. A lease whose
    ``expires_at`` passed belongs to a writer that died: the next one first makes
    sure no process still holds ``output`` (the partial file it was writing) and
    removes it.
    """

    __tablename__ = "disk_writers"

    repository_id: Mapped[int] = mapped_column(
        ForeignKey("repositories.id", ondelete="CASCADE"), primary_key=True
    )
    vm_name: Mapped[str] = mapped_column(String(128), primary_key=True)
    disk_name: Mapped[str] = mapped_column(String(128), primary_key=True)
    #: this holding's random id; None: free
    token: Mapped[str | None] = mapped_column(String(32))
    #: backup | consolidate | delete | retention | import
    operation: Mapped[str | None] = mapped_column(String(32))
    job_id: Mapped[int | None] = mapped_column(
        ForeignKey("jobs.id", ondelete="SET NULL"), index=True
    )
    #: the engine holding it (host:pid:id), and who asked
    owner: Mapped[str | None] = mapped_column(String(128))
    actor: Mapped[str | None] = mapped_column(String(128))
    acquired_at: Mapped[datetime | None]
    expires_at: Mapped[datetime | None]
    #: the partial file being written now, relative to the repository root
    output: Mapped[str | None] = mapped_column(String(1024))


class ImmutabilityLock(Base):
    __tablename__ = "immutability_locks"

    id: Mapped[int] = mapped_column(primary_key=True)
    repository_id: Mapped[int] = mapped_column(ForeignKey("repositories.id"), index=True)
    backup_id: Mapped[int | None] = mapped_column(
        ForeignKey("backups.id", ondelete="SET NULL"), index=True
    )
    copy_id: Mapped[int | None] = mapped_column(
        ForeignKey("copies.id", ondelete="SET NULL"), index=True
    )
    #: relative to the repository root
    path: Mapped[str] = mapped_column(String(1024))
    #: pending (grace period) | active | drift (the flag was removed behind our back
    #: and could not be set again) | failed (the flag could not be set when due) |
    #: released (expired, flag cleared)
    state: Mapped[str] = mapped_column(String(16), default="active")
    locked_at: Mapped[datetime | None]
    expires_at: Mapped[datetime]
    released_at: Mapped[datetime | None]
    created_at: Mapped[datetime]


class LockClockCheck(Base):
    """What the clocks read at the lock checks of one boot of one machine.

    ``anchor_*``: the newest reading whose wall time was corroborated (by the boot
    clock since the previous anchor, or by a synchronised clock after a reboot);
    the next check expects the wall clock to have moved as far as the boot clock
    since then. ``last_*``: the newest check, whatever it found. Keyed by the
    kernel's boot id, so several appliances sharing a catalog never compare their
    boot clocks with each other's.
    """

    __tablename__ = "lock_clock_checks"

    boot_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    #: None until a check of this boot was corroborated
    anchor_wall: Mapped[datetime | None]
    #: CLOCK_BOOTTIME in milliseconds (a float column would round on MariaDB)
    anchor_boot_ms: Mapped[int | None] = mapped_column(BigInteger)
    last_wall: Mapped[datetime]
    last_boot_ms: Mapped[int] = mapped_column(BigInteger)
    last_ok: Mapped[bool] = mapped_column(Boolean)
    last_detail: Mapped[str | None] = mapped_column(Text)


class Verification(Base):
    __tablename__ = "verifications"

    id: Mapped[int] = mapped_column(primary_key=True)
    backup_id: Mapped[int | None] = mapped_column(
        ForeignKey("backups.id", ondelete="CASCADE"), index=True
    )
    copy_id: Mapped[int | None] = mapped_column(
        ForeignKey("copies.id", ondelete="CASCADE"), index=True
    )
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    #: ok | mismatch | missing | check_failed | chain_broken
    outcome: Mapped[str] = mapped_column(String(16))
    detail: Mapped[str | None] = mapped_column(Text)
    bytes_read: Mapped[int] = mapped_column(BigInteger, default=0)


class RestoreMount(Base):
    """A restore point exposed read-only for file browsing; always has an expiry."""

    __tablename__ = "restore_mounts"

    id: Mapped[int] = mapped_column(primary_key=True)
    backup_id: Mapped[int] = mapped_column(ForeignKey("backups.id"), index=True)
    #: mounting | mounted | unmounting | failed
    state: Mapped[str] = mapped_column(String(16), default="mounting")
    base_dir: Mapped[str] = mapped_column(String(1024))
    loop_device: Mapped[str | None] = mapped_column(String(64))
    exporter_pid: Mapped[int | None] = mapped_column(Integer)
    #: [{"partition": 1, "fs_type": "ext4", "path": "/.../p1"}]
    filesystems: Mapped[list[Any]] = mapped_column(default=list)
    owner: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime]
    last_used_at: Mapped[datetime]
    expires_at: Mapped[datetime]


class NbdExport(Base):
    __tablename__ = "nbd_exports"

    id: Mapped[int] = mapped_column(primary_key=True)
    backup_id: Mapped[int] = mapped_column(ForeignKey("backups.id"), index=True)
    export_name: Mapped[str] = mapped_column(String(128))
    socket_path: Mapped[str | None] = mapped_column(String(1024))
    tcp_host: Mapped[str | None] = mapped_column(String(255))
    tcp_port: Mapped[int | None] = mapped_column(Integer)
    uri: Mapped[str] = mapped_column(String(1024))
    pid: Mapped[int | None] = mapped_column(Integer)
    persistent: Mapped[bool] = mapped_column(Boolean, default=False)
    #: running | stopped | dead
    state: Mapped[str] = mapped_column(String(16), default="running")
    owner: Mapped[str | None] = mapped_column(String(128))
    started_at: Mapped[datetime]
    stopped_at: Mapped[datetime | None]
    #: "psk" when clients must speak TLS with the export's pre-shared key, else None
    tls: Mapped[str | None] = mapped_column(String(16))
    #: stopped after this many seconds without a client connected
    idle_seconds: Mapped[int | None] = mapped_column(Integer)
    #: when a client was last seen connected (or the start)
    last_active_at: Mapped[datetime | None]
    #: stopped at this time at the latest (the maximum age)
    expires_at: Mapped[datetime | None]
    #: why it ended: stopped by an operator, idle, max_age, owner_gone, server_died
    stop_reason: Mapped[str | None] = mapped_column(String(32))


class NotificationRule(Base):
    """Where events of some levels, sources and kinds are sent: a webhook, a mail
    server or an apprise URL (engine.services.notify)."""

    __tablename__ = "notification_rules"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    #: events at this level or above match (None: any level)
    min_level: Mapped[str | None] = mapped_column(String(16))
    #: matching is narrowed to these levels / sources / kind prefixes when not empty
    levels: Mapped[list[Any]] = mapped_column(default=list)
    sources: Mapped[list[Any]] = mapped_column(default=list)
    kinds: Mapped[list[Any]] = mapped_column(default=list)
    #: webhook | email | apprise
    target: Mapped[str] = mapped_column(String(16))
    #: the target's settings that are not secret: url; host, port, starttls, from, to, user
    options: Mapped[dict[str, Any]] = mapped_column(default=dict)
    #: encrypted (HMAC key, SMTP password, apprise URL); never clear text
    secret: Mapped[str | None] = mapped_column(Text)
    dedup_minutes: Mapped[int] = mapped_column(Integer, default=0)
    #: None: no limit
    max_per_hour: Mapped[int | None] = mapped_column(Integer)
    #: "HH:MM" (UTC): matching events wait for one message a day at that time
    digest_at: Mapped[str | None] = mapped_column(String(5))
    #: the digest time whose message was last sent, so each is sent once
    digest_sent_for: Mapped[datetime | None]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class NotificationDelivery(Base):
    """One event (or a digest, a summary of held events, a test) on its way to one rule's
    target: queued -> sending -> sent | failed; suppressed (a duplicate within the rule's
    dedup window); held (waiting for the digest or for the rate limit's window) ->
    folded (sent as part of the delivery ``folded_into``)."""

    __tablename__ = "notification_deliveries"
    __table_args__ = (
        Index("ix_notification_deliveries_rule_time", "rule_id", "created_at"),
        Index("ix_notification_deliveries_state_due", "state", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    rule_id: Mapped[int] = mapped_column(
        ForeignKey("notification_rules.id", ondelete="CASCADE"), index=True
    )
    #: the event as sent: level, kind, source, message, at, ids, data
    event: Mapped[dict[str, Any]] = mapped_column(default=dict)
    kind: Mapped[str] = mapped_column(String(96))
    level: Mapped[str] = mapped_column(String(16))
    #: what the event is about (job:7, repository:2, copy_rule:3…), for dedup
    subject: Mapped[str] = mapped_column(String(128), default="")
    state: Mapped[str] = mapped_column(String(16), default="queued")
    #: why it was not sent on its own: dedup | rate | digest; test for a test message
    reason: Mapped[str | None] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    folded_into: Mapped[int | None] = mapped_column(Integer)
    #: the engine sending it (host:pid:token) while state is sending
    owner: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    next_attempt_at: Mapped[datetime | None]
    sent_at: Mapped[datetime | None]


class AuditEntry(Base):
    """Everything that happened, in order: engine events and operator actions."""

    __tablename__ = "audit_log"
    __table_args__ = (
        Index("ix_audit_log_at", "at"),
        Index("ix_audit_log_source_id", "source", "id"),
        Index("ix_audit_log_level_id", "level", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime]
    #: debug | info | warning | error | critical
    level: Mapped[str] = mapped_column(String(16))
    #: the service that reported it: repositories, capacity, jobs, copy, ...
    source: Mapped[str] = mapped_column(String(64))
    #: dotted event type, e.g. capacity.threshold_crossed
    kind: Mapped[str] = mapped_column(String(96))
    message: Mapped[str] = mapped_column(Text)
    repository_id: Mapped[int | None] = mapped_column(
        ForeignKey("repositories.id", ondelete="SET NULL"), index=True
    )
    job_id: Mapped[int | None] = mapped_column(
        ForeignKey("jobs.id", ondelete="SET NULL"), index=True
    )
    actor: Mapped[str | None] = mapped_column(String(128))
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)


class ApiToken(Base):
    """A credential of the HTTP API: a name, a role, and only a digest of its secret.

    The secret (``sendense_<prefix>_<random>``) is shown once when it is made; the
    catalog keeps its SHA-256 (a secret of 256 random bits needs no slow hash) and
    the short ``prefix`` that finds the row. A revoked token keeps its row (the
    audit log names it) until a new token takes its name.
    """

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    #: read | operate | admin
    role: Mapped[str] = mapped_column(String(16))
    #: the lookup part of the secret (not secret on its own)
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    #: hex SHA-256 of the whole secret
    digest: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime]
    #: who made it (a user name, or the API caller)
    created_by: Mapped[str | None] = mapped_column(String(128))
    expires_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    #: when a request last used it (kept to the minute: not a write per request)
    last_used_at: Mapped[datetime | None]


def utcnow() -> datetime:
    return datetime.now(UTC)
