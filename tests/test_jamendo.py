"""MTG-Jamendo import: merging the three autotagging TSVs into one manifest."""

from __future__ import annotations

import argparse
import csv
import os
import shutil

import pytest

from disentangled_ml.cli import CliError
from disentangled_ml.cli import import_jamendo as cli
from disentangled_ml.data.jamendo import artists_path, import_jamendo, read_artists
from disentangled_ml.data.manifest import ManifestError, read_manifest

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "jamendo")
HEADER = "TRACK_ID\tARTIST_ID\tALBUM_ID\tPATH\tDURATION\tTAGS\n"


def _by_id(tracks):
    return {t.track_id: t for t in tracks}


def test_merges_three_files(tmp_path):
    audio = tmp_path / "audio"
    out = tmp_path / "out" / "manifest.csv"
    tracks = import_jamendo(FIXTURES, str(audio), str(out))
    got = _by_id(tracks)
    # First-seen order: the genre file's tracks, then the one only in the instrument file.
    assert list(got) == ["track_0000214", "track_0000215", "track_0001376", "track_0002001", "track_0003090",
                         "track_0004512"]

    # In all three files, several tags each.
    t = got["track_0000214"]
    assert t.labels == {"genre": ("punkrock", "rock"), "mood": ("energetic",),
                        "instrument": ("drums", "guitar", "voice")}
    assert t.path == os.path.join(str(audio), "14", "214.mp3") and t.tempo is None
    # Only in the genre file: mood and instrument unknown.
    assert got["track_0000215"].labels == {"genre": ("metal",), "mood": (), "instrument": ()}
    # Only in the instrument file: genre and mood unknown.
    assert got["track_0004512"].labels == {"genre": (), "mood": (), "instrument": ("piano",)}
    assert got["track_0001376"].labels["genre"] == ("ambient", "chillout", "electronic")
    assert got["track_0001376"].labels["mood"] == ("calm", "relaxing")

    # The manifest reads back to the same tracks, with exactly the contract's columns.
    with open(out, newline="") as f:
        assert next(csv.reader(f)) == ["path", "track_id", "genre", "mood", "instrument", "tempo"]
    back = _by_id(read_manifest(str(out)))
    assert set(back) == set(got)
    for tid, track in got.items():
        assert back[tid].path == track.path
        assert back[tid].labels == track.labels
        assert back[tid].tempo is None

    # Artist ids go to a side file, not into the manifest (they would become a condition).
    side = artists_path(str(out))
    assert side == str(tmp_path / "out" / "manifest.artists.csv")
    artists = read_artists(side)
    assert artists["track_0000214"] == ("artist_000014", "album_000031")
    assert artists["track_0000215"][0] == "artist_000014"  # same artist: artist-level splits need this
    assert set(artists) == set(got)


def test_explicit_files_and_relative_manifest_paths(tmp_path):
    # Audio under the manifest's folder is written relative to it (portable manifests).
    out = tmp_path / "manifest.csv"
    tracks = import_jamendo([os.path.join(FIXTURES, "autotagging_moodtheme.tsv")], str(tmp_path / "audio"), str(out))
    assert {t.track_id for t in tracks} == {"track_0000214", "track_0001376", "track_0003090"}
    assert all(t.labels["genre"] == () and t.labels["instrument"] == () for t in tracks)
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["path"] == os.path.join("audio", "14", "214.mp3")
    assert rows[2]["mood"] == "dramatic|film"


def test_min_duration_and_low_quality(tmp_path):
    tracks = import_jamendo(FIXTURES, str(tmp_path), None, min_duration=30.0, low_quality=True)
    ids = {t.track_id for t in tracks}
    assert "track_0002001" not in ids and len(ids) == 5  # 2.5 s track left out
    assert _by_id(tracks)["track_0000214"].path.endswith(os.path.join("14", "214.low.mp3"))
    assert not os.listdir(tmp_path)  # out_csv=None writes nothing
    with pytest.raises(ManifestError, match="min_duration"):
        import_jamendo(FIXTURES, str(tmp_path), None, min_duration=10_000.0)


def _write(tmp_path, name, body, header=HEADER):
    path = tmp_path / name
    path.write_text(header + body)
    return str(path)


@pytest.mark.parametrize("body, header, message", [
    ("t1\ta1\tb1\t01/1.mp3\t100\tgenre_rock\n", HEADER, r"line 2: tag 'genre_rock' is not of the form"),
    ("t1\ta1\tb1\t01/1.mp3\t100\tgenre---rock\tmood---happy\n", HEADER, r"line 2: tag 'mood---happy' has unknown category"),
    ("t1\ta1\tb1\t01/1.mp3\t100\tgenre---\n", HEADER, r"line 2: tag 'genre---' is not of the form"),
    ("t1\ta1\tb1\t01/1.mp3\tlong\tgenre---rock\n", HEADER, r"line 2: DURATION 'long'"),
    ("t1\ta1\tb1\t01/1.mp3\t100\tgenre---rock\nt1\ta1\tb1\t01/1.mp3\t100\tgenre---pop\n", HEADER,
     r"line 3: TRACK_ID 't1' repeats line 2"),
    ("t1\ta1\tb1\n", HEADER, r"line 2: 3 fields"),
    ("t1\ta1\tb1\t01/1.mp3\t100\tgenre---rock\n", "TRACK_ID\tARTIST_ID\tPATH\tDURATION\tTAGS\n",
     r"line 1: header lacks column\(s\) ALBUM_ID"),
])
def test_malformed_files_name_file_and_line(tmp_path, body, header, message):
    path = _write(tmp_path, "bad.tsv", body, header)
    with pytest.raises(ManifestError, match=message) as info:
        import_jamendo([path], str(tmp_path), None)
    assert "bad.tsv" in str(info.value)


def test_conflicting_files_are_rejected(tmp_path):
    a = _write(tmp_path, "a.tsv", "t1\ta1\tb1\t01/1.mp3\t100\tgenre---rock\n")
    b = _write(tmp_path, "b.tsv", "t1\ta1\tb1\t02/1.mp3\t100\tinstrument---piano\n")
    with pytest.raises(ManifestError, match=r"b.tsv, line 2: track 't1' has PATH '02/1.mp3'.*a.tsv, line 2"):
        import_jamendo([a, b], str(tmp_path), None)


def test_missing_sources(tmp_path):
    with pytest.raises(ManifestError, match="does not exist"):
        import_jamendo([str(tmp_path / "nope.tsv")], str(tmp_path), None)
    with pytest.raises(ManifestError, match="holds none of autotagging_genre.tsv"):
        import_jamendo(str(tmp_path), str(tmp_path), None)


def test_partial_directory_and_blank_trailing_fields(tmp_path):
    shutil.copy(os.path.join(FIXTURES, "autotagging_instrument.tsv"), tmp_path)
    # A trailing tab and a trailing blank line are tolerated.
    with open(tmp_path / "autotagging_instrument.tsv", "a") as f:
        f.write("track_0009999\tartist_1\talbum_1\t99/9999.mp3\t60.0\tinstrument---bass\t\n\n")
    tracks = import_jamendo(str(tmp_path), str(tmp_path), None)
    assert _by_id(tracks)["track_0009999"].labels["instrument"] == ("bass",)
    assert len(tracks) == 4


def _cli(argv):
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return cli.run(parser.parse_args(argv))


def test_cli(tmp_path, capsys):
    audio = tmp_path / "audio"
    (audio / "14").mkdir(parents=True)
    (audio / "14" / "214.mp3").write_bytes(b"")
    out = tmp_path / "m.csv"
    assert _cli([FIXTURES, "--audio-root", str(audio), "--out", str(out), "--min-duration", "30"]) == 0
    printed = capsys.readouterr().out
    assert "5 tracks" in printed and "m.artists.csv" in printed
    assert "genre           4 tracks labelled,    7 distinct labels" in printed
    assert len(read_manifest(str(out))) == 5

    with pytest.raises(CliError, match="not a directory"):
        _cli([FIXTURES, "--audio-root", str(tmp_path / "missing"), "--out", str(out)])
    with pytest.raises(CliError, match="does not exist"):
        _cli([str(tmp_path / "x.tsv"), "--audio-root", str(audio), "--out", str(out)])


def test_cli_is_registered(capsys):
    from disentangled_ml.cli import main

    # through `dml`'s own parser: the subcommand exists and builds its arguments
    with pytest.raises(SystemExit) as exit_info:
        main(["import-jamendo", "--help"])
    assert exit_info.value.code == 0
    assert "--audio-root" in capsys.readouterr().out
