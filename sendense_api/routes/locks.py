"""Immutability locks: ``sendense lock list|extend`` over HTTP.

- ``GET /locks`` (read): locks in force; ``?all=true`` also released ones,
  ``?repo=`` only one repository's;
- ``POST /locks/{id}/extend`` (admin) with ``{"until": "2027-06-30"}`` (a UTC day, as
  the CLI's ``--until``, or a full ISO time): a lock is kept longer, never shorter;
  an earlier date is refused with one sentence.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query

from engine.names import ID_MAX
from engine.shapes import lock_dict
from engine.views import HOLDING_STATES
from sendense_api.deps import Admin, EngineDep, Reader
from sendense_api.routes._common import Body, ShapedRoute

router = APIRouter(tags=["locks"], route_class=ShapedRoute)

LockId = Annotated[int, Path(ge=1, le=ID_MAX, description="a lock id")]


def _repository_names(engine: Any) -> dict[int, str]:
    return {r.id: r.name for r in engine.repositories.list()}


@router.get("/locks")
def list_locks(
    engine: EngineDep,
    caller: Reader,
    all: Annotated[bool, Query(description="also released locks")] = False,
    repo: Annotated[str | None, Query(max_length=256, description="repository name or #ID")] = None,
) -> list[dict[str, Any]]:
    locks = engine.locks.list(states=None if all else HOLDING_STATES, repository=repo)
    names = _repository_names(engine)
    return [lock_dict(lock, names) for lock in locks]


class ExtendLock(Body):
    #: the new expiry: a day (midnight UTC) or a time (naive times are UTC)
    until: date | datetime


@router.post("/locks/{lock_id}/extend")
def extend_lock(
    engine: EngineDep, caller: Admin, lock_id: LockId, request: ExtendLock
) -> dict[str, Any]:
    until = request.until
    if not isinstance(until, datetime):
        until = datetime(until.year, until.month, until.day, tzinfo=UTC)
    elif until.tzinfo is None:
        until = until.replace(tzinfo=UTC)
    lock = engine.locks.extend(lock_id, until.astimezone(UTC), actor=caller.name)
    return lock_dict(lock, _repository_names(engine))
