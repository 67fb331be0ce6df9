"""``sendense backup run`` says per disk how the changes were found, and
``backup list`` shows it; a changed-blocks option that names no disk, or a bitmap
for a source that is not NBD, is refused with one sentence (exit 2)."""

from __future__ import annotations

from pathlib import Path

from tests.engine.diskgen import MiB, SourceDisk
from tests.engine.test_repo_import import Cli


def test_backup_run_prints_the_rung_and_what_was_read_and_list_shows_it(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    cli = Cli(tmp_path, f"sqlite:///{tmp_path / 'catalog.db'}")
    cli("repo", "add", "main", "--path", str(repo))
    disk = SourceDisk.create(tmp_path / "d.raw", 8 * MiB, seed=2)
    args = ["backup", "run", "--repo", "main", "--vm", "web01", "--disk", f"sda={disk.path}"]
    full = cli.run(*args, "--state-dir", str(cli.state), "--db-url", cli.db_url)
    assert full.returncode == 0, full.stderr
    assert "found by full: read 8.0M, wrote 8.3M" in full.stdout
    assert "source held" in full.stdout and "checksum" in full.stdout
    disk.change([(MiB, 4096)])
    inc = cli.run(*args, "--state-dir", str(cli.state), "--db-url", cli.db_url)
    assert inc.returncode == 0, inc.stderr
    assert "found by digest compare: read 8.0M, wrote 64K, changed 64K" in inc.stdout
    listed = cli.run("backup", "list", "--state-dir", str(cli.state), "--db-url", cli.db_url)
    header, *rows = listed.stdout.splitlines()
    assert "FOUND BY" in header
    assert rows[0].rstrip().endswith("full") and rows[1].rstrip().endswith("digest")
    points = cli("backup", "list")
    assert [p["tracking"]["rung"] for p in points] == ["full", "digest"]


def test_changed_block_options_are_checked_before_anything_runs(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    cli = Cli(tmp_path, f"sqlite:///{tmp_path / 'catalog.db'}")
    cli("repo", "add", "main", "--path", str(repo))
    disk = SourceDisk.create(tmp_path / "d.raw", 4 * MiB, seed=2)
    base = ["backup", "run", "--repo", "main", "--vm", "web01", "--disk", f"sda={disk.path}"]
    where = ["--state-dir", str(cli.state), "--db-url", cli.db_url]
    wrong_disk = cli.run(*base, "--changed-extents", "sdb=/tmp/x.json", *where)
    assert wrong_disk.returncode == 2
    assert "names disk 'sdb', which is not one of the --disk names" in wrong_disk.stderr
    not_nbd = cli.run(*base, "--changed-bitmap", "sda=b1", *where)
    assert not_nbd.returncode == 2
    assert "read from an nbd:// or nbd+unix:// source only" in not_nbd.stderr
    relative = cli.run(*base, "--changed-extents", "sda=x.json", *where)
    assert relative.returncode == 2 and "must be an absolute path" in relative.stderr
    assert not list(repo.rglob("*.qcow2"))  # nothing was backed up
