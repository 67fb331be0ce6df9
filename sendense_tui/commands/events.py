"""``sendense events``: the audit log, optionally followed live."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from engine.errors import ValidationError
from engine.paging import Page
from engine.shapes import event_dict as entry_dict
from engine.states import AUDIT_LEVELS
from sendense_tui.commands import (
    CliContext,
    add_paging,
    add_parser,
    check_paging,
    id_argument,
    json_text,
    page_size,
    say_more,
    stream,
)
from sendense_tui.format import as_time, printable

FOLLOW_POLL_SECONDS = 1.0


def register(subparsers: Any) -> None:
    parser = add_parser(subparsers, "events", help="show the audit log")
    parser.add_argument("--level", choices=AUDIT_LEVELS, default="info", help="minimum level")
    parser.add_argument("--source", help="only events from this source (jobs, capacity…)")
    parser.add_argument("--grep", help="only events whose message or kind contains this")
    parser.add_argument("--job", type=id_argument("a job"), help="only this job's events")
    add_paging(parser, "events")
    parser.add_argument("--follow", "-f", action="store_true", help="keep printing new events")
    parser.set_defaults(func=show_events)


def _line(entry: dict[str, Any]) -> str:
    at = as_time(entry["at"])
    when = at.strftime("%Y-%m-%d %H:%M:%S") if at else "-"
    # one event, one line: a message naming a crafted file cannot forge another
    return printable(f"{when}  {entry['level']:<8} {entry['source']:<12} {entry['message']}")


def _emit(entries: list[dict[str, Any]], as_json: bool) -> None:
    for entry in entries:
        if as_json:
            print(json_text(entry))
        else:
            print(_line(entry))
    sys.stdout.flush()


def show_events(args: argparse.Namespace, ctx: CliContext) -> int:
    """A page of the newest events, printed oldest first (the newest at the bottom, as
    ``tail``); ``--after`` the older page before it; ``--all`` every event, newest
    first, streamed; ``--follow`` then prints new ones as they come."""
    check_paging(args)
    if args.follow and (args.every or args.after):
        raise ValidationError(
            "--follow prints the newest events and then new ones: it takes neither "
            "--all nor --after"
        )
    query = {
        "min_level": args.level,
        "source": args.source,
        "text": args.grep,
        "job_id": args.job,
    }
    if args.every:
        with ctx.reader() as reader:
            everything = reader.listings.all_events(**query)
            if ctx.json:
                return stream(ctx, everything, entry_dict, lambda e: [], [])
            for entry in everything:
                print(_line(entry_dict(entry)))
            return 0
    limit = page_size(args)
    if not args.follow:
        page = ctx.listing_page(
            "/events",
            {
                "level": args.level,
                "source": args.source,
                "grep": args.grep,
                "job": args.job,
                "after": args.after,
                "limit": limit,
            },
            # printed oldest first, as the API answers
            lambda listings: _oldest_first(
                listings.events(after=args.after, limit=limit, **query).shaped(entry_dict)
            ),
        )
        if ctx.json:
            ctx.print_json(page.items)
        else:
            _emit(page.items, False)
        say_more(ctx, page)
        return 0
    with ctx.reader() as reader:
        read = reader.listings.events(limit=limit, **query)
        entries = [entry_dict(e) for e in reversed(read.items)]
        _emit(entries, ctx.json)
        last = entries[-1]["id"] if entries else 0
        while True:  # Ctrl+C or SIGTERM ends it (exit 4, handled in cli.main)
            time.sleep(FOLLOW_POLL_SECONDS)
            fresh = list(reversed(reader.audit.query(after_id=last, limit=1000, **query)))
            if fresh:
                _emit([entry_dict(e) for e in fresh], ctx.json)
                last = fresh[-1].id


def _oldest_first(page: Page[dict[str, Any]]) -> Page[dict[str, Any]]:
    return Page(page.items[::-1], page.next_cursor, page.more)
