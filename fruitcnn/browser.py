"""Headless Chromium: screenshots of a report and a check that it renders.

``report.py --screenshot`` and ``--check`` and the report tests use it. Chromium is
not a Python package: on Debian/Ubuntu ``apt-get install chromium`` (the CI script
does), on macOS Google Chrome works; ``$FRUITCNN_CHROMIUM`` names any other binary.

:func:`render_check` loads a copy of the page with a small script added at its end,
lets Chromium lay it out, and reads the script's findings back from the dumped DOM:
images that failed to decode, the page's width against the window's, and elements
that stick out of the window without a scrolling box around them.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
MAC_CHROME = "/Applications/Google Chrome.app/Contents/MacOS/Google Chrome"
# Flags for a quiet, offline, throw-away browser: no sandbox (CI runs as root), no
# GPU, and none of the background connections that fail on a closed network.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
)
# Milliseconds of virtual time the page gets to load before it is dumped or shot.
LOAD_BUDGET_MS = 5000
# Seconds before a hung browser is stopped.
TIMEOUT_S = 120
_RESULT_ID = "fruitcnn-render-check"

_CHECK_SCRIPT = """
<script>
(function () {
  function check() {
    var width = window.innerWidth;
    var images = Array.prototype.slice.call(document.images);
    var broken = images.filter(function (img) { return !img.complete || img.naturalWidth === 0; })
                       .map(function (img) { return (img.alt || img.src).slice(0, 80); });
    var scrolls = function (el) {
      for (var node = el.parentElement; node; node = node.parentElement) {
        var style = getComputedStyle(node);
        if (style.overflowX === "auto" || style.overflowX === "scroll" || style.overflowX === "hidden") {
          return true;
        }
      }
      return false;
    };
    var overflowing = [];
    Array.prototype.forEach.call(document.body.querySelectorAll("*"), function (el) {
      var box = el.getBoundingClientRect();
      if (box.width > 0 && box.right > width + 1 && !scrolls(el) && overflowing.length < 20) {
        overflowing.push(el.tagName.toLowerCase() + (el.className ? "." + el.className : "") +
                         " right=" + Math.round(box.right));
      }
    });
    var result = {
      window_width: width,
      page_width: document.documentElement.scrollWidth,
      page_height: document.documentElement.scrollHeight,
      images: images.length,
      broken_images: broken,
      overflowing: overflowing,
      title: document.title,
      sections: document.querySelectorAll("section").length
    };
    var out = document.createElement("pre");
    out.id = "RESULT_ID";
    out.textContent = JSON.stringify(result);
    document.body.appendChild(out);
  }
  if (document.readyState === "complete") { check(); } else { window.addEventListener("load", check); }
})();
</script>
""".replace("RESULT_ID", _RESULT_ID)


def find_chromium() -> str | None:
    """Path of a Chromium or Chrome binary, or None."""
    named = os.environ.get("FRUITCNN_CHROMIUM")
    if named:
        return named if Path(named).is_file() or shutil.which(named) else None
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return MAC_CHROME if Path(MAC_CHROME).is_file() else None


def _browser() -> str:
    path = find_chromium()
    if path is None:
        raise ValueError(
            "no Chromium or Chrome found (looked for "
            + ", ".join(CANDIDATES)
            + " on PATH and $FRUITCNN_CHROMIUM); install one, e.g. apt-get install chromium."
        )
    return path


def _run(arguments: list[str], *, width: int, height: int) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="fruitcnn-chromium-") as profile:
        command = [
            _browser(),
            *FLAGS,
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
            f"--virtual-time-budget={LOAD_BUDGET_MS}",
            *arguments,
        ]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired as error:
            raise RuntimeError(
                f"Chromium did not finish within {TIMEOUT_S} s: {' '.join(command)}"
            ) from error
    if done.returncode != 0:
        raise RuntimeError(f"Chromium failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")
    return done


def screenshot(page: str | Path, png: str | Path, *, width: int = 1280, height: int = 2000) -> Path:
    """Save a ``width`` x ``height`` screenshot of the top of an HTML file as PNG."""
    page, png = Path(page).resolve(), Path(png).resolve()
    if not page.is_file():
        raise ValueError(f"{page} does not exist; write the report first (python report.py RUN).")
    png.parent.mkdir(parents=True, exist_ok=True)
    _run([f"--screenshot={png}", page.as_uri()], width=width, height=height)
    if not png.is_file() or png.stat().st_size == 0:
        raise RuntimeError(f"Chromium reported success but wrote no screenshot at {png}.")
    return png


def render_check(page: str | Path, *, width: int = 1280, height: int = 900) -> dict[str, Any]:
    """Load an HTML file in a ``width``-pixel window and report how it rendered.

    Returns:
        ``window_width``, ``page_width`` (wider than the window means a horizontal
        scroll bar), ``page_height``, ``images`` (count), ``broken_images`` (alt text
        of those that did not decode), ``overflowing`` (elements past the window's
        right edge outside any scrolling box), ``title`` and ``sections``.
    """
    page = Path(page).resolve()
    if not page.is_file():
        raise ValueError(f"{page} does not exist; write the report first (python report.py RUN).")
    text = page.read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory(prefix="fruitcnn-check-") as folder:
        probe = Path(folder) / page.name
        closing = text.rfind("</body>")
        probe.write_text(
            text[:closing] + _CHECK_SCRIPT + text[closing:] if closing >= 0 else text + _CHECK_SCRIPT,
            encoding="utf-8",
        )
        done = _run(["--dump-dom", probe.as_uri()], width=width, height=height)
    match = re.search(rf'<pre id="{_RESULT_ID}">(.*?)</pre>', done.stdout, re.S)
    if match is None:
        raise RuntimeError("the page did not finish loading in Chromium (no check result in the DOM).")
    return json.loads(html.unescape(match.group(1)))


def problems(check: dict[str, Any]) -> list[str]:
    """What a :func:`render_check` result shows to be wrong (empty when it renders well)."""
    found = []
    if check["broken_images"]:
        found.append(f"{len(check['broken_images'])} image(s) did not render: {check['broken_images'][:3]}")
    if check["page_width"] > check["window_width"]:
        found.append(
            f"the page is {check['page_width']} px wide in a {check['window_width']} px window "
            f"(horizontal scrolling); sticking out: {check['overflowing'][:5]}"
        )
    elif check["overflowing"]:
        found.append(f"elements past the window's edge: {check['overflowing'][:5]}")
    return found
