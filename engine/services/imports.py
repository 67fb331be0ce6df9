"""Reading repositories back into the catalog: ``repo import`` and ``chain check --fix``.

A repository describes itself (a manifest next to every point, see
engine.services.manifests), so its catalog rows can be rebuilt from its files
after the catalog was lost, on a new appliance, or after a disk was moved:

``sendense repo import NAME --path ...`` adds the repository (the same test as
``repo add``, but the layout must already be there), then an import job walks
``chains/VM/DISK/DIR`` and, per chain directory (``import_directory``, one disk):

1. reads every point's manifest; a point without one (or with a damaged one) is
   described from its QCOW2 header and file name instead, and the report says so;
2. picks the chain by following parent references from the newest point down to a
   full (files that are not part of it, e.g. left by an interrupted consolidation,
   are named and left in place);
3. checks every point: its header, parsed in Python, must name exactly its parent
   (a plain file name in the directory) and no data file, its virtual size must be
   the manifest's; every file is read in full and its sha256 compared with the
   manifest's (the job's progress counts these bytes). A header that names anything
   else is refused: that point and every later one are not recorded. A file that
   is missing or does not match its checksum is recorded as a *bad* point (its
   manifest says what it should be), so a good copy in another repository can still
   be used, and the chain is recorded as broken;
4. records, in one transaction: a chain and its points; or, when another
   repository of the catalog already has this chain (same directory and the same
   full, by checksum), Copy rows of those points (the first repository imported
   holds the backups, later ones are its copies); or, for a chain the catalog
   already has in this repository, the finished points that extend it;
5. keeps locks: a file flagged ``+i`` (lsattr) gets a lock row with its manifest's
   expiry, never shorter than the manifest says; a file whose manifest says it is
   locked until later but lost its flag (copied by a tool that drops it) is flagged
   again; a flagged file with no known expiry is reported and stays flagged
   (nothing in Sendense releases it).

Conflicts (a point that disagrees with the catalog, a copy that differs from its
original) and damaged chains are listed in one report (the CLI prints it).

``fix`` (``chain check --fix`` and the Chains screen) cleans up after crashes:
it removes stale ``.partial`` files and the manifests of points the catalog
recorded as deleted, and imports finished orphans with the same
``import_directory`` (only points that check out, never a bad one); it never
changes, removes or imports anything while a job runs on the repository, and
never touches a locked (``+i``) file.

One writer per disk: ``import_directory`` is the per-disk unit of work and holds
the disk's writer lease (engine.writers) for the directory's VM and disk before
anything is read or recorded; a disk another writer holds (a backup, a merge) is
left alone and reported, to be imported by the next run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from engine.catalog.chains import LIVE_STATES, ChainStore
from engine.catalog.copies import COPY_DONE, CopyStore
from engine.catalog.locks import LockStore
from engine.catalog.models import Chain, Repository
from engine.clock import SYSTEM_CLOCK, Clock, as_utc
from engine.errors import SendenseError, ValidationError
from engine.events import Event, EventBus
from engine.failpoints import failpoint
from engine.fsutil import fsync_dir
from engine.hashing import hash_file
from engine.jobs import JobContext, JobHandler, JobRunner
from engine.services import manifests
from engine.services.chains import ChainService, allocated_bytes, repo_file
from engine.services.immutability import LockBackend, until_text
from engine.services.manifests import (
    ManifestError,
    ManifestMissing,
    PointManifest,
    Qcow2Header,
)
from engine.services.probe import RepositoryCheckError
from engine.services.repositories import RepositoryService, RepositorySpec
from engine.states import JobKind
from engine.tools.base import ToolError
from engine.units import human_bytes, plural
from engine.writers import DiskBusy, DiskWriters

log = logging.getLogger(__name__)

JOB_KIND = JobKind.REPOSITORY_IMPORT
#: a partial file written to this recently may still be in use by a writer outside the
#: job table (a `chain consolidate` run from the command line): it is left alone
PARTIAL_QUIET_SECONDS = 120.0


class RepositoryImportError(SendenseError):
    """A repository cannot be imported as asked; nothing was recorded."""


# -- reports ---------------------------------------------------------------------------


@dataclass
class ChainOutcome:
    """What became of one chain directory."""

    repository: str
    directory: str
    vm: str
    disk: str
    #: imported | extended | copies | known | damaged | conflict | left_alone
    outcome: str = "known"
    chain_id: int | None = None
    points: list[int] = field(default_factory=list)
    copies: list[int] = field(default_factory=list)
    locks: list[int] = field(default_factory=list)
    #: things worth knowing that need nothing done (a manifest fallback, a re-lock)
    notes: list[str] = field(default_factory=list)
    #: what needs the operator: damage, conflicts, files that could not be used
    problems: list[str] = field(default_factory=list)

    def sentence(self) -> str:
        what = {
            "imported": f"imported as chain {self.chain_id} ({plural(len(self.points), 'point')})",
            "extended": f"{plural(len(self.points), 'point')} added to chain {self.chain_id}",
            "copies": f"{plural(len(self.copies), 'point')} recorded as copies",
            "known": "already in the catalog",
            "damaged": "damaged",
            "conflict": "conflicts with the catalog",
            "left_alone": "left alone",
        }.get(self.outcome, self.outcome)
        return f"{self.vm}/{self.disk} ({self.directory}): {what}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "repository": self.repository,
            "directory": self.directory,
            "vm": self.vm,
            "disk": self.disk,
            "outcome": self.outcome,
            "chain_id": self.chain_id,
            "points": self.points,
            "copies": self.copies,
            "locks": self.locks,
            "notes": self.notes,
            "problems": self.problems,
            "sentence": self.sentence(),
        }


@dataclass
class ImportReport:
    repository: str
    chains: list[ChainOutcome] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    #: about the repository as a whole (e.g. its lock period is not on disk)
    notes: list[str] = field(default_factory=list)
    bytes_read: int = 0

    @property
    def problems(self) -> list[str]:
        return [f"{c.directory}: {p}" for c in self.chains for p in c.problems]

    @property
    def ok(self) -> bool:
        return not self.problems

    def count(self, what: str) -> int:
        return sum(len(getattr(c, what)) for c in self.chains)

    def sentence(self) -> str:
        return (
            f"repository {self.repository}: {len(self.chains)} chain directory(ies), "
            f"{plural(self.count('points'), 'point')} and "
            f"{plural(self.count('copies'), 'copy', 'copies')} recorded, "
            f"{plural(self.count('locks'), 'lock')} kept, {human_bytes(self.bytes_read)} checked"
            + (f"; {plural(len(self.problems), 'problem')}" if self.problems else "; no problems")
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "repository": self.repository,
            "ok": self.ok,
            "sentence": self.sentence(),
            "chains": [c.as_dict() for c in self.chains],
            "skipped": self.skipped,
            "notes": self.notes,
            "problems": self.problems,
            "bytes_read": self.bytes_read,
        }


@dataclass
class FixReport:
    removed: list[str] = field(default_factory=list)
    left_alone: list[str] = field(default_factory=list)
    chains: list[ChainOutcome] = field(default_factory=list)

    @property
    def imported(self) -> int:
        return sum(len(c.points) for c in self.chains)

    def sentence(self) -> str:
        return (
            f"removed {len(self.removed)} stale file(s), imported {self.imported} orphan "
            f"point(s), left {plural(len(self.left_alone), 'file')} alone"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "sentence": self.sentence(),
            "removed": self.removed,
            "left_alone": self.left_alone,
            "chains": [c.as_dict() for c in self.chains],
        }


# -- what a chain directory holds --------------------------------------------------------


@dataclass
class _Point:
    """One point file (or the manifest of one whose file is gone) in a chain directory."""

    name: str
    path: Path
    present: bool
    #: the manifest, when it is there and valid
    manifest: PointManifest | None
    #: what the import goes by: the manifest, or the header and file name
    facts: PointManifest | None
    header: Qcow2Header | None = None
    size: int = 0
    #: why the point cannot be used at all (no facts)
    unusable: str | None = None

    @property
    def parent(self) -> str | None:
        return self.facts.parent if self.facts else None


@dataclass
class _Checked:
    point: _Point
    #: good | bad | refused
    verdict: str
    checksum: str | None = None
    #: ok (checksum matched its manifest) | mismatch | missing | None (nothing to compare)
    verify_state: str | None = None
    detail: str | None = None


class _Progress:
    """Bytes read while checking, reported to the job (and checked for cancel)."""

    def __init__(self, ctx: JobContext | None, total: int) -> None:
        self.ctx = ctx
        self.total = total
        self.done = 0

    def add(self, n: int) -> None:
        self.done += n
        if self.ctx is not None:
            self.ctx.progress(self.done, max(self.total, self.done), message="checking files")

    def should_stop(self) -> bool:
        return self.ctx is not None and self.ctx.should_stop()


# -- the service ----------------------------------------------------------------------------


class RepositoryImportService:
    """``engine.imports``: repository import (job kind ``repository.import``) and fix."""

    def __init__(
        self,
        chains: ChainStore,
        copies: CopyStore,
        locks: LockStore,
        lock_backend: LockBackend,
        repositories: RepositoryService,
        chain_service: ChainService,
        jobs: JobRunner,
        bus: EventBus,
        writers: DiskWriters,
        *,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        #: one writer per disk: an import never records a chain a backup is extending
        self.writers = writers
        self.chains = chains
        self.copies = copies
        self.locks = locks
        self.lock_backend = lock_backend
        self.repositories = repositories
        self.chain_service = chain_service
        self.jobs = jobs
        self.bus = bus
        self.clock = clock

    def job_handlers(self) -> dict[JobKind, JobHandler]:
        return {JOB_KIND: JobHandler(self.run_job)}

    # -- adding a repository that already holds backups --------------------------------

    def add_repository(self, spec: RepositorySpec, *, actor: str | None = None) -> Repository:
        """The repository to import into: tested like ``repo add`` (but its layout must
        already be there) and saved; a repository of that name at the same place is
        reused (importing again records what is not yet recorded)."""
        existing = next((r for r in self.repositories.list() if r.name == spec.name), None)
        if existing is not None:
            same = self.repositories.spec_of(existing)
            if (same.kind, same.path, same.server, same.export) != (
                spec.kind,
                spec.path if spec.kind == "local" else "",
                spec.server,
                spec.export,
            ):
                raise ValidationError(
                    f"a repository named {spec.name} already exists at "
                    f"{self.repositories.describe_location(existing)}",
                    hint="import under another name, or give that repository's own location",
                )
            self._refuse_if_busy(existing)
            return existing
        report = self.repositories.test(spec, import_layout=True)
        if not report.ok:
            raise RepositoryCheckError(
                f"repository {spec.name} was not imported: {report.error}",
                reason=report.reason or "io",
                hint=report.hint,
            )
        return self.repositories.add(spec, test=False, enabled=True, actor=actor)

    def submit(self, repository: int | str, *, actor: str | None = None) -> Any:
        """Queue the import job; an import of this repository that is still queued, or
        whose engine died (its lease lapsed), is returned instead of a second one: the
        caller's job runner takes it over."""
        repo = self.repositories.get(repository)
        now = self.clock.now()
        for job in self.jobs.store.list(states=("queued", "running"), kind=JOB_KIND):
            if job.repository_id != repo.id:
                continue
            lapsed = job.lease_expires_at is not None and as_utc(job.lease_expires_at) <= now  # type: ignore[operator]
            if job.state == "queued" or lapsed:
                return job
        self._refuse_if_busy(repo)
        return self.jobs.submit(
            JOB_KIND,
            f"import repository {repo.name} from its files",
            {"repository": repo.id, "actor": actor},
            repository_id=repo.id,
            actor=actor,
        )

    def run_job(self, ctx: JobContext) -> dict[str, Any]:
        report = self.import_repository(
            int(ctx.params["repository"]), ctx=ctx, actor=ctx.params.get("actor")
        )
        return report.as_dict()

    def _refuse_if_busy(self, repo: Repository, *, except_job: int | None = None) -> None:
        busy = self._running_jobs(repo, except_job=except_job)
        if busy:
            raise RepositoryImportError(
                f"job #{busy[0].id} ({busy[0].title}) is running on repository {repo.name}",
                hint="import (or fix) after it ends: its files are not finished yet (a job "
                "whose engine died is taken over when its lease lapses)",
            )

    def _running_jobs(self, repo: Repository, *, except_job: int | None = None) -> list[Any]:
        now = self.clock.now()
        return [
            job
            for job in self.jobs.store.list(states=("running",), limit=1000)
            if job.repository_id == repo.id
            and job.id != except_job
            and (job.lease_expires_at is None or as_utc(job.lease_expires_at) > now)  # type: ignore[operator]
        ]

    # -- importing a repository -----------------------------------------------------------

    def import_repository(
        self, repository: int | str, *, ctx: JobContext | None = None, actor: str | None = None
    ) -> ImportReport:
        """Record every chain directory of the repository (see the module docstring)."""
        repo = self.repositories.get(repository)
        self._refuse_if_busy(repo, except_job=ctx.job_id if ctx else None)
        root = Path(repo.path)
        if not (root / manifests.CHAINS_DIR).is_dir():
            raise RepositoryImportError(
                f"repository {repo.name} has no {manifests.CHAINS_DIR}/ directory at {root}",
                hint="give the directory that holds chains/ (the repository's root)",
            )
        directories, skipped = manifests.chain_directories(root)
        report = ImportReport(repo.name, skipped=[f"{s.path}: {s.reason}" for s in skipped])
        total = sum(_point_bytes(root / d) for d in directories)
        progress = _Progress(ctx, total)
        if ctx is not None:
            ctx.progress(0, total, message="checking files", force=True)
        for directory in directories:
            report.chains.append(self.import_directory(repo, directory, progress, fix=False))
        self._retire_superseded(repo, report.chains)
        report.bytes_read = progress.done
        if report.count("locks") and not repo.immutable:
            report.notes.append(
                "locked files were found and keep their locks; the repository's own lock "
                "period is not stored in its files: `sendense lock enable "
                f"{repo.name} --days N` locks new backups again"
            )
        if ctx is not None:
            ctx.progress(total, total, force=True)
        self.bus.publish(
            Event(
                kind="repository.imported",
                message=report.sentence(),
                level="warning" if report.problems else "info",
                source="imports",
                repository_id=repo.id,
                job_id=ctx.job_id if ctx else None,
                actor=actor,
                data={"problems": report.problems[:20]},
            )
        )
        return report

    def import_directory(
        self, repo: Repository, directory: str, progress: _Progress, *, fix: bool
    ) -> ChainOutcome:
        """Read one chain directory (one VM disk) back into the catalog, as the disk's
        one writer (a disk another writer holds now is left alone and reported).

        ``fix``: only finished points that check out are recorded (an orphan), nothing
        damaged; otherwise damaged points with a manifest are recorded as bad.
        """
        vm, disk = manifests.vm_and_disk(directory)
        out = ChainOutcome(repo.name, directory, vm, disk)
        try:
            with self.writers.hold(repo.id, vm, disk, operation="import", wait=False):
                self._import_held(repo, directory, vm, disk, out, progress, fix=fix)
        except DiskBusy as exc:
            out.outcome = "left_alone"
            out.problems.append(
                f"not recorded now: {exc.message}; import the repository again when it is done"
            )
        return out

    def _import_held(
        self,
        repo: Repository,
        directory: str,
        vm: str,
        disk: str,
        out: ChainOutcome,
        progress: _Progress,
        *,
        fix: bool,
    ) -> None:
        root = Path(repo.path)
        points = self._scan(root / directory, vm, disk, out)
        chain_rows = [
            c for c in self.chains.chains_by_directory(directory) if c.repository_id == repo.id
        ]
        if chain_rows:
            self._extend(repo, chain_rows[0], points, progress, out, fix=fix)
        elif points:
            selected = self._select(points, out)
            if selected:
                original = self._original_elsewhere(repo, directory, selected, progress)
                if original is not None:
                    self._record_copies(repo, original, selected, progress, out)
                else:
                    self._record_chain(repo, directory, selected, progress, out, fix=fix)
        elif not out.problems:
            out.outcome = "left_alone"
            out.notes.append("no point files: nothing to record")
        failpoint("import.chain_recorded")
        if fix:
            # only what was recorded now; locked files were left alone
            names = {Path(b.path).name for b in self._rows(out.points)}
            self._keep_locks(repo, directory, [p for p in points if p.name in names], out)
        else:
            self._keep_locks(repo, directory, points, out)
        failpoint("import.locks_recorded")
        if out.chain_id is not None and out.points:
            # qemu-img's view of what was recorded (chain state ok or broken); points
            # recorded as bad were reported above already
            bad = {b.id for b in self._rows(out.points) if b.state != "complete"}
            report = self.chain_service.validate(out.chain_id)
            out.problems += [
                f.message for f in report.findings if f.breaking and f.backup_id not in bad
            ]

    # -- scanning ----------------------------------------------------------------------

    def _scan(self, directory: Path, vm: str, disk: str, out: ChainOutcome) -> list[_Point]:
        """Every point file (and every manifest whose point file is gone), with facts."""
        names: dict[str, bool] = {}
        #: point names held by something that is not a regular file: never described
        blocked: set[str] = set()
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as exc:
            out.problems.append(f"the directory cannot be listed: {exc.strerror}")
            out.outcome = "damaged"
            return []
        for entry in entries:
            if manifests.POINT_NAME.match(entry.name):
                mode = entry.stat(follow_symlinks=False).st_mode
                if stat.S_ISLNK(mode) or not stat.S_ISREG(mode):
                    out.problems.append(
                        f"{entry.name} is not a regular file (a link or a device): never read"
                    )
                    blocked.add(entry.name)
                    continue
                names[entry.name] = True
            elif manifests.is_manifest_name(entry.name):
                names.setdefault(manifests.point_name_of(entry.name), False)
        for name in blocked:
            names.pop(name, None)
        points = [
            self._describe(directory / name, present, vm, disk, out)
            for name, present in sorted(names.items())
        ]
        return [p for p in points if p is not None]

    def _describe(
        self, path: Path, present: bool, vm: str, disk: str, out: ChainOutcome
    ) -> _Point | None:
        name = path.name
        manifest: PointManifest | None = None
        why_not: str | None = None
        lost = False
        try:
            manifest = manifests.read_manifest(path)
        except ManifestMissing as exc:
            why_not, lost = exc.message, True
        except ManifestError as exc:
            why_not = exc.message
        if manifest is not None:
            mismatch = _manifest_mismatch(manifest, vm, disk)
            if mismatch:
                why_not = f"manifest of {name} {mismatch}"
                manifest = None
        if not present:
            if manifest is None:
                out.problems.append(f"{why_not} (and {name} is not there)")
                return None
            return _Point(name, path, False, manifest, manifest)
        point = _Point(name, path, True, manifest, manifest, size=path.lstat().st_size)
        try:
            point.header = manifests.read_qcow2_header(path)
        except ManifestError as exc:
            point.unusable = exc.message
        if manifest is None:
            if lost:
                out.notes.append(f"{name} has no manifest: described from its header and name")
            else:
                out.problems.append(f"{why_not}: {name} is described from its header instead")
            point.facts = self._fallback_facts(point, vm, disk)
            if point.facts is None and point.unusable is None:
                point.unusable = "its name does not say what it is"
        return point

    def _fallback_facts(self, point: _Point, vm: str, disk: str) -> PointManifest | None:
        parsed = manifests.parse_point_name(point.name)
        header = point.header
        if parsed is None or header is None:
            return None
        # an incremental builds on what its header names: a name that is not a point of
        # this directory never joins a chain, and a full whose header names a backing
        # file is refused when the chain is checked
        parent = None if parsed.kind == "full" else header.backing_file
        return PointManifest(
            vm=vm,
            disk=disk,
            file=point.name,
            kind=parsed.kind,
            position=parsed.position,
            parent=parent,
            point_time=parsed.point_time,
            created=parsed.point_time,
            virtual_size=header.virtual_size,
            file_size=point.size,
            allocated_bytes=0,
            sha256=None,
        )

    # -- choosing the chain ------------------------------------------------------------------

    def _select(self, points: list[_Point], out: ChainOutcome) -> list[_Point]:
        """The chain of this directory, full first: following parent references from each
        point down to a full, the longest such chain (then the highest position, then the
        newest point) is the one; other files are named and left in place."""
        by_name = {p.name: p for p in points if p.facts is not None}
        for p in points:
            if p.facts is None:
                out.problems.append(f"{p.name} cannot be used: {p.unusable}")
        best: list[_Point] = []
        best_key: tuple[int, int, datetime] | None = None
        broken: list[str] = []
        for tip in by_name.values():
            chain: list[_Point] = []
            seen: set[str] = set()
            current: _Point | None = tip
            while current is not None and current.name not in seen:
                seen.add(current.name)
                chain.append(current)
                parent = current.parent
                if parent is None:
                    break
                current = by_name.get(parent)
                if current is None:
                    broken.append(f"{chain[-1].name} builds on {parent}, which is not there")
                    chain = []
            if not chain or chain[-1].facts is None or chain[-1].facts.kind != "full":
                continue
            chain.reverse()
            facts = tip.facts
            assert facts is not None
            key = (len(chain), facts.position, facts.point_time)
            if best_key is None or key > best_key:
                best, best_key = chain, key
        if not best:
            out.outcome = "damaged"
            out.problems.append(
                "no chain can be built from a full: "
                + ("; ".join(sorted(set(broken))) or "no full")
            )
            return []
        chosen = {p.name for p in best}
        for p in points:
            if p.name not in chosen and p.facts is not None:
                out.notes.append(
                    f"{p.name} is not part of the chain (left by an interrupted consolidation "
                    "or a removed point?): left in place, not recorded"
                )
        return best

    # -- checking points ------------------------------------------------------------------------

    def _check(self, point: _Point, parent: str | None, progress: _Progress) -> _Checked:
        """Header and checksum of one point whose parent file should be ``parent``."""
        facts = point.facts
        assert facts is not None
        if not point.present:
            return _Checked(
                point, "bad", facts.sha256, "missing", f"{point.name} is missing from the disk"
            )
        if point.header is None:
            return _Checked(point, "refused", detail=f"{point.name}: {point.unusable}")
        refusal = point.header.refusal(parent)
        if refusal is not None:
            return _Checked(point, "refused", detail=f"{point.name} is refused: {refusal}")
        try:
            digest, read = hash_file(
                point.path, on_bytes=progress.add, should_stop=progress.should_stop
            )
        except OSError as exc:
            return _Checked(
                point,
                "bad",
                facts.sha256,
                "missing",
                f"{point.name} cannot be read: {exc.strerror or exc}",
            )
        if point.manifest is None:
            return _Checked(point, "good", digest, None)
        if digest != facts.sha256 or read != facts.file_size:
            return _Checked(
                point,
                "bad",
                facts.sha256,
                "mismatch",
                f"{point.name} does not match its manifest's checksum (it changed after it "
                "was written)",
            )
        if point.header.virtual_size != facts.virtual_size:
            return _Checked(
                point,
                "bad",
                facts.sha256,
                "mismatch",
                f"{point.name}'s header says {point.header.virtual_size} bytes, its manifest "
                f"{facts.virtual_size}",
            )
        return _Checked(point, "good", digest, "ok")

    def _checked_chain(
        self, points: list[_Point], progress: _Progress, parent: str | None, *, fix: bool
    ) -> list[_Checked]:
        """Check points in chain order; stops after a refused one (nothing built on a
        header that names something else is trusted) and, when fixing, at a locked
        file (fix never touches one: `repo import` records it with its lock)."""
        out: list[_Checked] = []
        for point in points:
            if fix and point.present and self._flagged(point.path):
                out.append(
                    _Checked(
                        point,
                        "locked",
                        detail=f"{point.name} is locked (lsattr shows 'i'): left alone by "
                        "--fix (`sendense repo import` records it with its lock)",
                    )
                )
                break
            checked = self._check(point, parent, progress)
            out.append(checked)
            if checked.verdict == "refused":
                break
            parent = point.name
        return out

    # -- recording -----------------------------------------------------------------------------

    def _record_chain(
        self,
        repo: Repository,
        directory: str,
        selected: list[_Point],
        progress: _Progress,
        out: ChainOutcome,
        *,
        fix: bool,
    ) -> None:
        checked = self._checked_chain(selected, progress, None, fix=fix)
        rows: list[dict[str, Any]] = []
        for c in checked:
            if c.verdict in ("refused", "locked") or (
                c.verdict == "bad" and (fix or c.point.manifest is None)
            ):
                self._report_stop(c, out)
                break
            rows.append(self._fields(repo, directory, c))
        if not rows:
            locked = any(c.verdict == "locked" for c in checked)
            out.outcome = "left_alone" if locked else "damaged"
            return
        full = selected[0].facts
        assert full is not None
        damaged = any(c.verdict != "good" for c in checked)
        chain, recorded = self.chains.import_chain(
            repository_id=repo.id,
            vm_name=full.vm,
            disk_name=full.disk,
            directory=directory,
            created_at=full.created,
            points=rows,
            state_detail="imported from the repository's files",
        )
        out.chain_id = chain.id
        out.points = [r.id for r in recorded]
        out.outcome = "damaged" if damaged else "imported"
        for c in checked:
            if c.verdict == "bad" and c.detail and c.point.manifest is not None and not fix:
                out.problems.append(f"{c.detail}: recorded as a bad point")

    def _report_stop(self, c: _Checked, out: ChainOutcome) -> None:
        out.problems.append(f"{c.detail}; it and any point after it were not recorded")

    def _fields(self, repo: Repository, directory: str, c: _Checked) -> dict[str, Any]:
        facts = c.point.facts
        assert facts is not None
        path = f"{directory}/{c.point.name}"
        stored = facts.allocated_bytes
        if c.point.manifest is None and c.verdict == "good":
            with contextlib.suppress(ToolError):
                stored = allocated_bytes(repo_file(repo, path))
        now = self.clock.now()
        how = "its manifest" if c.point.manifest is not None else "its header and name"
        return {
            "kind": facts.kind,
            "position": facts.position,
            "path": path,
            "state": "complete" if c.verdict == "good" else "bad",
            "state_detail": (
                f"imported from {how}" if c.verdict == "good" else f"imported damaged: {c.detail}"
            ),
            "point_time": facts.point_time,
            "created_at": facts.created,
            "source": facts.source,
            "compression": facts.compression,
            "virtual_size": facts.virtual_size,
            "file_size": facts.file_size if c.point.manifest is not None else c.point.size,
            "allocated_bytes": stored,
            "checksum": c.checksum,
            "verify_state": c.verify_state,
            "verified_at": now if c.verify_state is not None else None,
        }

    def _extend(
        self,
        repo: Repository,
        chain: Chain,
        points: list[_Point],
        progress: _Progress,
        out: ChainOutcome,
        *,
        fix: bool,
    ) -> None:
        """A chain the catalog has in this repository: add the finished points on disk
        that build on its newest point (orphans of a crash before their rows)."""
        out.chain_id = chain.id
        rows_by_name = {
            Path(b.path).name: b for b in self.chains.backups(chain.id, include_deleted=True)
        }
        live = self.chains.backups(chain.id)
        for p in points:
            row = rows_by_name.get(p.name)
            if (
                row is not None
                and row.state in LIVE_STATES
                and p.manifest is not None
                and p.manifest.sha256 is not None
                and row.checksum
                and p.manifest.sha256 != row.checksum
            ):
                out.problems.append(
                    f"the manifest of {p.name} and the catalog disagree on its checksum "
                    f"(point #{row.id}): `sendense chain check --deep` tells which is right"
                )
        orphans = {p.name: p for p in points if p.name not in rows_by_name and p.facts}
        if not orphans:
            return
        if not live:
            out.problems.append(
                "the catalog's chain has no live point to build on: "
                f"{', '.join(sorted(orphans))} not recorded"
            )
            out.outcome = "conflict"
            return
        last = live[-1]
        following: list[_Point] = []
        tip, position = Path(last.path).name, last.position
        while True:
            builds = sorted(
                (p for p in orphans.values() if p.parent == tip and p.facts),
                key=lambda p: (p.facts.position if p.facts else 0, p.name),
            )
            chosen = builds[-1] if builds else None
            if chosen is None or chosen.facts is None or chosen.facts.position <= position:
                break
            following.append(chosen)
            tip, position = chosen.name, chosen.facts.position
            del orphans[chosen.name]
        rows: list[dict[str, Any]] = []
        for c in self._checked_chain(following, progress, Path(last.path).name, fix=fix):
            if c.verdict != "good":
                self._report_stop(c, out)
                break
            if c.point.facts is not None and c.point.facts.kind != "incremental":
                out.problems.append(f"{c.point.name} is a full inside a chain: not recorded")
                break
            rows.append(self._fields(repo, chain.directory, c))
        if rows:
            added = self.chains.append_points(chain_id=chain.id, parent_id=last.id, points=rows)
            out.points = [r.id for r in added]
            out.outcome = "extended"
        for name in sorted(orphans):
            out.problems.append(
                f"{name} is not in the catalog and does not build on the chain's newest point "
                f"({Path(last.path).name}): not recorded"
            )
        if not rows and out.problems:
            out.outcome = "conflict"

    def _original_elsewhere(
        self, repo: Repository, directory: str, selected: list[_Point], progress: _Progress
    ) -> Chain | None:
        """The chain another repository of the catalog keeps in this directory, with the
        same full (by checksum): this directory then holds copies of its points."""
        full = selected[0]
        for chain in self.chains.chains_by_directory(directory):
            if chain.repository_id == repo.id:
                continue
            rows = self.chains.backups(chain.id, include_deleted=True)
            names = {Path(b.path).name: b for b in rows}
            original = names.get(full.name)
            if original is None or not original.checksum:
                continue
            expected = full.manifest.sha256 if full.manifest else None
            if expected is None and full.present:
                with contextlib.suppress(OSError):
                    expected, _ = hash_file(full.path)
            if expected == original.checksum:
                return chain
        return None

    def _record_copies(
        self,
        repo: Repository,
        original: Chain,
        selected: list[_Point],
        progress: _Progress,
        out: ChainOutcome,
    ) -> None:
        rows = {
            Path(b.path).name: b for b in self.chains.backups(original.id, include_deleted=True)
        }
        source = self.repositories.get(original.repository_id)
        out.notes.append(f"this chain is kept in repository {source.name} too: recorded as copies")
        full = rows.get(selected[0].name)
        if full is not None and not (Path(source.path) / full.path).exists():
            out.notes.append(
                f"repository {source.name} no longer has these files at {source.path}: if this "
                f"is the same disk moved, change the path of {source.name} instead (Repositories "
                "screen, e) so its backups stay as they were"
            )
        checked = self._checked_chain(selected, progress, None, fix=False)
        now = self.clock.now()
        for c in checked:
            b = rows.get(c.point.name)
            if c.verdict == "refused":
                self._report_stop(c, out)
                break
            if b is None or b.state == "deleted":
                out.problems.append(
                    f"{c.point.name} is not a point of chain {original.id} in {source.name}: "
                    "not recorded"
                )
                continue
            if c.verdict != "good" or c.checksum != b.checksum:
                out.problems.append(
                    f"{c.point.name} differs from point #{b.id} in {source.name} "
                    f"({c.detail or 'another checksum'}): not recorded as its copy"
                )
                continue
            existing = self.copies.find_copy(b.id, repo.id)
            if existing is not None and existing.state == COPY_DONE:
                continue
            copy = self.copies.create_copy(
                backup_id=b.id,
                destination_repository_id=repo.id,
                path=b.path,
                size=c.point.size,
                now=now,
            )
            self.copies.update_copy(
                copy.id,
                state=COPY_DONE,
                bytes_done=c.point.size,
                checksum=c.checksum,
                verify_state="ok",
                verified_at=now,
                completed_at=now,
            )
            out.copies.append(copy.id)
        out.chain_id = original.id
        out.outcome = "copies" if out.copies else ("known" if not out.problems else "conflict")

    # -- locks -------------------------------------------------------------------------------

    def _keep_locks(
        self, repo: Repository, directory: str, points: list[_Point], out: ChainOutcome
    ) -> None:
        """Lock rows for flagged files, with their manifests' expiry (never shorter);
        files whose manifest says locked but lost the flag are flagged again."""
        now = self.clock.now()
        for p in points:
            if not p.present:
                continue
            rel = f"{directory}/{p.name}"
            flagged = self._flagged(p.path)
            expires = p.manifest.lock_expires if p.manifest else None
            if not flagged and (expires is None or expires <= now):
                continue
            holding = self.locks.holding(repo.id, rel)
            if expires is None:
                if holding is None:
                    out.notes.append(
                        f"{p.name} is locked (lsattr shows 'i') but no manifest says until "
                        "when: it stays locked and Sendense never releases it; clear the flag "
                        "by hand (chattr -i) when it may go"
                    )
                continue
            if not flagged:
                try:
                    self.lock_backend.lock(p.path)
                except ToolError as exc:
                    out.problems.append(
                        f"{p.name} should be locked until {until_text(expires)} (its manifest) "
                        f"but the flag cannot be set here: {exc.message}"
                    )
                    continue
                out.notes.append(
                    f"{p.name} was locked again until {until_text(expires)}: its manifest "
                    "says so and the flag was gone"
                )
            if holding is not None:
                if as_utc(holding.expires_at) < expires:  # type: ignore[operator]
                    self.locks.extend(holding.id, expires)
                    out.locks.append(holding.id)
                continue
            backup_id, copy_id = self._owner_of(repo, rel)
            if backup_id is None and copy_id is None:
                continue  # not recorded (damaged or refused): the flag stays, no row
            row = self.locks.add(
                repository_id=repo.id,
                path=rel,
                expires_at=expires,
                now=now,
                state="active",
                backup_id=backup_id,
                copy_id=copy_id,
            )
            out.locks.append(row.id)

    def _rows(self, backup_ids: list[int]) -> list[Any]:
        return [self.chains.get_backup(i) for i in backup_ids]

    def _flagged(self, path: Path) -> bool:
        try:
            return self.lock_backend.is_locked(path)
        except ToolError:
            return False

    def _owner_of(self, repo: Repository, rel: str) -> tuple[int | None, int | None]:
        directory = rel.rsplit("/", 1)[0]
        for chain in self.chains.chains_by_directory(directory):
            for b in self.chains.backups(chain.id):
                if b.path != rel:
                    continue
                if chain.repository_id == repo.id:
                    return b.id, None
                copy = self.copies.find_copy(b.id, repo.id)
                if copy is not None and copy.state == COPY_DONE:
                    return None, copy.id
        return None, None

    def _retire_superseded(self, repo: Repository, outcomes: list[ChainOutcome]) -> None:
        """One current chain per disk: the one holding the disk's newest point; the
        others end (as a new full would have ended them)."""
        disks = {
            (o.vm, o.disk) for o in outcomes if o.outcome in ("imported", "damaged", "extended")
        }
        for vm, disk in disks:
            live = [
                c
                for c in self.chains.list_chains(repository_id=repo.id, vm_name=vm, disk_name=disk)
                if c.state != "retired"
            ]
            newest: dict[int, datetime] = {}
            for c in live:
                points = self.chains.backups(c.id)
                if points:
                    newest[c.id] = max(as_utc(b.point_time) for b in points)  # type: ignore[type-var]
            if len(newest) < 2:
                continue
            keep = max(newest, key=lambda cid: (newest[cid], cid))
            for c in live:
                if c.id != keep:
                    self.chains.update_chain(
                        c.id,
                        state="retired",
                        state_detail="superseded by a newer chain of this disk (found at import)",
                    )

    # -- fix: stale partials, leftover manifests, orphans ------------------------------------

    def fix(self, *, repository: int | str | None = None, actor: str | None = None) -> FixReport:
        """Clean up after crashes in every enabled repository (or one): see the module
        docstring. Nothing is changed in a repository while a job runs on it, and no
        locked file is ever touched."""
        report = FixReport()
        repos = (
            [self.repositories.get(repository)]
            if repository is not None
            else [r for r in self.repositories.list() if r.enabled]
        )
        progress = _Progress(None, 0)
        for repo in repos:
            root = Path(repo.path)
            if not (root / manifests.CHAINS_DIR).is_dir():
                continue
            busy = self._running_jobs(repo)
            directories, _skipped = manifests.chain_directories(root)
            copy_dirs = self.chains.known_directories(repo.id) - {
                c.directory for c in self.chains.list_chains(repository_id=repo.id)
            }
            touched: list[str] = []
            for directory in directories:
                # a job running on the repository keeps its directories as they are (the
                # orphans may be its own files); other engines' writers are kept out by
                # the disk's writer lease, which import_directory holds
                if busy:
                    if self._has_leftovers(repo, directory):
                        report.left_alone.append(
                            f"{repo.name}:{directory}: job #{busy[0].id} ({busy[0].title}) is "
                            "running on this repository"
                        )
                    continue
                if self._remove_leftovers(repo, directory, report):
                    touched.append(directory)
                if directory in copy_dirs:
                    continue  # copies are recorded by copy jobs (and `repo import`)
                if not self._has_orphan_points(repo, directory):
                    continue
                outcome = self.import_directory(repo, directory, progress, fix=True)
                self._collect_left_alone(outcome, report)
                report.chains.append(outcome)
            self._retire_superseded(repo, [c for c in report.chains if c.repository == repo.name])
            for directory in touched:
                with contextlib.suppress(OSError):
                    fsync_dir(root / directory)
        if report.removed or report.imported:
            self.bus.publish(
                Event(
                    kind="chain.fixed",
                    message=report.sentence(),
                    source="imports",
                    actor=actor,
                    level="warning",
                    data=report.as_dict(),
                )
            )
        return report

    def _collect_left_alone(self, outcome: ChainOutcome, report: FixReport) -> None:
        for problem in outcome.problems:
            if "not recorded" in problem or "left alone" in problem:
                report.left_alone.append(f"{outcome.repository}:{outcome.directory}: {problem}")

    def _has_leftovers(self, repo: Repository, directory: str) -> bool:
        with os.scandir(Path(repo.path) / directory) as it:
            partial = any(e.name.endswith(".partial") for e in it)
        return partial or self._has_orphan_points(repo, directory)

    def _has_orphan_points(self, repo: Repository, directory: str) -> bool:
        """Finished point files the catalog does not know (a point it records as deleted
        is not one: its removal is finished instead, never undone)."""
        known = self._known_names(repo, directory) | self._deleted_names(repo, directory)
        with os.scandir(Path(repo.path) / directory) as it:
            return any(manifests.POINT_NAME.match(e.name) and e.name not in known for e in it)

    def _known_names(self, repo: Repository, directory: str) -> set[str]:
        names: set[str] = set()
        for chain in self.chains.chains_by_directory(directory):
            if chain.repository_id == repo.id:
                names.update(Path(b.path).name for b in self.chains.backups(chain.id))
        return names

    def _deleted_names(self, repo: Repository, directory: str) -> set[str]:
        names: set[str] = set()
        for chain in self.chains.chains_by_directory(directory):
            if chain.repository_id == repo.id:
                rows = self.chains.backups(chain.id, include_deleted=True)
                names.update(Path(b.path).name for b in rows if b.state not in LIVE_STATES)
        return names - self._known_names(repo, directory)

    def _remove_leftovers(self, repo: Repository, directory: str, report: FixReport) -> bool:
        """Stale partial files, files of points the catalog recorded as deleted (a
        deletion or merge that stopped between its catalog row and the file) and their
        manifests; locked or recently written files are left alone."""
        where = Path(repo.path) / directory
        deleted = self._deleted_names(repo, directory)
        removed = False
        for entry in sorted(os.scandir(where), key=lambda e: e.name):
            rel = f"{repo.name}:{directory}/{entry.name}"
            if entry.name.endswith(".partial"):
                why = "a stale partial file"
            elif entry.name in deleted:
                why = "a point the catalog records as deleted"
            elif manifests.is_manifest_name(entry.name):
                point = manifests.point_name_of(entry.name)
                if point not in deleted or (where / point).exists():
                    continue  # a deleted point left alone (locked, recent) keeps it
                why = "the manifest of a deleted point"
            else:
                continue
            if not entry.is_file(follow_symlinks=False):
                report.left_alone.append(f"{rel}: not a regular file")
                continue
            if self._flagged(where / entry.name):
                report.left_alone.append(f"{rel}: locked (lsattr shows 'i'), never touched")
                continue
            age = time.time() - entry.stat(follow_symlinks=False).st_mtime
            if age < PARTIAL_QUIET_SECONDS:
                report.left_alone.append(
                    f"{rel}: written {max(0, int(age))} s ago, it may still be in use"
                )
                continue
            try:
                (where / entry.name).unlink()
            except OSError as exc:
                report.left_alone.append(f"{rel}: cannot be removed ({exc.strerror})")
                continue
            report.removed.append(f"{rel} ({why})")
            removed = True
        return removed


# -- helpers ------------------------------------------------------------------------------


def _manifest_mismatch(manifest: PointManifest, vm: str, disk: str) -> str | None:
    """Why a manifest does not belong where it lies (None when it does)."""
    if (manifest.vm, manifest.disk) != (vm, disk):
        return f"names {manifest.vm}/{manifest.disk}, but lies in the directory of {vm}/{disk}"
    parsed = manifests.parse_point_name(manifest.file)
    if parsed is None:
        return "names a file Sendense never writes"
    if (parsed.position, parsed.kind) != (manifest.position, manifest.kind):
        return f"says {manifest.kind} at position {manifest.position}, its file name does not"
    if parsed.point_time != manifest.point_time.replace(microsecond=0):
        return "has another point time than its file name"
    return None


def _point_bytes(directory: Path) -> int:
    total = 0
    with contextlib.suppress(OSError), os.scandir(directory) as it:
        for entry in it:
            if manifests.POINT_NAME.match(entry.name) and entry.is_file(follow_symlinks=False):
                total += entry.stat(follow_symlinks=False).st_size
    return total


__all__ = [
    "JOB_KIND",
    "ChainOutcome",
    "FixReport",
    "ImportReport",
    "RepositoryImportService",
]
