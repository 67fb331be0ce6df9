"""Build small disk images holding known files, and back them up as QCOW2 chains.

- ``build_disk(path, parts, table="gpt")``: a raw disk with a partition table
  (or none: ``table=None`` and one part = a bare filesystem). Each ``Part``
  is ext4 (populated by ``mkfs.ext4 -d`` without mounting), xfs (loop-mounted
  and written, since mkfs.xfs cannot populate), or ``None`` (random bytes: an
  unknown filesystem).
- files: ``{"dir/name": b"bytes" | Link("target") | None (a directory)}``; every
  file gets mode 0640 and the fixed mtime ``MTIME`` unless given as ``File``.
- ``backup_chain(...)``: full = ``qemu-img convert``; incremental = an overlay
  of the next raw version rebased onto the previous QCOW2 (only changed
  clusters), with relative backing files; plus catalog rows.

Tests may call mkfs/mount/losetup directly; the engine may not.
"""

from __future__ import annotations

import os
import random
import subprocess
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from engine.catalog import Catalog
from engine.catalog.chains import ChainStore
from engine.catalog.repositories import RepositoryStore
from engine.errors import NotFoundError

MiB = 1024 * 1024
MTIME = 1_700_000_000  # 2023-11-14
XFS_ENV = {"TEST_DEV": "1", "TEST_DIR": "1", "QA_CHECK_FS": "1"}


@dataclass(frozen=True)
class Link:
    target: str


@dataclass(frozen=True)
class File:
    data: bytes
    mode: int = 0o640
    mtime: int = MTIME


Content = bytes | Link | File | None


@dataclass
class Part:
    fs: str | None  # ext4 | xfs | None (unknown bytes)
    size_mb: int
    files: dict[str, Content] = field(default_factory=dict)
    label: str = ""


def sh(*args: str, env: dict[str, str] | None = None, input_text: str | None = None) -> str:
    proc = subprocess.run(
        list(args),
        capture_output=True,
        text=True,
        env={**os.environ, "LC_ALL": "C", **(env or {})},
        input=input_text,
        timeout=120,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def populate(directory: Path, files: dict[str, Content]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for rel, content in sorted(files.items()):
        path = directory / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if content is None:
            path.mkdir(exist_ok=True)
            continue
        if isinstance(content, Link):
            os.symlink(content.target, path)
            continue
        item = content if isinstance(content, File) else File(content)
        path.write_bytes(item.data)
        os.chmod(path, item.mode)
        os.utime(path, (item.mtime, item.mtime))
    # directory times last (writing into them changed them)
    for dirpath, _, _ in sorted(os.walk(directory), key=lambda d: -len(d[0])):
        os.utime(dirpath, (MTIME, MTIME))


def make_fs(image: Path, part: Part, workdir: Path) -> None:
    """A filesystem image file of ``part.size_mb`` holding ``part.files``."""
    with open(image, "wb") as f:
        f.truncate(part.size_mb * MiB)
    staging = Path(tempfile.mkdtemp(dir=workdir, prefix="stage-"))
    populate(staging, part.files)
    if part.fs == "ext4":
        args = ["mkfs.ext4", "-q", "-F", "-d", str(staging)]
        if part.label:
            args += ["-L", part.label]
        sh(*args, str(image))
    elif part.fs == "xfs":
        args = ["mkfs.xfs", "-q", "-f"]
        if part.label:
            args += ["-L", part.label]
        sh(*args, str(image), env=XFS_ENV)
        mnt = Path(tempfile.mkdtemp(dir=workdir, prefix="mnt-"))
        sh("mount", "-o", "loop", str(image), str(mnt))
        try:
            sh("cp", "-a", f"{staging}/.", str(mnt))
        finally:
            sh("umount", str(mnt))
    elif part.fs is None:
        rng = random.Random(part.size_mb)
        with open(image, "r+b") as f:
            f.write(rng.randbytes(MiB))
    else:
        raise ValueError(part.fs)


def build_disk(path: Path, parts: list[Part], *, table: str | None = "gpt") -> Path:
    """A raw disk image: partition table (or none) and filesystems with the files."""
    workdir = path.parent
    if table is None:
        assert len(parts) == 1, "a bare filesystem disk has exactly one part"
        make_fs(path, parts[0], workdir)
        return path
    total = sum(p.size_mb for p in parts) + 2
    with open(path, "wb") as f:
        f.truncate(total * MiB)
    script = f"label: {table}\n" + "".join(
        f",{p.size_mb}M,{'L' if table == 'gpt' else '83'}\n" for p in parts
    )
    sh("sfdisk", "-q", str(path), input_text=script)
    offset = MiB
    for index, part in enumerate(parts, start=1):
        fs_image = workdir / f"{path.name}.p{index}"
        make_fs(fs_image, part, workdir)
        _copy_into(fs_image, path, offset)
        fs_image.unlink()
        offset += part.size_mb * MiB
    return path


def _copy_into(source: Path, disk: Path, offset: int) -> None:
    with open(source, "rb") as src, open(disk, "r+b") as dst:
        position = offset
        while chunk := src.read(MiB):
            if chunk.count(0) != len(chunk):
                dst.seek(position)
                dst.write(chunk)
            position += len(chunk)


@dataclass
class ChainPoints:
    repository_id: int
    chain_id: int
    full_id: int
    incremental_ids: list[int]
    files: list[Path]

    @property
    def ids(self) -> list[int]:
        return [self.full_id, *self.incremental_ids]


def backup_chain(
    catalog: Catalog,
    repo_dir: Path,
    versions: list[Path],
    *,
    now: datetime,
    vm: str = "web01",
    disk: str = "sda",
    repo_name: str = "restore-tests",
) -> ChainPoints:
    """Back up raw ``versions`` as a full plus incrementals and record them."""
    chain_dir = repo_dir / vm / disk
    chain_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for index, raw in enumerate(versions):
        target = chain_dir / f"{index:04d}.qcow2"
        if index == 0:
            sh("qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(target))
        else:
            sh(
                "qemu-img", "create", "-q", "-f", "qcow2",
                "-b", str(raw.resolve()), "-F", "raw", str(target),
            )  # fmt: skip
            sh(
                "qemu-img", "rebase", "-f", "qcow2",
                "-b", files[-1].name, "-F", "qcow2", str(target),
            )  # fmt: skip
        files.append(target)
    repos = RepositoryStore(catalog)
    try:
        repo = repos.get(repo_name)
    except NotFoundError:
        repo = repos.add(name=repo_name, kind="local", path=str(repo_dir), now=now)
    chains = ChainStore(catalog)
    size = os.path.getsize(versions[0])

    def fields(i: int) -> dict[str, object]:
        return {
            "path": str(files[i].relative_to(repo_dir)),
            "state": "complete",
            "point_time": now + timedelta(days=i),
            "virtual_size": size,
            "file_size": files[i].stat().st_size,
        }

    chain, full = chains.add_full(
        repository_id=repo.id,
        vm_name=vm,
        disk_name=disk,
        directory=str(chain_dir.relative_to(repo_dir)),
        now=now,
        backup=fields(0),
    )
    parent = full.id
    incs = []
    for i in range(1, len(files)):
        row = chains.add_incremental(
            chain_id=chain.id, parent_id=parent, position=i, now=now, backup=fields(i)
        )
        incs.append(row.id)
        parent = row.id
    return ChainPoints(repo.id, chain.id, full.id, incs, files)


def mounts_under(path: Path) -> list[str]:
    real = os.path.realpath(path)
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        targets = [line.split()[4].replace("\\040", " ") for line in f]
    return [t for t in targets if t == real or t.startswith(real + "/")]


def loops_on(path: Path) -> list[str]:
    out = sh("losetup", "-l", "-n", "-O", "NAME,BACK-FILE")
    real = os.path.realpath(path)
    return [
        line.split()[0]
        for line in out.splitlines()
        if len(line.split()) > 1 and line.split(None, 1)[1].startswith(real)
    ]


def processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if text.encode() in cmd and b"qemu" in cmd:
            found.append(int(entry.name))
    return found


def backup_chain_rows(catalog: Catalog, repo_dir: Path, *, now: datetime) -> int:
    """Catalog rows of one full backup (no file): for console tests on seeded data."""
    repos = RepositoryStore(catalog)
    repo = repos.add(name="restore-demo", kind="local", path=str(repo_dir), now=now)
    _, full = ChainStore(catalog).add_full(
        repository_id=repo.id,
        vm_name="web01",
        disk_name="sda",
        directory="web01/sda",
        now=now,
        backup={
            "path": "web01/sda/0000.qcow2",
            "state": "complete",
            "point_time": now - timedelta(hours=3),
            "virtual_size": 64 * MiB,
        },
    )
    return full.id


#: POSIX ACL entry tags, as stored in ``system.posix_acl_access`` (linux/posix_acl_xattr.h)
ACL_USER_OBJ, ACL_USER, ACL_GROUP_OBJ, ACL_GROUP, ACL_MASK, ACL_OTHER = 1, 2, 4, 8, 0x10, 0x20
_ACL_UNDEFINED_ID = 0xFFFFFFFF


def posix_acl(
    owner: int,
    group: int,
    other: int,
    *,
    users: dict[int, int] | None = None,
    groups: dict[int, int] | None = None,
    mask: int | None = None,
) -> bytes:
    """The binary value of a POSIX ACL xattr (what setfacl writes): version 2, then
    (tag, perm, id) entries sorted by tag and id."""
    import struct

    entries = [(ACL_USER_OBJ, owner, _ACL_UNDEFINED_ID)]
    entries += [(ACL_USER, perm, uid) for uid, perm in sorted((users or {}).items())]
    entries.append((ACL_GROUP_OBJ, group, _ACL_UNDEFINED_ID))
    entries += [(ACL_GROUP, perm, gid) for gid, perm in sorted((groups or {}).items())]
    if users or groups:
        entries.append((ACL_MASK, 7 if mask is None else mask, _ACL_UNDEFINED_ID))
    entries.append((ACL_OTHER, other, _ACL_UNDEFINED_ID))
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


def host_passwd_lines() -> set[bytes]:
    """The appliance's /etc/passwd, line by line (see :func:`host_passwd_kept`)."""
    with open("/etc/passwd", "rb") as f:
        return set(f.read().splitlines())


def host_passwd_kept(before: set[bytes]) -> bool:
    """Whether every line /etc/passwd had is still there. Not a checksum: another test
    running beside this one may add a system user meanwhile (tests/engine/test_access),
    while a write through a restored link would replace the file's content."""
    return before <= host_passwd_lines()
