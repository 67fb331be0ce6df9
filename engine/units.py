"""Sizes in the engine's own messages (the console has its own compact format)."""

from __future__ import annotations


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'; whole bytes below 1 KiB, binary units up to TiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def plural(count: int, word: str, many: str | None = None) -> str:
    """'1 file', '2 files', '0 files'; ``many`` for words not made plural by an s
    ('1 repository', '3 repositories')."""
    return f"{count} {word if count == 1 else (many or word + 's')}"
