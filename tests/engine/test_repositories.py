"""Repositories on real loop-mounted ext4/xfs: add, test, errors as sentences, remove, guards."""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.catalog.models import Backup, Chain, CopyRule, Repository
from engine.clock import FixedClock
from engine.config import default_settings
from engine.errors import ValidationError
from engine.runtime import Engine
from engine.services.backup import DiskSource
from engine.services.mounts import MountManager, kernel_client_missing
from engine.services.probe import RepositoryCheckError
from engine.services.repositories import RepositorySpec, validate_field, validate_spec
from engine.tools.mounts import mount, umount
from tests.plugins.loopfs import LoopFsFactory

pytestmark = pytest.mark.root


@pytest.fixture
def eng(tmp_path: Path) -> Iterator[Engine]:
    """An opened (not started) engine on SQLite with a fixed clock."""
    engine = Engine(default_settings(tmp_path / "state"), clock=FixedClock()).open()
    try:
        yield engine
    finally:
        engine.close()


def test_add_local_repository_on_ext4_probes_capabilities_and_capacity(
    eng: Engine, loop_fs: LoopFsFactory
) -> None:
    fs = loop_fs("ext4", size_mb=32)
    report = eng.repositories.test(RepositorySpec(name="disk1", path=str(fs.mountpoint)))
    assert report.ok, report.error
    assert [s.name for s in report.steps] == ["fields", "directory", "write"]
    assert 20 * 2**20 < report.total <= 32 * 2**20
    assert report.capabilities["fs_type"] == "ext4"
    assert report.capabilities["immutable"] is True
    assert report.capabilities["reflink"] is False  # ext4 has no reflink
    # the test leaves nothing behind: the layout comes with the saved repository
    assert sorted(p.name for p in fs.mountpoint.iterdir()) == ["lost+found"]

    repo = eng.repositories.add(RepositorySpec(name="disk1", path=str(fs.mountpoint)))
    assert repo.state == "ready"
    assert sorted(p.name for p in fs.mountpoint.iterdir()) == [".sendense", "chains", "lost+found"]
    assert list((fs.mountpoint / ".sendense").iterdir()) == []
    assert repo.capabilities["immutable"] is True
    reading = eng.repositories.capacity(repo)
    assert reading.error is None and reading.total == report.total


def test_xfs_repository_supports_reflink(eng: Engine, loop_fs: LoopFsFactory) -> None:
    fs = loop_fs("xfs", size_mb=320)
    report = eng.repositories.test(RepositorySpec(name="x", path=str(fs.mountpoint)))
    assert report.ok, report.error
    assert report.capabilities == {"immutable": True, "reflink": True, "fs_type": "xfs"}


def test_missing_path_is_refused_and_nothing_saved(eng: Engine, tmp_path: Path) -> None:
    spec = RepositorySpec(name="gone", path=str(tmp_path / "no" / "such"))
    with pytest.raises(RepositoryCheckError) as err:
        eng.repositories.add(spec)
    assert err.value.reason == "not_found"
    assert f"{tmp_path}/no/such does not exist" in str(err.value)
    assert eng.repositories.list() == []
    # asked to create it, it works
    spec.create = True
    assert eng.repositories.add(spec).state == "ready"
    assert (tmp_path / "no" / "such" / "chains").is_dir()


def test_file_instead_of_directory(eng: Engine, tmp_path: Path) -> None:
    target = tmp_path / "afile"
    target.write_text("x")
    report = eng.repositories.test(RepositorySpec(name="f", path=str(target), create=True))
    assert not report.ok
    assert report.reason == "not_directory"
    assert report.error == f"{target} is a file, not a directory"


def test_read_only_mount_is_named(eng: Engine, loop_fs: LoopFsFactory) -> None:
    fs = loop_fs("ext4", size_mb=16, read_only=True)
    report = eng.repositories.test(RepositorySpec(name="ro", path=str(fs.mountpoint)))
    assert not report.ok
    assert report.reason == "read_only"
    assert "read-only filesystem" in (report.error or "")
    # saved disabled on purpose: allowed, and it stays disabled
    repo = eng.repositories.add(RepositorySpec(name="ro", path=str(fs.mountpoint)), enabled=False)
    assert (repo.enabled, repo.state) == (False, "disabled")


def test_full_filesystem_fails_the_write_test_with_enospc(
    eng: Engine, loop_fs: LoopFsFactory
) -> None:
    fs = loop_fs("ext4", size_mb=16)
    eng.repositories.add(RepositorySpec(name="tiny", path=str(fs.mountpoint)))
    # root may use ext4's reserve too: fill until the filesystem refuses
    with open(fs.mountpoint / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\xff" * 1024 * 1024)
                f.flush()
        except OSError:
            pass
    subprocess.run(["sync"], check=False, timeout=30)
    with open(fs.mountpoint / "filler2", "wb") as f:  # the last few blocks
        try:
            while True:
                f.write(b"\xff" * 4096)
                f.flush()
                os.fsync(f.fileno())
        except OSError:
            pass
    report = eng.repositories.test_repository("tiny")
    assert not report.ok
    assert "no space left" in (report.error or "")
    repo = eng.repositories.get("tiny")
    assert repo.state == "error" and "ENOSPC" in (repo.state_detail or "")


def test_field_validation_sentences() -> None:
    assert validate_field("local", "path", "relative/dir") == (
        "the path must be absolute (start with /)"
    )
    assert (
        validate_field("nfs", "server", "bad host!")
        == "'bad host!' is not a host name or IP address"
    )
    assert validate_field("nfs", "server", "nas-01.example.com") is None
    assert validate_field("nfs", "server", "10.0.0.7") is None
    assert validate_field("cifs", "port", "99999") == "the port must be a number from 1 to 65535"
    assert "share name" in (validate_field("cifs", "export", "a/b") or "")
    assert validate_field("nfs", "export", "srv") == "the export path must start with /"
    problems = validate_spec(RepositorySpec(name="", kind="cifs", server="nas"))
    assert set(problems) == {"name", "export", "username"}


def test_cifs_domain_cannot_inject_lines_into_the_credentials_file() -> None:
    """The domain is written as `domain=...` into the 0600 credentials file; a line
    break in it would add lines of its own (e.g. a second `password=`)."""
    assert validate_field("cifs", "domain", "CORP") is None
    assert validate_field("cifs", "domain", "CORP\npassword=x") == (
        "the domain must not contain '=' or line breaks"
    )
    spec = RepositorySpec(
        name="n", kind="cifs", server="nas", export="b", username="u", domain="a\rb"
    )
    assert set(validate_spec(spec)) == {"domain"}


@pytest.mark.parametrize(
    "hostile",
    [
        "suid",
        "dev",
        "exec",
        "noatime,defaults",
        "remount",
        "bind",
        "loop",
        "X-mount.mkdir=0777",
        "x-systemd.automount",
        "SUID",
        'sec="krb5,suid"',
        "vers=4.1 ,dev",
        "noatime\ndev",
    ],
)
def test_mount_options_that_would_open_a_repository_to_devices_or_programs_are_refused(
    hostile: str,
) -> None:
    problem = validate_field("nfs", "mount_options", hostile) or ""
    assert "refused" in problem or "without quotes or spaces" in problem, problem
    assert validate_field("cifs", "mount_options", hostile) == problem


def test_an_operators_own_mount_options_pass() -> None:
    for fine in ("nconnect=4,noatime,rsize=1048576,wsize=1048576", "sec=krb5p", "hard,proto=tcp"):
        assert validate_field("nfs", "mount_options", fine) is None
    assert validate_field("cifs", "mount_options", "seal,cache=none,noperm") is None


@pytest.mark.parametrize("kind", ["nfs", "cifs"])
def test_every_repository_mount_ends_nosuid_nodev_noexec_whatever_its_saved_options(
    eng: Engine, kind: str
) -> None:
    """A catalog written before the options were checked (or edited by hand) may hold
    options that open the mount to device nodes and set-user-ID programs: mount takes
    the last of two opposite options, so the repository's flags come last."""
    repo = Repository(
        name="r", kind=kind, path="/unused", server="nas", export="/x",
        options={"mount_options": "suid,dev,exec,defaults"},
    )  # fmt: skip
    _fstype, options = eng.mounts.mount_options(repo)
    assert options[-3:] == ["nosuid", "nodev", "noexec"]
    assert options.index("suid") < options.index("nosuid")


def test_a_mount_with_the_repository_flags_last_opens_no_device_node(
    loop_fs: LoopFsFactory, tmp_path: Path
) -> None:
    """What the flags are for, on a real mount as mount(8) applies them: a file server
    that serves a block device node (here: the loop device's own numbers) as a
    "backup" gives the appliance no way into that device, even when the saved options
    asked for ``dev``."""
    fs = loop_fs()
    node = fs.mountpoint / "disk.qcow2"
    os.mknod(node, 0o600 | stat.S_IFBLK, os.stat(fs.device).st_rdev)
    subprocess.run(["umount", str(fs.mountpoint)], check=True)
    target = tmp_path / "served"
    target.mkdir()
    # the other way round, "dev" last: the node opens (mount takes the last one)
    mount(fs.device, target, options=[*MountManager.REPOSITORY_FLAGS, "dev"])
    open(target / "disk.qcow2", "rb").close()
    umount(target)
    mount(fs.device, target, options=["dev", "suid", "exec", *MountManager.REPOSITORY_FLAGS])
    try:
        with pytest.raises(PermissionError):
            open(target / "disk.qcow2", "rb").close()
        flags = subprocess.run(
            ["findmnt", "-no", "OPTIONS", str(target)], capture_output=True, text=True
        ).stdout.split(",")
        assert {"nosuid", "nodev", "noexec"} <= set(flags)
    finally:
        umount(target)
        subprocess.run(["mount", fs.device, str(fs.mountpoint)], check=True)


def test_remove_refused_while_holding_backups_forced_removal_is_audited(
    eng: Engine, tmp_path: Path
) -> None:
    repo = eng.repositories.add(RepositorySpec(name="r1", path=str(tmp_path / "r1"), create=True))
    other = eng.repositories.add(RepositorySpec(name="r2", path=str(tmp_path / "r2"), create=True))
    now = eng.clock.now()
    with eng.catalog.session() as s:
        chain = Chain(
            repository_id=repo.id,
            vm_name="web01",
            disk_name="sda",
            directory="web01/sda",
            created_at=now,
        )
        s.add(chain)
        s.flush()
        s.add(
            Backup(
                chain_id=chain.id,
                kind="full",
                position=0,
                path="web01/sda/0.qcow2",
                state="complete",
                point_time=now,
                created_at=now,
                file_size=10,
            )
        )
        s.add(
            CopyRule(
                name="offsite",
                source_repository_id=other.id,
                destination_repository_id=repo.id,
                created_at=now,
            )
        )
    with pytest.raises(RepositoryCheckError) as err:
        eng.repositories.remove("r1")
    assert str(err.value) == (
        "repository r1 cannot be removed: it holds 1 backup and is the target of copy rule offsite"
    )
    assert eng.repositories.get("r1")
    eng.repositories.remove("r1", force=True, actor="alice")
    assert [r.name for r in eng.repositories.list()] == ["r2"]
    entries = eng.audit.query(text="removed by force")
    assert len(entries) == 1 and entries[0].actor == "alice"
    assert (tmp_path / "r1" / "chains").is_dir()  # files stay


def test_disable_and_unmount_refused_while_a_job_uses_the_repository(
    eng: Engine, tmp_path: Path
) -> None:
    repo = eng.repositories.add(RepositorySpec(name="busy", path=str(tmp_path / "b"), create=True))
    job = eng.job_store.create(
        kind="backup", title="backup web01", now=eng.clock.now(), repository_id=repo.id
    )
    with pytest.raises(RepositoryCheckError, match=rf"job #{job.id} backup web01 uses it"):
        eng.repositories.set_enabled(repo, False)
    with pytest.raises(RepositoryCheckError, match="uses it"):
        eng.repositories.remove(repo)


def test_ensure_writable_mount_refuses_an_empty_mount_point(eng: Engine) -> None:
    """A network repository whose mount point is a plain directory: nothing is written."""
    repo = eng.repository_store.add(
        name="nas",
        kind="nfs",
        path=str(eng.mounts.mount_point("nas")),
        now=eng.clock.now(),
        server="nas.example",
        export="/srv/backups",
    )
    Path(repo.path).mkdir(parents=True)
    with pytest.raises(RepositoryCheckError) as err:
        eng.repositories.ensure_writable_mount(repo)
    assert err.value.reason == "not_mounted"
    assert "is not mounted, so nothing may be written there" in str(err.value)


def test_ensure_writable_mount_accepts_a_real_mount(eng: Engine, loop_fs: LoopFsFactory) -> None:
    """The same check passes when the path is a mount (a loop fs stands in for the
    NFS mount: this kernel has no NFS client)."""
    fs = loop_fs("ext4", size_mb=16)
    repo = eng.repository_store.add(
        name="nas",
        kind="nfs",
        path=str(fs.mountpoint),
        now=eng.clock.now(),
        server="nas.example",
        export="/srv/backups",
    )
    assert eng.repositories.ensure_writable_mount(repo) == fs.mountpoint
    eng.repositories.set_enabled(repo, False)
    with pytest.raises(RepositoryCheckError, match="is disabled"):
        eng.repositories.ensure_writable_mount(repo.id)


def test_cifs_password_is_encrypted_and_credentials_file_is_private(
    eng: Engine, tmp_path: Path
) -> None:
    spec = RepositorySpec(
        name="smb",
        kind="cifs",
        server="127.0.0.1",
        export="backups",
        username="bk",
        password="s3cret-Pw",
        domain="CORP",
    )
    repo = eng.repositories.add(spec, test=False, enabled=False)
    assert repo.secret and "s3cret-Pw" not in repo.secret
    assert repo.secret.startswith("fernet:")
    key = eng.settings.state_dir / "secret.key"
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    assert eng.repositories.spec_of(repo, with_password=True).password == "s3cret-Pw"
    cred = eng.mounts.write_credentials(repo, "s3cret-Pw")
    assert oct(cred.stat().st_mode & 0o777) == "0o600"
    assert cred.read_text() == "username=bk\npassword=s3cret-Pw\ndomain=CORP\n"
    fstype, options = eng.mounts.mount_options(repo)
    assert fstype == "cifs" and f"credentials={cred}" in options
    assert not any("s3cret" in o for o in options)
    eng.mounts.remove_credentials("smb")
    assert not cred.exists()
    # nothing in the audit log carries it
    assert all("s3cret" not in e.message for e in eng.audit.query())


def test_kernel_without_nfs_client_is_said_in_words() -> None:
    text = kernel_client_missing("nfs", filesystems="nodev\tproc\n\text4\n")
    if text is not None:  # a module may still be loadable on this host
        assert text.startswith("this machine's kernel has no NFS client")
    assert kernel_client_missing("nfs", filesystems="nodev\tnfs4\n") is None
    assert kernel_client_missing("local") is None


def test_engine_start_creates_default_local_repository(tmp_path: Path) -> None:
    engine = Engine(default_settings(tmp_path / "state"), clock=FixedClock()).start()
    try:
        repos = engine.repositories.list()
        assert [(r.name, r.kind, r.state) for r in repos] == [("local", "local", "ready")]
        assert repos[0].path == str(tmp_path / "state" / "repository")
        assert engine.capacity.reading(repos[0].id) is not None or engine.capacity.sample(repos[0])
    finally:
        engine.close()
    # a second start does not add another one
    engine = Engine(default_settings(tmp_path / "state"), clock=FixedClock()).start()
    try:
        assert len(engine.repositories.list()) == 1
    finally:
        engine.close()


def test_mount_manager_repair_reports_foreign_mounts(
    tmp_path: Path, loop_fs: LoopFsFactory
) -> None:
    fs = loop_fs("ext4", size_mb=16)
    root = tmp_path / "mounts"
    root.mkdir()
    (root / "stray").mkdir()
    subprocess.run(
        ["mount", "--bind", str(fs.mountpoint), str(root / "stray")], check=True, timeout=30
    )
    try:
        findings = MountManager(root, tmp_path / "cred").repair([])
        assert [(f.status, f.target) for f in findings] == [("foreign", str(root / "stray"))]
        assert "left alone" in findings[0].action
    finally:
        subprocess.run(["umount", str(root / "stray")], check=False, timeout=30)


def test_validation_error_on_bad_fields(eng: Engine) -> None:
    with pytest.raises(ValidationError, match="path: the path must be absolute"):
        eng.repositories.add(RepositorySpec(name="x", path="rel"))


def test_a_spec_never_shows_its_password_in_repr() -> None:
    """Specs end up in logs, Textual's crash screen and pytest output via repr()."""
    spec = RepositorySpec(name="n", kind="cifs", server="nas", username="u", password="s3cr3t!")
    assert "s3cr3t!" not in repr(spec)
    assert spec.password == "s3cr3t!"


# -- a refused add or edit writes nothing anywhere ---------------------------------------


def _tree(root: Path) -> dict[str, tuple[bool, int, int]]:
    """Every entry under ``root`` (and root itself): is it a directory, its size and
    its mtime. A directory's mtime moves when anything is created in it, even if it
    is removed again, so equal snapshots mean nothing was written."""
    found = {".": (True, 0, root.stat().st_mtime_ns)}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        found[str(path.relative_to(root))] = (path.is_dir(), info.st_size, info.st_mtime_ns)
    return found


def test_refused_add_writes_nothing_anywhere(eng: Engine, tmp_path: Path) -> None:
    """Each spec is refused before the filesystem is touched, even with create."""
    eng.repositories.add(RepositorySpec(name="main", path=str(tmp_path / "main"), create=True))
    (tmp_path / "link-to-etc").symlink_to("/etc")
    probe = f"sendense-must-not-exist-{os.getpid()}"
    refused = [
        ("main", tmp_path / "new" / "deep", "already exists"),  # a taken name
        ("12", tmp_path / "new" / "deep", "cannot be all digits"),
        ("main\n", tmp_path / "new", "use letters, digits"),
        ("sys", tmp_path / "link-to-etc" / probe, "inside the system directory /etc"),
        ("own", tmp_path / "state" / "new", "Sendense's own directory"),
        ("boot", Path("/boot") / probe, "inside the system directory /boot"),
    ]
    before = _tree(tmp_path)
    etc_before = Path("/etc").stat().st_mtime_ns
    for name, path, problem in refused:
        spec = RepositorySpec(name=name, path=str(path), create=True)
        assert problem in (eng.repositories.test(spec).error or "")
        with pytest.raises(ValidationError, match=problem):
            eng.repositories.add(spec)
    assert _tree(tmp_path) == before
    assert not (Path("/etc") / probe).exists() and not (Path("/boot") / probe).exists()
    assert Path("/etc").stat().st_mtime_ns == etc_before
    assert [r.name for r in eng.repositories.list()] == ["main"]


def test_the_root_directory_is_refused_before_anything_is_written(eng: Engine) -> None:
    layout = [Path("/") / sub for sub in (".sendense", "chains")]
    assert not any(p.exists() for p in layout)  # else this test could not see a write
    root_before = Path("/").stat().st_mtime_ns
    report = eng.repositories.test(RepositorySpec(name="root", path="/", create=True))
    assert not report.ok and report.error == "path: / is a system directory: " + (
        "give the repository a directory of its own, e.g. /srv/backups"
    )
    with pytest.raises(ValidationError, match="/ is a system directory"):
        eng.repositories.add(RepositorySpec(name="root", path="/"), enabled=False)
    assert not any(p.exists() for p in layout)
    assert Path("/").stat().st_mtime_ns == root_before
    assert eng.repositories.list() == []


@pytest.fixture
def full_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A real tmpfs of 64 KiB, filled: directories can still be made (they take no
    pages), files cannot be written."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], check=True)
    try:
        fd = os.open(mnt / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while os.write(fd, b"\xff" * 4096):
                pass
        except OSError:
            pass
        finally:
            os.close(fd)
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False, timeout=30)


def test_a_failed_test_removes_the_directories_it_created(
    eng: Engine, full_tmpfs: Path, tmp_path: Path
) -> None:
    target = full_tmpfs / "a" / "b"
    spec = RepositorySpec(name="tiny", path=str(target), create=True)
    report = eng.repositories.test(spec)
    assert not report.ok and report.reason == "no_space", report.error
    assert sorted(p.name for p in full_tmpfs.iterdir()) == ["filler"]
    with pytest.raises(RepositoryCheckError, match="no space left"):
        eng.repositories.add(spec)
    assert sorted(p.name for p in full_tmpfs.iterdir()) == ["filler"]
    assert eng.repositories.list() == []

    # an edit that moves a repository there is refused the same way, and the
    # repository stays where it was
    repo = eng.repositories.add(RepositorySpec(name="r", path=str(tmp_path / "r"), create=True))
    with pytest.raises(RepositoryCheckError, match="nothing was changed"):
        eng.repositories.edit(repo, RepositorySpec(name="r", path=str(target), create=True))
    assert sorted(p.name for p in full_tmpfs.iterdir()) == ["filler"]
    assert eng.repositories.get("r").path == str(tmp_path / "r")
    with pytest.raises(ValidationError, match="inside the system directory /etc"):
        eng.repositories.edit(repo, RepositorySpec(name="r", path="/etc/backups", create=True))
    assert not Path("/etc/backups").exists()
    assert eng.repositories.get("r").path == str(tmp_path / "r")


def test_one_write_gate_refuses_an_unwritable_repository_for_backups_and_copies(
    eng: Engine, loop_fs: LoopFsFactory, tmp_path: Path
) -> None:
    """A repository directory nobody may write into (immutable: root too): the write
    gate, a backup into it and a copy rule to it refuse it with the gate's one
    sentence, and nothing lands there."""
    fs = loop_fs("ext4", size_mb=16)
    main = eng.repositories.add(
        RepositorySpec(name="main", path=str(tmp_path / "main"), create=True)
    )
    frozen = eng.repositories.add(RepositorySpec(name="frozen", path=str(fs.mountpoint)))
    before = sorted(p.name for p in fs.mountpoint.iterdir())
    subprocess.run(["chattr", "+i", str(fs.mountpoint)], check=True, timeout=30)
    try:
        with pytest.raises(RepositoryCheckError) as gate:
            eng.repositories.ready_for_new_data(frozen)
        assert gate.value.reason == "permission"
        sentence = f"repository frozen: {fs.mountpoint} is not writable"
        assert str(gate.value) == sentence

        disk = tmp_path / "disk.raw"
        disk.write_bytes(b"\1" * 65536)
        with pytest.raises(RepositoryCheckError) as backup:
            eng.backups.run(frozen.id, "web01", [DiskSource("sda", str(disk))])
        assert str(backup.value) == sentence

        with pytest.raises(ValidationError) as copy:
            eng.copies.add_rule(name="out", source=main.name, destination=frozen.name)
        assert str(copy.value) == f"destination {sentence}"
        assert eng.copies.list_rules() == []
    finally:
        subprocess.run(["chattr", "-i", str(fs.mountpoint)], check=True, timeout=30)
    assert sorted(p.name for p in fs.mountpoint.iterdir()) == before
