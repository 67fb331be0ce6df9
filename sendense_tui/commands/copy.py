"""``sendense copy rule add|list|remove`` and ``sendense copy run|status``."""

from __future__ import annotations

import argparse
import sys
from typing import Any
from urllib.parse import quote

from engine.config import parse_size
from engine.errors import ValidationError
from engine.shapes import copy_status_dict, rule_dict
from sendense_tui.commands import (
    BIGINT_MAX,
    COUNT_MAX,
    CliContext,
    add_parser,
    bounded_int,
    id_argument,
    table,
)
from sendense_tui.commands.jobs import (
    follow_in_daemon,
    job_in_daemon,
    print_queued,
    report_job,
    wait_with_progress,
)
from sendense_tui.format import human_bytes, printable, short_time

#: the longest a copy may be overdue before the rule raises an alert: ten years
MAX_AGE_HOURS = 10 * 365 * 24


def _size(text: str) -> int:
    try:
        size = parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    except OverflowError:
        size = BIGINT_MAX + 1
    if size > BIGINT_MAX:
        raise argparse.ArgumentTypeError(f"{text!r} is out of range: give 0 (no limit) to 8E")
    return size


def register(subparsers: Any) -> None:
    parser = add_parser(subparsers, "copy", help="copy backups to other repositories (3-2-1)")
    sub = parser.add_subparsers(dest="copy_command", metavar="ACTION", required=True)

    rule = add_parser(sub, "rule", help="copy rules: add, list, remove")
    rules = rule.add_subparsers(dest="rule_command", metavar="ACTION", required=True)
    add = add_parser(rules, "add", help="add a copy rule")
    add.add_argument("name")
    add.add_argument("--from", dest="source", required=True, help="source repository")
    add.add_argument("--to", dest="destination", required=True, help="destination repository")
    add.add_argument("--select", choices=("all", "fulls", "latest"), default="all")
    add.add_argument(
        "--latest",
        type=bounded_int(1, COUNT_MAX),
        help="with --select latest: how many points per disk",
    )
    add.add_argument("--mode", choices=("immediate", "scheduled", "manual"), default="manual")
    add.add_argument("--schedule", help="cron expression for --mode scheduled ('0 2 * * *')")
    add.add_argument(
        "--priority", type=bounded_int(0, 1000), default=100, help="0-1000, lower runs first"
    )
    add.add_argument("--lock", action="store_true", help="lock the copies (immutability)")
    add.add_argument("--no-verify", action="store_true", help="do not verify after copying")
    add.add_argument("--bandwidth", type=_size, help="limit per second, e.g. 50M")
    add.add_argument(
        "--max-age-hours",
        type=bounded_int(1, MAX_AGE_HOURS, "hours"),
        help="alert when the newest copy is older",
    )
    add.set_defaults(func=add_rule)
    lister = add_parser(rules, "list", help="list copy rules")
    lister.set_defaults(func=list_rules)
    remove = add_parser(rules, "remove", help="remove a copy rule (copies stay)")
    remove.add_argument("name", help="rule name, or #ID")
    remove.set_defaults(func=remove_rule)

    run = add_parser(sub, "run", help="run a copy rule now, or re-run a failed copy")
    run.add_argument("rule", nargs="?", help="rule name, or #ID")
    run.add_argument(
        "--copy", type=id_argument("a copy"), dest="copy_id", help="re-run this failed copy"
    )
    run.add_argument("--no-wait", action="store_true", help="queue the job and return")
    run.set_defaults(func=run_copy)

    status = add_parser(sub, "status", help="rules, their copies and alerts")
    status.add_argument("--copies", action="store_true", help="also list recent copies")
    status.set_defaults(func=show_status)


def add_rule(args: argparse.Namespace, ctx: CliContext) -> int:
    if args.select == "latest" and args.latest is None:
        raise ValidationError("--select latest needs --latest N")
    with ctx.engine() as engine:
        rule = engine.copies.add_rule(
            name=args.name,
            source=args.source,
            destination=args.destination,
            selection=args.select,
            latest_count=args.latest,
            mode=args.mode,
            schedule=args.schedule,
            priority=args.priority,
            lock_copies=args.lock,
            verify_after=not args.no_verify,
            bandwidth_limit=args.bandwidth,
            max_age_hours=args.max_age_hours,
            actor="cli",
        )
        data = rule_dict(rule, {r.id: r for r in engine.repositories.list()})
    if ctx.json:
        ctx.print_json(data)
    else:
        route = f"{data['source']} -> {data['destination']}"
        print(printable(f"copy rule {data['name']}: {route} ({args.mode})"))
    return 0


def list_rules(args: argparse.Namespace, ctx: CliContext) -> int:
    with ctx.engine(read_only=True) as engine:
        repos = {r.id: r for r in engine.repositories.list()}
        rules = [rule_dict(r, repos) for r in engine.copies.list_rules()]
    if ctx.json:
        ctx.print_json(rules)
        return 0
    if not rules:
        print("no copy rules (add one: sendense copy rule add NAME --from A --to B)")
        return 0
    rows = [
        [
            str(r["id"]),
            r["name"],
            f"{r['source']} -> {r['destination']}",
            r["selection"] + (f" {r['latest_count']}" if r["latest_count"] else ""),
            r["mode"] + (f" ({r['schedule']})" if r["schedule"] else ""),
            str(r["priority"]),
            human_bytes(r["bandwidth_limit"]) + "/s" if r["bandwidth_limit"] else "-",
            "yes" if r["lock_copies"] else "no",
        ]
        for r in rules
    ]
    print(table(rows, ["ID", "NAME", "ROUTE", "SELECT", "MODE", "PRIO", "LIMIT", "LOCK"]))
    return 0


def remove_rule(args: argparse.Namespace, ctx: CliContext) -> int:
    with ctx.engine() as engine:
        rule = engine.copies.remove_rule(args.name, actor="cli")
    if ctx.json:
        ctx.print_json({"removed": rule.id, "name": rule.name})
    else:
        print(printable(f"copy rule {rule.name} removed; copies already made stay"))
    return 0


def run_copy(args: argparse.Namespace, ctx: CliContext) -> int:
    if (args.rule is None) == (args.copy_id is None):
        raise ValidationError("give a rule name, or --copy ID to re-run a failed copy")
    if not args.no_wait:
        path = (
            f"/copies/{args.copy_id}/rerun"
            if args.copy_id is not None
            else f"/copy-rules/{quote(args.rule, safe='')}/run"
        )
        queued = job_in_daemon(ctx, path, {})
        if queued is not None:
            draw = "bar" if sys.stdout.isatty() and not ctx.json else None
            return report_job(ctx, follow_in_daemon(ctx, queued, draw=draw))
    with ctx.engine(start=not args.no_wait) as engine:
        if args.copy_id is not None:
            job = engine.copies.rerun(args.copy_id, actor="cli")
        else:
            job = engine.copies.run_rule(args.rule, actor="cli")
        if args.no_wait:
            return print_queued(ctx, job)
        job = wait_with_progress(engine, job.id, show=sys.stdout.isatty() and not ctx.json)
        return report_job(ctx, job)


def _next_text(status: Any, now: Any) -> str:
    """When a rule runs next: a time for scheduled rules, else how it is triggered."""
    rule = status.rule
    if not rule.enabled:
        return "disabled"
    if rule.mode != "scheduled":
        return "after backups" if rule.mode == "immediate" else "manual"
    if status.next_run_at is None:
        return "-"
    if status.next_run_at <= now:
        return "due now"
    return status.next_run_at.strftime("%Y-%m-%d %H:%M UTC")


def show_status(args: argparse.Namespace, ctx: CliContext) -> int:
    with ctx.engine(read_only=True) as engine:
        statuses = engine.copies.status()
        alerts = engine.copies.alerts()
        # alerts announced by a scheduler (console or daemon) on this catalog
        raised = {m.key: m for m in engine.scheduler.active_alerts()}
        copies = engine.copies.list_copies(limit=50) if args.copies or ctx.json else []
        repos = {r.id: r for r in engine.repositories.list()}
        now = engine.clock.now()
    if ctx.json:
        ctx.print_json(copy_status_dict(statuses, alerts, list(raised.values()), copies, repos))
        return 0
    if not statuses:
        print("no copy rules")
    else:
        rows = [
            [
                s.rule.name,
                f"{s.source} -> {s.destination}",
                str(s.completed),
                str(s.failed),
                short_time(s.newest_copy_at, now) if s.newest_copy_at else "never",
                _next_text(s, now),
                s.health,
            ]
            for s in statuses
        ]
        print(table(rows, ["RULE", "ROUTE", "DONE", "FAILED", "NEWEST", "NEXT RUN", "STATUS"]))
    if alerts:
        print("\nalerts:")
        for a in alerts:
            print(printable(f"  {a.level.upper():8} {a.message}"))
    if copies:
        print()
        rows = [
            [
                str(c.id),
                c.state,
                repos[c.destination_repository_id].name,
                c.path,
                human_bytes(c.size),
                c.verify_state or "-",
                (c.error or "")[:60],
            ]
            for c in copies
        ]
        print(table(rows, ["ID", "STATE", "DEST", "PATH", "SIZE", "VERIFY", "ERROR"]))
    return 0
