"""``sendense copy …`` and ``sendense verify …`` end to end on a real chain (SQLite)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from engine.runtime import Engine
from sendense_tui.cli import main
from tests.engine.copy_worker import add_repo, make_chain

SQLITE_ONLY = pytest.mark.parametrize("catalog_url", ["sqlite"], indirect=True)


@SQLITE_ONLY
def test_rule_add_run_status_verify_from_the_command_line(
    engine: Engine, catalog_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = add_repo(engine, "main", tmp_path / "main")
    add_repo(engine, "offsite", tmp_path / "offsite")
    chain = make_chain(engine, src, size_mb=2, incrementals=1)
    base = ["--state-dir", str(tmp_path / "cli-state"), "--db-url", catalog_url]

    def run(*argv: str) -> tuple[int, str, str]:
        code = main([*argv, *base])
        out = capsys.readouterr()
        return code, out.out, out.err

    code, _, err = run("copy", "rule", "add", "r", "--from", "main", "--to", "main")
    assert code == 2 and "source and destination are both 'main'" in err
    code, out, _ = run(
        "copy", "rule", "add", "r", "--from", "main", "--to", "offsite", "--bandwidth", "1G"
    )
    assert code == 0 and "main -> offsite" in out
    code, out, _ = run("copy", "rule", "list", "--json")
    [rule] = json.loads(out)
    assert rule["bandwidth_limit"] == 1024**3 and rule["selection"] == "all"

    code, out, _ = run("copy", "run", "r", "--json")
    data = json.loads(out)
    assert code == 0 and data["state"] == "succeeded" and data["result"]["copied"] == 2
    for rel in chain.paths:
        assert (tmp_path / "offsite" / rel).read_bytes() == (tmp_path / "main" / rel).read_bytes()

    code, out, _ = run("copy", "status", "--json")
    status = json.loads(out)
    assert status["rules"][0]["completed"] == 2
    assert {c["verify_state"] for c in status["copies"]} == {"ok"}

    code, out, _ = run("verify", "run", "--chain", str(chain.chain_id), "--json")
    assert code == 0 and json.loads(out)["result"]["files"] == 4
    code, out, _ = run("verify", "report")
    assert code == 0 and "100% of bytes verified in the last 30 days" in out

    code, out, _ = run("copy", "rule", "remove", "r")
    assert code == 0 and "removed" in out


@SQLITE_ONLY
def test_status_shows_next_runs_and_alerts_and_events_find_them(
    engine: Engine, catalog_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    add_repo(engine, "main", tmp_path / "main")
    add_repo(engine, "offsite", tmp_path / "offsite")
    base = ["--state-dir", str(tmp_path / "cli-state"), "--db-url", catalog_url]

    def run(*argv: str) -> tuple[int, str]:
        code = main([*argv, *base])
        return code, capsys.readouterr().out

    code, _ = run(
        "copy", "rule", "add", "nightly", "--from", "main", "--to", "offsite",
        "--mode", "scheduled", "--schedule", "30 2 * * *",
    )  # fmt: skip
    assert code == 0
    run("copy", "rule", "add", "byhand", "--from", "main", "--to", "offsite")
    rule = engine.copies.get_rule("nightly")
    for _ in range(3):
        engine.copy_store.record_rule_outcome(rule.id, ok=False)
    engine.scheduler.evaluate_alerts()

    code, out = run("copy", "status")
    assert code == 0 and "NEXT RUN" in out
    [nightly] = [line for line in out.splitlines() if line.startswith("nightly")]
    assert re.search(r"\d{4}-\d\d-\d\d 02:30 UTC", nightly) and "alert" in nightly
    [byhand] = [line for line in out.splitlines() if line.startswith("byhand")]
    assert "manual" in byhand and "ok" in byhand
    assert "WARNING  copy rule nightly (main -> offsite) failed 3 times in a row" in out
    code, out = run("copy", "status", "--json")
    data = json.loads(out)
    assert [a["key"] for a in data["raised_alerts"]] == [f"alert:rule_failing:rule:{rule.id}"]
    assert data["rules"][1]["next_run_at"].endswith(("02:30:00+00:00", "02:30:00Z"))

    code, out = run("events", "--grep", "alert")
    assert code == 0 and "alert raised: copy rule nightly" in out

    code, out = run("verify", "report")
    assert "0 files overdue (older than 30 days and not verified in them)" in out
    assert re.search(r"next scheduled verification: \S+ 03:00 UTC \(0 3 \* \* \*\)", out)
