"""Arithmetic cost of a network and of the frontend: multiply-accumulates (MACs) and parameters.

:func:`layer_macs` walks a Keras model's graph and counts, for every layer, the MACs of
one example (batch 1) from its output shape and its weights' shapes, so it needs no
list of the project's blocks: a new block of Conv2D / Dense layers is counted as it is.

=========================== ==========================================================
layer                       MACs per example
=========================== ==========================================================
Conv1D/2D/3D (any stride,   output positions x kernel volume x in_channels / groups
dilation, groups)           x filters (= positions x the kernel's size)
Conv*Transpose              input positions x kernel volume x in_channels x filters
DepthwiseConv1D/2D          output positions x kernel volume x in_channels x depth_multiplier
SeparableConv1D/2D          the depthwise part plus a 1x1 conv at the output positions
Dense                       positions (all axes but batch and features) x in x units
=========================== ==========================================================

Bias additions, batch normalisation, activations, pooling, element-wise merges and the
like are not multiply-accumulates of a weight matrix and count 0 (they are memory-bound
and small next to the convolutions). A layer it cannot count is listed with
``counted=False`` (MACs 0) and a reason: a layer of unknown type that holds weights, a
custom (non-Keras) layer, a ``Lambda``, or a bare ``keras.ops`` call in a functional graph.
:func:`summarize_macs` gathers them under ``"uncounted"``. A custom layer can count
itself with a method ``count_macs(output_shape, input_shapes) -> int`` (shapes as tuples
with the batch axis first, ``input_shapes`` one per input tensor), for one example.

:func:`frontend_macs` estimates the frontend's cost from the config alone: the STFTs
(an FFT taken as ``2 n log2 n`` MACs a frame), the power spectra and the filterbank
matrix products (``frames x (n_fft / 2 + 1) x bands``), for the mel and the pitch bands.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import keras
import numpy as np

__all__ = ["layer_macs", "summarize_macs", "frontend_macs", "backbone_profile"]

# Layers with weights whose arithmetic is element-wise (or a lookup), not a matrix product.
_ELEMENTWISE_WITH_WEIGHTS = ("BatchNormalization", "LayerNormalization", "GroupNormalization", "PReLU",
                             "Embedding", "Normalization", "RMSNormalization")


def _shape(t) -> Tuple[Optional[int], ...]:
    return tuple(None if d is None else int(d) for d in t.shape)


def _weight_size(w) -> int:
    return int(np.prod([int(d) for d in w.shape])) if w is not None else 0


def _prod(dims: Sequence[Optional[int]]) -> int:
    if any(d is None for d in dims):
        raise ValueError(f"unknown dimension in {tuple(dims)}: the model needs a fixed input shape to count MACs")
    return int(np.prod(dims)) if len(dims) else 1


def _spatial(shape: Tuple[Optional[int], ...], data_format: str = "channels_last") -> Tuple[Optional[int], ...]:
    """The axes between batch and channels of an output shape."""
    return tuple(shape[2:]) if data_format == "channels_first" else tuple(shape[1:-1])


def _is_keras_builtin(op) -> bool:
    return type(op).__module__.startswith("keras.")


def _outputs_and_inputs(op, model) -> List[Tuple[list, list]]:
    """[(output shapes, input shapes)] of each call of ``op`` in ``model``'s functional graph."""
    own = getattr(model, "_nodes", None)  # node keys of this model (a layer may be called in other graphs too)
    calls = []
    for i, node in enumerate(getattr(op, "_inbound_nodes", [])):
        if own is not None and f"{id(op)}_ib-{i}" not in own:  # keras.src.ops.function.make_node_key
            continue
        outs = [_shape(t) for t in keras.tree.flatten(node.output_tensors)]
        ins = [_shape(t) for t in keras.tree.flatten(node.input_tensors)]
        calls.append((outs, ins))
    if not calls:
        try:
            calls.append(([_shape(t) for t in keras.tree.flatten(op.output)], []))
        except (AttributeError, ValueError):
            pass
    return calls


def _count_call(op, out_shape, in_shapes) -> Tuple[int, bool, str]:
    """(MACs, counted, reason) of one call of a layer producing ``out_shape``."""
    L = keras.layers
    fmt = getattr(op, "data_format", "channels_last") or "channels_last"
    name = type(op).__name__
    if callable(getattr(op, "count_macs", None)):  # a custom layer that counts its own arithmetic
        return int(op.count_macs(out_shape, in_shapes)), True, ""
    if isinstance(op, (L.SeparableConv1D, L.SeparableConv2D)):
        positions = _prod(_spatial(out_shape, fmt))
        return positions * (_weight_size(op.depthwise_kernel) + _weight_size(op.pointwise_kernel)), True, ""
    if isinstance(op, (L.DepthwiseConv1D, L.DepthwiseConv2D)):
        # kernel [*k, in_channels, depth_multiplier]: each output channel sums prod(k) inputs
        return _prod(_spatial(out_shape, fmt)) * _weight_size(op.kernel), True, ""
    if isinstance(op, (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose)):
        # every input position scatters into kernel volume x filters outputs
        if not in_shapes:
            return 0, False, "transposed convolution without a known input shape"
        return _prod(_spatial(in_shapes[0], fmt)) * _weight_size(op.kernel), True, ""
    if isinstance(op, (L.Conv1D, L.Conv2D, L.Conv3D)):
        # kernel [*k, in_channels / groups, filters]; strides and dilation are in the output positions
        return _prod(_spatial(out_shape, fmt)) * _weight_size(op.kernel), True, ""
    if isinstance(op, L.Dense):
        # applied at every position of the axes between batch and features
        return _prod(out_shape[1:-1]) * _weight_size(op.kernel), True, ""
    if not isinstance(op, keras.layers.Layer):
        return 0, False, f"keras.ops operation {name} in the functional graph (not a layer)"
    if isinstance(op, L.Lambda):
        return 0, False, "Lambda layer (arbitrary code)"
    if not _is_keras_builtin(op):
        what = "with weights" if op.weights else "without weights"
        return 0, False, f"custom layer {type(op).__module__}.{name} {what}"
    if op.weights and name not in _ELEMENTWISE_WITH_WEIGHTS:
        return 0, False, f"Keras layer {name} with weights, of a type not counted"
    return 0, True, ""


def layer_macs(model: keras.Model, prefix: str = "") -> List[Dict[str, Any]]:
    """Multiply-accumulates and parameters of every layer of ``model``, for one example.

    Walks the model's operations in graph order, descending into nested models (their
    layers are named ``outer/inner``). Shapes come from the functional graph, so the
    model needs a fixed input shape (the backbones have one).

    Args:
        model: a built functional or sequential ``keras.Model``.
        prefix: prepended to every layer name (used for nested models).

    Returns:
        list of dicts, one per layer (per call for a layer called several times):
        ``layer`` (name), ``type`` (class name), ``output_shape`` (without the batch
        axis), ``resolution`` (the spatial axes of the output, between batch and
        channels; ``[]`` for a vector), ``macs`` (int, per example), ``params`` (the
        layer's weights, counted at its first call only, so the column sums to
        ``model.count_params()``), ``counted`` (False: the MACs are unknown and given as
        0) and ``reason`` (why not, or "").
    """
    rows: List[Dict[str, Any]] = []
    ops = getattr(model, "operations", None) or model.layers
    for op in ops:
        name = f"{prefix}{op.name}"
        if isinstance(op, keras.Model) and getattr(op, "operations", None):
            rows.extend(layer_macs(op, prefix=f"{name}/"))
            continue
        params = int(op.count_params()) if isinstance(op, keras.layers.Layer) and op.built else 0
        calls = _outputs_and_inputs(op, model) or [([()], [])]
        for k, (outs, ins) in enumerate(calls):
            out_shape = outs[0] if outs else ()
            macs, counted, reason = _count_call(op, out_shape, ins)
            fmt = getattr(op, "data_format", "channels_last") or "channels_last"
            rows.append({
                "layer": name if len(calls) == 1 else f"{name}#{k}",
                "type": type(op).__name__,
                "output_shape": list(out_shape[1:]),
                "resolution": list(_spatial(out_shape, fmt)) if len(out_shape) >= 3 else [],
                "macs": int(macs),
                "params": params if k == 0 else 0,
                "counted": bool(counted),
                "reason": reason,
            })
    return rows


def summarize_macs(rows: Sequence[Dict[str, Any]], input_resolution: Optional[Sequence[int]] = None) -> Dict[str, Any]:
    """Totals of :func:`layer_macs` rows, and where the MACs are spent by resolution.

    Args:
        rows: :func:`layer_macs` output.
        input_resolution: the input's spatial size (``[frames, bands]`` for a backbone);
            default the largest resolution that holds MACs.

    Returns:
        dict: ``total_macs``, ``total_params``, ``uncounted`` (``[{layer, type,
        params, reason}]``), ``by_resolution`` (``[{resolution, macs, share,
        layers}]``, largest area first; ``[]`` = vectors, e.g. after global pooling),
        ``full_resolution_share`` (share of MACs in layers whose output resolution is
        ``input_resolution``) and ``first_two_resolutions_share``.
    """
    total = sum(r["macs"] for r in rows)
    by_res: Dict[Tuple[int, ...], Dict[str, Any]] = {}
    for r in rows:
        key = tuple(r["resolution"])
        entry = by_res.setdefault(key, {"resolution": list(key), "macs": 0, "layers": 0})
        entry["macs"] += r["macs"]
        entry["layers"] += 1
    area = lambda res: math.prod(d or 0 for d in res) if res else 0  # noqa: E731
    ordered = sorted(by_res.values(), key=lambda e: (-area(e["resolution"]), -len(e["resolution"])))
    for e in ordered:
        e["share"] = e["macs"] / total if total else 0.0
    spatial = [e for e in ordered if e["resolution"] and e["macs"] > 0]
    if input_resolution is None and spatial:
        input_resolution = spatial[0]["resolution"]
    full = sum(e["macs"] for e in spatial if input_resolution is not None
               and list(e["resolution"]) == list(input_resolution))
    # the two largest spatial sizes (by area) that hold MACs: the stem's and the first block's
    levels = sorted({area(e["resolution"]) for e in spatial}, reverse=True)[:2]
    first_two = sum(e["macs"] for e in spatial if area(e["resolution"]) in levels)
    return {
        "total_macs": int(total),
        "total_params": int(sum(r["params"] for r in rows)),
        "uncounted": [{"layer": r["layer"], "type": r["type"], "params": r["params"], "reason": r["reason"]}
                      for r in rows if not r["counted"]],
        "input_resolution": None if input_resolution is None else list(input_resolution),
        "by_resolution": ordered,
        "full_resolution_share": full / total if total else 0.0,
        "first_two_resolutions_share": first_two / total if total else 0.0,
    }


def _stft_macs(frames: int, n_fft: int, bands: int) -> Dict[str, int]:
    bins = n_fft // 2 + 1
    parts = {
        "window": frames * n_fft,  # frames x Hann window
        "fft": int(round(frames * 2 * n_fft * math.log2(n_fft))),  # estimate: 2 n log2 n a frame
        "power": frames * bins * 2,  # re^2 + im^2
        "filterbank": frames * bins * bands,  # [frames, bins] @ [bins, bands]
    }
    parts["total"] = sum(parts.values())
    return parts


def frontend_macs(frontend_cfg, num_frames: Optional[int] = None) -> Dict[str, Any]:
    """Estimated MACs of the frontend (:func:`disentangled_ml.features.log_mel`) for one segment.

    Args:
        frontend_cfg: a :class:`~disentangled_ml.config.FrontendConfig`.
        num_frames: frames to cost (default ``frontend_cfg.num_frames``, one segment:
            129 for 3 s at the defaults); the training pipeline computes the log-mel of
            whole excerpts, so pass their frame count for that.

    Returns:
        dict: ``num_frames``, ``mel`` and ``pitch`` (``None`` without pitch bands), each
        ``{window, fft, power, filterbank, total}``, ``compression`` (one MAC per output
        value) and ``total``. The FFT term is an estimate (``2 n log2 n`` per frame).
    """
    fe = frontend_cfg
    frames = int(fe.num_frames if num_frames is None else num_frames)
    mel = _stft_macs(frames, fe.n_fft, fe.n_mels)
    n_pitch = int(fe.n_pitch_bands)
    pitch = _stft_macs(frames, fe.pitch_n_fft, n_pitch) if n_pitch else None
    compression = frames * (fe.n_mels + n_pitch)
    total = mel["total"] + (pitch["total"] if pitch else 0) + compression
    return {"num_frames": frames, "n_fft": fe.n_fft, "n_mels": fe.n_mels, "pitch_n_fft": fe.pitch_n_fft,
            "n_pitch_bands": n_pitch, "mel": mel, "pitch": pitch, "compression": compression, "total": int(total),
            "fft_estimate": "2 * n_fft * log2(n_fft) MACs per frame"}


def backbone_profile(cfg) -> Dict[str, Any]:
    """:func:`layer_macs` and :func:`summarize_macs` of ``build_backbone(cfg)``, per 3 s segment.

    Returns:
        dict: ``layers`` (the rows) and the summary's keys; the input resolution is
        ``[frontend.num_frames, frontend.n_bands]``.
    """
    from disentangled_ml.models.backbones import build_backbone

    model = build_backbone(cfg)
    rows = layer_macs(model)
    summary = summarize_macs(rows, [cfg.frontend.num_frames, cfg.frontend.n_bands])
    return {"layers": rows, **summary}
