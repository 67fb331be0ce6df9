"""What a route asks for: the engine, and a caller with at least some role.

    @router.post("/things", status_code=202)
    def start(engine: EngineDep, caller: Operator) -> dict[str, object]: ...

Routes are plain ``def`` functions: FastAPI runs them on its thread pool, where
the engine's blocking calls belong (never on the event loop).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from sendense_api.roles import Caller, Role

if TYPE_CHECKING:
    from engine.runtime import Engine

#: turns a request into its caller, or raises (engine.errors / HTTPException 401/403)
Authenticate = Callable[[Request], Caller]


def engine_of(request: Request) -> Engine:
    return request.app.state.engine


#: declares the bearer scheme in the OpenAPI document; the check is ``authenticate``
#: (the unix socket needs no token, so a missing one is not refused here)
BEARER = HTTPBearer(auto_error=False, description="an API token (`sendense api token create`)")


def require(role: Role) -> Callable[..., Caller]:
    """A dependency: the caller, who must hold at least ``role`` (else 401/403)."""

    def check(
        request: Request,
        _token: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)] = None,
    ) -> Caller:
        from fastapi import HTTPException

        caller: Caller = request.app.state.authenticate(request)
        # known before any refusal, so the audit log names who was refused
        request.state.caller = caller
        if not caller.role.allows(role):
            raise HTTPException(
                status_code=403,
                detail=f"the token {caller.name!r} has the role {caller.role.value}; "
                f"this needs {role.value}",
            )
        return caller

    return check


def local_root(caller: Annotated[Caller, Depends(require(Role.ADMIN))]) -> Caller:
    """A dependency: the caller on the daemon's own unix socket (root on the
    appliance, or the user the daemon runs as). For a request that writes to a path
    of the appliance's choosing, which a token, even an admin's, must not do: it
    would reach every file the daemon may write."""
    if caller.via != "socket":
        from fastapi import HTTPException

        raise HTTPException(
            status_code=403,
            detail="writing to a path on the appliance is only for its own users "
            "(the unix socket); a token cannot",
        )
    return caller


EngineDep = Annotated["Engine", Depends(engine_of)]
Reader = Annotated[Caller, Depends(require(Role.READ))]
Operator = Annotated[Caller, Depends(require(Role.OPERATE))]
Admin = Annotated[Caller, Depends(require(Role.ADMIN))]
LocalRoot = Annotated[Caller, Depends(local_root)]
