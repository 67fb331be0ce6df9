"""``sendense export start|list|stop``: serve a restore point read-only over NBD.

An export started here outlives the command: a small keeper process owns it,
stops it after its idle timeout or maximum age (``[exports]`` in the config, or
``--idle-minutes``/``--max-hours``), or on ``sendense export stop``. TCP on an
address other machines can reach needs ``--tls``.
"""

from __future__ import annotations

import argparse
from datetime import datetime
from typing import Any

from engine.shapes import export_dict
from sendense_tui.commands import CliContext, add_parser, bounded_int, id_argument, table
from sendense_tui.commands.restore import FORCE_HELP
from sendense_tui.format import export_limits, human_duration, printable


def register(subparsers: Any) -> None:
    parser = add_parser(subparsers, "export", help="serve restore points over NBD")
    sub = parser.add_subparsers(dest="export_command", metavar="ACTION", required=True)
    start = add_parser(sub, "start", help="serve a restore point read-only")
    start.add_argument("point", type=id_argument("a restore point"), help="restore point id")
    start.add_argument("--name", help="export name (default point-<id>)")
    start.add_argument(
        "--port", type=bounded_int(1, 65535), help="serve on TCP (default: a unix socket)"
    )
    start.add_argument(
        "--host", help="TCP address to listen on (default 127.0.0.1; any other needs --tls)"
    )
    start.add_argument(
        "--tls",
        action="store_true",
        help="clients must use TLS with a pre-shared key made for this export",
    )
    start.add_argument(
        "--idle-minutes",
        type=float,
        help="stop after this long without a client (default: [exports] idle_minutes)",
    )
    start.add_argument(
        "--max-hours",
        type=float,
        help="stop this long after the start, clients or not (default: [exports] max_hours)",
    )
    start.add_argument("--force", action="store_true", help=FORCE_HELP)
    start.set_defaults(func=start_export)
    lister = add_parser(sub, "list", help="running exports with their URI and limits")
    lister.add_argument("--all", action="store_true", help="also stopped and dead ones")
    lister.set_defaults(func=list_exports)
    stop = add_parser(sub, "stop", help="stop an export (by name, or #ID)")
    stop.add_argument("export")
    stop.set_defaults(func=stop_export)


def _when(value: datetime | None) -> str:
    return f"{value:%Y-%m-%d %H:%M} UTC" if value is not None else "never"


def start_export(args: argparse.Namespace, ctx: CliContext) -> int:
    with ctx.engine() as engine:
        view = engine.exports.start_detached(
            args.point,
            name=args.name,
            host=args.host,
            port=args.port,
            tls=args.tls,
            idle_minutes=args.idle_minutes,
            max_hours=args.max_hours,
            actor="cli",
            force=args.force,
        )
    if ctx.json:
        ctx.print_json(export_dict(view))
        return 0
    if view.note:
        print(printable(f"NOTE: {view.note}"))
    print(printable(f"serving {view.point_label} read-only at {view.uri}"))
    if view.tls:
        print(f"  TLS with a pre-shared key; the key (keep it secret): {view.key_file}")
        print("  copy that file to the client, then read the disk with:")
    else:
        print("  read it with:")
    for line in view.connect_lines():
        print(printable(f"    {line}"))
    idle = human_duration(view.idle_seconds)
    print(f"  ends after {idle} without a client, at {_when(view.expires_at)} at the latest")
    print(f"  stop: sendense export stop {view.id}")
    return 0


def list_exports(args: argparse.Namespace, ctx: CliContext) -> int:
    with ctx.engine() as engine:
        views = engine.exports.list(include_stopped=args.all)
    if ctx.json:
        ctx.print_json([export_dict(v) for v in views])
        return 0
    rows = [
        [
            str(v.id),
            v.name,
            v.state if v.state == "running" else f"{v.state} ({v.stop_reason or '?'})",
            v.point_label,
            v.uri + (" (TLS)" if v.tls else ""),
            export_limits(v.idle_seconds, v.expires_at),
        ]
        for v in views
    ]
    headers = ["ID", "NAME", "STATE", "POINT", "URI", "IDLE, ENDS"]
    print(table(rows, headers) if rows else "no exports")
    return 0


def stop_export(args: argparse.Namespace, ctx: CliContext) -> int:
    with ctx.engine() as engine:
        view = engine.exports.stop(args.export, actor="cli")
    if ctx.json:
        ctx.print_json(export_dict(view))
    else:
        print(printable(f"stopped export {view.name} ({view.uri})"))
    return 0
