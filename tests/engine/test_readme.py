"""The README's examples must stay true: its sample config loads as documented."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from engine.config import load_settings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_sample_config_loads_with_the_values_it_shows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    block = re.search(r"```toml\n(.*?)```", README.read_text(), re.S)
    assert block, "README.md has no ```toml block"
    config = tmp_path / "sendense.toml"
    config.write_text(block.group(1))
    settings = load_settings({"SENDENSE_CONFIG": str(config)})
    assert settings.source == config
    assert settings.db_url.startswith("mysql+pymysql://")
    assert settings.capacity.min_free_bytes == 5 * 1024**3
    assert settings.jobs.heartbeat_seconds < settings.jobs.lease_seconds
    assert settings.verify.schedule == "0 3 * * *"
