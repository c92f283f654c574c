"""The timbre branch: tall filters over the log-mel bands, pooled over pitch and time.

The instrument slice needs the timbre of the lead part: its spectral envelope, the balance
of its harmonics and the shape of its attack, wherever in the mix and at whatever pitch it
plays. The trunk's Inception blocks see the spectrum through 3x3 filters and global average
pooling; a pattern that spans a dozen mel bands (a harmonic series, a formant) is assembled
only deep in the trunk, and the average over the whole time-frequency plane dilutes a lead
that plays in a fraction of the frames under drums and chords. On the synthetic collection
the instrument slice learnt the slowest of the four and generalised worst (validation .67
after 3,000 steps with drums, benchmarks/RESULTS.md).

Pons et al. ("Timbre analysis of music audio signals with convolutional neural networks",
EUSIPCO 2017; "Experimenting with musically motivated convolutional neural networks",
CBMI 2016) give the field's answer: *vertical* filters that span many frequency bands and a
few frames, so one filter sees a whole spectral envelope, followed by max-pooling over
frequency, so the response does not depend on the pitch the instrument plays. This module
builds that branch in plain Keras layers:

1. the mel bands of the input (the pitch bands are left to the trunk and the harmony branch);
2. ``Conv2D`` with ``timbre_filters`` filters of :func:`timbre_kernel` (5 frames, 116 ms at hop
   512 / 22,050 Hz: an attack and the start of a decay; a quarter of the mel bands, about an
   octave and a half in the middle of the range), strides :data:`TIMBRE_STRIDES`, batch norm and
   ReLU. At 32 filters the branch costs 5.4 M multiply-accumulates a 3 s segment, a fifth of the
   trunk's 28 M (strides of (2, 2) and 48 filters cost 23 M and 40 % more time a step);
3. max over frequency (pitch invariance), then the mean and the max over time (the max keeps a
   lead that plays in few frames);
4. a dense layer; the backbone routes it to the instrument slice only
   (``model.timbre_conditions``), as it routes the onset branch to tempo and the harmony branch to
   mood.

Every layer is a Keras builtin, so the branch serialises with the model and converts to TFLite
builtins (strided slice, conv, max, mean).
"""

from __future__ import annotations

from typing import Tuple

from keras import layers

__all__ = ["TIMBRE_KERNEL_FRAMES", "TIMBRE_STRIDES", "timbre_kernel", "timbre_features"]

#: Filter extent in frames; the height in bands is :func:`timbre_kernel` (a quarter of the mel bands).
TIMBRE_KERNEL_FRAMES = 5
#: (time, frequency) strides of the tall filters: every third frame (70 ms, under the filter's
#: 116 ms, so no attack falls between two positions) and every fourth band. The max over
#: frequency that follows makes the band stride cheap.
TIMBRE_STRIDES: Tuple[int, int] = (3, 4)


def timbre_kernel(n_mels: int) -> Tuple[int, int]:
    """The tall filters' (frames, bands): 5 frames by a quarter of the mel bands (at least 3)."""
    return TIMBRE_KERNEL_FRAMES, max(n_mels // 4, 3)


def timbre_features(channels, n_mels: int, filters: int, units: int, momentum: float = 0.99,
                    epsilon: float = 1e-3, name: str = "timbre"):
    """The timbre branch's features.

    Args:
        channels: float32 ``[batch, frames, n_bands, 1]``, the backbone's input with a channel
            axis; its first ``n_mels`` bands are the log-mel bands.
        n_mels: mel bands at the front of the band axis (``frontend.n_mels``).
        filters: tall filters (``model.timbre_filters``).
        units: outputs of the final dense layer (the backbone passes ``2 * width``, as for the
            other branches).
        momentum, epsilon: batch-norm settings, the trunk's.
        name: layer-name prefix.

    Returns:
        float32 ``[batch, units]``, non-negative (ReLU).
    """
    n_bands = int(channels.shape[2])
    kernel = timbre_kernel(n_mels)
    if n_bands > n_mels:  # keep the mel bands: the pitch bands are another axis glued on
        channels = layers.Cropping2D(((0, 0), (0, n_bands - n_mels)), name=f"{name}_mel_bands")(channels)
    x = layers.Conv2D(filters, kernel, strides=TIMBRE_STRIDES, padding="valid", use_bias=False,
                      name=f"{name}_conv")(channels)
    x = layers.BatchNormalization(momentum=momentum, epsilon=epsilon, name=f"{name}_bn")(x)
    x = layers.ReLU(name=f"{name}_relu")(x)  # [B, T', F', filters]
    x = layers.MaxPooling2D((1, int(x.shape[2])), name=f"{name}_pitch_pool")(x)  # [B, T', 1, filters]
    x = layers.Reshape((int(x.shape[1]), filters), name=f"{name}_frames")(x)
    x = layers.Concatenate(name=f"{name}_time_pool")([
        layers.GlobalAveragePooling1D(name=f"{name}_time_mean")(x),
        layers.GlobalMaxPooling1D(name=f"{name}_time_max")(x),
    ])
    return layers.Dense(units, activation="relu", name=f"{name}_dense")(x)
