"""The JSON shapes of things, one serialisation for the CLI's ``--json`` and the
HTTP API: plain functions from engine objects to dicts of plain values (times
stay ``datetime``; each front end writes them as ISO 8601).

No secret is ever part of a shape: a repository says ``has_password``, never the
password; a token its name and role, never its secret or digest. Each area
appends its functions under a ``# -- <area>`` comment.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.catalog.models import (
        AuditEntry,
        Copy,
        CopyRule,
        ImmutabilityLock,
        Job,
        Policy,
        Repository,
    )
    from engine.events import Event
    from engine.runtime import Engine
    from engine.services.chains import ChainView
    from engine.services.copy import RuleStatus
    from engine.services.exports import ExportView
    from engine.services.repositories import TestReport
    from engine.services.restore_views import Entry, MountView
    from engine.services.verify import Report


# -- repositories


def repository_dict(repo: Repository, engine: Engine) -> dict[str, Any]:
    """Everything about a repository except its secret. Its space figures are the
    last good ones (a repository that does not answer keeps them, marked stale with
    the time they were measured)."""
    now = engine.clock.now()
    reading = engine.capacity.reading(repo.id)
    figures = reading.figures if reading is not None else None
    if figures is None:
        latest = engine.capacity_store.latest(repo.id)
        figures = engine.capacity.stored_reading(repo, latest) if latest is not None else None
    age = None
    if figures is not None:
        age = (reading or figures).figures_age(now)
    return {
        "id": repo.id,
        "name": repo.name,
        "kind": repo.kind,
        "path": repo.path,
        "server": repo.server,
        "export": repo.export,
        "options": repo.options,
        "enabled": repo.enabled,
        "state": repo.state,
        "state_detail": repo.state_detail,
        "last_seen_at": repo.last_seen_at,
        "capacity_level": repo.capacity_level,
        "capabilities": repo.capabilities,
        # whether the repository locks what lands on it (capabilities: whether it can)
        "immutable": repo.immutable,
        "immutable_days": repo.immutable_days if repo.immutable else 0,
        "immutable_grace_hours": repo.immutable_grace_hours if repo.immutable else 0,
        # restore points held here, the copies that landed here included
        "backups": engine.repository_store.backup_count(repo.id),
        "total_bytes": figures.total if figures else None,
        "used_bytes": figures.used if figures else None,
        "free_bytes": figures.free if figures else None,
        "unresponsive": bool(reading and reading.unresponsive) or repo.state == "unresponsive",
        "figures_at": figures.taken_at if figures else None,
        "figures_age_seconds": round(age.total_seconds()) if age is not None else None,
        "has_password": bool(repo.secret),
    }


def repositories_list(engine: Engine) -> list[dict[str, Any]]:
    """Every repository, measured now side by side (each in its own worker, under one
    deadline: one that does not answer is marked unresponsive, keeps its last
    figures)."""
    repos = engine.repositories.list()
    engine.capacity.sample_many([r for r in repos if r.enabled])
    return [repository_dict(r, engine) for r in engine.repositories.list()]


def repository_details(engine: Engine, ref: int | str) -> tuple[dict[str, Any], Any]:
    """One repository with its capacity (``repo show``): the shape and the capacity
    overview item it was read from (for a front end's own wording)."""
    repo = engine.repositories.get(ref)
    # every repository is read side by side (bounded) for "shares its filesystem"
    [item] = [i for i in engine.capacity.overview(measure=True) if i.repository.id == repo.id]
    repo = engine.repositories.get(repo.id)  # the state that reading set
    data = repository_dict(repo, engine)
    data["location"] = engine.repositories.describe_location(repo)
    fc, b, th = item.forecast, item.breakdown, item.thresholds
    figures = item.reading.figures if item.reading is not None else None
    if figures is not None:
        data.update(
            total_bytes=figures.total,
            used_bytes=figures.used,
            free_bytes=figures.free,
            used_percent=round(figures.percent, 2),
        )
    data["thresholds"] = {
        "warning": th.warning,
        "critical": th.critical,
        "full": th.full,
        "min_free_bytes": th.min_free,
    }
    data["forecast"] = {
        "trend": fc.trend,
        "reason": fc.reason,
        "growth_bytes_per_day": fc.growth_per_day,
        "days_until_full": fc.days_until_full,
        "full_at": fc.full_at,
    }
    data["space"] = {
        "used_by_backups": b.used,
        "reclaimable_now": b.reclaimable_now,
        "reclaimable_later": b.reclaimable_later,
        "reclaimable_later_at": b.reclaimable_later_at,
        "locked": b.locked,
        "locked_until": b.locked_until,
    }
    data["shares_filesystem_with"] = item.shared_with
    return data, item


def test_report_dict(report: TestReport) -> dict[str, Any]:
    return report.as_dict()


# -- jobs


def job_dict(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "kind": job.kind,
        "title": job.title,
        "state": job.state,
        "priority": job.priority,
        "repository_id": job.repository_id,
        "bytes_done": job.bytes_done,
        "bytes_total": job.bytes_total,
        "rate": job.rate,
        "eta_seconds": job.eta_seconds,
        "message": job.message,
        "error": job.error,
        "attempts": job.attempts,
        "takeovers": job.takeovers,
        "actor": job.actor,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
    }


# -- events


#: what an event says, in the audit log and on the live stream alike
EVENT_FIELDS = ("at", "level", "source", "kind", "message", "repository_id", "job_id", "actor")


def event_dict(entry: AuditEntry) -> dict[str, Any]:
    """One entry of the audit log (``sendense events --json``)."""
    return {"id": entry.id, **{name: getattr(entry, name) for name in EVENT_FIELDS}}


def live_event_dict(event: Event) -> dict[str, Any]:
    """An event as it is published (the API's live stream): the audit log's shape
    without an id (progress events are never written to the log)."""
    return {name: getattr(event, name) for name in EVENT_FIELDS}


# -- resources ------------------------------------------------------------------------


def point_dict(backup: Any, chain: Any) -> dict[str, Any]:
    """A restore point (a backup row) with the disk its chain belongs to."""
    return {
        "id": backup.id,
        "vm": chain.vm_name,
        "disk": chain.disk_name,
        "chain_id": chain.id,
        "kind": backup.kind,
        "position": backup.position,
        "state": backup.state,
        "point_time": backup.point_time,
        "path": backup.path,
        "virtual_size": backup.virtual_size,
        "file_size": backup.file_size,
        "allocated_bytes": backup.allocated_bytes,
        "checksum": backup.checksum,
        "compression": backup.compression,
        "verify_state": backup.verify_state,
        "tracking": backup.tracking,
    }


def chain_dict(view: ChainView) -> dict[str, Any]:
    """A chain of the chain manager's overview, with its points and their locks."""
    return {
        "chain_id": view.chain.id,
        "repository": view.repository,
        "vm": view.chain.vm_name,
        "disk": view.chain.disk_name,
        "directory": view.chain.directory,
        "state": view.state,
        "state_detail": view.chain.state_detail,
        "damage": view.damage(),
        "logical_bytes": view.logical_bytes,
        "physical_bytes": view.physical_bytes,
        "allocated_bytes": view.allocated_bytes,
        "points": [
            {
                **point_dict(p.backup, view.chain),
                "locked_until": p.locked_until,
                "lock_state": p.lock_state,
                "unprotected": p.unprotected,
            }
            for p in view.points
        ],
    }


def rule_dict(rule: CopyRule, repos: dict[int, Any] | None = None) -> dict[str, Any]:
    """A copy rule; ``repos`` (id -> repository) names its two ends."""
    repos = repos or {}
    src = repos.get(rule.source_repository_id)
    dst = repos.get(rule.destination_repository_id)
    return {
        "id": rule.id,
        "name": rule.name,
        "source": src.name if src else rule.source_repository_id,
        "destination": dst.name if dst else rule.destination_repository_id,
        "selection": rule.selection,
        "latest_count": rule.latest_count,
        "mode": rule.mode,
        "schedule": rule.schedule,
        "priority": rule.priority,
        "lock_copies": rule.lock_copies,
        "verify_after": rule.verify_after,
        "bandwidth_limit": rule.bandwidth_limit,
        "max_age_hours": rule.max_age_hours,
        "enabled": rule.enabled,
        "failures_in_row": rule.failures_in_row,
    }


def rule_status_dict(status: RuleStatus, repos: dict[int, Any]) -> dict[str, Any]:
    """A copy rule with how its copies stand (``sendense copy status``)."""
    return {
        **rule_dict(status.rule, repos),
        "completed": status.completed,
        "failed": status.failed,
        "in_progress": status.in_progress,
        "newest_copy_at": status.newest_copy_at,
        "next_run_at": status.next_run_at,
        "problems": status.problems,
        "last_run": status.last_run,
        "health": status.health,
    }


def copy_status_dict(
    statuses: list[RuleStatus],
    alerts: list[Any],
    raised: list[Any],
    copies: list[Copy],
    repos: dict[int, Any],
) -> dict[str, Any]:
    """``sendense copy status``: the rules, the alerts they raise now, the alerts a
    scheduler announced (schedule marks) and recent copies."""
    return {
        "rules": [rule_status_dict(s, repos) for s in statuses],
        "alerts": [dict(a.__dict__) for a in alerts],
        "raised_alerts": [
            {"key": m.key, "level": m.level, "message": m.message, "since": m.updated_at}
            for m in raised
        ],
        "copies": [copy_dict(c) for c in copies],
    }


def copy_dict(copy: Copy) -> dict[str, Any]:
    return {
        "id": copy.id,
        "backup_id": copy.backup_id,
        "rule_id": copy.rule_id,
        "destination_repository_id": copy.destination_repository_id,
        "path": copy.path,
        "state": copy.state,
        "size": copy.size,
        "checksum": copy.checksum,
        "cloned": copy.cloned,
        "verify_state": copy.verify_state,
        "verified_at": copy.verified_at,
        "error": copy.error,
        "attempts": copy.attempts,
        "completed_at": copy.completed_at,
    }


def verification_report_dict(engine: Any, report: Report) -> dict[str, Any]:
    """``sendense verify report``: coverage, bad points, what is overdue, and when the
    scheduled verification runs next (asks ``engine``)."""
    return {
        **report.as_dict(),
        "overdue_count": len(report.overdue),
        "reverify_days": engine.verifier.reverify_after_days,
        "schedule": engine.scheduler.verify_schedule,
        "next_scheduled_at": engine.scheduler.next_verification(),
    }


def lock_dict(lock: ImmutabilityLock, repos: dict[int, str]) -> dict[str, Any]:
    """An immutability lock; ``repos`` (id -> name) names its repository."""
    return {
        "id": lock.id,
        "repository": repos.get(lock.repository_id, str(lock.repository_id)),
        "path": lock.path,
        "state": lock.state,
        "backup_id": lock.backup_id,
        "copy_id": lock.copy_id,
        "locked_at": lock.locked_at,
        "expires_at": lock.expires_at,
        "released_at": lock.released_at,
    }


def policy_dict(engine: Any, policy: Policy) -> dict[str, Any]:
    """A policy with its target's name, copy rules and 3-2-1 badge (asks ``engine``)."""
    repo = engine.repositories.get(policy.target_repository_id)
    return {
        "id": policy.id,
        "name": policy.name,
        "enabled": policy.enabled,
        "schedule": policy.schedule,
        "target": repo.name,
        "sources": policy.sources,
        "full_every": policy.full_every,
        "full_weekday": policy.full_weekday,
        "retention": policy.retention,
        "verify_after": policy.verify_after,
        "immutable_days": policy.immutable_days,
        "compression": policy.compression,
        "copy_rules": [r.name for r in engine.policies.copy_rules(policy)],
        "next_run_at": policy.next_run_at,
        "last_run_at": policy.last_run_at,
        "last_result": policy.last_result,
        "compliance": engine.compliance.for_policy(policy),
    }


def mount_dict(view: MountView) -> dict[str, Any]:
    """A restore mount and its filesystems."""
    return {
        "id": view.id,
        "backup_id": view.backup_id,
        "point": view.point.label if view.point else None,
        "state": view.state,
        "reused": view.reused,
        "note": view.note,
        "expires_at": view.expires_at,
        "filesystems": [
            {
                "name": fs.name,
                "fs_type": fs.fs_type,
                "state": fs.state,
                "size": fs.size,
                "label": fs.label,
                "path": fs.path,
                "detail": fs.detail,
                "volume": fs.volume,
            }
            for fs in view.filesystems
        ],
    }


def file_entry_dict(entry: Entry) -> dict[str, Any]:
    """An entry of a folder of a restore mount (``sendense restore ls``)."""
    return {
        "name": entry.name,
        "path": entry.path,
        "kind": entry.kind,
        "size": entry.size,
        "mtime": entry.mtime,
        "mode": f"{entry.mode:04o}",
        "link_target": entry.link_target,
        "detail": entry.detail,
    }


#: what a folder restore or an archive carried, by name in its JSON form
#: (engine.services.restore_views.RestoredCounts)
COUNT_FIELDS = ("files", "directories", "symlinks", "hardlinks", "specials", "bytes")


def extract_result_dict(result: dict[str, Any], job_id: int | None = None) -> dict[str, Any]:
    """The result of a ``restore.files`` job (``sendense restore extract --json``): the
    counts, the destination and who may enter it, and every item not restored with
    its reason (``not_restored``; ``skipped`` is the same list under its older name).
    A result recorded by an older version lacks the newer counts: they read 0."""
    not_restored = list(result.get("skipped") or [])
    return {
        "job_id": job_id,
        "destination": result.get("destination", ""),
        "destination_created": bool(result.get("destination_created", False)),
        "owner": result.get("owner"),
        "note": result.get("note") or "",
        **{name: int(result.get(name, 0)) for name in COUNT_FIELDS},
        "not_restored": not_restored,
        "skipped": not_restored,
    }


def export_dict(view: ExportView) -> dict[str, Any]:
    """An NBD export; ``key_file`` is where the TLS key lies, never the key."""
    return {
        "id": view.id,
        "backup_id": view.backup_id,
        "point": view.point_label,
        "name": view.name,
        "uri": view.uri,
        "state": view.state,
        "persistent": view.persistent,
        "pid": view.pid,
        "tls": view.tls,
        "key_file": view.key_file,
        "idle_timeout_seconds": view.idle_seconds,
        "last_active_at": view.last_active_at,
        "expires_at": view.expires_at,
        "started_at": view.started_at,
        "stopped_at": view.stopped_at,
        "note": view.note,
        "stop_reason": view.stop_reason,
    }
