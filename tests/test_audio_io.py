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


def test_failures_say_what_is_wrong_and_keep_the_decoder_text(tmp_path):
    import soundfile

    y = (0.5 * np.sin(2 * np.pi * 440 * np.arange(16000) / 8000)).astype(np.float32)
    soundfile.write(str(tmp_path / "tone.flac"), y, 8000, subtype="PCM_16")
    misnamed = tmp_path / "tone.wav"
    misnamed.write_bytes((tmp_path / "tone.flac").read_bytes())
    with pytest.raises(AudioDecodeError, match=r"tone.wav: a FLAC file named \.wav: rename it to \.flac") as e:
        load_audio(str(misnamed), 8000)
    assert e.value.detail == "libsndfile reads it as FLAC PCM_16"
    soundfile.write(str(tmp_path / "long.wav"), y, 8000, subtype="PCM_16")
    cut = tmp_path / "cut.wav"
    cut.write_bytes((tmp_path / "long.wav").read_bytes()[:44 + 16000])  # half of the 32,000 bytes of samples
    with pytest.raises(AudioDecodeError, match=r"cut.wav: truncated WAV \(stops at byte 16,044 of the 32,044 its "
                                               r"header announces: 1.00 s of 2.00 s\): re-encode or re-download"):
        load_audio(str(cut), 8000)
    page = tmp_path / "song.mp3"
    page.write_text("<!DOCTYPE html>\n<html><body>403 Forbidden</body></html>\n")
    with pytest.raises(AudioDecodeError, match=r"song.mp3: not an audio file \(an HTML page") as e:
        probe_audio(str(page))
    assert e.value.detail  # the decoder's words
    noise = tmp_path / "noise.ogg"
    noise.write_bytes(bytes(range(7, 255)) * 4)
    with pytest.raises(AudioDecodeError, match=r"noise.ogg: not an Ogg file, nor any audio format the decoders "
                                               r"know \(it starts with bytes 07 08 09 0a 0b 0c 0d 0e\)"):
        probe_audio(str(noise))


@pytest.mark.parametrize("ext,subtype,code", [
    ("wav", "PCM_16", "wav:int16"), ("wav", "PCM_24", "wav:int32"), ("wav", "FLOAT", "wav:float32"),
    ("flac", "PCM_16", "flac:int16"), ("flac", "PCM_24", "flac:int32"), ("wav", "PCM_U8", "wav:uint8"),
])
def test_sample_types_decode_to_the_written_signal(tmp_path, ext, subtype, code):
    import soundfile

    y = (0.5 * np.sin(2 * np.pi * 440 * np.arange(8000) / 8000)).astype(np.float32)
    path = str(tmp_path / f"tone.{ext}")
    soundfile.write(path, np.stack([y, y], axis=1), 8000, subtype=subtype)
    info = probe_audio(path)
    assert (info.format_code, info.num_frames, info.channels, info.sample_rate) == (code, 8000, 2, 8000)
    z = load_audio(path, 8000)
    # one quantisation step of the sample type: 3e-5 of full scale at 16 bits, 1/128 at 8 bits
    np.testing.assert_allclose(z, y, atol=1e-4 if subtype != "PCM_U8" else 1.0 / 128)


@pytest.mark.parametrize("ext,subtype", [("wav", "PCM_32"), ("wav", "DOUBLE"), ("flac", "PCM_S8")])
def test_sample_types_the_decoder_gets_wrong_are_refused_by_name(tmp_path, ext, subtype):
    # tensorflow-io reads 32-bit integer WAV as float32 and decoded it to NaN; such files must
    # be refused with the fix, never handed to training.
    import soundfile

    path = str(tmp_path / f"tone.{ext}")
    soundfile.write(path, np.zeros(8000, np.float32) + 0.1, 8000, subtype=subtype)
    with pytest.raises(AudioDecodeError, match=f"tone.{ext}.*{subtype}.*re-encode"):
        probe_audio(path)
    with pytest.raises(AudioDecodeError, match=f"tone.{ext}"):
        load_audio(path, 8000)
