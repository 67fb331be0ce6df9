"""What a detail view shows of one thing, read in one call: a job with its error,
hints and log; a restore point with every file it is read through, its copies and
its verification history. Front ends (the console's detail views, ``jobs show``)
ask this service instead of piecing the rows together themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from engine.catalog.audit import AuditStore
from engine.catalog.chains import ChainStore
from engine.catalog.copies import CopyStore
from engine.catalog.jobs import JobStore
from engine.catalog.models import AuditEntry, Backup, Chain, Job, Repository
from engine.errors import ValidationError
from engine.services.chains import repo_file

#: most log lines a job's details carry (the newest are kept)
JOB_LOG_LIMIT = 200


@dataclass(frozen=True)
class JobDetails:
    job: Job
    #: the error's sentence (its first line), or None when the job has no error
    sentence: str | None
    #: what to do, one line per nested error (the ``  -> hint`` lines of the error)
    hints: list[str]
    #: any further lines of the error (tool output, detail)
    detail: list[str]
    #: the job's events, oldest first
    log: list[AuditEntry]
    #: the name of the repository it works in (None: none, or it was removed)
    repository: str | None = None


def split_error(error: str | None) -> tuple[str | None, list[str], list[str]]:
    """A job's error as stored (an exception's ``for_humans()``: a sentence, then
    ``  -> hint`` lines) split into its sentence, its hints and the other lines."""
    lines = [line.rstrip() for line in (error or "").splitlines() if line.strip()]
    if not lines:
        return None, [], []
    hints = [line.strip()[2:].strip() for line in lines[1:] if line.strip().startswith("->")]
    detail = [line for line in lines[1:] if not line.strip().startswith("->")]
    return lines[0].strip(), hints, detail


@dataclass(frozen=True)
class PointFile:
    """One file of a restore point: its own, one it is read through, or a copy."""

    #: "point", "reads through" (a parent, down to the full) or "copy"
    role: str
    backup_id: int
    repository: str
    #: the absolute path (or the catalog's relative one when it would leave its root)
    path: str
    size: int
    state: str
    verify_state: str | None
    verified_at: datetime | None
    copy_id: int | None = None


@dataclass(frozen=True)
class VerificationRecord:
    at: datetime
    #: "point" or "copy in <repository>"
    what: str
    outcome: str
    detail: str | None
    bytes_read: int
    job_id: int | None


@dataclass(frozen=True)
class PointDetails:
    backup: Backup
    chain: Chain
    repository: Repository
    files: list[PointFile] = field(default_factory=list)
    #: newest first
    verifications: list[VerificationRecord] = field(default_factory=list)


class DetailService:
    """Built by the Engine as ``engine.details``."""

    def __init__(
        self, jobs: JobStore, audit: AuditStore, chains: ChainStore, copies: CopyStore
    ) -> None:
        self.jobs = jobs
        self.audit = audit
        self.chains = chains
        self.copies = copies

    def job(self, job_id: int) -> JobDetails:
        job = self.jobs.get(job_id)
        sentence, hints, detail = split_error(job.error)
        log = self.audit.query(job_id=job_id, limit=JOB_LOG_LIMIT)
        repo = (
            self.copies.repositories_by_id().get(job.repository_id)
            if job.repository_id is not None
            else None
        )
        return JobDetails(
            job, sentence, hints, detail, list(reversed(log)), repo.name if repo else None
        )

    def point(self, backup_id: int) -> PointDetails:
        backup, chain, repo = self.chains.locate(backup_id)
        repos = self.copies.repositories_by_id()
        files = [
            _file("point" if b.id == backup_id else "reads through", b, repo)
            for b in self.copies.lineage(backup_id)
        ]
        copies = self.copies.copies_of_backups([backup_id]).get(backup_id, [])
        history = [
            VerificationRecord(
                v.finished_at or v.started_at, "point", v.outcome, v.detail, v.bytes_read, v.job_id
            )
            for v in self.copies.verifications(backup_id=backup_id, limit=100)
        ]
        for c in copies:
            dest = repos.get(c.destination_repository_id)
            name = dest.name if dest is not None else f"repository {c.destination_repository_id}"
            files.append(
                PointFile(
                    role="copy",
                    backup_id=backup_id,
                    repository=name,
                    path=_path(dest, c.path),
                    size=c.size,
                    state=c.state,
                    verify_state=c.verify_state,
                    verified_at=c.verified_at,
                    copy_id=c.id,
                )
            )
            history += [
                VerificationRecord(
                    v.finished_at or v.started_at,
                    f"copy in {name}",
                    v.outcome,
                    v.detail,
                    v.bytes_read,
                    v.job_id,
                )
                for v in self.copies.verifications(copy_id=c.id, limit=100)
            ]
        history.sort(key=lambda v: v.at, reverse=True)
        return PointDetails(backup, chain, repo, files, history)


def _path(repo: Repository | None, relative: str) -> str:
    if repo is None:
        return relative
    try:
        return str(repo_file(repo, relative))
    except ValidationError:
        return relative  # a catalog path that would leave its root is shown, never resolved


def _file(role: str, backup: Backup, repo: Repository) -> PointFile:
    return PointFile(
        role=role,
        backup_id=backup.id,
        repository=repo.name,
        path=_path(repo, backup.path),
        size=backup.file_size,
        state=backup.state,
        verify_state=backup.verify_state,
        verified_at=backup.verified_at,
    )
