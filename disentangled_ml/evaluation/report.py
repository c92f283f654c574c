"""Write an evaluation: ``metrics.json``, two figures and a text table.

* ``metrics.json``: the dict of :func:`disentangled_ml.evaluation.runner.evaluate_many`
  (plus run information), with NaN written as ``null`` so any JSON reader takes it;
  everything but ``per_triplet``, which goes to
* ``triplet_correct.csv``: one row per scored triplet (``set``: ``random`` or
  ``confounded``, then the triplet's own columns: condition, anchor, positive, negative
  and their starts) and one 0/1 column per scored series, ``<embedder>.<view>``
  (``model.slice``, ``model.whole``, ``mfcc_vq.whole``, ...): 1 where that series orders
  the triplet correctly. It is what the comparisons in ``metrics.json`` are computed
  from, and what pairs two evaluations on the same triplets (e.g. two runs) for a test.
* ``accuracy.png``: grouped bars, one group per condition, one bar per embedder
  (a model with sub-spaces gets two: scored in the condition's slice and on the
  whole embedding), with their 95 % Wilson intervals as whiskers, a dashed line at
  chance (0.5). When the metrics hold confounded triplets (``"confounded"``), a second
  panel shows the same bars on them.
* ``disentanglement.png``: the model's disentanglement matrix as a heat map with
  the accuracies written in the cells; ``disentanglement_confounded.png`` the same on
  the confounded triplets.

Matplotlib runs with the Agg backend, so no display is needed.
"""

from __future__ import annotations

import csv
import json
import math
import os
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

__all__ = ["to_jsonable", "write_metrics_json", "plot_accuracy", "plot_disentanglement", "format_table",
           "write_report", "accuracy_series", "accuracy_series_ci", "format_confounded_table",
           "write_triplet_correct", "significance_marks", "SIGNIFICANT_MARK"]

#: Marks a table cell whose series differs significantly from the reference (the model in its slice).
SIGNIFICANT_MARK = "*"
#: What is left out of metrics.json (not JSON: numpy arrays per triplet; see write_triplet_correct).
PER_TRIPLET = "per_triplet"


def to_jsonable(obj: Any) -> Any:
    """numpy scalars/arrays to Python, NaN/inf to None, tuples to lists, recursively."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    return obj


def write_metrics_json(metrics: Mapping[str, Any], path: str) -> None:
    """Write ``metrics`` but its ``per_triplet`` outcomes as indented JSON (atomically: a crash never
    leaves half a file)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(to_jsonable({k: v for k, v in metrics.items() if k != PER_TRIPLET}), f, indent=2, allow_nan=False)
        f.write("\n")
    os.replace(tmp, path)


def _series_source(metrics: Mapping[str, Any], confounded: bool) -> Tuple[List[str], Mapping[str, Any]]:
    """``(conditions, embedders)`` of the random set, or of the confounded set (every label condition,
    also those with no triplet)."""
    if not confounded:
        return list(metrics["conditions"]), metrics["embedders"]
    conf = metrics.get("confounded") or {}
    return list(conf.get("num_triplets", {})), conf.get("embedders", {})


def _series_keys(metrics: Mapping[str, Any], confounded: bool = False) -> List[Tuple[str, str]]:
    """``[(embedder name, view)]`` of the series of :func:`accuracy_series_ci`, in the same order."""
    return [(name, view) for name, emb in _series_source(metrics, confounded)[1].items()
            for view in (("slice", "whole") if emb["sliced"] else ("whole",))]


def accuracy_series_ci(metrics: Mapping[str, Any], confounded: bool = False
                       ) -> List[Tuple[str, List[Optional[float]], List[Optional[Tuple[float, float]]]]]:
    """:func:`accuracy_series` with the 95 % interval of each value: ``[(label, [acc], [(low, high)])]``."""
    conds, embedders = _series_source(metrics, confounded)
    series = []
    for name, view in _series_keys(metrics, confounded):
        emb = embedders[name]
        acc = emb["triplet_accuracy"]
        label = f"{emb['label']} ({view})" if emb["sliced"] else emb["label"]
        ci = [acc.get(c, {}).get(f"{view}_ci95") for c in conds]
        series.append((label, [acc.get(c, {}).get(view) for c in conds],
                       [None if x is None else (float(x[0]), float(x[1])) for x in ci]))
    return series


def significance_marks(metrics: Mapping[str, Any], confounded: bool = False) -> Dict[Tuple[str, str, str], str]:
    """``{(embedder name, view, condition): SIGNIFICANT_MARK}`` for every series whose accuracy differs from
    the reference's on the same triplets (``metrics["comparisons"]``, or the confounded set's:
    ``significant``, exact McNemar p < alpha). Empty for metrics written before the comparisons existed."""
    source = (metrics.get("confounded") or {}) if confounded else metrics
    conds = (source.get("comparisons") or {}).get("conditions", {})
    return {(v["embedder"], v["view"], cond): SIGNIFICANT_MARK
            for cond, entry in conds.items() for v in entry["versus"] if v.get("significant")}


def _marks_note(metrics: Mapping[str, Any], confounded: bool = False) -> str:
    """The line under a table that says what its marks mean (empty without comparisons)."""
    source = (metrics.get("confounded") or {}) if confounded else metrics
    comp = source.get("comparisons")
    if not comp or not comp.get("conditions"):
        return ""
    by_ref: Dict[str, List[str]] = {}
    for cond, entry in comp["conditions"].items():
        by_ref.setdefault(entry["reference"]["label"], []).append(cond)
    main = max(by_ref, key=lambda r: len(by_ref[r]))  # the model's slice; the track triplets' is its whole vector
    others = "".join(f" ({', '.join(conds)}: {ref})" for ref, conds in by_ref.items() if ref != main)
    alpha = comp.get("alpha", 0.05)
    where = f"{'confounded.' if confounded else ''}comparisons"
    return (f"{SIGNIFICANT_MARK} = differs from {main}{others} on the same triplets (exact McNemar test, "
            f"p < {alpha:g}, each comparison on its own,\nno multiplicity correction); no mark = not shown different. "
            f"The p-values and the differences' 95 % intervals: {where} in metrics.json.")


def accuracy_series(metrics: Mapping[str, Any], confounded: bool = False) -> List[Tuple[str, List[Optional[float]]]]:
    """``[(series label, [accuracy per condition])]`` in the order the bars are drawn.

    A sliced embedder gives ``"<label> (slice)"`` and ``"<label> (whole)"``; a
    baseline gives ``"<label>"`` (whole vector). ``None`` where a condition is missing.
    ``confounded``: the confounded triplets' accuracies, over every label condition.
    """
    return [(label, values) for label, values, _ in accuracy_series_ci(metrics, confounded)]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # headless: servers and CI have no display
    import matplotlib.pyplot as plt

    return plt


def _bar_panel(ax, conds: List[str], series, whiskers: bool) -> None:
    """Grouped bars of ``series`` (:func:`accuracy_series_ci`) over ``conds``, a chance line at 0.5."""
    width = 0.8 / max(1, len(series))
    x = np.arange(len(conds))
    for i, (label, values, cis) in enumerate(series):
        vals = np.array([np.nan if v is None else v for v in values], dtype=float)
        pos = x - 0.4 + width * (i + 0.5)
        bars = ax.bar(pos, np.nan_to_num(vals), width, label=label)
        if whiskers:
            lo = np.array([np.nan if c is None else c[0] for c in cis], dtype=float)
            hi = np.array([np.nan if c is None else c[1] for c in cis], dtype=float)
            ok = np.isfinite(vals) & np.isfinite(lo) & np.isfinite(hi)
            if ok.any():
                # clipped at 0: a Wilson bound at an accuracy of 1.0 can come out a rounding error below it
                yerr = np.maximum([vals[ok] - lo[ok], hi[ok] - vals[ok]], 0.0)
                ax.errorbar(pos[ok], vals[ok], yerr=yerr, fmt="none",
                            ecolor="black", elinewidth=0.7, capsize=1.5)
        for b, v in zip(bars, vals):
            if np.isfinite(v):
                ax.text(b.get_x() + b.get_width() / 2, v + 0.01, f"{v:.2f}", ha="center", va="bottom",
                        fontsize=6, rotation=90)
    ax.axhline(0.5, color="grey", linestyle="--", linewidth=1, label="chance")
    ax.set_xticks(x)
    ax.set_xticklabels(conds)
    ax.set_ylim(0, 1.12)
    ax.set_ylabel("triplet accuracy")


def _per(counts: Mapping[str, int]) -> str:
    values = sorted(set(counts.values())) or [0]
    return str(values[0]) if len(values) == 1 else f"{values[0]}-{values[-1]}"


def plot_accuracy(metrics: Mapping[str, Any], path: str, title: Optional[str] = None) -> None:
    """Grouped bar chart of triplet accuracy: conditions x embedders (``accuracy.png``), 95 % Wilson
    intervals as whiskers.

    With confounded triplets in ``metrics`` a second panel below shows their accuracy over every
    label condition (empty where none was built).
    """
    plt = _pyplot()
    conds = metrics["conditions"]
    series = accuracy_series_ci(metrics)
    conf = metrics.get("confounded")
    conf_conds = _series_source(metrics, True)[0] if conf else []
    panels = 2 if conf_conds else 1
    width_in = max(6.0, 1.6 * max(len(conds), len(conf_conds)) + 2)
    fig, axes = plt.subplots(panels, 1, figsize=(width_in, 4.2 if panels == 1 else 7.6), squeeze=False)
    ax = axes[0, 0]
    _bar_panel(ax, conds, series, whiskers=True)
    ax.set_title(title or f"triplet accuracy ({metrics.get('split', 'eval')} split, "
                          f"{_per(metrics.get('num_triplets', {}))} triplets per condition; bars: 95 % interval)")
    if panels == 2:
        cax = axes[1, 0]
        _bar_panel(cax, conf_conds, accuracy_series_ci(metrics, True), whiskers=True)
        cax.set_title(f"confounded triplets ({_per(conf['num_triplets'])} per condition; positive shares few, "
                      "negative many other labels; bars: 95 % interval)", fontsize=9)
        cax.legend(fontsize=7, ncol=min(3, len(series) + 1), loc="upper center", bbox_to_anchor=(0.5, -0.1))
    else:
        ax.legend(fontsize=7, ncol=min(3, len(series) + 1), loc="upper center", bbox_to_anchor=(0.5, -0.1))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_disentanglement(metrics: Mapping[str, Any], path: str, embedder: str = "model",
                         confounded: bool = False) -> bool:
    """Heat map of ``embedder``'s disentanglement matrix, numbers in the cells.

    ``confounded``: the matrix on the confounded triplets (``metrics["confounded"]``).

    Returns:
        False (and writes nothing) when that embedder has no matrix.
    """
    emb = _series_source(metrics, confounded)[1].get(embedder)
    if not emb or not emb.get("disentanglement"):
        return False
    m = emb["disentanglement"]
    acc = np.array(m["accuracy"], dtype=float)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.1 * len(m["columns"]) + 2.5, 0.8 * len(m["rows"]) + 1.8))
    im = ax.imshow(acc, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    for i in range(acc.shape[0]):
        for j in range(acc.shape[1]):
            ax.text(j, i, f"{acc[i, j]:.3f}", ha="center", va="center", fontsize=9,
                    color="black" if acc[i, j] > 0.6 else "white")
    ax.set_xticks(range(len(m["columns"])))
    ax.set_xticklabels(m["columns"])
    ax.set_yticks(range(len(m["rows"])))
    ax.set_yticklabels(m["rows"])
    ax.set_xlabel("measured in slice")
    ax.set_ylabel("triplets of condition")
    which = "confounded triplets" if confounded else "triplet accuracy"
    ax.set_title(f"disentanglement: {which} ({emb['label']}, {metrics.get('split', 'eval')} split)")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot_class_pairs(metrics: Mapping[str, Any], path: str, embedder: str = "model") -> bool:
    """One heat map per label condition: ``embedder``'s triplet accuracy by (anchor's class, negative's class).

    Returns:
        False (and writes nothing) when that embedder has no class-pair breakdown.
    """
    emb = metrics["embedders"].get(embedder)
    pairs = {c: v for c, v in (emb or {}).get("class_pairs", {}).items() if np.asarray(v["n"]).sum() > 0}
    if not pairs:
        return False
    plt = _pyplot()
    sizes = [len(v["classes"]) for v in pairs.values()]
    fig, axes = plt.subplots(1, len(pairs), figsize=(sum(0.75 * k + 2.0 for k in sizes), 0.75 * max(sizes) + 2.2),
                             squeeze=False)
    for col, (ax, (cond, v)) in enumerate(zip(axes[0], pairs.items())):
        acc = np.array(v["accuracy"], dtype=float)
        n = np.array(v["n"])
        im = ax.imshow(np.ma.masked_invalid(acc), cmap="viridis", vmin=0.0, vmax=1.0)
        for i in range(acc.shape[0]):
            for j in range(acc.shape[1]):
                if n[i, j]:
                    ax.text(j, i, f"{acc[i, j]:.2f}\n{n[i, j]}", ha="center", va="center", fontsize=7,
                            color="black" if acc[i, j] > 0.6 else "white")
        ax.set_xticks(range(len(v["classes"])))
        ax.set_xticklabels(v["classes"], rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(v["classes"])))
        ax.set_yticklabels(v["classes"], fontsize=8)
        ax.set_xlabel("negative's class")
        if col == 0:
            ax.set_ylabel("anchor's class")
        ax.set_title(cond)
    fig.colorbar(im, ax=list(axes[0]), fraction=0.03, pad=0.04)
    fig.suptitle(f"triplet accuracy by class pair ({emb['label']}, {metrics.get('split', 'eval')} split; "
                 "cell: accuracy, triplets)", fontsize=10)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return True


def _fmt(v: Any) -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.3f}"


def _table(header: List[str], rows: List[List[str]]) -> str:
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in rows])


def _accuracy_cells(metrics: Mapping[str, Any], confounded: bool = False) -> Tuple[List[str], List[List[str]]]:
    """``(series labels, rows)``: per condition, each series' accuracy with its 95 % interval, the
    significance mark and ``<`` (interval below chance), condition name first."""
    conds = _series_source(metrics, confounded)[0]
    series = accuracy_series_ci(metrics, confounded)
    keys = _series_keys(metrics, confounded)
    marks = significance_marks(metrics, confounded)
    rows = [[c] + [_fmt_ci(values[i], cis[i], marks.get((*key, c), "")) for key, (_, values, cis) in zip(keys, series)]
            for i, c in enumerate(conds)]
    return [label for label, _, _ in series], rows


def format_table(metrics: Mapping[str, Any]) -> str:
    """Plain-text tables: triplet accuracy with 95 % intervals and significance marks, then retrieval
    precision@k / mAP, then (when scored) the confounded triplets."""
    conds = metrics["conditions"]
    labels, acc_rows = _accuracy_cells(metrics)
    acc_rows = [row + [str(metrics["num_triplets"].get(c, 0))] for c, row in zip(conds, acc_rows)]
    out = [f"triplet accuracy ({metrics.get('split', 'eval')} split): accuracy [95 % Wilson interval], "
           "'<' = below chance",
           _table(["condition"] + labels + ["triplets"], acc_rows)]
    note = _marks_note(metrics)
    if note:
        out.append(note)
    k = metrics.get("k", 10)
    names = [c for c in conds if c != "track"]
    header = ["condition"] + [emb["label"] for emb in metrics["embedders"].values()]
    ret_rows = []
    for c in names:
        row = [c]
        for emb in metrics["embedders"].values():
            r = emb["retrieval"].get(c)
            row.append(f"{_fmt(r['precision_at_k'])} / {_fmt(r['map'])}" if r else "-")
        ret_rows.append(row)
    if ret_rows:
        out += ["", f"retrieval, precision@{k} / mAP, over {metrics.get('retrieval_tracks', '?')} tracks "
                    f"({metrics.get('segments_per_track', '?')} segments per track embedding)",
                _table(header, ret_rows)]
    if metrics.get("confounded"):
        out += ["", format_confounded_table(metrics)]
    return "\n".join(out)


def _fmt_ci(v: Any, ci: Optional[Tuple[float, float]], mark: str = "") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    text = f"{v:.3f}" if ci is None else f"{v:.3f} [{ci[0]:.2f}-{ci[1]:.2f}]"
    # a space where there is no mark keeps a right-aligned column's numbers in line
    return text + (mark or " ") + (" <" if ci is not None and ci[1] < 0.5 else "")


def format_confounded_table(metrics: Mapping[str, Any]) -> str:
    """The confounded triplets: accuracy with its 95 % interval per condition and series (``<`` marks an
    interval wholly below chance, ``*`` a significant difference from the model's slice on the same
    triplets), the triplets built and the anchors that allowed them, and how
    many other labels the negative and the positive share with the anchor on average (random set's
    means in brackets)."""
    conf = metrics["confounded"]
    conds = list(conf.get("num_triplets", {}))
    labels, cells = _accuracy_cells(metrics, True)
    sets = conf.get("sets", {})
    rows = []
    for i, c in enumerate(conds):
        st = sets.get(c, {})
        n_other = len(st.get("other_labels", ()))

        def share(key):
            v, r = st.get(f"{key}_shared_mean"), st.get(f"random_{key}_shared_mean")
            return "-" if v is None else f"{v:.2f}/{n_other}" + ("" if r is None else f" ({r:.2f})")

        rows.append(cells[i] + [str(conf["num_triplets"].get(c, 0)), str(st.get("anchors", "-")),
                                share("negative"), share("positive")])
    header = ["condition"] + labels + ["triplets", "anchors", "neg. shares", "pos. shares"]
    note = _marks_note(metrics, True)
    return "\n".join([
        f"confounded triplets ({metrics.get('split', 'eval')} split): accuracy [95 % interval], '<' = below chance; "
        "shares = mean other labels shared with the anchor (random triplets in brackets)",
        _table(header, rows)] + ([note] if note else []))


def write_triplet_correct(per_triplet: Mapping[str, Mapping[str, Any]], path: str) -> None:
    """``triplet_correct.csv`` (module notes) from the ``per_triplet`` of
    :func:`~disentangled_ml.evaluation.runner.evaluate_many`: ``set``, the triplets' own columns, then
    one 0/1 column per series (the union over the sets; empty where a set lacks that series)."""
    fields: List[str] = []
    series: List[str] = []
    for part in per_triplet.values():
        for t in part["triplets"]:
            fields += [k for k in t if k not in fields]
        series += [k for k in part["correct"] if k not in series]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["set"] + fields + series)
        for name, part in per_triplet.items():
            correct = part["correct"]
            for i, t in enumerate(part["triplets"]):
                w.writerow([name] + [t.get(k, "") for k in fields] +
                           [int(correct[k][i]) if k in correct else "" for k in series])
    os.replace(tmp, path)


def write_report(metrics: Mapping[str, Any], out_dir: str) -> Dict[str, str]:
    """Write ``metrics.json``, ``accuracy.png``, ``triplet_correct.csv`` (when ``metrics`` holds
    ``per_triplet``) and (when the model has them) ``disentanglement.png``,
    ``disentanglement_confounded.png`` and ``class_pairs.png``.

    Returns:
        ``{"metrics": path, "accuracy": path, "triplet_correct": path, "disentanglement": path,
        "disentanglement_confounded": path, "class_pairs": path}`` (all but the first two only when
        written).
    """
    os.makedirs(out_dir, exist_ok=True)
    paths = {"metrics": os.path.join(out_dir, "metrics.json"), "accuracy": os.path.join(out_dir, "accuracy.png")}
    write_metrics_json(metrics, paths["metrics"])
    if metrics.get(PER_TRIPLET):
        paths["triplet_correct"] = os.path.join(out_dir, "triplet_correct.csv")
        write_triplet_correct(metrics[PER_TRIPLET], paths["triplet_correct"])
    plot_accuracy(metrics, paths["accuracy"])
    first = next(iter(metrics["embedders"]))
    target = "model" if "model" in metrics["embedders"] else first
    dis = os.path.join(out_dir, "disentanglement.png")
    if plot_disentanglement(metrics, dis, target):
        paths["disentanglement"] = dis
    dis_conf = os.path.join(out_dir, "disentanglement_confounded.png")
    if metrics.get("confounded") and plot_disentanglement(metrics, dis_conf, target, confounded=True):
        paths["disentanglement_confounded"] = dis_conf
    pairs = os.path.join(out_dir, "class_pairs.png")
    if plot_class_pairs(metrics, pairs, target):
        paths["class_pairs"] = pairs
    return paths
