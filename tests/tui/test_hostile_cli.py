"""The real ``sendense`` command in subprocesses, on hostile input: a source named as
qcow2 or as a protocol, a bad restore point (refused, or read with ``--force``), a
damaged chain in ``chain show``, a policy source with a format."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.clock import SYSTEM_CLOCK
from engine.config import default_settings
from engine.runtime import Engine
from engine.tools import qemu_img
from engine.tools.blockspec import ImageSpec
from tests.engine.diskgen import MiB, SourceDisk, sha256_of


@pytest.fixture
def state(tmp_path: Path) -> Path:
    state_dir = tmp_path / "state"
    (tmp_path / "repo").mkdir()
    with Engine(default_settings(state_dir)) as engine:
        engine.repository_store.add(
            name="r1", kind="local", path=str(tmp_path / "repo"), now=SYSTEM_CLOCK.now()
        )
    return state_dir


def sendense(state: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SENDENSE_CAPACITY_MIN_FREE": "0", "SENDENSE_CONFIG": ""}
    return subprocess.run(
        [sys.executable, "-m", "sendense_tui.cli", "--state-dir", str(state), *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def one_sentence(stderr: str) -> str:
    """The error line (the hint follows on its own line); never a traceback."""
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert 1 <= len(lines) <= 2, stderr
    return lines[0]


def test_backup_reads_a_source_as_qcow2_only_when_named_so_and_refuses_protocols(
    state: Path, tmp_path: Path
) -> None:
    plain = SourceDisk.create(tmp_path / "plain.raw", 4 * MiB, seed=2)
    image = tmp_path / "vm.qcow2"
    qemu_img.convert(ImageSpec.file(plain.path, "raw"), image)
    done = sendense(
        state, "backup", "run", "--repo", "r1", "--vm", "vm1", "--disk", f"sda:qcow2={image}"
    )
    assert done.returncode == 0, done.stderr
    # read as qcow2: the guest's 4 MiB, not the size of the qcow2 file itself
    assert "full #" in done.stdout and "for a 4.0M disk" in done.stdout

    secret = tmp_path / "secret.txt"
    secret.write_text("not a disk")
    spec = json.dumps({"driver": "raw", "file": {"driver": "file", "filename": str(secret)}})
    refused = sendense(
        state, "backup", "run", "--repo", "r1", "--vm", "vm2", "--disk", f"sda=json:{spec}"
    )
    assert refused.returncode == 2
    assert "qemu would read it as a protocol" in one_sentence(refused.stderr)
    assert not (tmp_path / "repo" / "chains" / "vm2").exists()
    bad_format = sendense(
        state, "backup", "run", "--repo", "r1", "--vm", "vm2", "--disk", "sda:vmdk=/x"
    )
    assert bad_format.returncode == 2 and "NAME:qcow2=SOURCE" in bad_format.stderr


def test_bad_point_is_refused_then_forced_unverified_and_its_chain_shows_damaged(
    state: Path, tmp_path: Path
) -> None:
    disk = SourceDisk.create(tmp_path / "d.raw", 4 * MiB, seed=4)
    args = ("backup", "run", "--repo", "r1", "--vm", "web01", "--disk", f"sda={disk.path}")
    assert sendense(state, *args).returncode == 0
    disk.change([(MiB, 64 * 1024)])
    assert sendense(state, *args).returncode == 0
    with Engine(default_settings(state)) as engine:
        inc = engine.chain_store.list_backups()[-1][0]
        path = tmp_path / "repo" / inc.path
    extents = [
        e for e in qemu_img.map_image(ImageSpec.file(path)) if e.depth == 0 and e.data and e.offset
    ]
    with open(path, "r+b") as f:
        f.seek(int(extents[0].offset or 0) + 10)
        f.write(b"\x00\xff" * 32)
    verified = sendense(state, "verify", "run", "--backup", str(inc.id))
    assert verified.returncode == 1

    shown = sendense(state, "chain", "show")
    assert "[damaged]" in shown.stdout and f"! point #{inc.id} is bad" in shown.stdout

    target = tmp_path / "out.raw"
    refused = sendense(state, "restore", "disk", str(inc.id), str(target))
    assert refused.returncode == 2
    sentence = one_sentence(refused.stderr)
    assert f"restore point {inc.id}" in sentence and "no verified copy" in sentence
    assert "--force" in refused.stderr and not target.exists()

    forced = sendense(state, "restore", "disk", str(inc.id), str(target), "--force")
    assert forced.returncode == 0, forced.stderr
    assert "NOTE:" in forced.stdout and "UNVERIFIED" in forced.stdout
    assert target.stat().st_size == disk.size and sha256_of(target) != disk.sha256()


def test_policy_source_takes_a_format_and_refuses_a_protocol(state: Path, tmp_path: Path) -> None:
    base = ("policy", "add", "p1", "--target", "r1", "--schedule", "0 1 * * *")
    refused = sendense(state, *base, "--source", "vm1:sda=nbd:127.0.0.1:10809")
    assert refused.returncode == 2 and "protocol" in one_sentence(refused.stderr)
    added = sendense(state, *base, "--source", f"vm1:vda:qcow2={tmp_path / 'vm1.qcow2'}")
    assert added.returncode == 0, added.stderr
    shown = sendense(state, "policy", "show", "p1")
    assert f"vm1:vda:qcow2 = {tmp_path / 'vm1.qcow2'}" in shown.stdout
