"""Policies screen: a snapshot on seeded policies (fixed clock) and the editor's
validation as you type (bad cron: error shown, nothing saved; good: saved)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from textual.widgets import Input, Static

from engine.runtime import Engine
from engine.services.policies import PolicySpec
from sendense_tui.app import SendenseApp
from sendense_tui.screens.policies import PoliciesScreen
from tests.tui.conftest import keys_then_settle, settle


@pytest.fixture
def seeded(demo_engine: Engine) -> Engine:
    for name, schedule, keep in (("web", "0 2 * * *", 7), ("db-hourly", "15 * * * *", 24)):
        demo_engine.policies.add(
            PolicySpec(
                name=name,
                schedule=schedule,
                target="primary",
                sources=PolicySpec.sources_from([f"{name}01:sda=/dev/vg/{name}01"]),
                retention={"keep_last": keep, "weekly": 4},
            )
        )
    demo_engine.policy_store.update(demo_engine.policies.get("web").id, last_result="ok")
    return demo_engine


def test_policies_screen(snap_compare, make_app, seeded: Engine) -> None:
    assert snap_compare(make_app(), terminal_size=(100, 30), run_before=keys_then_settle("5"))


def test_policies_editor_shows_cron_runs(snap_compare, make_app, seeded: Engine) -> None:
    keys = ["5", "a", *"nightly", "tab", *"30 1 * * 1-5"]
    assert snap_compare(make_app(), terminal_size=(100, 30), run_before=keys_then_settle(*keys))


async def _type(pilot, selector: str, text: str) -> None:
    box = pilot.app.screen.query_one(selector, Input)
    box.value = text
    await settle(pilot)


async def test_editor_refuses_a_bad_cron_and_saves_a_good_one(
    make_app: Callable[..., SendenseApp], demo_engine: Engine
) -> None:
    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        await pilot.press("5")
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, PoliciesScreen)
        await pilot.press("a")
        await _type(pilot, "#name", "nightly")
        await _type(pilot, "#target", "primary")
        await _type(pilot, "#sources", "web01:sda=/dev/vg/web01")
        await _type(pilot, "#schedule", "every night")
        cron = str(screen.query_one("#cron-help", Static).render())
        assert "needs five fields" in cron
        problems = str(screen.query_one("#editor-error", Static).render())
        assert "schedule" in problems
        await pilot.click("#save")
        await settle(pilot)
        assert "was not saved" in str(screen.query_one("#editor-error", Static).render())
        assert demo_engine.policy_store.list() == []

        await _type(pilot, "#schedule", "0 2 * * *")
        assert "next: Wed 25 02:00" in str(screen.query_one("#cron-help", Static).render())
        assert "ready to save" in str(screen.query_one("#editor-error", Static).render())
        await pilot.click("#save")
        await settle(pilot)
        assert [p.name for p in demo_engine.policy_store.list()] == ["nightly"]
        assert not screen.query_one("#editor").display
