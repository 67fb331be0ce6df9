"""NBD exports: ``sendense export start|list|stop`` over HTTP (operate to start and
stop, read to list).

- ``POST /exports`` ``{"point": 12, "name": null, "host": null, "port": null,
  "tls": false, "idle_minutes": null, "max_hours": null, "force": false}``: serves the
  point read-only, owned by a keeper process of its own as the CLI's exports are (it
  outlives the daemon's restarts and enforces the limits). The engine starts it before
  it answers: 201 with the export, its URI and limits. TCP on an address other than
  loopback needs ``tls`` (the engine refuses it otherwise); the response names the key
  file's path, never the key;
- ``GET /exports`` (``?all=true`` also stopped and dead ones);
- ``DELETE /exports/{export}`` (by name or #ID): stop it.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from pydantic import Field

from engine.names import ID_MAX
from engine.shapes import export_dict
from sendense_api.deps import EngineDep, Operator, Reader
from sendense_api.routes._common import Body, ShapedRoute

router = APIRouter(tags=["exports"], route_class=ShapedRoute)

ExportRef = Annotated[str, Path(min_length=1, max_length=256, description="name or #ID")]
#: a year: the engine checks the limits; these keep the numbers finite
MINUTES_MAX = 366 * 24 * 60


class ExportRequest(Body):
    point: int = Field(ge=1, le=ID_MAX, description="the restore point to serve")
    name: str | None = Field(default=None, min_length=1, max_length=128)
    host: str | None = Field(default=None, min_length=1, max_length=256)
    port: int | None = Field(default=None, ge=1, le=65535)
    tls: bool = False
    idle_minutes: float | None = Field(default=None, gt=0, le=MINUTES_MAX, allow_inf_nan=False)
    max_hours: float | None = Field(default=None, gt=0, le=MINUTES_MAX / 60, allow_inf_nan=False)
    #: serve a point whose files failed verification (read as it is, unverified)
    force: bool = False


@router.post("/exports", status_code=201)
def start_export(engine: EngineDep, caller: Operator, request: ExportRequest) -> JSONResponse:
    # a missing point is a 404 here, before a keeper process is started for it (the
    # keeper reports its errors as sentences, without their kind)
    engine.chains.point(request.point)
    view = engine.exports.start_detached(
        request.point,
        name=request.name,
        host=request.host,
        port=request.port,
        tls=request.tls,
        idle_minutes=request.idle_minutes,
        max_hours=request.max_hours,
        actor=caller.name,
        force=request.force,
    )
    body = {**export_dict(view), "connect": view.connect_lines()}
    return JSONResponse(
        jsonable_encoder(body),
        status_code=201,
        headers={"Location": f"/api/v1/exports/{view.id}"},
    )


@router.get("/exports")
def list_exports(
    engine: EngineDep,
    caller: Reader,
    all: Annotated[bool, Query(description="also stopped and dead exports")] = False,
) -> list[dict[str, Any]]:
    return [export_dict(v) for v in engine.exports.list(include_stopped=all)]


@router.get("/exports/{export}")
def show_export(engine: EngineDep, caller: Reader, export: ExportRef) -> dict[str, Any]:
    return export_dict(engine.exports.get(export))


@router.delete("/exports/{export}")
def stop_export(engine: EngineDep, caller: Operator, export: ExportRef) -> dict[str, Any]:
    return export_dict(engine.exports.stop(export, actor=caller.name))
