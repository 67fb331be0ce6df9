"""Chains and restore points: ``sendense chain show|check|consolidate|delete`` and
``sendense backup list`` over HTTP.

- ``GET /chains`` (``?repo=``, ``?all=true`` for retired ones, ``?limit=&after=`` for
  pages: the next page's cursor is the ``X-Next-Cursor`` header), ``GET /chains/{id}``;
- ``GET /chains/check`` and ``GET /chains/{id}/check`` (``?deep=true`` re-reads the
  files): read; the outcome is recorded on the chain, as the CLI's check does;
- ``POST /chains/fix`` (admin; ``{"repo": …}`` for one repository): what ``chain check
  --fix`` does first: stale partial files removed, finished orphans imported (never a
  locked file, nothing while a job runs on the repository);
- ``POST /chains/{id}/consolidate`` (operate): 202 and a ``consolidate`` job. The CLI
  consolidates without a confirmation (it is routine maintenance: no backed-up data
  goes, the oldest points merge into a new full), so it is an operator's call;
- ``GET /restore-points`` (``?repo=&vm=``, paged as ``/chains``),
  ``GET /restore-points/{id}`` (with the files of its chain as their headers describe
  them);
- ``GET /restore-points/{id}/delete-plan``: what deleting it takes with it;
- ``DELETE /restore-points/{id}`` (admin): deletes it and the points after it, the
  way ``sendense chain delete --yes --no-wait`` does (the CLI asks for ``--yes``:
  data goes for good, so it is an administrator's call). A disk another writer holds
  refuses it with one sentence instead of holding the request open.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response
from fastapi.responses import JSONResponse
from pydantic import Field

from engine.errors import NotFoundError
from engine.names import ID_MAX
from engine.shapes import chain_dict, point_dict
from sendense_api.deps import Admin, EngineDep, Operator, Reader
from sendense_api.routes._common import (
    PAGED,
    After,
    Body,
    Limit,
    ShapedRoute,
    accepted,
    page_response,
)

router = APIRouter(tags=["chains"], route_class=ShapedRoute)

ChainId = Annotated[int, Path(ge=1, le=ID_MAX, description="a chain id")]
PointId = Annotated[int, Path(ge=1, le=ID_MAX, description="a restore point id")]


@router.get("/chains", responses=PAGED)
def list_chains(
    engine: EngineDep,
    caller: Reader,
    repo: Annotated[str | None, Query(max_length=256, description="repository name or #ID")] = None,
    all: Annotated[bool, Query(description="also retired chains")] = False,
    limit: Limit = 20,
    after: After = None,
) -> Response:
    """A page of chains in VM, disk order, each with its live points."""
    page = engine.listings.chains(repository=repo, include_retired=all, after=after, limit=limit)
    return page_response(page, [chain_dict(v) for v in page.items])


@router.get("/chains/check")
def check_all_chains(engine: EngineDep, caller: Reader, deep: bool = False) -> list[dict[str, Any]]:
    return [r.as_dict() for r in engine.chains.check_all(deep=deep)]


class FixRequest(Body):
    repo: str | None = Field(default=None, min_length=1, max_length=256)


@router.post("/chains/fix")
def fix_chains(
    engine: EngineDep, caller: Admin, request: FixRequest | None = None
) -> dict[str, Any]:
    request = request or FixRequest()
    return engine.imports.fix(repository=request.repo, actor=caller.name).as_dict()


@router.get("/chains/{chain_id}")
def show_chain(engine: EngineDep, caller: Reader, chain_id: ChainId) -> dict[str, Any]:
    engine.chains.disk_of(chain_id)  # NotFoundError (404) for a chain that does not exist
    for view in engine.listings.chains(chain_id=chain_id, include_retired=True, limit=1).items:
        return chain_dict(view)
    raise NotFoundError(f"chain {chain_id} does not exist")  # removed meanwhile


@router.get("/chains/{chain_id}/check")
def check_chain(
    engine: EngineDep, caller: Reader, chain_id: ChainId, deep: bool = False
) -> dict[str, Any]:
    return engine.chains.validate(chain_id, deep=deep).as_dict()


class ConsolidateRequest(Body):
    #: the point that becomes the full (default: the chain's second point)
    upto: int | None = Field(default=None, ge=1, le=ID_MAX)
    #: refuse (instead of queueing behind it) while another writer holds the disk
    no_wait: bool = False


@router.post("/chains/{chain_id}/consolidate", status_code=202)
def consolidate_chain(
    engine: EngineDep,
    caller: Operator,
    chain_id: ChainId,
    request: ConsolidateRequest | None = None,
) -> JSONResponse:
    request = request or ConsolidateRequest()
    job = engine.chains.submit_consolidate(
        chain_id,
        new_base_id=request.upto,
        actor=caller.name,
        queue_if_busy=not request.no_wait,
    )
    return accepted(job)


@router.get("/restore-points", responses=PAGED)
def list_points(
    engine: EngineDep,
    caller: Reader,
    repo: Annotated[str | None, Query(max_length=256, description="repository name or #ID")] = None,
    vm: Annotated[str | None, Query(max_length=256)] = None,
    limit: Limit = 50,
    after: After = None,
) -> Response:
    """A page of restore points in VM, disk, chain order (as ``sendense backup list``)."""
    page = engine.listings.points(repository=repo, vm=vm, after=after, limit=limit)
    return page_response(page, [point_dict(b, c) for b, c in page.items])


@router.get("/restore-points/{point_id}")
def show_point(engine: EngineDep, caller: Reader, point_id: PointId) -> dict[str, Any]:
    backup, chain = engine.chains.point(point_id)
    return {**point_dict(backup, chain), "files": engine.chains.point_details(point_id)}


@router.get("/restore-points/{point_id}/delete-plan")
def delete_plan(engine: EngineDep, caller: Reader, point_id: PointId) -> dict[str, Any]:
    plan = engine.chains.delete_plan(point_id)
    return {"would_delete": [b.id for b in plan.goes], "sentence": plan.sentence()}


@router.delete("/restore-points/{point_id}")
def delete_point(engine: EngineDep, caller: Admin, point_id: PointId) -> dict[str, Any]:
    plan = engine.chains.delete_point(point_id, actor=caller.name, wait=False)
    return {"deleted": [b.id for b in plan.goes], "sentence": plan.sentence(), "done": True}
