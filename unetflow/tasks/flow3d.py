"""The flow representation in 3-D: a U-Net of 3x3x3 convolutions trained on annotated volumes.

The targets are Cellpose's 3-D flows of the labels (:func:`unetflow.flows.masks_to_flows` of a
``(Z, Y, X)`` label volume: the sums of the 2-D flows of the slices along each axis, as Cellpose
2020 computes them) and the cell probability; the network outputs ``[dz, dy, dx, cellprob_logit]``
(flows x5) and instances are recovered by following the flows in 3-D
(:func:`unetflow.dynamics.compute_masks`).  Volumes are resampled to isotropic voxels before the
network, in training and prediction alike (:func:`unetflow.volume.predict_volume`), so one network
sees objects of one shape whatever the stack's anisotropy.

The boundary and distance representations have no 3-D variant: their post-processing (connected
interiors, h-maxima watershed) would work in 3-D, but their targets and the pipeline's crops
would each need a 3-D twin for no measured gain; the flow task is the one the volumes were asked for.
"""
from __future__ import annotations

import numpy as np

from ..conventions import flows_to_channels_first
from ..dynamics import FLOW_3D_OPTIONS, PostprocessConfig, compute_masks
from .base import Task
from .flow import FlowTask


class Flow3DTask(FlowTask):
    """Target ``[dz, dy, dx, cellprob]`` of a volume crop; output ``[dz, dy, dx, cellprob_logit]``."""

    name = "flow3d"
    spatial_dims = 3
    channel_names = ("flow_z", "flow_y", "flow_x", "cellprob")
    output_doc = (
        "Channels 0-2 are the flows, z then y then x, of a (Z, Y, X) volume resampled to isotropic voxels: "
        "Cellpose's 3-D flows of each object, multiplied by 5. Channel 3 is the cell-probability logit (> 0: "
        "inside an object). unetflow turns them into instances with `unetflow.compute_masks(flows, cellprob, "
        "follow='cellprob', flow_threshold=0)`; they also fit Cellpose's `dynamics.compute_masks(dP, cellprob, "
        "do_3D=True)`, with dP = channels 0-2 in (3, Z, Y, X) order.")
    postprocess_class = PostprocessConfig
    # 3-D masks are made with FLOW_3D_OPTIONS (no flow check): only the cellprob threshold is tuned
    tuning_grid = {"cellprob_threshold": (-2.0, -1.0, -0.5, 0.0, 0.5, 1.0)}
    recommended = ()

    def make_targets(self, labels, params):
        # the flow task's targets, which masks_to_flows makes in 3-D too; the 2-D entries of the
        # cache are the flow task's own
        return super().make_targets(labels, params) if labels.ndim == 3 else {}

    def build_model(self, input_channels, model_config):
        from ..models import build_unet

        m = model_config
        return build_unet(self.channels, input_channels, m.depth, m.base_filters, m.batch_norm, m.dropout,
                          head_name="flows_cellprob", name="flow3d_unet", spatial_dims=3)

    def loss(self, options):
        from ..losses import FlowLoss

        return FlowLoss(options.flow_weight, options.prob_weight, spatial_dims=3)

    def unflip(self, outputs, flip_y, flip_x):
        raise ValueError("test-time flips are implemented for 2-D images only")

    def to_labels(self, raw, config):
        dP, cellprob = self.split(raw)
        return compute_masks(dP, cellprob, config.with_overrides(**FLOW_3D_OPTIONS))

    @staticmethod
    def split(raw):
        """``(Z, Y, X, 4)`` outputs as ``(dP (3, Z, Y, X), cellprob (Z, Y, X))``."""
        raw = np.asarray(raw)
        return flows_to_channels_first(raw[..., :3]), raw[..., 3]

    def outputs(self, raw):
        dP, cellprob = self.split(raw)
        return {"flows": dP, "cellprob": cellprob}

    @property
    def has_flow_field(self) -> bool:
        return False  # reports draw 2-D fields

    def package_config(self, postprocess):
        pp = postprocess
        return {"cellpose_flow_dynamics": {"cellprob_threshold": float(pp.cellprob_threshold),
                                           "flow_threshold": 0.0, "do_3D": True, "min_size": int(pp.min_size)}}

    def tune(self, raws, objective, base, progress=True):
        return Task.tune(self, raws, objective, base, progress)  # the grid as it is: no flow-check stage
