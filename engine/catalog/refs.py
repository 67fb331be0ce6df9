"""The one reference resolver: name first, then ``#ID`` / ``ID`` (see ``engine.names``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from engine.catalog.models import Base
from engine.names import ID_MAX, parse_id

Row = TypeVar("Row", bound=Base)


def find_by_ref(
    session: Session,
    model: type[Row],
    ref: int | str,
    *,
    name_column: Any = None,
    where: Sequence[Any] = (),
) -> Row | None:
    """The row ``ref`` names, or None.

    An int is an id. A string is looked up as a name (``name_column``; ``where``
    narrows which rows a name may match, and the newest wins where names repeat);
    only when no name matches is it read as ``#ID`` or ``ID``. Numbers no id column can hold
    find nothing instead of overflowing the database's integer."""
    if isinstance(ref, int):
        return session.get(model, ref) if 1 <= ref <= ID_MAX else None
    if name_column is not None and not ref.startswith("#"):
        query = select(model).where(name_column == ref, *where)
        row = session.scalars(query.order_by(model.id.desc())).first()  # type: ignore[attr-defined]
        if row is not None:
            return row
    ident = parse_id(ref)
    return session.get(model, ident) if ident is not None else None
