"""sha256 of a file, read in large chunks: the one file hasher of the engine.

hashlib releases the GIL while hashing large buffers and uses the CPU's SHA
instructions (about 1.2-1.8 GiB/s a core here), so this is faster than running
``sha256sum`` and lets other threads (the console, a qemu-img progress reader)
keep going. A reader thread keeps the disk busy while the calling thread hashes;
a few reused buffers keep memory flat.

(Copying hashes in the same pass as it writes: see engine.copier.)
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

from engine.errors import JobCancelled
from engine.fsutil import ReadAhead
from engine.platform import read_sequentially

# 1 MiB chunks stay in the CPU caches between the read and the hash (8 MiB ones
# measured ~15 % slower, see bench/bench_verify.py); eight in flight keep the disk busy.
CHUNK_SIZE = 1024 * 1024
BUFFERS_IN_FLIGHT = 8


def hash_file(
    path: str | os.PathLike[str],
    *,
    read_size: int = CHUNK_SIZE,
    on_bytes: Callable[[int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    cancelled: Callable[[], JobCancelled] | None = None,
) -> tuple[str, int]:
    """Hex sha256 of a file and the bytes read.

    ``on_bytes(n)`` is called after every chunk with that chunk's size;
    ``should_stop()`` is polled between chunks and, when True, raises ``cancelled()``
    (default: a JobCancelled naming the file).
    """
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY)
    read_sequentially(fd)
    ahead = ReadAhead(fd, read_size, buffers=BUFFERS_IN_FLIGHT, name="sendense-hash-read")
    total = 0
    try:
        for buf, n in ahead:
            digest.update(memoryview(buf)[:n])
            ahead.free.put(buf)
            total += n
            if on_bytes is not None:
                on_bytes(n)
            if should_stop is not None and should_stop():
                if cancelled is not None:
                    raise cancelled()
                raise JobCancelled(f"checksum of {path} was cancelled")
    finally:
        ahead.close()
        os.close(fd)
    return digest.hexdigest(), total


def sha256_file(
    path: str | os.PathLike[str],
    *,
    chunk_size: int = CHUNK_SIZE,
    on_progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> str:
    """Hex sha256 of the file's bytes.

    ``on_progress(done, total)`` is called after every chunk; ``should_stop()`` is
    polled between chunks and raises JobCancelled when it returns True.
    """
    on_bytes: Callable[[int], None] | None = None
    if on_progress is not None:
        total = Path(path).stat().st_size
        done = 0

        def on_bytes(n: int) -> None:
            nonlocal done
            done += n
            on_progress(done, total)

    digest, _read = hash_file(
        path, read_size=chunk_size, on_bytes=on_bytes, should_stop=should_stop
    )
    return digest
