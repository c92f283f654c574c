"""Convolutional backbones: log-mel patch -> un-normalised embedding.

Lee et al. (2020) compared four block families on the same log-mel input and found
Inception blocks best. All four are here, behind one function, :func:`build_backbone`,
and one code path: a stem (``width`` 5x5 filters, batch norm, ReLU, 2x2 max-pooling),
six blocks of the chosen family with 2x2 max-pooling between some of them, global
average pooling, optional dropout and a dense projection to
``cfg.conditions.embedding_dim``.

========== ==========================================================================
family     block
========== ==========================================================================
plain      3x3 conv - BN - ReLU (the classic music-tagging CNN)
resnet     basic residual block (He et al. 2016): two 3x3 conv-BN, identity or 1x1
           projection shortcut, add, ReLU
se         the residual block with squeeze-and-excitation (Hu et al. 2018) on the
           residual branch before the add
inception  1x1 | 1x1-3x3 | 1x1-3x3-3x3 (a factorised 5x5, Inception-v2) | 3x3
           max-pool-1x1 branches, concatenated (GoogLeNet "3a" proportions)
========== ==========================================================================

Only ops that convert to TFLite builtins are used (Conv2D, BatchNormalization, ReLU,
MaxPooling2D, GlobalAveragePooling2D, Dense, Concatenate, Add, Multiply, sigmoid,
Reshape), so every family exports with the frontend in one graph.

``inception_lite`` (the default since 0.3) is the Inception family with a cheaper stem and
half the width: a 3x3 convolution with stride 2 in time (``cfg.model.stem_stride``, (2, 1)),
then 2x2 max-pooling, so the first block sees a 32 x 117 grid instead of the paper's
64 x 117, and 32 stem filters instead of 64. The frequency axis keeps the paper's
resolution: after one halving, the pitch bands (24 an octave) still resolve semitones,
which is what tells a major third from a minor one. 0.3 strode frequency too (a 32 x 59
grid, 6 pitch bands an octave at the first block); configs saved by 0.3 keep that stem.
The paper's stem ran 64 filters of 5x5 over every one of the 128 x 233 time-frequency
bins and wrote 1.9 M activations a crop before its first pooling, the shape a CPU
handles worst, and its first block ran at 64 x 117. The same six blocks and channel
proportions follow. In `dml train` a step of 32 triplets takes about 1.0 s (0.53 s with 0.3's
stem) against 6.9 s for the paper's network on a 2-core CPU (benchmarks/RESULTS.md).

Every family can add an **onset branch** (``cfg.model.onset_lags > 0``, on by default in
``inception_lite``): :class:`OnsetAutocorrelation`, the autocorrelation of the log-mel's
spectral flux over lags of up to ``onset_lags`` frames -- a tempogram of the crop,
computed in the graph. Global average pooling keeps *what* happens in a crop but not
*how often*, so without drums marking the beat the CNN alone had no periodicity to read
tempo from. Its output goes through a small dense layer.

Since 0.5 ``inception_lite`` also has a **harmony branch** (``cfg.model.chroma_templates > 0``):
each frame's pitch bands folded into a 12-class pitch-class profile, matched with learned
templates in all 12 transpositions (:mod:`disentangled_ml.models.harmony`), averaged over the
frames. It gives the mood slice a key-invariant reading of major and minor harmony, which
the CNN alone did not learn under triplet losses.

Since 0.6 it has a **timbre branch** (``cfg.model.timbre_filters > 0``): tall filters over the
mel bands, max-pooled over frequency, mean- and max-pooled over time
(:mod:`disentangled_ml.models.timbre`, after Pons et al. 2017), for the instrument slice.

Each branch feeds only the slices its conditions name (``model.onset_conditions``,
``model.chroma_conditions``, ``model.timbre_conditions``: tempo, mood, instrument), through a bias-free projection times a
constant 0/1 gate (:class:`SliceGate`) added to the main projection; ``null`` joins it to the
pooled CNN features instead.

Every channel count is a multiple of ``cfg.model.width``, so a small width gives a small,
fast network for tests.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Dict, NamedTuple, Tuple

import keras
from keras import layers, ops

from disentangled_ml.config import Config, ConfigError
from disentangled_ml.models.harmony import CircularTemplates, PitchClassProfile
from disentangled_ml.models.timbre import timbre_features

__all__ = ["BACKBONES", "STEMS", "OnsetAutocorrelation", "SliceGate", "build_backbone", "conv_bn_relu", "onset_gate",
           "slice_gate"]

#: Output channels of the six blocks, in multiples of ``cfg.model.width``. Channels
#: double where the time-frequency resolution halves, as in VGG/ResNet/GoogLeNet.
BLOCK_CHANNELS: Tuple[int, ...] = (1, 1, 2, 2, 4, 4)
#: 2x2 max-pooling after block i. With the stem's pooling a 128x128 patch is seen at
#: 64 (block 1), 32 (2), 16 (3, 4) and 8 (5, 6) time-frequency bins: four
#: halvings, enough receptive field for 3 s while keeping the CPU cost of the
#: full-resolution blocks down.
POOL_AFTER_BLOCK: Tuple[bool, ...] = (True, True, False, True, False, False)
STEM_KERNEL = 5
#: Squeeze-and-excitation bottleneck ratio (Hu et al. use 16 on 256+ channels; our
#: blocks are narrower, so 8 keeps the bottleneck at >= 8 units at width 64).
SE_RATIO = 8
_BN_EPSILON = 1e-3


def conv_bn_relu(x, filters: int, kernel: int, name: str, relu: bool = True, momentum: float = 0.99,
                 strides: int = 1):
    """Conv2D (no bias: BN has one) -> BatchNormalization -> optional ReLU.

    The one convolution helper every family uses, so they differ only in how
    blocks wire it. ``momentum`` is the BN moving-statistics momentum
    (``model.batchnorm_momentum``).
    """
    x = layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(momentum=momentum, epsilon=_BN_EPSILON, name=f"{name}_bn")(x)
    if relu:
        x = layers.ReLU(name=f"{name}_relu")(x)
    return x


def _plain_block(x, channels: int, name: str, conv: Callable):
    return conv(x, channels, 3, name)


def _squeeze_excite(x, channels: int, name: str):
    s = layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_se_squeeze")(x)
    s = layers.Dense(max(channels // SE_RATIO, 4), activation="relu", name=f"{name}_se_reduce")(s)
    s = layers.Dense(channels, activation="sigmoid", name=f"{name}_se_expand")(s)
    return layers.Multiply(name=f"{name}_se_scale")([x, s])


def _residual_block(x, channels: int, name: str, conv: Callable, squeeze_excite: bool = False):
    shortcut = x
    if x.shape[-1] != channels:
        shortcut = conv(x, channels, 1, f"{name}_proj", relu=False)
    y = conv(x, channels, 3, f"{name}_a")
    y = conv(y, channels, 3, f"{name}_b", relu=False)
    if squeeze_excite:
        y = _squeeze_excite(y, channels, name)
    y = layers.Add(name=f"{name}_add")([shortcut, y])
    return layers.ReLU(name=f"{name}_out")(y)


def _se_block(x, channels: int, name: str, conv: Callable):
    return _residual_block(x, channels, name, conv, squeeze_excite=True)


def _inception_block(x, channels: int, name: str, conv: Callable):
    # GoogLeNet's "inception 3a" split of 256 outputs: 64 | 128 (reduce 96) |
    # 32 (reduce 16) | 32, i.e. 1/4 | 1/2 (3/8) | 1/8 (1/16) | 1/8.
    q = max(channels // 8, 1)
    b1 = conv(x, 2 * q, 1, f"{name}_1x1")
    b3 = conv(x, 3 * q, 1, f"{name}_3x3_reduce")
    b3 = conv(b3, 4 * q, 3, f"{name}_3x3")
    b5 = conv(x, max(q // 2, 1), 1, f"{name}_5x5_reduce")
    b5 = conv(b5, q, 3, f"{name}_5x5a")  # two 3x3 = one 5x5 receptive field
    b5 = conv(b5, q, 3, f"{name}_5x5b")
    bp = layers.MaxPooling2D(3, strides=1, padding="same", name=f"{name}_branch_pool")(x)
    bp = conv(bp, q, 1, f"{name}_pool_proj")
    return layers.Concatenate(axis=-1, name=f"{name}_concat")([b1, b3, b5, bp])


#: Block builders by ``cfg.model.backbone``: ``fn(x, channels, name, conv) -> y``, where
#: ``conv`` is :func:`conv_bn_relu` with the configured BN momentum.
BACKBONES: Dict[str, Callable] = {
    "plain": _plain_block,
    "resnet": _residual_block,
    "se": _se_block,
    "inception": _inception_block,
    "inception_lite": _inception_block,
}


class Stem(NamedTuple):
    """The first convolution: ``kernel`` x ``kernel`` (its stride is ``cfg.model.stem_stride``),
    then max-pooling of ``pool`` (time, frequency) where it is not ``(1, 1)``."""

    kernel: int
    pool: Tuple[int, int]


#: The paper's stem (5x5, stride 1, then 2x2 max-pooling) for its four families; a 3x3, then
#: 2x2 max-pooling, for ``inception_lite`` (whose stride, (2, 1) since 0.4, halves the time axis).
PAPER_STEM = Stem(kernel=STEM_KERNEL, pool=(2, 2))
STEMS: Dict[str, Stem] = {name: PAPER_STEM for name in BACKBONES}
STEMS["inception_lite"] = Stem(kernel=3, pool=(2, 2))


@keras.saving.register_keras_serializable(package="disentangled_ml")
class OnsetAutocorrelation(keras.layers.Layer):
    """Autocorrelation of a log-mel patch's onset envelope: a tempogram of the crop, in the graph.

    The onset envelope is the spectral flux of the first ``n_bands`` bands (the mel bands):
    the mean over bands of the half-wave rectified frame-to-frame increase of the
    compressed log-mel (as ``librosa.onset.onset_strength`` computes it, here in
    ``keras.ops`` so that it trains on any backend and converts to TFLite builtins:
    subtract, ReLU, mean, gather, multiply, sum). Its mean is removed, and its
    autocorrelation at lags ``1 .. lags`` frames is divided by the lag-0 energy, so the
    output does not depend on the crop's loudness. A beat period of ``p`` frames shows as
    peaks at ``p, 2p, ...`` whatever instrument plays the onsets.

    Args:
        n_bands: leading bands of the input used for the flux (``frontend.n_mels``).
        lags: the largest lag, in frames (``model.onset_lags``; at hop 512 / 22,050 Hz a
            frame is 23.2 ms, so 96 lags span 2.2 s).

    Input: float32 ``[batch, frames, bands]``. Output: float32 ``[batch, lags]`` in [-1, 1].
    """

    def __init__(self, n_bands: int, lags: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.n_bands = int(n_bands)
        self.lags = int(lags)

    def call(self, x):
        x = ops.cast(x[:, :, :self.n_bands], "float32")
        flux = ops.mean(ops.relu(x[:, 1:] - x[:, :-1]), axis=-1)  # [B, T-1]
        env = flux - ops.mean(flux, axis=1, keepdims=True)
        length = env.shape[1]
        if length is None:
            raise ValueError("OnsetAutocorrelation needs a static number of frames.")
        # shifted[b, l, t] = env[b, t + l], zero beyond the end (the biased estimate)
        padded = ops.pad(env, [[0, 0], [0, self.lags]])
        index = (ops.arange(self.lags + 1)[:, None] + ops.arange(length)[None, :])  # [L+1, T-1]
        shifted = ops.take(padded, index, axis=1)  # [B, L+1, T-1]
        # expand_dims, not env[:, None, :]: a slice that adds an axis becomes a StridedSlice with a
        # new-axis mask, which TFLite has no builtin for
        ac = ops.sum(ops.expand_dims(env, 1) * shifted, axis=-1)  # [B, L+1]
        return ac[:, 1:] / (ac[:, :1] + 1e-6)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.lags)

    def count_macs(self, output_shape, input_shapes) -> int:
        """Multiply-accumulates for one example (:mod:`disentangled_ml.models.profile`)."""
        steps = int(input_shapes[0][1]) - 1
        return steps * self.n_bands + (self.lags + 1) * steps

    def get_config(self) -> Dict[str, Any]:
        config = super().get_config()
        config.update(n_bands=self.n_bands, lags=self.lags)
        return config


@keras.saving.register_keras_serializable(package="disentangled_ml")
class SliceGate(keras.layers.Layer):
    """Multiplies ``[batch, D]`` by a constant 0/1 vector: keeps the embedding dimensions of some
    condition slices and zeroes the rest (how the onset branch reaches only its slices).

    Args:
        gate: ``D`` floats, 1 on the kept dimensions.
    """

    def __init__(self, gate, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.gate = [float(v) for v in gate]

    def call(self, x):
        return x * ops.convert_to_tensor(self.gate, dtype=x.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> Dict[str, Any]:
        config = super().get_config()
        config.update(gate=self.gate)
        return config


def slice_gate(cfg: Config, key: str = "onset_conditions"):
    """The 0/1 vector ``[embedding_dim]`` of the slices a side branch feeds, or None when it feeds
    the whole embedding (``model.<key>`` None, or masks that are not fixed slices).

    Args:
        cfg: the configuration.
        key: ``"onset_conditions"`` (the onset branch), ``"chroma_conditions"`` (the harmony branch)
            or ``"timbre_conditions"`` (the timbre branch).

    Raises:
        ConfigError: a name in ``model.<key>`` is not a condition.
    """
    routed = getattr(cfg.model, key)
    if routed is None or cfg.model.mask_mode != "fixed":
        return None
    unknown = [n for n in routed if n not in cfg.conditions.names]
    if unknown:
        raise ConfigError(f"model.{key} names {unknown}, which are not conditions "
                          f"({list(cfg.conditions.names)}); list the conditions whose slices the branch "
                          "should feed, or null for the whole embedding.")
    gate = [0.0] * cfg.conditions.embedding_dim
    for n in routed:
        start, stop = cfg.conditions.slices[n]
        gate[start:stop] = [1.0] * (stop - start)
    return gate


def onset_gate(cfg: Config):
    """:func:`slice_gate` of the onset branch (``model.onset_conditions``)."""
    return slice_gate(cfg, "onset_conditions")


def _harmony_features(inputs, cfg: Config, name: str = "chroma"):
    """The harmony branch's features, ``[batch, 2 * width]``: each frame's pitch-class profile,
    learned templates in every transposition (:mod:`disentangled_ml.models.harmony`), averaged over
    the frames, then a small dense layer."""
    if not cfg.frontend.pitch_bands_per_octave:
        raise ConfigError(f"model.chroma_templates={cfg.model.chroma_templates} reads the pitch bands, and "
                          "frontend.pitch_bands_per_octave=0 has none: set model.chroma_templates=0 too "
                          "(no harmony branch), or keep the pitch bands.")
    try:
        profile_layer = PitchClassProfile.from_frontend(cfg.frontend, name="pitch_class_profile")
    except ValueError as e:
        raise ConfigError(f"model.chroma_templates={cfg.model.chroma_templates}: {e}") from e
    profile = profile_layer(inputs)
    matched = CircularTemplates(cfg.model.chroma_templates, name=f"{name}_templates")(profile)  # [B, T, K]
    matched = layers.GlobalAveragePooling1D(name=f"{name}_pool")(matched)
    return layers.Dense(2 * cfg.model.width, activation="relu", name=f"{name}_dense")(matched)


def build_backbone(cfg: Config, name: str = "backbone") -> keras.Model:
    """Build the CNN of ``cfg.model.backbone``.

    Args:
        cfg: the project configuration. Reads ``frontend.num_frames``,
            ``frontend.n_bands``, ``frontend.n_mels``, ``model.backbone``, ``model.width``,
            ``model.onset_lags``, ``model.dropout``, ``model.batchnorm_momentum`` and
            ``conditions.embedding_dim``.
        name: the Keras model name.

    Returns:
        keras.Model: input float32 ``[batch, num_frames, n_bands]`` (log-mel and pitch bands, time
        first; the channel axis is added inside), output float32
        ``[batch, embedding_dim]``, *not* normalised (the embedding model
        L2-normalises; learned masks penalise this vector's norm).

    Raises:
        ConfigError: unknown backbone family.
    """
    family = cfg.model.backbone
    if family not in BACKBONES:
        raise ConfigError(f"model.backbone={family!r} is not one of {sorted(BACKBONES)}.")
    block = BACKBONES[family]
    width = cfg.model.width
    frames, mels = cfg.frontend.num_frames, cfg.frontend.n_bands

    if cfg.model.onset_lags and cfg.model.onset_lags > frames - 2:
        raise ConfigError(f"model.onset_lags={cfg.model.onset_lags} needs segments of at least "
                          f"{cfg.model.onset_lags + 2} frames, and this frontend gives {frames}: lower model.onset_lags "
                          "(or 0 for no onset branch) or lengthen frontend.segment_seconds.")
    inputs = keras.Input((frames, mels), name="mel")
    channels = layers.Reshape((frames, mels, 1), name="add_channel")(inputs)
    conv = functools.partial(conv_bn_relu, momentum=cfg.model.batchnorm_momentum)
    stem = STEMS[family]
    x = conv(channels, width, stem.kernel, "stem", strides=cfg.model.stem_stride)
    if stem.pool != (1, 1):
        # padding="same" so odd patch sizes (129 frames, or tiny test patches) keep
        # their last row instead of losing it at every pooling.
        x = layers.MaxPooling2D(stem.pool, padding="same", name="stem_pool")(x)
    for i, (mult, pool) in enumerate(zip(BLOCK_CHANNELS, POOL_AFTER_BLOCK), start=1):
        x = block(x, mult * width, f"block{i}", conv)
        if pool:
            x = layers.MaxPooling2D(2, padding="same", name=f"block{i}_pool")(x)
    # Every block ends in a ReLU, so the pooled features are already non-negative:
    # the paper's "ReLU" after the blocks is that one, and no second ReLU is added.
    x = layers.GlobalAveragePooling2D(name="global_pool")(x)
    # Side branches: (layer-name stem, features [batch, 2 * width], gate or None). The names are
    # those 0.3/0.4 saved ("onsets"), so their checkpoints keep loading.
    branches = []
    if cfg.model.onset_lags:
        onsets = OnsetAutocorrelation(cfg.frontend.n_mels, cfg.model.onset_lags, name="onset_autocorrelation")(inputs)
        onsets = layers.Dense(2 * width, activation="relu", name="onset_dense")(onsets)
        branches.append(("onsets", onsets, slice_gate(cfg, "onset_conditions")))
    if cfg.model.chroma_templates:
        branches.append(("harmony", _harmony_features(inputs, cfg), slice_gate(cfg, "chroma_conditions")))
    if cfg.model.timbre_filters:
        timbre = timbre_features(channels, cfg.frontend.n_mels, cfg.model.timbre_filters, 2 * width,
                                 momentum=cfg.model.batchnorm_momentum, epsilon=_BN_EPSILON)
        branches.append(("timbre", timbre, slice_gate(cfg, "timbre_conditions")))
    ungated = [(stem, features) for stem, features, gate in branches if gate is None]
    if ungated:  # branches on the whole embedding (0.3's onsets): they join the pooled features
        x = layers.Concatenate(name="cnn_and_" + "_and_".join(stem for stem, _ in ungated))(
            [x, *(features for _, features in ungated)])
    if cfg.model.dropout > 0:
        x = layers.Dropout(cfg.model.dropout, name="dropout")(x)
    outputs = layers.Dense(cfg.conditions.embedding_dim, name="projection")(x)
    for stem, features, gate in branches:
        if gate is None:
            continue
        # Only the listed slices read a branch (tempo the tempogram, mood the harmony, instrument
        # the timbre). An onset
        # autocorrelation is close to a fingerprint of a track's tempo and rhythm; fed to
        # every slice, it let the instrument and mood slices tell the training tracks apart
        # by rhythm instead of hearing timbre and harmony (benchmarks/RESULTS.md).
        prefix = stem.rstrip("s")  # "onset_projection", "onset_slices" as 0.4 saved them
        routed = layers.Dense(cfg.conditions.embedding_dim, use_bias=False, name=f"{prefix}_projection")(features)
        outputs = layers.Add(name=f"projection_and_{stem}")([outputs, SliceGate(gate, name=f"{prefix}_slices")(routed)])
    return keras.Model(inputs, outputs, name=name)
