"""Slow links: an idle console sends nothing when nothing changed, measured on a real
pseudo-terminal (what an SSH link would carry)."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.clock import FixedClock
from engine.runtime import Engine
from sendense_tui.app import SendenseApp
from sendense_tui.demo import build_demo_engine, seed_demo_catalog, seed_demo_chains
from sendense_tui.glyphs import GLYPHS, ascii_wanted
from tests.tui.conftest import keys_then_settle
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
        if len(idle) > IDLE_BYTES:
            # a loaded machine can finish a first fetch late; a screen that repaints
            # on every refresh sends in the next window too
            idle = console.read(5.0)
        assert len(idle) <= IDLE_BYTES, idle[:400]


@pytest.mark.parametrize(
    "env",
    [
        pytest.param({"SENDENSE_ASCII": "1", "TERM": "xterm-256color"}, id="SENDENSE_ASCII=1"),
        pytest.param({"SENDENSE_ASCII": "", "TERM": "linux"}, id="TERM=linux"),
        pytest.param({"SENDENSE_ASCII": "", "TERM": "vt100"}, id="TERM=vt100"),
    ],
)
def test_ascii_terminals_receive_no_box_drawing_or_symbols(
    seeded_state: Path, env: dict[str, str]
) -> None:
    """Every screen (gauges, borders, tree guides, sparklines, marks) down a real pty."""
    with console_on_pty({"SENDENSE_STATE_DIR": str(seeded_state), **env}) as console:
        console.settle()
        for key in "23456789":
            console.send(key)
            console.settle()
        text = console.received.decode("utf-8")
    assert "Repositories" in text and "Events" in text and "Tokens reach" in text
    drawn = {ch for ch in text if ord(ch) > 127}
    assert drawn == set(), sorted(drawn)


def test_unicode_terminals_keep_their_glyphs(seeded_state: Path) -> None:
    env = {"SENDENSE_STATE_DIR": str(seeded_state), "SENDENSE_ASCII": "", "TERM": "xterm"}
    with console_on_pty(env) as console:
        console.settle()
        text = console.received.decode("utf-8")
    assert set(text) & set(GLYPHS)  # the rounded borders, the gauges


def test_ascii_is_asked_for_by_the_environment_or_the_terminal() -> None:
    assert ascii_wanted({"SENDENSE_ASCII": "1", "TERM": "xterm-256color"})
    assert ascii_wanted({"TERM": "linux"}) and ascii_wanted({"TERM": "vt100"})
    assert not ascii_wanted({"TERM": "linux", "SENDENSE_ASCII": "0"})
    assert not ascii_wanted({"TERM": "xterm-256color"}) and not ascii_wanted({})


def test_dashboard_in_ascii(snap_compare, demo_engine: Engine, clock: FixedClock) -> None:  # type: ignore[no-untyped-def]
    app = SendenseApp(demo_engine, clock=clock, live=False, ascii=True)
    app.animation_level = "none"
    assert snap_compare(app, terminal_size=(80, 24), run_before=keys_then_settle())
