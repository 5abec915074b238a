"""The concepts binary's figures and page (experiments/concepts.py), from a
synthetic summary: the PNGs are not blank, and the page opens in headless
Chromium with every image decoded and one score row per concept, in rank order."""
import json
import os
import pathlib
import sys

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
import _browser  # noqa: E402

from experiments import concepts as E  # noqa: E402


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  out = tmp_path_factory.mktemp("concepts")
  rng = np.random.default_rng(0)
  k, n = 5, 20
  # Crops: coloured noise squares, each brighter in the channel of "its" concept.
  crops = (rng.uniform(0, 120, (n, 32, 32, 3))).astype(np.uint8)
  coeffs = rng.uniform(0, 1, (n, k))
  sobol = np.array([0.05, 0.6, 0.1, 0.3, 0.01])
  order = np.argsort(-sobol)
  E.figure_concepts(out / "concepts.png", crops, coeffs, sobol, order, 4, "test: concepts of <cat>")
  photo = rng.uniform(0, 255, (1, 48, 48, 3)).astype(np.uint8)
  maps = np.zeros((1, 48, 48, k))
  maps[0, 10:20, 30:40, 1] = 1
  E.figure_maps(out / "maps.png", photo, maps, [1, 3, 2], ["photo"])
  summary = {
      "model": "efficientnet_lite0", "layer": "head", "method": "nmf",
      "target": {"index": 285, "name": "Egyptian <cat>"}, "photos": {"chelsea": 0.61},
      "crops": n, "crop_size": 0.35, "importance_crops": 8, "designs": 32,
      "reconstruction_error": {"2": 0.5, "4": 0.3, "8": 0.2},
      "concepts": [{"id": int(j), "rank": r + 1, "sobol": float(sobol[j]), "gradient_input": 1.0,
                    "occlusion": 0.5} for r, j in enumerate(order)],
      "areas": {"sobol": {"c_deletion": 1.0, "c_insertion": 3.0},
                "gradient_input": {"c_deletion": 0.5, "c_insertion": 3.5}},
      "images": {"concepts": "concepts.png", "maps": "maps.png"},
      "reused": ["activations"], "computed": ["concepts", "importance"], "seconds": {},
      "total_seconds": 12.5,
  }
  (out / "summary.json").write_text(json.dumps(summary))
  return out, summary, E.write_page(out, summary)


def test_figures_are_drawn(workdir):
  out, _, _ = workdir
  for name in ("concepts.png", "maps.png"):
    img = np.asarray(Image.open(out / name).convert("RGB"), np.float32)
    assert img.std() > 20, name  # not a blank canvas
  # The bar of the most important concept (first row) is the accent blue.
  img = np.asarray(Image.open(out / "concepts.png").convert("RGB")).astype(int)
  blue = np.all(np.abs(img - np.array([0x1d, 0x5f, 0xbf])) < 30, axis=-1)
  rows = np.flatnonzero(blue.any(1))
  assert rows.size > 0 and rows.min() < img.shape[0] / 4


def test_page_renders_with_images_and_one_row_per_concept(workdir):
  out, summary, path = workdir
  facts = _browser.page_facts(path)
  srcs = dict(facts["images"])
  assert srcs == {s: Image.open(out / s).width for s in ("concepts.png", "maps.png")}
  assert facts["rows"] == len(summary["concepts"])
  assert facts["methods"] == [f"concept_{c['id']}" for c in summary["concepts"]]
  # The class name is text (escaped), not markup.
  assert facts["title"] == "saljax concepts: efficientnet_lite0 / Egyptian <cat>"
  assert facts["std"] > 25
  html = pathlib.Path(path).read_text()
  assert "&lt;cat&gt;" in html and "<cat>" not in html
