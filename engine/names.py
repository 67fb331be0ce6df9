"""Names operators give things, and how a typed reference finds the thing.

Repositories, copy rules, policies and NBD exports have a name and an id.
Commands take either, so the two must never be confused:

- a name is 1-64 letters, digits, '.', '_' or '-', starting with a letter or
  digit, and is never all digits (``1`` would read as an id);
- a reference is resolved as a name first; only when no name matches is it
  read as an id, written ``#ID`` or a bare ``ID``. ``#ID`` never matches a name
  (a name has no ``#``), so it always means the id. Names made before this
  rule that are all digits keep working: they still match first.

Restore mounts and jobs have ids only; they take ``ID`` or ``#ID`` too.
The lookups themselves are SQL and live in ``engine.catalog.refs``.
"""

from __future__ import annotations

import re

#: the largest id a catalog row can have (ids are 32-bit INTEGER columns)
ID_MAX = 2**31 - 1
NAME_MAX = 64

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_ID = re.compile(r"#?([0-9]{1,19})")

#: characters that never reach a terminal as they are: C0 controls, DEL and C1 controls
#: (ESC and CSI start terminal escapes; CR and LF forge lines), zero-width and bidi
#: format characters (they reorder or hide text), line/paragraph separators, and lone
#: surrogates (the undecodable bytes of a file name, as os.fsdecode gives them)
UNSAFE_CHARS = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u206f"
    "\ufeff\ufff9-\ufffb\ud800-\udfff]"
)

NAME_RULE = "use letters, digits, '.', '_' or '-' (up to {max}), starting with a letter or digit"


def name_error(text: str | None, *, max_length: int = NAME_MAX) -> str | None:
    """What is wrong with ``text`` as a new name, or None. Checks the text exactly as
    given: a trailing newline or space is not trimmed into a valid name."""
    if not text:
        return "a name is required"
    if len(text) > max_length or not _NAME.fullmatch(text):
        return NAME_RULE.format(max=max_length)
    if text.isdigit():
        return (
            f"a name cannot be all digits ({text!r} would read as an id); "
            "add a letter, e.g. 'r" + text + "'"
        )
    return None


def has_unsafe_chars(text: str) -> bool:
    """True when ``text`` holds a character of UNSAFE_CHARS (a line break, an escape…)."""
    return UNSAFE_CHARS.search(text) is not None


def parse_id(ref: str) -> int | None:
    """``"#12"`` or ``"12"`` -> 12; anything else, or an id no row can have, -> None.

    Only ASCII digits count (``str.isdigit`` also accepts '²' and other scripts'
    digits), and a number beyond the id column is not an id of anything."""
    match = _ID.fullmatch(ref)
    if match is None:
        return None
    value = int(match.group(1))
    return value if 1 <= value <= ID_MAX else None
