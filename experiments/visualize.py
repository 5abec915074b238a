r"""Feature visualization and fooling images of the pretrained EfficientNet-Lite0 (issue 17).

    python -m experiments.visualize --config=experiments/configs/visualize.py --workdir=runs/vis

Stages (each writes ``<stage>.npz`` and its numbers into ``summary.json``;
a rerun with the same config skips finished stages, so a killed run resumes):

- ``classes``: the config's classes in ONE compiled call (`maximize`, Fourier
  parameterization, decorrelated colour, random jitter/scale/rotation); their
  softmax probability plain and averaged over `eval_transforms` random transformations.
- ``channels``: channels of `channel_layer`, one call.
- ``maco``: MaCo of `maco_classes` with the bundled photos' mean spectrum.
- ``facets``: multifaceted visualization of `facet_class` from random crops of
  the bundled photos, against as many restarts of plain activation
  maximization; diversity = mean pairwise distance of `embed_layer` features.
- ``fooling``: gradient fooling images of `fool_classes` from noise.
- ``evolve``: MAP-Elites fooling images (direct and CPPN encodings, outputs
  only) for a small CNN trained here on scikit-learn's digits.

Then ``<stage>.png`` grids and ``index.html`` (the demo report's style).
"""
from __future__ import annotations

import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments import _common as C

STAGES = ("classes", "facets", "fooling", "evolve", "maco", "channels")
# The config fields each stage reads: a stage is redone only when one of these changed.
_COMMON = ("seed", "model", "size", "learning_rate", "n_augment", "score", "eval_transforms")
STAGE_FIELDS = {
    "classes": _COMMON + ("steps", "classes"),
    "channels": _COMMON + ("steps", "channel_layer", "channels"),
    "maco": _COMMON + ("maco_steps", "maco_classes", "maco_crops"),
    "facets": _COMMON + ("facet_steps", "facet_class", "facets", "facet_candidates",
                         "embed_layer"),
    "fooling": ("seed", "model", "size", "fool_classes", "fool_steps", "fool_learning_rate"),
    "evolve": ("seed", "evolve_generations", "evolve_population", "digits_steps"),
}


def _lite(config):
  from saljax.models import load_pretrained
  from saljax.models.pretrained import LITE_MEAN, LITE_STD
  model = load_pretrained(config.model)
  # [0, 1] images -> the model's input: (255 x - 127) / 128.
  vr = ((0.0 - LITE_MEAN[0]) / LITE_STD[0], (255.0 - LITE_MEAN[0]) / LITE_STD[0])
  return model, vr


def _crops(n: int, size: int, seed: int) -> np.ndarray:
  """`n` random square crops (a quarter of the shorter side to all of it) of the bundled photos."""
  from saljax.data import bundled_photos
  photos = list(bundled_photos.photos().values())
  rng = np.random.default_rng(seed)
  out = []
  for i in range(n):
    img = photos[i % len(photos)]
    h, w = img.shape[:2]
    side = int(rng.integers(min(h, w) // 4, min(h, w) + 1))
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    crop = img[y:y + side, x:x + side].astype(np.float32) / 255.0
    out.append(np.asarray(jax.image.resize(jnp.asarray(crop), (size, size, 3), "linear")))
  return np.clip(np.stack(out), 0.0, 1.0)


def _probs(model, images, classes, vr, key, n):
  from saljax import visualize as V
  obj = V.classes(list(classes), score="probability")
  plain = V.transformed_scores(model, images, obj, key=key, transforms=None, value_range=vr)[:, 0]
  moved = V.transformed_scores(model, images, obj, key=key, n=n, value_range=vr).mean(1)
  return np.asarray(plain), np.asarray(moved)


def stage_classes(config, key):
  from saljax import visualize as V
  model, vr = _lite(config)
  t = time.perf_counter()
  r = V.maximize(model, V.classes(list(config.classes), score=config.score), key=key,
                 size=config.size, steps=config.steps, learning_rate=config.learning_rate,
                 n_augment=config.n_augment, value_range=vr)
  r.images.block_until_ready()
  sec = time.perf_counter() - t
  plain, moved = _probs(model, r.images, config.classes, vr, jax.random.fold_in(key, 1),
                        config.eval_transforms)
  return {"images": np.asarray(r.images)}, {
      "seconds": sec, "classes": list(config.classes), "prob": plain.tolist(),
      "prob_transformed": moved.tolist(), "min_prob": float(plain.min()),
      "min_prob_transformed": float(moved.min())}


def stage_channels(config, key):
  from saljax import visualize as V
  model, vr = _lite(config)
  t = time.perf_counter()
  r = V.maximize(model, V.channels(config.channel_layer, list(config.channels)), key=key,
                 size=config.size, steps=config.steps, learning_rate=config.learning_rate,
                 n_augment=config.n_augment, value_range=vr)
  r.images.block_until_ready()
  return {"images": np.asarray(r.images)}, {
      "seconds": time.perf_counter() - t, "layer": config.channel_layer,
      "channels": list(config.channels), "final_value": np.asarray(r.values[:, -1]).tolist()}


def stage_maco(config, key):
  from saljax import visualize as V
  from saljax.data import bundled_photos
  model, vr = _lite(config)
  mag = V.natural_spectrum(list(bundled_photos.photos().values()), config.size, seed=config.seed)
  t = time.perf_counter()
  r = V.maco(model, V.classes(list(config.maco_classes), score=config.score), key=key,
             size=config.size, magnitude=mag, steps=config.maco_steps, n_crops=config.maco_crops,
             value_range=vr)
  r.images.block_until_ready()
  sec = time.perf_counter() - t
  plain, moved = _probs(model, r.images, config.maco_classes, vr, jax.random.fold_in(key, 1),
                        config.eval_transforms)
  return {"images": np.asarray(r.images)}, {
      "seconds": sec, "classes": list(config.maco_classes), "prob": plain.tolist(),
      "prob_transformed": moved.tolist(),
      "spectrum": "mean magnitude of random crops of the 6 bundled photos (no ImageNet on disk)"}


def stage_facets(config, key):
  from saljax import visualize as V
  model, vr = _lite(config)
  cand = _crops(config.facet_candidates, config.size, config.seed)
  obj = V.classes([config.facet_class], score=config.score)
  t = time.perf_counter()
  fc = V.multifaceted(model, obj, cand, key=key, embed_layer=config.embed_layer,
                      n_facets=config.facets, steps=config.facet_steps, value_range=vr,
                      batch_size=None)
  fc.images.block_until_ready()
  sec_f = time.perf_counter() - t
  t = time.perf_counter()
  restarts = V.maximize(model, V.classes([config.facet_class] * config.facets, score=config.score),
                        key=jax.random.fold_in(key, 7), size=config.size, steps=config.facet_steps,
                        learning_rate=config.learning_rate, n_augment=config.n_augment,
                        value_range=vr)
  restarts.images.block_until_ready()
  sec_r = time.perf_counter() - t
  d_f = V.pairwise_distance(V.embed(model, fc.images, config.embed_layer, value_range=vr))
  d_r = V.pairwise_distance(V.embed(model, restarts.images, config.embed_layer, value_range=vr))
  cls = [config.facet_class] * config.facets
  pf, _ = _probs(model, fc.images, cls, vr, key, 1)
  pr, _ = _probs(model, restarts.images, cls, vr, key, 1)
  return {"images": np.asarray(fc.images), "starts": np.asarray(fc.starts),
          "restarts": np.asarray(restarts.images)}, {
      "seconds_facets": sec_f, "seconds_restarts": sec_r, "class": config.facet_class,
      "diversity_facets": d_f, "diversity_restarts": d_r, "prob_facets": pf.tolist(),
      "prob_restarts": pr.tolist(), "cluster_sizes": np.bincount(np.asarray(fc.labels),
                                                                 minlength=config.facets).tolist()}


def stage_fooling(config, key):
  from saljax import visualize as V
  model, vr = _lite(config)
  t = time.perf_counter()
  r = V.fooling_gradient(model, list(config.fool_classes), key=key, size=config.size,
                         steps=config.fool_steps, learning_rate=config.fool_learning_rate,
                         value_range=vr)
  r.images.block_until_ready()
  sec = time.perf_counter() - t
  plain, _ = _probs(model, r.images, config.fool_classes, vr, key, 1)
  return {"images": np.asarray(r.images)}, {
      "seconds": sec, "classes": list(config.fool_classes), "prob": plain.tolist(),
      "min_prob": float(plain.min())}


def stage_evolve(config, key):
  from saljax import visualize as V
  t = time.perf_counter()
  clf, acc, _ = V.train_digits_cnn(seed=config.seed, steps=config.digits_steps)
  out, rec = {}, {"digits_accuracy": acc, "train_seconds": time.perf_counter() - t}
  for enc in ("direct", "cppn"):
    t = time.perf_counter()
    e = V.evolve(clf, list(range(10)), key=key, size=8, channels=1, encoding=enc,
                 generations=config.evolve_generations, population=config.evolve_population)
    e.images.block_until_ready()
    out[enc] = np.asarray(e.images)
    hist = np.asarray(e.history)
    reached = [int(np.argmax(hist[:, c] >= 0.99)) if (hist[:, c] >= 0.99).any() else None
               for c in range(10)]
    rec[enc] = {"seconds": time.perf_counter() - t, "prob": np.asarray(e.fitness).tolist(),
                "min_prob": float(np.min(e.fitness)), "generation_reached_0.99": reached}
  return out, rec


def _grid_png(path, images, labels, cols=None, scale=1):
  """A labelled grid of [N, H, W, C] images in [0, 1] (matplotlib), written atomically."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  n = len(images)
  cols = cols or min(n, 8)
  rows = -(-n // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols * scale, 2.4 * rows * scale),
                           squeeze=False)
  for i, ax in enumerate(axes.flat):
    ax.axis("off")
    if i < n:
      img = np.asarray(images[i])
      ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1,
                interpolation="nearest" if img.shape[0] < 32 else "antialiased")
      ax.set_title(labels[i], fontsize=8)
  fig.tight_layout()
  C.save_figure(fig, path, dpi=100, bbox_inches="tight")


def _name(i):
  from saljax.models import imagenet_classes
  return imagenet_classes()[int(i)].split(",")[0][:18]


def figures(workdir: pathlib.Path, summary: dict) -> dict:
  """Writes each stage's PNG grid; returns {stage: file name}."""
  figs = {}
  s = summary.get("classes")
  if s:
    im = np.load(workdir / "classes.npz")["images"]
    _grid_png(workdir / "classes.png", im, [f"{_name(c)}\np={p:.2f} / {q:.2f}" for c, p, q in
                                            zip(s["classes"], s["prob"], s["prob_transformed"])])
    figs["classes"] = "classes.png"
  s = summary.get("channels")
  if s:
    im = np.load(workdir / "channels.npz")["images"]
    _grid_png(workdir / "channels.png", im, [f"{s['layer']}:{c}" for c in s["channels"]])
    figs["channels"] = "channels.png"
  s = summary.get("maco")
  if s:
    im = np.load(workdir / "maco.npz")["images"]
    _grid_png(workdir / "maco.png", im, [f"{_name(c)}\np={p:.2f} / {q:.2f}" for c, p, q in
                                         zip(s["classes"], s["prob"], s["prob_transformed"])])
    figs["maco"] = "maco.png"
  s = summary.get("facets")
  if s:
    z = np.load(workdir / "facets.npz")
    k = len(z["images"])
    ims = np.concatenate([z["starts"], z["images"], z["restarts"]])
    labels = ([f"start {i} (n={n})" for i, n in enumerate(s["cluster_sizes"])]
              + [f"facet {i} p={p:.2f}" for i, p in enumerate(s["prob_facets"])]
              + [f"restart {i} p={p:.2f}" for i, p in enumerate(s["prob_restarts"])])
    _grid_png(workdir / "facets.png", ims, labels, cols=k)
    figs["facets"] = "facets.png"
  s = summary.get("fooling")
  if s:
    im = np.load(workdir / "fooling.npz")["images"]
    _grid_png(workdir / "fooling.png", im, [f"{_name(c)}\np={p:.3f}" for c, p in
                                            zip(s["classes"], s["prob"])], cols=5)
    figs["fooling"] = "fooling.png"
  s = summary.get("evolve")
  if s:
    z = np.load(workdir / "evolve.npz")
    ims = np.concatenate([z["direct"], z["cppn"]])
    labels = ([f"direct '{c}' p={p:.4f}" for c, p in enumerate(s["direct"]["prob"])]
              + [f"CPPN '{c}' p={p:.4f}" for c, p in enumerate(s["cppn"]["prob"])])
    _grid_png(workdir / "evolve.png", ims, labels, cols=10, scale=0.8)
    figs["evolve"] = "evolve.png"
  return figs


TITLES = {
    "classes": ("Classes", "Activation maximization of each class in one compiled call: Fourier"
                " parameterization, decorrelated colour, random jitter, scale and rotation"
                " (Olah et al. 2017). Titles: softmax probability plain / mean over random"
                " transformations."),
    "channels": ("Channels", "Channels of one layer, one compiled call."),
    "maco": ("MaCo", "Phase-only optimization with the magnitude fixed to the bundled photos'"
             " mean spectrum (Fel et al. 2023)."),
    "facets": ("Multifaceted", "Row 1: each cluster's mean image (random crops of the bundled"
               " photos that most activate the class); row 2: the facets optimized from them with"
               " center-biased regularization (Nguyen et al. 2016); row 3: restarts of plain"
               " activation maximization."),
    "fooling": ("Fooling images: gradient", "From uniform noise to high confidence by gradient"
                " ascent (Nguyen et al. 2015)."),
    "evolve": ("Fooling images: evolution", "MAP-Elites with a direct and a CPPN encoding on a"
               " small digits CNN; only the model's outputs are read (Nguyen et al. 2015)."),
}


def write_html(workdir, summary: dict, figs: dict) -> pathlib.Path:
  """Renders ``index.html`` (templates/visualize.html.j2) and returns its path."""
  import jinja2
  env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(pathlib.Path(__file__).parent
                                                              / "templates")),
                           autoescape=True)
  sections = []
  for stage in STAGES:
    if stage in figs:
      title, about = TITLES[stage]
      facts = {k: v for k, v in summary[stage].items() if not isinstance(v, (list, dict))}
      for enc in ("direct", "cppn"):  # evolve's per-encoding numbers
        if isinstance(summary[stage].get(enc), dict):
          facts.update({f"{enc} {k}": v for k, v in summary[stage][enc].items()
                        if not isinstance(v, (list, dict))})
      sections.append({"id": stage, "title": title, "about": about, "png": figs[stage],
                       "facts": {k: (f"{v:.3f}" if isinstance(v, float) else v)
                                 for k, v in facts.items()}})
  page = env.get_template("visualize.html.j2").render(
      model=summary.get("model", ""), sections=sections, config=summary.get("config", {}))
  out = pathlib.Path(workdir) / "index.html"
  C.atomic_write_text(out, page)
  return out


def run(config, workdir: str, *, stages=STAGES, log=print) -> dict:
  """Runs the stages not already done for this config; returns the summary."""
  wd = pathlib.Path(C.check_workdir(workdir))
  C.clean_temporaries(wd)
  cfg = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  path = wd / "summary.json"
  summary = json.loads(path.read_text()) if path.exists() else {}
  cfg = json.loads(json.dumps(cfg))
  summary["config"], summary["model"] = cfg, config.model
  key = jax.random.key(int(config.seed))
  for i, stage in enumerate(stages):
    if stage not in STAGES:
      raise ValueError(f"stages: unknown stage {stage!r}; expected some of {STAGES}")
    used = {f: cfg[f] for f in STAGE_FIELDS[stage]}
    done = summary.get(stage)
    if done and done.get("config") == used and (wd / f"{stage}.npz").exists():
      log(f"{stage}: done before with the same settings, skipped")
      continue
    arrays, rec = globals()[f"stage_{stage}"](config, jax.random.fold_in(key, i))
    rec["config"] = used
    C.atomic_write(wd / f"{stage}.npz", lambda p: np.savez(open(p, "wb"), **arrays))
    summary[stage] = rec
    C.atomic_write_text(path, json.dumps(summary, indent=1))
    log(f"{stage}: {json.dumps(rec)[:400]}")
  figs = figures(wd, summary)
  write_html(wd, summary, figs)
  return summary


if __name__ == "__main__":
  C.app_main(lambda config, workdir: run(config, workdir), __doc__)
