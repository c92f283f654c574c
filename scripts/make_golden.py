"""Regenerate the golden outputs under tests/data/golden (checked by tests/test_golden.py).

Usage (from the repository root)::

    .venv/bin/python scripts/make_golden.py            # or: make golden
    .venv/bin/python scripts/make_golden.py --work /tmp/golden-work --keep-work

It does, with the package's own API and nothing else:

1. ``disentangled_ml.synth.synthesize_collection``: a small synthetic collection (24 tracks of 6-8 s);
2. ``disentangled_ml.data.prepare.prepare_collection`` and ``disentangled_ml.training.train`` with
   ``Config().replace(**golden_outputs.GOLDEN_OVERRIDES)``: the default network family at width 8,
   two epochs of 20 steps;
3. exports the run's model files (config.json, embedding.keras, masks.npy) with
   ``disentangled_ml.export.export_run`` (SavedModel and the four .tflite variants) and packs run/
   and export/ into ``tests/data/golden/model.tar.xz`` (golden_outputs.py says why an archive);
4. renders two 3 s clips with ``disentangled_ml.synth`` into ``inputs/`` (16-bit FLAC) and, from the
   unpacked archive (what the tests read), embeds the five golden inputs with every variant:
   ``embeddings.npz``;
5. measures, per variant, how far round-off moves the outputs (inputs moved by one float32 step or
   by 1e-6 of their value, TensorFlow with oneDNN off, LiteRT on one thread or with its builtin
   kernels instead of XNNPACK, a fresh export of the same run), each variant's distance from Keras,
   and how far a one-part-in-a-thousand change of the log compression moves the Keras embeddings; it
   exits 1 when a tolerance in ``golden_outputs.TOLERANCES`` is not above 10 times a same-kernel
   round-off figure, 2 times the 1e-6 figure and the builtin-kernel figure, when the log-compression
   change is under ``SENSITIVITY_MARGIN`` times the Keras tolerance, or when the files pass 2 MB
   (the files are written all the same, to be looked at);
6. writes ``golden.json``: versions, config hash, the training overrides and result, the inputs and
   their fingerprints, the tolerances, every measurement, the files' sizes and hashes.

About 3.5 minutes on 2 cores (training 50 s, export 40 s, the measurements 100 s). Run it only when
a change is *meant* to change the embeddings (the frontend, the default network, the export, a
pinned dependency), and say in the commit why the golden files changed; never to make a failing
golden test pass without knowing why it failed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

import golden_outputs as g  # noqa: E402

#: The training collection (disentangled_ml.synth).
TRAIN_TRACKS, TRAIN_SEED, TRAIN_SECONDS = 24, 0, (6.0, 8.0)
#: The two golden clips: tracks of this synth seed, cropped at CLIP_START_S for one segment.
CLIP_SEED, CLIP_TRACK_SECONDS, CLIP_START_S = 2020, 4.0, 0.5

log = logging.getLogger("make_golden")


def _ulp_neighbours(x: np.ndarray, seed: int) -> np.ndarray:
    """``x`` with every non-zero sample moved one float32 step up or down (at random)."""
    up = np.random.default_rng(seed).random(x.shape) < 0.5
    moved = np.where(up, np.nextafter(x, np.float32(np.inf)), np.nextafter(x, np.float32(-np.inf)))
    return np.where(x == 0, x, moved).astype(np.float32)


def _pick_clips():
    """Two clip specs that differ in genre, mood and instrument (the first such pair of the seed)."""
    from disentangled_ml.synth import draw_track_specs

    specs = draw_track_specs(12, CLIP_SEED, CLIP_TRACK_SECONDS, CLIP_TRACK_SECONDS)
    a = specs[0]
    b = next(s for s in specs[1:] if s.genre != a.genre and s.mood != a.mood and s.instrument != a.instrument)
    return a, b


def write_clips(out: str, sample_rate: int, segment_samples: int) -> dict:
    import soundfile as sf

    from disentangled_ml.synth import SAMPLE_RATE, SYNTH_VERSION, render_track

    if SAMPLE_RATE != sample_rate:
        raise SystemExit(f"the synthesiser renders at {SAMPLE_RATE} Hz, the golden model takes {sample_rate} Hz.")
    os.makedirs(os.path.join(out, g.INPUTS), exist_ok=True)
    start = int(CLIP_START_S * sample_rate)
    info = {}
    for name, spec in zip(g.COMMITTED_INPUTS, _pick_clips()):
        y = render_track(spec, CLIP_SEED)[start:start + segment_samples]
        sf.write(os.path.join(out, g.INPUTS, f"{name}.flac"), y, sample_rate, format="FLAC", subtype="PCM_16")
        info[name] = {"source": f"{g.INPUTS}/{name}.flac: disentangled_ml.synth (SYNTH_VERSION {SYNTH_VERSION}) "
                                f"seed {CLIP_SEED} track {spec.index}, {CLIP_TRACK_SECONDS:g} s, samples "
                                f"{start}..{start + segment_samples}, 16-bit FLAC",
                      "labels": {"genre": spec.genre, "mood": spec.mood, "instrument": spec.instrument,
                                 "tempo": spec.tempo}}
    return info


def train_run(work: str, cfg):
    import keras

    from disentangled_ml.data.prepare import prepare_collection
    from disentangled_ml.synth import synthesize_collection
    from disentangled_ml.training import train

    manifest = synthesize_collection(os.path.join(work, "synth"), TRAIN_TRACKS, TRAIN_SEED, *TRAIN_SECONDS,
                                     jobs=1, progress=False)
    prepared = os.path.join(work, "prepared")
    prepare_collection(manifest, prepared, cfg, jobs=0, estimate_tempo=False, progress=False)
    run = os.path.join(work, "run")
    keras.utils.set_random_seed(TRAIN_SEED)
    summary = train(prepared, run, cfg, verbose=0)
    result = {k: summary[k] for k in ("epochs_total", "best_val_mean_acc", "train_seconds")}
    log.info("trained: %s", result)
    return run, result


def _embed_tf_only(out_npz: str, model_dir: str) -> None:
    """Child process (oneDNN switched off in its environment): the Keras and SavedModel embeddings."""
    x = g.load_inputs(model_dir)
    np.savez(out_npz, **{v: g.embed_variant(v, x, model_dir) for v in ("keras", "saved_model")})


def measure(model_dir: str, work: str, x: np.ndarray, golden: dict) -> dict:
    """The figures the tolerances are checked against (golden_outputs.TOLERANCES explains them)."""
    from disentangled_ml.export import export_run

    dev = lambda a, b: g.deviation(a, b)["max_abs"]  # noqa: E731
    m: dict = {"note": "max |difference| over the 5 x 256 embedding values, per variant, from its recorded "
                       "embeddings (quantisation_error: from the Keras model's)"}

    def worst_of(make_inputs, seeds):
        out = {v: 0.0 for v in g.VARIANTS}
        for seed in seeds:
            xp = make_inputs(seed)
            for v in g.VARIANTS:
                out[v] = max(out[v], dev(g.embed_variant(v, xp, model_dir), golden[v]))
        return out

    m["ulp_jitter"] = worst_of(lambda seed: _ulp_neighbours(x, seed), (1, 2))
    m["perturb_1e-6"] = worst_of(
        lambda seed: (x * (1 + 1e-6 * np.random.default_rng(seed).standard_normal(x.shape))).astype(np.float32),
        range(10, 15))

    onednn = {}
    if os.environ.get("TF_ENABLE_ONEDNN_OPTS", "1") != "0":
        child = os.path.join(work, "onednn_off.npz")
        env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS="0")
        subprocess.run([sys.executable, os.path.abspath(__file__), "--embed-tf-only", child, "--model-dir", model_dir],
                       env=env, check=True)
        with np.load(child) as z:
            onednn = {v: dev(z[v], golden[v]) for v in z.files}
    m["onednn_off"] = onednn
    m["litert_one_thread"] = {v: dev(g.embed_variant(v, x, model_dir, num_threads=1), golden[v])
                              for v in g.TFLITE_FILES}
    from disentangled_ml.export.tflite import open_interpreter

    builtin = {}
    for v, name in g.TFLITE_FILES.items():  # TFLite's own kernels instead of the XNNPACK delegate
        runner = open_interpreter(os.path.join(model_dir, g.EXPORT, name), delegates=False).get_signature_runner()
        builtin[v] = dev(np.asarray(runner(audio=x)["embedding"]), golden[v])
    m["litert_builtin_kernels"] = builtin

    fresh = os.path.join(work, "re_export")
    t0 = time.perf_counter()
    export_run(os.path.join(model_dir, g.RUN), fresh, overwrite=True, **g.EXPORT_KWARGS)
    m["re_export_seconds"] = round(time.perf_counter() - t0, 1)
    m["re_export"] = {v: dev(g.embed_variant(v, x, model_dir, export_dir=fresh), golden[v]) for v in g.VARIANTS}

    m["quantisation_error"] = {v: dev(golden[v], golden["keras"]) for v in g.VARIANTS}
    m["quantisation_error_per_input"] = {v: g.deviation(golden[v], golden["keras"])["per_input"] for v in g.VARIANTS}
    sens = {}
    for factor in (1.001, 0.999):
        lm = g.load_config(model_dir).frontend.log_multiplier * factor
        sens[f"{lm:g}"] = dev(g.embed_keras(g.keras_model(model_dir, log_multiplier=lm), x), golden["keras"])
    m["log_multiplier_1e-3"] = sens
    return m


#: A tolerance must be at least this many times each round-off figure of the same kernels ...
ROUND_OFF_FACTOR = 10.0
#: ... this many times the response to the 1e-6 input perturbation ...
PERTURB_FACTOR = 2.0
#: ... and above what LiteRT's builtin kernels give instead of XNNPACK's (another kernel library).
KERNELS_FACTOR = 1.0


def check(measured: dict) -> list:
    problems = []
    for v, tol in g.TOLERANCES.items():
        noise = max(measured[k].get(v, 0.0) for k in ("ulp_jitter", "onednn_off", "litert_one_thread", "re_export"))
        kernels = measured["litert_builtin_kernels"].get(v, 0.0)
        need = max(ROUND_OFF_FACTOR * noise, PERTURB_FACTOR * measured["perturb_1e-6"][v], KERNELS_FACTOR * kernels)
        if need >= tol:
            problems.append(f"{v}: tolerance {tol:.0e} is not above {need:.2e} ({ROUND_OFF_FACTOR:g} x round-off "
                            f"{noise:.2e}, {PERTURB_FACTOR:g} x perturb_1e-6 {measured['perturb_1e-6'][v]:.2e}, "
                            f"{KERNELS_FACTOR:g} x builtin kernels {kernels:.2e}); suggest {g.round_up(need * 1.01):.0e}.")
    need = g.SENSITIVITY_MARGIN * g.TOLERANCES["keras"]
    for lm, d in measured["log_multiplier_1e-3"].items():
        if d < need:
            problems.append(f"log_multiplier {lm} moves the Keras embeddings by {d:.2e} only, less than "
                            f"{g.SENSITIVITY_MARGIN:g} x the Keras tolerance ({need:.0e}).")
    return problems


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=g.GOLDEN_DIR, help="the golden folder (default: %(default)s)")
    ap.add_argument("--work", help="scratch folder for the collection and the run (default: a temporary one)")
    ap.add_argument("--keep-work", action="store_true", help="keep the scratch folder")
    ap.add_argument("--embed-tf-only", metavar="NPZ", help=argparse.SUPPRESS)  # the oneDNN-off child process
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    from disentangled_ml import tf_environment

    tf_environment.configure()
    if args.embed_tf_only:
        _embed_tf_only(args.embed_tf_only, args.model_dir)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from disentangled_ml.config import Config
    from disentangled_ml.export import export_run

    started = time.perf_counter()
    out = os.path.abspath(args.out)
    work = os.path.abspath(args.work) if args.work else tempfile.mkdtemp(prefix="golden-")
    os.makedirs(work, exist_ok=True)
    timing = {}
    try:
        cfg = Config().replace(**g.GOLDEN_OVERRIDES)
        run, trained = train_run(work, cfg)
        timing["train_s"] = round(time.perf_counter() - started, 1)

        # run/ (the files dml export reads) and export/ side by side, packed into the archive
        staged = os.path.join(work, "golden_model")
        shutil.rmtree(staged, ignore_errors=True)
        os.makedirs(os.path.join(staged, g.RUN))
        for name in ("config.json", "embedding.keras", "masks.npy"):
            shutil.copy2(os.path.join(run, name), os.path.join(staged, g.RUN, name))
        t0 = time.perf_counter()
        export_run(os.path.join(staged, g.RUN), os.path.join(staged, g.EXPORT), **g.EXPORT_KWARGS)
        timing["export_s"] = round(time.perf_counter() - t0, 1)

        for name in (g.ARCHIVE, g.INPUTS, g.EMBEDDINGS, g.METADATA, "run", "export"):
            p = os.path.join(out, name)
            if os.path.isdir(p):
                shutil.rmtree(p)
            elif os.path.exists(p):
                os.remove(p)
        os.makedirs(out, exist_ok=True)
        g.pack(staged, os.path.join(out, g.ARCHIVE))
        # from here on, everything reads what the tests read: the archive, unpacked
        model_dir = g.unpack(os.path.join(work, "unpacked"), out)
        cfg = g.load_config(model_dir)
        fe = cfg.frontend
        inputs = write_clips(out, fe.sample_rate, fe.segment_samples)
        for name in g.cheap_inputs(fe.sample_rate, fe.segment_samples):
            inputs[name] = {"source": "regenerated by golden_outputs.cheap_inputs"}
        x = g.load_inputs(model_dir, out)
        for name, y in zip(g.INPUT_NAMES, x):
            inputs[name]["fingerprint"] = g.fingerprint(y)
        np.savez(os.path.join(out, g.EMBEDDINGS), **{v: g.embed_variant(v, x, model_dir) for v in g.VARIANTS})
        golden = g.load_embeddings(out)

        t0 = time.perf_counter()
        measured = measure(model_dir, work, x, golden)
        timing["measure_s"] = round(time.perf_counter() - t0, 1)
        problems = check(measured)
        files = {k: {"bytes": v, "sha256": g.sha256(os.path.join(out, k))} for k, v in g.committed_bytes(out).items()}
        unpacked = g.committed_bytes(model_dir)
        timing["total_s"] = round(time.perf_counter() - started, 1)
        meta = {
            "format": 1,
            "what": "golden outputs of a tiny trained export; checked by tests/test_golden.py, made by "
                    "scripts/make_golden.py (tests/golden_outputs.py describes the files)",
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "versions": g.versions(),
            "config_hash": cfg.hash(),
            "training": {"overrides": g.GOLDEN_OVERRIDES, "synth_tracks": TRAIN_TRACKS, "synth_seed": TRAIN_SEED,
                         "synth_seconds": list(TRAIN_SECONDS), "result": trained},
            "export_kwargs": g.EXPORT_KWARGS,
            "input_order": list(g.INPUT_NAMES),
            "inputs": {n: inputs[n] for n in g.INPUT_NAMES},
            "variants": list(g.VARIANTS),
            "tolerances": g.TOLERANCES,
            "tolerance_rule": {"round_off_factor": ROUND_OFF_FACTOR, "perturb_factor": PERTURB_FACTOR,
                               "kernels_factor": KERNELS_FACTOR, "sensitivity_margin": g.SENSITIVITY_MARGIN},
            "measured": measured,
            "problems": problems,
            "files": files,
            "archive_contents_bytes": unpacked,
            "archive_contents_total_bytes": sum(unpacked.values()),
            "timing_s": timing,
        }
        with open(os.path.join(out, g.METADATA), "w") as f:
            json.dump(meta, f, indent=2, default=float)
            f.write("\n")
        total = sum(g.committed_bytes(out).values())
        print(json.dumps({"measured": measured, "timing_s": timing, "total_bytes": total}, indent=2, default=float))
        if total > g.MAX_BYTES:
            problems.append(f"{total} bytes under {out}, over the {g.MAX_BYTES}-byte budget.")
        for p in problems:
            print("PROBLEM:", p, file=sys.stderr)
        return 1 if problems else 0
    finally:
        if not args.keep_work and not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
