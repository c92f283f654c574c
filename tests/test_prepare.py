"""`dml prepare`: rejection reasons, prepared info, tempo, resume after an interruption, labels, audio cache."""

from __future__ import annotations

import argparse
import csv
import glob
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf

from disentangled_ml import audio_io
from disentangled_ml.cli import CliError
from disentangled_ml.config import Config
from disentangled_ml.data.manifest import Track, read_manifest
from disentangled_ml.data.prepare import PrepareError, format_label_report, label_report, prepare_collection, run_jobs
from disentangled_ml.data.shards import INT16_SCALE, parse_audio_example
from collections_for_tests import process_timeout

SR = 22050


def click_track(bpm: float, seconds: float, sr: int = SR, seed: int = 0) -> np.ndarray:
    """Decaying 1 kHz clicks on every beat over faint noise; float32 [samples]."""
    y = 0.01 * np.random.default_rng(seed).standard_normal(int(seconds * sr)).astype(np.float32)
    t = np.arange(int(0.02 * sr)) / sr
    click = (0.8 * np.sin(2 * np.pi * 1000 * t) * np.exp(-t * 200)).astype(np.float32)
    for start in np.arange(0, seconds, 60.0 / bpm):
        i = int(start * sr)
        y[i:i + len(click)] += click[:len(y) - i]
    return y


def write_csv(path, rows, columns=("path", "track_id", "genre", "mood", "tempo")):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns))
        w.writeheader()
        for row in rows:
            w.writerow({c: row.get(c, "") for c in columns})


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def sha1(path):
    return hashlib.sha1(open(path, "rb").read()).hexdigest()


def test_every_rejection_reason_and_accepted_info(tmp_path, monkeypatch):
    audio = tmp_path / "audio"
    audio.mkdir()
    sf.write(audio / "good.wav", click_track(120, 4), SR, subtype="PCM_16")
    stereo = np.stack([click_track(100, 4, 44100), click_track(100, 4, 44100, seed=1)], axis=1)
    sf.write(audio / "good.flac", stereo, 44100, subtype="PCM_16")
    sf.write(audio / "good.ogg", click_track(90, 4), SR, format="OGG", subtype="VORBIS")
    sf.write(audio / "trunc.wav", click_track(120, 4), SR, subtype="PCM_16")
    data = (audio / "trunc.wav").read_bytes()
    (audio / "trunc.wav").write_bytes(data[:len(data) // 2])
    (audio / "garbage.wav").write_bytes(np.random.default_rng(0).bytes(5000))
    (audio / "notes.txt").write_text("not audio")
    sf.write(audio / "sound.aiff", click_track(120, 4), SR, format="AIFF")
    sf.write(audio / "short.wav", click_track(120, 1), SR)
    sf.write(audio / "silent.wav", np.zeros(4 * SR, np.float32), SR)
    sf.write(audio / "boom.wav", click_track(120, 4, seed=7), SR)
    sf.write(audio / "copy.wav", click_track(120, 4), SR, subtype="PCM_16")  # the same bytes as good.wav
    rows = [
        {"path": "audio/good.wav", "track_id": "g_wav", "genre": "rock", "tempo": "120"},
        {"path": "audio/good.flac", "track_id": "g_flac", "genre": "pop|rock", "tempo": "100"},
        {"path": "audio/good.ogg", "track_id": "g_ogg", "genre": "jazz", "mood": "calm"},
        {"path": "audio/trunc.wav", "track_id": "trunc"},
        {"path": "audio/garbage.wav", "track_id": "garbage"},
        {"path": "audio/notes.txt", "track_id": "txt"},
        {"path": "audio/sound.aiff", "track_id": "aiff"},
        {"path": "audio/missing.wav", "track_id": "missing"},
        {"path": "audio/short.wav", "track_id": "short"},
        {"path": "audio/silent.wav", "track_id": "silent"},
        {"path": "audio/boom.wav", "track_id": "boom"},
        {"path": "audio/copy.wav", "track_id": "copy", "genre": "rock"},
    ]
    write_csv(tmp_path / "m.csv", rows)

    real_load = audio_io.load_audio

    def load_or_fail(path, sample_rate):  # an unexpected bug on one file must not stop the run
        if path.endswith("boom.wav"):
            raise RuntimeError("simulated bug")
        return real_load(path, sample_rate)

    monkeypatch.setattr(audio_io, "load_audio", load_or_fail)
    out = tmp_path / "prepared"
    s = prepare_collection(str(tmp_path / "m.csv"), str(out), jobs=0, estimate_tempo=False, progress=False)

    expected = {"trunc": "undecodable", "garbage": "undecodable", "txt": "unsupported_format",
                "aiff": "unsupported_format", "missing": "missing_file", "short": "too_short",
                "silent": "silent", "boom": "error"}
    rejected = {r["track_id"]: r for r in read_csv(out / "rejected.csv")}
    assert {k: r["reason"] for k, r in rejected.items()} == expected
    for r in rejected.values():  # each message names the file
        assert os.path.basename(r["path"]) in r["message"]
    assert "3 s segment" in rejected["short"]["message"]
    assert "simulated bug" in (out / "errors.log").read_text()
    assert s.total == 12 and s.accepted == 4
    assert s.rejected == {"error": 1, "missing_file": 1, "silent": 1, "too_short": 1, "undecodable": 2,
                          "unsupported_format": 2}
    # copy.wav has good.wav's bytes: served by good.wav's cache entry, and reported as a duplicate.
    assert (s.processed, s.prechecked, s.from_cache) == (8, 3, 1)
    assert s.duplicates == [["g_wav", "copy"]]

    tracks = {t.track_id: t for t in read_manifest(str(out / "manifest.csv"))}
    assert list(tracks) == ["g_wav", "g_flac", "g_ogg", "copy"]
    flac = tracks["g_flac"]
    assert flac.path == str(audio / "good.flac")  # still points at the original file
    assert flac.labels["genre"] == ("pop", "rock")
    assert flac.info["sample_rate"] == "44100" and flac.info["num_frames"] == str(4 * 44100)
    assert flac.info["channels"] == "2" and flac.info["format_code"] == "flac:int16"
    assert float(flac.info["duration"]) == pytest.approx(4.0)
    assert flac.info["sha1"] == sha1(audio / "good.flac")
    assert (flac.tempo, flac.info["tempo_source"]) == (100.0, "manifest")
    assert tracks["g_wav"].info["format_code"] == "wav:int16" and tracks["g_wav"].tempo == 120.0
    assert tracks["g_ogg"].info["format_code"] == "ogg"
    assert (tracks["g_ogg"].tempo, tracks["g_ogg"].info["tempo_source"]) == (None, "")  # --no-tempo: unknown
    assert (s.tempo_manifest, s.tempo_estimated, s.tempo_unknown) == (2, 0, 2)
    assert Config.from_json(str(out / "config.json")) == Config()
    labels = json.load(open(out / "labels.json"))
    assert labels["conditions"]["genre"]["classes"] == {"rock": 3, "jazz": 1, "pop": 1}

    # Rerun: analysed files come from the cache (rejections too); the 'error' is retried.
    first = (out / "manifest.csv").read_text()
    s2 = prepare_collection(str(tmp_path / "m.csv"), str(out), jobs=0, estimate_tempo=False, progress=False)
    assert (s2.from_cache, s2.processed, s2.prechecked) == (8, 1, 3)
    assert s2.rejected == s.rejected
    assert (out / "manifest.csv").read_text() == first


def test_undecodable_files_are_rejected_in_words_with_the_decoder_text_as_detail(tmp_path):
    # Issue 16: a user got TensorFlow's "{{function_node __inference_<lambda>_247}} unable to read at:
    # 69632" for a truncated FLAC; the message now says what is wrong and what to do, and the raw text
    # stays in the detail column for bug reports.
    audio = tmp_path / "audio"
    audio.mkdir()
    sf.write(audio / "full.flac", click_track(120, 6), SR, subtype="PCM_16")
    data = (audio / "full.flac").read_bytes()
    (audio / "cut.flac").write_bytes(data[:len(data) // 3])
    (audio / "notes.ogg").write_text("track list\nside A: ...\n")
    (audio / "empty.wav").write_bytes(b"")
    y = click_track(120, 4)
    y[1000:1003] = [np.nan, np.inf, -np.inf]
    sf.write(audio / "nan.wav", y, SR, subtype="FLOAT")
    rows = [{"path": f"audio/{n}", "track_id": n.split(".")[0], "tempo": "120"}
            for n in ("full.flac", "cut.flac", "notes.ogg", "empty.wav", "nan.wav")]
    write_csv(tmp_path / "m.csv", rows)
    out = tmp_path / "prepared"
    s = prepare_collection(str(tmp_path / "m.csv"), str(out), jobs=0, estimate_tempo=False, progress=False)

    assert s.accepted == 1 and s.rejected == {"undecodable": 4}
    with open(out / "rejected.csv", newline="") as f:
        assert next(csv.reader(f)) == ["path", "track_id", "reason", "message", "detail"]
    rejected = {r["track_id"]: r for r in read_csv(out / "rejected.csv")}
    message = {k: r["message"].split(": ", 1)[1] for k, r in rejected.items()}  # after "PATH: "
    for k, r in rejected.items():
        assert r["message"].startswith(r["path"] + ": ") and r["reason"] == "undecodable"
        assert "function_node" not in r["message"] and "Error" not in r["message"], r["message"]
    size = len(data) // 3
    assert message["cut"].startswith("truncated or corrupt FLAC (decoding stops at byte ")
    assert f" of {size:,}, after " in message["cut"] and "of the 6.00 s its header announces" in message["cut"]
    assert message["cut"].endswith("): re-encode or re-download it.")
    assert message["notes"] == ("not an audio file (starts with text: 'track list'); check the manifest's path, "
                                "or re-download it.")
    assert message["empty"] == "empty file (0 bytes): re-download or re-export it, or leave it out of the manifest."
    assert message["nan"].startswith("the WAV holds NaN or infinite samples (3 of 88,200): ")
    # The decoders' own words, kept for bug reports.
    assert rejected["cut"]["detail"].startswith("InvalidArgumentError: ") and "unable to read at" in \
        rejected["cut"]["detail"]
    assert "unknown file type" in rejected["notes"]["detail"]
    assert rejected["empty"]["detail"].startswith("LibsndfileError: ")
    assert rejected["nan"]["detail"] == "3 of 88200 decoded samples are NaN or inf (decoder wav:float32)"

    # From the cache, the same words.
    s2 = prepare_collection(str(tmp_path / "m.csv"), str(out), jobs=0, estimate_tempo=False, progress=False)
    assert s2.from_cache == 5 and read_csv(out / "rejected.csv") == list(rejected.values())
    # A cache written before the detail column: its undecodable entries are analysed again.
    for entry in glob.glob(str(out / "cache" / "*" / "*.json")):
        e = json.load(open(entry))
        e.pop("detail", None)
        e["message"] = "old words" if e["status"] == "rejected" else e["message"]
        json.dump(e, open(entry, "w"))
    s3 = prepare_collection(str(tmp_path / "m.csv"), str(out), jobs=0, estimate_tempo=False, progress=False)
    assert (s3.from_cache, s3.processed) == (1, 4) and read_csv(out / "rejected.csv") == list(rejected.values())


def test_resume_on_grown_collection_and_cache_key(tmp_path):
    for i in range(6):
        sf.write(tmp_path / f"t{i}.wav", click_track(80 + 10 * i, 3.5, seed=i), SR)
    rows = [{"path": f"t{i}.wav", "genre": "a" if i % 2 else "b", "tempo": str(80 + 10 * i)} for i in range(6)]
    write_csv(tmp_path / "m.csv", rows[:4])
    out = str(tmp_path / "out")
    s1 = prepare_collection(str(tmp_path / "m.csv"), out, jobs=0, progress=False)
    assert (s1.processed, s1.from_cache, s1.accepted) == (4, 0, 4)

    write_csv(tmp_path / "m.csv", rows)  # two new files
    s2 = prepare_collection(str(tmp_path / "m.csv"), out, jobs=0, progress=False)
    assert (s2.processed, s2.from_cache, s2.accepted) == (2, 4, 6)
    assert [t.track_id for t in read_manifest(os.path.join(out, "manifest.csv"))] == [f"t{i}.wav" for i in range(6)]

    # A parameter that changes the result invalidates the cache: everything is analysed again.
    strict = Config().replace(**{"data.silence_rms_db": -1.0})
    s3 = prepare_collection(str(tmp_path / "m.csv"), out, strict, jobs=0, progress=False)
    assert (s3.processed, s3.from_cache, s3.accepted, s3.rejected) == (6, 0, 0, {"silent": 6})


@pytest.mark.slow
def test_interrupted_run_resumes_without_reprocessing(tmp_path):
    bpms = [80, 90, 100, 110, 120, 130, 140, 150]
    for i, bpm in enumerate(bpms):
        sf.write(tmp_path / f"c{i:02d}.wav", click_track(bpm, 4, seed=i), SR)
    write_csv(tmp_path / "m.csv", [{"path": f"c{i:02d}.wav", "genre": "x" if i % 3 else "y"} for i in range(len(bpms))])
    killed = tmp_path / "killed"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    with open(tmp_path / "log.txt", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "disentangled_ml", "prepare", str(tmp_path / "m.csv"), "--out", str(killed),
             "--jobs", "1", "--no-progress"],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
        try:
            deadline = time.monotonic() + process_timeout(180)
            while not glob.glob(str(killed / "cache" / "*" / "*.json")):
                assert proc.poll() is None, (tmp_path / "log.txt").read_text()
                assert time.monotonic() < deadline, "no cache entry appeared"
                time.sleep(0.005)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)  # the CLI and its worker: a crash, mid-run
            proc.wait()
    done = len(glob.glob(str(killed / "cache" / "*" / "*.json")))
    assert 1 <= done < len(bpms) and not (killed / "manifest.csv").exists()

    resumed = prepare_collection(str(tmp_path / "m.csv"), str(killed), jobs=0, progress=False)
    assert (resumed.from_cache, resumed.processed) == (done, len(bpms) - done)
    clean = prepare_collection(str(tmp_path / "m.csv"), str(tmp_path / "clean"), jobs=0, progress=False)
    assert clean.processed == len(bpms)
    assert (killed / "manifest.csv").read_text() == (tmp_path / "clean" / "manifest.csv").read_text()
    assert (killed / "labels.json").read_text() == (tmp_path / "clean" / "labels.json").read_text()
    tracks = read_manifest(str(killed / "manifest.csv"))
    assert all(t.info["tempo_source"] == "madmom" and t.tempo is not None for t in tracks)
    assert resumed.tempo_estimated == len(bpms)

    # A prepared manifest is a valid input: its tempi are kept and still say they are madmom's.
    again = prepare_collection(str(killed / "manifest.csv"), str(tmp_path / "again"), jobs=0, progress=False)
    assert again.tempo_estimated == 0 and again.accepted == len(bpms)
    retracks = read_manifest(str(tmp_path / "again" / "manifest.csv"))
    assert [(t.tempo, t.info["tempo_source"]) for t in retracks] == [(t.tempo, "madmom") for t in tracks]


def test_madmom_estimates_a_120_bpm_click_track():
    from disentangled_ml.data.tempo import estimate_tempo

    bpm = estimate_tempo(click_track(120, 10), SR)
    assert bpm == pytest.approx(120, rel=0.04)


_CRASHY = '''
import os

def worker(job):
    if "crash" in job["path"]:
        os._exit(3)  # like a segfault in a native decoder
    return {"index": job["index"], "status": "accepted", "reason": "", "message": ""}
'''


def test_a_worker_that_dies_only_loses_its_own_file(tmp_path, monkeypatch):
    (tmp_path / "crashy.py").write_text(_CRASHY)
    monkeypatch.syspath_prepend(str(tmp_path))  # spawned workers inherit sys.path
    import crashy

    jobs = [{"index": i, "path": p} for i, p in enumerate(["a.wav", "crash.wav", "b.wav", "c.wav"])]
    results = []
    run_jobs(jobs, 2, results.append, scratch_dir=str(tmp_path / "scratch"), worker=crashy.worker)
    by_index = {r["index"]: r for r in results}
    assert sorted(by_index) == [0, 1, 2, 3] and len(results) == 4
    assert by_index[1]["status"] == "rejected" and by_index[1]["reason"] == "error"
    assert "worker process died" in by_index[1]["message"]
    assert all(by_index[i]["status"] == "accepted" for i in (0, 2, 3))


def _track(i, tempo=None, **labels):
    return Track(path=f"/x/{i}.wav", track_id=str(i), labels={k: tuple(v) for k, v in labels.items()}, tempo=tempo)


def test_label_report_flags_single_member_classes_and_unusable_conditions():
    tracks = [
        _track(0, 100.0, genre=["rock"], mood=["happy"], instrument=[]),
        _track(1, 102.0, genre=["rock"], mood=[], instrument=[]),
        _track(2, 150.0, genre=["jazz"], mood=["sad"], instrument=[]),
        _track(3, None, genre=["pop", "rock"], mood=[], instrument=[]),
        _track(4, None, genre=["pop"], mood=[], instrument=[]),
    ]
    r = label_report(tracks, ["genre", "mood", "instrument", "tempo"])["conditions"]
    assert r["genre"]["classes"] == {"rock": 3, "pop": 2, "jazz": 1}
    assert r["genre"]["single_member"] == ["jazz"] and r["genre"]["usable"]
    assert (r["genre"]["labelled"], r["genre"]["unknown"]) == (5, 0)
    assert not r["mood"]["usable"] and r["mood"]["single_member"] == ["happy", "sad"]
    assert (r["mood"]["labelled"], r["mood"]["unknown"]) == (2, 3)
    assert not r["instrument"]["usable"] and "no track" in r["instrument"]["problems"][0]
    assert r["tempo"]["classes"] == {"100-110": 2, "150-160": 1}
    assert r["tempo"]["usable"] and r["tempo"]["isolated"] == 1 and r["tempo"]["unknown"] == 2
    text = format_label_report(label_report(tracks, ["genre", "mood", "instrument", "tempo"]))
    assert "jazz" in text and "single-member: cannot form a positive pair" in text
    assert text.count("** UNUSABLE **") == 2

    close_only = [_track(0, 100.0), _track(1, 101.0)]  # positives but no negative
    assert not label_report(close_only, ["tempo"])["conditions"]["tempo"]["usable"]


def test_cache_audio_shards_round_trip(tmp_path):
    import tensorflow as tf

    sf.write(tmp_path / "a.wav", click_track(100, 3.5), SR)
    sf.write(tmp_path / "b.flac", np.stack([click_track(120, 4, 44100)] * 2, axis=1), 44100)
    sf.write(tmp_path / "c.ogg", click_track(140, 3.2), SR, format="OGG", subtype="VORBIS")
    write_csv(tmp_path / "m.csv", [{"path": p, "tempo": "100"} for p in ("a.wav", "b.flac", "c.ogg")])
    out = tmp_path / "out"
    s = prepare_collection(str(tmp_path / "m.csv"), str(out), jobs=0, cache_audio=True, shards=2, progress=False)
    assert s.audio_shards == ["audio/audio-00000-of-00002.tfrecord", "audio/audio-00001-of-00002.tfrecord"]
    index = json.load(open(out / "audio" / "index.json"))
    assert index["sample_rate"] == SR and [sh["num_records"] for sh in index["shards"]] == [1, 2]
    # the schema readers of earlier versions expect (disentangled_ml.data.shards)
    assert {k: index[k] for k in ("format", "dtype", "byte_order", "int16_scale", "features")} == {
        "format": "tfrecord", "dtype": "int16", "byte_order": "little", "int16_scale": 32767.0,
        "features": {"track_id": "bytes", "audio": "bytes (int16 PCM)", "num_samples": "int64"}}
    files = [str(out / p) for p in s.audio_shards]
    records = {r["track_id"].numpy().decode(): r["audio"].numpy()
               for r in tf.data.TFRecordDataset(files).map(parse_audio_example)}
    assert sorted(records) == ["a.wav", "b.flac", "c.ogg"]
    for name, got in records.items():
        ref = audio_io.load_audio(str(tmp_path / name), SR)
        assert got.dtype == np.float32 and got.shape == ref.shape
        np.testing.assert_allclose(got, np.clip(ref, -1, 1), atol=0.51 / INT16_SCALE + 1e-7)

    again = prepare_collection(str(tmp_path / "m.csv"), str(out), jobs=0, cache_audio=True, shards=1, progress=False)
    assert again.from_cache == 3 and again.audio_shards == ["audio/audio-00000-of-00001.tfrecord"]
    assert sorted(os.listdir(out / "audio")) == ["audio-00000-of-00001.tfrecord", "index.json"]


def test_cli_reports_user_errors(tmp_path):
    from disentangled_ml.cli import prepare as cli_prepare

    parser = argparse.ArgumentParser()
    cli_prepare.add_arguments(parser)
    with pytest.raises(CliError, match="does not exist"):
        cli_prepare.run(parser.parse_args([str(tmp_path / "nope.csv"), "--out", str(tmp_path / "o")]))
    write_csv(tmp_path / "manifest.csv", [{"path": "a.wav"}])
    with pytest.raises(CliError, match="overwrite the input manifest"):
        cli_prepare.run(parser.parse_args([str(tmp_path / "manifest.csv"), "--out", str(tmp_path)]))
    with pytest.raises(PrepareError, match="jobs=-1"):
        prepare_collection(str(tmp_path / "manifest.csv"), str(tmp_path / "o"), jobs=-1)


def test_every_bad_manifest_row_is_reported_in_one_error(tmp_path):
    from disentangled_ml.data.manifest import ManifestError

    write_csv(tmp_path / "manifest.csv", [
        {"path": "a.wav", "track_id": "a", "tempo": "120"},
        {"path": "b.wav", "track_id": "b", "tempo": "fast"},
        {"path": "c.wav", "track_id": "a", "tempo": ""},
        {"path": "", "track_id": "d", "tempo": ""},
        {"path": "e.wav", "track_id": "e", "tempo": "4000"},
    ])
    with pytest.raises(ManifestError) as info:
        read_manifest(str(tmp_path / "manifest.csv"))
    message = str(info.value)
    assert "4 bad row(s)" in message
    for expected in ("line 3: tempo 'fast' is not a number", "line 4: track_id 'a' repeats line 2",
                     "line 5: empty 'path'", "line 6: tempo '4000' is not a plausible BPM"):
        assert expected in message
    assert [p.line for p in info.value.problems] == [3, 4, 5, 6]


def test_prepare_reports_every_bad_row_at_once_and_can_skip_them(tmp_path, caplog):
    from disentangled_ml.cli import prepare as cli_prepare

    for i, name in enumerate(("a.wav", "b.wav", "d.wav")):
        sf.write(tmp_path / name, click_track(90 + 10 * i, 3.5, seed=i), SR)
    write_csv(tmp_path / "manifest.csv", [
        {"path": "a.wav", "track_id": "a", "genre": "rock", "tempo": "120"},  # line 2
        {"path": "b.wav", "track_id": "b", "genre": "pop"},  # line 3
        {"path": "", "track_id": "e", "genre": "rock"},  # line 4: empty path
        {"path": "c.wav", "track_id": "c", "tempo": "fast"},  # line 5: not a number
        {"path": "n.wav", "track_id": "n", "tempo": "-5"},  # line 6: not a plausible BPM
        {"path": "d.wav", "track_id": "a", "genre": "rock", "tempo": "120"},  # line 7: id 'a' on another file
        {"path": "b.wav", "track_id": "b", "genre": "jazz"},  # line 8: conflicts with line 3
        {"path": "./a.wav", "track_id": "a", "genre": "rock", "tempo": "120.0"},  # line 9: line 2 again
        {"path": "d.wav", "track_id": "d", "genre": "pop", "tempo": "90"},  # line 10
    ])
    expected = {4: "empty 'path'", 5: "tempo 'fast' is not a number", 6: "tempo '-5' is not a plausible BPM",
                7: "track_id 'a' repeats line 2, which is another file (a.wav)",
                8: "track_id 'b' repeats line 3 (the same file) with another genre"}
    parser = argparse.ArgumentParser()
    cli_prepare.add_arguments(parser)
    out = tmp_path / "prepared"
    argv = [str(tmp_path / "manifest.csv"), "--out", str(out), "--jobs", "0", "--no-tempo", "--no-progress"]

    # Default: every bad row in one message, and in manifest_problems.csv; nothing is decoded.
    with pytest.raises(CliError) as info:
        cli_prepare.run(parser.parse_args(argv))
    message = str(info.value)
    assert "5 bad row(s)" in message and str(out / "manifest_problems.csv") in message
    assert "--skip-bad-rows" in message
    for line, problem in expected.items():
        assert f"manifest.csv, line {line}: {problem}" in message
    assert "line 9" not in message  # an identical row is no error...
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("lines 2, 9 are the same row" in w for w in warnings)  # ...only a warning naming the lines
    problems = read_csv(out / "manifest_problems.csv")
    assert list(problems[0]) == ["line", "track_id", "path", "problem"]
    assert {int(p["line"]): p["problem"] for p in problems}.keys() == expected.keys()
    for p in problems:
        assert p["problem"].startswith(expected[int(p["line"])])
    assert [(p["track_id"], p["path"]) for p in problems] == [("e", ""), ("c", "c.wav"), ("n", "n.wav"),
                                                            ("a", "d.wav"), ("b", "b.wav")]
    assert not (out / "manifest.csv").exists() and not glob.glob(str(out / "cache" / "*" / "*.json"))

    # --skip-bad-rows: the good rows are prepared, the bad ones are rejections like any other.
    caplog.clear()
    assert cli_prepare.run(parser.parse_args(argv + ["--skip-bad-rows"])) == 0
    assert [t.track_id for t in read_manifest(str(out / "manifest.csv"))] == ["a", "b", "d"]
    rejected = read_csv(out / "rejected.csv")
    assert [r["reason"] for r in rejected] == ["bad_manifest_row"] * 5
    for r, (line, problem) in zip(rejected, expected.items()):
        assert f"manifest.csv, line {line}: {problem}" in r["message"]
    assert rejected[1]["path"] == str(tmp_path / "c.wav") and rejected[0]["path"] == ""
    summary = json.load(open(out / "summary.json"))
    assert summary["rejected"] == {"bad_manifest_row": 5} and summary["num_rejected"] == 5
    assert (summary["total"], summary["accepted"], summary["prechecked"], summary["processed"]) == (8, 3, 5, 3)
    assert len(read_csv(out / "manifest_problems.csv")) == 5
