"""Opens a static HTML page in a real headless Chromium (Debian's, driven by
Selenium) and reads facts back from the page itself: did every image decode,
what rows does the score table hold, and is the rendered screen more than a
blank page.

Selenium is pointed at ``/usr/bin/chromium`` and ``/usr/bin/chromedriver``
explicitly (and ``SE_OFFLINE=true``), so Selenium Manager never tries to
download a browser or driver; ``make test`` installs both where missing.
"""
from __future__ import annotations

import contextlib
import io
import os
import pathlib
import shutil
import tempfile
from typing import Any, Iterator

import numpy as np
import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WINDOW = (1280, 2000)
TIMEOUT_S = 30.0
# Flags that run headless as root in a container: no sandbox (root), no GPU,
# /tmp instead of a small /dev/shm, and no background traffic of any kind.
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--hide-scrollbars")

# Everything the page reports about itself, read in one script after loading.
_FACTS_JS = """
const body = document.querySelector('#scores tbody');
const rows = body ? Array.from(body.rows) : [];
return {
  images: Array.from(document.images).map(i => [i.getAttribute('src'), i.naturalWidth]),
  rows: rows.length,
  methods: rows.map(r => r.getAttribute('data-method')),
  title: document.title,
  height: Math.max(document.body.scrollHeight, document.documentElement.scrollHeight),
};
"""
_LOADED_JS = ("return document.readyState === 'complete'"
              " && Array.from(document.images).every(i => i.complete);")


def _require_browser() -> None:
  missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
  if missing:
    pytest.fail(f"the browser tests need Debian's Chromium and its driver; missing {missing}."
                " `make test` installs them (apt-get install chromium chromium-driver).",
                pytrace=False)


@contextlib.contextmanager
def browser(window: tuple[int, int] = WINDOW) -> Iterator[Any]:
  """A headless Chromium WebDriver with a fresh temporary profile, `window`
  pixels wide and high (default 1280x2000: the page's target width); quit on
  exit. Fails the test (no skip) when Chromium or chromedriver is missing."""
  _require_browser()
  os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager download
  from selenium import webdriver
  from selenium.webdriver.chrome.service import Service
  profile = tempfile.mkdtemp(prefix="saljax-chromium-")
  opts = webdriver.ChromeOptions()
  opts.binary_location = CHROMIUM
  for f in FLAGS:
    opts.add_argument(f)
  opts.add_argument(f"--user-data-dir={profile}")
  opts.add_argument(f"--window-size={window[0]},{window[1]}")
  driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
  try:
    driver.set_page_load_timeout(TIMEOUT_S)
    yield driver
  finally:
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def open_page(driver, index_html: str | os.PathLike) -> None:
  """Loads a local HTML file and waits until the document and every ``<img>``
  have finished (an image that fails to load also counts as finished)."""
  from selenium.webdriver.support.ui import WebDriverWait
  path = pathlib.Path(index_html).resolve()
  if not path.is_file():
    raise FileNotFoundError(f"index_html: expected an HTML file, got {path}")
  driver.get(path.as_uri())
  WebDriverWait(driver, TIMEOUT_S).until(lambda d: d.execute_script(_LOADED_JS))


def screen_stats(png: bytes) -> dict[str, float]:
  """Pixel statistics of a screenshot: std of the gray values (0-255) and the
  fraction of pixels that are not near-white (any channel below 235)."""
  from PIL import Image
  rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), np.float32)
  return {"std": float(rgb.mean(-1).std()), "nonwhite": float((rgb.min(-1) < 235).mean()),
          "width": rgb.shape[1], "height": rgb.shape[0]}


def page_facts(index_html: str | os.PathLike, *, full_page: bool = False) -> dict[str, Any]:
  """Opens ``index_html`` in headless Chromium at 1280x2000 and returns what
  the page itself reports once loaded:

    images: [(src, naturalWidth)] for every ``<img>`` (0: not decoded)
    rows: number of rows of ``#scores tbody``
    methods: those rows' ``data-method`` names, in order
    title, height: the document's title and scroll height (px)
    screenshot: PNG bytes of the window (the whole page with `full_page`)
    std, nonwhite: `screen_stats` of that screenshot
  """
  with browser() as d:
    open_page(d, index_html)
    facts = dict(d.execute_script(_FACTS_JS))
    facts["images"] = [(str(s), int(w)) for s, w in facts["images"]]
    if full_page:
      # A window as tall as the page; Chromium caps a screenshot at 16384 px.
      d.set_window_size(WINDOW[0], min(int(facts["height"]) + 100, 16384))
      open_page(d, index_html)
    png = d.get_screenshot_as_png()
  stats = screen_stats(png)
  return {**facts, "screenshot": png, "std": stats["std"], "nonwhite": stats["nonwhite"]}
