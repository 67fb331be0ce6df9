"""Copy throughput: Sendense's copy (sha256 in the same pass, fsync, rename) vs ``cp`` + ``sync``.

A file set (default 2 GiB: 8 files of 256 MiB, random data) is copied pair by pair in
the same run, with the page cache dropped (``sync; echo 3 > drop_caches``, when root)
before each side: ``cp --reflink=never`` followed by ``sync``, then
:func:`engine.copier.copy_file` (clone off, so both really copy bytes). Each pair gives
a ratio (our throughput / cp's); the median ratio is the figure (goal >= 0.9). The
machine may be shared: the load average at each pair is printed beside it.

Run: ``.venv/bin/python -m bench copy`` or, smaller,
``.venv/bin/python -m bench.bench_copy --mb 512 --rounds 5`` (``SENDENSE_BENCH_MB``
still sets the default size).
"""

from __future__ import annotations

import argparse
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


def drop_caches() -> bool:
    """Write dirty pages out and drop the page cache (root only); True when dropped."""
    os.sync()
    if os.geteuid() != 0:
        return False
    Path("/proc/sys/vm/drop_caches").write_text("3\n")
    return True


def make_files(base: Path, total_mb: int, count: int) -> list[Path]:
    base.mkdir(parents=True)
    size = total_mb * MiB // count
    block = os.urandom(16 * MiB)
    files = []
    for i in range(count):
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


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_copy", description=__doc__)
    default_mb = int(os.environ.get("SENDENSE_BENCH_MB", "2048"))
    parser.add_argument("--mb", type=int, default=default_mb, help="size of the file set")
    parser.add_argument("--files", type=int, default=8, help="files in the set")
    parser.add_argument("--rounds", type=int, default=3, help="pairs (cp, then ours)")
    parser.add_argument("--dir", default="/var/tmp", help="where the set is made")
    return parser.parse_args(argv or [])


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="sendense-bench-copy-") as tmp:
        base = Path(tmp)
        files = make_files(base / "src", args.mb, args.files)
        total = sum(p.stat().st_size for p in files)
        ratios, cp_rates, our_rates = [], [], []
        print(
            f"file set: {len(files)} files, {total / MiB:.0f} MiB, page cache dropped "
            f"before each side: {os.geteuid() == 0}; {args.rounds} pairs, cp first"
        )
        for round_ in range(args.rounds):
            cp_rate = total / bench_cp(base / "src", base / f"cp{round_}") / MiB
            shutil.rmtree(base / f"cp{round_}")
            our_rate = total / bench_sendense(files, base / f"ours{round_}") / MiB
            shutil.rmtree(base / f"ours{round_}")
            load = os.getloadavg()[0]
            cp_rates.append(cp_rate)
            our_rates.append(our_rate)
            ratios.append(our_rate / cp_rate)
            print(
                f"  pair {round_ + 1}: cp+sync {cp_rate:7.1f} MiB/s, sendense {our_rate:7.1f} "
                f"MiB/s, ratio {ratios[-1]:.2f} (load average {load:.1f} on {os.cpu_count()} cpus)"
            )
        print(f"cp + sync (median):                 {statistics.median(cp_rates):8.1f} MiB/s")
        print(f"sendense copy, sha256+fsync (median): {statistics.median(our_rates):6.1f} MiB/s")
        start = time.perf_counter()  # one core's sha256 work, which cp does not do
        sha256_file(files[0])
        hash_rate = files[0].stat().st_size / (time.perf_counter() - start) / MiB
        print(f"sha256 alone (page cache, 1 core):  {hash_rate:8.1f} MiB/s")
        ratio = statistics.median(ratios)
        verdict = "OK" if ratio >= 0.9 else "BELOW GOAL"
        print(f"ratio (median of pairs): {ratio:.2f} (goal >= 0.9) {verdict}")


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
