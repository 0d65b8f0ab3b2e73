"""Input conventions shared by training and prediction: channels, polarity, normalisation.

One function, :func:`prepare_image`, turns a raw ``(H, W, C)`` image into the network's input, so
training and prediction can never disagree.  For mixed modalities (the DSB set: dark-background
fluorescence, bright-background brightfield and stained RGB tissue) the convention is: average the
channels of colour (RGB) images to one grey channel, invert images whose background is brighter than
their objects (so nuclei are always bright), then scale each channel's ``lo``-``hi`` percentiles to 0-1.

The grey/colour rule: only a colour image (3 or 4 channels: RGB, RGBA) is ever averaged, and only
for a grey model.  Any other multi-channel image holds separate stains (for the lab's cells
``[cytoplasm, nuclei]``), and averaging a cytoplasm stain with a nuclear one would blend two
different pictures of the cell: such an image must match the model's channels, named in
``input.channel_names``, one for one.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .validation import check_image

__all__ = ["InputConfig", "InputStats", "prepare_image", "input_stats", "normalize_percentile", "is_bright_background",
           "network_channels", "COLOUR_CHANNELS"]


@dataclass(frozen=True)
class InputConfig:
    """How raw images become network inputs.

    Attributes
    ----------
    channels : int
        Channels the network sees.  With ``grey`` this must be 1.
    channel_names : tuple of str or None
        What each input channel shows, in the image's order (e.g. ``("cytoplasm", "nuclei")``).
        Named channels are separate stains: an image must have exactly these channels (never
        averaged, never repeated), and fine-tuning maps channels by these names
        (``train.init_channels``).  None: the channels are unnamed (grey, or the colours of RGB).
    grey : bool
        Average the channels of colour (RGB/RGBA) images into one (for sets that mix RGB and grey
        images).  Images of 2 channels, or more than 4, are never averaged: they are stains, not
        colours.  Without ``grey``, a one-channel image given to a colour model (unnamed channels)
        is repeated into every channel, so a colour model still segments grey images.
    invert_bright_background : bool
        Invert (per channel) images whose median is above the midpoint of their 1st-99th
        percentiles: brightfield and stained images, whose background is bright.
    percentiles : (float, float)
        Per-image, per-channel percentiles mapped to 0 and 1 (StarDist's 1-99.8 by default).
    """

    channels: int = 1
    channel_names: tuple | None = None
    grey: bool = True
    invert_bright_background: bool = True
    percentiles: tuple = (1.0, 99.8)

    def __post_init__(self):
        lo, hi = self.percentiles
        if not 0 <= lo < hi <= 100:
            raise ValueError(f"`percentiles` must satisfy 0 <= lo < hi <= 100, got {self.percentiles}")
        if self.grey and self.channels != 1:
            raise ValueError(f"`grey=True` gives 1 channel, but `channels` is {self.channels}: set `grey: false` "
                             "for a model of several channels")
        if self.channel_names is not None:
            names = tuple(self.channel_names)
            if len(names) != self.channels:
                raise ValueError(f"`channel_names` {list(names)} names {len(names)} channel(s), but `channels` is "
                                 f"{self.channels}")
            if len(set(names)) != len(names) or not all(isinstance(n, str) and n for n in names):
                raise ValueError(f"`channel_names` must be distinct non-empty strings, got {list(names)}")
            object.__setattr__(self, "channel_names", names)

    @property
    def names(self) -> tuple:
        """A name for each network input channel (``grey`` or ``channel0``... when not named)."""
        if self.channel_names:
            return self.channel_names
        return ("grey",) if self.channels == 1 else tuple(f"channel{c}" for c in range(self.channels))

    def describe(self) -> str:
        """The channels a user must give, in words (for error messages)."""
        if self.channel_names:
            return f"{self.channels} channel(s) {list(self.channel_names)}"
        return "1 grey channel (colour images are averaged)" if self.grey else f"{self.channels} channel(s)"


def normalize_percentile(image, lo: float = 1.0, hi: float = 99.8) -> np.ndarray:
    """Scale each channel so that its `lo` and `hi` percentiles become 0 and 1 (not clipped)."""
    image = check_image(image)
    p_lo, p_hi = np.percentile(image, [lo, hi], axis=(0, 1))
    scale = np.where(p_hi - p_lo > 1e-12, p_hi - p_lo, 1.0)
    return ((image - p_lo) / scale).astype(np.float32)


def is_bright_background(channel: np.ndarray) -> bool:
    """True when most pixels sit in the upper half of the intensity range (bright background).

    The range is read at the 0.1 and 99.9 percentiles: objects covering under 1 % of the pixels
    (a sparse fluorescence field) put the 99th percentile inside the background's own noise, where
    the median sits at the middle of the range and the answer would be a coin toss."""
    lo, hi = np.percentile(channel, [0.1, 99.9])
    return bool(np.median(channel) > (lo + hi) / 2)


@dataclass(frozen=True)
class InputStats:
    """What normalising an image needs, per channel: whether to invert it (about `ref`), and the
    values mapped to 0 and 1.  From the image itself (:func:`input_stats`), or from a sample of a
    huge image so that every block of it is normalised alike."""

    invert: tuple
    ref: tuple
    lo: tuple
    hi: tuple


#: Channel counts of colour images (RGB, RGBA): the only images a grey model averages.
COLOUR_CHANNELS = (3, 4)


def network_channels(image, config: InputConfig) -> np.ndarray:
    """The image's channels as the network takes them: itself, the grey average of a colour image,
    or a grey image repeated for a colour model (see the grey/colour rule in the module's doc).

    Raises
    ------
    ValueError
        Naming both channel counts, when the image's channels cannot be the model's.
    """
    image = check_image(image)
    have = image.shape[-1]
    if have == config.channels:
        return image
    if config.grey and have in COLOUR_CHANNELS:
        return image.mean(axis=-1, keepdims=True)
    if have == 1 and not config.grey and config.channel_names is None:
        return np.repeat(image, config.channels, axis=-1)
    hint = ""
    if config.channels == 1 and have > 1:
        hint = (f"; {have} channels are not a colour image to average: give the one channel the model was trained "
                "on (e.g. `image[..., k]`)")
    elif config.channel_names:
        hint = f": a channel is {'missing' if have < config.channels else 'extra'} (give them in this order)"
    raise ValueError(f"`image` (shape {image.shape}) has {have} channel(s) but the model takes "
                     f"{config.describe()}{hint}")


def input_stats(image, config: InputConfig = InputConfig()) -> InputStats:
    """The normalisation statistics of an image (or of a sample of one), see :func:`prepare_image`."""
    image = network_channels(image, config)
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
    image = network_channels(image, config)
    stats = stats or input_stats(image, config)
    out = np.empty(image.shape, np.float32)
    for c in range(image.shape[-1]):
        x = stats.ref[c] - image[..., c] if stats.invert[c] else image[..., c]
        scale = stats.hi[c] - stats.lo[c] if stats.hi[c] - stats.lo[c] > 1e-12 else 1.0
        out[..., c] = (x.astype(np.float64) - stats.lo[c]) / scale  # in float64, then rounded once
    return out
