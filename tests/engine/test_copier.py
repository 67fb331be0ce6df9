"""engine.copier.copy_file on its own: the bytes and the sha256 it publishes are the
source's on every path (read/hash/write pipeline, clone on xfs), and a source that
changes under it, a destination that fills up or a cancel never publish a file."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from engine.copier import (
    CHUNK_SIZE,
    CopyNoSpace,
    SourceChanged,
    Withdrawn,
    copy_file,
)
from engine.errors import JobCancelled
from engine.fsutil import partial_path
from tests.engine.copy_worker import MiB, sha256


def make_source(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(size))
    return path


def nothing_published(dst: Path) -> bool:
    return not dst.exists() and not partial_path(dst).exists()


@pytest.mark.parametrize("kernel_copy", [True, False], ids=["copy_file_range", "write"])
@pytest.mark.parametrize("chunk", [64 * 1024, CHUNK_SIZE])
@pytest.mark.parametrize(
    "size", [0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 5 * MiB + 7 * 1024 + 3]
)
def test_the_pipeline_publishes_the_source_bytes_and_their_hash(
    tmp_path: Path, size: int, chunk: int, kernel_copy: bool
) -> None:
    src = make_source(tmp_path / "src" / "f.qcow2", size)
    dst = tmp_path / "dst" / "f.qcow2"
    seen: list[int] = []
    result = copy_file(
        src,
        dst,
        expected_checksum=sha256(src),
        chunk_size=chunk,
        # tmp_path's ext4 cannot clone: the bytes are copied (by the kernel or written)
        try_clone=True,
        progress=lambda done, total: seen.append(done),
        kernel_copy=kernel_copy,
    )
    assert dst.read_bytes() == src.read_bytes()
    assert result.checksum == sha256(src) == sha256(dst)
    assert (result.size, result.cloned, result.resumed_from) == (size, False, 0)
    assert not partial_path(dst).exists()
    if size:  # progress climbs chunk by chunk to the whole file
        assert seen == sorted(seen) and seen[-1] == size and len(seen) == -(-size // chunk)


@pytest.mark.root
def test_a_clone_publishes_the_source_bytes_and_their_hash(loop_fs, tmp_path: Path) -> None:
    fs = loop_fs("xfs", 320)
    src = make_source(fs.mountpoint / "a" / "f.qcow2", 3 * MiB + 5)
    dst = fs.mountpoint / "b" / "f.qcow2"
    result = copy_file(src, dst, expected_checksum=sha256(src))
    assert result.cloned and result.checksum == sha256(src) == sha256(dst)
    assert dst.read_bytes() == src.read_bytes()


def grow(src: Path) -> None:
    with open(src, "ab") as f:
        f.write(b"appended while copied")


def shrink(src: Path) -> None:
    os.truncate(src, MiB)


def rewrite(src: Path) -> None:
    # same size, other bytes; the time moves on as any write moves it (set here so a
    # coarse clock cannot hide it)
    before = src.stat().st_mtime_ns
    fd = os.open(src, os.O_WRONLY)
    try:
        os.pwrite(fd, b"\xff" * 4096, 0)
    finally:
        os.close(fd)
    os.utime(src, ns=(before + 10**9, before + 10**9))


@pytest.mark.parametrize("change", [grow, shrink, rewrite], ids=["grows", "shrinks", "rewritten"])
@pytest.mark.parametrize("known", [True, False], ids=["recorded-checksum", "no-checksum"])
def test_a_source_that_changes_during_the_copy_is_refused_with_a_sentence(
    tmp_path: Path, change: Callable[[Path], None], known: bool
) -> None:
    src = make_source(tmp_path / "src" / "f.qcow2", 4 * MiB)
    want = sha256(src)
    dst = tmp_path / "dst" / "f.qcow2"
    calls = []

    def progress(done: int, total: int) -> None:
        calls.append(done)
        if len(calls) == 2:
            change(src)

    with pytest.raises(SourceChanged) as caught:
        copy_file(
            src,
            dst,
            expected_checksum=want if known else None,
            try_clone=False,
            progress=progress,
        )
    assert f"{src} changed while it was being copied" in caught.value.message
    assert "the copy was not kept" in caught.value.message and caught.value.hint
    assert nothing_published(dst)  # and no partial to resume from: it held other bytes


@pytest.mark.root
def test_a_destination_that_fills_up_mid_copy_publishes_nothing(loop_fs, tmp_path: Path) -> None:
    fs = loop_fs("ext4", 32)
    src = make_source(tmp_path / "src" / "f.qcow2", 12 * MiB)
    before = sha256(src)
    st = os.statvfs(fs.mountpoint)
    fs.fill("ballast", st.f_bavail * st.f_frsize - 4 * MiB)  # room for a third of it
    dst = fs.mountpoint / "repo" / "f.qcow2"
    with pytest.raises(CopyNoSpace) as caught:
        copy_file(src, dst, expected_checksum=before, label="repository small")
    assert "no space left on repository small: f.qcow2 needs 12" in caught.value.message
    assert "the partial file was removed" in caught.value.message
    assert nothing_published(dst) and sha256(src) == before


def test_a_cancel_mid_copy_keeps_the_partial_and_the_next_copy_resumes(tmp_path: Path) -> None:
    src = make_source(tmp_path / "src" / "f.qcow2", 6 * MiB + 99)
    want = sha256(src)
    dst = tmp_path / "dst" / "f.qcow2"
    calls = []

    def cancel_on_the_fourth_chunk(done: int, total: int) -> None:
        calls.append(done)
        if len(calls) == 4:
            raise JobCancelled("cancelled by the operator")

    with pytest.raises(JobCancelled):
        copy_file(src, dst, expected_checksum=want, progress=cancel_on_the_fourth_chunk)
    assert not dst.exists()
    kept = partial_path(dst).stat().st_size
    assert 0 < kept < src.stat().st_size

    result = copy_file(src, dst, expected_checksum=want, try_clone=False)
    assert result.resumed_from > 0 and result.resumed_from % CHUNK_SIZE == 0
    assert result.checksum == want and dst.read_bytes() == src.read_bytes()
    assert not partial_path(dst).exists()


def test_the_file_is_published_only_after_before_publish_and_never_when_withdrawn(
    tmp_path: Path,
) -> None:
    src = make_source(tmp_path / "src" / "a.qcow2", 3 * MiB + 5)
    dst = tmp_path / "dst" / "a.qcow2"
    seen: list[tuple[bool, int]] = []

    def before_publish() -> None:  # the whole file is in the partial, not yet named
        seen.append((dst.exists(), partial_path(dst).stat().st_size))

    result = copy_file(src, dst, before_publish=before_publish)
    assert seen == [(False, src.stat().st_size)]
    assert sha256(dst) == sha256(src) == result.checksum

    def withdraw() -> None:
        raise Withdrawn

    again = tmp_path / "dst" / "b.qcow2"
    with pytest.raises(Withdrawn):
        copy_file(src, again, before_publish=withdraw)
    assert nothing_published(again)
