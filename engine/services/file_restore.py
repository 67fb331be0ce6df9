"""File-level restore: mount a restore point read-only, browse, search, extract.

This module mounts and unmounts (and composes the service); browsing and searching a
mount live in ``restore_browse``, extraction in ``restore_extract``.

How a point is mounted (no kernel NBD module needed):

1. ``qemu-storage-daemon`` exports the QCOW2 (with its whole backing chain, each
   layer spelled out as the catalog records it, after its header was checked:
   engine.services.images) as a raw, read-only regular file ``<base>/disk.raw``
   through FUSE. A bad point is mounted from a verified copy, or refused, or with
   ``force`` mounted anyway and reported as unverified;
2. ``losetup -r`` attaches that file; ``sfdisk --json`` reads the partition
   table (none: a bare filesystem); ``partx -a`` makes partition nodes, and
   when the kernel makes none an offset loop device stands in;
3. each filesystem is probed with ``blkid`` and mounted read-only under
   ``<base>/fs/<name>`` (``p1``, ``p2``… or ``disk``): ext2/3/4 with
   ``noload``, xfs with ``norecovery,nouuid``, NTFS through ntfs-3g
   (mounts.NTFS_OPTIONS), always ``nosuid,nodev,noexec``. An LVM physical
   volume becomes its logical volumes (``vg0-home``…, guest_volumes: read from
   their place on the disk, never activated on the appliance), each probed and
   mounted the same way. A partition whose filesystem is unknown, or has no
   driver here, is listed with the reason instead.

Teardown runs the other way: umount → dmsetup remove (our volumes' mappings) →
losetup -d → stop the exporter →
``fusermount3 -u`` if a FUSE mount is left. It is driven by what is really on
the machine (mountinfo, losetup, the pidfile), so it also cleans up after a
crash. Every mount row has an expiry (default one hour), pushed forward by
each use; :meth:`FileRestoreService.reap_expired` removes idle ones.

Extraction policy (restore_extract: what the guest had comes back, and nothing is
ever written outside the destination or through a link):

- paths from the operator are split into components; ``..`` components are
  refused, names that only contain dots (``..evil``) are ordinary names;
- browsing and selection never pass through a symbolic link inside the backup;
- everything is created relative to open directory descriptors with
  ``O_NOFOLLOW``/``follow_symlinks=False``, under a temporary name renamed into
  place once complete (a failure leaves no half file under the real name);
- symbolic links are restored exactly (absolute or relative, any target): a link
  is data, and no later write goes through one, restored or planted beforehand;
- numeric owners, setuid/setgid/sticky bits, times, xattrs (ACLs, capabilities),
  hard links and holes are kept; fifos, devices and sockets only with
  ``specials`` (otherwise listed as not restored);
- a destination folder the extraction creates is root-only (0700); ``owner``
  gives everything to one user instead, without setuid/setgid bits;
- an existing file at the destination is kept unless ``overwrite`` is set.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.catalog.copies import CopyStore
from engine.catalog.db import Catalog
from engine.catalog.models import RestoreMount
from engine.catalog.restore import PointLocation, RestoreStore
from engine.clock import SYSTEM_CLOCK, Clock, as_utc
from engine.config import Settings
from engine.errors import Action, CatalogUnavailable, SendenseError
from engine.events import Event, EventBus
from engine.jobs import JobHandler
from engine.owners import owner_alive
from engine.private import make_private_dir, make_private_dirs
from engine.services import guest_volumes
from engine.services.guest_volumes import Region
from engine.services.images import ImageGuard, PointRead, PointReader, PointUnreadable
from engine.services.restore_archive import Archiving
from engine.services.restore_browse import MountBrowsing
from engine.services.restore_extract import Extraction
from engine.services.restore_views import (
    Entry,
    ExtractResult,
    FileRestoreError,
    FilesystemView,
    MountView,
    Source,
)
from engine.states import JobKind
from engine.tools import exporters, loop, mounts, partitions
from engine.tools.base import ToolError, which

#: the service and the names its callers use (views live in restore_views)
__all__ = [
    "DETACHED",
    "Entry",
    "ExtractResult",
    "FileRestoreError",
    "FileRestoreService",
    "FilesystemView",
    "MountView",
    "Source",
    "teardown_dir",
]

if TYPE_CHECKING:
    from engine.jobs import JobRunner

log = logging.getLogger(__name__)

DEFAULT_TTL = timedelta(hours=1)
EXPORTER = "qemu-storage-daemon"

#: service instances alive in this process (owner tokens): rows owned by a token
#: of this process that is not here are leftovers of a crashed/abandoned engine
_LIVE_OWNERS: set[str] = set()
_HOST = socket.gethostname()
#: owner of a mount made for a short-lived process (the CLI): it outlives that
#: process and goes away when unmounted or when its expiry passes
DETACHED = f"{_HOST}:detached"


class FileRestoreService(MountBrowsing, Extraction, Archiving):
    """Restore mounts (here), browsing them (restore_browse) and extracting from them
    (restore_extract): one service, ``engine.file_restore``."""

    def __init__(
        self,
        catalog: Catalog,
        bus: EventBus,
        settings: Settings,
        reader: PointReader | None = None,
        *,
        clock: Clock = SYSTEM_CLOCK,
        ttl: timedelta = DEFAULT_TTL,
        jobs: JobRunner | None = None,
    ) -> None:
        self.store = RestoreStore(catalog)
        #: runs extractions as ``restore.files`` jobs (Jobs shows them, they cancel)
        self.jobs = jobs
        self.bus = bus
        #: opens points the catalog's way and picks a verified copy for a bad one
        self.reader = reader or PointReader(self.store.chains, CopyStore(catalog), ImageGuard(bus))
        self.clock = clock
        self.settings = settings
        self.ttl = ttl
        self.root = Path(settings.state_dir) / "restore"
        self.owner = f"{_HOST}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        _LIVE_OWNERS.add(self.owner)
        self._lock = threading.RLock()
        self._reaper: threading.Thread | None = None
        self._reaper_stop = threading.Event()
        #: mounts made here outlive this engine (a console whose daemon owns the work)
        self.detach = False

    def job_handlers(self) -> dict[JobKind, JobHandler]:
        return {
            JobKind.RESTORE_FILES: JobHandler(self.run_extract_job),
            JobKind.RESTORE_ARCHIVE: JobHandler(self.run_archive_job),
        }

    def set_detach(self, detach: bool) -> None:
        """Whether mounts made from now on outlive this engine (``Engine.attach_daemon``:
        while a daemon runs, a console's mounts are handed to it)."""
        self.detach = detach

    # -- views -------------------------------------------------------------------

    def _view(self, row: RestoreMount, *, reused: bool = False) -> MountView:
        point = None
        with contextlib.suppress(SendenseError):
            point = self.store.locate(row.backup_id)
        return MountView(
            id=row.id,
            backup_id=row.backup_id,
            state=row.state,
            base_dir=row.base_dir,
            filesystems=tuple(
                FilesystemView(
                    name=str(f.get("name")),
                    number=f.get("number"),
                    fs_type=str(f.get("fs_type") or "unknown"),
                    state=str(f.get("state") or "error"),
                    path=f.get("path"),
                    device=f.get("device"),
                    size=int(f.get("size") or 0),
                    label=str(f.get("label") or ""),
                    detail=str(f.get("detail") or ""),
                    volume=str(f.get("volume") or ""),
                )
                for f in (row.filesystems or [])
            ),
            created_at=as_utc(row.created_at) or row.created_at,
            last_used_at=as_utc(row.last_used_at) or row.last_used_at,
            expires_at=as_utc(row.expires_at) or row.expires_at,
            exporter_pid=row.exporter_pid,
            point=point,
            reused=reused,
        )

    def get(self, mount_id: int) -> MountView:
        return self._view(self.store.get_mount(mount_id))

    def list_mounts(self) -> list[MountView]:
        return [self._view(row) for row in self.store.mounts(states=("mounting", "mounted"))]

    def points(
        self, *, vm_name: str | None = None, disk_name: str | None = None
    ) -> list[PointLocation]:
        return self.store.points(vm_name=vm_name, disk_name=disk_name)

    def points_page(
        self, *, offset: int = 0, limit: int = 100, words: Sequence[str] = ()
    ) -> tuple[list[PointLocation], int]:
        """A page of ``points`` (VM, disk, newest first) and the number of points in
        all; ``words`` narrow it to points whose VM, disk, kind or time (as
        ``YYYY-MM-DD HH:MM`` in UTC) holds each word."""
        return self.store.points_page(offset=offset, limit=limit, words=words)

    # -- mount ---------------------------------------------------------------------

    def mount(
        self,
        backup_id: int,
        *,
        ttl: timedelta | None = None,
        actor: str | None = None,
        detached: bool | None = None,
        force: bool = False,
    ) -> MountView:
        """Mount a restore point read-only; a point already mounted is reused.

        ``detached``: the mount outlives this engine (CLI use, a console with a
        daemon) until it is unmounted or expires; otherwise the engine unmounts it
        when it closes. Default: ``self.detach``.
        ``force``: mount a bad point that has no verified copy anyway (unverified).
        """
        ttl = ttl or self.ttl
        detached = self.detach if detached is None else detached
        point = self.store.locate(backup_id)
        plan = self.reader.plan(backup_id, force=force)
        with self._lock:
            for row in self.store.mounts_of(backup_id, states=("mounting", "mounted")):
                # a point found bad since it was mounted is mounted again from the
                # place the plan names (a verified copy), never served from the old one
                if row.state == "mounted" and plan.note is None and self._healthy(row):
                    now = self.clock.now()
                    row = self.store.update_mount(
                        row.id, last_used_at=now, expires_at=max(as_utc(row.expires_at), now + ttl)
                    )
                    return self._view(row, reused=True)
                if (
                    row.state == "mounting"
                    and owner_alive(row.owner, live_here=_LIVE_OWNERS)
                    and row.owner != self.owner
                ):
                    raise FileRestoreError(
                        f"restore point {backup_id} is being mounted by another console",
                        hint="try again in a few seconds",
                    )
                self._teardown(row)
            try:
                read = self.reader.open(backup_id, force=force)
            except PointUnreadable as exc:
                raise FileRestoreError(
                    f"cannot mount restore point {backup_id} ({point.label}): {exc.message}",
                    hint=exc.hint,
                    action=None
                    if exc.hint
                    else Action("check_repository_mounted", "is the repository mounted?"),
                ) from None
            view = self._mount_new(point, read, ttl, actor, DETACHED if detached else self.owner)
            return replace(view, note=read.note)

    def _mount_new(
        self, point: PointLocation, read: PointRead, ttl: timedelta, actor: str | None, owner: str
    ) -> MountView:
        now = self.clock.now()
        row = self.store.add_mount(
            backup_id=point.backup_id,
            state="mounting",
            base_dir="",
            owner=owner,
            created_at=now,
            last_used_at=now,
            expires_at=now + ttl,
            filesystems=[],
        )
        base = self.root / f"m{row.id}"
        self.store.update_mount(row.id, base_dir=str(base))
        row.base_dir = str(base)
        try:
            filesystems, device, pid = self._assemble(point, read, base)
        except BaseException as exc:
            try:
                self._teardown(row)
            except SendenseError as cleanup:  # pragma: no cover - reported, first error wins
                log.error("cleanup after a failed mount: %s", cleanup)
            if isinstance(exc, ToolError):
                raise FileRestoreError(
                    f"cannot mount restore point {point.backup_id} ({point.label}): {exc}",
                    hint=exc.hint or "verify the backup chain: it may be damaged",
                ) from None
            raise
        now = self.clock.now()
        row = self.store.update_mount(
            row.id,
            state="mounted",
            loop_device=device,
            exporter_pid=pid,
            filesystems=filesystems,
            last_used_at=now,
            expires_at=now + ttl,
        )
        names = ", ".join(
            f"{f['name']} ({f['fs_type']})" for f in filesystems if f["state"] == "mounted"
        )
        self.bus.publish(
            Event(
                kind="restore.mounted",
                message=f"mounted {point.label} for file restore: {names}"
                + (f" ({read.note})" if read.note else ""),
                level="warning" if read.plan.unverified else "info",
                source="restore",
                actor=actor,
                data={"mount_id": row.id, "backup_id": point.backup_id, **read.as_dict()},
            )
        )
        return self._view(row)

    def _assemble(
        self, point: PointLocation, read: PointRead, base: Path
    ) -> tuple[list[dict[str, Any]], str, int]:
        # the mount's folder is the only way to the backup's files: root only (the
        # filesystems inside keep the guest's modes, so nothing above them may be open)
        make_private_dir(self.root)
        make_private_dir(base)
        disk = base / "disk.raw"
        server = exporters.start_fuse_export(
            read.spec, disk, pidfile=base / "exporter.pid", log_file=base / "exporter.log"
        )
        self.store.update_mount(int(base.name[1:]), exporter_pid=server.pid)
        device = loop.attach(disk, read_only=True)
        self.store.update_mount(int(base.name[1:]), loop_device=device)
        table = partitions.read_table(device)
        size = os.path.getsize(disk)
        fs_dir = make_private_dir(base / "fs")
        found: list[dict[str, Any]] = []
        regions = _regions(device, table, size)
        # one set of names for the whole disk: two partitions' volume groups may share
        # a name (vg0-root twice) and must still get a folder each
        used = {region.name for region in regions}
        for region in regions:
            found += self._mount_region(device, disk, region, fs_dir, used)
        if not any(f["state"] == "mounted" for f in found):
            reasons = "; ".join(f"{f['name']}: {f['detail']}" for f in found) or (
                "the partition table lists no partitions"
            )
            raise FileRestoreError(
                f"no filesystem on restore point {point.backup_id} can be browsed ({reasons})",
                action=Action("export_raw_disk", "an NBD export serves the raw disk instead"),
            )
        return found, device, server.pid

    def _mount_region(
        self, device: str, disk: Path, region: Region, fs_dir: Path, used: set[str]
    ) -> list[dict[str, Any]]:
        """Probe a region and mount its filesystem; a physical volume becomes its
        logical volumes (guest_volumes), each mounted the same way."""
        if region.mapped:
            info = partitions.probe(region.node)
        else:
            whole = region.number is None and not region.volume
            info = partitions.probe(
                device, offset=region.offset, size=None if whole else region.size
            )
        fs_type = info.get("TYPE", "")
        if fs_type == "LVM2_member" and not region.volume:
            regions, entries = guest_volumes.lvm_regions(region, disk, fs_dir.parent, used)
            for volume in regions:
                entries += self._mount_region(device, disk, volume, fs_dir, used)
            return entries
        return [self._mount_one(disk, region, fs_type, info.get("LABEL", ""), fs_dir)]

    def _mount_one(
        self, disk: Path, region: Region, fs_type: str, label: str, fs_dir: Path
    ) -> dict[str, Any]:
        target = fs_dir / region.name
        entry = {
            **guest_volumes.unsupported(region, fs_type or "unknown", ""),
            "label": label,
        }
        reason = _not_mountable(fs_type)
        if reason:
            entry["detail"] = reason
            return entry
        kernel_type, options = _mount_options(fs_type)
        node = region.node or loop.attach(
            disk, read_only=True, offset=region.offset, sizelimit=region.size
        )
        make_private_dirs(target)
        try:
            if fs_type == "ntfs":
                mounts.mount_ntfs(node, target)
            else:
                mounts.mount(node, target, fstype=kernel_type, options=options)
        except ToolError as exc:
            entry.update(state="error", detail=str(exc), device=node)
            return entry
        note = guest_volumes.hibernation_note(target) if fs_type == "ntfs" else ""
        entry.update(state="mounted", path=str(target), device=node, detail=note)
        return entry

    def _healthy(self, row: RestoreMount) -> bool:
        if not exporters.pid_matches(row.exporter_pid, EXPORTER, row.base_dir):
            return False
        return all(
            mounts.is_mountpoint(f["path"])
            for f in (row.filesystems or [])
            if f.get("state") == "mounted" and f.get("path")
        )

    # -- unmount -------------------------------------------------------------------

    def unmount(self, mount_id: int, *, actor: str | None = None, reason: str = "") -> None:
        with self._lock:
            row = self.store.get_mount(mount_id)
            self._teardown(row)
        label = f"restore mount {mount_id}"
        with contextlib.suppress(SendenseError):
            label = self.store.locate(row.backup_id).label
        self.bus.publish(
            Event(
                kind="restore.unmounted",
                message=f"unmounted {label}" + (f" ({reason})" if reason else ""),
                source="restore",
                actor=actor,
                data={"mount_id": mount_id, "backup_id": row.backup_id},
            )
        )

    def _teardown(self, row: RestoreMount) -> None:
        """Undo a mount, whatever state it reached; then forget the row."""
        with contextlib.suppress(SendenseError):
            self.store.update_mount(row.id, state="unmounting")
        if row.base_dir:
            teardown_dir(Path(row.base_dir), row.exporter_pid)
        self.store.delete_mount(row.id)

    def own_mounts(self) -> list[int]:
        """Ids of the mounts this engine owns (unmounted when it closes)."""
        return [row.id for row in self.store.mounts() if row.owner == self.owner]

    def unmount_all(self, *, mine_only: bool = True) -> int:
        count = 0
        for row in self.store.mounts():
            if mine_only and row.owner != self.owner:
                continue
            self.unmount(row.id, reason="engine stopping")
            count += 1
        return count

    def reap_expired(self) -> list[int]:
        """Remove mounts whose expiry passed (idle); returns their ids."""
        reaped = []
        for row in self.store.expired_mounts(self.clock.now()):
            if not (row.owner or "").startswith(_HOST + ":"):
                continue  # another appliance's mount: its own engine reaps it
            try:
                self.unmount(row.id, reason="expired after being idle")
                reaped.append(row.id)
            except SendenseError as exc:
                log.warning("cannot remove expired restore mount %s: %s", row.id, exc)
        return reaped

    def cleanup_leftovers(self) -> list[str]:
        """Tear down mounts of engines that are gone, and anything under the restore
        directory that no live row accounts for (after a crash)."""
        cleaned: list[str] = []
        live_dirs: set[str] = set()
        now = self.clock.now()
        for row in self.store.mounts():
            if row.owner == DETACHED:
                fresh = as_utc(row.expires_at) > now and row.state == "mounted"
                if fresh and self._healthy(row):
                    live_dirs.add(os.path.realpath(row.base_dir))
                    continue
            elif owner_alive(row.owner, live_here=_LIVE_OWNERS):
                live_dirs.add(os.path.realpath(row.base_dir))
                continue
            self._teardown(row)
            cleaned.append(row.base_dir)
        if self.root.is_dir():
            for base in sorted(self.root.iterdir()):
                if base.is_dir() and os.path.realpath(base) not in live_dirs:
                    teardown_dir(base, exporters.read_pidfile(base / "exporter.pid"))
                    cleaned.append(str(base))
        cleaned += [str(mount_id) for mount_id in self.reap_expired()]
        if cleaned:
            self.bus.publish(
                Event(
                    kind="restore.cleanup",
                    message=f"removed {len(cleaned)} restore mount(s) left by an earlier run",
                    source="restore",
                    level="warning",
                    data={"dirs": cleaned},
                )
            )
        return cleaned

    def start_reaper(self, interval: float = 60.0) -> None:
        if self._reaper is not None:
            return
        self._reaper_stop.clear()

        def loop_() -> None:
            while not self._reaper_stop.wait(interval):
                try:
                    self.reap_expired()
                except CatalogUnavailable:
                    pass  # logged once by the catalog
                except Exception:
                    log.exception("restore mount reaper")

        self._reaper = threading.Thread(target=loop_, name="restore-reaper", daemon=True)
        self._reaper.start()

    def close(self) -> None:
        """Stop the reaper and unmount everything this engine mounted."""
        self._reaper_stop.set()
        if self._reaper is not None:
            self._reaper.join(timeout=5)
            self._reaper = None
        try:
            self.unmount_all()
        finally:
            _LIVE_OWNERS.discard(self.owner)

    def abandon(self) -> None:
        """Forget this engine's mounts without undoing them (what a crash does)."""
        _LIVE_OWNERS.discard(self.owner)

    # -- use -------------------------------------------------------------------------

    def _use(self, mount_id: int) -> MountView:
        row = self.store.get_mount(mount_id)
        if row.state != "mounted":
            raise FileRestoreError(
                f"restore mount {mount_id} is {row.state}, not mounted",
                hint="mount the restore point again",
            )
        if not self._healthy(row):
            raise FileRestoreError(
                f"restore mount {mount_id} is gone (its exporter or mounts disappeared)",
                hint="unmount it and mount the restore point again",
            )
        now = self.clock.now()
        ttl = max(
            as_utc(row.expires_at) - as_utc(row.last_used_at), timedelta(minutes=1)
        )  # keep this mount's own lifetime
        row = self.store.update_mount(row.id, last_used_at=now, expires_at=now + ttl)
        return self._view(row)


# -- helpers ---------------------------------------------------------------------------


def _regions(device: str, table: partitions.PartitionTable | None, size: int) -> list[Region]:
    """The bare disk, or its partitions (with their nodes when the kernel makes them)."""
    if table is None:
        return [Region("disk", None, 0, size)]
    parts_ready = False
    if table.partitions:
        with contextlib.suppress(ToolError):
            loop.partx_add(device)
            parts_ready = True
    regions = []
    for part in table.partitions:
        node = f"{device}p{part.number}"
        if not (parts_ready and _wait_for(node)):
            node = ""
        regions.append(
            Region(f"p{part.number}", part.number, part.offset, part.size, node, part.type)
        )
    return regions


def _not_mountable(fs_type: str) -> str:
    """Why a filesystem type is listed but not mounted ("" when it can be mounted)."""
    if not fs_type:
        return "unknown filesystem"
    if fs_type == "LVM2_member":
        return "LVM physical volume inside a logical volume: not read"
    if fs_type == "swap":
        return "swap space: holds no files"
    if fs_type == "ntfs":
        try:
            which("ntfs-3g")
        except ToolError:
            return "NTFS: ntfs-3g is not installed here (apt-get install ntfs-3g)"
        return ""
    kernel_type, _ = _mount_options(fs_type)
    available = partitions.kernel_filesystems()
    if available and kernel_type not in available and not _module_exists(kernel_type):
        return f"{fs_type}: no driver for it on this machine"
    return ""


def _mount_options(fs_type: str) -> tuple[str, list[str]]:
    """(kernel filesystem type, read-only options) for a filesystem blkid named."""
    options = ["ro", "nosuid", "nodev", "noexec"]
    available = partitions.kernel_filesystems()
    if fs_type in ("ext2", "ext3", "ext4"):
        return ("ext4" if "ext4" in available or not available else fs_type), [*options, "noload"]
    if fs_type == "xfs":
        return fs_type, [*options, "norecovery", "nouuid"]
    if fs_type == "btrfs":
        return fs_type, [*options, "norecovery"]
    return fs_type, options


def _module_exists(fs_type: str) -> bool:
    release = os.uname().release
    return any(
        (Path("/lib/modules") / release / "kernel" / "fs" / sub).exists()
        for sub in (fs_type, f"{fs_type}.ko", f"{fs_type}.ko.xz")
    )


def _wait_for(node: str, timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(node):
            return True
        time.sleep(0.05)
    return False


def teardown_dir(base: Path, exporter_pid: int | None) -> None:
    """Undo everything a mount under ``base`` may have left: mounts, device-mapper
    devices of its logical volumes, loop devices, the exporter, its FUSE mount; then
    remove the (empty) directories.

    Raises FileRestoreError when something could not be released (and keeps
    the directory so a later run can retry).
    """
    problems: list[str] = []
    real_base = os.path.realpath(base)
    disk = Path(real_base) / "disk.raw"
    # 1. filesystem mounts under <base>/fs, deepest first
    inside = [
        m.target
        for m in mounts.list_mounts()
        if m.target.startswith(real_base.rstrip("/") + "/") and m.target != str(disk)
    ]
    for target in sorted(set(inside), key=len, reverse=True):
        try:
            mounts.umount(target)
        except ToolError:
            try:
                mounts.umount(target, lazy=True)
            except ToolError as exc:
                problems.append(f"umount {target}: {exc}")
    # 2. device-mapper devices of ours (logical volumes stored in several pieces)
    problems += guest_volumes.remove_mappings(Path(real_base))
    # 3. loop devices on the exported file (the disk, offset partitions and volumes)
    try:
        devices = loop.devices_for(disk)
    except ToolError as exc:
        devices = []
        problems.append(str(exc))
    for dev in sorted(devices, key=lambda d: -d.offset):
        try:
            loop.detach(dev.device)
        except ToolError as exc:
            problems.append(f"detach {dev.device}: {exc}")
    # 4. the exporter, found by its pid (confirmed by its command line)
    pid = exporter_pid or exporters.read_pidfile(Path(real_base) / "exporter.pid")
    try:
        exporters.stop_pid(pid, EXPORTER, real_base)
    except ToolError as exc:
        problems.append(str(exc))
    # 5. a FUSE mount left behind by a killed exporter
    try:
        exporters.fuse_unmount(disk)
    except ToolError as exc:
        problems.append(f"fusermount3 -u {disk}: {exc}")
    if problems:
        raise FileRestoreError(
            f"could not fully release the restore mount at {base}: " + "; ".join(problems),
            hint="it will be retried at the next start; see the log",
        )
    _remove_tree(Path(real_base))


def _remove_tree(base: Path) -> None:
    """Remove the mount's own scratch files and empty directories (rmdir only: it
    never deletes anything inside a filesystem that is still mounted)."""
    for name in ("disk.raw", "exporter.pid", "exporter.log"):
        with contextlib.suppress(OSError):
            (base / name).unlink()
    fs_dir = base / "fs"
    if fs_dir.is_dir():
        for child in fs_dir.iterdir():
            with contextlib.suppress(OSError):
                child.rmdir()
    for directory in (fs_dir, base):
        with contextlib.suppress(OSError):
            directory.rmdir()
