"""Keras model builders: the BBBC nucleus U-Net backbone with each task's head.

Every head sits on one backbone (:func:`unet_backbone`), so comparisons between tasks (boundary,
flow, distance; :mod:`unetflow.tasks`) differ only in the head, target, loss and post-processing.
The boundary head emits class *logits* (softmax is applied at prediction); the distance head a
distance map and a cellprob logit; the flow head is linear and emits ``[dy, dx, cellprob_logit]``
(no ReLU, no sigmoid: a Keras port's model predicted nothing useful because its flow head carried
a ReLU).
"""
from __future__ import annotations

import keras
from keras import layers

from .conventions import FLOW_CHANNELS, N_BOUNDARY_CLASSES
from .geometry import check_architecture, min_input_multiple, receptive_radius  # noqa: F401  (public here too)

__all__ = ["unet_backbone", "build_unet", "build_boundary_unet", "build_flow_unet", "min_input_multiple", "input_multiple", "receptive_radius", "load_model",
           "FIRST_CONV"]


def input_multiple(model) -> int:
    """Input height and width a built U-Net accepts are multiples of this: its total down-sampling,
    the product of its pooling layers' strides (runs record it in ``model.json``, see
    :class:`unetflow.rundir.RunDir`; this reads it from a bare Keras model)."""
    stride = 1
    for layer in model.layers:
        if isinstance(layer, (layers.MaxPooling2D, layers.MaxPooling3D)):
            stride *= int(layer.strides[0])
    return stride


#: The layers of a 2-D and of a 3-D U-Net: convolution, pooling, upsampling.
_LAYERS = {2: (layers.Conv2D, layers.MaxPooling2D, layers.UpSampling2D),
           3: (layers.Conv3D, layers.MaxPooling3D, layers.UpSampling3D)}


def _conv_block(x, filters, name, batch_norm, dropout, spatial_dims=2):
    # BBBC: conv 3x3 + ReLU, then batch norm (momentum 0.9), twice
    conv = _LAYERS[spatial_dims][0]
    for i in (1, 2):
        x = conv(filters, 3, padding="same", activation="relu", name=f"{name}_conv{i}")(x)
        if batch_norm:
            x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn{i}")(x)
    if dropout:
        x = layers.Dropout(dropout, name=f"{name}_dropout")(x)
    return x


#: The one layer whose weights depend on the input channels (the first convolution of the first
#: level, named by :func:`_conv_block`): what fine-tuning remaps for other input channels.
FIRST_CONV = "down0_conv1"


def unet_backbone(inputs, depth: int = 4, base_filters: int = 64, batch_norm: bool = True, dropout: float = 0.0,
                  spatial_dims: int = 2):
    """The BBBC U-Net body: ``depth`` levels of two 3x3 convolutions, filters doubling per level,
    max pooling down, upsampling + concatenated skips up.  Returns the top-level feature map.
    ``spatial_dims=3`` builds the same network of 3x3x3 convolutions for volumes."""
    _, pool, upsample = _LAYERS[spatial_dims]
    skips = []
    x = inputs
    for level in range(depth):
        x = _conv_block(x, base_filters * 2 ** level, f"down{level}", batch_norm, dropout if level == depth - 1 else 0,
                        spatial_dims)
        if level < depth - 1:
            skips.append(x)
            x = pool(2, name=f"down{level}_pool")(x)
    for level in range(depth - 2, -1, -1):
        x = upsample(2, name=f"up{level}_upsample")(x)
        x = layers.Concatenate(name=f"up{level}_concat")([skips[level], x])
        x = _conv_block(x, base_filters * 2 ** level, f"up{level}", batch_norm, 0, spatial_dims)
    return x


def build_unet(out_channels: int, input_channels: int = 1, depth: int = 4, base_filters: int = 64,
               batch_norm: bool = True, dropout: float = 0.0, head_activation: str | None = None,
               head_name: str = "head", name: str = "unet", spatial_dims: int = 2) -> keras.Model:
    """The backbone with a 1x1 convolution head of `out_channels` (every task's model).

    The head is float32, so outputs stay full precision under mixed precision.  `spatial_dims` 3
    takes ``(Z, Y, X, C)`` volumes (3x3x3 convolutions).  Other arguments as :func:`build_boundary_unet`.
    """
    check_architecture(depth, base_filters, dropout, input_channels)
    if spatial_dims not in _LAYERS:
        raise ValueError(f"`spatial_dims` must be 2 or 3, got {spatial_dims!r}")
    inputs = keras.Input(shape=(None,) * spatial_dims + (int(input_channels),), name="image")
    x = unet_backbone(inputs, depth, base_filters, batch_norm, dropout, spatial_dims)
    conv = _LAYERS[spatial_dims][0]
    out = conv(int(out_channels), 1, activation=head_activation, dtype="float32", name=head_name)(x)
    return keras.Model(inputs, out, name=name)


def build_boundary_unet(input_channels: int = 1, depth: int = 4, base_filters: int = 64, batch_norm: bool = True,
                        dropout: float = 0.0, head_relu: bool = False, name: str = "boundary_unet") -> keras.Model:
    """The BBBC nucleus U-Net with a 3-class head (background, interior, boundary).

    Parameters
    ----------
    input_channels : int
        Image channels.
    depth : int
        Levels (4 in BBBC: 64-128-256-512 filters down, 256-128-64 up).  Inputs must be multiples
        of ``2 ** (depth - 1)`` in height and width.
    base_filters : int
        Filters of the top level (64 in BBBC).
    batch_norm : bool
        Batch normalisation after each convolution.
    dropout : float
        Dropout rate at the bottom level.
    head_relu : bool
        Reproduce the original's ReLU on the 1x1 head (an accident of a shared options dict in
        unet4nuclei; it clips negative logits).  Off by default.

    Returns
    -------
    keras.Model
        Outputs ``(H, W, 3)`` float32 logits.
    """
    return build_unet(N_BOUNDARY_CLASSES, input_channels, depth, base_filters, batch_norm, dropout,
                      head_activation="relu" if head_relu else None, head_name="class_logits", name=name)


def build_flow_unet(input_channels: int = 1, depth: int = 4, base_filters: int = 64, batch_norm: bool = True,
                    dropout: float = 0.0, name: str = "flow_unet") -> keras.Model:
    """The same backbone with a linear 3-channel head ``[dy, dx, cellprob_logit]``.

    The flows are trained against ``FLOW_SCALE`` (5) times the unit targets and the cellprob channel
    is a raw logit (threshold 0.0 is probability 0.5).  Arguments as :func:`build_boundary_unet`.
    """
    return build_unet(FLOW_CHANNELS, input_channels, depth, base_filters, batch_norm, dropout,
                      head_name="flows_cellprob", name=name)


def load_model(path, policy: str | None = None) -> keras.Model:
    """Load a ``.keras`` model saved by unetflow (its losses, metrics and schedules registered).

    Parameters
    ----------
    path : path
    policy : {None, "float32", "mixed_bfloat16"}
        None keeps each layer's saved dtype policy (a model trained with mixed precision computes
        in bfloat16, which is 8x slower on a CPU without native bfloat16; resuming training wants
        this).  Otherwise the body is rebuilt to compute with `policy`; the head stays float32.
    """
    from . import losses, schedules  # noqa: F401  (importing registers the custom objects)

    model = keras.models.load_model(path)
    if policy is None or all(layer.dtype_policy.name == policy for layer in model.layers[:-1]):
        return model
    head = model.layers[-1].name

    def with_policy(layer):
        return layer.__class__.from_config({**layer.get_config(), "dtype": "float32" if layer.name == head else policy})

    clone = keras.models.clone_model(model, clone_function=with_policy)
    clone.set_weights(model.get_weights())
    return clone
