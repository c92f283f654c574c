"""MaskedTripletLoss against a numpy reference, and its mining modes."""

import math

import numpy as np
import pytest
import tensorflow as tf

from disentangled_ml.config import Config, ConfigError
from disentangled_ml.losses import MaskedTripletLoss, build_triplet_loss

NAMES = ("genre", "mood")
D = 8
# rows: genre = dims 0-3, mood = dims 4-7, track = all
MASKS = np.array([[1, 1, 1, 1, 0, 0, 0, 0],
                  [0, 0, 0, 0, 1, 1, 1, 1],
                  [1, 1, 1, 1, 1, 1, 1, 1]], np.float32)


def reference(a, p, n, cond, masks, margin, lam):
    """Plain numpy version of the objective in docs/design.md."""
    m = masks[cond]
    d_ap = np.sqrt(((m * (a - p)) ** 2).sum(1))
    d_an = np.sqrt(((m * (a - n)) ** 2).sum(1))
    hinge = np.maximum(0.0, d_ap - d_an + margin)
    is_track = cond == masks.shape[0] - 1
    l_cond = hinge[~is_track].mean() if (~is_track).any() else 0.0
    l_track = hinge[is_track].mean() if is_track.any() else 0.0
    groups = masks.shape[0]
    per_loss = np.array([hinge[cond == g].mean() if (cond == g).any() else 0.0 for g in range(groups)])
    per_acc = np.array([(d_ap < d_an)[cond == g].mean() if (cond == g).any() else 0.0 for g in range(groups)])
    return l_cond + lam * l_track, hinge, per_loss, per_acc


def random_batch(b=12, seed=0):
    rng = np.random.default_rng(seed)
    a, p, n = (rng.normal(size=(b, D)).astype(np.float32) for _ in range(3))
    cond = np.array([0, 1, 2] * (b // 3), np.int32)
    return a, p, n, cond


def run(layer, a, p, n, cond, masks=MASKS, **kw):
    out = layer(tf.constant(a), tf.constant(p), tf.constant(n), tf.constant(cond), tf.constant(masks), **kw)
    return {k: v.numpy() for k, v in out.items()}


def test_matches_numpy_reference():
    a, p, n, cond = random_batch()
    layer = MaskedTripletLoss(NAMES, margin=0.3, track_weight=0.7)
    out = run(layer, a, p, n, cond)
    total, hinge, per_loss, per_acc = reference(a, p, n, cond, MASKS, 0.3, 0.7)
    assert out["loss"] == pytest.approx(total, rel=1e-5)
    assert out["triplet_loss"] == pytest.approx(total, rel=1e-5)
    np.testing.assert_allclose(out["per_triplet"], hinge, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["condition_loss"], per_loss, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["condition_accuracy"], per_acc)
    np.testing.assert_array_equal(out["condition_count"], [4, 4, 4])
    np.testing.assert_array_equal(out["weight"], np.ones(12))


def test_tiny_hand_computed_example():
    # one genre triplet in 2-d slices: d(a,p) = 1, d(a,n) = 3 on genre dims, margin 0.5
    a = np.zeros((1, D), np.float32)
    p = np.zeros((1, D), np.float32); p[0, 0] = 1.0
    n = np.zeros((1, D), np.float32); n[0, 1] = 3.0
    n[0, 5] = 100.0  # mood dims: ignored by the genre mask
    layer = MaskedTripletLoss(NAMES, margin=0.5, track_weight=0.5)
    out = run(layer, a, p, n, np.array([0], np.int32))
    assert out["loss"] == pytest.approx(0.0, abs=1e-6)  # max(0, 1 - 3 + 0.5)
    p[0, 0] = 3.2  # now 3.2 - 3 + 0.5 = 0.7
    out = run(layer, a, p, n, np.array([0], np.int32))
    assert out["loss"] == pytest.approx(0.7, rel=1e-5)
    assert out["condition_accuracy"][0] == 0.0


def test_accuracy_uses_the_condition_slice_and_track_uses_everything():
    # In the genre slice the positive is closer; in the mood slice and in the whole
    # space the negative is closer.
    a = np.zeros((1, D), np.float32)
    p = np.array([[0.1, 0, 0, 0, 5, 0, 0, 0]], np.float32)
    n = np.array([[1.0, 0, 0, 0, 0, 0, 0, 0]], np.float32)
    batch = (np.repeat(a, 3, 0), np.repeat(p, 3, 0), np.repeat(n, 3, 0), np.array([0, 1, 2], np.int32))
    out = run(MaskedTripletLoss(NAMES, margin=0.1), *batch)
    np.testing.assert_array_equal(out["correct"], [1.0, 0.0, 0.0])
    np.testing.assert_array_equal(out["condition_accuracy"], [1.0, 0.0, 0.0])
    whole = math.sqrt(0.1 ** 2 + 25) - 1.0 + 0.1
    np.testing.assert_allclose(out["per_triplet"], [0.0, 5.0 - 0.0 + 0.1, whole], rtol=1e-5)


def test_track_weight_zero_ignores_track_triplets_and_margin_raises_loss():
    a, p, n, cond = random_batch()
    base = run(MaskedTripletLoss(NAMES, margin=0.2, track_weight=0.0), a, p, n, cond)["loss"]
    n2 = n.copy()
    n2[cond == 2] = a[cond == 2] + 0.01  # make the track triplets maximally violated
    changed = run(MaskedTripletLoss(NAMES, margin=0.2, track_weight=0.0), a, p, n2, cond)["loss"]
    assert changed == pytest.approx(base, rel=1e-6)
    with_track = run(MaskedTripletLoss(NAMES, margin=0.2, track_weight=1.0), a, p, n2, cond)["loss"]
    assert with_track > base + 0.1
    bigger_margin = run(MaskedTripletLoss(NAMES, margin=1.0, track_weight=0.0), a, p, n, cond)["loss"]
    assert bigger_margin > base


def test_means_are_guarded_when_a_kind_is_absent():
    a, p, n, _ = random_batch(b=4)
    track_only = np.full(4, 2, np.int32)
    out = run(MaskedTripletLoss(NAMES, margin=0.2, track_weight=0.5), a, p, n, track_only)
    ref, *_ = reference(a, p, n, track_only, MASKS, 0.2, 0.5)
    assert np.isfinite(out["loss"]) and out["loss"] == pytest.approx(ref, rel=1e-5)
    np.testing.assert_array_equal(out["condition_count"], [0, 0, 4])
    np.testing.assert_array_equal(out["condition_loss"][:2], [0, 0])
    cond_only = np.zeros(4, np.int32)
    out = run(MaskedTripletLoss(NAMES, margin=0.2, track_weight=0.5), a, p, n, cond_only)
    ref, *_ = reference(a, p, n, cond_only, MASKS, 0.2, 0.5)
    assert out["loss"] == pytest.approx(ref, rel=1e-5)


def test_gradient_is_finite_when_anchor_equals_positive():
    a = tf.Variable(np.ones((2, D), np.float32))
    layer = MaskedTripletLoss(NAMES, margin=0.1)
    with tf.GradientTape() as tape:
        out = layer(a, tf.identity(a), a + 1.0, tf.constant([0, 2]), tf.constant(MASKS))
    grad = tape.gradient(out["loss"], a).numpy()
    assert np.all(np.isfinite(grad))


def test_embed_norm_penalty_added_only_with_raw_embeddings():
    a, p, n, cond = random_batch()
    raw = np.full((36, D), 2.0, np.float32)  # every row has norm sqrt(8 * 4)
    layer = MaskedTripletLoss(NAMES, margin=0.2, embed_norm=0.01)
    plain = run(layer, a, p, n, cond)
    pen = run(layer, a, p, n, cond, raw_embeddings=tf.constant(raw))
    assert pen["loss"] == pytest.approx(plain["loss"] + 0.01 * math.sqrt(32.0), rel=1e-5)
    assert pen["triplet_loss"] == pytest.approx(plain["loss"], rel=1e-6)


def test_batch_hard_keeps_the_hardest_half_of_each_condition():
    a, p, n, cond = random_batch(b=12, seed=3)
    layer = MaskedTripletLoss(NAMES, margin=2.0, track_weight=1.0, mining="batch_hard", hard_fraction=0.5)
    out = run(layer, a, p, n, cond, training=True)
    hinge = out["per_triplet"]
    for g in range(3):
        idx = np.flatnonzero(cond == g)
        kept = idx[out["weight"][idx] == 1]
        assert len(kept) == 2  # ceil(0.5 * 4)
        assert set(kept) == set(idx[np.argsort(-hinge[idx])[:2]])
    mined_cond = hinge[(out["weight"] == 1) & (cond < 2)].mean()
    mined_track = hinge[(out["weight"] == 1) & (cond == 2)].mean()
    assert out["loss"] == pytest.approx(mined_cond + mined_track, rel=1e-5)
    # evaluation scores every triplet
    assert np.all(run(layer, a, p, n, cond, training=False)["weight"] == 1)


def test_semi_hard_selection_and_fallback():
    e = np.eye(D, dtype=np.float32)
    a = np.zeros((4, D), np.float32)
    # genre (cond 0): d_ap = 1; negatives at 1.05 (semi-hard), 3 (easy)
    # mood (cond 1): d_ap = 1; negatives at 0.5 (hard) and 3 (easy): no semi-hard -> active only
    p = np.stack([e[0], e[1], e[4], e[5]])
    n = np.stack([1.05 * e[2], 3 * e[3], 0.5 * e[6], 3 * e[7]])
    cond = np.array([0, 0, 1, 1], np.int32)
    layer = MaskedTripletLoss(NAMES, margin=0.2, mining="semi_hard")
    out = run(layer, a, p, n, cond, training=True)
    np.testing.assert_array_equal(out["weight"], [1, 0, 1, 0])
    assert out["loss"] == pytest.approx(((1 - 1.05 + 0.2) + (1 - 0.5 + 0.2)) / 2, rel=1e-5)


def test_bad_condition_index_is_reported():
    a, p, n, _ = random_batch(b=3)
    with pytest.raises(tf.errors.InvalidArgumentError, match="condition index"):
        run(MaskedTripletLoss(NAMES), a, p, n, np.array([0, 1, 3], np.int32))


def test_get_config_round_trip_and_validation():
    layer = MaskedTripletLoss(NAMES, margin=0.25, track_weight=0.3, mining="semi_hard", embed_norm=0.01)
    config = layer.get_config()
    assert config["num_conditions"] == 2 and config["names"] == list(NAMES)
    clone = MaskedTripletLoss.from_config(config)
    assert clone.get_config() == config
    a, p, n, cond = random_batch()
    assert run(clone, a, p, n, cond)["loss"] == pytest.approx(run(layer, a, p, n, cond)["loss"])
    with pytest.raises(ConfigError, match="num_conditions"):
        MaskedTripletLoss.from_config({**config, "num_conditions": 3})
    with pytest.raises(ConfigError, match="margin"):
        MaskedTripletLoss(NAMES, margin=-1)
    with pytest.raises(ConfigError, match="data.mining"):
        MaskedTripletLoss(NAMES, mining="hardest")
    with pytest.raises(ConfigError, match="track"):
        MaskedTripletLoss(("genre", "track"))


def test_build_from_config():
    cfg = Config().replace(**{"loss.margin": 0.3, "loss.track_weight": 0.2, "data.mining": "batch_hard"})
    layer = build_triplet_loss(cfg)
    assert (layer.margin, layer.track_weight, layer.mining) == (0.3, 0.2, "batch_hard")
    assert layer.names == cfg.conditions.names and layer.embed_norm == 0.0  # fixed masks: no CSN penalty
    learned = build_triplet_loss(cfg.replace(**{"model.mask_mode": "learned"}))
    assert learned.embed_norm == cfg.loss.embed_norm


# ----------------------------------------------------------------------------- in-batch mining

def in_batch_reference(emb, masks, pos, neg, margin, mode, temperature=0.05):
    """Brute-force loops over every (anchor, positive, negative) of every group."""
    losses, present = [], []
    for g in range(masks.shape[0]):
        d = np.sqrt((((emb[:, None, :] - emb[None, :, :]) * masks[g]) ** 2).sum(-1))
        hinges, hard, contrastive = [], [], []
        for a in range(len(emb)):
            ps, ns = np.flatnonzero(pos[g, a]), np.flatnonzero(neg[g, a])
            if len(ps) and len(ns):
                hinges += [max(0.0, d[a, p] - d[a, n] + margin) for p in ps for n in ns]
                hard.append(max(0.0, d[a, ps].max() - d[a, ns].min() + margin))
                # supervised contrastive: -mean_p log softmax over the anchor's candidates
                cand = np.union1d(ps, ns)
                z = -d[a] ** 2 / temperature
                log_norm = np.log(np.sum(np.exp(z[cand].astype(np.float64))))
                contrastive.append(float(np.mean([log_norm - z[p] for p in ps])))
        present.append(float(bool(hard)))
        if mode == "in_batch_contrastive":
            losses.append(float(np.mean(contrastive)) if contrastive else 0.0)
        elif mode == "in_batch_all":
            active = [h for h in hinges if h > 0]
            losses.append(sum(active) / max(len(active), 1))
        else:
            losses.append(float(np.mean(hard)) if hard else 0.0)
    return np.array(losses), np.array(present)


@pytest.mark.parametrize("mode", ["in_batch_all", "in_batch_hard", "in_batch_contrastive"])
def test_in_batch_loss_matches_brute_force(mode):
    rng = np.random.default_rng(3)
    n = 12
    emb = rng.normal(size=(n, D)).astype(np.float32)
    pos = rng.random((3, n, n)) < 0.3
    neg = rng.random((3, n, n)) < 0.4
    pos[1] = False  # mood: no valid triplet in this batch
    layer = MaskedTripletLoss(NAMES, margin=0.5, mining=mode)
    loss, present = layer.in_batch_loss(tf.constant(emb), tf.constant(MASKS), tf.constant(pos), tf.constant(neg))
    ref_loss, ref_present = in_batch_reference(emb, MASKS, pos, neg, 0.5, mode)
    np.testing.assert_allclose(loss.numpy(), ref_loss, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(present.numpy(), ref_present)
    assert ref_present.tolist() == [1.0, 0.0, 1.0] and ref_loss[0] > 0


@pytest.mark.parametrize("mode", ["in_batch_all", "in_batch_hard", "in_batch_contrastive"])
def test_in_batch_objective_averages_present_conditions_and_weights_track(mode):
    a, p, n, cond = random_batch(b=6, seed=4)
    rng = np.random.default_rng(5)
    pos = rng.random((3, 18, 18)) < 0.3
    neg = rng.random((3, 18, 18)) < 0.5
    layer = MaskedTripletLoss(NAMES, margin=0.4, track_weight=0.25, mining=mode)
    out = run(layer, a, p, n, cond, pairs=(tf.constant(pos), tf.constant(neg)), training=True)
    g, present = in_batch_reference(np.concatenate([a, p, n]), MASKS, pos, neg, 0.4, mode)
    assert present.all()
    assert out["triplet_loss"] == pytest.approx(g[:2].mean() + 0.25 * g[2], rel=1e-4)
    # metrics still describe the sampled triplets
    _, hinge, per_loss, _ = reference(a, p, n, cond, MASKS, 0.4, 0.25)
    np.testing.assert_allclose(out["condition_loss"], per_loss, rtol=1e-5, atol=1e-6)
    # evaluation ignores in-batch mining
    ev = run(layer, a, p, n, cond, pairs=(tf.constant(pos), tf.constant(neg)), training=False)
    assert ev["triplet_loss"] == pytest.approx(reference(a, p, n, cond, MASKS, 0.4, 0.25)[0], rel=1e-5)
    # without pair masks (a batch with no crop labels) it scores the sampled triplets
    no_pairs = run(layer, a, p, n, cond, training=True)
    assert no_pairs["triplet_loss"] == pytest.approx(ev["triplet_loss"], rel=1e-6)


@pytest.mark.parametrize("mode", ["in_batch_all", "in_batch_contrastive"])
def test_in_batch_gradient_is_finite_for_identical_crops(mode):
    emb = tf.Variable(np.ones((6, D), np.float32))
    pos = np.ones((3, 6, 6), bool)
    neg = np.ones((3, 6, 6), bool)
    layer = MaskedTripletLoss(NAMES, mining=mode)
    with tf.GradientTape() as tape:
        loss, _ = layer.in_batch_loss(emb, tf.constant(MASKS), tf.constant(pos), tf.constant(neg))
        total = tf.reduce_sum(loss)
    assert np.isfinite(tape.gradient(total, emb).numpy()).all()


def test_contrastive_mode_is_stable_at_a_small_temperature_and_pulls_positives_in():
    """Far-apart crops at temperature 0.001 give logits of -1e3 and more: the shifted log-sum-exp keeps
    the loss and its gradient finite, and one gradient step brings an anchor's positive closer."""
    rng = np.random.default_rng(7)
    emb = tf.Variable(rng.normal(scale=3.0, size=(8, D)).astype(np.float32))
    pos = np.zeros((3, 8, 8), bool)
    neg = np.zeros((3, 8, 8), bool)
    pos[:, 0, 1] = True
    neg[:, 0, 2:] = True
    layer = MaskedTripletLoss(NAMES, mining="in_batch_contrastive", temperature=0.001)
    with tf.GradientTape() as tape:
        loss, present = layer.in_batch_loss(emb, tf.constant(MASKS), tf.constant(pos), tf.constant(neg))
        total = tf.reduce_sum(loss)
    grad = tape.gradient(total, emb).numpy()
    assert np.isfinite(loss.numpy()).all() and np.isfinite(grad).all() and present.numpy().tolist() == [1.0] * 3
    before = np.linalg.norm(emb.numpy()[0] - emb.numpy()[1])
    moved = emb.numpy() - 1e-3 * grad / np.abs(grad).max()  # a small step along the gradient
    assert np.linalg.norm(moved[0] - moved[1]) < before


def test_temperature_is_validated_and_serialised():
    with pytest.raises(ConfigError, match="temperature"):
        MaskedTripletLoss(NAMES, mining="in_batch_contrastive", temperature=0.0)
    layer = MaskedTripletLoss(NAMES, mining="in_batch_contrastive", temperature=0.2)
    assert MaskedTripletLoss.from_config(layer.get_config()).temperature == 0.2
    assert build_triplet_loss(Config().replace(**{"data.mining": "in_batch_contrastive",
                                                  "loss.temperature": 0.3})).temperature == 0.3
