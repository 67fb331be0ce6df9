"""Dashboard: one capacity gauge line per repository (level colour, percent, free,
days until full) from the seeded demo samples, updated in place; the Alerts panel
(raised alerts, verification coverage and the next scheduled verification)."""

from __future__ import annotations

import io
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from rich.console import Console
from textual.widgets import Static

from engine.clock import FixedClock
from engine.runtime import Engine
from sendense_tui.app import SendenseApp
from sendense_tui.demo import seed_demo_chains
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


def _alerts_text(screen: DashboardScreen) -> str:
    panel = screen.query_one("#alerts", Static)
    console = Console(width=panel.size.width, record=True, file=io.StringIO())
    console.print(panel.content)
    return console.export_text()


async def test_alerts_panel_lists_the_seeded_alert_and_the_verification_line(
    make_app: Callable[..., SendenseApp], demo_engine: Engine
) -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, DashboardScreen)
        shown = _alerts_text(screen)
        # seeded: copy rule db01-offsite failed 3 times in a row, its alert is raised
        assert "warning" in shown and "copy rule db01-offsite" in shown
        # no backup in the bare demo catalog; the daily 03:00 verification comes next
        assert "nothing to verify yet" in shown and "next check tomorrow 03:00" in shown
        assert screen.query_one("#alerts").border_title == "Alerts (1)"
        # the warnings panel still has room at 80x24
        assert screen.query_one("#warnings").size.height >= 4


async def test_an_alert_raised_by_the_engine_shows_after_refresh(
    make_app: Callable[..., SendenseApp], demo_engine: Engine
) -> None:
    primary, archive = (demo_engine.repository_store.get(n) for n in ("primary", "archive-smb"))
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, DashboardScreen)
        assert "archive-smb" not in _alerts_text(screen)
        # a rule allowing 24 h without a copy, 3 days old and never copied: critical
        demo_engine.copy_store.add_rule(
            name="web01-archive",
            now=demo_engine.clock.now() - timedelta(days=3),
            source_repository_id=primary.id,
            destination_repository_id=archive.id,
            max_age_hours=24,
        )
        raised = demo_engine.scheduler.evaluate_alerts(kinds=("copy_too_old",))
        assert len(raised) == 2
        await pilot.press("r")
        await settle(pilot)
        shown = _alerts_text(screen)
        assert "critical" in shown
        assert "destination archive-smb (copy rule web01-archive) has no copy yet" in shown
        assert "copy rule db01-offsite" in shown
        assert screen.query_one("#alerts").border_title == "Alerts (2)"


async def test_verification_line_counts_coverage_and_overdue_files(
    make_app: Callable[..., SendenseApp], demo_engine: Engine, clock: FixedClock
) -> None:
    # seeded chains: fulls verified 2 h after they were taken, incrementals never
    seed_demo_chains(demo_engine, clock)
    report = demo_engine.verifier.report()
    # the unverified incrementals are younger than the 30-day window: not overdue
    assert 0 < report.coverage_percent < 100 and report.overdue == []
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, DashboardScreen)
        shown = _alerts_text(screen)
        assert f"verified {report.coverage_percent:.0f}% of bytes in 30 days" in shown
        assert "0 overdue" in shown
        clock.advance(timedelta(days=31))  # now every file is past the window unread
        await pilot.press("r")
        await settle(pilot)
        report = demo_engine.verifier.report()
        assert len(report.overdue) == report.files_total > 0
        shown = _alerts_text(screen)
        assert f"{report.files_total} overdue" in shown and "verified 0% of bytes" in shown


async def test_repositories_added_and_removed_while_shown_update_the_lines_without_a_crash(
    make_app: Callable[..., SendenseApp], demo_engine: Engine, tmp_path: Path
) -> None:
    """A repository added or removed (from the CLI, the wizard, another console) while
    the Dashboard is shown: lines come and go in place, several times over, in one
    refresh or across several, and the lines of the others stay the same widgets."""
    app = make_app()
    store = demo_engine.repository_store
    primary = store.get("primary")
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, DashboardScreen)
        kept = screen.query_one(f"#gauge-{primary.id}", RepoGauge)
        added: list[int] = []
        for n in range(4):
            path = tmp_path / f"extra{n}"
            path.mkdir()
            added.append(store.add(name=f"extra{n}", kind="local", path=str(path),
                                   now=demo_engine.clock.now()).id)  # fmt: skip
            await pilot.press("r")
            await settle(pilot)
            if n % 2:  # remove one and add one within the same refresh
                store.delete(added.pop(0))
                path = tmp_path / f"more{n}"
                path.mkdir()
                added.append(store.add(name=f"more{n}", kind="local", path=str(path),
                                       now=demo_engine.clock.now()).id)  # fmt: skip
                await pilot.press("r")
                await settle(pilot)
            shown = {g.id for g in screen.query(RepoGauge)}
            assert shown == {f"gauge-{r.id}" for r in store.list()}
        assert screen.query_one(f"#gauge-{primary.id}", RepoGauge) is kept
        for rid in added:
            store.delete(rid)
        await pilot.press("r")
        await settle(pilot)
        assert {g.id for g in screen.query(RepoGauge)} == {f"gauge-{r.id}" for r in store.list()}
        assert app.is_running


async def test_a_point_found_bad_shows_a_critical_alert_at_once(
    make_app: Callable[..., SendenseApp], demo_engine: Engine, tmp_path: Path
) -> None:
    """A verification that finds a file damaged: the Dashboard's next draw lists it as a
    critical alert, without waiting for the scheduler's alert evaluation."""
    from tests.engine.copy_worker import add_repo, make_chain
    from tests.engine.test_verify import flip_byte

    repo = add_repo(demo_engine, "vault", tmp_path / "vault")
    chain = make_chain(demo_engine, repo, size_mb=1, incrementals=0)
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, DashboardScreen)
        assert "critical" not in _alerts_text(screen)
        flip_byte(tmp_path / "vault" / chain.paths[0])
        demo_engine.verifier.verify_targets(demo_engine.verifier.targets("repository", "vault"))
        await pilot.press("r")
        await settle(pilot)
        shown = _alerts_text(screen)
        assert "critical" in shown
        assert f"{chain.paths[0]} in vault failed verification (mismatch)" in shown
        assert "1 bad" in shown
        assert screen.query_one("#alerts").border_title == "Alerts (2)"
