"""benchmarks/export.py's frontend-only rows: trimmed and full filterbanks convert and give the same bands."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import export as export_bench  # noqa: E402

from collections_for_tests import tiny_config  # noqa: E402


def test_frontend_latency_rows_compare_trimmed_and_full_filterbanks(tmp_path):
    import dataclasses

    fe = dataclasses.replace(tiny_config().frontend, pitch_decimation=1)  # a full-rate config
    rows = export_bench.frontend_latency(fe, str(tmp_path), warmup=1, repeats=2)
    assert [r["variant"] for r in rows] == ["frontend", "frontend_full_fb", "frontend_mel_only",
                                            "frontend_pitch_decimated"]
    for r in rows:
        assert r["latency_ms_median"] > 0 and r["size_bytes"] > 0
    # same bands from fewer weights: the trimmed matrices drop only all-zero rows
    assert rows[0]["max_abs_diff_vs_full"] < 1e-4
    assert rows[0]["size_bytes"] < rows[1]["size_bytes"]
    assert rows[2]["size_bytes"] < rows[0]["size_bytes"]  # no pitch filterbank at all
    # the decimated pitch STFT is measured against the exported frontend (on noise here: the worst case)
    assert 0 < rows[3]["max_abs_diff_vs_frontend"] < 0.1


def test_frontend_latency_of_a_decimated_config_keeps_its_own_bins(tmp_path):
    """A config that decimates (the default: the tiny config's auto factor is 2) is compared with the
    full-rate STFT, and its full-filterbank row uses the decimated STFT's bins (a full-rate matrix
    would not fit them)."""
    fe = tiny_config().frontend
    assert fe.pitch_decimation is None and fe.pitch_decimation_factor == 2
    rows = export_bench.frontend_latency(fe, str(tmp_path), warmup=1, repeats=2)
    assert [r["variant"] for r in rows] == ["frontend", "frontend_full_fb", "frontend_mel_only",
                                            "frontend_pitch_full_rate"]
    assert rows[0]["max_abs_diff_vs_full"] < 1e-4
    assert 0 < rows[3]["max_abs_diff_vs_frontend"] < 0.1


def test_export_timing_reads_the_figures_the_export_writes():
    parity = {"timing": {"total_s": 12.5, "stages_s": {"saved_model": 2.0, "convert_float32": 4.5, "parity": 1.0,
                                                       "triplet_accuracy": 5.0}, "note": "..."},
              "triplet_accuracy": {"crops": {"in_triplets": 30, "distinct": 21},
                                   "seconds": {"keras": 1.5, "float32": 1.0}, "accuracy": {}}}
    timing = export_bench.export_timing(parity)
    assert timing == {"total_s": 12.5, "stages_s": parity["timing"]["stages_s"],
                      "triplet_scoring_s": {"keras": 1.5, "float32": 1.0},
                      "triplet_crops": {"in_triplets": 30, "distinct": 21}}
    text = export_bench.format_export_timing(timing, 13.0)
    assert text.startswith("export: 13.0 s (12.5 s to parity.json): triplet_accuracy 5.0, convert_float32 4.5,")
    assert "21 distinct of 30 crops: keras 1.5 s, float32 1.0 s" in text
    # An export without test triplets (synthetic audio) has no scoring line.
    bare = export_bench.export_timing({"timing": parity["timing"], "triplet_accuracy": {"skipped": "..."}})
    assert "triplet_scoring_s" not in bare and "\n" not in export_bench.format_export_timing(bare, 13.0)


@pytest.mark.slow  # an export and seven conversions
def test_stage_latency_times_the_network_and_the_frontend_parts(tmp_path):
    """The network alone (the export's log_mel signature) in float32 and int8, the mel spectrum as
    exported beside 0.9.1's RFFT (same values), and the decimation as exported beside the 0.9.0 strided convolution, which gives the same samples."""
    from disentangled_ml.config import Config
    from disentangled_ml.export import export_run, tflite
    from test_export import make_run

    run, _ = make_run(str(tmp_path), with_audio=False)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tflite, "VARIANTS", tuple(v for v in tflite.VARIANTS if v.name == "float32"))
        export_run(run, str(tmp_path / "export"), int8_full=False, parity_segments=2)
    fe = Config.from_json(os.path.join(run, "config.json")).frontend
    assert fe.pitch_decimation_factor == 2
    rows = export_bench.stage_latency(fe, str(tmp_path / "export"), str(tmp_path), warmup=1, repeats=2)
    assert [r["variant"] for r in rows] == ["network_float32", "network_int8", "stage_mel_stft", "stage_mel_stft_rfft",
                                            "stage_decimate_polyphase", "stage_decimate_strided"]
    assert all(r["latency_ms_median"] > 0 for r in rows)
    assert rows[1]["size_bytes"] < rows[0]["size_bytes"]  # int8 weights
    # the factorised DFT and LiteRT's RFFT give the same filtered power spectrum (relative to its scale)
    assert rows[3]["max_abs_diff_vs_factorised"] < 1e-4 * max(1.0, rows[3]["max_abs_mel_power"])
    assert rows[-1]["max_abs_diff_vs_polyphase"] < 1e-5


def test_latency_ab_times_every_file_in_interleaved_rounds(tmp_path):
    """benchmarks/latency_ab.py: each file gets one median per round, the reported figure is their
    median, and the fastest call is no slower than it; the JSON names every file."""
    import json

    import numpy as np

    import latency_ab

    x = np.zeros((1, 2048), np.float32)
    paths = []
    for name, fn in (("double", lambda a: a * 2.0), ("plus_one", lambda a: a + 1.0)):
        export_bench._waveform_tflite(name, fn, x, str(tmp_path), warmup=1, repeats=1)
        paths.append(str(tmp_path / f"{name}.tflite"))
    out = tmp_path / "ab.json"
    assert latency_ab.main(paths + ["--rounds", "3", "--calls", "2", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["file"] for r in rows] == paths
    for r in rows:
        assert len(r["round_medians_ms"]) == 3
        assert r["latency_ms_median_of_medians"] == sorted(r["round_medians_ms"])[1]
        assert 0 < r["latency_ms_min"] <= r["latency_ms_median_of_medians"]
