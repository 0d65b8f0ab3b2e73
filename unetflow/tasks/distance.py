"""The distance task: its target, head, loss and post-processing options around the distance
representation of :mod:`unetflow.distance`."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..conventions import CELLPROB_TARGET_THRESHOLD
from ..distance import DISTANCE_SCALE, DistancePostprocessConfig, distance_to_labels, labels_to_distance
from .base import Task


@dataclass(frozen=True)
class DistanceLossOptions:
    """``loss.distance``: weights of the distance-map MSE and of the cellprob cross-entropy."""

    distance_weight: float = 1.0
    prob_weight: float = 1.0


class DistanceTask(Task):
    """Target ``[distance, cellprob]``; output ``[distance x DISTANCE_SCALE, cellprob_logit]``."""

    name = "distance"
    channel_names = ("distance", "cellprob")
    output_doc = (
        "Channel 0 is each object's normalised Euclidean distance transform (1 at its centre, 0 at its "
        "edge), multiplied by 5; channel 1 is the cell-probability logit (> 0: inside an object). "
        "unetflow turns them into instances with a marker watershed "
        "(`unetflow.distance.distance_to_labels`).")
    kinds = {"distance": "linear", "cellprob": "nearest"}
    postprocess_class = DistancePostprocessConfig
    loss_class = DistanceLossOptions
    tuning_grid = {"cellprob_threshold": (-1.0, -0.5, 0.0, 0.5, 1.0),
                   "h": (0.02, 0.05, 0.1, 0.2, 0.3)}

    def make_targets(self, labels, params):
        return {"distance": labels_to_distance(labels),
                "cellprob": (labels > CELLPROB_TARGET_THRESHOLD).astype(np.uint8)}

    def target(self, crop):
        return np.stack([crop["distance"], crop["cellprob"].astype(np.float32)], -1)

    def build_model(self, input_channels, model_config):
        from ..models import build_unet

        m = model_config
        return build_unet(self.channels, input_channels, m.depth, m.base_filters, m.batch_norm, m.dropout,
                          head_name="distance_cellprob", name="distance_unet")

    def loss(self, options):
        from ..losses import DistanceLoss

        return DistanceLoss(DISTANCE_SCALE, options.distance_weight, options.prob_weight)

    def metrics(self):
        from ..losses import CellprobIoU, MapMSE

        return [MapMSE(name="distance_mse", scale=DISTANCE_SCALE), CellprobIoU()]

    def to_labels(self, raw, config):
        return distance_to_labels(raw, config)

    def outputs(self, raw):
        return {"distance": raw[..., 0] / DISTANCE_SCALE, "cellprob": raw[..., 1]}
