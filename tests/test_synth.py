"""`dml synth`: files, manifest, determinism, decodability in tf.data, madmom tempo, errors, factor independence,
the drumless variant (--no-percussion)."""

from __future__ import annotations

import dataclasses
import glob
import os

import numpy as np
import pytest
import soundfile as sf

from disentangled_ml import synth
from disentangled_ml.cli import main
from disentangled_ml.data.manifest import read_manifest, write_manifest

SHORT = ["--min-seconds", "4", "--max-seconds", "5", "--no-progress"]


def _run_cli(*argv):
    return main(["synth", *map(str, argv)])


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "collection"
    assert _run_cli(out, "--tracks", 6, "--seed", 3, "--jobs", 2, *SHORT) == 0
    return str(out)


def test_cli_writes_wav_flac_ogg_and_a_contract_manifest(collection):
    manifest = os.path.join(collection, "manifest.csv")
    with open(manifest) as f:
        assert f.readline().strip() == "path,track_id,genre,mood,instrument,tempo"
    tracks = read_manifest(manifest)
    assert [t.track_id for t in tracks] == [f"synth_{i:04d}" for i in range(1, 7)]
    assert [os.path.splitext(t.path)[1] for t in tracks] == [".wav", ".flac", ".ogg"] * 2
    expected_subtype = {".wav": "PCM_16", ".flac": "PCM_16", ".ogg": "VORBIS"}
    for t in tracks:
        info = sf.info(t.path)
        assert info.samplerate == synth.SAMPLE_RATE and info.channels == 1
        assert info.subtype == expected_subtype[os.path.splitext(t.path)[1]]
        assert 4.0 <= info.duration <= 5.0
        y, _ = sf.read(t.path, dtype="float32")
        peak = np.max(np.abs(y))
        assert 0.8 < peak < 0.95, f"{t.path}: peak {peak}, expected about -1 dBFS without clipping"
        assert t.labels["genre"][0] in synth.GENRES
        assert t.labels["mood"][0] in synth.MOODS
        assert t.labels["instrument"][0] in synth.INSTRUMENTS
        assert synth.TEMPO_RANGE[0] <= t.tempo <= synth.TEMPO_RANGE[1] and round(t.tempo, 1) == t.tempo
    # Nothing but the tracks, the manifest and synth.json (no temporary files left behind).
    assert sorted(os.listdir(collection)) == sorted(["manifest.csv", "synth.json"]
                                                    + [os.path.basename(t.path) for t in tracks])
    assert synth.read_info(collection) == {"synth_version": synth.SYNTH_VERSION, "seed": 3, "tracks": 6,
                                           "min_seconds": 4.0, "max_seconds": 5.0,
                                           "sample_rate": synth.SAMPLE_RATE, "percussion": True}


def test_manifest_reads_back_unchanged(collection, tmp_path):
    manifest = os.path.join(collection, "manifest.csv")
    tracks = read_manifest(manifest)
    copy = os.path.join(collection, "copy.csv")  # same folder, so relative paths stay relative
    try:
        write_manifest(tracks, copy, tag_columns=("genre", "mood", "instrument"))
        with open(manifest, "rb") as a, open(copy, "rb") as b:
            assert a.read() == b.read()
        assert read_manifest(copy) == tracks
    finally:
        os.remove(copy)


def test_manifest_matches_the_cheap_label_draw(collection):
    tracks = read_manifest(os.path.join(collection, "manifest.csv"))
    specs = synth.draw_track_specs(6, 3, 4, 5)
    assert [(s.genre, s.mood, s.instrument, s.tempo) for s in specs] == [
        (t.labels["genre"][0], t.labels["mood"][0], t.labels["instrument"][0], t.tempo) for t in tracks]
    assert [sf.info(t.path).frames for t in tracks] == [s.num_samples for s in specs]


def _decoded(folder):
    paths = sorted(glob.glob(os.path.join(folder, "synth_*")))
    return {os.path.basename(p): sf.read(p, dtype="float32")[0] for p in paths}


def test_same_seed_same_collection_for_any_jobs_and_other_seed_differs(tmp_path):
    a = synth.synthesize_collection(tmp_path / "a", 3, 11, min_seconds=4, max_seconds=4.5, jobs=1, progress=False)
    b = synth.synthesize_collection(tmp_path / "b", 3, 11, min_seconds=4, max_seconds=4.5, jobs=2, progress=False)
    c = synth.synthesize_collection(tmp_path / "c", 3, 12, min_seconds=4, max_seconds=4.5, jobs=1, progress=False)
    with open(a, "rb") as fa, open(b, "rb") as fb, open(c, "rb") as fc:
        ma, mb, mc = fa.read(), fb.read(), fc.read()
    assert ma == mb
    assert ma != mc
    da, db, dc = _decoded(tmp_path / "a"), _decoded(tmp_path / "b"), _decoded(tmp_path / "c")
    assert list(da) == ["synth_0001.wav", "synth_0002.flac", "synth_0003.ogg"] == list(db)
    for name in da:
        np.testing.assert_array_equal(da[name], db[name], err_msg=name)
        assert da[name].shape != dc[name].shape or not np.array_equal(da[name], dc[name])
    for name in ("synth_0001.wav", "synth_0002.flac"):  # lossless files are byte-identical too
        with open(tmp_path / "a" / name, "rb") as fa, open(tmp_path / "b" / name, "rb") as fb:
            assert fa.read() == fb.read()


def test_tensorflow_io_decodes_every_format_inside_tf_data(collection):
    import tensorflow as tf

    from disentangled_ml.audio_io import FORMAT_CODES, decode_audio_tf, probe_audio

    paths = sorted(glob.glob(os.path.join(collection, "synth_*")))
    infos = [probe_audio(p) for p in paths]
    assert {i.format_code for i in infos} == {"wav:int16", "flac:int16", "ogg"}
    ds = tf.data.Dataset.from_tensor_slices((
        paths, [FORMAT_CODES.index(i.format_code) for i in infos], [i.sample_rate for i in infos],
    )).map(lambda p, code, rate: decode_audio_tf(tf.io.read_file(p), code, rate, synth.SAMPLE_RATE))
    for path, info, y in zip(paths, infos, ds.as_numpy_iterator()):
        ref, _ = sf.read(path, dtype="float32")
        assert y.shape == ref.shape == (info.num_frames,), path
        if path.endswith(".ogg"):
            # Both use libvorbis; allow float rounding differences only.
            assert np.max(np.abs(y - ref)) < 1e-3, path
        else:
            np.testing.assert_allclose(y, ref, atol=1e-6, err_msg=path)


def madmom_tempo(y: np.ndarray, sample_rate: int) -> float:
    """Top tempo of madmom's RNN beat activations. madmom takes a bare array to be at 44.1 kHz."""
    import librosa
    from madmom.features.beats import RNNBeatProcessor
    from madmom.features.tempo import TempoEstimationProcessor

    y44 = librosa.resample(y, orig_sr=sample_rate, target_sr=44100)
    return float(TempoEstimationProcessor(fps=100)(RNNBeatProcessor()(y44))[0, 0])


def test_madmom_recovers_the_labelled_tempo():
    specs = synth.draw_track_specs(8, 5, 20, 20)
    tempi = np.round(np.linspace(62.0, 176.0, 8), 1)  # spread over the range, every genre twice
    results = []
    for i, (spec, bpm) in enumerate(zip(specs, tempi)):
        spec = dataclasses.replace(spec, genre=synth.GENRES[i % len(synth.GENRES)], tempo=float(bpm))
        est = madmom_tempo(synth.render_track(spec, 5), synth.SAMPLE_RATE)
        results.append((spec.genre, bpm, round(est, 1), abs(est / bpm - 1) <= 0.04))
    agreement = np.mean([r[-1] for r in results])
    assert agreement >= 0.8, results


def test_every_chord_of_a_progression_carries_the_mode():
    # Primary chords only (I IV V / i iv v): a 3 s crop holds one or two chords, so each must
    # show the mode by itself (major third 4 semitones above the root, minor 3).
    for progression in synth._PROGRESSIONS:
        for mode, scale, third in (("major", synth._MAJOR, 4), ("minor", synth._MINOR, 3)):
            harmony = synth._Harmony(key=5, scale=scale, progression=progression)
            for bar in range(len(progression)):
                root, mid, fifth = harmony.chord(bar, 3, base=48)
                assert (mid - root, fifth - root) == (third, 7), (mode, progression, bar)


def test_madmom_chord_recogniser_hears_the_mode_in_a_3s_crop():
    specs = synth.draw_track_specs(16, 12, 8, 8)
    crop = 3 * synth.SAMPLE_RATE
    results = []
    for i, spec in enumerate(specs):
        spec = dataclasses.replace(spec, mood=synth.MOODS[i % len(synth.MOODS)])
        y = synth.render_track(spec, 12)[2 * synth.SAMPLE_RATE:][:crop]
        heard = synth.mode_heard(y, synth.SAMPLE_RATE)
        results.append((spec.mood, spec.genre, heard, heard == synth.MOOD_FACTORS[spec.mood][0]))
    # Synthesiser version 2 gets 14 of these 16 right; version 1 (chords the modes share) got 9.
    assert np.mean([r[-1] for r in results]) >= 0.75, results


def _expect_usage_error(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as e:
        _run_cli(*argv)
    assert e.value.code == 2
    return capsys.readouterr().err


def test_bad_arguments_exit_2_naming_the_value(tmp_path, capsys):
    err = _expect_usage_error(capsys, tmp_path / "x", "--tracks", 0)
    assert "--tracks" in err and "0" in err
    err = _expect_usage_error(capsys, tmp_path / "x", "--tracks", -3)
    assert "-3" in err
    err = _expect_usage_error(capsys, tmp_path / "x", "--tracks", 2, "--min-seconds", 9, "--max-seconds", 5)
    assert "--min-seconds 9" in err and "--max-seconds 5" in err
    err = _expect_usage_error(capsys, tmp_path / "x", "--tracks", 2, "--min-seconds", 1)
    assert "--min-seconds=1" in err
    assert not os.path.exists(tmp_path / "x")  # nothing created on a bad argument


def test_unusable_output_folder_exits_2_naming_it(tmp_path, capsys):
    a_file = tmp_path / "file.txt"
    a_file.write_text("not a folder")
    err = _expect_usage_error(capsys, a_file, "--tracks", 1, *SHORT)
    assert str(a_file) in err and "not a folder" in err
    err = _expect_usage_error(capsys, a_file / "below", "--tracks", 1, *SHORT)
    assert str(a_file / "below") in err and "cannot be created" in err
    err = _expect_usage_error(capsys, "/proc/dml_synth_test", "--tracks", 1, *SHORT)
    assert "/proc/dml_synth_test" in err


def test_non_empty_folder_needs_overwrite_which_replaces_old_tracks(tmp_path, capsys):
    out = tmp_path / "c"
    synth.synthesize_collection(out, 2, 0, min_seconds=3, max_seconds=3, jobs=1, progress=False)
    (out / "notes.txt").write_text("mine")
    err = _expect_usage_error(capsys, out, "--tracks", 1, "--min-seconds", 3, "--max-seconds", 3, "--no-progress")
    assert str(out) in err and "--overwrite" in err
    assert _run_cli(out, "--tracks", 1, "--min-seconds", 3, "--max-seconds", 3, "--no-progress", "--overwrite") == 0
    # stale synth_0002 removed
    assert sorted(os.listdir(out)) == ["manifest.csv", "notes.txt", "synth.json", "synth_0001.wav"]


def test_python_api_rejects_bad_values():
    with pytest.raises(synth.SynthError, match="got 0"):
        synth.draw_track_specs(0, 1)
    with pytest.raises(synth.SynthError, match="seed"):
        synth.draw_track_specs(2, -1)
    with pytest.raises(synth.SynthError, match="greater than"):
        synth.draw_track_specs(2, 1, min_seconds=10, max_seconds=5)


def test_factors_are_drawn_independently_and_uniformly():
    from scipy.stats import chi2_contingency, chisquare

    specs = synth.draw_track_specs(3000, 2024)
    table = synth.label_table(specs)
    classes = {"genre": synth.GENRES, "mood": synth.MOODS, "instrument": synth.INSTRUMENTS}
    edges = np.linspace(*synth.TEMPO_RANGE, 5)
    codes = {f: np.array([classes[f].index(v) for v in table[f]]) for f in classes}
    codes["tempo"] = np.clip(np.digitize([s.tempo for s in specs], edges) - 1, 0, 3)
    for f, c in codes.items():
        assert chisquare(np.bincount(c)).pvalue > 1e-3, f"{f} classes are not uniform: {np.bincount(c)}"
    names = list(codes)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            cont = np.zeros((codes[a].max() + 1, codes[b].max() + 1))
            np.add.at(cont, (codes[a], codes[b]), 1)
            chi2, p, _, _ = chi2_contingency(cont)
            cramers_v = np.sqrt(chi2 / (len(specs) * (min(cont.shape) - 1)))
            assert p > 1e-3 and cramers_v < 0.1, f"{a} and {b} look dependent: p={p:.2g}, V={cramers_v:.3f}"


# --------------------------------------------------------------------------- drumless variant


def _high_band_share(y: np.ndarray) -> float:
    """Share of the energy above 5 kHz: the noise of snare, hi-hat, ride and shaker lives there."""
    power = np.abs(np.fft.rfft(y)) ** 2
    return float(power[np.fft.rfftfreq(len(y), 1.0 / synth.SAMPLE_RATE) > 5000].sum() / power.sum())


def test_drumless_track_is_the_drummed_one_without_its_drums(monkeypatch):
    specs = [dataclasses.replace(s, genre=g) for s, g in zip(synth.draw_track_specs(4, 9, 4, 4), synth.GENRES)]
    drummed = [synth.render_track(s, 9) for s in specs]
    drumless = [synth.render_track(s, 9, percussion=False) for s in specs]
    for spec, a, b in zip(specs, drummed, drumless):
        assert b.shape == a.shape and not np.allclose(a, b), spec.genre
        np.testing.assert_array_equal(b, synth.render_track(spec, 9, percussion=False))  # deterministic
        # No drum noise: the band above 5 kHz loses nearly all its energy (measured: 100x or more).
        assert _high_band_share(b) < 0.1 * _high_band_share(a), (spec.genre, _high_band_share(a), _high_band_share(b))
        # Same peak normalisation; without drum transients the RMS comes out higher, not collapsed.
        assert 0.8 < np.max(np.abs(b)) < 0.95
        assert synth._rms(b) > 0.9 * synth._rms(a), spec.genre

    # The only differences are the drums and the drumless beat pulse: with the drums rendered (so
    # every random draw happens) but silenced, and the pulse muted, the two renders are identical.
    render_drums = synth._render_drums

    def silenced(buf, *args):
        render_drums(buf, *args)
        buf[:] = 0.0

    monkeypatch.setattr(synth, "_render_drums", silenced)
    monkeypatch.setattr(synth, "_PULSE_DB", -np.inf)
    for spec, b in zip(specs, drumless):
        np.testing.assert_array_equal(synth.render_track(spec, 9), synth.render_track(spec, 9, percussion=False))
        # the pulse is only for latin, whose syncopated parts do not mark the beat by themselves
        assert np.array_equal(synth.render_track(spec, 9, percussion=False), b) == (spec.genre != "latin")


def test_madmom_hears_the_tempo_from_the_note_onsets_alone():
    from disentangled_ml.data.tempo import estimate_tempo

    # latin at 140 BPM: without the beat pulse madmom hears 93.8 BPM (2/3) here
    cases = (("latin", 140.0), ("electronic", 96.5), ("jazz", 150.0))
    results = []
    for spec, (genre, bpm) in zip(synth.draw_track_specs(3, 4, 8, 8), cases):
        spec = dataclasses.replace(spec, genre=genre, tempo=bpm)
        est = estimate_tempo(synth.render_track(spec, 4, percussion=False), synth.SAMPLE_RATE)
        ok = est is not None and min(abs(est / (bpm * f) - 1) for f in (0.5, 1.0, 2.0)) <= 0.04
        results.append((genre, bpm, est, ok))
    assert all(r[-1] for r in results), results


def test_no_percussion_flag_gives_the_same_manifest_and_drumless_audio(collection, tmp_path):
    out = tmp_path / "drumless"
    assert _run_cli(out, "--tracks", 6, "--seed", 3, "--jobs", 1, "--no-percussion", *SHORT) == 0
    with open(os.path.join(collection, "manifest.csv"), "rb") as a, open(out / "manifest.csv", "rb") as b:
        assert a.read() == b.read()  # same specs, track by track
    info = synth.read_info(str(out))
    assert info["percussion"] is False and info["seed"] == 3 and info["synth_version"] == synth.SYNTH_VERSION
    assert synth.read_info(collection)["percussion"] is True
    spec = synth.draw_track_specs(6, 3, 4, 5)[0]
    y, _ = sf.read(out / spec.filename, dtype="float32")  # 16-bit WAV of the drumless render
    np.testing.assert_allclose(y, synth.render_track(spec, 3, percussion=False), atol=1.0 / 32768)
    drummed = _decoded(collection)
    for name, y in _decoded(out).items():
        assert y.shape == drummed[name].shape and not np.allclose(y, drummed[name], atol=1e-2), name
