"""``/api/v1/repositories`` over the test's real engine: real directories, a real
test-before-save, real removal; a CIFS password goes in and never comes out."""

from __future__ import annotations

import dataclasses
import json
import socket
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from engine.clock import FixedClock
from engine.config import ApiSettings
from engine.runtime import Engine
from sendense_api.app import create_app
from sendense_api.roles import Caller, Role
from tests.api.conftest import ClientFor
from tests.plugins.common import EngineFactory

BASE = "/api/v1/repositories"


def _add(api: TestClient, name: str, path: Path, **extra: object) -> dict:
    response = api.post(BASE, json={"name": name, "path": str(path), "create": True, **extra})
    assert response.status_code == 201, response.text
    return response.json()


def test_add_list_show_and_remove(api: TestClient, tmp_path: Path) -> None:
    added = _add(api, "nas1", tmp_path / "nas1")
    assert added["saved"] is True and added["test"]["ok"] is True
    assert added["repository"]["name"] == "nas1" and added["repository"]["enabled"] is True
    assert (tmp_path / "nas1" / "chains").is_dir()
    listed = api.get(BASE).json()
    assert [r["name"] for r in listed] == ["nas1"]
    assert listed[0]["total_bytes"] > 0
    shown = api.get(f"{BASE}/nas1").json()
    assert shown["location"] == str(tmp_path / "nas1")
    assert set(shown["thresholds"]) == {"warning", "critical", "full", "min_free_bytes"}
    assert "days_until_full" in shown["forecast"] and "locked" in shown["space"]
    assert api.get(f"{BASE}/%23{shown['id']}").json()["name"] == "nas1"
    removed = api.delete(f"{BASE}/nas1")
    assert removed.status_code == 200 and removed.json() == {"removed": "nas1"}
    assert api.get(BASE).json() == []
    gone = api.get(f"{BASE}/nas1")
    assert gone.status_code == 404 and gone.json()["detail"] == "repository 'nas1' does not exist"
    assert api.delete(f"{BASE}/nas1").status_code == 404


def test_a_repository_that_fails_its_test_is_not_saved(api: TestClient, tmp_path: Path) -> None:
    missing = tmp_path / "not-there"
    refused = api.post(BASE, json={"name": "r1", "path": str(missing)})
    assert refused.status_code == 422
    body = refused.json()
    assert body["detail"].startswith("repository r1 was not saved: ")
    assert "disabled=true" in body["hint"]
    assert body["test"]["ok"] is False
    assert api.get(BASE).json() == [] and not missing.exists()
    kept = api.post(BASE, json={"name": "r1", "path": str(missing), "disabled": True})
    assert kept.status_code == 201 and kept.json()["repository"]["enabled"] is False


def test_bad_input_writes_nothing(api: TestClient, tmp_path: Path) -> None:
    system = api.post(BASE, json={"name": "etc", "path": "/etc"})
    assert system.status_code == 403 and "at '/etc'" in system.json()["detail"]
    inside = api.post(BASE, json={"name": "dev", "path": str(tmp_path / "a\nb")})
    assert inside.status_code == 422 and "path" in inside.json()["detail"]
    bad_name = api.post(BASE, json={"name": "a b", "path": str(tmp_path / "x"), "create": True})
    assert bad_name.status_code == 422 and "name" in bad_name.json()["detail"]
    no_name = api.post(BASE, json={"path": str(tmp_path / "x")})
    assert no_name.status_code == 422 and no_name.json()["detail"].startswith("name:")
    bad_kind = api.post(BASE, json={"name": "x", "kind": "s3"})
    assert bad_kind.status_code == 422
    assert not (tmp_path / "x").exists() and api.get(BASE).json() == []


def test_edit_enable_disable_and_test(api: TestClient, tmp_path: Path) -> None:
    _add(api, "r1", tmp_path / "r1")
    edited = api.patch(f"{BASE}/r1", json={"min_free_bytes": 1024, "warning_percent": 70})
    assert edited.status_code == 200, edited.text
    shown = api.get(f"{BASE}/r1").json()
    assert shown["thresholds"]["min_free_bytes"] == 1024 and shown["thresholds"]["warning"] == 70
    assert api.patch(f"{BASE}/r1", json={"warning_percent": 150}).status_code == 422
    assert api.patch(f"{BASE}/nope", json={"offsite": True}).status_code == 404
    moved = api.patch(f"{BASE}/r1", json={"path": str(tmp_path / "not-there")})
    assert moved.status_code == 422 and moved.json()["detail"].startswith("nothing was changed")

    disabled = api.post(f"{BASE}/r1/disable").json()
    assert (disabled["enabled"], disabled["state"]) == (False, "disabled")
    enabled = api.post(f"{BASE}/r1/enable").json()
    assert enabled["enabled"] is True
    tested = api.post(f"{BASE}/r1/test")
    assert tested.status_code == 200 and tested.json()["ok"] is True
    assert api.post(f"{BASE}/nope/test").status_code == 404


def test_roles_guard_the_changes(api_as: ClientFor, tmp_path: Path) -> None:
    _add(api_as(Role.ADMIN), "r1", tmp_path / "r1")
    reader, operator = api_as(Role.READ), api_as(Role.OPERATE)
    assert reader.get(BASE).status_code == 200
    assert reader.post(f"{BASE}/r1/test").status_code == 403
    assert operator.post(f"{BASE}/r1/test").status_code == 200
    for client in (reader, operator):
        assert client.delete(f"{BASE}/r1").status_code == 403
        assert client.post(f"{BASE}/r1/disable").status_code == 403
        refused = client.post(BASE, json={"name": "r2", "path": str(tmp_path / "r2")})
        assert refused.status_code == 403
    assert not (tmp_path / "r2").exists()


def test_a_cifs_password_never_comes_back(api: TestClient) -> None:
    """Saved disabled (no server answers on the closed port), encrypted in the catalog,
    and absent from every answer."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    password = "pa55-Very-Secret-Word"
    added = api.post(
        BASE,
        json={
            "name": "smb1",
            "kind": "cifs",
            "server": "127.0.0.1",
            "port": port,
            "share": "backups",
            "username": "backup",
            "password": password,
            "disabled": True,
        },
    )
    assert added.status_code == 201, added.text
    assert added.json()["repository"]["has_password"] is True
    answers = [added.text, api.get(BASE).text, api.get(f"{BASE}/smb1").text]
    answers.append(api.post(f"{BASE}/smb1/test").text)
    answers.append(api.get("/api/v1/events", params={"limit": 1000, "level": "debug"}).text)
    for text in answers:
        assert password not in text
    assert "backup" in json.dumps(api.get(f"{BASE}/smb1").json()["options"])


def test_import_queues_a_job_for_a_repository_that_holds_backups(
    api: TestClient, engine: Engine, tmp_path: Path
) -> None:
    old = tmp_path / "old"
    (old / "chains").mkdir(parents=True)
    queued = api.post(f"{BASE}/import", json={"name": "old", "path": str(old)})
    assert queued.status_code == 202, queued.text
    body = queued.json()
    assert body["job"]["kind"] == "repository.import" and body["job"]["state"] == "queued"
    assert body["url"] == f"/api/v1/jobs/{body['job']['id']}"
    assert body["repository"]["name"] == "old"
    assert engine.jobs.get(body["job"]["id"]).actor == "test-admin"

    empty = tmp_path / "empty"
    empty.mkdir()
    refused = api.post(f"{BASE}/import", json={"name": "empty", "path": str(empty)})
    assert refused.status_code == 422
    assert "holds no Sendense repository" in refused.json()["detail"]
    assert [r["name"] for r in api.get(BASE).json()] == ["old"]


# -- where a token may keep a repository ([api] repository_roots) ---------------------


@pytest.mark.parametrize(
    "outside",
    [
        "/etc",  # a directory of the appliance
        "/",
        "ROOT/../elsewhere",  # out of the root by ..
        "ROOT/link-out",  # inside the root, a link to a directory outside
        "ROOT/link-out/repo",  # through that link, a directory to create
        "relative",  # the daemon's working directory, not the caller's
    ],
)
def test_a_token_keeps_no_local_repository_outside_the_repository_roots(
    api: TestClient, engine: Engine, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory,
    outside: str,
) -> None:  # fmt: skip
    """The daemon writes chains/ and .sendense/ where a repository is, as root, and an
    import reads every image under it: an admin token would otherwise reach any
    directory of the appliance. Refused with one sentence (403); nothing is tested,
    created or saved, whether the repository is added, imported or moved."""
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    (tmp_path / "link-out").symlink_to(elsewhere)
    path = outside.replace("ROOT", str(tmp_path))
    _add(api, "kept", tmp_path / "kept")
    before = sorted(elsewhere.rglob("*"))
    for method, url, body in (
        ("POST", BASE, {"name": "r2", "path": path, "create": True}),
        ("POST", BASE, {"name": "r2", "path": path, "create": True, "disabled": True}),
        ("POST", f"{BASE}/import", {"name": "r2", "path": path}),
        ("PATCH", f"{BASE}/kept", {"path": path}),
    ):
        refused = api.request(method, url, json=body)
        assert refused.status_code == 403, refused.text
        detail = refused.json()["detail"]
        assert "an API token may not keep a repository at " in detail
        assert f"only paths inside {tmp_path} are open to tokens" in detail
        assert "[api] repository_roots" in refused.json()["hint"]
    assert [r["name"] for r in api.get(BASE).json()] == ["kept"]
    assert engine.repositories.get("kept").path == str(tmp_path / "kept")
    assert sorted(elsewhere.rglob("*")) == before
    assert not (tmp_path.parent / "elsewhere").exists() and not (tmp_path / "relative").exists()
    assert engine.jobs.list() == []


def test_with_no_repository_roots_a_token_adds_network_repositories_only(
    api: TestClient, engine: Engine, tmp_path: Path
) -> None:
    engine.settings = dataclasses.replace(engine.settings, api=ApiSettings())
    refused = api.post(BASE, json={"name": "r3", "path": str(tmp_path / "r3"), "create": True})
    assert refused.status_code == 403
    assert "no path of the appliance is open to tokens" in refused.json()["detail"]
    assert not (tmp_path / "r3").exists()
    # an NFS repository is mounted under the daemon's own mount root: not bound
    nfs = {"name": "nas", "kind": "nfs", "server": "127.0.0.1", "export": "/b", "port": 9}
    saved = api.post(BASE, json={**nfs, "disabled": True})
    assert saved.status_code == 201, saved.text
    assert saved.json()["repository"]["enabled"] is False


def test_root_on_the_unix_socket_keeps_a_repository_anywhere(
    engine: Engine, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The socket's caller is root on the appliance already: the roots do not bind it."""
    elsewhere = tmp_path_factory.mktemp("socket-repo")
    root = Caller(name="root (unix socket)", role=Role.ADMIN, via="socket")
    app = create_app(engine, authenticate=lambda _request: root)
    with TestClient(app, raise_server_exceptions=False) as client:
        added = client.post(
            BASE, json={"name": "r4", "path": str(elsewhere / "r4"), "create": True}
        )
    assert added.status_code == 201, added.text
    assert (elsewhere / "r4" / "chains").is_dir()


def test_a_token_keeps_no_repository_in_sendenses_own_directories(
    engine_factory: EngineFactory, clock: FixedClock, tmp_path: Path
) -> None:
    """Inside a root, still refused: the state directory (the catalog, the key that
    encrypts CIFS passwords) and the mount root (network repositories, restore
    mounts), wherever it is, are Sendense's own. The engine's own path check
    (RepositoryService.path_error) refuses them to every caller, a token's added or
    imported repository included; nothing is created."""
    elsewhere = tmp_path / "mounts-elsewhere"
    engine = engine_factory(
        clock=clock, api=ApiSettings(repository_roots=(tmp_path,)), mount_root=elsewhere
    )
    state = engine.settings.state_dir
    assert state.is_relative_to(tmp_path)
    caller = Caller(name="test-admin", role=Role.ADMIN)
    app = create_app(engine, authenticate=lambda _request: caller)
    with TestClient(app, raise_server_exceptions=False) as api:
        for path in (state, state / "repo", elsewhere / "nas" / "x"):
            for url, body in (
                (BASE, {"name": "r5", "path": str(path), "create": True}),
                (f"{BASE}/import", {"name": "r5", "path": str(path)}),
            ):
                refused = api.post(url, json=body)
                assert refused.status_code == 422, refused.text
                assert "overlaps Sendense's own directory" in refused.json()["detail"]
        assert api.get(BASE).json() == []
    assert not (state / "repo").exists() and not (elsewhere / "nas").exists()
