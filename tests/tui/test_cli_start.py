"""A CLI call pays only for its own command (issue 16): ``sendense version`` and
``sendense --help`` load neither the console (textual), the catalog (sqlalchemy)
nor the API (fastapi); the command table the lazy parser reads says what the group
modules register."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from sendense_tui.cli import build_parser
from sendense_tui.commands import COMMANDS, GROUPS, command_word

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("textual", "sqlalchemy", "fastapi", "alembic", "psutil", "rich", "engine.runtime")
#: what a command that needs no engine does without, with a cold page cache ~75 ms of
#: its start: logging (until the engine loads), http.client's email and ssl
#: (sendense_tui.unix_http speaks to the daemon instead)
STDLIB_HEAVY = ("logging", "http.client", "email", "ssl")

PROBE = """
import contextlib, io, json, sys
from sendense_tui.cli import main
out = io.StringIO()
with contextlib.redirect_stdout(out):
    try:
        code = main(sys.argv[1:])
    except SystemExit as exc:
        code = exc.code
print(json.dumps({"code": code, "out": out.getvalue(), "modules": sorted(sys.modules)}))
"""


def run_sendense(
    state: Path, *argv: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``sendense --state-dir STATE ARGV`` as a process, with none of this environment's
    SENDENSE_ settings (``env``: the ones it should have)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SENDENSE_")}
    return subprocess.run(
        [sys.executable, "-m", "sendense_tui.cli", "--state-dir", str(state), *argv],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**clean, **(env or {})},
        stdin=subprocess.DEVNULL,
    )


def run_and_list_modules(argv: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run ``sendense ARGV`` in a fresh interpreter: its exit code, what it printed and
    every module it imported (``modules``)."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *argv],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    seen: dict[str, Any] = json.loads(done.stdout)
    return seen


def imported(seen: dict[str, Any], names: Sequence[str]) -> list[str]:
    """Which of ``names`` (a package stands for its modules too) ``seen`` imported."""
    modules = seen["modules"]
    return sorted({n for n in names for m in modules if m == n or m.startswith(n + ".")})


@pytest.mark.parametrize("argv", [["version"], ["--help"], ["version", "--json"]])
def test_help_and_version_load_no_engine_console_or_api(tmp_path: Path, argv: list[str]) -> None:
    env = {**os.environ, "SENDENSE_STATE_DIR": str(tmp_path / "state")}
    seen = run_and_list_modules(argv, env)
    assert seen["code"] == 0
    assert "sendense" in seen["out"]
    # --json names the libraries' versions: importlib.metadata reads them (and email)
    loaded = imported(seen, HEAVY if "--json" in argv else (*HEAVY, *STDLIB_HEAVY))
    assert loaded == [], f"`sendense {' '.join(argv)}` imported {loaded}"
    # and nothing was created: help and version read no settings
    assert not (tmp_path / "state").exists()


def _choices(parser: argparse.ArgumentParser) -> dict[str, str | None]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return {choice.dest: choice.help for choice in action._choices_actions}
    raise AssertionError("no subcommands")


def test_the_lazy_command_table_matches_what_the_modules_register() -> None:
    full = _choices(build_parser())
    lazy = _choices(build_parser(["--help"]))
    assert full == lazy, "COMMANDS in sendense_tui/commands/__init__.py is out of date"
    modules = {m for _text, names in COMMANDS.values() for m in names}
    assert modules == set(GROUPS)


@pytest.mark.parametrize(
    ("argv", "word"),
    [
        (["--state-dir", "backup", "jobs", "list"], "jobs"),
        (["--json", "backup", "list"], "backup"),
        (["--db-url", "sqlite://", "--state-dir=/x", "chain", "show"], "chain"),
        (["--help"], None),
        ([], None),
    ],
)
def test_the_command_word_skips_option_values(argv: list[str], word: str | None) -> None:
    assert command_word(argv) == word


def test_a_lazily_built_parser_parses_each_command_as_the_full_one() -> None:
    for name in COMMANDS:
        argv = [name, "--help"]
        full = build_parser()
        lazy = build_parser(argv)
        assert full.format_help() == lazy.format_help()
        sub_full = full._subparsers._group_actions[0].choices[name]  # type: ignore[union-attr]
        sub_lazy = lazy._subparsers._group_actions[0].choices[name]  # type: ignore[union-attr]
        assert sub_full.format_help() == sub_lazy.format_help()


def test_the_version_printed_without_metadata_is_the_installed_one() -> None:
    from importlib import metadata

    from engine import __version__

    assert __version__ == metadata.version("sendense")


def test_a_disk_restore_loads_only_what_it_runs(tmp_path: Path) -> None:
    """`restore disk` builds the restore service and what it reads points with, none
    of the services other jobs need (copies, backups, policies, file restore) nor the
    cryptography a stored secret needs (here the point does not exist: refused after
    the engine opened and the restore service was built)."""
    env = {**os.environ, "SENDENSE_NO_DAEMON": "1"}
    state = str(tmp_path / "state")
    seen = run_and_list_modules(
        ["--state-dir", state, "restore", "disk", "999", str(tmp_path / "out.raw")], env
    )
    assert seen["code"] == 2
    assert "engine.services.restore_disk" in seen["modules"]
    unneeded = (
        "engine.services.copy",
        "engine.services.backup",
        "engine.services.policies",
        "engine.services.scheduler",
        "engine.services.file_restore",
        "engine.services.restore_archive",
        "cryptography",
    )
    assert imported(seen, unneeded) == []


def test_a_command_run_as_a_process_ends_with_its_code_and_all_its_output(
    tmp_path: Path,
) -> None:
    """The `sendense` process skips Python's teardown of its modules when a command is
    done; what it printed still reaches a pipe whole, and its exit code is the
    command's."""
    state = tmp_path / "state"

    def sendense(*argv: str) -> subprocess.CompletedProcess[str]:
        return run_sendense(state, *argv, env={"SENDENSE_NO_DAEMON": "1"})

    listed = sendense("repo", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [r["name"] for r in json.loads(listed.stdout)] == ["local"]
    refused = sendense("jobs", "cancel", "999")
    assert refused.returncode == 2
    assert refused.stderr.startswith("sendense: ") and refused.stdout == ""


LOGS_WHEN_LOADING = """
import sys
from sendense_tui import cli
from sendense_tui.commands import CliContext

assert "logging" not in sys.modules
loading = CliContext.prepare_for_engine

def and_log(self):
    loading(self)
    import logging
    logging.getLogger("engine.catalog").warning("the catalog went away for 2 s")

CliContext.prepare_for_engine = and_log
sys.exit(cli.main(sys.argv[1:]))
"""


def test_a_command_that_loads_the_engine_logs_to_its_file_not_the_terminal(
    tmp_path: Path,
) -> None:
    """A listing with no daemon to ask opens the catalog itself: what the engine
    logs from then on goes to STATE/logs/cli.log, although logging was not loaded
    when the command started (sendense_tui.cli.main)."""
    state = tmp_path / "state"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SENDENSE_")}
    done = subprocess.run(
        [sys.executable, "-c", LOGS_WHEN_LOADING, "--state-dir", str(state), "backup", "list"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**clean, "SENDENSE_API_SOCKET": str(tmp_path / "no-daemon.sock")},
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    assert "went away" not in done.stderr
    log = (state / "logs" / "cli.log").read_text()
    assert "WARNING engine.catalog: the catalog went away for 2 s" in log
