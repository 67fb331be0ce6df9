"""`sendense export` from a shell: each command is its own process; the export is
owned by a keeper process that outlives it, applies its limits and dies with it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from engine.catalog import Catalog
from engine.clock import FixedClock
from engine.config import sqlite_url
from engine.tools import exporters
from tests.engine.fsimages import Part, backup_chain, build_disk, processes_mentioning
from tests.engine.test_exports import _free_port_on, _non_loopback_address

pytestmark = pytest.mark.root

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def state(tmp_path: Path) -> Path:
    raw = build_disk(tmp_path / "disk.raw", [Part("ext4", 8, {"motd": b"hello\n"})])
    catalog = Catalog(sqlite_url(tmp_path / "state" / "catalog.db")).open()
    (tmp_path / "repo").mkdir()
    try:
        backup_chain(catalog, tmp_path / "repo", [raw], now=FixedClock().now())
    finally:
        catalog.dispose()
    return tmp_path / "state"


@pytest.fixture(autouse=True)
def no_keepers_left(tmp_path: Path) -> Any:
    yield
    for pid in keepers(tmp_path) + processes_mentioning(str(tmp_path)):
        os.kill(pid, signal.SIGKILL)


def keepers(tmp_path: Path) -> list[int]:
    """Keeper processes of this test (their environment names its state dir)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if not entry.name.isdigit() or b"export_keeper" not in (entry / "cmdline").read_bytes():
                continue
            if str(tmp_path).encode() in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def sendense(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sendense_tui.cli", "--state-dir", str(state), *args],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
    )


def exports(state: Path) -> list[dict[str, Any]]:
    done = sendense(state, "export", "list", "--all", "--json")
    assert done.returncode == 0, done.stderr
    rows: list[dict[str, Any]] = json.loads(done.stdout)
    return rows


def wait_until_ended(state: Path) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while (row := exports(state)[0])["state"] == "running":
        assert time.monotonic() < deadline, row
        time.sleep(0.3)
    return row


def test_an_idle_export_is_stopped_by_its_keeper_after_the_command_ended(
    state: Path, tmp_path: Path
) -> None:
    started = sendense(state, "export", "start", "1", "--idle-minutes", "0.02", "--json")
    assert started.returncode == 0, started.stderr
    row = json.loads(started.stdout)  # 1.2 s without a client
    assert (row["state"], row["idle_timeout_seconds"]) == ("running", 1)

    ended = wait_until_ended(state)  # the command is gone; its keeper was not

    assert (ended["state"], ended["stop_reason"]) == ("stopped", "idle")
    assert processes_mentioning(str(tmp_path)) == []
    deadline = time.monotonic() + 10
    while keepers(tmp_path):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert sorted(os.listdir(state / "exports")) == ["keeper.log"]


def test_an_export_whose_keeper_was_killed_is_stopped_by_the_next_command(
    state: Path, tmp_path: Path
) -> None:
    started = sendense(state, "export", "start", "1", "--json")
    assert started.returncode == 0, started.stderr
    export = json.loads(started.stdout)
    (keeper,) = keepers(tmp_path)
    os.kill(keeper, signal.SIGKILL)
    # the kill lands before the next command looks (under load it may lag); the dead
    # keeper may stay a zombie for a while: that is gone too
    deadline = time.monotonic() + 20
    while exporters.pid_matches(keeper, "python", "") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert exporters.pid_matches(export["pid"], "qemu-nbd", export["uri"].split("socket=")[1])

    row = exports(state)[0]  # any command's engine looks at this machine's exports

    assert (row["state"], row["stop_reason"]) == ("stopped", "owner_gone")
    assert not exporters.pid_matches(export["pid"], "qemu-nbd", "")


def test_export_stop_ends_the_keeper_and_the_key(state: Path, tmp_path: Path) -> None:
    address = _non_loopback_address()
    port = _free_port_on(address)
    started = sendense(state, "export", "start", "1", "--host", address, "--port", str(port))
    assert started.returncode == 2 and started.stdout == ""
    assert started.stderr.splitlines()[0] == (
        f"sendense: refusing to serve on {address}:{port} without TLS: anyone who can "
        "reach that address could read the whole disk"
    )
    assert "Traceback" not in started.stderr
    assert keepers(tmp_path) == [] and exports(state) == []

    started = sendense(
        state, "export", "start", "1", "--host", address, "--port", str(port), "--tls"
    )
    assert started.returncode == 0, started.stderr
    key = state / "exports" / f"point-1-tcp{port}.tls" / "keys.psk"
    assert f"the key (keep it secret): {key}" in started.stdout
    assert f"nbdinfo 'nbds://sendense@{address}:{port}/point-1?tls-psk-file={key}'" in (
        started.stdout
    )
    listed = sendense(state, "export", "list")
    assert f"nbds://sendense@{address}:{port}/point-1 (TLS)" in listed.stdout
    assert "idle 30m, ends " in listed.stdout

    stopped = sendense(state, "export", "stop", "point-1")
    assert stopped.returncode == 0, stopped.stderr
    assert not key.exists()
    deadline = time.monotonic() + 10
    while keepers(tmp_path):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert exports(state)[0]["stop_reason"] == "operator"
