"""Only root reads backups: tried as a throwaway local user, created and removed here.

Everything lives under a directory that every user may enter (``/tmp/...``, 0755,
as an operator's ``/srv`` would be), so what stops the outsider is Sendense's own
modes and nothing else. Each test first shows the outsider CAN read what is open
to them (a control file, a tree loosened the way an older version left it), so a
refusal below means something.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.config import CapacitySettings, default_settings
from engine.runtime import Engine
from engine.services.backup import DiskSource
from engine.services.repositories import RepositorySpec
from sendense_tui.cli import main
from tests.engine.fsimages import File, Part, build_disk
from tests.plugins.loopfs import LoopFsFactory

pytestmark = pytest.mark.root

HELLO = b"a file the guest made world-readable\n"

#: run by the system python3 as the outsider: tries each (op, path), prints the outcome
PROBE = r"""
import errno, json, os, socket, sys
out = {}
for op, path in json.loads(sys.argv[1]):
    try:
        if op == "read":
            with open(path, "rb") as f:
                f.read(1)
        elif op == "list":
            os.listdir(path)
        elif op == "connect":
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(5)
                s.connect(path)
        out[f"{op} {path}"] = "ok"
    except OSError as exc:
        out[f"{op} {path}"] = errno.errorcode.get(exc.errno, str(exc.errno))
print(json.dumps(out))
"""


@dataclasses.dataclass(frozen=True)
class Outsider:
    name: str
    uid: int
    gid: int

    def try_all(self, probes: list[tuple[str, Path | str]]) -> dict[str, str]:
        """What the outsider gets for each probe: "ok" or an errno name."""
        done = subprocess.run(
            ["/usr/bin/python3", "-I", "-c", PROBE, json.dumps([(o, str(p)) for o, p in probes])],
            user=self.uid,
            group=self.gid,
            extra_groups=[],
            env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"},
            cwd="/",
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        result: dict[str, str] = json.loads(done.stdout)
        return result


@pytest.fixture(scope="module")
def outsider() -> Iterator[Outsider]:
    """A local user with no home and no rights, removed afterwards."""
    name = f"sdtest{uuid.uuid4().hex[:8]}"
    useradd = ["useradd", "--system", "--no-create-home", "--user-group"]
    subprocess.run(
        [*useradd, "--shell", "/usr/sbin/nologin", name],
        check=True,
        capture_output=True,
        timeout=30,
    )
    try:
        entry = pwd.getpwnam(name)
        yield Outsider(name, entry.pw_uid, entry.pw_gid)
    finally:
        subprocess.run(["userdel", name], check=False, capture_output=True, timeout=30)
        subprocess.run(["groupdel", name], check=False, capture_output=True, timeout=30)


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every user may enter and list, like an operator's /srv."""
    base = Path(tempfile.mkdtemp(prefix="sendense-access-", dir="/tmp"))
    base.chmod(0o755)
    control = base / "control.txt"
    control.write_bytes(b"anyone may read this\n")
    control.chmod(0o644)
    try:
        yield base
    finally:
        subprocess.run(["chattr", "-R", "-i", str(base)], capture_output=True, check=False)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def loose_umask() -> Iterator[None]:
    """The engine must not rely on its caller's umask: run with the usual 022."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def open_dir_of(path: Path) -> Path:
    path.mkdir()
    path.chmod(0o755)
    return path


def open_to_others(root: Path) -> list[str]:
    """Files and folders under ``root`` (itself included) that group or others may use."""
    found = []
    for current, dirs, files in os.walk(root):
        # a mounted guest filesystem keeps the guest's modes: the folders above it count
        dirs[:] = [d for d in dirs if not os.path.ismount(os.path.join(current, d))]
        for name in [".", *dirs, *files]:
            full = os.path.normpath(os.path.join(current, name))
            mode = os.lstat(full).st_mode
            if not stat.S_ISLNK(mode) and mode & 0o077:
                found.append(f"{full} {stat.filemode(mode)}")
    return found


def everything_under(root: Path) -> list[tuple[str, Path]]:
    probes: list[tuple[str, Path]] = []
    for current, dirs, files in os.walk(root):
        probes += [("list", Path(current) / d) for d in dirs]
        probes += [("read", Path(current) / f) for f in files]
    return probes


def wait_for_job(engine: Engine, job_id: int) -> None:
    deadline = time.monotonic() + 120
    while (job := engine.job_store.get(job_id)).state not in ("succeeded", "failed"):
        assert time.monotonic() < deadline, job.state
        time.sleep(0.1)
    assert job.state == "succeeded", job.error


def test_nothing_sendense_makes_is_readable_by_another_user(
    outsider: Outsider, open_dir: Path, loose_umask: None
) -> None:
    settings = dataclasses.replace(
        default_settings(open_dir / "state"),
        capacity=dataclasses.replace(CapacitySettings(), min_free_bytes=0),
    )
    source = build_disk(
        open_dir / "web01-sda.raw", [Part("ext4", 16, {"hello.txt": File(HELLO, mode=0o644)})]
    )
    source.chmod(0o644)
    engine = Engine(settings, owner="access-test")
    engine.open()
    engine.start()
    try:
        main_dir, offsite_dir = open_dir_of(open_dir / "main"), open_dir_of(open_dir / "offsite")
        engine.repositories.add(RepositorySpec(name="main", path=str(main_dir)))
        engine.repositories.add(RepositorySpec(name="offsite", path=str(offsite_dir)))
        engine.repositories.secrets.encrypt("a CIFS password")  # makes secret.key
        runs = [engine.backups.run("main", "web01", [DiskSource("sda", str(source))])]
        runs.append(engine.backups.run("main", "web01", [DiskSource("sda", str(source))]))
        assert all(r.ok for r in runs), [r.sentence() for r in runs]
        full, inc = (r.disks[0].backup_id for r in runs)
        wait_for_job(engine, engine.copies.copy_backups([inc], "offsite").id)
        chain = engine.chain_store.get_backup(full).chain_id
        merged = engine.chains.consolidate(chain).id  # a consolidated full
        restored = open_dir_of(open_dir / "restored") / "web01-sda.raw"
        engine.restores.restore(merged, str(restored))
        mount = engine.file_restore.mount(merged)
        export = engine.exports.start(merged, name="access")
        inside = Path(str(mount.filesystems[0].path)) / "hello.txt"
        assert inside.read_bytes() == HELLO  # root reads it: the mount works
        state = open_dir / "state"
        catalog = state / "catalog.db"
        assert Path(f"{catalog}-wal").exists()  # SQLite's WAL holds catalog rows too

        # modes, as ls -l shows them
        for tree in (state, main_dir / "chains", main_dir / ".sendense", offsite_dir / "chains"):
            assert open_to_others(tree) == [], tree
        assert stat.S_IMODE(restored.stat().st_mode) == 0o600
        assert stat.S_IMODE(os.stat(str(export.socket_path)).st_mode) & 0o077 == 0
        assert stat.S_IMODE(Path(mount.base_dir).stat().st_mode) == 0o700

        # ... and as the outsider
        sensitive: list[tuple[str, Path | str]] = [
            ("read", catalog),
            ("read", f"{catalog}-wal"),
            ("read", f"{catalog}-shm"),
            ("read", state / "secret.key"),
            ("list", state),
            ("list", main_dir / "chains"),
            ("list", offsite_dir / "chains"),
            ("read", restored),
            ("read", inside),
            ("list", inside.parent),
            ("read", Path(mount.base_dir) / "disk.raw"),
            ("connect", str(export.socket_path)),
        ]
        for root in (main_dir / "chains", offsite_dir / "chains"):
            sensitive += everything_under(root)
        assert len(sensitive) > 20
        seen = outsider.try_all(
            [("read", open_dir / "control.txt"), ("list", main_dir), ("read", source), *sensitive]
        )
        assert seen.pop(f"read {open_dir / 'control.txt'}") == "ok"
        assert seen.pop(f"list {main_dir}") == "ok"  # the operator's folder stays theirs
        assert seen.pop(f"read {source}") == "ok"
        assert set(seen.values()) == {"EACCES"}, {k: v for k, v in seen.items() if v != "EACCES"}

        # the restore mount's own FUSE disk refuses other users even with every folder
        # above it opened (allow_other is off); the guest filesystem inside does not,
        # which is why nothing above it may be open
        opened = [state, state / "restore", Path(mount.base_dir), Path(mount.base_dir) / "fs"]
        for folder in opened:
            folder.chmod(0o755)
        try:
            seen = outsider.try_all([("read", Path(mount.base_dir) / "disk.raw"), ("read", inside)])
        finally:
            for folder in opened:
                folder.chmod(0o700)
        assert seen == {
            f"read {Path(mount.base_dir) / 'disk.raw'}": "EACCES",
            f"read {inside}": "ok",
        }
    finally:
        engine.close()


def test_repo_test_closes_an_old_tree_and_reports_locked_files(
    outsider: Outsider,
    open_dir: Path,
    loop_fs: LoopFsFactory,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SENDENSE_CAPACITY_MIN_FREE", "0")  # a small test filesystem
    fs = loop_fs("ext4", 64)
    repo = open_dir_of(open_dir / "repo")
    subprocess.run(["mount", "--bind", str(fs.mountpoint), str(repo)], check=True, timeout=30)
    state = open_dir / "state"
    source = build_disk(open_dir / "db01.raw", [Part("ext4", 8, {"x": b"x"})])
    try:

        def cli(*args: str) -> str:
            code = main(["--state-dir", str(state), *args])
            out = capsys.readouterr()
            assert code == 0, out.err
            return out.out

        cli("repo", "add", "old", "--path", str(repo))
        for _ in range(2):
            cli("backup", "run", "--repo", "old", "--vm", "db01", "--disk", f"sda={source}")
        points = sorted((repo / "chains").rglob("*.qcow2"))
        assert len(points) == 2
        # what an older Sendense left: everything readable by everyone
        for tree in (repo / "chains", repo / ".sendense", state):
            subprocess.run(["chmod", "-R", "go+rX", str(tree)], check=True, timeout=30)
        (state / "catalog.db").chmod(0o644)
        locked = points[0]
        subprocess.run(["chattr", "+i", str(locked)], check=True, timeout=30)
        before = outsider.try_all([("read", p) for p in points] + [("read", state / "catalog.db")])
        assert set(before.values()) == {"ok"}  # the outsider really could read backups

        report = cli("repo", "test", "old")

        assert f"locked (chattr +i) kept their mode until the lock ends: {locked}" in report
        fixed = int(report.split("closed ", 1)[1].split()[0])
        assert fixed >= 6  # chains/, .sendense/, VM, disk, chain folders and a point
        assert open_to_others(repo / "chains") == [f"{locked} -rw-r--r--"]
        assert open_to_others(repo / ".sendense") == []
        # the CLI's engine closed the state dir (the default repository's own tree
        # below it is repaired when that repository is tested)
        assert [
            line for line in open_to_others(state) if not line.startswith(f"{state}/repository/")
        ] == []
        lsattr = subprocess.run(
            ["lsattr", str(locked)], capture_output=True, text=True, check=True, timeout=30
        )
        assert lsattr.stdout.split()[0].count("i") == 1  # still locked: never unlocked
        after = outsider.try_all(
            [("read", p) for p in points]
            + [("read", state / "catalog.db"), ("list", repo / "chains")]
        )
        assert set(after.values()) == {"EACCES"}, after
        # a second test has nothing left to fix but still names the locked file
        again = cli("repo", "test", "old")
        assert "closed 0 files" in again and str(locked) in again
    finally:
        with contextlib.suppress(subprocess.SubprocessError):
            subprocess.run(["chattr", "-R", "-i", str(repo)], capture_output=True, timeout=30)
        subprocess.run(["umount", str(repo)], check=False, capture_output=True, timeout=30)
