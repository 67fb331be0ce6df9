"""engine.tools.qemu_img against the real qemu-img, qemu-io and qemu-nbd."""

from __future__ import annotations

import os
import struct
import subprocess
import threading
from pathlib import Path

import pytest

from engine.errors import JobCancelled
from engine.tools import ToolCancelled, ToolError, nbd, qemu_img
from engine.tools.qemu_img import (
    BackingFileError,
    ImageBusy,
    ImageCorrupt,
    ImageNotFound,
    ImagePermissionError,
    NoSpaceError,
    NotAnImage,
)
from tests.plugins.loopfs import MiB, make_random_image

CLUSTER = 65536


def qemu_io(image: Path, command: str) -> None:
    subprocess.run(["qemu-io", "-c", command, str(image)], check=True, capture_output=True)


def test_create_and_info(tmp_path: Path) -> None:
    img = tmp_path / "disk.qcow2"
    qemu_img.create(img, 16 * MiB, options={"compression_type": "zstd"})
    info = qemu_img.info(img)
    assert info.format == "qcow2"
    assert info.virtual_size == 16 * MiB
    assert info.cluster_size == CLUSTER
    assert info.compression_type == "zstd"
    assert info.backing_filename is None
    assert not info.dirty and not info.corrupt
    assert info.actual_size > 0


def test_info_chain_keeps_relative_backing_names(tmp_path: Path) -> None:
    chain = tmp_path / "chain"
    chain.mkdir()
    qemu_img.create(chain / "full.qcow2", 16 * MiB)
    qemu_img.create(chain / "inc1.qcow2", 16 * MiB, backing="full.qcow2", backing_fmt="qcow2")
    qemu_img.create(chain / "inc2.qcow2", 16 * MiB, backing="inc1.qcow2")

    # move the whole chain: relative references keep it valid
    moved = tmp_path / "elsewhere"
    chain.rename(moved)
    infos = qemu_img.info_chain(moved / "inc2.qcow2")

    assert [Path(i.filename).name for i in infos] == ["inc2.qcow2", "inc1.qcow2", "full.qcow2"]
    assert infos[0].backing_filename == "inc1.qcow2"
    assert infos[0].full_backing_filename == str(moved / "inc1.qcow2")
    assert infos[0].backing_format == "qcow2"
    assert infos[1].backing_filename == "full.qcow2"
    assert infos[2].backing_filename is None


def test_missing_backing_file_names_both_files(tmp_path: Path) -> None:
    qemu_img.create(tmp_path / "full.qcow2", 16 * MiB)
    qemu_img.create(tmp_path / "inc.qcow2", 16 * MiB, backing="full.qcow2")
    (tmp_path / "full.qcow2").unlink()

    with pytest.raises(BackingFileError) as err:
        qemu_img.info_chain(tmp_path / "inc.qcow2")
    message = str(err.value)
    assert "full.qcow2" in message and "inc.qcow2" in message
    assert "No such file or directory" in message
    assert err.value.backing == "full.qcow2"
    assert "rebase" in (err.value.hint or "")


def test_create_onto_missing_backing_is_a_backing_error(tmp_path: Path) -> None:
    with pytest.raises(BackingFileError, match=r"missing\.qcow2 of .*new\.qcow2"):
        qemu_img.create(tmp_path / "new.qcow2", 16 * MiB, backing="missing.qcow2")


def test_missing_image(tmp_path: Path) -> None:
    with pytest.raises(ImageNotFound, match=r"nope\.qcow2 does not exist"):
        qemu_img.info(tmp_path / "nope.qcow2")
    with pytest.raises(ImageNotFound, match=r"directory .* does not exist"):
        qemu_img.create(tmp_path / "no-dir" / "x.qcow2", MiB)


def test_not_an_image(tmp_path: Path) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(os.urandom(CLUSTER))
    with pytest.raises(NotAnImage, match="not a qcow2 image"):
        qemu_img.info(junk, fmt="qcow2")
    with pytest.raises(NotAnImage, match="cannot be checked"):
        qemu_img.check(junk)


def test_check_clean(tmp_path: Path) -> None:
    img = tmp_path / "ok.qcow2"
    qemu_img.create(img, 16 * MiB)
    qemu_io(img, "write -P 0xab 0 2M")
    result = qemu_img.check(img)
    assert result.clean
    assert (result.corruptions, result.leaks, result.check_errors) == (0, 0, 0)
    assert result.image_end_offset is not None and result.image_end_offset > 2 * MiB


def _header(img: Path) -> tuple[int, int]:
    with open(img, "rb") as f:
        head = f.read(104)
    l1_offset = struct.unpack(">Q", head[40:48])[0]
    refcount_table = struct.unpack(">Q", head[48:56])[0]
    return l1_offset, refcount_table


def test_check_finds_damaged_refcounts(tmp_path: Path) -> None:
    img = tmp_path / "bad.qcow2"
    qemu_img.create(img, 16 * MiB)
    qemu_io(img, "write -P 0xab 0 2M")
    _, table = _header(img)
    with open(img, "r+b") as f:
        f.seek(table)
        block = struct.unpack(">Q", f.read(8))[0]
        f.seek(block)
        f.write(b"\0" * 64)  # refcount 0 for clusters that are in use
    result = qemu_img.check(img)
    assert not result.clean
    assert result.corruptions > 0
    assert result.raw["filename"] == str(img)


def test_check_reports_leaks_as_result(tmp_path: Path) -> None:
    img = tmp_path / "leak.qcow2"
    qemu_img.create(img, 16 * MiB)
    _, table = _header(img)
    with open(img, "r+b") as f:
        f.seek(table)
        block = struct.unpack(">Q", f.read(8))[0]
        f.seek(block + 2 * 5)  # cluster 5: counted but referenced by nothing
        f.write(struct.pack(">H", 1))
        f.truncate(6 * CLUSTER)
    result = qemu_img.check(img)
    assert not result.clean
    assert result.leaks == 1 and result.corruptions == 0


def test_overwritten_header_is_corrupt(tmp_path: Path) -> None:
    img = tmp_path / "hdr.qcow2"
    qemu_img.create(img, 16 * MiB)
    with open(img, "r+b") as f:
        f.seek(40)
        f.write(struct.pack(">Q", 12345))  # L1 table offset not cluster aligned
    with pytest.raises(ImageCorrupt, match=r"hdr\.qcow2 is damaged"):
        qemu_img.check(img)


def test_corrupt_flag_blocks_writes(tmp_path: Path) -> None:
    img = tmp_path / "flagged.qcow2"
    qemu_img.create(img, 16 * MiB)
    with open(img, "r+b") as f:
        f.seek(72)
        features = struct.unpack(">Q", f.read(8))[0]
        f.seek(72)
        f.write(struct.pack(">Q", features | 2))  # the "corrupt" bit
    assert qemu_img.info(img).corrupt
    with pytest.raises(ImageCorrupt, match=r"flagged\.qcow2 is damaged: .*read/write"):
        qemu_img.rebase(img, None, unsafe=True)


def test_convert_reports_progress_and_result_matches(tmp_path: Path) -> None:
    src = make_random_image(tmp_path / "src.raw", 32 * MiB, seed=1, hole_every=4)
    dst = tmp_path / "dst.qcow2"
    seen: list[float] = []
    qemu_img.convert(src, dst, src_fmt="raw", on_progress=seen.append, compression="zstd")
    assert seen, "no progress reported"
    assert all(0.0 <= p <= 100.0 for p in seen)
    assert seen == sorted(seen)
    assert seen[-1] == 100.0
    assert any(0 < p < 100 for p in seen)
    assert qemu_img.info(dst).compression_type == "zstd"
    assert qemu_img.compare(src, dst)


def test_convert_cancel_kills_and_leaves_partial_output(tmp_path: Path) -> None:
    src = make_random_image(tmp_path / "src.raw", 64 * MiB, seed=2)
    dst = tmp_path / "partial.qcow2"
    seen: list[float] = []
    stop = threading.Event()

    def progress(p: float) -> None:
        seen.append(p)
        if p > 0:
            stop.set()

    with pytest.raises(ToolCancelled) as err:
        # zlib compression makes the copy slow enough to cancel halfway
        qemu_img.convert(
            src,
            dst,
            src_fmt="raw",
            compression="zlib",
            on_progress=progress,
            should_stop=stop.is_set,
            poll_interval=0.02,
        )
    assert isinstance(err.value, JobCancelled)
    assert "cancelled" in str(err.value)
    assert seen and seen[-1] < 100.0
    assert dst.exists(), "the partial file is the caller's to remove"
    assert not any(
        f"{dst}" in line
        for line in subprocess.run(
            ["ps", "-eo", "args"], capture_output=True, text=True, check=True
        ).stdout.splitlines()
    ), "qemu-img still running after cancel"


def test_convert_timeout(tmp_path: Path) -> None:
    src = make_random_image(tmp_path / "src.raw", 64 * MiB, seed=3)
    with pytest.raises(ToolError, match="did not finish within"):
        qemu_img.convert(src, tmp_path / "t.qcow2", src_fmt="raw", compression="zlib", timeout=0.2)


def test_convert_missing_source(tmp_path: Path) -> None:
    with pytest.raises(ImageNotFound, match=r"gone\.qcow2 does not exist"):
        qemu_img.convert(tmp_path / "gone.qcow2", tmp_path / "out.qcow2")


def test_incremental_convert_with_backing(tmp_path: Path) -> None:
    full = tmp_path / "full.qcow2"
    make_random_image(full, 16 * MiB, seed=4, fmt="qcow2")
    qemu_img.create(tmp_path / "work.qcow2", 16 * MiB, backing="full.qcow2")
    qemu_io(tmp_path / "work.qcow2", "write -P 0x5a 1M 1M")
    inc = tmp_path / "inc.qcow2"
    qemu_img.convert(tmp_path / "work.qcow2", inc, backing="full.qcow2")
    info = qemu_img.info(inc)
    assert info.backing_filename == "full.qcow2"
    assert info.actual_size < 4 * MiB  # only the changed clusters
    assert qemu_img.compare(tmp_path / "work.qcow2", inc)


def test_rebase_unsafe_and_safe(tmp_path: Path) -> None:
    make_random_image(tmp_path / "full.qcow2", 16 * MiB, seed=5, fmt="qcow2")
    qemu_img.create(tmp_path / "inc.qcow2", 16 * MiB, backing="full.qcow2")
    os.rename(tmp_path / "full.qcow2", tmp_path / "renamed.qcow2")
    qemu_img.rebase(tmp_path / "inc.qcow2", "renamed.qcow2", unsafe=True)
    assert qemu_img.info(tmp_path / "inc.qcow2").backing_filename == "renamed.qcow2"
    assert qemu_img.compare(tmp_path / "inc.qcow2", tmp_path / "renamed.qcow2")

    # safe rebase onto nothing copies the data in: the image stands alone
    qemu_img.rebase(tmp_path / "inc.qcow2", None)
    assert qemu_img.info(tmp_path / "inc.qcow2").backing_filename is None
    assert qemu_img.compare(tmp_path / "inc.qcow2", tmp_path / "renamed.qcow2")


def test_commit_merges_into_backing(tmp_path: Path) -> None:
    qemu_img.create(tmp_path / "base.qcow2", 16 * MiB)
    qemu_img.create(tmp_path / "top.qcow2", 16 * MiB, backing="base.qcow2")
    qemu_io(tmp_path / "top.qcow2", "write -P 0x77 0 1M")
    assert not qemu_img.compare(tmp_path / "base.qcow2", tmp_path / "top.qcow2")
    qemu_img.commit(tmp_path / "top.qcow2", drop=True)
    assert qemu_img.compare(tmp_path / "base.qcow2", tmp_path / "top.qcow2")


def test_measure(tmp_path: Path) -> None:
    src = make_random_image(tmp_path / "src.raw", 16 * MiB, seed=6, hole_every=2)
    m = qemu_img.measure(src, src_fmt="raw")
    assert 8 * MiB <= m.required < 9 * MiB  # half of it is holes
    assert m.fully_allocated >= 16 * MiB


def test_map_shows_data_and_zero_extents(tmp_path: Path) -> None:
    img = tmp_path / "m.qcow2"
    qemu_img.create(img, 16 * MiB)
    qemu_io(img, "write -P 0xab 0 2M")
    extents = qemu_img.map_image(img)
    assert extents[0].start == 0 and extents[0].length == 2 * MiB
    assert extents[0].data and not extents[0].zero and extents[0].offset is not None
    rest = extents[-1]
    assert rest.start == 2 * MiB and rest.length == 14 * MiB
    assert rest.zero and not rest.data and rest.offset is None
    assert sum(e.length for e in extents) == 16 * MiB


def test_compare_differ_is_a_result(tmp_path: Path) -> None:
    a = make_random_image(tmp_path / "a.raw", 4 * MiB, seed=7)
    b = make_random_image(tmp_path / "b.raw", 4 * MiB, seed=8)
    assert not qemu_img.compare(a, b)
    assert qemu_img.compare(a, a)
    with pytest.raises(ImageNotFound):
        qemu_img.compare(a, tmp_path / "missing.raw")


def test_image_in_use_is_busy(tmp_path: Path) -> None:
    img = tmp_path / "busy.qcow2"
    qemu_img.create(img, 16 * MiB)
    with nbd.start_qemu_nbd(img, socket_path=tmp_path / "nbd.sock", read_only=False):
        with pytest.raises(ImageBusy) as err:
            qemu_img.check(img)
        assert str(err.value) == f"{img} is in use by another process (qemu-img lock)"
        # read-only queries pass -U and still work
        assert qemu_img.info(img).virtual_size == 16 * MiB
    assert qemu_img.check(img).clean


@pytest.mark.root
def test_immutable_image_cannot_be_written(tmp_path: Path) -> None:
    qemu_img.create(tmp_path / "base.qcow2", MiB)
    top = tmp_path / "top.qcow2"
    qemu_img.create(top, MiB, backing="base.qcow2")
    subprocess.run(["chattr", "+i", str(top)], check=True)
    try:
        with pytest.raises(ImagePermissionError, match="Operation not permitted") as err:
            qemu_img.commit(top)
        assert "immutable" in (err.value.hint or "")
    finally:
        subprocess.run(["chattr", "-i", str(top)], check=True)


@pytest.mark.root
def test_full_filesystem_is_no_space(tmp_path: Path, loop_fs) -> None:  # type: ignore[no-untyped-def]
    fs = loop_fs("ext4", size_mb=16)
    src = make_random_image(tmp_path / "big.raw", 32 * MiB, seed=9)
    dst = fs.mountpoint / "backup.qcow2"
    with pytest.raises(NoSpaceError) as err:
        qemu_img.convert(src, dst, src_fmt="raw")
    assert str(dst) in str(err.value)
    assert "no space left" in str(err.value)


def test_read_back_through_nbd_unix_socket(tmp_path: Path) -> None:
    src = make_random_image(tmp_path / "src.qcow2", 8 * MiB, seed=10, fmt="qcow2")
    sock = tmp_path / "export.sock"
    with nbd.start_qemu_nbd(src, socket_path=sock, export_name="disk0") as server:
        assert server.uri == f"nbd+unix:///disk0?socket={sock}"
        seen: list[float] = []
        qemu_img.convert(
            server.uri, tmp_path / "copy.qcow2", src_fmt="raw", on_progress=seen.append
        )
        assert seen and seen[-1] == 100.0
    assert not server.running()
    assert not sock.exists()
    assert qemu_img.compare(src, tmp_path / "copy.qcow2")
