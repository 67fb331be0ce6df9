"""Verification on real QCOW2 chains: bit rot, truncation, broken chains, coverage."""

from __future__ import annotations

import hashlib
import os
import time
from datetime import timedelta
from pathlib import Path

import pytest

from engine.clock import FixedClock
from engine.events import Event
from engine.runtime import Engine
from engine.services.verify import hash_file
from tests.engine.copy_worker import MiB, add_repo, make_chain

SQLITE_ONLY = pytest.mark.parametrize("catalog_url", ["sqlite"], indirect=True)


def wait_job(engine: Engine, job_id: int, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = engine.job_store.get(job_id)
        if job.state in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish")


def flip_byte(path: Path, offset: int | None = None) -> None:
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size // 2 if offset is None else offset)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0x01]))


def copied_setup(engine: Engine, tmp_path: Path, incrementals: int = 1):
    src = add_repo(engine, "main", tmp_path / "main")
    dst = add_repo(engine, "offsite", tmp_path / "offsite")
    chain = make_chain(engine, src, size_mb=4, incrementals=incrementals)
    engine.copies.add_rule(name="r", source="main", destination="offsite")
    engine.start()
    job = wait_job(engine, engine.copies.run_rule("r").id)
    assert job.state == "succeeded", job.error
    return src, dst, chain


def test_hash_file_matches_hashlib(tmp_path: Path) -> None:
    path = tmp_path / "f"
    data = os.urandom(3 * MiB + 17)
    path.write_bytes(data)
    digest, read = hash_file(path, read_size=MiB)
    assert digest == hashlib.sha256(data).hexdigest() and read == len(data)


@SQLITE_ONLY
def test_a_new_copy_is_checked_without_a_second_read_and_is_due_for_a_read_back(
    engine: Engine, tmp_path: Path
) -> None:
    """Verify-after-copy takes the checksum of the bytes as they were written and
    reads the copy's metadata; the data is read back from the disk by the scheduled
    verification, for which the copy is due at once, and a byte that rotted after
    the copy landed is found there."""
    _src, dst, chain = copied_setup(engine, tmp_path)
    copies = engine.copies.list_copies()
    assert {c.verify_state for c in copies} == {"ok"}
    assert {c.verified_at for c in copies} == {None}  # not read back from the disk yet
    after_copy = engine.verifier.store.verifications(copy_id=copies[0].id)
    assert [(v.outcome, v.bytes_read) for v in after_copy] == [("ok", 0)]
    assert "read back at the next scheduled verification" in (after_copy[0].detail or "")
    due = {t.copy.id for t in engine.verifier.due_targets() if t.copy is not None}
    assert due == {c.id for c in copies}

    flip_byte(Path(dst.path) / chain.paths[-1])
    job = wait_job(engine, engine.verifier.submit_due().id)
    assert job.state == "failed"
    states = {c.path: c.verify_state for c in engine.copies.list_copies()}
    assert states == {chain.paths[0]: "ok", chain.paths[1]: "mismatch"}
    read_back = engine.verifier.store.verifications(copy_id=copies[0].id)
    assert max(v.bytes_read for v in read_back) > 0


@SQLITE_ONLY
def test_one_flipped_byte_in_a_copy_is_found_and_the_good_copy_named(
    engine: Engine, tmp_path: Path
) -> None:
    _src, dst, chain = copied_setup(engine, tmp_path)
    flip_byte(Path(dst.path) / chain.paths[0])
    critical: list[Event] = []
    engine.bus.subscribe(critical.append, ("verify.",))

    job = wait_job(engine, engine.verifier.submit("all").id)
    assert job.state == "failed"
    assert "web01/sda/chain-1/0000-full.qcow2 in offsite" in job.error
    assert "still good: web01/sda/chain-1/0000-full.qcow2 in main (original)" in job.error
    [event] = critical
    assert event.level == "critical" and event.kind == "verify.mismatch"
    assert event.data["good_elsewhere"] == ["web01/sda/chain-1/0000-full.qcow2 in main (original)"]

    copies = {c.backup_id: c for c in engine.copies.list_copies()}
    assert copies[chain.backup_ids[0]].verify_state == "mismatch"
    assert copies[chain.backup_ids[1]].verify_state == "ok"
    source = engine.copy_store.source_backup(chain.backup_ids[0])
    assert source.verify_state == "ok" and source.state == "complete"

    report = engine.verifier.report()
    [bad] = report.bad
    assert bad["repository"] == "offsite" and bad["good_elsewhere"] == [
        "web01/sda/chain-1/0000-full.qcow2 in main (original)"
    ]
    badges = engine.verifier.badges(chain.chain_id)
    assert badges[chain.backup_ids[0]].bad_copies == ["offsite"]
    assert badges[chain.backup_ids[1]].label == "verified"


@SQLITE_ONLY
def test_rot_in_the_original_marks_the_point_bad_and_names_the_copy(
    engine: Engine, tmp_path: Path
) -> None:
    src, _dst, chain = copied_setup(engine, tmp_path, incrementals=0)
    flip_byte(Path(src.path) / chain.paths[0])
    # only the original is asked for: the copy gets verified to say whether it is good
    results = engine.verifier.verify_targets(
        engine.verifier.targets("backup", chain.backup_ids[0], include_copies=False)
    )
    [result] = results
    assert result.outcome == "mismatch"
    assert result.good_elsewhere == [f"{chain.paths[0]} in offsite (copy 1)"]
    backup = engine.copy_store.source_backup(chain.backup_ids[0])
    assert backup.state == "bad" and backup.verify_state == "mismatch"
    assert engine.verifier.badges(chain.chain_id)[backup.id].good_copies == ["offsite"]


@SQLITE_ONLY
def test_truncation_and_a_missing_base_are_reported(engine: Engine, tmp_path: Path) -> None:
    src, dst, chain = copied_setup(engine, tmp_path, incrementals=1)
    top = Path(dst.path) / chain.paths[1]
    with open(top, "r+b") as f:
        f.truncate(top.stat().st_size - 4096)
    (Path(src.path) / chain.paths[0]).unlink()
    results = {
        (r.target.repository.name, r.target.backup.position): r
        for r in engine.verifier.verify_targets(engine.verifier.targets("chain", chain.chain_id))
    }
    assert results[("offsite", 1)].outcome == "mismatch"
    assert "size" in results[("offsite", 1)].detail
    assert results[("main", 0)].outcome == "missing"
    # the incremental in main is intact, but its base is gone: the chain is broken
    assert results[("main", 1)].outcome == "chain_broken"
    assert results[("offsite", 0)].outcome == "ok"
    assert results[("main", 0)].good_elsewhere == [f"{chain.paths[0]} in offsite (copy 1)"]


def test_coverage_and_overdue_follow_the_clock(engine: Engine, tmp_path: Path) -> None:
    clock: FixedClock = engine.clock  # type: ignore[assignment]
    src = add_repo(engine, "main", tmp_path / "main")
    chain = make_chain(engine, src, size_mb=2, incrementals=1)
    report = engine.verifier.report()
    # hours-old backups: not verified yet, but not overdue either
    assert report.coverage_percent == 0 and report.overdue == []
    engine.verifier.verify_targets(engine.verifier.targets("backup", chain.backup_ids[0]))
    report = engine.verifier.report()
    sizes = [engine.copy_store.source_backup(i).file_size for i in chain.backup_ids]
    assert report.coverage_percent == pytest.approx(100 * sizes[0] / sum(sizes))
    assert "% of bytes verified in the last 30 days" in report.sentence()
    engine.verifier.verify_targets(engine.verifier.targets("all"))
    assert engine.verifier.report().coverage_percent == 100
    assert engine.verifier.alerts() == []
    clock.advance(timedelta(days=31))
    report = engine.verifier.report()
    assert report.coverage_percent == 0 and len(report.overdue) == 2
    [alert] = engine.verifier.alerts()
    assert alert["kind"] == "verification_overdue"
    assert alert["message"].startswith(
        "verification overdue: 2 files older than 30 days not verified in them"
    )
    assert engine.verifier.badges(chain.chain_id)[chain.backup_ids[0]].label == "overdue"


def test_a_backup_is_overdue_only_once_older_than_the_window_and_not_verified_in_it(
    engine: Engine, tmp_path: Path
) -> None:
    """An hourly policy keeps landing new, unverified backups: they must not keep the
    warning up. Overdue means older than the window AND not verified within it."""
    clock: FixedClock = engine.clock  # type: ignore[assignment]
    src = add_repo(engine, "main", tmp_path / "main")
    old = make_chain(engine, src, size_mb=1, incrementals=0, vm="db01")
    clock.advance(timedelta(days=31))  # db01's full is now 31 days old, never verified
    fresh = make_chain(engine, src, size_mb=1, incrementals=0, vm="web01")
    clock.advance(timedelta(minutes=5))  # web01's full: made minutes ago

    overdue = [e["backup_id"] for e in engine.verifier.report().overdue]
    assert overdue == old.backup_ids
    badges = engine.verifier.badges(fresh.chain_id)
    assert badges[fresh.backup_ids[0]].overdue is False
    assert badges[fresh.backup_ids[0]].label == "unverified"
    assert engine.verifier.badges(old.chain_id)[old.backup_ids[0]].overdue is True
    # both are read by the next scheduled verification all the same
    due = {t.backup.id for t in engine.verifier.due_targets()}
    assert due == {old.backup_ids[0], fresh.backup_ids[0]}

    # the old one verified now: nothing overdue, for the next 30 days
    engine.verifier.verify_targets(engine.verifier.targets("backup", old.backup_ids[0]))
    assert engine.verifier.report().overdue == []
    assert engine.verifier.alerts() == []
    clock.advance(timedelta(days=29))
    assert engine.verifier.report().overdue == []
    # a day past the window: db01's verification has aged out, web01 was never read
    clock.advance(timedelta(days=2))
    overdue = sorted(e["backup_id"] for e in engine.verifier.report().overdue)
    assert overdue == sorted(old.backup_ids + fresh.backup_ids)


@SQLITE_ONLY
def test_verifying_an_empty_catalog_finishes_with_nothing_checked(engine: Engine) -> None:
    # A fresh appliance: `sendense verify run` must succeed with zero files, not crash.
    engine.start()
    job = wait_job(engine, engine.verifier.submit("all", None).id)
    assert job.state == "succeeded", job.error
    assert job.result["files"] == 0


def test_a_point_found_bad_raises_its_critical_alert_at_once_and_clears_when_replaced(
    engine: Engine, tmp_path: Path
) -> None:
    """No wait for the scheduler's next evaluation: the run that finds a file bad
    raises its alert (a catalog mark every console and `copy status` sees)."""
    src = add_repo(engine, "main", tmp_path / "main")
    chain = make_chain(engine, src, size_mb=1, incrementals=1)
    alerts: list[Event] = []
    engine.bus.subscribe(alerts.append, ("alert.",))
    assert engine.scheduler.active_alerts() == []
    flip_byte(Path(src.path) / chain.paths[1])
    results = engine.verifier.verify_targets(engine.verifier.targets("all"))
    assert sorted(r.outcome for r in results) == ["mismatch", "ok"]
    [mark] = engine.scheduler.active_alerts()
    assert mark.key == f"alert:verification_failed:backup:{chain.backup_ids[1]}"
    assert mark.level == "critical"
    assert mark.message == (
        f"{chain.paths[1]} in main failed verification (mismatch); no good copy is left"
    )
    assert [(e.kind, e.level) for e in alerts] == [("alert.verification_failed", "critical")]
    # the operator put the good bytes back: the run that reads it well clears the alert
    flip_byte(Path(src.path) / chain.paths[1])
    engine.verifier.verify_targets(engine.verifier.targets("backup", chain.backup_ids[1]))
    assert engine.scheduler.active_alerts() == []
    assert [e.kind for e in alerts][-1] == "alert.verification_failed.cleared"


def _counted_as_report_lists(engine: Engine) -> None:
    report, coverage = engine.verifier.report(), engine.verifier.coverage()
    assert (
        coverage.files_total,
        coverage.bytes_total,
        coverage.files_verified,
        coverage.bytes_verified,
        coverage.bad,
        coverage.overdue,
    ) == (
        report.files_total,
        report.bytes_total,
        report.files_verified,
        report.bytes_verified,
        len(report.bad),
        len(report.overdue),
    )
    assert coverage.coverage_percent == report.coverage_percent


def test_coverage_counted_in_sql_says_what_the_report_says(engine: Engine, tmp_path: Path) -> None:
    """The Dashboard's coverage line (counted in SQL) agrees with the full report over
    backups and copies, a copy gone bad, verifications ageing out and new points."""
    clock: FixedClock = engine.clock  # type: ignore[assignment]
    _src, dst, chain = copied_setup(engine, tmp_path)
    _counted_as_report_lists(engine)
    engine.verifier.verify_targets(engine.verifier.targets("backup", chain.backup_ids[0]))
    _counted_as_report_lists(engine)
    [copy] = [c for c in engine.copy_store.list_copies() if c.backup_id == chain.backup_ids[1]]
    flip_byte(Path(dst.path) / copy.path)
    engine.verifier.verify_targets(engine.verifier.targets("all"))
    _counted_as_report_lists(engine)
    assert engine.verifier.coverage().bad == 1
    clock.advance(timedelta(days=31))
    make_chain(engine, _src, size_mb=1, incrementals=0, vm="db01")
    _counted_as_report_lists(engine)
    assert engine.verifier.coverage().overdue > 0


@SQLITE_ONLY
def test_a_stop_during_a_mass_verify_ends_it_at_the_next_file(engine: Engine) -> None:
    # A fleet whose files are all gone (a catalog-only bench fleet, a lost disk): every
    # file verifies "missing" at once. Asked to stop, the run ends at the next file
    # instead of first naming good copies of (and writing an event for) every bad
    # file found so far: that made a stopping daemon take minutes.
    from bench.seed import Fleet, seed

    seed(engine, Fleet(repositories=1, vms=4, disks=2, points=5, jobs=0, events=0), say=False)
    targets = engine.verifier.targets("all", include_copies=True)
    assert len(targets) == 40
    published: list[Event] = []
    engine.bus.subscribe(published.append, kinds=("verify.",))
    asked = [0]

    def should_stop() -> bool:
        asked[0] += 1
        return asked[0] > 12  # SIGTERM arrives a dozen files in

    results = engine.verifier.verify_targets(targets, should_stop=should_stop)
    assert 0 < len(results) < len(targets)
    assert all(r.outcome == "missing" for r in results)
    assert published == [], "no file after the stop was read, named or announced"
    # what was read is recorded: the report lists those files as bad
    bad = {entry["backup_id"] for entry in engine.verifier.report().bad}
    assert bad == {r.target.backup.id for r in results}
    # without a stop every bad file is announced with what is still good
    rest = [t for t in targets if t.backup.id not in bad]
    engine.verifier.verify_targets(rest)
    assert len([e for e in published if e.kind == "verify.missing"]) == len(rest)
