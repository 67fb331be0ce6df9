"""Fixtures for console tests: a seeded catalog on a fixed clock, an app that
does not move (no timers, no engine thread, no blinking, no animation)."""

from __future__ import annotations

import asyncio
import inspect
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from textual.pilot import Pilot
from textual.widgets import Input

from engine.clock import FixedClock
from engine.runtime import Engine
from sendense_tui import daemon_client
from sendense_tui.app import SendenseApp
from sendense_tui.demo import build_demo_engine, demo_clock, seed_demo_catalog
from sendense_tui.screens.base import SendenseScreen


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run ``async def`` pilot tests on a fresh event loop (no asyncio plugin needed)."""
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    names = pyfuncitem._fixtureinfo.argnames
    asyncio.run(pyfuncitem.obj(**{name: pyfuncitem.funcargs[name] for name in names}))
    return True


@pytest.fixture(autouse=True)
def _quiet_machine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Keep the machine out: no user config file, no env overrides, no colour quirks."""
    for var in ("SENDENSE_CONFIG", "SENDENSE_DB_URL", "SENDENSE_STATE_DIR", "SENDENSE_THEME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.setenv("TEXTUAL_ANIMATIONS", "none")
    # the terminal the tests run in (TERM=linux on a console) does not pick the glyphs
    monkeypatch.setenv("SENDENSE_ASCII", "0")


@pytest.fixture
def clock() -> FixedClock:
    return demo_clock()


@pytest.fixture
def demo_engine(tmp_path: Path, clock: FixedClock) -> Iterator[Engine]:
    engine = build_demo_engine(tmp_path / "state", clock)
    seed_demo_catalog(engine, clock)
    yield engine
    engine.close()


@pytest.fixture
def make_app(demo_engine: Engine, clock: FixedClock) -> Callable[..., SendenseApp]:
    def make(theme: str | None = None) -> SendenseApp:
        app = SendenseApp(demo_engine, clock=clock, live=False)
        app.animation_level = "none"
        if theme is not None:
            app.theme = theme
        return app

    return make


async def click_button(pilot: Pilot[object], selector: str) -> None:
    """Click a button once it takes a click: a Button ignores clicks while it still
    shows the press before (its "-active" look, 0.2 s), which a fast run reaches."""
    button = pilot.app.screen.query_one(selector)
    for _ in range(100):
        if not button.has_class("-active"):
            break
        await pilot.pause(0.01)
    await pilot.click(selector)


async def settle(pilot: Pilot[object]) -> None:
    """Wait until the screen on top has drawn its data and nothing is in flight."""
    app = pilot.app
    for _ in range(200):
        await pilot.pause()
        await app.workers.wait_for_complete()
        await pilot.pause()
        screen = app.screen
        stack_top = app.screen_stack[0] if app.screen_stack else screen
        target = screen if isinstance(screen, SendenseScreen) else stack_top
        if (
            not isinstance(target, SendenseScreen)
            or not target.LIVE
            or (target.draws > 0 and not target.busy)
        ):
            break
    for box in app.screen.query(Input):
        box.cursor_blink = False
    await pilot.pause()


def keys_then_settle(*keys: str) -> Callable[[Pilot[object]], object]:
    """A snap_compare run_before: press keys, settling after each."""

    async def run_before(pilot: Pilot[object]) -> None:
        await settle(pilot)
        for key in keys:
            await pilot.press(key)
            await settle(pilot)

    return run_before


@pytest.fixture
def mute_daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A state directory whose daemon socket accepts (the kernel does, for a listening
    socket) and never answers; answers are waited for 0.3 s."""
    monkeypatch.setattr(daemon_client, "ANSWER_SECONDS", 0.3)
    state = tmp_path / "state"
    state.mkdir()
    mute = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    mute.bind(str(state / "api.sock"))
    mute.listen(4)
    try:
        yield state
    finally:
        mute.close()
