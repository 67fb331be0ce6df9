"""The console on a fleet catalog: each screen at 1,000 vs 100,000 restore points.

The console runs headless (Textual's Pilot, 80x24) in a process of its own per
screen and catalog, on an engine that is opened but not started (no job runner,
no scheduler: what is measured is the console and the catalog queries it makes).
For each screen it records:

- first data: from the screen's number key (the dashboard: from the app's start)
  to the screen's first drawn refresh;
- largest stall: a 10 ms timer on the UI's event loop records how late it fires;
  the worst lateness from the key until a few seconds after the first draw (the
  draw itself and the next refresh ticks included);
- peak RSS of the process (``ru_maxrss``);
- idle CPU: the process's CPU time over IDLE_SECONDS of the screen left open
  (its refresh timer ticking every second), as a share of one core; the stall
  probe is stopped first (its own wake-ups would be most of what is measured).

Prints one line per screen: 1k, 100k and the ratio 100k/1k. Goals (issue 16):
ratio <= 2, first data <= 1 s, stall <= 100 ms, RSS <= 200 MiB, idle <= 2 %.

The catalogs are built once with ``bench.seed`` (the 100k one takes minutes) and
kept in ``SENDENSE_BENCH_CONSOLE_FLEET`` (default /var/tmp/sendense-fleet-b1, with
``1k`` and ``100k`` inside); each gets one policy per 10 VMs (the seed makes none,
and the Policies screen reports on a policy's VMs).

Every section is measured, and Copy rules (a page of Policies: ``5`` then ``c``).

Run: ``.venv/bin/python -m bench console`` (``SENDENSE_BENCH_SCREENS=chains,restore``
picks screens, ``SENDENSE_BENCH_CAP`` the seconds after which a screen counts as
not loaded, default 240).
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from bench.seed import START, Fleet, open_engine, seed

FLEET_DIR = Path(os.environ.get("SENDENSE_BENCH_CONSOLE_FLEET", "/var/tmp/sendense-fleet-b1"))
SIZES = {
    "1k": Fleet(repositories=5, vms=5, points=100, jobs=100, events=500),
    "100k": Fleet(),
}
#: screen -> the keys that reach it, each with the screen it opens (the last one is
#: timed; the ones before it are waited on until their screen drew)
SCREENS: dict[str, tuple[tuple[str, str], ...]] = {
    "dashboard": (),
    "repositories": (("2", "repositories"),),
    "capacity": (("3", "capacity"),),
    "chains": (("4", "chains"),),
    "policies": (("5", "policies"),),
    "jobs": (("6", "jobs"),),
    "restore": (("7", "restore"),),
    "events": (("8", "events"),),
    "api": (("9", "api"),),
    "copy_rules": (("5", "policies"), ("c", "copy_rules")),
}
CAP = float(os.environ.get("SENDENSE_BENCH_CAP", "240"))
IDLE_SECONDS = 8.0
#: how long after the first draw stalls are still watched (the next refresh ticks)
WATCH_AFTER = 3.0
PROBE_EVERY = 0.01
ROOT = Path(__file__).resolve().parent.parent


def ensure_fleet(state_dir: Path, fleet: Fleet) -> None:
    """Seed the catalog once, then give it one policy per 10 VMs."""
    engine = open_engine(state_dir)
    try:
        if not engine.repository_store.list():
            print(f"seeding {fleet.restore_points:,} points in {state_dir} (once)…")
            seed(engine, fleet, say=True)
        if engine.policy_store.list():
            return
        repos = engine.repository_store.list()
        for index in range(0, fleet.vms, 10):
            vms = range(index, min(index + 10, fleet.vms))
            engine.policy_store.add(
                name=f"policy{index // 10:03d}",
                now=START,
                schedule="0 2 * * *",
                target_repository_id=repos[index % len(repos)].id,
                sources=[
                    {
                        "vm": f"vm{vm:04d}",
                        "disks": [
                            {"name": f"sd{chr(ord('a') + d)}", "source": f"/dev/vg0/vm{vm:04d}"}
                            for d in range(fleet.disks)
                        ],
                    }
                    for vm in vms
                ],
                retention={"keep_last": 7, "daily": 7},
                # never due while a bench runs: the scheduler is not started anyway
                next_run_at=START + timedelta(days=3650),
            )
    finally:
        engine.close()


# -- the probe (runs in its own process) ---------------------------------------------


async def _probe(screen: str, state_dir: Path) -> dict[str, Any]:
    from engine.config import default_settings
    from engine.runtime import Engine
    from sendense_tui.app import SendenseApp
    from sendense_tui.screens.base import SendenseScreen

    settings = replace(default_settings(state_dir), theme="dark")
    engine = Engine(settings).open()
    app = SendenseApp(engine, live=True, refresh_seconds=1.0, ascii=False)
    app.animation_level = "none"
    lag = {"max": 0.0, "watch": False}
    result: dict[str, Any] = {"screen": screen}
    loop = asyncio.get_running_loop()

    async def lag_probe() -> None:
        expected = loop.time() + PROBE_EVERY
        while True:
            await asyncio.sleep(PROBE_EVERY)
            now = loop.time()
            if lag["watch"]:
                lag["max"] = max(lag["max"], now - expected)
            expected = now + PROBE_EVERY

    def drawn(mode: str) -> bool:
        top = app.screen
        return isinstance(top, SendenseScreen) and mode == top.MODE and top.draws > 0

    async def until(mode: str, since: float) -> float | None:
        while not drawn(mode):
            if time.monotonic() - since > CAP:
                return None
            await asyncio.sleep(0.01)
        return time.monotonic() - since

    try:
        began = time.monotonic()
        async with app.run_test(size=(80, 24), headless=True) as pilot:
            probe = asyncio.create_task(lag_probe())
            lag["watch"] = screen == "dashboard"
            first = await until("dashboard", began)
            *before, last = SCREENS[screen] or ((None, "dashboard"),)
            for key, mode in before:
                if first is not None:
                    await pilot.press(key)
                    first = await until(mode, time.monotonic())
            if last[0] is not None and first is not None:
                await pilot.pause()
                lag["watch"] = True
                pressed = time.monotonic()
                await pilot.press(last[0])
                first = await until(last[1], pressed)
            result["first_data"] = first
            if first is not None:
                await asyncio.sleep(WATCH_AFTER)
                lag["watch"] = False
                result["stall"] = lag["max"]
                # the probe wakes the event loop 100 times a second, about 1.7 % of a
                # core on its own: the idle console is measured without it
                probe.cancel()
                cpu = time.process_time()
                await asyncio.sleep(IDLE_SECONDS)
                result["idle"] = (time.process_time() - cpu) / IDLE_SECONDS
            else:
                result["stall"] = lag["max"]
            probe.cancel()
            app.exit()
    finally:
        engine.close()
    result["rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return result


def probe_main(screen: str, state_dir: str) -> None:
    os.environ["TEXTUAL_ANIMATIONS"] = "none"
    found = asyncio.run(_probe(screen, Path(state_dir)))
    print("RESULT " + json.dumps(found), flush=True)
    # a fetch still running on a worker thread (a screen past the cap) must not hold
    # the process after the answer
    os._exit(0)


def run_probe(screen: str, state_dir: Path) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENDENSE_")}
    env.update(SENDENSE_STATE_DIR=str(state_dir), SENDENSE_NO_DAEMON="1")
    try:
        done = subprocess.run(
            [sys.executable, "-m", "bench.bench_console", "--probe", screen, str(state_dir)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=CAP + IDLE_SECONDS + WATCH_AFTER + 120,
        )
    except subprocess.TimeoutExpired:
        return {"screen": screen, "first_data": None}
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            found: dict[str, Any] = json.loads(line[len("RESULT ") :])
            return found
    raise SystemExit(f"the {screen} probe gave no result:\n{done.stderr[-3000:]}")


# -- the report --------------------------------------------------------------------------


def _seconds(value: float | None) -> str:
    return f">{CAP:.0f} s" if value is None else f"{value:.2f} s"


def _ratio(big: float | None, small: float | None) -> str:
    if big is None or not small:
        return "-"
    return f"{big / small:.1f}x"


def _line(name: str, small: dict[str, Any], big: dict[str, Any]) -> str:
    def mib(found: dict[str, Any]) -> str:
        return f"{found['rss'] / 1024**2:.0f} MiB" if "rss" in found else "-"

    def ms(found: dict[str, Any]) -> str:
        return f"{found['stall'] * 1000:.0f} ms" if "stall" in found else "-"

    def idle(found: dict[str, Any]) -> str:
        return f"{found['idle'] * 100:.1f} %" if "idle" in found else "-"

    first_small, first_big = small.get("first_data"), big.get("first_data")
    return (
        f"{name:>10}: first data {_seconds(first_small)} / {_seconds(first_big)}"
        f" ({_ratio(first_big, first_small)})"
        f" | stall {ms(small)} / {ms(big)} | RSS {mib(small)} / {mib(big)}"
        f" | idle {idle(small)} / {idle(big)}"
    )


def main() -> None:
    dirs = {size: FLEET_DIR / size for size in SIZES}
    for size, fleet in SIZES.items():
        ensure_fleet(dirs[size], fleet)
    wanted = os.environ.get("SENDENSE_BENCH_SCREENS")
    screens = [s for s in SCREENS if not wanted or s in wanted.split(",")]
    print(f"fleets: {FLEET_DIR} (1k / 100k restore points); goals: ratio <= 2x, first data")
    print("<= 1 s, stall <= 100 ms, RSS <= 200 MiB, idle <= 2 % of a core")
    for screen in screens:
        small = run_probe(screen, dirs["1k"])
        big = run_probe(screen, dirs["100k"])
        print(_line(screen, small, big), flush=True)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--probe":
        probe_main(sys.argv[2], sys.argv[3])
    else:
        main()
