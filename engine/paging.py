"""Pages of a listing and the cursors between them (keyset paging, never OFFSET).

A listing (restore points, chains, jobs, audit entries) is read one page at a
time in a fixed, indexed order; the page ends with a *cursor*: the sort key of
its last row, as a short opaque word. The next page starts strictly after that
key, so rows inserted or deleted between two pages never shift a page (nothing is
shown twice, nothing is skipped that was there when its place was read), and a
page costs the same at row 10 as at row 100,000.

A cursor names its listing (``jobs``, ``events``...): one given to another listing,
or edited by hand, is refused with one sentence (``ValidationError``, exit 2).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from engine.errors import Action, ValidationError

T = TypeVar("T")
U = TypeVar("U")

#: rows one step of a streamed listing (``--all``) reads: memory stays bounded
STREAM_BATCH = 500
#: "what follows a page" is counted up to this many rows and then said as "more than
#: MORE_MAX": an exact count would read the rest of the listing (all 100,000 points
#: of a fleet) on every page, the cap keeps a page's cost what it shows
MORE_MAX = 10_000
#: the longest cursor accepted (the longest real one is a VM and disk name long)
CURSOR_MAX = 1200

#: what each listing's key holds, in order: the types a decoded cursor must have
KEY_TYPES: dict[str, tuple[type, ...]] = {
    "points": (str, str, int, int),  # VM, disk, chain id, position
    "chains": (str, str, int),  # VM, disk, chain id
    "jobs": (int,),  # job id, newest first
    "events": (int,),  # audit entry id, newest first
}


@dataclass
class Page(Generic[T]):
    """One page of a listing: its rows, the cursor after its last row (None: it is
    the last page) and how many rows follow it (counted up to MORE_MAX + 1: see
    ``more_counted``)."""

    items: list[T]
    next_cursor: str | None = None
    more: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def more_counted(self) -> bool:
        """Whether ``more`` is exact; False: more than MORE_MAX rows follow."""
        return self.more <= MORE_MAX

    def shaped(self, shape: Callable[[T], U]) -> Page[U]:
        """The same page with each row as ``shape`` makes it (``engine.shapes``: what
        the CLI's ``--json`` prints and the API sends)."""
        return Page([shape(item) for item in self.items], self.next_cursor, self.more, self.extra)

    def more_text(self) -> str:
        """What follows, in words a front end shows: ``1,234`` or ``more than 10,000``."""
        return f"{self.more:,}" if self.more_counted else f"more than {MORE_MAX:,}"


def encode_cursor(listing: str, key: Sequence[Any]) -> str:
    """The cursor after a row whose sort key is ``key`` in ``listing``."""
    text = json.dumps([listing, *key], separators=(",", ":"), ensure_ascii=False)
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_cursor(listing: str, cursor: str) -> tuple[Any, ...]:
    """The sort key a cursor of ``listing`` holds; a cursor that is not one (edited,
    truncated, from another listing) is refused with one sentence."""
    refused = ValidationError(
        f"{cursor[:40]!r} is not a cursor of this listing",
        action=Action(
            "page_cursor",
            "give the cursor the previous page named, or none to start at the top",
        ),
    )
    if not cursor or len(cursor) > CURSOR_MAX or not cursor.isascii():
        raise refused
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = json.loads(raw.decode())
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise refused from None
    types = KEY_TYPES[listing]
    if not isinstance(data, list) or len(data) != len(types) + 1 or data[0] != listing:
        raise refused
    key = tuple(data[1:])
    for value, wanted in zip(key, types, strict=True):
        # bool is an int to Python, never a key part
        if not isinstance(value, wanted) or isinstance(value, bool):
            raise refused
        if isinstance(value, int) and not 0 <= value < 2**63:
            raise refused
    return key


def paged(read: Callable[[str | None, int], Page[T]], *, batch: int = STREAM_BATCH) -> Iterator[T]:
    """Every row of a listing, read ``batch`` rows at a time (``--all``): one page in
    memory at once, each page its own short read (no transaction held open while a
    slow reader consumes the rows)."""
    cursor: str | None = None
    while True:
        page = read(cursor, batch)
        yield from page.items
        if page.next_cursor is None:
            return
        cursor = page.next_cursor
