"""`dml serve` at 100,000 tracks: load time and query latency over loopback, against the bare search in-process.

1. **Catalogue.** A synthetic catalogue in `dml embed`'s on-disk format (catalogue_search._assemble:
   config.json with the export's keys and "catalogue", tracks.npy/csv, segments.npy/csv,
   skipped.csv): ``--tracks`` tracks, ``--segments`` segments each, a 256-d embedding of four 64-d
   condition slices, each slice normalised to 1/2 as the default export's normalisation_groups=4
   does. Each slice is its class centroid plus noise, so neighbourhoods have structure as a trained
   model's do; segments are their track's vector plus noise. The audio paths do not exist (no audio
   is served here).
2. **Load.** `dml serve` started as a process, timed from the start to its first answer of
   ``/api/info``: the first start builds and caches the hnswlib index of each of the five views
   (one-off; reported apart), the second is the load time a user sees. Beside it, the in-process
   parts: opening the catalogue memory-mapped, and loading the cached indexes.
3. **Map.** ``/api/map`` of one view: the first request computes the PCA and caches it, the second reads it.
4. **Queries.** A load generator on loopback: ``--clients`` threads, each with its own keep-alive
   connection, send ``/api/neighbours`` for random tracks with a random one of three weightings (only
   mood: one view; all equal and random weights: four views, 10 x k candidates each) and k=10, until
   ``--queries`` requests or ``--seconds`` have gone, whichever comes first (once with one client, once
   with ``--clients``). The reference is the same queries as bare ``Catalogue.search`` calls in this
   process (no HTTP, no JSON, no matched segments). Ratios are server / reference.
   A few answers are checked against the reference's ranking.

The machine is shared (``loadavg`` is recorded at the start): compare figures within one run.

Writes ``benchmarks/results/serve.json``.

    python benchmarks/serve.py [--tracks 100000] [--queries 400] [--seconds 60] [--clients 4] [--work DIR]
"""

from __future__ import annotations

import argparse
import csv
import http.client
import json
import os
import platform
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from urllib.parse import quote

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "results", "serve.json")
CONDITIONS = {"genre": 8, "mood": 4, "instrument": 6, "tempo": 12}  # condition -> classes
SLICE = 64
SAMPLE_RATE = 22050
SEGMENT_SECONDS = 3.0
K = 10


# --------------------------------------------------------------------------- the catalogue


def _slices(classes: np.ndarray, centroids: np.ndarray, noise: float, rng) -> np.ndarray:
    """Each row: its class's centroid plus Gaussian noise, normalised to 1/2 (one of four slices)."""
    x = centroids[classes] + noise * rng.standard_normal((len(classes), SLICE)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True) / 2).astype(np.float32)


def write_catalogue(path: str, tracks: int, segments: int, seed: int = 0) -> dict:
    """A catalogue of ``tracks`` synthetic tracks in dml embed's format (module docstring); returns its sizes."""
    rng = np.random.default_rng(seed)
    os.makedirs(path, exist_ok=True)
    labels, track_parts = {}, []
    for name, n_classes in CONDITIONS.items():
        centroids = rng.standard_normal((n_classes, SLICE)).astype(np.float32)
        classes = rng.integers(0, n_classes, tracks)
        labels[name] = classes
        track_parts.append(_slices(classes, centroids, 0.8, rng))
    emb = np.concatenate(track_parts, axis=1)
    np.save(os.path.join(path, "tracks.npy"), emb)
    # segments: the track's slices plus noise, re-normalised per slice
    noise = rng.standard_normal((tracks * segments, emb.shape[1])).astype(np.float32)
    seg = np.repeat(emb, segments, axis=0) + 0.05 * noise
    seg = seg.reshape(-1, 4, SLICE)
    seg = (seg / np.linalg.norm(seg, axis=2, keepdims=True) / 2).reshape(-1, 4 * SLICE).astype(np.float32)
    np.save(os.path.join(path, "segments.npy"), seg)
    del seg
    audio_root = os.path.join(path, "audio")  # never created: the paths only need to look like dml embed's
    tempo_bpm = 60 + 10 * labels["tempo"] + rng.uniform(0, 10, tracks)
    with open(os.path.join(path, "tracks.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["track_id", "path", "n_segments", "genre", "mood", "instrument", "tempo"])
        for i in range(tracks):
            w.writerow([f"track_{i:06d}", os.path.join(audio_root, f"track_{i:06d}.wav"), segments,
                        f"genre{labels['genre'][i]}", f"mood{labels['mood'][i]}",
                        f"instrument{labels['instrument'][i]}", f"{tempo_bpm[i]:.1f}"])
    hop = SEGMENT_SECONDS
    with open(os.path.join(path, "segments.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["track_id", "start_s"])
        for i in range(tracks):
            for j in range(segments):
                w.writerow([f"track_{i:06d}", f"{j * hop:.3f}"])
    with open(os.path.join(path, "skipped.csv"), "w", newline="") as f:
        csv.writer(f).writerow(["track_id", "path", "reason"])
    starts = np.cumsum([0] + [SLICE] * 4)
    config = {"embedding_dim": 4 * SLICE, "mask_mode": "fixed", "normalisation_groups": 4,
              "conditions": {c: [int(starts[i]), int(starts[i + 1])] for i, c in enumerate(CONDITIONS)},
              "sample_rate": SAMPLE_RATE, "segment_seconds": SEGMENT_SECONDS,
              "segment_samples": int(SEGMENT_SECONDS * SAMPLE_RATE), "training_config_hash": "synthetic",
              "catalogue": {"export_dir": None, "backend": "saved_model", "hop_seconds": hop, "source": audio_root,
                            "label_columns": list(CONDITIONS), "synthetic": "benchmarks/serve.py"}}
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    return {"tracks": tracks, "segments": tracks * segments, "dim": int(emb.shape[1]),
            "tracks_npy_mb": round(os.path.getsize(os.path.join(path, "tracks.npy")) / 2 ** 20, 1),
            "segments_npy_mb": round(os.path.getsize(os.path.join(path, "segments.npy")) / 2 ** 20, 1)}


# --------------------------------------------------------------------------- the server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(conn: http.client.HTTPConnection, path: str) -> bytes:
    conn.request("GET", path)
    response = conn.getresponse()
    body = response.read()
    if response.status != 200:
        raise RuntimeError(f"GET {path}: {response.status} {body[:300]!r}")
    return body


def start_server(catalogue: str, log_path: str, timeout: float):
    """Start `dml serve` on a free loopback port; returns ``(process, port, seconds to the first answer)``."""
    port = _free_port()
    t0 = time.perf_counter()
    log = open(log_path, "a")
    proc = subprocess.Popen([sys.executable, "-m", "disentangled_ml", "serve", catalogue, "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            _get(conn, "/api/info")
            conn.close()
            return proc, port, time.perf_counter() - t0
        except OSError:
            pass
        if proc.poll() is not None or time.perf_counter() - t0 > timeout:
            stop_server(proc)
            raise RuntimeError(f"dml serve did not start (exit {proc.poll()}); see {log_path}")
        time.sleep(0.1)


def stop_server(proc) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# --------------------------------------------------------------------------- queries


def make_queries(n: int, tracks: int, seed: int = 1):
    """``n`` queries ``(track_index, weights dict)``: only mood, all equal, or random weights, in turn at random."""
    rng = random.Random(seed)
    names = list(CONDITIONS)
    out = []
    for _ in range(n):
        kind = rng.choice(["only_mood", "all_equal", "random"])
        if kind == "only_mood":
            w = {c: float(c == "mood") for c in names}
        elif kind == "all_equal":
            w = {c: 1.0 for c in names}
        else:
            w = {c: round(rng.uniform(0.05, 1.0), 2) for c in names}
        out.append((rng.randrange(tracks), w, kind))
    return out


def _weights_text(w: dict) -> str:
    return ",".join(f"{c}={v:g}" for c, v in w.items())


def load_generator(port: int, queries, clients: int, max_queries: int, max_seconds: float) -> dict:
    """Send queries over ``clients`` keep-alive connections until ``max_queries`` are answered or
    ``max_seconds`` have passed; per-request latency in ms, and answers per second."""
    lock = threading.Lock()
    latencies, errors, issued = [], [], [0]
    deadline = time.perf_counter() + max_seconds

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            while True:
                with lock:
                    if issued[0] >= max_queries or time.perf_counter() > deadline:
                        return
                    i = issued[0]
                    issued[0] += 1
                track, w, _ = queries[i % len(queries)]
                path = f"/api/neighbours?track=track_{track:06d}&weights={quote(_weights_text(w))}&k={K}"
                t = time.perf_counter()
                try:
                    _get(conn, path)
                except (OSError, RuntimeError) as e:
                    with lock:
                        errors.append(str(e))
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                    continue
                with lock:
                    latencies.append((time.perf_counter() - t) * 1e3)
        finally:
            conn.close()

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    return {"clients": clients, **_summary(latencies), "answers_per_s": round(len(latencies) / wall, 1),
            "wall_s": round(wall, 2), "errors": len(errors), "first_errors": errors[:3]}


def _summary(ms) -> dict:
    if not ms:
        return {"queries": 0}
    a = np.asarray(ms)
    return {"queries": int(a.size), "p50_ms": round(float(np.percentile(a, 50)), 2),
            "p95_ms": round(float(np.percentile(a, 95)), 2), "p99_ms": round(float(np.percentile(a, 99)), 2),
            "mean_ms": round(float(a.mean()), 2)}


def reference(catalogue: str, queries, max_queries: int, max_seconds: float) -> dict:
    """The bare in-process ``Catalogue.search`` over the same queries (cached indexes, memory-mapped)."""
    from disentangled_ml.catalogue_search import Catalogue

    cat = Catalogue(catalogue, mmap=True)
    cat.prepare_indexes()
    ms = []
    deadline = time.perf_counter() + max_seconds
    for track, w, _ in queries[:max_queries]:
        if time.perf_counter() > deadline:
            break
        t = time.perf_counter()
        cat.search(np.asarray(cat.embeddings[track], np.float32), weights=w, k=K, exclude=track)
        ms.append((time.perf_counter() - t) * 1e3)
    return _summary(ms)


def check_answers(port: int, catalogue: str, queries, n: int = 5) -> int:
    """The server's ranking for ``n`` queries equals Catalogue.search's; returns how many were checked."""
    from disentangled_ml.catalogue_search import Catalogue

    cat = Catalogue(catalogue, mmap=True)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for track, w, _ in queries[:n]:
        got = json.loads(_get(conn, f"/api/neighbours?track=track_{track:06d}&weights={quote(_weights_text(w))}&k={K}"))
        want = cat.search(np.asarray(cat.embeddings[track], np.float32), weights=w, k=K, exclude=track)
        if [r["index"] for r in got["results"]] != [i for i, _ in want]:
            raise AssertionError(f"the server ranks track {track} under {w} otherwise than Catalogue.search")
    conn.close()
    return n


# --------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tracks", type=int, default=100_000)
    parser.add_argument("--segments", type=int, default=2, help="segments per track")
    parser.add_argument("--queries", type=int, default=400, help="most queries per load-generator run")
    parser.add_argument("--seconds", type=float, default=60.0, help="longest load-generator run, in seconds")
    parser.add_argument("--clients", type=int, default=4, help="concurrent connections of the loaded run")
    parser.add_argument("--work", default=None, help="folder for the catalogue (default: a temporary one, deleted)")
    parser.add_argument("--start-timeout", type=float, default=1800.0, help="seconds a server start may take")
    parser.add_argument("--out", default=DEFAULT_OUT)
    args = parser.parse_args()

    import disentangled_ml
    import hnswlib
    import starlette
    import uvicorn

    work = args.work or tempfile.mkdtemp(prefix="bench_serve_")
    catalogue = os.path.join(work, "catalogue")
    log_path = os.path.join(work, "serve.log")
    out = {"what": "dml serve: load time and /api/neighbours latency over loopback, against Catalogue.search "
                   "in-process (benchmarks/serve.py)",
           "loadavg_at_start": [round(v, 2) for v in os.getloadavg()], "cpus": os.cpu_count(),
           "k": K, "target_p95_ms": 50}
    try:
        t = time.perf_counter()
        if os.path.isfile(os.path.join(catalogue, "config.json")):
            print(f"reusing the catalogue in {catalogue}", flush=True)
            from disentangled_ml.catalogue_search import Catalogue
            out["catalogue"] = {"tracks": len(Catalogue(catalogue, mmap=True)), "reused": True}
        else:
            print(f"writing a {args.tracks}-track catalogue in {catalogue}", flush=True)
            out["catalogue"] = write_catalogue(catalogue, args.tracks, args.segments)
            out["catalogue"]["write_s"] = round(time.perf_counter() - t, 1)
        tracks = out["catalogue"]["tracks"]

        print("first start (builds the hnswlib indexes where none are cached)", flush=True)
        proc, port, first = start_server(catalogue, log_path, args.start_timeout)
        stop_server(proc)
        print(f"  {first:.1f} s; second start", flush=True)
        proc, port, second = start_server(catalogue, log_path, args.start_timeout)
        try:
            from disentangled_ml.catalogue_search import Catalogue
            t = time.perf_counter()
            cat = Catalogue(catalogue, mmap=True)
            opened = time.perf_counter() - t
            t = time.perf_counter()
            cat.prepare_indexes()
            indexes = time.perf_counter() - t
            out["load"] = {"first_start_s": round(first, 2), "start_s": round(second, 2),
                           "in_process": {"open_catalogue_mmap_s": round(opened, 3),
                                          "load_cached_indexes_s": round(indexes, 3)},
                           "note": "start_s: process start to the first answer, indexes cached; first_start_s "
                                   "includes building them (once per catalogue)"}
            print(f"  load: {out['load']}", flush=True)

            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
            t = time.perf_counter()
            size = len(_get(conn, "/api/map?view=mood"))
            first_map = time.perf_counter() - t
            stop_server(proc)  # a new process reads the map from the cache, not from its memory
            proc, port, _ = start_server(catalogue, log_path, args.start_timeout)
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
            t = time.perf_counter()
            _get(conn, "/api/map?view=mood")
            cached_map = time.perf_counter() - t
            conn.close()
            out["map"] = {"view": "mood", "method": "pca", "first_request_s": round(first_map, 2),
                          "cached_request_s": round(cached_map, 2), "response_mb": round(size / 2 ** 20, 2)}
            print(f"  map: {out['map']}", flush=True)

            queries = make_queries(max(args.queries, 50), tracks)
            out["answers_checked"] = check_answers(port, catalogue, queries)
            load_generator(port, queries[-20:], 1, 20, 30)  # warm-up: page cache, the first JSON answers
            out["server"] = {"one_client": load_generator(port, queries, 1, args.queries, args.seconds),
                             "loaded": load_generator(port, queries, args.clients, args.queries, args.seconds)}
        finally:
            stop_server(proc)
        out["reference_catalogue_search"] = reference(catalogue, queries, args.queries, args.seconds)
        ref = out["reference_catalogue_search"]
        one = out["server"]["one_client"]
        out["ratios_server_over_reference"] = {
            "p50": round(one["p50_ms"] / ref["p50_ms"], 2), "p95": round(one["p95_ms"] / ref["p95_ms"], 2)}
        out["p95_under_target"] = {"one_client": one["p95_ms"] < 50,
                                   "loaded": out["server"]["loaded"]["p95_ms"] < 50}
        out["bounds"] = {"queries": args.queries, "seconds": args.seconds, "clients": args.clients}
        out["versions"] = {"python": platform.python_version(), "numpy": np.__version__,
                           "hnswlib": getattr(hnswlib, "__version__", "0.8.0"), "starlette": starlette.__version__,
                           "uvicorn": uvicorn.__version__, "disentangled_ml": disentangled_ml.__version__}
        print(json.dumps({k: out[k] for k in ("server", "reference_catalogue_search", "ratios_server_over_reference")},
                         indent=1), flush=True)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=2)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
