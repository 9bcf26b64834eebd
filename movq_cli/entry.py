"""The `movq` command's entry point: the command line, with Ctrl-C in its first moments (while
its modules load, before any command takes it over) one line and exit 130, not a traceback."""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from movq_cli.cli import app

        app(prog_name="movq")
    except KeyboardInterrupt:  # nothing has been written yet
        print("interrupted", file=sys.stderr)
        sys.exit(130)
