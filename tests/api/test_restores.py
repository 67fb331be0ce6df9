"""Restore mounts over HTTP: mount a real point (ext4 in a GPT disk, backed up by the
engine), browse it, download a file and a folder as tar and zip, unmount.

As an attacker would: a ``..`` path, an absolute path and symbolic links pointing out
of the mount (at the end of the path and on the way) are all refused with a problem
document, a folder archive holds links as links (their targets are never read), and no
byte of the host's ``/etc/passwd`` appears in any answer."""

from __future__ import annotations

import io
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from engine.runtime import Engine
from engine.services.backup import DiskSource
from sendense_api.app import create_app
from sendense_api.roles import Caller, Role
from tests.api.conftest import ClientFor
from tests.api.resources import World, accepted_job, make_world, problem
from tests.engine.fsimages import Link, Part, build_disk, mounts_under

pytestmark = pytest.mark.root

REPORT = b"quarterly\n" * 1000
with open("/etc/passwd", "rb") as _f:
    #: a line of the host's /etc/passwd no backed-up file holds
    HOST_SECRET = _f.read().splitlines()[0]

FILES: dict[str, Any] = {
    "docs/report.txt": REPORT,
    "docs/sub/x": b"x",
    "docs/inside": Link("report.txt"),
    "docs/escape": Link("/etc/passwd"),
    "docs/up": Link("../../../../../../etc"),
    "docs/sub/back": Link("../report.txt"),
    "docs/sub/around": Link("../../docs/report.txt"),  # lands inside, but via outside
    "docs/nested": None,
}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    for world in make_world(tmp_path_factory):
        raw = build_disk(world.root / "files01.raw", [Part("ext4", 8, FILES)])
        run = world.engine.backups.run(world.repo.id, "files01", [DiskSource("sda", str(raw))])
        assert run.ok, run.sentence()
        world.points["files01"] = [run.disks[0].backup_id]  # type: ignore[list-item]
        try:
            yield world
        finally:
            world.engine.file_restore.unmount_all(mine_only=False)
            assert mounts_under(world.root) == []


@pytest.fixture
def engine(world: World) -> Engine:
    return world.engine


@pytest.fixture
def mount_id(world: World, api_as: ClientFor) -> Iterator[int]:
    point = world.points["files01"][0]
    made = api_as(Role.OPERATE).post("/api/v1/restore-mounts", json={"point": point, "minutes": 5})
    assert made.status_code in (200, 201), made.text
    yield made.json()["id"]


def no_host_secret(response: Any) -> None:
    assert HOST_SECRET not in response.content


def test_mount_browse_download_and_unmount(world: World, api_as: ClientFor, mount_id: int) -> None:
    reader = api_as(Role.READ)
    shown = reader.get(f"/api/v1/restore-mounts/{mount_id}").json()
    assert shown["backup_id"] == world.points["files01"][0]
    assert [fs["name"] for fs in shown["filesystems"]] == ["p1"]
    assert [m["id"] for m in reader.get("/api/v1/restore-mounts").json()] == [mount_id]
    again = api_as(Role.OPERATE).post("/api/v1/restore-mounts", json={"point": shown["backup_id"]})
    assert again.status_code == 200 and again.json()["reused"] is True

    top = reader.get(f"/api/v1/restore-mounts/{mount_id}/entries").json()
    assert [(e["name"], e["kind"]) for e in top] == [("p1", "dir")]
    docs = reader.get(f"/api/v1/restore-mounts/{mount_id}/entries", params={"path": "p1/docs"})
    kinds = {e["name"]: e["kind"] for e in docs.json()}
    assert kinds == {
        "nested": "dir",
        "sub": "dir",
        "report.txt": "file",
        "inside": "symlink",
        "escape": "symlink",
        "up": "symlink",
    }

    file = reader.get(
        f"/api/v1/restore-mounts/{mount_id}/file", params={"path": "p1/docs/report.txt"}
    )
    assert file.status_code == 200, file.text
    assert file.content == REPORT
    assert 'filename="report.txt"' in file.headers["content-disposition"]

    unmounted = api_as(Role.OPERATE).delete(f"/api/v1/restore-mounts/{mount_id}")
    assert unmounted.json() == {"id": mount_id, "state": "unmounted"}
    assert reader.get("/api/v1/restore-mounts").json() == []
    assert "does not exist" in problem(
        reader.get(f"/api/v1/restore-mounts/{mount_id}/entries"), 404
    )


def test_a_folder_downloads_as_tar_and_zip_with_links_as_links(
    engine: Engine, api_as: ClientFor, mount_id: int
) -> None:
    reader = api_as(Role.READ)
    url = f"/api/v1/restore-mounts/{mount_id}/archive"
    as_tar = reader.get(url, params={"path": "p1/docs", "format": "tar"})
    assert as_tar.status_code == 200, as_tar.text
    assert as_tar.headers["content-type"] == "application/x-tar"
    no_host_secret(as_tar)
    with tarfile.open(fileobj=io.BytesIO(as_tar.content), mode="r:") as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert set(members) == {
            "docs",
            "docs/nested",
            "docs/report.txt",
            "docs/inside",
            "docs/escape",
            "docs/up",
            "docs/sub",
            "docs/sub/x",
            "docs/sub/back",
            "docs/sub/around",
        }
        assert members["docs/escape"].issym() and members["docs/escape"].linkname == "/etc/passwd"
        assert tar.extractfile(members["docs/report.txt"]).read() == REPORT  # type: ignore[union-attr]
        assert members["docs/inside"].issym() and members["docs/inside"].linkname == "report.txt"
        assert members["docs/report.txt"].mode == 0o640

    as_zip = reader.get(url, params={"path": "p1/docs", "format": "zip"})
    assert as_zip.status_code == 200, as_zip.text
    no_host_secret(as_zip)
    with zipfile.ZipFile(io.BytesIO(as_zip.content)) as archive:
        assert archive.testzip() is None
        names = set(archive.namelist())
        assert names == {
            "docs/",
            "docs/nested/",
            "docs/report.txt",
            "docs/inside",
            "docs/escape",
            "docs/up",
            "docs/sub/",
            "docs/sub/x",
            "docs/sub/back",
            "docs/sub/around",
        }
        assert archive.read("docs/report.txt") == REPORT
        assert archive.read("docs/inside") == b"report.txt"

    whole = reader.get(url, params={"path": "p1", "format": "tar"})
    no_host_secret(whole)
    with tarfile.open(fileobj=io.BytesIO(whole.content), mode="r:") as tar:
        assert "p1/docs/report.txt" in tar.getnames()
        api_names = tar.getnames()
    # the API's archive is the one `restore extract --tar` writes (one engine module)
    written = io.BytesIO()
    engine.file_restore.archive(mount_id, ["p1"], written, kind="tar")
    with tarfile.open(fileobj=io.BytesIO(written.getvalue()), mode="r:") as tar:
        assert tar.getnames() == api_names


@pytest.mark.parametrize(
    ("what", "path", "says"),
    [
        ("file", "p1/../../../etc/passwd", "'..'"),
        ("file", "p1/docs/../../../etc/passwd", "'..'"),
        ("file", "/etc/passwd", "no filesystem 'etc'"),
        ("file", "p1/docs/escape", "symbolic link"),
        ("file", "p1/docs/up/passwd", "symbolic link"),
        ("file", "p1/docs", "folder"),
        ("file", "p1/docs/nothing-here", "does not exist"),
        ("archive", "p1/docs/up", "symbolic link"),
        ("archive", "p1/../..", "'..'"),
        ("archive", "/etc", "no filesystem 'etc'"),
        ("archive", "p1/docs/report.txt", "not a folder"),
        ("entries", "p1/docs/up", "symbolic link"),
        ("entries", "p1/docs/../..", "'..'"),
    ],
)
def test_paths_out_of_the_mount_are_refused(
    api_as: ClientFor, mount_id: int, what: str, path: str, says: str
) -> None:
    response = api_as(Role.READ).get(
        f"/api/v1/restore-mounts/{mount_id}/{what}", params={"path": path}
    )
    assert says in problem(response, 422)
    no_host_secret(response)


def test_roles_and_missing_mounts(world: World, api_as: ClientFor) -> None:
    point = world.points["files01"][0]
    reader: TestClient = api_as(Role.READ)
    assert "operate" in problem(reader.post("/api/v1/restore-mounts", json={"point": point}), 403)
    problem(api_as(Role.OPERATE).post("/api/v1/restore-mounts", json={"point": 999999}), 404)
    problem(
        api_as(Role.OPERATE).post("/api/v1/restore-mounts", json={"point": point, "minutes": 0}),
        422,
    )
    problem(reader.get("/api/v1/restore-mounts/777777"), 404)
    problem(reader.get("/api/v1/restore-mounts/777777/file", params={"path": "p1/x"}), 404)
    problem(api_as(Role.OPERATE).delete("/api/v1/restore-mounts/777777"), 404)


def _as_root_on_the_socket(engine: Engine) -> TestClient:
    """A client as the daemon's unix socket authenticates root (no token)."""
    root = Caller(name="root (unix socket)", role=Role.ADMIN, via="socket")
    return TestClient(
        create_app(engine, authenticate=lambda _r: root), raise_server_exceptions=False
    )


def test_a_whole_disk_restores_through_the_socket(world: World, api_as: ClientFor) -> None:
    """``sendense restore disk`` hands its job here when the daemon runs: the point is
    written out whole; relative names, a token (even an admin's) and existing files
    without ``overwrite`` are refused with one sentence and nothing written."""
    point = world.points["web01"][-1]
    out = world.root / "web01-sda.raw"
    root = _as_root_on_the_socket(world.engine)
    body = {"target": str(out), "format": "raw"}
    job = accepted_job(
        world.engine, root.post(f"/api/v1/restore-points/{point}/restore", json=body)
    )
    assert job.state == "succeeded", job.error
    assert job.actor == "root (unix socket)"
    assert out.read_bytes() == world.disks["web01"].path.read_bytes()

    # the same again: the file is there, and overwriting it takes asking for it
    again = root.post(f"/api/v1/restore-points/{point}/restore", json=body)
    assert "already exists" in problem(again, 422)
    # a relative name would land in the daemon's working directory: refused
    relative = root.post(f"/api/v1/restore-points/{point}/restore", json={"target": "x.raw"})
    assert "not an absolute path" in problem(relative, 422)
    assert not (Path.cwd() / "x.raw").exists()
    # a token reaches the appliance's files through no path of its choosing
    other = world.root / "by-token.raw"
    for role in Role:
        refused = api_as(role).post(
            f"/api/v1/restore-points/{point}/restore", json={"target": str(other)}
        )
        assert refused.status_code == 403, (role, refused.text)
    assert not other.exists()
    missing = root.post("/api/v1/restore-points/999999/restore", json={"target": str(other)})
    problem(missing, 404)
    assert not other.exists()
