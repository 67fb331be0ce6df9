"""``/api/v1/repositories`` over the test's real engine: real directories, a real
test-before-save, real removal; a CIFS password goes in and never comes out."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from fastapi.testclient import TestClient

from engine.runtime import Engine
from sendense_api.roles import Role
from tests.api.conftest import ClientFor

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
    assert system.status_code == 422 and "path" in system.json()["detail"]
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
    moved = api.patch(f"{BASE}/r1", json={"path": "/usr"})
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
