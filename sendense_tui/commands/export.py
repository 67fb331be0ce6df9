"""``sendense export start|list|stop``: serve a restore point read-only over NBD.

Exports started here keep running after the command ends (they are marked
persistent) until ``sendense export stop``.
"""

from __future__ import annotations

import argparse
from typing import Any

from engine.services.exports import ExportView
from sendense_tui.commands import CliContext, add_parser, bounded_int, id_argument, table
from sendense_tui.format import printable


def register(subparsers: Any) -> None:
    parser = add_parser(subparsers, "export", help="serve restore points over NBD")
    sub = parser.add_subparsers(dest="export_command", metavar="ACTION", required=True)
    start = add_parser(sub, "start", help="serve a restore point read-only")
    start.add_argument("point", type=id_argument("a restore point"), help="restore point id")
    start.add_argument("--name", help="export name (default point-<id>)")
    start.add_argument(
        "--port", type=bounded_int(1, 65535), help="serve on TCP (default: a unix socket)"
    )
    start.add_argument("--host", help="TCP address to listen on (default 127.0.0.1)")
    start.set_defaults(func=start_export)
    lister = add_parser(sub, "list", help="running exports with their URI")
    lister.add_argument("--all", action="store_true", help="also stopped and dead ones")
    lister.set_defaults(func=list_exports)
    stop = add_parser(sub, "stop", help="stop an export (by name, or #ID)")
    stop.add_argument("export")
    stop.set_defaults(func=stop_export)


def export_dict(view: ExportView) -> dict[str, Any]:
    return {
        "id": view.id,
        "backup_id": view.backup_id,
        "point": view.point_label,
        "name": view.name,
        "uri": view.uri,
        "state": view.state,
        "persistent": view.persistent,
        "pid": view.pid,
        "started_at": view.started_at,
        "stopped_at": view.stopped_at,
    }


def start_export(args: argparse.Namespace, ctx: CliContext) -> int:
    with ctx.engine() as engine:
        view = engine.exports.start(
            args.point,
            name=args.name,
            host=args.host,
            port=args.port,
            persistent=True,
            actor="cli",
        )
    if ctx.json:
        ctx.print_json(export_dict(view))
    else:
        print(printable(f"serving {view.point_label} read-only at {view.uri}"))
        print(
            printable(
                f"  read it with: qemu-img info '{view.uri}'   stop: sendense export stop {view.id}"
            )
        )
    return 0


def list_exports(args: argparse.Namespace, ctx: CliContext) -> int:
    with ctx.engine() as engine:
        views = engine.exports.list(include_stopped=args.all)
    if ctx.json:
        ctx.print_json([export_dict(v) for v in views])
        return 0
    rows = [[str(v.id), v.name, v.state, v.point_label, v.uri] for v in views]
    print(table(rows, ["ID", "NAME", "STATE", "POINT", "URI"]) if rows else "no exports")
    return 0


def stop_export(args: argparse.Namespace, ctx: CliContext) -> int:
    with ctx.engine() as engine:
        view = engine.exports.stop(args.export, actor="cli")
    if ctx.json:
        ctx.print_json(export_dict(view))
    else:
        print(printable(f"stopped export {view.name} ({view.uri})"))
    return 0
