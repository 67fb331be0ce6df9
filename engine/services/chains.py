"""The chain manager: validate chains against the disk, show them, consolidate, delete points.

A chain is one full backup and the incrementals built on it, for one VM disk in
one repository, all in one directory. Each incremental's QCOW2 header names its
parent by plain file name (relative), so the directory stays valid when copied.

``validate`` compares what ``qemu-img`` sees with the catalog: files missing or
renamed, files whose size or checksum changed, headers that are damaged, backing
references that point at the wrong file, points out of order, and files on disk
the catalog does not know (orphans, e.g. left by a crash: a ``.partial``, a
finished point whose row was never written, the manifest of a point that is gone;
see ``orphan_finding``); ``check_all`` also lists chain directories the catalog
has no chain or copy for (``unknown_directories``). Each finding says what to do
(``chain check --fix``, engine.services.imports, cleans up what is safe to). A
chain with a breaking finding is marked ``broken``; the next backup of that disk
then starts a new full (with a loud event) instead of failing forever.

Consolidation merges the oldest point(s) into a new full without ever leaving
an unreadable chain: the merged view is converted into a *new* file (temporary
name, fsync, rename), the next point's header is then switched to it with an
unsafe rebase (same data, header only), the catalog is updated in one
transaction, and only then are the old files removed. A crash at any step leaves
a readable chain (at worst an orphan file that ``validate`` reports). The new full
gets its manifest as soon as it is written and the rebased point's manifest is
rewritten with its new parent and checksum (engine.services.manifests); deleting a
point removes its manifest with it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from engine.catalog.chains import ChainStore
from engine.catalog.models import Backup, Chain, Repository
from engine.catalog.repositories import RepositoryStore
from engine.clock import SYSTEM_CLOCK, Clock
from engine.config import Settings
from engine.errors import SendenseError, ValidationError
from engine.events import Event, EventBus
from engine.fsutil import durable_output, fsync_dir, fsync_file
from engine.hashing import sha256_file
from engine.safepath import is_within
from engine.services import manifests
from engine.tools import attrs, qemu_img
from engine.tools.base import ToolError
from engine.units import human_bytes

log = logging.getLogger(__name__)

#: finding kinds that make a chain unusable for new incrementals
BREAKING = ("missing", "changed", "corrupt", "wrong_backing", "wrong_order", "unreadable")


class ChainError(SendenseError):
    """A chain operation cannot be done as asked."""


class LockedError(ChainError):
    """A file involved is locked (immutable) and cannot be changed or deleted."""


def stamp(when: datetime) -> str:
    return when.strftime("%Y%m%dT%H%M%SZ")


def allocated_bytes(path: Path) -> int:
    """Guest bytes stored in this file itself (not in its backing files)."""
    return sum(e.length for e in qemu_img.map_image(path) if e.depth == 0 and e.data)


def repo_file(repo: Repository, relative: str) -> Path:
    """A catalog path resolved under its repository root (never outside it)."""
    root = Path(repo.path)
    path = root / relative
    if not is_within(root, path):
        raise ValidationError(f"catalog path {relative!r} leaves repository {repo.name}")
    return path


@dataclass(frozen=True)
class Finding:
    #: missing | changed | corrupt | wrong_backing | wrong_order | unreadable | orphan
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
class PointView:
    backup: Backup
    locked_until: datetime | None

    @property
    def locked(self) -> bool:
        return self.locked_until is not None


@dataclass(frozen=True)
class ChainView:
    chain: Chain
    repository: str
    points: list[PointView]

    @property
    def logical_bytes(self) -> int:
        """What the newest point restores to (the disk's virtual size)."""
        return self.points[-1].backup.virtual_size if self.points else 0

    @property
    def physical_bytes(self) -> int:
        return sum(p.backup.file_size for p in self.points)

    @property
    def allocated_bytes(self) -> int:
        return sum(p.backup.allocated_bytes for p in self.points)

    @property
    def logical_total(self) -> int:
        """Bytes the chain can restore in total (every point is a whole disk)."""
        return sum(p.backup.virtual_size for p in self.points)


@dataclass(frozen=True)
class DeletePlan:
    target: Backup
    goes: list[Backup]
    chain_ends: bool

    def sentence(self) -> str:
        names = ", ".join(f"#{b.id} {b.kind} {b.point_time:%Y-%m-%d %H:%M}" for b in self.goes)
        tail = " (the whole chain)" if self.chain_ends else ""
        return f"deletes {len(self.goes)} point(s){tail}: {names}"


class ChainService:
    """Chain validation, overview, consolidation and point deletion (``engine.chains``)."""

    def __init__(
        self,
        store: ChainStore,
        repositories: RepositoryStore,
        bus: EventBus,
        *,
        settings: Settings | None = None,
        clock: Clock = SYSTEM_CLOCK,
        repository_check: Callable[[Repository], None] | None = None,
    ) -> None:
        self.store = store
        self.repositories = repositories
        self.bus = bus
        self.settings = settings
        self.clock = clock
        #: the repositories service's "mounted, writable and not full" gate (the one
        #: backups and copies use), when wired: consolidation writes a new full too
        self.repository_check = repository_check
        self.jobs: Any = None

    def register(self, jobs: Any) -> None:
        """Register the "consolidate" job kind on the engine's JobRunner."""
        self.jobs = jobs
        jobs.register("consolidate", self.run_consolidate_job)

    def submit_consolidate(
        self, chain_id: int, *, new_base_id: int | None = None, actor: str | None = None
    ) -> Any:
        if self.jobs is None:
            raise ChainError("no job runner is wired to the chain manager")
        chain = self.store.get_chain(chain_id)
        return self.jobs.submit(
            "consolidate",
            f"consolidate chain {chain.vm_name}/{chain.disk_name} (#{chain.id})",
            {"chain_id": chain_id, "new_base_id": new_base_id},
            repository_id=chain.repository_id,
            actor=actor,
        )

    def run_consolidate_job(self, ctx: Any) -> dict[str, Any]:
        chain_id = int(ctx.params["chain_id"])
        backups = self.store.backups(chain_id)
        size = backups[0].virtual_size if backups else 0

        def progress(percent: float) -> None:
            ctx.progress(int(size * percent / 100), size, message="consolidating")

        def should_stop() -> bool:
            try:
                ctx.check()
            except Exception:
                return True
            return False

        new_full = self.consolidate(
            chain_id,
            new_base_id=ctx.params.get("new_base_id"),
            on_progress=progress,
            should_stop=should_stop,
        )
        return {"chain_id": chain_id, "new_full": new_full.id, "path": new_full.path}

    # -- overview ----------------------------------------------------------------

    def overview(
        self, *, repository_id: int | None = None, include_retired: bool = True
    ) -> list[ChainView]:
        """Chains (VM, disk order) with their live points and lock badges."""
        repos = {r.id: r.name for r in self.repositories.list()}
        locks = self.store.lock_counts(self.clock.now())
        views: list[ChainView] = []
        for chain in self.store.list_chains(repository_id=repository_id):
            if not include_retired and chain.state == "retired":
                continue
            points = [
                PointView(b, locks[b.id].expires_at if b.id in locks else None)
                for b in self.store.backups(chain.id)
            ]
            views.append(ChainView(chain, repos.get(chain.repository_id, "?"), points))
        return views

    def point_details(self, backup_id: int) -> dict[str, Any]:
        """What qemu-img reports about a point's file (header and backing chain)."""
        backup, _chain, repo = self.store.locate(backup_id)
        path = repo_file(repo, backup.path)
        details: dict[str, Any] = {"path": str(path)}
        try:
            chain_info = qemu_img.info_chain(path)
            details["chain"] = [
                {
                    "file": Path(i.filename).name,
                    "virtual_size": i.virtual_size,
                    "actual_size": i.actual_size,
                    "backing": i.backing_filename,
                    "compression": i.compression_type,
                    "corrupt": i.corrupt,
                }
                for i in chain_info
            ]
        except ToolError as exc:
            details["error"] = exc.for_humans()
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
        found: list[Finding] = []
        directory = repo_file(repo, chain.directory)
        new_full = "the next backup of this disk starts a new full automatically"
        present: list[Backup] = []
        for index, b in enumerate(backups):
            path = repo_file(repo, b.path)
            name = path.name
            if index == 0 and b.kind != "full":
                found.append(
                    Finding(
                        "wrong_order",
                        f"the chain starts with {b.kind} point #{b.id} ({name}), not a full",
                        f"the points before it were removed; {new_full}",
                        b.id,
                        b.path,
                    )
                )
            if index > 0 and b.parent_id != backups[index - 1].id:
                found.append(
                    Finding(
                        "wrong_order",
                        f"point #{b.id} ({name}) should build on #{b.parent_id} but follows "
                        f"#{backups[index - 1].id} in the chain",
                        f"a point it depends on is gone; {new_full}",
                        b.id,
                        b.path,
                    )
                )
            if not path.exists():
                later = len(backups) - index - 1
                found.append(
                    Finding(
                        "missing",
                        f"{name} (point #{b.id}, {b.point_time:%Y-%m-%d %H:%M}) is missing"
                        + (f"; the {later} later point(s) cannot be restored" if later else ""),
                        "put the file back from a copy (`sendense copy` destinations keep the "
                        f"same path); otherwise {new_full}",
                        b.id,
                        b.path,
                    )
                )
                continue
            size = path.stat().st_size
            if b.file_size and size != b.file_size:
                found.append(
                    Finding(
                        "changed",
                        f"{name} (point #{b.id}) is {size} bytes, the catalog recorded "
                        f"{b.file_size}: the file changed after it was written",
                        f"restore this point from a copy if one exists; {new_full}",
                        b.id,
                        b.path,
                    )
                )
                continue
            try:
                head = qemu_img.info(path, fmt="qcow2")
                checked = qemu_img.check(path, fmt="qcow2")
            except qemu_img.ImageBusy:
                present.append(b)
                continue
            except ToolError as exc:
                found.append(
                    Finding(
                        "corrupt",
                        f"{name} (point #{b.id}) is not a readable QCOW2 image: {exc.message}",
                        f"restore it from a copy if one exists; {new_full}",
                        b.id,
                        b.path,
                    )
                )
                continue
            if head.corrupt or checked.corruptions or checked.check_errors:
                found.append(
                    Finding(
                        "corrupt",
                        f"{name} (point #{b.id}) has damaged metadata "
                        f"({checked.corruptions} corruptions, {checked.check_errors} errors)",
                        f"restore it from a copy if one exists; {new_full}",
                        b.id,
                        b.path,
                    )
                )
                continue
            expected = None if index == 0 else Path(backups[index - 1].path).name
            actual = head.backing_filename or None
            if actual != expected:
                what = f"points at {actual!r}" if actual else "has no backing file"
                fix = (
                    f"if {expected} is the right parent: qemu-img rebase -u -b {expected} "
                    f"-F qcow2 {name}"
                    if expected
                    else f"the full must not have a backing file; {new_full}"
                )
                found.append(
                    Finding(
                        "wrong_backing",
                        f"{name} (point #{b.id}) {what}, the catalog says its parent is "
                        f"{expected or 'none (it is the full)'}",
                        fix,
                        b.id,
                        b.path,
                    )
                )
                continue
            if deep and b.checksum:
                digest = sha256_file(path)
                if digest != b.checksum:
                    found.append(
                        Finding(
                            "changed",
                            f"{name} (point #{b.id}) no longer matches its checksum",
                            f"restore it from a copy if one exists; {new_full}",
                            b.id,
                            b.path,
                        )
                    )
                    continue
            present.append(b)
        if backups and not any(f.breaking for f in found):
            # qemu-img's own view of the whole chain, through the newest point
            newest = repo_file(repo, backups[-1].path)
            try:
                qemu_img.info_chain(newest)
            except qemu_img.ImageBusy:
                pass
            except ToolError as exc:
                found.append(
                    Finding(
                        "unreadable",
                        f"qemu-img cannot read the chain through {newest.name}: {exc.message}",
                        exc.hint or new_full,
                        backups[-1].id,
                        backups[-1].path,
                    )
                )
        known = {Path(b.path).name for b in all_rows if b.state != "deleted"}
        if directory.is_dir():
            for entry in sorted(directory.iterdir()):
                if entry.name in known or not entry.is_file():
                    continue
                orphan = orphan_finding(chain.directory, entry.name, known, directory)
                if orphan is not None:
                    found.append(orphan)
        elif backups:
            found.append(
                Finding(
                    "missing",
                    f"the chain directory {chain.directory} is missing from {repo.name}",
                    f"check that the repository is mounted; {new_full}",
                )
            )
        return found

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
        reasons: list[str] = []
        now = self.clock.now()
        for lock in self.store.active_locks([b.id for b in backups], now):
            reasons.append(
                f"{Path(lock.path).name} is locked until {lock.expires_at:%Y-%m-%d %H:%M} UTC"
            )
        for target in [*(repo_file(repo, b.path) for b in backups), repo_file(repo, directory)]:
            if not target.exists():
                continue
            try:
                immutable = attrs.is_immutable(target)
            except ToolError:
                immutable = False  # no attribute support here: nothing can be +i
            if immutable:
                reasons.append(f"{target.name} is immutable (lsattr shows 'i')")
        return sorted(set(reasons))

    # -- consolidation -----------------------------------------------------------

    def consolidate(
        self,
        chain_id: int,
        *,
        new_base_id: int | None = None,
        actor: str | None = None,
        on_progress: Callable[[float], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> Backup:
        """Merge the points before ``new_base_id`` (default: the full, i.e. merge the
        oldest incremental into it) into a new full; the merged points are deleted.
        Returns the point that is now the full."""
        chain = self.store.get_chain(chain_id)
        repo = self.repositories.get(chain.repository_id)
        if self.repository_check is not None:
            # before validate(): an unmounted share would read as missing files
            self.repository_check(repo)
        backups = self.store.backups(chain_id)
        if len(backups) < 2:
            raise ChainError(
                f"chain {chain_id} has {len(backups)} point(s): nothing to consolidate",
                hint="consolidation merges the oldest incremental into the full",
            )
        report = self.validate(chain_id)
        if not report.ok:
            raise ChainError(
                f"chain {chain_id} is broken, consolidation would build on bad data: "
                + report.sentence(),
                hint="fix the chain (`sendense chain check`) or let the next full replace it",
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
        following = backups[index + 1] if index + 1 < len(backups) else None
        reasons = self.locked_reasons(repo, [*merged, target], chain.directory)
        if reasons:
            raise LockedError(
                f"cannot consolidate chain {chain_id}: " + "; ".join(reasons),
                hint="wait for the locks to expire; locked points cannot be merged",
            )
        self._refuse_if_in_use(merged, f"consolidate chain {chain_id}")
        directory = repo_file(repo, chain.directory)
        target_path = repo_file(repo, target.path)
        self._check_room(repo, target_path)
        name = f"{target.position:04d}-full-{stamp(target.point_time)}.qcow2"
        final = directory / name
        full = merged[0]
        compression = full.compression
        with durable_output(final) as tmp:
            qemu_img.convert(
                target_path,
                tmp,
                src_fmt="qcow2",
                compression=compression,
                on_progress=on_progress,
                should_stop=should_stop,
            )
        head = qemu_img.info(final, fmt="qcow2")
        fields = {
            "file_size": final.stat().st_size,
            "virtual_size": head.virtual_size,
            "allocated_bytes": allocated_bytes(final),
            "checksum": sha256_file(final),
            "compression": compression,
            "state": "complete",
            "verify_state": None,
            "verified_at": None,
        }
        # the new full describes itself before anything points at it (nothing does yet,
        # so a failure here removes it and leaves the chain as it was)
        self._write_manifest(
            final,
            manifests.point_manifest(
                target,
                chain,
                parent=None,
                file=name,
                kind="full",
                virtual_size=fields["virtual_size"],
                file_size=fields["file_size"],
                allocated_bytes=fields["allocated_bytes"],
                sha256=fields["checksum"],
                compression=compression,
            ),
            discard=True,
        )
        # the next point now reads the same data from the new full: header only
        other_updates: dict[int, dict[str, Any]] = {}
        if following is not None:
            following_path = repo_file(repo, following.path)
            qemu_img.rebase(following_path, name, backing_fmt="qcow2", unsafe=True)
            fsync_file(following_path)
            other_updates[following.id] = {
                "file_size": following_path.stat().st_size,
                "checksum": sha256_file(following_path),
            }
            previous = manifests.try_read_manifest(following_path)
            self._write_manifest(
                following_path,
                manifests.point_manifest(
                    following,
                    chain,
                    parent=name,
                    file_size=other_updates[following.id]["file_size"],
                    sha256=other_updates[following.id]["checksum"],
                    lock_expires=previous.lock_expires if previous else None,
                    copy_of=previous.copy_of if previous else None,
                ),
            )
        rel = str(Path(chain.directory) / name)
        detail = f"merged into point #{target.id} by consolidation"
        promoted = self.store.promote_to_full(
            backup_id=target.id,
            path=rel,
            fields=fields,
            deleted_ids=[b.id for b in merged],
            detail=detail,
            other_updates=other_updates,
        )
        for old in [*merged, target]:
            with contextlib.suppress(FileNotFoundError):
                repo_file(repo, old.path).unlink()
            manifests.remove_manifest(repo_file(repo, old.path))
        fsync_dir(directory)
        self.bus.publish(
            Event(
                kind="chain.consolidated",
                message=f"chain {chain.vm_name}/{chain.disk_name}: merged "
                f"{len(merged)} point(s) into a new full at point #{target.id}",
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

    def _write_manifest(
        self, point: Path, manifest: manifests.PointManifest, *, discard: bool = False
    ) -> None:
        try:
            manifests.write_manifest(point, manifest)
        except OSError as exc:
            if discard:
                with contextlib.suppress(FileNotFoundError):
                    point.unlink()
            raise ChainError(
                f"the manifest of {point.name} could not be written: {exc.strerror}",
                hint="check the repository (space, a flagged directory); the chain is unchanged",
            ) from None

    def _check_room(self, repo: Repository, source: Path) -> None:
        need = qemu_img.measure(source, src_fmt="qcow2").required
        reserve = _reserve(repo, self.settings)
        free = free_bytes(Path(repo.path))
        if free - need < reserve:
            raise ChainError(
                f"repository {repo.name} has {human_bytes(free)} free; this needs "
                f"{human_bytes(need)} plus the {human_bytes(reserve)} reserve",
                hint="free space in the repository first",
            )

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
        for b in goes:
            for export in running:
                if export.backup_id == b.id:
                    raise ChainError(
                        f"cannot {doing}: NBD export '{export.export_name}' serves point {b.id}",
                        hint=f"stop it first: sendense export stop {export.export_name}",
                    )
            for mount in restores.mounts_of(b.id, states=LIVE_MOUNT_STATES):
                raise ChainError(
                    f"cannot {doing}: restore mount {mount.id} browses point {b.id}",
                    hint=f"unmount it first: sendense restore unmount {mount.id}",
                )

    def delete_point(self, backup_id: int, *, actor: str | None = None) -> DeletePlan:
        """Delete a point and the points that depend on it (newest first)."""
        plan = self.delete_plan(backup_id)
        _backup, chain, repo = self.store.locate(backup_id)
        reasons = self.locked_reasons(repo, plan.goes, chain.directory)
        if reasons:
            raise LockedError(
                f"cannot delete point {backup_id}: " + "; ".join(reasons),
                hint="locked points can only be deleted after their lock expires",
            )
        self._refuse_if_in_use(plan.goes, f"delete point {backup_id}")
        for b in reversed(plan.goes):
            path = repo_file(repo, b.path)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            manifests.remove_manifest(path)
            self.store.mark_deleted([b.id], f"deleted by {actor or 'operator'}")
        directory = repo_file(repo, chain.directory)
        if directory.is_dir():
            fsync_dir(directory)
        if plan.chain_ends:
            self.store.update_chain(
                chain.id, state="retired", state_detail="all points were deleted"
            )
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
        return plan


def orphan_finding(
    chain_directory: str, name: str, known: set[str], directory: Path
) -> Finding | None:
    """What a file in a chain directory that the catalog does not record is, and what to
    do with it; None for the manifest of a point the catalog knows or that is there."""
    rel = str(Path(chain_directory) / name)
    fix = "`sendense chain check --fix`"
    if manifests.is_manifest_name(name):
        point = manifests.point_name_of(name)
        if point in known or (directory / point).exists():
            return None  # the manifest of a recorded point, or of the orphan named below
        return Finding(
            "orphan",
            f"{name} is the manifest of {point}, which is neither on disk nor in the catalog",
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


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _reserve(repo: Repository, settings: Settings | None) -> int:
    if repo.min_free_bytes is not None:
        return int(repo.min_free_bytes)
    if settings is not None:
        return int(settings.capacity.min_free_bytes)
    return 0
