"""Instance recovery, one module per representation: :mod:`unetflow.dynamics` follows the flow
model's flows (Cellpose), :mod:`unetflow.boundary` turns the boundary model's class probabilities
into objects (BBBC), :mod:`unetflow.distance` grows watershed basins from the distance map's
maxima.  This module gathers their public names under one import path.
"""
from .boundary import BoundaryPostprocessConfig, boundary_to_labels
from .distance import DistancePostprocessConfig, distance_to_labels
from .dynamics import (PostprocessConfig, compute_masks, fill_holes_and_remove_small_masks, finish_masks, flow_errors,
                       follow_flows, get_masks, masks_before_checks, remove_bad_flow_masks)

__all__ = ["follow_flows", "get_masks", "compute_masks", "flow_errors", "remove_bad_flow_masks",
           "fill_holes_and_remove_small_masks", "masks_before_checks", "finish_masks", "boundary_to_labels",
           "distance_to_labels", "PostprocessConfig", "BoundaryPostprocessConfig", "DistancePostprocessConfig"]
