"""Is there more mode in the harmony branch's input than fixed triad templates read? A learned probe.

    python benchmarks/mode_headroom_probe.py SYNTH_DIR [N_TRACKS] >> benchmarks/results/mode_headroom_probe.jsonl

Per 3 s crop, each frame's pitch-class profile (the harmony branch's own folding and normalisation) is
matched, in its best transposition as :class:`~disentangled_ml.models.harmony.CircularTemplates`
does, against eight fixed templates: major, minor, diminished and augmented triads, dominant and
minor sevenths, the major scale and the harmonic minor scale. The matches are pooled over the crop's
frames (mean, max and the mean of the top quarter), 24 features a crop. Reference, on the same
crops: the fixed major-against-minor triad probe of ``mode_filter_probe.py`` (``none``).

A logistic regression (scikit-learn, standardised features) learns the mode from the crops of the
first 75 % of the tracks and is scored on the crops of the others (4 random crops a track, seed 0),
so the figure is on tracks it never saw, as a test split is. A probe far above the fixed one says
the features hold more than the triads and the network has room to learn it; a probe at the fixed
one's level says the 3 s crop's pitch classes are the limit.
"""
import json, sys
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from _common import mode_probe_crops, unit_profile as norm  # benchmarks/ is the script's directory
from disentangled_ml.config import Config
from disentangled_ml.models.harmony import PitchClassProfile

coll = sys.argv[1]; n_tracks = int(sys.argv[2]) if len(sys.argv) > 2 else 400
fe = Config().frontend
F = PitchClassProfile.from_frontend(fe)._folding
def tpl(*cls):
    t = np.zeros(12); t[list(cls)] = 1; return t
TEMPLATES = {"major": tpl(0, 4, 7), "minor": tpl(0, 3, 7), "dim": tpl(0, 3, 6), "aug": tpl(0, 4, 8),
             "dom7": tpl(0, 4, 7, 10), "min7": tpl(0, 3, 7, 10), "major_scale": tpl(0, 2, 4, 5, 7, 9, 11),
             "harmonic_minor_scale": tpl(0, 2, 3, 5, 7, 8, 11)}
ROT = {k: np.stack([np.roll(norm(t), r) for r in range(12)]) for k, t in TEMPLATES.items()}
X, y, track, fixed = [], [], [], []
for i, major, bands in mode_probe_crops(coll, n_tracks, fe):
    prof = norm(bands @ F)  # [T, 12]
    m = {k: (prof @ R.T).max(-1) for k, R in ROT.items()}  # [T] each
    feats = []
    for v in m.values():
        top = np.sort(v)[-max(1, len(v) // 4):]
        feats += [v.mean(), v.max(), top.mean()]
    X.append(feats); y.append(major); track.append(i)
    fixed.append((m["major"].mean() > m["minor"].mean()) == major)
X, y, track, fixed = np.array(X), np.array(y), np.array(track), np.array(fixed)
test = track >= int(0.75 * (track.max() + 1))
clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0)).fit(X[~test], y[~test])
learned = float((clf.predict(X[test]) == y[test]).mean())


def triplet_accuracy_1d(score, label, trk, n=20000, seed=1):
    """Mode triplets among the held-out crops, scored on a 1-D embedding (the probe's score): anchor and
    positive of one mode from two different tracks, the negative of the other mode; right when
    |a - p| < |a - n|. What the evaluation's mode-only triplets ask, with the probe as the embedding."""
    r = np.random.default_rng(seed)
    idx = np.arange(len(score)); right = 0
    for _ in range(n):
        a = r.choice(idx)
        pos = idx[(label == label[a]) & (trk != trk[a])]; neg = idx[label != label[a]]
        p_, n_ = r.choice(pos), r.choice(neg)
        right += abs(score[a] - score[p_]) < abs(score[a] - score[n_])
    return right / n


s_test = clf.decision_function(X[test])
print(json.dumps({"collection": coll, "train_crops": int((~test).sum()), "test_crops": int(test.sum()),
                  "fixed_triads_test": float(fixed[test].mean()), "learned_probe_test": learned,
                  "learned_probe_train": float((clf.predict(X[~test]) == y[~test]).mean()),
                  "learned_probe_as_1d_embedding_triplet_accuracy": triplet_accuracy_1d(s_test, y[test], track[test])}))
