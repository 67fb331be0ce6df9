"""Who is calling: a token's name and role, or root on the unix socket."""

from __future__ import annotations

from dataclasses import dataclass

from engine.services.api_tokens import Role

__all__ = ["Caller", "Role"]


@dataclass(frozen=True)
class Caller:
    """The authenticated side of a request."""

    #: the token's name, or "root (unix socket)"; written to the audit log
    name: str
    role: Role
    #: "socket" (root on the unix socket, no token) or "token"
    via: str = "token"
