"""What an API token may name on the appliance: paths inside the directories its
administrator opened to tokens (``[api] source_roots`` for what a backup reads,
``[api] repository_roots`` for where a repository keeps its files).

The daemon runs as root: a path a token names is read or written with root's
rights, so a path outside the roots would let a token reach any file of the
appliance. Root on the unix socket is not bound by the roots.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path


def within(path: str, roots: Sequence[Path]) -> bool:
    """Whether the normalised absolute ``path`` is a root or lies under one."""
    return any(path == str(root) or path.startswith(str(root).rstrip("/") + "/") for root in roots)


def reaches(text: str, roots: Sequence[Path], *, devices: bool = False) -> bool:
    """Whether a token may name ``text``: absolute, no ``..`` part, inside a root as
    written and once its symbolic links are followed (a path that does not exist yet
    is followed as far as it exists). ``devices``: a link may also lead to a block
    device (LVM's /dev/VG/LV are links to /dev/dm-N). Whoever may write in a root
    decides what tokens reach through it."""
    if not (os.path.isabs(text) and ".." not in text.split("/")):
        return False
    if not within(os.path.normpath(text), roots):
        return False
    real = os.path.realpath(text)
    if real == os.path.normpath(text):  # no link on the way
        return True
    if devices:
        try:
            if stat.S_ISBLK(os.stat(real).st_mode):
                return True
        except OSError:
            pass
    return within(real, [Path(os.path.realpath(r)) for r in roots])


def roots_sentence(roots: Sequence[Path]) -> str:
    """The end of a refusal: what is open to tokens, in words."""
    if not roots:
        return "no path of the appliance is open to tokens"
    return f"only paths inside {', '.join(str(r) for r in roots)} are open to tokens"
