"""Helpers shared by the benchmark scripts (imported as ``_common``: the scripts run from this folder)."""

from __future__ import annotations

from typing import Dict, List

#: CPU flags that make TensorFlow turn oneDNN on by itself (TensorFlow RFC 400).
ONEDNN_AUTO_FLAGS = ("avx512_vnni", "avx512_bf16", "avx_vnni", "amx")


def cpu_info() -> Dict[str, object]:
    """This machine's CPU from ``/proc/cpuinfo`` (read once): ``{"cpu": model name, "flags": [...]}``.

    Empty values where the file is missing (not Linux).
    """
    try:
        with open("/proc/cpuinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        lines = []
    cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "")
    flags: List[str] = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
    return {"cpu": cpu, "flags": flags}


def onednn_auto_flags(flags) -> List[str]:
    """The flags among ``flags`` with which TensorFlow enables oneDNN without being asked."""
    return sorted(x for x in flags if x.startswith(ONEDNN_AUTO_FLAGS))
