"""Build small disk images without mounting anything: an ext4 filesystem filled from
a folder (``mkfs.ext4 -d``) and a GPT partition table written by ``sfdisk``. The demo
(``sendense demo``) and the README screenshots make their guest disks this way."""

from __future__ import annotations

from pathlib import Path

from engine.tools.base import run

PathLike = str | Path

TIMEOUT = 60.0


def make_ext4(image: PathLike, source_dir: PathLike, *, label: str, uuid: str) -> None:
    """Make ``image`` (already sized) an ext4 filesystem holding ``source_dir``'s tree,
    with a fixed UUID and hash seed so the same tree gives the same filesystem."""
    run(
        [
            "mkfs.ext4", "-q", "-F", "-L", label, "-U", uuid,
            "-E", f"hash_seed={uuid}", "-d", str(source_dir), str(image),
        ],
        timeout=TIMEOUT,
    )  # fmt: skip


def write_gpt(disk: PathLike, *, label_id: str, start: int, sectors: int, part_uuid: str) -> None:
    """Write a GPT to ``disk`` with one Linux partition of ``sectors`` 512-byte sectors
    from sector ``start``."""
    script = (
        f"label: gpt\nlabel-id: {label_id}\n"
        f"start={start}, size={sectors}, type=L, uuid={part_uuid}\n"
    )
    run(["sfdisk", "-q", str(disk)], timeout=TIMEOUT, input_text=script)
