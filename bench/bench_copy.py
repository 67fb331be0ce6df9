"""Copy throughput: Sendense's copy (sha256 in the same pass, fsync, rename) vs ``cp`` + ``sync``.

Two parts, each pair by pair in the same run, with the page cache dropped (``sync;
echo 3 > drop_caches``, when root) before each side; the reference is ``cp -r
--reflink=never`` of the same bytes followed by ``sync``:

1. the copier alone: a file set (default 2 GiB: 8 files of 256 MiB, random data)
   through :func:`engine.copier.copy_file` (on a filesystem that cannot clone, so both really
   copy bytes);
2. ``sendense copy run RULE`` as an operator runs it (a new process), on a real QCOW2
   chain of the same size (a full of random data and two incrementals) from one
   repository to a fresh one each time, through a rule with the default settings
   (verify after copying on): with a ``sendense daemon`` running, as on an appliance
   (the command hands it the job and follows it), and with none (Python's start, the
   catalog, the job, the header checks, the copy, the check after the copy, the
   manifests, all in the command); and the copy job alone in this process.

Each pair gives a ratio (our throughput / cp's); the median ratio is the figure (goal
>= 0.9 for ``sendense copy run``). The machine may be shared: the load average at each
pair is printed beside it.

Run: ``.venv/bin/python -m bench copy`` or, smaller,
``.venv/bin/python -m bench.bench_copy --mb 512 --rounds 5`` (``SENDENSE_BENCH_MB``
still sets the default size; ``--part copier`` or ``--part cli`` runs one part, ``--part
job`` the second without the CLI).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from bench.bench_api import start_daemon
from bench.chains import MiB, make_random_chain, record_chain
from engine.config import CapacitySettings, default_settings
from engine.copier import copy_file
from engine.hashing import sha256_file
from engine.runtime import Engine

#: files in the copier's file set (bench_verify hashes the same set)
FILES = 8


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
        # a clone is tried as a copy job tries it: where it fails (ext4) the kernel
        # copies the bytes; where it works the figure would say nothing of a copy
        if copy_file(path, dst / path.name).cloned:
            raise SystemExit(f"{dst} clones files: give --dir on a filesystem that cannot")
    return time.perf_counter() - start


def timed(run: Callable[[], object]) -> float:
    drop_caches()
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def _open_engine(state: Path) -> Engine:
    settings = default_settings(state)
    settings = dataclasses.replace(
        settings, capacity=dataclasses.replace(CapacitySettings(), min_free_bytes=0)
    )
    engine = Engine(settings, owner="bench-copy")
    engine.open()
    return engine


def _add_destination(state: Path, name: str, path: Path) -> None:
    """A fresh destination repository and a rule with the default settings to it."""
    path.mkdir()
    engine = _open_engine(state)
    try:
        engine.repository_store.add(name=name, kind="local", path=str(path), now=engine.clock.now())
        engine.copies.add_rule(name=f"to-{name}", source="src", destination=name)
    finally:
        engine.close()


def _engine_copy(state: Path, rule: str) -> float:
    """The copy job alone, in this process (the engine opened and started before the
    clock starts: Python's start, the imports and the repositories' start-up checks
    are the CLI's fixed cost, not the data path's): seconds from submit to its end."""
    engine = _open_engine(state)
    try:
        engine.start()
        ended = threading.Event()
        # woken by the job's end event, as the CLI's wait is: a tight poll of the
        # catalog would take the GIL from the copy's hashing thread 50 times a second
        engine.bus.subscribe(lambda _event: ended.set(), ("job.succeeded", "job.failed"))
        drop_caches()
        start = time.perf_counter()
        job = engine.copies.run_rule(rule)
        while (job := engine.jobs.get(job.id)).state not in ("succeeded", "failed", "cancelled"):
            ended.wait(0.5)
        took = time.perf_counter() - start
        if job.state != "succeeded":
            raise SystemExit(f"the copy job {job.state}: {job.error}")
        return took
    finally:
        engine.close()


def _cli_copy(state: Path, rule: str, *, daemon: bool) -> float:
    """``sendense copy run RULE`` as a new process, caches dropped first: with a
    ``sendense daemon`` running on the state directory (it runs the job; the command
    follows it), or with none to ask (the command runs the job itself)."""
    sendense = str(Path(sys.executable).with_name("sendense"))
    copy = [sendense, "--state-dir", str(state), "copy", "run", rule]
    if not daemon:
        alone = {**os.environ, "SENDENSE_API_SOCKET": str(state / "no-daemon-here.sock")}
        return timed(partial(subprocess.run, copy, check=True, capture_output=True, env=alone))
    served = start_daemon(state)
    try:
        return timed(partial(subprocess.run, copy, check=True, capture_output=True))
    finally:
        served.terminate()
        served.wait(timeout=60)


#: the forms measured against cp + sync each round, in their order
FORMS = ("sendense copy run (daemon running)", "sendense copy run (no daemon)", "copy job alone")


def run_cli_pairs(args: argparse.Namespace, base: Path) -> dict[str, list[float]]:
    """cp + sync vs ``sendense copy run`` of one chain (with a daemon, as on an
    appliance, and with none) and vs the copy job alone, in turns: each form's ratios
    (``--part job``: the job alone only)."""
    forms = FORMS if args.part != "job" else FORMS[2:]
    state = base / "state"
    src = base / "src-repo"
    engine = _open_engine(state)
    try:
        size = (args.mb - 2 * 64) * MiB
        files = make_random_chain(src / "bench01" / "sda", base, size, incrementals=2)
        record_chain(engine, "src", src, files, size)
    finally:
        engine.close()
    total = sum(p.stat().st_size for p in files)
    print(
        f"sendense copy run: a chain of {len(files)} QCOW2 files, {total / MiB:.0f} MiB, "
        f"to a new repository each time (verify after copying on, the default)"
    )
    ratios: dict[str, list[float]] = {form: [] for form in forms}

    def rate(seconds: float) -> str:
        return f"{total / seconds / MiB:6.1f} MiB/s ({seconds:5.2f} s)"

    for round_ in range(args.rounds):

        def reference(out: Path = base / f"cp{round_}") -> None:
            subprocess.run(["cp", "-r", "--reflink=never", str(src), str(out)], check=True)
            subprocess.run(["sync"], check=True)

        ref = timed(reference)
        shutil.rmtree(base / f"cp{round_}")
        said = [f"cp+sync {rate(ref)}"]
        for n, form in enumerate(forms):
            name = f"r{round_}f{n}"
            _add_destination(state, name, base / name)
            if form == "copy job alone":
                took = _engine_copy(state, f"to-{name}")
            else:
                took = _cli_copy(state, f"to-{name}", daemon="daemon running" in form)
            shutil.rmtree(base / name)
            ratios[form].append(ref / took)
            said.append(f"{form} {rate(took)} ratio {ratios[form][-1]:.2f}")
        print(
            f"  round {round_ + 1}: {', '.join(said)} "
            f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cpus)"
        )
    return ratios


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_copy", description=__doc__)
    default_mb = int(os.environ.get("SENDENSE_BENCH_MB", "2048"))
    parser.add_argument("--mb", type=int, default=default_mb, help="size of the file set")
    parser.add_argument("--files", type=int, default=FILES, help="files in the set")
    parser.add_argument("--rounds", type=int, default=3, help="pairs (cp, then ours)")
    parser.add_argument("--dir", default="/var/tmp", help="where the set is made")
    parser.add_argument(
        "--part",
        choices=("copier", "cli", "job", "both"),
        default="both",
        help="which part to run (job: the copy job alone, without the CLI)",
    )
    return parser.parse_args(argv or [])


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.part in ("copier", "both"):
        run_copier(args)
    if args.part in ("cli", "job", "both"):
        with tempfile.TemporaryDirectory(dir=args.dir, prefix="sendense-bench-copy-") as tmp:
            forms = run_cli_pairs(args, Path(tmp))
        for what, ratios in forms.items():
            ratio = statistics.median(ratios)
            verdict = "OK" if ratio >= 0.9 else "BELOW GOAL"
            print(f"{what}: ratio (median of rounds) {ratio:.2f} (goal >= 0.9) {verdict}")


def run_copier(args: argparse.Namespace) -> None:
    """cp + sync vs engine.copier.copy_file of a file set, pair by pair."""
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
        print(f"copier alone: ratio (median of pairs) {ratio:.2f} (goal >= 0.9) {verdict}")


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
