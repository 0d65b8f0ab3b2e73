"""The conventions every unetflow module keeps, in one place.

Arrays
------
* Images are channels-last ``(H, W, C)`` float32.
* Label images are integer ``(H, W)`` (or ``(Z, Y, X)``): 0 is background, 1..N objects.
* Flow fields in NumPy are ``(2, H, W)`` = ``(dy, dx)`` (``(3, Z, Y, X)`` in 3-D), as in
  Cellpose; the network emits them channels-last.  :func:`flows_to_channels_last` and
  :func:`flows_to_channels_first` are the only place the axis is moved.
* The flow model's output channels are ``[dy, dx, cellprob_logit]``; the flow target's channels
  are ``[dy, dx, cellprob]`` with unit-length flows.  The loss multiplies the target flows by
  :data:`FLOW_SCALE`; :func:`unetflow.postprocess.compute_masks` divides the predicted flows by it.
* The boundary target has 3 classes: :data:`BACKGROUND`, :data:`INTERIOR`, :data:`BOUNDARY`.
"""
from __future__ import annotations

import numpy as np

#: Network flows are trained on targets scaled by this factor (Cellpose's ``5 * flow``), and
#: divided by it again before flow following.
FLOW_SCALE = 5.0

#: Channel indices of the flow model's output and of the flow target.
FLOW_Y, FLOW_X, CELLPROB = 0, 1, 2
FLOW_CHANNELS = 3

#: Boundary-model class ids.
BACKGROUND, INTERIOR, BOUNDARY = 0, 1, 2
N_BOUNDARY_CLASSES = 3

#: The BBBC U-Net's class weights (background, interior, boundary) in its cross-entropy.
BBBC_CLASS_WEIGHTS = (1.0, 1.0, 10.0)

#: The cell-probability target is ``labels > CELLPROB_TARGET_THRESHOLD`` (Cellpose's ``lbl > 0.5``).
CELLPROB_TARGET_THRESHOLD = 0.5

#: The splits of a manifest.
SPLITS = ("train", "val", "test")

#: Largest network tile side (px) at inference by default: most microscopy images fit in one tile,
#: so no pixel is computed twice; larger ones are cut into the fewest tiles that cover them.
DEFAULT_TILE = 1024
#: Largest side (voxels) of the cubes a 3-D network runs on: its activations grow with the cube,
#: not with the volume (a 3-D U-Net of base width 16 holds about 100 floats per voxel).
VOLUME_TILE = 128


def split_flow_outputs(raw: np.ndarray):
    """The flow model's ``(H, W, 3)`` outputs as ``(dP, cellprob)``: ``(2, H, W)`` flows and ``(H, W)`` logits."""
    raw = np.asarray(raw)
    return flows_to_channels_first(raw[..., :CELLPROB]), raw[..., CELLPROB]


def flows_to_channels_last(flows: np.ndarray) -> np.ndarray:
    """``(2, H, W)`` (dy, dx) flows to ``(H, W, 2)``, keeping the component order."""
    return np.moveaxis(np.asarray(flows), 0, -1)


def flows_to_channels_first(flows: np.ndarray) -> np.ndarray:
    """``(H, W, 2)`` (dy, dx) flows to ``(2, H, W)``, keeping the component order."""
    return np.moveaxis(np.asarray(flows), -1, 0)
