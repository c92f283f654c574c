"""disentangled_ml.condition_views: the one answer to "which part of the embedding does a condition use".

Fixed views are the config's slices, learned views the rows of RUN_DIR/masks.npy, and without
masks every condition is the whole vector; the evaluation, the export, the catalogue search,
the embedding model and the projector all take their views from it.
"""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from collections_for_tests import tiny_config, write_tracks
from disentangled_ml.condition_views import MASKS_FILE, ConditionViews, ConditionViewsError
from disentangled_ml.config import TRACK_CONDITION
from disentangled_ml.evaluation import metrics as M

DIM = 16
NAMES = ("genre", "mood", "instrument", "tempo")


def _config(mode="fixed"):
    return tiny_config(**{"conditions.embedding_dim": DIM, "model.mask_mode": mode})


def _masks(seed=0):
    """A learned mask matrix as dml train saves it: float32 [conditions + 1 track row, D]."""
    return np.random.default_rng(seed).random((len(NAMES) + 1, DIM)).astype(np.float32)


def _run_dir(tmp_path, mode, masks=None):
    run = tmp_path / f"run_{mode}"
    run.mkdir()
    _config(mode).to_json(str(run / "config.json"))
    if masks is not None:
        np.save(str(run / MASKS_FILE), masks)
    return str(run)


def _emb(n=5, seed=1):
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


# ---------------------------------------------------------------- the three modes


def test_fixed_views_are_the_config_slices():
    cfg = _config("fixed")
    views = ConditionViews.from_config(cfg)
    assert views.mode == "fixed" and views.is_sliced and views.names == NAMES
    assert dict(views.slices) == cfg.conditions.slices == {"genre": (0, 4), "mood": (4, 8), "instrument": (8, 12),
                                                           "tempo": (12, 16)}
    emb = _emb()
    for name, (start, stop) in cfg.conditions.slices.items():
        w = views.weight(name)
        assert w.dtype == np.float32 and w.shape == (DIM,)
        expected = np.zeros(DIM, np.float32)
        expected[start:stop] = 1
        np.testing.assert_array_equal(w, expected)
        assert views.view(name) == (start, stop)
        assert views.width(name) == stop - start
        np.testing.assert_array_equal(views.apply(emb, name), emb[:, start:stop])
    # a fixed run ignores whatever mask matrix comes along
    assert ConditionViews.from_config(cfg, _masks()).masks is None
    assert views.to_export_config() == {"conditions": {n: list(s) for n, s in cfg.conditions.slices.items()},
                                        "mask_mode": "fixed"}


def test_learned_views_are_the_masks_npy_rows(tmp_path):
    m = _masks()
    run = _run_dir(tmp_path, "learned", m)
    views = ConditionViews.from_run_dir(run)
    assert views.mode == "learned" and not views.is_sliced
    emb = _emb()
    for i, name in enumerate(NAMES):
        np.testing.assert_array_equal(views.weight(name), m[i])
        np.testing.assert_array_equal(views.view(name), m[i])
        assert views.width(name) == DIM
        np.testing.assert_array_equal(views.apply(emb, name), emb * m[i])
    assert views.masks.shape == (len(NAMES), DIM)  # the track row is not a condition's
    # the weight is a copy: the views cannot be changed through it
    views.weight("genre")[:] = 0
    np.testing.assert_array_equal(views.weight("genre"), m[0])
    # export config.json round trip (dml embed / similar and evaluation of an export read this)
    exported = json.loads(json.dumps(views.to_export_config()))
    assert exported["conditions"] == {n: [0, DIM] for n in NAMES} and exported["mask_mode"] == "learned"
    back = ConditionViews.from_export_config({"embedding_dim": DIM, **exported})
    for i, name in enumerate(NAMES):
        np.testing.assert_array_equal(back.weight(name), m[i])


def test_learned_views_need_the_mask_matrix(tmp_path):
    with pytest.raises(ConditionViewsError, match=MASKS_FILE):
        ConditionViews.from_run_dir(_run_dir(tmp_path, "learned"))
    with pytest.raises(ConditionViewsError, match="mask matrix"):
        ConditionViews.from_config(_config("learned"))
    with pytest.raises(ConditionViewsError, match=r"shape \(5, 15\)"):
        ConditionViews.from_config(_config("learned"), _masks()[:, :15])
    with pytest.raises(ConditionViewsError, match="no condition_masks entry for 'tempo'"):
        ConditionViews.from_export_config({"embedding_dim": DIM, "mask_mode": "learned",
                                           "conditions": {n: [0, DIM] for n in NAMES},
                                           "condition_masks": {n: [1.0] * DIM for n in NAMES[:3]}})


def test_none_views_are_the_whole_vector(tmp_path):
    views = ConditionViews.from_run_dir(_run_dir(tmp_path, "none"))  # no masks.npy needed
    assert views.mode == "none" and not views.is_sliced
    emb = _emb()
    for name in NAMES:
        np.testing.assert_array_equal(views.weight(name), np.ones(DIM, np.float32))
        assert views.view(name) is None and views.width(name) == DIM
        assert views.apply(emb, name) is emb
    assert views.to_export_config() == {"conditions": {n: [0, DIM] for n in NAMES}, "mask_mode": "none"}


def test_apply_is_the_metrics_projection():
    """apply(emb, c) is what the evaluation measures in (metrics.project of the metrics view), in emb's dtype."""
    emb = _emb(7).astype(np.float64)
    for mode in ("fixed", "learned", "none"):
        views = ConditionViews.from_config(_config(mode), _masks())
        for name in NAMES:
            np.testing.assert_array_equal(views.apply(emb, name), M.project(emb, views.view(name)), err_msg=mode)
    learned = ConditionViews.from_config(_config("learned"), _masks())
    assert learned.apply(_emb(), "mood").dtype == np.float32


def test_every_stage_takes_the_same_views():
    """The evaluation, the export (outputs and parity), the embedding model and the catalogue search agree."""
    from disentangled_ml.catalogue_search import Catalogue  # noqa: F401  (imports the module under its new name)
    from disentangled_ml.evaluation.runner import condition_views
    from disentangled_ml.export import parity
    from disentangled_ml.export.savedmodel import apply_heads, condition_heads
    from disentangled_ml.models.embedding import slice_outputs

    m, emb = _masks(), _emb()
    for mode in ("fixed", "learned", "none"):
        cfg = _config(mode)
        views = ConditionViews.from_config(cfg, m)
        scored, columns = condition_views(cfg, m)
        par = parity.condition_views(cfg, m)
        assert par.pop(TRACK_CONDITION) is None
        outputs = apply_heads(emb, condition_heads(cfg, m))
        sliced = slice_outputs(cfg, emb, m)
        for name in NAMES:
            for got in (scored[name], par[name]):
                if mode == "learned":
                    np.testing.assert_array_equal(got, views.view(name))
                else:
                    assert got == views.view(name), (mode, name)
            np.testing.assert_array_equal(outputs[name], views.apply(emb, name))
            np.testing.assert_array_equal(sliced[name], views.apply(emb, name))
        # without masks the disentanglement matrix still shows the nominal slices
        assert (columns == cfg.conditions.slices) if mode == "none" else (columns is scored)


def test_catalogue_search_measures_in_the_views(tmp_path):
    from disentangled_ml.catalogue_search import WHOLE, Catalogue

    m, emb = _masks(), _emb(6)
    for mode in ("fixed", "learned", "none"):
        views = ConditionViews.from_config(_config(mode), m)
        path = tmp_path / mode
        path.mkdir()
        with open(path / "config.json", "w") as f:
            json.dump({"embedding_dim": DIM, **views.to_export_config()}, f)
        np.save(str(path / "tracks.npy"), emb)
        (path / "tracks.csv").write_text("track_id,path,n_segments\n" + "".join(f"t{i},x,1\n" for i in range(6)))
        cat = Catalogue(str(path))
        assert cat.conditions == list(NAMES) + [WHOLE]
        for name in NAMES:
            np.testing.assert_array_equal(cat.project(emb, name), views.apply(emb, name))
            d = np.sqrt(((views.apply(emb, name).astype(np.float64) - views.apply(emb[:1], name)) ** 2).sum(1))
            got = cat.search(emb[0], condition=name, k=5, exclude=0)
            assert [i for i, _ in got] == list(np.argsort(d[1:], kind="stable")[:5] + 1), (mode, name)


# ---------------------------------------------------------------- the evaluation's numbers


def test_applying_views_reproduces_the_evaluation_accuracy(tmp_path):
    """A hand-made collection, embedder and triplets: evaluate()'s per-condition accuracy is the share of
    triplets ordered correctly in ConditionViews.apply's view, for every mask mode."""
    from disentangled_ml.evaluation.runner import evaluate

    tracks = write_tracks(str(tmp_path), n=6)
    cfg = _config("fixed")
    seg = cfg.frontend.segment_samples
    rng = np.random.default_rng(0)
    audio = {t.track_id: rng.standard_normal(3 * seg).astype(np.float32) for t in tracks}
    proj = rng.standard_normal((seg, DIM)).astype(np.float32) / np.sqrt(seg)

    def embed_one(crop):
        e = crop @ proj
        return e / np.linalg.norm(e)

    def embedder(crops):  # one row at a time: the same numbers whatever the batch
        return np.stack([embed_one(c) for c in crops])

    roles = ("anchor", "positive", "negative")
    triplets = []
    for cond in NAMES + (TRACK_CONDITION,):
        for _ in range(15):
            picked = rng.choice(len(tracks), 3, replace=False)
            starts = rng.choice([0, seg // 2, seg, 2 * seg], 3)
            triplets.append({"condition": cond, **{r: tracks[i].track_id for r, i in zip(roles, picked)},
                             **{f"{r}_start": int(s) for r, s in zip(roles, starts)}})

    def crop_emb(t, r):
        s = t[f"{r}_start"]
        return embed_one(audio[t[r]][s:s + seg])

    m = _masks()
    accuracies = {}
    for mode in ("fixed", "learned", "none"):
        run_cfg = _config(mode)
        res = evaluate(embedder, triplets, audio, tracks, run_cfg, masks=m, segments_per_track=2, k=2,
                       batch_size=4)["embedders"]["model"]["triplet_accuracy"]
        views = ConditionViews.from_config(run_cfg, m)
        for cond in NAMES:
            ts = [t for t in triplets if t["condition"] == cond]
            a, p, n = (views.apply(np.stack([crop_emb(t, r) for t in ts]).astype(np.float64), cond) for r in roles)
            expected = float(np.mean(((a - p) ** 2).sum(1) < ((a - n) ** 2).sum(1)))
            assert res[cond]["slice"] == expected, (mode, cond)
            assert res[cond]["n"] == 15
            if mode == "none":
                assert res[cond]["slice"] == res[cond]["whole"], cond
            accuracies[mode, cond] = expected
    # the example tells the modes apart: the views really differ
    assert len({v for (mode, _), v in accuracies.items()}) > 2
    assert any(accuracies["fixed", c] != accuracies["learned", c] for c in NAMES)


# ---------------------------------------------------------------- the projector


def _projector_tensors(log_dir):
    reader = tf.train.load_checkpoint(log_dir)
    with open(os.path.join(log_dir, "projector_config.pbtxt")) as f:
        pbtxt = f.read()
    keys = [line.split('"')[1] for line in pbtxt.splitlines() if "tensor_name" in line]
    return {k.split("/")[0]: reader.get_tensor(k) for k in keys}


def test_projector_writes_masked_views_for_learned_masks(tmp_path):
    from disentangled_ml.projector import write_projector

    m, emb = _masks(), _emb(6)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    meta = [{"track_id": f"t{i}"} for i in range(len(emb))]

    run = _run_dir(tmp_path, "learned", m)
    log_dir = os.path.join(run, "tensorboard", "projector")
    keys = write_projector(log_dir, emb, ConditionViews.from_run_dir(run), meta)
    assert list(keys) == ["whole", *NAMES]
    tensors = _projector_tensors(log_dir)
    assert set(tensors) == {"whole", *NAMES}
    np.testing.assert_array_equal(tensors["whole"], emb)
    for i, name in enumerate(NAMES):
        assert tensors[name].shape == (len(emb), DIM), name  # the masked whole vector, not a quarter-slice
        np.testing.assert_allclose(tensors[name], emb * m[i], rtol=0, atol=0)

    # without masks: the whole embedding, once
    run = _run_dir(tmp_path, "none")
    log_dir = os.path.join(run, "tensorboard", "projector")
    assert list(write_projector(log_dir, emb, ConditionViews.from_run_dir(run), meta)) == ["whole"]
    assert set(_projector_tensors(log_dir)) == {"whole"}

    # fixed: each condition's slice, as before (also from bare {condition: (start, stop)} slices)
    cfg = _config("fixed")
    for i, views in enumerate((ConditionViews.from_config(cfg), cfg.conditions.slices)):
        log_dir = str(tmp_path / f"fixed{i}")
        write_projector(log_dir, emb, views, meta)
        tensors = _projector_tensors(log_dir)
        assert set(tensors) == {"whole", *NAMES}
        for name, (start, stop) in cfg.conditions.slices.items():
            np.testing.assert_array_equal(tensors[name], emb[:, start:stop])
