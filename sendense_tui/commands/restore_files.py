"""``sendense restore points|mount|ls|find|extract|unmount|mounts``: file-level restore.

The ``restore`` group is shared: another module may create it (``restore disk``).
``register`` adds these subcommands to an existing ``restore`` group when one is
already registered, and creates the group otherwise. A module that creates the
group itself after this one can call :func:`add_subcommands` on its subparsers.

Mounts made here are *detached*: they outlive the command and go away with
``unmount`` or when their expiry passes (default one hour, extended on use): the
daemon's reaper sees to that (``mount`` starts one when none runs).
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TextIO

from engine.errors import ValidationError
from engine.shapes import extract_result_dict, file_entry_dict, mount_dict
from sendense_tui.commands import (
    CliContext,
    add_parser,
    bounded_int,
    id_argument,
    json_text,
    table,
)
from sendense_tui.commands.backup import wait_for_job
from sendense_tui.commands.jobs import ensure_runner, job_failed
from sendense_tui.commands.restore import FORCE_HELP, restore_group
from sendense_tui.exitcodes import CommandFailed
from sendense_tui.format import human_bytes, human_duration, plural, printable

if TYPE_CHECKING:  # `restore disk` shares this group: it loads no file-restore code
    from engine.services.restore_views import Entry, MountView

#: the longest a restore mount may sit idle before it is removed: a week
MOUNT_MINUTES_MAX = 7 * 24 * 60
MOUNT_ID = id_argument("a restore mount")


def register(subparsers: Any) -> None:
    add_subcommands(restore_group(subparsers))


def add_subcommands(sub: Any) -> None:
    points = add_parser(sub, "points", help="list restore points")
    points.add_argument("--vm")
    points.add_argument("--disk")
    points.set_defaults(func=list_points)
    mount = add_parser(sub, "mount", help="mount a restore point read-only to browse its files")
    mount.add_argument("point", type=id_argument("a restore point"), help="restore point id")
    mount.add_argument(
        "--minutes",
        type=bounded_int(1, MOUNT_MINUTES_MAX, "minutes"),
        default=60,
        help=f"idle minutes before it is removed (default 60, at most {MOUNT_MINUTES_MAX})",
    )
    mount.add_argument("--force", action="store_true", help=FORCE_HELP)
    mount.set_defaults(func=mount_point)
    mounts = add_parser(sub, "mounts", help="list mounted restore points")
    mounts.set_defaults(func=list_mounts)
    ls = add_parser(sub, "ls", help="list a folder of a mounted point")
    ls.add_argument("mount", type=MOUNT_ID, help="mount id")
    ls.add_argument("path", nargs="?", default="", help="e.g. p1/etc (empty: filesystems)")
    ls.set_defaults(func=list_dir)
    find = add_parser(sub, "find", help="search a mounted point by name")
    find.add_argument("mount", type=MOUNT_ID)
    find.add_argument("pattern", help="a word, or wildcards like '*.conf'")
    find.add_argument("--under", default="", help="only below this path")
    find.set_defaults(func=find_files)
    extract = add_parser(sub, "extract", help="copy files or folders out of a mounted point")
    extract.add_argument("mount", type=MOUNT_ID)
    extract.add_argument("paths", nargs="+", help="paths inside the mount, e.g. p1/etc/hosts")
    where = extract.add_mutually_exclusive_group(required=True)
    where.add_argument("--to", dest="destination", help="destination folder")
    where.add_argument(
        "--tar",
        metavar="FILE",
        help="download instead: a pax tar archive into FILE, or - for standard output "
        "(a name ending .tar.zst or .tzst is zstd-compressed)",
    )
    where.add_argument("--zip", metavar="FILE", help="download instead: a zip archive")
    extract.add_argument("--zstd", action="store_true", help="compress the tar with zstd")
    extract.add_argument("--overwrite", action="store_true", help="replace existing files")
    extract.add_argument(
        "--specials",
        action="store_true",
        help="recreate fifos, device nodes and sockets (listed as not restored otherwise)",
    )
    extract.add_argument(
        "--owner",
        metavar="USER[:GROUP]",
        help="give everything to this user instead of the backup's owners "
        "(setuid/setgid bits and file capabilities dropped)",
    )
    extract.set_defaults(func=extract_files)
    unmount = add_parser(sub, "unmount", help="unmount a restore point")
    unmount.add_argument("mount", type=MOUNT_ID)
    unmount.set_defaults(func=unmount_point)


def list_points(args: argparse.Namespace, ctx: CliContext) -> int:
    with ctx.engine(read_only=True) as engine:
        points = engine.file_restore.points(vm_name=args.vm, disk_name=args.disk)
    if ctx.json:
        ctx.print_json(
            [
                {
                    "id": p.backup_id,
                    "vm": p.vm_name,
                    "disk": p.disk_name,
                    "kind": p.kind,
                    "point_time": p.point_time,
                    "repository": p.repository,
                    "size": p.virtual_size,
                }
                for p in points
            ]
        )
        return 0
    rows = [
        [
            str(p.backup_id),
            p.vm_name,
            p.disk_name,
            f"{p.point_time:%Y-%m-%d %H:%M}",
            p.kind,
            p.repository,
        ]
        for p in points
    ]
    print(table(rows, ["ID", "VM", "DISK", "TIME", "KIND", "REPOSITORY"]) if rows else "none")
    return 0


def _print_mount(view: MountView, now: Any) -> None:
    if view.note:
        print(f"NOTE: {view.note}")
    what = "reusing" if view.reused else "mounted"
    label = view.point.label if view.point else f"point {view.backup_id}"
    remaining = human_duration(view.remaining(now).total_seconds())
    print(printable(f"{what} {label} as mount {view.id} (removed after {remaining} idle)"))
    for fs in view.filesystems:
        note = fs.detail if fs.state != "mounted" else human_bytes(fs.size)
        if fs.state == "mounted" and fs.detail:  # mounted, with something to know
            note += f": {fs.detail}"
        print(printable(f"  {fs.name:6} {fs.description:8} {fs.state:12} {note}"))


def mount_point(args: argparse.Namespace, ctx: CliContext) -> int:
    with ctx.engine() as engine:
        view = engine.file_restore.mount(
            args.point,
            ttl=timedelta(minutes=args.minutes),
            actor="cli",
            detached=True,
            force=args.force,
        )
        now = engine.clock.now()
    # the mount outlives this command: the daemon's reaper unmounts it once it expired
    ensure_runner(ctx, without=None)
    if ctx.json:
        ctx.print_json(mount_dict(view))
    else:
        _print_mount(view, now)
    return 0


def list_mounts(args: argparse.Namespace, ctx: CliContext) -> int:
    with ctx.engine() as engine:
        views = engine.file_restore.list_mounts()
        now = engine.clock.now()
    if ctx.json:
        ctx.print_json([mount_dict(v) for v in views])
        return 0
    rows = [
        [
            str(v.id),
            v.point.label if v.point else str(v.backup_id),
            ", ".join(f"{f.name}:{f.fs_type}" for f in v.filesystems),
            human_duration(v.remaining(now).total_seconds()),
        ]
        for v in views
    ]
    print(table(rows, ["ID", "POINT", "FILESYSTEMS", "EXPIRES IN"]) if rows else "no mounts")
    return 0


def _print_entries(entries: list[Entry], *, full_path: bool = False) -> None:
    rows = []
    for e in entries:
        name = e.path if full_path else e.name
        if e.kind == "dir":
            name += "/"
        if e.link_target is not None:
            name += f" -> {e.link_target}"
        rows.append(
            [
                e.kind,
                f"{e.mode:04o}" if e.mode else "",
                human_bytes(e.size) if e.kind in ("file", "filesystem") else "",
                f"{e.mtime:%Y-%m-%d %H:%M}" if e.mtime else "",
                name + (f"  ({e.detail})" if e.detail else ""),
            ]
        )
    print(table(rows, ["KIND", "MODE", "SIZE", "MODIFIED", "NAME"]) if rows else "(empty)")


def list_dir(args: argparse.Namespace, ctx: CliContext) -> int:
    with ctx.engine() as engine:
        entries = engine.file_restore.ls(args.mount, args.path)
    if ctx.json:
        ctx.print_json([file_entry_dict(e) for e in entries])
    else:
        _print_entries(entries)
    return 0


def find_files(args: argparse.Namespace, ctx: CliContext) -> int:
    with ctx.engine() as engine:
        entries = engine.file_restore.search(args.mount, args.pattern, args.under)
    if ctx.json:
        ctx.print_json([file_entry_dict(e) for e in entries])
    else:
        _print_entries(entries, full_path=True)
    return 0


def extract_files(args: argparse.Namespace, ctx: CliContext) -> int:
    if args.tar is not None or args.zip is not None:
        return archive_files(args, ctx)
    return _extract_into_folder(args, ctx)


class _StandardOutput:
    """The archive written straight to file descriptor 1 (no buffer left for Python
    to flush at exit into a pipe that is gone)."""

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        while view:
            view = view[os.write(1, view) :]
        return len(data)


def archive_files(args: argparse.Namespace, ctx: CliContext) -> int:
    """``--tar FILE|-`` or ``--zip FILE``: the selection as one archive written by this
    command (nothing of it is stored on the appliance but FILE); with ``-`` the stream
    is the only thing on standard output and the summary goes to standard error."""
    kind = "zip" if args.zip is not None else "tar"
    output: str = args.zip if args.zip is not None else args.tar
    zstd = args.zstd or (kind == "tar" and output.endswith((".tar.zst", ".tzst")))
    if args.zstd and kind == "zip":
        raise ValidationError("--zstd compresses a tar archive; a zip is compressed already")
    for option, given in (("--owner", args.owner), ("--specials", args.specials)):
        if given:
            raise ValidationError(
                f"{option} applies to a restore into a folder; an archive keeps the "
                "guest's owners and special files as entries",
                hint="leave it out, or restore with --to DIR",
            )
    streamed = output == "-"
    if streamed and kind == "zip":
        raise ValidationError(
            "a zip archive is written into a file, not a stream", hint="--zip FILE"
        )
    if streamed and os.isatty(1):
        raise ValidationError(
            "the archive would be written onto the terminal",
            hint="send it into a file or a program: --tar - > etc.tar, or --tar FILE",
        )
    from engine.services.restore_archive import ArchiveOutputError

    with ctx.engine() as engine:
        try:
            if streamed:
                result = engine.file_restore.archive(
                    args.mount, args.paths, _StandardOutput(), kind=kind, zstd=zstd
                )
            else:
                result = engine.file_restore.archive_to_file(
                    args.mount, args.paths, output, kind=kind, zstd=zstd, overwrite=args.overwrite
                )
        except ArchiveOutputError as exc:
            if streamed:  # later output (and Python's exit) must not write to it again
                os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
            raise CommandFailed(exc.message, hint=exc.hint) from None
    _report_archive(result.as_dict(), ctx, sys.stderr if streamed else sys.stdout)
    return 0


def _report_archive(result: dict[str, Any], ctx: CliContext, out: TextIO) -> None:
    skipped = [(s["path"], s["reason"]) for s in result["skipped"]]
    if ctx.json:
        out.write(json_text(result, indent=2) + "\n")
    else:
        from engine.services.restore_archive import archived_summary

        print(printable(archived_summary(result)), file=out)
        for path, reason in skipped:
            print(printable(f"  not archived {path}: {reason}"), file=out)
        for item in result["not_carried"]:
            print(printable(f"  kept without {item['what']}: {item['path']}"), file=out)
    if skipped:
        raise CommandFailed(
            f"{plural(len(skipped), 'item')} asked for "
            f"{'was' if len(skipped) == 1 else 'were'} not archived",
            hint="the lines above say which and why",
        )


def _extract_into_folder(args: argparse.Namespace, ctx: CliContext) -> int:
    """Queued as a ``restore.files`` job (the console's way too): ``jobs list`` shows
    it, ``jobs cancel`` and Ctrl-C stop it; this command waits for it."""
    with ctx.engine() as engine:
        job = engine.file_restore.submit_extract(
            args.mount,
            args.paths,
            args.destination,
            overwrite=args.overwrite,
            specials=args.specials,
            owner=args.owner,
            actor="cli",
        )
        final = wait_for_job(engine, job.id, ctx)
    if final.state != "succeeded":
        raise job_failed(final)
    result = extract_result_dict(final.result or {}, final.id)
    skipped = result["not_restored"]
    if ctx.json:
        ctx.print_json(result)
    else:
        from engine.services.restore_extract import summary as extract_summary

        print(printable(f"{extract_summary(result)} to {result['destination']}"))
        if result["note"]:
            print(printable(f"NOTE: {result['note']}"))
        for item in skipped:
            print(printable(f"  not restored {item['path']}: {item['reason']}"))
    if skipped:
        # something asked for was not restored: exit 1 so a script does not read success
        raise CommandFailed(
            f"{plural(len(skipped), 'item')} asked for "
            f"{'was' if len(skipped) == 1 else 'were'} not restored",
            hint="the lines above say which and why",
        )
    return 0


def unmount_point(args: argparse.Namespace, ctx: CliContext) -> int:
    with ctx.engine() as engine:
        engine.file_restore.unmount(args.mount, actor="cli")
    if ctx.json:
        ctx.print_json({"id": args.mount, "state": "unmounted"})
    else:
        print(f"unmounted restore mount {args.mount}")
    return 0
