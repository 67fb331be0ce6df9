"""The `sendense` command: output, exit codes and error messages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.tools import base as tools_base
from sendense_tui.cli import main
from sendense_tui.demo import build_demo_engine, demo_clock, seed_demo_catalog

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "sendense_tui.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=full_env,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    clock = demo_clock()
    engine = build_demo_engine(tmp_path / "state", clock)
    seed_demo_catalog(engine, clock)
    engine.close()
    return tmp_path / "state"


def test_jobs_list_json(state_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--state-dir", str(state_dir), "jobs", "list", "--json"]) == 0
    jobs = json.loads(capsys.readouterr().out)
    assert {j["state"] for j in jobs} == {
        "running",
        "queued",
        "paused",
        "succeeded",
        "failed",
        "failed_unprotected",  # written, but its lock could not be set
        "cancelled",
    }
    running = next(j for j in jobs if j["title"] == "backup db01/disk0 (incremental)")
    assert running["bytes_total"] == 8 * 1024**3


def test_jobs_cancel_changes_the_catalog(state_dir: Path, capsys) -> None:
    main(["jobs", "list", "--json", "--state-dir", str(state_dir), "--state", "queued"])
    queued = json.loads(capsys.readouterr().out)[0]
    assert main(["--state-dir", str(state_dir), "jobs", "cancel", str(queued["id"])]) == 0
    assert "cancelled" in capsys.readouterr().out
    assert main(["--state-dir", str(state_dir), "jobs", "show", str(queued["id"]), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "cancelled"


def test_unknown_job_is_one_line_exit_2(state_dir: Path, capsys) -> None:
    assert main(["--state-dir", str(state_dir), "jobs", "show", "999"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sendense: job 999 does not exist")
    assert "Traceback" not in err


def test_events_filters(state_dir: Path, capsys) -> None:
    assert main(["--state-dir", str(state_dir), "events", "--level", "warning", "--json"]) == 0
    entries = json.loads(capsys.readouterr().out)
    assert {e["level"] for e in entries} == {"warning", "error", "critical"}
    assert main(["--state-dir", str(state_dir), "events", "--grep", "offsite", "--limit", "2"]) == 0
    *lines, more = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all("offsite" in line for line in lines)
    assert " more: --after " in more  # the page says how to read on


def test_catalog_status_and_migrate(tmp_path: Path, capsys) -> None:
    state = tmp_path / "fresh"
    assert main(["--state-dir", str(state), "catalog", "migrate", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["up_to_date"] and data["revision"] == data["head"] and data["tables"] > 5
    assert main(["--state-dir", str(state), "catalog", "status"]) == 0
    out = capsys.readouterr().out
    assert "up to date" in out and str(state) in out


def test_bad_config_file_names_file_and_key(tmp_path: Path) -> None:
    config = tmp_path / "sendense.toml"
    config.write_text('[capacity]\nwarning_percent = "lots"\n')
    proc = run_cli("jobs", "list", env={"SENDENSE_CONFIG": str(config)})
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert str(config) in lines[0] and "capacity.warning_percent" in lines[0]
    assert "Traceback" not in proc.stderr


def test_invalid_toml_is_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "sendense.toml"
    config.write_text("[catalog\nurl = 1\n")
    proc = run_cli("version", "--json", env={"SENDENSE_CONFIG": str(config)})
    # version reads no settings: it works even with a broken config
    assert proc.returncode == 0
    proc = run_cli("jobs", "list", env={"SENDENSE_CONFIG": str(config)})
    assert proc.returncode == 2
    assert "not valid TOML" in proc.stderr and str(config) in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unreachable_mysql_hides_the_password(tmp_path: Path) -> None:
    proc = run_cli(
        "--state-dir",
        str(tmp_path),
        "--db-url",
        "mysql+pymysql://u:secret@127.0.0.1:1/x",
        "jobs",
        "list",
    )
    assert proc.returncode == 3  # catalog unavailable (the exit-code table)
    assert "cannot reach" in proc.stderr
    assert "secret" not in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr


def test_doctor_finds_the_installed_programs() -> None:
    proc = run_cli("doctor", "--json")
    assert proc.returncode == 0, proc.stdout
    found = {r["program"]: r for r in json.loads(proc.stdout)}
    assert found["qemu-img"]["ok"] and found["qemu-img"]["path"].endswith("/qemu-img")


def test_doctor_names_the_package_for_missing_programs(
    monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """With PATH emptied. engine.tools.which also looks in /usr/bin and /sbin (for
    root's sake), where this machine has everything; hiding those needs one patch at
    that edge, so shutil.which sees the emptied PATH only."""
    monkeypatch.setenv("PATH", "")
    real_which = tools_base.shutil.which
    monkeypatch.setattr(
        tools_base.shutil, "which", lambda cmd, path=None: real_which(cmd, path=os.environ["PATH"])
    )
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert "apt-get install qemu-utils" in out
    assert "qemu-img" in out and "MISSING" in out


def test_console_without_a_terminal_refuses_instead_of_hanging(tmp_path: Path) -> None:
    proc = run_cli("--state-dir", str(tmp_path))
    assert proc.returncode == 2
    assert "needs a terminal" in proc.stderr


def test_version(capsys) -> None:
    assert main(["version"]) == 0
    assert capsys.readouterr().out.startswith("sendense ")


def test_lock_extend_moves_the_expiry_later_and_refuses_earlier(
    state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Lock periods can be extended from the CLI, never shortened."""
    from datetime import UTC, datetime

    clock = demo_clock()
    engine = build_demo_engine(state_dir, clock)
    try:
        repo = engine.repository_store.list()[0]
        lock = engine.lock_store.add(
            repository_id=repo.id,
            path="chains/db01/disk0/x/0000-full.qcow2",
            expires_at=datetime(2026, 12, 24, tzinfo=UTC),
            now=clock.now(),
        )
    finally:
        engine.close()
    base = ["--state-dir", str(state_dir), "lock", "extend", str(lock.id)]
    assert main([*base, "--until", "2027-01-31"]) == 0
    assert "extended to 2027-01-31" in capsys.readouterr().out
    assert main([*base, "--until", "2027-01-01"]) == 2
    err = capsys.readouterr().err
    assert "never shortened" in err and "Traceback" not in err
    assert main([*base, "--until", "soon"]) == 2
    assert "YYYY-MM-DD" in capsys.readouterr().err
    assert main(["--state-dir", str(state_dir), "lock", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["expires_at"][:10] for r in rows if r["id"] == lock.id] == ["2027-01-31"]


def test_release_expired_with_an_untrusted_clock_fails_in_json_too(
    state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A clock that jumped backwards releases nothing; a script reading --json must not
    see success (exit 0) while no lock was released."""
    from datetime import UTC, datetime

    engine = build_demo_engine(state_dir, demo_clock())
    try:
        engine.lock_store.add(
            repository_id=engine.repository_store.list()[0].id,
            path="chains/x/y/z/0000-full.qcow2",
            expires_at=datetime(2031, 1, 1, tzinfo=UTC),
            now=datetime(2030, 1, 1, tzinfo=UTC),  # recorded "later" than the clock reads
        )
    finally:
        engine.close()
    base = ["--state-dir", str(state_dir), "lock", "release-expired"]
    assert main(base) == 2
    assert "jumped backwards" in capsys.readouterr().err
    assert main([*base, "--json"]) == 2
    report = json.loads(capsys.readouterr().out)
    assert report["released"] == []


@pytest.mark.parametrize("value", ["bad", "/dev/vg0/web01", "=/dev/vg0/web01", "sda="])
def test_backup_run_disk_without_name_is_a_usage_error(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--disk bad` used to become disk "disk0" reading source "bad": a typo turned into
    a backup of the wrong thing under a made-up name. Now it is exit 2 with the format."""
    with pytest.raises(SystemExit) as exited:
        main(["backup", "run", "--repo", "local", "--vm", "web01", "--disk", value])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "--disk takes NAME=SOURCE, e.g. sda=/dev/vg0/web01" in err
    assert "Traceback" not in err


def _downgrade_one_revision(state: Path) -> str:
    """Take the catalog in ``state`` back one real schema revision (alembic's own
    downgrade: the newest tables are dropped). Returns the revision it is at."""
    from alembic import command

    from engine.catalog.db import Catalog, alembic_config
    from engine.config import sqlite_url

    catalog = Catalog(sqlite_url(state / "catalog.db"))
    try:
        config = alembic_config()
        with catalog.engine.begin() as conn:
            config.attributes["connection"] = conn
            command.downgrade(config, "-1")
        revision = catalog.current_revision()
    finally:
        catalog.dispose()
    assert revision is not None
    return revision


READ_ONLY_COMMANDS = [
    ["repo", "list"],
    ["repo", "show", "local"],
    ["jobs", "list"],
    ["events"],
    ["backup", "list"],
    ["chain", "show"],
    ["copy", "rule", "list"],
    ["copy", "status"],
    ["policy", "list"],
    ["lock", "list"],
    ["metrics"],
    ["api", "token", "list"],
    ["notify", "rule", "list"],
    ["notify", "deliveries"],
    ["verify", "report"],
]


def test_read_only_commands_neither_migrate_nor_clean_up_restore_mounts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A catalog one revision behind: every read-only command refuses it with one
    sentence and leaves its revision; a restore mount directory nobody accounts for
    stays. The first command that writes migrates the catalog and cleans up."""
    from engine.catalog.db import SCHEMA_HEAD

    state = tmp_path / "state"
    assert main(["--state-dir", str(state), "repo", "list"]) == 0
    older = _downgrade_one_revision(state)
    assert older != SCHEMA_HEAD
    leftover = state / "restore" / "m999"
    leftover.mkdir(parents=True)
    capsys.readouterr()

    for command in READ_ONLY_COMMANDS:
        code = main(["--state-dir", str(state), *command])
        captured = capsys.readouterr()
        assert code == 2, (command, captured.err)
        lines = captured.err.strip().splitlines()
        assert lines[0] == (
            f"sendense: catalog sqlite:///{state / 'catalog.db'} is at schema {older}, older "
            f"than this Sendense ({SCHEMA_HEAD}); this command only reads and left it untouched"
        ), command
        assert "sendense catalog migrate" in captured.err and "Traceback" not in captured.err
        assert main(["--state-dir", str(state), "catalog", "status", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["revision"] == older, command
        assert leftover.is_dir(), command

    # a command that writes migrates and cleans up (so the checks above can fail)
    assert main(["--state-dir", str(state), "jobs", "cancel", "999"]) == 2  # no such job
    capsys.readouterr()
    assert main(["--state-dir", str(state), "catalog", "status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["revision"] == SCHEMA_HEAD
    assert not leftover.exists()


def test_read_only_commands_leave_restore_mounts_on_a_current_catalog(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Up to date, a listing works and still leaves restore mounts alone."""
    state = tmp_path / "state"
    assert main(["--state-dir", str(state), "repo", "list"]) == 0
    leftover = state / "restore" / "m999"
    leftover.mkdir(parents=True)
    for command in READ_ONLY_COMMANDS:
        assert main(["--state-dir", str(state), *command, "--json"]) == 0, command
        assert leftover.is_dir(), command
    capsys.readouterr()
    assert main(["--state-dir", str(state), "jobs", "cancel", "999"]) == 2  # writes: cleans up
    assert not leftover.exists()
