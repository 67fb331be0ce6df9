"""``sendense metrics``: the Prometheus exposition ``GET /metrics`` serves, on stdout.

For node_exporter's textfile collector (write it to a ``.prom`` file from a timer)
or a quick look. A one-shot engine has no capacity monitor running: repository
space is each repository's newest stored sample, and the job histogram and
finished-jobs counter (which count jobs finished since the process started) are
empty; scrape the daemon's ``/metrics`` for those.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from sendense_tui.commands import CliContext, add_parser


def register(subparsers: Any) -> None:
    parser = add_parser(
        subparsers, "metrics", help="print the Prometheus metrics (text format) on stdout"
    )
    parser.set_defaults(func=print_metrics)


def print_metrics(args: argparse.Namespace, ctx: CliContext) -> int:
    with ctx.engine(read_only=True) as engine:
        text = engine.metrics.exposition()
    sys.stdout.buffer.write(text)
    sys.stdout.flush()
    return 0
