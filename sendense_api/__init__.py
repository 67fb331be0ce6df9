"""Sendense's HTTP API: a third front end beside the console and the CLI.

``sendense daemon`` serves it (on a root-only unix socket in the state directory,
and optionally on TCP). Like the CLI it only asks the engine: it never imports
catalog models or stores, and its JSON has the shapes of the CLI's ``--json``
(``engine.shapes``). Routes live in ``sendense_api.routes``, one module per
resource, each exposing ``router``; ``app.ROUTERS`` lists them.
"""
