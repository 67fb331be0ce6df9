"""Policies screen: a snapshot on seeded policies (fixed clock) and the editor's
validation as you type (bad cron: error shown, nothing saved; good: saved)."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import pytest
from rich.console import Console
from textual.widgets import DataTable, Input, Static

from engine.runtime import Engine
from engine.services.policies import PolicySpec
from sendense_tui.app import SendenseApp
from sendense_tui.demo import seed_demo_chains
from sendense_tui.screens.copy_rules import CopyRulesScreen
from sendense_tui.screens.help import HelpScreen
from sendense_tui.screens.policies import PoliciesScreen
from sendense_tui.widgets.confirm import ConfirmDialog
from tests.tui.conftest import click_button, keys_then_settle, settle


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
        await click_button(pilot, "#save")
        await settle(pilot)
        assert "was not saved" in str(screen.query_one("#editor-error", Static).render())
        assert demo_engine.policy_store.list() == []

        await _type(pilot, "#schedule", "0 2 * * *")
        assert "next: Wed 25 02:00" in str(screen.query_one("#cron-help", Static).render())
        assert "ready to save" in str(screen.query_one("#editor-error", Static).render())
        await click_button(pilot, "#save")
        await settle(pilot)
        assert [p.name for p in demo_engine.policy_store.list()] == ["nightly"]
        assert not screen.query_one("#editor").display


async def _on_policies(pilot) -> PoliciesScreen:  # type: ignore[no-untyped-def]
    await settle(pilot)
    await pilot.press("5")
    await settle(pilot)
    screen = pilot.app.screen
    assert isinstance(screen, PoliciesScreen)
    return screen


async def test_help_on_policies_lists_run_now_and_copy_rules(
    make_app: Callable[..., SendenseApp], seeded: Engine
) -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await _on_policies(pilot)
        await pilot.press("question_mark")
        await settle(pilot)
        assert isinstance(app.screen, HelpScreen)
        rows = {row.description: row.keys for row in app.screen.rows}
        assert rows["Run the selected policy now (queues its backups)"] == "n"
        assert rows["Copy rules (3-2-1): where backups are copied"] == "c"
        assert rows["Reload this screen now"] == "r"  # r stays the app-wide refresh
        # the screen's own commands come before the ones that work everywhere
        descriptions = list(rows)
        assert descriptions.index("Add a policy (the editor)") < descriptions.index(
            "Show every key"
        )


async def test_n_runs_the_policy_and_r_only_refreshes(
    make_app: Callable[..., SendenseApp], seeded: Engine
) -> None:
    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        await _on_policies(pilot)
        jobs_before = len(seeded.job_store.list())
        await pilot.press("r")
        await settle(pilot)
        assert len(seeded.job_store.list()) == jobs_before
        await pilot.press("n")
        await settle(pilot)
        assert len(seeded.job_store.list()) == jobs_before + 1


async def test_c_opens_copy_rules_and_escape_returns(
    make_app: Callable[..., SendenseApp], seeded: Engine
) -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        policies = await _on_policies(pilot)
        await pilot.press("c")
        await settle(pilot)
        rules = app.screen
        assert isinstance(rules, CopyRulesScreen)
        # the form opens and Esc closes it first; the next Esc goes back to Policies
        await pilot.press("a")
        await settle(pilot)
        assert rules.query_one("#form").display
        assert rules.query_one("#save").region.bottom <= 23  # above the footer at 80x24
        await pilot.press("escape")
        await settle(pilot)
        assert app.screen is rules and not rules.query_one("#form").display
        await pilot.press("escape")
        await settle(pilot)
        assert app.screen is policies
        assert app.current_mode == "policies"


async def test_palette_on_policies_offers_copy_rules(
    make_app: Callable[..., SendenseApp], seeded: Engine
) -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await _on_policies(pilot)
        await pilot.press("colon")
        await settle(pilot)
        await pilot.press(*"copy rules")
        await pilot.pause(0.5)
        await pilot.press("enter")
        await settle(pilot)
        assert isinstance(app.screen, CopyRulesScreen)
        await pilot.press("q")
        await settle(pilot)
        assert isinstance(app.screen, PoliciesScreen)


def _detail_text(screen: PoliciesScreen) -> str:
    console = Console(width=200, record=True, file=io.StringIO())
    for part in ("#detail-settings", "#detail-compliance"):
        console.print(screen.query_one(part, Static).content)
    return console.export_text()


async def test_details_follow_the_cursor_with_each_shortfall(
    make_app: Callable[..., SendenseApp], seeded: Engine
) -> None:
    seed_demo_chains(seeded)  # web01 has backups in "primary" only
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await _on_policies(pilot)
        detail = screen.query_one("#detail")
        # rows are sorted by name: db-hourly, then web
        assert "db-hourly" in str(detail.border_title)
        text = _detail_text(screen)
        assert "db-hourly01: sda=/dev/vg/db-hourly01" in text
        assert "db-hourly01 has no backup: add a policy" in text
        await pilot.press("down")
        await settle(pilot)
        assert "web" in str(detail.border_title)
        assert "db-hourly" not in str(detail.border_title)
        text = _detail_text(screen)
        assert "web01: sda=/dev/vg/web01" in text
        assert "last 7 · weekly 4" in text
        assert "02:00  11-26 02:00" in text  # the next runs of 0 2 * * *
        assert "add a copy rule from primary to a second repository" in text
        assert "no backup of web01 is offsite" in text
        assert "offsite none" in text and "3-2-1 met" not in text
        assert "db-hourly01" not in text
        # the list says how many shortfalls; the pane says what they are
        table = screen.query_one("#policies", DataTable)
        assert str(table.get_row(str(seeded.policies.get("web").id))[-1]) == "✗ 2 gaps"
        # and the lock explanation, once a line, is in `?` help in full
        await pilot.press("question_mark")
        await settle(pilot)
        assert isinstance(app.screen, HelpScreen)
        assert "does not stop root" in str(app.screen.query_one("#help-note", Static).content)


async def test_space_disables_after_a_question_and_enables_the_policy_under_the_cursor(
    make_app: Callable[..., SendenseApp], seeded: Engine
) -> None:
    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await _on_policies(pilot)
        table = screen.query_one("#policies", DataTable)
        name = str(table.get_row_at(table.cursor_row)[0])
        await pilot.press("space")
        await settle(pilot)
        assert isinstance(app.screen, ConfirmDialog)
        await pilot.press("y")
        await settle(pilot)
        assert seeded.policies.get(name).enabled is False
        row = table.get_row_at(table.cursor_row)
        assert str(row[0]) == name and str(row[3]) == "off"  # the list shows no next run
        await pilot.press("space")
        await settle(pilot)
        assert seeded.policies.get(name).enabled is True
        assert str(table.get_row_at(table.cursor_row)[3]) != "off"


async def test_d_removes_the_policy_only_after_yes_and_says_backups_stay(
    make_app: Callable[..., SendenseApp], seeded: Engine
) -> None:
    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await _on_policies(pilot)
        table = screen.query_one("#policies", DataTable)
        name = str(table.get_row_at(table.cursor_row)[0])
        await pilot.press("d")
        await settle(pilot)
        assert isinstance(app.screen, ConfirmDialog)
        assert name in app.screen.question
        assert "schedule stops" in app.screen.consequence
        assert "backups it made stay" in app.screen.consequence
        await pilot.press("n")
        await settle(pilot)
        assert name in [p.name for p in seeded.policies.list()]
        await pilot.press("D")  # the same key, shifted
        await settle(pilot)
        await pilot.press("y")
        await settle(pilot)
        assert name not in [p.name for p in seeded.policies.list()]
        assert table.row_count == 1
        assert name not in [str(table.get_row_at(i)[0]) for i in range(table.row_count)]


async def test_help_on_policies_lists_enable_and_remove(
    make_app: Callable[..., SendenseApp], seeded: Engine
) -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await _on_policies(pilot)
        await pilot.press("question_mark")
        await settle(pilot)
        rows = {row.description: row.keys for row in app.screen.rows}
        assert rows["Enable or disable the selected policy (disabling asks first)"] == "space"
        assert rows["Remove the selected policy (asks first; its backups stay)"] == "d, D"


async def test_e_edits_the_selected_policy_in_the_filled_in_editor(
    make_app: Callable[..., SendenseApp], seeded: Engine
) -> None:
    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await _on_policies(pilot)
        table = screen.query_one("#policies", DataTable)
        table.move_cursor(row=[p.name for p in seeded.policies.list()].index("web"))
        await settle(pilot)
        await pilot.press("e")
        await settle(pilot)
        assert screen.query_one("#editor").display
        assert "Edit policy web" in str(screen.query_one("#editor-title", Static).render())
        assert screen.query_one("#name", Input).value == "web"
        assert screen.query_one("#sources", Input).value == "web01:sda=/dev/vg/web01"
        assert screen.query_one("#weekly", Input).value == "4"

        await _type(pilot, "#schedule", "0 25 * * *")
        assert "not a valid cron" in str(screen.query_one("#cron-help", Static).render())
        assert "schedule" in str(screen.query_one("#editor-error", Static).render())
        await click_button(pilot, "#save")
        await settle(pilot)
        assert "was not changed" in str(screen.query_one("#editor-error", Static).render())
        assert seeded.policies.get("web").schedule == "0 2 * * *"

        await _type(pilot, "#schedule", "45 23 * * *")
        # its own name is not "already taken"
        assert "ready to save" in str(screen.query_one("#editor-error", Static).render())
        await click_button(pilot, "#save")
        await settle(pilot)
        web = seeded.policies.get("web")
        assert web.schedule == "45 23 * * *"
        assert web.retention["weekly"] == 4 and web.last_result == "ok"
        assert not screen.query_one("#editor").display
        assert [p.name for p in seeded.policies.list()] == ["db-hourly", "web"]

        await pilot.press("a")  # a new policy starts from empty inputs again
        await settle(pilot)
        assert screen.query_one("#name", Input).value == ""
        assert "New policy" in str(screen.query_one("#editor-title", Static).render())


async def test_no_tick_for_3_2_1_while_no_backup_is_offsite(
    make_app: Callable[..., SendenseApp], seeded: Engine
) -> None:
    """A copy on a locked (but not offsite) repository used to earn "✓ 3-2-1" next to
    "offsite none": a lock is not another site."""
    store, now = seeded.repository_store, seeded.clock.now()
    primary, archive = store.get("primary"), store.get("archive-smb")
    store.update(archive.id, now, offsite=False, immutable=True, immutable_days=30)
    _chain, point = seeded.chain_store.add_full(
        repository_id=primary.id, vm_name="web01", disk_name="sda", directory="web01/sda/9",
        now=now, backup={"path": "web01/sda/9/0.qcow2", "state": "complete", "point_time": now},
    )  # fmt: skip
    row = seeded.copy_store.create_copy(
        backup_id=point.id, destination_repository_id=archive.id, path="web01/sda/9/0.qcow2",
        size=1, now=now,
    )  # fmt: skip
    seeded.copy_store.update_copy(row.id, state="completed")
    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await _on_policies(pilot)
        table = screen.query_one("#policies", DataTable)
        for policy in seeded.policies.list():
            table.move_cursor(row=table.get_row_index(str(policy.id)))
            await settle(pilot)
            text = _detail_text(screen)
            badge = str(table.get_row(str(policy.id))[-1])
            if "offsite none" in text:
                assert not badge.startswith("✓") and "3-2-1 met" not in text, (badge, text)
        web = seeded.policies.get("web")
        table.move_cursor(row=table.get_row_index(str(web.id)))
        await settle(pilot)
        text = _detail_text(screen)
        assert "offsite none" in text and "immutable archive-smb" in text
        assert "no backup of web01 is offsite" in text


async def test_editor_asks_before_a_lock_period_and_shows_what_it_holds(
    make_app: Callable[..., SendenseApp], demo_engine: Engine, tmp_path: Path
) -> None:
    """The console's save asks the engine, which refuses a new lock period until it is
    confirmed: the editor shows the estimate in a confirm dialog; n saves nothing,
    y saves the policy with its lock."""
    (tmp_path / "vault").mkdir()  # a real directory: the lock check reads its filesystem
    demo_engine.repository_store.add(
        name="vault", kind="local", path=str(tmp_path / "vault"), now=demo_engine.clock.now()
    )
    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await _on_policies(pilot)
        await pilot.press("a")
        await _type(pilot, "#name", "locked")
        await _type(pilot, "#target", "vault")
        await _type(pilot, "#sources", "web01:sda=/dev/vg/web01")
        await _type(pilot, "#schedule", "0 2 * * *")
        await _type(pilot, "#immutable_days", "14")
        await click_button(pilot, "#save")
        await settle(pilot)
        dialog = app.screen
        assert isinstance(dialog, ConfirmDialog)
        text = " ".join(str(w.render()) for w in dialog.query("Static"))
        assert "Lock these backups for 14 days?" in text and "14-day lock" in text
        await pilot.press("n")
        await settle(pilot)
        assert demo_engine.policy_store.list() == []
        assert "not confirmed" in str(screen.query_one("#editor-error", Static).render())
        await click_button(pilot, "#save")
        await settle(pilot)
        assert isinstance(app.screen, ConfirmDialog)
        await pilot.press("y")
        await settle(pilot)
    assert [(p.name, p.immutable_days) for p in demo_engine.policy_store.list()] == [("locked", 14)]
