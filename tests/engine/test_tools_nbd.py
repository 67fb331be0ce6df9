"""engine.tools.nbd: qemu-nbd served on loopback, read back with qemu-img."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from engine.tools import nbd, qemu_img
from engine.tools.nbd import NbdError
from tests.plugins.loopfs import MiB, make_random_image


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_tcp_export_on_loopback(tmp_path: Path) -> None:
    src = make_random_image(tmp_path / "src.qcow2", 4 * MiB, seed=11, fmt="qcow2")
    port = _free_port()
    with nbd.start_qemu_nbd(src, host="127.0.0.1", port=port, export_name="d") as server:
        assert server.uri == f"nbd://127.0.0.1:{port}/d"
        qemu_img.convert(server.uri, tmp_path / "copy.qcow2", src_fmt="raw")
    assert not server.running()
    assert qemu_img.compare(src, tmp_path / "copy.qcow2")


def test_one_shot_server_exits_after_its_reader(tmp_path: Path) -> None:
    src = make_random_image(tmp_path / "src.qcow2", 2 * MiB, seed=12, fmt="qcow2")
    server = nbd.start_qemu_nbd(src, socket_path=tmp_path / "s.sock", persistent=False)
    try:
        qemu_img.convert(server.uri, tmp_path / "copy.raw", src_fmt="raw", dst_fmt="raw")
        server.process.wait(timeout=10)
        assert not server.running()
    finally:
        server.stop()
    assert qemu_img.compare(src, tmp_path / "copy.raw")


def test_missing_image_names_it(tmp_path: Path) -> None:
    with pytest.raises(NbdError) as err:
        nbd.start_qemu_nbd(tmp_path / "gone.qcow2", socket_path=tmp_path / "s.sock")
    assert f"{tmp_path / 'gone.qcow2'} does not exist" in str(err.value)
    assert not (tmp_path / "s.sock").exists()


def test_needs_exactly_one_address(tmp_path: Path) -> None:
    with pytest.raises(NbdError, match="either socket_path or port"):
        nbd.start_qemu_nbd(tmp_path / "x.qcow2")
