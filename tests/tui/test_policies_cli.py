"""``sendense policy edit``: unspecified fields stay, a bad edit is exit 2 and changes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.clock import SYSTEM_CLOCK
from engine.config import default_settings
from engine.runtime import Engine
from sendense_tui.cli import main


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SENDENSE_CONFIG", "")
    state_dir = tmp_path / "state"
    (tmp_path / "repo").mkdir()
    with Engine(default_settings(state_dir)) as engine:
        engine.repository_store.add(
            name="r1", kind="local", path=str(tmp_path / "repo"), now=SYSTEM_CLOCK.now()
        )
    return state_dir


def show(capsys: pytest.CaptureFixture[str], state: Path) -> dict[str, object]:
    capsys.readouterr()
    assert main(["--state-dir", str(state), "policy", "show", "web", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_policy_edit_changes_what_is_given_and_keeps_the_rest(
    state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    s = ["--state-dir", str(state)]
    add = ["policy", "add", "web", "--schedule", "0 2 * * *", "--target", "r1"]
    assert main([*s, *add, "--source", "web01:sda=/dev/vg/web01", "--daily", "4"]) == 0
    edit = ["policy", "edit", "web", "--schedule", "15 3 * * 1-5", "--keep-last", "3"]
    assert main([*s, *edit]) == 0
    assert "policy web changed; next run" in capsys.readouterr().out
    data = show(capsys, state)
    assert data["schedule"] == "15 3 * * 1-5"
    assert data["retention"]["keep_last"] == 3 and data["retention"]["daily"] == 4  # type: ignore[index]
    assert data["sources"] == [
        {"vm": "web01", "disks": [{"name": "sda", "source": "/dev/vg/web01"}]}
    ]
    assert [r[11:16] for r in data["next_runs"]] == ["03:15"] * 5  # type: ignore[union-attr]

    assert main([*s, "policy", "edit", "web", "--schedule", "0 25 * * *"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "was not changed" in err[0] and "not a valid cron expression" in err[0]
    assert show(capsys, state)["schedule"] == "15 3 * * 1-5"


def test_policy_show_prints_settings_as_words_not_python(
    state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    s = ["--state-dir", str(state)]
    add = ["policy", "add", "web", "--schedule", "0 2 * * *", "--target", "r1"]
    assert main([*s, *add, "--source", "web01:sda=/dev/vg/web01", "--keep-last", "1"]) == 0
    assert main([*s, "policy", "edit", "web", "--weekly", "4", "--full-weekday", "sun"]) == 0
    capsys.readouterr()
    assert main([*s, "policy", "show", "web"]) == 0
    out = capsys.readouterr().out
    assert "retention:     keep last 1, weekly 4\n" in out
    assert "fulls:         a new full every 7 backups, and on Sundays\n" in out
    assert "locks:         does not lock backups\n" in out
    assert "verify after:  no\n" in out and "last run:      never\n" in out
    # nothing that reads like Python
    for python in ("{", "}", "[", "]", "True", "False", "None", "'"):
        assert python not in out.split("sources:")[0], python
