"""``sendense backup run|list``: back up a VM's disks, list restore points.

``backup run`` queues a backup job and, unless ``--no-wait``, runs it in this
process and prints progress until it ends (exit code 0 only when every disk
was backed up). Sources are ``NAME=SOURCE`` where SOURCE is a file, a block
device or an ``nbd://`` / ``nbd+unix://`` URI.
"""

from __future__ import annotations

import argparse
import sys
import threading
from typing import Any

from engine.services.backup import DiskSource
from sendense_tui.commands import CliContext, add_parser, table
from sendense_tui.commands.jobs import WAIT_ENDS, check_recorded, following, print_queued
from sendense_tui.format import human_bytes, short_time

DISK_FORMAT = "--disk takes NAME=SOURCE, e.g. sda=/dev/vg0/web01"


def disk_argument(text: str) -> DiskSource:
    """``--disk NAME=SOURCE``; without a name argparse exits 2 with the format, instead
    of a made-up disk "disk0" reading whatever was typed."""
    name, sep, source = text.partition("=")
    if not sep or not name or not source or "://" in name or "/" in name:
        raise argparse.ArgumentTypeError(f"{DISK_FORMAT} (got {text!r})")
    return DiskSource(name, source)


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
        metavar="NAME=SOURCE",
        help="a disk and where to read it: file, device or nbd URI (repeatable)",
    )
    run.add_argument("--mode", choices=("auto", "full", "incremental"), default="auto")
    run.add_argument("--compress", choices=("zstd", "none"), default="none")
    run.add_argument("--full-every", type=int, help="start a new full after N incrementals")
    run.add_argument("--no-wait", action="store_true", help="only queue the job")
    run.set_defaults(func=run_backup)
    lister = add_parser(sub, "list", help="list restore points")
    lister.add_argument("--repo", help="only this repository")
    lister.add_argument("--vm", help="only this VM")
    lister.set_defaults(func=list_points)


def point_dict(backup: Any, chain: Any) -> dict[str, Any]:
    return {
        "id": backup.id,
        "vm": chain.vm_name,
        "disk": chain.disk_name,
        "chain_id": chain.id,
        "kind": backup.kind,
        "position": backup.position,
        "state": backup.state,
        "point_time": backup.point_time,
        "path": backup.path,
        "virtual_size": backup.virtual_size,
        "file_size": backup.file_size,
        "allocated_bytes": backup.allocated_bytes,
        "checksum": backup.checksum,
        "compression": backup.compression,
        "verify_state": backup.verify_state,
    }


def wait_for_job(engine: Any, job_id: int, ctx: CliContext) -> Any:
    """Run the engine's job runner until the job ends, printing progress to stderr."""
    done = threading.Event()
    quiet = ctx.json or not sys.stderr.isatty()

    def on_event(event: Any) -> None:
        if event.job_id != job_id:
            return
        if event.kind == "job.progress" and not quiet:
            d, t = event.data.get("bytes_done", 0), event.data.get("bytes_total", 0)
            pct = f"{100 * d / t:5.1f}%" if t else "  ?  "
            sys.stderr.write(f"\r{pct} {human_bytes(d)} / {human_bytes(t)}  {event.message[:40]}")
            sys.stderr.flush()
        elif event.kind.startswith("job.") and (
            event.kind[4:] in WAIT_ENDS or event.data.get("unrecorded")
        ):
            done.set()
        elif event.kind in ("backup.new_full", "chain.broken", "backup.failed") and not ctx.json:
            sys.stderr.write(f"\n{event.level.upper()}: {event.message}\n")

    unsubscribe = engine.bus.subscribe(on_event)
    with following(job_id):
        try:
            engine.start()
            while not done.wait(0.5):
                job = engine.job_store.get(job_id)
                if job.state in WAIT_ENDS:
                    break
                check_recorded(engine, job_id)
        finally:
            unsubscribe()
            if not quiet:
                sys.stderr.write("\n")
        final = engine.job_store.get(job_id)
        if final.state not in WAIT_ENDS:
            check_recorded(engine, job_id)
        return final


def run_backup(args: argparse.Namespace, ctx: CliContext) -> int:
    disks: list[DiskSource] = list(args.disk)
    compression = None if args.compress == "none" else args.compress
    with ctx.engine() as engine:
        job = engine.backups.submit(
            args.repo,
            args.vm,
            disks,
            mode=args.mode,
            compression=compression,
            full_every=args.full_every,
            actor="cli",
        )
        if args.no_wait:
            return print_queued(ctx, job)
        final = wait_for_job(engine, job.id, ctx)
    if ctx.json:
        ctx.print_json(
            {"job_id": final.id, "state": final.state, "error": final.error, **(final.result or {})}
        )
    elif final.state == "succeeded":
        for d in (final.result or {}).get("disks", []):
            why = f"  ({d['full_reason']})" if d.get("full_reason") else ""
            print(
                f"{args.vm}/{d['disk']}: {d['kind']} #{d['backup_id']} "
                f"{human_bytes(d['file_size'])} written for a "
                f"{human_bytes(d['virtual_size'])} disk{why}"
            )
    else:
        print(f"backup {final.state}: {final.error or ''}", file=sys.stderr)
    return 0 if final.state == "succeeded" else 1


def list_points(args: argparse.Namespace, ctx: CliContext) -> int:
    with ctx.engine() as engine:
        points = engine.backups.list_points(repository=args.repo, vm=args.vm)
        now = engine.clock.now()
    if ctx.json:
        ctx.print_json([point_dict(b, c) for b, c in points])
        return 0
    if not points:
        print("no restore points")
        return 0
    rows = [
        [
            str(b.id),
            f"{c.vm_name}/{c.disk_name}",
            b.kind,
            short_time(b.point_time, now),
            human_bytes(b.file_size),
            human_bytes(b.allocated_bytes),
            b.state,
            str(c.id),
        ]
        for b, c in points
    ]
    print(table(rows, ["ID", "DISK", "KIND", "WHEN", "SIZE", "ALLOCATED", "STATE", "CHAIN"]))
    return 0
