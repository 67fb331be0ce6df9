"""The background daemon: one per state directory, started when work needs it.

Real processes throughout: ``ensure_daemon`` starts the real ``sendense daemon``
detached, the CLI runs in subprocesses, the lock is a real flock. Every test stops
what it started (DaemonSite.close).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.daemon import (
    LOCK_FILE,
    NO_DAEMON_ENV,
    DaemonStatus,
    ensure_daemon,
    find_daemon,
    stop_daemon,
)
from engine.platform import is_zombie
from engine.runtime import Engine
from engine.services.backup import DiskSource
from tests.engine.daemonsite import DaemonSite, processes_of, wait_for
from tests.engine.fsimages import Part, build_disk

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chattr, mounts)")


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[DaemonSite]:
    monkeypatch.delenv(NO_DAEMON_ENV, raising=False)
    site = DaemonSite(tmp_path)
    try:
        yield site
    finally:
        site.close()


def _alive(pid: int) -> bool:
    return not is_zombie(pid)


def test_one_daemon_per_state_directory(site: DaemonSite) -> None:
    """The first start runs a detached daemon; a second `sendense daemon` for the same
    state directory is refused with one sentence, and --stop ends the first."""
    status = ensure_daemon(site.settings)
    assert status.running and status.started, status.problem
    assert status.pid is not None and _alive(status.pid)
    # detached: a session of its own, not a child that dies with the starter's terminal
    assert os.getsid(status.pid) == status.pid
    assert (site.state / "logs" / "daemon.log").stat().st_mode & 0o077 == 0

    again = ensure_daemon(site.settings)
    assert again == DaemonStatus(pid=status.pid, log_file=status.log_file)

    second = site.sendense("daemon")
    assert second.returncode == 2
    lines = second.stderr.strip().splitlines()
    assert lines[0] == (
        f"sendense: a sendense daemon already runs for state directory {site.state} "
        f"(pid {status.pid})"
    )
    assert "Traceback" not in second.stderr
    assert _alive(status.pid), "the refused second daemon must leave the first alone"

    shown = site.sendense("daemon", "--status")
    assert shown.returncode == 0 and f"pid {status.pid}" in shown.stdout

    stopped = site.sendense("daemon", "--stop")
    assert stopped.returncode == 0, stopped.stderr
    assert f"pid {status.pid}" in stopped.stdout
    assert find_daemon(site.settings) is None
    wait_for("the daemon to end", lambda: not _alive(status.pid), timeout=10)
    assert site.sendense("daemon", "--status").returncode == 1


def test_opting_out_starts_nothing(site: DaemonSite, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(NO_DAEMON_ENV, "1")
    status = ensure_daemon(site.settings)
    assert not status.running
    assert status.problem == f"{NO_DAEMON_ENV} is set"
    assert not (site.state / LOCK_FILE).exists()
    assert processes_of(site.tmp_path) == []


def test_a_daemon_that_cannot_start_is_reported_not_waited_for(site: DaemonSite) -> None:
    """A state directory the daemon cannot write its lock in (immutable): the starter
    gets the daemon's own sentence and no daemon is left half-started."""
    (site.state / "logs").mkdir(parents=True)
    subprocess.run(["chattr", "+i", str(site.state)], check=True, timeout=10)
    try:
        status = ensure_daemon(site.settings, timeout=60)
    finally:
        subprocess.run(["chattr", "-i", str(site.state)], check=True, timeout=10)
    assert not status.running
    assert status.problem is not None
    assert status.problem.startswith("the sendense daemon did not start: ")
    assert f"the daemon lock {site.state / LOCK_FILE} cannot be created" in status.problem
    assert "Traceback" not in (site.state / "logs" / "daemon.log").read_text()
    assert processes_of(site.tmp_path) == []


def test_a_no_wait_command_starts_the_daemon_that_runs_its_job(site: DaemonSite) -> None:
    """`backup run --no-wait` returns at once; the daemon it started runs the job."""
    disk = site.tmp_path / "disk.raw"
    disk.write_bytes(os.urandom(1024 * 1024))
    queued = site.sendense(
        "backup", "run", "--repo", "local", "--vm", "web01", "--disk", f"sda={disk}", "--no-wait"
    )
    assert queued.returncode == 0, queued.stderr
    assert queued.stdout.startswith("queued job ")
    job_id = int(queued.stdout.split()[2].rstrip(":"))
    pid = site.daemon_pid()
    assert pid is not None
    assert f"started the sendense daemon (pid {pid})" in queued.stderr
    job = wait_for(
        "the daemon to run the job",
        lambda: (j := site.job(job_id))["state"] in ("succeeded", "failed") and j,
    )
    assert job["state"] == "succeeded", job["error"]


def test_a_console_engine_takes_over_when_its_daemon_goes(site: DaemonSite) -> None:
    """A client engine claims nothing while its daemon runs; once the daemon is gone it
    runs jobs itself and says why (the console's banner)."""
    status = ensure_daemon(site.settings)
    assert status.running, status.problem
    engine = Engine(site.settings)
    try:
        engine.open()
        engine.attach_daemon(status)
        engine.start(run_scheduler=True)
        assert not engine.run_jobs and engine.file_restore.detach and engine.exports.detach
        assert engine.check_daemon() is False
        assert stop_daemon(site.settings) == status.pid
        assert engine.check_daemon() is True
        assert engine.run_jobs and not engine.file_restore.detach and not engine.exports.detach
        assert engine.daemon is not None
        assert engine.daemon.problem == f"the sendense daemon (pid {status.pid}) stopped"
        disk = site.tmp_path / "disk.raw"
        disk.write_bytes(os.urandom(256 * 1024))
        job = engine.backups.submit("local", "web01", [DiskSource("sda", str(disk))])
        wait_for(
            "the console engine to run the job",
            lambda: engine.job_store.get(job.id).state == "succeeded",
        )
    finally:
        engine.close()


def test_a_restore_mount_from_the_cli_starts_the_daemon_that_expires_it(
    site: DaemonSite,
) -> None:
    """A detached mount outlives `restore mount`; the daemon it starts is the engine
    whose reaper unmounts it when it expires."""
    disk = build_disk(site.tmp_path / "web01.raw", [Part("ext4", 8, {"a.txt": b"a\n"})], table=None)
    quiet = {NO_DAEMON_ENV: "1"}
    done = site.sendense(
        "backup", "run", "--repo", "local", "--vm", "web01", "--disk", f"sda={disk}", env=quiet
    )
    assert done.returncode == 0, done.stderr
    assert site.daemon_pid() is None
    point = site.json("restore", "points")[0]["id"]
    mounted = site.sendense("restore", "mount", str(point))
    assert mounted.returncode == 0, mounted.stderr
    pid = site.daemon_pid()
    assert pid is not None
    assert f"started the sendense daemon (pid {pid})" in mounted.stderr
    assert [m["backup_id"] for m in site.json("restore", "mounts")] == [point]
