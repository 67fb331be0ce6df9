"""``sendense chain show|check|consolidate|delete``: the backup chains of each VM disk.

``consolidate`` and ``delete`` write the disk's chain: while another writer holds
that disk (a backup, a merge, a retention run) they wait for it and say so, or
with ``--no-wait`` are refused (exit 2, one sentence naming the writer).

``chain check`` also lists chain directories the catalog has no chain for and
files in chain directories it does not know; ``--fix`` removes stale partial files
and imports finished orphans (engine.services.imports) before checking."""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from engine.errors import ValidationError
from engine.shapes import chain_dict
from sendense_tui.commands import (
    CliContext,
    add_paging,
    add_parser,
    check_paging,
    id_argument,
    page_size,
    say_more,
    say_when_waiting,
    stream,
)
from sendense_tui.exitcodes import CommandFailed
from sendense_tui.format import as_time, human_bytes, plural, printable, short_time

CHAIN_ID = id_argument("a chain")
POINT_ID = id_argument("a restore point")


def register(subparsers: Any) -> None:
    parser = add_parser(subparsers, "chain", help="show, check and consolidate backup chains")
    sub = parser.add_subparsers(dest="chain_command", metavar="ACTION", required=True)
    show = add_parser(sub, "show", help="chains with their restore points and sizes")
    show.add_argument("chain_id", type=CHAIN_ID, nargs="?", help="only this chain")
    show.add_argument("--repo", help="only this repository")
    show.add_argument("--retired", action="store_true", help="also retired chains")
    add_paging(show, "chains (retired ones too)", pipe=CHAIN_PIPE_PAGE)
    show.set_defaults(func=show_chains)
    check = add_parser(sub, "check", help="compare chains on disk with the catalog")
    check.add_argument("chain_id", type=CHAIN_ID, nargs="?", help="only this chain")
    check.add_argument("--deep", action="store_true", help="also re-read files (sha256)")
    check.add_argument(
        "--fix",
        action="store_true",
        help="first remove stale partial files and import finished orphans whose chain is "
        "valid (never a locked file, nothing while a job runs on the repository)",
    )
    check.set_defaults(func=check_chains)
    cons = add_parser(sub, "consolidate", help="merge the oldest point(s) into a new full")
    cons.add_argument("chain_id", type=CHAIN_ID)
    cons.add_argument("--upto", type=POINT_ID, help="point that becomes the full (default: 2nd)")
    cons.add_argument(
        "--no-wait", action="store_true", help="refuse instead of waiting for a busy disk"
    )
    cons.set_defaults(func=consolidate)
    delete = add_parser(sub, "delete", help="delete a restore point and the points after it")
    delete.add_argument("point", type=POINT_ID)
    delete.add_argument("--yes", action="store_true", help="do it (without: only show the plan)")
    delete.add_argument(
        "--no-wait", action="store_true", help="refuse instead of waiting for a busy disk"
    )
    delete.set_defaults(func=delete_point)


def show_chains(args: argparse.Namespace, ctx: CliContext) -> int:
    """A page of chains in VM, disk order with their points (``--all``: every chain,
    retired ones too, streamed)."""
    check_paging(args)
    now = datetime.now(UTC)
    if args.every:
        with ctx.reader() as reader:
            views: Iterable[Any] = reader.listings.all_chains(repository=args.repo)
            if ctx.json:
                return stream(ctx, views, chain_dict, lambda v: [], [])
            for view in views:
                _print_chain(chain_dict(view), now)
            return 0
    limit = page_size(args, lines_each=CHAIN_LINES, pipe=CHAIN_PIPE_PAGE)
    page = ctx.listing_page(
        # the API lists chains; one chain by its id is read here
        "/chains" if args.chain_id is None else None,
        {"repo": args.repo, "all": args.retired or None, "after": args.after, "limit": limit},
        lambda listings: listings.chains(
            repository=args.repo,
            include_retired=args.retired or args.chain_id is not None,
            chain_id=args.chain_id,
            after=args.after,
            limit=limit,
        ).shaped(chain_dict),
    )
    if ctx.json:
        ctx.print_json(page.items)
    elif not page.items:
        print("no chains")
    for chain in [] if ctx.json else page.items:
        _print_chain(chain, now)
    say_more(ctx, page)
    return 0


#: lines a chain takes on screen, roughly (its line and a few points): sizes the page
CHAIN_LINES = 8
#: chains a page holds into a pipe, as the API's ``/chains`` (a chain carries all its
#: points: 50 chains of a fleet are 5,000 points, several times a terminal's page)
CHAIN_PIPE_PAGE = 20


def _print_chain(chain: dict[str, Any], now: datetime) -> None:
    """A chain (``engine.shapes.chain_dict``) and its points, a line each."""
    print(
        printable(
            f"{chain['vm']}/{chain['disk']}  chain {chain['chain_id']} [{chain['state']}] "
            f"in {chain['repository']}: {len(chain['points'])} points, disk "
            f"{human_bytes(chain['logical_bytes'])}, files {human_bytes(chain['physical_bytes'])}"
            f", data {human_bytes(chain['allocated_bytes'])}"
        )
    )
    if chain["state_detail"]:
        print(printable(f"  ! {chain['state_detail']}"))
    for line in chain["damage"]:
        print(printable(f"  ! {line}"))
    for p in chain["points"]:
        locked_until = as_time(p["locked_until"])
        lock = f"  locked until {locked_until:%Y-%m-%d}" if locked_until else ""
        if p["unprotected"]:
            lock = f"  NOT PROTECTED (lock due until {locked_until:%Y-%m-%d})"
        print(
            f"  #{p['id']:<5} {p['kind']:<11} {short_time(as_time(p['point_time']), now):>16}  "
            f"{human_bytes(p['file_size']):>10}  {p['state']}{lock}"
        )


def check_chains(args: argparse.Namespace, ctx: CliContext) -> int:
    with ctx.engine() as engine:
        fixed = engine.imports.fix(actor="cli") if args.fix else None
        if args.chain_id is not None:
            reports = [engine.chains.validate(args.chain_id, deep=args.deep)]
        else:
            reports = engine.chains.check_all(deep=args.deep)
    if ctx.json:
        data = [r.as_dict() for r in reports]
        ctx.print_json({"fix": fixed.as_dict(), "reports": data} if fixed else data)
    else:
        if fixed is not None:
            print(printable(f"fix: {fixed.sentence()}"))
            for line in fixed.removed:
                print(printable(f"  removed {line}"))
            for outcome in fixed.chains:
                if outcome.points:
                    print(printable(f"  {outcome.sentence()}"))
            for line in fixed.left_alone:
                print(printable(f"  left alone {line}"))
        if not reports:
            print("no chains")
        for r in reports:
            print(
                printable(
                    ("UNKNOWN " if r.unknown else "OK     " if r.ok else "BROKEN ") + r.sentence()
                )
            )
            for f in r.findings:
                print(printable(f"  - {f.message}"))
                print(printable(f"    -> {f.hint}"))
    broken = [r for r in reports if not r.ok]
    if broken:
        raise CommandFailed(
            f"{len(broken)} of {plural(len(reports), 'chain')} checked "
            f"{'is' if len(broken) == 1 else 'are'} broken",
            hint="each finding above says what to do",
        )
    return 0


def consolidate(args: argparse.Namespace, ctx: CliContext) -> int:
    with ctx.engine() as engine, say_when_waiting(engine, ctx):
        point = engine.chains.consolidate(
            args.chain_id, new_base_id=args.upto, actor="cli", wait=not args.no_wait
        )
    if ctx.json:
        ctx.print_json({"chain_id": args.chain_id, "new_full": point.id, "path": point.path})
    else:
        print(printable(f"chain {args.chain_id}: point #{point.id} is now the full ({point.path})"))
    return 0


def delete_point(args: argparse.Namespace, ctx: CliContext) -> int:
    with ctx.engine() as engine:
        plan = engine.chains.delete_plan(args.point)
        if not args.yes:
            if ctx.json:
                ctx.print_json({"would_delete": [b.id for b in plan.goes], "done": False})
            else:
                print(printable(f"point #{args.point} {plan.sentence()}"))
            raise ValidationError(
                f"point #{args.point} was not deleted: deleting needs --yes",
                hint="read the plan above and run the command again with --yes",
            )
        with say_when_waiting(engine, ctx):
            engine.chains.delete_point(args.point, actor="cli", wait=not args.no_wait)
    if ctx.json:
        ctx.print_json({"deleted": [b.id for b in plan.goes], "done": True})
    else:
        print(printable(f"deleted: {plan.sentence()}"))
    return 0
