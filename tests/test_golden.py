"""Golden outputs (issue 17, item 5): a small trained export, committed, still gives the embeddings it gave.

tests/data/golden holds a tiny trained run of the default network family and its export (SavedModel and
the four .tflite variants, packed in model.tar.xz), and the embeddings every variant gave for five fixed
inputs (tests/golden_outputs.py describes the files, the inputs and the tolerances;
scripts/make_golden.py makes them). Here every variant embeds the inputs again and must match its
recorded embeddings within its tolerance, so a change to the frontend (the Keras model rebuilds it from
today's code when it loads), the export path (the slow test exports the run again) or a dependency
(TensorFlow, Keras and LiteRT run the committed files) fails a test. That the check is sharp enough is
itself tested: one part in a thousand on the log compression fails it.
"""

import numpy as np
import pytest

import golden_outputs as g


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """The committed run/ and export/, unpacked."""
    return g.unpack(str(tmp_path_factory.mktemp("golden")))


@pytest.fixture(scope="module")
def meta():
    return g.load_metadata()


@pytest.fixture(scope="module")
def golden():
    return g.load_embeddings()


@pytest.fixture(scope="module")
def inputs(model_dir):
    return g.load_inputs(model_dir)


def test_golden_files_are_small_and_complete(model_dir, meta, golden):
    files = g.committed_bytes()
    assert sum(files.values()) < g.MAX_BYTES, files
    assert sorted(files) == sorted([g.ARCHIVE, g.EMBEDDINGS, g.METADATA,
                                    *(f"{g.INPUTS}/{n}.flac" for n in g.COMMITTED_INPUTS)])
    unpacked = g.committed_bytes(model_dir)
    for name in ("run/config.json", "run/embedding.keras", "run/masks.npy", "export/config.json",
                 "export/parity.json", "export/saved_model/saved_model.pb",
                 *(f"export/{f}" for f in g.TFLITE_FILES.values())):
        assert name in unpacked, name
    assert unpacked == meta["archive_contents_bytes"]  # the archive holds what make_golden.py packed
    assert sorted(golden) == sorted(g.VARIANTS)
    for v in g.VARIANTS:
        assert golden[v].shape == (len(g.INPUT_NAMES), 256) and golden[v].dtype == np.float32, v
        np.testing.assert_allclose(np.linalg.norm(golden[v], axis=1), 1.0, atol=1e-3, err_msg=v)
    assert meta["input_order"] == list(g.INPUT_NAMES) and meta["variants"] == list(g.VARIANTS)
    assert meta["problems"] == []  # make_golden.py found every tolerance above the round-off it measured


def test_golden_model_is_the_default_family(model_dir, meta):
    """The golden run is the default network at reduced size: its branches and the pitch bands are in it."""
    from disentangled_ml.config import Config
    from disentangled_ml.export import load_export_config

    cfg = g.load_config(model_dir)
    default = Config().model
    assert cfg.hash() == meta["config_hash"]
    assert cfg.model.backbone == default.backbone, (
        "the default network family changed: regenerate the golden files (scripts/make_golden.py) so the "
        "golden test keeps exercising it")
    assert cfg.model.onset_lags > 0 and cfg.model.chroma_templates > 0 and cfg.model.timbre_filters > 0
    assert cfg.frontend.n_pitch_bands > 0 and cfg.model.slice_norm == default.slice_norm
    assert cfg.frontend.norm_std != 1.0  # trained: statistics measured on the training split
    export = load_export_config(f"{model_dir}/{g.EXPORT}")  # refuses an export that failed its parity check
    assert export["training_config_hash"] == cfg.hash() and export["parity_passed"] is True


def test_inputs_are_the_golden_inputs(meta, inputs, model_dir):
    """The regenerated inputs (and the decoded FLAC clips) are the ones the golden embeddings were made from,
    so a failure of the tests below is the model's, not the inputs'."""
    assert inputs.shape == (len(g.INPUT_NAMES), g.load_config(model_dir).frontend.segment_samples)
    for name, x in zip(g.INPUT_NAMES, inputs):
        assert g.fingerprint_mismatch(g.fingerprint(x), meta["inputs"][name]["fingerprint"]) == [], name
    assert not inputs[0].any() and np.abs(inputs).max() <= 1.0
    assert len({round(float(np.sqrt(np.mean(x.astype(np.float64) ** 2))), 4) for x in inputs[1:]}) == 4


@pytest.mark.parametrize("variant", g.VARIANTS)
def test_variant_gives_the_golden_embeddings(variant, model_dir, inputs, golden, meta):
    got = g.embed_variant(variant, inputs, model_dir)
    failure = g.golden_failure(variant, got, golden, meta["versions"])
    assert failure is None, failure


def test_recorded_variants_agree_with_the_float_model(golden):
    """The recorded embeddings themselves: the float32 paths equal Keras within the export's parity
    tolerance, the quantised ones stay close, and the five inputs give five different embeddings."""
    from disentangled_ml.export.parity import FLOAT_TOLERANCE

    ref = golden["keras"]
    for v in ("saved_model", "float32"):
        assert g.deviation(golden[v], ref)["max_abs"] <= FLOAT_TOLERANCE, v
    for v in ("float16", "int8", "int8_full"):
        assert 0 < g.deviation(golden[v], ref)["max_abs"] < 0.1 and g.deviation(golden[v], ref)["min_cosine"] > 0.95, v
    cos = ref @ ref.T
    assert cos[np.triu_indices(len(ref), 1)].max() < 0.999


def test_the_rebuilt_frontend_path_is_faithful(model_dir, inputs, golden):
    """The path the next test perturbs: the trained network behind a frontend rebuilt from the run's
    config.json, unchanged, gives the golden Keras embeddings."""
    got = g.embed_keras(g.keras_model(model_dir, log_multiplier=g.load_config(model_dir).frontend.log_multiplier),
                        inputs)
    assert g.golden_failure("keras", got, golden) is None


@pytest.mark.parametrize("factor", [1.001, 0.999])
def test_one_part_in_a_thousand_on_the_log_compression_fails(factor, model_dir, inputs, golden):
    """The claim of this file, tested: log10(1 + 10.01 S) (or 9.99 S) instead of log10(1 + 10 S) in the
    frontend of the golden Keras model, and the golden comparison fails, by a clear margin."""
    base = g.load_config(model_dir).frontend.log_multiplier
    assert base == 10.0
    got = g.embed_keras(g.keras_model(model_dir, log_multiplier=base * factor), inputs)
    failure = g.golden_failure("keras", got, golden)
    assert failure is not None and failure.startswith("keras: embeddings differ"), base * factor
    assert g.deviation(got, golden["keras"])["max_abs"] >= g.SENSITIVITY_MARGIN * g.TOLERANCES["keras"]


def test_a_change_in_the_frontend_code_fails_the_keras_variant(monkeypatch, model_dir, inputs, golden):
    """The Keras variant runs today's frontend code (the .keras file stores the frontend's config, not its
    graph): the log compression divided by 1.001 in features.py fails it. The committed SavedModel has the
    frontend of the day it was exported baked in, so it still passes: it checks TensorFlow, not our code."""
    from disentangled_ml import features

    monkeypatch.setattr(features, "_LN10", features._LN10 * 1.001)  # log10(1 + 10 S) / 1.001
    got = g.embed_variant("keras", inputs, model_dir)
    assert g.golden_failure("keras", got, golden) is not None
    assert g.deviation(got, golden["keras"])["max_abs"] >= g.SENSITIVITY_MARGIN * g.TOLERANCES["keras"]
    assert g.golden_failure("saved_model", g.embed_variant("saved_model", inputs, model_dir), golden) is None


@pytest.mark.slow
def test_a_fresh_export_of_the_golden_run_gives_the_golden_embeddings(tmp_path, model_dir, inputs, golden, meta):
    """The export path: today's export_run on the committed run writes files that give the golden embeddings."""
    from disentangled_ml.export import export_run

    out = str(tmp_path / "export")
    export_run(f"{model_dir}/{g.RUN}", out, **g.EXPORT_KWARGS)
    failures = [g.golden_failure(v, g.embed_variant(v, inputs, model_dir, export_dir=out), golden, meta["versions"])
                for v in g.VARIANTS if v != "keras"]
    assert [f for f in failures if f] == []
