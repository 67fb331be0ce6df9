#!/usr/bin/env python3
"""Make the README screenshots from the demo (``sendense demo``): the demo is built
once in ``DEMO_DIR`` (a fixed path, so the NBD URI shown is the same on every run) on a
fixed clock, and the app drives itself to each screen and saves an SVG into
screenshots/. Every figure on them comes from the demo's real files.

As root, the Restore shot browses a real mount of web01's newest point (exported over
NBD too); everything is torn down and ``DEMO_DIR`` removed afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import types
import uuid
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


import engine.services.exports as exports_module  # noqa: E402
from engine.clock import FixedClock  # noqa: E402
from engine.runtime import Engine  # noqa: E402
from sendense_tui.app import SendenseApp  # noqa: E402
from sendense_tui.demo import DEMO_TIME  # noqa: E402
from sendense_tui.demo_mode import DemoWorld, build_demo, remove_world  # noqa: E402
from sendense_tui.screens.base import SendenseScreen  # noqa: E402

SIZE = (120, 36)


#: name -> keys pressed once the dashboard is up
SHOTS: dict[str, tuple[str, ...]] = {
    "dashboard": (),
    "repositories": ("2",),
    "capacity": ("3",),
    "chains": ("4", "j", "j", "j", "j"),
    "policies": ("5",),
    "copy_rules": ("5", "c"),
    "jobs": ("6",),
    "restore": ("7",),
    "events": ("8",),
    "help": ("6", "question_mark"),
}
#: fixed, so the socket path in the NBD URI is the same on every run
DEMO_DIR = Path("/tmp/sendense-screenshots")
#: the keys pressed on the Restore screen with a mount shown: p1/etc/nginx, mark nginx.conf
RESTORE_KEYS = ("tab", "enter", "enter", "enter", *("down",) * 2, "space")


async def settle(pilot) -> None:  # type: ignore[no-untyped-def]
    app = pilot.app
    for _ in range(200):
        await pilot.pause()
        await app.workers.wait_for_complete()
        await pilot.pause()
        base = app.screen_stack[0] if app.screen_stack else app.screen
        if not isinstance(base, SendenseScreen) or (base.draws and not base.busy):
            break


async def shoot(name: str, keys: tuple[str, ...], engine: Engine, out_dir: Path) -> Path:
    app = SendenseApp(engine, clock=engine.clock, live=False)
    app.animation_level = "none"
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        for key in keys:
            await pilot.press(key)
            await settle(pilot)
        return Path(app.save_screenshot(filename=f"{name}.svg", path=str(out_dir)))


def leftovers(base: Path) -> list[str]:
    """Mounts, loop devices and processes still using ``base``."""
    real = os.path.realpath(base)
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            target = line.split()[4].replace("\\040", " ")
            if target == real or target.startswith(real + "/"):
                found.append(f"mount {target}")
    losetup = subprocess.run(
        ["losetup", "-a"], capture_output=True, text=True, timeout=30, check=False
    )
    found += [f"loop {line}" for line in losetup.stdout.splitlines() if real in line]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                if real.encode() in (entry / "cmdline").read_bytes():
                    found.append(f"process {entry.name}")
    return found


@contextlib.contextmanager
def fixed_export_key() -> Iterator[None]:
    """The export service names its socket with a random key; a fixed one keeps the
    URI on the screenshot the same on every run."""
    real = exports_module.uuid
    exports_module.uuid = types.SimpleNamespace(  # type: ignore[assignment]
        uuid4=lambda: uuid.UUID("5ec0de11-0000-4000-8000-000000000000")
    )
    try:
        yield
    finally:
        exports_module.uuid = real


async def shoot_restore_real(engine: Engine, out_dir: Path) -> Path:
    """The Restore screen browsing a real, mounted point of web01/sda (needs root)."""
    point = max(
        b.id
        for b, c in engine.chain_store.list_backups()
        if (c.vm_name, c.disk_name) == ("web01", "sda")
    )
    mount = engine.file_restore.mount(point)
    with fixed_export_key():
        export = engine.exports.start(point, name="web01-sda")
    try:
        return await shoot("restore", (*SHOTS["restore"], *RESTORE_KEYS), engine, out_dir)
    finally:
        engine.exports.stop(export.id)
        engine.file_restore.unmount(mount.id)


def main(argv: list[str]) -> int:
    """Make every screenshot, or only those named on the command line."""
    unknown = set(argv) - set(SHOTS)
    if unknown:
        print(f"unknown shot(s): {', '.join(sorted(unknown))}; known: {', '.join(SHOTS)}")
        return 2
    out_dir = ROOT / "screenshots"
    out_dir.mkdir(exist_ok=True)
    real_restore = os.geteuid() == 0
    if not real_restore and (not argv or "restore" in argv):
        print("not root: the restore shot shows restore points only (mounting needs root)")
    if leftovers(DEMO_DIR):
        raise RuntimeError(f"{DEMO_DIR} is still in use: {', '.join(leftovers(DEMO_DIR))}")
    world = DemoWorld(DEMO_DIR)
    remove_world(world)
    DEMO_DIR.mkdir(mode=0o700)
    try:
        build_demo(world, now=DEMO_TIME, say=lambda line: print(f"demo: {line}"))
        engine = world.engine(FixedClock(DEMO_TIME))
        try:
            engine.capacity.sample_all()  # live readings know their filesystem (shared ones)
            for name, keys in SHOTS.items():
                if argv and name not in argv:
                    continue
                if name == "restore" and real_restore:
                    path = asyncio.run(shoot_restore_real(engine, out_dir))
                else:
                    path = asyncio.run(shoot(name, keys, engine, out_dir))
                print(f"wrote {path.relative_to(ROOT)}")
        finally:
            engine.close()
        left = leftovers(DEMO_DIR)
        if left:
            raise RuntimeError(f"left behind under {DEMO_DIR}: {', '.join(left)}")
    finally:
        remove_world(world)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
