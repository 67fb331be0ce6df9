"""The catalog: the only place in Sendense that knows SQL."""

from engine.catalog.db import Catalog
from engine.catalog.models import Base

__all__ = ["Base", "Catalog"]
