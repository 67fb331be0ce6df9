"""``sendense lock list|release-expired|check|enable|extend|trust-clock``: immutability
locks."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any

from engine.bounds import GRACE_HOURS, LOCK_DAYS
from engine.errors import SendenseError
from engine.shapes import lock_dict
from engine.views import HOLDING_STATES, UNPROTECTED_STATES
from sendense_tui.commands import DAYS_MAX, CliContext, add_parser, bounded_int, id_argument, table
from sendense_tui.exitcodes import CommandFailed
from sendense_tui.format import plural, printable

#: the longest grace after a lock period: a year
GRACE_HOURS_MAX = 366 * 24


def register(subparsers: Any) -> None:
    parser = add_parser(subparsers, "lock", help="immutability locks (chattr +i)")
    sub = parser.add_subparsers(dest="lock_command", metavar="ACTION", required=True)
    lister = add_parser(sub, "list", help="locks in force (with --all: released ones too)")
    lister.add_argument("--all", action="store_true")
    lister.add_argument("--repo", help="only locks on this repository's files")
    lister.set_defaults(func=list_locks)
    release = add_parser(sub, "release-expired", help="clear the flag of expired locks")
    release.set_defaults(func=release_expired)
    check = add_parser(sub, "check", help="read every flag back; re-apply removed ones")
    check.set_defaults(func=check_locks)
    enable = add_parser(sub, "enable", help="make a repository immutable (or lock longer)")
    enable.add_argument("repository")
    enable.add_argument("--days", type=bounded_int(1, DAYS_MAX, "days"), required=True)
    enable.add_argument("--grace-hours", type=bounded_int(0, GRACE_HOURS_MAX, "hours"), default=0)
    enable.add_argument("--yes", action="store_true", help="confirm: locks cannot be shortened")
    enable.set_defaults(func=enable_repository)
    extend = add_parser(sub, "extend", help="keep one lock longer (never shorter)")
    extend.add_argument(
        "lock", type=id_argument("a lock"), help="lock id (see `sendense lock list`)"
    )
    extend.add_argument("--until", required=True, help="new expiry, YYYY-MM-DD (UTC)")
    extend.set_defaults(func=extend_lock)
    trust = add_parser(
        sub,
        "trust-clock",
        help="declare the system clock right now (after a correction the boot clock "
        "cannot confirm)",
    )
    trust.add_argument("--yes", action="store_true", help="confirm: expiry is judged from it")
    trust.set_defaults(func=trust_clock)


def list_locks(args: argparse.Namespace, ctx: CliContext) -> int:
    with ctx.engine(read_only=True) as engine:
        states = None if args.all else HOLDING_STATES
        locks = engine.locks.list(states=states, repository=args.repo)
        repos = {r.id: r.name for r in engine.repositories.list()}
    rows = [lock_dict(lock, repos) for lock in locks]
    if ctx.json:
        ctx.print_json(rows)
        return 0
    if not rows:
        print("no locks")
        return 0
    print(
        table(
            [
                [
                    str(r["id"]),
                    r["repository"],
                    r["path"],
                    "NOT PROTECTED" if r["state"] in UNPROTECTED_STATES else r["state"],
                    f"{r['expires_at']:%Y-%m-%d %H:%M}",
                ]
                for r in rows
            ],
            ["ID", "REPOSITORY", "FILE", "STATE", "UNTIL (UTC)"],
        )
    )
    return 0


def release_expired(args: argparse.Namespace, ctx: CliContext) -> int:
    with ctx.engine() as engine:
        report = engine.locks.release_expired(actor="cli")
    if ctx.json:
        ctx.print_json(report.as_dict())
    if report.clock is not None and not report.clock.ok:
        # nothing was released because the clock is not trusted: not a success
        raise SendenseError(
            f"no lock released: {report.clock.message}",
            hint="fix the system clock (NTP) first",
        )
    if not ctx.json:
        print(f"released {plural(len(report.released), 'expired lock')}")
    return 0


def check_locks(args: argparse.Namespace, ctx: CliContext) -> int:
    with ctx.engine() as engine:
        report = engine.locks.check_drift()
    if ctx.json:
        ctx.print_json(report.as_dict())
        return 0
    print(
        f"{plural(len(report.drift_repaired), 'removed flag')} set again, "
        f"{len(report.drift_failed)} could not be set, "
        f"{plural(len(report.missing), 'locked file')} gone"
    )
    if report.drift_failed or report.missing:
        raise CommandFailed(
            f"{plural(len(report.drift_failed), 'lock')} could not be set again and "
            f"{plural(len(report.missing), 'locked file')} "
            f"{'is' if len(report.missing) == 1 else 'are'} gone",
            hint="`sendense events --level critical` names the files",
        )
    return 0


def enable_repository(args: argparse.Namespace, ctx: CliContext) -> int:
    # the engine checks these again; here they are refused before asking to confirm
    LOCK_DAYS.check(args.days)
    GRACE_HOURS.check(args.grace_hours)
    with ctx.engine() as engine:
        print(engine.locks.protects)
        print(engine.locks.does_not_protect)
        if not args.yes:
            raise SendenseError(
                f"nothing changed: a {args.days}-day lock period can be extended later but "
                "never shortened",
                hint="add --yes to confirm",
            )
        repo = engine.locks.configure_repository(
            args.repository, args.days, grace_hours=args.grace_hours, actor="cli"
        )
    print(
        printable(
            f"repository {repo.name}: new backups are locked for "
            f"{plural(repo.immutable_days, 'day')}"
        )
    )
    return 0


def extend_lock(args: argparse.Namespace, ctx: CliContext) -> int:
    try:
        until = datetime.strptime(args.until, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        raise SendenseError(
            f"--until {args.until!r} is not a date", hint="give it as YYYY-MM-DD (UTC)"
        ) from None
    with ctx.engine() as engine:
        lock = engine.locks.extend(args.lock, until, actor="cli")
        repos = {r.id: r.name for r in engine.repositories.list()}
    if ctx.json:
        ctx.print_json(lock_dict(lock, repos))
    else:
        print(printable(f"lock {lock.id} on {lock.path} extended to {until:%Y-%m-%d %H:%M} UTC"))
    return 0


def trust_clock(args: argparse.Namespace, ctx: CliContext) -> int:
    with ctx.engine() as engine:
        now = engine.clock.now()
        if not args.yes:
            raise SendenseError(
                f"nothing changed: the clock reads {now:%Y-%m-%d %H:%M} UTC; lock expiry "
                "would be judged from it, so a wrong clock would release locks early",
                hint="check the time, then add --yes to confirm",
            )
        status = engine.locks.trust_clock(actor="cli")
    if ctx.json:
        ctx.print_json({"clock_ok": status.ok, "now": status.now, "clock": status.message})
    else:
        print(f"clock trusted at {status.now:%Y-%m-%d %H:%M} UTC")
    return 0
