"""Verification alerts from the counts and the bad files only say what the whole report
said: on a generated fleet (both catalog backends) with points and copies verified ok,
bad in every way, never verified and overdue, and copies of merged-away points a copied
chain still reads through, ``VerifyService.alerts`` equals the alerts built from
``report()`` and each bad file's places read one by one (as they were before)."""

from __future__ import annotations

import random
from datetime import timedelta
from pathlib import Path
from typing import Any

from engine.catalog.copies import COPY_DONE
from engine.clock import FixedClock
from engine.runtime import Engine
from engine.services.verify import VerifyService, _verify_state
from engine.units import plural
from tests.engine.test_retention_fleet import build_fleet


def reference_alerts(verifier: VerifyService) -> list[dict[str, Any]]:
    report = verifier.report()
    out = []
    if report.overdue:
        out.append(
            {
                "kind": "verification_overdue",
                "subject": "all",
                "level": "warning",
                "message": f"verification overdue: {plural(len(report.overdue), 'file')} "
                f"older than {plural(verifier.reverify_after_days, 'day')} not verified in "
                f"them ({report.sentence()})",
            }
        )
    for entry in report.bad:
        backup = verifier.store.source_backup(entry["backup_id"])
        key = ("copy", entry["copy_id"]) if entry["copy_id"] else ("backup", backup.id)
        good = [
            o.describe()
            for o in verifier._places(backup)
            if o.key != key and _verify_state(o)[0] == "ok"
        ]
        assert entry["good_elsewhere"] == good
        subject = f"copy:{entry['copy_id']}" if entry["copy_id"] else f"backup:{backup.id}"
        out.append(
            {
                "kind": "verification_failed",
                "subject": subject,
                "level": "critical",
                "message": f"{entry['path']} in {entry['repository']} failed verification "
                f"({str(entry['verify_state']).replace('_', ' ')}); "
                + ("still good: " + ", ".join(good) if good else "no good copy is left"),
            }
        )
    return out


def by_subject(alert: dict[str, Any]) -> tuple[str, str]:
    return (alert["kind"], alert["subject"])


def verify_states(engine: Engine, rng: random.Random) -> None:
    now = engine.clock.now()
    states = [None, "ok", "ok", "ok", "mismatch", "missing", "check_failed"]
    for chain in engine.chain_store.list_chains():
        for b in engine.chain_store.backups(chain.id, include_deleted=True):
            state = rng.choice(states)
            at = now - timedelta(days=rng.randint(0, 90)) if state else None
            engine.chain_store.update_backup(b.id, verify_state=state, verified_at=at)
    copies = engine.copy_store.list_copies(limit=1_000_000)
    for c in copies:
        state = rng.choice(states)
        engine.copy_store.update_copy(
            c.id,
            verify_state=state,
            verified_at=now - timedelta(days=rng.randint(0, 90)) if state else None,
            completed_at=now - timedelta(days=rng.randint(0, 120)),
        )
    # copies of merged-away points that a later copy still reads through
    for c in copies[:40]:
        if c.state == COPY_DONE and engine.chain_store.get_backup(c.backup_id).state == "deleted":
            later = engine.copy_store.create_copy(
                backup_id=c.backup_id,
                destination_repository_id=c.destination_repository_id,
                path=f"{c.path}.next",
                size=1024,
                now=now,
                parent_copy_id=c.id,
            )
            engine.copy_store.update_copy(later.id, state=COPY_DONE, completed_at=now)


def test_alerts_from_counts_and_bad_files_equal_the_alerts_of_the_whole_report(
    engine: Engine, tmp_path: Path, clock: FixedClock
) -> None:
    build_fleet(engine, tmp_path, 7)
    verify_states(engine, random.Random(7))
    alerts = engine.verifier.alerts()
    # the same alerts (the scheduler keys them by subject; their order is not kept)
    assert sorted(alerts, key=by_subject) == sorted(
        reference_alerts(engine.verifier), key=by_subject
    )
    kinds = [a["kind"] for a in alerts]
    assert kinds[0] == "verification_overdue"
    assert sum(a["subject"].startswith("copy:") for a in alerts) > 0
    assert sum("still good" in a["message"] for a in alerts) > 0
    assert sum("no good copy is left" in a["message"] for a in alerts) > 0
    report = engine.verifier.report()
    coverage = engine.verifier.coverage()
    assert (coverage.bad, coverage.overdue) == (len(report.bad), len(report.overdue))
    # the report lists every file the counts cover (copies of merged-away points too)
    assert (coverage.files_total, coverage.bytes_total) == (report.files_total, report.bytes_total)
