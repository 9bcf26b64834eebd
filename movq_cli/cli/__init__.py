"""The `movq` command line: parses arguments, calls the library, reports in one line.

Each command lives in a module of its own and imports torch only when it runs, so that
`movq --help` and `movq --version` answer at once.
"""

import os

# OpenMP's threads spin while they wait for work, by default: beside other work on the same cores
# (a second decode, a build) they took turns with it and decoding ran at a fraction of its speed.
# Sleeping instead cost nothing measurable on a quiet machine and was 2-4x faster on a busy one
# (benchmarks/bench_threads.py). It must be set before torch is imported; a setting of the user's wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from movq_cli.cli import checkpoints, compare, decode, encode, preview  # noqa: E402, F401  (they register their commands)
from movq_cli.cli.app import app  # noqa: E402

__all__ = ["app"]
