"""NBD exports over HTTP: an operator serves a real point (a keeper process and
qemu-nbd, read back with qemu-img), lists and stops it; bad requests get one sentence."""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Iterator

import pytest

from engine.runtime import Engine
from sendense_api.roles import Role
from tests.api.conftest import ClientFor
from tests.api.resources import World, make_world, problem

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    for world in make_world(tmp_path_factory):
        try:
            yield world
        finally:
            world.engine.exports.stop_all(include_persistent=True, mine_only=False)


@pytest.fixture
def engine(world: World) -> Engine:
    return world.engine


def test_an_operator_serves_a_point_and_stops_it(world: World, api_as: ClientFor) -> None:
    point = world.points["web01"][-1]  # the newest point: the source disk as it is now
    started = api_as(Role.OPERATE).post("/api/v1/exports", json={"point": point, "name": "web"})
    assert started.status_code == 201, started.text
    export = started.json()
    assert (export["name"], export["state"], export["backup_id"]) == ("web", "running", point)
    assert export["connect"] and export["uri"].startswith("nbd+unix://")

    raw = world.root / "served.raw"
    subprocess.run(
        ["qemu-img", "convert", "-f", "raw", "-O", "raw", export["uri"], str(raw)],
        check=True,
        timeout=60,
        capture_output=True,
    )
    assert hashlib.sha256(raw.read_bytes()).hexdigest() == world.disks["web01"].sha256()

    listed = api_as(Role.READ).get("/api/v1/exports").json()
    assert [e["name"] for e in listed] == ["web"]
    assert api_as(Role.READ).get("/api/v1/exports/web").json()["id"] == export["id"]
    assert "operate" in problem(api_as(Role.READ).delete("/api/v1/exports/web"), 403)
    stopped = api_as(Role.OPERATE).delete(f"/api/v1/exports/%23{export['id']}")
    assert stopped.status_code == 200, stopped.text
    assert stopped.json()["state"] != "running"
    assert api_as(Role.READ).get("/api/v1/exports").json() == []


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ({"point": 999999}, 404, "999999"),
        ({"point": 1, "port": 0}, 422, "port"),
        ({"point": 1, "port": 10809, "host": "0.0.0.0"}, 422, "TLS"),
        ({"point": 1, "idle_minutes": -1}, 422, "idle_minutes"),
        ({"point": 1, "name": "a/b"}, 422, "name"),
    ],
)
def test_bad_exports_are_refused(
    world: World, api_as: ClientFor, body: dict[str, object], status: int, says: str
) -> None:
    assert says in problem(api_as(Role.OPERATE).post("/api/v1/exports", json=body), status)
    assert api_as(Role.READ).get("/api/v1/exports").json() == []


def test_reader_cannot_start_and_missing_exports(world: World, api_as: ClientFor) -> None:
    assert "operate" in problem(api_as(Role.READ).post("/api/v1/exports", json={"point": 1}), 403)
    problem(api_as(Role.READ).get("/api/v1/exports/none"), 404)
    problem(api_as(Role.OPERATE).delete("/api/v1/exports/none"), 404)
