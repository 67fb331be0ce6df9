"""What each list's detail view shows (``widgets.detail.DetailScreen``): one
builder per kind of row, from what the engine returned. A screen calls the
builder in its Enter handler; the builders only arrange text, they never ask the
engine themselves.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from rich.table import Table
from rich.text import Text

from engine.services.chains import ChainView
from engine.services.details import JobDetails, PointDetails
from engine.services.exports import STOP_REASONS, ExportView
from engine.views import AuditEntry
from sendense_tui.format import (
    as_utc,
    human_bytes,
    human_duration,
    human_rate,
    level_text,
    printable,
    short_time,
)
from sendense_tui.widgets.detail import DetailScreen, Heading, Part, value_text


def full_time(value: datetime | None) -> str:
    """'2026-11-24 08:58:00 UTC' (every time in the console is UTC)."""
    value = as_utc(value)
    return "-" if value is None else f"{value.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"


def event_detail(entry: AuditEntry, repositories: dict[int, str] | None = None) -> DetailScreen:
    """``repositories``: names by id, for the repository the event is about."""
    parts: list[Part] = [
        ("time", full_time(entry.at)),
        ("level", level_text(entry.level)),
        ("source", entry.source),
        ("kind", entry.kind),
    ]
    if entry.job_id is not None:
        parts.append(("job", f"#{entry.job_id}"))
    if entry.repository_id is not None:
        name = (repositories or {}).get(entry.repository_id)
        parts.append(("repository", name or f"#{entry.repository_id}"))
    if entry.actor:
        parts.append(("by", entry.actor))
    parts.append(("message", entry.message))
    for key, value in sorted((entry.data or {}).items()):
        parts.append((str(key), value if isinstance(value, str) else repr(value)))
    return DetailScreen(f"Event #{entry.id}", parts, copy_value=entry.message, copy_what="message")


def job_detail(details: JobDetails, now: datetime) -> DetailScreen:
    job = details.job
    started, finished = as_utc(job.started_at), as_utc(job.finished_at)
    parts: list[Part] = [
        ("job", job.title),
        ("kind", job.kind),
        ("repository", details.repository or "-"),
        ("state", job.state + (" (cancel requested)" if job.cancel_requested else "")),
        ("by", job.actor or "-"),
        ("queued", full_time(job.created_at)),
        ("started", full_time(started)),
        ("finished", full_time(finished)),
    ]
    if started and finished:
        parts.append(("took", human_duration((finished - started).total_seconds())))
    if job.bytes_total or job.bytes_done:
        parts.append(("bytes", f"{human_bytes(job.bytes_done)} of {human_bytes(job.bytes_total)}"))
    if job.state == "running":
        eta = human_duration(job.eta_seconds) if job.eta_seconds is not None else "-"
        parts.append(("rate", f"{human_rate(job.rate)}, {eta} left"))
    if job.message:
        parts.append(("now", job.message))
    if job.attempts > 1 or job.takeovers:
        parts.append(("attempts", f"{job.attempts} (taken over {job.takeovers}x)"))
    if job.lease_owner:
        parts.append(("engine", job.lease_owner))
    if details.sentence:
        parts.append(("error", Text(printable(details.sentence), style="bold red")))
    for hint in details.hints:
        parts.append(("what to do", Text(printable(hint), style="yellow")))
    for line in details.detail:
        parts.append(("", line))
    parts.append(Heading(f"Log ({len(details.log)})"))
    if not details.log:
        parts.append(Text("nothing recorded for this job", style="dim"))
    else:
        log = Table.grid(padding=(0, 1))
        log.add_column(no_wrap=True, style="dim")
        log.add_column(no_wrap=True, width=8)
        log.add_column(ratio=1, overflow="fold")
        for entry in details.log:
            log.add_row(
                short_time(entry.at, now), level_text(entry.level), value_text(entry.message)
            )
        parts.append(log)
    copy = details.sentence and "\n".join([details.sentence, *details.hints])
    return DetailScreen(f"Job #{job.id}", parts, copy_value=copy or None, copy_what="error")


def _verify_text(state: str | None, at: datetime | None, now: datetime) -> Text:
    if not state:
        return Text("never verified", style="dim")
    text = Text(state, style="green" if state == "ok" else "bold red")
    if at is not None:
        text.append(f" {short_time(at, now)}", style="dim")
    return text


def point_detail(details: PointDetails, lock: str, tracking: str, now: datetime) -> DetailScreen:
    """``lock`` and ``tracking``: the Chains screen's words for the point's lock and
    how its data was found."""
    b, chain, repo = details.backup, details.chain, details.repository
    parts: list[Part] = [
        ("disk", f"{chain.vm_name}/{chain.disk_name}"),
        ("repository", repo.name),
        ("kind", b.kind),
        ("time", full_time(b.point_time)),
        ("state", b.state + (f": {b.state_detail}" if b.state_detail else "")),
        ("verified", _verify_text(b.verify_state, b.verified_at, now)),
        ("lock", lock),
        (
            "size",
            f"{human_bytes(b.virtual_size)} disk, {human_bytes(b.file_size)} file, "
            f"{human_bytes(b.allocated_bytes)} data",
        ),
        ("found by", tracking),
        ("source", b.source or "-"),
        ("checksum", f"{b.checksum_algo} {b.checksum or '-'}"),
        Heading(f"Files ({len(details.files)})"),
    ]
    for f in details.files:
        what = f.role if f.role != "reads through" else f"reads through #{f.backup_id}"
        head = Text(f"{what} · {printable(f.repository)} · {human_bytes(f.size)} · {f.state} · ")
        head.append_text(_verify_text(f.verify_state, f.verified_at, now))
        parts.append(head)
        parts.append(("", f.path))
    parts.append(Heading(f"Verification history ({len(details.verifications)})"))
    if not details.verifications:
        parts.append(Text("never verified: v queues a verification", style="dim"))
    for v in details.verifications:
        line = Text(f"{short_time(v.at, now)} {printable(v.what)} ")
        line.append(v.outcome, style="green" if v.outcome == "ok" else "bold red")
        line.append(f" · read {human_bytes(v.bytes_read)}", style="dim")
        if v.job_id is not None:
            line.append(f" · job #{v.job_id}", style="dim")
        if v.detail:
            line.append(f"\n  {printable(v.detail, keep_newlines=True)}")
        parts.append(line)
    own = next((f.path for f in details.files if f.role == "point"), None)
    return DetailScreen(f"Point #{b.id} ({b.kind})", parts, copy_value=own, copy_what="file path")


def chain_detail(view: ChainView, labels: list[Text]) -> DetailScreen:
    """A chain with every point's line in full (the badges a narrow tree cuts)."""
    chain = view.chain
    parts: list[Part] = [
        ("disk", f"{chain.vm_name}/{chain.disk_name}"),
        ("repository", view.repository),
        ("state", view.state),
        ("directory", chain.directory),
        ("points", str(len(view.points))),
        (
            "logical",
            f"{human_bytes(view.logical_bytes)} per point, "
            f"{human_bytes(view.logical_total)} in all",
        ),
        ("physical", f"{human_bytes(view.physical_bytes)} in files"),
        ("allocated", f"{human_bytes(view.allocated_bytes)} of data"),
    ]
    if chain.state_detail:
        parts.append(("note", Text(printable(chain.state_detail), style="bold red")))
    for line in view.damage():
        parts.append(("damage", Text(printable(line), style="bold red")))
    parts.append(Heading("Points (oldest first)"))
    for label in labels:
        wrapped = label.copy()
        wrapped.no_wrap, wrapped.overflow = False, "fold"
        parts.append(wrapped)
    return DetailScreen(f"Chain #{chain.id} {chain.vm_name}/{chain.disk_name}", parts)


def export_detail(export: ExportView, now: datetime) -> DetailScreen:
    parts: list[Part] = [
        ("URI", Text(printable(export.uri or "-"), style="bold")),
        ("state", export.state),
        ("point", export.point_label or f"#{export.backup_id}"),
        ("name", export.name),
    ]
    if export.socket_path:
        parts.append(("socket", export.socket_path))
    if export.tcp_port:
        parts.append(("TCP", f"{export.tcp_host or '127.0.0.1'}:{export.tcp_port}"))
    if export.tls:
        parts.append(("TLS", f"{export.tls}; key {export.key_file or '-'} (root only)"))
    parts += [
        ("started", full_time(export.started_at)),
        ("idle stop", human_duration(export.idle_seconds) if export.idle_seconds else "none"),
        ("last client", full_time(export.last_active_at)),
        ("ends", full_time(export.expires_at)),
    ]
    if export.persistent:
        parts.append(("persistent", "yes: kept across engine restarts"))
    if export.stopped_at is not None:
        reason = STOP_REASONS.get(export.stop_reason or "", export.stop_reason or "-")
        parts.append(("stopped", f"{full_time(export.stopped_at)}: {reason}"))
    parts.append(Heading("Read it with"))
    parts += [Text(printable(line)) for line in export.connect_lines()]
    return DetailScreen(
        f"NBD export #{export.id}", parts, copy_value=export.uri or None, copy_what="URI"
    )


def repository_detail(
    repo: Any, location: str, used: int | None, total: int | None, free: int | None, backups: int
) -> DetailScreen:
    state = repo.state if repo.enabled else "disabled"
    parts: list[Part] = [
        ("kind", repo.kind),
        ("location", location),
        ("path", repo.path),
        ("state", state + (f": {repo.state_detail}" if repo.state_detail else "")),
        ("capacity", repo.capacity_level or "ok"),
        (
            "space",
            f"{human_bytes(used)} used of {human_bytes(total)}, {human_bytes(free)} free"
            if total
            else "not measured yet",
        ),
        ("backups", str(backups)),
        ("offsite", "yes" if repo.offsite else "no"),
        (
            "locks",
            f"backups locked for {repo.immutable_days} days" if repo.immutable else "no locks",
        ),
        ("last seen", full_time(repo.last_seen_at)),
    ]
    caps = repo.capabilities or {}
    if caps:
        parts.append(
            (
                "filesystem",
                f"{caps.get('fs_type', '?')}; immutable flag "
                f"{'yes' if caps.get('immutable') else 'no'}; reflink "
                f"{'yes' if caps.get('reflink') else 'no'}",
            )
        )
    return DetailScreen(f"Repository {repo.name}", parts, copy_value=repo.path, copy_what="path")


def rule_detail(status: Any, state: Text, next_run: str, now: datetime) -> DetailScreen:
    rule = status.rule
    select = rule.selection + (f" {rule.latest_count}" if rule.latest_count else "")
    parts: list[Part] = [
        ("route", f"{status.source} → {status.destination}"),
        ("selects", select),
        ("mode", rule.mode + (f" ({rule.schedule} UTC)" if rule.schedule else "")),
        ("next run", next_run),
        ("enabled", "yes" if rule.enabled else "no"),
        ("state", state),
        (
            "copies",
            f"{status.completed} done, {status.failed} failed, {status.in_progress} in progress",
        ),
        ("newest copy", full_time(status.newest_copy_at)),
        ("verify after", "yes" if rule.verify_after else "no"),
        ("lock copies", "yes" if rule.lock_copies else "no"),
    ]
    if rule.bandwidth_limit:
        parts.append(("bandwidth", human_rate(rule.bandwidth_limit)))
    if rule.max_age_hours:
        parts.append(("max age", f"{rule.max_age_hours} h"))
    for problem in status.problems:
        parts.append(("problem", Text(printable(problem), style="yellow")))
    return DetailScreen(f"Copy rule {rule.name}", parts)
