"""Fixed-template mode probe: how well does a per-frame pitch-class profile (the harmony branch's input)
tell major from minor crops, with and without a time filter of the pitch bands before folding?

    python benchmarks/mode_filter_probe.py SYNTH_DIR N_TRACKS >> benchmarks/results/mode_filter_probe.jsonl

Filters: none; min over k frames (erosion); median over k frames (the harmonic part of librosa's
HPSS, Fitzgerald 2010; scipy's filters, which librosa.decompose.hpss also uses). Scoring: each
frame's profile (folded with the harmony branch's own matrix, zero mean, unit length) against a
major and a minor triad template in its best transposition, averaged over the 3 s crop; the crop is
right when the larger score is its track's mode. Four random crops a track, seed 0. A fixed probe,
no training: a filter that does not raise it is not worth a full run.
"""
import sys, csv, os, json, numpy as np, soundfile as sf, librosa, scipy.ndimage as ndi
from disentangled_ml.config import Config
from disentangled_ml.features import log_mel
from disentangled_ml.models.harmony import PitchClassProfile
from disentangled_ml.synth import MOOD_FACTORS
coll, n_tracks = sys.argv[1], int(sys.argv[2])
cfg = Config(); fe = cfg.frontend
F = PitchClassProfile.from_frontend(fe)._folding
rows = list(csv.DictReader(open(f"{coll}/manifest.csv")))[:n_tracks]
maj = np.zeros(12); maj[[0, 4, 7]] = 1; mi = np.zeros(12); mi[[0, 3, 7]] = 1
def norm(p):
    p = p - p.mean(-1, keepdims=True); return p / np.sqrt((p * p).sum(-1, keepdims=True) + 1e-6)
def score(p, t):
    t = norm(t); rots = np.stack([np.roll(t, r) for r in range(12)]); return (p @ rots.T).max(-1)
filters = {"none": lambda x: x}
for k in (5, 9, 17):
    filters[f"min{k}"] = lambda x, k=k: ndi.minimum_filter1d(x, k, axis=0, mode="nearest")
    filters[f"median{k}"] = lambda x, k=k: ndi.median_filter(x, size=(k, 1), mode="nearest")
rng = np.random.default_rng(0); res = {k: [] for k in filters}
for r in rows:
    y, sr = sf.read(os.path.join(coll, r["path"]), dtype="float32", always_2d=True); y = y.mean(1)
    if sr != fe.sample_rate: y = librosa.resample(y, orig_sr=sr, target_sr=fe.sample_rate)
    major = MOOD_FACTORS[r["mood"]][0] == "major"
    for _ in range(4):
        s = rng.integers(0, len(y) - fe.segment_samples)
        x = log_mel(y[s:s + fe.segment_samples][None], fe).numpy()[0][:, fe.n_mels:]  # [T, pitch bands], log
        for name, f in filters.items():
            fr = norm(f(x) @ F)
            res[name].append((score(fr, maj).mean() > score(fr, mi).mean()) == major)
out = {k: float(np.mean(v)) for k, v in res.items()}
print(json.dumps({"collection": coll, "crops": len(res["none"]), **out}, indent=1))
