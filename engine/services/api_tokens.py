"""API tokens: who may call the HTTP API, and with which role.

A token's secret is ``sendense_<prefix>_<body>``: ``prefix`` (12 hex digits) finds
its row, ``body`` is 256 random bits. It is shown once, when it is made; the
catalog keeps only its SHA-256 (for a random secret that long a slow password hash
adds nothing) and compares digests in constant time. Unknown, revoked and expired
tokens are refused with a sentence (``TokenRefused``) that never repeats the
secret.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum

from engine.catalog.api_tokens import ApiTokenStore, TokenRow
from engine.clock import SYSTEM_CLOCK, Clock
from engine.errors import Action, SendenseError, ValidationError
from engine.events import Event, EventBus
from engine.names import name_error

SECRET_PREFIX = "sendense_"
_SECRET = re.compile(r"sendense_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
#: last-used times are written at most this often per token (not a write per request)
TOUCH_EVERY = timedelta(minutes=1)
#: the longest expiry a token can be given (ten years)
EXPIRES_DAYS_MAX = 3650


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


class TokenRefused(SendenseError):
    """A request's API token is unknown, revoked or expired (HTTP 401)."""


@dataclass(frozen=True)
class TokenView:
    """A token as operators see it: everything but its secret and digest."""

    name: str
    role: Role
    created_at: datetime
    created_by: str | None
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None
    #: active | expired | revoked
    state: str

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "role": self.role.value,
            "state": self.state,
            "created_at": self.created_at,
            "created_by": self.created_by,
            "expires_at": self.expires_at,
            "revoked_at": self.revoked_at,
            "last_used_at": self.last_used_at,
        }


def _minute(when: datetime | None) -> str:
    return when.strftime("%Y-%m-%d %H:%M") if when is not None else "-"


def digest_of(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


class ApiTokenService:
    def __init__(self, store: ApiTokenStore, bus: EventBus, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.store = store
        self.bus = bus
        self.clock = clock

    def _view(self, row: TokenRow) -> TokenView:
        now = self.clock.now()
        if row.revoked_at is not None:
            state = "revoked"
        elif row.expires_at is not None and row.expires_at <= now:
            state = "expired"
        else:
            state = "active"
        return TokenView(
            name=row.name,
            role=Role(row.role),
            created_at=row.created_at,
            created_by=row.created_by,
            expires_at=row.expires_at,
            revoked_at=row.revoked_at,
            last_used_at=row.last_used_at,
            state=state,
        )

    def create(
        self,
        name: str,
        role: Role | str,
        expires_days: int | None = None,
        *,
        actor: str | None = None,
    ) -> tuple[TokenView, str]:
        """A new token and its secret (shown this once; only its digest is kept)."""
        problem = name_error(name)
        if problem:
            raise ValidationError(f"API token name {name!r}: {problem}")
        try:
            role = Role(role)
        except ValueError:
            raise ValidationError(
                f"{role!r} is not a role: give {', '.join(r.value for r in Role)}"
            ) from None
        if expires_days is not None and not 1 <= expires_days <= EXPIRES_DAYS_MAX:
            raise ValidationError(
                f"a token expires in 1 to {EXPIRES_DAYS_MAX} days, not {expires_days}",
                hint="leave the expiry out for a token that lasts until it is revoked",
            )
        existing = self.store.find(name)
        if existing is not None and existing.revoked_at is None:
            raise ValidationError(
                f"an API token named {name!r} already exists",
                action=Action("revoke_api_token", "revoke it first or pick another name", name),
            )
        prefix = secrets.token_hex(6)
        secret = f"{SECRET_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
        now = self.clock.now()
        row = self.store.add(
            name=name,
            role=role.value,
            prefix=prefix,
            digest=digest_of(secret),
            now=now,
            created_by=actor,
            expires_at=now + timedelta(days=expires_days) if expires_days else None,
        )
        self.bus.publish(
            Event(
                kind="api.token_created",
                message=f"API token {name} created with role {role.value}"
                + (f", expires in {expires_days} days" if expires_days else ""),
                source="api",
                actor=actor,
                data={"token": name, "role": role.value},
            )
        )
        return self._view(row), secret

    def list(self) -> list[TokenView]:
        return [self._view(row) for row in self.store.list()]

    def get(self, name: str) -> TokenView:
        from engine.errors import NotFoundError

        row = self.store.find(name)
        if row is None:
            raise NotFoundError(
                f"there is no API token named {name!r}",
                action=Action("list_api_tokens", "the list of API tokens shows them"),
            )
        return self._view(row)

    def revoke(self, name: str, *, actor: str | None = None) -> TokenView:
        """Refuse the token from now on (a request already running finishes)."""
        before = self.store.find(name)
        row = self.store.revoke(name, self.clock.now())
        if before is not None and before.revoked_at is None:
            self.bus.publish(
                Event(
                    kind="api.token_revoked",
                    message=f"API token {name} revoked",
                    source="api",
                    actor=actor,
                    data={"token": name},
                )
            )
        return self._view(row)

    def authenticate(self, secret: str) -> TokenView:
        """The token whose secret this is, or TokenRefused with a sentence."""
        match = _SECRET.fullmatch(secret.strip())
        row = self.store.by_prefix(match.group(1)) if match else None
        # compared even when no row was found, so a guess costs the same either way
        expected = row.digest if row is not None else digest_of("")
        if row is None or not hmac.compare_digest(expected, digest_of(secret.strip())):
            raise TokenRefused(
                "the API token is not valid",
                action=Action("create_api_token", "create an API token with the read role"),
            )
        view = self._view(row)
        if view.state == "revoked":
            raise TokenRefused(
                f"the API token {row.name!r} was revoked",
                hint="ask an administrator for a new token",
            )
        if view.state == "expired":
            raise TokenRefused(
                f"the API token {row.name!r} expired at {_minute(row.expires_at)} UTC",
                hint="ask an administrator for a new token",
            )
        now = self.clock.now()
        if row.last_used_at is None or now - row.last_used_at >= TOUCH_EVERY:
            self.store.touch(row.id, now)
            view = replace(view, last_used_at=now)
        return view
