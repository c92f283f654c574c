"""TensorFlow's process-wide settings that must be made before ``import tensorflow``.

TensorFlow reads these environment variables once, when it is first imported, so the
``dml`` command sets them at the top of :func:`disentangled_ml.cli.main`; a program
that imports the library itself can call :func:`configure` first. Values the user
has already set are never overridden.

* ``TF_CPP_MIN_LOG_LEVEL=2``: keep TensorFlow's start-up chatter out of the CLI.
* ``TF_ENABLE_ONEDNN_OPTS=1`` on x86-64: TensorFlow 2.9+ turns its oneDNN kernels on
  by default only on CPUs with AVX512_VNNI, AVX512_BF16, AVX_VNNI or AMX (TensorFlow
  RFC 400). Everywhere else, e.g. AMD EPYC before Zen 4 and Intel before Cascade
  Lake, its own convolution kernels run, and a training step of the default model was 2.3-2.7x
  slower on a 2-core AMD EPYC (Zen 1) (``benchmarks/onednn.py``,
  ``benchmarks/RESULTS.md``). oneDNN changes the order of floating-point sums, so
  results differ from the other kernels by round-off only. ``TF_ENABLE_ONEDNN_OPTS=0``
  in the environment keeps TensorFlow's own kernels.
"""

from __future__ import annotations

import logging
import os
import platform
import sys
from typing import Dict, MutableMapping, Optional

__all__ = ["DEFAULTS", "configure"]

_log = logging.getLogger(__name__)

#: The settings :func:`configure` makes, where the machine is one they apply to.
DEFAULTS: Dict[str, str] = {"TF_CPP_MIN_LOG_LEVEL": "2", "TF_ENABLE_ONEDNN_OPTS": "1"}

# oneDNN's CPU kernels in the TensorFlow wheels are built for x86-64; aarch64 wheels
# decide for themselves (ACL), so leave them alone there.
_X86_64 = ("x86_64", "amd64")


def configure(environ: Optional[MutableMapping[str, str]] = None, machine: Optional[str] = None) -> Dict[str, str]:
    """Set :data:`DEFAULTS` in ``environ`` where unset; returns what it set.

    Args:
        environ: the environment to change (default ``os.environ``).
        machine: the processor architecture, as ``platform.machine()`` prints it
            (default: this machine's).

    Returns:
        dict of the variables it set (those already present are left as they are).
    """
    environ = os.environ if environ is None else environ
    machine = (platform.machine() if machine is None else machine).lower()
    wanted = dict(DEFAULTS)
    if machine not in _X86_64:
        wanted.pop("TF_ENABLE_ONEDNN_OPTS")
    set_now = {k: v for k, v in wanted.items() if k not in environ}
    if set_now and environ is os.environ and "tensorflow" in sys.modules:
        _log.warning("TensorFlow was imported before disentangled_ml.tf_environment.configure(): %s take effect "
                     "only in a new process", ", ".join(f"{k}={v}" for k, v in set_now.items()))
    environ.update(set_now)
    return set_now
