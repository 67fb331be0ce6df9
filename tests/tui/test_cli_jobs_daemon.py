"""``sendense backup run``, ``copy run`` and ``restore disk`` hand their job to the running daemon
(issue 16: the command itself then loads no engine, about a second less with cold
caches) and follow it to its end, printing what they print when they run the job
themselves. A refusal is said in the command's own words; Ctrl+C leaves the job to
the daemon; a daemon killed mid-job is one sentence, and its next start finishes
the job."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from engine import __version__
from engine.config import catalog_identity, default_settings, sqlite_url
from sendense_tui import daemon_client
from tests.api.conftest import ROOT, ApiDaemon
from tests.tui.stand_in_daemon import stand_in
from tests.tui.test_cli_start import STDLIB_HEAVY, imported, run_and_list_modules

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (the daemon)")

MiB = 1024 * 1024
#: what running the job itself loads
ENGINE_CODE = [
    "sqlalchemy",
    "engine.catalog",
    "engine.runtime",
    "engine.services",
    # nor what it does without for a faster start (tests/tui/test_cli_start.py)
    *STDLIB_HEAVY,
]
#: the daemon's socket out of reach: the command runs the job itself
DIRECT = {"SENDENSE_API_SOCKET": "/nonexistent/no-daemon-here.sock"}


def _ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stderr
    return done.stdout


def _served(root: Path, *, disk_mib: int = 4, failpoint: str | None = None) -> ApiDaemon:
    """A daemon (unix socket only) over a catalog holding one point of a random disk,
    and copy rules to two more repositories: ``off`` and ``slow`` (1 MiB/s). Job
    leases of 3 s: a killed daemon's job is taken over in seconds, not half a minute."""
    daemon = ApiDaemon(root, listen="")
    config = root / "xdg-config" / "sendense" / "sendense.toml"
    config.parent.mkdir(parents=True)
    config.write_text("[jobs]\nlease_seconds = 3\nheartbeat_seconds = 0.5\n")
    disk = root / "disk.raw"
    disk.write_bytes(os.urandom(disk_mib * MiB))
    for argv in (
        ["backup", "run", "--repo", "local", "--vm", "web01", "--disk", f"sda={disk}"],
        ["repo", "add", "second", "--path", str(root / "second"), "--create"],
        ["repo", "add", "third", "--path", str(root / "third"), "--create"],
        ["copy", "rule", "add", "off", "--from", "local", "--to", "second"],
        ["copy", "rule", "add", "slow", "--from", "local", "--to", "third", "--bandwidth", "1M"],
    ):
        _ok(daemon.sendense(*argv))
    if failpoint:
        daemon.env["SENDENSE_FAILPOINT"] = failpoint
    daemon.start()
    return daemon


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiDaemon]:
    served = _served(tmp_path_factory.mktemp("jobs-daemon"))
    try:
        yield served
    finally:
        served.close()


def _jobs(daemon: ApiDaemon) -> list[dict[str, Any]]:
    listed: list[dict[str, Any]] = json.loads(
        _ok(daemon.sendense("--json", "jobs", "list", "--limit", "1000"))
    )
    return listed


def _actor(daemon: ApiDaemon, job_id: int) -> str:
    shown = json.loads(_ok(daemon.sendense("--json", "jobs", "show", str(job_id))))
    return str(shown["actor"])


def test_restore_disk_runs_in_the_daemon_and_prints_what_it_prints_itself(
    daemon: ApiDaemon, tmp_path: Path
) -> None:
    disk = (daemon.root / "disk.raw").read_bytes()
    # a relative target is the caller's, not the daemon's working directory's
    direct = daemon.sendense("restore", "disk", "1", "direct.raw", cwd=tmp_path, env=DIRECT)
    served = daemon.sendense("restore", "disk", "1", "served.raw", cwd=tmp_path)
    assert _ok(direct) == "restored point #1 (4.0M) to direct.raw\n"
    assert _ok(served) == "restored point #1 (4.0M) to served.raw\n"
    assert (tmp_path / "direct.raw").read_bytes() == disk
    assert (tmp_path / "served.raw").read_bytes() == disk
    jobs = [j for j in _jobs(daemon) if j["kind"] == "restore_disk"]
    assert [j["title"].rsplit(" ", 1)[1] for j in jobs[:2]] == [
        str(tmp_path / "served.raw"),
        str(tmp_path / "direct.raw"),
    ]
    # the daemon ran the second one (its caller on the socket), the command the first
    assert _actor(daemon, jobs[0]["id"]) == "root (unix socket)"
    assert _actor(daemon, jobs[1]["id"]) == "cli"

    # --json says the same on both roads, and the served road loads no engine
    target = str(tmp_path / "probe.raw")
    seen = run_and_list_modules(["--json", "restore", "disk", "1", target], daemon.env)
    assert seen["code"] == 0
    assert json.loads(seen["out"])["state"] == "succeeded"
    loaded = imported(seen, ENGINE_CODE)
    assert loaded == [], f"`sendense restore disk` imported {loaded}"
    assert Path(target).read_bytes() == disk


def test_a_refused_restore_says_the_commands_own_sentence_and_queues_nothing(
    daemon: ApiDaemon, tmp_path: Path
) -> None:
    (tmp_path / "there.raw").write_bytes(b"keep me")
    before = len(_jobs(daemon))
    for argv in (["1", "there.raw"], ["999999", "new.raw"], ["1", "no-such-dir/x.raw"]):
        served = daemon.sendense("restore", "disk", *argv, cwd=tmp_path)
        direct = daemon.sendense("restore", "disk", *argv, cwd=tmp_path, env=DIRECT)
        assert (served.returncode, served.stderr) == (direct.returncode, direct.stderr)
        assert served.returncode == 2 and served.stderr.count("\n") <= 2, served.stderr
    assert (
        "--overwrite" in daemon.sendense("restore", "disk", "1", str(tmp_path / "there.raw")).stderr
    )
    assert (tmp_path / "there.raw").read_bytes() == b"keep me"
    assert not (tmp_path / "new.raw").exists()
    assert len(_jobs(daemon)) == before


def _without_times(text: str) -> str:
    """A backup's report with its measured times, new ids and timestamps blanked."""
    return re.sub(
        r"\d+\.\d s|#\d+|chain \d+|point \d+|\d{8}T\d{6}Z|\d{4}-\d\d-\d\d \d\d:\d\d", "N", text
    )


def test_backup_run_runs_in_the_daemon_and_prints_what_it_prints_itself(
    daemon: ApiDaemon, tmp_path: Path
) -> None:
    """Two VMs backed up alike, one by the daemon and one by the command itself: the
    same report, the same "NEW FULL" warning on stderr when the chain broke, and a
    relative source read from the caller's directory."""
    said: dict[str, list[str]] = {}
    # a repository of its own: the broken chains below stay out of the copy rules' way
    _ok(daemon.sendense("repo", "add", "bk", "--path", str(tmp_path / "bk"), "--create"))
    for vm, env in (("bk-served", None), ("bk-direct", DIRECT)):
        disk = tmp_path / f"{vm}.raw"
        disk.write_bytes(os.urandom(2 * MiB))
        run = ["backup", "run", "--repo", "bk", "--vm", vm, "--disk", f"sda={disk.name}"]
        first = daemon.sendense(*run, cwd=tmp_path, env=env)
        # its full lost: the chain is broken, and the next backup starts over loudly
        (full,) = (tmp_path / "bk" / "chains" / vm).rglob("*.qcow2")
        full.unlink()
        second = daemon.sendense(*run, cwd=tmp_path, env=env)
        said[vm] = [
            _without_times(f"{_ok(done)}{done.stderr}").replace(vm, "VM")
            for done in (first, second)
        ]
    assert said["bk-served"] == said["bk-direct"]
    assert said["bk-served"][0].startswith("VM/sda: full N ")
    assert "(first backup of this disk)" in said["bk-served"][0]
    assert "warning: VM/sda: starting a NEW FULL backup because" in said["bk-served"][1]
    jobs = [j for j in _jobs(daemon) if j["kind"] == "backup" and "bk-" in j["title"]]
    # newest first: each VM's second backup, the one that started over
    by_vm = {("served" if "bk-served" in j["title"] else "direct"): j for j in reversed(jobs)}
    assert _actor(daemon, by_vm["served"]["id"]) == "root (unix socket)"
    assert _actor(daemon, by_vm["direct"]["id"]) == "cli"
    # the job's events, as `sendense events --job` reads them on either road
    events = ["events", "--job", str(by_vm["served"]["id"]), "--level", "warning"]
    from_daemon = _ok(daemon.sendense(*events))
    assert "starting a NEW FULL backup" in from_daemon
    assert from_daemon == _ok(daemon.sendense(*events, env=DIRECT))

    # --json: the daemon's road loads no engine
    disk = tmp_path / "bk-served.raw"
    argv = ["--json", "backup", "run", "--repo", "bk", "--vm", "bk-served"]
    seen = run_and_list_modules([*argv, "--disk", f"sda={disk}"], daemon.env)
    assert seen["code"] == 0
    assert json.loads(seen["out"])["disks"][0]["kind"] == "incremental"
    loaded = imported(seen, ENGINE_CODE)
    assert loaded == [], f"`sendense backup run` imported {loaded}"


def test_a_backup_the_daemon_runs_says_what_it_waits_for(daemon: ApiDaemon, tmp_path: Path) -> None:
    """Another writer holds the disk (here this test's engine, as a merge or a second
    backup would): the command says so, as it does when it runs the job itself, and
    the backup runs once the disk is free."""
    from engine.runtime import Engine

    # a repository of its own: a point in "local" would be one more for the copy rules
    _ok(daemon.sendense("repo", "add", "wait", "--path", str(tmp_path / "wait"), "--create"))
    disk = tmp_path / "wait01.raw"
    disk.write_bytes(os.urandom(MiB))
    held = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with Engine(daemon.settings) as engine:
            repo = engine.repository_store.get("wait")
            with engine.writers.hold(repo.id, "wait01", "sda", operation="merge", actor="test"):
                held.set()
                release.wait(60)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(30)
        threading.Timer(3, release.set).start()
        run = ["backup", "run", "--repo", "wait", "--vm", "wait01", "--disk", f"sda={disk}"]
        done = daemon.sendense(*run)
    finally:
        release.set()
        holder.join(30)
    assert done.returncode == 0, done.stderr
    assert "waiting: wait01/sda is being" in done.stderr and "test" in done.stderr
    assert done.stdout.startswith("wait01/sda: full #")


def test_a_refused_backup_says_the_commands_own_sentence_and_queues_nothing(
    daemon: ApiDaemon, tmp_path: Path
) -> None:
    (tmp_path / "x.raw").write_bytes(os.urandom(MiB))
    before = len(_jobs(daemon))
    for repo, vm, disk in (
        ("nowhere", "refused01", "sda=x.raw"),
        ("local", "refused01", "sda=json:{}"),
        ("local", "../etc", "sda=x.raw"),
    ):
        argv = ["backup", "run", "--repo", repo, "--vm", vm, "--disk", disk]
        served = daemon.sendense(*argv, cwd=tmp_path)
        direct = daemon.sendense(*argv, cwd=tmp_path, env=DIRECT)
        assert (served.returncode, served.stderr) == (direct.returncode, direct.stderr)
        assert served.returncode == 2 and served.stderr.count("\n") <= 2, served.stderr
    assert len(_jobs(daemon)) == before


def test_copy_run_runs_in_the_daemon(daemon: ApiDaemon) -> None:
    served = json.loads(_ok(daemon.sendense("--json", "copy", "run", "off")))
    assert served["state"] == "succeeded"
    assert served["result"]["copied"] == 1 and served["result"]["destination"] == "second"
    assert _actor(daemon, served["job_id"]) == "root (unix socket)"
    copied = sorted(p.name for p in (daemon.root / "second").rglob("*.qcow2"))
    assert copied == sorted(p.name for p in (daemon.state / "repository").rglob("*.qcow2"))
    # the same rule again, as text: nothing new to copy, said as the command says it
    text = _ok(daemon.sendense("copy", "run", "off")).splitlines()
    assert text[0].endswith("finished: copy off: local -> second")
    assert "  copied: 0" in text and "  already_there: 1" in text
    # an unknown rule: the command's own refusal, nothing queued
    before = len(_jobs(daemon))
    unknown = daemon.sendense("copy", "run", "nope")
    direct = daemon.sendense("copy", "run", "nope", env=DIRECT)
    assert unknown.returncode == direct.returncode == 2
    assert unknown.stderr == direct.stderr
    assert len(_jobs(daemon)) == before


def _wait_for(what: str, check: Any, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, f"no {what} in {timeout} s"
        time.sleep(0.1)
    return found


def _running(daemon: ApiDaemon, kind: str) -> dict[str, Any] | None:
    running = [j for j in _jobs(daemon) if j["kind"] == kind and j["state"] == "running"]
    return running[0] if running else None


def test_ctrl_c_ends_the_wait_and_the_daemon_finishes_the_job(daemon: ApiDaemon) -> None:
    waiting = subprocess.Popen(
        [sys.executable, "-m", "sendense_tui.cli", "copy", "run", "slow"],
        cwd=ROOT,
        env=daemon.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        job = _wait_for("running copy", lambda: _running(daemon, "copy"))
        waiting.send_signal(signal.SIGINT)
        _out, err = waiting.communicate(timeout=30)
    finally:
        if waiting.poll() is None:
            waiting.kill()
    assert waiting.returncode == 4, err
    assert (
        f"interrupted while waiting for job {job['id']}: it goes on in the sendense daemon" in err
    )
    assert f"sendense jobs cancel {job['id']}" in err
    # the job was not the command's to stop: the daemon copies to the end
    ended = _wait_for(
        "end of the copy",
        lambda: [j for j in _jobs(daemon) if j["id"] == job["id"] and j["state"] != "running"],
    )
    assert ended[0]["state"] == "succeeded"
    assert list((daemon.root / "third").rglob("*.qcow2"))


def test_a_daemon_killed_mid_job_is_one_sentence_and_its_next_start_finishes_it(
    tmp_path: Path,
) -> None:
    daemon = _served(tmp_path, failpoint="copy.after_write")
    try:
        started = time.monotonic()
        lost = daemon.sendense("copy", "run", "off")
        assert daemon.proc is not None and daemon.proc.wait(timeout=30) == -signal.SIGKILL
        assert lost.returncode == 4, lost.stderr
        lines = lost.stderr.strip().splitlines()
        assert "the daemon stopped answering while job" in lines[0]
        assert "sendense jobs show" in lost.stderr
        assert time.monotonic() - started < 60
        assert not list((tmp_path / "second").rglob("*.qcow2"))
        # the next daemon takes the job over and finishes it
        daemon.env.pop("SENDENSE_FAILPOINT")
        daemon.start()
        job_id = int(lines[0].split("job ")[1].split()[0])
        ended = _wait_for(
            "end of the copy",
            lambda: [j for j in _jobs(daemon) if j["id"] == job_id and j["state"] != "running"],
            timeout=120,
        )
        assert ended[0]["state"] == "succeeded", ended
        assert list((tmp_path / "second").rglob("*.qcow2"))
    finally:
        daemon.close()


def test_a_catalog_other_than_the_daemons_runs_its_job_itself(
    daemon: ApiDaemon, tmp_path: Path
) -> None:
    """``--db-url`` names another catalog (here a copy of the daemon's, so the same
    point exists in both): the daemon refuses the job (412) and the command runs it
    in its own catalog; the daemon's catalog gets no job."""
    other = tmp_path / "other.db"
    with sqlite3.connect(daemon.state / "catalog.db") as mine, sqlite3.connect(other) as copy:
        mine.backup(copy)
    before = len(_jobs(daemon))
    url = f"sqlite:///{other}"
    done = daemon.sendense(
        "--db-url", url, "--json", "restore", "disk", "1", str(tmp_path / "o.raw")
    )
    assert json.loads(_ok(done))["state"] == "succeeded"
    assert (tmp_path / "o.raw").read_bytes() == (daemon.root / "disk.raw").read_bytes()
    assert len(_jobs(daemon)) == before
    theirs = json.loads(_ok(daemon.sendense("--db-url", url, "--json", "jobs", "list")))
    assert theirs[0]["kind"] == "restore_disk" and theirs[0]["actor"] == "cli"


def test_a_request_sent_and_not_answered_is_never_run_twice(mute_daemon: Path) -> None:
    """A daemon that takes the request and never answers may have queued the job: the
    command must not run it itself as well (a second restore onto the same target)."""
    settings = default_settings(mute_daemon)
    with pytest.raises(daemon_client.DaemonUnanswered, match="no answer came"):
        daemon_client.submit_job(settings, "/copy-rules/x/run", {})


class _Answers(BaseHTTPRequestHandler):
    """Answers every POST as ``server.answer`` says (status, headers, body)."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        status, headers, body = self.server.answer  # type: ignore[attr-defined]
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize(
    ("status", "who", "body", "outcome"),
    [
        (422, "mine", b"{}", None),
        (409, "mine", b"{}", None),
        (412, "other", b"{}", None),
        (503, "mine", b"{}", None),
        (500, "mine", b"{}", "it failed (500)"),
        (202, "other", b'{"job": {"id": 7}}', "not a queued job"),
        (202, "mine", b'{"job": {"id": "7"}}', "named no job"),
        (202, "mine", b'{"job": {"id": 7}}', 7),
    ],
)
def test_only_a_refusal_sends_the_command_down_its_own_road(
    tmp_path: Path, status: int, who: str, body: bytes, outcome: object
) -> None:
    """A refusal (4xx, or the daemon's catalog down) queued nothing: the command runs
    the job itself. Anything else after the request went out may have queued it: one
    sentence, and the job is not run a second time."""
    state = tmp_path / "state"
    identity = {
        "X-Sendense-Version": __version__ if who == "mine" else "0.0.1",
        "X-Sendense-Catalog": catalog_identity(sqlite_url(state / "catalog.db")),
    }
    with stand_in(state, _Answers) as server:
        server.answer = (status, identity, body)
        settings = default_settings(state)
        if isinstance(outcome, str):
            with pytest.raises(daemon_client.DaemonUnanswered, match=re.escape(outcome)):
                daemon_client.submit_job(settings, "/copy-rules/x/run", {})
        else:
            job = daemon_client.submit_job(settings, "/copy-rules/x/run", {})
            assert (job["id"] if job else None) == outcome
