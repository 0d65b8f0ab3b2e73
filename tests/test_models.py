import numpy as np
import pytest

keras = pytest.importorskip("keras")

from unetflow.losses import FlowLoss, WeightedCategoricalCrossentropy
from unetflow.models import build_boundary_unet, build_flow_unet


def test_bbbc_defaults_architecture():
    m = build_boundary_unet()
    convs = [l for l in m.layers if isinstance(l, keras.layers.Conv2D)]
    assert [c.filters for c in convs] == [64, 64, 128, 128, 256, 256, 512, 512, 256, 256, 128, 128, 64, 64, 3]
    assert sum(isinstance(l, keras.layers.MaxPooling2D) for l in m.layers) == 3
    assert sum(isinstance(l, keras.layers.UpSampling2D) for l in m.layers) == 3
    bns = [l for l in m.layers if isinstance(l, keras.layers.BatchNormalization)]
    assert len(bns) == 14 and all(abs(b.momentum - 0.9) < 1e-9 for b in bns)
    assert m.get_layer("class_logits").activation.__name__ == "linear"
    assert build_boundary_unet(base_filters=4, head_relu=True).get_layer("class_logits").activation.__name__ == "relu"


def test_flow_head_is_linear_and_can_be_negative():
    m = build_flow_unet(input_channels=2, depth=3, base_filters=4)
    assert m.get_layer("flows_cellprob").activation.__name__ == "linear"
    out = m.predict(np.random.default_rng(0).normal(size=(2, 32, 32, 2)).astype("float32"), verbose=0)
    assert out.shape == (2, 32, 32, 3) and (out < 0).any()


@pytest.mark.parametrize("builder, loss", [(build_flow_unet, FlowLoss()),
                                           (build_boundary_unet, WeightedCategoricalCrossentropy())])
def test_keras_save_and_load_identical_predictions(tmp_path, builder, loss):
    m = builder(depth=3, base_filters=4)
    m.compile(optimizer="adam", loss=loss)
    x = np.random.default_rng(1).random((1, 32, 32, 1)).astype("float32")
    m.fit(x, np.abs(m.predict(x, verbose=0)), epochs=1, verbose=0)  # move the batch-norm statistics
    m.save(tmp_path / "m.keras")
    again = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(again.predict(x, verbose=0), m.predict(x, verbose=0))
    assert type(again.loss) is type(loss)


def test_bad_arguments():
    with pytest.raises(ValueError, match="depth"):
        build_flow_unet(depth=0)
    with pytest.raises(ValueError, match="dropout"):
        build_boundary_unet(dropout=1.5)


def test_a_mixed_precision_model_loads_as_float32_for_inference(tmp_path):
    """A model trained under mixed_bfloat16 would compute in bfloat16 when loaded (8x slower on an AVX2
    CPU); load_model(policy="float32") rebuilds it in float32 with the same weights."""
    from unetflow.models import load_model

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = build_flow_unet(depth=2, base_filters=4)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    model.save(tmp_path / "m.keras")
    kept = load_model(tmp_path / "m.keras")
    assert {layer.dtype_policy.name for layer in kept.layers[1:-1]} == {"mixed_bfloat16"}
    f32 = load_model(tmp_path / "m.keras", policy="float32")
    assert {layer.dtype_policy.name for layer in f32.layers} == {"float32"}
    for a, b in zip(kept.get_weights(), f32.get_weights()):
        np.testing.assert_array_equal(a, b)
    x = np.random.default_rng(0).normal(size=(1, 32, 32, 1)).astype("float32")
    ref, out = kept.predict_on_batch(x), f32.predict_on_batch(x)
    assert out.dtype == np.float32
    # the same network: bfloat16 keeps 8 bits of mantissa, so outputs agree to about 1 %
    assert np.abs(out - ref).max() <= 0.05 * np.abs(ref).max() + 1e-3
