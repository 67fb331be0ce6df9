"""engine.tools.lvm: how the guest's LVM report becomes pieces of the disk, and the
device-mapper table made of them. The report rows here are what a hostile or
damaged guest can make ``lvs`` say; the real ``lvs`` runs in test_file_restore_guests."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from engine.tools import lvm
from engine.tools.lvm import Piece

MiB = 1024 * 1024
DEV = "/dev/loop9p2"


def row(
    ranges: str, start: int = 0, segtype: str = "linear", size: int = 8 * MiB
) -> dict[str, str]:
    return {
        "vg_name": "vg0",
        "lv_name": "home",
        "lv_size": str(size),
        "segtype": segtype,
        "seg_start_pe": str(start),
        "seg_pe_ranges": ranges,
        "vg_extent_size": str(MiB),
    }


def test_segments_in_logical_order_become_pieces_and_adjacent_ones_join() -> None:
    rows = [row(f"{DEV}:20-23", start=4), row(f"{DEV}:0-3", start=0), row(f"{DEV}:24-27", 8)]
    volume = lvm._volume("vg0", "home", rows, DEV, pe_start=MiB)
    assert volume.linear and volume.label == "lv vg0/home"
    assert volume.pieces == (Piece(MiB, 4 * MiB), Piece(21 * MiB, 8 * MiB))


@pytest.mark.parametrize(
    "ranges",
    [
        "/dev/loop3:0-7",  # another device: a VG across disks
        "[unknown]:0-7",  # a missing PV
        f"{DEV}:0-3 {DEV}:8-11",  # two stripes
        f"{DEV}:x-7",
        f"{DEV}:7",
        "",
    ],
)
def test_pieces_not_on_this_device_or_unreadable_are_never_mapped(ranges: str) -> None:
    volume = lvm._volume("vg0", "home", [row(ranges)], DEV, pe_start=MiB)
    assert volume.elsewhere and not volume.linear and volume.pieces == ()


def test_a_non_linear_segment_makes_the_volume_non_linear() -> None:
    rows = [row(f"{DEV}:0-3"), row(f"{DEV}:4-7", start=4, segtype="thin")]
    volume = lvm._volume("vg0", "home", rows, DEV, pe_start=MiB)
    assert volume.segtype == "thin" and not volume.linear


def test_private_config_sees_one_device_and_keeps_no_archive() -> None:
    cfg = lvm.private_config(DEV)
    assert f'filter = [ "a|^{DEV}$|", "r|.*|" ]' in cfg
    assert f'global_filter = [ "a|^{DEV}$|", "r|.*|" ]' in cfg
    assert "use_devicesfile = 0" in cfg and "backup = 0 archive = 0" in cfg


def test_dm_table_with_a_recording_dmsetup_double(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A double at the edge of this machine (it may have no device-mapper): a
    ``dmsetup`` that records its arguments and the table it is given."""
    record = tmp_path / "record"
    fake = tmp_path / "bin" / "dmsetup"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\necho "$@" > {record}.args\ncat > {record}.table\n')
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    path = lvm.dm_create_linear("sendense-abc-1", DEV, (Piece(MiB, 4 * MiB), Piece(21 * MiB, MiB)))
    assert path == "/dev/mapper/sendense-abc-1"
    args = (tmp_path / "record.args").read_text().split()
    assert args == ["--noudevsync", "--noudevrules", "create", "--readonly", "sendense-abc-1"]
    assert (tmp_path / "record.table").read_text().splitlines() == [
        f"0 8192 linear {DEV} 2048",
        f"8192 2048 linear {DEV} 43008",
    ]


def test_without_dmsetup_nothing_is_mapped_and_nothing_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An appliance without dmsetup: teardown finds no mapping of ours (it must not
    fail every unmount), and a volume in pieces is told why it is not read."""
    monkeypatch.setattr("engine.tools.base.SBIN_PATH", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))
    assert lvm.dm_names(lvm.DM_PREFIX) == []
    missing = lvm.dm_missing()
    # (a kernel without device-mapper at all says that first)
    assert missing is not None
    assert "apt-get install dmsetup" in missing or "no device-mapper" in missing
