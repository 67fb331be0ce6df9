"""Root conftest: shared fixtures live in tests/plugins, one module per area."""

pytest_plugins = [
    "tests.plugins.common",
    "tests.plugins.mariadb",
    "tests.plugins.loopfs",
    "tests.plugins.fusedir",
    "tests.plugins.netservers",
]
