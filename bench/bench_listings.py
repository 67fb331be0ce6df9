"""Listings on the issue 16 fleet, CLI and API, SQLite and MariaDB, beside references.

Catalogs: the fleet of issue 16 (500 VMs x 2 disks x 100 points = 100,000 restore
points, 10,000 jobs, 50,000 events; ``SENDENSE_BENCH_FLEET``, default
``/var/tmp/sendense-fleet/100k``, built by ``python -m bench.seed``) and a small one
(5 VMs: 1,000 points) for the ratio large / small. They are copied under
``SENDENSE_BENCH_LISTINGS`` (default ``/var/tmp/sendense-bench-listings``) and used
there: the API's engine may repair modes in its state directory, and a shared fleet
is only read. MariaDB: a throwaway server started here as the tests start theirs
(tests/plugins/mariadb.py) with both catalogs copied in (``bench.seed.copy_catalog``);
``SENDENSE_BENCH_MARIADB=0`` skips it.

Per listing (``backup list``, ``chain show``, ``jobs list``, ``events``) and backend,
the median of ROUNDS, every measurement taking its turn in each round:

- ``sendense LISTING`` into a pipe (its default page: 50 rows, 20 chains; a table) and
  ``sendense LISTING --json`` as a person runs them: a process each (Python's start,
  the imports, the catalog opened read-only, one page and what follows it counted);
- the reference: the same first page's SQL through the database's own client
  (``sqlite3 -json`` on the file, ``mariadb --batch`` on the server), a process each,
  and ``python -c pass`` (the interpreter's own start);
- the same two with a ``sendense daemon`` running on the catalog (``table+daemon``,
  ``json+daemon``): the CLI takes the page the daemon answers on its unix socket
  (sendense_tui.daemon_client), as on an appliance, where the daemon always runs;
  the forms without it reach no daemon (``SENDENSE_API_SOCKET`` elsewhere);
- the API's route in process (first page, and the page after it).

It prints each time, ours / reference, large / small and ok or SLOW against the goal
of 0.5 s at 100k (issue 16 item 2), and the CPU time (user + system) of each process:
on a shared, loaded machine the wall-clock time of a process is mostly its wait for a
core, its CPU time what it costs. ``SENDENSE_BENCH_BEFORE=DIR`` (a source tree of an
earlier version, e.g. ``git archive main | tar -x -C DIR``) also runs that version's
CLI in the same rounds (its rows are marked ``@before``; it may write to the copy).

Run: ``.venv/bin/python -m bench listings``.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench.seed import Fleet, copy_catalog, open_engine, seed
from bench.timing import run_to_end

ROOT = Path(__file__).resolve().parent.parent
BASE = Path(os.environ.get("SENDENSE_BENCH_LISTINGS", "/var/tmp/sendense-bench-listings"))
FLEET = Path(os.environ.get("SENDENSE_BENCH_FLEET", "/var/tmp/sendense-fleet/100k"))
BEFORE = os.environ.get("SENDENSE_BENCH_BEFORE")
ROUNDS = int(os.environ.get("SENDENSE_BENCH_ROUNDS", "5"))
SMALL = Fleet(repositories=5, vms=5, points=100, jobs=100, events=500)
LARGE = Fleet()
GOAL_SECONDS = 0.5
PAGE = 50

_LIVE = "b.state IN ('complete', 'bad')"
#: (name, CLI argv, API path, the first page's SQL: what the listing reads at least)
LISTINGS = [
    (
        "backup list",
        ["backup", "list"],
        "/api/v1/restore-points",
        "SELECT b.*, c.vm_name, c.disk_name FROM (SELECT * FROM chains ORDER BY vm_name, "
        f"disk_name, id LIMIT {PAGE}) c JOIN backups b ON b.chain_id = c.id WHERE {_LIVE} "
        f"ORDER BY c.vm_name, c.disk_name, c.id, b.position LIMIT {PAGE}",
    ),
    (
        "chain show",
        ["chain", "show"],
        "/api/v1/chains",
        # the CLI's page of chains into a pipe holds 20 (each with its 100 points)
        "SELECT c.*, b.* FROM (SELECT * FROM chains ORDER BY vm_name, disk_name, id LIMIT 20)"
        f" c JOIN backups b ON b.chain_id = c.id WHERE {_LIVE} "
        "ORDER BY c.vm_name, c.disk_name, c.id, b.position",
    ),
    (
        "jobs list",
        ["jobs", "list"],
        "/api/v1/jobs",
        f"SELECT * FROM jobs ORDER BY id DESC LIMIT {PAGE}",
    ),
    (
        "events",
        ["events"],
        "/api/v1/events",
        "SELECT * FROM audit_log WHERE level IN ('info', 'warning', 'error', 'critical') "
        f"ORDER BY id DESC LIMIT {PAGE}",
    ),
]  # fmt: skip


@dataclass
class Catalog:
    """Where one benchmark catalog is: a state directory, and a URL for MariaDB."""

    state_dir: Path
    db_url: str | None = None
    #: the reference client's argv, the SQL goes last
    client: tuple[str, ...] = ()


def _env() -> dict[str, str]:
    # a real install has its bytecode compiled: a run under PYTHONDONTWRITEBYTECODE
    # would otherwise compile every changed module at each start
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("SENDENSE_") and k != "PYTHONDONTWRITEBYTECODE"
    }


def _process(
    argv: list[str], cwd: Path = ROOT, env_extra: dict[str, str] | None = None
) -> Callable[[], None]:
    env = {**_env(), **(env_extra or {})}

    def run() -> None:
        run_to_end(argv, cwd=cwd, env=env, limit_seconds=600)

    return run


def _cpu_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _cli(catalog: Catalog, argv: list[str]) -> list[str]:
    command = [sys.executable, "-m", "sendense_tui.cli", "--state-dir", str(catalog.state_dir)]
    if catalog.db_url:
        command += ["--db-url", catalog.db_url]
    return command + argv


def _timed(call: Callable[[], Any]) -> float:
    began = time.perf_counter()
    call()
    return time.perf_counter() - began


def _api_timings(catalog: Catalog) -> dict[str, tuple[float, float]]:
    """Median first-page and second-page time of each route, in process."""
    from fastapi.testclient import TestClient

    from engine.config import default_settings
    from engine.runtime import Engine
    from sendense_api.app import create_app
    from sendense_api.roles import Caller, Role

    settings = default_settings(catalog.state_dir)
    if catalog.db_url:
        settings = replace(settings, db_url=catalog.db_url)
    engine = Engine(settings).open(read_only=True)
    caller = Caller("bench", Role.READ)
    client = TestClient(create_app(engine, authenticate=lambda _request: caller))
    out: dict[str, tuple[float, float]] = {}
    try:
        for name, _argv, path, _sql in LISTINGS:
            first = client.get(path, params={"limit": PAGE})
            first.raise_for_status()
            after = first.headers.get("X-Next-Cursor")

            def page(path: str = path, after: str | None = None) -> None:
                params: dict[str, Any] = {"limit": PAGE}
                if after:
                    params["after"] = after
                client.get(path, params=params).raise_for_status()

            def next_page(path: str = path, after: str | None = after) -> None:
                page(path, after)

            out[name] = (
                statistics.median(_timed(page) for _ in range(ROUNDS)),
                statistics.median(_timed(next_page) for _ in range(ROUNDS)) if after else 0.0,
            )
    finally:
        client.close()
        engine.close()
    return out


def measure(catalog: Catalog) -> dict[str, dict[str, float]]:
    """Median seconds of each listing's forms, every form taking its turn each round."""
    from bench.bench_api import start_daemon

    daemon = start_daemon(catalog.state_dir, catalog.db_url)
    try:
        return _measure(catalog)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(300)


def _measure(catalog: Catalog) -> dict[str, dict[str, float]]:
    calls: dict[tuple[str, str], Callable[[], None]] = {}
    direct = {"SENDENSE_API_SOCKET": str(catalog.state_dir / "no-daemon.sock")}
    for name, argv, _path, sql in LISTINGS:
        calls[(name, "table")] = _process(_cli(catalog, argv), env_extra=direct)
        calls[(name, "json")] = _process(_cli(catalog, [*argv, "--json"]), env_extra=direct)
        calls[(name, "table+daemon")] = _process(_cli(catalog, argv))
        calls[(name, "json+daemon")] = _process(_cli(catalog, [*argv, "--json"]))
        if BEFORE:
            calls[(name, "table@before")] = _process(_cli(catalog, argv), Path(BEFORE), direct)
            calls[(name, "json@before")] = _process(_cli(catalog, [*argv, "--json"]), Path(BEFORE))
        calls[(name, "reference")] = _process([*catalog.client, sql])
    calls[("", "python")] = _process([sys.executable, "-c", "pass"])
    times: dict[tuple[str, str], list[float]] = {key: [] for key in calls}
    cpu: dict[tuple[str, str], list[float]] = {key: [] for key in calls}
    for call in calls.values():
        call()  # warm: caches, the first connection
    for _ in range(ROUNDS):
        for key, call in calls.items():
            before = _cpu_of_children()
            times[key].append(_timed(call))
            cpu[key].append(_cpu_of_children() - before)
    api = _api_timings(catalog)
    found: dict[str, dict[str, float]] = {}
    for (name, form), values in times.items():
        found.setdefault(name, {})[form] = statistics.median(values)
        found[name][f"{form} cpu"] = statistics.median(cpu[(name, form)])
    for name, _argv, _path, _sql in LISTINGS:
        found[name]["python"] = found[""]["python"]
        found[name]["python cpu"] = found[""]["python cpu"]
        found[name]["api"], found[name]["api_next"] = api[name]
    return found


def report(
    backend: str, small: dict[str, dict[str, float]], large: dict[str, dict[str, float]]
) -> None:
    first = large[LISTINGS[0][0]]
    print(
        f"-- {backend}: first page of {PAGE}, median of {ROUNDS}; python -c pass "
        f"{first['python']:.3f} s wall, {first['python cpu']:.3f} s cpu"
    )
    print(
        f"{'listing':<12}{'form':<13}{'small':>8}{'large':>8}{'l/s':>6}{'cpu':>8}"
        f"{'reference':>10}{'ours/ref':>9}  goal ≤ {GOAL_SECONDS} s at large (wall, cpu)"
    )
    forms = ["table", "json", "table+daemon", "json+daemon"]
    forms += ["table@before", "json@before"] if BEFORE else []
    for name, _argv, _path, _sql in LISTINGS:
        ref = large[name]["reference"]
        for what in [*forms, "reference", "api", "api_next"]:
            a, b = small[name][what], large[name][what]
            ratio = f"{b / a:>6.2f}" if a else f"{'-':>6}"
            process = what not in ("api", "api_next")
            cpu = large[name][f"{what} cpu"] if process else b
            versus = f"{b / ref:>9.1f}" if process and what != "reference" and ref else f"{'':>9}"
            shown_ref = f"{ref:>9.3f}s" if process and what != "reference" else f"{'':>10}"
            mark = "ok" if b <= GOAL_SECONDS else "SLOW"
            mark += ", ok" if cpu <= GOAL_SECONDS else ", SLOW"
            print(
                f"{name:<12}{what:<13}{a:>7.3f}s{b:>7.3f}s{ratio}{cpu:>7.3f}s"
                f"{shown_ref}{versus}  {mark}"
            )


def _copy_fleet(source: Path, target: Path) -> None:
    """A private copy of a seeded state directory (catalog and its marker)."""
    if (target / "catalog.db").exists():
        return
    target.mkdir(parents=True, exist_ok=True)
    for name in ("catalog.db", "catalog.db.created"):
        if (source / name).exists():
            shutil.copy2(source / name, target / name)
    (target / "repository").mkdir(exist_ok=True)


def ensure_fleets() -> tuple[Path, Path]:
    small, large = BASE / "sqlite-1k", BASE / "sqlite-100k"
    if not (small / "catalog.db").exists():
        engine = open_engine(small)
        try:
            seed(engine, SMALL, say=False)
        finally:
            engine.close()
    if not (large / "catalog.db").exists():
        if (FLEET / "catalog.db").exists():
            print(f"  copying the fleet {FLEET} to {large} …", flush=True)
            _copy_fleet(FLEET, large)
        else:
            print(f"  seeding {LARGE.restore_points:,} points in {large} …", flush=True)
            engine = open_engine(large)
            try:
                seed(engine, LARGE, say=False)
            finally:
                engine.close()
    return small, large


def bench_sqlite(small: Path, large: Path) -> None:
    def catalog(state: Path) -> Catalog:
        return Catalog(state, None, ("sqlite3", "-json", str(state / "catalog.db")))

    report("SQLite", measure(catalog(small)), measure(catalog(large)))


def bench_mariadb(small: Path, large: Path) -> None:
    sys.path.insert(0, str(ROOT))
    from engine.config import sqlite_url
    from tests.plugins.mariadb import start_mariadb

    with tempfile.TemporaryDirectory(prefix="sendense-bench-mdb-", dir="/var/tmp") as tmp:
        server = start_mariadb(Path(tmp) / "m")
        try:
            catalogs = []
            for name, state in (("small", small), ("large", large)):
                server.execute(
                    f"CREATE DATABASE {name} CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
                )
                began = time.monotonic()
                rows = copy_catalog(sqlite_url(state / "catalog.db"), server.url(name))
                print(f"  {rows:,} rows copied into MariaDB in {time.monotonic() - began:.0f} s")
                client = ("mariadb", f"--socket={server.socket}", "-uroot", "--batch", name, "-e")
                catalogs.append(Catalog(state, server.url(name), client))
            report("MariaDB", measure(catalogs[0]), measure(catalogs[1]))
        finally:
            server.stop()


def main() -> None:
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", "engine", "sendense_tui", "sendense_api"],
        cwd=ROOT, env=_env(), check=True,
    )  # fmt: skip
    small, large = ensure_fleets()
    bench_sqlite(small, large)
    if os.environ.get("SENDENSE_BENCH_MARIADB", "1") != "0":
        bench_mariadb(small, large)


if __name__ == "__main__":
    main()
