"""Work started in the console outlives it: the real console in a real terminal.

The console runs as the real ``sendense`` command in a tmux pane (a real pty);
keys go in with ``send-keys``, the screen comes back with ``capture-pane``. It
starts the background daemon itself. A policy run (a backup read from a
throttled NBD source served by qemu-storage-daemon, frozen with SIGSTOP once the
job runs, so it is still running however long the console takes to leave), a
restore mount and an NBD export are started with the console's own keys; then
the console leaves by ``q``, by SIGKILL and by a hangup (tmux closing its
terminal, as an SSH drop does). Each time the job is still running in the
daemon and, its source let go, finishes there once; the export still answers
``nbdinfo`` and the mount still serves its file; a new console shows them.
Without a daemon the console says so at the top, runs the work itself and asks
before quitting.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.catalog import Catalog
from engine.catalog.jobs import JobStore
from engine.daemon import NO_DAEMON_ENV, find_daemon
from tests.engine.daemonsite import DaemonSite, wait_for
from tests.engine.fsimages import Part, build_disk

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (loop devices, mounts)"),
    pytest.mark.slow,
]

MiB = 1024 * 1024
#: the slow source: this many bytes read at THROTTLE bytes/s (plus a burst)
SLOW_DISK = 6 * MiB
THROTTLE = MiB // 2


class Pane:
    """The console in a tmux pane of a private tmux server."""

    def __init__(self, tmp_path: Path, env: dict[str, str]) -> None:
        self.socket = str(tmp_path / "tmux.sock")
        self.env = env
        self.pid = 0

    def tmux(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["tmux", "-S", self.socket, "-f", "/dev/null", *args],
            capture_output=True,
            text=True,
            timeout=30,
            env=self.env,
        )

    def open(
        self, argv: list[str], *, env: dict[str, str] | None = None, size: str = "120x40"
    ) -> None:
        extra = [f"-e{k}={v}" for k, v in (env or {}).items()]
        width, height = size.split("x")
        done = self.tmux(
            "new-session", "-d", "-x", width, "-y", height, *extra, "exec " + shlex.join(argv)
        )
        assert done.returncode == 0, done.stderr
        self.pid = int(self.tmux("display-message", "-p", "#{pane_pid}").stdout.strip())

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p").stdout

    def wait_for(self, text: str, timeout: float = 180) -> str:
        try:
            return str(
                wait_for(
                    f"{text!r} on the console",
                    lambda: text in (s := self.screen()) and s,
                    timeout,
                )
            )
        except AssertionError as exc:
            alive = "running" if self.running() else "gone"
            raise AssertionError(f"{exc} (console {alive}); screen:\n{self.screen()}") from None

    def keys(self, *keys: str) -> None:
        for key in keys:
            assert self.tmux("send-keys", key).returncode == 0
            time.sleep(0.3)

    def running(self) -> bool:
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError:
            return False
        return stat.rsplit(")", 1)[-1].split()[0] != "Z"

    def wait_gone(self, timeout: float = 90) -> None:
        wait_for("the console to leave", lambda: not self.running(), timeout)


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[DaemonSite]:
    monkeypatch.delenv(NO_DAEMON_ENV, raising=False)
    site = DaemonSite(tmp_path)
    site.env["TERM"] = "xterm-256color"
    for fixed_size in ("COLUMNS", "LINES"):  # the pane's size, not the runner's
        site.env.pop(fixed_size, None)
    site.env["TEXTUAL_ANIMATIONS"] = "none"
    pane = Pane(tmp_path, site.env)
    try:
        yield site
    finally:
        pane.tmux("kill-server")
        site.close()


@pytest.fixture
def pane(site: DaemonSite) -> Pane:
    return Pane(site.tmp_path, site.env)


def _console(site: DaemonSite) -> list[str]:
    return [sys.executable, "-m", "sendense_tui.cli"]


def _seed(site: DaemonSite) -> dict[str, Any]:
    """A restore point with a file to mount, and a policy whose backup reads a slow
    NBD source. Returns the slow source's server."""
    quiet = {NO_DAEMON_ENV: "1"}  # seeding waits for its work: no daemon yet
    disk = build_disk(
        site.tmp_path / "web01.raw",
        [Part("ext4", 8, {"hello.txt": b"outlives the console\n"})],
        table=None,
    )
    done = site.sendense(
        "backup", "run", "--repo", "local", "--vm", "web01", "--disk", f"sda={disk}", env=quiet
    )
    assert done.returncode == 0, done.stderr
    slow = site.tmp_path / "db01.raw"
    slow.write_bytes(os.urandom(SLOW_DISK))
    sock = site.tmp_path / "slow.sock"
    server = subprocess.Popen(
        [
            "qemu-storage-daemon",
            "--object", f"throttle-group,id=tg0,x-bps-read={THROTTLE}",
            "--blockdev", f"driver=file,filename={slow},node-name=f0,read-only=on",
            "--blockdev", "driver=raw,file=f0,node-name=r0,read-only=on",
            "--blockdev", "driver=throttle,throttle-group=tg0,file=r0,node-name=t0,read-only=on",
            "--nbd-server", f"addr.type=unix,addr.path={sock}",
            "--export", "type=nbd,id=e0,node-name=t0,name=disk",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    wait_for("the slow NBD source", sock.exists, timeout=10)
    done = site.sendense(
        "policy", "add", "slow", "--target", "local", "--schedule", "0 1 1 1 *",
        "--source", f"db01:sda=nbd+unix:///disk?socket={sock}", env=quiet,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return {"server": server}


def _running_jobs(site: DaemonSite) -> list[tuple[int, str]]:
    """(id, lease owner) of the running jobs, read from the catalog."""
    catalog = Catalog(site.settings.db_url).open()
    try:
        return [(j.id, str(j.lease_owner)) for j in JobStore(catalog).list(states=("running",))]
    finally:
        catalog.dispose()


def _run_policy_from_the_console(
    site: DaemonSite, pane: Pane, known: set[int], source: subprocess.Popen[bytes]
) -> int:
    """Policies screen, `n` on the policy: the new job runs, in the daemon. Its NBD
    source is then frozen (SIGSTOP), so the job is still running whatever the
    console takes to leave."""
    pane.keys("5")
    pane.wait_for("n Run now")  # the Policies screen (the Jobs screen names the policy too)
    pane.wait_for("0 1 1 1 *")
    pane.keys("n")
    job_id, owner = wait_for(
        "the policy run to start",
        lambda: next((job for job in _running_jobs(site) if job[0] not in known), None),
    )
    daemon = site.daemon_pid()
    assert daemon is not None
    assert owner.split(":")[1] == str(daemon), f"the daemon runs it, not {owner}"
    source.send_signal(signal.SIGSTOP)
    return int(job_id)


def _survivors_still_serve(
    site: DaemonSite, job_id: int, uri: str, hello: Path, source: subprocess.Popen[bytes]
) -> None:
    """The job (its source frozen while the console left) is still running, in the
    daemon; let its source go on: it ends well, run once. The export answers and
    the mount serves its file."""
    running = site.job(job_id)
    assert running["state"] == "running", "the console's exit handed the job back"
    source.send_signal(signal.SIGCONT)
    job = wait_for(
        "the job to end in the daemon",
        lambda: (j := site.job(job_id))["state"] not in ("queued", "running") and j,
        timeout=180,
    )
    assert job["state"] == "succeeded", job["error"]
    assert (job["attempts"], job["takeovers"]) == (1, 0), "run once, never handed over"
    info = subprocess.run(["nbdinfo", "--size", uri], capture_output=True, text=True, timeout=30)
    assert info.returncode == 0, info.stderr
    assert int(info.stdout) == 8 * MiB
    assert hello.read_text() == "outlives the console\n"


def test_jobs_mounts_and_exports_outlive_the_console(site: DaemonSite, pane: Pane) -> None:
    seeded = _seed(site)
    source = seeded["server"]
    try:
        pane.open(_console(site))
        pane.wait_for("Dashboard")
        daemon = site.daemon_pid()
        assert daemon is not None, "the console starts the daemon"
        assert "No daemon" not in pane.screen()

        # a restore mount and an NBD export, with the Restore screen's keys
        pane.keys("7")
        pane.wait_for("Mounted · u unmounts")  # the Restore screen
        pane.wait_for("web01")
        pane.keys("m")
        mount = wait_for("the mount", lambda: next(iter(site.json("restore", "mounts")), None))
        hello = Path(mount["filesystems"][0]["path"]) / "hello.txt"
        pane.keys("N")
        export = wait_for("the export", lambda: next(iter(site.json("export", "list")), None))
        uri = export["uri"]
        jobs: set[int] = set()

        # 1. q on the dashboard: no question, the work stays with the daemon
        job_id = _run_policy_from_the_console(site, pane, jobs, source)
        jobs.add(job_id)
        pane.keys("1", "q")
        pane.wait_gone()
        _survivors_still_serve(site, job_id, uri, hello, source)

        # a new console shows them
        pane.open(_console(site))
        pane.wait_for("Dashboard")
        pane.keys("7")
        pane.wait_for("ext4")
        pane.wait_for("nbd+unix:///point-")
        pane.keys("6")
        pane.wait_for("policy slow")

        # 2. the console is killed outright
        job_id = _run_policy_from_the_console(site, pane, jobs, source)
        jobs.add(job_id)
        os.kill(pane.pid, signal.SIGKILL)
        pane.wait_gone()
        _survivors_still_serve(site, job_id, uri, hello, source)

        # 3. its terminal goes away (an SSH drop: the pty closes, SIGHUP)
        pane.open(_console(site))
        pane.wait_for("Dashboard")
        job_id = _run_policy_from_the_console(site, pane, jobs, source)
        console = pane.pid
        pane.tmux("kill-server")
        pane.pid = console
        pane.wait_gone()
        _survivors_still_serve(site, job_id, uri, hello, source)
        assert site.daemon_pid() == daemon, "one daemon served every console"
    finally:
        source.send_signal(signal.SIGCONT)
        source.kill()
        source.wait(timeout=10)


def test_without_a_daemon_the_console_says_so_and_asks_before_quitting(
    site: DaemonSite, pane: Pane
) -> None:
    seeded = _seed(site)
    try:
        pane.open(_console(site), env={NO_DAEMON_ENV: "1"}, size="80x24")
        pane.wait_for("No daemon")
        banner = pane.screen().splitlines()[1]
        assert banner.strip() == (
            f"No daemon  work started here ends with the console: {NO_DAEMON_ENV} is set"
        )
        assert find_daemon(site.settings) is None
        pane.keys("7")
        pane.wait_for("Mounted · u unmounts")  # the Restore screen
        pane.wait_for("web01")
        pane.keys("m")
        wait_for("the mount", lambda: site.json("restore", "mounts"))

        pane.keys("1", "q")
        pane.wait_for("Quit and stop the work running in this console?")
        assert "restore mount" in pane.screen()
        pane.keys("n")
        time.sleep(1)
        assert pane.running(), "n keeps the console open"
        pane.keys("C-q")
        pane.wait_for("Quit and stop the work running in this console?")
        pane.keys("y")
        pane.wait_gone()
        # it ran the work itself: leaving took it down, as it always did
        assert site.json("restore", "mounts") == []
        assert find_daemon(site.settings) is None
    finally:
        seeded["server"].kill()
        seeded["server"].wait(timeout=10)
