"""Incremental cost by rung: bytes read and time against the disk's size.

For each disk size (``SENDENSE_BENCH_SIZES`` in MiB, default ``512,2048``; add
8192 for the issue's largest case), a source of random data is backed up full,
16 MiB in 16 regions change, and an incremental is taken on each rung:

- ``digest``: a raw source, compared with the previous point's digest table;
- ``compare``: the same with that table removed (today's whole-disk compare);
- ``bitmap``: a qcow2 source whose dirty bitmap Sendense keeps (the guest's
  writes go through qemu-io, so the bitmap records them).

Reads are what the process tree read from storage (``getrusage`` inblock of the
process and its reaped children, page cache dropped before each run when root).
In the same run the reference reads the whole source once with ``dd`` to
/dev/null, and the full backup's window is
compared with a bare ``qemu-img convert -O qcow2`` + fsync of the same source.
Printed per size: seconds and MiB read per rung, the ratio of each rung's time
to the reference whole read, and the bitmap rung's reads over the changed bytes
(goal: <= 1.2 plus metadata, flat across sizes).

Run: ``.venv/bin/python -m bench incremental``.
"""

from __future__ import annotations

import dataclasses
import os
import resource
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.config import CapacitySettings, default_settings
from engine.digests import table_path
from engine.runtime import Engine
from engine.services.backup import DiskSource

MiB = 1024 * 1024
SIZES = [int(s) for s in os.environ.get("SENDENSE_BENCH_SIZES", "512,2048").split(",")]
CHANGED = 16 * MiB


def drop_caches() -> None:
    os.sync()
    if os.geteuid() == 0:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")


def storage_reads() -> int:
    """Bytes read from storage by this process and its reaped children."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_inblock
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_inblock
    return (own + kids) * 512


def measured(fn: Callable[[], Any]) -> tuple[float, int, Any]:
    drop_caches()
    before = storage_reads()
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, storage_reads() - before, out


def make_source(path: Path, size_mb: int) -> None:
    block = os.urandom(16 * MiB)
    with open(path, "wb") as f:
        for i in range(size_mb // 16):
            f.write(i.to_bytes(8, "little") + block[8:])


def change_raw(path: Path, size: int, seed: int) -> None:
    with open(path, "r+b") as f:
        for k in range(16):
            f.seek((size // 16) * k + seed * 4096)
            f.write(os.urandom(CHANGED // 16))


def change_qcow2(path: Path, size: int, seed: int) -> None:
    args = ["qemu-io", "-f", "qcow2", str(path)]
    for k in range(16):
        offset = (size // 16) * k + seed * 65536
        args += ["-c", f"write -q -P {seed % 250 + 1} {offset} {CHANGED // 16}"]
    subprocess.run(args, check=True)


def engine_for(base: Path) -> Engine:
    settings = dataclasses.replace(
        default_settings(base / "state"),
        capacity=dataclasses.replace(CapacitySettings(), min_free_bytes=0),
    )
    return Engine(settings).open()


def run_size(size_mb: int, base: Path) -> None:
    size = size_mb * MiB
    raw = base / f"src-{size_mb}.raw"
    make_source(raw, size_mb)
    repo_dir = base / f"repo-{size_mb}"
    repo_dir.mkdir()
    engine = engine_for(base / f"e-{size_mb}")
    try:
        repo = engine.repository_store.add(
            name=f"r{size_mb}", kind="local", path=str(repo_dir), now=engine.clock.now()
        )

        def reference_read() -> None:
            subprocess.run(["dd", f"if={raw}", "of=/dev/null", "bs=4M", "status=none"], check=True)

        ref_time, ref_read, _ = measured(reference_read)

        bare_out = base / "bare.qcow2"

        def bare_convert() -> None:
            subprocess.run(
                ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(bare_out)],
                check=True,
            )

        def bare_full() -> None:
            bare_convert()
            fd = os.open(bare_out, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
            subprocess.run(
                ["openssl", "dgst", "-sha256", str(bare_out)], check=True, capture_output=True
            )

        convert_time, _, _ = measured(bare_convert)
        bare_out.unlink()
        bare_time, _, _ = measured(bare_full)
        bare_out.unlink()

        def backup(disk: DiskSource, vm: str) -> Any:
            run = engine.backups.run(repo.id, vm, [disk])
            assert run.ok, run.sentence()
            return run.disks[0]

        raw_disk = DiskSource("sda", str(raw))
        full_time, _, full = measured(lambda: backup(raw_disk, "raw"))
        window = full.source_held_seconds or 0.0
        print(
            f"{size_mb:>6} MiB  full: source held {window:.2f} s vs bare qemu-img convert "
            f"{convert_time:.2f} s = {window / convert_time:.2f}x (goal <= 1.05); whole backup "
            f"with checksum and digest table {full_time:.2f} s vs convert + fsync + openssl "
            f"dgst -sha256 {bare_time:.2f} s = {full_time / bare_time:.2f}x (goal <= 1.0)"
        )
        rows: list[tuple[str, float, int, Any]] = []
        change_raw(raw, size, 1)
        t, r, inc = measured(lambda: backup(raw_disk, "raw"))
        rows.append(("digest", t, r, inc))
        change_raw(raw, size, 2)
        table_path(Path(repo.path) / str(inc.path)).unlink()
        t, r, inc = measured(lambda: backup(raw_disk, "raw"))
        rows.append(("compare", t, r, inc))
        qcow = base / f"src-{size_mb}.qcow2"
        subprocess.run(
            ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow)], check=True
        )
        qdisk = DiskSource("vda", str(qcow), "qcow2")
        backup(qdisk, "qcow")
        change_qcow2(qcow, size, 3)
        t, r, inc = measured(lambda: backup(qdisk, "qcow"))
        rows.append(("bitmap", t, r, inc))
        for rung, seconds, read, point in rows:
            assert point.rung == rung, (point.rung, point.rung_reason)
            print(
                f"{size_mb:>6} MiB  {rung:<8} {seconds:6.2f} s  read {read / MiB:8.1f} MiB "
                f"(engine says {(point.bytes_read or 0) / MiB:.1f})  "
                f"time vs whole read {seconds / ref_time:.2f}x  "
                f"reads / changed {read / CHANGED:.2f} "
                f"(other reads: {(read - (point.bytes_read or 0)) / MiB:.0f} MiB: programs "
                "and metadata after the cache drop; on the compare rung, the previous point)"
            )
        print(
            f"{size_mb:>6} MiB  reference dd whole read {ref_time:.2f} s, {ref_read / MiB:.1f} MiB"
        )
    finally:
        engine.close()
        for p in (raw, base / f"src-{size_mb}.qcow2"):
            p.unlink(missing_ok=True)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="sendense-bench-inc-", dir="/var/tmp") as tmp:
        for size_mb in SIZES:
            run_size(size_mb, Path(tmp))


if __name__ == "__main__":
    main()
