"""The catalog database itself: where it is, its schema revision, migrating it and
starting an empty one after a loss (``sendense catalog status|migrate|create``).

Each call opens its own connection and closes it: these run before (or instead of)
an Engine, on a catalog that may be behind, ahead or missing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from engine.catalog.db import SCHEMA_HEAD, Catalog
from engine.config import Settings


@dataclass(frozen=True)
class CatalogStatus:
    url: str  # shown without its password
    dialect: str
    revision: str | None
    head: str
    tables: int

    @property
    def up_to_date(self) -> bool:
        return self.revision == self.head


def _status(catalog: Catalog) -> CatalogStatus:
    tables = [t for t in catalog.table_names() if t != "alembic_version"]
    return CatalogStatus(
        url=catalog.shown_url,
        dialect=catalog.dialect,
        revision=catalog.current_revision(),
        head=SCHEMA_HEAD,
        tables=len(tables),
    )


def _with_catalog(settings: Settings, step: Callable[[Catalog], object]) -> CatalogStatus:
    catalog = Catalog(settings.db_url)
    try:
        step(catalog)
        return _status(catalog)
    finally:
        catalog.dispose()


def catalog_status(settings: Settings) -> CatalogStatus:
    """Where the catalog is and its revision; raises CatalogUnavailable without it."""
    return _with_catalog(settings, lambda catalog: catalog.check_connection())


def migrate_catalog(settings: Settings) -> CatalogStatus:
    """Connect and migrate; refuses a catalog from a newer Sendense, and will not start
    an empty one where a catalog was lost."""
    from engine.runtime import catalog_evidence

    return _with_catalog(
        settings, lambda catalog: catalog.open(evidence=catalog_evidence(settings))
    )


def create_catalog(settings: Settings) -> CatalogStatus:
    """After a catalog was lost: an empty one, on purpose; refused where one exists."""
    return _with_catalog(settings, lambda catalog: catalog.create())
