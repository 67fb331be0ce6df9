"""A folder of a restore mount as a tar or zip stream, written while it is sent.

The archive is the one ``sendense restore extract --tar/--zip`` writes
(engine.services.restore_archive: pax with owners, modes, links as links, xattrs,
ACLs, hard links, sparse files and specials; zip for Windows), written into a sink
here: a producer thread writes it, the response iterates the chunks through a small
bounded queue, so neither the archive nor a large file is ever held in memory, and a
client that goes away stops the producer at its next write. What could not be
archived is logged (the response's headers are sent by then).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Iterator

from engine.services.restore_archive import ArchiveResult

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024
#: chunks waiting to be sent: bounds the memory one download holds
QUEUE_CHUNKS = 8
_DONE = object()


class _Gone(Exception):
    """The client stopped reading: the producer ends."""


class _Sink:
    """A write-only, unseekable stream feeding the queue in chunks."""

    def __init__(self, out: queue.Queue[object], stop: threading.Event) -> None:
        self.out = out
        self.stop = stop
        self.buffer = bytearray()
        self.position = 0

    def write(self, data: bytes) -> int:
        self.buffer += data
        self.position += len(data)
        if len(self.buffer) >= CHUNK:
            self.flush()
        return len(data)

    def flush(self) -> None:
        if self.buffer:
            self._put(bytes(self.buffer))
            self.buffer.clear()

    def _put(self, item: object) -> None:
        while True:
            if self.stop.is_set():
                raise _Gone
            try:
                self.out.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def tell(self) -> int:
        return self.position

    def seekable(self) -> bool:
        return False


MEDIA_TYPES = {"tar": "application/x-tar", "zip": "application/zip"}


#: writes the whole archive into the sink it is given (engine.services.restore_archive)
Writer = Callable[[_Sink], ArchiveResult]


def stream_archive(kind: str, write: Writer) -> Iterator[bytes]:
    """The archive's bytes, produced by a thread while they are sent."""
    out: queue.Queue[object] = queue.Queue(maxsize=QUEUE_CHUNKS)
    stop = threading.Event()
    sink = _Sink(out, stop)

    def produce() -> None:
        try:
            result = write(sink)
            sink.flush()
            for path, reason in result.skipped:
                log.warning("download: %s left out: %s", path, reason)
        except _Gone:
            return
        except Exception:
            # headers are sent: the archive ends short, which the client's reader sees
            log.exception("download as %s failed", kind)
        finally:
            with contextlib.suppress(_Gone):
                sink._put(_DONE)

    worker = threading.Thread(target=produce, name="sendense-download", daemon=True)
    worker.start()
    try:
        while (item := out.get()) is not _DONE:
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        while worker.is_alive():
            with contextlib.suppress(queue.Empty):
                out.get(timeout=0.1)
        worker.join()
