"""``sendense backup|chain|restore disk`` end to end: real qemu-img, catalog in a state dir."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.clock import SYSTEM_CLOCK
from engine.config import default_settings
from engine.runtime import Engine
from sendense_tui.cli import main
from tests.engine.diskgen import MiB, SourceDisk, sha256_of


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SENDENSE_CAPACITY_MIN_FREE", "0")
    monkeypatch.setenv("SENDENSE_CONFIG", "")
    state_dir = tmp_path / "state"
    (tmp_path / "repo").mkdir()
    with Engine(default_settings(state_dir)) as engine:
        engine.repository_store.add(
            name="r1", kind="local", path=str(tmp_path / "repo"), now=SYSTEM_CLOCK.now()
        )
    return state_dir


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, object]:
    code = main([*argv, "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip() else None


def test_backup_run_list_chain_show_check_and_restore_disk(
    state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    disk = SourceDisk.create(tmp_path / "d.raw", 8 * MiB, seed=5)
    s = ["--state-dir", str(state)]
    code, out = run_json(
        capsys, "backup", "run", "--repo", "r1", "--vm", "web01", "--disk", f"sda={disk.path}", *s
    )
    assert code == 0, out
    assert out["state"] == "succeeded" and out["disks"][0]["kind"] == "full"  # type: ignore[index]
    full_hash = disk.sha256()
    disk.change([(MiB, 64 * 1024)])
    code, out = run_json(
        capsys, "backup", "run", "--repo", "r1", "--vm", "web01", "--disk", f"sda={disk.path}", *s
    )
    assert code == 0 and out["disks"][0]["kind"] == "incremental"  # type: ignore[index]
    assert out["disks"][0]["allocated_bytes"] == 64 * 1024  # type: ignore[index]
    code, points = run_json(capsys, "backup", "list", *s)
    assert [p["kind"] for p in points] == ["full", "incremental"]  # type: ignore[union-attr]
    code, chains = run_json(capsys, "chain", "show", *s)
    assert chains[0]["state"] == "ok" and len(chains[0]["points"]) == 2  # type: ignore[index]
    code, reports = run_json(capsys, "chain", "check", "--deep", *s)
    assert code == 0 and reports[0]["ok"]  # type: ignore[index]
    target = tmp_path / "restored.raw"
    code, out = run_json(capsys, "restore", "disk", str(points[0]["id"]), str(target), *s)  # type: ignore[index]
    assert code == 0 and sha256_of(target) == full_hash
    # an existing target is refused with the way out
    code = main(["restore", "disk", str(points[0]["id"]), str(target), *s])  # type: ignore[index]
    assert code != 0
    assert "already exists" in capsys.readouterr().err
    # a broken chain makes `chain check` fail and say what to do
    (Path(tmp_path / "repo") / points[0]["path"]).unlink()  # type: ignore[index]
    assert main(["chain", "check", *s]) == 1
    text = capsys.readouterr().out
    assert "BROKEN" in text and "starts a new full automatically" in text


def test_chain_delete_shows_plan_then_deletes_with_yes(
    state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    disk = SourceDisk.create(tmp_path / "d.raw", 4 * MiB, seed=6)
    s = ["--state-dir", str(state)]
    for _ in range(2):
        assert (
            main(["backup", "run", "--repo", "r1", "--vm", "v", "--disk", f"sda={disk.path}", *s])
            == 0
        )
        disk.change([(0, 4096)])
    capsys.readouterr()
    assert main(["chain", "delete", "1", *s]) == 2
    assert "deletes 2 points (the whole chain)" in capsys.readouterr().out
    assert main(["chain", "delete", "1", "--yes", *s]) == 0
    assert "deleted: deletes 2 points" in capsys.readouterr().out
    _code, points = run_json(capsys, "backup", "list", *s)
    assert points == []
