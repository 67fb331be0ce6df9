"""A command that waits for its one job touches only what the job writes: the other
repositories are neither mounted, write-tested nor mode-repaired (that is the work of
the daemon or the console, which live on). At 50 repositories preparing them all cost
every ``backup run`` seconds before its job began."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.engine.diskgen import MiB, SourceDisk
from tests.engine.test_repo_import import Cli


@pytest.mark.skipif(os.geteuid() != 0, reason="chattr +i and mode repair need root")
def test_backup_run_leaves_the_other_repositories_as_they_are(tmp_path: Path) -> None:
    main, other = tmp_path / "main", tmp_path / "other"
    main.mkdir()
    other.mkdir()
    cli = Cli(tmp_path, f"sqlite:///{tmp_path / 'catalog.db'}")
    where = ["--state-dir", str(cli.state), "--db-url", cli.db_url]
    cli("repo", "add", "main", "--path", str(main))
    cli("repo", "add", "other", "--path", str(other))
    # a file in the other repository that a repository's preparation would close to
    # group and others (repair_modes), and a write-test leftover it would not leave
    stray = other / "chains" / "vm9" / "sda" / "note.txt"
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_text("kept as it is\n")
    stray.chmod(0o644)
    before = {p: p.stat().st_mtime_ns for p in other.rglob("*")}
    disk = SourceDisk.create(tmp_path / "d.raw", 4 * MiB, seed=3)

    done = cli.run(
        "backup", "run", "--repo", "main", "--vm", "web01", "--disk", f"sda={disk.path}", *where
    )

    assert done.returncode == 0, done.stderr
    assert list(main.glob("chains/web01/sda/**/*.qcow2")), "the backup landed in main"
    assert stray.stat().st_mode & 0o777 == 0o644
    assert {p: p.stat().st_mtime_ns for p in other.rglob("*")} == before
