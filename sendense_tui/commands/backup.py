"""``sendense backup run|list``: back up a VM's disks, list restore points.

``backup run`` queues a backup job and, unless ``--no-wait``, prints progress until
it ends (exit code 0 only when every disk was backed up; else 1 and one sentence):
the running daemon of this catalog runs it when there is one (the command then
loads no engine; Ctrl+C leaves the job to the daemon), else this process does.
While another writer (a backup, a merge, a retention run) holds one of the disks
the job waits for it and says so;
with ``--no-wait`` the request is refused instead (exit 2, one sentence naming the
writer). Sources are ``NAME=SOURCE`` where SOURCE is a file, a block device or an
``nbd://`` / ``nbd+unix://`` URI, read as raw bytes; a qcow2 image is named
``NAME:qcow2=SOURCE`` (a format is never guessed from a header).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from collections.abc import Iterable
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from engine.errors import CatalogUnavailable, ValidationError
from engine.shapes import event_dict, point_dict
from sendense_tui.commands import (
    COUNT_MAX,
    CliContext,
    add_paging,
    add_parser,
    bounded_int,
    check_paging,
    page_size,
    print_page,
    stream,
)
from sendense_tui.commands.jobs import (
    WAIT_ENDS,
    check_recorded,
    finish_job,
    follow_in_daemon,
    following,
    interruptible,
    is_job_end,
    job_in_daemon,
    print_queued,
    write_progress_line,
)
from sendense_tui.format import as_time, human_bytes, printable, short_time

if TYPE_CHECKING:  # the backup services load only for a backup, not for a listing
    from engine.sources import DiskSource

DISK_FORMAT = (
    "--disk takes NAME=SOURCE, e.g. sda=/dev/vg0/web01 (read as raw), "
    "or NAME:qcow2=SOURCE for a qcow2 image"
)


def disk_argument(text: str) -> DiskSource:
    """``--disk NAME[:qcow2]=SOURCE``; without a name argparse exits 2 with the format,
    instead of a made-up disk "disk0" reading whatever was typed."""
    from engine.sources import DiskSource

    try:
        return DiskSource.parse(text)
    except ValidationError:
        raise argparse.ArgumentTypeError(f"{DISK_FORMAT} (got {text!r})") from None


def register(subparsers: Any) -> None:
    parser = add_parser(subparsers, "backup", help="back up VM disks, list restore points")
    sub = parser.add_subparsers(dest="backup_command", metavar="ACTION", required=True)
    run = add_parser(sub, "run", help="back up the disks of a VM now")
    run.add_argument("--repo", required=True, help="repository name or id")
    run.add_argument("--vm", required=True, help="VM name (a directory name in the repository)")
    run.add_argument(
        "--disk",
        action="append",
        required=True,
        type=disk_argument,
        metavar="NAME[:qcow2]=SOURCE",
        help="a disk and where to read it: file, device or nbd URI, read as raw; "
        "NAME:qcow2=… for a standalone qcow2 image (repeatable)",
    )
    run.add_argument(
        "--changed-bitmap",
        action="append",
        default=[],
        metavar="NAME=BITMAP",
        help="an nbd source's dirty bitmap that marks what changed since the previous "
        "point (the server must offer qemu:dirty-bitmap:BITMAP)",
    )
    run.add_argument(
        "--changed-extents",
        action="append",
        default=[],
        metavar="NAME=FILE",
        help="a capture agent's JSON list of what changed since the previous point "
        '({"since_point": ID, "disk_size": BYTES, "extents": [{"start", "length"}]})',
    )
    run.add_argument("--mode", choices=("auto", "full", "incremental"), default="auto")
    run.add_argument("--compress", choices=("zstd", "none"), default="none")
    run.add_argument(
        "--full-every",
        type=bounded_int(1, COUNT_MAX),
        help="start a new full after N incrementals",
    )
    run.add_argument(
        "--no-wait",
        action="store_true",
        help="only queue the job; refused if another job writes one of the disks now",
    )
    run.set_defaults(func=run_backup)
    lister = add_parser(sub, "list", help="list restore points")
    lister.add_argument("--repo", help="only this repository (name, or #ID)")
    lister.add_argument("--vm", help="only this VM")
    add_paging(lister, "restore points")
    lister.set_defaults(func=list_points)


def wait_for_job(engine: Any, job_id: int, ctx: CliContext) -> Any:
    """Run the engine's job runner until the job ends, printing progress to stderr.
    Warnings the job raised (a new full, a broken chain) are printed once it has
    succeeded; a failed job says only its one sentence (``finish_job``)."""
    with interruptible(engine, job_id):
        return _wait_for_job(engine, job_id, ctx)


def _wait_for_job(engine: Any, job_id: int, ctx: CliContext) -> Any:
    done = threading.Event()
    quiet = ctx.json or not sys.stderr.isatty()

    def on_event(event: Any) -> None:
        if event.job_id != job_id:
            return
        if event.kind == "job.progress" and not quiet:
            d, t = event.data.get("bytes_done", 0), event.data.get("bytes_total", 0)
            write_progress_line(d, t, event.message)
        elif is_job_end(event, job_id):
            done.set()
        elif event.kind == "job.waiting" and not ctx.json:
            sentence = event.data.get("sentence", event.message)
            sys.stderr.write(f"\nwaiting: {printable(sentence)}\n")
            sys.stderr.flush()

    unsubscribe = engine.bus.subscribe(on_event)
    with following(job_id):
        try:
            engine.start(prepare_repositories=False)
            while not done.wait(0.5):
                job = engine.jobs.get(job_id)
                if job.state in WAIT_ENDS:
                    break
                check_recorded(engine, job_id)
        finally:
            unsubscribe()
            if not quiet:
                sys.stderr.write("\n")
        final = engine.jobs.get(job_id)
        if final.state not in WAIT_ENDS:
            check_recorded(engine, job_id)
        if final.state == "succeeded" and not ctx.json:
            # from the catalog, not this engine's bus: another engine's runner (a
            # daemon on this catalog) may have run the job
            try:
                entries = engine.audit.query(job_id=job_id, limit=NOTICES_MAX)
                notices = notices_of(event_dict(e) for e in reversed(entries))
            except CatalogUnavailable:  # the job is done: its warnings wait in the log
                notices = [NOTICES_LATER.format(job_id=job_id)]
            for notice in notices:
                print(notice, file=sys.stderr)
        return final


def _with_hints(disks: list[DiskSource], args: argparse.Namespace) -> list[DiskSource]:
    """Attach --changed-bitmap / --changed-extents to the disks they name."""
    by_name = {d.name: d for d in disks}
    for option, field in (
        ("changed_bitmap", "changed_bitmap"),
        ("changed_extents", "changed_extents"),
    ):
        for text in getattr(args, option):
            name, sep, value = text.partition("=")
            flag = "--" + option.replace("_", "-")
            if not sep or not value:
                raise ValidationError(f"{flag} takes NAME=VALUE, got {text!r}")
            if name not in by_name:
                raise ValidationError(
                    f"{flag} names disk {name!r}, which is not one of the --disk names "
                    f"({', '.join(by_name)})"
                )
            by_name[name] = replace(by_name[name], **{field: value})
    return [by_name[d.name] for d in disks]


def run_backup(args: argparse.Namespace, ctx: CliContext) -> int:
    disks: list[DiskSource] = _with_hints(list(args.disk), args)
    compression = None if args.compress == "none" else args.compress
    final = None if args.no_wait else _backup_in_daemon(args, ctx, disks)
    if final is None:
        with ctx.engine() as engine:
            job = engine.backups.submit(
                args.repo,
                args.vm,
                disks,
                mode=args.mode,
                compression=compression,
                full_every=args.full_every,
                actor="cli",
                queue_if_busy=not args.no_wait,
            )
            if args.no_wait:
                return print_queued(ctx, job)
            final = wait_for_job(engine, job.id, ctx)

    def done() -> None:
        for d in (final.result or {}).get("disks", []):
            why = f"  ({d['full_reason']})" if d.get("full_reason") else ""
            print(
                printable(
                    f"{args.vm}/{d['disk']}: {d['kind']} #{d['backup_id']} "
                    f"{human_bytes(d['file_size'])} written for a "
                    f"{human_bytes(d['virtual_size'])} disk{why}"
                )
            )
            print(printable("  " + transfer_line(d)))

    data = {"job_id": final.id, "state": final.state, "error": final.error, **(final.result or {})}
    return finish_job(ctx, final, data, done)


def _as_the_daemon_reads(text: str) -> str:
    """A source as the daemon must read it: a relative path made
    absolute here, as the caller meant it (the daemon's working directory is not the
    caller's). A URI, or a text qemu would read as a protocol (a colon before the
    first slash), is left as it is: the daemon refuses what is not an nbd:// URI, and
    the command's own road then says why in its words."""
    if "://" in text or ":" in text.split("/", 1)[0]:
        return text
    return os.path.abspath(text)


def _backup_in_daemon(args: argparse.Namespace, ctx: CliContext, disks: list[DiskSource]) -> Any:
    """The backup run by the daemon when one serves this catalog (the command then
    loads no engine), else None; its "new full" and "broken chain" warnings are the
    job's events, printed once it has succeeded as ``wait_for_job`` prints them."""
    body = {
        "repo": args.repo,
        "vm": args.vm,
        "disks": [
            {
                "name": d.name,
                "source": _as_the_daemon_reads(d.source),
                "format": d.fmt,
                "changed_bitmap": d.changed_bitmap,
                # as given: a relative one is refused on either road
                "changed_extents": d.changed_extents,
            }
            for d in disks
        ],
        "mode": args.mode,
        "compression": args.compress,
        "full_every": args.full_every,
    }
    queued = job_in_daemon(ctx, "/backups", body)
    if queued is None:
        return None
    draw = None if ctx.json or not sys.stderr.isatty() else "line"
    final = follow_in_daemon(ctx, queued, draw=draw, say_waiting=not ctx.json)
    if final.state == "succeeded" and not ctx.json:
        for notice in _notices_in_daemon(ctx, final.id):
            print(notice, file=sys.stderr)
    return final


#: what a backup says on stderr once it has succeeded: its events of these kinds
NOTICE_KINDS = ("backup.new_full", "chain.broken")
#: the most events of one job read for them (a backup of 64 disks says a few each)
NOTICES_MAX = 1000
#: when they cannot be read now
NOTICES_LATER = "note: `sendense events --job {job_id}` shows what the backup said"


def notices_of(events: Iterable[dict[str, Any]]) -> list[str]:
    """The warnings among a job's events (engine.shapes.event_dict), oldest first."""
    return [
        f"{e.get('level')}: {printable(str(e.get('message')))}"
        for e in events
        if e.get("kind") in NOTICE_KINDS
    ]


def _notices_in_daemon(ctx: CliContext, job_id: int) -> list[str]:
    from sendense_tui.daemon_client import page_from_daemon

    query = {"job": job_id, "level": "debug", "limit": NOTICES_MAX}
    page = page_from_daemon(ctx.settings, "/events", query)
    if page is None:  # the daemon went away just now: the job's events say it
        return [NOTICES_LATER.format(job_id=job_id)]
    return notices_of(page.items)


def transfer_line(d: dict[str, Any]) -> str:
    """``found by digest compare (why): read 2.0 GiB, wrote 16 MiB, changed 16 MiB,
    source held 3.1 s, checksum 0.4 s`` for one disk of a finished backup."""
    rung = d.get("rung") or "?"
    text = f"found by {rung}" + (" compare" if rung in ("digest", "compare") else "")
    if d.get("rung_reason"):
        text += f" ({d['rung_reason']})"
    parts = []
    for key, label in (("bytes_read", "read"), ("bytes_written", "wrote")):
        if d.get(key) is not None:
            parts.append(f"{label} {human_bytes(d[key])}")
    if d.get("changed_bytes") is not None:
        parts.append(f"changed {human_bytes(d['changed_bytes'])}")
    if d.get("source_held_seconds") is not None:
        parts.append(f"source held {d['source_held_seconds']:.1f} s")
    if d.get("checksum_seconds") is not None:
        parts.append(f"checksum {d['checksum_seconds']:.1f} s")
    return text + (": " + ", ".join(parts) if parts else "")


def _point_row(point: dict[str, Any], now: datetime) -> list[str]:
    return [
        str(point["id"]),
        f"{point['vm']}/{point['disk']}",
        point["kind"],
        short_time(as_time(point["point_time"]), now),
        human_bytes(point["file_size"]),
        human_bytes(point["allocated_bytes"]),
        point["state"],
        str(point["chain_id"]),
        (point["tracking"] or {}).get("rung") or "-",
    ]


POINT_HEADERS = ["ID", "DISK", "KIND", "WHEN", "SIZE", "ALLOCATED", "STATE", "CHAIN", "FOUND BY"]


def list_points(args: argparse.Namespace, ctx: CliContext) -> int:
    """A page of restore points in VM, disk, chain order (``--all``: all, streamed)."""
    check_paging(args)
    now = datetime.now(UTC)
    if args.every:
        with ctx.reader() as reader:
            rows = reader.listings.all_points(repository=args.repo, vm=args.vm)
            return stream(
                ctx,
                rows,
                lambda r: point_dict(*r),
                lambda r: _point_row(point_dict(*r), now),
                POINT_HEADERS,
            )
    limit = page_size(args)
    page = ctx.listing_page(
        "/restore-points",
        {"repo": args.repo, "vm": args.vm, "after": args.after, "limit": limit},
        lambda listings: listings.points(
            repository=args.repo, vm=args.vm, after=args.after, limit=limit
        ).shaped(lambda row: point_dict(*row)),
    )
    return print_page(
        ctx, page, lambda row: _point_row(row, now), POINT_HEADERS, "no restore points"
    )
