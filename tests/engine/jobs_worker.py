"""One engine in its own OS process, for the two-process job test.

    python tests/engine/jobs_worker.py URL OWNER OUT_FILE GO_FILE

Runs a JobRunner (owner OWNER, two jobs at a time) on the catalog at URL.
Each "touch" job sleeps ~50 ms and appends "<job id> <owner>" to OUT_FILE
(opened with O_APPEND, so lines from both processes never interleave). The
worker says it is ready by creating GO_FILE + ".ready-OWNER", starts claiming
once GO_FILE exists, and exits when no touch job is queued or running.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from engine.catalog import Catalog
from engine.catalog.audit import AuditStore
from engine.catalog.jobs import JobStore
from engine.clock import SYSTEM_CLOCK
from engine.config import JobSettings
from engine.events import EventBus
from engine.jobs import JobContext, JobRunner

DEADLINE_SECONDS = 60.0


def main(url: str, owner: str, out_file: str, go_file: str) -> int:
    catalog = Catalog(url)
    catalog.check_connection()
    store = JobStore(catalog)
    runner = JobRunner(
        store,
        EventBus(AuditStore(catalog), SYSTEM_CLOCK),
        settings=JobSettings(max_concurrent=2, lease_seconds=30.0, heartbeat_seconds=5.0),
        owner=owner,
        poll_interval=0.02,
    )

    def touch(ctx: JobContext) -> dict[str, str]:
        time.sleep(0.05)
        fd = os.open(out_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{ctx.job_id} {owner}\n".encode())
        finally:
            os.close(fd)
        return {"owner": owner}

    runner.register("touch", touch)
    Path(f"{go_file}.ready-{owner}").touch()
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not Path(go_file).exists():
        if time.monotonic() > deadline:
            print(f"{owner}: never told to go", file=sys.stderr)
            return 2
        time.sleep(0.01)
    runner.start()
    try:
        while time.monotonic() < deadline:
            if not store.list(states=("queued", "running"), kind="touch", limit=1):
                return 0
            time.sleep(0.05)
        print(f"{owner}: jobs still active after {DEADLINE_SECONDS:g}s", file=sys.stderr)
        return 3
    finally:
        runner.stop()
        catalog.dispose()


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:5]))
