"""File restore through the Engine: the extraction job, cleanup at close and at open."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from engine.config import JobSettings
from tests.engine.fsimages import Part, backup_chain, build_disk, loops_on, mounts_under
from tests.plugins.common import EngineFactory

pytestmark = pytest.mark.root


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    files = {"docs/report.txt": b"quarterly\n" * 1000, "docs/sub/x": b"x"}
    return build_disk(tmp_path / "disk.raw", [Part("ext4", 16, files)])


def test_extract_as_a_job_and_close_unmounts(
    engine_factory: EngineFactory, tmp_path: Path, raw: Path
) -> None:
    engine = engine_factory(start=True, jobs=JobSettings(heartbeat_seconds=0.2))
    (tmp_path / "repo").mkdir()
    point = backup_chain(engine.catalog, tmp_path / "repo", [raw], now=engine.clock.now()).full_id
    view = engine.file_restore.mount(point)
    job = engine.jobs.submit(
        "restore.files",
        "restore docs",
        {"mount_id": view.id, "paths": ["p1/docs"], "destination": str(tmp_path / "out")},
    )
    deadline = time.monotonic() + 30
    while (state := engine.job_store.get(job.id).state) not in ("succeeded", "failed"):
        assert time.monotonic() < deadline, state
        time.sleep(0.1)
    done = engine.job_store.get(job.id)
    assert done.state == "succeeded", done.error
    assert done.result is not None and done.result["files"] == 2
    assert done.bytes_done == done.bytes_total == 10001
    assert (tmp_path / "out" / "docs" / "report.txt").read_bytes() == b"quarterly\n" * 1000

    engine.close()
    assert mounts_under(tmp_path) == []
    assert loops_on(tmp_path) == []


def test_open_cleans_up_what_a_crashed_engine_left(
    engine_factory: EngineFactory, tmp_path: Path, raw: Path
) -> None:
    first = engine_factory()
    (tmp_path / "repo").mkdir()
    point = backup_chain(first.catalog, tmp_path / "repo", [raw], now=first.clock.now()).full_id
    first.file_restore.mount(point)
    export = first.exports.start(point, name="left")
    first.file_restore.abandon()
    first.exports.abandon()
    assert mounts_under(tmp_path) != []

    second = engine_factory(state_dir=first.settings.state_dir)
    assert second.file_restore.list_mounts() == []
    assert second.exports.list() == []
    assert mounts_under(tmp_path) == []
    assert loops_on(tmp_path) == []
    assert export.pid is not None and not os.path.exists(f"/proc/{export.pid}/cmdline")


@pytest.mark.parametrize(
    ("paths", "destination", "says"),
    [
        (["p1/../../etc/shadow"], "out", "goes up"),
        (["p1/docs/missing.txt"], "out", "does not exist"),
        ([], "out", "nothing selected"),
        (["p1/docs"], None, "must be an absolute path"),
    ],
)
def test_submit_extract_refuses_a_bad_selection_before_any_job(
    engine_factory: EngineFactory,
    tmp_path: Path,
    raw: Path,
    paths: list[str],
    destination: str | None,
    says: str,
) -> None:
    """The console and the CLI queue extraction as a job: a path out of the mount, a
    missing one, none at all or a relative destination is refused with its sentence
    when asked, and no job (nor destination folder) is left behind."""
    from engine.errors import SendenseError

    engine = engine_factory()
    (tmp_path / "repo").mkdir()
    point = backup_chain(engine.catalog, tmp_path / "repo", [raw], now=engine.clock.now()).full_id
    view = engine.file_restore.mount(point)
    target = str(tmp_path / destination) if destination else "relative/out"
    with pytest.raises(SendenseError) as refused:
        engine.file_restore.submit_extract(view.id, paths, target, actor="test")
    assert says in str(refused.value)
    assert engine.jobs.list(kind="restore.files") == []
    assert not (tmp_path / "out").exists()
    engine.close()


def test_submit_extract_queues_a_cancellable_job_with_its_size(
    engine_factory: EngineFactory, tmp_path: Path, raw: Path
) -> None:
    """The job carries the selection's size (Jobs shows its progress) and the
    destination it checked; cancelled before it runs, nothing is restored."""
    engine = engine_factory()
    (tmp_path / "repo").mkdir()
    point = backup_chain(engine.catalog, tmp_path / "repo", [raw], now=engine.clock.now()).full_id
    view = engine.file_restore.mount(point)
    job = engine.file_restore.submit_extract(
        view.id, ["p1/docs"], str(tmp_path / "out"), actor="console"
    )
    assert (job.kind, job.state, job.bytes_total) == ("restore.files", "queued", 10001)
    assert job.params["destination"] == str(tmp_path / "out")
    assert engine.jobs.cancel(job.id, actor="console").state == "cancelled"
    engine.jobs.dispatch_once()
    assert list((tmp_path / "out").iterdir()) == []
    engine.close()
