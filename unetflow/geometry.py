"""The U-Net's geometry: which input sizes it takes and how far it sees (no TensorFlow here)."""
from __future__ import annotations

import numpy as np

__all__ = ["min_input_multiple", "receptive_radius", "check_architecture"]


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


def check_architecture(depth, base_filters, dropout=0.0, input_channels=1, name: str = "`{}`") -> None:
    """A ValueError naming the first bad hyper-parameter of a U-Net: `depth`, `base_filters` and
    `input_channels` positive integers, `dropout` in [0, 1).  `name` formats the argument's name
    in the message (``"model.{}"`` for a config's keys)."""
    for key, value in (("depth", depth), ("base_filters", base_filters), ("input_channels", input_channels)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"{name.format(key)} must be a positive integer, got {value!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0 <= dropout < 1:
        raise ValueError(f"{name.format('dropout')} must be in [0, 1), got {dropout!r}")
