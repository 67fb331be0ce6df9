"""Dashboard: one capacity gauge line per repository (level colour, percent, free,
days until full) from the seeded demo samples, updated in place."""

from __future__ import annotations

from collections.abc import Callable

from engine.runtime import Engine
from sendense_tui.app import SendenseApp
from sendense_tui.screens.dashboard import DashboardScreen, RepoGauge
from sendense_tui.widgets.gauge import LEVEL_COLOURS
from tests.tui.conftest import settle


def _percent(engine: Engine, repository_id: int) -> float:
    sample = engine.capacity_store.latest(repository_id)
    assert sample is not None
    return sample.used_bytes * 100 / (sample.used_bytes + sample.free_bytes)


async def test_a_gauge_line_per_repository_with_its_seeded_percent(
    make_app: Callable[..., SendenseApp], demo_engine: Engine
) -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, DashboardScreen)
        gauges = {g.id: g for g in screen.query(RepoGauge)}
        repos = demo_engine.repository_store.list()
        assert set(gauges) == {f"gauge-{r.id}" for r in repos}
        for repo in repos:
            widget = gauges[f"gauge-{repo.id}"]
            line = widget.render()
            shown = str(line)
            assert shown.startswith(repo.name)
            assert f"{_percent(demo_engine, repo.id):.1f}%" in shown
            assert "█" in shown and "free" in shown
            # the one line fits the panel at 80 columns
            assert line.cell_len <= widget.size.width
        # seeded: offsite-nfs grows 9G a day with ~278G free, at its warning level
        offsite = str(
            gauges[f"gauge-{demo_engine.repository_store.get('offsite-nfs').id}"].render()
        )
        assert "WARNING" in offsite and "d to full" in offsite
        bar = gauges[f"gauge-{demo_engine.repository_store.get('offsite-nfs').id}"].render()
        assert any(LEVEL_COLOURS["warning"] in str(span.style) for span in bar.spans)


async def test_new_capacity_sample_updates_the_same_line(
    make_app: Callable[..., SendenseApp], demo_engine: Engine
) -> None:
    app = make_app()
    primary = demo_engine.repository_store.get("primary")
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, DashboardScreen)
        widget = screen.query_one(f"#gauge-{primary.id}", RepoGauge)
        before = str(widget.render())
        latest = demo_engine.capacity_store.latest(primary.id)
        assert latest is not None
        usable = latest.used_bytes + latest.free_bytes
        used = int(usable * 0.91)  # past the critical threshold (90 %)
        demo_engine.capacity_store.add(
            primary.id,
            taken_at=demo_engine.clock.now(),
            total_bytes=latest.total_bytes,
            used_bytes=used,
            free_bytes=usable - used,
        )
        await pilot.press("r")
        await settle(pilot)
        assert screen.query_one(f"#gauge-{primary.id}", RepoGauge) is widget  # in place
        after = str(widget.render())
        assert after != before
        assert "91.0%" in after
