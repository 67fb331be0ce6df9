"""One writer per disk: backup, consolidation, point deletion, retention and import
of one VM disk's chains exclude each other across threads, processes and engines
sharing a catalog.

The writer holds a lease on the disk's row in the catalog (``disk_writers``,
taken with a compare-and-set before any file is touched, renewed every
``jobs.heartbeat_seconds`` while held, released when the work ends). Whoever
finds the disk held either waits for it or is refused with one sentence naming
the writer: "web01/sda is being written by job 42 (backup, started 10:02 UTC by
cli)". Jobs never wait inside a worker thread: the job runner leaves a job whose
disk is busy in the queue and starts other disks' jobs meanwhile.

A lease whose heartbeat stopped (its engine died) is taken over by the next
writer, which first makes sure no process still holds the partial file the dead
writer recorded (``output``): a ``qemu-img``/``qemu-nbd`` still writing it is
killed, any other process makes the takeover wait, and a file qemu has locked
for writing (another machine on the same share) too. Then the partial file is
removed, and only then does the new writer start.

Holds are re-entrant per thread: a policy run holds its disks for the whole run,
and the backups, merges and deletes it makes inside simply find them held.

Anything that writes a disk's chain files calls ``DiskWriters.hold`` (or
``hold_all``) around the work, and ``writing``/``confirm`` around each new file:

    with writers.hold(repo_id, "web01", "sda", operation="import", actor="cli"):
        ...
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from engine.catalog.chains import ChainStore
from engine.catalog.repositories import RepositoryStore
from engine.catalog.writers import DiskKey, Holder, WriterStore
from engine.clock import SYSTEM_CLOCK, Clock
from engine.config import JobSettings
from engine.errors import JobCancelled, JobError, SendenseError, StopReason
from engine.events import Event, EventBus
from engine.fsutil import fsync_dir
from engine.safepath import is_within
from engine.tools import procs, qemu_img

log = logging.getLogger(__name__)

#: programs a dead writer may have left running on its partial file; killed on takeover
WRITER_PROGRAMS = frozenset({"qemu-img", "qemu-nbd", "qemu-storage-daemon", "qemu-io"})

#: what the sentence calls each operation
NOUNS = {
    "backup": "backup",
    "consolidate": "consolidation",
    "delete": "point deletion",
    "retention": "retention run",
    "import": "repository import",
    "policy_run": "policy run",
}


def noun(operation: str) -> str:
    return NOUNS.get(operation, operation.replace("_", " "))


def busy_sentence(holder: Holder, now: datetime) -> str:
    """'web01/sda is being written by job 42 (backup, started 10:02 UTC by cli)'."""
    started = holder.acquired_at
    when = f"{started:%H:%M}" if started.date() == now.date() else f"{started:%Y-%m-%d %H:%M}"
    by = f" by {holder.actor}" if holder.actor else ""
    if holder.job_id is not None:
        return (
            f"{holder.key} is being written by job {holder.job_id} "
            f"({noun(holder.operation)}, started {when} UTC{by})"
        )
    return (
        f"{holder.key} is being written by a {noun(holder.operation)} "
        f"(started {when} UTC{by}, engine {holder.owner})"
    )


def _writer(holder: Holder) -> str:
    what = noun(holder.operation)
    return f"job {holder.job_id} ({what})" if holder.job_id is not None else f"a {what}"


class DiskBusy(SendenseError):
    """Another writer holds the disk; the message names it."""

    def __init__(self, holder: Holder, now: datetime) -> None:
        hint = (
            f"wait for it (without --no-wait the request queues behind it) or cancel it: "
            f"sendense jobs cancel {holder.job_id}"
            if holder.job_id is not None
            else "wait for it to finish (without --no-wait the request waits for it)"
        )
        super().__init__(busy_sentence(holder, now), hint=hint)
        self.holder = holder


class WriterStuck(SendenseError):
    """A dead writer's partial file is still held by something that cannot be stopped."""


class WriterLost(JobCancelled):
    """Our lease on the disk lapsed and another writer took it: stop, record nothing."""

    reason = StopReason.LOST


@dataclass
class Holding:
    """One disk held by this process."""

    key: DiskKey
    token: str
    operation: str
    job_id: int | None
    actor: str | None
    acquired_at: datetime
    #: set when a renewal found the lease taken over
    lost: bool = False
    on_lost: Callable[[], None] | None = field(default=None, repr=False)


@dataclass(frozen=True)
class _Scope:
    job_id: int
    actor: str | None


class DiskWriters:
    """Per-disk writer leases (``engine.writers``)."""

    def __init__(
        self,
        store: WriterStore,
        repositories: RepositoryStore,
        chains: ChainStore,
        bus: EventBus,
        *,
        settings: JobSettings,
        owner: str,
        clock: Clock = SYSTEM_CLOCK,
        poll_seconds: float = 0.5,
    ) -> None:
        self.store = store
        self.repositories = repositories
        self.chains = chains
        self.bus = bus
        self.settings = settings
        self.owner = owner
        self.clock = clock
        self.poll_seconds = poll_seconds
        self._local = threading.local()
        self._lock = threading.Lock()
        #: every holding of this process, by token (the keepalive renews them)
        self._live: dict[str, Holding] = {}
        self._keepalive: threading.Thread | None = None
        self._closing = threading.Event()

    @property
    def lease(self) -> timedelta:
        return timedelta(seconds=self.settings.lease_seconds)

    # -- who writes ----------------------------------------------------------------

    def blocker(self, keys: Iterable[DiskKey]) -> Holder | None:
        """The live writer of one of ``keys`` that is not this thread, if any."""
        held = self._held()
        now = self.clock.now()
        for key in sorted(set(keys)):
            if key in held:
                continue
            holder = self.store.get(key)
            if holder is not None and not holder.lapsed(now):
                return holder
        return None

    def refuse_if_busy(self, keys: Iterable[DiskKey]) -> None:
        """Raise DiskBusy (one sentence naming the writer) if one of ``keys`` is held."""
        holder = self.blocker(keys)
        if holder is not None:
            raise DiskBusy(holder, self.clock.now())

    def busy_sentence(self, keys: Iterable[DiskKey]) -> str | None:
        holder = self.blocker(keys)
        return busy_sentence(holder, self.clock.now()) if holder is not None else None

    # -- holding -------------------------------------------------------------------

    @contextlib.contextmanager
    def job_scope(self, job_id: int, actor: str | None) -> Iterator[None]:
        """Holds taken on this thread inside the block belong to job ``job_id`` and
        never wait (a busy disk raises DiskBusy: the runner queues the job again)."""
        previous = getattr(self._local, "scope", None)
        self._local.scope = _Scope(job_id, actor)
        try:
            yield
        finally:
            self._local.scope = previous

    def hold(
        self,
        repository_id: int,
        vm: str,
        disk: str,
        *,
        operation: str,
        actor: str | None = None,
        wait: bool = True,
        on_lost: Callable[[], None] | None = None,
    ) -> contextlib.AbstractContextManager[list[Holding]]:
        """Be the one writer of ``vm``/``disk`` in the repository for the block.

        ``wait=False`` raises DiskBusy at once when another writer holds it;
        ``wait=True`` waits for it (announcing a ``writer.waiting`` event once).
        Inside a job (``job_scope``) it never waits."""
        return self.hold_all(
            [DiskKey(repository_id, vm, disk)],
            operation=operation,
            actor=actor,
            wait=wait,
            on_lost=on_lost,
        )

    @contextlib.contextmanager
    def hold_all(
        self,
        keys: Iterable[DiskKey],
        *,
        operation: str,
        actor: str | None = None,
        wait: bool = True,
        on_lost: Callable[[], None] | None = None,
    ) -> Iterator[list[Holding]]:
        """Hold every one of ``keys`` for the block, all or none (never some while
        waiting for the others, so two writers of overlapping disks cannot deadlock)."""
        wanted = sorted(set(keys))
        held = self._held()
        scope: _Scope | None = getattr(self._local, "scope", None)
        missing = [key for key in wanted if key not in held]
        new = self._acquire(
            missing,
            operation=operation,
            job_id=scope.job_id if scope else None,
            actor=actor if actor is not None else (scope.actor if scope else None),
            wait=wait and scope is None,
            on_lost=on_lost,
        )
        for holding in new:
            held[holding.key] = holding
        try:
            yield [held[key] for key in wanted]
        finally:
            for holding in new:
                held.pop(holding.key, None)
                self._release(holding)

    def writing(self, key: DiskKey, output: str | None) -> None:
        """Record the partial file (relative to the repository root) this writer is
        about to create, or None once it is published or removed. A writer that
        takes over after a crash removes the recorded file."""
        holding = self._holding(key)
        if not self.store.set_output(key, holding.token, output):
            raise self._lost(holding)

    def confirm(self, key: DiskKey) -> None:
        """Check (and renew) that this writer still holds ``key`` before it makes a
        change final: raises WriterLost if another writer took the disk over."""
        holding = self._holding(key)
        if holding.lost or not self.store.renew(key, holding.token, self.clock.now(), self.lease):
            raise self._lost(holding)

    # -- takeover ------------------------------------------------------------------

    def settle_job(self, job_id: int) -> int:
        """A job's engine died: take over the leases it left lapsed, remove its partial
        files (once no process holds them) and free the disks. Returns how many.

        Raises WriterStuck if a partial file is still held by a process that cannot be
        stopped; that lease stays lapsed with its file recorded for the next writer."""
        settled = 0
        for lapsed in self.store.held_by_job(job_id):
            if not lapsed.lapsed(self.clock.now()):
                continue  # still renewed: that engine is alive and will release it
            for holding in self._acquire(
                [lapsed.key],
                operation=lapsed.operation,
                job_id=job_id,
                actor=lapsed.actor,
                wait=False,
                on_lost=None,
                quiet_if_busy=True,
            ):
                self._release(holding)
                settled += 1
        return settled

    # -- internals -----------------------------------------------------------------

    def _held(self) -> dict[DiskKey, Holding]:
        held: dict[DiskKey, Holding] | None = getattr(self._local, "held", None)
        if held is None:
            held = self._local.held = {}
        return held

    def _holding(self, key: DiskKey) -> Holding:
        holding = self._held().get(key)
        if holding is None:
            raise JobError(f"{key} is being written without holding its writer lease")
        return holding

    def _lost(self, holding: Holding) -> WriterLost:
        holding.lost = True
        return WriterLost(
            f"{holding.key}: another writer took this disk over while this one was "
            "writing (its lease had lapsed); nothing more is written or recorded"
        )

    def _acquire(
        self,
        keys: Sequence[DiskKey],
        *,
        operation: str,
        job_id: int | None,
        actor: str | None,
        wait: bool,
        on_lost: Callable[[], None] | None,
        quiet_if_busy: bool = False,
    ) -> list[Holding]:
        if not keys:
            return []
        announced = False
        while True:
            got, blocker = self._try_all(keys, operation, job_id, actor, on_lost)
            if blocker is None:
                return got
            if quiet_if_busy:
                return []
            now = self.clock.now()
            if not wait:
                raise DiskBusy(blocker, now)
            if not announced:
                announced = True
                sentence = busy_sentence(blocker, now)
                self.bus.publish(
                    Event(
                        kind="writer.waiting",
                        message=f"waiting: {sentence}",
                        source="writers",
                        repository_id=blocker.key.repository_id,
                        actor=actor,
                        data={"sentence": sentence, "job_id": blocker.job_id},
                    )
                )
            time.sleep(self.poll_seconds)

    def _try_all(
        self,
        keys: Sequence[DiskKey],
        operation: str,
        job_id: int | None,
        actor: str | None,
        on_lost: Callable[[], None] | None,
    ) -> tuple[list[Holding], Holder | None]:
        got: list[Holding] = []
        try:
            for key in keys:
                now = self.clock.now()
                token = uuid.uuid4().hex
                won, previous = self.store.take(
                    key,
                    token=token,
                    operation=operation,
                    job_id=job_id,
                    owner=self.owner,
                    actor=actor,
                    now=now,
                    lease=self.lease,
                )
                if not won:
                    for holding in got:
                        self._release(holding)
                    got = []
                    if previous is None:  # freed while we looked: try again
                        return self._try_all(keys, operation, job_id, actor, on_lost)
                    return [], previous
                holding = Holding(key, token, operation, job_id, actor, now, on_lost=on_lost)
                self._register(holding)
                got.append(holding)
                if previous is not None:
                    try:
                        self._clear_leftovers(holding, previous)
                    except BaseException:
                        self._unregister(holding)
                        got.remove(holding)
                        self.store.expire(key, token, self.clock.now())
                        raise
        except BaseException:
            for holding in got:
                self._release(holding)
            raise
        return got, None

    def _clear_leftovers(self, holding: Holding, previous: Holder) -> None:
        """``previous``'s lease lapsed (its engine died): its partial file goes."""
        key = holding.key
        removed = None
        if previous.output:
            repo = self.repositories.get(key.repository_id)
            path = Path(repo.path) / previous.output
            if not is_within(repo.path, path):
                log.warning("%s: recorded output %r leaves the repository", key, previous.output)
            elif path.exists() or path.is_symlink():
                self._stop_writers_of(path, previous)
                path.unlink()
                fsync_dir(path.parent)
                removed = path.name
                self._drop_if_empty_new_chain(repo.id, Path(repo.path), path.parent)
        self.store.set_output(key, holding.token, None)
        self.bus.publish(
            Event(
                kind="writer.taken_over",
                message=f"{key}: taken over from {_writer(previous)}, whose engine "
                f"{previous.owner} stopped"
                + (f"; its partial file {removed} was removed" if removed else ""),
                level="warning",
                source="writers",
                repository_id=key.repository_id,
                job_id=holding.job_id,
                data={
                    "previous_job_id": previous.job_id,
                    "previous_owner": previous.owner,
                    "removed": removed,
                },
            )
        )

    def _stop_writers_of(self, path: Path, previous: Holder) -> None:
        """No process may hold the dead writer's file when it is removed."""
        key = previous.key
        found = procs.holders(path)
        ours = [h for h in found if h.program in WRITER_PROGRAMS]
        if ours:
            stuck = procs.kill_and_wait([h.pid for h in ours])
            self.bus.publish(
                Event(
                    kind="writer.orphan_killed",
                    message=f"{key}: stopped {', '.join(str(h) for h in ours)}, still "
                    f"writing {path.name} for {_writer(previous)} after its engine died",
                    level="warning",
                    source="writers",
                    repository_id=key.repository_id,
                    data={"pids": [h.pid for h in ours], "stuck": stuck},
                )
            )
        left = procs.holders(path)
        if left:
            raise WriterStuck(
                f"{key}: {path.name}, left by {_writer(previous)}, is still open by "
                f"{', '.join(str(h) for h in left)}; it was not removed and the disk "
                "waits",
                hint="stop that process or wait for it to end, then run again",
            )
        if qemu_img.write_locked(path):
            raise WriterStuck(
                f"{key}: {path.name}, left by {_writer(previous)}, is still locked for "
                "writing by a qemu process (on another machine sharing this repository?)",
                hint="stop that writer or wait for it to end, then run again",
            )

    def _drop_if_empty_new_chain(self, repository_id: int, root: Path, directory: Path) -> None:
        """A full killed before its first file was published leaves its new chain
        directory empty; one the catalog does not know is removed too."""
        relative = str(directory.relative_to(root))
        if self.chains.directory_taken(repository_id, relative):
            return
        with contextlib.suppress(OSError):  # not empty: leave it
            directory.rmdir()
            fsync_dir(directory.parent)

    def _register(self, holding: Holding) -> None:
        with self._lock:
            self._live[holding.token] = holding
            if self._keepalive is None or not self._keepalive.is_alive():
                self._closing.clear()
                self._keepalive = threading.Thread(
                    target=self._keep_alive, name="sendense-writers", daemon=True
                )
                self._keepalive.start()

    def _unregister(self, holding: Holding) -> None:
        with self._lock:
            self._live.pop(holding.token, None)

    def _release(self, holding: Holding) -> None:
        self._unregister(holding)
        try:
            self.store.release(holding.key, holding.token)
        except SendenseError as exc:  # catalog gone: the lease lapses on its own
            log.warning("releasing %s: %s", holding.key, exc)

    def _keep_alive(self) -> None:
        while not self._closing.wait(self.settings.heartbeat_seconds):
            self.renew_all()

    def _still_held(self, holding: Holding) -> bool:
        """Whether ``holding`` is still ours to hold: the work may have released it
        between the heartbeat's snapshot and its renewal (then the lease is simply
        gone, not taken over, and nothing is wrong)."""
        with self._lock:
            return holding.token in self._live

    def renew_all(self) -> None:
        """Extend every lease this process holds (the heartbeat)."""
        with self._lock:
            live = list(self._live.values())
        now = self.clock.now()
        for holding in live:
            try:
                kept = self.store.renew(holding.key, holding.token, now, self.lease)
            except SendenseError as exc:
                log.warning("renewing the writer lease of %s: %s", holding.key, exc)
                continue
            if not kept and not holding.lost and self._still_held(holding):
                holding.lost = True
                log.warning("%s: writer lease taken over by another writer", holding.key)
                if holding.on_lost is not None:
                    holding.on_lost()

    def close(self) -> None:
        self._closing.set()
        thread = self._keepalive
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        self._keepalive = None


__all__ = [
    "DiskBusy",
    "DiskKey",
    "DiskWriters",
    "Holder",
    "Holding",
    "WriterLost",
    "WriterStuck",
    "busy_sentence",
]
