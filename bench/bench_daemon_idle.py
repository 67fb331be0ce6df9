"""The daemon's idle CPU on a fleet catalog (issue 16: near zero): a real ``sendense
daemon`` on the bench fleet (bench.bench_api's, 100,000 restore points; scheduled
verification kept away, as there), left alone for IDLE seconds after it is ready
and has settled; prints the share of one core it used (user + system time of the
process and its children, by psutil).

Run: ``.venv/bin/python -m bench daemon_idle``; ``SENDENSE_BENCH_IDLE`` seconds
(default 60), ``SENDENSE_BENCH_FLEET`` as bench_api.
"""

from __future__ import annotations

import os
import signal
import time

import psutil

from bench.bench_api import FLEET_DIR, ensure_fleet, start_daemon

IDLE = float(os.environ.get("SENDENSE_BENCH_IDLE", "60"))
SETTLE = 15.0


def cpu_seconds(proc: psutil.Process) -> float:
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            times = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def main() -> None:
    state_dir = FLEET_DIR / "state"
    ensure_fleet(state_dir)
    daemon = start_daemon(state_dir)
    try:
        proc = psutil.Process(daemon.pid)
        time.sleep(SETTLE)  # its first scheduler tick, capacity sample, alert pass
        began, used = time.monotonic(), cpu_seconds(proc)
        time.sleep(IDLE)
        share = (cpu_seconds(proc) - used) / (time.monotonic() - began)
        print(f"idle daemon on {state_dir}: {100 * share:.2f} % of a core over {IDLE:.0f} s")
    finally:
        daemon.send_signal(signal.SIGTERM)
        stopped = time.monotonic()
        daemon.wait(300)
        print(f"stopped {time.monotonic() - stopped:.1f} s after SIGTERM")


if __name__ == "__main__":
    main()
