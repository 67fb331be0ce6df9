"""What a backup reads: a disk's name and its source, as an operator, a policy or an
API request gives them (``NAME=SOURCE``, ``NAME:qcow2=SOURCE``).

Its own module, with nothing of the catalog or the tools: the CLI parses ``--disk``
before it knows whether the running daemon will take the backup (then the command
loads no engine at all). What is checked against the disk itself is in
engine.services.backup (``check_source_text``, ``source_spec``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from engine.errors import ValidationError

if TYPE_CHECKING:
    from engine.services.changes import ChangeHints

#: how a source may be read: raw unless the operator says qcow2 (never probed)
SOURCE_FORMATS = ("raw", "qcow2")
NBD_PREFIXES = ("nbd://", "nbd+unix://")
SOURCE_FORM = "NAME=SOURCE or NAME:qcow2=SOURCE"


@dataclass(frozen=True)
class DiskSource:
    name: str
    #: path of a file or block device, or an nbd:// / nbd+unix:// URI
    source: str
    #: how the source is read: raw (never probed), or qcow2 when the operator says so
    fmt: str = "raw"
    #: an NBD source's dirty bitmap that marks what changed since the previous point
    changed_bitmap: str | None = None
    #: a capture agent's extent list of what changed (engine.services.changes)
    changed_extents: str | None = None

    @property
    def hints(self) -> ChangeHints:
        from engine.services.changes import ChangeHints

        return ChangeHints(nbd_bitmap=self.changed_bitmap, extent_file=self.changed_extents)

    @classmethod
    def parse(cls, text: str) -> DiskSource:
        """``NAME=SOURCE`` or ``NAME:FORMAT=SOURCE`` (FORMAT raw or qcow2). The
        format belongs to the name side: a disk name has no ``:``, while a path or
        a URI may."""
        left, sep, source = text.partition("=")
        name, colon, fmt = left.partition(":")
        if not sep or not name or not source or "/" in left or (colon and not fmt):
            raise ValidationError(
                f"disk {text!r} is not {SOURCE_FORM}",
                hint="e.g. sda=/dev/vg0/web01 or vda:qcow2=/var/lib/images/web01.qcow2",
            )
        if fmt and fmt not in SOURCE_FORMATS:
            raise ValidationError(
                f"disk {name}: format {fmt!r} is not raw or qcow2",
                hint="a source is read as raw unless you say qcow2",
            )
        return cls(name, source, fmt or "raw")

    @classmethod
    def from_policy(cls, entry: dict[str, Any]) -> DiskSource:
        """A disk of a policy's sources: {"name", "source"[, "format"]}."""
        return cls(str(entry["name"]), str(entry["source"]), str(entry.get("format") or "raw"))

    @property
    def shown(self) -> str:
        """``NAME=SOURCE`` as the operator wrote it (``NAME:qcow2=…`` for qcow2)."""
        return f"{self.name}{':qcow2' if self.fmt == 'qcow2' else ''}={self.source}"
