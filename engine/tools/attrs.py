"""File attributes: the immutable (``+i``) and append-only (``+a``) flags.

``chattr``/``lsattr`` from e2fsprogs. Setting either flag needs root
(CAP_LINUX_IMMUTABLE). ext4, xfs and (since Linux 6.0) tmpfs support them;
ramfs, NFS and CIFS do not, which raises ImmutableUnsupported.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.tools.base import Completed, ToolError, run

PathLike = str | Path

TIMEOUT = 30.0


class AttrError(ToolError):
    """chattr or lsattr failed."""


class ImmutableUnsupported(AttrError):
    """The filesystem holding the file has no immutable/append-only flags."""


class AttributePermissionError(AttrError):
    """Changing the flag needs root."""


class AttributeTargetMissing(AttrError):
    """The file does not exist."""


def _fs_name(path: PathLike) -> str:
    try:
        from engine.tools.mounts import find_mount

        return find_mount(path).fstype
    except (OSError, ToolError):
        return "unknown"


def _explain(path: PathLike, what: str) -> Callable[[Completed], ToolError | None]:
    def explain(done: Completed) -> ToolError | None:
        text = done.stderr
        kw: dict[str, Any] = {
            "program": done.args[0],
            "returncode": done.returncode,
            "stderr": text,
        }
        if "Operation not supported" in text or "Inappropriate ioctl" in text:
            return ImmutableUnsupported(
                f"the filesystem at {path} ({_fs_name(path)}) does not support the {what} "
                "flag (ramfs, NFS and CIFS do not)",
                hint="put the repository on a local ext4 or xfs filesystem to lock backups",
                **kw,
            )
        if "Operation not permitted" in text or "Permission denied" in text:
            return AttributePermissionError(
                f"changing the {what} flag of {path} needs root with the "
                "CAP_LINUX_IMMUTABLE capability (Operation not permitted)",
                hint="run Sendense as root; a container or a systemd unit whose capability "
                "bounding set lacks CAP_LINUX_IMMUTABLE cannot lock files",
                **kw,
            )
        if "No such file or directory" in text:
            return AttributeTargetMissing(f"{path} does not exist", **kw)
        return None

    return explain


def _chattr(path: PathLike, flag: str, on: bool, what: str) -> None:
    sign = "+" if on else "-"
    run(["chattr", f"{sign}{flag}", "--", str(path)], timeout=TIMEOUT, explain=_explain(path, what))


def set_immutable(path: PathLike, on: bool = True) -> None:
    """Lock (``+i``) or unlock (``-i``) a file or directory; no one, not even root, can
    change, rename or delete an immutable file until the flag is removed."""
    _chattr(path, "i", on, "immutable")


def set_append_only(path: PathLike, on: bool = True) -> None:
    """Set (``+a``) or clear (``-a``) the append-only flag."""
    _chattr(path, "a", on, "append-only")


def attributes(path: PathLike) -> set[str]:
    """The attribute letters lsattr shows for ``path`` (``{'i', 'e'}`` …)."""
    done = run(
        ["lsattr", "-d", "--", str(path)], timeout=TIMEOUT, explain=_explain(path, "immutable")
    )
    line = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    flags = line.split(None, 1)[0] if line else ""
    return {c for c in flags if c != "-"}


def is_immutable(path: PathLike) -> bool:
    return "i" in attributes(path)


def is_append_only(path: PathLike) -> bool:
    return "a" in attributes(path)
