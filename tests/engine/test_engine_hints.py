"""Engine hints name the action; each front end renders its own syntax.

An error raised in the engine reaches the console, the CLI and the API alike, so its
hint must not spell one front end's command line (``sendense repo list``, ``--yes``):
it names the next step as an ``engine.errors.Action`` and ``sendense_tui/hints.py``
(the CLI) or ``sendense_api/problems.py`` (the API) says how. Every ``hint=`` in
``engine/`` is parsed here; a literal that embeds CLI syntax fails unless its module
is in the list below of hints not yet converted (the list only shrinks).
"""

from __future__ import annotations

import ast
import re
from collections import Counter
from pathlib import Path

from sendense_tui.hints import CLI_ACTIONS

REPO_ROOT = Path(__file__).resolve().parents[2]
ENGINE = REPO_ROOT / "engine"
CLI_SYNTAX = re.compile(r"sendense [a-z]|(^|[\s(`])--[a-z]")

#: module -> how many hints there still embed CLI syntax (to convert, never to grow)
NOT_YET_CONVERTED = {
    "engine/catalog/db.py": 1,  # CREATE DATABASE: the operator types SQL, not a command
}


def _literal_text(node: ast.expr) -> str:
    """The constant parts of a hint expression (strings, f-strings, concatenations)."""
    parts: list[str] = []
    for sub in ast.walk(node):
        if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
            parts.append(sub.value)
    return " ".join(parts)


def _cli_hints(source: str) -> int:
    found = 0
    for node in ast.walk(ast.parse(source)):
        is_hint = isinstance(node, ast.keyword) and node.arg == "hint"
        if is_hint and CLI_SYNTAX.search(_literal_text(node.value)):
            found += 1
    return found


def test_engine_hints_do_not_grow_cli_syntax() -> None:
    counts: Counter[str] = Counter()
    for path in sorted(ENGINE.rglob("*.py")):
        found = _cli_hints(path.read_text())
        if found:
            counts[path.relative_to(REPO_ROOT).as_posix()] = found
    over = {
        name: f"{n} (allowed {NOT_YET_CONVERTED.get(name, 0)})"
        for name, n in counts.items()
        if n > NOT_YET_CONVERTED.get(name, 0)
    }
    assert over == {}, "engine hints that spell the CLI; raise an Action instead: " + str(over)


def test_the_check_sees_cli_syntax_in_a_hint() -> None:
    for source in (
        'raise E("x", hint="`sendense repo list` shows them")',
        'raise E("x", hint="add --yes to confirm")',
        'raise E("x", hint=f"run `sendense lock list --repo {name}`")',
        'raise E("x", hint="first part; " "(--force reads it anyway)")',
    ):
        assert _cli_hints(source) == 1, source
    assert _cli_hints('raise E("x", hint="the list of repositories shows them")') == 0
    assert _cli_hints('raise E("x", hint="a value of -1 -- or less")') == 0


def test_every_cli_rendering_names_an_action_the_engine_raises() -> None:
    source = "\n".join(path.read_text() for path in ENGINE.rglob("*.py"))
    keys = set(re.findall(r'Action\(\s*"([a-z_]+)"', source))
    assert set(CLI_ACTIONS) - keys == set()
