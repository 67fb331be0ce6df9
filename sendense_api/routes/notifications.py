"""Notification rules and deliveries: ``sendense notify ...`` over HTTP.

- ``GET /notification-rules``, ``GET /notification-rules/{rule}`` (read): what each
  rule matches and where it sends; a secret (HMAC key, mail password, a webhook or
  apprise URL holding a token) shows only as ``"secret": "set"``;
- ``POST /notification-rules`` (admin, 201): the checks of ``notify rule add``,
  nothing saved on error; secrets go in and are stored encrypted;
- ``POST /notification-rules/{rule}/enable|disable``, ``DELETE
  /notification-rules/{rule}`` (admin);
- ``POST /notification-rules/{rule}/test`` (operate): sends a test message now and
  answers what the target said (``ok`` false with its reason, as ``notify test``
  exits 1);
- ``GET /notification-deliveries`` (read; ``?failed=true&rule=&limit=``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query
from fastapi.responses import JSONResponse
from pydantic import Field

from engine.services.notify import RuleSpec
from sendense_api.deps import Admin, EngineDep, Operator, Reader
from sendense_api.routes._common import Body, ShapedRoute
from sendense_tui.commands import LIMIT_MAX

router = APIRouter(tags=["notifications"], route_class=ShapedRoute)

RuleRef = Annotated[str, Path(min_length=1, max_length=256, description="rule name or #ID")]
Level = Literal["debug", "info", "warning", "error", "critical"]


class NewRule(Body):
    """A rule as ``sendense notify rule add`` takes it (secrets in clear here only)."""

    name: str = Field(min_length=1, max_length=64)
    target: Literal["webhook", "email", "apprise"]
    url: str | None = Field(default=None, max_length=2048, description="webhook URL")
    hmac_secret: str | None = Field(default=None, max_length=4096)
    smtp_host: str | None = Field(default=None, max_length=255)
    smtp_port: int = Field(default=25, ge=1, le=65535)
    starttls: bool = False
    mail_from: str | None = Field(default=None, max_length=255)
    mail_to: list[Annotated[str, Field(max_length=255)]] = Field(default=[], max_length=50)
    smtp_user: str | None = Field(default=None, max_length=255)
    smtp_password: str | None = Field(default=None, max_length=4096)
    apprise_url: str | None = Field(default=None, max_length=4096)
    min_level: Level | None = None
    levels: list[Level] = Field(default=[], max_length=5)
    sources: list[Annotated[str, Field(max_length=64)]] = Field(default=[], max_length=50)
    kinds: list[Annotated[str, Field(max_length=96)]] = Field(default=[], max_length=50)
    dedup_minutes: int = Field(default=0, ge=0, le=7 * 24 * 60)
    max_per_hour: int | None = Field(default=None, ge=1, le=10_000)
    digest_at: str | None = Field(default=None, pattern=r"^\d{2}:\d{2}$", description="HH:MM UTC")
    enabled: bool = True


@router.get("/notification-rules")
def list_rules(engine: EngineDep, caller: Reader) -> list[dict[str, Any]]:
    return [view.as_dict() for view in engine.notifications.list_rules()]


@router.get("/notification-rules/{rule}")
def show_rule(engine: EngineDep, caller: Reader, rule: RuleRef) -> dict[str, Any]:
    return engine.notifications.get_rule(rule).as_dict()


@router.post("/notification-rules", status_code=201)
def add_rule(engine: EngineDep, caller: Admin, body: NewRule) -> dict[str, Any]:
    spec = RuleSpec(
        **{
            **body.model_dump(),
            "mail_to": tuple(body.mail_to),
            "levels": tuple(body.levels),
            "sources": tuple(body.sources),
            "kinds": tuple(body.kinds),
        }
    )
    return engine.notifications.add_rule(spec, actor=caller.name).as_dict()


@router.post("/notification-rules/{rule}/enable")
def enable_rule(engine: EngineDep, caller: Admin, rule: RuleRef) -> dict[str, Any]:
    return engine.notifications.set_enabled(rule, True, actor=caller.name).as_dict()


@router.post("/notification-rules/{rule}/disable")
def disable_rule(engine: EngineDep, caller: Admin, rule: RuleRef) -> dict[str, Any]:
    return engine.notifications.set_enabled(rule, False, actor=caller.name).as_dict()


@router.delete("/notification-rules/{rule}")
def remove_rule(engine: EngineDep, caller: Admin, rule: RuleRef) -> dict[str, Any]:
    name = engine.notifications.get_rule(rule).name
    engine.notifications.remove_rule(rule, actor=caller.name)
    return {"removed": name}


@router.post("/notification-rules/{rule}/test")
def test_rule(engine: EngineDep, caller: Operator, rule: RuleRef) -> JSONResponse:
    result = engine.notifications.test(rule, actor=caller.name)
    body = {"ok": result.ok, "sentence": result.sentence, "delivery_id": result.delivery_id}
    return JSONResponse(body, status_code=200)


@router.get("/notification-deliveries")
def list_deliveries(
    engine: EngineDep,
    caller: Reader,
    failed: bool = False,
    rule: Annotated[str | None, Query(min_length=1, max_length=256)] = None,
    limit: Annotated[int, Query(ge=1, le=LIMIT_MAX)] = 100,
) -> list[dict[str, Any]]:
    views = engine.notifications.deliveries(failed_only=failed, rule=rule, limit=limit)
    return [view.as_dict() for view in views]
