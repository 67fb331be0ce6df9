"""``sendense demo``: a real, small Sendense in a temporary directory.

Nothing here is a stand-in: three local repositories (folders), two VMs whose disks
are small files (web01's sda is a GPT disk with an ext4 partition, made without
mounting anything), backed up through the engine's own backup service by policy runs
on three past nights (a full, then incrementals), copied to a second repository by
a copy rule, copied and locked (``chattr +i``) on an immutable third where the
filesystem allows it, and verified. Every figure the console shows is then read
from those files: the Repositories, Capacity and Chains screens agree because they
read the same things. No job is left queued, and every source a policy names exists.

The README screenshots are taken from this world too (``scripts/make_screenshots.py``)
on a fixed clock; the console the demo opens runs on the system clock.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from engine.clock import SYSTEM_CLOCK, Clock, FixedClock
from engine.config import CapacitySettings, Settings, default_settings
from engine.errors import SendenseError
from engine.runtime import Engine
from engine.services.policies import PolicySpec
from engine.services.repositories import RepositorySpec
from engine.tools import attrs, fsbuild

log = logging.getLogger(__name__)

MiB = 1024**2
#: the nights the demo's history was backed up (the last one is "last night")
NIGHTS = 3
#: the repository that locks what lands on it, for this many days
LOCK_DAYS = 7

#: (vm, disk) -> size of its source; web01/sda holds a filesystem (restore browses it)
DISKS: dict[tuple[str, str], int] = {
    ("web01", "sda"): 24 * MiB,
    ("web01", "sdb"): 8 * MiB,
    ("db01", "vda"): 16 * MiB,
}


class DemoError(SendenseError):
    """The demo could not be built."""


@dataclass(frozen=True)
class DemoWorld:
    """Where the demo lives: everything is under ``root``."""

    root: Path

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def sources(self) -> Path:
        return self.root / "sources"

    def repository(self, name: str) -> Path:
        return self.root / "repositories" / name

    def source(self, vm: str, disk: str) -> Path:
        return self.sources / f"{vm}-{disk}.raw"

    def settings(self) -> Settings:
        # the repositories are small folders on a big filesystem: no reserve to keep
        base = default_settings(self.state_dir)
        return dataclasses.replace(
            base, capacity=dataclasses.replace(CapacitySettings(), min_free_bytes=0)
        )

    def engine(self, clock: Clock = SYSTEM_CLOCK) -> Engine:
        """An opened (not started) engine on the demo's catalog."""
        return Engine(self.settings(), clock=clock).open()


# -- the guest disks ------------------------------------------------------------------


def _t(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp())


INSTALLED, EDITED = _t("2026-10-02 11:47"), _t("2026-11-12 16:20")
NGINX_CONF = """user www-data;
worker_processes auto;
pid /run/nginx.pid;

events {{
    worker_connections {connections};
}}

http {{
    sendfile on;
    server_tokens off;
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log /var/log/nginx/access.log;
    error_log /var/log/nginx/error.log;
    gzip on;
{extra}    include /etc/nginx/conf.d/*.conf;
    include /etc/nginx/sites-enabled/*;
}}
"""
SITE = """server {
    listen 80 default_server;
    server_name app01.example;
    root /var/www/html;
    index index.html;
}
"""


def guest_files(night: int, changed_at: int) -> dict[str, tuple[bytes | str, int]]:
    """path -> (contents, or "->target" for a symlink; mtime) on web01's root
    filesystem after ``night`` (nginx.conf changes every night)."""
    extra = "    gzip_types text/css application/javascript;\n" if night else ""
    conf = NGINX_CONF.format(connections=768 * (night + 1), extra=extra)
    return {
        "etc/hostname": (b"web01\n", INSTALLED),
        "etc/hosts": (b"127.0.0.1 localhost\n10.0.4.21 web01.example web01\n", INSTALLED),
        "etc/nginx/nginx.conf": (conf.encode(), changed_at if night else EDITED),
        "etc/nginx/sites-available/web01.conf": (SITE.encode(), EDITED),
        "etc/nginx/sites-enabled/web01.conf": ("->../sites-available/web01.conf", EDITED),
        "var/www/html/index.html": (b"<!doctype html>\n<h1>It works.</h1>\n", INSTALLED),
        "home/alice/notes.txt": (b"- rotate the TLS certificate before 2026-12-15\n", EDITED),
        "var/log/nginx/access.log": (
            b"".join(b'10.0.4.9 - - "GET / HTTP/1.1" 200 612\n' for _ in range(200 * (night + 1))),
            changed_at,
        ),
    }


def build_guest_disk(path: Path, files: dict[str, tuple[bytes | str, int]]) -> None:
    """A raw disk: GPT, one ext4 partition (p1) holding ``files``; built by
    ``mkfs.ext4 -d`` and ``sfdisk`` (nothing is mounted), fixed UUIDs."""
    size = DISKS[("web01", "sda")]
    stage = path.parent / f"{path.name}.stage"
    shutil.rmtree(stage, ignore_errors=True)
    for rel, (content, mtime) in sorted(files.items()):
        target = stage / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            os.symlink(content[2:], target)
        else:
            target.write_bytes(content)
            target.chmod(0o644)
        os.utime(target, (mtime, mtime), follow_symlinks=False)
    for directory, _, _ in sorted(os.walk(stage), key=lambda d: -len(d[0])):
        os.utime(directory, (INSTALLED, INSTALLED))
    part = path.parent / f"{path.name}.p1"
    with open(part, "wb") as f:
        f.truncate(size - 2 * MiB)
    fsbuild.make_ext4(part, stage, label="root", uuid="6b1f3c52-0d4e-4a8e-9a57-3f1c2b7d9e10")
    with open(path, "wb") as f:
        f.truncate(size)
    fsbuild.write_gpt(
        path,
        label_id="0E3C6F2A-5B1D-4C8E-9F70-2A6D4B8C1E35",
        start=2048,
        sectors=(size - 2 * MiB) // 512,
        part_uuid="7C2E9A14-3F6B-4D0A-8E51-9B4F2C6D8A37",
    )
    with open(part, "rb") as src, open(path, "r+b") as dst:
        dst.seek(MiB)
        while chunk := src.read(MiB):
            dst.write(chunk)
    part.unlink()
    shutil.rmtree(stage)


def write_data_disk(path: Path, size: int, night: int) -> None:
    """A raw disk with a few areas of data; each night changes one more of them."""
    if not path.exists():
        with open(path, "wb") as f:
            f.truncate(size)
    with open(path, "r+b") as f:
        for area in range(night + 2):
            f.seek((area * 3 * MiB) % (size - MiB))
            f.write(bytes([(night * 31 + area * 7 + i) % 251 for i in range(256)]) * 1024)


# -- building ---------------------------------------------------------------------------


def _wait_for_jobs(engine: Engine, job_ids: list[int], timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    pending = set(job_ids)
    while pending:
        for job_id in list(pending):
            job = engine.jobs.get(job_id)
            if job.state in ("succeeded", "failed", "failed_unprotected", "cancelled"):
                pending.discard(job_id)
                if job.state != "succeeded":
                    raise DemoError(f"demo job {job.title} ended {job.state}: {job.error}")
        if pending and time.monotonic() > deadline:
            raise DemoError("the demo's jobs did not finish in time")
        time.sleep(0.05)


def build_demo(
    world: DemoWorld,
    *,
    now: datetime | None = None,
    say: Callable[[str], None] = lambda _: None,
) -> None:
    """Make the demo's repositories, disks, policies, backups, copies, locks and
    verifications under ``world.root`` (empty or missing). ``now`` fixes the last
    moment of its history (screenshots); by default the system clock's."""
    now = (now or SYSTEM_CLOCK.now()).astimezone(UTC).replace(microsecond=0)
    last_night = (now - timedelta(hours=2)).replace(hour=2, minute=0, second=0)
    clock = FixedClock(last_night - timedelta(days=NIGHTS - 1))
    for folder in (world.state_dir, world.sources):
        folder.mkdir(parents=True, exist_ok=True)
    engine = Engine(world.settings(), clock=clock).open()
    try:
        say("repositories: primary, offsite, archive")
        for name, offsite in (("primary", False), ("offsite", True), ("archive", True)):
            engine.repositories.add(
                RepositorySpec(
                    name=name,
                    kind="local",
                    path=str(world.repository(name)),
                    create=True,
                    offsite=offsite,
                ),
                actor="demo",
            )
        for name, schedule, vm in (
            ("web-nightly", "0 2 * * *", "web01"),
            ("db-nightly", "30 2 * * *", "db01"),
        ):
            disks = [d for (v, d) in DISKS if v == vm]
            engine.policies.add(
                PolicySpec(
                    name=name,
                    schedule=schedule,
                    target="primary",
                    sources=PolicySpec.sources_from(
                        [f"{vm}:{d}={world.source(vm, d)}" for d in disks]
                    ),
                    retention={"keep_last": 7},
                ),
                actor="demo",
            )
        engine.copies.add_rule(
            name="to-offsite", source="primary", destination="offsite", selection="all"
        )
        engine.start(run_scheduler=False)
        for night in range(NIGHTS):
            clock.set(last_night - timedelta(days=NIGHTS - 1 - night))
            say(f"night {night + 1} of {NIGHTS}: backing up web01 and db01")
            changed = int(clock.now().timestamp()) - 3600
            build_guest_disk(world.source("web01", "sda"), guest_files(night, changed))
            for (vm, disk), size in DISKS.items():
                if (vm, disk) != ("web01", "sda"):
                    write_data_disk(world.source(vm, disk), size, night)
            jobs = [
                engine.policies.run_now(name, actor="demo").id
                for name in ("web-nightly", "db-nightly")
            ]
            _wait_for_jobs(engine, jobs)
        clock.set(now - timedelta(minutes=20))
        say("copying to offsite; verifying")
        _wait_for_jobs(engine, [engine.copies.run_rule("to-offsite", actor="demo").id])
        _wait_for_jobs(engine, [engine.verifier.submit("all", actor="demo").id])
        clock.set(now - timedelta(minutes=10))
        if _can_lock(world.repository("archive")):
            say(f"archive: immutable, {LOCK_DAYS}-day locks; copying the latest points")
            engine.locks.configure_repository("archive", LOCK_DAYS, actor="demo")
            engine.copies.add_rule(
                name="to-archive",
                source="primary",
                destination="archive",
                selection="latest",
                latest_count=1,
            )
            _wait_for_jobs(engine, [engine.copies.run_rule("to-archive", actor="demo").id])
        clock.set(now)
        # readings stamped with the history's made-up past times would invent growth
        # (a forecast from minutes of real time): the capacity history starts now
        engine.capacity.forget_before(now)
        engine.capacity.sample_all()
    finally:
        engine.close()


def _can_lock(folder: Path) -> bool:
    """``chattr +i`` works here (root, and ext4/xfs/btrfs under the folder)."""
    if os.geteuid() != 0:
        return False
    probe = folder / ".lock-probe"
    try:
        probe.write_bytes(b"")
        attrs.set_immutable(probe, True)
        attrs.set_immutable(probe, False)
        return True
    except (OSError, SendenseError):
        return False
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()


def remove_world(world: DemoWorld) -> None:
    """Remove the demo's directory, locked files included (their locks were the
    demo's own): flags off first, then the tree."""
    if not world.root.exists():
        return
    if os.geteuid() == 0:
        for current, dirs, files in os.walk(world.root):
            for name in [*dirs, *files]:
                path = Path(current) / name
                if path.is_symlink():
                    continue
                with contextlib.suppress(OSError, SendenseError):
                    if attrs.is_immutable(path):
                        attrs.set_immutable(path, False)
    shutil.rmtree(world.root)


@contextlib.contextmanager
def demo_world(
    root: Path, *, now: datetime | None = None, say: Callable[[str], None] = lambda _: None
) -> Iterator[DemoWorld]:
    """A demo built under ``root`` (made here), removed again at the end."""
    world = DemoWorld(root)
    root.mkdir(mode=0o700)
    try:
        build_demo(world, now=now, say=say)
        yield world
    finally:
        remove_world(world)
