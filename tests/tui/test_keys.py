"""Keys mean one thing on every screen (issue 13, item 5) and forms are labelled
(item 7): every list filters (/), orders (o, O) and moves (j/k, g/G, Home/End)
the same way; `e` edits and Space toggles; x/u on Restore ask, then say what
happened; q and Esc never leave a screen from a text box; the section bar is
clickable; every form field has a visible label and its placeholder fits."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from textual.widget import Widget
from textual.widgets import Button, Checkbox, DataTable, Input, Label, RadioSet, Select, Tree

from engine.runtime import Engine
from engine.services.policies import PolicySpec
from sendense_tui.app import SendenseApp
from sendense_tui.demo import seed_demo_chains
from sendense_tui.screens.base import NavBar
from sendense_tui.screens.copy_rules import CopyRulesScreen
from sendense_tui.screens.help import HelpScreen
from sendense_tui.widgets.confirm import ConfirmDialog
from sendense_tui.widgets.tables import FilterBar, FlexTable, plain, sort_value
from tests.tui.conftest import settle


@pytest.fixture
def seeded(demo_engine: Engine, clock: Any, tmp_path: Path) -> Engine:
    """Two or more rows in every list: policies, copy rules, chains (restore points)."""
    seed_demo_chains(demo_engine, clock)
    for name, schedule in (("web", "0 2 * * *"), ("db-hourly", "15 * * * *")):
        demo_engine.policies.add(
            PolicySpec(
                name=name,
                schedule=schedule,
                target="primary",
                sources=PolicySpec.sources_from([f"{name}01:sda=/dev/vg/{name}01"]),
                retention={"keep_last": 7},
            )
        )
    repos = demo_engine.repository_store
    demo_engine.copy_store.add_rule(
        name="archive-weekly",
        now=clock.now(),
        source_repository_id=repos.get("primary").id,
        destination_repository_id=repos.get("archive-smb").id,
        selection="fulls",
        mode="manual",
    )
    return demo_engine


async def _go(pilot: Any, where: str) -> Any:
    await settle(pilot)
    if where == "copy_rules":
        await pilot.press("5")
        await settle(pilot)
        await pilot.press("c")
    else:
        await pilot.press(where)
    await settle(pilot)
    return pilot.app.screen


def _keys(table: DataTable[Any]) -> list[str]:
    return [str(key.value) for key in table.rows]


def _column(table: FlexTable, at: int) -> list[str]:
    return [plain(table.get_row_at(i)[at]) for i in range(table.row_count)]


def _needle(table: FlexTable, column: int | None) -> str:
    """A word of the last row (of ``column``, else any) that the first row lacks."""
    first = " ".join(plain(cell) for cell in table.get_row_at(0)).casefold()
    cells = table.get_row_at(table.row_count - 1)
    words = [
        word
        for at, cell in enumerate(cells)
        if column is None or at == column
        for word in plain(cell).split()
        if len(word) > 2 and word.isascii() and word.casefold() not in first
    ]
    assert words, "the first and the last row differ"
    return max(words, key=len)


#: (how to get there, the list) for every list of the console
TABLE_LISTS = [
    ("2", "#repositories"),
    ("5", "#policies"),
    ("copy_rules", "#rules"),
    ("6", "#active"),
    ("6", "#finished"),
    ("7", "#points"),
    ("8", "#events"),
]


@pytest.mark.parametrize(("where", "selector"), TABLE_LISTS)
async def test_every_list_filters_orders_and_moves_alike(
    make_app: Callable[..., SendenseApp], seeded: Engine, where: str, selector: str
) -> None:
    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await _go(pilot, where)
        table = screen.query_one(selector, FlexTable)
        table.focus()
        await settle(pilot)
        everything = _keys(table)
        assert len(everything) >= 2, "the seeded catalog gives this list two rows"

        # j/k, G/g and End/Home move the cursor
        await pilot.press("G")
        assert table.cursor_row == len(everything) - 1
        await pilot.press("k")
        assert table.cursor_row == len(everything) - 2
        await pilot.press("g")
        assert table.cursor_row == 0
        await pilot.press("j")
        assert table.cursor_row == 1
        await pilot.press("end")
        assert table.cursor_row == len(everything) - 1
        await pilot.press("home")
        assert table.cursor_row == 0

        # / narrows the list as you type to the rows that say it (any case)
        needle = _needle(table, 3 if where == "8" else None)
        await pilot.press("slash")
        bar = screen.query_one(FilterBar)
        assert bar.display and screen.focused is bar.box
        await pilot.press(*needle.upper())
        await settle(pilot)
        shown = _keys(table)
        assert 0 < len(shown) < len(everything)
        assert everything[-1] in shown
        for i in range(table.row_count):
            line = " ".join(plain(cell) for cell in table.get_row_at(i)).casefold()
            assert needle.casefold() in line
        # Enter keeps the filter and gives the list the keys back
        await pilot.press("enter")
        await settle(pilot)
        assert screen.focused is table and _keys(table) == shown and bar.display
        assert f"{len(shown)} " in str(bar.query_one("#filter-count").render())
        # Esc clears it, and stays on the screen
        await pilot.press("escape")
        await settle(pilot)
        assert _keys(table) == everything and not bar.display
        assert app.screen is screen and screen.focused is table

        # o orders by the first column, O reverses, o on the last goes back
        await pilot.press("o")
        await settle(pilot)
        first = _column(table, 0)
        assert first == sorted(first, key=sort_value)
        assert "▲" in plain(table.ordered_columns[0].label)
        await pilot.press("O")
        await settle(pilot)
        assert _column(table, 0) == sorted(first, key=sort_value, reverse=True)
        for _ in table.sort_columns():
            await pilot.press("o")
        await settle(pilot)
        assert _keys(table) == everything


async def test_chains_tree_filters_orders_and_moves_like_every_list(
    make_app: Callable[..., SendenseApp], seeded: Engine
) -> None:
    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await _go(pilot, "4")
        tree = screen.query_one("#chains-tree", Tree)
        vms = [str(node.label) for node in tree.root.children]
        assert vms == ["db01", "web01"]
        await pilot.press("G")
        assert tree.cursor_line == tree.last_line
        await pilot.press("g")
        assert tree.cursor_line == 0
        await pilot.press("j")
        assert tree.cursor_line == 1

        await pilot.press("slash", *"web", "enter")
        await settle(pilot)
        assert [str(node.label) for node in tree.root.children] == ["web01"]
        await pilot.press("escape")
        await settle(pilot)
        assert [str(node.label) for node in tree.root.children] == vms
        assert app.screen is screen

        await pilot.press("O")  # by VM, reversed
        await settle(pilot)
        assert [str(node.label) for node in tree.root.children] == ["web01", "db01"]


async def test_a_header_click_orders_by_that_column(
    make_app: Callable[..., SendenseApp], seeded: Engine
) -> None:
    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await _go(pilot, "2")
        table = screen.query_one("#repositories", FlexTable)
        table.post_message(
            DataTable.HeaderSelected(
                table, table.ordered_columns[0].key, 0, table.ordered_columns[0].label
            )
        )
        await settle(pilot)
        assert table.sort_key == "name"
        assert _column(table, 0) == sorted(_column(table, 0), key=sort_value)


async def test_e_edits_and_space_toggles_on_policies(
    make_app: Callable[..., SendenseApp], seeded: Engine
) -> None:
    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await _go(pilot, "5")
        table = screen.query_one("#policies", DataTable)
        name = plain(table.get_row_at(table.cursor_row)[0])
        await pilot.press("e")
        await settle(pilot)
        assert screen.query_one("#editor").display
        assert screen.query_one("#name", Input).value == name
        await pilot.press("escape")
        await settle(pilot)
        assert not screen.query_one("#editor").display and app.screen is screen

        # disabling asks first and names what stops; No changes nothing
        await pilot.press("space")
        await settle(pilot)
        assert isinstance(app.screen, ConfirmDialog)
        assert f"Disable policy {name}?" == app.screen.question
        await pilot.press("n")
        await settle(pilot)
        assert seeded.policies.get(name).enabled is True
        await pilot.press("space")
        await settle(pilot)
        await pilot.press("y")
        await settle(pilot)
        assert seeded.policies.get(name).enabled is False
        assert any(f"policy {name} disabled" in n.message for n in app._notifications)
        # enabling does not ask
        await pilot.press("space")
        await settle(pilot)
        assert seeded.policies.get(name).enabled is True


async def test_e_edits_and_space_toggles_on_copy_rules(
    make_app: Callable[..., SendenseApp], seeded: Engine, tmp_path: Path
) -> None:
    # the edited rule's destination must be reachable: a real directory
    dest = tmp_path / "usb"
    dest.mkdir()
    repos = seeded.repository_store
    usb = repos.add(name="usb", kind="local", path=str(dest), now=seeded.clock.now())
    rule = seeded.copy_store.add_rule(
        name="to-usb",
        now=seeded.clock.now(),
        source_repository_id=repos.get("primary").id,
        destination_repository_id=usb.id,
        mode="manual",
    )
    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await _go(pilot, "copy_rules")
        assert isinstance(screen, CopyRulesScreen)
        table = screen.query_one("#rules", DataTable)
        table.move_cursor(row=table.get_row_index(str(rule.id)))
        await pilot.press("e")
        await settle(pilot)
        assert screen.query_one("#form").display
        assert screen.query_one("#name", Input).value == "to-usb"
        assert screen.query_one("#destination", Select).value == "usb"
        screen.query_one("#selection", Select).value = "latest"
        screen.query_one("#latest", Input).value = "3"
        screen.save()
        await settle(pilot)
        assert not screen.query_one("#form").display
        changed = seeded.copies.get_rule(rule.id)
        assert (changed.selection, changed.latest_count, changed.name) == ("latest", 3, "to-usb")
        assert len(seeded.copies.list_rules()) == 3  # edited, not added

        await pilot.press("space")
        await settle(pilot)
        assert isinstance(app.screen, ConfirmDialog)
        assert app.screen.question == "Disable copy rule to-usb?"
        await pilot.press("y")
        await settle(pilot)
        assert seeded.copies.get_rule(rule.id).enabled is False
        assert plain(table.get_row(str(rule.id))[3]) == "disabled"
        await pilot.press("space")
        await settle(pilot)
        assert seeded.copies.get_rule(rule.id).enabled is True


async def test_x_and_u_on_restore_ask_then_say_what_happened(
    make_app: Callable[..., SendenseApp], demo_engine: Engine, tmp_path: Path
) -> None:
    from tests.tui.test_restore_screen import _seed

    mount_id = _seed(demo_engine, tmp_path)
    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await _go(pilot, "7")
        exports = screen.query_one("#exports", DataTable)
        exports.focus()
        await pilot.press("x")
        await settle(pilot)
        assert isinstance(app.screen, ConfirmDialog)
        assert "web01-sda" in app.screen.question
        assert "nbd://127.0.0.1:10809/web01-sda" in app.screen.consequence
        assert "loses the disk" in app.screen.consequence
        await pilot.press("n")
        await settle(pilot)
        assert [x.state for x in demo_engine.exports.list()] == ["running"]
        await pilot.press("x")
        await settle(pilot)
        await pilot.press("y")
        await settle(pilot)
        assert [x.state for x in demo_engine.exports.list() if x.name == "web01-sda"] != ["running"]
        assert any(
            "Stopped NBD export web01-sda" in n.message and "is gone" in n.message
            for n in app._notifications
        )

        screen.query_one("#mounts", DataTable).focus()
        await pilot.press("u")
        await settle(pilot)
        assert isinstance(app.screen, ConfirmDialog)
        assert f"(mount {mount_id})" in app.screen.question
        assert "backup itself is not touched" in app.screen.consequence
        await pilot.press("n")
        await settle(pilot)
        assert [m.id for m in demo_engine.file_restore.list_mounts()] == [mount_id]
        await pilot.press("u")
        await settle(pilot)
        await pilot.press("y")
        await settle(pilot)
        assert demo_engine.file_restore.list_mounts() == []
        assert any(
            "Unmounted" in n.message and f"mount {mount_id}" in n.message
            for n in app._notifications
        )


async def test_q_and_esc_inside_a_text_box_never_leave_the_screen(
    make_app: Callable[..., SendenseApp], seeded: Engine, tmp_path: Path
) -> None:
    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await _go(pilot, "7")
        box = screen.query_one("#destination", Input)
        box.focus()
        await pilot.press("q", "u", "x")
        await settle(pilot)
        assert box.value == "qux" and app.screen is screen
        await pilot.press("escape")
        await settle(pilot)
        assert app.screen is screen and app.current_mode == "restore"
        assert screen.focused is not box and box.value == "qux"

        # a choice box in a form ignores q (the form and the page stay)
        copy_rules = await _go(pilot, "copy_rules")
        await pilot.press("a")
        await settle(pilot)
        copy_rules.query_one("#mode", Select).focus()
        await pilot.press("q")
        await settle(pilot)
        assert app.screen is copy_rules and copy_rules.query_one("#form").display
        # the filter box takes q as a letter too
        copy_rules.query_one("#rules", DataTable).focus()
        await pilot.press("escape")  # closes the form first
        await settle(pilot)
        await pilot.press("slash", "q")
        await settle(pilot)
        assert copy_rules.query_one(FilterBar).box.value == "q" and app.screen is copy_rules


async def test_clicking_a_section_in_the_bar_goes_there(
    make_app: Callable[..., SendenseApp], seeded: Engine
) -> None:
    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        bar = app.screen.query_one(NavBar)
        for mode in ("jobs", "policies", "dashboard"):
            start, _end, _ = next(span for span in bar.spans if span[2] == mode)
            await pilot.click(NavBar, offset=(start + 1, 0))
            await settle(pilot)
            assert app.current_mode == mode
            bar = app.screen.query_one(NavBar)


async def test_help_lists_the_keys_the_list_and_the_screen_take(
    make_app: Callable[..., SendenseApp], seeded: Engine
) -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await _go(pilot, "5")
        await pilot.press("question_mark")
        await settle(pilot)
        assert isinstance(app.screen, HelpScreen)
        rows = {row.description: row.keys for row in app.screen.rows}
        assert rows["Edit the selected policy (the editor, filled in)"] == "e"
        assert rows["Enable or disable the selected policy (disabling asks first)"] == "space"
        assert rows["Remove the selected policy (asks first; its backups stay)"] == "d, D"
        assert rows["Filter the list as you type (Enter keeps, Esc clears)"] == "/"
        assert rows["Order the list by the next column (o again: the next; O reverses)"] == "o"
        assert rows["Open the command palette (also Ctrl+P)"] == ":, ^p"
        navigation = next(r.description for r in app.screen.rows if r.keys == "arrows…")
        for key in ("j", "k", "g", "G", "home", "end"):
            assert f" {key}" in navigation


# -- forms (item 7) ----------------------------------------------------------------------


def _labelled(widget: Widget) -> bool:
    """A visible Label right before the field, in the same row."""
    parent = widget.parent
    assert parent is not None
    siblings = list(parent.children)
    before = siblings[: siblings.index(widget)]
    shown = [w for w in before if w.display]
    return bool(shown) and isinstance(shown[-1], Label) and bool(str(shown[-1].render()).strip())


def _check_form(form: Widget) -> None:
    fields = [w for w in form.query("Input, Select") if w.display and w.parent.display]  # type: ignore[union-attr]
    assert fields
    for field in fields:
        assert _labelled(field), f"{field.id} has no visible label"
        if isinstance(field, Input) and field.placeholder:
            room = field.content_region.width
            assert len(field.placeholder) < room, (
                f"{field.id}: placeholder {field.placeholder!r} is cut at {room} columns"
            )


async def test_policy_editor_and_copy_rule_form_label_every_field_at_80x24(
    make_app: Callable[..., SendenseApp], seeded: Engine
) -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await _go(pilot, "5")
        await pilot.press("a")
        await settle(pilot)
        _check_form(screen.query_one("#editor"))
        await pilot.press("escape")
        await settle(pilot)
        rules = await _go(pilot, "copy_rules")
        await pilot.press("a")
        await settle(pilot)
        _check_form(rules.query_one("#form"))


@pytest.mark.parametrize("kind", ["local", "nfs", "cifs"])
async def test_wizard_labels_every_field_and_every_focus_stop_is_a_visible_control(
    make_app: Callable[..., SendenseApp], demo_engine: Engine, kind: str
) -> None:
    from sendense_tui.screens.repo_wizard import RepoWizard

    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await _go(pilot, "2")
        await pilot.press("a")
        await settle(pilot)
        wizard = app.screen
        assert isinstance(wizard, RepoWizard)
        wizard.query_one(f"#kind-{kind}").value = True
        await settle(pilot)
        rows = [row for row in wizard.query(".field-row") if row.display]
        for row in rows:
            field = row.query_one(Input)
            assert _labelled(field), f"{field.id} has no visible label"
            if field.placeholder:
                assert len(field.placeholder) < field.content_region.width, field.id
        # Tab walks only through visible controls, and reaches every one of them
        seen: list[Widget] = []
        for _ in range(40):
            await pilot.press("tab")
            focused = app.screen.focused
            assert focused is not None
            if focused in seen:
                break
            seen.append(focused)
        for widget in seen:
            assert isinstance(widget, Input | RadioSet | Checkbox | Button), widget
            assert widget.display and widget.region.width > 0, widget
        fields = {w.id for w in seen if isinstance(w, Input)}
        assert fields == {row.query_one(Input).id for row in rows}


async def test_palette_offers_the_list_keys_and_runs_them_on_the_list(
    make_app: Callable[..., SendenseApp], seeded: Engine
) -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await _go(pilot, "6")
        finished = screen.query_one("#finished", FlexTable)
        finished.focus()
        await pilot.press("ctrl+p")
        await settle(pilot)
        await pilot.press(*"order the list")
        await pilot.pause(0.5)
        await pilot.press("enter")
        await settle(pilot)
        assert app.screen is screen
        assert finished.sort_key == "id"  # the list in focus, by its first column
        assert screen.query_one("#active", FlexTable).sort_key is None


async def test_a_question_shows_its_example_whole_at_80x24(
    make_app: Callable[..., SendenseApp], seeded: Engine
) -> None:
    from sendense_tui.screens.chains import AskDialog

    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await _go(pilot, "4")
        await pilot.press("G")  # the last line is a restore point
        await pilot.press("R")
        await settle(pilot)
        ask = app.screen
        assert isinstance(ask, AskDialog)
        box = ask.query_one(Input)
        assert len(box.placeholder) < box.content_region.width
        example = str(ask.query_one("#ask-example").render())
        assert "nbd+unix:///x?socket=/run/t.sock" in example.replace("\n", "")
