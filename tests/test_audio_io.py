"""audio_io: probing and decoding from several threads gives the same answers as one thread."""

import concurrent.futures as cf

import numpy as np
import pytest

from collections_for_tests import write_tracks
from disentangled_ml.audio_io import AudioDecodeError, load_audio, probe_audio


def test_concurrent_probe_and_decode_match_serial(tmp_path):
    # tensorflow-io's AudioIOTensor misreported a 16-bit FLAC as float32 when built from several
    # threads at once (evaluation and embedding decode in thread pools); probes are serialised.
    tracks = write_tracks(str(tmp_path), n=12, seconds=2.0)
    paths = [t.path for t in tracks] * 4
    serial = {p: probe_audio(p).format_code for p in paths}
    lengths = {p: load_audio(p, 8000).size for p in set(paths)}
    with cf.ThreadPoolExecutor(6) as pool:
        probed = list(pool.map(lambda p: probe_audio(p).format_code, paths))
        decoded = list(pool.map(lambda p: load_audio(p, 8000).size, paths))
    assert probed == [serial[p] for p in paths]
    assert decoded == [lengths[p] for p in paths]


def test_bad_inputs_name_the_file(tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("not audio")
    with pytest.raises(AudioDecodeError, match="notes.txt.*unsupported"):
        probe_audio(str(bad))
    with pytest.raises(AudioDecodeError, match="missing.wav.*not found"):
        probe_audio(str(tmp_path / "missing.wav"))
    truncated = tmp_path / "cut.wav"
    good = write_tracks(str(tmp_path), n=1, seconds=1.0)[0].path
    truncated.write_bytes(open(good, "rb").read()[:20])
    with pytest.raises(AudioDecodeError, match="cut.wav"):
        load_audio(str(truncated), 8000)
    assert np.isfinite(load_audio(good, 8000)).all()
