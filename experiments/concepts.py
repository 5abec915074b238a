r"""CRAFT concepts of one class of a pretrained classifier: crops, concepts, importances, a page.

    python -m experiments.concepts --config=experiments/configs/concepts_lite0.py \
        --workdir=runs/concepts

Stages, each saved under ``<workdir>/units`` with the provenance of what made
it (`experiments._common.UnitStore`), so a rerun skips finished stages and
recomputes exactly those whose inputs changed:

1. ``activations``: random crops of the photos (CRAFT, Fel et al. CVPR 2023),
   resized to the model's input; the spatial mean of the tapped layer's
   activations per crop;
2. ``concepts``: the concept bank (`saljax.concepts.fit`), and the
   reconstruction error for several numbers of concepts;
3. ``importance``: Sobol total indices, gradient x input and occlusion of the
   concepts on `importance_crops` crops, and the holistic paper's C-Deletion /
   C-Insertion areas of each ranking.

Then ``concepts.png`` (per concept, most important first: its importance bar
and the crops that express it most), ``maps.png`` (where the top concepts are
in each photo), ``summary.json`` and ``index.html`` (the demo report's style)
are written, atomically, on every run.
"""
from __future__ import annotations

import json
import os
import pathlib
import time
import numpy as np

from experiments import _common as C

TEMPLATE = "concepts.html.j2"
STAGES = ("activations", "concepts", "importance")


def _record(config, stage: str) -> dict:
  """What a stage's result depends on (its provenance)."""
  base = {"model": config.model, "photos": list(config.photos), "layer": config.layer,
          "seed": int(config.seed), "crops": int(config.crops),
          "crop_size": float(config.crop_size)}
  if stage in ("concepts", "importance"):
    base.update(method=config.method, concepts=int(config.concepts), fit=dict(config.fit),
                errors_for=list(config.errors_for))
  if stage == "importance":
    base.update(target=int(config.target), importance_crops=int(config.importance_crops),
                designs=int(config.designs))
  return {"stage": stage, **base}


def _setup(config):
  import jax.numpy as jnp

  from saljax.data import bundled_photos
  from saljax.models import load_pretrained
  clf = load_pretrained(config.model)
  photos = bundled_photos.photos(tuple(config.photos))
  x = jnp.asarray(clf.preprocess(list(photos.values())))
  return clf, photos, x


def _activations(config, clf, x):
  import jax

  from saljax import concepts as K
  from saljax import parallel
  crops, boxes = K.random_crops(jax.random.key(config.seed), x, int(config.crops),
                                crop_size=float(config.crop_size))
  feats = K.layer_features(clf.tapped, config.layer)
  # Chunks of 8 crops: one forward each, the rest never in memory at once.
  acts = parallel.chunked_map(lambda c: feats(c[None])[0].mean((0, 1)), crops, batch_size=8)
  return crops, np.asarray(boxes), np.asarray(acts)


def _concepts_from(config, acts):
  import jax

  from saljax import concepts as K
  key = jax.random.key(config.seed + 1)
  fit = dict(config.fit)
  con = K.fit(key, acts, config.method, int(config.concepts), **fit)
  errors = {int(k): float(K.reconstruction_error(K.fit(key, acts, config.method, int(k), **fit),
                                                 acts)) for k in config.errors_for}
  return con, errors


def _importance(config, clf, crops, con):
  import jax

  from saljax import concepts as K
  xs = crops[:int(config.importance_crops)]
  t, layer, tapped = int(config.target), config.layer, clf.tapped
  out = {
      "sobol": K.sobol(jax.random.key(config.seed + 2), tapped, xs, t, con, layer=layer,
                       designs=int(config.designs), batch_size=16),
      "gradient_input": K.gradient_input(tapped, xs, t, con, layer=layer),
      "occlusion": K.occlusion(tapped, xs, t, con, layer=layer, batch_size=4),
  }
  areas = {}
  for name, imp in out.items():
    areas[name] = {
        "c_deletion": float(K.area(K.c_deletion(tapped, xs, t, con, imp, layer=layer)).mean()),
        "c_insertion": float(K.area(K.c_insertion(tapped, xs, t, con, imp, layer=layer)).mean())}
  return {k: np.asarray(v) for k, v in out.items()}, areas


def _to_uint8(x: np.ndarray) -> np.ndarray:
  """A preprocessed Lite0 batch back to uint8 pixels (inverse of (x - 127) / 128)."""
  return np.clip(np.asarray(x) * 128 + 127, 0, 255).astype(np.uint8)


def figure_concepts(path, crops: np.ndarray, coeffs: np.ndarray, importance: np.ndarray,
                    order: np.ndarray, top: int, title: str) -> None:
  """One row per concept (in `order`): its mean Sobol importance as a bar, then the
  `top` crops with the largest coefficient. `crops` uint8 ``[n, H, W, 3]``."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  rows = len(order)
  fig = plt.figure(figsize=(1.8 + 1.25 * top, 1.3 * rows + 0.6), dpi=90)
  grid = fig.add_gridspec(rows, top + 1, width_ratios=[1.6] + [1] * top, wspace=0.05, hspace=0.12,
                          top=1 - 0.45 / (1.3 * rows + 0.6), bottom=0.35 / (1.3 * rows + 0.6))
  vmax = float(importance.max()) or 1.0
  for r, j in enumerate(order):
    ax = fig.add_subplot(grid[r, 0])
    ax.barh([0], [importance[j]], color="#1d5fbf", height=0.7)
    ax.set_xlim(0, vmax * 1.05)
    ax.set_ylim(-0.6, 1.6)  # room above the bar for its label
    ax.set_yticks([])
    ax.text(0, 1.05, f"concept {j}", fontsize=9, va="bottom", ha="left")
    ax.text(vmax * 1.05, 1.05, f"{importance[j]:.2f}", fontsize=9, va="bottom", ha="right",
            color="#1d5fbf")
    ax.tick_params(labelsize=7)
    if r < rows - 1:
      ax.tick_params(bottom=False, labelbottom=False)
    for side in ("top", "right", "left"):
      ax.spines[side].set_visible(False)
    for c, i in enumerate(np.argsort(-coeffs[:, j])[:top]):
      a = fig.add_subplot(grid[r, c + 1])
      a.imshow(crops[i])
      a.set_xticks([])
      a.set_yticks([])
  fig.suptitle(title, fontsize=11, y=0.998)
  fig.text(0.01, 0.002, "bar: Sobol total index (mean over crops); crops: the largest coefficients",
           fontsize=7, color="#616e7c")
  C.save_figure(fig, path, bbox_inches="tight")


def figure_maps(path, images: np.ndarray, maps: np.ndarray, concepts: list[int],
                names: list[str]) -> None:
  """Each photo, then the map of each listed concept over it. `maps` ``[P, H, W, k]``."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  p, n = len(images), len(concepts)
  fig, axes = plt.subplots(p, n + 1, figsize=(2.2 * (n + 1), 2.3 * p), dpi=90, squeeze=False)
  for i in range(p):
    axes[i, 0].imshow(images[i])
    axes[i, 0].set_title(names[i], fontsize=9)
    for c, j in enumerate(concepts):
      m = maps[i, ..., j]
      axes[i, c + 1].imshow(images[i])
      axes[i, c + 1].imshow(m / (m.max() + 1e-12), cmap="magma", alpha=0.6, vmin=0, vmax=1)
      axes[i, c + 1].set_title(f"concept {j}", fontsize=9)
  for a in axes.ravel():
    a.set_xticks([])
    a.set_yticks([])
  fig.tight_layout()
  C.save_figure(fig, path, bbox_inches="tight")


def write_page(workdir, summary: dict) -> pathlib.Path:
  """Renders ``index.html`` from `summary` (atomically); returns its path."""
  import jinja2
  from experiments import report
  env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(report.TEMPLATES)),
                           autoescape=True, undefined=jinja2.StrictUndefined)
  html = env.get_template(TEMPLATE).render(s=summary, fmt=lambda v, d=3: report._fmt(v, d))
  path = pathlib.Path(workdir) / "index.html"
  C.atomic_write_text(path, html)
  return path


def run(config, workdir: str) -> dict:
  """Runs (or resumes) the stages and writes figures, summary and page."""
  import jax
  import jax.numpy as jnp

  from saljax import concepts as K
  start = time.perf_counter()
  os.makedirs(workdir, exist_ok=True)
  store = C.UnitStore(os.path.join(workdir, "units"))
  clf, photos, x = _setup(config)
  crops, _ = K.random_crops(jax.random.key(config.seed), x, int(config.crops),
                            crop_size=float(config.crop_size))
  seconds = {}

  t = time.perf_counter()
  got = store.get("activations", _record(config, "activations"))
  if got is None:
    _, boxes, acts = _activations(config, clf, x)
    store.put("activations", _record(config, "activations"), boxes=boxes, acts=acts)
  else:
    boxes, acts = got["boxes"], got["acts"]
  seconds["activations"] = time.perf_counter() - t

  t = time.perf_counter()
  got = store.get("concepts", _record(config, "concepts"))
  if got is None:
    con, errors = _concepts_from(config, jnp.asarray(acts))
    store.put("concepts", _record(config, "concepts"), dictionary=np.asarray(con.dictionary),
              error_k=np.array(list(errors)), error=np.array(list(errors.values())))
  else:
    con = K.Concepts(jnp.asarray(got["dictionary"]), {}, config.method,
                     code_steps=int(config.fit.code_steps))
    errors = dict(zip(got["error_k"].tolist(), got["error"].tolist()))
  seconds["concepts"] = time.perf_counter() - t
  if config.method != "nmf":
    raise ValueError(f"method: the binary stores NMF dictionaries only, got {config.method!r}")

  t = time.perf_counter()
  got = store.get("importance", _record(config, "importance"))
  if got is None:
    imps, areas = _importance(config, clf, crops, con)
    store.put("importance", _record(config, "importance"), areas=np.array(json.dumps(areas)),
              **imps)
  else:
    areas = json.loads(str(got.pop("areas")))
    imps = got
  seconds["importance"] = time.perf_counter() - t

  sobol = imps["sobol"].mean(0)
  order = np.argsort(-sobol)
  coeffs = np.asarray(K.encode(con, jnp.asarray(acts)))
  crops8 = _to_uint8(crops)
  name = clf.class_names[int(config.target)] if clf.class_names else str(config.target)
  figure_concepts(pathlib.Path(workdir) / "concepts.png", crops8[:, ::2, ::2], coeffs, sobol, order,
                  int(config.top_crops), f"{config.model}: concepts of '{name}' at {config.layer}")
  maps = np.asarray(K.concept_maps(clf.tapped, x, con, layer=config.layer))
  figure_maps(pathlib.Path(workdir) / "maps.png", _to_uint8(x), maps, [int(j) for j in order[:3]],
              list(photos))
  probs = np.asarray(jax.nn.softmax(clf(x), -1))[:, int(config.target)]
  summary = {
      "model": config.model, "layer": config.layer, "method": config.method,
      "target": {"index": int(config.target), "name": name},
      "photos": {n: float(p) for n, p in zip(photos, probs)},
      "crops": int(config.crops), "crop_size": float(config.crop_size),
      "importance_crops": int(config.importance_crops), "designs": int(config.designs),
      "reconstruction_error": {str(k): v for k, v in errors.items()},
      "concepts": [{"id": int(j), "rank": r + 1, "sobol": float(sobol[j]),
                    "gradient_input": float(imps["gradient_input"].mean(0)[j]),
                    "occlusion": float(imps["occlusion"].mean(0)[j])}
                   for r, j in enumerate(order)],
      "areas": areas, "images": {"concepts": "concepts.png", "maps": "maps.png"},
      "reused": list(store.reused), "computed": list(store.computed),
      "seconds": {k: round(v, 1) for k, v in seconds.items()},
      "total_seconds": round(time.perf_counter() - start, 1),
  }
  C.atomic_write_text(pathlib.Path(workdir) / "summary.json", json.dumps(summary, indent=1))
  write_page(workdir, summary)
  return summary


if __name__ == "__main__":
  C.app_main(run, __doc__)
