"""``nbdinfo --map``: the extents an NBD server reports for a metadata context.

Used for changed-block backups: ``qemu:dirty-bitmap:NAME`` (which areas a dirty
bitmap marks as written since it was created) and ``base:allocation`` (which
areas hold data). nbdinfo (libnbd) is a separate program, so a server that
misbehaves cannot take the engine down with it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from engine.tools.base import Completed, ToolError, first_error_line, run
from engine.tools.blockspec import NbdAddress

MAP_TIMEOUT = 300.0


class ContextMissing(ToolError):
    """The server does not offer the metadata context (no such bitmap)."""


@dataclass(frozen=True)
class Extent:
    offset: int
    length: int
    #: the context's type bits: for a dirty bitmap 1 = dirty; for base:allocation
    #: 1 = hole, 2 = reads as zeros
    type: int


def _explain(context: str, address: NbdAddress) -> Callable[[Completed], ToolError | None]:
    def explain(done: Completed) -> ToolError | None:
        text = done.stderr.lower()
        if "context" in text or "not support" in text:
            return ContextMissing(
                f"the NBD server at {address.uri} does not offer {context}",
                program="nbdinfo",
                stderr=done.stderr,
            )
        return ToolError(
            f"nbdinfo could not map {address.uri}: {first_error_line(done.stderr)}",
            program="nbdinfo",
            stderr=done.stderr,
        )

    return explain


def extents(
    address: NbdAddress, context: str = "base:allocation", *, timeout: float = MAP_TIMEOUT
) -> list[Extent]:
    """Every extent of ``context`` over the whole export, in order."""
    done = run(
        ["nbdinfo", f"--map={context}", "--json", address.uri],
        timeout=timeout,
        explain=_explain(context, address),
    )
    return [
        Extent(int(e["offset"]), int(e["length"]), int(e["type"])) for e in json.loads(done.stdout)
    ]


def dirty_extents(address: NbdAddress, bitmap: str) -> list[tuple[int, int]]:
    """(offset, length) of every area the dirty bitmap ``bitmap`` marks as written."""
    return [
        (e.offset, e.length) for e in extents(address, f"qemu:dirty-bitmap:{bitmap}") if e.type & 1
    ]
