"""``POST /api/v1/backups`` (operate): back up a VM's disks now, as ``sendense backup run
--no-wait`` does: 202 and the queued ``backup`` job.

The body says what the CLI's options say::

    {"repo": "local", "vm": "web01",
     "disks": [{"name": "sda", "source": "/dev/vg0/web01"},
               {"name": "vda", "source": "/images/db.qcow2", "format": "qcow2"},
               {"name": "sdb", "source": "nbd+unix:///sdb?socket=/run/x.sock",
                "changed_bitmap": "bm0"}],
     "mode": "auto", "compression": "none", "full_every": 7}

A disk may also be given as the CLI's ``--disk`` text, ``"sda=/dev/vg0/web01"`` or
``"vda:qcow2=/images/db.qcow2"``. Each disk's changed-blocks hint sits on the disk
it is for (the CLI's ``--changed-bitmap NAME=BITMAP`` and ``--changed-extents
NAME=FILE``). The engine checks names, sources (nothing qemu would read as a
protocol), hints, mode and compression before anything is queued; a refusal is a
422 problem with the CLI's sentence. A token (any role) may name a file or block
device only inside ``[api] source_roots`` (none by default: nbd:// sources only),
else 403: the daemon reads as root, and the point could be read back through a
restore mount. The unix socket is root already and is not bound by them. While
another writer holds one of the disks the job waits for it, or with ``"no_wait":
true`` the request is refused naming that writer.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import Field

from engine.services.backup import DiskSource, check_source_reach
from sendense_api.deps import EngineDep, Operator
from sendense_api.routes._common import Body, ShapedRoute, accepted
from sendense_tui.commands import COUNT_MAX

router = APIRouter(tags=["backups"], route_class=ShapedRoute)

#: more disks than a VM has; keeps one request's work bounded
DISKS_MAX = 64


class BackupDisk(Body):
    name: str = Field(min_length=1, max_length=128, description="disk name, e.g. sda")
    source: str = Field(
        min_length=1, max_length=4096, description="file, block device or nbd:// URI"
    )
    format: Literal["raw", "qcow2"] = Field(
        default="raw", description="how the source is read; a format is never guessed"
    )
    changed_bitmap: str | None = Field(
        default=None, max_length=256, description="an nbd source's dirty bitmap"
    )
    changed_extents: str | None = Field(
        default=None, max_length=4096, description="a capture agent's extent list (a path)"
    )


class BackupRequest(Body):
    repo: str = Field(min_length=1, max_length=256, description="repository name or #ID")
    vm: str = Field(min_length=1, max_length=256, description="VM name")
    #: each disk as an object, or as the CLI's ``--disk`` text ``NAME[:qcow2]=SOURCE``
    disks: list[BackupDisk | Annotated[str, Field(min_length=3, max_length=4096)]] = Field(
        min_length=1, max_length=DISKS_MAX
    )
    mode: Literal["auto", "full", "incremental"] = "auto"
    compression: Literal["zstd", "none"] = "none"
    full_every: int | None = Field(default=None, ge=1, le=COUNT_MAX)
    no_wait: bool = False


@router.post("/backups", status_code=202)
def start_backup(engine: EngineDep, caller: Operator, request: BackupRequest) -> JSONResponse:
    disks = [
        DiskSource.parse(d)
        if isinstance(d, str)
        else DiskSource(
            d.name,
            d.source,
            d.format,
            changed_bitmap=d.changed_bitmap,
            changed_extents=d.changed_extents,
        )
        for d in request.disks
    ]
    if caller.via != "socket":
        # the daemon reads as root: a token names only what [api] source_roots opens
        check_source_reach(disks, engine.settings)
    job = engine.backups.submit(
        request.repo,
        request.vm,
        disks,
        mode=request.mode,
        compression=None if request.compression == "none" else request.compression,
        full_every=request.full_every,
        actor=caller.name,
        queue_if_busy=not request.no_wait,
        named_by_token=caller.via != "socket",
    )
    return accepted(job)
