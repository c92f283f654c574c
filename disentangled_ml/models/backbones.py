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

Every channel count is a multiple of ``cfg.model.width`` (64 by default, the paper's
stem), so a small width gives a small, fast network for tests.
"""

from __future__ import annotations

import functools
from typing import Callable, Dict, Tuple

import keras
from keras import layers

from disentangled_ml.config import Config, ConfigError

__all__ = ["BACKBONES", "build_backbone", "conv_bn_relu"]

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


def conv_bn_relu(x, filters: int, kernel: int, name: str, relu: bool = True, momentum: float = 0.99):
    """Conv2D (no bias: BN has one) -> BatchNormalization -> optional ReLU.

    The one convolution helper every family uses, so they differ only in how
    blocks wire it. ``momentum`` is the BN moving-statistics momentum
    (``model.batchnorm_momentum``).
    """
    x = layers.Conv2D(filters, kernel, padding="same", use_bias=False, name=f"{name}_conv")(x)
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
}


def build_backbone(cfg: Config, name: str = "backbone") -> keras.Model:
    """Build the CNN of ``cfg.model.backbone``.

    Args:
        cfg: the project configuration. Reads ``frontend.num_frames``,
            ``frontend.n_bands``, ``model.backbone``, ``model.width``,
            ``model.dropout``, ``model.batchnorm_momentum`` and
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

    inputs = keras.Input((frames, mels), name="mel")
    x = layers.Reshape((frames, mels, 1), name="add_channel")(inputs)
    conv = functools.partial(conv_bn_relu, momentum=cfg.model.batchnorm_momentum)
    x = conv(x, width, STEM_KERNEL, "stem")
    # padding="same" so odd patch sizes (129 frames, or tiny test patches) keep
    # their last row instead of losing it at every pooling.
    x = layers.MaxPooling2D(2, padding="same", name="stem_pool")(x)
    for i, (mult, pool) in enumerate(zip(BLOCK_CHANNELS, POOL_AFTER_BLOCK), start=1):
        x = block(x, mult * width, f"block{i}", conv)
        if pool:
            x = layers.MaxPooling2D(2, padding="same", name=f"block{i}_pool")(x)
    # Every block ends in a ReLU, so the pooled features are already non-negative:
    # the paper's "ReLU" after the blocks is that one, and no second ReLU is added.
    x = layers.GlobalAveragePooling2D(name="global_pool")(x)
    if cfg.model.dropout > 0:
        x = layers.Dropout(cfg.model.dropout, name="dropout")(x)
    outputs = layers.Dense(cfg.conditions.embedding_dim, name="projection")(x)
    return keras.Model(inputs, outputs, name=name)
