"""engine.guestmeta reads what a file of a mounted backup is, never through a link:
kinds, numeric owners, special mode bits, times, link targets, every xattr namespace
(ACLs, capabilities), hard-link identity and the data extents of a sparse file."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
from pathlib import Path

import pytest

from engine import guestmeta
from tests.engine.fsimages import posix_acl

pytestmark = pytest.mark.root
MiB = 1024 * 1024


@pytest.fixture
def tree(loop_fs) -> Path:  # type: ignore[no-untyped-def]
    """A small tree on a real ext4 (the test host's own filesystem may lack xattrs)."""
    top = loop_fs(size_mb=16).mountpoint / "tree"
    top.mkdir()
    (top / "owned").write_bytes(b"data\n")
    os.chown(top / "owned", 1234, 5678)
    os.chmod(top / "owned", 0o4755)  # after chown: chown clears setuid
    (top / "sticky").mkdir(mode=0o1777)
    os.chmod(top / "sticky", 0o1777)
    os.symlink("/etc/passwd", top / "abs")
    os.symlink("../../../../..", top / "up")
    os.link(top / "owned", top / "owned-too")
    os.mkfifo(top / "fifo", 0o640)
    os.mknod(top / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.setxattr(top / "owned", "user.note", b"hello")
    os.setxattr(top / "owned", "trusted.x", b"t")
    os.setxattr(top / "sticky", "system.posix_acl_access", posix_acl(7, 5, 5, users={1234: 6}))
    subprocess.run(["setcap", "cap_net_raw+ep", str(top / "owned-too")], check=True, timeout=30)
    with open(top / "sparse", "wb") as f:
        f.truncate(64 * MiB)
        f.seek(8 * MiB)
        f.write(b"x" * MiB)
    os.utime(top / "owned", ns=(1_600_000_000_123_456_789, 1_500_000_000_987_654_321))
    return top


def test_reads_every_kind_and_attribute_without_following(tree: Path) -> None:
    fd = guestmeta.open_dir_at(None, str(tree))
    try:
        names = guestmeta.list_names(fd)
        meta = {name: guestmeta.read_meta(fd, name) for name in names}
    finally:
        os.close(fd)
    kinds = {name: m.kind for name, m in meta.items()}
    assert kinds == {
        "abs": "symlink",
        "up": "symlink",
        "fifo": "fifo",
        "null": "char",
        "owned": "file",
        "owned-too": "file",
        "sparse": "file",
        "sticky": "dir",
    }
    owned = meta["owned"]
    assert (owned.uid, owned.gid, owned.mode) == (1234, 5678, 0o4755)
    assert (owned.atime_ns, owned.mtime_ns) == (
        1_600_000_000_123_456_789,
        1_500_000_000_987_654_321,
    )
    assert owned.identity == meta["owned-too"].identity and owned.is_hard_linked
    # one inode, two names: the capability set through one is seen through both
    assert set(dict(owned.xattrs)) == {"user.note", "trusted.x", "security.capability"}
    assert dict(owned.xattrs)["user.note"] == b"hello"
    assert meta["owned-too"].xattrs == owned.xattrs
    assert dict(meta["sticky"].xattrs)["system.posix_acl_access"] == posix_acl(
        7, 5, 5, users={1234: 6}
    )
    assert meta["sticky"].mode == 0o1775  # the ACL set the bits: its mask is the group's
    assert meta["abs"].link_target == "/etc/passwd"
    assert meta["up"].link_target == "../../../../.."
    assert meta["null"].rdev == os.makedev(1, 3)
    assert meta["sparse"].is_sparse and not owned.is_sparse


def test_sparse_extents_and_opens_refuse_links(tree: Path) -> None:
    fd = guestmeta.open_dir_at(None, str(tree))
    try:
        sparse = guestmeta.read_meta(fd, "sparse")
        data = guestmeta.open_file_at(fd, "sparse", sparse)
        try:
            extents = guestmeta.data_extents(data, sparse.size)
        finally:
            os.close(data)
        assert extents == [(8 * MiB, MiB)]
        for name in ("abs", "up"):
            with pytest.raises(OSError) as refused:
                guestmeta.open_file_at(fd, name)
            assert refused.value.errno == errno.ELOOP
        os.symlink("sticky", tree / "dir-link")
        with pytest.raises(OSError) as refused:
            guestmeta.open_dir_at(fd, "dir-link")
        assert refused.value.errno in (errno.ELOOP, errno.ENOTDIR)
        with pytest.raises(OSError) as refused:  # a fifo is not read (nor blocks)
            guestmeta.open_file_at(fd, "fifo")
        assert refused.value.errno == errno.EINVAL
        with pytest.raises(OSError):  # the inode listed is not the one opened
            guestmeta.open_file_at(fd, "sparse", guestmeta.read_meta(fd, "owned"))
    finally:
        os.close(fd)


def test_walk_goes_parents_first_and_does_not_enter_links(tree: Path) -> None:
    (tree / "sticky" / "inner").write_bytes(b"i")
    fd = guestmeta.open_dir_at(None, str(tree))
    try:
        seen = [item.parts for item in guestmeta.walk(fd, os.fstat(fd).st_dev)]
    finally:
        os.close(fd)
    assert seen.index(("sticky",)) < seen.index(("sticky", "inner"))
    assert ("abs",) in seen and not any(len(p) > 1 and p[0] != "sticky" for p in seen)
