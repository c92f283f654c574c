"""benchmarks/export.py's frontend-only rows: trimmed and full filterbanks convert and give the same bands."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import export as export_bench  # noqa: E402

from collections_for_tests import tiny_config  # noqa: E402


def test_frontend_latency_rows_compare_trimmed_and_full_filterbanks(tmp_path):
    fe = tiny_config().frontend
    rows = export_bench.frontend_latency(fe, str(tmp_path), warmup=1, repeats=2)
    assert [r["variant"] for r in rows] == ["frontend", "frontend_full_fb"]
    for r in rows:
        assert r["latency_ms_median"] > 0 and r["size_bytes"] > 0
    # same bands from fewer weights: the trimmed matrices drop only all-zero rows
    assert rows[0]["max_abs_diff_vs_full"] < 1e-4
    assert rows[0]["size_bytes"] < rows[1]["size_bytes"]
