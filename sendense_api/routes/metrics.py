"""``GET /metrics``: the engine's state in Prometheus' text format (engine.metrics).

Served at the root, where Prometheus looks by default, not under ``/api/v1``; a
token with the read role is needed off the daemon's unix socket (the scrape
config's ``authorization`` / ``bearer_token_file``).
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from engine.services.metrics import CONTENT_TYPE
from sendense_api.deps import EngineDep, Reader

router = APIRouter(tags=["metrics"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE: {}}, "description": "Prometheus text format"}},
)
def metrics(engine: EngineDep, _caller: Reader) -> Response:
    return Response(content=engine.metrics.exposition(), media_type=CONTENT_TYPE)
