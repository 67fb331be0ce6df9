"""The chain manager: validate chains against the disk, show them, consolidate, delete points.

A chain is one full backup and the incrementals built on it, for one VM disk in
one repository, all in one directory. Each incremental's QCOW2 header names its
parent by plain file name (relative), so the directory stays valid when copied.

``validate`` compares what ``qemu-img`` sees with the catalog: files missing or
renamed, files whose size or checksum changed, headers that are damaged, backing
references that point at the wrong file, headers that name anything else (a
data file, a json: or protocol backing, a symlink or device in place of the
file: ``foreign``), points out of order, and files on disk the catalog does not
know (orphans, e.g. left by a crash: a ``.partial``, a finished point whose row
was never written, the manifest of a point that is gone; see ``orphan_finding``);
``check_all`` also lists chain directories the catalog has no chain or copy for
(``unknown_directories``). Headers are read one file at a time
(engine.services.images); nothing a header names is opened. Each finding says
what to do (``chain check --fix``, engine.services.imports, cleans up what is
safe to). A chain with a breaking finding is marked ``broken``; the next backup
of that disk then starts a new full (with a loud event) instead of failing
forever.

Consolidation merges the oldest point(s) into the first point kept (the
*target*), which becomes the full. The merged view is written as a new file that
then *replaces the target's file under the same name*, so the points after it
keep their backing references (no header is rewritten) and their files, and
copies of them in other repositories, stay exactly as they were. A merge never
launders damage: every input (the points merged and the target) is re-read and
compared with its recorded sha256 first; a mismatch marks that point bad (as a
verify run does) and stops the merge before anything is written.

The durable steps, and what a restart does after a crash between them (an
*intent* row in the catalog, ``merge_intents``, says how far a merge got; it is
settled at engine start and before any consolidation of that chain, by the
engine that takes it over, never while its own engine is alive):

1. intent "started" (target, merged points, partial name, the target's old
   checksum). Crash here or during 2: the partial file (if any) is removed,
   intent "rolled_back"; the chain was never touched.
2. ``qemu-img convert`` of the target's chain into ``.NAME.partial``, fsync, its
   facts (sha256, sizes) recorded: intent "converted". Crash before 3: the
   partial still exists, so the target's file was not replaced: the partial is
   removed, intent "rolled_back".
3. the partial is renamed over the target's file (atomic), directory fsynced.
   The chain now reads the same data through the new full; the catalog does not
   know yet. Crash here (intent "converted", no partial left): the target's file
   is re-hashed; it matches the recorded new sha256, so the merge is finished
   (steps 4 and 5). A file matching neither the old nor the new sha256 is left
   alone: intent "stuck", chain broken, a critical event.
4. the target's manifest is rewritten with its new facts (a full, no parent;
   engine.services.manifests), then one catalog transaction: the target becomes
   the full, the merged points are marked deleted, intent "recorded".
5. the merged points' files and manifests are removed, directory fsynced. Crash between 4 and
   6: the removal is done again, intent "done".
6. intent "done".

Failpoints ``consolidate.after_*`` sit between these steps (engine.failpoints).
Retention merges are consolidations (``RetentionService.apply`` calls
``consolidate``), so the same intent covers them.

Consolidation and point deletion hold the disk's writer lease (``engine.writers``)
for their whole run, so they never overlap a backup, a retention run or another
merge of the same disk, in this engine or any other on the catalog.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.catalog.chains import ChainStore
from engine.catalog.models import Backup, Chain, MergeIntent, Repository
from engine.catalog.repositories import RepositoryStore
from engine.catalog.writers import DiskKey
from engine.clock import SYSTEM_CLOCK, Clock, as_utc
from engine.config import Settings
from engine.errors import Action, JobCancelled, NotFoundError, SendenseError, ValidationError
from engine.events import Event, EventBus
from engine.failpoints import failpoint
from engine.fsutil import fsync_dir, fsync_file, partial_path
from engine.hashing import sha256_file
from engine.jobs import JobHandler
from engine.owners import owner_alive
from engine.platform import free_bytes, space
from engine.safepath import is_within
from engine.services import manifests
from engine.services.chain_views import ChainView, PointView
from engine.services.images import (
    ImageGuard,
    ImageRefused,
    Layer,
    PointUnreadable,
    describe_backing,
)
from engine.states import JobKind
from engine.tools import attrs, qemu_img
from engine.tools.base import ToolError
from engine.tools.blockspec import ImageSpec
from engine.units import human_bytes, plural
from engine.writers import DiskWriters

if TYPE_CHECKING:
    from engine.jobs import JobContext, JobRunner
    from engine.services.verify import VerifyService

log = logging.getLogger(__name__)
_HOST = socket.gethostname()

#: finding kinds that make a chain unusable for new incrementals
BREAKING = (
    "missing",
    "changed",
    "corrupt",
    "wrong_backing",
    "foreign",
    "wrong_order",
    "unreadable",
)


class ChainError(SendenseError):
    """A chain operation cannot be done as asked."""


class LockedError(ChainError):
    """A file involved is locked (immutable) and cannot be changed or deleted."""


def stamp(when: datetime) -> str:
    return when.strftime("%Y%m%dT%H%M%SZ")


def allocated_bytes(path: Path) -> int:
    """Guest bytes stored in this file itself (not in its backing files, which are not
    opened: the file is mapped alone)."""
    alone = ImageSpec.file(Path(path).absolute())
    return sum(e.length for e in qemu_img.map_image(alone) if e.depth == 0 and e.data)


def repo_file(repo: Repository, relative: str) -> Path:
    """A catalog path resolved under its repository root (never outside it)."""
    root = Path(repo.path)
    path = root / relative
    if not is_within(root, path):
        raise ValidationError(f"catalog path {relative!r} leaves repository {repo.name}")
    return path


class RepoFiles:
    """``repo_file`` for many files of one repository, each directory resolved once (a
    retention pass removes tens of thousands of files from a thousand directories). A
    file that is itself a link, or names a parent, is resolved on its own as before."""

    def __init__(self, repo: Repository) -> None:
        self.repo = repo
        self.root = Path(repo.path)
        self._inside: dict[str, bool] = {}

    def __call__(self, relative: str) -> Path:
        directory, name = os.path.split(relative)
        if directory not in self._inside:
            self._inside[directory] = is_within(self.root, self.root / directory)
        path = self.root / relative
        if not self._inside[directory] or name in ("", ".", "..") or path.is_symlink():
            return repo_file(self.repo, relative)
        return path


@dataclass(frozen=True)
class Finding:
    #: missing | changed | corrupt | wrong_backing | foreign | wrong_order | unreadable | orphan
    kind: str
    message: str
    hint: str
    backup_id: int | None = None
    path: str | None = None

    @property
    def breaking(self) -> bool:
        return self.kind in BREAKING

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "message": self.message,
            "hint": self.hint,
            "backup_id": self.backup_id,
            "path": self.path,
            "breaking": self.breaking,
        }


@dataclass
class ChainReport:
    #: None for a chain directory the catalog has no chain for (see unknown_directories)
    chain_id: int | None
    vm_name: str
    disk_name: str
    repository: str
    directory: str
    points: int
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(f.breaking for f in self.findings)

    @property
    def unknown(self) -> bool:
        """A chain directory on disk that no catalog chain or copy describes."""
        return self.chain_id is None

    def sentence(self) -> str:
        if self.unknown:
            return (
                f"{self.directory} in {self.repository}: {self.points} point file(s), "
                "no chain in the catalog"
            )
        where = f"chain {self.chain_id} ({self.vm_name}/{self.disk_name} in {self.repository})"
        if not self.findings:
            return f"{where}: {self.points} points, all consistent"
        state = "BROKEN" if not self.ok else "usable"
        return f"{where} is {state}: " + "; ".join(f.message for f in self.findings)

    def as_dict(self) -> dict[str, Any]:
        return {
            "chain_id": self.chain_id,
            "unknown": self.unknown,
            "vm": self.vm_name,
            "disk": self.disk_name,
            "repository": self.repository,
            "directory": self.directory,
            "points": self.points,
            "ok": self.ok,
            "findings": [f.as_dict() for f in self.findings],
        }


@dataclass(frozen=True)
class VmSummary:
    """One VM of the catalog in a line: its chains and totals, without its points
    (the Chains tree shows these, and loads a VM's points when it is opened)."""

    vm: str
    #: (disk, repository, chain state) of each chain, in disk order
    chains: tuple[tuple[str, str, str], ...]
    points: int
    #: bytes in the files of its live points
    physical_bytes: int
    newest: datetime | None


@dataclass(frozen=True)
class DeletePlan:
    target: Backup
    goes: list[Backup]
    chain_ends: bool

    def sentence(self) -> str:
        names = ", ".join(f"#{b.id} {b.kind} {b.point_time:%Y-%m-%d %H:%M}" for b in self.goes)
        tail = " (the whole chain)" if self.chain_ends else ""
        return f"deletes {plural(len(self.goes), 'point')}{tail}: {names}"


#: the hint every finding that breaks a chain ends with
_NEW_FULL = "the next backup of this disk starts a new full automatically"


def _order_findings(b: Backup, previous: Backup | None, name: str) -> list[Finding]:
    """A chain starts with a full and each point builds on the one before it."""
    found: list[Finding] = []
    if previous is None and b.kind != "full":
        found.append(
            Finding(
                "wrong_order",
                f"the chain starts with {b.kind} point #{b.id} ({name}), not a full",
                f"the points before it were removed; {_NEW_FULL}",
                b.id,
                b.path,
            )
        )
    if previous is not None and b.parent_id != previous.id:
        found.append(
            Finding(
                "wrong_order",
                f"point #{b.id} ({name}) should build on #{b.parent_id} but follows "
                f"#{previous.id} in the chain",
                f"a point it depends on is gone; {_NEW_FULL}",
                b.id,
                b.path,
            )
        )
    return found


def _backing_finding(b: Backup, name: str, actual: str | None, expected: str | None) -> Finding:
    """The image names another backing file than the catalog's parent."""
    shown = describe_backing(actual) if actual else ""
    what = (
        f"points at {actual!r}"
        if actual and shown == actual
        else f"points at {shown}"
        if actual
        else "has no backing file"
    )
    fix = (
        f"if {expected} is the right parent: qemu-img rebase -u -b {expected} -F qcow2 {name}"
        if expected
        else f"the full must not have a backing file; {_NEW_FULL}"
    )
    return Finding(
        "wrong_backing",
        f"{name} (point #{b.id}) {what}, the catalog says its parent is "
        f"{expected or 'none (it is the full)'}",
        fix,
        b.id,
        b.path,
    )


def _directory_findings(
    repo: Repository, chain: Chain, backups: list[Backup], all_rows: list[Backup]
) -> list[Finding]:
    """Files in the chain directory the catalog does not know (orphans), or the
    directory itself missing while points are recorded in it."""
    directory = repo_file(repo, chain.directory)
    known = {Path(b.path).name for b in all_rows if b.state != "deleted"}
    deleted = {Path(b.path).name for b in all_rows if b.state == "deleted"} - known
    found: list[Finding] = []
    if directory.is_dir():
        for entry in sorted(directory.iterdir()):
            if entry.name in known or not entry.is_file():
                continue
            orphan = orphan_finding(chain.directory, entry.name, known, directory, deleted=deleted)
            if orphan is not None:
                found.append(orphan)
    elif backups:
        found.append(
            Finding(
                "missing",
                f"the chain directory {chain.directory} is missing from {repo.name}",
                f"check that the repository is mounted; {_NEW_FULL}",
            )
        )
    return found


class ChainService:
    """Chain validation, overview, consolidation and point deletion (``engine.chains``)."""

    def __init__(
        self,
        store: ChainStore,
        repositories: RepositoryStore,
        bus: EventBus,
        guard: ImageGuard,
        *,
        settings: Settings | None = None,
        clock: Clock = SYSTEM_CLOCK,
        repository_check: Callable[[Repository], object] | None = None,
        writers: DiskWriters,
        jobs: JobRunner,
        verifier: VerifyService | None = None,
        owner: str | None = None,
    ) -> None:
        self.store = store
        self.repositories = repositories
        self.bus = bus
        #: reads each point's own header and builds the explicit spec qemu opens
        self.guard = guard
        self.settings = settings
        self.clock = clock
        #: one writer per disk (held around consolidation and deletion)
        self.writers = writers
        #: the repositories service's "mounted, writable and not full" gate (the one
        #: backups and copies use), when wired: consolidation writes a new full too
        self.repository_check = repository_check
        #: re-reads a merge's inputs and records what it finds, as a verify run does
        self.verifier = verifier
        #: who holds the merge intents this service writes (the engine's job owner)
        self.owner = owner or f"{_HOST}:{os.getpid()}:chains"
        #: intents this service is working on now (never settled as abandoned); the
        #: lock makes "create and mark active" and "judge abandoned and take over" atomic
        self._active_intents: set[int] = set()
        self._intents_lock = threading.Lock()
        #: runs consolidations as jobs
        self.jobs = jobs

    def job_handlers(self) -> dict[JobKind, JobHandler]:
        return {JobKind.CONSOLIDATE: JobHandler(self.run_consolidate_job, writes=self.disks_of_job)}

    def disk_of(self, chain_id: int) -> DiskKey:
        """The disk a chain belongs to: what its writer lease covers."""
        chain = self.store.get_chain(chain_id)
        return DiskKey(chain.repository_id, chain.vm_name, chain.disk_name)

    def disks_of_job(self, job: Any) -> list[DiskKey]:
        return [self.disk_of(int((job.params or {})["chain_id"]))]

    def submit_consolidate(
        self,
        chain_id: int,
        *,
        new_base_id: int | None = None,
        actor: str | None = None,
        queue_if_busy: bool = True,
    ) -> Any:
        """Queue a consolidation job. While another writer holds the chain's disk it
        waits for it, or (``queue_if_busy=False``) DiskBusy names that writer."""
        chain = self.store.get_chain(chain_id)
        if not queue_if_busy:
            self.writers.refuse_if_busy([self.disk_of(chain_id)])
        return self.jobs.submit(
            JobKind.CONSOLIDATE,
            f"consolidate chain {chain.vm_name}/{chain.disk_name} (#{chain.id})",
            {"chain_id": chain_id, "new_base_id": new_base_id},
            repository_id=chain.repository_id,
            actor=actor,
        )

    def run_consolidate_job(self, ctx: JobContext) -> dict[str, Any]:
        chain_id = int(ctx.params["chain_id"])
        backups = self.store.backups(chain_id)
        size = backups[0].virtual_size if backups else 0
        resumed = (ctx.resume_point or {}).get("target_id")
        if resumed is not None:
            # a re-run after a crash: settle the merge first; if its target is the full
            # now, the merge this job asked for is done (running it again would merge
            # one point more than asked)
            self.recover(chain_id)
            target = self.store.get_backup(int(resumed))
            if target.kind == "full" and target.state != "deleted":
                return {"chain_id": chain_id, "new_full": target.id, "path": target.path}
            new_base_id: int | None = int(resumed)
        else:
            new_base_id = ctx.params.get("new_base_id")
            if new_base_id is None and len(backups) > 1:
                new_base_id = backups[1].id
            if new_base_id is not None:
                ctx.progress(0, size, resume_point={"target_id": int(new_base_id)}, force=True)

        def progress(percent: float) -> None:
            ctx.progress(int(size * percent / 100), size, message="consolidating")

        new_full = self.consolidate(
            chain_id,
            new_base_id=new_base_id,
            on_progress=progress,
            should_stop=ctx.should_stop,
        )
        return {"chain_id": chain_id, "new_full": new_full.id, "path": new_full.path}

    # -- overview ----------------------------------------------------------------

    def overview(
        self, *, repository_id: int | None = None, include_retired: bool = True
    ) -> list[ChainView]:
        """Chains (VM, disk order) with their live points and lock badges."""
        repos = {r.id: r.name for r in self.repositories.list()}
        locks = self.store.lock_counts(self.clock.now())
        backups = self.store.backups_by_chain(repository_id=repository_id)
        views: list[ChainView] = []
        for chain in self.store.list_chains(repository_id=repository_id):
            if not include_retired and chain.state == "retired":
                continue
            points = [
                PointView(b, locks[b.id].expires_at, locks[b.id].state)
                if b.id in locks
                else PointView(b, None)
                for b in backups.get(chain.id, [])
            ]
            views.append(ChainView(chain, repos.get(chain.repository_id, "?"), points))
        return views

    def vm_summaries(self) -> list[VmSummary]:
        """Every VM (name order) with its chains and point totals summed in SQL."""
        repos = {r.id: r.name for r in self.repositories.list()}
        totals = self.store.point_totals_by_vm()
        chains: dict[str, list[tuple[str, str, str]]] = {}
        for chain in self.store.list_chains():
            chains.setdefault(chain.vm_name, []).append(
                (chain.disk_name, repos.get(chain.repository_id, "?"), chain.state)
            )
        return [
            VmSummary(vm, tuple(rows), *totals.get(vm, (0, 0, None))) for vm, rows in chains.items()
        ]

    def overview_of_vms(self, vm_names: list[str]) -> list[ChainView]:
        """``overview`` of a few VMs: their chains and points only."""
        if not vm_names:
            return []
        repos = {r.id: r.name for r in self.repositories.list()}
        locks = self.store.lock_counts(self.clock.now())
        backups = self.store.backups_of_vms(vm_names)
        wanted = set(vm_names)
        return [
            ChainView(
                chain,
                repos.get(chain.repository_id, "?"),
                [
                    PointView(b, locks[b.id].expires_at, locks[b.id].state)
                    if b.id in locks
                    else PointView(b, None)
                    for b in backups.get(chain.id, [])
                ],
            )
            for chain in self.store.list_chains()
            if chain.vm_name in wanted
        ]

    def point(self, backup_id: int) -> tuple[Backup, Chain]:
        """A restore point with its chain (NotFoundError when there is none)."""
        backup, chain, _repo = self.store.locate(backup_id)
        return backup, chain

    def point_details(self, backup_id: int) -> dict[str, Any]:
        """Each file of the point's chain as its own header describes it (top first),
        with what disagrees with the catalog; nothing a header names is opened."""
        backup, chain, repo = self.store.locate(backup_id)
        path = repo_file(repo, backup.path)
        details: dict[str, Any] = {"path": str(path)}
        rows: list[dict[str, Any]] = []
        parent: str | None = None
        for link in self.store.backups(chain.id):
            if link.position > backup.position:
                break
            try:
                found = self.guard.inspect(repo, chain.directory, Layer(link.id, link.path), parent)
            except PointUnreadable as exc:
                details["error"] = exc.for_humans()
                break
            head = found.head
            rows.append(
                {
                    "file": found.path.name,
                    "virtual_size": head.virtual_size if head else 0,
                    "actual_size": head.actual_size if head else 0,
                    "backing": head.backing_filename if head else None,
                    "compression": head.compression_type if head else None,
                    "corrupt": head.corrupt if head else True,
                    "problem": found.problem.text if found.problem else None,
                }
            )
            parent = found.path.name
        details["chain"] = list(reversed(rows))
        return details

    # -- validation --------------------------------------------------------------

    def validate(self, chain_id: int, *, deep: bool = False, record: bool = True) -> ChainReport:
        """Check the chain's files against the catalog; record and announce the outcome.

        ``deep=True`` also re-reads every file and compares its sha256.
        """
        chain = self.store.get_chain(chain_id)
        repo = self.repositories.get(chain.repository_id)
        backups = self.store.backups(chain_id)
        all_rows = self.store.backups(chain_id, include_deleted=True)
        report = ChainReport(
            chain.id, chain.vm_name, chain.disk_name, repo.name, chain.directory, len(backups)
        )
        report.findings.extend(self._findings(repo, chain, backups, all_rows, deep))
        if record:
            self._record(chain, report)
        return report

    def _findings(
        self,
        repo: Repository,
        chain: Chain,
        backups: list[Backup],
        all_rows: list[Backup],
        deep: bool,
    ) -> list[Finding]:
        """Each point against its file, in chain order, then the chain directory."""
        found: list[Finding] = []
        for index, b in enumerate(backups):
            previous = backups[index - 1] if index > 0 else None
            later = len(backups) - index - 1
            found.extend(self._point_findings(repo, chain, b, previous, later, deep))
        found.extend(_directory_findings(repo, chain, backups, all_rows))
        return found

    def _point_findings(
        self,
        repo: Repository,
        chain: Chain,
        b: Backup,
        previous: Backup | None,
        later: int,
        deep: bool,
    ) -> list[Finding]:
        """One point: inside the repository, in order, present with its recorded size,
        then its image (``_image_finding``)."""
        try:
            path = repo_file(repo, b.path)
        except ValidationError:
            # a symbolic link (or a catalog path) leading out of the repository
            return [
                Finding(
                    "foreign",
                    f"{Path(b.path).name} (point #{b.id}) is refused: it leads out of "
                    f"repository {repo.name} (a symbolic link?)",
                    f"nothing is read through it; restore it from a copy if one exists; "
                    f"{_NEW_FULL}",
                    b.id,
                    b.path,
                )
            ]
        name = path.name
        found = _order_findings(b, previous, name)
        if not path.exists():
            found.append(
                Finding(
                    "missing",
                    f"{name} (point #{b.id}, {b.point_time:%Y-%m-%d %H:%M}) is missing"
                    + (f"; the {later} later point(s) cannot be restored" if later else ""),
                    "put the file back from a copy (`sendense copy` destinations keep the "
                    f"same path); otherwise {_NEW_FULL}",
                    b.id,
                    b.path,
                )
            )
            return found
        size = path.stat().st_size
        if b.file_size and size != b.file_size:
            found.append(
                Finding(
                    "changed",
                    f"{name} (point #{b.id}) is {size} bytes, the catalog recorded "
                    f"{b.file_size}: the file changed after it was written",
                    f"restore this point from a copy if one exists; {_NEW_FULL}",
                    b.id,
                    b.path,
                )
            )
            return found
        expected = None if previous is None else Path(previous.path).name
        image = self._image_finding(repo, chain, b, path, expected, deep)
        return found + ([image] if image is not None else [])

    def _image_finding(
        self,
        repo: Repository,
        chain: Chain,
        b: Backup,
        path: Path,
        expected: str | None,
        deep: bool,
    ) -> Finding | None:
        """The point's QCOW2 image: readable, undamaged, backed by ``expected`` (the
        previous point's file name; None for the full) and, when ``deep``, still its
        checksum. None: nothing wrong (or the file is busy being written)."""
        name = path.name
        try:
            seen = self.guard.inspect(repo, chain.directory, Layer(b.id, b.path), expected)
            problem = seen.problem
            if problem is None or problem.kind == "wrong_backing":
                # metadata of this one file; its backing file is not opened
                checked = qemu_img.check(ImageSpec.file(seen.path))
        except qemu_img.ImageBusy:
            return None
        except (ToolError, PointUnreadable) as exc:
            return Finding(
                "corrupt",
                f"{name} (point #{b.id}) is not a readable QCOW2 image: {exc.message}",
                f"restore it from a copy if one exists; {_NEW_FULL}",
                b.id,
                b.path,
            )
        if problem is not None and problem.kind != "wrong_backing":
            what = (
                f"is not a readable QCOW2 image: {problem.text}"
                if problem.kind == "corrupt"
                else f"is refused: {problem.text}"
            )
            return Finding(
                problem.kind,
                f"{name} (point #{b.id}) {what}",
                "nothing is read through it; restore it from a copy if one exists; " + _NEW_FULL,
                b.id,
                b.path,
            )
        head = seen.head
        assert head is not None
        if head.corrupt or checked.corruptions or checked.check_errors:
            return Finding(
                "corrupt",
                f"{name} (point #{b.id}) has damaged metadata "
                f"({checked.corruptions} corruptions, {checked.check_errors} errors)",
                f"restore it from a copy if one exists; {_NEW_FULL}",
                b.id,
                b.path,
            )
        actual = head.backing_filename or None
        if actual != expected:
            return _backing_finding(b, name, actual, expected)
        if deep and b.checksum and sha256_file(path) != b.checksum:
            return Finding(
                "changed",
                f"{name} (point #{b.id}) no longer matches its checksum",
                f"restore it from a copy if one exists; {_NEW_FULL}",
                b.id,
                b.path,
            )
        return None

    def _record(self, chain: Chain, report: ChainReport) -> None:
        now = self.clock.now()
        if chain.state == "retired":
            self.store.update_chain(chain.id, checked_at=now)
            return
        state = "ok" if report.ok else "broken"
        detail = None if report.ok else "; ".join(f.message for f in report.findings if f.breaking)
        self.store.update_chain(chain.id, state=state, state_detail=detail, checked_at=now)
        if state == "broken" and chain.state != "broken":
            first = next(f for f in report.findings if f.breaking)
            self.bus.publish(
                Event(
                    kind="chain.broken",
                    message=f"chain {chain.vm_name}/{chain.disk_name} is broken: {first.message}",
                    level="error",
                    source="chains",
                    repository_id=chain.repository_id,
                    data={"chain_id": chain.id, "report": report.as_dict()},
                )
            )
        elif state == "ok" and chain.state == "broken":
            self.bus.publish(
                Event(
                    kind="chain.repaired",
                    message=f"chain {chain.vm_name}/{chain.disk_name} is consistent again",
                    source="chains",
                    repository_id=chain.repository_id,
                    data={"chain_id": chain.id},
                )
            )

    def check_all(
        self, *, repository_id: int | None = None, deep: bool = False
    ) -> list[ChainReport]:
        """Every chain against its files, then the chain directories on disk that the
        catalog knows nothing about (``unknown_directories``)."""
        reports = [
            self.validate(c.id, deep=deep)
            for c in self.store.list_chains(repository_id=repository_id)
            if c.state != "retired" or deep
        ]
        return reports + self.unknown_directories(repository_id=repository_id)

    def unknown_directories(self, *, repository_id: int | None = None) -> list[ChainReport]:
        """Chain directories under ``chains/`` of a repository that are neither a chain
        nor a copy in the catalog: a full whose catalog row was never written (a crash
        after its file landed), or a repository whose catalog was lost."""
        reports: list[ChainReport] = []
        for repo in self.repositories.list():
            if repository_id is not None and repo.id != repository_id:
                continue
            root = Path(repo.path)
            if not repo.enabled or not (root / manifests.CHAINS_DIR).is_dir():
                continue
            known = self.store.known_directories(repo.id)
            directories, _skipped = manifests.chain_directories(root)
            for directory in directories:
                if directory in known:
                    continue
                vm, disk = manifests.vm_and_disk(directory)
                points = sorted(
                    e.name
                    for e in (root / directory).iterdir()
                    if manifests.POINT_NAME.match(e.name)
                )
                report = ChainReport(None, vm, disk, repo.name, directory, len(points))
                if points:
                    message = (
                        f"the chain directory of {vm}/{disk} holds {len(points)} point "
                        "file(s) but the catalog has no chain for it (a backup stopped before "
                        "its catalog row, or the catalog was lost)"
                    )
                    hint = (
                        "`sendense chain check --fix` imports it when its chain is valid "
                        f"(`sendense repo import {repo.name}` for a whole repository); "
                        "otherwise delete the directory"
                    )
                else:
                    message = (
                        f"the chain directory of {vm}/{disk} holds no finished point file and "
                        "the catalog has no chain for it (a first backup that is running or "
                        "stopped before its file landed)"
                    )
                    hint = (
                        "`sendense chain check --fix` removes stale partial files in it; "
                        "delete the empty directory when no backup of this disk runs"
                    )
                report.findings.append(Finding("unknown_chain", message, hint, None, directory))
                reports.append(report)
        return reports

    # -- locks -------------------------------------------------------------------

    def locked_reasons(self, repo: Repository, backups: list[Backup], directory: str) -> list[str]:
        """Why these files cannot be changed now (empty: they can)."""
        now = self.clock.now()
        held = self.store.active_locks([b.id for b in backups], now)
        return sorted(
            set(self._lock_reasons(held, now) + self._flag_reasons(repo, backups, directory))
        )

    @staticmethod
    def _lock_reasons(locks: list[Any], now: datetime) -> list[str]:
        reasons: list[str] = []
        for lock in locks:
            until = f"{lock.expires_at:%Y-%m-%d %H:%M} UTC"
            if as_utc(lock.expires_at) <= now:  # type: ignore[operator]
                reasons.append(
                    f"{Path(lock.path).name} is locked; its lock expired at {until} and is "
                    "released by the next lock job (`sendense lock release-expired`)"
                )
            else:
                reasons.append(f"{Path(lock.path).name} is locked until {until}")
        return reasons

    @staticmethod
    def _flag_reasons(
        repo: Repository, backups: list[Backup], directory: str, files: RepoFiles | None = None
    ) -> list[str]:
        files = files or RepoFiles(repo)
        reasons: list[str] = []
        for target in [*(files(b.path) for b in backups), files(directory)]:
            if not target.exists():
                continue
            try:
                immutable = attrs.is_immutable(target)
            except ToolError:
                immutable = False  # no attribute support here: nothing can be +i
            if immutable:
                reasons.append(f"{target.name} is immutable (lsattr shows 'i')")
        return reasons

    # -- consolidation -----------------------------------------------------------

    def consolidate(
        self,
        chain_id: int,
        *,
        new_base_id: int | None = None,
        actor: str | None = None,
        on_progress: Callable[[float], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        wait: bool = True,
    ) -> Backup:
        """Merge the points before ``new_base_id`` (default: the full, i.e. merge the
        oldest incremental into it) into a new full; the merged points are deleted.
        Returns the point that is now the full. The steps and what a crash between
        them leaves are in the module docstring.

        Holds the disk's writer lease throughout: while another writer holds it this
        waits, or (``wait=False``) raises DiskBusy naming that writer."""
        disk = self.disk_of(chain_id)
        with self.writers.hold_all([disk], operation="consolidate", actor=actor, wait=wait):
            return self._consolidate(
                chain_id,
                new_base_id=new_base_id,
                actor=actor,
                on_progress=on_progress,
                should_stop=should_stop,
            )

    def _consolidate(
        self,
        chain_id: int,
        *,
        new_base_id: int | None,
        actor: str | None,
        on_progress: Callable[[float], None] | None,
        should_stop: Callable[[], bool] | None,
    ) -> Backup:
        chain = self.store.get_chain(chain_id)
        repo = self.repositories.get(chain.repository_id)
        if self.repository_check is not None:
            # before validate(): an unmounted share would read as missing files
            self.repository_check(repo)
        self.recover(chain_id)
        for unfinished in self.store.open_intents(chain_id):
            raise ChainError(
                f"chain {chain_id} has a merge in progress (point #{unfinished.target_id}, "
                f"by {unfinished.owner}, step {unfinished.step})",
                hint="wait for it to finish; an interrupted one is settled at the next start",
            )
        backups = self.store.backups(chain_id)
        if len(backups) < 2:
            raise ChainError(
                f"chain {chain_id} has {plural(len(backups), 'point')}: nothing to consolidate",
                hint="consolidation merges the oldest incremental into the full",
            )
        # every header of the chain checked against the catalog first: a foreign one
        # is refused with its own sentence and a critical event (and recorded by
        # validate); the merge then reads through the catalog's chain, spelled out
        layers = [Layer(b.id, b.path, b.file_size) for b in backups]
        try:
            whole = self.guard.chain_spec(repo, chain.directory, layers).layers()
        except ImageRefused:
            self.validate(chain_id)
            raise
        except PointUnreadable:
            whole = []  # validate names what is missing
        report = self.validate(chain_id)
        if not report.ok or not whole:
            raise ChainError(
                f"chain {chain_id} is broken, consolidation would build on bad data: "
                + report.sentence(),
                action=Action(
                    "check_chain_or_new_full", "check the chain, or let the next full replace it"
                ),
            )
        index = 1
        if new_base_id is not None:
            ids = [b.id for b in backups]
            if new_base_id not in ids[1:]:
                raise ValidationError(
                    f"point {new_base_id} is not an incremental of chain {chain_id}",
                    hint=f"choose one of {', '.join(str(i) for i in ids[1:])}",
                )
            index = ids.index(new_base_id)
        target = backups[index]
        merged = backups[:index]
        reasons = self.locked_reasons(repo, [*merged, target], chain.directory)
        if reasons:
            raise LockedError(
                f"cannot consolidate chain {chain_id}: " + "; ".join(reasons),
                hint="wait for the locks to expire; locked points cannot be merged",
            )
        self._refuse_if_in_use(merged, f"consolidate chain {chain_id}")
        self._check_inputs(chain, [*merged, target], should_stop)
        directory = repo_file(repo, chain.directory)
        target_path = repo_file(repo, target.path)
        # read through the catalog's chain, every layer spelled out (never the headers)
        target_spec = whole[len(backups) - 1 - index]
        self._check_room(repo, target_spec)
        partial = partial_path(target_path)
        compression = merged[0].compression
        with self._intents_lock:
            intent = self.store.add_intent(
                chain_id=chain.id,
                target_id=target.id,
                merged_ids=[b.id for b in merged],
                partial_name=partial.name,
                old_checksum=target.checksum,
                owner=self.owner,
                now=self.clock.now(),
            )
            self._active_intents.add(intent.id)
        disk = DiskKey(chain.repository_id, chain.vm_name, chain.disk_name)
        try:
            failpoint("consolidate.after_intent")
            # on the lease before it exists: whoever takes the disk over removes it
            self.writers.writing(disk, str(Path(chain.directory) / partial.name))
            result = self._write_merged(
                intent.id, chain, target_spec, partial, compression, on_progress, should_stop
            )
            failpoint("consolidate.after_convert")
            self.writers.confirm(disk)  # nobody took the disk over while we merged
            try:
                os.replace(partial, target_path)
                fsync_dir(directory)
            except OSError as exc:
                _discard(partial)
                self._end_intent(intent.id, "rolled_back", f"replacing the file: {exc}")
                raise ChainError(
                    f"cannot consolidate chain {chain_id}: {target_path.name} could not be "
                    f"replaced ({exc.strerror}); nothing was merged",
                    hint="check that the repository is writable and the file is not immutable",
                ) from None
            self.writers.writing(disk, None)
            failpoint("consolidate.after_replace")
            promoted = self._record_merge(intent.id, chain, target, merged, result)
            failpoint("consolidate.after_record")
            self._remove_merged(repo, merged, directory)
            failpoint("consolidate.after_unlink")
            self._move_intent(intent.id, chain, step="done")
        finally:
            self._active_intents.discard(intent.id)
        self.bus.publish(
            Event(
                kind="chain.consolidated",
                message=f"chain {chain.vm_name}/{chain.disk_name}: merged "
                f"{plural(len(merged), 'point')} into a new full at point #{target.id}",
                source="chains",
                repository_id=chain.repository_id,
                actor=actor,
                data={
                    "chain_id": chain.id,
                    "new_full": target.id,
                    "removed": [b.id for b in merged],
                },
            )
        )
        self.validate(chain_id)
        return promoted

    def _check_inputs(
        self, chain: Chain, inputs: list[Backup], should_stop: Callable[[], bool] | None
    ) -> None:
        """A merge never launders damage: every input must be good and still match its
        recorded sha256 (re-read now). A mismatch is recorded as a verify run records it
        (the point is marked bad, a critical event names its good copies) and the merge
        stops before anything is written."""
        where = f"cannot consolidate chain {chain.id} ({chain.vm_name}/{chain.disk_name})"
        hint = (
            "restore the point from a good copy (`sendense verify report` lists them) or "
            "let the next full backup replace this chain"
        )
        for b in inputs:
            if b.state == "bad":
                raise ChainError(
                    f"{where}: point #{b.id} ({Path(b.path).name}) is marked bad"
                    + (f" ({b.state_detail})" if b.state_detail else "")
                    + "; merging it would carry its damage into the new full",
                    hint=hint,
                )
            if not b.checksum:
                raise ChainError(
                    f"{where}: point #{b.id} ({Path(b.path).name}) has no recorded checksum, "
                    "so it cannot be checked before the merge",
                    hint="verification needs a checksum; leave this chain to retention",
                )
        if self.verifier is None:
            raise ChainError(f"{where}: no verifier is wired to check its inputs")
        results = self.verifier.verify_points([b.id for b in inputs], should_stop=should_stop)
        if len(results) < len(inputs):
            raise JobCancelled(f"consolidation of chain {chain.id} was stopped")
        for r in results:
            if r.outcome != "ok":
                marked = " (it is now marked bad)" if r.outcome != "chain_broken" else ""
                raise ChainError(
                    f"{where}: point #{r.target.backup.id} "
                    f"({Path(r.target.backup.path).name}) failed its check before the merge: "
                    f"{r.outcome.replace('_', ' ')}, {r.detail}{marked}; nothing was merged",
                    hint=hint,
                )

    def _write_merged(
        self,
        intent_id: int,
        chain: Chain,
        target: ImageSpec,
        partial: Path,
        compression: str | None,
        on_progress: Callable[[float], None] | None,
        should_stop: Callable[[], bool] | None,
    ) -> dict[str, Any]:
        """Step 2: the merged view of the target, written and fsynced under the partial
        name; its facts recorded in the intent ("converted")."""
        beat_every = max(1.0, self._stale_after().total_seconds() / 4)
        last_beat = [time.monotonic()]
        lost = [False]

        def stop_or_beat() -> bool:
            if time.monotonic() - last_beat[0] >= beat_every:
                last_beat[0] = time.monotonic()
                if not self.store.update_intent(intent_id, self.owner, self.clock.now()):
                    lost[0] = True  # another engine judged us dead and took the merge
            return lost[0] or bool(should_stop and should_stop())

        try:
            qemu_img.convert(
                target,
                partial,
                compression=compression,
                on_progress=on_progress,
                should_stop=stop_or_beat,
            )
            fsync_file(partial)
            head = qemu_img.info(ImageSpec.file(partial.absolute()))
            result = {
                "checksum": sha256_file(partial),
                "file_size": partial.stat().st_size,
                "virtual_size": head.virtual_size,
                "allocated_bytes": allocated_bytes(partial),
                "compression": compression,
            }
        except BaseException as exc:
            _discard(partial)
            with contextlib.suppress(SendenseError):
                self._end_intent(intent_id, "rolled_back", f"writing the new full: {exc}")
            if lost[0]:
                raise self._taken_over(intent_id, chain) from None
            raise
        self._move_intent(intent_id, chain, step="converted", result=result)
        return result

    def _record_merge(
        self,
        intent_id: int,
        chain: Chain,
        target: Backup,
        merged: list[Backup],
        result: dict[str, Any],
    ) -> Backup:
        """Step 4: the target's manifest says what its file now is (a full), then the
        catalog learns the merge (one transaction, intent "recorded")."""
        repo = self.repositories.get(chain.repository_id)
        self._write_manifest(
            repo_file(repo, target.path),
            manifests.point_manifest(
                target,
                chain,
                parent=None,
                kind="full",
                virtual_size=result["virtual_size"],
                file_size=result["file_size"],
                allocated_bytes=result["allocated_bytes"],
                sha256=result["checksum"],
                compression=result.get("compression"),
            ),
        )
        fields = {
            "file_size": result["file_size"],
            "virtual_size": result["virtual_size"],
            "allocated_bytes": result["allocated_bytes"],
            "checksum": result["checksum"],
            "compression": result.get("compression"),
            "state": "complete",
            "state_detail": None,
            "verify_state": None,
            "verified_at": None,
        }
        return self.store.promote_to_full(
            backup_id=target.id,
            path=target.path,
            fields=fields,
            deleted_ids=[b.id for b in merged],
            detail=f"merged into point #{target.id} by consolidation",
            intent_id=intent_id,
            intent_owner=self.owner,
            now=self.clock.now(),
        )

    def _remove_merged(self, repo: Repository, merged: list[Backup], directory: Path) -> None:
        """Step 5: the merged points' files and manifests go (the catalog already calls
        them deleted)."""
        for old in merged:
            path = repo_file(repo, old.path)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            manifests.remove_manifest(path)
        fsync_dir(directory)

    def _move_intent(self, intent_id: int, chain: Chain, **fields: Any) -> None:
        if not self.store.update_intent(intent_id, self.owner, self.clock.now(), **fields):
            raise self._taken_over(intent_id, chain)

    def _taken_over(self, intent_id: int, chain: Chain) -> ChainError:
        return ChainError(
            f"the merge in chain {chain.id} ({chain.vm_name}/{chain.disk_name}) was taken "
            "over by another engine, which settles it; this one stopped",
            hint="its heartbeat lapsed (a stalled engine or catalog); check the events",
        )

    def _end_intent(self, intent_id: int, step: str, detail: str | None) -> None:
        """Close an intent (rolled back, stuck, done after a crash); as its holder only."""
        self.store.update_intent(
            intent_id, self.owner, self.clock.now(), step=step, detail=detail and detail[:2000]
        )

    # -- recovery of interrupted merges ---------------------------------------------

    def _stale_after(self) -> timedelta:
        """How long an intent's heartbeat may be silent before another engine takes it."""
        seconds = self.settings.jobs.lease_seconds if self.settings is not None else 30.0
        return timedelta(seconds=seconds)

    def _abandoned(self, intent: MergeIntent) -> bool:
        if intent.id in self._active_intents:
            return False  # this engine is doing it right now
        if intent.owner == self.owner:
            return True  # ours, and no longer running (it failed half-way)
        if not owner_alive(intent.owner):
            return True
        return as_utc(intent.updated_at) + self._stale_after() < self.clock.now()  # type: ignore[operator]

    def recover(self, chain_id: int | None = None) -> list[str]:
        """Finish or roll back merges that a crash (or a lost catalog) interrupted, on one
        chain or all; merges another live engine is doing are left alone. Runs at engine
        start and before every consolidation. Returns one sentence per merge settled."""
        done: list[str] = []
        for intent in self.store.open_intents(chain_id):
            with self._intents_lock:
                if not self._abandoned(intent):
                    continue
                now = self.clock.now()
                if not self.store.take_over_intent(
                    intent.id, intent.owner, intent.updated_at, self.owner, now
                ):
                    continue  # another engine is settling it
                self._active_intents.add(intent.id)
            try:
                done.append(self._settle(self.store.get_intent(intent.id)))
            except (SendenseError, OSError) as exc:
                # left open (and ours): the next start or consolidation tries again
                log.warning("merge intent %s of chain %s: %s", intent.id, intent.chain_id, exc)
            finally:
                self._active_intents.discard(intent.id)
        return done

    def _settle(self, intent: MergeIntent) -> str:
        chain = self.store.get_chain(intent.chain_id)
        repo = self.repositories.get(chain.repository_id)
        target = self.store.get_backup(intent.target_id)
        merged = [self.store.get_backup(int(i)) for i in intent.merged_ids]
        directory = repo_file(repo, chain.directory)
        target_path = repo_file(repo, target.path)
        partial = repo_file(repo, str(Path(chain.directory) / Path(intent.partial_name).name))
        where = f"chain {chain.vm_name}/{chain.disk_name} (#{chain.id})"
        if not directory.is_dir():
            # an unmounted share looks like missing files: decide nothing until it is back
            raise ChainError(
                f"{where}: its directory is not there, so its interrupted merge waits",
                hint=f"check that repository {repo.name} is mounted",
            )
        what = f"the interrupted merge of {plural(len(merged), 'point')} into point #{target.id}"
        level = "warning"
        if intent.step == "started" or (intent.step == "converted" and partial.exists()):
            # the new full never replaced the target's file: the chain is as it was
            _discard(partial)
            fsync_dir(directory)
            self._end_intent(intent.id, "rolled_back", "rolled back after a crash")
            sentence = f"{where}: {what} was rolled back; the chain is as it was before"
        elif intent.step == "converted":
            expected = (intent.result or {}).get("checksum")
            found = sha256_file(target_path) if target_path.is_file() else None
            if found is not None and found == expected:
                self._record_merge(intent.id, chain, target, merged, intent.result or {})
                self._remove_merged(repo, merged, directory)
                self._end_intent(intent.id, "done", "finished after a crash")
                sentence = f"{where}: {what} was finished (the new full matched its checksum)"
            elif found is not None and found == intent.old_checksum:
                self._end_intent(intent.id, "rolled_back", "rolled back after a crash")
                sentence = f"{where}: {what} was rolled back; the chain is as it was before"
            else:
                detail = (
                    f"{target_path.name} is neither the point it was nor the new full the "
                    "merge wrote (checksum differs from both)"
                )
                self._end_intent(intent.id, "stuck", detail)
                self.store.update_chain(chain.id, state="broken", state_detail=detail)
                sentence = f"{where}: {what} cannot be finished nor rolled back: {detail}"
                level = "critical"
        else:  # recorded: only the merged files are left to remove
            self._remove_merged(repo, merged, directory)
            self._end_intent(intent.id, "done", "finished after a crash")
            sentence = f"{where}: {what} was finished (old files removed)"
        self.bus.publish(
            Event(
                kind="chain.merge_recovered",
                message=sentence,
                level=level,
                source="chains",
                repository_id=chain.repository_id,
                data={"chain_id": chain.id, "intent_id": intent.id, "target": target.id},
            )
        )
        if level != "critical":
            self.validate(chain.id)
        return sentence

    def _check_room(self, repo: Repository, source: ImageSpec) -> None:
        need = qemu_img.measure(source).required
        reserve = _reserve(repo, self.settings)
        free = free_bytes(Path(repo.path))
        if free - need < reserve:
            raise ChainError(
                f"repository {repo.name} has {human_bytes(free)} free; this needs "
                f"{human_bytes(need)} plus the {human_bytes(reserve)} reserve",
                hint="free space in the repository first",
            )

    def _write_manifest(self, point: Path, manifest: manifests.PointManifest) -> None:
        try:
            manifests.write_manifest(point, manifest)
        except OSError as exc:
            raise ChainError(
                f"the manifest of {point.name} could not be written: {exc.strerror}",
                hint="check the repository (space, a flagged directory); the merge is "
                "finished at the next start",
            ) from None

    # -- deletion ----------------------------------------------------------------

    def delete_plan(self, backup_id: int) -> DeletePlan:
        """What deleting a point takes with it: every later point of its chain."""
        backup = self.store.get_backup(backup_id)
        if backup.state == "deleted":
            raise ValidationError(f"restore point {backup_id} is already deleted")
        backups = self.store.backups(backup.chain_id)
        ids = [b.id for b in backups]
        index = ids.index(backup_id) if backup_id in ids else 0
        goes = backups[index:]
        return DeletePlan(backup, goes, chain_ends=index == 0)

    def _refuse_if_in_use(self, goes: list[Backup], doing: str) -> None:
        """An NBD export or a file-restore mount reads these files: deleting them would
        leave the operator on a backup the catalog calls gone."""
        from engine.catalog.restore import LIVE_MOUNT_STATES, RestoreStore

        restores = RestoreStore(self.store.catalog)
        running = restores.exports(states=("running",))
        mounts = restores.mounts_of_many([b.id for b in goes], states=LIVE_MOUNT_STATES)
        _refuse_in_use(goes, running, mounts, doing)

    def delete_point(
        self, backup_id: int, *, actor: str | None = None, wait: bool = True
    ) -> DeletePlan:
        """Delete a point and the points that depend on it (newest first).

        Holds the disk's writer lease (the plan is made under it, so a backup that
        lands meanwhile is never swept along): while another writer holds it this
        waits, or (``wait=False``) raises DiskBusy naming that writer."""
        disk = self.disk_of(self.store.get_backup(backup_id).chain_id)
        with self.writers.hold_all([disk], operation="delete", actor=actor, wait=wait):
            return self._delete_point(backup_id, actor=actor)

    def _delete_point(self, backup_id: int, *, actor: str | None) -> DeletePlan:
        plan = self.delete_plan(backup_id)
        _backup, chain, repo = self.store.locate(backup_id)
        reasons = self.locked_reasons(repo, plan.goes, chain.directory)
        if reasons:
            raise LockedError(
                f"cannot delete point {backup_id}: " + "; ".join(reasons),
                hint="locked points can only be deleted after their lock expires",
            )
        self._refuse_if_in_use(plan.goes, f"delete point {backup_id}")
        # newest first, each one out of the catalog before its file goes: a crash in
        # between leaves an orphan file that `chain check` names, never a recorded
        # point whose file is missing
        for b in reversed(plan.goes):
            self.store.mark_deleted([b.id], f"deleted by {actor or 'operator'}")
            failpoint("delete.after_record")
            path = repo_file(repo, b.path)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            manifests.remove_manifest(path)
        directory = repo_file(repo, chain.directory)
        if directory.is_dir():
            fsync_dir(directory)
        if plan.chain_ends:
            self.store.update_chain(
                chain.id, state="retired", state_detail="all points were deleted"
            )
        self._publish_deleted(chain, plan, actor)
        return plan

    def delete_many(
        self, backup_ids: list[int], *, actor: str | None = None
    ) -> dict[int, DeletePlan | SendenseError]:
        """``delete_point`` of many points in one pass (a retention pass removes the
        tails of a thousand chains): the plans, locks and in-use checks of all of them
        from a few grouped queries, every point that may go marked deleted in one
        transaction (out of the catalog before its file goes, as one by one), then the
        files removed. One point per chain. Per point: its plan, or the error that kept
        it and its chain as they were. Holds the writer leases of every disk involved
        (waiting for them)."""
        backups = self.store.backups_by_id(backup_ids)
        chains = self.store.chains_by_id(list({b.chain_id for b in backups.values()}))
        disks = [DiskKey(c.repository_id, c.vm_name, c.disk_name) for c in chains.values()]
        with self.writers.hold_all(disks, operation="delete", actor=actor):
            return self._delete_many(backup_ids, backups, chains, actor=actor)

    def _delete_many(
        self,
        backup_ids: list[int],
        backups: dict[int, Backup],
        chains: dict[int, Chain],
        *,
        actor: str | None,
    ) -> dict[int, DeletePlan | SendenseError]:
        live = self.store.live_backups_of(list(chains))
        repos = {r.id: r for r in self.repositories.list()}
        outcome: dict[int, DeletePlan | SendenseError] = {}
        planned: dict[int, int] = {}  # chain id -> the point deleted from
        plans: list[DeletePlan] = []
        for backup_id in backup_ids:
            backup = backups.get(backup_id)
            if backup is None:
                outcome[backup_id] = NotFoundError(f"restore point {backup_id} does not exist")
            elif backup.state == "deleted":
                outcome[backup_id] = ValidationError(
                    f"restore point {backup_id} is already deleted"
                )
            elif backup.chain_id in planned:
                # one point per chain: the first one's plan already decides the chain
                outcome[backup_id] = ValidationError(
                    f"restore point {backup_id}: its chain is deleted from "
                    f"#{planned[backup.chain_id]} in the same pass"
                )
            else:
                rows = live[backup.chain_id]
                ids = [b.id for b in rows]
                index = ids.index(backup_id) if backup_id in ids else 0
                plans.append(DeletePlan(backup, rows[index:], chain_ends=index == 0))
                planned[backup.chain_id] = backup_id
        files = {repo_id: RepoFiles(repo) for repo_id, repo in repos.items()}
        refusals = self._refusals(plans, chains, repos, files)
        plans = [p for p in plans if p.target.id not in refusals]
        outcome.update(refusals)
        # newest first within each chain; all out of the catalog before any file goes
        self.store.mark_deleted(
            [b.id for p in plans for b in reversed(p.goes)], f"deleted by {actor or 'operator'}"
        )
        failpoint("delete.after_record")
        for plan in plans:
            chain = chains[plan.target.chain_id]
            in_repo = files[chain.repository_id]
            for b in reversed(plan.goes):
                path = in_repo(b.path)
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                manifests.remove_manifest(path)
            directory = in_repo(chain.directory)
            if directory.is_dir():
                fsync_dir(directory)
        self.store.retire_chains(
            [p.target.chain_id for p in plans if p.chain_ends], "all points were deleted"
        )
        for plan in plans:
            chain = chains[plan.target.chain_id]
            self._publish_deleted(chain, plan, actor)
            outcome[plan.target.id] = plan
        return outcome

    def _publish_deleted(self, chain: Chain, plan: DeletePlan, actor: str | None) -> None:
        self.bus.publish(
            Event(
                kind="backup.deleted",
                message=f"{chain.vm_name}/{chain.disk_name}: {plan.sentence()}",
                level="warning",
                source="chains",
                repository_id=chain.repository_id,
                actor=actor,
                data={"chain_id": chain.id, "deleted": [b.id for b in plan.goes]},
            )
        )

    def _refusals(
        self,
        plans: list[DeletePlan],
        chains: dict[int, Chain],
        repos: dict[int, Repository],
        files: dict[int, RepoFiles],
    ) -> dict[int, SendenseError]:
        """The plans that may not happen, and why (as ``_delete_point`` says it): a lock
        on one of their files, or an export or a restore mount reading one."""
        ids = [b.id for p in plans for b in p.goes]
        now = self.clock.now()
        locks: dict[int, list[Any]] = {}
        for lock in self.store.active_locks(ids, now):
            if lock.backup_id is not None:
                locks.setdefault(lock.backup_id, []).append(lock)
        from engine.catalog.restore import LIVE_MOUNT_STATES, RestoreStore

        restores = RestoreStore(self.store.catalog)
        running = restores.exports(states=("running",))
        mounts = restores.mounts_of_many(ids, states=LIVE_MOUNT_STATES)
        refused: dict[int, SendenseError] = {}
        for plan in plans:
            chain = chains[plan.target.chain_id]
            held = [lock for b in plan.goes for lock in locks.get(b.id, [])]
            reasons = self._lock_reasons(held, now) + self._flag_reasons(
                repos[chain.repository_id], plan.goes, chain.directory, files[chain.repository_id]
            )
            backup_id = plan.target.id
            if reasons:
                refused[backup_id] = LockedError(
                    f"cannot delete point {backup_id}: " + "; ".join(sorted(set(reasons))),
                    hint="locked points can only be deleted after their lock expires",
                )
                continue
            try:
                _refuse_in_use(plan.goes, running, mounts, f"delete point {backup_id}")
            except ChainError as exc:
                refused[backup_id] = exc
        return refused


def _refuse_in_use(
    goes: list[Backup], running: list[Any], mounts: dict[int, list[Any]], doing: str
) -> None:
    """Raise ChainError for the first of ``goes`` a running export serves or a live
    restore mount browses (``mounts``: point id -> its mounts, oldest first)."""
    for b in goes:
        for export in running:
            if export.backup_id == b.id:
                raise ChainError(
                    f"cannot {doing}: NBD export '{export.export_name}' serves point {b.id}",
                    action=Action(
                        "stop_export",
                        f"stop export {export.export_name} first",
                        export.export_name,
                    ),
                )
        for mount in mounts.get(b.id, []):
            raise ChainError(
                f"cannot {doing}: restore mount {mount.id} browses point {b.id}",
                action=Action(
                    "unmount_restore", f"unmount restore mount {mount.id} first", str(mount.id)
                ),
            )


def _discard(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def orphan_finding(
    chain_directory: str,
    name: str,
    known: set[str],
    directory: Path,
    *,
    deleted: set[str] = frozenset(),  # type: ignore[assignment]
) -> Finding | None:
    """What a file in a chain directory that the catalog does not record is, and what to
    do with it; None for the manifest of a point the catalog knows or that is there.
    ``deleted``: file names of points the catalog records as deleted (a deletion or a
    merge stopped between its catalog row and the file)."""
    rel = str(Path(chain_directory) / name)
    fix = "`sendense chain check --fix`"
    if name in deleted:
        return Finding(
            "orphan",
            f"{name} is a point the catalog records as deleted, still on disk (a deletion "
            "or a merge stopped before removing its file)",
            f"{fix} finishes removing it (and its manifest)",
            None,
            rel,
        )
    if manifests.is_manifest_name(name):
        point = manifests.point_name_of(name)
        if point in known or (directory / point).exists():
            return None  # the manifest of a recorded point, or of the orphan named below
        return Finding(
            "orphan",
            f"{name} belongs to {point} (its manifest or digest table), which is neither "
            "on disk nor in the catalog",
            f"{fix} removes it when the catalog recorded that point as deleted; "
            "otherwise put the point back from a copy or delete the manifest",
            None,
            rel,
        )
    if name.endswith(".partial"):
        return Finding(
            "orphan",
            f"{name} is in the chain directory but not in the catalog (left by an "
            "interrupted backup, copy or consolidation)",
            f"{fix} removes it once no job writes to this repository",
            None,
            rel,
        )
    if manifests.POINT_NAME.match(name):
        return Finding(
            "orphan",
            f"{name} is a finished point file the catalog does not know (a backup or "
            "consolidation stopped before its catalog row)",
            f"{fix} imports it when it extends this chain and its manifest and checksum "
            "agree; otherwise delete it",
            None,
            rel,
        )
    return Finding(
        "orphan",
        f"{name} is in the chain directory but not in the catalog",
        "if it is a renamed point, rename it back; otherwise delete it",
        None,
        rel,
    )


def _reserve(repo: Repository, settings: Settings | None) -> int:
    """The free space this repository keeps (``CapacitySettings.reserve``)."""
    if repo.min_free_bytes is not None:
        return int(repo.min_free_bytes)
    if settings is None:
        return 0
    return settings.capacity.reserve(space(repo.path).total)
