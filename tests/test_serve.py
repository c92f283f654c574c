"""`dml serve` (issue 18): the JSON API over a real server process, its safety rules, and the page in Chromium.

One catalogue for the module: twelve tone tracks of tests/collections_for_tests.py (7 s at 22,050 Hz,
two 3-s segments each) and a symlink inside the collection that leads out of it, embedded with the
committed golden export (tests/data/golden, its model.tflite through LiteRT, so the server needs no
SavedModel). One `dml serve` process on a free loopback port answers every test here; the browser
test drives its page with Debian's chromium and chromium-driver through Selenium.
"""

import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import types
from urllib.parse import quote

import numpy as np
import pytest
import soundfile as sf

import golden_outputs as golden
from collections_for_tests import process_timeout, write_tracks
from disentangled_ml.catalogue_search import Catalogue, SearchError, embed_collection
from disentangled_ml.cli import main
from disentangled_ml.data.manifest import Track, write_manifest

SR = 22050
UPLOAD_LIMIT_MB = 0.5
MOOD_ONLY = "genre=0.00,mood=1.00,instrument=0.00,tempo=0.00"


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """``(manifest, audio_dir, outside_wav)``: 12 tracks and ``leak.wav``, a symlink in the collection to a file
    outside it (listed in the manifest, so the catalogue holds it), plus ``extra.wav``, in the folder but not listed."""
    root = tmp_path_factory.mktemp("serve_collection")
    audio = root / "collection" / "audio"
    audio.mkdir(parents=True)
    tracks = write_tracks(str(audio), n=12, seconds=7.0, sr=SR)
    outside = root / "outside"
    outside.mkdir()
    t = np.arange(7 * SR) / SR
    sf.write(str(outside / "secret.wav"), (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), SR)
    os.symlink(os.path.join("..", "..", "outside", "secret.wav"), str(audio / "leak.wav"))
    sf.write(str(audio / "extra.wav"), (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), SR)
    tracks.append(Track(path=str(audio / "leak.wav"), track_id="leak", labels={"genre": ("rock",)}, tempo=90.0))
    manifest = str(root / "collection" / "manifest.csv")
    write_manifest(tracks, manifest)
    return manifest, str(audio), str(outside / "secret.wav")


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    """The committed golden export (22,050 Hz, 3-s segments, 4 x 64 slices)."""
    return os.path.join(golden.unpack(str(tmp_path_factory.mktemp("serve_golden"))), golden.EXPORT)


@pytest.fixture(scope="module")
def catalogue(collection, export_dir, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("serve_catalogue") / "emb")
    summary = embed_collection(export_dir, collection[0], out, backend="tflite", progress=False)
    assert summary["tracks"] == 13 and summary["skipped"] == 0
    return out


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(port, method, path, body=None, headers=None):
    """``(status, headers, body bytes)``; http.client sends ``path`` as it is (no ``..`` clean-up, unlike a browser)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=process_timeout(30))
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict((k.lower(), v) for k, v in response.getheaders()), response.read()
    finally:
        conn.close()


def get_json(port, path):
    status, _, body = request(port, "GET", path)
    return status, json.loads(body)


@pytest.fixture(scope="module")
def server(catalogue, export_dir, tmp_path_factory):
    """A `dml serve` process with --export and a 0.5 MB upload limit; yields its port."""
    port = free_port()
    log_path = str(tmp_path_factory.mktemp("serve_log") / "serve.log")
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "disentangled_ml", "serve", catalogue, "--export", export_dir,
                                 "--port", str(port), "--max-upload-mb", str(UPLOAD_LIMIT_MB)],
                                stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + process_timeout(15)  # measured: 3 s to answer on the 2-core machine
    try:
        while True:
            try:
                if request(port, "GET", "/api/info")[0] == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"dml serve did not start (exit {proc.poll()}):\n{open(log_path).read()}")
            time.sleep(0.2)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=process_timeout(5))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode in (0, -15), open(log_path).read()


def similar_json(catalogue, capsys, *args):
    assert main(["similar", catalogue, *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


# --------------------------------------------------------------------------- the API


def test_info_and_find(server):
    status, info = get_json(server, "/api/info")
    assert status == 200
    assert info["tracks"] == 13 and info["conditions"] == ["genre", "mood", "instrument", "tempo"]
    assert info["upload"] is True and info["max_upload_bytes"] == int(UPLOAD_LIMIT_MB * 2 ** 20)
    assert info["k_max"] == 100 and info["segment_seconds"] == 3.0 and info["matched_segments"] is True
    # case-insensitive, on id or path; an exact id first
    _, found = get_json(server, "/api/find?q=T0")
    assert [t["track_id"] for t in found["tracks"]] == [f"t{i:02d}" for i in range(10)]
    _, found = get_json(server, "/api/find?q=t05")
    assert found["tracks"][0]["track_id"] == "t05"
    assert found["tracks"][0]["labels"]["genre"] == "pop" and found["tracks"][0]["labels"]["tempo"] == "93"
    _, found = get_json(server, "/api/find?q=.flac")  # by path
    assert [t["track_id"] for t in found["tracks"]] == ["t01", "t04", "t07", "t10"]
    status, missing = get_json(server, "/api/track?index=13")
    assert status == 404 and "0 to 12" in missing["error"]


def test_mood_only_weights_rank_as_dml_similar_condition_mood(server, catalogue, capsys):
    _, got = get_json(server, f"/api/neighbours?track=t05&weights={quote(MOOD_ONLY)}&k=12")
    want = similar_json(catalogue, capsys, "t05", "--condition", "mood", "--k", "12")["results"]
    assert [r["track_id"] for r in got["results"]] == [r["track_id"] for r in want]
    np.testing.assert_allclose([r["distance"] for r in got["results"]], [r["distance"] for r in want], rtol=1e-6)
    assert got["query"]["track_id"] == "t05" and "t05" not in [r["track_id"] for r in got["results"]]
    # the same weights as dml similar --weights, zeros included
    weighted = similar_json(catalogue, capsys, "t05", "--weights", "genre=0.25,mood=1,tempo=0.5", "--k", "5")
    _, api = get_json(server, "/api/neighbours?track=t05&weights=genre%3D0.25,mood%3D1,tempo%3D0.5&k=5")
    assert [r["track_id"] for r in api["results"]] == [r["track_id"] for r in weighted["results"]]
    # each neighbour plays its segment nearest the query, in the weighted metric
    cat = Catalogue(catalogue)
    query, _ = cat.query_vector("t05")
    for r in got["results"][:4]:
        starts, segments = cat.track_segments(r["track_id"])
        best = starts[int(np.argmin(cat.distances(segments, query, condition="mood")))]
        assert r["segment"] == {"start_s": best, "end_s": best + 3.0, "matched": True}


@pytest.mark.parametrize("query, message", [
    ("weights=mood%3D-1", "weight mood=-1.0 must be a finite number >= 0"),
    ("weights=mood%3Dnan", "weight mood=nan must be a finite number >= 0"),
    ("weights=mood%3Dinf,genre%3D1", "weight mood=inf must be a finite number >= 0"),
    ("weights=genre%3D0,mood%3D0", "at least one weight must be > 0"),
    ("weights=colour%3D1", "unknown condition 'colour'"),
    ("weights=mood:1", "is not NAME=NUMBER"),
    ("weights=mood%3D1&k=101", "k=101 is out of range; give 1 to 100"),
    ("weights=mood%3D1&k=0", "k=0 is out of range"),
    ("weights=mood%3D1&k=ten", "k='ten' is not a whole number"),
])
def test_bad_weights_and_k_are_400(server, query, message):
    status, body = get_json(server, f"/api/neighbours?track=t05&{query}")
    assert status == 400 and message in body["error"], body


def test_unknown_queries_are_404(server):
    status, body = get_json(server, "/api/neighbours?track=nope&weights=mood%3D1")
    assert status == 404 and "'nope' is not in the catalogue" in body["error"]
    status, body = get_json(server, "/api/neighbours?upload=0123&weights=mood%3D1")
    assert status == 404 and "drop the file again" in body["error"]
    status, body = get_json(server, "/api/neighbours?weights=mood%3D1")
    assert status == 400 and "track=TRACK_ID or upload=UPLOAD_ID" in body["error"]


def test_audio_only_the_catalogues_own_files(server, collection):
    _, audio_dir, outside = collection
    _, found = get_json(server, "/api/find?q=t01")
    url = found["tracks"][0]["audio"]
    assert url == "/audio/t01.flac"
    status, headers, body = request(server, "GET", url)
    assert status == 200 and headers["content-type"] == "audio/flac"
    assert body == open(os.path.join(audio_dir, "t01.flac"), "rb").read()
    status, headers, part = request(server, "GET", url, headers={"Range": "bytes=0-99"})  # seeking
    assert status == 206 and part == body[:100]
    # the symlink leading out is in the catalogue, but not served: the page gets no player for it
    _, found = get_json(server, "/api/find?q=leak")
    assert found["tracks"][0]["track_id"] == "leak" and found["tracks"][0]["audio"] is None
    assert os.path.realpath(os.path.join(audio_dir, "leak.wav")) == os.path.realpath(outside)
    refused = ["/audio/leak.wav",  # symlink out of the collection
               "/audio/extra.wav",  # in the folder, not in the catalogue
               "/audio/../outside/secret.wav", "/audio/../../outside/secret.wav",  # ..
               "/audio/%2e%2e/%2e%2e/outside/secret.wav", "/audio/t01.flac/../../../outside/secret.wav",
               "/audio/" + quote(outside),  # an absolute path
               "/audio//etc/passwd", "/audio/..%2F..%2Foutside%2Fsecret.wav", "/audio/", "/audio/nope.wav"]
    for path in refused:
        status, _, body = request(server, "GET", path)
        assert status == 404, (path, status)
        assert b"secret" not in body and not body.startswith(b"RIFF"), path


def test_host_header_must_be_loopback(server):
    status, _, body = request(server, "GET", "/api/info", headers={"Host": "attacker.example:8000"})
    assert status == 400 and b"not a loopback name" in body
    status, headers, _ = request(server, "GET", "/api/info", headers={"Host": f"localhost:{server}"})
    assert status == 200 and "default-src 'self'" in headers["content-security-policy"]


def test_uploads_embed_limit_and_bad_files(server, catalogue, collection, capsys):
    _, audio_dir, _ = collection
    wav = os.path.join(audio_dir, "t03.wav")
    data = open(wav, "rb").read()
    assert len(data) < UPLOAD_LIMIT_MB * 2 ** 20
    status, _, body = request(server, "POST", "/api/upload?name=my%20song.wav", body=data)
    assert status == 200, body
    upload = json.loads(body)
    assert upload["name"] == "my song.wav" and upload["segments"] == 2
    _, got = get_json(server, f"/api/neighbours?upload={upload['upload_id']}&weights={quote(MOOD_ONLY)}&k=12")
    # embedded as dml similar embeds an audio file: the same order, the file itself (t03) nearest
    want = similar_json(catalogue, capsys, wav, "--condition", "mood", "--k", "12")["results"]
    assert [r["track_id"] for r in got["results"]] == [r["track_id"] for r in want]
    assert got["results"][0]["track_id"] == "t03" and got["results"][0]["distance"] < 1e-3
    assert got["query"]["name"] == "my song.wav"
    assert len(Catalogue(catalogue)) == 13  # not added to the catalogue

    over = b"\0" * int(UPLOAD_LIMIT_MB * 2 ** 20 + 1)
    status, _, body = request(server, "POST", "/api/upload?name=long.wav", body=over)
    assert status == 413
    assert json.loads(body)["error"] == ("long.wav is 0.5 MB, over this server's upload limit of 0.5 MB; cut it "
                                         "shorter, or restart the server with a larger --max-upload-mb.")
    status, _, body = request(server, "POST", "/api/upload?name=broken.wav", body=b"RIFF\0\0\0\0not really a wav file")
    error = json.loads(body)["error"]
    assert status == 400 and error.startswith("broken.wav: ") and "dml_serve_uploads" not in error, error
    status, _, body = request(server, "POST", "/api/upload?name=notes.txt", body=b"hello")
    assert status == 400 and "unsupported audio format '.txt'" in json.loads(body)["error"]
    status, _, body = request(server, "POST", "/api/upload?name=empty.flac", body=b"")
    assert status == 400 and "empty.flac is empty" in json.loads(body)["error"]
    short = os.path.join(str(os.path.dirname(catalogue)), "short.wav")
    sf.write(short, np.zeros(SR, np.float32), SR)
    status, _, body = request(server, "POST", "/api/upload?name=short.wav", body=open(short, "rb").read())
    assert status == 400 and "short.wav is 1.00 s long, shorter than one 3 s segment" in json.loads(body)["error"]
    # the server is still there
    assert get_json(server, "/api/info")[0] == 200


def test_map_is_pca_cached_beside_the_catalogue(server, catalogue):
    from disentangled_ml.serve.catalogue_map import pca_2d

    status, mood = get_json(server, "/api/map?view=mood")
    assert status == 200 and mood["method"] == "pca" and len(mood["x"]) == 13
    cat = Catalogue(catalogue)
    xy = pca_2d(cat.project(cat.embeddings, "mood"))
    np.testing.assert_allclose(np.c_[mood["x"], mood["y"]], xy, atol=1e-4)
    assert np.load(os.path.join(catalogue, "map_mood_pca.npy")).shape == (13, 2)
    # coloured by the view's labels: classes (first label of each track; -1 = unknown), tempo by value
    assert mood["colour_by"] == "mood" and mood["colours"]["kind"] == "classes"
    classes = mood["colours"]["classes"]
    assert set(classes) == {"happy", "sad"}
    assert [classes[i] if i >= 0 else "" for i in mood["colours"]["index"]] == [r["mood"] for r in cat.rows]
    _, tempo = get_json(server, "/api/map?view=tempo")
    assert tempo["colours"]["kind"] == "numeric" and tempo["colours"]["values"][5] == 93.0
    status, body = get_json(server, "/api/map?view=colour")
    assert status == 404 and "unknown view 'colour'" in body["error"]


def test_map_cache_and_umap_choice(tmp_path, monkeypatch):
    """The cache is reused while tracks.npy is unchanged; --map umap runs umap-learn when it can be imported
    (a stand-in module here: umap-learn is not a dependency) and says how to get it when it cannot."""
    from disentangled_ml.serve import catalogue_map as cm
    from test_search import write_catalogue

    rng = np.random.default_rng(0)
    path = write_catalogue(str(tmp_path / "cat"), rng.standard_normal((30, 8)), {"genre": [0, 4], "mood": [4, 8]})
    cat = Catalogue(path)
    first = cm.catalogue_map(cat, "genre")
    stamp = os.path.getmtime(os.path.join(path, "map_genre_pca.npy"))
    np.testing.assert_array_equal(cm.catalogue_map(Catalogue(path), "genre"), first)
    assert os.path.getmtime(os.path.join(path, "map_genre_pca.npy")) == stamp

    calls = []

    class FakeUMAP:
        def __init__(self, **kwargs):
            calls.append(kwargs)

        def fit_transform(self, x):
            return x[:, :2] * 2

    monkeypatch.setitem(sys.modules, "umap", types.SimpleNamespace(UMAP=FakeUMAP))
    xy = cm.catalogue_map(cat, "mood", "umap")
    assert calls == [{"n_components": 2, "random_state": 0, "n_neighbors": 15}]
    np.testing.assert_allclose(xy, cat.embeddings[:, 4:6] * 2)
    assert os.path.isfile(os.path.join(path, "map_mood_umap.npy"))
    monkeypatch.setitem(sys.modules, "umap", None)  # import umap now raises ImportError
    with pytest.raises(SearchError, match="needs umap-learn, which is not installed here: pip install umap-learn"):
        cm.catalogue_map(cat, "mood", "umap")


def test_warns_when_listening_beyond_loopback(catalogue, monkeypatch, capsys):
    import uvicorn

    from disentangled_ml.serve import app

    started = []
    monkeypatch.setattr(uvicorn, "run", lambda asgi, **kwargs: started.append((asgi, kwargs)))
    assert main(["serve", catalogue, "--host", "0.0.0.0", "--port", "8123"]) == 0
    err = capsys.readouterr().err
    assert "WARNING: dml serve listens on 0.0.0.0, beyond this machine's loopback" in err
    assert started[0][1]["host"] == "0.0.0.0" and started[0][0].loopback_only is False
    assert main(["serve", catalogue]) == 0  # the default: 127.0.0.1:8000, quietly
    assert "WARNING" not in capsys.readouterr().err
    assert started[1][1]["host"] == "127.0.0.1" and started[1][1]["port"] == 8000 and started[1][0].loopback_only
    assert app.is_loopback("::1") and app.is_loopback("localhost") and not app.is_loopback("192.168.1.2")
    with pytest.raises(SystemExit):
        main(["serve", catalogue, "--max-upload-mb", "0"])
    assert "--max-upload-mb 0 must be > 0" in capsys.readouterr().err


# --------------------------------------------------------------------------- the page, in Chromium


@pytest.fixture
def browser():
    """Headless Chromium through chromium-driver (Debian's packages; .ci/run installs them where missing)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not (chromium and driver_path):
        pytest.fail("the browser test needs Chromium and its driver: apt-get install -y chromium chromium-driver "
                    "(.ci/run installs them where they are missing)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1100", "--mute-audio"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # the driver's path is given, so Selenium Manager (which would download one) is never asked
    d = webdriver.Chrome(service=Service(driver_path), options=options)
    d.set_script_timeout(process_timeout(10))
    yield d
    d.quit()


def test_page_in_chromium(server, catalogue, browser, tmp_path, capsys):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    d = browser
    wait = WebDriverWait(d, process_timeout(10))
    body = lambda: d.find_element(By.TAG_NAME, "body")  # noqa: E731
    shown_ids = lambda: [r.get_attribute("data-track-id")  # noqa: E731
                         for r in d.find_elements(By.CSS_SELECTOR, "#neighbours tbody tr")]
    d.get(f"http://127.0.0.1:{server}/")
    wait.until(lambda _: body().get_attribute("data-state") == "ready")

    # typing part of an id lists the matches; Enter makes the first one the query, and its neighbours appear
    find = d.find_element(By.ID, "find")
    find.send_keys("t05")
    wait.until(lambda _: d.find_elements(By.CSS_SELECTOR, "#find-results li[data-track-id='t05']"))
    find.send_keys(Keys.ENTER)
    all_equal = "genre=1.00,mood=1.00,instrument=1.00,tempo=1.00"
    wait.until(lambda _: body().get_attribute("data-shown") == f"t05|{all_equal}")
    assert len(shown_ids()) == 10 and "t05" not in shown_ids()
    assert d.find_element(By.ID, "query").get_attribute("data-track-id") == "t05"

    # the mood slider to 1 and the others to 0, with the keyboard: the order of dml similar --condition mood
    for condition in ("genre", "instrument", "tempo"):
        d.find_element(By.ID, f"w-{condition}").send_keys(Keys.HOME)
    d.find_element(By.ID, "w-mood").send_keys(Keys.END)
    wait.until(lambda _: body().get_attribute("data-shown") == f"t05|{MOOD_ONLY}")
    want = similar_json(catalogue, capsys, "t05", "--condition", "mood")["results"]
    assert shown_ids() == [r["track_id"] for r in want]
    distances = [float(c.text) for c in d.find_elements(By.CSS_SELECTOR, "#neighbours td.distance")]
    np.testing.assert_allclose(distances, [r["distance"] for r in want], atol=1e-4)

    # each neighbour's player has a playable source: HTTP 200 with audio/*, and Chromium loads it at its segment
    audio = d.find_element(By.CSS_SELECTOR, "#neighbours tbody tr audio")
    src = audio.get_attribute("src")
    path, _, fragment = src.partition(f"127.0.0.1:{server}")[2].partition("#t=")
    status, headers, _ = request(server, "GET", path)
    assert status == 200 and headers["content-type"].startswith("audio/")
    loaded = d.execute_async_script("""
        const audio = arguments[0], done = arguments[arguments.length - 1];
        audio.addEventListener("loadedmetadata", () => done({duration: audio.duration, at: audio.currentTime}), {once: true});
        audio.addEventListener("error", () => done({error: audio.error.code}), {once: true});
        audio.preload = "auto"; audio.load();""", audio)
    assert "error" not in loaded and loaded["duration"] == pytest.approx(7.0, abs=0.05), loaded
    assert loaded["at"] == pytest.approx(float(fragment.split(",")[0]), abs=0.05)

    # clicking a point of the map makes its track the query: a point at least 10 px from every other
    wait.until(lambda _: body().get_attribute("data-map") == "genre")
    points = d.execute_script("return Array.from({length: 13}, (_, i) => window.dmlExplorer.pointOf(i));")
    xy = np.array([[p["x"], p["y"]] for p in points])
    gaps = np.sqrt(((xy[:, None] - xy[None]) ** 2).sum(-1)) + np.eye(len(xy)) * 1e9
    query_index = Catalogue(catalogue).index_of["t05"]
    target = next(i for i in np.argsort(-gaps.min(1)) if i != query_index)
    assert gaps[target].min() >= 10
    canvas = d.find_element(By.ID, "map")
    ActionChains(d).move_to_element_with_offset(canvas, int(round(xy[target, 0] - canvas.size["width"] / 2)),
                                                int(round(xy[target, 1] - canvas.size["height"] / 2))).click().perform()
    target_id = Catalogue(catalogue).rows[target]["track_id"]
    wait.until(lambda _: body().get_attribute("data-shown") == f"{target_id}|{MOOD_ONLY}")
    assert d.find_element(By.ID, "query").get_attribute("data-track-id") == target_id

    # a file that does not decode: the page says so, and the query stays
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF\0\0\0\0not really a wav file")
    d.find_element(By.ID, "upload-input").send_keys(str(broken))
    wait.until(lambda _: d.find_element(By.ID, "upload-error").text)
    assert d.find_element(By.ID, "upload-error").text.startswith("broken.wav: ")
    assert d.find_element(By.ID, "query").get_attribute("data-track-id") == target_id

    shot = tmp_path / "serve.png"
    assert d.save_screenshot(str(shot)) and shot.read_bytes().startswith(b"\x89PNG")
    script_errors = [e for e in d.get_log("browser") if e.get("source") == "javascript"]
    assert not script_errors, script_errors
