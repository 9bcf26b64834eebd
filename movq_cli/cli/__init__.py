"""The `movq` command line."""

from movq_cli.cli.decode import app

__all__ = ["app"]
