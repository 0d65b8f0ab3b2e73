"""Keras losses and training metrics of the tasks (boundary, flow, distance U-Nets).

Each loss is a pure ``keras.ops`` function wrapped by a serialisable ``keras.losses.Loss``.

* :class:`FlowLoss` is Cellpose's: ``0.5 * mean((y_pred[..., :2] - 5 * y_true[..., :2])**2)`` plus
  binary cross-entropy *with logits* of ``y_pred[..., 2]`` against ``float(y_true[..., 2] > 0.5)``.
  The thresholding happens inside the loss on the float target (a boolean tensor cannot be fed to
  a loss, which is where Keras ports of Cellpose get stuck), and the 5 is ``FLOW_SCALE``, the same constant
  :func:`unetflow.postprocess.compute_masks` divides by.
* :class:`DistanceLoss` is the same form for the distance representation (one map channel).
* :class:`WeightedCategoricalCrossentropy` is the BBBC U-Net's softmax cross-entropy with class
  weights (1, 1, 10) on one-hot targets.
"""
from __future__ import annotations

import keras
from keras import ops

from .conventions import BBBC_CLASS_WEIGHTS, BOUNDARY, CELLPROB_TARGET_THRESHOLD, FLOW_SCALE

__all__ = ["flow_loss", "regression_cellprob_loss", "weighted_categorical_crossentropy", "FlowLoss", "DistanceLoss",
           "WeightedCategoricalCrossentropy",
           "MapMSE", "CellprobIoU", "ClassRecall"]


def _bce_with_logits(logits, targets):
    # max(x, 0) - x * z + log(1 + exp(-|x|)): finite for any logit
    return ops.maximum(logits, 0.0) - logits * targets + ops.log1p(ops.exp(-ops.abs(logits)))


def regression_cellprob_loss(y_true, y_pred, scale: float, regression_weight: float = 1.0, prob_weight: float = 1.0):
    """Per-pixel loss of outputs ``[maps..., cellprob_logit]``, shape ``(..., H, W)``.

    ``0.5 * mean((y_pred[..., :-1] - scale * y_true[..., :-1])**2)`` over the map channels, plus
    binary cross-entropy with logits of the last channel against ``y_true[..., -1] > 0.5``.
    """
    y_true = ops.cast(y_true, "float32")
    y_pred = ops.cast(y_pred, "float32")
    err = ops.mean(ops.square(y_pred[..., :-1] - scale * y_true[..., :-1]), axis=-1)
    target = ops.cast(y_true[..., -1] > CELLPROB_TARGET_THRESHOLD, "float32")
    return regression_weight * 0.5 * err + prob_weight * _bce_with_logits(y_pred[..., -1], target)


def flow_loss(y_true, y_pred, flow_weight: float = 1.0, prob_weight: float = 1.0, spatial_dims: int = 2):
    """Per-pixel Cellpose loss, shape ``(..., H, W)``; its mean is the loss of the batch.  Outputs
    are ``[dy, dx, cellprob]``, or ``[dz, dy, dx, cellprob]`` with ``spatial_dims=3``."""
    if y_pred.shape[-1] is not None and y_pred.shape[-1] != spatial_dims + 1:
        names = "[dy, dx, cellprob]" if spatial_dims == 2 else "[dz, dy, dx, cellprob]"
        raise ValueError(f"the flow loss needs outputs {names}, got {y_pred.shape[-1]} channels")
    return regression_cellprob_loss(y_true, y_pred, FLOW_SCALE, flow_weight, prob_weight)


def weighted_categorical_crossentropy(y_true, y_pred, class_weights=BBBC_CLASS_WEIGHTS, from_logits: bool = True):
    """Per-pixel softmax cross-entropy of one-hot targets, weighted by the true class."""
    y_true = ops.cast(y_true, "float32")
    y_pred = ops.cast(y_pred, "float32")
    if from_logits:
        log_probs = y_pred - ops.logsumexp(y_pred, axis=-1, keepdims=True)
    else:
        log_probs = ops.log(ops.clip(y_pred, 1e-7, 1.0))
    ce = -ops.sum(y_true * log_probs, axis=-1)
    weights = ops.sum(y_true * ops.convert_to_tensor(class_weights, "float32"), axis=-1)
    return weights * ce


@keras.saving.register_keras_serializable(package="unetflow")
class FlowLoss(keras.losses.Loss):
    """Cellpose's flow loss (see the module docstring).

    Parameters
    ----------
    flow_weight, prob_weight : float
        Weights of the flow MSE term and the cellprob BCE term.

    Examples
    --------
    >>> import numpy as np
    >>> y_true = np.zeros((1, 1, 1, 3), "float32"); y_true[..., 1] = 1.0; y_true[..., 2] = 1.0
    >>> y_pred = np.zeros((1, 1, 1, 3), "float32"); y_pred[..., 1] = 5.0; y_pred[..., 2] = 0.0
    >>> round(float(FlowLoss()(y_true, y_pred)), 4)  # flows exact; BCE of logit 0 is log 2
    0.6931
    """

    def __init__(self, flow_weight: float = 1.0, prob_weight: float = 1.0, name: str = "flow_loss",
                 spatial_dims: int = 2, **kwargs):
        super().__init__(name=name, **kwargs)
        self.flow_weight = float(flow_weight)
        self.prob_weight = float(prob_weight)
        self.spatial_dims = int(spatial_dims)

    def call(self, y_true, y_pred):
        return flow_loss(y_true, y_pred, self.flow_weight, self.prob_weight, self.spatial_dims)

    def get_config(self):
        return {**super().get_config(), "flow_weight": self.flow_weight, "prob_weight": self.prob_weight,
                "spatial_dims": self.spatial_dims}


@keras.saving.register_keras_serializable(package="unetflow")
class DistanceLoss(keras.losses.Loss):
    """Loss of the distance representation: MSE of the distance map against `scale` times the
    normalised-distance target, plus BCE with logits of the cellprob channel (as :class:`FlowLoss`)."""

    def __init__(self, scale: float = 5.0, distance_weight: float = 1.0, prob_weight: float = 1.0,
                 name: str = "distance_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.scale, self.distance_weight, self.prob_weight = float(scale), float(distance_weight), float(prob_weight)

    def call(self, y_true, y_pred):
        return regression_cellprob_loss(y_true, y_pred, self.scale, self.distance_weight, self.prob_weight)

    def get_config(self):
        return {**super().get_config(), "scale": self.scale, "distance_weight": self.distance_weight,
                "prob_weight": self.prob_weight}


@keras.saving.register_keras_serializable(package="unetflow")
class WeightedCategoricalCrossentropy(keras.losses.Loss):
    """Softmax cross-entropy with per-class weights (BBBC: background 1, interior 1, boundary 10).

    Parameters
    ----------
    class_weights : sequence of float
        One weight per class; a pixel's loss is weighted by its true class.
    from_logits : bool
        ``y_pred`` are logits (the boundary U-Net's output) rather than probabilities.
    """

    def __init__(self, class_weights=BBBC_CLASS_WEIGHTS, from_logits: bool = True,
                 name: str = "weighted_categorical_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.class_weights = tuple(float(w) for w in class_weights)
        self.from_logits = bool(from_logits)

    def call(self, y_true, y_pred):
        if y_true.shape[-1] is not None and y_true.shape[-1] != len(self.class_weights):
            raise ValueError(f"`y_true` has {y_true.shape[-1]} channels but {len(self.class_weights)} class "
                             "weights were given; targets must be one-hot")
        return weighted_categorical_crossentropy(y_true, y_pred, self.class_weights, self.from_logits)

    def get_config(self):
        return {**super().get_config(), "class_weights": list(self.class_weights), "from_logits": self.from_logits}


# ----------------------------------------------------------------------------- metrics

@keras.saving.register_keras_serializable(package="unetflow")
class MapMSE(keras.metrics.Mean):
    """Mean squared error of the predicted maps (every channel but the last, cellprob) against
    `scale` times the targets: the flows against ``FLOW_SCALE`` times the unit flows by default, a
    distance map against ``DISTANCE_SCALE`` times its target."""

    def __init__(self, name="flow_mse", scale: float = FLOW_SCALE, **kwargs):
        super().__init__(name=name, **kwargs)
        self.scale = float(scale)

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = ops.cast(y_true, "float32")
        y_pred = ops.cast(y_pred, "float32")
        err = ops.mean(ops.square(y_pred[..., :-1] - self.scale * y_true[..., :-1]))
        return super().update_state(err)

    def get_config(self):
        return {**super().get_config(), "scale": self.scale}


# models saved before the metric had its general name still load
keras.saving.get_custom_objects()["unetflow>FlowMSE"] = MapMSE


class _RatioMetric(keras.metrics.Metric):
    """numerator / denominator accumulated over batches."""

    def __init__(self, name, **kwargs):
        super().__init__(name=name, **kwargs)
        self.num = self.add_variable(shape=(), initializer="zeros", name="num")
        self.den = self.add_variable(shape=(), initializer="zeros", name="den")

    def _accumulate(self, num, den):
        self.num.assign_add(ops.cast(num, "float32"))
        self.den.assign_add(ops.cast(den, "float32"))

    def result(self):
        return ops.divide_no_nan(self.num, self.den)

    def reset_state(self):
        self.num.assign(0.0)
        self.den.assign(0.0)


@keras.saving.register_keras_serializable(package="unetflow")
class CellprobIoU(_RatioMetric):
    """IoU of the predicted cell mask (last channel, a logit, > 0) with the target mask (> 0.5)."""

    def __init__(self, name="cellprob_iou", **kwargs):
        super().__init__(name=name, **kwargs)

    def update_state(self, y_true, y_pred, sample_weight=None):
        t = ops.cast(y_true[..., -1] > CELLPROB_TARGET_THRESHOLD, "float32")
        p = ops.cast(y_pred[..., -1] > 0.0, "float32")
        self._accumulate(ops.sum(t * p), ops.sum(ops.maximum(t, p)))


@keras.saving.register_keras_serializable(package="unetflow")
class ClassRecall(_RatioMetric):
    """Fraction of the pixels of one class (one-hot targets) predicted as that class by argmax."""

    def __init__(self, class_id: int = BOUNDARY, name=None, **kwargs):
        super().__init__(name=name or f"recall_class{class_id}", **kwargs)
        self.class_id = int(class_id)

    def update_state(self, y_true, y_pred, sample_weight=None):
        t = ops.cast(ops.argmax(y_true, axis=-1) == self.class_id, "float32")
        p = ops.cast(ops.argmax(y_pred, axis=-1) == self.class_id, "float32")
        self._accumulate(ops.sum(t * p), ops.sum(t))

    def get_config(self):
        return {**super().get_config(), "class_id": self.class_id}

