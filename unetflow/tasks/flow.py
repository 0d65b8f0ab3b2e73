"""The flow representation (Cellpose; Stringer et al., Nature Methods 18, 100-106, 2021;
github.com/MouseLand/cellpose): unit vectors along a heat-diffusion field centred in each object
plus a cell-probability logit, recovered by following the flows (:mod:`unetflow.dynamics`)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..conventions import CELLPROB_TARGET_THRESHOLD, FLOW_X, FLOW_Y, split_flow_outputs
from ..dynamics import PostprocessConfig, compute_masks, finish_masks, masks_before_checks
from ..flows import FLOWS_ALGORITHM_VERSION
from .base import Task


@dataclass(frozen=True)
class FlowLossOptions:
    """``loss.flow`` (and ``loss.flow3d``): weights of the flow MSE and of the cellprob cross-entropy."""

    flow_weight: float = 1.0
    prob_weight: float = 1.0


class FlowTask(Task):
    """Target ``[dy, dx, cellprob]`` (unit flows); output ``[dy, dx, cellprob_logit]`` (flows x5)."""

    name = "flow"
    channel_names = ("flow_y", "flow_x", "cellprob")
    output_doc = (
        "Channel 0 and 1 are the flows, y then x: the unit vector field of each object's heat-diffusion "
        "centre, multiplied by 5 (as in Cellpose). Channel 2 is the cell-probability logit (> 0: inside "
        "an object). unetflow turns them into instances with `unetflow.compute_masks(flows, cellprob, "
        "...)`; the flows and logit also fit Cellpose's `dynamics.compute_masks(dP, cellprob, ...)`, with "
        "dP = channels 0-1 in (2, H, W) order.")
    kinds = {"flows": "vector", "cellprob": "nearest"}
    version = FLOWS_ALGORITHM_VERSION  # the targets are the flows of unetflow.flows
    postprocess_class = PostprocessConfig
    loss_class = FlowLossOptions
    tuning_grid = {"cellprob_threshold": (-2.0, -1.0, -0.5, 0.0, 0.5, 1.0),
                   "flow_threshold": (0.0, 0.2, 0.4, 0.6, 0.8, 1.2)}
    # current Cellpose: follow every cell pixel, bilinear steps (round trip AP@0.9 0.996 vs 0.964)
    recommended = ("postprocess.flow.follow=cellprob", "postprocess.flow.interp=true")

    def make_targets(self, labels, params):
        from ..flows import masks_to_flows

        return {"flows": masks_to_flows(labels).astype(np.float32),
                "cellprob": (labels > CELLPROB_TARGET_THRESHOLD).astype(np.uint8)}

    def target(self, crop):
        return np.concatenate([crop["flows"], crop["cellprob"][..., None].astype(np.float32)], -1)

    def build_model(self, input_channels, model_config):
        from ..models import build_flow_unet

        m = model_config
        return build_flow_unet(input_channels, m.depth, m.base_filters, m.batch_norm, m.dropout)

    def loss(self, options):
        from ..losses import FlowLoss

        return FlowLoss(options.flow_weight, options.prob_weight)

    def metrics(self):
        from ..losses import CellprobIoU, MapMSE

        return [MapMSE(), CellprobIoU()]

    def unflip(self, outputs, flip_y, flip_x):
        outputs = super().unflip(outputs, flip_y, flip_x).copy()
        if flip_y:  # a flipped axis reverses the flow component along it
            outputs[..., FLOW_Y] *= -1
        if flip_x:
            outputs[..., FLOW_X] *= -1
        return outputs

    def to_labels(self, raw, config):
        return compute_masks(*split_flow_outputs(raw), config)

    def outputs(self, raw):
        dP, cellprob = split_flow_outputs(raw)
        return {"flows": dP, "cellprob": cellprob}

    def flow_field(self, raw):
        dP, cellprob = split_flow_outputs(raw)
        return dP, cellprob > 0

    def package_config(self, postprocess):
        # the spec's cellpose_flow_dynamics step would need the cellpose package wherever the
        # package is tested and would replace the test output by Cellpose's labels, so the
        # outputs stay raw and its arguments are given here for consumers that have Cellpose
        pp = postprocess
        return {"cellpose_flow_dynamics": {
            "cellprob_threshold": float(pp.cellprob_threshold), "flow_threshold": float(pp.flow_threshold or 0.0),
            "do_3D": False, "min_size": int(pp.min_size)}}

    def tune(self, raws, objective, base, progress=True):
        from ..progress import progress_bar

        # one flow-following pass per cellprob threshold; the flow check is cheap to redo
        grid, scores = self.tuning_grid, []
        for cpt in progress_bar(grid["cellprob_threshold"], desc="tune thresholds (flow)", enabled=progress):
            cfg = base.with_overrides(cellprob_threshold=cpt, flow_threshold=max(grid["flow_threshold"]))
            stages = [masks_before_checks(*split_flow_outputs(r), cfg) for r in raws]
            for ft in grid["flow_threshold"]:
                final = base.with_overrides(cellprob_threshold=cpt, flow_threshold=ft)
                scores.append(({"cellprob_threshold": cpt, "flow_threshold": ft},
                               objective([finish_masks(m, d, final) for m, d in stages])))
        return scores
