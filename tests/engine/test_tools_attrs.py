"""engine.tools.attrs: chattr/lsattr on real ext4, xfs, tmpfs and ramfs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from engine.tools import attrs
from engine.tools.attrs import AttrError, AttributePermissionError, ImmutableUnsupported

pytestmark = pytest.mark.root


@pytest.mark.parametrize("fstype", ["ext4", "xfs"])
def test_immutable_blocks_delete_until_cleared(loop_fs, fstype: str) -> None:  # type: ignore[no-untyped-def]
    fs = loop_fs(fstype, size_mb=32)
    backup = fs.mountpoint / "full.qcow2"
    backup.write_bytes(b"data")

    attrs.set_immutable(backup)
    assert attrs.is_immutable(backup)
    assert "i" in attrs.attributes(backup)
    with pytest.raises(PermissionError):
        os.remove(backup)
    with pytest.raises(PermissionError):
        backup.write_bytes(b"changed")

    attrs.set_immutable(backup, False)
    assert not attrs.is_immutable(backup)
    os.remove(backup)


def test_immutable_directory_blocks_new_files(loop_fs) -> None:  # type: ignore[no-untyped-def]
    fs = loop_fs("ext4", size_mb=16)
    chain = fs.mountpoint / "chain"
    chain.mkdir()
    attrs.set_immutable(chain)
    with pytest.raises(PermissionError):
        (chain / "inc.qcow2").write_bytes(b"x")
    # teardown of loop_fs clears the flag


def test_append_only(loop_fs) -> None:  # type: ignore[no-untyped-def]
    fs = loop_fs("ext4", size_mb=16)
    log = fs.mountpoint / "audit.log"
    log.write_text("one\n")
    attrs.set_append_only(log)
    assert attrs.is_append_only(log) and not attrs.is_immutable(log)
    with open(log, "a") as f:
        f.write("two\n")
    with pytest.raises(PermissionError):
        log.write_text("overwrite\n")
    attrs.set_append_only(log, False)
    assert log.read_text() == "one\ntwo\n"


def test_tmpfs_supports_immutable_on_this_kernel(tmpfs: Path) -> None:
    f = tmpfs / "f"
    f.write_bytes(b"x")
    attrs.set_immutable(f)
    assert attrs.is_immutable(f)
    attrs.set_immutable(f, False)


def test_unsupported_filesystem(ramfs: Path) -> None:
    f = ramfs / "f"
    f.write_bytes(b"x")
    with pytest.raises(ImmutableUnsupported) as err:
        attrs.set_immutable(f)
    assert str(err.value) == (
        f"the filesystem at {f} (ramfs) does not support the immutable flag "
        "(ramfs, NFS and CIFS do not)"
    )
    with pytest.raises(ImmutableUnsupported):
        attrs.is_immutable(f)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(AttrError, match=r"nope does not exist"):
        attrs.set_immutable(tmp_path / "nope")


def test_without_capability_needs_root(loop_fs) -> None:  # type: ignore[no-untyped-def]
    fs = loop_fs("ext4", size_mb=16)
    f = fs.mountpoint / "f"
    f.write_bytes(b"x")
    os.chmod(fs.mountpoint, 0o755)
    os.chown(f, 65534, 65534)
    # drop to nobody in a child: the engine's chattr call runs without CAP_LINUX_IMMUTABLE
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            os.setgid(65534)
            os.setuid(65534)
            try:
                attrs.set_immutable(f)
            except AttributePermissionError as e:
                code = 0 if "needs root" in str(e) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
