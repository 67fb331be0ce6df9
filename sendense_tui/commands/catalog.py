"""``sendense catalog status|migrate|create``."""

from __future__ import annotations

import argparse
from typing import Any

from engine.catalog.db import SCHEMA_HEAD, Catalog
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


def _report(catalog: Catalog, ctx: CliContext, migrated: bool | None = None) -> int:
    head = SCHEMA_HEAD
    revision = catalog.current_revision()
    tables = [t for t in catalog.table_names() if t != "alembic_version"]
    data = {
        "url": catalog.shown_url,
        "dialect": catalog.dialect,
        "revision": revision,
        "head": head,
        "up_to_date": revision == head,
        "tables": len(tables),
    }
    if migrated is not None:
        data["migrated"] = migrated
    if ctx.json:
        ctx.print_json(data)
        return 0
    state = (
        "up to date"
        if revision == head
        else f"behind (head {head}); run `sendense catalog migrate`"
    )
    print(f"catalog:  {data['url']}")
    print(f"schema:   {revision or 'empty'} ({state})")
    print(f"tables:   {len(tables)}")
    return 0


def status(args: argparse.Namespace, ctx: CliContext) -> int:
    catalog = Catalog(ctx.settings.db_url)
    try:
        catalog.check_connection()
        return _report(catalog, ctx)
    finally:
        catalog.dispose()


def migrate(args: argparse.Namespace, ctx: CliContext) -> int:
    from engine.runtime import catalog_evidence

    catalog = Catalog(ctx.settings.db_url)
    try:
        # connects and migrates; refuses a catalog from a newer Sendense, and will not
        # start an empty one where a catalog was lost
        catalog.open(evidence=catalog_evidence(ctx.settings))
        return _report(catalog, ctx, migrated=True)
    finally:
        catalog.dispose()


def create(args: argparse.Namespace, ctx: CliContext) -> int:
    """After a catalog was lost: an empty one, on purpose; refused where one exists."""
    catalog = Catalog(ctx.settings.db_url)
    try:
        catalog.create()
        if not ctx.json:
            print(
                f"created an empty catalog {catalog.shown_url}; bring the backups back "
                "with `sendense repo import NAME --path PATH`"
            )
        return _report(catalog, ctx, migrated=True) if ctx.json else 0
    finally:
        catalog.dispose()
