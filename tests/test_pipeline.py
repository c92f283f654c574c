"""The tf.data training pipeline and the pool miner: rule validity, overlap, determinism, bad files."""

import numpy as np
import pytest
import tensorflow as tf

from disentangled_ml.config import ConfigError
from disentangled_ml.data.labels import LabelTables
from disentangled_ml.data.manifest import Track
from disentangled_ml.data.mining import mine_triplets
from disentangled_ml.data.pipeline import DecodeStats, training_dataset
from disentangled_ml.features import log_mel
from disentangled_ml.pair_masks import batch_pair_masks, track_min_shift
from collections_for_tests import tiny_config, write_tracks


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    root = tmp_path_factory.mktemp("collection")
    cfg = tiny_config()
    tracks = write_tracks(str(root))
    return tracks, LabelTables.from_tracks(tracks, cfg), cfg


def _similar(tables, cond, i, j, cfg):
    name = tables.conditions[cond]
    if name == "tempo":
        d = abs(tables.tempo[i] - tables.tempo[j])
        return d <= cfg.conditions.tempo_positive_bpm, d > cfg.conditions.tempo_negative_bpm
    shared = bool((tables.classes[cond][i] & tables.classes[cond][j]).any())
    return shared, not shared


def test_mined_triplets_obey_rules(collection):
    tracks, tables, cfg = collection
    n = len(tracks)
    known = tables.known
    num_frames = np.full(n, 1 + (int(2.5 * 8000) - 256) // 128, np.int32)
    trip = mine_triplets(tf.constant([1, 2]), [tf.constant(m) for m in tables.classes], tf.constant(tables.tempo),
                         tf.range(n), tf.constant(num_frames), 2000, tf.constant([0.2] * 5), cfg)
    trip = {k: v.numpy() for k, v in trip.items()}
    assert trip["valid"].all()
    seg = cfg.frontend.num_frames
    counts = np.bincount(trip["condition"], minlength=5)
    assert (counts > 200).all(), counts  # every condition and track drawn
    for c, a, p, ng, fa, fp, fn in zip(trip["condition"], trip["anchor"], trip["positive"], trip["negative"],
                                       trip["anchor_frame"], trip["positive_frame"], trip["negative_frame"]):
        for f in (fa, fp, fn):
            assert 0 <= f <= num_frames[0] - seg
        assert ng != a
        if c == 4:  # track triplet: same track, crops overlap <= 50 %
            assert p == a
            overlap = max(0, seg - abs(int(fa) - int(fp))) / seg
            assert overlap <= 0.5
        else:
            assert p != a
            assert known[a, c] and known[p, c] and known[ng, c]
            sim_p, _ = _similar(tables, c, a, p, cfg)
            _, dis_n = _similar(tables, c, a, ng, cfg)
            assert sim_p and dis_n, (c, a, p, ng)


def test_class_balanced_sampling_evens_out_classes(collection):
    tracks, tables, cfg = collection
    # make genre very unbalanced: 10 rock vs 2 jazz by relabelling in a copy
    m = np.zeros((len(tracks), 2), bool)
    m[:10, 0] = True
    m[10:, 1] = True
    classes = [tf.constant(m)] + [tf.constant(x) for x in tables.classes[1:]]
    nf = tf.fill([len(tracks)], 50)
    for balanced, expect_jazz in ((True, 0.5), (False, 2 / 12)):
        c = cfg.replace(**{"data.class_balanced": balanced})
        trip = mine_triplets(tf.constant([3, 4]), classes, tf.constant(tables.tempo), tf.range(len(tracks)), nf,
                             4000, tf.constant([1.0, 0, 0, 0, 0]), c)
        share = float(np.mean(trip["anchor"].numpy() >= 10))
        assert abs(share - expect_jazz) < 0.05, (balanced, share)


def test_unknown_labels_never_used(collection):
    tracks, tables, cfg = collection
    mood = tables.conditions.index("mood")
    unknown = {i for i, t in enumerate(tracks) if not t.labels["mood"]}
    assert unknown
    trip = mine_triplets(tf.constant([5, 6]), [tf.constant(m) for m in tables.classes], tf.constant(tables.tempo),
                         tf.range(len(tracks)), tf.fill([len(tracks)], 50), 1000,
                         tf.constant([0, 1.0, 0, 0, 0]), cfg)
    used = set(trip["anchor"].numpy()) | set(trip["positive"].numpy()) | set(trip["negative"].numpy())
    assert (trip["condition"].numpy() == mood).all()
    assert not (used & unknown)


def _take(ds, n):
    return [{k: v.numpy() for k, v in x.items()} for x in ds.take(n)]


def test_training_dataset_shapes_crops_and_determinism(collection):
    tracks, tables, cfg = collection
    rows = list(range(len(tracks)))
    a = _take(training_dataset(tracks, tables, rows, cfg, seed=7), 5)
    b = _take(training_dataset(tracks, tables, rows, cfg, seed=7), 5)
    c = _take(training_dataset(tracks, tables, rows, cfg, seed=8), 5)
    f, m = cfg.frontend.num_frames, cfg.frontend.n_bands
    for x in a:
        assert x["anchor"].shape == (8, f, m) and x["condition"].shape == (8,)
        assert x["positive"].dtype == np.float32 and np.isfinite(x["negative"]).all()
    for x, y in zip(a, b):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    assert any(not np.array_equal(x["anchor"], y["anchor"]) for x, y in zip(a, c))


def test_crop_of_excerpt_mel_equals_mel_of_waveform_crop(collection):
    """The pipeline slices crops out of the excerpt's log-mel; that must equal the crop's own log-mel.

    The pitch bands' longer windows reach past a crop's ends, where the crop alone has zeros:
    there only the frames whose whole pitch window lies inside the crop must agree."""
    _, _, cfg = collection
    fe = cfg.frontend
    assert fe.n_pitch_bands > 0
    y = np.random.default_rng(0).standard_normal(3 * fe.sample_rate).astype(np.float32) * 0.1
    whole = log_mel(y[None], fe).numpy()[0]
    start = 7
    crop = y[start * fe.hop_length: start * fe.hop_length + fe.segment_samples]
    of_crop = log_mel(crop[None], fe).numpy()[0]
    from_excerpt = whole[start:start + fe.num_frames]
    np.testing.assert_allclose(from_excerpt[:, :fe.n_mels], of_crop[:, :fe.n_mels], rtol=1e-5, atol=1e-5)
    edge = -(-(fe.pitch_n_fft - fe.n_fft) // 2 // fe.hop_length)  # frames whose pitch window overhangs
    np.testing.assert_allclose(from_excerpt[edge:-edge, fe.n_mels:], of_crop[edge:-edge, fe.n_mels:],
                               rtol=1e-5, atol=1e-5)


def test_bad_file_at_train_time_is_skipped_and_counted(collection, tmp_path):
    tracks, tables, cfg = collection
    broken = list(tracks)
    bad = tmp_path / "broken.wav"
    bad.write_bytes(open(tracks[0].path, "rb").read()[:30])  # truncated inside the header
    broken[0] = Track(path=str(bad), track_id=tracks[0].track_id, labels=tracks[0].labels, tempo=tracks[0].tempo,
                      info=dict(tracks[0].info))
    stats = DecodeStats()
    batches = _take(training_dataset(broken, tables, list(range(len(broken))), cfg, stats=stats), 3)
    assert len(batches) == 3
    assert stats.skipped == 1 and stats.decoded.numpy() == len(tracks) - 1


def test_config_errors(collection):
    tracks, tables, cfg = collection
    with pytest.raises(ConfigError, match="excerpt_seconds"):
        training_dataset(tracks, tables, [0, 1, 2], cfg.replace(**{"data.excerpt_seconds": 1.2}))
    with pytest.raises(ConfigError, match="cannot form triplets"):
        training_dataset(tracks, tables, [0], cfg)


def test_batch_pair_masks_follow_the_mining_rules(collection):
    """Every sampled triplet is among the in-batch pairs, and every in-batch pair obeys the rules."""
    tracks, tables, cfg = collection
    rows = list(range(len(tracks)))
    seg = cfg.frontend.num_frames
    min_shift = track_min_shift(cfg)
    for x in training_dataset(tracks, tables, rows, cfg, seed=3).take(3):
        pos, neg = (m.numpy() for m in batch_pair_masks(x, cfg))
        b = x["anchor"].shape[0]
        n_cond = len(cfg.conditions.names)
        assert pos.shape == neg.shape == (n_cond + 1, 3 * b, 3 * b)
        cond = x["condition"].numpy()
        for i, c in enumerate(cond):
            assert pos[c, i, b + i] and neg[c, i, 2 * b + i], (c, i)
        track = np.transpose(x["crop_track"].numpy()).reshape(-1)
        excerpt = np.transpose(x["crop_excerpt"].numpy()).reshape(-1)
        frame = np.transpose(x["crop_frame"].numpy()).reshape(-1)
        # the crop labels describe the crops: same excerpt and start -> identical mel
        mel = np.concatenate([x[r].numpy() for r in ("anchor", "positive", "negative")])
        for i in range(3 * b):
            for j in range(3 * b):
                if excerpt[i] == excerpt[j] and frame[i] == frame[j]:
                    np.testing.assert_array_equal(mel[i], mel[j])
                for c in range(n_cond):
                    if pos[c, i, j] or neg[c, i, j]:
                        assert track[i] != track[j]
                        sim, dis = _similar(tables, c, track[i], track[j], cfg)
                        assert (sim if pos[c, i, j] else dis), (c, i, j)
                if pos[n_cond, i, j]:
                    assert excerpt[i] == excerpt[j] and abs(frame[i] - frame[j]) >= min_shift
                    assert max(0, seg - abs(frame[i] - frame[j])) / seg <= cfg.data.max_track_overlap
                assert neg[n_cond, i, j] == (track[i] != track[j])
        assert pos[n_cond].sum() > b  # more track pairs than the sampled ones


def test_batch_pair_masks_name_missing_labels(collection):
    _, _, cfg = collection
    with pytest.raises(ValueError, match="crop labels"):
        batch_pair_masks({"anchor": tf.zeros([2, 3, 4])}, cfg)


@pytest.mark.parametrize("mode", ["in_batch_all", "in_batch_hard"])
def test_model_trains_on_in_batch_triplets_of_the_pipeline(collection, mode):
    from disentangled_ml.models import build_triplet_model

    tracks, tables, cfg = collection
    cfg = cfg.replace(**{"data.mining": mode, "model.width": 4, "model.backbone": "plain"})
    model = build_triplet_model(cfg)
    ds = training_dataset(tracks, tables, list(range(len(tracks))), cfg, seed=5)
    x = next(iter(ds))
    out = model.triplet_outputs(x, training=True)
    stacked = tf.concat([x["anchor"], x["positive"], x["negative"]], axis=0)
    emb = model.embedding_model(stacked, training=True)["embedding"]
    group, present = model.triplet_loss.in_batch_loss(emb, model.condition_masks.mask_matrix(),
                                                      *batch_pair_masks(x, cfg))
    group, present = group.numpy(), present.numpy()
    n = len(cfg.conditions.names)
    expected = (group[:n] * present[:n]).sum() / present[:n].sum() + cfg.loss.track_weight * group[n]
    assert float(out["triplet_loss"]) == pytest.approx(expected, rel=1e-4)
    hist = model.fit(ds, steps_per_epoch=2, epochs=1, verbose=0).history
    assert np.isfinite(hist["loss"][0])


def test_auto_cache_uses_memory_only_when_the_split_fits(collection, monkeypatch, caplog):
    from disentangled_ml.data import pipeline

    tracks, tables, cfg = collection
    rows = list(range(len(tracks)))
    # tiny tracks: 3 s at 8 kHz, int16
    assert pipeline.decoded_bytes(tracks, rows, cfg) == pytest.approx(len(tracks) * 3 * 8000 * 2, rel=0.01)
    assert cfg.data.cache == "auto" and pipeline.resolve_cache(tracks, rows, cfg) == "memory"
    monkeypatch.setattr(pipeline, "physical_memory_bytes", lambda: 100_000)  # 100 kB of "RAM"
    with caplog.at_level("WARNING"):
        assert pipeline.resolve_cache(tracks, rows, cfg) == "none"
    assert "data.cache_memory_fraction" in caplog.text and "--cache-audio" in caplog.text
    assert pipeline.resolve_cache(tracks, rows, cfg.replace(**{"data.cache": "memory"})) == "memory"
    # without a cache the stream is still the same for a seed: with nothing to cache, the pipeline
    # computes the log-mel per excerpt, as it does when caching decoded audio (data.cache_features=False)
    a = _take(training_dataset(tracks, tables, rows, cfg, seed=2), 2)
    b = _take(training_dataset(tracks, tables, rows, cfg.replace(**{"data.cache": "memory",
                                                                   "data.cache_features": False}), seed=2), 2)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["anchor"], y["anchor"])
    with pytest.raises(ConfigError, match="data.cache_memory_fraction"):
        cfg.replace(**{"data.cache_memory_fraction": 0})
