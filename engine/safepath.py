"""Path containment: every path from an operator or from inside a backup stays under its root.

- :func:`clean_relative` turns operator input (``"p1/etc/hosts"``, ``"/p1/etc"``)
  into components, refusing ``..`` *components*. Names that merely contain
  dots (``"..evil"``, ``"a..b"``, ``"..."``) are ordinary names.
- :func:`resolve_no_symlinks` walks those components under a root with
  ``lstat`` and refuses to pass through a symbolic link: a link inside a backup
  may point anywhere on the restore host (``/etc``), so it is never followed.
- :func:`is_within` checks a real (resolved) path against a real root.
- :func:`link_stays_inside` decides whether a relative symlink, placed at a
  location under a root, still points under that root (lexically).
"""

from __future__ import annotations

import os
import posixpath
import stat
from pathlib import Path, PurePosixPath

from engine.errors import ValidationError


class UnsafePath(ValidationError):
    """A path would leave its root or pass through a symbolic link."""


def clean_relative(path: str | PurePosixPath) -> tuple[str, ...]:
    """Components of a path relative to a root; ``..`` components are refused."""
    text = str(path)
    if "\0" in text:
        raise UnsafePath(f"path {text!r} contains a NUL byte")
    parts: list[str] = []
    for part in text.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            raise UnsafePath(
                f"path {text!r} goes up with '..'",
                hint="give a path inside the mounted backup, e.g. p1/etc/hosts",
            )
        parts.append(part)
    return tuple(parts)


def is_within(root: str | Path, path: str | Path) -> bool:
    """True when ``path`` resolves (symlinks followed) to ``root`` or below it."""
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    return real == real_root or real.startswith(real_root.rstrip("/") + "/")


def resolve_no_symlinks(
    root: str | Path, parts: tuple[str, ...], *, allow_final_link: bool = False
) -> Path:
    """``root/parts…`` after checking no component (but maybe the last) is a symlink.

    Raises FileNotFoundError when a component is missing, UnsafePath for a link.
    """
    current = Path(root)
    for index, part in enumerate(parts):
        current = current / part
        info = os.lstat(current)
        last = index == len(parts) - 1
        if stat.S_ISLNK(info.st_mode) and not (last and allow_final_link):
            shown = "/".join(parts[: index + 1])
            raise UnsafePath(
                f"{shown} is a symbolic link; links inside a backup are not followed",
                hint=f"it points to {os.readlink(current)!r}: browse that path instead",
            )
    return current


def link_stays_inside(location: PurePosixPath | str, target: str) -> bool:
    """Whether a symlink at ``location`` (relative to a root) pointing to ``target``
    stays under the root. Absolute targets never do: on the restore host they would
    point at the host's own files."""
    if not target or target.startswith("/") or "\0" in target:
        return False
    parent = posixpath.dirname(str(location))
    joined = (
        posixpath.normpath(posixpath.join(parent, target)) if parent else posixpath.normpath(target)
    )
    return joined != ".." and not joined.startswith("../") and not joined.startswith("/")


def child_path(directory: Path, name: str) -> Path:
    """``directory/name`` for a single name read from a backup, refusing separators
    and the special names (a crafted filesystem could hold anything)."""
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise UnsafePath(f"refusing the name {name!r} read from the backup")
    return directory / name
