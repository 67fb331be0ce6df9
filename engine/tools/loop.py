"""Loop devices: attach an image file as a block device, list, detach, probe.

Note (measured on the project's kernel): ``losetup -P`` makes no partition nodes;
call ``partx_add`` after attaching (it works: devtmpfs makes ``/dev/loopNpM``), or
mount a partition through ``offset``. Partitions added by partx outlive
``losetup -d`` and block the next partx on that device, so ``detach`` removes them
first and ``partx_add`` clears stale ones before adding.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.tools.base import Completed, ToolError, run
from engine.tools.partitions import probe as _probe

PathLike = str | Path

TIMEOUT = 30.0
_DELETED = " (deleted)"


class LoopError(ToolError):
    """losetup, partx or blkid failed."""


@dataclass(frozen=True)
class LoopDevice:
    device: str
    backing_file: str
    read_only: bool
    offset: int = 0
    sizelimit: int = 0
    #: the backing file was deleted while attached
    deleted: bool = False
    autoclear: bool = False


def _explain(what: str) -> Callable[[Completed], ToolError | None]:
    def explain(done: Completed) -> ToolError | None:
        text = done.stderr.strip()
        kw: dict[str, Any] = {
            "program": done.args[0],
            "returncode": done.returncode,
            "stderr": done.stderr,
        }
        reason = text.rsplit(": ", 1)[-1] if text else f"exit code {done.returncode}"
        if "No such file or directory" in text:
            return LoopError(f"cannot {what}: it does not exist", **kw)
        if "No such device" in text:
            return LoopError(f"cannot {what}: the loop device is not attached", **kw)
        if "Permission denied" in text or "Operation not permitted" in text:
            return LoopError(f"cannot {what}: permission denied (needs root)", **kw)
        if "busy" in text.lower():
            return LoopError(
                f"cannot {what}: the device is busy",
                hint="unmount what is mounted from it first",
                **kw,
            )
        return LoopError(f"cannot {what}: {reason}", **kw)

    return explain


def attach(
    path: PathLike,
    *,
    read_only: bool = True,
    partscan: bool = False,
    offset: int | None = None,
    sizelimit: int | None = None,
) -> str:
    """Attach ``path`` to the first free loop device and return its name (``/dev/loopN``)."""
    args = ["losetup", "--find", "--show"]
    if read_only:
        args.append("--read-only")
    if partscan:
        args.append("--partscan")
    if offset is not None:
        args += ["--offset", str(int(offset))]
    if sizelimit is not None:
        args += ["--sizelimit", str(int(sizelimit))]
    args.append(str(path))
    done = run(args, timeout=TIMEOUT, explain=_explain(f"attach {path} to a loop device"))
    return done.stdout.strip()


def detach(device: str) -> None:
    """Detach a loop device (the kernel frees it once nothing uses it)."""
    if partitions(device):
        run(["partx", "--delete", device], timeout=TIMEOUT, check=False)
    run(["losetup", "--detach", device], timeout=TIMEOUT, explain=_explain(f"detach {device}"))


def list_devices() -> list[LoopDevice]:
    """Every attached loop device."""
    done = run(
        ["losetup", "--json", "--list", "-O", "NAME,BACK-FILE,RO,OFFSET,SIZELIMIT,AUTOCLEAR"],
        timeout=TIMEOUT,
        explain=_explain("list loop devices"),
    )
    if not done.stdout.strip():
        return []
    devices = []
    for d in json.loads(done.stdout).get("loopdevices", []):
        back = str(d.get("back-file") or "")
        deleted = back.endswith(_DELETED)
        if deleted:
            back = back[: -len(_DELETED)]
        devices.append(
            LoopDevice(
                device=str(d["name"]),
                backing_file=back,
                read_only=_flag(d.get("ro")),
                offset=int(d.get("offset") or 0),
                sizelimit=int(d.get("sizelimit") or 0),
                deleted=deleted,
                autoclear=_flag(d.get("autoclear")),
            )
        )
    return devices


def _flag(value: object) -> bool:
    return value in (True, 1, "1", "true")


def devices_for(path: PathLike) -> list[LoopDevice]:
    """Loop devices whose backing file is ``path``."""
    real = os.path.realpath(os.fspath(path))
    return [d for d in list_devices() if os.path.realpath(d.backing_file) == real]


def partitions(device: str) -> list[str]:
    """The partition devices the kernel knows for ``device`` (``/dev/loop0p1`` …)."""
    name = Path(device).name
    sys_dir = Path("/sys/block") / name
    if not sys_dir.is_dir():
        return []
    parts = [p.name for p in sys_dir.iterdir() if p.name.startswith(name + "p")]
    return [f"/dev/{p}" for p in sorted(parts, key=lambda p: int(p[len(name) + 1 :] or 0))]


def partx_add(device: str) -> list[str]:
    """Create the partition nodes (``/dev/loopNpM``) of an attached disk image; return them."""
    if partitions(device):  # stale ones from an earlier image on the same device
        run(["partx", "--delete", device], timeout=TIMEOUT, check=False)
    run(
        ["partx", "--add", device],
        timeout=TIMEOUT,
        explain=_explain(f"read partitions of {device}"),
    )
    return partitions(device)


def blkid(device: PathLike) -> dict[str, str]:
    """What is on a device or image (TYPE, UUID, LABEL, …); empty when nothing is recognised.

    The same probe file-level restore uses (engine.tools.partitions.probe)."""
    return _probe(device)
