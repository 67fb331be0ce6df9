"""Verification: ``sendense verify run|report`` over HTTP.

- ``POST /verification`` (operate): 202 and a ``verify`` job re-reading one backup
  (``{"backup": 12}``), a chain (``{"chain": 3}``), a repository (``{"repository":
  "local"}``) or everything (``{}``), with their copies unless ``"copies": false``;
- ``GET /verification/report?days=30`` (read): coverage, bad points and what is
  overdue, as ``sendense verify report --json``. Bad points are data in the report
  here (200), where the CLI also exits 1 for them.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse
from pydantic import Field, model_validator

from engine.names import ID_MAX
from engine.shapes import verification_report_dict
from sendense_api.deps import EngineDep, Operator, Reader
from sendense_api.routes._common import Body, ShapedRoute, accepted
from sendense_tui.commands import DAYS_MAX

router = APIRouter(tags=["verification"], route_class=ShapedRoute)


class VerifyRequest(Body):
    backup: int | None = Field(default=None, ge=1, le=ID_MAX, description="one backup")
    chain: int | None = Field(default=None, ge=1, le=ID_MAX, description="a chain's backups")
    repository: str | None = Field(
        default=None, min_length=1, max_length=256, description="every file in a repository"
    )
    copies: bool = Field(default=True, description="also the copies of what is verified")

    @model_validator(mode="after")
    def one_scope(self) -> VerifyRequest:
        given = [k for k in ("backup", "chain", "repository") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"give one of backup, chain or repository, not {' and '.join(given)}")
        return self


@router.post("/verification", status_code=202)
def run_verification(
    engine: EngineDep, caller: Operator, request: VerifyRequest | None = None
) -> JSONResponse:
    request = request or VerifyRequest()
    scope, ref = "all", None
    for name in ("backup", "chain", "repository"):
        value = getattr(request, name)
        if value is not None:
            scope, ref = name, value
    job = engine.verifier.submit(scope, ref, include_copies=request.copies, actor=caller.name)
    return accepted(job)


@router.get("/verification/report")
def verification_report(
    engine: EngineDep,
    caller: Reader,
    days: Annotated[int, Query(ge=1, le=DAYS_MAX, description="coverage window")] = 30,
) -> dict[str, Any]:
    return verification_report_dict(engine, engine.verifier.report(days))
