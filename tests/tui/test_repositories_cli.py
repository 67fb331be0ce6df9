"""`sendense repo list|add|show|test|remove`, text and --json."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.plugins.loopfs import LoopFsFactory

MiB = 1024 * 1024

ROOT = Path(__file__).resolve().parents[2]


def cli(
    state: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sendense_tui.cli", *args, "--state-dir", str(state)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
    )


def test_add_list_show_test_remove(tmp_path: Path) -> None:
    state = tmp_path / "state"
    target = tmp_path / "repo1"
    done = cli(state, "repo", "add", "r1", "--path", str(target), "--create")
    assert done.returncode == 0, done.stderr
    assert "ok  write: wrote, fsynced, read back and removed" in done.stdout
    assert "repository r1 saved" in done.stdout

    # a fresh state directory also gets the embedded default "local" repository
    listed = {r["name"]: r for r in json.loads(cli(state, "repo", "list", "--json").stdout)}
    assert sorted(listed) == ["local", "r1"]
    assert listed["local"]["path"] == str(state / "repository")
    assert (listed["r1"]["kind"], listed["r1"]["state"]) == ("local", "ready")
    assert listed["r1"]["total_bytes"] > 0

    shown = json.loads(cli(state, "repo", "show", "r1", "--json").stdout)
    assert shown["location"] == str(target)
    assert set(shown["space"]) == {
        "used_by_backups",
        "reclaimable_now",
        "reclaimable_later",
        "reclaimable_later_at",
        "locked",
        "locked_until",
    }
    assert shown["forecast"]["trend"] in ("not enough history", "not growing", "growing")

    tested = json.loads(cli(state, "repo", "test", "r1", "--json").stdout)
    assert tested["ok"] is True

    removed = cli(state, "repo", "remove", "r1")
    assert removed.returncode == 0 and "repository r1 removed" in removed.stdout
    remaining = json.loads(cli(state, "repo", "list", "--json").stdout)
    assert [r["name"] for r in remaining] == ["local"]


def test_add_refused_for_missing_path_exit_code_and_message(tmp_path: Path) -> None:
    state = tmp_path / "state"
    done = cli(state, "repo", "add", "bad", "--path", str(tmp_path / "nope"))
    # refused input: exit 2, one sentence and its hint on stderr, nothing on stdout
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith(
        f"sendense: repository bad was not saved: {tmp_path}/nope does not exist\n"
    )
    assert "--disabled" in done.stderr and len(done.stderr.splitlines()) == 2
    as_json = cli(state, "repo", "add", "bad", "--path", "/x/y", "--json")
    assert as_json.returncode == 2
    data = json.loads(as_json.stdout)
    assert data["saved"] is False and data["test"]["reason"] == "not_found"


def test_cifs_password_only_from_environment_and_never_printed(tmp_path: Path) -> None:
    state = tmp_path / "state"
    done = cli(
        state,
        "repo",
        "add",
        "smb",
        "--type",
        "cifs",
        "--server",
        "127.0.0.1",
        "--port",
        "1",
        "--share",
        "backups",
        "--user",
        "bk",
        "--password-env",
        "SMBPW",
        "--disabled",
        "--json",
        env={"SMBPW": "Hunter2-secret"},
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["saved"] is True and out["repository"]["enabled"] is False
    assert out["repository"]["has_password"] is True
    assert "Hunter2" not in done.stdout + done.stderr
    assert "unreachable on port 1" in out["test"]["error"]
    no_pw = cli(
        state,
        "repo",
        "add",
        "smb2",
        "--type",
        "cifs",
        "--server",
        "h",
        "--share",
        "s",
        "--user",
        "u",
    )
    assert no_pw.returncode != 0 and "--password-env" in no_pw.stderr


@pytest.mark.root
def test_repo_add_warns_when_the_reserve_leaves_no_room_for_a_backup(
    tmp_path: Path, loop_fs: LoopFsFactory
) -> None:
    """A 32 MiB disk under a configured 64 MiB reserve: saved (it tested fine), but the
    operator is told at once that no backup can land there, not at the first backup."""
    small = loop_fs("ext4", size_mb=32)
    state = tmp_path / "state"
    env = {"SENDENSE_CAPACITY_MIN_FREE": "64M"}
    done = cli(state, "repo", "add", "usb", "--path", str(small.mountpoint), env=env)
    assert done.returncode == 0, done.stderr
    assert "repository usb saved" in done.stdout
    assert re.search(
        r"warning: repository usb has [\d.]+ MiB free, all of it inside its 64.0 MiB reserve "
        r"\(capacity.min_free\): no backup can land there",
        done.stdout,
    ), done.stdout
    as_json = json.loads(cli(state, "repo", "test", "usb", "--json", env=env).stdout)
    assert as_json["reserve"] == 64 * MiB and len(as_json["warnings"]) == 1

    # the proportional default (5 % of this disk) leaves it room: no warning
    state2 = tmp_path / "state2"
    done = cli(state2, "repo", "add", "usb", "--path", str(small.mountpoint))
    assert done.returncode == 0, done.stderr
    assert "warning" not in done.stdout
    assert re.search(r"capacity found: .* 1\.\dM kept free \(min_free\)", done.stdout), done.stdout
