"""API latency on a fleet catalog, beside the CLI's ``--json`` for the same data.

A real ``sendense daemon`` serves the catalog that ``bench.seed`` builds (default:
500 VMs x 2 disks x 100 points = 100,000 restore points, 50 repositories, 10,000
jobs, 50,000 events; kept in ``/var/tmp/sendense-bench-fleet`` between runs, since
seeding takes minutes). In the same run, over its unix socket:

- ``GET /api/v1/chains?repo=repo07`` (a repository's chains with their points)
  against ``sendense chain show --repo repo07 --json``;
- ``GET /api/v1/restore-points?vm=…`` (one VM's points) against
  ``sendense backup list --vm … --json``;
- ``GET /metrics`` against ``sendense metrics``;
- ``GET /api/v1/chains`` (all 100,000 points in one answer) against ``sendense chain
  show --json``, two rounds.

Each call is timed ROUNDS times taking turns; prints median and p99 of each and
the ratio API / CLI of the medians (below 1: the API answers faster than a CLI
process, which pays Python's start and the catalog's opening every time).

Run: ``.venv/bin/python -m bench api``; ``SENDENSE_BENCH_FLEET=DIR`` picks the
catalog directory, ``SENDENSE_BENCH_VMS`` / ``SENDENSE_BENCH_POINTS`` its size.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import httpx

from bench.seed import Fleet, open_engine, seed
from engine.config import default_settings
from engine.daemon import find_daemon

FLEET_DIR = Path(os.environ.get("SENDENSE_BENCH_FLEET", "/var/tmp/sendense-bench-fleet"))
VMS = int(os.environ.get("SENDENSE_BENCH_VMS", "500"))
POINTS = int(os.environ.get("SENDENSE_BENCH_POINTS", "100"))
ROUNDS = int(os.environ.get("SENDENSE_BENCH_ROUNDS", "10"))
ROOT = Path(__file__).resolve().parent.parent


def ensure_fleet(state_dir: Path) -> None:
    if (state_dir / "catalog.db").exists():
        return
    print(f"seeding {VMS} VMs x 2 disks x {POINTS} points in {state_dir} (once)…")
    engine = open_engine(state_dir)
    try:
        seed(engine, Fleet(vms=VMS, points=POINTS), say=True)
    finally:
        engine.close()


def _env(state_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENDENSE_")}
    env.update(
        SENDENSE_STATE_DIR=str(state_dir),
        SENDENSE_NO_DAEMON="1",
        # the fleet is catalog only (no files): the daemon's scheduled verification
        # would find 100,000 missing points; keep it to 29 February
        SENDENSE_VERIFY_SCHEDULE="0 0 29 2 *",
    )
    return env


def start_daemon(state_dir: Path, db_url: str | None = None) -> subprocess.Popen[bytes]:
    """A real ``sendense daemon`` on ``state_dir`` (and ``db_url``'s catalog), once it
    serves."""
    env = _env(state_dir)
    del env["SENDENSE_NO_DAEMON"]
    if db_url:
        env["SENDENSE_DB_URL"] = db_url
    log = open(state_dir / "bench-daemon.log", "ab")  # noqa: SIM115 (lives with the daemon)
    proc = subprocess.Popen(
        [sys.executable, "-m", "sendense_tui.cli", "daemon"],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    settings = default_settings(state_dir)
    if db_url:
        settings = replace(settings, db_url=db_url)
    deadline = time.monotonic() + 300
    while not (state_dir / "api.sock").exists() or not _ready(settings):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the daemon did not serve; see {state_dir / 'bench-daemon.log'}")
        time.sleep(0.2)
    return proc


def _ready(settings: object) -> bool:
    info = find_daemon(settings)  # type: ignore[arg-type]
    return info is not None and info.ready


def timed(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


def main() -> None:
    state_dir = FLEET_DIR / "state"
    ensure_fleet(state_dir)
    proc = start_daemon(state_dir)
    env = _env(state_dir)
    try:
        client = httpx.Client(
            transport=httpx.HTTPTransport(uds=str(state_dir / "api.sock")),
            base_url="http://sendense",
            timeout=600,
        )

        def api(path: str) -> Callable[[], object]:
            def call() -> object:
                response = client.get(path)
                response.raise_for_status()
                return response.content

            return call

        def cli(*argv: str) -> Callable[[], object]:
            command = [sys.executable, "-m", "sendense_tui.cli", *argv]
            return lambda: subprocess.run(command, env=env, check=True, capture_output=True)

        vm = "vm0007"
        pairs = [
            (
                "chains of repo07",
                api("/api/v1/chains?repo=repo07"),
                cli("chain", "show", "--repo", "repo07", "--json"),
            ),
            (
                f"points of {vm}",
                api(f"/api/v1/restore-points?vm={vm}"),
                cli("backup", "list", "--vm", vm, "--json"),
            ),
            ("metrics", api("/metrics"), cli("metrics")),
            # every chain with every point: the whole catalog in one answer (issue 16
            # pages it); two rounds, it takes long on both sides
            ("all chains", api("/api/v1/chains"), cli("chain", "show", "--json")),
        ]
        print(f"fleet: {state_dir} ({ROUNDS} rounds each, taking turns)")
        for name, ours, reference in pairs:
            if name != "all chains":
                ours(), reference()  # warm both (page cache, the daemon's first queries)
            api_times, cli_times = [], []
            for _ in range(2 if name == "all chains" else ROUNDS):
                api_times.append(timed(ours))
                cli_times.append(timed(reference))
            a, c = statistics.median(api_times), statistics.median(cli_times)
            print(
                f"{name:>18}: API median {a * 1000:8.1f} ms  p99 {p99(api_times) * 1000:8.1f} ms"
                f" | CLI --json median {c * 1000:8.1f} ms  p99 {p99(cli_times) * 1000:8.1f} ms"
                f" | ratio API/CLI {a / c:.2f}"
            )
    finally:
        proc.terminate()
        proc.wait(timeout=120)


if __name__ == "__main__":
    main()
