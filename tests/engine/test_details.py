"""engine.details: what a detail view shows of one job or one restore point, on
SQLite and on MariaDB."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from engine.clock import FixedClock
from engine.services.details import split_error
from tests.engine.fsimages import backup_chain
from tests.plugins.common import EngineFactory


def test_split_error_keeps_the_sentence_every_hint_and_the_rest() -> None:
    error = (
        "copy to offsite-nfs failed: no space left\n"
        "  -> free 9G on offsite-nfs\n"
        "qemu-img: write failed at offset 4096\n"
        "  -> or lower the rule's latest count"
    )
    assert split_error(error) == (
        "copy to offsite-nfs failed: no space left",
        ["free 9G on offsite-nfs", "or lower the rule's latest count"],
        ["qemu-img: write failed at offset 4096"],
    )
    assert split_error(None) == (None, [], [])
    assert split_error("\n  \n") == (None, [], [])


def test_a_jobs_details_carry_its_error_and_only_its_own_log(
    engine_factory: EngineFactory,
) -> None:
    clock = FixedClock()
    engine = engine_factory(clock=clock)
    store, now = engine.job_store, clock.now()
    repo = engine.repository_store.add(name="usb", kind="local", path="/srv/usb", now=now)
    mine = store.create("copy", "copy db01", now=now, repository_id=repo.id)
    other = store.create("copy", "copy web01", now=now)
    store.claim(mine.id, "me", now, timedelta(minutes=5))
    store.finish(mine.id, "me", "failed", now, error="no space left\n  -> free some space")
    for n, job in enumerate((mine, other, mine)):
        engine.audit.append(
            at=now + timedelta(seconds=n),
            level="info",
            source="copy",
            kind="job.note",
            message=f"line {n} of job {job.id}",
            job_id=job.id,
        )
    details = engine.details.job(mine.id)
    assert details.job.id == mine.id and details.job.state == "failed"
    assert details.sentence == "no space left" and details.hints == ["free some space"]
    assert [e.message for e in details.log] == [
        f"line 0 of job {mine.id}",
        f"line 2 of job {mine.id}",
    ]
    assert details.repository == "usb"
    assert engine.details.job(other.id).sentence is None
    assert engine.details.job(other.id).repository is None


def test_a_points_details_list_every_file_it_reads_its_copies_and_their_verifications(
    engine_factory: EngineFactory, tmp_path: Path
) -> None:
    clock = FixedClock()
    engine = engine_factory(clock=clock)
    raw = []
    for n in range(3):
        path = tmp_path / f"v{n}.raw"
        path.write_bytes(bytes([n + 1]) * (1 << 20))
        raw.append(path)
    repo_dir = tmp_path / "repo"
    points = backup_chain(engine.catalog, repo_dir, raw, now=clock.now())
    newest = points.incremental_ids[-1]
    other = tmp_path / "usb"
    other.mkdir()
    usb = engine.repository_store.add(name="usb", kind="local", path=str(other), now=clock.now())
    backup = engine.chain_store.get_backup(newest)
    copy = engine.copy_store.create_copy(
        backup_id=newest,
        destination_repository_id=usb.id,
        path=backup.path,
        size=backup.file_size,
        now=clock.now(),
    )
    store = engine.copy_store
    store.add_verification(
        outcome="ok",
        started_at=clock.now() - timedelta(days=2),
        finished_at=clock.now() - timedelta(days=2),
        backup_id=newest,
        bytes_read=1 << 20,
    )
    store.add_verification(
        outcome="mismatch",
        started_at=clock.now() - timedelta(hours=1),
        finished_at=clock.now() - timedelta(hours=1),
        copy_id=copy.id,
        detail="sha256 differs",
    )
    # another point's verification is not this point's history
    store.add_verification(
        outcome="ok",
        started_at=clock.now(),
        finished_at=clock.now(),
        backup_id=points.full_id,
    )

    details = engine.details.point(newest)
    roles = [(f.role, f.backup_id, f.repository) for f in details.files]
    assert roles == [
        ("point", newest, "restore-tests"),
        ("reads through", points.incremental_ids[0], "restore-tests"),
        ("reads through", points.full_id, "restore-tests"),
        ("copy", newest, "usb"),
    ]
    # the source files as absolute paths of real files under the repository
    for f in details.files[:3]:
        assert Path(f.path).is_file() and Path(f.path).is_relative_to(repo_dir)
    assert details.files[3].path == str(other / backup.path)
    assert [(v.what, v.outcome) for v in details.verifications] == [
        ("copy in usb", "mismatch"),
        ("point", "ok"),
    ]
    assert details.verifications[0].detail == "sha256 differs"


def test_a_catalog_path_that_leaves_its_repository_is_shown_not_resolved(
    engine_factory: EngineFactory, tmp_path: Path
) -> None:
    clock = FixedClock()
    engine = engine_factory(clock=clock)
    raw = tmp_path / "v.raw"
    raw.write_bytes(b"\1" * (1 << 20))
    points = backup_chain(engine.catalog, tmp_path / "repo", [raw], now=clock.now())
    engine.chain_store.update_backup(points.full_id, path="../../../etc/shadow")
    details = engine.details.point(points.full_id)
    assert [f.path for f in details.files] == ["../../../etc/shadow"]
