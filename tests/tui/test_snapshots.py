"""Every console screen at 80x24 and 120x40 on the seeded catalog (fixed clock).

Accept changes with `pytest tests/tui --snapshot-update` only after looking at
snapshot_report.html.
"""

from __future__ import annotations

import pytest

from sendense_tui.screens import SECTIONS
from tests.tui.conftest import keys_then_settle

SIZES = [(80, 24), (120, 40)]
NUMBER = {mode: str(index) for index, mode in enumerate(SECTIONS, start=1)}


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("mode", list(SECTIONS))
def test_screen(snap_compare, make_app, mode: str, size: tuple[int, int]) -> None:
    keys = () if mode == "dashboard" else (NUMBER[mode],)
    assert snap_compare(make_app(), terminal_size=size, run_before=keys_then_settle(*keys))


@pytest.mark.parametrize("theme", ["textual-dark", "textual-light"])
def test_dashboard_theme(snap_compare, make_app, theme: str) -> None:
    assert snap_compare(make_app(theme), terminal_size=(80, 24), run_before=keys_then_settle())


def test_help_on_jobs(snap_compare, make_app) -> None:
    assert snap_compare(
        make_app(), terminal_size=(80, 24), run_before=keys_then_settle("6", "question_mark")
    )


def test_command_palette(snap_compare, make_app) -> None:
    assert snap_compare(
        make_app(), terminal_size=(80, 24), run_before=keys_then_settle("6", "colon")
    )


def test_confirm_cancel_dialog(snap_compare, make_app) -> None:
    # cursor on the first queued job (rows: 2 running, 1 paused, then queued)
    assert snap_compare(
        make_app(), terminal_size=(80, 24), run_before=keys_then_settle("6", "j", "j", "j", "c")
    )


def test_events_filtered(snap_compare, make_app) -> None:
    assert snap_compare(
        make_app(),
        terminal_size=(80, 24),
        run_before=keys_then_settle("8", "slash", "o", "f", "f", "s", "i", "t", "e"),
    )


def test_chains_with_a_bad_point(snap_compare, make_app, demo_engine, clock) -> None:
    # verification found web01/sda's newest point bad: its chain shows damaged
    from sendense_tui.demo import seed_demo_chains

    seed_demo_chains(demo_engine, clock)
    web01_sda = next(v for v in demo_engine.chains.overview() if v.chain.state == "ok")
    demo_engine.copy_store.set_backup_verified(
        web01_sda.points[-1].backup.id, "mismatch", clock.now(), mark_bad=True
    )
    # the cursor on that chain: db01, vda, its 3 points, web01, the retired sda, sda
    keys = ("4", *["j"] * 8)
    assert snap_compare(make_app(), terminal_size=(80, 24), run_before=keys_then_settle(*keys))
