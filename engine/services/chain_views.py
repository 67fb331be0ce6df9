"""What a chain and its points look like to a reader: the views the Chains screen,
``chain show`` and the API's ``/chains`` build from catalog rows.

Kept apart from engine.services.chains (which runs qemu-img, hashes files and merges
chains) so that a listing imports only these few classes: ``sendense chain show``
loads neither the tools nor the services that write.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from engine.catalog.locks import UNPROTECTED_STATES
from engine.catalog.models import Backup, Chain


def is_bad(backup: Backup) -> bool:
    """The catalog marks the point bad, or its last verification was not ok."""
    return backup.state == "bad" or backup.verify_state not in (None, "ok")


def why_bad(backup: Backup) -> str:
    if backup.state_detail:
        return backup.state_detail
    if backup.verify_state not in (None, "ok"):
        return f"its last verification found {str(backup.verify_state).replace('_', ' ')}"
    return "it is marked bad"


@dataclass(frozen=True)
class PointView:
    backup: Backup
    locked_until: datetime | None
    #: the holding lock's state: pending | active | drift | failed (None: no lock)
    lock_state: str | None = None

    @property
    def locked(self) -> bool:
        return self.locked_until is not None

    @property
    def unprotected(self) -> bool:
        """A lock was due but its flag is not set (it could not be, or was removed)."""
        return self.lock_state in UNPROTECTED_STATES


@dataclass(frozen=True)
class ChainView:
    chain: Chain
    repository: str
    points: list[PointView]

    @property
    def bad_points(self) -> list[Backup]:
        """Points marked bad or whose last verification was not ok."""
        return [p.backup for p in self.points if is_bad(p.backup)]

    @property
    def state(self) -> str:
        """The state to show: ``damaged`` when any point in it is bad (a restore of a
        later point needs it), unless the chain is broken; else the catalog's."""
        if self.chain.state != "broken" and self.bad_points:
            return "damaged"
        return self.chain.state

    def damage(self) -> list[str]:
        """One line per bad point, for the operator."""
        return [f"point #{b.id} is bad: {why_bad(b)}" for b in self.bad_points]

    @property
    def logical_bytes(self) -> int:
        """What the newest point restores to (the disk's virtual size)."""
        return self.points[-1].backup.virtual_size if self.points else 0

    @property
    def physical_bytes(self) -> int:
        return sum(p.backup.file_size for p in self.points)

    @property
    def allocated_bytes(self) -> int:
        return sum(p.backup.allocated_bytes for p in self.points)

    @property
    def logical_total(self) -> int:
        """Bytes the chain can restore in total (every point is a whole disk)."""
        return sum(p.backup.virtual_size for p in self.points)
