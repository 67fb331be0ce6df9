"""Copy rules and copies: ``sendense copy rule ...`` and ``sendense copy run|status``.

- ``GET /copy-rules``, ``GET /copy-rules/{rule}`` (read; a rule by name or #ID);
- ``POST /copy-rules`` (admin, 201): the CLI's ``copy rule add`` checks, nothing saved
  on error; ``PATCH /copy-rules/{rule}`` (admin): change settings or enable/disable,
  checked like a new rule; ``DELETE /copy-rules/{rule}`` (admin): copies made stay;
- ``POST /copy-rules/{rule}/run`` and ``POST /copies/{id}/rerun`` (operate): 202 and
  the ``copy`` job;
- ``GET /copies/status`` (read): rules with their health, alerts, recent copies;
  ``GET /copies`` (read): copies, newest first (``?rule=&state=&limit=``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query
from fastapi.responses import JSONResponse
from pydantic import Field

from engine.errors import ValidationError
from engine.names import ID_MAX
from engine.shapes import copy_dict, copy_status_dict, rule_dict
from sendense_api.deps import Admin, EngineDep, Operator, Reader
from sendense_api.routes._common import Body, ShapedRoute, accepted
from sendense_tui.commands import BIGINT_MAX, COUNT_MAX, LIMIT_MAX
from sendense_tui.commands.copy import MAX_AGE_HOURS

router = APIRouter(tags=["copies"], route_class=ShapedRoute)

RuleRef = Annotated[str, Path(min_length=1, max_length=256, description="rule name or #ID")]
CopyId = Annotated[int, Path(ge=1, le=ID_MAX, description="a copy id")]


class RuleSettings(Body):
    """The settings of ``sendense copy rule add``, with its bounds."""

    source: str | None = Field(default=None, min_length=1, max_length=256)
    destination: str | None = Field(default=None, min_length=1, max_length=256)
    selection: Literal["all", "fulls", "latest"] | None = None
    latest_count: int | None = Field(default=None, ge=1, le=COUNT_MAX)
    mode: Literal["immediate", "scheduled", "manual"] | None = None
    schedule: str | None = Field(default=None, max_length=256, description="cron, UTC")
    priority: int | None = Field(default=None, ge=0, le=1000, description="lower runs first")
    lock_copies: bool | None = None
    verify_after: bool | None = None
    bandwidth_limit: int | None = Field(
        default=None, ge=0, le=BIGINT_MAX, description="bytes per second, 0: no limit"
    )
    max_age_hours: int | None = Field(default=None, ge=1, le=MAX_AGE_HOURS)


class NewRule(RuleSettings):
    name: str = Field(min_length=1, max_length=128)
    source: str = Field(min_length=1, max_length=256)
    destination: str = Field(min_length=1, max_length=256)


class RuleChange(RuleSettings):
    name: str | None = Field(default=None, min_length=1, max_length=128)
    enabled: bool | None = None


def _repositories(engine: Any) -> dict[int, Any]:
    return {r.id: r for r in engine.repositories.list()}


@router.get("/copy-rules")
def list_rules(engine: EngineDep, caller: Reader) -> list[dict[str, Any]]:
    repos = _repositories(engine)
    return [rule_dict(r, repos) for r in engine.copies.list_rules()]


@router.get("/copy-rules/{rule}")
def show_rule(engine: EngineDep, caller: Reader, rule: RuleRef) -> dict[str, Any]:
    return rule_dict(engine.copies.get_rule(rule), _repositories(engine))


@router.post("/copy-rules", status_code=201)
def add_rule(engine: EngineDep, caller: Admin, request: NewRule) -> dict[str, Any]:
    selection = request.selection or "all"
    if selection == "latest" and request.latest_count is None:
        raise ValidationError(
            'selection "latest" needs latest_count', hint="how many points per disk to copy"
        )
    rule = engine.copies.add_rule(
        name=request.name,
        source=request.source,
        destination=request.destination,
        selection=selection,
        latest_count=request.latest_count,
        mode=request.mode or "manual",
        schedule=request.schedule,
        priority=100 if request.priority is None else request.priority,
        lock_copies=bool(request.lock_copies),
        verify_after=request.verify_after is not False,
        bandwidth_limit=request.bandwidth_limit,
        max_age_hours=request.max_age_hours,
        actor=caller.name,
    )
    return rule_dict(rule, _repositories(engine))


@router.patch("/copy-rules/{rule}")
def change_rule(
    engine: EngineDep, caller: Admin, rule: RuleRef, request: RuleChange
) -> dict[str, Any]:
    changes = request.model_dump(exclude_unset=True)
    enabled = changes.pop("enabled", None)
    if not changes and enabled is None:
        raise ValidationError("nothing to change", hint="give at least one setting")
    current = engine.copies.get_rule(rule)
    if changes:
        current = engine.copies.update_rule(current.id, actor=caller.name, **changes)
    if enabled is not None and enabled != current.enabled:
        current = engine.copies.set_rule_enabled(current.id, enabled, actor=caller.name)
    return rule_dict(current, _repositories(engine))


@router.delete("/copy-rules/{rule}")
def remove_rule(engine: EngineDep, caller: Admin, rule: RuleRef) -> dict[str, Any]:
    removed = engine.copies.remove_rule(rule, actor=caller.name)
    return {"removed": removed.id, "name": removed.name}


@router.post("/copy-rules/{rule}/run", status_code=202)
def run_rule(engine: EngineDep, caller: Operator, rule: RuleRef) -> JSONResponse:
    return accepted(engine.copies.run_rule(rule, actor=caller.name))


@router.post("/copies/{copy_id}/rerun", status_code=202)
def rerun_copy(engine: EngineDep, caller: Operator, copy_id: CopyId) -> JSONResponse:
    return accepted(engine.copies.rerun(copy_id, actor=caller.name))


@router.get("/copies/status")
def copy_status(engine: EngineDep, caller: Reader) -> dict[str, Any]:
    return copy_status_dict(
        engine.copies.status(),
        engine.copies.alerts(),
        engine.scheduler.active_alerts(),
        engine.copies.list_copies(limit=50),
        _repositories(engine),
    )


@router.get("/copies")
def list_copies(
    engine: EngineDep,
    caller: Reader,
    rule: Annotated[str | None, Query(max_length=256, description="rule name or #ID")] = None,
    state: Annotated[str | None, Query(max_length=32, description="e.g. failed")] = None,
    limit: Annotated[int, Query(ge=1, le=LIMIT_MAX)] = 100,
) -> list[dict[str, Any]]:
    filters: dict[str, Any] = {"limit": limit}
    if rule is not None:
        filters["rule_id"] = engine.copies.get_rule(rule).id
    if state is not None:
        filters["states"] = [state]
    return [copy_dict(c) for c in engine.copies.list_copies(**filters)]
