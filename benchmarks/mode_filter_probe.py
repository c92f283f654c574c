"""Fixed-template mode probe: how well does a per-frame pitch-class profile (the harmony branch's input)
tell major from minor crops, with and without a filter of the pitch bands before folding?

    python benchmarks/mode_filter_probe.py SYNTH_DIR N_TRACKS >> benchmarks/results/mode_filter_probe.jsonl

Variants, all on the same crops (the reference is ``none``):

- time filters: min over k frames (erosion); median over k frames (the harmonic part of librosa's
  HPSS, Fitzgerald 2010; scipy's filters, which librosa.decompose.hpss also uses);
- frequency filters, per frame: subtract the moving mean over k pitch bands (spectral whitening: a
  drum hit raises every band of a frame, a note only its own), optionally keeping only the positive
  part (the peaks, as the HPCP of Gomez 2006 keeps spectral peaks only);
- band range: fold only the bands between two frequencies (a kick drum lives below ~110 Hz, a
  hi-hat's noise above ~1 kHz);
- frame weights: average the frames' template scores weighted by how peaked each frame's raw
  profile is (its standard deviation over the 12 classes) instead of equally.

Scoring: each frame's profile (folded with the harmony branch's own matrix, zero mean, unit length)
against a major and a minor triad template in its best transposition, averaged over the 3 s crop; the
crop is right when the larger score is its track's mode. Four random crops a track, seed 0. A fixed
probe, no training: a variant that does not raise it is not worth a full run.
"""
import sys, json, numpy as np, scipy.ndimage as ndi
from _common import mode_probe_crops, unit_profile as norm  # benchmarks/ is the script's directory
from disentangled_ml.config import Config
from disentangled_ml.models.harmony import PitchClassProfile
from disentangled_ml.pitch_bands import log_filterbank
coll, n_tracks = sys.argv[1], int(sys.argv[2])
cfg = Config(); fe = cfg.frontend
F = PitchClassProfile.from_frontend(fe)._folding  # [bands, 12]
bank = log_filterbank(fe.sample_rate, fe.pitch_n_fft, fe.pitch_bands_per_octave, fe.pitch_fmin, fe.pitch_fmax)
centre_hz = bank.argmax(0) * fe.sample_rate / fe.pitch_n_fft  # [bands]
maj = np.zeros(12); maj[[0, 4, 7]] = 1; mi = np.zeros(12); mi[[0, 3, 7]] = 1
def score(p, t):
    t = norm(t); rots = np.stack([np.roll(t, r) for r in range(12)]); return (p @ rots.T).max(-1)
def band_range(lo, hi):
    keep = ((centre_hz >= lo) & (centre_hz <= hi)).astype(np.float32)[:, None]
    Fk = F * keep
    return Fk / np.maximum(Fk.sum(0, keepdims=True), 1e-6)
def fwhite(x, k):
    return x - ndi.uniform_filter1d(x, k, axis=1, mode="nearest")
# name -> (band filter [T, n] -> [T, n], folding matrix, frame-weighted)
variants = {"none": (lambda x: x, F, False)}
for k in (5, 9, 17):
    variants[f"min{k}"] = (lambda x, k=k: ndi.minimum_filter1d(x, k, axis=0, mode="nearest"), F, False)
    variants[f"median{k}"] = (lambda x, k=k: ndi.median_filter(x, size=(k, 1), mode="nearest"), F, False)
for k in (7, 13, 25):
    variants[f"fwhite{k}"] = (lambda x, k=k: fwhite(x, k), F, False)
    variants[f"fwhite{k}_relu"] = (lambda x, k=k: np.maximum(fwhite(x, k), 0), F, False)
for lo, hi in ((110, 2100), (220, 2100), (65, 1050), (110, 1050)):
    variants[f"range{lo}-{hi}"] = (lambda x: x, band_range(lo, hi), False)
variants["weighted"] = (lambda x: x, F, True)
variants["fwhite13_relu_weighted"] = (lambda x: np.maximum(fwhite(x, 13), 0), F, True)
variants["fwhite13_relu_min17"] = (lambda x: np.maximum(fwhite(ndi.minimum_filter1d(x, 17, axis=0, mode="nearest"), 13), 0), F, False)
res = {k: [] for k in variants}
for _, major, x in mode_probe_crops(coll, n_tracks, fe):  # x: [T, pitch bands], log
    for name, (f, fold, weighted) in variants.items():
        raw = f(x) @ fold
        fr = norm(raw)
        w = raw.std(-1) if weighted else np.ones(len(raw))
        w = w / w.sum()
        res[name].append(((score(fr, maj) * w).sum() > (score(fr, mi) * w).sum()) == major)
out = {k: float(np.mean(v)) for k, v in res.items()}
print(json.dumps({"collection": coll, "crops": len(res["none"]), **out}))
