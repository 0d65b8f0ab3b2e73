"""The U-Net's geometry: which input sizes it takes and how far it sees (no TensorFlow here)."""
from __future__ import annotations

__all__ = ["min_input_multiple", "receptive_radius"]


def min_input_multiple(depth: int) -> int:
    """Input height and width must be multiples of this (one 2x2 pooling per level below the top)."""
    return 2 ** (depth - 1)


def receptive_radius(multiple: int) -> int:
    """How far (px) the U-Net whose inputs are multiples of `multiple` (``2 ** (depth - 1)``) sees
    around a pixel: each 3x3 convolution adds one pixel at its level's scale, two per level down and
    up, and each pooling half a pixel of the level above."""
    depth = int(multiple).bit_length()
    down = sum(2 * 2 ** level for level in range(depth))
    up = sum(2 * 2 ** level for level in range(depth - 1))
    return down + up + sum(2 ** level for level in range(depth - 1))
