"""Slow links: an idle console sends nothing when nothing changed, measured on a real
pseudo-terminal (what an SSH link would carry)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sendense_tui.demo import build_demo_engine, seed_demo_catalog, seed_demo_chains
from tests.tui.ptyconsole import console_on_pty

#: a quiet screen may still send a stray cursor move; a repaint of one line is ~200 bytes
IDLE_BYTES = 64


@pytest.fixture
def seeded_state(tmp_path: Path) -> Path:
    state = tmp_path / "state"
    engine = build_demo_engine(state)
    seed_demo_catalog(engine)
    seed_demo_chains(engine)
    engine.close()
    return state


@pytest.mark.parametrize(
    "keys",
    [
        pytest.param("", id="dashboard"),
        pytest.param("4", id="chains"),
        pytest.param("8", id="events"),
    ],
)
def test_an_idle_screen_sends_nothing_through_a_real_terminal(
    seeded_state: Path, keys: str
) -> None:
    env = {"SENDENSE_STATE_DIR": str(seeded_state), "TERM": "xterm-256color"}
    with console_on_pty(env) as console:
        console.settle()
        if keys:
            console.send(keys)
            console.settle()
        assert b"Dash" in console.received  # the console did draw
        # several refreshes (one a second) of an unchanged catalog
        idle = console.read(5.0)
        assert len(idle) <= IDLE_BYTES, idle[:400]
