"""Input conventions shared by training and prediction: channels, polarity, normalisation.

One function, :func:`prepare_image`, turns a raw ``(H, W, C)`` image into the network's input, so
training and prediction can never disagree.  For mixed modalities (the DSB set: dark-background
fluorescence, bright-background brightfield and stained RGB tissue) the convention is: average the
channels to one grey channel, invert images whose background is brighter than their objects (so
nuclei are always bright), then scale each channel's ``lo``-``hi`` percentiles to 0-1.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .validation import check_image

__all__ = ["InputConfig", "InputStats", "prepare_image", "input_stats", "normalize_percentile", "is_bright_background"]


@dataclass(frozen=True)
class InputConfig:
    """How raw images become network inputs.

    Attributes
    ----------
    channels : int
        Channels the network sees.  With ``grey`` this must be 1.
    grey : bool
        Average all image channels into one (for sets that mix RGB and grey images).  Without it, a
        one-channel image given to a multi-channel network is repeated into every channel, so a
        colour model still segments grey images.
    invert_bright_background : bool
        Invert (per channel) images whose median is above the midpoint of their 1st-99th
        percentiles: brightfield and stained images, whose background is bright.
    percentiles : (float, float)
        Per-image, per-channel percentiles mapped to 0 and 1 (StarDist's 1-99.8 by default).
    """

    channels: int = 1
    grey: bool = True
    invert_bright_background: bool = True
    percentiles: tuple = (1.0, 99.8)

    def __post_init__(self):
        lo, hi = self.percentiles
        if not 0 <= lo < hi <= 100:
            raise ValueError(f"`percentiles` must satisfy 0 <= lo < hi <= 100, got {self.percentiles}")
        if self.grey and self.channels != 1:
            raise ValueError(f"`grey=True` gives 1 channel, but `channels` is {self.channels}")


def normalize_percentile(image, lo: float = 1.0, hi: float = 99.8) -> np.ndarray:
    """Scale each channel so that its `lo` and `hi` percentiles become 0 and 1 (not clipped)."""
    image = check_image(image)
    p_lo, p_hi = np.percentile(image, [lo, hi], axis=(0, 1))
    scale = np.where(p_hi - p_lo > 1e-12, p_hi - p_lo, 1.0)
    return ((image - p_lo) / scale).astype(np.float32)


def is_bright_background(channel: np.ndarray) -> bool:
    """True when most pixels sit in the upper half of the intensity range (bright background)."""
    p1, p99 = np.percentile(channel, [1, 99])
    return bool(np.median(channel) > (p1 + p99) / 2)


@dataclass(frozen=True)
class InputStats:
    """What normalising an image needs, per channel: whether to invert it (about `ref`), and the
    values mapped to 0 and 1.  From the image itself (:func:`input_stats`), or from a sample of a
    huge image so that every block of it is normalised alike."""

    invert: tuple
    ref: tuple
    lo: tuple
    hi: tuple


def _channels(image, config: InputConfig) -> np.ndarray:
    """The image's channels as the network takes them (grey average, or one channel repeated)."""
    image = check_image(image)
    if config.grey:
        return image.mean(axis=-1, keepdims=True)
    if image.shape[-1] == 1:
        return np.repeat(image, config.channels, axis=-1)
    if image.shape[-1] != config.channels:
        raise ValueError(f"`image` has {image.shape[-1]} channel(s) but the model expects {config.channels}")
    return image


def input_stats(image, config: InputConfig = InputConfig()) -> InputStats:
    """The normalisation statistics of an image (or of a sample of one), see :func:`prepare_image`."""
    image = _channels(image, config)
    invert = tuple(bool(config.invert_bright_background and is_bright_background(image[..., c]))
                   for c in range(image.shape[-1]))
    ref = tuple(float(image[..., c].max()) for c in range(image.shape[-1]))
    flipped = np.stack([ref[c] - image[..., c] if invert[c] else image[..., c] for c in range(image.shape[-1])], -1)
    lo, hi = np.percentile(flipped, list(config.percentiles), axis=(0, 1))
    return InputStats(invert, ref, tuple(map(float, lo)), tuple(map(float, hi)))


def prepare_image(image, config: InputConfig = InputConfig(), stats: InputStats | None = None) -> np.ndarray:
    """Raw image ``(H, W)`` or ``(H, W, C)`` to the float32 network input ``(H, W, channels)``.

    Channels are averaged to grey (or a grey image repeated for a colour model), channels with a
    bright background inverted, and each channel's percentiles mapped to 0 and 1 (see
    :class:`InputConfig`).  `stats` fixes the inversion and percentiles (:func:`input_stats` of a
    sample of a larger image); by default they are the image's own.

    Raises
    ------
    ValueError
        If the image has several channels and their count does not match ``config.channels``
        (without ``grey``).
    """
    image = _channels(image, config)
    stats = stats or input_stats(image, config)
    out = np.empty(image.shape, np.float32)
    for c in range(image.shape[-1]):
        x = stats.ref[c] - image[..., c] if stats.invert[c] else image[..., c]
        scale = stats.hi[c] - stats.lo[c] if stats.hi[c] - stats.lo[c] > 1e-12 else 1.0
        out[..., c] = (x.astype(np.float64) - stats.lo[c]) / scale  # in float64, then rounded once
    return out
