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
    assert (settings.exports.idle_minutes, settings.exports.max_hours) == (30, 8)


def test_readme_commands_parse_with_the_real_command_line() -> None:
    """Every `sendense …` line of the command block is accepted by the parser as
    written (a renamed option or a missing argument fails here), and the block shows
    how to extend a lock."""
    import shlex

    from sendense_tui.cli import build_parser

    blocks = re.findall(r"```sh\n(.*?)```", README.read_text(), re.S)
    assert blocks, "README.md has no ```sh block"
    lines = [
        shlex.split(line, comments=True)
        for line in "".join(blocks).replace("\\\n", " ").splitlines()
        if line.startswith("sendense ")
    ]
    assert ["sendense", "lock", "extend", "3", "--until", "2027-06-30"] in lines
    parser = build_parser()
    for words in lines:
        parser.parse_args(words[1:])
