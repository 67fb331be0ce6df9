"""``sendense repo import`` and ``sendense chain check --fix`` end to end: the real CLI in
subprocesses, real qemu-img, an immutable repository on a loop-mounted ext4 (real
chattr), a catalog on SQLite and on the throwaway MariaDB that is deleted on purpose,
and real SIGKILLs at the import's failpoints.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from engine.services import manifests
from engine.tools import attrs
from tests.engine.diskgen import MiB, SourceDisk, sha256_of

ROOT = Path(__file__).resolve().parents[2]


class Cli:
    """``sendense ... --state-dir S --db-url U`` in a subprocess."""

    def __init__(self, tmp_path: Path, db_url: str, **env: str) -> None:
        self.state = tmp_path / "state"
        self.db_url = db_url
        self.env = {
            **os.environ,
            "SENDENSE_CAPACITY_MIN_FREE": "0",
            "SENDENSE_CONFIG": "",
            "LC_ALL": "C",
            **env,
        }
        self.env.pop("SENDENSE_FAILPOINT", None)

    def run(self, *args: str, failpoint: str | None = None) -> subprocess.CompletedProcess[str]:
        env = dict(self.env)
        if failpoint:
            env["SENDENSE_FAILPOINT"] = failpoint
        return subprocess.run(
            [sys.executable, "-m", "sendense_tui.cli", *args],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
        )

    def __call__(self, *args: str, code: int = 0) -> Any:
        """Run with ``--json``; the exit code must be ``code``; returns the parsed output."""
        done = self.run(*args, "--json", "--state-dir", str(self.state), "--db-url", self.db_url)
        assert done.returncode == code, f"{args}: {done.returncode}\n{done.stdout}\n{done.stderr}"
        try:
            return json.loads(done.stdout) if done.stdout.strip() else None
        except json.JSONDecodeError:  # a command without JSON output (lock enable)
            return done.stdout


def lose_catalog(cli: Cli, request: pytest.FixtureRequest) -> None:
    """The catalog is gone: the SQLite file deleted, the MariaDB database dropped and
    created empty again. A lost SQLite file is never replaced by an empty one behind
    the operator's back: commands refuse (exit 3) until `sendense catalog create`."""
    if cli.db_url.startswith("sqlite"):
        db = Path(urlparse(cli.db_url).path)
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        refused = cli.run("repo", "list", "--state-dir", str(cli.state), "--db-url", cli.db_url)
        assert refused.returncode == 3 and "catalog create" in refused.stderr, refused.stderr
        cli("catalog", "create")
        return
    server = request.getfixturevalue("mariadb_server")
    name = urlparse(cli.db_url).path.lstrip("/")
    server.execute(f"DROP DATABASE `{name}`", f"CREATE DATABASE `{name}`")


def restore_hash(cli: Cli, backup_id: int, tmp_path: Path) -> str:
    target = tmp_path / f"restored-{backup_id}.raw"
    target.unlink(missing_ok=True)
    cli("restore", "disk", str(backup_id), str(target))
    digest = sha256_of(target)
    target.unlink()
    return digest


def lock_set(cli: Cli) -> set[tuple[str, str, str, str]]:
    return {(r["repository"], r["path"], r["state"], r["expires_at"]) for r in cli("lock", "list")}


@pytest.mark.root
def test_back_up_copy_lock_lose_the_catalog_import_both_and_every_point_restores(
    catalog_url: str, loop_fs: Any, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    vault = loop_fs("ext4", 64).mountpoint
    offsite = loop_fs("ext4", 64).mountpoint
    cli = Cli(tmp_path, catalog_url)
    cli("repo", "add", "vault", "--path", str(vault))
    cli("repo", "add", "offsite", "--path", str(offsite))
    cli("lock", "enable", "vault", "--days", "30", "--yes")
    disk = SourceDisk.create(tmp_path / "web01-sda.raw", 4 * MiB, seed=11)
    moments: dict[str, str] = {}  # point path -> the source's sha256 at that moment
    for i in range(3):
        if i:
            disk.change([(i * MiB, 96 * 1024)])
            time.sleep(1.1)  # point file names carry the second
        out = cli("backup", "run", "--repo", "vault", "--vm", "web01", "--disk", f"sda={disk.path}")
        moments[out["disks"][0]["path"]] = disk.sha256()
    cli("copy", "rule", "add", "off", "--from", "vault", "--to", "offsite", "--lock")
    assert cli("copy", "run", "off")["state"] == "succeeded"
    locks = cli("lock", "list")
    assert len(locks) == 6  # three points, three copies
    # one lock is kept longer by hand: the manifest records the extension too
    full_lock = next(r for r in locks if r["repository"] == "vault" and "-full-" in r["path"])
    later = (datetime.now(UTC) + timedelta(days=400)).date().isoformat()
    cli("lock", "extend", str(full_lock["id"]), "--until", later)
    before_locks = lock_set(cli)
    assert any(e.startswith(later) for _r, _p, _s, e in before_locks)
    for root in (vault, offsite):
        for path in moments:
            m = manifests.read_manifest(root / path)
            assert m.lock_expires is not None and attrs.is_immutable(root / path)

    lose_catalog(cli, request)
    assert cli("backup", "list") == []  # an empty catalog: Sendense knows nothing

    first = cli("repo", "import", "vault", "--path", str(vault))
    assert first["state"] == "succeeded" and first["ok"], first
    [chain] = first["chains"]
    assert chain["outcome"] == "imported" and len(chain["points"]) == 3
    assert any("sendense lock enable vault" in n for n in first["notes"])
    second = cli("repo", "import", "offsite", "--path", str(offsite))
    assert second["ok"] and second["chains"][0]["outcome"] == "copies", second
    assert len(second["chains"][0]["copies"]) == 3

    # the locks are listed with their original expiry, the files are still flagged
    assert lock_set(cli) == before_locks
    for root in (vault, offsite):
        for path in moments:
            assert attrs.is_immutable(root / path)
    # every point restores to its moment's bytes
    points = {p["path"]: p for p in cli("backup", "list")}
    assert set(points) == set(moments)
    for path, digest in moments.items():
        assert restore_hash(cli, points[path]["id"], tmp_path) == digest
    # the copies are known as copies of those points
    copies = cli("copy", "status")["copies"]
    assert {(c["backup_id"], c["state"]) for c in copies} == {
        (p["id"], "completed") for p in points.values()
    }
    assert cli("chain", "check", "--deep")[0]["ok"]

    # the next incremental builds on the imported chain (and is locked again)
    cli("lock", "enable", "vault", "--days", "30", "--yes")
    disk.change([(3 * MiB, 4096)])
    time.sleep(1.1)
    out = cli("backup", "run", "--repo", "vault", "--vm", "web01", "--disk", f"sda={disk.path}")
    new = out["disks"][0]
    assert new["kind"] == "incremental" and new["chain_id"] == chain["chain_id"]
    assert restore_hash(cli, new["backup_id"], tmp_path) == disk.sha256()
    assert attrs.is_immutable(vault / new["path"])
    assert len(lock_set(cli)) == 7


def test_an_import_killed_midway_finishes_once_when_run_again(tmp_path: Path) -> None:
    """The job is taken over, not doubled, and each point is imported exactly once.
    (test_crash_matrix kills an import at every import failpoint.)"""
    repo_dir = tmp_path / "repo"
    repo_dir.mkdir()
    config = tmp_path / "sendense.toml"
    config.write_text("[jobs]\nlease_seconds = 2\nheartbeat_seconds = 0.5\n")
    cli = Cli(tmp_path, f"sqlite:///{tmp_path / 'catalog.db'}", SENDENSE_CONFIG=str(config))
    cli("repo", "add", "main", "--path", str(repo_dir))
    disk = SourceDisk.create(tmp_path / "d.raw", 4 * MiB, seed=12)
    moments = {}
    for vm in ("web01", "db01"):
        out = cli("backup", "run", "--repo", "main", "--vm", vm, "--disk", f"sda={disk.path}")
        moments[out["disks"][0]["path"]] = disk.sha256()
    (tmp_path / "catalog.db").unlink()
    cli("catalog", "create")  # on purpose: a lost catalog is never replaced silently

    args = ["repo", "import", "main", "--path", str(repo_dir), "--state-dir", str(cli.state)]
    killed = cli.run(*args, "--db-url", cli.db_url, failpoint="import.chain_recorded")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    time.sleep(2.5)  # the lease of the killed engine lapses
    again = cli("repo", "import", "main", "--path", str(repo_dir))
    assert again["state"] == "succeeded" and again["ok"], again
    jobs = [j for j in cli("jobs", "list") if j["kind"] == "repository.import"]
    assert len(jobs) == 1 and jobs[0]["state"] == "succeeded"  # taken over, not doubled
    points = cli("backup", "list")
    assert sorted(p["path"] for p in points) == sorted(moments)  # each exactly once
    for p in points:
        assert restore_hash(cli, p["id"], tmp_path) == moments[p["path"]]
    assert all(r["ok"] for r in cli("chain", "check"))


@pytest.mark.root
def test_chain_check_fix_removes_stale_partials_imports_orphans_and_leaves_locked_ones(
    loop_fs: Any, tmp_path: Path
) -> None:
    vault = loop_fs("ext4", 64).mountpoint
    cli = Cli(tmp_path, f"sqlite:///{tmp_path / 'catalog.db'}")
    cli("repo", "add", "vault", "--path", str(vault))
    disk = SourceDisk.create(tmp_path / "d.raw", 4 * MiB, seed=13)
    other = SourceDisk.create(tmp_path / "o.raw", 4 * MiB, seed=14)
    paths = []
    for i in range(2):
        if i:
            disk.change([(MiB, 4096)])
            time.sleep(1.1)
        out = cli("backup", "run", "--repo", "vault", "--vm", "web01", "--disk", f"sda={disk.path}")
        paths.append(out["disks"][0]["path"])
    # db01: a locked full whose catalog rows are lost below
    cli("lock", "enable", "vault", "--days", "30", "--yes")
    locked = cli("backup", "run", "--repo", "vault", "--vm", "db01", "--disk", f"vda={other.path}")
    locked_path = vault / locked["disks"][0]["path"]
    assert attrs.is_immutable(locked_path)
    # the crash: the rows of web01's newest point and of db01's chain were never written
    db = tmp_path / "catalog.db"
    subprocess.run(
        ["sqlite3", str(db),
         f"DELETE FROM immutability_locks WHERE path = '{locked['disks'][0]['path']}';"
         f"DELETE FROM backups WHERE path IN ('{paths[1]}', '{locked['disks'][0]['path']}');"
         f"DELETE FROM chains WHERE id = {locked['disks'][0]['chain_id']};"],
        check=True, timeout=30,
    )  # fmt: skip
    chain_dir = (vault / paths[0]).parent
    stale = chain_dir / ".0002-inc-20261124T000000Z.qcow2.partial"
    stale.write_bytes(b"left by a killed backup")
    then = time.time() - 3600
    os.utime(stale, (then, then))

    report = cli("chain", "check")
    text = json.dumps(report)
    assert "a finished point file the catalog does not know" in text
    assert "left by an interrupted backup" in text
    unknown = [r for r in report if r["unknown"]]
    assert [r["vm"] for r in unknown] == ["db01"]

    fixed = cli("chain", "check", "--fix")
    assert not stale.exists()
    assert any(".partial" in line for line in fixed["fix"]["removed"])
    assert any("db01" in line and "locked" in line for line in fixed["fix"]["left_alone"])
    assert locked_path.exists() and attrs.is_immutable(locked_path)  # never touched
    points = {p["path"]: p for p in cli("backup", "list")}
    assert paths[1] in points and locked["disks"][0]["path"] not in points
    assert all(r["ok"] for r in fixed["reports"])

    # `repo import` of the same repository records the locked chain, with its lock
    again = cli("repo", "import", "vault", "--path", str(vault))
    assert again["ok"], again
    points = {p["path"]: p for p in cli("backup", "list")}
    assert locked["disks"][0]["path"] in points
    [lock] = cli("lock", "list")
    assert lock["path"] == locked["disks"][0]["path"]
    assert lock["expires_at"] == manifests.read_manifest(locked_path).lock_expires.isoformat()  # type: ignore[union-attr]
    assert not [r for r in cli("chain", "check") if r["unknown"]]

    # the next incremental of web01 builds on the point --fix imported
    disk.change([(2 * MiB, 4096)])
    time.sleep(1.1)
    out = cli("backup", "run", "--repo", "vault", "--vm", "web01", "--disk", f"sda={disk.path}")
    newest = next(p for p in cli("backup", "list") if p["id"] == out["disks"][0]["backup_id"])
    assert newest["kind"] == "incremental"
    assert newest["chain_id"] == points[paths[1]]["chain_id"]


def test_repo_import_refuses_a_directory_without_a_repository_and_writes_nothing(
    tmp_path: Path,
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    cli = Cli(tmp_path, f"sqlite:///{tmp_path / 'catalog.db'}")
    done = cli.run(
        "repo", "import", "x", "--path", str(empty), "--state-dir", str(cli.state),
        "--db-url", cli.db_url,
    )  # fmt: skip
    assert done.returncode == 2
    assert "holds no Sendense repository: it has no chains/ directory" in done.stderr
    assert "Traceback" not in done.stderr and list(empty.iterdir()) == []
    assert "x" not in [r["name"] for r in cli("repo", "list")]


def test_repo_import_under_a_name_that_is_elsewhere_is_refused(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    for root in (first, second):
        (root / "chains").mkdir(parents=True)
    cli = Cli(tmp_path, f"sqlite:///{tmp_path / 'catalog.db'}")
    assert cli("repo", "import", "vault", "--path", str(first))["ok"]
    done = cli.run(
        "repo", "import", "vault", "--path", str(second), "--state-dir", str(cli.state),
        "--db-url", cli.db_url,
    )  # fmt: skip
    assert done.returncode == 2
    assert f"a repository named vault already exists at {first}" in done.stderr
    # the same place again is fine: it records what is not recorded yet (here: nothing)
    again = cli("repo", "import", "vault", "--path", str(first))
    assert again["ok"] and again["chains"] == []
