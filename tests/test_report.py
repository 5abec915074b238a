"""The demo's report page, opened in a real headless Chromium: every image
decodes, the score table has one row per method and sorts when a header is
clicked, the screen is not blank, and a missing image file is caught."""
import copy
import json
import pathlib

import _browser
import numpy as np
import pytest

from experiments import report
from saljax import viz
from saljax.data import bundled_photos

ROOT = pathlib.Path(__file__).resolve().parents[1]
PHOTOS = ("chelsea", "coffee", "astronaut")
TOP5 = {
    "chelsea": [(285, "Egyptian cat", 0.61), (281, "tabby, tabby cat", 0.17), (282, "tiger cat", 0.12),
                (287, "lynx, catamount", 0.03), (728, "plastic bag", 0.01)],
    "coffee": [(967, "espresso", 0.72), (968, "cup", 0.14), (504, "coffee mug", 0.07),
               (925, "consomme", 0.02), (809, "soup bowl", 0.01)],
    "astronaut": [(834, "suit, suit of clothes", 0.22), (869, "trench coat", 0.09),
                  (457, "bow tie, bow-tie, bowtie", 0.07), (906, "Windsor tie", 0.05),
                  (652, "military uniform", 0.04)],
}
# name -> (family, year, kind, status, scores or None, evaluations, seconds)
METHODS = {
    "gradient": ("gradients", 2014, "pixel", "ok", (0.67, 0.31, 0.21, 0.44), 1, 1.9),
    "integrated_gradients": ("gradients", 2017, "pixel", "ok", (1.0, 0.48, 0.12, 0.63), 8, 6.4),
    "lrp": ("propagation", 2015, "pixel", "failed", None, 1, 0.7),
    "gradcam": ("cam", 2017, "layer", "ok", (0.33, 0.52, 0.18, 0.71), 1, 3.2),
    "attention_rollout": ("attention", 2020, "layer", "not applicable", None, None, None),
    "rise": ("perturbation", 2018, "pixel", "ok", (0.67, 0.40, 0.09, 0.58), 128, 21.5),
}
METRIC_NAMES = ("pointing_game", "energy_pointing_game", "deletion", "insertion")


def _crops() -> list[np.ndarray]:
  """Square center crops of the bundled photos, about 112 px (small PNGs)."""
  out = []
  for img in bundled_photos.photos(PHOTOS).values():
    h, w, _ = img.shape
    s = min(h, w)
    sq = img[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    out.append(sq[::max(1, s // 112), ::max(1, s // 112)][:112, :112])
  return out


def _summary() -> dict:
  methods = {}
  for name, (fam, year, kind, status, scores, evals, secs) in METHODS.items():
    rec = {"family": fam, "year": year, "kind": kind, "status": status,
           "paper": f"{name.replace('_', ' ').title()} et al. {year}, a paper about <{name}> & maps",
           "options": {"layer": "head"} if kind == "layer" else {"steps": 8, "baseline": [0, 0]},
           "seconds": secs, "evaluations": evals, "photos": list(PHOTOS),
           "scores": dict(zip(METRIC_NAMES, scores or (None,) * 4)),
           "image": f"rows/{name}.png" if status == "ok" else None}
    if status == "failed":
      rec["error"] = "ValueError: epsilon: expected a float > 0, got <script>alert(1)</script>"
    if status == "not applicable":
      rec["reason"] = "needs a ViT's attention weights; EfficientNet-Lite0 is a CNN"
    methods[name] = rec
  counts = {}
  for r in methods.values():
    counts[r["status"]] = counts.get(r["status"], 0) + 1
  return {
      "model": "efficientnet_lite0", "device": "cpu (cpu), 2 cores, x86_64", "saljax_version": "0.1.0",
      "total_seconds": 512.3, "counts": counts,
      "photos": {p: [{"class": c, "name": n, "probability": q} for c, n, q in TOP5[p]] for p in PHOTOS},
      "targets": {p: TOP5[p][0][0] for p in PHOTOS},
      "ground_truth": {"file": "saljax/data/bundled_boxes.json", "how": "text",
                       "boxes": {p: [[10, 10, 90, 90]] for p in PHOTOS}},
      "images": {"grid": "grid.png"},
      "metrics": {n: {"direction": "lower" if n == "deletion" else "higher",
                      "title": n.replace("_", " ").capitalize(), "about": f"what {n} measures"}
                  for n in METRIC_NAMES},
      "methods": methods,
  }


def make_workdir(out: pathlib.Path) -> tuple[dict, pathlib.Path]:
  """Fills `out` like a demo workdir: summary.json, grid.png and one row PNG
  per method that ran, drawn by saljax.viz from smooth random maps on the real
  photos; renders index.html. Returns the summary and the page's path."""
  (out / "rows").mkdir(exist_ok=True)
  summary = _summary()
  crops = _crops()
  rng = np.random.default_rng(0)
  maps = {}
  for name, rec in summary["methods"].items():
    if rec["status"] != "ok":
      maps[name] = None  # drawn as an "n/a" row in the grid
      continue
    # Smooth blobs (upsampled noise): signed pixel maps, positive layer maps.
    low = rng.normal(size=(len(PHOTOS), 8, 8))
    if rec["kind"] == "pixel":
      maps[name] = np.kron(low, np.ones((14, 14)))[..., None] * np.ones(3)
    else:
      maps[name] = np.maximum(low[:, :7, :7], 0)
    viz.grid(crops, {name: maps[name]}, out / rec["image"], titles=list(PHOTOS), cell=1.2, dpi=60,
             by_family=False, legend=False)
  viz.grid(crops, {n: m for n, m in maps.items() if summary["methods"][n]["status"] != "not applicable"},
           out / "grid.png", titles=list(PHOTOS), cell=1.2, dpi=60)
  (out / "summary.json").write_text(json.dumps(summary, indent=1))
  return summary, report.write(out, summary)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  out = tmp_path_factory.mktemp("demo")
  summary, path = make_workdir(out)
  return out, summary, path


@pytest.fixture(scope="module")
def facts(workdir):
  return _browser.page_facts(workdir[2])


def test_every_image_decodes_and_the_table_has_every_method(workdir, facts):
  out, summary, path = workdir
  assert path == out / "index.html"
  srcs = dict(facts["images"])
  ran = [n for n, r in summary["methods"].items() if r["status"] == "ok"]
  assert set(srcs) == {"grid.png"} | {f"rows/{n}.png" for n in ran}
  assert all(w > 0 for w in srcs.values()), facts["images"]
  # Decoded at the files' real sizes, not as broken-image icons.
  from PIL import Image
  assert srcs == {s: Image.open(out / s).width for s in srcs}
  assert facts["rows"] == len(METHODS)
  assert sorted(facts["methods"]) == sorted(METHODS)
  # Default order: families in saljax.viz.FAMILY_ORDER, by year within one.
  assert facts["methods"] == ["gradient", "integrated_gradients", "lrp", "gradcam", "attention_rollout",
                              "rise"]
  assert facts["title"] == "saljax demo: efficientnet_lite0"


def test_screen_is_not_blank(facts):
  assert facts["std"] > 25, facts["std"]
  assert facts["nonwhite"] > 0.15, facts["nonwhite"]
  # The check can fail: a white page scores ~0 on both.
  white = _browser.screen_stats(_white_png())
  assert white["std"] < 1 and white["nonwhite"] == 0


def _white_png() -> bytes:
  import io

  from PIL import Image
  buf = io.BytesIO()
  Image.new("RGB", (64, 64), "white").save(buf, format="PNG")
  return buf.getvalue()


def test_html_escapes_and_marks_best_scores(workdir):
  _, summary, path = workdir
  html = path.read_text()
  assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
  assert "&lt;gradient&gt; &amp; maps" in html  # paper citations are escaped too
  for s in ("↑ higher is better", "↓ lower is better", 'id="scores"', 'data-method="lrp"',
            "needs a ViT&#39;s attention weights", "steps=8", "baseline=[0,0]"):
    assert s in html, s
  # The best deletion (lower) is rise's 0.09, the best pointing game (higher) IG's 1.0.
  assert '<td class="num best" data-value="0.09">0.090</td>' in html
  assert '<td class="num best" data-value="1.0">1.000</td>' in html
  assert html.count('class="num best"') == 4
  # Nothing is fetched from elsewhere: no external scripts, styles or fonts.
  assert "http://" not in html and "https://" not in html and "<link" not in html


def test_missing_image_is_caught(workdir, tmp_path):
  out, summary, _ = workdir
  broken = copy.deepcopy(summary)
  broken["methods"]["gradcam"]["image"] = "rows/nonexistent.png"
  for f in ["grid.png", *[f"rows/{n}.png" for n in METHODS if summary["methods"][n]["image"]]]:
    (tmp_path / f).parent.mkdir(exist_ok=True)
    (tmp_path / f).write_bytes((out / f).read_bytes())
  got = dict(_browser.page_facts(report.write(tmp_path, broken))["images"])
  assert got["rows/nonexistent.png"] == 0
  assert got["grid.png"] > 0


def test_clicking_a_metric_header_sorts_rows(workdir):
  from selenium.webdriver.common.by import By
  _, _, path = workdir
  read = "return Array.from(document.querySelectorAll('#scores tbody tr')).map(r => r.dataset.method);"
  with _browser.browser() as d:
    _browser.open_page(d, path)
    header = d.find_element(By.CSS_SELECTOR, '#scores th[data-metric="deletion"]')
    header.click()  # lower is better: best first, missing values last
    assert d.execute_script(read) == ["rise", "integrated_gradients", "gradcam", "gradient", "lrp",
                                      "attention_rollout"]
    header.click()  # reversed, missing values still last
    assert d.execute_script(read) == ["gradient", "gradcam", "integrated_gradients", "rise", "lrp",
                                      "attention_rollout"]
    d.find_element(By.CSS_SELECTOR, '#scores th[data-metric="insertion"]').click()  # higher first
    assert d.execute_script(read)[:4] == ["gradcam", "integrated_gradients", "rise", "gradient"]


def test_bad_input_is_named():
  with pytest.raises(ValueError, match="summary\\['methods'\\]"):
    report.render({"model": "m"})
  with pytest.raises(ValueError, match="relative"):
    report.render({**_summary(), "images": {"grid": "https://example.com/grid.png"}})
  bad = _summary()
  bad["metrics"]["deletion"]["direction"] = "smaller"
  with pytest.raises(ValueError, match="direction"):
    report.render(bad)


def test_command_line_rerenders_from_summary_json(workdir, tmp_path):
  import subprocess
  import sys
  out, _, path = workdir
  (tmp_path / "summary.json").write_bytes((out / "summary.json").read_bytes())
  r = subprocess.run([sys.executable, "-m", "experiments.report", f"--workdir={tmp_path}"],
                     capture_output=True, text=True, timeout=120, cwd=ROOT)
  assert r.returncode == 0, r.stderr
  assert (tmp_path / "index.html").read_text() == path.read_text()
  empty = tmp_path / "empty"
  empty.mkdir()
  r = subprocess.run([sys.executable, "-m", "experiments.report", f"--workdir={empty}"],
                     capture_output=True, text=True, timeout=120, cwd=ROOT)
  assert r.returncode != 0 and "make demo" in r.stderr
