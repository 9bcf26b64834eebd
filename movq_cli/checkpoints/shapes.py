"""Reading a config off native tensor names and shapes: the two questions every family's inference asks."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

Shapes = Mapping[str, Sequence[int]]  # native tensor name -> shape


def shape(shapes: Shapes, name: str) -> Sequence[int]:
    """The shape of tensor `name` (ValueError naming it when it is missing)."""
    if name not in shapes:
        raise ValueError(f"missing tensor {name}")
    return shapes[name]


def count(shapes: Shapes, pattern: str) -> int:
    """1 + the highest index matched by `pattern`'s group, 0 when nothing matches."""
    return 1 + max((int(m.group(1)) for name in shapes if (m := re.match(pattern, name))), default=-1)
