"""Paged listings (issue 16): restore points, chains, jobs and events page by keyset
cursors on SQLite and MariaDB; rows arriving between two pages never make a page
lose or repeat a row; a cursor that is not one is refused with one sentence (exit 2);
``--all --json`` streams one parseable object a line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from bench.seed import START, Fleet, seed
from engine.paging import encode_cursor
from engine.runtime import Engine
from tests.plugins.common import EngineFactory

ROOT = Path(__file__).resolve().parents[2]
FLEET = Fleet(repositories=2, vms=4, disks=2, points=5, jobs=23, events=31)


@pytest.fixture
def fleet(engine_factory: EngineFactory) -> Engine:
    engine = engine_factory(owner="listings")
    seed(engine, FLEET, say=False)
    return engine


def _add_chain(engine: Engine, vm: str, disk: str, points: int = 3) -> list[int]:
    repo = engine.repository_store.list()[0]
    directory = f"chains/{vm}/{disk}/c1"
    _chain, rows = engine.chain_store.import_chain(
        repository_id=repo.id,
        vm_name=vm,
        disk_name=disk,
        directory=directory,
        created_at=START,
        points=[
            {
                "kind": "full" if position == 0 else "incremental",
                "position": position,
                "path": f"{directory}/{position:04d}.qcow2",
                "state": "complete",
                "point_time": START + timedelta(days=position),
                "created_at": START + timedelta(days=position),
                "virtual_size": 1024**2,
                "file_size": 1024**2,
            }
            for position in range(points)
        ],
    )
    return [b.id for b in rows]


def test_point_pages_lose_and_repeat_nothing_while_chains_arrive(fleet: Engine) -> None:
    before = [b.id for b, _c in fleet.chain_store.list_backups()]
    assert len(before) == FLEET.restore_points
    seen: list[int] = []
    keys: list[tuple[str, str, int, int]] = []
    ahead: list[int] = []
    cursor = None
    # names between the seeded ones, lower case and digits: both backends sort them alike
    arrivals = iter(["vm0000x", "vm0001x", "vm0002x", "vm0003x", "vm0000y", "vm9999"])
    while True:
        page = fleet.listings.points(after=cursor, limit=7)
        seen.extend(b.id for b, _c in page.items)
        keys.extend((c.vm_name, c.disk_name, c.id, b.position) for b, c in page.items)
        if page.next_cursor is None:
            break
        following = [
            b
            for b, c in fleet.chain_store.list_backups()
            if (c.vm_name, c.disk_name, c.id, b.position) > keys[-1]
        ]
        assert page.more == len(following), "the 'more' count is what the next pages hold"
        cursor = page.next_cursor
        vm = next(arrivals, None)
        if vm is not None:  # a new chain lands before or after the cursor
            ids = _add_chain(fleet, vm, "sda")
            if (vm, "sda") > keys[-1][:2]:
                ahead.extend(ids)
    assert len(seen) == len(set(seen)), "no point is listed twice"
    assert set(before) <= set(seen), "no point that was there is lost"
    assert set(ahead) <= set(seen), "points that arrived ahead of the cursor are listed"
    assert any(vm == "vm9999" for vm, *_ in keys)
    assert keys == sorted(keys, key=lambda k: (k[0], k[1], k[2], k[3])), "listing order"


def test_chain_pages_carry_their_points_and_filters(fleet: Engine) -> None:
    pages = []
    cursor = None
    while True:
        page = fleet.listings.chains(after=cursor, limit=3)
        pages.append(page)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    chains = [v for p in pages for v in p.items]
    assert len(chains) == FLEET.vms * FLEET.disks
    assert [v.chain.id for v in chains] == [c.id for c in fleet.chain_store.list_chains()]
    assert all(len(v.points) == FLEET.points for v in chains)
    assert pages[0].more == len(chains) - 3
    one = fleet.listings.chains(chain_id=chains[5].chain.id, limit=1)
    assert [v.chain.id for v in one.items] == [chains[5].chain.id] and one.next_cursor is None
    # the streamed listing reads the same chains, a few at a time
    assert [v.chain.id for v in fleet.listings.all_chains()] == [v.chain.id for v in chains]


@pytest.mark.parametrize("listing", ["jobs", "events"])
def test_newest_first_pages_lose_and_repeat_nothing_while_rows_arrive(
    fleet: Engine, listing: str
) -> None:
    read: Callable[..., Any] = getattr(fleet.listings, listing)
    existing = {row.id for row in read(limit=100_000).items}
    seen: list[int] = []
    cursor = None
    while True:
        page = read(after=cursor, limit=4)
        ids = [row.id for row in page.items]
        assert ids == sorted(ids, reverse=True)
        seen.extend(ids)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
        # new rows arrive on top between two pages
        if listing == "jobs":
            fleet.job_store.create("backup", "arrived", now=START)
        else:
            fleet.audit.append(at=START, level="info", source="backup", kind="x", message="new")
    assert len(seen) == len(set(seen))
    assert set(seen) == existing, "exactly the rows that were there when paging began"


def test_a_cursor_from_another_listing_or_edited_is_refused(fleet: Engine) -> None:
    from engine.errors import ValidationError

    for bad in (
        "bogus",
        "",
        encode_cursor("jobs", [5]),  # a jobs cursor given to the points listing
        encode_cursor("points", ["vm", "sda", "1", 2]),  # a key part of the wrong type
        encode_cursor("points", ["vm", "sda", 1, 2**70]),
        "W" * 5000,
        "éé",
    ):
        with pytest.raises(ValidationError, match="is not a cursor of this listing"):
            fleet.listings.points(after=bad, limit=5)
    with pytest.raises(ValidationError):
        fleet.listings.events(after=encode_cursor("events", [True]), limit=5)


def _cli(fleet: Engine, *args: str) -> subprocess.CompletedProcess[str]:
    settings = fleet.settings
    env = {key: value for key, value in os.environ.items() if key != "SENDENSE_DB_URL"}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "sendense_tui.cli",
            "--state-dir",
            str(settings.state_dir),
            "--db-url",
            settings.db_url,
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
    )


def test_cli_pages_say_what_follows_and_stream_everything(fleet: Engine) -> None:
    first = _cli(fleet, "backup", "list", "--limit", "5")
    assert first.returncode == 0, first.stderr
    last = first.stdout.strip().splitlines()[-1]
    assert last.startswith(f"{FLEET.restore_points - 5} more: --after ")
    cursor = last.rsplit(" ", 1)[1]
    second = _cli(fleet, "backup", "list", "--limit", "5", "--after", cursor, "--json")
    assert second.returncode == 0, second.stderr
    ids = [p["id"] for p in json.loads(second.stdout)]
    assert ids == [b.id for b, _c in fleet.chain_store.list_backups()][5:10]
    assert "more: --after" in second.stderr  # stdout stays one JSON document

    for argv, key, total in (
        (["backup", "list"], "id", FLEET.restore_points),
        (["chain", "show"], "chain_id", FLEET.vms * FLEET.disks),
        (["jobs", "list"], "id", FLEET.jobs),
    ):
        streamed = _cli(fleet, *argv, "--all", "--json")
        assert streamed.returncode == 0, streamed.stderr
        rows = [json.loads(line) for line in streamed.stdout.splitlines()]
        assert len(rows) == total and len({r[key] for r in rows}) == total
    events = _cli(fleet, "events", "--all", "--json", "--source", "backup")
    assert len([json.loads(line) for line in events.stdout.splitlines()]) == FLEET.events


@pytest.mark.parametrize(
    ("argv", "sentence"),
    [
        (["jobs", "list", "--after", "bogus"], "'bogus' is not a cursor of this listing"),
        (["events", "--after", encode_cursor("jobs", [3])], "is not a cursor of this listing"),
        (["chain", "show", "--all", "--limit", "3"], "--all lists everything"),
    ],
)
def test_cli_refuses_a_bogus_cursor_with_one_sentence(
    fleet: Engine, argv: list[str], sentence: str
) -> None:
    refused = _cli(fleet, *argv)
    assert refused.returncode == 2
    assert sentence in refused.stderr
    assert "Traceback" not in refused.stderr and refused.stdout == ""


@pytest.fixture
def small_cap(monkeypatch: pytest.MonkeyPatch) -> int:
    """MORE_MAX made small, so that the fleet's few dozen rows cross it (the API's
    documentation, which states the real one, is imported before)."""
    import sendense_api.routes._common  # noqa: F401
    from engine import paging

    monkeypatch.setattr(paging, "MORE_MAX", 6)
    return 6


def test_what_follows_a_page_is_counted_up_to_a_cap(fleet: Engine, small_cap: int) -> None:
    """Deep in a large listing the count stops ("more than N"); near its end it is exact
    again, on every listing and both backends."""
    listings = fleet.listings
    totals = {
        "points": FLEET.restore_points,
        "chains": FLEET.vms * FLEET.disks,
        "jobs": FLEET.jobs,
        "events": len(listings.events(limit=100_000).items),
    }
    for name, total in totals.items():
        read: Callable[..., Any] = getattr(listings, name)
        deep = read(limit=1)
        assert deep.more == small_cap + 1 and not deep.more_counted, name
        assert deep.more_text() == f"more than {small_cap}", name
        near = read(limit=total - small_cap)
        assert near.more == small_cap and near.more_counted, name
        assert near.more_text() == str(small_cap), name
        # the cursor of a capped page still reads every row after it
        rest = read(after=deep.next_cursor, limit=100_000)
        assert len(rest.items) == total - 1 and rest.next_cursor is None, name


def test_cli_and_api_say_a_capped_count_alike(
    fleet: Engine, small_cap: int, capsys: pytest.CaptureFixture[str]
) -> None:
    from fastapi.testclient import TestClient

    from sendense_api.app import create_app
    from sendense_api.roles import Caller, Role
    from sendense_tui.cli import main

    where = ["--state-dir", str(fleet.settings.state_dir), "--db-url", fleet.settings.db_url]
    assert main([*where, "backup", "list", "--limit", "3"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith(f"more than {small_cap} more: --after ")
    assert main([*where, "jobs", "list", "--limit", str(FLEET.jobs - 2), "--json"]) == 0
    assert capsys.readouterr().err.startswith("2 more: --after ")

    caller = Caller("test", Role.READ)
    with TestClient(create_app(fleet, authenticate=lambda _request: caller)) as client:
        capped = client.get("/api/v1/restore-points", params={"limit": 3})
        assert capped.status_code == 200 and len(capped.json()) == 3
        assert capped.headers["X-More"] == f"{small_cap}+"
        cursor = capped.headers["X-Next-Cursor"]
        exact = client.get("/api/v1/jobs", params={"limit": FLEET.jobs - 2})
        assert exact.headers["X-More"] == "2"
        rest = client.get("/api/v1/restore-points", params={"after": cursor, "limit": 1000})
        assert len(rest.json()) == FLEET.restore_points - 3
        assert "X-More" not in rest.headers and "X-Next-Cursor" not in rest.headers


def test_api_pages_are_the_bytes_fastapi_would_write(fleet: Engine) -> None:
    """The pages skip FastAPI's encoder walk (sendense_api.routes._common.ShapedJSON)
    and still send exactly what it made of the same shapes: times, nested points and
    their locks, tracking data."""
    from fastapi.encoders import jsonable_encoder
    from fastapi.testclient import TestClient

    from engine.shapes import chain_dict, event_dict, job_dict, point_dict
    from sendense_api.app import create_app
    from sendense_api.roles import Caller, Role

    listings = fleet.listings
    expected = {
        "/api/v1/chains": [chain_dict(v) for v in listings.chains(limit=3).items],
        "/api/v1/restore-points": [point_dict(b, c) for b, c in listings.points(limit=3).items],
        "/api/v1/jobs": [job_dict(j) for j in listings.jobs(limit=3).items],
        "/api/v1/events": [event_dict(e) for e in reversed(listings.events(limit=3).items)],
    }
    caller = Caller("test", Role.READ)
    with TestClient(create_app(fleet, authenticate=lambda _request: caller)) as client:
        for path, rows in expected.items():
            got = client.get(path, params={"limit": 3})
            assert got.status_code == 200 and got.headers["content-type"] == "application/json"
            written = json.dumps(jsonable_encoder(rows), ensure_ascii=False, separators=(",", ":"))
            assert got.content == written.encode(), path
