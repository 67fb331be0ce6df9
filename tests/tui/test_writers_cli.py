"""One writer per disk and no orphans, through the real ``sendense`` command.

Each test runs ``sendense`` in subprocesses on one catalog (SQLite and the
throwaway MariaDB) and kills them with SIGKILL. The slow source is a real
qemu-storage-daemon NBD export of a raw file behind a throttle group: a backup
from it crawls for as long as the test needs to kill or race it, then the test
lifts the throttle over QMP and the backup finishes at full speed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from engine.catalog.writers import DiskKey
from engine.config import JobSettings, default_settings
from engine.platform import pid_alive
from engine.runtime import Engine
from engine.services.backup import DiskSource
from engine.services.policies import PolicySpec
from engine.tools import procs
from engine.tools.base import which
from tests.engine.diskgen import MiB, SourceDisk, sha256_of
from tests.engine.test_jobs import wait_for

ROOT = Path(__file__).resolve().parents[2]
#: what a refused request prints first (the writer is the slow backup's job)
REFUSAL = (
    r"sendense: web01/sda is being written by job {job} "
    r"\(backup, started \d\d:\d\d UTC by cli\)"
)


class ThrottledSource:
    """A raw disk served over NBD at ``bps`` bytes a second (qemu-storage-daemon with a
    throttle group) until ``unthrottle()``: a real source as slow as the test needs."""

    # slow enough for any test here, yet one 2 MiB request (qemu-img's buffer) still
    # goes through in seconds once the throttle is lifted
    def __init__(self, raw: Path, bps: int = 256 * 1024) -> None:
        self.socket = raw.with_suffix(".sock")
        self.qmp = raw.with_suffix(".qmp")
        node = {"driver": "file", "filename": str(raw), "node-name": "file0", "read-only": True}
        throttle = {
            "driver": "throttle",
            "throttle-group": "tg0",
            "file": "raw0",
            "node-name": "slow0",
            "read-only": True,
        }
        raw_node = {"driver": "raw", "file": "file0", "node-name": "raw0", "read-only": True}
        self.args = [
            which("qemu-storage-daemon"),
            "--object",
            f"throttle-group,id=tg0,x-bps-total={bps}",
            "--blockdev",
            json.dumps(node),
            "--blockdev",
            json.dumps(raw_node),
            "--blockdev",
            json.dumps(throttle),
            "--nbd-server",
            f"addr.type=unix,addr.path={self.socket}",
            "--export",
            "type=nbd,id=e0,node-name=slow0,name=disk",
            "--chardev",
            f"socket,id=qmp0,path={self.qmp},server=on,wait=off",
            "--monitor",
            "chardev=qmp0",
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"nbd+unix:///disk?socket={self.socket}"

    def __enter__(self) -> ThrottledSource:
        self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        proc = self.proc
        wait_for(lambda: self.socket.exists() or proc.poll() is not None, what="the NBD source")
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        return self

    def unthrottle(self) -> None:
        """Full speed from now on (QMP qom-set of the throttle group's limits)."""
        with socket.socket(socket.AF_UNIX) as qmp:
            qmp.connect(str(self.qmp))
            talk = qmp.makefile("rw")
            talk.readline()  # the greeting
            for command in (
                {"execute": "qmp_capabilities"},
                {
                    "execute": "qom-set",
                    "arguments": {"path": "tg0", "property": "limits", "value": {"bps-total": 0}},
                },
            ):
                talk.write(json.dumps(command) + "\n")
                talk.flush()
                answer = json.loads(talk.readline())
                assert "return" in answer, answer

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for path in (self.socket, self.qmp):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


@dataclass
class Sendense:
    """The ``sendense`` command on one state directory and catalog."""

    state: Path
    db_url: str
    repo: Path
    env: dict[str, str]
    logs: Path
    repo_id: int = 0

    @property
    def disk(self) -> DiskKey:
        return DiskKey(self.repo_id, "web01", "sda")

    def argv(self, *args: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "sendense_tui.cli",
            *args,
            "--state-dir",
            str(self.state),
            "--db-url",
            self.db_url,
        ]

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*args),
            capture_output=True,
            text=True,
            timeout=300,
            env=self.env,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
        )

    def spawn(self, *args: str) -> Spawned:
        n = len(list(self.logs.iterdir()))
        out, err = self.logs / f"{n}.out", self.logs / f"{n}.err"
        with open(out, "wb") as o, open(err, "wb") as e:
            proc = subprocess.Popen(
                self.argv(*args), stdout=o, stderr=e, env=self.env, cwd=ROOT,
                stdin=subprocess.DEVNULL,
            )  # fmt: skip
        return Spawned(proc, out, err)

    @contextlib.contextmanager
    def engine(self) -> Iterator[Engine]:
        """The same catalog and state in this process (setting up and checking only:
        what is under test goes through the command)."""
        base = default_settings(self.state)
        settings = replace(
            base,
            db_url=self.db_url,
            capacity=replace(base.capacity, min_free_bytes=0),
            jobs=JobSettings(lease_seconds=3, heartbeat_seconds=1),
        )
        with Engine(settings) as engine:
            yield engine

    def back_up(self, source: Path) -> None:
        with self.engine() as engine:
            run = engine.backups.run(self.repo_id, "web01", [DiskSource("sda", str(source))])
        assert run.ok, run.sentence()

    def backup(self, source: str, *extra: str) -> list[str]:
        return ["backup", "run", "--repo", "r1", "--vm", "web01", "--disk", f"sda={source}", *extra]


@dataclass
class Spawned:
    proc: subprocess.Popen[bytes]
    out: Path
    err: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def finish(self, timeout: float = 300) -> tuple[int, str]:
        code = self.proc.wait(timeout)
        return code, self.err.read_text()


@pytest.fixture
def sendense(catalog_url: str, tmp_path: Path) -> Sendense:
    state, repo, logs = tmp_path / "state", tmp_path / "repo", tmp_path / "logs"
    repo.mkdir()
    logs.mkdir()
    config = tmp_path / "sendense.toml"
    # a dead engine's jobs and disks are taken over 3 s after its last heartbeat
    config.write_text("[jobs]\nlease_seconds = 3\nheartbeat_seconds = 1\n")
    env = {
        **os.environ,
        "SENDENSE_CONFIG": str(config),
        "SENDENSE_CAPACITY_MIN_FREE": "0",
    }
    env.pop("SENDENSE_DB_URL", None)
    cli = Sendense(state, catalog_url, repo, env, logs)
    with cli.engine() as engine:
        row = engine.repository_store.add(
            name="r1", kind="local", path=str(repo), now=engine.clock.now()
        )
    cli.repo_id = row.id
    return cli


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(stat[1]) == pid:
                    found.append(int(entry.name))
    return found


def qemu_img_touching(root: Path) -> list[int]:
    """Running qemu-img processes whose command line names something under ``root``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and pid_alive(int(entry.name)):
            with contextlib.suppress(OSError):
                argv = (entry / "cmdline").read_bytes().split(b"\0")
                if Path(argv[0].decode()).name == "qemu-img" and str(root).encode() in b" ".join(
                    argv
                ):
                    found.append(int(entry.name))
    return found


def partials(root: Path) -> list[Path]:
    return sorted(root.rglob(".*.partial"))


def events_of(engine: Engine, kind: str) -> list[Any]:
    return [e for e in engine.audit.query(limit=5000) if e.kind == kind]


def chain_is_sound(cli: Sendense, expected: str, scratch: Path) -> list[dict[str, Any]]:
    """Every chain checks without a finding (`chain check`'s view: no orphan, no
    partial file), and every point restores to ``expected``; returns the points."""
    with cli.engine() as engine:
        reports = engine.chains.check_all()
        assert reports and all(r.ok and not r.findings for r in reports), [
            r.sentence() for r in reports
        ]
        points = [
            {"id": b.id, "kind": b.kind, "position": b.position, "chain_id": c.id}
            for b, c in engine.backups.list_points()
        ]
        for p in points:
            target = scratch / f"restored-{p['id']}.raw"
            engine.restores.restore(p["id"], str(target))
            assert sha256_of(target) == expected, f"point {p['id']} restores other bytes"
            target.unlink()
    return sorted(points, key=lambda p: p["position"])


def wait_lapsed(cli: Sendense, job_id: int) -> None:
    """Until the dead engine's job lease and its disk lease have both lapsed."""

    def lapsed() -> bool:
        with cli.engine() as engine:
            now = engine.clock.now()
            job = engine.job_store.get(job_id)
            holder = engine.writers.store.get(cli.disk)
            job_lapsed = job.lease_expires_at is not None and job.lease_expires_at < now
            return job_lapsed and (holder is None or holder.lapsed(now))

    wait_for(lapsed, timeout=60, what=f"the leases of job {job_id} to lapse")


# -- a backup killed with SIGKILL ----------------------------------------------------


def test_a_sigkilled_backup_leaves_no_qemu_img_and_the_next_backup_takes_over(
    sendense: Sendense, tmp_path: Path
) -> None:
    src = SourceDisk.create(tmp_path / "src.raw", 8 * MiB, seed=11)
    with ThrottledSource(src.path) as slow:
        first = sendense.spawn(*sendense.backup(slow.uri))
        writer: int = wait_for(
            lambda: next(
                (p for p in children(first.pid) if procs.program_of(p) == "qemu-img"), None
            ),
            timeout=120,
            what="qemu-img convert to start writing",
        )
        partial: Path = wait_for(lambda: partials(sendense.repo)[:1], what="the partial file")[0]
        os.kill(first.pid, signal.SIGKILL)  # the OOM killer, a kill -9, a crash
        first.proc.wait(10)
        # its qemu-img goes with it instead of finishing a file nobody will rename
        wait_for(lambda: not pid_alive(writer), what="qemu-img to die with its engine")
        assert qemu_img_touching(sendense.repo) == []
        assert procs.holders(partial) == []
    assert partial.exists()  # nobody else removed it: the next engine must

    with sendense.engine() as engine:
        (dead,) = engine.job_store.list(kind="backup")
    assert dead.state == "running"  # as the dead engine left it
    wait_lapsed(sendense, dead.id)

    # the source of the dead job is gone; a new backup of the disk from a file
    done = sendense.run(*sendense.backup(str(src.path)), "--json")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    fresh = json.loads(done.stdout)

    with sendense.engine() as engine:
        old = engine.job_store.get(dead.id)
        removed = [
            e for kind in ("writer.taken_over", "job.taken_over") for e in events_of(engine, kind)
        ]
        chain_dirs = {c.directory for c in engine.chain_store.list_chains()}
    # taken over exactly once: re-run after its partial file was removed, and it
    # failed on its vanished source instead of staying `running` or running twice
    assert old.state == "failed" and old.takeovers == 1, (old.state, old.error)
    assert "sda" in (old.error or "")
    assert any(partial.name in e.message and "removed" in e.message for e in removed)
    assert partials(sendense.repo) == []
    disk_dir = sendense.repo / "chains/web01/sda"
    left = {str(d.relative_to(sendense.repo)) for d in disk_dir.iterdir()}
    assert left == chain_dirs  # no empty directory of the killed full either

    points = chain_is_sound(sendense, src.sha256(), tmp_path)
    assert [(p["kind"], p["position"]) for p in points] == [("full", 0)]
    assert points[0]["id"] == fresh["disks"][0]["backup_id"]


# -- two writers of one disk ---------------------------------------------------------


def test_two_backups_of_one_disk_started_together_take_turns_and_make_one_chain(
    sendense: Sendense, tmp_path: Path
) -> None:
    src = SourceDisk.create(tmp_path / "src.raw", 8 * MiB, seed=12)
    sendense.back_up(src.path)  # the full
    with ThrottledSource(src.path) as slow:
        both = [sendense.spawn(*sendense.backup(slow.uri)) for _ in range(2)]

        def one_waits() -> bool:
            with sendense.engine() as engine:
                return bool(events_of(engine, "job.waiting"))

        wait_for(one_waits, timeout=120, what="one backup to wait for the other")
        slow.unthrottle()
        results = [run.finish() for run in both]
    assert [code for code, _err in results] == [0, 0], results
    assert all("Traceback" not in err for _code, err in results)

    points = chain_is_sound(sendense, src.sha256(), tmp_path)
    assert [(p["kind"], p["position"]) for p in points] == [
        ("full", 0),
        ("incremental", 1),
        ("incremental", 2),
    ]
    assert len({p["chain_id"] for p in points}) == 1
    with sendense.engine() as engine:
        jobs = {j.id for j in engine.job_store.list(kind="backup")}
        waited = [e for e in events_of(engine, "job.waiting") if e.job_id in jobs]
    # one of them waited for the other, and was told which job held the disk
    sentence = waited[0].data["sentence"]
    assert re.fullmatch(
        r"web01/sda is being written by job (\d+) \(backup, started \d\d:\d\d UTC by cli\)",
        sentence,
    ), sentence


def test_no_wait_requests_are_refused_naming_the_backup_and_a_merge_waits_for_it(
    sendense: Sendense, tmp_path: Path
) -> None:
    src = SourceDisk.create(tmp_path / "src.raw", 24 * MiB, seed=13)
    for _ in range(2):
        sendense.back_up(src.path)
    with sendense.engine() as engine:
        engine.policies.add(
            PolicySpec(
                name="nightly",
                schedule="0 1 * * *",
                target="r1",
                sources=[{"vm": "web01", "disks": [{"name": "sda", "source": str(src.path)}]}],
                retention={"keep_last": 1},
            )
        )
    before = chain_is_sound(sendense, src.sha256(), tmp_path)
    chain_id, newest = before[0]["chain_id"], before[-1]["id"]

    with ThrottledSource(src.path) as slow:
        backup = sendense.spawn(*sendense.backup(slow.uri))

        def writer_job() -> int | None:
            with sendense.engine() as engine:
                holder = engine.writers.store.get(sendense.disk)
            return holder.job_id if holder is not None else None

        job_id: int = wait_for(writer_job, timeout=120, what="the backup to hold web01/sda")
        with sendense.engine() as engine:
            jobs_before = len(engine.job_store.list())
        refused_by = {
            "backup": sendense.backup(str(src.path), "--no-wait"),
            "consolidate": ["chain", "consolidate", str(chain_id), "--no-wait"],
            "delete": ["chain", "delete", str(newest), "--yes", "--no-wait"],
            "retention": ["policy", "preview", "nightly", "--apply", "--no-wait"],
        }
        for what, argv in refused_by.items():
            done = sendense.run(*argv)
            assert done.returncode == 2, (what, done.stdout, done.stderr)
            first_line = done.stderr.splitlines()[0]
            assert re.fullmatch(REFUSAL.format(job=job_id), first_line), (what, done.stderr)
            assert "Traceback" not in done.stderr
        with sendense.engine() as engine:
            assert len(engine.job_store.list()) == jobs_before  # nothing was queued
        # without --no-wait, a merge of the same disk waits for the backup
        merge = sendense.spawn("chain", "consolidate", str(chain_id))
        wait_for(lambda: "waiting:" in merge.err.read_text(), timeout=120, what="the merge to wait")
        slow.unthrottle()
        backup_code, backup_err = backup.finish()
        merge_code, merge_err = merge.finish()
    assert backup_code == 0, backup_err
    assert merge_code == 0, merge_err
    assert re.search(
        r"waiting: web01/sda is being written by job \d+ \(backup, started", merge_err
    ), merge_err

    with sendense.engine() as engine:
        (landed,) = [e for e in events_of(engine, "backup.completed") if e.job_id == job_id]
        (merged,) = events_of(engine, "chain.consolidated")
    assert merged.id > landed.id  # the merge ran after the backup, not beside it
    after = chain_is_sound(sendense, src.sha256(), tmp_path)
    # the refused delete and retention removed nothing; the merge took the full in
    assert newest in {p["id"] for p in after} and len(after) == len(before)
