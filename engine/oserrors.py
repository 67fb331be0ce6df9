"""What a failed system call on a path means to the person who must fix it: the one
errno-to-sentence mapping (a full filesystem, an exhausted quota, a read-only mount,
a permission, a missing path), so every service says the same thing for the same
errno. A service wraps the sentence in its own SendenseError subclass.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from pathlib import Path

#: a full filesystem or an exhausted quota: retrying waits for room, a partial goes
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


def is_no_space(exc: BaseException) -> bool:
    """The filesystem (or the user's quota) is full."""
    return isinstance(exc, OSError) and exc.errno in NO_SPACE


@dataclass(frozen=True)
class OsFailure:
    """One failed system call said for a person: ``reason`` is one word a caller (or a
    test) can branch on: no_space | read_only | permission | not_found |
    not_directory | io."""

    reason: str
    message: str
    hint: str | None = None


def explain_os_error(path: Path | str, exc: OSError, doing: str) -> OsFailure:
    """``doing`` says what failed in a few words ("the write test", "creating chains/")."""
    code = exc.errno
    if code == errno.ENOSPC:
        return OsFailure(
            "no_space",
            f"{path} is full (no space left): {doing} failed (ENOSPC)",
            "free space on that filesystem or choose another one",
        )
    if code == errno.EDQUOT:
        return OsFailure(
            "no_space",
            f"{path}: the disk quota is exhausted ({doing} failed)",
            "raise the quota or free space",
        )
    if code == errno.EROFS:
        return OsFailure(
            "read_only",
            f"{path} is on a read-only filesystem: {doing} is impossible",
            "remount it read-write or choose a writable location",
        )
    if code in (errno.EACCES, errno.EPERM):
        return OsFailure(
            "permission",
            f"{path}: permission denied ({doing})",
            "run Sendense as a user that may write there, or fix the ownership",
        )
    if code == errno.ENOENT:
        return OsFailure(
            "not_found",
            f"{path} does not exist",
            "create the directory first, or tick 'create it'",
        )
    if code == errno.ENOTDIR:
        return OsFailure(
            "not_directory", f"{path} is not a directory (a part of the path is a file)"
        )
    return OsFailure("io", f"{path}: {doing} failed: {exc.strerror or exc}")
