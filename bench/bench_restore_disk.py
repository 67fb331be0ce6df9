"""Whole-disk restore: ``sendense restore disk`` vs ``qemu-img convert -O raw`` + ``sync``.

A chain of three (a full of ``--mb`` MiB, half random data and half never written,
then two incrementals of 64 MiB of changes each) is made with qemu-img and recorded
through the engine's own stores in a fresh state directory. Each round restores the
top point four ways, with the page cache dropped (``sync; echo 3 > drop_caches``,
when root) before each:

- the reference: ``qemu-img convert -O raw TOP OUT`` and ``sync``;
- the CLI as an operator runs it on an appliance, where ``sendense daemon`` runs:
  ``sendense restore disk POINT OUT`` hands the job to the daemon and follows it (a
  new process with no engine loaded; the daemon checks the headers, converts, fsyncs);
- the CLI with no daemon to ask: it opens the catalog and runs the job itself
  (Python's start, SQLAlchemy and the models read from a cold disk, the catalog, the
  job, the header checks, the convert, the fsync);
- the engine's restore alone (``engine.restores.restore`` in this process, the engine
  already open): the data path without the process start, which other work owns.

Prints every round's ratios to the reference and their medians (goal <= 1.1) and the
load average (the machine may be shared).

Run: ``.venv/bin/python -m bench restore_disk`` or
``.venv/bin/python -m bench.bench_restore_disk --mb 512 --rounds 5``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.bench_api import start_daemon
from bench.bench_copy import drop_caches
from bench.chains import CHANGE, MiB, qemu_img, record_chain
from engine.config import CapacitySettings, default_settings
from engine.runtime import Engine


def make_versions(base: Path, size: int) -> list[Path]:
    """Three raw versions of a disk: half random, half zeros, then two 64 MiB changes."""
    data = bytearray(os.urandom(size // 2)) + bytearray(size - size // 2)
    versions = []
    for i in range(3):
        if i:
            at = (i * 37 * MiB) % max(MiB, size - CHANGE)
            data[at : at + CHANGE] = os.urandom(min(CHANGE, size - at))
        path = base / f"v{i}.raw"
        path.write_bytes(data)
        versions.append(path)
    return versions


def make_chain(engine: Engine, repo_dir: Path, versions: list[Path]) -> tuple[Path, int]:
    """QCOW2 files of a full and incrementals, recorded in the catalog: the top file
    and its point."""
    chain_dir = repo_dir / "bench01" / "sda"
    chain_dir.mkdir(parents=True)
    files: list[Path] = []
    for i, raw in enumerate(versions):
        target = chain_dir / f"{i:04d}.qcow2"
        if i == 0:
            qemu_img("convert", "-f", "raw", "-O", "qcow2", str(raw), str(target))
        else:  # only what differs from the previous file lands in the incremental
            qemu_img("create", "-q", "-f", "qcow2", "-b", str(raw), "-F", "raw", str(target))
            qemu_img("rebase", "-f", "qcow2", "-b", files[-1].name, "-F", "qcow2", str(target))
        files.append(target)
    ids = record_chain(
        engine, "bench", repo_dir, files, versions[0].stat().st_size, checksums=False
    )
    return files[-1], ids[-1]


def timed(run: Callable[[], object]) -> float:
    drop_caches()
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_restore_disk")
    parser.add_argument("--mb", type=int, default=1024, help="virtual size of the disk")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the three")
    parser.add_argument("--dir", default="/var/tmp", help="where the chain is made")
    return parser.parse_args(argv or [])


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="sendense-bench-restore-") as tmp:
        base = Path(tmp)
        state = base / "state"
        settings = default_settings(state)
        settings = dataclasses.replace(
            settings, capacity=dataclasses.replace(CapacitySettings(), min_free_bytes=0)
        )
        engine = Engine(settings, owner="bench-restore")
        engine.open()
        try:
            versions = make_versions(base, args.mb * MiB)
            (base / "repo").mkdir()
            top, point = make_chain(engine, base / "repo", versions)
            for v in versions:
                v.unlink()
            daemon = start_daemon(state)
            try:
                run_rounds(args.rounds, engine, state, top, point, base / "out.raw")
            finally:
                daemon.terminate()
                daemon.wait(timeout=60)
        finally:
            engine.close()


def run_rounds(rounds: int, engine: Engine, state: Path, top: Path, point: int, out: Path) -> None:
    sendense = str(Path(sys.executable).with_name("sendense"))
    cli = [sendense, "--state-dir", str(state), "restore", "disk", str(point), str(out)]
    # the daemon's socket out of reach: the command runs the job itself
    alone = {**os.environ, "SENDENSE_API_SOCKET": str(state / "no-daemon-here.sock")}
    print(
        f"point #{point}: a chain of 3, {top.parent}; page cache dropped before each "
        f"side: {os.geteuid() == 0}; {rounds} rounds"
    )
    forms: dict[str, Callable[[], object]] = {
        "sendense restore disk (daemon running)": lambda: subprocess.run(
            cli, check=True, capture_output=True, timeout=3600
        ),
        "sendense restore disk (no daemon)": lambda: subprocess.run(
            cli, check=True, capture_output=True, timeout=3600, env=alone
        ),
        "engine restore alone": lambda: engine.restores.restore(point, str(out)),
    }
    ratios: dict[str, list[float]] = {name: [] for name in forms}
    for n in range(rounds):

        def reference() -> None:
            qemu_img("convert", "-U", "-O", "raw", str(top), str(out))
            subprocess.run(["sync"], check=True)

        ref = timed(reference)
        out.unlink()
        said = [f"qemu-img convert+sync {ref:6.2f} s"]
        for name, run in forms.items():
            took = timed(run)
            out.unlink()
            ratios[name].append(took / ref)
            said.append(f"{name} {took:6.2f} s ({took / ref:.2f}x)")
        print(f"  round {n + 1}: {', '.join(said)}; load average {os.getloadavg()[0]:.1f}")
    for name, each in ratios.items():
        ratio = statistics.median(each)
        verdict = "OK" if ratio <= 1.1 else "ABOVE GOAL"
        print(f"{name}: median {ratio:.2f}x qemu-img convert + sync (goal <= 1.1) {verdict}")


if __name__ == "__main__":
    main(sys.argv[1:])
