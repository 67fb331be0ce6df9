"""Starting a backup over HTTP: the CLI's inputs and checks, 202 and a job that runs."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine import reach
from engine.runtime import Engine
from engine.tools import loop
from sendense_api.roles import Role
from tests.api.conftest import ClientFor
from tests.api.resources import World, accepted_job, make_world, problem, wait_job
from tests.engine.diskgen import MiB, SourceDisk
from tests.engine.fsimages import sh


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    yield from make_world(tmp_path_factory)


@pytest.fixture
def engine(world: World) -> Engine:
    return world.engine


def test_an_operator_backs_up_a_vm_as_a_job(world: World, api_as: ClientFor) -> None:
    first = SourceDisk.create(world.root / "app-sda.raw", 2 * MiB, seed=11)
    second = SourceDisk.create(world.root / "app-sdb.raw", 1 * MiB, seed=12)
    body = {
        "repo": "local",
        "vm": "app01",
        "disks": [
            {"name": "sda", "source": str(first.path)},
            f"sdb={second.path}",  # the CLI's --disk text
        ],
        "compression": "zstd",
    }
    job = accepted_job(world.engine, api_as(Role.OPERATE).post("/api/v1/backups", json=body))
    assert job.state == "succeeded", job.error
    assert job.kind == "backup" and job.actor == "test-operate"
    points = api_as(Role.READ).get("/api/v1/restore-points", params={"vm": "app01"}).json()
    assert sorted((p["disk"], p["kind"], p["compression"]) for p in points) == [
        ("sda", "full", "zstd"),
        ("sdb", "full", "zstd"),
    ]


@pytest.mark.parametrize(
    ("change", "status", "says"),
    [
        # what the engine refuses, with the CLI's sentence
        ({"disks": [{"name": "sda", "source": "json:{}"}]}, 422, "protocol"),
        ({"vm": "../etc"}, 422, "VM name"),
        ({"disks": [{"name": "a/b", "source": "SRC"}]}, 422, "disk name"),
        ({"repo": "nowhere"}, 404, "nowhere"),
        # what the request's bounds refuse, naming the field
        ({"disks": [{"name": "sda", "source": "/x", "format": "vmdk"}]}, 422, "format"),
        ({"full_every": 0}, 422, "full_every"),
        ({"full_every": 10**30}, 422, "full_every"),
        ({"mode": "sometimes"}, 422, "mode"),
        ({"disks": []}, 422, "disks"),
        ({"disk": "sda=SRC"}, 422, "disk"),
        ({"disks": ["sda"]}, 422, "NAME=SOURCE"),
        ({"disks": ["sda:vmdk=SRC"]}, 422, "vmdk"),
        ({"disks": ["sda=SRC", "sda=SRC"]}, 422, "repeat"),
    ],
)
def test_bad_backup_requests_get_one_sentence_and_queue_nothing(
    world: World, api_as: ClientFor, change: dict[str, object], status: int, says: str
) -> None:
    source = SourceDisk.create(world.root / "bad01.raw", 1 * MiB, seed=13).path
    body = {"repo": "local", "vm": "bad01", "disks": [{"name": "sda", "source": "SRC"}]}
    request = json.loads(json.dumps({**body, **change}).replace("SRC", str(source)))
    before = len(world.engine.job_store.list(kind="backup", limit=1000))
    detail = problem(api_as(Role.OPERATE).post("/api/v1/backups", json=request), status)
    assert says in detail
    assert len(world.engine.job_store.list(kind="backup", limit=1000)) == before


def test_a_reader_cannot_start_a_backup(world: World, api_as: ClientFor) -> None:
    body = {"repo": "local", "vm": "web01", "disks": [{"name": "sda", "source": "/dev/null"}]}
    assert "operate" in problem(api_as(Role.READ).post("/api/v1/backups", json=body), 403)


# -- what a token may name as a source ---------------------------------------------------


def _refused_untouched(world: World, api_as: ClientFor, disks: list[object], says: str) -> None:
    before = len(world.engine.job_store.list(kind="backup", limit=1000))
    body = {"repo": "local", "vm": "reach01", "disks": disks}
    for role in (Role.OPERATE, Role.ADMIN):  # an admin's token too: the daemon reads as root
        detail = problem(api_as(role).post("/api/v1/backups", json=body), 403)
        assert says in detail and "may not name" in detail
    assert len(world.engine.job_store.list(kind="backup", limit=1000)) == before


@pytest.mark.parametrize(
    "outside",
    [
        "/etc/passwd",  # a file of the appliance
        "/dev/null",  # a device outside the roots
        "ROOT/../../etc/passwd",  # out of a root by ..
        "ROOT/link-out",  # inside a root, a link to a file outside
        "ROOT/link-dir/passwd",  # inside a root, through a linked directory
        "relative.raw",  # relative: the daemon's directory, not the caller's
    ],
)
def test_a_token_names_no_file_outside_the_source_roots(
    world: World, api_as: ClientFor, outside: str
) -> None:
    root = world.root
    if not (root / "link-out").is_symlink():
        (root / "link-out").symlink_to("/etc/passwd")
        (root / "link-dir").symlink_to("/etc")
    source = outside.replace("ROOT", str(root))
    _refused_untouched(world, api_as, [{"name": "sda", "source": source}], repr(source))


def test_a_token_names_no_extent_list_outside_the_source_roots(
    world: World, api_as: ClientFor
) -> None:
    inside = SourceDisk.create(world.root / "reach-sda.raw", 1 * MiB, seed=14).path
    disk = {"name": "sda", "source": str(inside), "changed_extents": "/etc/shadow"}
    _refused_untouched(world, api_as, [disk], "'/etc/shadow' as its extent list")


def test_with_no_source_roots_a_token_names_no_path_at_all(world: World, api_as: ClientFor) -> None:
    inside = SourceDisk.create(world.root / "reach-sdb.raw", 1 * MiB, seed=15).path
    settings = world.engine.settings
    world.engine.settings = dataclasses.replace(
        settings, api=dataclasses.replace(settings.api, source_roots=())
    )
    try:
        detail = problem(
            api_as(Role.OPERATE).post(
                "/api/v1/backups",
                json={"repo": "local", "vm": "reach02", "disks": [f"sda={inside}"]},
            ),
            403,
        )
    finally:
        world.engine.settings = settings
    assert "no path of the appliance is open to tokens" in detail


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a loop device (a block device)")
def test_a_link_in_a_root_to_a_block_device_is_a_disk_a_token_may_name(
    world: World, api_as: ClientFor, tmp_path: Path
) -> None:
    """LVM's /dev/VG/LV are links to /dev/dm-N: a root such as /dev/VG works."""
    image = SourceDisk.create(tmp_path / "lv.raw", 1 * MiB, seed=16).path
    device = sh("losetup", "--find", "--show", "--read-only", str(image)).strip()
    link = world.root / "vg0-lv"
    link.symlink_to(device)
    try:
        body = {"repo": "local", "vm": "reach03", "disks": [f"sda={link}"]}
        job = accepted_job(world.engine, api_as(Role.OPERATE).post("/api/v1/backups", json=body))
    finally:
        link.unlink()
        sh("losetup", "--detach", device)
    assert job.state == "succeeded", job.error


def test_root_on_the_unix_socket_names_any_source(world: World) -> None:
    """The socket's caller is root on the appliance already: the roots do not bind it."""
    from fastapi.testclient import TestClient

    from sendense_api.app import create_app
    from sendense_api.roles import Caller

    outside = SourceDisk.create(world.root.parent / "outside-sda.raw", 1 * MiB, seed=17).path
    root = Caller(name="root (unix socket)", role=Role.ADMIN, via="socket")
    app = create_app(world.engine, authenticate=lambda _request: root)
    with TestClient(app, raise_server_exceptions=False) as client:
        body = {"repo": "local", "vm": "reach04", "disks": [f"sda={outside}"]}
        job = accepted_job(world.engine, client.post("/api/v1/backups", json=body))
    assert job.state == "succeeded", job.error


def test_a_token_names_none_of_sendenses_own_files_even_inside_a_root(
    world: World, api_as: ClientFor
) -> None:
    """An administrator who opens a directory that holds Sendense's state directory
    (here the world's root holds it) opens none of its secrets: the catalog, the key
    that encrypts CIFS passwords, the API's TLS key."""
    state = world.engine.settings.state_dir
    assert state.is_relative_to(world.root)
    link = world.root / "link-state"
    if not link.is_symlink():
        link.symlink_to(state / "secret.key")
    for source in (state / "secret.key", state / "catalog.db", state, link):
        disks = [{"name": "sda", "source": str(source)}]
        _refused_untouched(world, api_as, disks, "Sendense's own files")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a loop device and a mount")
def test_a_token_names_no_block_device_the_appliance_itself_uses(
    world: World, api_as: ClientFor, tmp_path: Path
) -> None:
    """A root such as /dev/vg0 opens the VMs' volumes, never a disk the appliance runs
    on: a device with a mounted filesystem on it is refused (as the appliance's root
    disk would be). Unmounted, the same disk is a disk like any other."""
    image = tmp_path / "appliance.img"
    with open(image, "wb") as f:
        f.truncate(16 * MiB)
    sh("mkfs.ext4", "-q", str(image))
    device = loop.attach(image)
    mounted = tmp_path / "mounted"
    mounted.mkdir()
    link = world.root / "vg1-disk"
    try:
        sh("mount", device, str(mounted))
        link.symlink_to(device)
        disks = [{"name": "sda", "source": str(link)}]
        _refused_untouched(world, api_as, disks, "the appliance itself uses")
        sh("umount", str(mounted))
        body = {"repo": "local", "vm": "reach05", "disks": [f"sda={link}"]}
        job = accepted_job(world.engine, api_as(Role.OPERATE).post("/api/v1/backups", json=body))
        assert job.state == "succeeded", job.error
    finally:
        if os.path.ismount(mounted):
            sh("umount", str(mounted))
        link.unlink(missing_ok=True)
        loop.detach(device)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a loop device")
def test_a_disk_counts_as_in_use_when_a_partition_of_it_is(tmp_path: Path) -> None:
    """The walk from a disk to the devices built on it, on the kernel's real /sys: a
    whole disk counts as in use when a partition of it is. (This machine may refuse to
    make a filesystem on a loop partition, so the mount itself is tested on a whole
    device, above.)"""
    image = tmp_path / "parted.img"
    with open(image, "wb") as f:
        f.truncate(16 * MiB)
    sh("sfdisk", "-q", str(image), input_text="label: dos\n,8M,L\n,,L\n")
    device = loop.attach(image)
    try:
        parts = loop.partx_add(device)
        keys = [reach.device_key(os.stat(p).st_rdev) for p in parts]
        assert set(keys) < reach.devices_built_on(reach.device_key(os.stat(device).st_rdev))
        assert reach.devices_built_on(keys[0]) == {keys[0]}  # a partition has nothing built on it
    finally:
        loop.detach(device)


def test_a_link_changed_after_the_request_is_checked_again_when_the_job_starts(
    world: World, api_as: ClientFor
) -> None:
    """Whoever writes in a root may point a link elsewhere between the request and the
    read (here while another writer holds the disk and the job waits): the job checks
    the token's sources again before it reads them, as root, and fails saying why."""
    inside = SourceDisk.create(world.root / "reach-sdc.raw", 1 * MiB, seed=18).path
    link = world.root / "link-later"
    link.symlink_to(inside)
    engine = world.engine
    with engine.writers.hold(world.repo.id, "reach06", "sda", operation="merge", actor="t"):
        body = {"repo": "local", "vm": "reach06", "disks": [f"sda={link}"]}
        answer = api_as(Role.OPERATE).post("/api/v1/backups", json=body)
        assert answer.status_code == 202, answer.text
        link.unlink()
        # a file of Sendense's own (the catalog, the key of the CIFS passwords, ...)
        own = SourceDisk.create(engine.settings.state_dir / "own.file", 1 * MiB, seed=19).path
        link.symlink_to(own)
    job = wait_job(engine, answer.json()["job"]["id"])
    assert job.state == "failed"
    assert "Sendense's own files" in (job.error or "")
    assert engine.chain_store.list_backups(vm_name="reach06") == []


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a loop device")
def test_a_device_counts_as_in_use_when_the_mount_table_cannot_be_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unsure is closed: with no mount table to read, no device is taken for free."""
    image = tmp_path / "free.img"
    with open(image, "wb") as f:
        f.truncate(4 * MiB)
    device = loop.attach(image)
    try:
        assert not reach.device_in_use(device)
        monkeypatch.setattr(reach, "MOUNTINFO", tmp_path / "no-mountinfo")
        assert reach.device_in_use(device)
    finally:
        loop.detach(device)


def test_a_token_s_nbd_socket_is_a_path_like_any_other(world: World, api_as: ClientFor) -> None:
    """nbd+unix:// makes the daemon connect, as root, to a socket of the appliance:
    its path is bound as a file's is (Sendense's own exports' sockets never), while an
    nbd:// address over TCP is a disk served to the appliance and is not."""
    state = world.engine.settings.state_dir
    for socket_path, says in (
        (state / "exports" / "a.sock", "Sendense's own files"),
        (Path("/run/other.sock"), f"only paths inside {world.root}"),
    ):
        disks = [{"name": "sda", "source": f"nbd+unix:///x?socket={socket_path}"}]
        _refused_untouched(world, api_as, disks, f"{str(socket_path)!r} as its NBD socket")
        _refused_untouched(world, api_as, disks, says)
    # the API's own socket, configured inside a root: still Sendense's
    settings = world.engine.settings
    api = dataclasses.replace(settings.api, socket=world.root / "api.sock")
    world.engine.settings = dataclasses.replace(settings, api=api)
    try:
        disks = [{"name": "sda", "source": f"nbd+unix:///x?socket={world.root / 'api.sock'}"}]
        _refused_untouched(world, api_as, disks, "Sendense's own files")
    finally:
        world.engine.settings = settings
    inside = f"nbd+unix:///x?socket={world.root / 'vm.sock'}"
    body = {"repo": "local", "vm": "reach07", "disks": [{"name": "sda", "source": inside}]}
    queued = api_as(Role.OPERATE).post("/api/v1/backups", json=body)
    assert queued.status_code == 202, queued.text
    wait_job(world.engine, queued.json()["job"]["id"])  # nothing listens there: it fails
