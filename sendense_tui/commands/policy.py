"""``sendense policy add|edit|list|show|run|preview|enable|disable|remove``."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from engine.errors import ValidationError
from engine.shapes import policy_dict
from sendense_tui.commands import (
    COUNT_MAX,
    DAYS_MAX,
    CliContext,
    add_parser,
    bounded_int,
    say_when_waiting,
    table,
)
from sendense_tui.commands.jobs import finish_job, print_queued, wait_with_progress
from sendense_tui.format import lock_text, plural, printable, short_time

if TYPE_CHECKING:
    from engine.services.policies import PolicySpec

FULL_EVERY = bounded_int(1, COUNT_MAX)
RETENTION_COUNT = bounded_int(0, COUNT_MAX)
LOCK_DAYS = bounded_int(0, DAYS_MAX, "days")

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
WEEKDAY_NAMES = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def register(subparsers: Any) -> None:
    parser = add_parser(subparsers, "policy", help="backup policies: schedule, retention, locks")
    sub = parser.add_subparsers(dest="policy_command", metavar="ACTION", required=True)

    add = add_parser(sub, "add", help="add a policy (validated; nothing saved on error)")
    add.add_argument("name")
    add.add_argument("--schedule", required=True, help="cron, UTC, e.g. '0 2 * * *'")
    add.add_argument("--target", required=True, help="target repository name")
    add.add_argument(
        "--source",
        action="append",
        default=[],
        required=True,
        metavar="VM:DISK=SOURCE",
        help="a disk to back up (repeatable), e.g. web01:sda=/dev/vg/web01, read as raw; "
        "web01:vda:qcow2=/images/web01.qcow2 for a standalone qcow2 image",
    )
    add.add_argument("--full-every", type=FULL_EVERY, default=7, help="a new full every N backups")
    add.add_argument("--full-weekday", choices=WEEKDAYS, help="and a new full on this day")
    for rule, default in (("keep-last", 7), ("daily", 0), ("weekly", 0), ("monthly", 0)):
        add.add_argument(f"--{rule}", type=RETENTION_COUNT, default=default)
    add.add_argument("--yearly", type=RETENTION_COUNT, default=0)
    add.add_argument("--copy-rule", action="append", default=[], help="attach a copy rule")
    add.add_argument("--verify", action="store_true", help="verify after each backup")
    add.add_argument("--immutable-days", type=LOCK_DAYS, default=0, help="lock backups N days")
    add.add_argument("--compression", choices=("zstd", "none"))
    add.add_argument("--disabled", action="store_true", help="save it without scheduling it")
    add.add_argument("--yes", action="store_true", help="confirm the space a lock will hold")
    add.set_defaults(func=add_policy)

    edit = add_parser(
        sub, "edit", help="change a policy (options as in add; the others stay as they are)"
    )
    edit.add_argument("name", help="policy name, or #ID")
    edit.add_argument("--rename", metavar="NEW_NAME", help="give the policy a new name")
    edit.add_argument("--schedule", help="cron, UTC, e.g. '0 2 * * *'")
    edit.add_argument("--target", help="target repository name")
    edit.add_argument(
        "--source",
        action="append",
        metavar="VM:DISK=SOURCE",
        help="the disks to back up (repeatable; replaces all the current sources)",
    )
    edit.add_argument("--full-every", type=FULL_EVERY, help="a new full every N backups")
    edit.add_argument("--full-weekday", choices=(*WEEKDAYS, "none"), help="and on this day")
    for rule in ("keep-last", "daily", "weekly", "monthly", "yearly"):
        edit.add_argument(f"--{rule}", type=RETENTION_COUNT)
    edit.add_argument(
        "--copy-rule", action="append", help="the copy rules (repeatable; replaces the list)"
    )
    edit.add_argument("--no-copy-rules", action="store_true", help="detach every copy rule")
    edit.add_argument(
        "--verify", action=argparse.BooleanOptionalAction, help="verify after each backup"
    )
    edit.add_argument("--immutable-days", type=LOCK_DAYS, help="lock backups N days")
    edit.add_argument("--compression", choices=("zstd", "none"))
    edit.add_argument("--yes", action="store_true", help="confirm the space a lock will hold")
    edit.set_defaults(func=edit_policy)

    lister = add_parser(sub, "list", help="policies with next run, last result, 3-2-1 badge")
    lister.set_defaults(func=list_policies)

    show = add_parser(sub, "show", help="one policy, its next five runs and compliance")
    show.add_argument("name")
    show.set_defaults(func=show_policy)

    run = add_parser(sub, "run", help="run a policy now")
    run.add_argument("name")
    run.add_argument("--wait", action="store_true", help="run it in this process and wait")
    run.set_defaults(func=run_policy)

    preview = add_parser(sub, "preview", help="retention dry run: what goes and why")
    preview.add_argument("name")
    preview.add_argument("--apply", action="store_true", help="apply the plan")
    preview.add_argument(
        "--force",
        action="store_true",
        help="with --apply: also remove points whose required copies do not exist yet "
        "(audited; locks are never overridden)",
    )
    preview.add_argument(
        "--no-wait",
        action="store_true",
        help="with --apply: refuse instead of waiting while another job writes a disk",
    )
    preview.set_defaults(func=preview_policy)

    for verb, text in (("enable", "schedule it again"), ("disable", "stop scheduling it")):
        p = add_parser(sub, verb, help=text)
        p.add_argument("name")
        p.set_defaults(func=toggle_policy, enabled=verb == "enable")
    remove = add_parser(sub, "remove", help="remove a policy (its backups stay)")
    remove.add_argument("name")
    remove.set_defaults(func=remove_policy)


def add_policy(args: argparse.Namespace, ctx: CliContext) -> int:
    from engine.services.policies import PolicySpec

    spec = PolicySpec(
        name=args.name,
        schedule=args.schedule,
        target=args.target,
        sources=PolicySpec.sources_from(args.source),
        full_every=args.full_every,
        full_weekday=WEEKDAYS.index(args.full_weekday) if args.full_weekday else None,
        retention={
            "keep_last": args.keep_last,
            "daily": args.daily,
            "weekly": args.weekly,
            "monthly": args.monthly,
            "yearly": args.yearly,
        },
        copy_rules=args.copy_rule,
        verify_after=args.verify,
        immutable_days=args.immutable_days,
        compression=args.compression,
        enabled=not args.disabled,
    )
    with ctx.engine() as engine:
        problems = engine.policies.validate(spec)
        if problems:
            raise ValidationError(
                f"policy {spec.name} was not saved: "
                + "; ".join(f"{k}: {v}" for k, v in problems.items()),
                hint="fix these and run the command again; nothing was changed",
            )
        _show_lock_cost(ctx, engine, spec, None)
        policy = engine.policies.add(spec, actor="cli", confirm_lock=args.yes)
        data = policy_dict(engine, policy)
    if ctx.json:
        ctx.print_json(data)
    else:
        when = f"{data['next_run_at']:%Y-%m-%d %H:%M}"
        print(printable(f"policy {policy.name} saved; next run {when} UTC"))
    return 0


def _apply_edits(spec: PolicySpec, args: argparse.Namespace) -> None:
    """What ``policy edit`` names, over the policy as it is (unnamed fields stay)."""
    if args.rename is not None:
        spec.name = args.rename
    if args.schedule is not None:
        spec.schedule = args.schedule
    if args.target is not None:
        spec.target = args.target
    if args.source:
        spec.sources = spec.sources_from(args.source)
    if args.full_every is not None:
        spec.full_every = args.full_every
    if args.full_weekday is not None:
        weekday = args.full_weekday
        spec.full_weekday = None if weekday == "none" else WEEKDAYS.index(weekday)
    for key in ("keep_last", "daily", "weekly", "monthly", "yearly"):
        if getattr(args, key) is not None:
            spec.retention[key] = getattr(args, key)
    if args.no_copy_rules:
        spec.copy_rules = []
    if args.copy_rule:
        spec.copy_rules = args.copy_rule
    if args.verify is not None:
        spec.verify_after = args.verify
    if args.immutable_days is not None:
        spec.immutable_days = args.immutable_days
    if args.compression is not None:
        spec.compression = args.compression


def edit_policy(args: argparse.Namespace, ctx: CliContext) -> int:
    with ctx.engine() as engine:
        current = engine.policies.get(args.name)
        spec = engine.policies.spec_of(current.id)
        _apply_edits(spec, args)
        problems = engine.policies.validate(spec, existing_id=current.id)
        if problems:
            raise ValidationError(
                f"policy {current.name} was not changed: "
                + "; ".join(f"{k}: {v}" for k, v in problems.items()),
                hint="fix these and run the command again; nothing was changed",
            )
        _show_lock_cost(ctx, engine, spec, current.id)
        policy = engine.policies.update(current.id, spec, actor="cli", confirm_lock=args.yes)
        data = policy_dict(engine, policy)
    if ctx.json:
        ctx.print_json(data)
    elif policy.enabled and data["next_run_at"] is not None:
        when = f"{data['next_run_at']:%Y-%m-%d %H:%M}"
        print(printable(f"policy {policy.name} changed; next run {when} UTC"))
    else:
        print(printable(f"policy {policy.name} changed (disabled: no scheduled runs)"))
    return 0


def _show_lock_cost(ctx: CliContext, engine: Any, spec: Any, existing_id: int | None) -> None:
    """A new or longer lock period: say what it holds and protects (on stdout, what
    the operator reads before confirming). The engine refuses it without --yes
    (LockNotConfirmed, whose action the CLI renders as "add --yes")."""
    estimate = engine.policies.lock_cost(spec, existing_id=existing_id)
    if estimate is not None and not ctx.json:
        print(printable(estimate.sentence()))
        print(engine.locks.protects + " " + engine.locks.does_not_protect)


def list_policies(args: argparse.Namespace, ctx: CliContext) -> int:
    with ctx.engine(read_only=True) as engine:
        rows = [policy_dict(engine, p) for p in engine.policies.list()]
        now = engine.clock.now()
    if ctx.json:
        ctx.print_json(rows)
        return 0
    if not rows:
        print("no policies (add one: sendense policy add --help)")
        return 0
    print(
        table(
            [
                [
                    r["name"],
                    "on" if r["enabled"] else "off",
                    r["schedule"],
                    r["target"],
                    short_time(r["next_run_at"], now) if r["enabled"] else "-",
                    r["last_result"] or "never run",
                    r["compliance"],
                ]
                for r in rows
            ],
            ["NAME", "ON", "SCHEDULE", "TARGET", "NEXT RUN", "LAST", "3-2-1"],
        )
    )
    return 0


def show_policy(args: argparse.Namespace, ctx: CliContext) -> int:
    from engine.services.policies import next_runs

    with ctx.engine(read_only=True) as engine:
        policy = engine.policies.get(args.name)
        data = policy_dict(engine, policy)
        data["next_runs"] = next_runs(policy.schedule, engine.clock.now(), 5)
        reports = [engine.compliance.report(s["vm"]).as_dict() for s in policy.sources]
        data["compliance_detail"] = reports
    if ctx.json:
        ctx.print_json(data)
        return 0
    for label, value in _readable_settings(data):
        print(printable(f"{label + ':':14} {value}"))
    print("sources:")
    for s in data["sources"]:
        for d in s["disks"]:
            fmt = f":{d['format']}" if d.get("format") else ""
            print(printable(f"  {s['vm']}:{d['name']}{fmt} = {d['source']}"))
    print("next runs (UTC):")
    for when in data["next_runs"]:
        print(f"  {when:%a %Y-%m-%d %H:%M}")
    for report in reports:
        print(printable(f"3-2-1 {report['vm']}: {report['badge']}"))
        for s in report["shortfalls"] + report["strict_shortfalls"]:
            print(printable(f"  - {s}"))
    return 0


def _readable_settings(data: dict[str, Any]) -> list[tuple[str, str]]:
    """A policy's settings as words: no Python dicts, lists or True/None."""
    from engine.services.retention import RetentionRules

    fulls = f"a new full every {plural(data['full_every'], 'backup')}"
    if data["full_weekday"] is not None:
        fulls += f", and on {WEEKDAY_NAMES[data['full_weekday']]}s"
    last = "never"
    if data["last_run_at"] is not None:
        last = f"{data['last_run_at']:%Y-%m-%d %H:%M} UTC"
        if data["last_result"]:
            last += f" ({data['last_result']})"
    return [
        ("name", data["name"]),
        ("enabled", "yes" if data["enabled"] else "no (the schedule does not run it)"),
        ("schedule", f"{data['schedule']} (cron, UTC)"),
        ("target", data["target"]),
        ("fulls", fulls),
        ("retention", RetentionRules.from_dict(data["retention"] or {}).sentence()),
        ("copy rules", ", ".join(data["copy_rules"]) or "none"),
        ("verify after", "yes" if data["verify_after"] else "no"),
        ("locks", lock_text(bool(data["immutable_days"]), data["immutable_days"] or 0)),
        ("compression", data["compression"] or "none"),
        ("last run", last),
    ]


def run_policy(args: argparse.Namespace, ctx: CliContext) -> int:
    with ctx.engine(start=args.wait) as engine:
        job = engine.policies.run_now(args.name, actor="cli")
        if not args.wait:
            return print_queued(ctx, job)
        job = wait_with_progress(engine, job.id, show=False)

    def done() -> None:
        print(f"job {job.id} {job.state}")
        if job.result and job.result.get("retention"):
            print(printable(f"retention: {job.result['retention']}"))

    data = {"job_id": job.id, "state": job.state, "error": job.error, "result": job.result}
    return finish_job(ctx, job, data, done)


def preview_policy(args: argparse.Namespace, ctx: CliContext) -> int:
    # a preview only reads; --apply deletes backups, so it opens an engine that writes
    with ctx.engine(read_only=not args.apply) as engine:
        plan = engine.policies.preview(args.name)
        result = None
        if args.apply:
            with say_when_waiting(engine, ctx):
                result = engine.policies.apply_retention(
                    args.name, force=args.force, actor="cli", wait=not args.no_wait
                )
    if ctx.json:
        data = plan.as_dict()
        if result is not None:
            data["applied"] = result.as_dict()
        ctx.print_json(data)
        return 0
    print(printable(plan.sentence()))
    rows = [
        [
            f"#{d.backup_id}",
            f"{d.vm}/{d.disk}",
            f"{d.point_time:%Y-%m-%d %H:%M}",
            d.kind,
            d.action.upper() if d.action != "keep" else "keep",
            ("BLOCKED: " + d.blocked) if d.blocked else "; ".join(d.reasons),
        ]
        for d in plan.decisions
    ]
    if rows:
        print(table(rows, ["POINT", "DISK", "TIME", "KIND", "ACTION", "WHY"]))
    if not plan.merges_allowed:
        print("merges are off: the target is immutable, chains go whole once unwanted")
    if result is not None:
        print(printable(result.sentence()))
        for op, why in result.skipped:
            print(printable(f"  skipped {op.sentence()}: {why}"))
        for op, why in result.failed:
            print(printable(f"  FAILED {op.sentence()}: {why}"))
    elif plan.operations:
        print("dry run: nothing was changed (add --apply to apply)")
    return 0


def toggle_policy(args: argparse.Namespace, ctx: CliContext) -> int:
    with ctx.engine() as engine:
        policy = engine.policies.set_enabled(args.name, args.enabled, actor="cli")
    print(printable(f"policy {policy.name} {'enabled' if policy.enabled else 'disabled'}"))
    return 0


def remove_policy(args: argparse.Namespace, ctx: CliContext) -> int:
    with ctx.engine() as engine:
        engine.policies.remove(args.name, actor="cli")
    print(printable(f"policy {args.name} removed (its backups stay)"))
    return 0
