"""Backup cost: Sendense's full and incremental backup vs a plain ``qemu-img convert``.

A 1 GiB source of random data is backed up in the same run as a plain
``qemu-img convert -O qcow2`` of the same source (+ fsync, as the backup does),
with the page cache dropped before each when root (median of 3 runs, taking
turns). The backup also measures the repository first, computes the file's
sha256 (read back while fsync flushes it), maps the allocation, renames and
validates the chain; the ratio shows what that costs (goal: <= 1.05; the
"gap" line says why sha256 keeps it above that). Then 32 MiB in 8 regions
change and an incremental is taken: it prints the bytes written against the bytes changed.
Last, the command as an operator runs it: ``sendense backup run --mode full`` with a
``sendense daemon`` running (the command hands it the job and follows it, loading no
engine) and with none (the command runs the job itself), each beside a plain convert
+ fsync of the same round.

Run: ``.venv/bin/python -m bench backup`` (``SENDENSE_BENCH_MB`` changes the size).
"""

from __future__ import annotations

import dataclasses
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from bench.bench_api import start_daemon
from engine.clock import SYSTEM_CLOCK
from engine.config import CapacitySettings, default_settings
from engine.hashing import sha256_file
from engine.runtime import Engine
from engine.sources import DiskSource
from engine.tools import qemu_img

MiB = 1024 * 1024
SIZE_MB = int(os.environ.get("SENDENSE_BENCH_MB", "1024"))
ROUNDS = 3


def drop_caches() -> None:
    os.sync()
    if os.geteuid() == 0:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")


def make_source(path: Path) -> None:
    block = os.urandom(16 * MiB)
    with open(path, "wb") as f:
        for i in range(SIZE_MB // 16):
            # vary each block a little so nothing deduplicates
            f.write(i.to_bytes(8, "little") + block[8:])


def timed(fn: object) -> float:
    drop_caches()
    start = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - start


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="sendense-bench-backup-", dir="/var/tmp") as tmp:
        base = Path(tmp)
        src = base / "source.raw"
        make_source(src)
        settings = dataclasses.replace(
            default_settings(base / "state"),
            capacity=dataclasses.replace(CapacitySettings(), min_free_bytes=0),
        )
        engine = Engine(settings, clock=SYSTEM_CLOCK, owner="bench")
        engine.open()
        try:
            repo_dir = base / "repo"
            repo_dir.mkdir()
            repo = engine.repository_store.add(
                name="bench", kind="local", path=str(repo_dir), now=SYSTEM_CLOCK.now()
            )
            engine.backups.verify_parent = True
            ref_out = base / "plain.qcow2"
            parts: dict[str, list[float]] = {"convert": [], "fsync": [], "hash": []}

            def plain() -> None:
                start = time.perf_counter()
                qemu_img.convert(src, ref_out, src_fmt="raw")
                flushed = time.perf_counter()
                fd = os.open(ref_out, os.O_RDONLY)
                os.fsync(fd)
                os.close(fd)
                parts["convert"].append(flushed - start)
                parts["fsync"].append(time.perf_counter() - flushed)

            sources = [DiskSource("sda", str(src), fmt="raw")]
            results: dict[str, object] = {}

            def full() -> None:
                results["full"] = engine.backups.run(repo.id, "bench", sources, mode="full")

            # median of ROUNDS, plain and full taking turns, each from a cold cache
            plains, fulls = [], []
            for _ in range(ROUNDS):
                plains.append(timed(plain))
                start = time.perf_counter()  # what reading the result back costs (cached)
                sha256_file(ref_out)
                parts["hash"].append(time.perf_counter() - start)
                ref_out.unlink()
                fulls.append(timed(full))
            t_plain, t_full = statistics.median(plains), statistics.median(fulls)
            convert = statistics.median(parts["convert"])
            fsync = statistics.median(parts["fsync"])
            hashing = statistics.median(parts["hash"])
            print(f"source: {SIZE_MB} MiB random data, median of {ROUNDS} runs")
            print(
                f"plain qemu-img convert + fsync : {t_plain:7.2f} s  "
                f"(convert {convert:.2f} + fsync {fsync:.2f})"
            )
            print(f"sendense full backup           : {t_full:7.2f} s")
            print(f"ratio full/plain               : {t_full / t_plain:7.3f}  (goal <= 1.05)")
            print(
                f"gap: sha256 of the finished file takes {hashing:.2f} s from the page cache and "
                "cannot start before qemu-img exits (it rewrites metadata at the file's start "
                "last); overlapped with fsync the floor is about "
                f"{(convert + max(hashing, fsync)) / t_plain:.2f}"
            )

            rng = random.Random(1)
            regions = [(rng.randrange(0, SIZE_MB - 4) * MiB, 4 * MiB) for _ in range(8)]
            with open(src, "r+b") as f:
                for offset, length in regions:
                    f.seek(offset)
                    f.write(os.urandom(length))
            changed = len({o // (64 * 1024) + i for o, n in regions for i in range(n // 65536)})
            changed_bytes = changed * 64 * 1024

            def incremental() -> None:
                results["inc"] = engine.backups.run(repo.id, "bench", sources)

            t_inc = timed(incremental)
            inc = results["inc"].disks[0]  # type: ignore[attr-defined]
            print(f"sendense incremental backup    : {t_inc:7.2f} s  ({inc.kind})")
            print(
                f"ratio incremental/plain full   : {t_inc / t_plain:7.3f}  (found by "
                f"{inc.rung}: read {inc.bytes_read or 0} bytes; see bench incremental)"
            )
            print(
                f"incremental: changed {changed_bytes / MiB:.1f} MiB, stored "
                f"{inc.allocated_bytes / MiB:.1f} MiB of data, file {inc.file_size / MiB:.2f} MiB "
                f"(written/changed = {inc.file_size / changed_bytes:.3f})"
            )
            cli_rounds(state=base / "state", src=src, plain=plain, plain_out=ref_out)
        finally:
            engine.close()


def cli_rounds(*, state: Path, src: Path, plain: Callable[[], None], plain_out: Path) -> None:
    """``sendense backup run`` with a daemon running and with none, against ``plain``
    in the same round; the daemon is stopped before the command runs the job itself
    (else its runner could take the command's queued job)."""
    sendense = str(Path(sys.executable).with_name("sendense"))
    argv = [sendense, "--state-dir", str(state), "backup", "run", "--repo", "bench"]
    argv += ["--vm", "cli", "--disk", f"sda={src}", "--mode", "full"]
    alone = {**os.environ, "SENDENSE_API_SOCKET": str(state / "no-daemon-here.sock")}
    ratios: dict[str, list[float]] = {"daemon running": [], "no daemon": []}
    for round_ in range(ROUNDS):
        reference = timed(plain)
        plain_out.unlink()
        served = start_daemon(state)
        try:
            with_daemon = timed(partial(subprocess.run, argv, check=True, capture_output=True))
        finally:
            served.terminate()
            served.wait(timeout=60)
        itself = timed(partial(subprocess.run, argv, check=True, capture_output=True, env=alone))
        ratios["daemon running"].append(with_daemon / reference)
        ratios["no daemon"].append(itself / reference)
        print(
            f"  round {round_ + 1}: plain {reference:5.2f} s, sendense backup run (daemon "
            f"running) {with_daemon:5.2f} s ({with_daemon / reference:.2f}x), (no daemon) "
            f"{itself:5.2f} s ({itself / reference:.2f}x); load average {os.getloadavg()[0]:.1f}"
        )
    for form, values in ratios.items():
        print(f"sendense backup run ({form}): median {statistics.median(values):.2f}x plain")


if __name__ == "__main__":
    main()
