import numpy as np
import pytest

keras = pytest.importorskip("keras")

from unetflow.conventions import FLOW_SCALE
from unetflow.losses import (CellprobIoU, ClassRecall, FlowLoss, MapMSE, WeightedCategoricalCrossentropy)


def bce_logits(x, z):
    return np.log1p(np.exp(-np.abs(x))) + np.maximum(x, 0) - x * z


def test_flow_loss_hand_computed():
    y_true = np.zeros((1, 2, 1, 3), np.float32)
    y_pred = np.zeros((1, 2, 1, 3), np.float32)
    y_true[0, 0, 0] = [0.6, 0.8, 1.0]     # a cell pixel with a unit flow
    y_true[0, 1, 0] = [0.0, 0.0, 0.4]     # cellprob 0.4 is below 0.5: background
    y_pred[0, 0, 0] = [3.0, 4.0, 2.0]     # exactly 5 x the flow; logit 2
    y_pred[0, 1, 0] = [1.0, -1.0, -3.0]
    flow = np.array([0.0, (1 + 1) / 2])          # mean over (dy, dx) of the squared error per pixel
    bce = np.array([bce_logits(2.0, 1.0), bce_logits(-3.0, 0.0)])
    expected = np.mean(0.5 * flow + bce)
    assert float(FlowLoss()(y_true, y_pred)) == pytest.approx(expected, rel=1e-6)
    # weights
    expected_w = np.mean(2.0 * 0.5 * flow + 0.5 * bce)
    assert float(FlowLoss(flow_weight=2.0, prob_weight=0.5)(y_true, y_pred)) == pytest.approx(expected_w, rel=1e-6)


def test_flow_loss_uses_the_5x_scale_and_threshold():
    y_true = np.zeros((1, 1, 1, 3), np.float32)
    y_true[..., 0] = 1.0
    y_true[..., 2] = 0.6
    unscaled = np.zeros((1, 1, 1, 3), np.float32)
    unscaled[..., 0] = 1.0
    unscaled[..., 2] = 50.0
    scaled = unscaled.copy()
    scaled[..., 0] = FLOW_SCALE
    assert float(FlowLoss()(y_true, scaled)) < 1e-6
    assert float(FlowLoss()(y_true, unscaled)) == pytest.approx(0.5 * (4 ** 2) / 2, rel=1e-5)


def test_flow_loss_finite_for_huge_logits():
    y_true = np.zeros((1, 2, 2, 3), np.float32)
    y_true[..., 2] = 1.0
    y_pred = np.zeros((1, 2, 2, 3), np.float32)
    y_pred[..., 2] = -1e4
    val = float(FlowLoss()(y_true, y_pred))
    assert np.isfinite(val) and val == pytest.approx(1e4, rel=1e-6)


def test_weighted_cce_hand_computed():
    logits = np.array([[[[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]]]], np.float32)  # (1, 1, 2, 3)
    onehot = np.array([[[[0, 1, 0], [0, 0, 1]]]], np.float32)
    lp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ce = -(onehot * lp).sum(-1)
    w = np.array([1.0, 10.0])  # interior weight 1, boundary 10
    expected = np.mean(np.array([1.0, 10.0]) * ce[0, 0])
    assert float(WeightedCategoricalCrossentropy()(onehot, logits)) == pytest.approx(expected, rel=1e-6)
    assert float(WeightedCategoricalCrossentropy((1, 1, 1))(onehot, logits)) == pytest.approx(ce.mean(), rel=1e-6)
    del w


def test_losses_round_trip_config():
    for loss in (FlowLoss(2.0, 0.5), WeightedCategoricalCrossentropy((1, 2, 3))):
        again = keras.losses.deserialize(keras.losses.serialize(loss))
        assert type(again) is type(loss) and again.get_config() == loss.get_config()


def test_metrics():
    y_true = np.zeros((1, 2, 2, 3), np.float32)
    y_true[0, 0, :, 2] = 1.0
    y_pred = np.zeros((1, 2, 2, 3), np.float32)
    y_pred[0, 0, 0, 2] = 3.0
    y_pred[0, 1, 0, 2] = 3.0
    iou = CellprobIoU()
    iou.update_state(y_true, y_pred)
    assert float(iou.result()) == pytest.approx(1 / 3)
    mse = MapMSE()
    y_pred[..., 0] = 1.0
    mse.update_state(y_true, y_pred)
    assert float(mse.result()) == pytest.approx(0.5)
    rec = ClassRecall(2)
    onehot = np.eye(3, dtype=np.float32)[[[0, 2], [2, 2]]][None]
    pred = np.eye(3, dtype=np.float32)[[[0, 2], [1, 2]]][None]
    rec.update_state(onehot, pred)
    assert float(rec.result()) == pytest.approx(2 / 3)


def test_models_saved_with_the_metrics_old_name_still_load():
    """Runs trained before the map metric got its general name store it as ``unetflow>FlowMSE``."""
    import keras
    assert keras.saving.get_registered_object("unetflow>FlowMSE") is MapMSE
