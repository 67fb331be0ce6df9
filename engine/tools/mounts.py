"""Mounts: read the mount table, mount and unmount.

The table is read from /proc/self/mountinfo in Python (no process); mount and
umount run the util-linux programs with a timeout, so a hung NFS/CIFS server
gives ToolTimeout instead of a frozen console. Options that carry secrets
(``password=…``) must be listed in ``secrets`` so they never reach a message.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.tools.base import Completed, ToolError, first_error_line, run, which

PathLike = str | Path

MOUNTINFO = "/proc/self/mountinfo"

_OCTAL = re.compile(r"\\([0-7]{3})")


class MountError(ToolError):
    """mount or umount failed; the message says why in words an operator can act on."""


@dataclass(frozen=True)
class MountInfo:
    source: str
    target: str
    fstype: str
    #: per-mount options (rw/ro, nosuid, relatime, …)
    options: list[str]
    mount_id: int | None = None
    parent_id: int | None = None
    #: the filesystem's own options (errors=…, size=…, addr=…)
    super_options: list[str] = field(default_factory=list)
    #: the directory of the filesystem mounted here ("/" unless a bind mount of a subdir)
    root: str = "/"

    @property
    def read_only(self) -> bool:
        return "ro" in self.options


def unescape(field_text: str) -> str:
    """Decode the octal escapes the kernel uses in mountinfo (``\\040`` for a space)."""
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field_text)


def parse_mountinfo(text: str) -> list[MountInfo]:
    mounts: list[MountInfo] = []
    for line in text.splitlines():
        parts = line.split()
        if "-" not in parts:
            continue
        sep = parts.index("-")
        if sep < 6 or len(parts) < sep + 3:
            continue
        mounts.append(
            MountInfo(
                source=unescape(parts[sep + 2]),
                target=unescape(parts[4]),
                fstype=parts[sep + 1],
                options=parts[5].split(","),
                mount_id=int(parts[0]),
                parent_id=int(parts[1]),
                super_options=parts[sep + 3].split(",") if len(parts) > sep + 3 else [],
                root=unescape(parts[3]),
            )
        )
    return mounts


def list_mounts() -> list[MountInfo]:
    """Every mount this process sees, in mount order (later mounts cover earlier ones)."""
    with open(MOUNTINFO, encoding="utf-8", errors="surrogateescape") as f:
        return parse_mountinfo(f.read())


def _real(path: PathLike) -> str:
    return os.path.realpath(os.fspath(path))


def find_mount(path: PathLike) -> MountInfo:
    """The mount that holds ``path`` (which need not exist yet: its nearest parent is used)."""
    real = _real(path)
    best: MountInfo | None = None
    for m in list_mounts():
        t = m.target
        inside = real == t or t == "/" or real.startswith(t.rstrip("/") + "/")
        # ">=": a later mount on the same directory covers the earlier one
        if inside and (best is None or len(t) >= len(best.target)):
            best = m
    if best is None:  # pragma: no cover - "/" is always mounted
        raise MountError(f"no mount holds {path}")
    return best


def is_mountpoint(path: PathLike) -> bool:
    """True when something is mounted exactly on ``path`` (bind mounts included)."""
    real = _real(path)
    return any(m.target == real for m in list_mounts())


def _explain(source: str, target: str, action: str) -> Callable[[Completed], ToolError | None]:
    def explain(done: Completed) -> ToolError | None:
        text = done.stderr
        lowered = text.lower()
        kw: dict[str, Any] = {"program": action, "returncode": done.returncode, "stderr": text}
        if "mount point does not exist" in lowered:
            return MountError(
                f"cannot mount {source}: the directory {target} does not exist",
                hint="create the mount directory first",
                **kw,
            )
        if "mount point is not a directory" in lowered:
            return MountError(f"cannot mount {source}: {target} is not a directory", **kw)
        if "special device" in lowered and "does not exist" in lowered:
            return MountError(
                f"cannot mount {source}: the device does not exist",
                hint="check the device name; a loop device may have been detached",
                **kw,
            )
        if "already mounted" in lowered or ("busy" in lowered and action == "mount"):
            return MountError(
                f"cannot mount {source} on {target}: it is already mounted",
                hint="unmount it first or use the existing mount",
                **kw,
            )
        if "wrong fs type" in lowered or "bad superblock" in lowered:
            return MountError(
                f"cannot mount {source} on {target}: wrong filesystem type, bad option "
                "or damaged filesystem",
                hint="check the filesystem type and options; 'dmesg' may say more",
                **kw,
            )
        if "must be superuser" in lowered or "permission denied" in lowered:
            return MountError(
                f"cannot {action} {target}: permission denied (needs root)",
                hint="run the console as root or through sudo",
                **kw,
            )
        if "target is busy" in lowered or "device is busy" in lowered:
            return MountError(
                f"{target} is busy: a process still uses it",
                hint="close files and shells inside it (see 'fuser -vm' or 'lsof'), "
                "or unmount lazily",
                **kw,
            )
        if "not mounted" in lowered or "no mount point specified" in lowered:
            return MountError(f"{target} is not mounted", **kw)
        return None

    return explain


def mount(
    source: str,
    target: PathLike,
    *,
    fstype: str | None = None,
    options: Sequence[str] = (),
    timeout: float = 30.0,
    secrets: Iterable[str] = (),
) -> None:
    """Mount ``source`` on the existing directory ``target``."""
    args = ["mount"]
    if fstype:
        args += ["-t", fstype]
    if options:
        args += ["-o", ",".join(options)]
    args += [source, str(target)]
    run(
        args,
        timeout=timeout,
        secrets=secrets,
        explain=_explain(source, str(target), "mount"),
    )


def umount(target: PathLike, *, lazy: bool = False, timeout: float = 30.0) -> None:
    """Unmount ``target``. ``lazy=True`` detaches it now and frees it when no longer used."""
    args = ["umount"]
    if lazy:
        args.append("--lazy")
    args.append(str(target))
    run(args, timeout=timeout, explain=_explain(str(target), str(target), "umount"))


#: ntfs-3g options for a backup's NTFS volume. ``ro`` is what makes ntfs-3g accept a
#: volume Windows left hibernated or with an unclean journal (it never replays or
#: removes anything read-only; ``remove_hiberfile`` would write, so it is never used).
#: Without a user mapping every file shows as root's; fmask/dmask give 0644/0755
#: instead of ntfs-3g's default 0777, so an extracted file is not world-writable.
#: Alternate data streams appear as ``user.<stream>`` xattrs; the security descriptor,
#: DOS attributes and Windows times are readable by name as ``system.ntfs_acl``,
#: ``system.ntfs_attrib`` and ``system.ntfs_times`` (ntfs-3g does not list them).
NTFS_OPTIONS = (
    "ro",
    "nosuid",
    "nodev",
    "noexec",
    "streams_interface=xattr",
    "uid=0",
    "gid=0",
    "fmask=0133",
    "dmask=0022",
)
#: the xattrs ntfs-3g answers by name only (listxattr does not show them)
NTFS_XATTRS = ("system.ntfs_acl", "system.ntfs_attrib", "system.ntfs_times")


def mount_ntfs(device: str, target: PathLike, *, timeout: float = 60.0) -> None:
    """Mount the NTFS volume on ``device`` read-only through ntfs-3g (FUSE)."""
    which("ntfs-3g")  # ToolMissing names the package before mount says "unknown type"
    run(
        ["mount", "-t", "ntfs-3g", "-o", ",".join(NTFS_OPTIONS), device, str(target)],
        timeout=timeout,
        explain=_explain_ntfs(device, str(target)),
    )


def _explain_ntfs(device: str, target: str) -> Callable[[Completed], ToolError | None]:
    generic = _explain(device, target, "mount")

    def explain(done: Completed) -> ToolError | None:
        lowered = done.stderr.lower()
        kw: dict[str, Any] = {
            "program": "ntfs-3g",
            "returncode": done.returncode,
            "stderr": done.stderr,
        }
        if "hibernat" in lowered or "unsafe state" in lowered or "unclean" in lowered:
            return MountError(
                f"ntfs-3g refuses the NTFS volume on {device}: Windows left it hibernated "
                "or not cleanly shut down",
                hint="restore the whole disk and let Windows boot it, or run chkdsk on a "
                "restored copy; the backup itself is never changed",
                **kw,
            )
        if "mftmirr" in lowered or "not a valid ntfs" in lowered or "corrupt" in lowered:
            return MountError(
                f"ntfs-3g cannot read the NTFS volume on {device}: it is damaged "
                f"({_ntfs_reason(done.stderr)})",
                hint="restore the whole disk and run chkdsk on the copy inside Windows",
                **kw,
            )
        if "fuse" in lowered and ("not found" in lowered or "no such" in lowered):
            return MountError(
                f"cannot mount the NTFS volume on {device}: FUSE is not available here",
                hint="load the fuse module (modprobe fuse) or install fuse3",
                **kw,
            )
        return generic(done)

    return explain


def _ntfs_reason(stderr: str) -> str:
    """ntfs-3g's own finding: the line before its "Failed to mount" (the rest of its
    output is advice about chkdsk and FakeRAID)."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for index, line in enumerate(lines):
        if line.startswith("Failed to mount"):
            return lines[index - 1] if index else line
    return first_error_line(stderr)
