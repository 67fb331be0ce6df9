"""The OpenAPI document of the API, as checked into ``docs/openapi.json``.

``python scripts/openapi.py`` writes it; tests/api/test_openapi.py fails while the
checked-in file differs from what the routes say.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

DOCUMENT = Path(__file__).resolve().parents[1] / "docs" / "openapi.json"
COMMAND = "python scripts/openapi.py"


def openapi_text() -> str:
    """The document, built from ``create_app`` over an engine that is never opened
    (the routes are read, nothing is served or connected)."""
    from engine.config import default_settings
    from engine.runtime import Engine
    from sendense_api.app import create_app
    from sendense_api.auth import token_authenticator

    with tempfile.TemporaryDirectory() as state:
        engine = Engine(default_settings(Path(state)))
        app = create_app(engine, authenticate=token_authenticator(engine.api_tokens))
        document = app.openapi()
        engine.catalog.dispose()
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"
