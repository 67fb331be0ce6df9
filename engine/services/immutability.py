"""Immutability: backups and copies on an immutable repository get ``chattr +i``.

What the flag protects against, in plain words (the console shows this text):
the immutable flag stops this application, any script it runs and every
non-root user from changing, renaming or deleting a locked backup, and so it
stops ransomware that gets in through them. It does NOT stop root on the
appliance: root can clear the flag with ``chattr -i``. A drift check reads the
flag back and re-applies it (and raises a critical event), but protection
against a compromised root needs a second copy elsewhere (offsite, or a
different appliance).

Each lock's expiry is also written into the locked point's manifest (when the
lock is set and when it is extended), so ``sendense repo import`` recreates the
lock row with the same expiry after a catalog loss (engine.services.manifests).

The lock logic is behind ``LockBackend`` so S3 Object Lock can be added later;
``ChattrLockBackend`` is the local-filesystem one. The catalog keeps each lock's
expiry; the release job clears the flag only after it, and never while the
clock looks like it jumped backwards.

Filesystems: only ext4, xfs and btrfs are accepted (an allow-list, then a canary
``chattr +i`` probe). tmpfs is refused although Linux >= 6.0 accepts the flag
there: its files vanish at reboot, so the "lock" would hold nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from engine.catalog.locks import HOLDING_STATES, LockStore
from engine.catalog.models import ImmutabilityLock, Repository
from engine.catalog.repositories import RepositoryStore
from engine.clock import SYSTEM_CLOCK, Clock, as_utc
from engine.errors import SendenseError, ValidationError
from engine.events import Event, EventBus
from engine.safepath import is_within
from engine.services import manifests
from engine.tools import attrs
from engine.tools.base import ToolError

log = logging.getLogger(__name__)

#: filesystems whose immutable flag is persistent and enforced by the kernel
SUPPORTED_FILESYSTEMS = ("ext4", "xfs", "btrfs")
#: a clock this far behind what the catalog already recorded is "jumped backwards"
CLOCK_TOLERANCE = timedelta(minutes=5)

PROTECTS = (
    "The immutable flag (chattr +i) stops Sendense itself, any program it runs and every "
    "non-root user from changing, renaming or deleting a locked backup until the lock "
    "expires, so ransomware that gets in through them cannot destroy it."
)
DOES_NOT_PROTECT = (
    "It does not stop root on this appliance: root can clear the flag (chattr -i). "
    "Sendense reads the flag back and re-applies it if it was removed, and raises a "
    "critical event, but against a compromised root only a copy on another machine "
    "(offsite) protects you."
)


class ImmutabilityError(SendenseError):
    """A lock cannot be set, changed or released."""


class ImmutabilityUnsupported(ImmutabilityError):
    """The repository's filesystem cannot hold an enforced, persistent immutable flag."""


class LockedFile(ImmutabilityError):
    """The engine was asked to change or delete a locked file."""


# -- the backend interface ------------------------------------------------------------


class LockBackend(Protocol):
    """Where a lock is enforced. ``chattr`` today; S3 Object Lock later."""

    name: str

    def check_supported(self, root: Path) -> str:
        """Raise ImmutabilityUnsupported with the reason; return a description."""
        ...

    def lock(self, path: Path) -> None: ...

    def unlock(self, path: Path) -> None: ...

    def is_locked(self, path: Path) -> bool: ...


class ChattrLockBackend:
    """``chattr +i`` on local ext4/xfs/btrfs files, read back with ``lsattr``."""

    name = "chattr"

    def fs_type(self, root: Path) -> str:
        from engine.tools.mounts import find_mount

        try:
            return find_mount(root).fstype
        except (OSError, ToolError):
            return "unknown"

    def check_supported(self, root: Path) -> str:
        fs = self.fs_type(root)
        if fs not in SUPPORTED_FILESYSTEMS:
            why = {
                "tmpfs": "tmpfs lives in memory: everything on it, locks included, is gone at "
                "the next reboot",
                "ramfs": "ramfs has no immutable flag and lives in memory",
                "nfs": "an NFS export cannot carry the immutable flag to the server",
                "nfs4": "an NFS export cannot carry the immutable flag to the server",
                "cifs": "a CIFS/SMB share has no immutable flag",
                "smb3": "a CIFS/SMB share has no immutable flag",
            }.get(fs, f"{fs} is not a filesystem Sendense can lock files on")
            raise ImmutabilityUnsupported(
                f"immutability cannot be enabled on {root}: {why}",
                hint="put the immutable repository on a local ext4, xfs or btrfs filesystem",
            )
        canary = root / f".sendense-lock-canary-{uuid.uuid4().hex[:8]}"
        try:
            canary.write_bytes(b"sendense immutability canary\n")
            attrs.set_immutable(canary, True)
            if not attrs.is_immutable(canary):
                raise ImmutabilityUnsupported(
                    f"immutability cannot be enabled on {root}: the flag did not stick "
                    "(lsattr does not show it)",
                    hint="check the filesystem and that Sendense runs as root",
                )
            try:
                canary.unlink()
            except PermissionError:
                pass  # expected: the flag holds
            else:
                raise ImmutabilityUnsupported(
                    f"immutability cannot be enabled on {root}: a flagged file could still "
                    "be deleted",
                    hint="put the repository on a local ext4, xfs or btrfs filesystem",
                )
        except attrs.AttrError as exc:
            raise ImmutabilityUnsupported(
                f"immutability cannot be enabled on {root}: {exc.message}",
                hint=exc.hint or "run Sendense as root on ext4, xfs or btrfs",
            ) from None
        except OSError as exc:
            raise ImmutabilityUnsupported(
                f"immutability cannot be enabled on {root}: the test file could not be "
                f"written ({exc.strerror})",
                hint="check that the repository is mounted and writable",
            ) from None
        finally:
            with contextlib.suppress(attrs.AttrError, OSError):
                if canary.exists():
                    attrs.set_immutable(canary, False)
                    canary.unlink()
        return f"{fs}: chattr +i enforced"

    def lock(self, path: Path) -> None:
        attrs.set_immutable(path, True)

    def unlock(self, path: Path) -> None:
        attrs.set_immutable(path, False)

    def is_locked(self, path: Path) -> bool:
        return attrs.is_immutable(path)


# -- results ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ClockStatus:
    ok: bool
    now: datetime
    newest_recorded: datetime | None
    message: str


@dataclass
class MaintenanceReport:
    applied: list[int] = field(default_factory=list)
    released: list[int] = field(default_factory=list)
    drift_repaired: list[int] = field(default_factory=list)
    drift_failed: list[int] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)
    clock: ClockStatus | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "applied": self.applied,
            "released": self.released,
            "drift_repaired": self.drift_repaired,
            "drift_failed": self.drift_failed,
            "missing": self.missing,
            "clock_ok": self.clock.ok if self.clock else None,
            "clock": self.clock.message if self.clock else None,
        }


def until_text(when: datetime) -> str:
    return f"{as_utc(when):%Y-%m-%d %H:%M} UTC"


# -- the service ------------------------------------------------------------------------


class LockService:
    """Locks on files in immutable repositories (``engine.locks``)."""

    def __init__(
        self,
        store: LockStore,
        repositories: RepositoryStore,
        bus: EventBus,
        *,
        backend: LockBackend | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.store = store
        self.repositories = repositories
        self.bus = bus
        self.backend: LockBackend = backend or ChattrLockBackend()
        self.clock = clock
        self.protects = PROTECTS
        self.does_not_protect = DOES_NOT_PROTECT

    # -- wiring -------------------------------------------------------------------------

    def subscribe(self, chain_store: Any = None, copy_store: Any = None) -> None:
        """Lock what lands on immutable repositories: backup.completed, copy.completed."""
        self._chain_store = chain_store
        self._copy_store = copy_store
        self.bus.subscribe(self._on_landed, ("backup.completed", "copy.completed"))

    def _on_landed(self, event: Event) -> None:
        try:
            if event.kind == "backup.completed" and self._chain_store is not None:
                backup_id = int(event.data["backup_id"])
                backup, _chain, repo = self._chain_store.locate(backup_id)
                if repo.immutable:
                    self.lock_landed(repo, backup.path, backup_id=backup_id)
            elif event.kind == "copy.completed" and self._copy_store is not None:
                copy = self._copy_store.get_copy(int(event.data["copy_id"]))
                repo = self.repositories.get(copy.destination_repository_id)
                days = self._copy_rule_lock_days(copy)
                if repo.immutable or days:
                    self.lock_landed(repo, copy.path, copy_id=copy.id, days=days)
        except SendenseError as exc:
            self._event(
                "immutability.lock_failed",
                f"a landed file could not be locked: {exc.message}",
                level="error",
            )
        except Exception:
            log.exception("locking a landed file (%s)", event.kind)

    def _copy_rule_lock_days(self, copy: Any) -> int | None:
        """A copy rule with ``lock_copies`` holds its copies at least as long as the
        original is locked (the source repository's lock period); the destination's own
        period applies on top when it is immutable (lock_landed takes the longer).
        The rule is refused at validation when neither side has a lock period."""
        if copy.rule_id is None:
            return None
        try:
            rule = self._copy_store.get_rule(copy.rule_id)
        except SendenseError:
            return None
        if not rule.lock_copies:
            return None
        source = self.repositories.get(rule.source_repository_id)
        return source.immutable_days if source.immutable else None

    # -- repositories ------------------------------------------------------------------

    def check_supported(self, repo: Repository | int | str) -> str:
        repo = self._repo(repo)
        if repo.kind != "local":
            raise ImmutabilityUnsupported(
                f"immutability cannot be enabled on repository {repo.name}: it is a "
                f"{repo.kind.upper()} share, and the immutable flag cannot be set over "
                "the network",
                hint="use a local ext4, xfs or btrfs repository for immutable backups",
            )
        root = Path(repo.path)
        if not root.is_dir():
            raise ImmutabilityUnsupported(
                f"immutability cannot be checked on {repo.name}: {root} is not there",
                hint="mount the repository first",
            )
        return self.backend.check_supported(root)

    def configure_repository(
        self,
        repo: Repository | int | str,
        days: int,
        *,
        grace_hours: int = 0,
        actor: str | None = None,
    ) -> Repository:
        """Make a repository immutable, or lengthen its lock period. Shortening (or
        turning it off) is refused: locks only ever grow."""
        repo = self._repo(repo)
        if days < 1:
            raise ValidationError(
                f"a lock period of {days} day(s) is not a lock",
                hint="give at least 1 day",
            )
        if grace_hours < 0 or grace_hours > 72:
            raise ValidationError("the grace period must be between 0 and 72 hours")
        if repo.immutable and days < repo.immutable_days:
            raise ImmutabilityError(
                f"repository {repo.name} locks for {repo.immutable_days} days; lock periods "
                f"can be extended, never shortened (asked: {days})",
                hint="existing and future locks keep their length; add a new repository "
                "for a shorter period",
            )
        if repo.immutable and grace_hours > repo.immutable_grace_hours:
            raise ImmutabilityError(
                f"repository {repo.name} has a {repo.immutable_grace_hours} h grace period; "
                "a longer grace period would leave new backups unlocked for longer",
                hint="the grace period can only get shorter",
            )
        how = self.check_supported(repo)
        updated = self.repositories.update(
            repo.id,
            self.clock.now(),
            immutable=True,
            immutable_days=days,
            immutable_grace_hours=grace_hours,
        )
        self._event(
            "immutability.configured",
            f"repository {repo.name}: new backups are locked for {days} day(s)"
            + (f" after a {grace_hours} h grace period" if grace_hours else "")
            + f" ({how})",
            repository_id=repo.id,
            actor=actor,
            level="warning",
        )
        return updated

    def disable_repository(self, repo: Repository | int | str, **_: Any) -> None:
        repo = self._repo(repo)
        raise ImmutabilityError(
            f"immutability of repository {repo.name} cannot be turned off: lock periods can "
            "be extended, never shortened",
            hint="existing locks expire on their own; stop sending new backups there instead",
        )

    # -- locking -----------------------------------------------------------------------

    def lock_landed(
        self,
        repository: Repository | int | str,
        relative_path: str,
        *,
        backup_id: int | None = None,
        copy_id: int | None = None,
        days: int | None = None,
    ) -> ImmutabilityLock | None:
        """Lock a complete file that just landed. ``days`` (a policy's lock period)
        adds to the repository's; None when nothing asks for a lock."""
        repo = self._repo(repository)
        period = max(repo.immutable_days if repo.immutable else 0, days or 0)
        if period <= 0:
            return None
        path = self._file(repo, relative_path)
        now = self.clock.now()
        expires = now + timedelta(days=period)
        existing = self.store.holding(repo.id, relative_path)
        if existing is not None:
            if as_utc(existing.expires_at) < expires:  # type: ignore[operator]
                self.store.extend(existing.id, expires)
                self._record_expiry(repo, path, expires)
            if existing.state == "active" and not self._flag(path):
                self.backend.lock(path)
            return self.store.get(existing.id)
        grace = repo.immutable_grace_hours if repo.immutable else 0
        if grace > 0:
            row = self.store.add(
                repository_id=repo.id,
                path=relative_path,
                expires_at=expires + timedelta(hours=grace),
                now=now,
                state="pending",
                backup_id=backup_id,
                copy_id=copy_id,
            )
            self._record_expiry(repo, path, row.expires_at)
            self._event(
                "immutability.pending",
                f"{relative_path} on {repo.name} will be locked after the {grace} h grace "
                f"period, until {until_text(row.expires_at)}",
                repository_id=repo.id,
                level="debug",
            )
            return row
        self.backend.lock(path)
        row = self.store.add(
            repository_id=repo.id,
            path=relative_path,
            expires_at=expires,
            now=now,
            state="active",
            backup_id=backup_id,
            copy_id=copy_id,
        )
        self._record_expiry(repo, path, expires)
        self._event(
            "immutability.locked",
            f"{relative_path} on {repo.name} locked until {until_text(expires)}",
            repository_id=repo.id,
            level="debug",
            data={"lock_id": row.id, "backup_id": backup_id, "copy_id": copy_id},
        )
        return row

    def extend(
        self, lock_id: int, until: datetime, *, actor: str | None = None
    ) -> ImmutabilityLock:
        """Move a lock's expiry later; an earlier date is refused."""
        lock = self.store.get(lock_id)
        if lock.state not in HOLDING_STATES:
            raise ImmutabilityError(f"lock {lock_id} is {lock.state}; only a holding lock extends")
        current = as_utc(lock.expires_at)
        assert current is not None
        if as_utc(until) <= current:  # type: ignore[operator]
            raise ImmutabilityError(
                f"lock {lock_id} holds until {until_text(current)}; lock periods can be "
                f"extended, never shortened (asked: {until_text(until)})",
                hint="give a later date",
            )
        self.store.extend(lock_id, until)
        repo = self._repo(lock.repository_id)
        self._record_expiry(repo, self._file(repo, lock.path), until)
        self._event(
            "immutability.extended",
            f"lock on {lock.path} extended to {until_text(until)}",
            repository_id=lock.repository_id,
            actor=actor,
        )
        return self.store.get(lock_id)

    def apply_pending(self) -> list[int]:
        """Set the flag on files whose grace period is over."""
        now = self.clock.now()
        applied = []
        repos = {r.id: r for r in self.repositories.list()}
        for lock in self.store.list(states=("pending",)):
            repo = repos.get(lock.repository_id)
            if repo is None:
                continue
            due = as_utc(lock.created_at) + timedelta(hours=repo.immutable_grace_hours)  # type: ignore[operator]
            if due > now:
                continue
            path = self._file(repo, lock.path)
            if not path.exists():
                self.store.update(lock.id, state="released", released_at=now)
                continue
            self.backend.lock(path)
            self.store.update(lock.id, state="active", locked_at=now)
            applied.append(lock.id)
        return applied

    # -- reading -----------------------------------------------------------------------

    def why_locked_rel(self, repo: Repository, relative_path: str) -> str | None:
        """Why this file may not be changed or deleted now; None when it may."""
        lock = self.store.holding(repo.id, relative_path)
        if lock is not None:
            until = until_text(lock.expires_at)
            if as_utc(lock.expires_at) <= self.clock.now():  # type: ignore[operator]
                return (
                    f"locked by immutability; the lock expired at {until} and is released by "
                    "the next lock job (`sendense lock release-expired`)"
                )
            if lock.state == "pending":
                return f"locked by immutability until {until} (grace period, flag not yet set)"
            return f"locked by immutability until {until}"
        path = self._file(repo, relative_path)
        if path.exists() and self._flag(path):
            return "immutable (lsattr shows 'i') without a catalog lock; clear it by hand"
        return None

    def why_locked(self, path: str | Path) -> str | None:
        """The same for an absolute path (any repository)."""
        path = Path(path)
        for repo in self.repositories.list():
            root = Path(repo.path)
            if is_within(root, path):
                return self.why_locked_rel(repo, os.path.relpath(path, root))
        if path.exists() and self._flag(path):
            return "immutable (lsattr shows 'i')"
        return None

    def assert_unlocked(self, path: str | Path) -> None:
        why = self.why_locked(path)
        if why:
            raise LockedFile(
                f"{path} cannot be changed or deleted: {why}",
                hint="locked files can only be removed after the lock expires",
            )

    def list(self, *, states: tuple[str, ...] | None = None) -> list[ImmutabilityLock]:
        return self.store.list(states=states)

    def locks_for_backups(self, backup_ids: list[int]) -> dict[int, ImmutabilityLock]:
        found: dict[int, ImmutabilityLock] = {}
        for lock in self.store.list(states=HOLDING_STATES, backup_ids=backup_ids):
            if lock.backup_id is not None:
                found[lock.backup_id] = lock
        return found

    # -- the clock ---------------------------------------------------------------------

    def clock_status(self) -> ClockStatus:
        now = self.clock.now()
        newest = self.store.newest_recorded_time()
        if newest is not None and now + CLOCK_TOLERANCE < newest:
            return ClockStatus(
                False,
                now,
                newest,
                f"the clock reads {now:%Y-%m-%d %H:%M} UTC but the catalog already holds "
                f"entries from {newest:%Y-%m-%d %H:%M} UTC: it jumped backwards and is not "
                "trusted",
            )
        return ClockStatus(True, now, newest, "clock ok")

    # -- maintenance: pending, drift, release --------------------------------------------

    def check_drift(self) -> MaintenanceReport:
        """Read every holding flag back; re-apply what was removed behind our back."""
        report = MaintenanceReport()
        now = self.clock.now()
        repos = {r.id: r for r in self.repositories.list()}
        for lock in self.store.list(states=("active", "drift")):
            repo = repos.get(lock.repository_id)
            if repo is None or as_utc(lock.expires_at) <= now:  # type: ignore[operator]
                continue
            path = self._file(repo, lock.path)
            if not path.exists():
                report.missing.append(lock.id)
                self._event(
                    "immutability.missing",
                    f"locked file {lock.path} on {repo.name} is gone although its lock holds "
                    f"until {until_text(lock.expires_at)}: someone with root removed it",
                    level="critical",
                    repository_id=repo.id,
                    data={"lock_id": lock.id},
                )
                continue
            try:
                if self.backend.is_locked(path):
                    if lock.state == "drift":
                        self.store.update(lock.id, state="active")
                    continue
            except ToolError as exc:
                log.warning("reading the flag of %s: %s", path, exc)
                continue
            try:
                self.backend.lock(path)
                repaired = self.backend.is_locked(path)
            except ToolError:
                repaired = False
            self.store.update(lock.id, state="active" if repaired else "drift")
            (report.drift_repaired if repaired else report.drift_failed).append(lock.id)
            self._event(
                "immutability.drift",
                f"the immutable flag of {lock.path} on {repo.name} was removed behind "
                "Sendense's back (only root can do that); "
                + ("it was set again" if repaired else "setting it again FAILED"),
                level="critical",
                repository_id=repo.id,
                data={"lock_id": lock.id, "repaired": repaired},
            )
        return report

    def release_expired(self, *, actor: str | None = None) -> MaintenanceReport:
        """Clear the flag of locks whose expiry passed; nothing while the clock is suspect."""
        report = MaintenanceReport()
        status = self.clock_status()
        report.clock = status
        if not status.ok:
            self._event(
                "immutability.clock_suspect",
                f"no lock released: {status.message}",
                level="critical",
                actor=actor,
            )
            return report
        now = status.now
        repos = {r.id: r for r in self.repositories.list()}
        for lock in self.store.expired(now):
            repo = repos.get(lock.repository_id)
            if repo is None:
                continue
            path = self._file(repo, lock.path)
            if path.exists():
                try:
                    self.backend.unlock(path)
                except ToolError as exc:
                    log.warning("releasing %s: %s", path, exc)
                    continue
            if self.store.mark_released(lock.id, now):
                report.released.append(lock.id)
        if report.released:
            self._event(
                "immutability.released",
                f"released {len(report.released)} expired lock(s)",
                actor=actor,
                data={"lock_ids": report.released},
            )
        return report

    def maintain(self, *, actor: str | None = None) -> MaintenanceReport:
        """The periodic lock job: grace periods, drift, expiry."""
        applied = self.apply_pending()
        drift = self.check_drift()
        report = self.release_expired(actor=actor)
        report.applied = applied
        report.drift_repaired = drift.drift_repaired
        report.drift_failed = drift.drift_failed
        report.missing = drift.missing
        return report

    def run_job(self, ctx: Any) -> dict[str, Any]:
        return self.maintain(actor=ctx.params.get("actor")).as_dict()

    def register(self, jobs: Any) -> None:
        jobs.register("locks.maintain", self.run_job)

    # -- helpers -----------------------------------------------------------------------

    def _repo(self, ref: Repository | int | str) -> Repository:
        # always the catalog's current row: a caller's copy may be stale
        return self.repositories.get(ref.id if isinstance(ref, Repository) else ref)

    def _file(self, repo: Repository, relative: str) -> Path:
        root = Path(repo.path)
        path = root / relative
        if not is_within(root, path):
            raise ValidationError(f"{relative} lies outside repository {repo.name}")
        return path

    def _record_expiry(self, repo: Repository, path: Path, expires: datetime) -> None:
        """Write the lock's expiry into the point's manifest, so a catalog import keeps
        the lock as long (engine.services.manifests). The flag is the lock: a manifest
        that cannot be written is reported, and the lock holds all the same."""
        try:
            manifests.record_lock(path, as_utc(expires) or expires)
        except OSError as exc:
            self._event(
                "immutability.manifest_failed",
                f"the lock on {path.name} ({repo.name}) holds, but its manifest could not "
                f"record until when ({exc.strerror}): an import after a catalog loss would "
                "not know its expiry",
                level="warning",
                repository_id=repo.id,
            )

    def _flag(self, path: Path) -> bool:
        try:
            return self.backend.is_locked(path)
        except ToolError:
            return False

    def _event(self, kind: str, message: str, **fields: Any) -> None:
        self.bus.emit("immutability", kind, message, **fields)
