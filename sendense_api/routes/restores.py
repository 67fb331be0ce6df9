"""File restore: ``sendense restore mount|mounts|ls|unmount`` over HTTP, plus downloads.

- ``POST /restore-mounts`` (operate) ``{"point": 12, "minutes": 60, "force": false}``:
  mounts the point read-only (the engine mounts before it answers: 201 with the
  mount, or 200 when the point was mounted already and that mount is reused). The
  mount outlives the request until unmounted or idle for ``minutes``;
- ``GET /restore-mounts``, ``GET /restore-mounts/{id}`` (read);
- ``GET /restore-mounts/{id}/entries?path=p1/etc`` (read): a folder (empty path:
  the filesystems);
- ``GET /restore-mounts/{id}/file?path=p1/etc/hosts`` (read): the file, streamed;
- ``GET /restore-mounts/{id}/archive?path=p1/etc&format=tar|zip`` (read): the folder
  as a tar or zip written while it is sent, the same archive ``restore extract --tar``
  writes (engine.services.restore_archive, streamed by sendense_api.routes._archives);
- ``DELETE /restore-mounts/{id}`` (operate): unmount;
- ``POST /restore-points/{id}/restore`` ``{"target": "/restore/web01-sda.raw",
  "format": "raw", "overwrite": false, "force": false}``: 202 and a ``restore_disk``
  job writing the whole point to a file or an ``nbd://`` target, as ``sendense restore
  disk`` does (the CLI hands its job here when the daemon runs). Only on the unix
  socket: a path on the appliance is the appliance's users' to write, not a token's.

Paths are checked by the engine as ``restore extract`` checks them: a ``..`` part,
a name outside the mount's filesystems and a symbolic link (on the way or at the
end) are refused with a problem document; nothing outside the mount is read.
Reading a file is a read of backed-up data, which the ``read`` role may do (it sees
everything but secrets), like listing it.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Annotated, Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, Path, Query
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import Field

from engine.errors import ValidationError
from engine.names import ID_MAX
from engine.shapes import file_entry_dict, mount_dict
from engine.tools.blockspec import is_nbd
from sendense_api.deps import EngineDep, LocalRoot, Operator, Reader
from sendense_api.routes._archives import CHUNK, MEDIA_TYPES, stream_archive
from sendense_api.routes._common import Body, ShapedRoute, accepted
from sendense_tui.commands.restore_files import MOUNT_MINUTES_MAX

router = APIRouter(tags=["restore mounts"], route_class=ShapedRoute)

MountId = Annotated[int, Path(ge=1, le=ID_MAX, description="a restore mount id")]
PointId = Annotated[int, Path(ge=1, le=ID_MAX, description="a restore point id")]
MountPath = Annotated[
    str, Query(max_length=4096, description="a path in the mount, e.g. p1/etc/hosts")
]


class MountRequest(Body):
    point: int = Field(ge=1, le=ID_MAX, description="the restore point to mount")
    minutes: int = Field(default=60, ge=1, le=MOUNT_MINUTES_MAX, description="idle minutes")
    #: mount a point whose files failed verification (read as it is, unverified)
    force: bool = False


class DiskRestoreRequest(Body):
    target: str = Field(
        min_length=1,
        max_length=4096,
        description="an absolute file path on the appliance, or an nbd:// / nbd+unix:// URI",
    )
    format: Literal["raw", "qcow2"] = "raw"
    #: replace an existing target file
    overwrite: bool = False
    #: read a point whose files failed verification (its data is unverified)
    force: bool = False


@router.post("/restore-points/{point_id}/restore", status_code=202)
def restore_disk(
    engine: EngineDep, caller: LocalRoot, point_id: PointId, request: DiskRestoreRequest
) -> JSONResponse:
    if not is_nbd(request.target) and not request.target.startswith("/"):
        # the daemon's working directory is nobody's: a relative name would land there
        raise ValidationError(f"restore target {request.target} is not an absolute path")
    job = engine.restores.submit(
        point_id,
        request.target,
        fmt=request.format,
        overwrite=request.overwrite,
        force=request.force,
        actor=caller.name,
    )
    return accepted(job)


@router.post("/restore-mounts", status_code=201)
def mount_point(engine: EngineDep, caller: Operator, request: MountRequest) -> JSONResponse:
    view = engine.file_restore.mount(
        request.point,
        ttl=timedelta(minutes=request.minutes),
        actor=caller.name,
        detached=True,
        force=request.force,
    )
    return JSONResponse(
        jsonable_encoder(mount_dict(view)),
        status_code=200 if view.reused else 201,
        headers={"Location": f"/api/v1/restore-mounts/{view.id}"},
    )


@router.get("/restore-mounts")
def list_mounts(engine: EngineDep, caller: Reader) -> list[dict[str, Any]]:
    return [mount_dict(v) for v in engine.file_restore.list_mounts()]


@router.get("/restore-mounts/{mount_id}")
def show_mount(engine: EngineDep, caller: Reader, mount_id: MountId) -> dict[str, Any]:
    return mount_dict(engine.file_restore.get(mount_id))


@router.get("/restore-mounts/{mount_id}/entries")
def list_folder(
    engine: EngineDep, caller: Reader, mount_id: MountId, path: MountPath = ""
) -> list[dict[str, Any]]:
    return [file_entry_dict(e) for e in engine.file_restore.ls(mount_id, path)]


def _attachment(name: str) -> str:
    fallback = "".join(
        c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in name
    )
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


@router.get("/restore-mounts/{mount_id}/file")
def download_file(
    engine: EngineDep, caller: Reader, mount_id: MountId, path: MountPath
) -> StreamingResponse:
    source = engine.file_restore.source(mount_id, path)
    if source.is_dir:
        raise ValidationError(
            f"{'/'.join(source.parts)} is a folder",
            hint="download a folder as an archive: .../archive?path=…&format=tar or zip",
        )
    handle = engine.file_restore.open_source_file(source.path, source.device)

    def chunks() -> Iterator[bytes]:
        with handle:
            while chunk := handle.read(CHUNK):
                yield chunk

    return StreamingResponse(
        chunks(),
        media_type="application/octet-stream",
        headers={
            "Content-Disposition": _attachment(source.parts[-1]),
            "Content-Length": str(source.info.st_size),
        },
    )


@router.get("/restore-mounts/{mount_id}/archive")
def download_folder(
    engine: EngineDep,
    caller: Reader,
    mount_id: MountId,
    path: MountPath,
    format: Literal["tar", "zip"] = "tar",
) -> StreamingResponse:
    source = engine.file_restore.source(mount_id, path)
    if not source.is_dir:
        raise ValidationError(
            f"{'/'.join(source.parts)} is a file, not a folder",
            hint="download a file with .../file?path=…",
        )
    name = f"{source.parts[-1]}.{format}"

    def write(sink: Any) -> Any:
        return engine.file_restore.archive(mount_id, [path], sink, kind=format, shown=name)

    return StreamingResponse(
        stream_archive(format, write),
        media_type=MEDIA_TYPES[format],
        headers={"Content-Disposition": _attachment(name)},
    )


@router.delete("/restore-mounts/{mount_id}")
def unmount(engine: EngineDep, caller: Operator, mount_id: MountId) -> dict[str, Any]:
    engine.file_restore.unmount(mount_id, actor=caller.name)
    return {"id": mount_id, "state": "unmounted"}
