"""Textual stylesheets, shipped inside the wheel as ``sendense_tui.styles``."""

from pathlib import Path

STYLES_DIR = Path(__file__).parent


def stylesheet(name: str) -> Path:
    return STYLES_DIR / name
