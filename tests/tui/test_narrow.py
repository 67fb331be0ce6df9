"""At 80x24 nothing that matters is cut without a way to read it: every footer fits,
and a Capacity card flows its figures onto continuation lines (compact layout)
instead of cutting them. (Rows of lists are cut to their columns; Enter shows the
whole row: tests/tui/test_details.py.)"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from textual.widgets._footer import FooterKey

from engine.clock import FixedClock
from engine.runtime import Engine
from sendense_tui.app import SendenseApp
from sendense_tui.screens.capacity import CARD_CHROME, card
from tests.tui.conftest import keys_then_settle

#: every screen, and the keys that reach it from the Dashboard
ROUTES = {
    "dashboard": (),
    "repositories": ("2",),
    "capacity": ("3",),
    "chains": ("4",),
    "policies": ("5",),
    "copy_rules": ("5", "c"),
    "jobs": ("6",),
    "restore": ("7",),
    "events": ("8",),
    "api": ("9",),
}


def _words(text: str) -> str:
    bars = str.maketrans("", "", "█░│▁▂▃▄▅▆▇▊·")
    return " ".join(text.translate(bars).split())


@pytest.mark.parametrize("mode", list(ROUTES))
async def test_the_footer_fits_80_columns(make_app: Callable[..., SendenseApp], mode: str) -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await keys_then_settle(*ROUTES[mode])(pilot)
        keys = list(app.screen.query(FooterKey))
        assert keys, f"{mode}: no footer"
        past = [f"{k.key_display or k.key} {k.description}" for k in keys if k.region.right > 80]
        assert past == [], f"{mode}: footer keys past column 80: {past}"


def test_a_capacity_card_at_80_columns_cuts_no_figure(
    demo_engine: Engine, clock: FixedClock, tmp_path: Path
) -> None:
    """Locks with their dates, reclaimable space later, a long shared-filesystem note:
    at 80 columns each line fits and every figure is still there."""
    from sendense_tui.demo import seed_demo_chains

    seed_demo_chains(demo_engine, clock)
    store = demo_engine.repository_store
    for name in ("a-rather-long-repository-name", "another-long-repository-name"):
        (tmp_path / name).mkdir()
        store.add(name=name, kind="local", path=str(tmp_path / name), now=clock.now())
    items = demo_engine.capacity.overview(history_span=timedelta(days=1), buckets=40)
    primary = next(i for i in items if i.repository.name == "primary")
    assert primary.breakdown.locked and primary.breakdown.locked_until is not None
    shared = [i for i in items if i.shared_with]
    assert shared, "the two repositories in one directory share a filesystem"
    for item in items:
        wide = card(item, clock.now(), 160).plain
        narrow = card(item, clock.now(), 80)
        lines = narrow.plain.split("\n")
        assert max(len(line) for line in lines) <= 80 - CARD_CHROME, lines
        # the same words (the gauge and the sparkline are only shorter), on more lines
        assert _words(wide) == _words(narrow.plain)
    # a reading's error longer than a line wraps under itself
    broken = replace(
        shared[0],
        reading=replace(shared[0].reading, error="cannot read the filesystem: " + "x" * 120),
    )
    lines = card(broken, clock.now(), 80).plain.split("\n")
    assert max(len(line) for line in lines) <= 80 - CARD_CHROME, lines
    assert "x" * 120 in "".join(line.strip() for line in lines)
    text = card(primary, clock.now(), 80).plain
    assert f"until {primary.breakdown.locked_until:%b %d}" in text
    assert "shares its filesystem with" in card(shared[0], clock.now(), 80).plain
