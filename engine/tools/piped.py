"""A child program whose three streams its starter speaks through, on asyncio: the
console process each browser session of ``sendense console --web`` gets (textual-serve
talks to it over stdin/stdout). Started from an argument list, never a shell (a state
directory's path is never read by one); settings reach it through ``env``, never its
command line (a catalog URL may hold a password)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence


async def start_piped(argv: Sequence[str], *, env: Mapping[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(env),
    )
