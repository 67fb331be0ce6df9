"""Verification throughput: Sendense's threaded sha256 vs ``openssl dgst -sha256``.

The same 2 GiB file set is hashed by ``openssl dgst -sha256`` (the reference
tool of the chosen hash) and by :func:`engine.services.verify.hash_file`, page
cache dropped before each (when root). Prints both and the ratio; goal >= 0.9.

Run: ``.venv/bin/python -m bench verify`` (``SENDENSE_BENCH_MB`` changes the size).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path

from bench.bench_copy import FILES, MiB, drop_caches, make_files
from engine.services.verify import hash_file


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
        ref = min(bench_openssl(files) for _ in range(2))
        ours = min(bench_sendense(files) for _ in range(2))
        ref_rate, our_rate = total / ref / MiB, total / ours / MiB
        print(
            f"file set: {FILES} files, {total / MiB:.0f} MiB, page cache dropped: "
            f"{os.geteuid() == 0}"
        )
        print(f"openssl dgst -sha256:     {ref_rate:8.1f} MiB/s")
        print(f"sendense verify (sha256): {our_rate:8.1f} MiB/s")
        ratio = our_rate / ref_rate
        print(f"ratio: {ratio:.2f} (goal >= 0.9) {'OK' if ratio >= 0.9 else 'BELOW GOAL'}")


if __name__ == "__main__":
    main()
