"""What an API token may name on the appliance: paths inside the directories its
administrator opened to tokens (``[api] source_roots`` for what a backup reads,
``[api] repository_roots`` for where a repository keeps its files).

The daemon runs as root: a path a token names is read or written with root's
rights, so a path outside the roots would let a token reach any file of the
appliance. Root on the unix socket is not bound by the roots. Sendense's own
files (its state directory with the catalog and the key that encrypts CIFS
passwords, its configuration, its TLS key) are closed to tokens even inside a
root: an administrator who opens /var/lib opens no secret of Sendense's.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path

from engine.config import Settings

#: the end of a refusal of one of Sendense's own files
OWN_FILES = (
    "Sendense's own files (its state directory, mounts, configuration and TLS key) "
    "are never open to tokens"
)


#: the end of a refusal of a block device the appliance itself uses
IN_USE = (
    "it is a block device the appliance itself uses (a mounted filesystem or swap is on "
    "it), never open to tokens"
)


def within(path: str, roots: Sequence[Path]) -> bool:
    """Whether the normalised absolute ``path`` is a root or lies under one."""
    return any(path == str(root) or path.startswith(str(root).rstrip("/") + "/") for root in roots)


def reaches(text: str, roots: Sequence[Path], *, devices: bool = False) -> bool:
    """Whether a token may name ``text``: absolute, no ``..`` part, inside a root as
    written and once its symbolic links are followed (a path that does not exist yet
    is followed as far as it exists). ``devices``: a link may also lead to a block
    device (LVM's /dev/VG/LV are links to /dev/dm-N). Whoever may write in a root
    decides what tokens reach through it."""
    if not (os.path.isabs(text) and ".." not in text.split("/")):
        return False
    if not within(os.path.normpath(text), roots):
        return False
    real = os.path.realpath(text)
    if real == os.path.normpath(text):  # no link on the way
        return True
    if devices and _block_device(real) is not None:
        return True
    return within(real, [Path(os.path.realpath(r)) for r in roots])


def _block_device(path: str) -> int | None:
    """The device number of the block device at ``path``, None if it is none."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_rdev if stat.S_ISBLK(info.st_mode) else None


#: where the kernel says what it has mounted and swaps on
MOUNTINFO = Path("/proc/self/mountinfo")
SWAPS = Path("/proc/swaps")
SYS_DEV_BLOCK = Path("/sys/dev/block")


def device_key(dev: int) -> str:
    return f"{os.major(dev)}:{os.minor(dev)}"


def _devices_in_use() -> set[str] | None:
    """MAJ:MIN of every block device a mounted filesystem or a swap area is on; None
    when the mount table cannot be read (then no device counts as free)."""
    used: set[str] = set()
    try:
        mounts = MOUNTINFO.read_text().splitlines()
    except OSError:
        return None
    for line in mounts:
        fields = line.split()
        if len(fields) > 2:
            used.add(fields[2])
        # btrfs reports an anonymous 0:N above: its source names the device
        source = fields[fields.index("-") + 2] if "-" in fields[:-2] else ""
        if source.startswith("/dev/") and (dev := _block_device(source)) is not None:
            used.add(device_key(dev))
    try:
        swaps = SWAPS.read_text().splitlines()[1:]
    except OSError:
        swaps = []  # a kernel without swap
    for line in swaps:
        device = line.split()[0] if line.split() else ""
        if (dev := _block_device(device.replace("\\040", " "))) is not None:
            used.add(device_key(dev))
    return used


def devices_built_on(key: str, depth: int = 0) -> set[str]:
    """A block device and every device built on it: its partitions and what holds it
    (device-mapper volumes, md arrays), and theirs in turn."""
    found = {key}
    node = SYS_DEV_BLOCK / key
    if depth > 8 or not node.exists():
        return found
    above = [c for c in node.iterdir() if (c / "partition").exists()]
    with_holders = node / "holders"
    if with_holders.is_dir():
        above += list(with_holders.iterdir())
    for child in above:
        try:
            child_key = (child / "dev").read_text().strip()
        except OSError:
            continue
        found |= devices_built_on(child_key, depth + 1)
    return found


def device_in_use(path: str) -> bool:
    """Whether the block device ``path`` leads to carries something the appliance
    runs on: a mounted filesystem (its root disk, the state directory's) or a swap
    area, on the device itself or on a partition or volume built on it. A VM's
    volume is not mounted on the appliance that backs it up."""
    dev = _block_device(os.path.realpath(path))
    if dev is None:
        return False
    used = _devices_in_use()
    return used is None or bool(devices_built_on(device_key(dev)) & used)


def own_files(settings: Settings) -> tuple[Path, ...]:
    """What no token reaches, whatever the roots say."""
    paths = [
        settings.state_dir,
        settings.mount_root,  # network repositories and restore mounts
        settings.source,
        settings.api.tls_key,
        settings.api_socket,  # an nbd+unix:// source's socket must not be the API's
    ]
    return tuple(p for p in paths if p is not None)


def why_not(
    text: str, roots: Sequence[Path], closed: Sequence[Path] = (), *, devices: bool = False
) -> str | None:
    """Why a token may not name ``text`` (the end of a sentence), or None when it may."""
    if os.path.isabs(text) and (
        within(os.path.normpath(text), closed)
        or within(os.path.realpath(text), [Path(os.path.realpath(c)) for c in closed])
    ):
        return OWN_FILES
    if not reaches(text, roots, devices=devices):
        return roots_sentence(roots)
    if devices and device_in_use(text):
        return IN_USE
    return None


def roots_sentence(roots: Sequence[Path]) -> str:
    """The end of a refusal: what is open to tokens, in words."""
    if not roots:
        return "no path of the appliance is open to tokens"
    return f"only paths inside {', '.join(str(r) for r in roots)} are open to tokens"
