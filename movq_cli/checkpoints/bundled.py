"""The model that ships with movq, used when no --weights is given."""

from __future__ import annotations

from pathlib import Path

from movq_cli.errors import InputError

FILE_NAME = "movq-default.safetensors"
_PACKAGE = Path(__file__).resolve().parent.parent  # movq_cli/


def default_weights() -> Path:
    """The bundled weights: inside the installed package, or in the source tree's weights/."""
    for candidate in (_PACKAGE / "_weights" / FILE_NAME, _PACKAGE.parent / "weights" / FILE_NAME):
        if candidate.is_file():
            return candidate
    raise InputError(f"the default model ({FILE_NAME}) is not installed; give weights=...")
