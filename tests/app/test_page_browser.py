"""The inspection page end to end in a real headless Chromium (driven by Playwright):
``explain.py --serve`` on a free port, an image uploaded through the page, two methods
chosen, their maps drawn and not blank, the predicted class shown, a screenshot taken.

Skipped with the reason where Chromium or Playwright is missing; required in CI
(``FRUITCNN_REQUIRE_CHROMIUM=1``), as the report's rendering test is.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import train
from fruitcnn.browser import find_chromium

ROOT = Path(__file__).resolve().parents[2]
REQUIRE_BROWSER = os.environ.get("FRUITCNN_REQUIRE_CHROMIUM") == "1"
# Seconds for the server to start (TensorFlow's import) and for the maps to arrive.
START_S, MAPS_S = 120, 120


def _browser_or_skip():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        reason = "Playwright is not installed (pip install -r requirements.txt)"
    else:
        chromium = find_chromium()
        if chromium:
            return sync_playwright, chromium
        reason = "no Chromium found (apt-get install chromium, or set FRUITCNN_CHROMIUM)"
    if REQUIRE_BROWSER:
        pytest.fail(f"FRUITCNN_REQUIRE_CHROMIUM=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """explain.py --serve on a free port for a small line run; yields its address."""
    folder = tmp_path_factory.mktemp("served")
    root = folder / "saved_models"
    argv = "--images-per-class 6 --epochs 1 --batch-size 32 --verbose 0 --no-report".split()
    assert train.main([*argv, "--out", str(root / "line-run")]) == 0
    before = sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "explain.py"), "--serve", str(root), "--port", "0"],
        cwd=folder,
        env={**os.environ, "FRUITCNN_CACHE": str(tmp_path_factory.mktemp("cache"))},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + START_S
    address, seen = None, []
    while time.monotonic() < deadline and process.poll() is None:
        line = process.stdout.readline()
        seen.append(line)
        found = re.search(r"(http://127\.0\.0\.1:\d+/)", line)
        if found:
            address = found.group(1)
            break
    if address is None:
        process.kill()
        pytest.fail("the server did not start:\n" + "".join(seen))
    yield address, folder, before
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()


_PIXEL_SPREAD = """
(images) => images.map((img) => {
  const canvas = document.createElement("canvas");
  canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
  const context = canvas.getContext("2d");
  context.drawImage(img, 0, 0);
  const data = context.getImageData(0, 0, canvas.width, canvas.height).data;
  let sum = 0, squares = 0, count = data.length / 4;
  for (let i = 0; i < data.length; i += 4) {
    const grey = (data[i] + data[i + 1] + data[i + 2]) / 3; sum += grey; squares += grey * grey;
  }
  return { name: img.alt, width: img.naturalWidth, variance: squares / count - (sum / count) ** 2 };
})
"""


def test_upload_an_image_choose_two_methods_and_see_the_maps(server, tmp_path):
    sync_playwright, chromium = _browser_or_skip()
    address, folder, before = server
    image = np.zeros((28, 28, 3), np.uint8)
    image[10:13, 4:20] = (255, 0, 0)
    Image.fromarray(image).save(tmp_path / "line.png")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 1100})
        errors = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(address)
        page.wait_for_selector(
            "#samples button", timeout=MAPS_S * 1000
        )  # the run opened, its test images listed
        page.set_input_files("#file", str(tmp_path / "line.png"))
        page.wait_for_selector("#predictions tr.top", timeout=MAPS_S * 1000)
        predicted = page.get_attribute("#current", "data-predicted")
        assert predicted and predicted in page.inner_text("#predictions")
        page.select_option("#method-a", "saliency")
        page.select_option("#method-b", "gradcam")
        page.click("#go")
        page.wait_for_function(
            "document.querySelectorAll('#panels .panel').length === 2 && "
            "[...document.querySelectorAll('#panels .panel')].every((p) => p.dataset.done)",
            timeout=MAPS_S * 1000,
        )
        assert page.eval_on_selector_all("#panels .panel", "(ps) => ps.map((p) => p.dataset.done)") == [
            "1",
            "1",
        ]
        loaded = (
            "[...document.querySelectorAll('#panels img.map')].every((i) => i.complete && i.naturalWidth)"
        )
        page.wait_for_function(loaded)
        drawn = page.eval_on_selector_all("#panels img.map", _PIXEL_SPREAD)
        assert [item["name"] for item in drawn] == ["saliency", "gradcam"]
        assert all(item["width"] == 28 and item["variance"] > 1.0 for item in drawn), drawn
        page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        browser.close()
    assert not errors, errors
    assert (tmp_path / "page.png").stat().st_size > 10_000
    # the server wrote nothing where it runs: the run folder and its surroundings are as they were
    assert sorted(str(path.relative_to(folder)) for path in folder.rglob("*")) == before
