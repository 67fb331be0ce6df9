"""Copy throughput: Sendense's copy (sha256 in the same pass, fsync, rename) vs ``cp`` + ``sync``.

A 2 GiB file set (8 files of 256 MiB, random data) is copied twice in the same
run, with the page cache dropped before each (when root): once with
``cp --reflink=never`` followed by ``sync``, once with
:func:`engine.copier.copy_file` (clone off, so both really copy bytes).
Prints both throughputs (median of 3 runs each, taking turns) and the ratio;
the goal is >= 0.9.

Run: ``.venv/bin/python -m bench copy`` (``SENDENSE_BENCH_MB`` changes the size).
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from engine.copier import copy_file
from engine.hashing import sha256_file

MiB = 1024 * 1024
TOTAL_MB = int(os.environ.get("SENDENSE_BENCH_MB", "2048"))
FILES = 8
ROUNDS = 3


def drop_caches() -> None:
    os.sync()
    if os.geteuid() == 0:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")


def make_files(base: Path) -> list[Path]:
    base.mkdir(parents=True)
    size = TOTAL_MB * MiB // FILES
    block = os.urandom(16 * MiB)
    files = []
    for i in range(FILES):
        path = base / f"f{i}.qcow2"
        with open(path, "wb") as f:
            left = size
            while left:
                n = min(left, len(block))
                f.write(block[:n])
                left -= n
                block = block[1:] + block[:1]  # different content each block
        files.append(path)
    return files


def bench_cp(src: Path, dst: Path) -> float:
    drop_caches()
    start = time.perf_counter()
    subprocess.run(["cp", "-r", "--reflink=never", str(src), str(dst)], check=True)
    subprocess.run(["sync"], check=True)
    return time.perf_counter() - start


def bench_sendense(files: list[Path], dst: Path) -> float:
    drop_caches()
    start = time.perf_counter()
    for path in files:
        copy_file(path, dst / path.name, try_clone=False)
    return time.perf_counter() - start


def main() -> None:
    with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="sendense-bench-copy-") as tmp:
        base = Path(tmp)
        files = make_files(base / "src")
        total = sum(p.stat().st_size for p in files)
        cp_times, our_times = [], []
        for round_ in range(ROUNDS):
            cp_times.append(bench_cp(base / "src", base / f"cp{round_}"))
            shutil.rmtree(base / f"cp{round_}")
            our_times.append(bench_sendense(files, base / f"ours{round_}"))
            shutil.rmtree(base / f"ours{round_}")
        cp_rate = total / statistics.median(cp_times) / MiB
        our_rate = total / statistics.median(our_times) / MiB
        print(
            f"file set: {FILES} files, {total / MiB:.0f} MiB, page cache dropped before "
            f"each: {os.geteuid() == 0}, median of {ROUNDS} runs taking turns"
        )
        print(f"cp + sync:                        {cp_rate:8.1f} MiB/s")
        print(f"sendense copy (sha256+fsync):     {our_rate:8.1f} MiB/s")
        start = time.perf_counter()  # one core's sha256 work, which cp does not do
        sha256_file(files[0])
        hash_rate = files[0].stat().st_size / (time.perf_counter() - start) / MiB
        print(f"sha256 alone (page cache, 1 core): {hash_rate:8.1f} MiB/s")
        ratio = our_rate / cp_rate
        print(f"ratio: {ratio:.2f} (goal >= 0.9) {'OK' if ratio >= 0.9 else 'BELOW GOAL'}")


if __name__ == "__main__":
    main()
