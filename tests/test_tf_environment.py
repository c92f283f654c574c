"""disentangled_ml.tf_environment: TensorFlow's import-time settings, never overriding the user's."""

import os
import platform
import subprocess
import sys

from disentangled_ml import tf_environment


def test_sets_onednn_and_log_level_on_x86_64_where_unset():
    env = {}
    assert tf_environment.configure(env, machine="x86_64") == {"TF_CPP_MIN_LOG_LEVEL": "2",
                                                                "TF_ENABLE_ONEDNN_OPTS": "1"}
    assert env == {"TF_CPP_MIN_LOG_LEVEL": "2", "TF_ENABLE_ONEDNN_OPTS": "1"}


def test_keeps_what_the_user_set():
    env = {"TF_ENABLE_ONEDNN_OPTS": "0", "TF_CPP_MIN_LOG_LEVEL": "0"}
    assert tf_environment.configure(env, machine="x86_64") == {}
    assert env == {"TF_ENABLE_ONEDNN_OPTS": "0", "TF_CPP_MIN_LOG_LEVEL": "0"}


def test_leaves_onednn_to_tensorflow_off_x86_64():
    env = {}
    tf_environment.configure(env, machine="aarch64")
    assert "TF_ENABLE_ONEDNN_OPTS" not in env and env["TF_CPP_MIN_LOG_LEVEL"] == "2"


def test_dml_sets_it_before_a_subcommand_runs():
    # every subcommand runs through cli.main, which must set the variable before TensorFlow loads
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    code = ("import os, sys; from disentangled_ml.cli import main; "
            "assert 'tensorflow' not in sys.modules, 'importing the CLI loaded TensorFlow'; "
            "import contextlib, io\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    try: main(['synth', '--help'])\n"
            "    except SystemExit: pass\n"
            "print(os.environ.get('TF_ENABLE_ONEDNN_OPTS'))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    expected = "1" if platform.machine().lower() in ("x86_64", "amd64") else "None"
    assert out.stdout.strip().splitlines()[-1] == expected
    env["TF_ENABLE_ONEDNN_OPTS"] = "0"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "0"
