"""The benchmarks' fleet catalog: the sizes asked for, the same rows every time."""

from __future__ import annotations

from pathlib import Path

from bench.seed import Fleet, open_engine, seed


def _fingerprint(state_dir: Path) -> list[tuple[str, str, int, str]]:
    engine = open_engine(state_dir)
    try:
        return [
            (chain.vm_name, chain.disk_name, backup.position, backup.point_time.isoformat())
            for backup, chain in engine.chain_store.list_backups()
        ]
    finally:
        engine.close()


def test_a_seeded_fleet_has_the_asked_sizes_and_is_the_same_every_time(tmp_path: Path) -> None:
    fleet = Fleet(repositories=3, vms=4, disks=2, points=5, jobs=7, events=11)
    for name in ("one", "two"):
        engine = open_engine(tmp_path / name)
        try:
            seed(engine, fleet, say=False)
            assert len(engine.repository_store.list()) == 3
            assert len(engine.job_store.list(limit=100)) == 7
            assert len(engine.audit.query(source="backup", limit=100)) == 11
        finally:
            engine.close()
    first = _fingerprint(tmp_path / "one")
    assert len(first) == fleet.restore_points == 40
    assert first == _fingerprint(tmp_path / "two")
