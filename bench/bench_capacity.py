"""The capacity monitor's cost and reaction time.

1. CPU per repository per minute with 20 repositories, at the default poll
   (one sample a minute): the monitor's full sample (psutil + stat + catalog
   write + threshold check) against a bare psutil loop doing the same sampling.
   Prints the ratio.
2. Delay from a write to the threshold event through the watchdog path: the
   warning threshold is set just above the current use, a file is written,
   and the time to ``capacity.threshold_crossed`` is measured.

Run: ``.venv/bin/python -m bench capacity``
"""

from __future__ import annotations

import os
import statistics
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import psutil

from engine.clock import SYSTEM_CLOCK
from engine.config import CapacitySettings, default_settings
from engine.runtime import Engine
from engine.services.repositories import RepositorySpec

REPOS = 20
ROUNDS = 30


def _cpu() -> float:
    return time.process_time()


def cpu_cost(base: Path) -> None:
    settings = replace(
        default_settings(base / "state"),
        capacity=CapacitySettings(min_free_bytes=0, poll_seconds=3600),
    )
    engine = Engine(settings, clock=SYSTEM_CLOCK).open()
    try:
        paths = []
        for i in range(REPOS):
            path = base / f"repo{i:02d}"
            engine.repositories.add(RepositorySpec(name=f"r{i:02d}", path=str(path), create=True))
            paths.append(str(path))
        repos = engine.repositories.list()
        start = _cpu()
        for _ in range(ROUNDS):
            for repo in repos:
                engine.capacity.sample(repo)
        monitor = (_cpu() - start) / (ROUNDS * REPOS)
        start = _cpu()
        for _ in range(ROUNDS):
            for path in paths:
                psutil.disk_usage(path)
        bare = (_cpu() - start) / (ROUNDS * REPOS)
    finally:
        engine.close()
    per_minute = 60 / settings.capacity.poll_seconds if settings.capacity.poll_seconds < 60 else 1
    print(f"repositories: {REPOS}, samples per repository per minute: {per_minute:g}")
    print(f"monitor: {monitor * 1000:.3f} ms CPU per repository per minute")
    print(f"bare psutil loop: {bare * 1000:.4f} ms CPU per repository per minute")
    print(f"ratio monitor/bare psutil: {monitor / bare:.1f}x")
    print(
        f"all {REPOS} repositories: {monitor * REPOS * 1000:.1f} ms CPU a minute "
        f"({monitor * REPOS / 60 * 100:.4f} % of one core)"
    )


def write_to_event(base: Path, tries: int = 5) -> None:
    settings = replace(
        default_settings(base / "state2"),
        capacity=CapacitySettings(min_free_bytes=0, poll_seconds=3600, debounce_seconds=0.3),
    )
    engine = Engine(settings, clock=SYSTEM_CLOCK).open()
    delays = []
    try:
        path = base / "watched"
        repo = engine.repositories.add(RepositorySpec(name="w", path=str(path), create=True))
        crossed = threading.Event()
        engine.bus.subscribe(lambda e: crossed.set(), kinds=("capacity.threshold_crossed",))
        engine.capacity.start()
        time.sleep(0.5)
        for i in range(tries):
            du = psutil.disk_usage(str(path))
            step = 8 * 1024 * 1024
            pct_step = step * 100 / (du.used + du.free)
            engine.repository_store.update(
                repo.id,
                SYSTEM_CLOCK.now(),
                warning_percent=du.used * 100 / (du.used + du.free) + pct_step / 4,
                critical_percent=99.98,
                full_percent=99.99,
                capacity_level="ok",
            )
            crossed.clear()
            start = time.monotonic()
            with open(path / f"f{i}", "wb") as f:
                f.write(os.urandom(step))
                f.flush()
                os.fsync(f.fileno())
            if crossed.wait(10):
                delays.append(time.monotonic() - start)
            (path / f"f{i}").unlink()
            time.sleep(0.5)
    finally:
        engine.close()
    if delays:
        print(
            f"write -> threshold event: median {statistics.median(delays) * 1000:.0f} ms, "
            f"max {max(delays) * 1000:.0f} ms over {len(delays)} writes "
            f"(debounce {settings.capacity.debounce_seconds:g} s, poll every hour)"
        )
    else:
        print("write -> threshold event: no event seen (another process freed space?)")


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="sendense-bench-") as tmp:
        cpu_cost(Path(tmp))
        write_to_event(Path(tmp))


if __name__ == "__main__":
    main()
