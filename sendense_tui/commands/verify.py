"""``sendense verify run|report``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from engine.shapes import verification_report_dict
from sendense_tui.commands import DAYS_MAX, CliContext, add_parser, bounded_int, id_argument, table
from sendense_tui.commands.jobs import print_queued, report_job, wait_with_progress
from sendense_tui.exitcodes import CommandFailed
from sendense_tui.format import plural, printable


def register(subparsers: Any) -> None:
    parser = add_parser(subparsers, "verify", help="re-read backups and copies, compare checksums")
    sub = parser.add_subparsers(dest="verify_command", metavar="ACTION", required=True)
    run = add_parser(sub, "run", help="verify a backup, a chain, a repository or everything")
    what = run.add_mutually_exclusive_group()
    what.add_argument("--backup", type=id_argument("a backup"), help="one backup (and its copies)")
    what.add_argument(
        "--chain", type=id_argument("a chain"), help="every backup of a chain (and copies)"
    )
    what.add_argument("--repository", help="every file kept in a repository (name, or #ID)")
    run.add_argument("--no-copies", action="store_true", help="skip the copies")
    run.add_argument("--no-wait", action="store_true", help="queue the job and return")
    run.set_defaults(func=run_verify)
    report = add_parser(sub, "report", help="coverage, bad points and what is overdue")
    report.add_argument(
        "--days",
        type=bounded_int(1, DAYS_MAX, "days"),
        default=30,
        help="coverage window in days",
    )
    report.set_defaults(func=show_report)


def run_verify(args: argparse.Namespace, ctx: CliContext) -> int:
    if args.backup is not None:
        scope, ref = "backup", args.backup
    elif args.chain is not None:
        scope, ref = "chain", args.chain
    elif args.repository is not None:
        scope, ref = "repository", args.repository
    else:
        scope, ref = "all", None
    with ctx.engine(start=not args.no_wait) as engine:
        job = engine.verifier.submit(scope, ref, include_copies=not args.no_copies, actor="cli")
        if args.no_wait:
            return print_queued(ctx, job)
        job = wait_with_progress(engine, job.id, show=sys.stdout.isatty() and not ctx.json)
        return report_job(ctx, job)


def show_report(args: argparse.Namespace, ctx: CliContext) -> int:
    with ctx.engine(read_only=True) as engine:
        report = engine.verifier.report(args.days)
        next_at = engine.scheduler.next_verification()
        schedule = engine.scheduler.verify_schedule
        reverify_days = engine.verifier.reverify_after_days
        data = verification_report_dict(engine, report) if ctx.json else None
    if data is not None:
        ctx.print_json(data)
        return _bad_points(report)
    print(printable(report.sentence()))
    print(f"{report.files_verified} of {plural(report.files_total, 'file')} verified in the window")
    print(
        f"{plural(len(report.overdue), 'file')} overdue (older than "
        f"{plural(reverify_days, 'day')} and not verified in them)"
    )
    if next_at is not None:
        print(
            f"next scheduled verification: {next_at:%Y-%m-%d %H:%M} UTC ({schedule}); "
            "it reads the files not verified in that window"
        )
    else:
        print("scheduled verification is off")
    if report.bad:
        print()
        rows = [
            [
                b["path"],
                b["repository"],
                b["verify_state"],
                ", ".join(b.get("good_elsewhere") or []) or "NONE",
            ]
            for b in report.bad
        ]
        print(table(rows, ["BAD POINT", "WHERE", "STATE", "STILL GOOD AT"]))
    return _bad_points(report)


def _bad_points(report: Any) -> int:
    """The check found damage: exit 1 with one sentence (the report said which)."""
    if report.bad:
        raise CommandFailed(
            f"{plural(len(report.bad), 'backup file')} failed verification",
            hint="the report lists them and the copies still good; restore from those",
        )
    return 0
