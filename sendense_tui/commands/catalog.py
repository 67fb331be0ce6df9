"""``sendense catalog status|migrate|create``."""

from __future__ import annotations

import argparse
from typing import Any

from engine.services.catalog_admin import (
    CatalogStatus,
    catalog_status,
    create_catalog,
    migrate_catalog,
)
from sendense_tui.commands import CliContext, add_parser


def register(subparsers: Any) -> None:
    parser = add_parser(subparsers, "catalog", help="the catalog database")
    sub = parser.add_subparsers(dest="catalog_command", metavar="ACTION", required=True)
    add_parser(sub, "status", help="where the catalog is and its schema revision").set_defaults(
        func=status
    )
    add_parser(sub, "migrate", help="bring the catalog schema up to date").set_defaults(
        func=migrate
    )
    add_parser(
        sub, "create", help="start a new, empty catalog where one was lost (then repo import)"
    ).set_defaults(func=create)


def _report(status: CatalogStatus, ctx: CliContext, migrated: bool | None = None) -> int:
    head = status.head
    data: dict[str, Any] = {
        "url": status.url,
        "dialect": status.dialect,
        "revision": status.revision,
        "head": head,
        "up_to_date": status.up_to_date,
        "tables": status.tables,
    }
    if migrated is not None:
        data["migrated"] = migrated
    if ctx.json:
        ctx.print_json(data)
        return 0
    state = (
        "up to date"
        if status.up_to_date
        else f"behind (head {head}); run `sendense catalog migrate`"
    )
    print(f"catalog:  {data['url']}")
    print(f"schema:   {status.revision or 'empty'} ({state})")
    print(f"tables:   {status.tables}")
    return 0


def status(args: argparse.Namespace, ctx: CliContext) -> int:
    return _report(catalog_status(ctx.settings), ctx)


def migrate(args: argparse.Namespace, ctx: CliContext) -> int:
    return _report(migrate_catalog(ctx.settings), ctx, migrated=True)


def create(args: argparse.Namespace, ctx: CliContext) -> int:
    """After a catalog was lost: an empty one, on purpose; refused where one exists."""
    created = create_catalog(ctx.settings)
    if not ctx.json:
        print(
            f"created an empty catalog {created.url}; bring the backups back "
            "with `sendense repo import NAME --path PATH`"
        )
    return _report(created, ctx, migrated=True) if ctx.json else 0
