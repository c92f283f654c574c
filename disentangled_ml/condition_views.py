"""Which part of the embedding each condition uses: one answer for every stage.

Every condition (genre, mood, ...) measures similarity in its own *view* of the
``D``-dimensional embedding. What the view is depends on ``model.mask_mode``:

* ``"fixed"``: the condition's slice ``start:stop`` of ``conditions.slices``.
  Weight vector: 1 on the slice, 0 elsewhere. :meth:`ConditionViews.apply` gives
  ``emb[:, start:stop]``, ``[N, stop - start]``; the metrics view is ``(start, stop)``.
* ``"learned"``: the condition's row of the trained mask matrix
  (``RUN_DIR/masks.npy``, float32 ``[C + 1, D]``; the last row is the ``track`` row).
  Weight vector: that row. ``apply`` gives ``emb * mask``, ``[N, D]``; the metrics view
  is the mask itself.
* ``"none"``: one global space. Weight vector: all ones. ``apply`` gives ``emb``
  itself, ``[N, D]``; the metrics view is ``None`` (the whole vector).

Distances are Euclidean on the applied view. A fixed view takes the slice's
sub-vector rather than multiplying by its 0/1 weights: the distances are the same,
and the sub-vector is what the export's condition outputs are (docs/design.md,
contract 2).

:class:`ConditionViews` is built from a training run (:meth:`~ConditionViews.from_config`,
:meth:`~ConditionViews.from_run_dir`) or from an export's ``config.json``
(:meth:`~ConditionViews.from_export_config`, the inverse of
:meth:`~ConditionViews.to_export_config`). The evaluation, the export (its
condition outputs, ``config.json`` and parity), the catalogue search, the
embedding model's :func:`~disentangled_ml.models.embedding.slice_outputs` and the
TensorBoard projector all read views from here.

Only numpy, :mod:`disentangled_ml.config` and :mod:`disentangled_ml.run_directory` are imported.
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from disentangled_ml.config import Config, ConfigError
from disentangled_ml.run_directory import MASKS_FILE, RunDirectory, RunDirectoryError

# MASKS_FILE stays importable from here, where it was before run_directory had it (tests, export).
__all__ = ["ConditionViews", "ConditionViewsError", "MASK_MODES", "MASKS_FILE"]

#: The values of ``model.mask_mode``.
MASK_MODES: Tuple[str, ...] = ("fixed", "learned", "none")


class ConditionViewsError(ConfigError):
    """Views that cannot be built: a missing or misshapen mask matrix, a bad slice, an unknown mode."""


@dataclass(frozen=True, eq=False)
class ConditionViews:
    """The view of every condition, in condition order.

    Build it with one of the ``from_*`` constructors rather than directly.

    Attributes:
        mode: ``"fixed"``, ``"learned"`` or ``"none"`` (``model.mask_mode``).
        slices: ``{condition: (start, stop)}``, read-only, in condition order. The view
            itself for ``"fixed"``; for the other modes the nominal slices (the run
            config's equal-width slices, or what an export's ``config.json`` lists),
            which no view uses.
        embedding_dim: ``D``.
        masks: float32 ``[C, D]`` (read-only), row ``i`` the mask of condition ``i``;
            only for ``"learned"``, else None.
    """

    mode: str
    slices: Mapping[str, Tuple[int, int]]
    embedding_dim: int
    masks: Optional[np.ndarray] = None

    def __post_init__(self) -> None:
        if self.mode not in MASK_MODES:
            raise ConditionViewsError(f"mask mode {self.mode!r} is not one of {MASK_MODES} (model.mask_mode).")
        dim = int(self.embedding_dim)
        if dim < 1:
            raise ConditionViewsError(f"embedding_dim={self.embedding_dim}: must be >= 1.")
        slices: Dict[str, Tuple[int, int]] = {}
        for name, pair in self.slices.items():
            start, stop = (int(v) for v in pair)
            if not 0 <= start < stop <= dim:
                raise ConditionViewsError(f"condition {name!r}: slice ({start}, {stop}) does not fit an embedding "
                                          f"of dimension {dim}.")
            slices[str(name)] = (start, stop)
        if not slices:
            raise ConditionViewsError("no condition: the views need at least one.")
        masks = None
        if self.mode == "learned":
            masks = _mask_rows(self.masks, len(slices), dim)
        object.__setattr__(self, "embedding_dim", dim)
        object.__setattr__(self, "slices", types.MappingProxyType(slices))
        object.__setattr__(self, "masks", masks)

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_config(cls, config: Config, masks: Optional[Any] = None) -> "ConditionViews":
        """The views of a run's configuration.

        Args:
            config: ``model.mask_mode`` and ``conditions`` (names, ``embedding_dim``).
            masks: the trained mask matrix, float ``[C + 1, D]`` (rows after the first
                ``C``, i.e. the ``track`` row, are not used) or ``[C, D]``: ``RUN_DIR/masks.npy`` or
                ``TripletModel.condition_masks.mask_matrix()``. Required for
                ``"learned"``, ignored otherwise.

        Raises:
            ConditionViewsError: ``"learned"`` without ``masks``, or ``masks`` of the wrong shape.
        """
        mode = config.model.mask_mode
        return cls(mode, config.conditions.slices, config.conditions.embedding_dim,
                   masks if mode == "learned" else None)

    @classmethod
    def from_run_dir(cls, run_dir: Union[str, RunDirectory], config: Optional[Config] = None) -> "ConditionViews":
        """The views of a training run directory.

        Args:
            run_dir: written by ``dml train``: ``config.json`` and, for learned masks,
                ``masks.npy`` (:class:`~disentangled_ml.run_directory.RunDirectory`).
            config: the run's config when already read (default: ``RUN_DIR/config.json``).

        Raises:
            ConditionViewsError: learned masks but no ``RUN_DIR/masks.npy``, or a misshapen one.
            ConfigError: an unreadable ``config.json``.
        """
        run = RunDirectory(run_dir)
        if config is None:
            config = run.read_config()
        masks = None
        if config.model.mask_mode == "learned":
            try:
                masks = run.read_masks()
            except RunDirectoryError as e:  # the views' own error, which evaluation and export catch
                raise ConditionViewsError(str(e)) from None
        return cls.from_config(config, masks)

    @classmethod
    def from_slices(cls, slices: Mapping[str, Sequence[int]], embedding_dim: int) -> "ConditionViews":
        """Fixed views from ``{condition: (start, stop)}`` slices of a ``embedding_dim``-d embedding."""
        return cls("fixed", {n: tuple(s) for n, s in slices.items()}, embedding_dim)

    @classmethod
    def from_export_config(cls, export_config: Mapping[str, Any]) -> "ConditionViews":
        """The views an export's (or a catalogue's) ``config.json`` describes (docs/design.md, contract 2).

        Reads ``embedding_dim``, ``conditions`` (``{name: [start, stop]}``), ``mask_mode``
        (``"fixed"`` when absent) and, for ``"learned"``, ``condition_masks``
        (``{name: [D floats]}``).

        Raises:
            ConditionViewsError: a condition without ``[start, stop]``, or learned masks
                without a ``condition_masks`` entry for every condition.
        """
        mode = export_config.get("mask_mode") or "fixed"
        dim = int(export_config["embedding_dim"])
        conditions = export_config.get("conditions")
        if not isinstance(conditions, Mapping):
            raise ConditionViewsError(f"'conditions' is {type(conditions).__name__}, not {{name: [start, stop]}}.")
        slices = {}
        for name, pair in conditions.items():
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
                raise ConditionViewsError(f"condition {name!r}: {pair!r} is not [start, stop].")
            slices[name] = (int(pair[0]), int(pair[1]))
        masks = None
        if mode == "learned":
            learned = export_config.get("condition_masks")
            learned = learned if isinstance(learned, Mapping) else {}
            missing = [n for n in slices if n not in learned]
            if missing:
                raise ConditionViewsError(f"mask_mode 'learned' but no condition_masks entry for {missing[0]!r}")
            masks = np.asarray([learned[n] for n in slices], np.float32)
        return cls(mode, slices, dim, masks)

    # ------------------------------------------------------------------ queries

    @property
    def names(self) -> Tuple[str, ...]:
        """The condition names, in order."""
        return tuple(self.slices)

    @property
    def is_sliced(self) -> bool:
        """True when every view is a contiguous slice (``"fixed"``); False for masks or the whole vector."""
        return self.mode == "fixed"

    def _index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f"unknown condition {name!r}; the views have {list(self.names)}.") from None

    def weight(self, name: str) -> np.ndarray:
        """float32 ``[D]``: 0/1 on the slice (fixed), the learned mask (learned), ones (none)."""
        i = self._index(name)
        if self.mode == "learned":
            return self.masks[i].copy()
        if self.mode == "none":
            return np.ones(self.embedding_dim, np.float32)
        w = np.zeros(self.embedding_dim, np.float32)
        start, stop = self.slices[name]
        w[start:stop] = 1.0
        return w

    def weights(self) -> Dict[str, np.ndarray]:
        """``{condition: weight float32 [D]}`` in condition order (:meth:`weight`)."""
        return {n: self.weight(n) for n in self.names}

    def width(self, name: str) -> int:
        """``D'``, the width of :meth:`apply`'s output: ``stop - start`` (fixed) or ``D``."""
        self._index(name)
        if self.mode == "fixed":
            start, stop = self.slices[name]
            return stop - start
        return self.embedding_dim

    def view(self, name: str) -> Any:
        """The view as :mod:`disentangled_ml.evaluation.metrics` takes it: ``(start, stop)`` (fixed),
        the mask float32 ``[D]`` (learned) or ``None``, the whole vector (none)."""
        i = self._index(name)
        if self.mode == "fixed":
            return self.slices[name]
        if self.mode == "learned":
            return self.masks[i]
        return None

    def metric_views(self) -> Dict[str, Any]:
        """``{condition: view}`` (:meth:`view`) in condition order."""
        return {n: self.view(n) for n in self.names}

    def apply(self, embeddings: Any, name: str) -> Any:
        """Condition ``name``'s view of ``embeddings``.

        Args:
            embeddings: ``[N, D]``: a numpy array (its float dtype is kept: a learned
                mask is cast to it), a TensorFlow tensor or a symbolic ``KerasTensor``.
            name: a condition.

        Returns:
            ``[N, D']``: ``embeddings[:, start:stop]`` (fixed, ``D' = stop - start``),
            ``embeddings * mask`` (learned, ``D' = D``), or ``embeddings`` itself (none).
            Equal to :func:`disentangled_ml.evaluation.metrics.project` of
            ``embeddings`` with :meth:`view`, in ``embeddings``' dtype.
        """
        i = self._index(name)
        if self.mode == "none":
            return embeddings
        if self.mode == "fixed":
            start, stop = self.slices[name]
            return embeddings[:, start:stop]
        mask = self.masks[i]
        if isinstance(embeddings, np.ndarray) and np.issubdtype(embeddings.dtype, np.floating):
            mask = mask.astype(embeddings.dtype, copy=False)
        return embeddings * mask

    def apply_all(self, embeddings: Any) -> Dict[str, Any]:
        """``{condition: apply(embeddings, condition)}`` in condition order."""
        return {n: self.apply(embeddings, n) for n in self.names}

    def to_export_config(self) -> Dict[str, Any]:
        """The views as an export's ``config.json`` records them (:meth:`from_export_config` reads them back).

        Returns:
            ``{"conditions": {name: [start, stop]}, "mask_mode": mode}``, plus
            ``"condition_masks": {name: [D floats]}`` for ``"learned"``. The learned and
            none modes list ``[0, D]``: their condition outputs span the whole embedding.
        """
        dim = self.embedding_dim
        out: Dict[str, Any] = {
            "conditions": {n: ([s[0], s[1]] if self.mode == "fixed" else [0, dim]) for n, s in self.slices.items()},
            "mask_mode": self.mode,
        }
        if self.mode == "learned":
            out["condition_masks"] = {n: [float(v) for v in self.masks[i]] for i, n in enumerate(self.names)}
        return out


def _mask_rows(masks: Optional[Any], n_conditions: int, dim: int) -> np.ndarray:
    """The first ``n_conditions`` rows of a learned mask matrix (``[C + 1, D]`` or ``[C, D]``), float32, read-only."""
    if masks is None:
        raise ConditionViewsError("model.mask_mode='learned' has no fixed slices: the learned mask matrix is needed "
                                  f"(RUN_DIR/{MASKS_FILE}, float32 [conditions (+1 track row), embedding_dim]).")
    masks = np.asarray(masks, np.float32)
    if masks.ndim != 2 or masks.shape[0] < n_conditions or masks.shape[1] != dim:
        raise ConditionViewsError(f"the learned mask matrix has shape {masks.shape}; expected [{n_conditions} or "
                                  f"{n_conditions + 1}, {dim}].")
    rows = masks[:n_conditions].copy()
    rows.flags.writeable = False
    return rows
