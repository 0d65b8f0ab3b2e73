"""The BBBC U-Net's representation (Caicedo et al., Cytometry A 95, 952-965, 2019;
github.com/carpenterlab/unet4nuclei): 3 classes, background / interior / boundary, with a
class-weighted cross-entropy; instances are the connected interiors (:mod:`unetflow.boundary`)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..boundary import BoundaryPostprocessConfig, boundary_to_labels, labels_to_boundary_classes
from ..conventions import BBBC_CLASS_WEIGHTS, BOUNDARY, CELLPROB_TARGET_THRESHOLD, N_BOUNDARY_CLASSES
from .base import Task


@dataclass(frozen=True)
class BoundaryLossOptions:
    """``loss.boundary``: the cross-entropy's weight of each class (background, interior, boundary)."""

    class_weights: tuple = BBBC_CLASS_WEIGHTS


@dataclass(frozen=True)
class BoundaryHeadOptions:
    """``model.boundary``: ``head_relu`` reproduces the original BBBC head's ReLU (an accident of
    unet4nuclei that clips negative logits)."""

    head_relu: bool = False


class BoundaryTask(Task):
    """Target: one-hot classes; output: class logits (tiles are blended as probabilities)."""

    name = "boundary"
    channel_names = ("background", "interior", "boundary")
    output_doc = (
        "Three class logits per pixel, in the order background, interior, boundary (the BBBC nucleus "
        "U-Net's labels). unetflow turns them into instances with `unetflow.boundary_to_labels` "
        "(softmax, then connected components of interior pixels grown into their boundaries).")
    kinds = {"cellprob": "nearest", "boundary": "nearest"}
    postprocess_class = BoundaryPostprocessConfig
    tuning_grid = {"boundary_boost": (0.5, 1.0, 2.0, 4.0), "method": ("dilate", "watershed")}
    loss_class = BoundaryLossOptions
    head_class = BoundaryHeadOptions

    def make_targets(self, labels, params):
        return {"cellprob": (labels > CELLPROB_TARGET_THRESHOLD).astype(np.uint8),
                "boundary": labels_to_boundary_classes(labels, width=params.boundary_width)}

    def target(self, crop):
        return np.eye(N_BOUNDARY_CLASSES, dtype=np.float32)[crop["boundary"]]

    def build_model(self, input_channels, model_config):
        from ..models import build_boundary_unet

        m = model_config
        return build_boundary_unet(input_channels, m.depth, m.base_filters, m.batch_norm, m.dropout,
                                   m.boundary.head_relu)

    def loss(self, options):
        from ..losses import WeightedCategoricalCrossentropy

        return WeightedCategoricalCrossentropy(options.class_weights)

    def metrics(self):
        from ..losses import ClassRecall

        return [ClassRecall(i, name=f"recall_{n}") for i, n in enumerate(("background", "interior", "boundary"))]

    def blendable(self, outputs):
        # blend probabilities, not logits
        p = np.exp(outputs - outputs.max(-1, keepdims=True))
        return p / p.sum(-1, keepdims=True)

    def to_labels(self, raw, config):
        return boundary_to_labels(raw, config)

    def outputs(self, raw):
        return {"probs": raw, "boundary_prob": raw[..., BOUNDARY]}
