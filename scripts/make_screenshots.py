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

from sendense_tui.app import SendenseApp  # noqa: E402
from sendense_tui.demo import build_demo_engine, demo_clock, seed_demo_catalog  # noqa: E402
from sendense_tui.screens.base import SendenseScreen  # noqa: E402

SIZE = (120, 36)
SHOTS: dict[str, tuple[str, ...]] = {
    "dashboard": (),
    "repositories": ("2",),
    "capacity": ("3",),
    "jobs": ("6",),
    "events": ("8",),
    "help": ("6", "question_mark"),
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


async def shoot(name: str, keys: tuple[str, ...], out_dir: Path, state: Path) -> Path:
    clock = demo_clock()
    engine = build_demo_engine(state / name, clock)
    seed_demo_catalog(engine, clock)
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
        for name, keys in SHOTS.items():
            path = asyncio.run(shoot(name, keys, out_dir, Path(state)))
            print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
