"""One module per resource, each with an ``APIRouter`` named ``router`` mounted under
``/api/v1`` (see sendense_api.app.ROUTERS)."""
