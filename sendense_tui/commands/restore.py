"""``sendense restore disk``: write a whole restore point out as a disk.

The ``restore`` group is shared with file-level restore (``restore_files``):
``register`` adds ``disk`` to an existing group or creates the group; both
modules find or create it with :func:`restore_group`.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from sendense_tui.commands import CliContext, add_parser, id_argument
from sendense_tui.commands.backup import wait_for_job
from sendense_tui.commands.jobs import finish_job, follow_in_daemon, job_in_daemon
from sendense_tui.format import human_bytes, printable

#: the same words on every command that reads a restore point
FORCE_HELP = "read a bad point that has no verified copy anyway (its data is unverified)"


def restore_group(subparsers: Any) -> Any:
    """The ``restore`` group's subparsers action, creating the group if needed."""
    parser = subparsers.choices.get("restore")
    if parser is None:
        parser = add_parser(subparsers, "restore", help="restore disks and files from backups")
        return parser.add_subparsers(dest="restore_command", metavar="ACTION", required=True)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return parser.add_subparsers(dest="restore_command", metavar="ACTION", required=True)


def register(subparsers: Any) -> None:
    add_subcommands(restore_group(subparsers))


def add_subcommands(sub: Any) -> None:
    disk = add_parser(sub, "disk", help="write a restore point out as a whole disk")
    disk.add_argument("point", type=id_argument("a restore point"), help="restore point id")
    disk.add_argument("target", help="file to create, or an nbd:// / nbd+unix:// URI")
    disk.add_argument("--format", choices=("raw", "qcow2"), default="raw", dest="fmt")
    disk.add_argument("--overwrite", action="store_true", help="replace an existing file")
    disk.add_argument("--force", action="store_true", help=FORCE_HELP)
    disk.set_defaults(func=restore_disk)


def restore_disk(args: argparse.Namespace, ctx: CliContext) -> int:
    final = _restore_in_daemon(args, ctx)
    if final is None:
        with ctx.engine() as engine:
            job = engine.restores.submit(
                args.point,
                args.target,
                fmt=args.fmt,
                overwrite=args.overwrite,
                force=args.force,
                actor="cli",
            )
            final = wait_for_job(engine, job.id, ctx)

    def done() -> None:
        if (final.result or {}).get("note"):
            print(printable(f"NOTE: {final.result['note']}"))
        size = human_bytes(final.bytes_total)
        print(printable(f"restored point #{args.point} ({size}) to {args.target}"))

    data = {"job_id": final.id, "state": final.state, "error": final.error, **(final.result or {})}
    return finish_job(ctx, final, data, done)


def _restore_in_daemon(args: argparse.Namespace, ctx: CliContext) -> Any:
    """The restore run by the daemon when one serves this catalog (the command then
    loads no engine: a quarter of the start with cold caches), else None. A file target is
    made absolute here: the daemon's working directory is not the caller's (a name
    with ``://`` is left as it is: the daemon refuses it unless it is an NBD URI, and
    the command's own road then says what it is)."""
    target = args.target if "://" in args.target else os.path.abspath(args.target)
    body = {"target": target, "format": args.fmt, "overwrite": args.overwrite, "force": args.force}
    queued = job_in_daemon(ctx, f"/restore-points/{args.point}/restore", body)
    if queued is None:
        return None
    draw = None if ctx.json or not sys.stderr.isatty() else "line"
    return follow_in_daemon(ctx, queued, draw=draw, say_waiting=not ctx.json)
