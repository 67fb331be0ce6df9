"""The guard reads the headers of a chain side by side; what it says is still what a
reading in catalog order (full first) would say: the lowest layer that is wrong."""

from __future__ import annotations

import itertools
import subprocess
from pathlib import Path

import pytest

from engine.catalog.models import Repository
from engine.clock import FixedClock
from engine.events import Event, EventBus
from engine.services.images import ImageGuard, ImageRefused, Layer, PointUnreadable


def qemu_img(*args: str, cwd: Path) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True, cwd=cwd)


@pytest.fixture
def chain(tmp_path: Path) -> tuple[Repository, list[Layer]]:
    """A full and three incrementals in repo/vm/sda, each backed by the one below by
    its plain file name, as the engine writes them."""
    directory = tmp_path / "repo" / "vm" / "sda"
    directory.mkdir(parents=True)
    names = [f"{i:04d}.qcow2" for i in range(4)]
    qemu_img("create", "-q", "-f", "qcow2", names[0], "4M", cwd=directory)
    for below, name in itertools.pairwise(names):
        qemu_img("create", "-q", "-f", "qcow2", "-b", below, "-F", "qcow2", name, cwd=directory)
    repo = Repository(id=1, name="r1", kind="local", path=str(tmp_path / "repo"))
    return repo, [Layer(i + 1, f"vm/sda/{n}") for i, n in enumerate(names)]


def rewrite_backing(repo: Repository, layer: Layer, backing: str) -> None:
    """What a bad script or an attacker does to a point after it was recorded."""
    path = Path(repo.path) / layer.path
    qemu_img("rebase", "-u", "-f", "qcow2", "-b", backing, "-F", "raw", path.name, cwd=path.parent)


def guard_and_events() -> tuple[ImageGuard, list[Event]]:
    bus = EventBus(None, FixedClock())
    heard: list[Event] = []
    bus.subscribe(heard.append)
    return ImageGuard(bus), heard


def test_a_good_chain_is_spelled_out_full_first(chain: tuple[Repository, list[Layer]]) -> None:
    repo, layers = chain
    guard, heard = guard_and_events()
    spec = guard.chain_spec(repo, "vm/sda", layers)
    assert [Path(s.filename or "").name for s in spec.layers()] == [
        "0003.qcow2",
        "0002.qcow2",
        "0001.qcow2",
        "0000.qcow2",
    ]
    assert heard == []


def test_two_rewritten_headers_the_lower_one_is_refused_and_announced_once(
    chain: tuple[Repository, list[Layer]],
) -> None:
    repo, layers = chain
    rewrite_backing(repo, layers[3], "/etc/shadow")
    rewrite_backing(repo, layers[1], "/etc/passwd")
    guard, heard = guard_and_events()
    with pytest.raises(ImageRefused) as refused:
        guard.chain_spec(repo, "vm/sda", layers)
    assert refused.value.path == "vm/sda/0001.qcow2"
    assert "/etc/passwd" in refused.value.message
    assert [(e.kind, e.data["path"]) for e in heard] == [("image.refused", "vm/sda/0001.qcow2")]


def test_a_missing_layer_below_a_rewritten_one_is_what_is_said(
    chain: tuple[Repository, list[Layer]],
) -> None:
    repo, layers = chain
    rewrite_backing(repo, layers[3], "/etc/shadow")
    (Path(repo.path) / layers[2].path).unlink()
    guard, heard = guard_and_events()
    with pytest.raises(PointUnreadable, match=r"0002\.qcow2.*missing"):
        guard.chain_spec(repo, "vm/sda", layers)
    assert heard == []
