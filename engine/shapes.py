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
    from engine.catalog.models import AuditEntry, Job, Repository
    from engine.events import Event
    from engine.runtime import Engine
    from engine.services.repositories import TestReport


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


def event_dict(entry: AuditEntry) -> dict[str, Any]:
    """One entry of the audit log (``sendense events --json``)."""
    return {
        "id": entry.id,
        "at": entry.at,
        "level": entry.level,
        "source": entry.source,
        "kind": entry.kind,
        "message": entry.message,
        "repository_id": entry.repository_id,
        "job_id": entry.job_id,
        "actor": entry.actor,
    }


def live_event_dict(event: Event) -> dict[str, Any]:
    """An event as it is published (the API's live stream): the audit log's shape
    without an id (progress events are never written to the log)."""
    return {
        "at": event.at,
        "level": event.level,
        "source": event.source,
        "kind": event.kind,
        "message": event.message,
        "repository_id": event.repository_id,
        "job_id": event.job_id,
        "actor": event.actor,
    }
