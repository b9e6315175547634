"""The `reclo-agent` command's entry point: what can start before the program has loaded
starts first (ahead.py), then the command line interface is loaded and run (cli.py)."""

from __future__ import annotations

import sys
from typing import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    from . import ahead

    ahead.start(args)
    from .cli import main as run_command

    return run_command(args)
