"""`sendense restore mount` and `ls` on a disk holding LVM volumes: each volume is
listed as VG-LV with what it is, in text and in JSON (the real CLI, its own engine)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.catalog import Catalog
from engine.clock import FixedClock
from engine.config import sqlite_url
from sendense_tui.cli import main
from tests.engine.fsimages import Part, backup_chain, loops_on, mounts_under
from tests.engine.lvmimages import Volume, build_lvm_disk

pytestmark = pytest.mark.root


def test_lvm_volumes_are_listed_by_the_cli_like_partitions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = build_lvm_disk(
        tmp_path / "lvm.raw",
        "vg0",
        [
            Volume("home", Part("ext4", 8, {"ann/a.txt": b"a\n"})),
            Volume("srv", Part("xfs", 30, {"www/i.html": b"<h1>"})),
        ],
    )
    state = tmp_path / "state"
    catalog = Catalog(sqlite_url(state / "catalog.db")).open()
    (tmp_path / "repo").mkdir()
    try:
        point = backup_chain(catalog, tmp_path / "repo", [raw], now=FixedClock().now()).full_id
    finally:
        catalog.dispose()
    try:
        assert main(["--state-dir", str(state), "restore", "mount", str(point)]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert [line.split()[:5] for line in lines[1:]] == [
            ["vg0-home", "lv", "vg0/home", "(ext4)", "mounted"],
            ["vg0-srv", "lv", "vg0/srv", "(xfs)", "mounted"],
        ]
        assert main(["--state-dir", str(state), "restore", "ls", "1", "--json"]) == 0
        top = json.loads(capsys.readouterr().out)
        assert [(e["name"], e["kind"]) for e in top] == [("vg0-home", "dir"), ("vg0-srv", "dir")]
        assert main(["--state-dir", str(state), "restore", "mounts", "--json"]) == 0
        shown = json.loads(capsys.readouterr().out)[0]["filesystems"]
        assert [(f["name"], f["volume"]) for f in shown] == [
            ("vg0-home", "lv vg0/home"),
            ("vg0-srv", "lv vg0/srv"),
        ]
        assert main(["--state-dir", str(state), "restore", "ls", "1", "vg0-srv/www"]) == 0
        assert "i.html" in capsys.readouterr().out
    finally:
        main(["--state-dir", str(state), "restore", "unmount", "1"])
    assert mounts_under(tmp_path) == [] and loops_on(tmp_path) == []
