"""``sendense jobs list|show|cancel|pause|resume|retry``."""

from __future__ import annotations

import argparse
from typing import Any

from engine.catalog.models import Job
from sendense_tui.commands import CliContext, add_parser, table
from sendense_tui.format import human_bytes, human_duration, human_rate, percent, short_time


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
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
    }


def register(subparsers: Any) -> None:
    parser = add_parser(subparsers, "jobs", help="list and steer jobs")
    sub = parser.add_subparsers(dest="jobs_command", metavar="ACTION", required=True)
    lister = add_parser(sub, "list", help="list jobs, newest first")
    lister.add_argument("--state", action="append", help="only jobs in this state (repeatable)")
    lister.add_argument("--limit", type=int, default=50)
    lister.set_defaults(func=list_jobs)
    show = add_parser(sub, "show", help="one job in detail")
    show.add_argument("job_id", type=int)
    show.set_defaults(func=show_job)
    for verb, text in (
        ("cancel", "cancel a queued, paused or running job"),
        ("pause", "pause a queued or running job"),
        ("resume", "resume a paused job"),
        ("retry", "queue a failed or cancelled job again"),
    ):
        steer = add_parser(sub, verb, help=text)
        steer.add_argument("job_id", type=int)
        steer.set_defaults(func=steer_job, verb=verb)


def list_jobs(args: argparse.Namespace, ctx: CliContext) -> int:
    with ctx.engine() as engine:
        jobs = engine.job_store.list(states=args.state, limit=args.limit)
        now = engine.clock.now()
    if ctx.json:
        ctx.print_json([job_dict(j) for j in jobs])
        return 0
    if not jobs:
        print("no jobs")
        return 0
    rows = []
    for job in jobs:
        pct = percent(job.bytes_done, job.bytes_total)
        rows.append(
            [
                str(job.id),
                job.state,
                job.kind,
                job.title,
                "-" if pct is None else f"{pct:.0f}%",
                human_rate(job.rate) if job.state == "running" else "-",
                short_time(job.finished_at or job.started_at or job.created_at, now),
            ]
        )
    print(table(rows, ["ID", "STATE", "KIND", "TITLE", "DONE", "RATE", "WHEN"]))
    return 0


def show_job(args: argparse.Namespace, ctx: CliContext) -> int:
    with ctx.engine() as engine:
        job = engine.job_store.get(args.job_id)
    data = job_dict(job)
    if ctx.json:
        ctx.print_json(data)
        return 0
    data["bytes_done"] = human_bytes(job.bytes_done)
    data["bytes_total"] = human_bytes(job.bytes_total)
    data["rate"] = human_rate(job.rate)
    data["eta_seconds"] = human_duration(job.eta_seconds)
    for key, value in data.items():
        print(f"{key + ':':14} {'-' if value is None else value}")
    return 0


def steer_job(args: argparse.Namespace, ctx: CliContext) -> int:
    with ctx.engine() as engine:
        call = getattr(engine.jobs, args.verb)
        job = call(args.job_id, actor="cli")
        job = engine.job_store.get(job.id)
    if ctx.json:
        ctx.print_json(job_dict(job))
    else:
        note = " (the running work stops at its next check)" if job.cancel_requested else ""
        print(f"job {job.id} {job.state}{note}: {job.title}")
    return 0
