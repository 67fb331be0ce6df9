"""Immutability: backups and copies on an immutable repository get ``chattr +i``.

What the flag protects against, in plain words (the console shows this text):
the immutable flag stops this application, any script it runs and every
non-root user from changing, renaming or deleting a locked backup, and so it
stops ransomware that gets in through them. It does NOT stop root on the
appliance: root can clear the flag with ``chattr -i``. A drift check reads the
flag back and re-applies it (and raises a critical event), but protection
against a compromised root needs a second copy elsewhere (offsite, or a
different appliance).

Locking is a step of the job that lands a file (backup, copy), not a reaction
to an event: ``LockService.lock_landed`` sets the flag and reads it back, and
when that fails the job ends as ``failed_unprotected`` with a critical event
naming the file and why; the point stays (it is a good backup) and shows as
unprotected until the lock job manages to set the flag.

Each lock's expiry is also written into the locked point's manifest (when the
lock is set and when it is extended), so ``sendense repo import`` recreates the
lock row with the same expiry after a catalog loss (engine.services.manifests).

The lock logic is behind ``LockBackend`` so S3 Object Lock can be added later;
``ChattrLockBackend`` is the local-filesystem one. The catalog keeps each lock's
expiry; the release job clears the flag only after it, and never while the
clock is suspect: behind what the catalog holds (a backward jump), ahead of
what the boot clock (CLOCK_BOOTTIME) says has passed since the last lock check
(a forward jump), or not corroborated after a reboot (the system does not
report it synchronised). Nothing deletes a holding lock row; a repository with
holding locks cannot be removed, not even by force.

Filesystems: only ext4, xfs and btrfs are accepted (an allow-list, then a canary
``chattr +i`` probe). tmpfs is refused although Linux >= 6.0 accepts the flag
there: its files vanish at reboot, so the "lock" would hold nothing.
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import os
import socket
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from engine.bounds import GRACE_HOURS, LOCK_DAYS, expiry_after, latest_allowed
from engine.catalog.locks import FLAGGED_STATES, HOLDING_STATES, UNPROTECTED_STATES, LockStore
from engine.catalog.models import ImmutabilityLock, Repository
from engine.catalog.repositories import RepositoryStore
from engine.clock import SYSTEM_CLOCK, Clock, as_utc
from engine.errors import SendenseError, ValidationError
from engine.events import Event, EventBus
from engine.failpoints import failpoint
from engine.jobs import JobHandler
from engine.safepath import is_within
from engine.services import manifests
from engine.states import JobKind
from engine.tools import attrs
from engine.tools.base import ToolError
from engine.units import plural

log = logging.getLogger(__name__)

#: filesystems whose immutable flag is persistent and enforced by the kernel
SUPPORTED_FILESYSTEMS = ("ext4", "xfs", "btrfs")
#: a clock this far behind what the catalog already recorded is "jumped backwards", and
#: this far from where the boot clock says it should be is "jumped"
CLOCK_TOLERANCE = timedelta(minutes=5)
#: on top of that, what the wall and boot clocks may drift apart per second elapsed
#: (NTP slews both alike; 0.1 % is twice the largest slew NTP applies)
CLOCK_DRIFT_RATE = 0.001

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
    #: where the boot clock says the wall clock should stand (None: nothing to compare)
    expected: datetime | None = None


@dataclass(frozen=True)
class LockOutcome:
    """What the lock step of a job did for one file that landed."""

    #: the lock row (None: nothing asked for a lock)
    lock: ImmutabilityLock | None
    #: why the file is NOT protected (None: flag set and read back, or a grace period)
    failure: str | None = None

    @property
    def protected(self) -> bool:
        return self.failure is None

    @property
    def until(self) -> datetime | None:
        return as_utc(self.lock.expires_at) if self.lock is not None else None


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


def _duration_text(seconds: float) -> str:
    seconds = abs(seconds)
    if seconds >= 2 * 86400:
        return f"{seconds / 86400:.1f} days"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} hours"
    if seconds >= 120:
        return f"{seconds / 60:.0f} minutes"
    return f"{seconds:.0f} seconds"


# -- the service ------------------------------------------------------------------------


class LockService:
    """Locks on files in immutable repositories (``engine.locks``).

    The backup and copy jobs call ``lock_landed`` as a step of their own, after the
    file is recorded; a flag that cannot be set (or read back) makes the job end as
    ``failed_unprotected`` with a critical event naming the file and why.
    """

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
        days = LOCK_DAYS.check(days)
        grace_hours = GRACE_HOURS.check(grace_hours)
        if repo.immutable:
            # a period stored before bounds existed counts as the longest one allowed:
            # that is how long its locks were made to hold
            current = min(repo.immutable_days, LOCK_DAYS.high)
            if days < current:
                raise ImmutabilityError(
                    f"repository {repo.name} locks for {current} days; lock periods "
                    f"can be extended, never shortened (asked: {days})",
                    hint="existing and future locks keep their length; add a new repository "
                    "for a shorter period",
                )
            if grace_hours > repo.immutable_grace_hours:
                raise ImmutabilityError(
                    f"repository {repo.name} has a {repo.immutable_grace_hours} h grace "
                    "period; a longer grace period would leave new backups unlocked for longer",
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
            f"repository {repo.name}: new backups are locked for {plural(days, 'day')}"
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

    def holding_for_repository(self, repo: Repository | int | str) -> list[ImmutabilityLock]:
        """Locks that hold files of this repository (or copies of them), latest first."""
        return self.store.holding_for_repository(self._repo(repo).id)

    # -- locking -----------------------------------------------------------------------

    def lock_landed(
        self,
        repository: Repository | int | str,
        relative_path: str,
        *,
        backup_id: int | None = None,
        copy_id: int | None = None,
        days: int | None = None,
        job_id: int | None = None,
    ) -> LockOutcome:
        """The lock step of a job: lock a complete, recorded file that just landed.

        ``days`` (a policy's or a copy rule's lock period) adds to the repository's;
        the longer one wins. Returns a LockOutcome whose ``failure`` says why the file
        is not protected: the flag could not be set or read back, or the period is
        not one a calendar holds. Such a file gets a ``failed`` lock row (the engine
        still refuses to change or delete it, and the lock job keeps trying to set
        the flag) and a critical event. Never raises for what an operator can fix: a
        lock that cannot even be recorded is reported as a failure too.
        """
        try:
            return self._lock_landed(
                repository,
                relative_path,
                backup_id=backup_id,
                copy_id=copy_id,
                days=days,
                job_id=job_id,
            )
        except SendenseError as exc:
            why = f"the lock could not be recorded ({exc.message})"
            with contextlib.suppress(SendenseError):
                self._event(
                    "immutability.lock_failed",
                    f"{relative_path} is NOT protected: {why}",
                    level="critical",
                    job_id=job_id,
                    data={"backup_id": backup_id, "copy_id": copy_id, "why": why},
                )
            return LockOutcome(None, why)

    def _lock_landed(
        self,
        repository: Repository | int | str,
        relative_path: str,
        *,
        backup_id: int | None,
        copy_id: int | None,
        days: int | None,
        job_id: int | None,
    ) -> LockOutcome:
        repo = self._repo(repository)
        wanted = [repo.immutable_days] if repo.immutable else []
        if days:
            wanted.append(days)
        if not wanted or max(wanted) <= 0:
            return LockOutcome(None)
        path = self._file(repo, relative_path)
        now = self.clock.now()
        grace = repo.immutable_grace_hours if repo.immutable else 0
        why: str | None = None
        try:
            if repo.immutable:
                LOCK_DAYS.check(repo.immutable_days)
                grace = GRACE_HOURS.check(grace)
        except ValidationError as exc:
            # stored before bounds existed (or written around the engine)
            why = (
                f"repository {repo.name}'s lock settings are refused ({exc.message}); "
                f"fix them with `sendense lock enable {repo.name} --days N --yes`"
            )
        try:
            if days:
                LOCK_DAYS.check(days)
        except ValidationError as exc:
            why = f"the lock period asked for is refused ({exc.message})"
        if why is not None:
            # the file is still held, as long as the engine holds anything
            return self._failed(
                repo, relative_path, latest_allowed(now), why, backup_id, copy_id, job_id
            )
        expires = expiry_after(now, days=max(wanted))
        grace_end = expiry_after(expires, hours=grace)
        existing = self.store.holding(repo.id, relative_path)
        if existing is not None:
            if as_utc(existing.expires_at) < expires:  # type: ignore[operator]
                self.store.extend(existing.id, expires)
                self._record_expiry(repo, path, expires)
            if existing.state == "pending":
                return LockOutcome(self.store.get(existing.id))
            failure = self._set_flag(path)
            if failure is not None:
                return self._failed(
                    repo, relative_path, expires, failure, backup_id, copy_id, job_id, existing
                )
            if existing.state != "active":
                self.store.update(existing.id, state="active", locked_at=now)
            return LockOutcome(self.store.get(existing.id))
        if grace > 0:
            row = self.store.add(
                repository_id=repo.id,
                path=relative_path,
                expires_at=grace_end,
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
                job_id=job_id,
                level="debug",
            )
            return LockOutcome(row)
        failure = self._set_flag(path)
        if failure is not None:
            return self._failed(repo, relative_path, expires, failure, backup_id, copy_id, job_id)
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
            job_id=job_id,
            level="debug",
            data={"lock_id": row.id, "backup_id": backup_id, "copy_id": copy_id},
        )
        return LockOutcome(row)

    def _set_flag(self, path: Path) -> str | None:
        """Set the flag and read it back; None when it holds, else why it does not."""
        try:
            self.backend.lock(path)
        except ToolError as exc:
            return f"the immutable flag could not be set ({exc.message})"
        except OSError as exc:
            return f"the immutable flag could not be set ({exc.strerror or exc})"
        try:
            if not self.backend.is_locked(path):
                return "the immutable flag did not stick (lsattr does not show it)"
        except ToolError as exc:
            return f"the immutable flag could not be read back ({exc.message})"
        except OSError as exc:
            return f"the immutable flag could not be read back ({exc.strerror or exc})"
        return None

    def _failed(
        self,
        repo: Repository,
        relative_path: str,
        expires: datetime,
        why: str,
        backup_id: int | None,
        copy_id: int | None,
        job_id: int | None,
        existing: ImmutabilityLock | None = None,
    ) -> LockOutcome:
        """Record an unprotected file: a ``failed`` lock row (the engine keeps refusing
        to touch the file until the lock's time is over) and a critical event."""
        if existing is not None:
            self.store.update(existing.id, state="failed")
            row = self.store.get(existing.id)
        else:
            row = self.store.add(
                repository_id=repo.id,
                path=relative_path,
                expires_at=expires,
                now=self.clock.now(),
                state="failed",
                backup_id=backup_id,
                copy_id=copy_id,
            )
        # held all the same: an import after a catalog loss must hold it as long
        self._record_expiry(repo, self._file(repo, relative_path), expires)
        what = (
            f"point #{backup_id}"
            if backup_id is not None
            else f"copy #{copy_id}"
            if copy_id is not None
            else Path(relative_path).name
        )
        self._event(
            "immutability.lock_failed",
            f"{what} on {repo.name} is NOT protected: {why}"
            + ("" if relative_path in why else f" ({relative_path})"),
            level="critical",
            repository_id=repo.id,
            job_id=job_id,
            data={"lock_id": row.id, "backup_id": backup_id, "copy_id": copy_id, "why": why},
        )
        return LockOutcome(row, why)

    def extend(
        self, lock_id: int, until: datetime, *, actor: str | None = None
    ) -> ImmutabilityLock:
        """Move a lock's expiry later; an earlier date (or one past the longest lock
        period from now) is refused."""
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
        latest = latest_allowed(self.clock.now())
        if as_utc(until) > latest:  # type: ignore[operator]
            raise ValidationError(
                f"a lock can be extended to {latest:%Y-%m-%d} at the latest "
                f"({LOCK_DAYS.high} days from now), not to {until:%Y-%m-%d}",
                hint="give an earlier date; extend it again later if needed",
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
            try:
                grace = GRACE_HOURS.check(repo.immutable_grace_hours)
                due = expiry_after(as_utc(lock.created_at), hours=grace)  # type: ignore[arg-type]
            except ValidationError:
                due = as_utc(lock.created_at)  # a grace out of bounds: lock now
            if due > now:  # type: ignore[operator]
                continue
            path = self._file(repo, lock.path)
            if not path.exists():
                # removed inside its grace period, as the grace period allows
                self.store.update(lock.id, state="released", released_at=now)
                continue
            failure = self._set_flag(path)
            if failure is not None:
                self._failed(
                    repo,
                    lock.path,
                    lock.expires_at,
                    failure,
                    lock.backup_id,
                    lock.copy_id,
                    None,
                    lock,
                )
                continue
            self.store.update(lock.id, state="active", locked_at=now)
            applied.append(lock.id)
        return applied

    # -- reading -----------------------------------------------------------------------

    def why_locked_rel(self, repo: Repository, relative_path: str) -> str | None:
        """Why this file may not be changed or deleted now; None when it may."""
        return self._why_locked(repo, relative_path, self.store.holding(repo.id, relative_path))

    def why_locked_many(self, repo: Repository, relative_paths: list[str]) -> dict[str, str | None]:
        """``why_locked_rel`` for many files of one repository: one catalog query per
        500 files, and each directory resolved once, not each file (a retention plan
        asks about tens of thousands); each file's own flag is still read."""
        locks = self.store.holding_many(repo.id, relative_paths)
        directories: dict[str, bool] = {}
        out: dict[str, str | None] = {}
        for relative in relative_paths:
            lock = locks.get(relative)
            if lock is not None:
                out[relative] = self._lock_reason(lock)
                continue
            path = self._file_of_many(repo, relative, directories)
            out[relative] = self._flag_reason(path) if path is not None else None
        return out

    def _file_of_many(
        self, repo: Repository, relative: str, directories: dict[str, bool]
    ) -> Path | None:
        """``_file`` with the file's directory resolved once per call of
        ``why_locked_many`` (``directories``: directory -> it exists). None: the
        directory does not exist, so neither does the file."""
        directory = os.path.dirname(relative)
        if directory not in directories:
            root = Path(repo.path)
            if not is_within(root, root / directory):
                raise ValidationError(f"{relative} lies outside repository {repo.name}")
            directories[directory] = (root / directory).is_dir()
        if not directories[directory]:
            return None
        path = Path(repo.path) / relative
        # a link may point anywhere: resolved as a single file is
        return self._file(repo, relative) if path.is_symlink() else path

    def _why_locked(
        self, repo: Repository, relative_path: str, lock: ImmutabilityLock | None
    ) -> str | None:
        if lock is not None:
            return self._lock_reason(lock)
        return self._flag_reason(self._file(repo, relative_path))

    def _flag_reason(self, path: Path) -> str | None:
        if path.exists() and self._flag(path):
            return "immutable (lsattr shows 'i') without a catalog lock; clear it by hand"
        return None

    def _lock_reason(self, lock: ImmutabilityLock) -> str:
        until = until_text(lock.expires_at)
        if as_utc(lock.expires_at) <= self.clock.now():  # type: ignore[operator]
            return (
                f"locked by immutability; the lock expired at {until} and is released by "
                "the next lock job (`sendense lock release-expired`)"
            )
        if lock.state == "pending":
            return f"locked by immutability until {until} (grace period, flag not yet set)"
        if lock.state in UNPROTECTED_STATES:
            return f"locked by immutability until {until} (flag NOT set: unprotected)"
        return f"locked by immutability until {until}"

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

    def list(
        self, *, states: tuple[str, ...] | None = None, repository: int | str | None = None
    ) -> list[ImmutabilityLock]:
        repo_id = self._repo(repository).id if repository is not None else None
        return self.store.list(states=states, repository_id=repo_id)

    def locks_for_backups(self, backup_ids: builtins.list[int]) -> dict[int, ImmutabilityLock]:
        found: dict[int, ImmutabilityLock] = {}
        for lock in self.store.list(states=HOLDING_STATES, backup_ids=backup_ids):
            if lock.backup_id is not None:
                found[lock.backup_id] = lock
        return found

    # -- the clock ---------------------------------------------------------------------

    def clock_status(self) -> ClockStatus:
        """Can the wall clock be trusted to release locks now? Recorded as a lock check.

        Two checks. Backwards: the clock must not read earlier than what the catalog
        already holds. Forwards: the wall time elapsed since this boot's last
        corroborated check must match the boot clock (CLOCK_BOOTTIME, which ``date
        -s`` and NTP steps do not move) within a tolerance; after a reboot (no
        corroborated check of this boot yet) the system must report its clock as
        synchronised. Only the very first check a catalog ever sees has nothing to
        compare with and is taken as it is.
        """
        now = self.clock.now()
        boot = self.clock.boot()
        boot_ms = int(boot.seconds * 1000)
        newest = self.store.newest_recorded_time()
        previous = self.store.clock_check(boot.boot_id)
        expected: datetime | None = None
        if newest is not None and now + CLOCK_TOLERANCE < newest:
            ok, message = (
                False,
                f"the clock reads {now:%Y-%m-%d %H:%M} UTC but the catalog already holds "
                f"entries from {newest:%Y-%m-%d %H:%M} UTC: it jumped backwards and is not "
                "trusted",
            )
        elif previous is not None and previous.anchor_wall is not None:
            anchor = as_utc(previous.anchor_wall)
            assert anchor is not None and previous.anchor_boot_ms is not None
            boot_elapsed = (boot_ms - previous.anchor_boot_ms) / 1000
            wall_elapsed = (now - anchor).total_seconds()
            expected = anchor + timedelta(seconds=boot_elapsed)
            jump = wall_elapsed - boot_elapsed
            tolerance = CLOCK_TOLERANCE.total_seconds() + CLOCK_DRIFT_RATE * max(boot_elapsed, 0)
            if abs(jump) <= tolerance:
                ok, message = True, "clock ok (corroborated by the boot clock)"
            else:
                ok, message = (
                    False,
                    f"the clock reads {now:%Y-%m-%d %H:%M} UTC, but by the boot clock only "
                    f"{_duration_text(boot_elapsed)} passed since the lock check at "
                    f"{anchor:%Y-%m-%d %H:%M} UTC, so it should read about "
                    f"{expected:%Y-%m-%d %H:%M} UTC: it jumped "
                    f"{'forwards' if jump > 0 else 'backwards'} by {_duration_text(jump)} "
                    "and is not trusted",
                )
        elif self.clock.synchronised():
            ok, message = True, "clock ok (new boot; the system reports it synchronised)"
        elif not self.store.any_clock_check():
            ok, message = True, "clock taken as it is (the first lock check on this catalog)"
        else:
            ok, message = (
                False,
                "the machine restarted since the last lock check and the system does not "
                "report its clock as synchronised (NTP), so the time that passed cannot be "
                "corroborated: the clock is not trusted",
            )
        self.store.record_clock_check(
            boot_id=boot.boot_id,
            host=socket.gethostname(),
            wall=now,
            boot_ms=boot_ms,
            ok=ok,
            detail=None if ok else message,
            anchor=ok,
        )
        return ClockStatus(ok, now, newest, message, expected)

    def trust_clock(self, *, actor: str | None = None) -> ClockStatus:
        """The operator vouches for the wall clock as it reads now (it was really wrong
        before and is right now, or the appliance has no NTP): the next checks of this
        boot compare with this reading. A clock behind the catalog is still refused."""
        now = self.clock.now()
        boot = self.clock.boot()
        newest = self.store.newest_recorded_time()
        if newest is not None and now + CLOCK_TOLERANCE < newest:
            raise ImmutabilityError(
                f"the clock reads {now:%Y-%m-%d %H:%M} UTC but the catalog already holds "
                f"entries from {newest:%Y-%m-%d %H:%M} UTC; a clock behind the catalog "
                "cannot be trusted",
                hint="set the clock right (NTP); locks are released once it is",
            )
        self.store.record_clock_check(
            boot_id=boot.boot_id,
            host=socket.gethostname(),
            wall=now,
            boot_ms=int(boot.seconds * 1000),
            ok=True,
            detail=f"trusted by {actor or 'the operator'}",
            anchor=True,
        )
        self._event(
            "immutability.clock_trusted",
            f"the clock ({now:%Y-%m-%d %H:%M} UTC) was declared right by "
            f"{actor or 'the operator'}; lock expiry is judged from it from now on",
            level="warning",
            actor=actor,
        )
        return ClockStatus(True, now, newest, "clock trusted by the operator")

    def _clock_suspect(self, status: ClockStatus, actor: str | None) -> None:
        # stamped with the time the boot clock vouches for, not the jumped one, so the
        # warning itself does not make a corrected clock look like it went backwards
        at = min(status.now, status.expected) if status.expected is not None else status.now
        self.bus.publish(
            Event(
                kind="immutability.clock_suspect",
                message=f"no lock released: {status.message}",
                level="critical",
                source="immutability",
                actor=actor,
                at=at,
            )
        )

    # -- maintenance: pending, drift, release --------------------------------------------

    def check_drift(self) -> MaintenanceReport:
        """Read every flag that should be set back; set again what was removed behind our
        back, and retry the ones that could not be set when they landed."""
        report = MaintenanceReport()
        now = self.clock.now()
        repos = {r.id: r for r in self.repositories.list()}
        for lock in self.store.list(states=FLAGGED_STATES):
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
                    if lock.state != "active":
                        self.store.update(lock.id, state="active", locked_at=now)
                    continue
            except ToolError as exc:
                log.warning("reading the flag of %s: %s", path, exc)
                continue
            repaired = self._set_flag(path) is None
            if lock.state == "failed":
                # its critical event was raised when it failed; say when it recovers
                if repaired:
                    self.store.update(lock.id, state="active", locked_at=now)
                    report.drift_repaired.append(lock.id)
                    self._event(
                        "immutability.locked",
                        f"{lock.path} on {repo.name} is protected now (the flag could not "
                        f"be set when it landed), until {until_text(lock.expires_at)}",
                        level="warning",
                        repository_id=repo.id,
                        data={"lock_id": lock.id},
                    )
                else:
                    report.drift_failed.append(lock.id)
                    log.warning("%s on %s: the flag still cannot be set", lock.path, repo.name)
                continue
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
        """Clear the flag of locks whose expiry passed; nothing while the clock is suspect
        (jumped backwards or forwards, or not corroborated after a reboot)."""
        report = MaintenanceReport()
        status = self.clock_status()
        report.clock = status
        if not status.ok:
            self._clock_suspect(status, actor)
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
            failpoint("locks.after_unlock")
            if self.store.mark_released(lock.id, now):
                report.released.append(lock.id)
            failpoint("locks.after_release")
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

    def job_handlers(self) -> dict[JobKind, JobHandler]:
        return {JobKind.LOCKS_MAINTAIN: JobHandler(self.run_job)}

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
