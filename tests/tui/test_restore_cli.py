"""`sendense restore mount|ls|find|extract|unmount` and `sendense export start|list|stop`
on a real backup: each command is its own engine (as from a shell)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from engine.catalog import Catalog
from engine.catalog.restore import RestoreStore
from engine.clock import FixedClock
from engine.config import sqlite_url
from engine.owners import HOST
from sendense_tui.cli import main
from tests.engine.fsimages import Part, backup_chain, build_disk, loops_on, mounts_under

pytestmark = pytest.mark.root
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def point(tmp_path: Path) -> int:
    raw = build_disk(tmp_path / "disk.raw", [Part("ext4", 16, {"etc/motd": b"hello\n"})])
    catalog = Catalog(sqlite_url(tmp_path / "state" / "catalog.db")).open()
    (tmp_path / "repo").mkdir()
    try:
        return backup_chain(catalog, tmp_path / "repo", [raw], now=FixedClock().now()).full_id
    finally:
        catalog.dispose()


def run(capsys: pytest.CaptureFixture[str], state: Path, *args: str) -> object:
    code = main(["--state-dir", str(state), *args, "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    return json.loads(out.out)


def test_restore_commands_mount_browse_extract_unmount(
    tmp_path: Path, point: int, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    try:
        mounted = run(capsys, state, "restore", "mount", str(point))
        assert isinstance(mounted, dict)
        mount_id = str(mounted["id"])
        assert [f["fs_type"] for f in mounted["filesystems"]] == ["ext4"]
        again = run(capsys, state, "restore", "mount", str(point))
        assert isinstance(again, dict) and again["reused"] and again["id"] == mounted["id"]

        listing = run(capsys, state, "restore", "ls", mount_id, "p1/etc")
        assert [(e["name"], e["size"]) for e in listing] == [("motd", 6)]  # type: ignore[index,union-attr]
        found = run(capsys, state, "restore", "find", mount_id, "MOTD")
        assert [e["path"] for e in found] == ["p1/etc/motd"]  # type: ignore[index,union-attr]
        result = run(
            capsys, state, "restore", "extract", mount_id, "p1/etc", "--to", str(tmp_path / "out")
        )
        assert isinstance(result, dict) and result["files"] == 1
        assert (tmp_path / "out" / "etc" / "motd").read_bytes() == b"hello\n"
        # it ran as the restore.files job: `jobs list` shows it, `jobs cancel` could stop it
        jobs = run(capsys, state, "jobs", "list")
        assert [(j["id"], j["kind"], j["state"]) for j in jobs] == [  # type: ignore[index,union-attr]
            (result["job_id"], "restore.files", "succeeded")
        ]
        # again: everything already exists and is skipped; a script must not read success
        again_args = ["restore", "extract", mount_id, "p1/etc", "--to", str(tmp_path / "out")]
        assert main(["--state-dir", str(state), *again_args]) == 1
        out = capsys.readouterr().out
        assert "restored 0 files" in out and "not restored etc/motd: already exists" in out

        assert main(["--state-dir", str(state), "restore", "ls", mount_id, "p1/../.."]) == 2
        assert "'..'" in capsys.readouterr().err

        run(capsys, state, "restore", "unmount", mount_id)
        assert mounts_under(tmp_path) == []
        assert loops_on(tmp_path) == []
    finally:
        main(["--state-dir", str(state), "restore", "unmount", "1"])


def test_export_commands(tmp_path: Path, point: int, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "state"
    try:
        started = run(capsys, state, "export", "start", str(point), "--name", "motd")
        assert isinstance(started, dict)
        assert started["uri"].startswith("nbd+unix:///motd?socket=")
        info = subprocess.run(
            ["qemu-img", "info", "--output=json", started["uri"]],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        assert json.loads(info.stdout)["virtual-size"] == (tmp_path / "disk.raw").stat().st_size
        listed = run(capsys, state, "export", "list")
        assert [e["uri"] for e in listed] == [started["uri"]]  # type: ignore[index,union-attr]
        stopped = run(capsys, state, "export", "stop", "motd")
        assert isinstance(stopped, dict) and stopped["state"] == "stopped"
        assert run(capsys, state, "export", "list") == []
    finally:
        main(["--state-dir", str(state), "export", "stop", "motd"])


#: file names a guest can give its files, each trying to fool a listing or a terminal
CRAFTED = {
    "evil\nfile  0640  6B  2023-11-14 00:00  forged-line": "evil\\nfile  0640",
    "\x1b[2Jwipe": "\\x1b[2Jwipe",
    "cr\rhidden": "cr\\rhidden",
    "bad\udcffbyte": "bad\\xffbyte",  # the byte 0xff: not UTF-8
    "bidi\u202etxt.exe": "bidi\\u202etxt.exe",
    "csi\x9b31m": "csi\\x9b31m",
}


def test_crafted_file_names_cannot_forge_lines_or_send_escapes(tmp_path: Path) -> None:
    """A guest's file names, listed by a real `sendense` process: one row per file,
    every control character shown as an escape, and stdout stays valid UTF-8 even
    for a name that is not (printing it raw would end in a traceback)."""
    files: dict[str, bytes | None] = {"etc": None}
    files.update({f"etc/{name}": b"x" for name in CRAFTED})
    raw = build_disk(tmp_path / "disk.raw", [Part("ext4", 16, files)])  # type: ignore[arg-type]
    state = tmp_path / "state"
    catalog = Catalog(sqlite_url(state / "catalog.db")).open()
    (tmp_path / "repo").mkdir()
    try:
        point = backup_chain(catalog, tmp_path / "repo", [raw], now=FixedClock().now()).full_id
    finally:
        catalog.dispose()

    def sendense(*args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [sys.executable, "-m", "sendense_tui.cli", "--state-dir", str(state), *args],
            capture_output=True,
            timeout=120,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
        )

    mounted = sendense("restore", "mount", str(point), "--json")
    assert mounted.returncode == 0, mounted.stderr
    mount_id = str(json.loads(mounted.stdout)["id"])
    try:
        listing = sendense("restore", "ls", mount_id, "p1/etc")
        assert listing.returncode == 0, listing.stderr
        text = listing.stdout.decode("utf-8")  # strict: no raw undecodable byte
        lines = text.splitlines()
        assert len(lines) == 1 + len(CRAFTED)  # the header and one row per file
        assert not any(c in text for c in ("\x1b", "\r", "\x9b", "\u202e"))
        for shown in CRAFTED.values():
            assert sum(shown in line for line in lines) == 1, shown
        # the would-be forged row is part of its file's row, not a row of its own
        assert [line for line in lines if "forged-line" in line] == [
            line for line in lines if "evil\\nfile" in line
        ]

        found = sendense("restore", "find", mount_id, "*")
        assert found.returncode == 0, found.stderr
        found_text = found.stdout.decode("utf-8")
        assert not any(c in found_text for c in ("\x1b", "\r", "\x9b", "\u202e"))
        assert "p1/etc/\\x1b[2Jwipe" in found_text

        as_json = sendense("restore", "ls", mount_id, "p1/etc", "--json")
        assert not any(c in as_json.stdout for c in (b"\x1b", b"\r", b"\xc2\x9b", b"\xff"))
        names = {e["name"] for e in json.loads(as_json.stdout)}
        assert names == set(CRAFTED)  # scripts get the names back exactly
    finally:
        sendense("restore", "unmount", mount_id)


def test_a_disk_restore_still_tears_down_a_mount_a_crashed_engine_left(
    tmp_path: Path, point: int, capsys: pytest.CaptureFixture[str]
) -> None:
    """`restore disk` builds neither the mount nor the export service when nothing was
    left behind; a restore mount whose engine died (a live row, its directory under the
    restore root) is still torn down at its start, as by any command that writes, and
    the disk is restored all the same."""
    state = tmp_path / "state"
    base = state / "restore" / "m7"
    base.mkdir(parents=True)
    catalog = Catalog(sqlite_url(state / "catalog.db")).open()
    try:
        now = FixedClock().now()
        RestoreStore(catalog).add_mount(
            backup_id=point,
            state="mounted",
            base_dir=str(base),
            owner=f"{HOST}:{os.getpid()}:crashed",  # this process, no engine of it alive
            created_at=now,
            last_used_at=now,
            expires_at=now + timedelta(days=1),
        )
    finally:
        catalog.dispose()
    out = tmp_path / "disk.out"
    result = run(capsys, state, "restore", "disk", str(point), str(out))
    assert isinstance(result, dict) and result["state"] == "succeeded"
    assert out.read_bytes() == (tmp_path / "disk.raw").read_bytes()
    catalog = Catalog(sqlite_url(state / "catalog.db")).open()
    try:
        assert RestoreStore(catalog).mounts() == []
    finally:
        catalog.dispose()
    assert not base.exists()
