"""`dml export`: contract-2 layout, explicit signature names, parity, LiteRT without TensorFlow, loud failures."""

import csv
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from disentangled_ml.config import Config
from disentangled_ml.data.manifest import write_manifest
from collections_for_tests import process_timeout, tiny_config, write_tracks

# every test here runs processes or model conversions (pytest.ini: `slow`)
pytestmark = pytest.mark.slow

CONDITIONS = ("genre", "mood", "instrument", "tempo")


def make_run(root, mask_mode="fixed", with_audio=True):
    """A run directory by hand (what dml train writes, minus the training): config.json,
    embedding.keras, masks.npy, and with audio a prepared collection, splits.csv,
    test_triplets.csv and run.json."""
    import keras

    from disentangled_ml.models import build_triplet_model
    from disentangled_ml.training import save_run_model

    cfg = tiny_config(**{"model.width": 8, "model.mask_mode": mask_mode, "frontend.norm_mean": 0.3,
                         "frontend.norm_std": 0.7})
    run = os.path.join(root, "run")
    os.makedirs(run)
    keras.utils.set_random_seed(0)
    save_run_model(run, cfg, build_triplet_model(cfg))
    if with_audio:
        prepared = os.path.join(root, "prepared")
        os.makedirs(os.path.join(prepared, "audio"))
        tracks = write_tracks(os.path.join(prepared, "audio"), n=9, seconds=2.0)
        write_manifest(tracks, os.path.join(prepared, "manifest.csv"))
        split = {t.track_id: ("train" if i < 5 else "test") for i, t in enumerate(tracks)}
        with open(os.path.join(run, "splits.csv"), "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["track_id", "split"])
            w.writerows(split.items())
        test = [t.track_id for t in tracks if split[t.track_id] == "test"]
        rows = [{"condition": c, "anchor": test[i % 4], "anchor_start": 0, "positive": test[(i + 1) % 4],
                 "positive_start": 4000, "negative": test[(i + 2) % 4], "negative_start": 128 * i}
                for i, c in enumerate(["genre", "mood", "genre", "track", "instrument", "track"])]
        with open(os.path.join(run, "test_triplets.csv"), "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        with open(os.path.join(run, "run.json"), "w") as f:
            json.dump({"prepared_dir": prepared}, f)
    return run, cfg


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from disentangled_ml.export import export_run

    root = str(tmp_path_factory.mktemp("export"))
    run, cfg = make_run(root)
    out = os.path.join(root, "export")
    result = export_run(run, out, calibration_segments=20, parity_segments=24)
    return run, out, cfg, result


def test_export_layout_and_config(exported):
    run, out, cfg, _ = exported
    for name in ("config.json", "parity.json", "README.md", "saved_model/saved_model.pb", "model.tflite",
                 "model_fp16.tflite", "model_int8.tflite", "model_int8_full.tflite"):
        assert os.path.isfile(os.path.join(out, name)), name
    c = json.load(open(os.path.join(out, "config.json")))
    assert c["sample_rate"] == 8000 and c["segment_seconds"] == 1.0 and c["segment_samples"] == 8000
    assert c["embedding_dim"] == 256 and c["mask_mode"] == "fixed"
    assert c["conditions"] == {"genre": [0, 64], "mood": [64, 128], "instrument": [128, 192], "tempo": [192, 256]}
    fe = c["frontend"]
    assert (fe["n_fft"], fe["hop_length"], fe["n_mels"]) == (256, 128, 16)
    assert fe["pitch_bands_per_octave"] == 6 and c["n_bands"] == 16 + c["n_pitch_bands"] == 32
    assert (fe["norm_mean"], fe["norm_std"]) == (0.3, 0.7)
    assert c["model"]["backbone"] == Config().model.backbone and c["version"] == c["package"]["version"]
    assert c["training_config_hash"] == cfg.hash() and c["training_config"]["model"]["width"] == 8
    assert c["parity_passed"] is True and c["tflite_from_frozen_variables"] is False
    files = c["files"]
    for name in ("model.tflite", "model_fp16.tflite", "model_int8.tflite", "model_int8_full.tflite"):
        assert files[name]["size_bytes"] == os.path.getsize(os.path.join(out, name))
        assert files[name]["quantization"] and files[name]["weights"] in ("float32", "float16", "int8")
    assert files["model_int8_full.tflite"]["calibration"]["source"].startswith("train split")
    assert files["model_int8_full.tflite"]["calibration"]["segments"] == 20
    # Quantised files are smaller than the float32 one.
    assert files["model_int8.tflite"]["size_bytes"] < files["model.tflite"]["size_bytes"]
    assert files["model_int8_full.tflite"]["size_bytes"] < files["model.tflite"]["size_bytes"]
    assert files["model_fp16.tflite"]["size_bytes"] < files["model.tflite"]["size_bytes"]
    # The evaluation reads the export through the same contract.
    from disentangled_ml.evaluation.embedders import load_embedder

    embedder, kind, export_config = load_embedder(out)
    assert kind == "saved_model" and embedder.input_name == "audio" and export_config["embedding_dim"] == 256


def test_signature_names_are_explicit(exported):
    import tensorflow as tf

    from disentangled_ml.export.tflite import open_interpreter

    _, out, _, _ = exported
    expected = ["embedding", *CONDITIONS]
    loaded = tf.saved_model.load(os.path.join(out, "saved_model"))
    assert set(loaded.signatures) == {"serving_default", "log_mel"}
    serve = loaded.signatures["serving_default"]
    _, inputs = serve.structured_input_signature
    assert list(inputs) == ["audio"] and inputs["audio"].shape.as_list() == [None, 8000]
    assert sorted(serve.structured_outputs) == sorted(expected)
    _, mel_inputs = loaded.signatures["log_mel"].structured_input_signature
    assert list(mel_inputs) == ["log_mel"] and mel_inputs["log_mel"].shape.as_list() == [None, 61, 32]
    x = np.random.default_rng(0).uniform(-0.5, 0.5, (3, 8000)).astype(np.float32)
    res = {k: v.numpy() for k, v in serve(audio=tf.constant(x)).items()}
    assert res["genre"].shape == (3, 64)
    np.testing.assert_array_equal(res["mood"], res["embedding"][:, 64:128])
    for name in ("model.tflite", "model_fp16.tflite", "model_int8.tflite", "model_int8_full.tflite"):
        it = open_interpreter(os.path.join(out, name))
        sig = it.get_signature_list()
        assert list(sig) == ["serving_default"], name
        assert sig["serving_default"]["inputs"] == ["audio"], name
        assert sorted(sig["serving_default"]["outputs"]) == sorted(expected), name
        res = it.get_signature_runner()(audio=x)
        assert res["embedding"].shape == (3, 256) and res["tempo"].shape == (3, 64), name


def test_parity_json(exported):
    _, out, _, result = exported
    p = json.load(open(os.path.join(out, "parity.json")))
    assert p == json.loads(json.dumps(result["parity"], default=float))
    assert p["passed"] and p["failures"] == [] and p["tolerance"] == 1e-4
    assert p["segments"]["segments"] == 24 and p["segments"]["source"].startswith("test split")
    v = p["variants"]
    assert set(v) == {"saved_model", "saved_model_log_mel", "float32", "float16", "int8", "int8_full"}
    for name in ("saved_model", "saved_model_log_mel", "float32"):
        assert v[name]["max_abs_diff"] <= 1e-4 and v[name]["min_cosine"] > 0.99999, name
    for name in v:
        assert set(v[name]["max_abs_diff_per_output"]) == {"embedding", *CONDITIONS}
        assert v[name]["min_cosine"] > 0.9, name  # quantised variants stay close on an untrained net
    acc = p["triplet_accuracy"]
    assert acc["n_triplets"] == {"genre": 2, "mood": 1, "instrument": 1, "track": 2}
    assert set(acc["accuracy"]) == {"keras", "saved_model", "float32", "float16", "int8", "int8_full"}
    assert acc["accuracy"]["float32"] == acc["accuracy"]["keras"] == acc["accuracy"]["saved_model"]
    assert acc["crops"] == {"in_triplets": 18, "distinct": 13}  # test[0] at 0 is the anchor of 2 triplets, ...
    assert set(acc["seconds"]) == set(acc["accuracy"]) and all(s >= 0 for s in acc["seconds"].values())
    timing = p["timing"]  # the export's wall time, stage by stage
    stages = timing["stages_s"]
    for stage in ("load_run", "saved_model", "convert_float32", "convert_float16", "convert_int8",
                  "calibration_audio", "convert_int8_full", "parity", "triplet_audio", "triplet_accuracy"):
        assert stages[stage] >= 0, stage
    assert sum(stages.values()) <= timing["total_s"] + 0.01


def test_each_distinct_crop_is_embedded_once_and_scores_as_before(tmp_path):
    """De-duplicated triplet scoring (one forward pass per distinct track and start) gives the figures of
    embedding every triplet's anchor, positive and negative directly."""
    from disentangled_ml.data.eval_triplets import ROLES, iter_waveform_crops, load_split_audio
    from disentangled_ml.data.manifest import read_manifest
    from disentangled_ml.evaluation.metrics import triplet_accuracy
    from disentangled_ml.export import parity
    from disentangled_ml.export.savedmodel import load_run

    run, cfg = make_run(str(tmp_path))
    loaded = load_run(run)
    tracks = read_manifest(str(tmp_path / "prepared" / "manifest.csv"))
    with open(os.path.join(run, "splits.csv"), newline="") as f:
        test = [r["track_id"] for r in csv.DictReader(f) if r["split"] == "test"]
    # 4 tracks x 4 starts; 12000 runs past the 2 s tracks' end (zero-padded). 45 triplets over 16 crops,
    # three different crops each, so most crops serve several triplets and several roles.
    crops = [(t, s) for t in test for s in (0, 2000, 4000, 12000)]
    rng = np.random.default_rng(0)
    names = ["genre", "mood", "instrument", "tempo", "track"]
    triplets = []
    for i in range(45):
        picked = [crops[j] for j in rng.choice(len(crops), 3, replace=False)]
        triplets.append({"condition": names[i % 5], **{k: v for r, (t, s) in zip(ROLES, picked)
                                                        for k, v in ((r, t), (f"{r}_start", int(s)))}})
    audio = load_split_audio(tracks, triplets, cfg)
    calls = []

    def keras_embed(x):
        calls.append(len(x))
        return np.asarray(loaded.waveform_model.predict_on_batch(x)["embedding"])

    def waveform_embed(x):  # exact and batch-independent: every 31st sample
        return x[:, ::31]

    embedders = {"keras": keras_embed, "waveform": waveform_embed}
    got = parity.triplet_accuracies(triplets, audio, cfg, loaded.masks, embedders, batch_size=8)
    assert sum(calls) == got["crops"]["distinct"] == len({(t[r], t[f"{r}_start"]) for t in triplets for r in ROLES})
    assert got["crops"]["in_triplets"] == 135 and got["crops"]["distinct"] <= 16

    # The reference: each triplet's three crops embedded as they come (what export did before).
    views = parity.condition_views(cfg, loaded.masks)
    for name, f in embedders.items():
        parts, conds = {r: [] for r in ROLES}, []
        for batch in iter_waveform_crops(triplets, audio, cfg, batch_size=8):
            conds.append(batch["condition"])
            for r in ROLES:
                parts[r].append(np.asarray(f(batch[r]), np.float32))
        cond = np.concatenate(conds)
        a, p, n = (np.concatenate(parts[r]) for r in ROLES)
        expected = {c: triplet_accuracy(a[cond == c], p[cond == c], n[cond == c], dims=views[c]) for c in names}
        assert got["accuracy"][name] == expected, name
    assert got["n_triplets"] == {c: 9 for c in names}
    assert len(set(got["accuracy"]["keras"].values()) | set(got["accuracy"]["waveform"].values())) > 1


def test_int8_full_keeps_the_frontend_float(exported):
    from disentangled_ml.export.tflite import op_dtypes

    _, out, _, result = exported
    ops = op_dtypes(os.path.join(out, "model_int8_full.tflite"))
    # TRANSPOSE: the factorised DFT's (features.DFTPlan), only in the frontend
    for op in ("TRANSPOSE", "LOG", "L2_NORMALIZATION"):
        assert op in ops["float32"] and op not in ops["int8"], op
    assert ops["float32"].get("FULLY_CONNECTED", 0) >= 6  # the DFTs' two passes and the filterbanks
    assert ops["int8"].get("CONV_2D", 0) > ops["float32"].get("CONV_2D", 0)  # the network itself is int8
    assert "QUANTIZE" in ops["int8"] and "DEQUANTIZE" in ops["float32"]
    assert "float_islands" in result["config"]["int8_full"]
    float_ops = op_dtypes(os.path.join(out, "model.tflite"))
    assert not float_ops["int8"]


def test_dynamic_int8_keeps_the_frontend_float(exported):
    """model_int8.tflite runs the frontend's matmuls (the factorised DFT's two passes and the
    filterbank groups, mel and pitch) as float ops with their exact float32 constants: neither
    the cosines nor the power spectrum are rounded to 8 bits (that costs ~1e-2 in the
    embedding). The network's weights stay int8."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    from disentangled_ml.features import frontend_matmul_weights

    _, out, cfg, _ = exported
    wanted = frontend_matmul_weights(cfg.frontend)
    model = flatbuffer_utils.read_model(os.path.join(out, "model_int8.tflite"))
    sg = model.subgraphs[0]
    code = lambda op: max(model.operatorCodes[op.opcodeIndex].builtinCode,  # noqa: E731
                          model.operatorCodes[op.opcodeIndex].deprecatedBuiltinCode)
    matmuls = [op for op in sg.operators if code(op) in (schema.BuiltinOperator.FULLY_CONNECTED,
                                                         schema.BuiltinOperator.BATCH_MATMUL)]

    def constant(op):
        t = sg.tensors[op.inputs[1]]
        data = model.buffers[t.buffer].data
        if data is None:
            return t.type, None
        dtype = {schema.TensorType.FLOAT32: np.float32, schema.TensorType.INT8: np.int8}[t.type]
        return t.type, np.frombuffer(bytes(data), dtype).reshape(tuple(t.shape))

    frontend_ops = []
    for w in wanted:
        hits = [op for op in matmuls if constant(op)[0] == schema.TensorType.FLOAT32
                and constant(op)[1] is not None and constant(op)[1].shape == w.shape
                and np.array_equal(constant(op)[1], w)]
        assert hits, w.shape
        frontend_ops += hits
    # the big ones were int8 after conversion and were given back (the converter leaves < 1,024 elements)
    assert max(w.size for w in wanted) >= 1024
    # the network's FULLY_CONNECTED / conv weights are still int8 (dynamic range), all but those
    # under the converter's 1,024-element threshold
    others = [sg.tensors[op.inputs[1]] for op in sg.operators
              if code(op) in (schema.BuiltinOperator.FULLY_CONNECTED, schema.BuiltinOperator.CONV_2D)
              and not any(op is b for b in frontend_ops)]
    big = [t for t in others if np.prod(t.shape) >= 1024]
    assert big and all(t.type == schema.TensorType.INT8 for t in big)


def test_tflite_runs_with_litert_alone(exported, tmp_path):
    """A client with only numpy + ai-edge-litert reproduces the Keras embeddings."""
    import keras

    import disentangled_ml.models  # noqa: F401  (registers the custom layers before load_model)

    run, out, _, _ = exported
    model = keras.saving.load_model(os.path.join(run, "embedding.keras"))
    x = np.random.default_rng(3).uniform(-0.8, 0.8, (5, 8000)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "ref.npy", np.asarray(model.predict_on_batch(x)["embedding"]))
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        from ai_edge_litert.interpreter import Interpreter
        x, ref = np.load({str(tmp_path / 'x.npy')!r}), np.load({str(tmp_path / 'ref.npy')!r})
        runner = Interpreter(model_path={os.path.join(out, 'model.tflite')!r}).get_signature_runner()
        got = runner(audio=x)
        assert np.abs(got["embedding"] - ref).max() <= 1e-4, np.abs(got["embedding"] - ref).max()
        assert np.allclose(got["mood"], ref[:, 64:128], atol=1e-4)
        # The package's own runner is TensorFlow-free too.
        from disentangled_ml.export.tflite import TFLiteEmbedder
        emb = TFLiteEmbedder({os.path.join(out, 'model.tflite')!r}, batch_size=2)(x)
        assert np.abs(emb - ref).max() <= 1e-4
        assert "tensorflow" not in sys.modules, sorted(m for m in sys.modules if m.startswith("tensorflow"))
        print("OK", float(np.abs(got["embedding"] - ref).max()))
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=process_timeout(120))
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.startswith("OK")


def _only_float32(monkeypatch):
    from disentangled_ml.export import tflite

    monkeypatch.setattr(tflite, "VARIANTS", tuple(v for v in tflite.VARIANTS if v.name == "float32"))


def test_export_fails_loudly_when_parity_breaks(tmp_path, monkeypatch, capsys):
    """Also covers mask_mode "none": every condition output is the whole embedding."""
    from disentangled_ml.catalogue_search import SearchError, embed_collection
    from disentangled_ml.cli import main
    from disentangled_ml.export import ExportError, load_export_config, parity
    from disentangled_ml.export.tflite import TFLiteEmbedder

    run, _ = make_run(str(tmp_path), mask_mode="none", with_audio=False)
    _only_float32(monkeypatch)
    # The float32 TFLite model differs from Keras by ~1e-7 (float summation order);
    # a tolerance below that must fail the export.
    monkeypatch.setattr(parity, "FLOAT_TOLERANCE", 1e-12)
    out = str(tmp_path / "bad_export")
    code = main(["export", run, "--out", out, "--parity-segments", "8"])
    assert code == 1
    assert "PARITY CHECK FAILED" in capsys.readouterr().out
    p = json.load(open(os.path.join(out, "parity.json")))
    assert not p["passed"] and any(f.startswith("float32") for f in p["failures"])
    config = json.load(open(os.path.join(out, "config.json")))
    assert config["parity_passed"] is False
    with pytest.raises(ExportError, match="failed its parity check"):
        load_export_config(out)
    with pytest.raises(SearchError, match="failed its parity check"):
        embed_collection(out, str(tmp_path), str(tmp_path / "emb"))
    # An existing export is not overwritten silently.
    with pytest.raises(SystemExit):
        main(["export", run, "--out", out])
    assert "--overwrite" in capsys.readouterr().err

    assert config["mask_mode"] == "none" and config["conditions"]["tempo"] == [0, 256]
    assert "condition_masks" not in config
    x = np.random.default_rng(1).uniform(-0.5, 0.5, (2, 8000)).astype(np.float32)
    res = TFLiteEmbedder(os.path.join(out, "model.tflite"), outputs="all")(x)
    for name in CONDITIONS:
        np.testing.assert_array_equal(res[name], res["embedding"])


def test_learned_masks_give_masked_condition_outputs(tmp_path, monkeypatch):
    """Also covers the NaN fallback: TFLite converted from a frozen copy of the SavedModel."""
    from disentangled_ml.export import export_run, tflite
    from disentangled_ml.export.tflite import TFLiteEmbedder

    _only_float32(monkeypatch)
    real_check, checks = tflite.outputs_finite, []

    def nan_first_time(*args, **kwargs):  # as if LiteRT returned NaN for the first conversion
        checks.append(1)
        return len(checks) > 1 and real_check(*args, **kwargs)
    monkeypatch.setattr(tflite, "outputs_finite", nan_first_time)
    run, cfg = make_run(str(tmp_path), mask_mode="learned", with_audio=False)
    masks = np.load(os.path.join(run, "masks.npy"))
    out = str(tmp_path / "export")
    result = export_run(run, out, parity_segments=8)
    c = result["config"]
    assert c["mask_mode"] == "learned" and c["conditions"]["mood"] == [0, 256]
    assert c["tflite_from_frozen_variables"] is True and len(checks) == 2
    assert result["parity"]["variants"]["float32"]["max_abs_diff"] <= 1e-4
    assert not os.path.exists(os.path.join(out, ".frozen_saved_model"))
    assert "learned mask" in c["condition_outputs_note"]
    np.testing.assert_allclose(c["condition_masks"]["mood"], masks[1], rtol=1e-6)
    assert result["parity"]["segments"]["source"].startswith("synthetic")
    assert "skipped" in result["parity"]["triplet_accuracy"]
    x = np.random.default_rng(1).uniform(-0.5, 0.5, (2, 8000)).astype(np.float32)
    res = TFLiteEmbedder(os.path.join(out, "model.tflite"), outputs="all")(x)
    for i, name in enumerate(CONDITIONS):
        assert res[name].shape == (2, 256)
        np.testing.assert_allclose(res[name], res["embedding"] * masks[i], atol=1e-6)
