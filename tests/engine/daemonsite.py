"""A state directory where a real background ``sendense daemon`` may start, and the
cleanup that leaves none behind.

The suite sets SENDENSE_NO_DAEMON=1 (tests/plugins/common.py); a ``DaemonSite``
runs ``sendense`` with it unset, so the console and ``--no-wait`` commands start
a daemon as they do for an operator. ``close()`` stops that daemon, unmounts
restore mounts and stops NBD exports left by the test, and kills every process
whose environment or command line names the test's directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.config import Settings, default_settings
from engine.daemon import NO_DAEMON_ENV, find_daemon, stop_daemon

ROOT = Path(__file__).resolve().parents[2]


def processes_of(tmp_path: Path) -> list[int]:
    """Processes whose environment or command line names ``tmp_path`` (a daemon, a
    keeper, a console, a qemu server of this test)."""
    found = []
    marker = str(tmp_path).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if (
                marker in (entry / "cmdline").read_bytes()
                or marker in (entry / "environ").read_bytes()
            ):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def wait_for(what: str, check: Callable[[], Any], timeout: float = 120.0) -> Any:
    """Poll ``check`` until it returns something true; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


class DaemonSite:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.state = tmp_path / "state"
        self.settings: Settings = default_settings(self.state)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SENDENSE_")}
        env.pop(NO_DAEMON_ENV, None)
        env["SENDENSE_STATE_DIR"] = str(self.state)
        env["XDG_CONFIG_HOME"] = str(tmp_path / "xdg-config")
        env["PYTHONUNBUFFERED"] = "1"
        self.env = env

    def sendense(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "sendense_tui.cli", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            env={**self.env, **(env or {})},
        )

    def json(self, *args: str) -> Any:
        done = self.sendense(*args, "--json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def daemon_pid(self) -> int | None:
        info = find_daemon(self.settings)
        return info.pid if info is not None and info.ready else None

    def job(self, job_id: int) -> dict[str, Any]:
        data: dict[str, Any] = self.json("jobs", "show", str(job_id))
        return data

    def close(self) -> None:
        with contextlib.suppress(Exception):
            stop_daemon(self.settings, timeout=30)
        if self.state.is_dir():
            env = {**self.env, NO_DAEMON_ENV: "1"}
            with contextlib.suppress(Exception):
                for mount in json.loads(
                    self.sendense("restore", "mounts", "--json", env=env).stdout
                ):
                    self.sendense("restore", "unmount", str(mount["id"]), env=env)
            with contextlib.suppress(Exception):
                for export in json.loads(self.sendense("export", "list", "--json", env=env).stdout):
                    self.sendense("export", "stop", str(export["id"]), env=env)
        for pid in processes_of(self.tmp_path):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
