"""Backup policies: ``sendense policy ...`` over HTTP (a policy by name or #ID).

- ``GET /policies``, ``GET /policies/{policy}`` (read; one policy also has its next
  five runs and the 3-2-1 report of each VM, as ``policy show --json``);
- ``POST /policies`` (admin, 201): ``sources`` as ``[{"vm": "web01", "disks":
  [{"name": "sda", "source": "/dev/vg/web01"}]}]`` (the shape a policy is shown in) or
  as the CLI's ``--source`` texts ``["web01:sda=/dev/vg/web01"]``;
  ``PATCH /policies/{policy}`` (admin): the given fields change, the others stay;
  ``enabled`` schedules it or stops that;
  ``DELETE /policies/{policy}`` (admin; its backups stay). Checked by the engine's
  validation, every problem named, nothing saved on error. A lock period (new, or
  longer than before) cannot be shortened later: it needs ``"confirm_lock": true``,
  and without it the 422 says how much space the lock will hold (the CLI's ``--yes``);
- ``POST /policies/{policy}/run`` (operate): 202 and the ``policy_run`` job;
- ``GET /policies/{policy}/retention`` (read): the retention dry run, what goes and
  why; ``POST /policies/{policy}/retention`` (admin): apply it (``{"force": true}``
  also removes points whose required copies do not exist yet; locks are never
  overridden). A disk another writer holds refuses it with one sentence.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import APIRouter, Path
from fastapi.responses import JSONResponse
from pydantic import Field

from engine.errors import ValidationError
from engine.shapes import policy_dict
from sendense_api.deps import Admin, EngineDep, Operator, Reader
from sendense_api.roles import Caller
from sendense_api.routes._common import Body, ShapedRoute, accepted
from sendense_tui.commands import COUNT_MAX, DAYS_MAX

if TYPE_CHECKING:
    from engine.runtime import Engine

router = APIRouter(tags=["policies"], route_class=ShapedRoute)

PolicyRef = Annotated[str, Path(min_length=1, max_length=256, description="name or #ID")]
#: sources and copy rules one policy may name
LIST_MAX = 256

Count = Annotated[int, Field(ge=0, le=COUNT_MAX)]
SourceText = Annotated[str, Field(min_length=5, max_length=4096)]


class PolicyDisk(Body):
    name: str = Field(min_length=1, max_length=128)
    source: str = Field(min_length=1, max_length=4096)
    format: Literal["raw", "qcow2"] | None = None


class PolicySource(Body):
    vm: str = Field(min_length=1, max_length=256)
    disks: list[PolicyDisk] = Field(min_length=1, max_length=LIST_MAX)


class Retention(Body):
    keep_last: Count | None = None
    daily: Count | None = None
    weekly: Count | None = None
    monthly: Count | None = None
    yearly: Count | None = None


class PolicyFields(Body):
    schedule: str | None = Field(default=None, min_length=1, max_length=256, description="cron")
    target: str | None = Field(default=None, min_length=1, max_length=256)
    #: each VM with its disks, or the CLI's ``--source`` text ``VM:DISK[:qcow2]=SOURCE``
    sources: list[PolicySource | SourceText] | None = Field(
        default=None, min_length=1, max_length=LIST_MAX
    )
    full_every: int | None = Field(default=None, ge=1, le=COUNT_MAX)
    full_weekday: int | None = Field(default=None, ge=0, le=6, description="0 Monday … 6 Sunday")
    retention: Retention | None = None
    copy_rules: list[Annotated[str, Field(min_length=1, max_length=256)]] | None = Field(
        default=None, max_length=LIST_MAX
    )
    verify_after: bool | None = None
    immutable_days: int | None = Field(default=None, ge=0, le=DAYS_MAX)
    compression: Literal["zstd", "none"] | None = None
    enabled: bool | None = None
    #: a new or longer lock period cannot be shortened later: say so explicitly
    confirm_lock: bool = False


class NewPolicy(PolicyFields):
    name: str = Field(min_length=1, max_length=128)
    schedule: str = Field(min_length=1, max_length=256, description="cron, UTC")
    target: str = Field(min_length=1, max_length=256)
    sources: list[PolicySource | SourceText] = Field(min_length=1, max_length=LIST_MAX)


class PolicyChange(PolicyFields):
    name: str | None = Field(default=None, min_length=1, max_length=128, description="rename")


def _sources(sources: list[PolicySource | str]) -> list[dict[str, Any]]:
    """The engine's form of a policy's sources: one entry per VM, texts parsed the way
    the CLI parses ``--source`` (a VM named twice gets its disks together)."""
    from engine.services.policies import PolicySpec

    by_vm: dict[str, list[dict[str, Any]]] = {}
    for entry in sources:
        if isinstance(entry, str):
            vm, disk = PolicySpec.parse_source(entry)
            by_vm.setdefault(vm, []).append(disk)
        else:
            disks = [d.model_dump(exclude_none=True) for d in entry.disks]
            by_vm.setdefault(entry.vm, []).extend(disks)
    return [{"vm": vm, "disks": disks} for vm, disks in by_vm.items()]


def _sources_within_reach(engine: Engine, caller: Caller, sources: list[dict[str, Any]]) -> None:
    """A token's policy reads only what [api] source_roots opens to tokens (see
    sendense_api.routes.backups): the scheduler runs it as root. Its sources are
    marked ``named_by_token``, so that each run checks them again (a link in a root
    may lead elsewhere by then); sources root sets carry no mark."""
    from engine.services.backup import DiskSource, check_source_reach

    if caller.via != "socket":
        disks = [DiskSource.from_policy(d) for entry in sources for d in entry["disks"]]
        check_source_reach(disks, engine.settings)
        for entry in sources:
            entry["named_by_token"] = True


def _refuse(problems: dict[str, str], refused: str) -> None:
    if problems:
        raise ValidationError(
            f"{refused}: " + "; ".join(f"{k}: {v}" for k, v in problems.items()),
            hint="fix these and send it again; nothing was changed",
        )


@router.get("/policies")
def list_policies(engine: EngineDep, caller: Reader) -> list[dict[str, Any]]:
    return [policy_dict(engine, p) for p in engine.policies.list()]


@router.get("/policies/{policy}")
def show_policy(engine: EngineDep, caller: Reader, policy: PolicyRef) -> dict[str, Any]:
    from engine.services.policies import next_runs

    found = engine.policies.get(policy)
    return {
        **policy_dict(engine, found),
        "next_runs": next_runs(found.schedule, engine.clock.now(), 5),
        "compliance_detail": [engine.compliance.report(s["vm"]).as_dict() for s in found.sources],
    }


@router.post("/policies", status_code=201)
def add_policy(engine: EngineDep, caller: Admin, request: NewPolicy) -> dict[str, Any]:
    from engine.services.policies import PolicySpec

    retention = (request.retention or Retention()).model_dump()
    spec = PolicySpec(
        name=request.name,
        schedule=request.schedule,
        target=request.target,
        sources=_sources(request.sources),
        full_every=7 if request.full_every is None else request.full_every,
        full_weekday=request.full_weekday,
        retention={
            "keep_last": 7 if retention["keep_last"] is None else retention["keep_last"],
            **{k: v or 0 for k, v in retention.items() if k != "keep_last"},
        },
        copy_rules=list(request.copy_rules or []),
        verify_after=bool(request.verify_after),
        immutable_days=request.immutable_days or 0,
        compression=request.compression,
        enabled=request.enabled is not False,
    )
    _sources_within_reach(engine, caller, spec.sources)
    refused = f"policy {spec.name} was not saved"
    _refuse(engine.policies.validate(spec), refused)
    # a new lock period needs "confirm_lock": the engine refuses it with the estimate
    added = engine.policies.add(spec, actor=caller.name, confirm_lock=request.confirm_lock)
    return policy_dict(engine, added)


@router.patch("/policies/{policy}")
def change_policy(
    engine: EngineDep, caller: Admin, policy: PolicyRef, request: PolicyChange
) -> dict[str, Any]:
    changes = request.model_dump(exclude_unset=True)
    changes.pop("confirm_lock", None)
    enabled = changes.pop("enabled", None)
    if not changes and enabled is None:
        raise ValidationError("nothing to change", hint="give at least one setting")
    current = engine.policies.get(policy)
    if changes:
        spec = engine.policies.spec_of(current.id)
        for key, value in changes.items():
            if key == "sources":
                spec.sources = _sources(request.sources or [])
                _sources_within_reach(engine, caller, spec.sources)
            elif key == "retention":
                spec.retention.update({k: v for k, v in value.items() if v is not None})
            elif key == "copy_rules":
                spec.copy_rules = list(value or [])
            else:
                setattr(spec, key, value)
        refused = f"policy {current.name} was not changed"
        _refuse(engine.policies.validate(spec, existing_id=current.id), refused)
        current = engine.policies.update(
            current.id, spec, actor=caller.name, confirm_lock=request.confirm_lock
        )
    if enabled is not None and enabled != current.enabled:
        current = engine.policies.set_enabled(current.id, enabled, actor=caller.name)
    return policy_dict(engine, current)


@router.delete("/policies/{policy}")
def remove_policy(engine: EngineDep, caller: Admin, policy: PolicyRef) -> dict[str, Any]:
    found = engine.policies.get(policy)
    engine.policies.remove(found.id, actor=caller.name)
    return {"removed": found.id, "name": found.name}


@router.post("/policies/{policy}/run", status_code=202)
def run_policy(engine: EngineDep, caller: Operator, policy: PolicyRef) -> JSONResponse:
    return accepted(engine.policies.run_now(policy, actor=caller.name))


@router.get("/policies/{policy}/retention")
def preview_retention(engine: EngineDep, caller: Reader, policy: PolicyRef) -> dict[str, Any]:
    return engine.policies.preview(policy).as_dict()


class ApplyRetention(Body):
    #: also remove points whose required copies do not exist yet (audited)
    force: bool = False


@router.post("/policies/{policy}/retention")
def apply_retention(
    engine: EngineDep, caller: Admin, policy: PolicyRef, request: ApplyRetention | None = None
) -> dict[str, Any]:
    request = request or ApplyRetention()
    plan = engine.policies.preview(policy)
    result = engine.policies.apply_retention(
        policy, force=request.force, actor=caller.name, wait=False
    )
    return {**plan.as_dict(), "applied": result.as_dict()}
