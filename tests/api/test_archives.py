"""The folder-download stream on its own: written while read, complete when read to the
end, and its writer thread gone as soon as the reader stops (a client that hangs up
leaves nothing running). What it streams is engine.services.restore_archive's archive
(the one `restore extract --tar/--zip` writes)."""

from __future__ import annotations

import io
import os
import random
import tarfile
import threading
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from engine.services.restore_archive import ArchiveResult, Selected, write_archive
from sendense_api.routes._archives import CHUNK, QUEUE_CHUNKS, stream_archive

MiB = 1024 * 1024


def writer(
    root: Path, kind: str, counted: list[int] | None = None
) -> Callable[[Any], ArchiveResult]:
    """What the route gives stream_archive: the engine's writer on one folder."""
    item = Selected(root, root.name, os.lstat(root).st_dev)

    def write(sink: Any) -> ArchiveResult:
        if counted is not None:
            real = sink

            class Counting:
                def write(self, data: bytes) -> int:
                    counted.append(len(data))
                    return int(real.write(data))

            sink = Counting()
        return write_archive([item], sink, kind=kind)

    return write


def downloads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "sendense-download"]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    (root / "sub").mkdir(parents=True)
    (root / "big.bin").write_bytes(random.Random(5).randbytes(3 * MiB + 17))
    (root / "sub" / "small.txt").write_bytes(b"hello\n")
    os.symlink("../big.bin", root / "sub" / "link")
    os.symlink("/etc/passwd", root / "sub" / "out")
    return root


@pytest.mark.parametrize("kind", ["tar", "zip"])
def test_the_whole_stream_is_a_valid_archive(folder: Path, kind: str) -> None:
    data = b"".join(stream_archive(kind, writer(folder, kind)))
    big = (folder / "big.bin").read_bytes()
    if kind == "tar":
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            assert sorted(tar.getnames()) == [
                "data",
                "data/big.bin",
                "data/sub",
                "data/sub/link",
                "data/sub/out",  # a link is data: kept as a link, its target never read
                "data/sub/small.txt",
            ]
            assert tar.getmember("data/sub/out").linkname == "/etc/passwd"
            assert tar.extractfile("data/big.bin").read() == big  # type: ignore[union-attr]
    else:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            assert archive.testzip() is None
            assert archive.read("data/big.bin") == big
            assert archive.read("data/sub/out") == b"/etc/passwd"
    assert downloads() == []


@pytest.mark.parametrize("kind", ["tar", "zip"])
def test_a_reader_that_stops_stops_the_writer(tmp_path: Path, kind: str) -> None:
    root = tmp_path / "many"
    root.mkdir()
    for n in range(QUEUE_CHUNKS * 3):  # more than the queue holds: the writer must wait
        (root / f"f{n}").write_bytes(random.Random(n).randbytes(CHUNK))
    written: list[int] = []
    stream = stream_archive(kind, writer(root, kind, written))
    assert len(next(stream)) >= 512
    stream.close()  # what the server does when the client hangs up
    assert downloads() == []
    # the writer stopped at its next write, instead of reading the rest for nobody
    assert sum(written) < QUEUE_CHUNKS * 2 * CHUNK
