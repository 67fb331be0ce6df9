"""``GET /api/v1/version``: what answers, and who the caller is."""

from __future__ import annotations

from fastapi import APIRouter

from engine import __version__
from sendense_api.deps import Reader
from sendense_api.routes._common import ShapedRoute

router = APIRouter(tags=["system"], route_class=ShapedRoute)


@router.get("/version")
def version(caller: Reader) -> dict[str, str]:
    return {"version": __version__, "caller": caller.name, "role": caller.role.value}
