"""What a client of the API relies on beyond the JSON: the path prefix and the
headers that page and identify an answer. Standard library only, so a client (the
CLI asking the daemon for a page: sendense_tui.daemon_client) imports it without
FastAPI."""

from __future__ import annotations

API_PREFIX = "/api/v1"
#: a page's continuation: pass it as ``after`` for the next page; absent on the last
NEXT_CURSOR = "X-Next-Cursor"
#: how many rows follow a page: a number, or ``MORE_MAX+`` (engine.paging)
MORE = "X-More"
#: on every answer: the daemon's version and the catalog it serves
#: (``Settings.catalog_identity``): a CLI takes a listing from the daemon only when
#: both are its own
VERSION_HEADER = "X-Sendense-Version"
CATALOG_HEADER = "X-Sendense-Catalog"
