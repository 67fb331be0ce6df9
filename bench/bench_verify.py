"""Verification throughput: Sendense's threaded sha256 vs ``openssl dgst -sha256``.

The same 2 GiB file set is hashed by ``openssl dgst -sha256`` (the reference
tool of the chosen hash) and by :func:`engine.services.verify.hash_file`, page
cache dropped before each (when root), in pairs (``SENDENSE_BENCH_ROUNDS``, default 5).
Prints each pair's rates and ratio, and the median ratio; goal >= 0.9.

Run: ``.venv/bin/python -m bench verify`` (``SENDENSE_BENCH_MB`` changes the size).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench.bench_copy import FILES, MiB, drop_caches, make_files
from engine.services.verify import hash_file

PAIRS = int(os.environ.get("SENDENSE_BENCH_ROUNDS", "5"))


def bench_openssl(files: list[Path]) -> float:
    drop_caches()
    start = time.perf_counter()
    subprocess.run(
        ["openssl", "dgst", "-sha256", *map(str, files)], check=True, capture_output=True
    )
    return time.perf_counter() - start


def bench_sendense(files: list[Path]) -> float:
    drop_caches()
    start = time.perf_counter()
    for path in files:
        hash_file(path)
    return time.perf_counter() - start


def main() -> None:
    with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="sendense-bench-verify-") as tmp:
        size_mb = int(os.environ.get("SENDENSE_BENCH_MB", "2048"))
        files = make_files(Path(tmp) / "src", size_mb, FILES)
        total = sum(p.stat().st_size for p in files)
        print(
            f"file set: {FILES} files, {total / MiB:.0f} MiB, page cache dropped: "
            f"{os.geteuid() == 0}; {PAIRS} pairs, openssl first"
        )
        # pair by pair: the disk's speed drifts on a shared machine, the ratio of a
        # pair taken together less so
        ratios = []
        for pair in range(PAIRS):
            ref_rate = total / bench_openssl(files) / MiB
            our_rate = total / bench_sendense(files) / MiB
            ratios.append(our_rate / ref_rate)
            print(
                f"  pair {pair + 1}: openssl dgst -sha256 {ref_rate:7.1f} MiB/s, sendense verify "
                f"{our_rate:7.1f} MiB/s, ratio {ratios[-1]:.2f} "
                f"(load average {os.getloadavg()[0]:.1f})"
            )
        ratio = statistics.median(ratios)
        print(
            f"ratio (median of pairs): {ratio:.2f} (goal >= 0.9) "
            f"{'OK' if ratio >= 0.9 else 'BELOW GOAL'}"
        )


if __name__ == "__main__":
    main()
