"""LVM volumes inside a guest's disk, read without touching the host's LVM.

Reading: ``lvm lvs``/``lvm pvs`` with ``--readonly`` (no locks, no metadata
written) and a ``--config`` that accepts only the one device of the backup
(``filter`` and ``global_filter``), ignores the host's devices file and hints,
and keeps no backup or archive of the guest's metadata in /etc/lvm.

Mapping: the guest's volume group is never activated through LVM. Activation
would register the guest's VG on the appliance (a host VG of the same name would
clash, and the host's LVM would own its deactivation); instead a logical volume is
read from its place on the disk: one stored in a single piece is an offset
read-only loop device (no device-mapper needed); one stored in several pieces is a
read-only device-mapper ``linear`` table under a name of our own
(``dmsetup create --readonly``), which unmount and the next start after a crash
remove by that name. Striped, mirrored, thin and cached volumes are listed as not
supported.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from engine.tools.base import Completed, ToolError, ToolMissing, first_error_line, run, which

TIMEOUT = 30.0
SECTOR = 512
#: prefix of every device-mapper name Sendense creates (followed by a mount's tag)
DM_PREFIX = "sendense-"


class LvmError(ToolError):
    """The guest's LVM metadata could not be read, or a mapping could not be made."""


@dataclass(frozen=True)
class Piece:
    #: bytes from the start of the physical volume's device
    offset: int
    size: int


@dataclass(frozen=True)
class LogicalVolume:
    vg: str
    name: str
    size: int
    #: linear | striped | thin | raid1 | ... (the first non-linear one when mixed)
    segtype: str
    #: where its bytes are on the physical volume, in the volume's order
    pieces: tuple[Piece, ...]
    #: a piece lies on another physical volume (not in this disk) or is missing
    elsewhere: bool = False

    @property
    def label(self) -> str:
        return f"lv {self.vg}/{self.name}"

    @property
    def linear(self) -> bool:
        return self.segtype == "linear" and not self.elsewhere


def private_config(device: str) -> str:
    """An ``lvm --config`` that sees ``device`` only and writes nothing of its own."""
    # LVM's filters are regexes between delimiters: a device path holds no '|'
    accept = f'[ "a|^{device}$|", "r|.*|" ]'
    return (
        f"devices {{ filter = {accept} global_filter = {accept} use_devicesfile = 0 "
        'obtain_device_list_from_udev = 0 hints = "none" } '
        "backup { backup = 0 archive = 0 } "
        "activation { udev_sync = 0 udev_rules = 0 monitoring = 0 }"
    )


def _explain(what: str) -> Callable[[Completed], ToolError | None]:
    def explain(done: Completed) -> ToolError | None:
        return LvmError(
            f"cannot {what}: {first_error_line(done.stderr) or f'exit code {done.returncode}'}",
            program=done.args[0],
            returncode=done.returncode,
            stderr=done.stderr,
            hint="the volume group's metadata in the backup may be damaged",
        )

    return explain


def _report(device: str, args: list[str], key: str, what: str) -> tuple[list[dict[str, str]], str]:
    done = run(
        [
            "lvm",
            *args,
            "--readonly",
            "--config",
            private_config(device),
            "--reportformat",
            "json",
            "--units",
            "b",
            "--nosuffix",
        ],
        timeout=TIMEOUT,
        explain=_explain(what),
    )
    try:
        reports = json.loads(done.stdout)["report"]
    except (ValueError, KeyError, TypeError):
        raise LvmError(f"cannot {what}: lvm's report is not readable", program="lvm") from None
    return [row for report in reports for row in report.get(key, [])], done.stderr


def volumes(device: str) -> list[LogicalVolume]:
    """The logical volumes whose volume group has a physical volume on ``device``."""
    what = f"read the LVM metadata on {device}"
    pvs, warnings = _report(device, ["pvs", "-o", "pv_name,vg_name,pe_start"], "pv", what)
    if any(row.get("vg_name") == "[unknown]" for row in pvs):
        # lvm found the PV label but not the volume group's metadata after it
        raise LvmError(
            f"cannot {what}: {_metadata_problem(warnings)}",
            program="lvm",
            stderr=warnings,
            hint="restore the whole disk and repair the volume group on that copy; "
            "the backup itself is never changed",
        )
    starts = {row["pv_name"]: int(row["pe_start"] or 0) for row in pvs if row.get("vg_name")}
    if device not in starts:
        return []
    segs, _ = _report(
        device,
        [
            "lvs",
            "--segments",
            "-o",
            "vg_name,lv_name,lv_size,segtype,seg_start_pe,seg_pe_ranges,vg_extent_size",
        ],
        "seg",
        what,
    )
    grouped: dict[tuple[str, str], list[dict[str, str]]] = {}
    for row in segs:
        grouped.setdefault((row["vg_name"], row["lv_name"]), []).append(row)
    return [_volume(vg, name, rows, device, starts[device]) for (vg, name), rows in grouped.items()]


def _metadata_problem(warnings: str) -> str:
    for line in warnings.splitlines():
        text = line.strip().removeprefix("WARNING:").strip()
        if "metadata" in text and "repair" not in text and "vgck" not in text:
            return f"its metadata is damaged ({text.rstrip('.')})"
    return "its metadata is damaged or missing"


def _volume(
    vg: str, name: str, rows: list[dict[str, str]], device: str, pe_start: int
) -> LogicalVolume:
    rows = sorted(rows, key=lambda r: int(r.get("seg_start_pe") or 0))
    extent = int(rows[0].get("vg_extent_size") or 0)
    segtype = next((r["segtype"] for r in rows if r["segtype"] != "linear"), "linear")
    pieces: list[Piece] = []
    elsewhere = False
    for row in rows:
        ranges = str(row.get("seg_pe_ranges") or "").split()
        pv, _, span = ranges[0].rpartition(":") if len(ranges) == 1 else ("", "", "")
        first, _, last = span.partition("-")
        if pv != device or not first.isdigit() or not last.isdigit():
            elsewhere = True
            continue
        offset = pe_start + int(first) * extent
        pieces.append(Piece(offset, (int(last) - int(first) + 1) * extent))
    return LogicalVolume(
        vg=vg,
        name=name,
        size=int(rows[0].get("lv_size") or 0),
        segtype=segtype,
        pieces=_joined(pieces),
        elsewhere=elsewhere,
    )


def _joined(pieces: list[Piece]) -> tuple[Piece, ...]:
    """Adjacent pieces as one (a volume extended in place is still one piece)."""
    out: list[Piece] = []
    for piece in pieces:
        if out and out[-1].offset + out[-1].size == piece.offset:
            out[-1] = Piece(out[-1].offset, out[-1].size + piece.size)
        else:
            out.append(piece)
    return tuple(out)


# -- device-mapper -----------------------------------------------------------------


def dm_missing() -> str | None:
    """A sentence when this kernel has no usable device-mapper, else None."""
    if not Path("/dev/mapper/control").exists():
        return "this machine's kernel has no device-mapper (/dev/mapper/control is missing)"
    try:
        done = run(["dmsetup", "version"], timeout=TIMEOUT, check=False)
    except ToolMissing:
        return "dmsetup is not installed here (apt-get install dmsetup)"
    if done.returncode == 0:
        return None
    if "open failed" in done.stderr or "failure to communicate" in done.stderr.lower():
        return "this machine's kernel has no device-mapper driver (dmsetup cannot reach it)"
    return f"device-mapper does not answer here: {done.stderr.strip() or done.returncode}"


def dm_create_linear(name: str, device: str, pieces: tuple[Piece, ...]) -> str:
    """Map ``pieces`` of ``device`` one after the other as a read-only device; its path."""
    lines = []
    position = 0
    for piece in pieces:
        sectors = piece.size // SECTOR
        lines.append(f"{position} {sectors} linear {device} {piece.offset // SECTOR}")
        position += sectors
    run(
        ["dmsetup", "--noudevsync", "--noudevrules", "create", "--readonly", name],
        input_text="\n".join(lines) + "\n",
        timeout=TIMEOUT,
        explain=_dm_explain(f"map the logical volume as {name}"),
    )
    return dm_path(name)


def dm_path(name: str) -> str:
    return f"/dev/mapper/{name}"


def dm_names(prefix: str) -> list[str]:
    """Device-mapper devices whose name starts with ``prefix``."""
    if not os.path.exists("/dev/mapper/control"):
        return []
    try:
        which("dmsetup")
    except ToolMissing:
        return []  # no dmsetup: nothing of ours was ever mapped here
    done = run(
        ["dmsetup", "ls"], timeout=TIMEOUT, check=False, explain=_dm_explain("list dm devices")
    )
    if done.returncode != 0:
        return []
    names = [line.split()[0] for line in done.stdout.splitlines() if line.strip()]
    return [n for n in names if n.startswith(prefix)]


def dm_remove(name: str) -> None:
    run(
        ["dmsetup", "--noudevsync", "--noudevrules", "remove", "--retry", name],
        timeout=TIMEOUT,
        explain=_dm_explain(f"remove the device-mapper device {name}"),
    )


def _dm_explain(what: str) -> Callable[[Completed], ToolError | None]:
    def explain(done: Completed) -> ToolError | None:
        text = done.stderr.lower()
        hint = None
        if "busy" in text:
            hint = "something still uses it: unmount what is mounted from it first"
        return LvmError(
            f"cannot {what}: {first_error_line(done.stderr) or f'exit code {done.returncode}'}",
            program="dmsetup",
            returncode=done.returncode,
            stderr=done.stderr,
            hint=hint,
        )

    return explain
