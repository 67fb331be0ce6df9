#!/usr/bin/env python3
"""Make the README screenshots: the app drives itself on the seeded demo catalog
(fixed clock) to each screen and saves an SVG into screenshots/."""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from collections.abc import Callable  # noqa: E402

from engine.runtime import Engine  # noqa: E402
from engine.services.policies import PolicySpec  # noqa: E402
from sendense_tui.app import SendenseApp  # noqa: E402
from sendense_tui.demo import (  # noqa: E402
    build_demo_engine,
    demo_clock,
    seed_demo_capacity,
    seed_demo_catalog,
    seed_demo_chains,
)
from sendense_tui.screens.base import SendenseScreen  # noqa: E402

SIZE = (120, 36)


def seed_policies(engine: Engine) -> None:
    """Two policies and a copy rule to a local "usb-disk" repository (catalog rows only)."""
    for name, schedule, vm in (
        ("nightly-web", "0 2 * * *", "web01"),
        ("db-hourly", "15 * * * *", "db01"),
    ):
        engine.policies.add(
            PolicySpec(
                name=name,
                schedule=schedule,
                target="primary",
                sources=PolicySpec.sources_from([f"{vm}:sda=/dev/vg/{vm}"]),
                retention={"keep_last": 7, "daily": 7, "weekly": 4},
            )
        )
    usb = Path(engine.settings.state_dir) / "usb-disk"
    usb.mkdir(exist_ok=True)
    engine.repository_store.add(
        name="usb-disk", kind="local", path=str(usb), now=engine.clock.now()
    )
    engine.copies.add_rule(name="to-usb", source="primary", destination="usb-disk")


#: name -> (keys pressed once the dashboard is up, extra demo data)
SHOTS: dict[str, tuple[tuple[str, ...], tuple[Callable[[Engine], None], ...]]] = {
    "dashboard": ((), ()),
    "repositories": (("2",), ()),
    "capacity": (("3",), (seed_demo_capacity,)),
    "chains": (("4", "j", "j", "j"), (seed_demo_chains,)),
    "policies": (("5",), (seed_demo_chains, seed_policies)),
    "copy_rules": (("5", "c"), (seed_policies,)),
    "jobs": (("6",), ()),
    "restore": (("7",), (seed_demo_chains,)),
    "events": (("8",), ()),
    "help": (("6", "question_mark"), ()),
}


async def settle(pilot) -> None:  # type: ignore[no-untyped-def]
    app = pilot.app
    for _ in range(200):
        await pilot.pause()
        await app.workers.wait_for_complete()
        await pilot.pause()
        base = app.screen_stack[0] if app.screen_stack else app.screen
        if not isinstance(base, SendenseScreen) or (base.draws and not base.busy):
            break


async def shoot(
    name: str,
    keys: tuple[str, ...],
    seeds: tuple[Callable[[Engine], None], ...],
    out_dir: Path,
    state: Path,
) -> Path:
    clock = demo_clock()
    engine = build_demo_engine(state / name, clock)
    seed_demo_catalog(engine, clock)
    for seed in seeds:
        seed(engine)
    try:
        app = SendenseApp(engine, clock=clock, live=False)
        app.animation_level = "none"
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            for key in keys:
                await pilot.press(key)
                await settle(pilot)
            return Path(app.save_screenshot(filename=f"{name}.svg", path=str(out_dir)))
    finally:
        engine.close()


def main() -> int:
    out_dir = ROOT / "screenshots"
    out_dir.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as state:
        for name, (keys, seeds) in SHOTS.items():
            path = asyncio.run(shoot(name, keys, seeds, out_dir, Path(state)))
            print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
