"""Evaluation metrics on embeddings: triplet accuracy, disentanglement matrix, retrieval.

Pure numpy functions; nothing here knows about audio or models. An embedding is a
float array ``[N, D]``. A *view* says which part of it a condition is measured in:

* ``None``: the whole embedding;
* ``(start, stop)`` (or a ``slice``): the dimensions ``start:stop``, the fixed
  per-condition slice of Lee et al. (``Config().conditions.slices``);
* an integer or boolean index array: those dimensions;
* a float array ``[D]``: an element-wise mask (CSN's learned masks), i.e. the
  distance is ``||m * (x - y)||``.

Distances are Euclidean, as in the export contract (docs/design.md, contract 2).
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Sequence, Tuple, Union

import numpy as np

from disentangled_ml.config import TRACK_CONDITION, Config
from disentangled_ml.data.labels import TEMPO, LabelTables

__all__ = [
    "View", "project", "triplet_correct", "triplet_accuracy", "wilson_interval", "disentanglement_matrix",
    "class_pair_accuracy", "mcnemar_exact_p", "newcombe_paired_interval", "mcnemar_test", "MCNEMAR_TEST",
    "PAIRED_INTERVAL", "SIGNIFICANCE_LEVEL",
    "retrieval_metrics", "relevance_matrix", "WHOLE", "DEFAULT_K", "DEFAULT_SEGMENTS_PER_TRACK",
]

View = Union[None, Tuple[int, int], slice, np.ndarray]
#: Cutoff of the retrieval precision (precision@10).
DEFAULT_K = 10
#: Segments averaged into a track embedding for retrieval.
DEFAULT_SEGMENTS_PER_TRACK = 8
#: Column name of the whole embedding in a disentanglement matrix.
WHOLE = "whole"
#: How :func:`mcnemar_test` names its test and its interval (written next to every comparison).
MCNEMAR_TEST = "exact McNemar test (two-sided binomial test on the discordant triplets)"
PAIRED_INTERVAL = "Newcombe's paired score interval of the accuracy difference (1998, method 10), 95 %"
#: A difference is called significant when its p-value is below this (per comparison, no multiplicity correction).
SIGNIFICANCE_LEVEL = 0.05


def _as_2d(x: Any, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a [N, D] array of embeddings, got shape {x.shape}.")
    return x


def project(emb: np.ndarray, view: View) -> np.ndarray:
    """The part of ``emb`` that ``view`` measures in (module docstring).

    Args:
        emb: float ``[N, D]``.
        view: ``None``, ``(start, stop)``, ``slice``, integer/boolean index array, or
            float mask ``[D]``.

    Returns:
        float ``[N, D']``: ``D' = stop - start`` for a slice, ``D`` for a float mask.

    Raises:
        ValueError: a slice outside ``[0, D]`` or a mask of the wrong length.
    """
    emb = _as_2d(emb, "emb")
    d = emb.shape[1]
    if view is None:
        return emb
    if isinstance(view, slice):
        view = (view.start or 0, d if view.stop is None else view.stop)
    if isinstance(view, tuple):
        if len(view) != 2:
            raise ValueError(f"a slice view is (start, stop), got {view!r}.")
        start, stop = int(view[0]), int(view[1])
        if not 0 <= start < stop <= d:
            raise ValueError(f"slice view {view!r} does not fit an embedding of dimension {d}.")
        return emb[:, start:stop]
    view = np.asarray(view)
    if view.dtype == bool:
        if view.shape != (d,):
            raise ValueError(f"a boolean view needs shape ({d},), got {view.shape}.")
        return emb[:, view]
    if np.issubdtype(view.dtype, np.integer):
        if view.ndim != 1 or view.size == 0 or view.min() < -d or view.max() >= d:
            raise ValueError(f"an index view must list dimensions of a {d}-d embedding, got {view!r}.")
        return emb[:, view]
    if view.shape != (d,):
        raise ValueError(f"a mask view needs shape ({d},), got {view.shape}.")
    return emb * view[None, :].astype(np.float64)


def triplet_correct(emb_a: np.ndarray, emb_p: np.ndarray, emb_n: np.ndarray, dims: View = None) -> np.ndarray:
    """Which triplets are ordered correctly: ``||a - p|| < ||a - n||`` in ``dims``.

    Args:
        emb_a, emb_p, emb_n: float ``[N, D]`` embeddings of the anchors, positives
            and negatives (row ``i`` of each is triplet ``i``).
        dims: the view to measure in (module docstring); ``None`` = whole embedding.

    Returns:
        bool ``[N]``. A tie counts as wrong, so a constant embedding scores 0, not 0.5.
    """
    a, p, n = (project(x, dims) for x in (emb_a, emb_p, emb_n))
    if not a.shape == p.shape == n.shape:
        raise ValueError(f"anchor, positive and negative embeddings differ in shape: {a.shape}, {p.shape}, {n.shape}.")
    d_ap = np.sum((a - p) ** 2, axis=1)
    d_an = np.sum((a - n) ** 2, axis=1)
    return d_ap < d_an


def triplet_accuracy(emb_a: np.ndarray, emb_p: np.ndarray, emb_n: np.ndarray, dims: View = None) -> float:
    """Share of triplets with ``||a - p|| < ||a - n||``, measured on ``emb[:, dims]``.

    The paper's metric (Lee et al. 2020, Table 1): 0.5 is chance, 1.0 is perfect.

    Args:
        emb_a, emb_p, emb_n: float ``[N, D]``, ``N >= 1``.
        dims: ``None`` (whole embedding), ``(start, stop)``, an index array or a
            float mask ``[D]``.

    Returns:
        float in [0, 1].

    Examples:
        >>> a = np.array([[0.0, 0.0]]); p = np.array([[0.1, 5.0]]); n = np.array([[1.0, 0.0]])
        >>> triplet_accuracy(a, p, n), triplet_accuracy(a, p, n, dims=(0, 1))
        (0.0, 1.0)
    """
    ok = triplet_correct(emb_a, emb_p, emb_n, dims)
    if ok.size == 0:
        raise ValueError("triplet_accuracy: no triplets given.")
    return float(ok.mean())


def wilson_interval(successes: int, n: int, z: float = 1.96) -> Tuple[float, float]:
    """Wilson score interval of a proportion (95 % for ``z = 1.96``).

    With the usual 500 test triplets per condition the interval is about ±0.04
    around 0.5. Whether two models scored on the same triplets differ is a paired
    question: :func:`mcnemar_test` answers it, and is more sensitive than comparing
    two such intervals.

    Returns:
        ``(low, high)`` in [0, 1]; ``(0.0, 1.0)`` for ``n = 0``.
    """
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar_exact_p(a_only: int, b_only: int) -> float:
    """Two-sided p-value of the exact McNemar test on ``a_only + b_only`` discordant pairs.

    Under the null hypothesis (both embedders equally accurate on these triplets) each
    discordant triplet is equally likely to be one that only A or only B orders
    correctly, so ``a_only ~ Binomial(a_only + b_only, 1/2)``; the p-value doubles the
    smaller tail, ``min(1, 2 * P(X <= min(a_only, b_only)))``, the same number as
    ``scipy.stats.binomtest(a_only, a_only + b_only, 0.5).pvalue``.

    Computed exactly in integers (the tail's binomial coefficients over ``2**n``, one
    correctly rounded division) rather than with scipy: scipy is only here as a
    dependency of scikit-learn, not one of ours, and an exact sum has no
    floating-point tail to underflow at large ``n``. The cost is ``min(a_only, b_only)``
    big-integer steps: a few milliseconds for thousands of discordant triplets.

    Args:
        a_only: triplets only A orders correctly (int >= 0).
        b_only: triplets only B orders correctly (int >= 0).

    Returns:
        float in (0, 1]; 1.0 when there is no discordant triplet.

    Examples:
        >>> mcnemar_exact_p(5, 0), mcnemar_exact_p(6, 0), mcnemar_exact_p(3, 3)
        (0.0625, 0.03125, 1.0)
    """
    a_only, b_only = int(a_only), int(b_only)
    if a_only < 0 or b_only < 0:
        raise ValueError(f"mcnemar_exact_p: counts must be >= 0, got {a_only} and {b_only}.")
    n, k = a_only + b_only, min(a_only, b_only)
    if 2 * k == n:  # also n = 0: the observed split is the most likely one
        return 1.0
    tail, term = 0, 1  # term = C(n, i), updated in exact integers
    for i in range(k + 1):
        tail += term
        term = term * (n - i) // (i + 1)
    return min(1.0, 2 * tail / 2 ** n)


def newcombe_paired_interval(both: int, a_only: int, b_only: int, neither: int,
                             z: float = 1.96) -> Tuple[float, float]:
    """Confidence interval of ``acc_A - acc_B`` for two embedders scored on the same triplets.

    Newcombe (1998, *Statistics in Medicine* 17:2635, method 10): the Wilson intervals
    ``(l1, u1)`` of ``p1 = acc_A`` and ``(l2, u2)`` of ``p2 = acc_B``, combined by square
    and add with the correlation ``phi`` of the paired outcomes::

        D = p1 - p2
        low  = D - sqrt((p1 - l1)^2 - 2 phi (p1 - l1)(u2 - p2) + (u2 - p2)^2)
        high = D + sqrt((p2 - l2)^2 - 2 phi (p2 - l2)(u1 - p1) + (u1 - p1)^2)

    with ``phi = C / sqrt((both + a_only)(b_only + neither)(both + b_only)(a_only + neither))``,
    ``C = AD - BC - N/2`` when ``AD - BC > N/2``, ``0`` when ``0 <= AD - BC <= N/2`` and
    ``AD - BC`` when it is negative (``AD - BC = both * neither - a_only * b_only``; the
    shrinkage of a positive correlation keeps the coverage near 95 % in small samples), and
    ``phi = 0`` when a margin is empty. Unlike a Wald interval it stays inside [-1, 1] and
    is not degenerate at accuracies of 0 or 1.

    Args:
        both, a_only, b_only, neither: the paired 2x2 table, counts of triplets both
            embedders, only A, only B and neither order correctly (ints >= 0, sum N >= 1).
        z: normal quantile (1.96: 95 %).

    Returns:
        ``(low, high)``, a sub-interval of [-1, 1] that contains ``D``.
    """
    counts = [int(x) for x in (both, a_only, b_only, neither)]
    if min(counts) < 0 or sum(counts) == 0:
        raise ValueError(f"newcombe_paired_interval: counts must be >= 0 with a positive sum, got {counts}.")
    both, a_only, b_only, neither = counts
    n = both + a_only + b_only + neither
    p1, p2 = (both + a_only) / n, (both + b_only) / n
    l1, u1 = wilson_interval(both + a_only, n, z)
    l2, u2 = wilson_interval(both + b_only, n, z)
    margins = (both + a_only) * (b_only + neither) * (both + b_only) * (a_only + neither)
    cross = both * neither - a_only * b_only
    if margins == 0 or 0 <= cross <= n / 2:
        phi = 0.0
    else:
        phi = (cross - n / 2 if cross > 0 else cross) / math.sqrt(margins)
    d = p1 - p2
    # max(0, .): rounding can leave a tiny negative under the root when phi is near 1
    low = d - math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    high = d + math.sqrt(max(0.0, (p2 - l2) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1) + (u1 - p1) ** 2))
    return max(-1.0, low), min(1.0, high)


def mcnemar_test(correct_a: np.ndarray, correct_b: np.ndarray, z: float = 1.96,
                 alpha: float = SIGNIFICANCE_LEVEL) -> Dict[str, Any]:
    """Compare two embedders scored on the same triplets: exact McNemar test and the difference's interval.

    Only the triplets the two order differently carry information about which is
    better; a comparison of two Wilson intervals ignores the pairing and is far less
    sensitive (two models that agree on 480 of 500 triplets and differ by 0.03 have
    overlapping intervals, yet one may win 16 of the 20 disagreements).

    Args:
        correct_a, correct_b: bool ``[N]``, ``N >= 1``: triplet ``i`` ordered correctly by A, by B
            (:func:`triplet_correct` on the same triplets, in the same order).
        z: normal quantile of the interval (1.96: 95 %).
        alpha: significance level of ``"significant"``.

    Returns:
        ``{"test": MCNEMAR_TEST, "n": N, "accuracy_a", "accuracy_b", "difference": accuracy_a -
        accuracy_b, "ci95": [low, high] (:func:`newcombe_paired_interval`), "both", "a_only",
        "b_only", "neither" (the paired table), "p_value" (:func:`mcnemar_exact_p`),
        "significant": p_value < alpha}``.

    Examples:
        >>> r = mcnemar_test(np.array([1, 1, 1, 1, 1, 1, 0, 1], bool), np.array([0, 0, 0, 0, 0, 0, 0, 1], bool))
        >>> r["a_only"], r["b_only"], r["difference"], r["p_value"], r["significant"]
        (6, 0, 0.75, 0.03125, True)
    """
    a = np.asarray(correct_a, dtype=bool)
    b = np.asarray(correct_b, dtype=bool)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"mcnemar_test: two bool [N] arrays of the same triplets needed, got shapes {a.shape} "
                         f"and {b.shape}.")
    if a.size == 0:
        raise ValueError("mcnemar_test: no triplets given.")
    both, a_only = int(np.sum(a & b)), int(np.sum(a & ~b))
    b_only, neither = int(np.sum(~a & b)), int(np.sum(~a & ~b))
    p = mcnemar_exact_p(a_only, b_only)
    return {"test": MCNEMAR_TEST, "n": int(a.size), "accuracy_a": float(a.mean()), "accuracy_b": float(b.mean()),
            "difference": (a_only - b_only) / a.size,
            "ci95": list(newcombe_paired_interval(both, a_only, b_only, neither, z)),
            "both": both, "a_only": a_only, "b_only": b_only, "neither": neither,
            "p_value": p, "significant": bool(p < alpha)}


def disentanglement_matrix(triplets_by_condition: Mapping[str, Tuple[np.ndarray, np.ndarray, np.ndarray]],
                           slices: Mapping[str, View]) -> Dict[str, Any]:
    """Accuracy of each condition's triplets measured in every condition's slice.

    A disentangled embedding has a strong diagonal: genre triplets are ordered
    correctly in the genre slice and near chance (0.5) in the others. The last
    column measures on the whole embedding; the ``track`` row (when given) shows
    how much track identity each slice carries.

    Args:
        triplets_by_condition: ``{condition: (emb_a, emb_p, emb_n)}``, each ``[N_s, D]``;
            rows come out in this order (put ``"track"`` last).
        slices: ``{condition: view}`` for the columns, e.g. ``Config().conditions.slices``.

    Returns:
        dict with ``"rows"`` (list of S condition names), ``"columns"`` (T slice names
        then ``"whole"``) and ``"accuracy"``: float ndarray ``[S, T + 1]`` where
        ``accuracy[s, t]`` is the triplet accuracy of condition ``s``'s triplets in
        slice ``t``.
    """
    rows = list(triplets_by_condition)
    columns = list(slices) + [WHOLE]
    if WHOLE in slices:
        raise ValueError(f"no slice may be called {WHOLE!r}; it names the whole-embedding column.")
    views: List[View] = [slices[c] for c in slices] + [None]
    acc = np.zeros((len(rows), len(columns)), dtype=np.float64)
    for i, cond in enumerate(rows):
        a, p, n = triplets_by_condition[cond]
        for j, view in enumerate(views):
            acc[i, j] = triplet_accuracy(a, p, n, view)
    return {"rows": rows, "columns": columns, "accuracy": acc}


def class_pair_accuracy(correct: np.ndarray, anchor_classes: np.ndarray, negative_classes: np.ndarray,
                        vocab: Sequence[str]) -> Dict[str, Any]:
    """Triplet accuracy of one condition split by (anchor's class, negative's class).

    Shows which classes a slice confuses: a low cell (a, b) means that triplets whose
    anchor is an ``a`` and whose negative is a ``b`` are often ordered wrongly.
    Only triplets whose anchor and negative carry exactly one class each are split
    (a multi-tag track has no single class); the others are counted as ``unpaired``.

    Args:
        correct: bool ``[N]``, from :func:`triplet_correct`.
        anchor_classes, negative_classes: bool ``[N, K]``: the class matrix rows
            (:class:`~disentangled_ml.data.labels.LabelTables`) of each triplet's
            anchor and negative track.
        vocab: the K class names.

    Returns:
        ``{"classes": [K names], "accuracy": float [K, K] (NaN where no triplet),
        "n": int [K, K], "unpaired": int}``; rows are the anchor's class, columns
        the negative's.
    """
    correct = np.asarray(correct, dtype=bool)
    a = np.asarray(anchor_classes, dtype=bool)
    n = np.asarray(negative_classes, dtype=bool)
    k = len(vocab)
    if a.shape != (correct.size, k) or n.shape != (correct.size, k):
        raise ValueError(f"class matrices must be [{correct.size}, {k}], got {a.shape} and {n.shape}.")
    single = (a.sum(axis=1) == 1) & (n.sum(axis=1) == 1)
    counts = np.zeros((k, k), dtype=np.int64)
    hits = np.zeros((k, k), dtype=np.int64)
    ia, ineg = a[single].argmax(axis=1), n[single].argmax(axis=1)
    np.add.at(counts, (ia, ineg), 1)
    np.add.at(hits, (ia, ineg), correct[single].astype(np.int64))
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.where(counts > 0, hits / np.maximum(counts, 1), np.nan)
    return {"classes": list(vocab), "accuracy": acc, "n": counts, "unpaired": int((~single).sum())}


def _sq_distances(q: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances ``[len(q), len(x)]`` (clipped at 0 against rounding)."""
    d = np.sum(q * q, axis=1)[:, None] + np.sum(x * x, axis=1)[None, :] - 2.0 * q @ x.T
    return np.maximum(d, 0.0)


def retrieval_metrics(track_emb: np.ndarray, relevance: np.ndarray, k: int = DEFAULT_K, dims: View = None,
                      chunk: int = 1024) -> Dict[str, Any]:
    """Precision at ``k`` and mean average precision, every track querying all others.

    Each track is a query; the candidates are all *other* tracks, ranked by
    Euclidean distance in ``dims`` (ties keep the row order). Queries with no
    relevant candidate have no defined precision and are skipped, and counted.

    Args:
        track_emb: float ``[N, D]`` track embeddings.
        relevance: bool ``[N, N]``; ``relevance[i, j]``: track j is a correct answer to
            query i. The diagonal is ignored.
        k: cutoff of the precision; with fewer than ``k`` candidates, ``N - 1`` is used.
        dims: view to search in (module docstring).
        chunk: queries ranked at once (bounds memory to ``chunk * N`` floats).

    Returns:
        dict with ``"precision_at_k"`` (mean over the evaluated queries of the share of
        relevant tracks among the ``k`` nearest), ``"map"`` (mean over the evaluated
        queries of the average precision over the full ranking), ``"k"`` (the cutoff
        used), ``"queries"`` (evaluated) and ``"skipped_queries"`` (no relevant
        candidate). The two scores are NaN when no query could be evaluated.

    Examples:
        >>> emb = np.array([[0.0], [1.0], [3.0]])
        >>> rel = np.array([[0, 0, 1], [0, 0, 0], [1, 0, 0]], bool)
        >>> r = retrieval_metrics(emb, rel, k=1)
        >>> r["precision_at_k"], r["map"], r["skipped_queries"]
        (0.0, 0.5, 1)
    """
    x = project(track_emb, dims)
    rel = np.asarray(relevance, dtype=bool)
    n = x.shape[0]
    if rel.shape != (n, n):
        raise ValueError(f"relevance must be [N, N] = [{n}, {n}] for {n} track embeddings, got {rel.shape}.")
    if k < 1:
        raise ValueError(f"retrieval_metrics: k must be >= 1, got {k}.")
    k_eff = max(1, min(k, n - 1))
    precisions: List[float] = []
    aps: List[float] = []
    skipped = 0
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        d = _sq_distances(x[lo:hi], x)
        idx = np.arange(lo, hi)
        d[idx - lo, idx] = np.inf  # a query never retrieves itself
        order = np.argsort(d, axis=1, kind="stable")[:, : n - 1]
        hits = np.take_along_axis(rel[lo:hi], order, axis=1)  # [q, N-1], relevance in rank order
        n_rel = hits.sum(axis=1)
        for h, r in zip(hits, n_rel):
            if r == 0:
                skipped += 1
                continue
            precisions.append(h[:k_eff].mean())
            ranks = np.nonzero(h)[0] + 1  # 1-based ranks of the relevant tracks
            aps.append(float(np.mean(np.arange(1, r + 1) / ranks)))
    return {
        "precision_at_k": float(np.mean(precisions)) if precisions else float("nan"),
        "map": float(np.mean(aps)) if aps else float("nan"),
        "k": int(k_eff),
        "queries": len(precisions),
        "skipped_queries": int(skipped),
    }


def relevance_matrix(tables: LabelTables, rows: Sequence[int], condition: str,
                     config: Config) -> Tuple[np.ndarray, np.ndarray]:
    """Which tracks answer which queries in ``condition`` (the training similarity rules).

    Tag conditions: two tracks are relevant to each other when they share at least
    one label. Tempo: when their BPM differ by at most
    ``conditions.tempo_positive_bpm`` (tracks in the gap up to ``tempo_negative_bpm``,
    never used as training negatives, count as not relevant here).

    Args:
        tables: label tables of the collection.
        rows: the ``N`` table rows (tracks) that take part, e.g. the test split.
        condition: a name in ``tables.conditions``.
        config: gives the tempo threshold.

    Returns:
        ``(relevance, known)``: bool ``[N, N]`` (diagonal False) and bool ``[N]``, the
        tracks whose label is known. Drop the unknown ones from both queries and
        candidates before calling :func:`retrieval_metrics`:
        ``retrieval_metrics(emb[known], relevance[known][:, known])``.
    """
    if condition == TRACK_CONDITION or condition not in tables.conditions:
        raise ValueError(f"relevance_matrix: {condition!r} is not a condition of the label tables "
                         f"{list(tables.conditions)}.")
    rows = np.asarray(rows, dtype=np.int64)
    c = tables.conditions.index(condition)
    m = tables.classes[c][rows]
    known = m.any(axis=1)
    if condition == TEMPO:
        bpm = tables.tempo[rows].astype(np.float64)
        with np.errstate(invalid="ignore"):
            rel = np.abs(bpm[:, None] - bpm[None, :]) <= config.conditions.tempo_positive_bpm
        known = known & np.isfinite(bpm)
    else:
        mf = m.astype(np.float32)
        rel = (mf @ mf.T) > 0.5
    rel &= known[:, None] & known[None, :]
    np.fill_diagonal(rel, False)
    return rel, known
