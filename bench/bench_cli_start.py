"""CLI start time against Python's own (issue 16: ≤ 0.3 s for a call that needs no
engine): ``sendense version``, ``sendense --help`` and ``sendense backup list
--json`` on a tiny catalog, each beside ``python -c pass``, taking turns, ROUNDS
times; prints medians, what each adds to Python's start and the ratio.

``python -X importtime -m sendense_tui.cli version`` shows what a call imports.

Run: ``.venv/bin/python -m bench cli_start``.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.seed import Fleet, open_engine, seed
from bench.timing import run_to_end

ROOT = Path(__file__).resolve().parent.parent
ROUNDS = int(os.environ.get("SENDENSE_BENCH_ROUNDS", "15"))
GOAL_SECONDS = 0.3


def _timer(command: list[str], env: dict[str, str]) -> float:
    began = time.perf_counter()
    run_to_end(command, cwd=ROOT, env=env, limit_seconds=300)
    return time.perf_counter() - began


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="sendense-bench-start-") as tmp:
        state = Path(tmp) / "state"
        engine = open_engine(state)
        try:
            seed(engine, Fleet(repositories=1, vms=2, points=3, jobs=3, events=5), say=False)
        finally:
            engine.close()
        env = {k: v for k, v in os.environ.items() if not k.startswith("SENDENSE_")}
        env["SENDENSE_STATE_DIR"] = str(state)
        cli = [sys.executable, "-m", "sendense_tui.cli"]
        calls = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "sendense version": [*cli, "version"],
            "sendense --help": [*cli, "--help"],
            "sendense backup list --json": [*cli, "backup", "list", "--json"],
        }
        times: dict[str, list[float]] = {name: [] for name in calls}
        for _ in range(ROUNDS):
            for name, command in calls.items():  # taking turns: load hits all alike
                times[name].append(_timer(command, env))
    base = statistics.median(times["python -c pass"])
    print(f"median of {ROUNDS} runs each (goal: ≤ {GOAL_SECONDS} s for help and version)")
    for name, found in times.items():
        median = statistics.median(found)
        print(
            f"{name:<30}{median:>7.3f} s  +{median - base:>6.3f} s over python  "
            f"ratio {median / base:>5.1f}"
        )


if __name__ == "__main__":
    main()
