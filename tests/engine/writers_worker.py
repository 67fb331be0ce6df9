"""One engine process writing one disk, for the cross-process writer-lease test.

    python tests/engine/writers_worker.py URL REPOSITORY_ID OWNER OUT_FILE GO_FILE ROUNDS

Takes the writer lease of web01/sda ROUNDS times (waiting while another process
holds it) and, inside each hold, appends "enter OWNER" and, a moment later,
"leave OWNER" to OUT_FILE (O_APPEND: lines of several processes never mix).
Two writers ever inside at once would show as two "enter" lines in a row.
Says it is ready with GO_FILE + ".ready-OWNER" and starts when GO_FILE exists.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from engine.catalog import Catalog
from engine.catalog.audit import AuditStore
from engine.catalog.chains import ChainStore
from engine.catalog.repositories import RepositoryStore
from engine.catalog.writers import WriterStore
from engine.clock import SYSTEM_CLOCK
from engine.config import JobSettings
from engine.events import EventBus
from engine.writers import DiskWriters

DEADLINE_SECONDS = 90.0


def append(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)


def main(url: str, repository_id: str, owner: str, out_file: str, go_file: str, rounds: str) -> int:
    catalog = Catalog(url)
    catalog.check_connection()
    writers = DiskWriters(
        WriterStore(catalog),
        RepositoryStore(catalog),
        ChainStore(catalog),
        EventBus(AuditStore(catalog), SYSTEM_CLOCK),
        settings=JobSettings(lease_seconds=30.0, heartbeat_seconds=5.0),
        owner=owner,
        poll_seconds=0.01,
    )
    Path(f"{go_file}.ready-{owner}").touch()
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not Path(go_file).exists():
        if time.monotonic() > deadline:
            print(f"{owner}: never told to go", file=sys.stderr)
            return 2
        time.sleep(0.01)
    try:
        for _ in range(int(rounds)):
            with writers.hold(int(repository_id), "web01", "sda", operation="backup", actor=owner):
                append(out_file, f"enter {owner}")
                time.sleep(0.02)
                append(out_file, f"leave {owner}")
    finally:
        writers.close()
        catalog.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:7]))
