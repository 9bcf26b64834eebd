"""movq: decode MoVQ codes and latents into pictures and video."""

__version__ = "0.1.0"
