"""What the front ends (console, CLI, HTTP API) see of the catalog.

Services return catalog records (detached, read-only once their session closed) and
speak a small vocabulary of states and levels. A front end imports those names from
here, never from ``engine.catalog``: the catalog's tables and stores stay below the
services (tests/engine/test_layers.py keeps it that way), and a record type can
become a plain dataclass later without touching a screen.
"""

from __future__ import annotations

from engine.catalog.audit import LEVELS
from engine.catalog.jobs import FINAL_STATES
from engine.catalog.locks import HOLDING_STATES, UNPROTECTED_STATES
from engine.catalog.models import (
    AuditEntry,
    Backup,
    ImmutabilityLock,
    Job,
    Repository,
    ScheduleMark,
)
from engine.catalog.restore import PointLocation

__all__ = [
    "FINAL_STATES",
    "HOLDING_STATES",
    "LEVELS",
    "UNPROTECTED_STATES",
    "AuditEntry",
    "Backup",
    "ImmutabilityLock",
    "Job",
    "PointLocation",
    "Repository",
    "ScheduleMark",
]
