"""Screenshots for the README from a `make demo` output: TensorBoard's projector and `dml serve`.

    python scripts/screenshots.py demo_out            # writes docs/projector.png and docs/serve.png

Both are taken the way a user meets them, from the commands the demo prints:

* ``tensorboard --logdir OUT/run/tensorboard``: the PROJECTOR tab. Before the shot, TensorBoard's
  own projector API must list the run and its five tensors (the whole embedding and one per
  condition), so the picture cannot show an empty projector.
* ``dml serve OUT/catalogue --export OUT/export``: the first track as the query, "only mood".

Needs Debian's ``chromium`` and ``chromium-driver`` (what ``.ci/run`` installs) and Selenium (the
``test`` extra). The projector draws with WebGL, which headless Chromium gets from SwiftShader.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, timeout: float = 120.0):
    """GET ``url`` until it answers (the server may still be starting), then its JSON."""
    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                return json.loads(r.read())
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(1.0)


def browser(width: int, height: int):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")
    if not (chromium and driver):
        sys.exit("needs Chromium and its driver: apt-get install -y chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={width},{height}",
                "--mute-audio", "--use-angle=swiftshader", "--enable-unsafe-swiftshader"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(driver), options=options)  # a given driver: nothing is downloaded


def projector_shot(demo: str, out_png: str, bin_dir: str) -> None:
    logdir = os.path.join(demo, "run", "tensorboard")
    port = free_port()
    tb = subprocess.Popen([os.path.join(bin_dir, "tensorboard"), "--logdir", logdir, "--host", "127.0.0.1",
                           "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        runs = get_json(f"{base}/data/plugin/projector/runs")
        if "projector" not in runs:
            sys.exit(f"TensorBoard over {logdir} lists no projector run (runs: {runs})")
        info = get_json(f"{base}/data/plugin/projector/info?run=projector")
        names = sorted(e["tensorName"] for e in info["embeddings"])
        print(f"projector run lists {len(names)} tensors: {', '.join(names)}")
        if len(names) != 5:
            sys.exit("expected five tensors (the whole embedding and four conditions)")
        d = browser(1400, 900)
        try:
            d.get(f"{base}/#projector")
            time.sleep(20)  # the projector loads the checkpoint and lays out PCA; it signals nothing to wait on
            d.save_screenshot(out_png)
        finally:
            d.quit()
    finally:
        tb.terminate()
        tb.wait(timeout=30)


def serve_shot(demo: str, out_png: str, bin_dir: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    port = free_port()
    server = subprocess.Popen([os.path.join(bin_dir, "dml"), "serve", os.path.join(demo, "catalogue"), "--export",
                               os.path.join(demo, "export"), "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        info = get_json(f"{base}/api/info", timeout=300)
        first = get_json(f"{base}/api/find?q=&limit=1")
        print(f"dml serve: {info['tracks']} tracks")
        d = browser(1400, 1040)
        try:
            wait = WebDriverWait(d, 60)
            body = lambda: d.find_element(By.TAG_NAME, "body")  # noqa: E731
            d.get(base + "/")
            wait.until(lambda _: body().get_attribute("data-state") == "ready")
            track = first["tracks"][0]["track_id"]
            find = d.find_element(By.ID, "find")
            find.send_keys(track)
            find.send_keys(Keys.ENTER)
            wait.until(lambda _: (body().get_attribute("data-shown") or "").startswith(track + "|"))
            d.find_element(By.XPATH, "//div[@id='presets']//button[normalize-space()='only mood']").click()
            wait.until(lambda _: "mood=1.00" in (body().get_attribute("data-shown") or ""))
            d.find_element(By.ID, "map-view").send_keys("mood")  # the map of the mood view
            time.sleep(2)
            d.save_screenshot(out_png)
        finally:
            d.quit()
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("demo", help="the output folder of `make demo` (default demo_out)", nargs="?", default="demo_out")
    parser.add_argument("--docs", default=os.path.join(ROOT, "docs"), help="where the PNG files go")
    args = parser.parse_args()
    bin_dir = os.path.dirname(sys.executable)
    projector_shot(args.demo, os.path.join(args.docs, "projector.png"), bin_dir)
    serve_shot(args.demo, os.path.join(args.docs, "serve.png"), bin_dir)
    print(f"wrote {args.docs}/projector.png and {args.docs}/serve.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
