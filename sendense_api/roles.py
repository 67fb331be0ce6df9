"""Who is calling: a token's name and role, or root on the unix socket."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Role(StrEnum):
    """What a caller may do; each role includes the ones before it."""

    #: sees everything except secrets
    READ = "read"
    #: also runs, cancels, pauses and retries jobs, mounts and exports
    OPERATE = "operate"
    #: also changes configuration and repositories
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return list(Role).index(self)

    def allows(self, needed: Role) -> bool:
        return self.rank >= needed.rank


@dataclass(frozen=True)
class Caller:
    """The authenticated side of a request."""

    #: the token's name, or "root (unix socket)"; written to the audit log
    name: str
    role: Role
    #: "socket" (root on the unix socket, no token) or "token"
    via: str = "token"
