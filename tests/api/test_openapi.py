"""docs/openapi.json is what the routes say."""

from __future__ import annotations

import json

from sendense_api.openapi import COMMAND, DOCUMENT, openapi_text


def test_the_checked_in_openapi_document_is_current() -> None:
    current = openapi_text()
    checked_in = DOCUMENT.read_text(encoding="utf-8") if DOCUMENT.is_file() else ""
    assert checked_in == current, (
        f"{DOCUMENT} is out of date with the routes: run `{COMMAND}` and commit the file"
    )


def test_the_document_names_every_resource_and_the_bearer_scheme() -> None:
    document = json.loads(openapi_text())
    paths = document["paths"]
    for path in (
        "/api/v1/repositories",
        "/api/v1/repositories/{ref}",
        "/api/v1/repositories/import",
        "/api/v1/jobs/{job_id}/cancel",
        "/api/v1/jobs/{job_id}/stream",
        "/api/v1/events/stream",
    ):
        assert path in paths, path
    assert document["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert document["paths"]["/api/v1/jobs"]["get"]["security"] == [{"HTTPBearer": []}]
