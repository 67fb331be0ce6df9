"""``/api/v1/repositories``: list, show (with capacity), add (tested before it is
saved, as ``sendense repo add``), edit, enable, disable, test, remove, import.

Reading is for every role, testing for ``operate``, changes for ``admin``. A
password goes in (CIFS) and never comes out: a repository says ``has_password``.
A token puts a local repository (added, moved or imported) only inside ``[api]
repository_roots`` (none by default: NFS and CIFS only); root on the unix socket
anywhere.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from engine.config import Settings
from engine.errors import ValidationError
from engine.services.repositories import RepositorySpec, check_repository_reach
from engine.shapes import (
    job_dict,
    repositories_list,
    repository_details,
    repository_dict,
    test_report_dict,
)
from sendense_api.deps import Admin, EngineDep, Operator, Reader
from sendense_api.problems import PROBLEM_JSON
from sendense_api.roles import Caller
from sendense_api.routes._common import ShapedRoute

router = APIRouter(prefix="/repositories", tags=["repositories"], route_class=ShapedRoute)

Text = Annotated[str, Field(max_length=1024)]
#: settings a change may set to null (the default applies again)
CLEARABLE = ("port", "warning_percent", "critical_percent", "full_percent", "min_free_bytes")


class Location(BaseModel):
    """Where a repository is (the options of ``repo add`` and ``repo import``)."""

    name: Annotated[str, Field(max_length=64)]
    kind: Literal["local", "nfs", "cifs"] = "local"
    #: local: the directory
    path: Text = ""
    #: nfs/cifs: host name or address
    server: Annotated[str, Field(max_length=255)] = ""
    #: nfs: the export path
    export: Text = ""
    #: cifs: the share name
    share: Annotated[str, Field(max_length=255)] = ""
    port: Annotated[int | None, Field(ge=1, le=65535)] = None
    nfs_version: Annotated[str, Field(max_length=8)] = "4.1"
    mount_options: Text = ""
    username: Annotated[str, Field(max_length=255)] = ""
    #: cifs: stored encrypted, never returned
    password: Annotated[str, Field(max_length=1024, repr=False)] = ""
    domain: Annotated[str, Field(max_length=255)] = ""
    smb_version: Annotated[str, Field(max_length=8)] = "3.0"

    def spec(self, *, create: bool = False) -> RepositorySpec:
        return RepositorySpec(
            name=self.name,
            kind=self.kind,
            path=self.path,
            create=create,
            server=self.server,
            export=self.share if self.kind == "cifs" else self.export,
            port=self.port,
            nfs_version=self.nfs_version,
            mount_options=self.mount_options,
            username=self.username,
            password=self.password,
            domain=self.domain,
            smb_version=self.smb_version,
        )


class NewRepository(Location):
    #: local: create the directory
    create: bool = False
    #: save it (disabled) even when its test fails
    disabled: bool = False


class RepositoryChange(BaseModel):
    """Fields to change; what is left out stays as it is. Name and type never change."""

    path: Text | None = None
    server: Annotated[str | None, Field(max_length=255)] = None
    export: Text | None = None
    share: Annotated[str | None, Field(max_length=255)] = None
    port: Annotated[int | None, Field(ge=1, le=65535)] = None
    nfs_version: Annotated[str | None, Field(max_length=8)] = None
    mount_options: Text | None = None
    username: Annotated[str | None, Field(max_length=255)] = None
    password: Annotated[str | None, Field(max_length=1024, repr=False)] = None
    domain: Annotated[str | None, Field(max_length=255)] = None
    smb_version: Annotated[str | None, Field(max_length=8)] = None
    warning_percent: Annotated[float | None, Field(gt=0, le=100)] = None
    critical_percent: Annotated[float | None, Field(gt=0, le=100)] = None
    full_percent: Annotated[float | None, Field(gt=0, le=100)] = None
    min_free_bytes: Annotated[int | None, Field(ge=0, le=2**63 - 1)] = None
    offsite: bool | None = None


def _check_reach(spec: RepositorySpec, settings: Settings, caller: Caller) -> None:
    """A token keeps a local repository only inside ``[api] repository_roots``; root
    on the unix socket anywhere (the daemon writes there as root)."""
    if caller.via != "socket":
        check_repository_reach(spec, settings)


@router.get("")
def list_repositories(engine: EngineDep, _caller: Reader) -> list[dict[str, Any]]:
    return repositories_list(engine)


@router.get("/{ref}")
def show_repository(ref: str, engine: EngineDep, _caller: Reader) -> dict[str, Any]:
    data, _item = repository_details(engine, ref)
    return data


@router.post("", status_code=201, responses={422: {"description": "refused or failed its test"}})
def add_repository(body: NewRepository, engine: EngineDep, caller: Admin) -> Any:
    """Test, then save (as ``sendense repo add``): a spec that does not validate writes
    nothing; one whose test fails is refused (422 with the test's steps) unless
    ``disabled`` keeps it, disabled."""
    spec = body.spec(create=body.create)
    _check_reach(spec, engine.settings, caller)
    problems = engine.repositories.validate(spec)
    if problems:
        raise ValidationError(
            f"repository {body.name} was not saved: "
            + "; ".join(f"{k}: {v}" for k, v in problems.items()),
            hint="fix it and send it again; nothing was written",
        )
    report = engine.repositories.test(spec)
    if not report.ok and not body.disabled:
        return JSONResponse(
            {
                "type": "about:blank",
                "title": "Unprocessable Content",
                "status": 422,
                "detail": f"repository {body.name} was not saved: {report.error}",
                "hint": (f"{report.hint}; or " if report.hint else "")
                + "send disabled=true to keep it (disabled) and fix it later",
                "test": test_report_dict(report),
            },
            status_code=422,
            media_type=PROBLEM_JSON,
        )
    repo = engine.repositories.add(spec, test=False, enabled=report.ok, actor=caller.name)
    return {
        "saved": True,
        "test": test_report_dict(report),
        "repository": repository_dict(repo, engine),
    }


@router.patch("/{ref}")
def edit_repository(
    ref: str, body: RepositoryChange, engine: EngineDep, caller: Admin
) -> dict[str, Any]:
    """Change settings; a changed location is tested first (nothing changes if it fails)."""
    repo = engine.repositories.get(ref)
    spec = engine.repositories.spec_of(repo)
    changes = body.model_dump(exclude_unset=True)
    share = changes.pop("share", None)
    if share is not None and repo.kind == "cifs":
        changes["export"] = share
    for key, value in changes.items():
        # null clears a number (back to the default); text and flags need a value
        if value is not None or key in CLEARABLE:
            setattr(spec, key, value)
    if spec.path != repo.path:
        _check_reach(spec, engine.settings, caller)
    repo = engine.repositories.edit(repo, spec, actor=caller.name)
    return repository_dict(repo, engine)


@router.post("/{ref}/enable")
def enable_repository(ref: str, engine: EngineDep, caller: Admin) -> dict[str, Any]:
    return repository_dict(engine.repositories.set_enabled(ref, True, actor=caller.name), engine)


@router.post("/{ref}/disable")
def disable_repository(ref: str, engine: EngineDep, caller: Admin) -> dict[str, Any]:
    return repository_dict(engine.repositories.set_enabled(ref, False, actor=caller.name), engine)


@router.post("/{ref}/test")
def test_repository(ref: str, engine: EngineDep, _caller: Operator) -> dict[str, Any]:
    """Test a saved repository now (mount, write, capacity); ``ok`` says how it went."""
    return test_report_dict(engine.repositories.test_repository(ref))


@router.delete("/{ref}")
def remove_repository(
    ref: str,
    engine: EngineDep,
    caller: Admin,
    force: Annotated[bool, Query(description="even if it holds backups (files stay)")] = False,
) -> dict[str, Any]:
    name = engine.repositories.get(ref).name
    engine.repositories.remove(ref, force=force, actor=caller.name)
    return {"removed": name}


@router.post("/import", status_code=202)
def import_repository(body: Location, engine: EngineDep, caller: Admin) -> dict[str, Any]:
    """Add (or reuse) a repository that already holds backups and queue the job that
    reads its chains back into the catalog (as ``sendense repo import``)."""
    spec = body.spec()
    _check_reach(spec, engine.settings, caller)
    repo = engine.imports.add_repository(spec, actor=caller.name)
    job = engine.imports.submit(repo.id, actor=caller.name)
    return {
        "job": job_dict(job),
        "url": f"/api/v1/jobs/{job.id}",
        "repository": repository_dict(engine.repositories.get(repo.id), engine),
    }
