"""Listings at 1k vs 100k restore points, CLI and API, SQLite and MariaDB (issue 16).

For each catalog (a small fleet: 5 VMs x 2 disks x 100 points; the issue's fleet:
500 x 2 x 100 = 100,000 points, 10,000 jobs, 50,000 events) and each backend, times
the first page of:

- ``sendense backup list --json``, ``chain show --json``, ``jobs list --json``,
  ``events --json`` as a person runs them (a process each: Python's start, the
  catalog opened read-only, one page);
- the same listing's API route in process (``GET /api/v1/restore-points``,
  ``/chains``, ``/jobs``, ``/events`` through the app, no network), and its
  second page (``after=`` the first page's ``X-Next-Cursor``);

and prints the medians and the ratio large / small of each (goal: about 1, a page
costs what it shows) beside the goal of ≤ 0.5 s per listing at 100k.

SQLite fleets are kept in ``SENDENSE_BENCH_LISTINGS`` (default
``/var/tmp/sendense-bench-listings``) between runs: seeding 100,000 points takes
minutes. MariaDB runs on a throwaway server started here as the tests start
theirs (tests/plugins/mariadb.py) and is seeded every run (``SENDENSE_BENCH_MARIADB=0``
skips it; ``SENDENSE_BENCH_MARIADB_POINTS`` shrinks its large fleet).

Run: ``.venv/bin/python -m bench listings``.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.seed import Fleet, open_engine, seed

ROOT = Path(__file__).resolve().parent.parent
BASE = Path(os.environ.get("SENDENSE_BENCH_LISTINGS", "/var/tmp/sendense-bench-listings"))
ROUNDS = int(os.environ.get("SENDENSE_BENCH_ROUNDS", "5"))
SMALL = Fleet(repositories=5, vms=5, points=100, jobs=100, events=500)
LARGE = Fleet()
GOAL_SECONDS = 0.5

#: (name, CLI argv, API path)
LISTINGS = [
    ("backup list", ["backup", "list"], "/api/v1/restore-points"),
    ("chain show", ["chain", "show"], "/api/v1/chains"),
    ("jobs list", ["jobs", "list"], "/api/v1/jobs"),
    ("events", ["events"], "/api/v1/events"),
]


def ensure_fleet(state_dir: Path, fleet: Fleet, db_url: str | None = None) -> None:
    engine = open_engine(state_dir, db_url)
    try:
        if engine.repository_store.list():
            return
        print(f"  seeding {fleet.restore_points:,} points in {db_url or state_dir} …", flush=True)
        seed(engine, fleet, say=False)
    finally:
        engine.close()


def _median(call: Callable[[], Any], rounds: int = ROUNDS) -> float:
    times = []
    for _ in range(rounds):
        began = time.perf_counter()
        call()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def _cli(state_dir: Path, db_url: str | None, argv: list[str]) -> Callable[[], None]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENDENSE_")}
    command = [sys.executable, "-m", "sendense_tui.cli", "--state-dir", str(state_dir)]
    if db_url:
        command += ["--db-url", db_url]
    command += [*argv, "--json", "--limit", "50"]

    def run() -> None:
        subprocess.run(
            command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            check=True, timeout=600,
        )  # fmt: skip

    return run


def _api_timings(state_dir: Path, db_url: str | None) -> dict[str, tuple[float, float]]:
    """Median first-page and second-page time of each route, in process."""
    from fastapi.testclient import TestClient

    from engine.config import default_settings
    from engine.runtime import Engine
    from sendense_api.app import create_app
    from sendense_api.roles import Caller, Role

    settings = default_settings(state_dir)
    if db_url:
        settings = replace(settings, db_url=db_url)
    engine = Engine(settings).open(read_only=True)
    caller = Caller("bench", Role.READ)
    client = TestClient(create_app(engine, authenticate=lambda _request: caller))
    out: dict[str, tuple[float, float]] = {}
    try:
        for name, _argv, path in LISTINGS:
            first = client.get(path, params={"limit": 50})
            first.raise_for_status()
            after = first.headers.get("X-Next-Cursor")

            def again(path: str = path, after: str | None = after) -> None:
                client.get(path, params={"limit": 50, "after": after}).raise_for_status()

            out[name] = (
                _median(lambda path=path: client.get(path, params={"limit": 50})),  # type: ignore[misc]
                _median(again) if after else 0.0,
            )
    finally:
        client.close()
        engine.close()
    return out


def measure(state_dir: Path, db_url: str | None) -> dict[str, dict[str, float]]:
    api = _api_timings(state_dir, db_url)
    found: dict[str, dict[str, float]] = {}
    for name, argv, _path in LISTINGS:
        found[name] = {
            "cli": _median(_cli(state_dir, db_url, argv)),
            "api": api[name][0],
            "api_next": api[name][1],
        }
    return found


def report(
    backend: str, small: dict[str, dict[str, float]], large: dict[str, dict[str, float]]
) -> None:
    print(f"-- {backend}: first page of 50, median of {ROUNDS}")
    heading = f"{'listing':<13}{'what':<10}{'small':>9}{'large':>9}{'ratio':>8}"
    print(f"{heading}  goal ≤ {GOAL_SECONDS} s")
    for name, _argv, _path in LISTINGS:
        for what in ("cli", "api", "api_next"):
            a, b = small[name][what], large[name][what]
            ratio = b / a if a else float("nan")
            mark = "ok" if b <= GOAL_SECONDS else "SLOW"
            print(f"{name:<13}{what:<10}{a:>8.3f}s{b:>8.3f}s{ratio:>8.2f}  {mark}")


def bench_sqlite() -> None:
    small_dir, large_dir = BASE / "sqlite-1k", BASE / "sqlite-100k"
    ensure_fleet(small_dir, SMALL)
    ensure_fleet(large_dir, LARGE)
    report("SQLite", measure(small_dir, None), measure(large_dir, None))


def bench_mariadb() -> None:
    sys.path.insert(0, str(ROOT))
    from tests.plugins.mariadb import start_mariadb

    points = int(os.environ.get("SENDENSE_BENCH_MARIADB_POINTS", str(LARGE.points)))
    large = replace(LARGE, points=points)
    with tempfile.TemporaryDirectory(prefix="sendense-bench-mdb-", dir="/var/tmp") as tmp:
        server = start_mariadb(Path(tmp) / "m")
        try:
            server.execute(
                "CREATE DATABASE small CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci",
                "CREATE DATABASE large CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci",
            )
            small_url, large_url = server.url("small"), server.url("large")
            ensure_fleet(Path(tmp) / "small", SMALL, small_url)
            ensure_fleet(Path(tmp) / "large", large, large_url)
            report(
                f"MariaDB ({large.restore_points:,} points large)",
                measure(Path(tmp) / "small", small_url),
                measure(Path(tmp) / "large", large_url),
            )
        finally:
            server.stop()


def main() -> None:
    bench_sqlite()
    if os.environ.get("SENDENSE_BENCH_MARIADB", "1") != "0":
        bench_mariadb()


if __name__ == "__main__":
    main()
