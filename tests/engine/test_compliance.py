"""3-2-1 and 3-2-1-1-0 per VM from seeded catalog rows (both backends)."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from engine.fsutil import physical_device
from engine.runtime import Engine
from tests.plugins.loopfs import LoopFsFactory


def add_repo(engine: Engine, root: Path, name: str, **kw: Any) -> Any:
    root.mkdir(parents=True, exist_ok=True)
    return engine.repository_store.add(
        name=name, kind="local", path=str(root), now=engine.clock.now(), **kw
    )


def backup(engine: Engine, repo_id: int, vm: str = "web01", **fields: Any) -> int:
    now = engine.clock.now()
    _chain, row = engine.chain_store.add_full(
        repository_id=repo_id,
        vm_name=vm,
        disk_name="sda",
        directory=f"{vm}/sda/{repo_id}",
        now=now,
        backup={"path": f"{vm}/sda/{repo_id}/0.qcow2", "state": "complete", "point_time": now}
        | fields,
    )
    return row.id


def copy_to(engine: Engine, backup_id: int, repo_id: int, **fields: Any) -> int:
    row = engine.copy_store.create_copy(
        backup_id=backup_id,
        destination_repository_id=repo_id,
        path="x.qcow2",
        size=1,
        now=engine.clock.now(),
    )
    engine.copy_store.update_copy(row.id, state="completed", **fields)
    return row.id


def test_one_backup_only_says_to_add_a_copy_and_an_offsite_or_immutable_one(
    engine: Engine, tmp_path: Path
) -> None:
    main = add_repo(engine, tmp_path / "main", "main")
    backup(engine, main.id)
    report = engine.compliance.report("web01")
    assert report.copies == 2 and report.badge == "not 3-2-1"
    assert any("add a copy rule from main to a second repository" in s for s in report.shortfalls)
    assert any("no backup of web01 is offsite" in s for s in report.shortfalls)


def test_two_repositories_on_one_filesystem_count_as_one_device(
    engine: Engine, tmp_path: Path
) -> None:
    main = add_repo(engine, tmp_path / "main", "main")
    other = add_repo(engine, tmp_path / "other", "other", offsite=True)
    copy_to(engine, backup(engine, main.id), other.id)
    report = engine.compliance.report("web01")
    assert report.copies == 3 and report.devices == 1
    assert report.shortfalls == [
        "2 devices: main, other are on one disk; copy to a repository on another disk or server"
    ]


def test_offsite_copy_meets_321_and_a_lock_with_clean_verification_meets_32110(
    engine: Engine, tmp_path: Path
) -> None:
    main = add_repo(engine, tmp_path / "main", "main")
    nas = engine.repository_store.add(
        name="nas",
        kind="nfs",
        path=str(tmp_path / "nas"),
        server="nas1",
        export="/b",
        now=engine.clock.now(),
        offsite=True,
    )
    b = backup(engine, main.id)
    copy_to(engine, b, nas.id)
    report = engine.compliance.report("web01")
    assert report.badge == "3-2-1" and report.meets_321 and not report.meets_32110
    assert report.strict_shortfalls == [
        "1 immutable: no backup of web01 is locked; send one to an immutable repository"
    ]
    engine.lock_store.add(
        repository_id=main.id,
        path="web01/sda/1/0.qcow2",
        expires_at=engine.clock.now() + timedelta(days=30),
        now=engine.clock.now(),
        backup_id=b,
    )
    assert engine.compliance.report("web01").badge == "3-2-1-1-0"
    engine.chain_store.update_backup(b, verify_state="mismatch")
    report = engine.compliance.report("web01")
    assert report.badge == "3-2-1"
    assert "0 errors: 1 verification error on" in report.strict_shortfalls[0]


def test_a_vm_named_only_in_a_policy_reports_no_backup(engine: Engine, tmp_path: Path) -> None:
    from engine.services.policies import PolicySpec

    add_repo(engine, tmp_path / "main", "main")
    engine.policies.add(
        PolicySpec(
            name="db",
            schedule="0 3 * * *",
            target="main",
            sources=PolicySpec.sources_from(["db01:vda=/dev/null"]),
        )
    )
    [report] = engine.compliance.report_all()
    assert report.vm == "db01" and report.copies == 1
    assert report.shortfalls == [
        "db01 has no backup: add a policy that backs it up to a repository"
    ]


@pytest.mark.root
def test_two_loop_filesystems_whose_images_are_on_one_disk_count_as_one_device(
    engine: Engine, tmp_path: Path, loop_fs: LoopFsFactory, tmpfs: Path
) -> None:
    """Two loop-mounted filesystems: two st_dev values, but both image files sit on the
    disk under tmp_path. One disk failing takes both: one device."""
    first, second = loop_fs("ext4", size_mb=16), loop_fs("ext4", size_mb=16)
    assert os.stat(first.mountpoint).st_dev != os.stat(second.mountpoint).st_dev
    a = add_repo(engine, first.mountpoint / "a", "a")
    b = add_repo(engine, second.mountpoint / "b", "b", offsite=True)
    copy_to(engine, backup(engine, a.id), b.id)
    report = engine.compliance.report("web01")
    assert report.devices == 1 and report.badge == "not 3-2-1"
    assert report.shortfalls == [
        "2 devices: a, b are on one disk; copy to a repository on another disk or server"
    ]
    # the disk under the images is the one tmp_path is on
    assert physical_device(first.mountpoint) == physical_device(tmp_path)
    # a repository on memory (tmpfs: no block device under it) is another device
    c = add_repo(engine, tmpfs / "c", "c")
    copy_to(engine, backup(engine, a.id, vm="db01"), b.id)
    copy_to(engine, engine.chain_store.list_backups(vm_name="web01")[0][0].id, c.id)
    report = engine.compliance.report("web01")
    assert report.devices == 2 and report.meets_321, report.shortfalls


def test_a_lock_without_an_offsite_copy_is_not_3_2_1(engine: Engine, tmp_path: Path) -> None:
    """ "✓ 3-2-1" next to "offsite none" was a contradiction: immutable is not offsite."""
    main = add_repo(engine, tmp_path / "main", "main")
    vault = engine.repository_store.add(
        name="vault", kind="nfs", path=str(tmp_path / "v"), server="v1", export="/b",
        now=engine.clock.now(), immutable=True, immutable_days=30,
    )  # fmt: skip
    copy_to(engine, backup(engine, main.id), vault.id)
    report = engine.compliance.report("web01")
    assert report.offsite == [] and report.immutable == ["vault"]
    assert not report.meets_321 and report.badge == "not 3-2-1"
    assert report.shortfalls == [
        "1 offsite: no backup of web01 is offsite; copy to a repository on another site "
        "and mark it offsite"
    ]


def test_reports_for_many_vms_at_once_say_what_each_report_says(
    engine: Engine, tmp_path: Path
) -> None:
    """The Policies screen's set-based reports agree with ``report`` VM by VM, over
    every kind of holding: copies done and not, locks on backups and on copies, locks
    no longer in force, failed verifications, bad and deleted points, no backup."""
    main = add_repo(engine, tmp_path / "main", "main")
    other = add_repo(engine, tmp_path / "other", "other", offsite=True)
    nas = engine.repository_store.add(
        name="nas", kind="nfs", path=str(tmp_path / "nas"), server="nas1", export="/b",
        now=engine.clock.now(), offsite=True,
    )  # fmt: skip
    now = engine.clock.now()

    def lock(repo_id: int, **ids: int) -> Any:
        return engine.lock_store.add(
            repository_id=repo_id, path="x", expires_at=now + timedelta(days=9), now=now, **ids
        )

    b1 = backup(engine, main.id, vm="a01")
    copy_to(engine, b1, nas.id)
    lock(main.id, backup_id=b1)
    b2 = backup(engine, main.id, vm="b02", verify_state="mismatch")
    lock(nas.id, copy_id=copy_to(engine, b2, nas.id, verify_state="missing"))
    b3 = backup(engine, other.id, vm="c03")
    engine.chain_store.update_backup(b3, state="bad")
    pending = engine.copy_store.create_copy(
        backup_id=backup(engine, main.id, vm="d04"),
        destination_repository_id=other.id,
        path="y.qcow2",
        size=1,
        now=now,
    )
    lock(other.id, copy_id=pending.id)  # a copy not done holds nothing
    released = lock(main.id, backup_id=backup(engine, main.id, vm="e05"))
    engine.lock_store.update(released.id, state="released")
    gone = backup(engine, nas.id, vm="f06")
    engine.chain_store.update_backup(gone, state="deleted")
    vms = ["a01", "b02", "c03", "d04", "e05", "f06", "nobackup"]
    together = engine.compliance.reports_for_vms(vms)
    assert sorted(together) == vms
    for vm in vms:
        assert together[vm].as_dict() == engine.compliance.report(vm).as_dict(), vm
    assert together["a01"].badge == "3-2-1-1-0"
    assert together["b02"].verification_errors == 2 and together["b02"].immutable == ["nas"]
    assert together["nobackup"].copies == 1
