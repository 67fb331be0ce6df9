#!/usr/bin/env python3
"""Make the README screenshots: the app drives itself on the seeded demo catalog
(fixed clock) to each screen and saves an SVG into screenshots/.

The Restore shot is real when run as root: a small GPT disk with an ext4
partition is built, backed up through the engine (a full, then an incremental
after a file changed), the incremental is mounted and exported over NBD, and
the console browses it. Everything lives in ``RESTORE_DIR`` (a fixed path, so
the NBD URI shown is the same on every run) and is torn down afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import types
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


import engine.services.exports as exports_module  # noqa: E402
from engine.runtime import Engine  # noqa: E402
from engine.services.backup import DiskSource  # noqa: E402
from engine.services.policies import PolicySpec  # noqa: E402
from sendense_tui.app import SendenseApp  # noqa: E402
from sendense_tui.demo import (  # noqa: E402
    DEMO_TIME,
    build_demo_engine,
    demo_clock,
    seed_demo_capacity,
    seed_demo_catalog,
    seed_demo_chains,
)
from sendense_tui.screens.base import SendenseScreen  # noqa: E402

SIZE = (120, 36)


def seed_policies(engine: Engine) -> None:
    """Two policies and a copy rule to a local "usb-disk" repository (catalog rows only)."""
    for name, schedule, vm in (
        ("nightly-web", "0 2 * * *", "web01"),
        ("db-hourly", "15 * * * *", "db01"),
    ):
        engine.policies.add(
            PolicySpec(
                name=name,
                schedule=schedule,
                target="primary",
                sources=PolicySpec.sources_from([f"{vm}:sda=/dev/vg/{vm}"]),
                retention={"keep_last": 7, "daily": 7, "weekly": 4},
            )
        )
    usb = Path(engine.settings.state_dir) / "usb-disk"
    usb.mkdir(exist_ok=True)
    engine.repository_store.add(
        name="usb-disk", kind="local", path=str(usb), now=engine.clock.now()
    )
    engine.copies.add_rule(name="to-usb", source="primary", destination="usb-disk")


#: name -> (keys pressed once the dashboard is up, extra demo data)
SHOTS: dict[str, tuple[tuple[str, ...], tuple[Callable[[Engine], None], ...]]] = {
    "dashboard": ((), ()),
    "repositories": (("2",), ()),
    "capacity": (("3",), (seed_demo_capacity,)),
    "chains": (("4", "j", "j", "j"), (seed_demo_chains,)),
    "policies": (("5",), (seed_demo_chains, seed_policies)),
    "copy_rules": (("5", "c"), (seed_policies,)),
    "jobs": (("6",), ()),
    "restore": (("7",), (seed_demo_chains,)),
    "events": (("8",), ()),
    "help": (("6", "question_mark"), ()),
}


async def settle(pilot) -> None:  # type: ignore[no-untyped-def]
    app = pilot.app
    for _ in range(200):
        await pilot.pause()
        await app.workers.wait_for_complete()
        await pilot.pause()
        base = app.screen_stack[0] if app.screen_stack else app.screen
        if not isinstance(base, SendenseScreen) or (base.draws and not base.busy):
            break


async def shoot(
    name: str,
    keys: tuple[str, ...],
    seeds: tuple[Callable[[Engine], None], ...],
    out_dir: Path,
    state: Path,
) -> Path:
    clock = demo_clock()
    engine = build_demo_engine(state / name, clock)
    seed_demo_catalog(engine, clock)
    for seed in seeds:
        seed(engine)
    try:
        app = SendenseApp(engine, clock=clock, live=False)
        app.animation_level = "none"
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            for key in keys:
                await pilot.press(key)
                await settle(pilot)
            return Path(app.save_screenshot(filename=f"{name}.svg", path=str(out_dir)))
    finally:
        engine.close()


# -- the real Restore shot (root) ------------------------------------------------------

#: fixed, so the socket path in the NBD URI is the same on every run
RESTORE_DIR = Path("/tmp/sendense-screenshots")
VM, DISK = "app01", "sda"
FULL_AT = DEMO_TIME - timedelta(days=1, hours=7)  # 2026-11-23 02:00
INCREMENTAL_AT = DEMO_TIME - timedelta(hours=7)  # 2026-11-24 02:00
#: the keys pressed on the Restore screen: browse p1/etc/nginx, mark nginx.conf
RESTORE_KEYS = ("tab", "enter", "enter", "enter", *("down",) * 5, "space")


def _t(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp())


INSTALLED, EDITED, CHANGED = _t("2026-10-02 11:47"), _t("2026-11-12 16:20"), _t("2026-11-23 18:41")
NGINX_CONF = """user www-data;
worker_processes auto;
pid /run/nginx.pid;
include /etc/nginx/modules-enabled/*.conf;

events {{
    worker_connections {connections};
}}

http {{
    sendfile on;
    tcp_nopush on;
    types_hash_max_size 2048;
    server_tokens off;

    include /etc/nginx/mime.types;
    default_type application/octet-stream;

    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_prefer_server_ciphers on;

    access_log /var/log/nginx/access.log;
    error_log /var/log/nginx/error.log;

    gzip on;
{extra}
    include /etc/nginx/conf.d/*.conf;
    include /etc/nginx/sites-enabled/*;
}}
"""
MIME_TYPES = (
    "types {\n"
    + "".join(
        f"    {kind:<40}{ext};\n"
        for kind, ext in (
            ("text/html", "html htm shtml"),
            ("text/css", "css"),
            ("text/xml", "xml"),
            ("image/gif", "gif"),
            ("image/jpeg", "jpeg jpg"),
            ("application/javascript", "js"),
            ("application/atom+xml", "atom"),
            ("application/rss+xml", "rss"),
            ("text/plain", "txt"),
            ("image/png", "png"),
            ("image/svg+xml", "svg svgz"),
            ("image/webp", "webp"),
            ("font/woff", "woff"),
            ("font/woff2", "woff2"),
            ("application/json", "json"),
            ("application/pdf", "pdf"),
            ("application/zip", "zip"),
            ("audio/mpeg", "mp3"),
            ("video/mp4", "mp4"),
            ("video/webm", "webm"),
        )
    )
    * 8
    + "}\n"
)
SITE = """server {
    listen 80 default_server;
    listen [::]:80 default_server;
    server_name app01.example;
    root /var/www/html;
    index index.html;

    location / {
        try_files $uri $uri/ =404;
    }
}
"""


def disk_files(version: int) -> dict[str, tuple[bytes | str, int]]:
    """path -> (contents, or "->target" for a symlink; mtime) on the disk at ``version``."""
    extra = "    gzip_types text/css application/javascript application/json;\n"
    conf = NGINX_CONF.format(
        connections=768 if version == 1 else 2048, extra=extra if version > 1 else ""
    )
    return {
        "etc/hostname": (b"app01\n", INSTALLED),
        "etc/hosts": (b"127.0.0.1 localhost\n10.0.4.21 app01.example app01\n", INSTALLED),
        "etc/nginx/nginx.conf": (conf.encode(), EDITED if version == 1 else CHANGED),
        "etc/nginx/mime.types": (MIME_TYPES.encode(), INSTALLED),
        "etc/nginx/fastcgi_params": (
            b"fastcgi_param QUERY_STRING $query_string;\n" * 17,
            INSTALLED,
        ),
        "etc/nginx/conf.d/upstream.conf": (b"upstream app { server 127.0.0.1:8080; }\n", EDITED),
        "etc/nginx/sites-available/app01.conf": (SITE.encode(), EDITED),
        "etc/nginx/sites-enabled/app01.conf": ("->../sites-available/app01.conf", EDITED),
        "var/www/html/index.html": (
            b"<!doctype html>\n<title>app01</title>\n<h1>It works.</h1>\n",
            INSTALLED,
        ),
        "home/alice/notes.txt": (
            b"- rotate the TLS certificate before 2026-12-15\n- nginx: raise worker_connections\n",
            EDITED,
        ),
    }


def sh(*args: str, input_text: str | None = None, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        list(args),
        capture_output=True,
        text=True,
        input=input_text,
        env={**os.environ, "LC_ALL": "C", **(env or {})},
        timeout=120,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def build_disk(path: Path, version: int) -> None:
    """A 64 MiB raw disk: GPT, one ext4 partition (p1) holding ``disk_files(version)``;
    built by mkfs.ext4 -d (nothing mounted), with fixed UUIDs and times."""
    stage = path.parent / "stage"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    for rel, (content, mtime) in sorted(disk_files(version).items()):
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
    fs_image = path.parent / "p1.ext4"
    fs_image.unlink(missing_ok=True)
    with open(fs_image, "wb") as f:
        f.truncate(62 * 1024**2)
    fs_uuid = "6b1f3c52-0d4e-4a8e-9a57-3f1c2b7d9e10"
    sh(
        "mkfs.ext4", "-q", "-F", "-L", "root", "-U", fs_uuid,
        "-E", f"hash_seed={fs_uuid}", "-d", str(stage), str(fs_image),
        env={"E2FSPROGS_FAKE_TIME": str(INSTALLED)},
    )  # fmt: skip
    with open(path, "wb") as f:
        f.truncate(64 * 1024**2)
    sh(
        "sfdisk", "-q", str(path),
        input_text="label: gpt\nlabel-id: 0E3C6F2A-5B1D-4C8E-9F70-2A6D4B8C1E35\n"
        "start=2048, size=126976, type=L, uuid=7C2E9A14-3F6B-4D0A-8E51-9B4F2C6D8A37\n",
    )  # fmt: skip
    with open(fs_image, "rb") as src, open(path, "r+b") as dst:
        dst.seek(1024**2)
        while chunk := src.read(1024**2):
            dst.write(chunk)
    fs_image.unlink()
    shutil.rmtree(stage)


def leftovers(base: Path) -> list[str]:
    """Mounts, loop devices and processes still using ``base``."""
    real = os.path.realpath(base)
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            target = line.split()[4].replace("\\040", " ")
            if target == real or target.startswith(real + "/"):
                found.append(f"mount {target}")
    found += [f"loop {line}" for line in sh("losetup", "-a").splitlines() if real in line]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                if real.encode() in (entry / "cmdline").read_bytes():
                    found.append(f"process {entry.name}")
    return found


@contextlib.contextmanager
def fixed_export_key() -> Iterator[None]:
    """The export service names its socket with a random key; a fixed one keeps the
    URI on the screenshot the same on every run."""
    real = exports_module.uuid
    exports_module.uuid = types.SimpleNamespace(  # type: ignore[assignment]
        uuid4=lambda: uuid.UUID("5ec0de11-0000-4000-8000-000000000000")
    )
    try:
        yield
    finally:
        exports_module.uuid = real


async def shoot_restore_real(out_dir: Path) -> Path:
    """The Restore screen browsing a real, mounted incremental (needs root)."""
    if leftovers(RESTORE_DIR):
        raise RuntimeError(f"{RESTORE_DIR} is still in use: {', '.join(leftovers(RESTORE_DIR))}")
    shutil.rmtree(RESTORE_DIR, ignore_errors=True)
    work, state, repo_dir = RESTORE_DIR / "work", RESTORE_DIR / "state", RESTORE_DIR / "repo"
    for directory in (work, state, repo_dir):
        directory.mkdir(parents=True)
    clock = demo_clock()
    engine = build_demo_engine(state, clock)
    try:
        seed_demo_catalog(engine, clock)
        seed_demo_chains(engine, clock)
        engine.repository_store.add(
            name="local", kind="local", path=str(repo_dir), now=FULL_AT, state="online"
        )
        raw = work / f"{VM}-{DISK}.raw"
        for version, when, mode in ((1, FULL_AT, "full"), (2, INCREMENTAL_AT, "incremental")):
            build_disk(raw, version)
            clock.set(when)
            run = engine.backups.run("local", VM, [DiskSource(DISK, str(raw), "raw")], mode=mode)
            if not run.ok:
                raise RuntimeError(run.sentence())
        clock.set(DEMO_TIME)
        point = run.disks[0].backup_id
        assert point is not None
        mount = engine.file_restore.mount(point)
        with fixed_export_key():
            export = engine.exports.start(point, name=f"{VM}-{DISK}")
        try:
            app = SendenseApp(engine, clock=clock, live=False)
            app.animation_level = "none"
            async with app.run_test(size=SIZE) as pilot:
                await settle(pilot)
                for key in ("7", *RESTORE_KEYS):
                    await pilot.press(key)
                    await settle(pilot)
                shot = Path(app.save_screenshot(filename="restore.svg", path=str(out_dir)))
        finally:
            engine.exports.stop(export.id)
            engine.file_restore.unmount(mount.id)
    finally:
        engine.close()
    left = leftovers(RESTORE_DIR)
    if left:
        raise RuntimeError(f"left behind under {RESTORE_DIR}: {', '.join(left)}")
    shutil.rmtree(RESTORE_DIR)
    return shot


def main(argv: list[str]) -> int:
    """Make every screenshot, or only those named on the command line."""
    unknown = set(argv) - set(SHOTS)
    if unknown:
        print(f"unknown shot(s): {', '.join(sorted(unknown))}; known: {', '.join(SHOTS)}")
        return 2
    out_dir = ROOT / "screenshots"
    out_dir.mkdir(exist_ok=True)
    real_restore = os.geteuid() == 0
    if not real_restore and (not argv or "restore" in argv):
        print("not root: the restore shot shows catalog rows only (mounting a point needs root)")
    with tempfile.TemporaryDirectory() as state:
        for name, (keys, seeds) in SHOTS.items():
            if argv and name not in argv:
                continue
            if name == "restore" and real_restore:
                path = asyncio.run(shoot_restore_real(out_dir))
            else:
                path = asyncio.run(shoot(name, keys, seeds, out_dir, Path(state)))
            print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
