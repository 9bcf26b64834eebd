"""The `movq` command line: parses arguments, calls the library, reports in one line.

Each command lives in a module of its own and imports torch only when it runs, so that
`movq --help` and `movq --version` answer at once.
"""

from movq_cli.cli import checkpoints, compare, decode, encode, preview  # noqa: F401  (they register their commands)
from movq_cli.cli.app import app

__all__ = ["app"]
