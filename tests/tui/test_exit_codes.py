"""Every command group through the real ``sendense`` command (a subprocess each), held
to one exit-code table: 0 success, 1 a job (or check) ran and failed, 2 bad usage or
refused input, 4 interrupted (Ctrl+C or SIGTERM). Each failure is one sentence on
stderr (and its hint), never a traceback; a refused command changes nothing.

(3, catalog unavailable, belongs to the catalog-outage work and is tested there.)
"""

from __future__ import annotations

import json
import os
import re
import select
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from engine.config import default_settings
from engine.events import Event
from engine.runtime import Engine
from sendense_tui.cli import main
from sendense_tui.exitcodes import TABLE
from tests.engine.copy_worker import add_repo, make_chain

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Seeded:
    state: Path
    tmp: Path
    chain_id: int
    point_ids: list[int]


def sendense(
    state: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sendense_tui.cli", "--state-dir", str(state), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
    )


def seed(tmp: Path) -> Seeded:
    """Two repositories (main, offsite) and a chain of a full and an incremental."""
    state = tmp / "state"
    engine = Engine(default_settings(state)).open()
    try:
        main = add_repo(engine, "main", tmp / "main")
        add_repo(engine, "offsite", tmp / "offsite")
        chain = make_chain(engine, main, size_mb=2, incrementals=1)
        # one event in the audit log, whichever test of this module runs first
        engine.bus.publish(Event(kind="test.seeded", message="seeded", source="test"))
    finally:
        engine.close()
    return Seeded(state, tmp, chain.chain_id, chain.backup_ids)


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Seeded:
    return seed(tmp_path_factory.mktemp("exit-codes"))


def catalog_rows(state: Path) -> dict[str, list[object]]:
    """What a refused command must not change: every named row, and the jobs."""
    engine = Engine(default_settings(state)).open()
    try:
        return {
            "repositories": [(r.name, r.path, r.enabled) for r in engine.repository_store.list()],
            "copy_rules": [r.name for r in engine.copy_store.list_rules()],
            "policies": [p.name for p in engine.policy_store.list()],
            "jobs": [(j.id, j.state) for j in engine.job_store.list(limit=1000)],
            "exports": [x.id for x in engine.exports.store.exports()],
        }
    finally:
        engine.close()


def one_sentence(done: subprocess.CompletedProcess[str]) -> str:
    """The stderr of a failed command: ``sendense: <sentence>`` and at most a hint."""
    lines = done.stderr.splitlines()
    assert "Traceback" not in done.stderr, done.stderr
    assert 1 <= len(lines) <= 2 and lines[0].startswith("sendense: "), done.stderr
    assert len(lines) == 1 or lines[1].startswith("  hint: "), done.stderr
    return done.stderr


def usage_error(done: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith("usage: sendense"), done.stderr
    last = done.stderr.splitlines()[-1]
    assert ": error: " in last
    return last


def test_the_table_is_in_help_and_in_the_readme() -> None:
    done = sendense(Path("/nonexistent-state"), "--help")
    assert done.returncode == 0
    assert "exit codes:" in done.stdout
    for code, text in TABLE:
        assert f"  {int(code)}  {text}" in done.stdout
    readme = (ROOT / "README.md").read_text()
    codes = re.findall(r"^\| (\d) \| ", readme, re.M)
    assert codes == [str(int(code)) for code, _ in TABLE]


# -- 2: bad usage (argparse) ----------------------------------------------------------

BIG = "99999999999999999999"


@pytest.mark.parametrize(
    ("command", "says"),
    [
        (f"jobs list --limit {BIG}", f"{BIG} is out of range: give 1 to 100000"),
        ("jobs show '#x'", "'#x' is not a job id"),
        ("jobs cancel 99999999999", "is not a job id"),
        ("events --limit 0", "0 is out of range"),
        ("restore mount 1 --minutes 99999999999", "give 1 to 10080 minutes"),
        ("restore ls '#0' p1", "is not a restore mount id"),
        ("backup run --repo main --vm v --disk d=/x --full-every 0", "0 is out of range"),
        ("backup run --repo main --vm v --disk d=/x --full-every -1", "-1 is out of range"),
        (
            f"policy add p --target main --schedule '0 2 * * *' --source v:d=/x --keep-last {BIG}",
            "out of range",
        ),
        ("policy edit p --immutable-days 36501", "give 0 to 36500 days"),
        (f"copy rule add r --from main --to offsite --bandwidth {'9' * 30}T", "out of range"),
        (f"copy rule add r --from main --to offsite --max-age-hours {BIG}", "out of range"),
        ("chain show abc", "'abc' is not a chain id"),
        ("chain consolidate 1 --upto ²", "is not a restore point id"),
        ("lock enable main --days 99999999999", "give 1 to 36500 days"),
        ("lock extend -5 --until 2030-01-01", "is not a lock id"),
        ("verify report --days 0", "give 1 to 36500 days"),
        (f"verify run --backup {BIG}", "is not a backup id"),
        ("export start 1 --port 70000", "give 1 to 65535"),
        ("repo add x --path /srv/x --port 0", "give 1 to 65535"),
        ("nosuch", "invalid choice"),
    ],
)
def test_bad_usage_exits_2_with_one_line(
    seeded: Seeded, command: str, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--state-dir", str(seeded.state), *shlex.split(command)])
    assert exited.value.code == 2
    out = capsys.readouterr()
    assert out.out == ""
    assert "Traceback" not in out.err and out.err.startswith("usage: sendense")
    assert says in out.err.splitlines()[-1]


def test_bad_usage_from_a_real_process(seeded: Seeded) -> None:
    done = sendense(seeded.state, "jobs", "list", "--limit", BIG)
    assert done.returncode == 2 and done.stdout == ""
    assert f"{BIG} is out of range: give 1 to 100000" in usage_error(done)


# -- 2: refused input -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "says"),
    [
        ("repo add 1 --path {tmp}/new-repo --create", "cannot be all digits"),
        ("repo add main --path {tmp}/new-repo --create", "already exists"),
        ("repo add r --path {tmp}/link-to-etc/x --create", "inside the system directory /etc"),
        ("repo add r --path {tmp}/state/inner --create", "overlaps Sendense's own directory"),
        ("repo add r --path {tmp}/missing", "does not exist"),
        ("repo show nope", "repository 'nope' does not exist"),
        ("repo remove '#999'", "repository '#999' does not exist"),
        ("jobs show 999", "job 999 does not exist"),
        (
            "policy add p --target main --schedule '0 1 31 2 *' --source v:d=/x",
            "'0 1 31 2 *' never fires",
        ),
        ("policy add 42 --target main --schedule '0 2 * * *' --source v:d=/x", "all digits"),
        ("policy show nope", "policy 'nope' does not exist"),
        (
            "copy rule add r --from main --to offsite --mode scheduled --schedule '0 1 31 2 *'",
            "never fires",
        ),
        ("copy rule add 7 --from main --to offsite", "cannot be all digits"),
        ("copy rule remove nope", "copy rule 'nope' does not exist"),
        ("copy run", "give a rule name"),
        ("chain delete {point}", "was not deleted: deleting needs --yes"),
        ("chain consolidate 999", "999"),
        ("lock extend 999 --until 2030-01-01", "999"),
        ("lock enable main --days 3", "nothing changed"),
        ("export stop nope", "no NBD export named 'nope'"),
        ("export start {point} --name 12", "cannot be all digits"),
        ("restore unmount 999", "999"),
        ("restore disk 999 {tmp}/out.raw", "999"),
        ("backup run --repo nope --vm v --disk d=/x", "'nope'"),
        ("backup run --repo main --vm {vm-with-a-newline} --disk d=/x", "VM name"),
        ("verify run --repository nope", "'nope'"),
        ("catalog status --db-url nosuch://x", "catalog"),
    ],
)
def test_refused_input_exits_2_with_one_sentence(
    seeded: Seeded, command: str, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    if not (seeded.tmp / "link-to-etc").exists():
        (seeded.tmp / "link-to-etc").symlink_to("/etc")
    point = str(seeded.point_ids[0])
    command = command.replace("{tmp}", str(seeded.tmp)).replace("{point}", point)
    args = [a.replace("{vm-with-a-newline}", "web\n01") for a in shlex.split(command)]
    before = catalog_rows(seeded.state)
    code = main(["--state-dir", str(seeded.state), *args])
    out = capsys.readouterr()
    assert code == 2, out.err
    lines = out.err.splitlines()
    assert 1 <= len(lines) <= 2 and lines[0].startswith("sendense: "), out.err
    assert says in out.err and "Traceback" not in out.err
    # nothing changed: no row, no job, no directory made
    assert catalog_rows(seeded.state) == before
    assert not (seeded.tmp / "new-repo").exists()
    assert not (seeded.tmp / "state" / "inner").exists()


def test_a_refusal_from_a_real_process(seeded: Seeded) -> None:
    done = sendense(seeded.state, "policy", "add", "p", "--target", "main",
                    "--schedule", "0 1 31 2 *", "--source", "v:d=/x")  # fmt: skip
    assert done.returncode == 2 and done.stdout == ""
    assert "never fires" in one_sentence(done)


def test_the_root_directory_is_refused_and_nothing_written(seeded: Seeded) -> None:
    layout = [Path("/.sendense"), Path("/chains")]
    assert not any(p.exists() for p in layout)
    done = sendense(seeded.state, "repo", "add", "root", "--path", "/", "--create")
    assert done.returncode == 2
    assert "sendense: repository root was not saved: path: / is a system directory" in (
        one_sentence(done)
    )
    assert not any(p.exists() for p in layout)


def test_references_through_the_command(seeded: Seeded, tmp_path: Path) -> None:
    """A name first, then #ID or ID; an all-digit name from before the rule still
    works by name and cannot hide the id it looks like (``#ID`` reaches that)."""
    listed = json.loads(sendense(seeded.state, "repo", "list", "--json").stdout)
    main = next(r for r in listed if r["name"] == "main")
    shown = json.loads(sendense(seeded.state, "repo", "show", f"#{main['id']}", "--json").stdout)
    assert shown["name"] == "main"
    engine = Engine(default_settings(seeded.state)).open()
    try:  # a repository named like main's id, made before names had a rule
        legacy = add_repo(engine, str(main["id"]), tmp_path / "legacy")
    finally:
        engine.close()
    by_name = json.loads(sendense(seeded.state, "repo", "show", str(main["id"]), "--json").stdout)
    assert by_name["id"] == legacy.id
    by_id = json.loads(sendense(seeded.state, "repo", "show", f"#{main['id']}", "--json").stdout)
    assert by_id["name"] == "main"
    removed = sendense(seeded.state, "repo", "remove", str(main["id"]))
    assert removed.returncode == 0, removed.stderr
    names = [r["name"] for r in json.loads(sendense(seeded.state, "repo", "list", "--json").stdout)]
    assert "main" in names and str(main["id"]) not in names


# -- 1: a job or a check ran and failed -------------------------------------------------


def test_a_failed_backup_job_exits_1_with_one_sentence(seeded: Seeded) -> None:
    missing = seeded.tmp / "missing.raw"
    done = sendense(
        seeded.state, "backup", "run", "--repo", "main", "--vm", "web09", "--disk", f"sda={missing}"
    )
    assert done.returncode == 1
    err = one_sentence(done)
    assert "failed: 1 of 1 disk of web09 failed" in err and str(missing) in err
    assert done.stdout == ""
    as_json = sendense(
        seeded.state,
        *("backup", "run", "--repo", "main", "--vm", "web09", "--disk", f"sda={missing}"),
        "--json",
    )
    assert as_json.returncode == 1 and json.loads(as_json.stdout)["state"] == "failed"
    one_sentence(as_json)


def test_failed_checks_exit_1(tmp_path: Path) -> None:
    s = seed(tmp_path)
    gone = tmp_path / "gone"
    assert sendense(s.state, "repo", "add", "gone", "--path", str(gone), "--create").returncode == 0
    shutil.rmtree(gone)
    done = sendense(s.state, "repo", "test", "gone")
    assert done.returncode == 1 and "repository gone failed its test" in one_sentence(done)

    # damage the incremental: verify (a job) fails, then the report and the check say so
    incremental = next((tmp_path / "main").rglob("0001-inc.qcow2"))
    with open(incremental, "r+b") as f:
        f.seek(incremental.stat().st_size - 4096)
        f.write(b"\0garbage" * 512)
    done = sendense(s.state, "verify", "run", "--chain", str(s.chain_id))
    assert done.returncode == 1 and "failed verification" in one_sentence(done)
    done = sendense(s.state, "verify", "report")
    assert done.returncode == 1 and "failed verification" in one_sentence(done)
    assert "BAD POINT" in done.stdout
    incremental.unlink()  # and now a file of the chain is gone
    done = sendense(s.state, "chain", "check")
    assert done.returncode == 1 and "1 of 1 chain checked is broken" in one_sentence(done)
    assert "BROKEN" in done.stdout

    done = sendense(s.state, "doctor", env={"PATH": str(tmp_path / "no-bin")})
    assert done.returncode == 1 and "programs Sendense needs are missing" in one_sentence(done)


# -- 4: interrupted -----------------------------------------------------------------------


def _start(state: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "sendense_tui.cli", "--state-dir", str(state), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def test_sigterm_while_following_events_exits_4(
    seeded: Seeded, processes: list[subprocess.Popen[str]]
) -> None:
    proc = _start(seeded.state, "events", "--follow")
    processes.append(proc)
    assert proc.stdout is not None
    # the first event: it is following now (never wait for it forever)
    ready, _, _ = select.select([proc.stdout], [], [], 60)
    assert ready, "events --follow printed nothing within 60 s"
    proc.stdout.readline()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 4
    assert err == "sendense: interrupted before the command finished\n"


def test_sigterm_while_a_copy_runs_exits_4_and_hands_the_job_back(
    tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    s = seed(tmp_path)
    added = sendense(
        s.state, "copy", "rule", "add", "slow", "--from", "main", "--to", "offsite",
        "--bandwidth", "64K",
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    proc = _start(s.state, "copy", "run", "slow")
    processes.append(proc)
    engine = Engine(default_settings(s.state)).open()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            running = engine.job_store.list(states=("running",), limit=5)
            if running and running[0].bytes_done > 0:
                break
            time.sleep(0.2)
        else:
            pytest.fail("the copy job never started copying")
        job_id = running[0].id
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=90)
        assert proc.returncode == 4, err
        assert err.splitlines() == [
            f"sendense: interrupted while waiting for job {job_id}: it went back to the queue",
            f"  hint: the daemon or the console runs it; `sendense jobs cancel {job_id}` stops it",
        ]
        assert engine.job_store.get(job_id).state == "queued"
    finally:
        engine.close()
    cancelled = sendense(s.state, "jobs", "cancel", f"#{job_id}")
    assert cancelled.returncode == 0, cancelled.stderr
