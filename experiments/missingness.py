"""Missingness bias of blacking out patches versus token dropping (ViT) and
layer masking (CNN), on models trained here (issue 18, part 6).

Jain et al. 2022 ("Missingness Bias in Model Debugging", arXiv:2204.08945)
show that blacking out image patches changes a model's predictions for
reasons unrelated to what was removed, and that dropping the removed
patches' tokens in a ViT largely avoids it; Balasubramanian and Feizi (ICCV
2023, arXiv:2211.14646) do the same for CNNs by masking every layer's
activations with neighbour padding ("layer masking"). This binary reproduces
their measurement:

    python -m experiments.missingness --config=experiments/configs/missingness.py \
        --workdir=runs/missingness

Protocol: a small ViT and a small CNN are trained (`saljax.models.quick`'s
Adam loop) on `saljax.data.synthetic.segmentation` images with one planted
shape on grey noise, labelled by the shape's colour. On every test image and
for every fraction of `fractions`, `draws` random masks remove that share of
the cells of a grid of ``vit.patch`` pixels; each model is evaluated on the
removed images under each strategy (`saljax.removal`: ``constant`` = black,
``mean`` = the image's mean colour, plus ``token_drop`` on the ViT and
``layer_mask`` on the CNN). Reported per (model, strategy, fraction): the
share of predictions that differ from the clean prediction (flips), the mean
KL divergence ``KL(p_clean || p_removed)``, and the accuracy on the removed
images.

Writes ``missingness.jsonl`` (one row per model, strategy and fraction),
``missingness.md`` (the table) and ``missingness.png`` (flips and KL against
the fraction removed), and returns ``{"rows", "accuracy", "done"}`` where
``done`` says whether the model strategy flips fewer predictions than
blacking at every fraction, per model.

The pretrained EfficientNet-Lite0 setting (a config with a ``model`` field,
``experiments/configs/missingness_lite0.py``) measures the same on the six
bundled real photos (`saljax.data.bundled_photos`) with nothing trained:

    python -m experiments.missingness --config=experiments/configs/missingness_lite0.py \
        --workdir=runs/missingness_lite0

Random cells of a ``cell``-pixel grid over the model's 224x224 crop are
removed; strategies ``constant`` (0 after the model's normalization, i.e.
grey 127), ``mean``, ``blur`` and ``layer_mask`` (Lite0's layer-masked
forward, `saljax.models.efficientnet`). Accuracy is against the hand-labelled
class of each photo (``bundled_boxes.json``, Lite0's own top class).
"""
from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from experiments import _common as C
from saljax import models, removal as R
from experiments.generalizability import shapes_data  # the planted-shape images, one definition
from saljax.models import quick

MODEL_REMOVAL = {"vit": "token_drop", "cnn": "layer_mask"}
TITLES = {"vit": "ViT", "cnn": "CNN", "efficientnet_lite0": "EfficientNet-Lite0"}


def _check_sweep(config, field: str, kinds) -> None:
  """The checks both settings share: fractions in (0, 1), draws >= 1, and
  the removal kinds named in `field` among `kinds`."""
  fr = tuple(float(f) for f in config.fractions)
  if not fr or any(not 0.0 < f < 1.0 for f in fr):
    raise ValueError(f"fractions: expected fractions in (0, 1), got {config.fractions!r}")
  if int(config.draws) < 1:
    raise ValueError(f"draws: expected a positive int, got {config.draws!r}")
  for k in config[field]:
    if k not in kinds:
      raise ValueError(f"{field}: expected kinds of {list(kinds)}, got {k!r}")


def check(config) -> None:
  """Refuses a config the protocol cannot run, before any training."""
  size, patch = int(config.data.size), int(config.vit.patch)
  if size % patch:
    raise ValueError(f"data.size: expected a multiple of vit.patch = {patch}, got {size}")
  _check_sweep(config, "pixel_removals", R.PIXEL_KINDS)


def train_models(config, x, y) -> dict[str, Any]:
  """``{"vit": Classifier, "cnn": Classifier}`` trained on the same images."""
  num_classes = int(config.data.num_classes) - 1
  v = config.vit
  modules = {
      "vit": models.vit("vit_tiny", num_classes, patch=int(v.patch), dim=int(v.dim),
                        depth=int(v.depth), num_heads=int(v.num_heads), mlp_dim=int(v.mlp_dim)),
      "cnn": models.cnn(num_classes, tuple(config.cnn.features), int(config.cnn.hidden)),
  }
  t = config.train
  out = {}
  for i, (name, module) in enumerate(modules.items()):
    variables, losses, seconds = quick._train(
        module, x, y, seed=int(config.seed) * 100 + i, steps=int(t.steps),
        batch_size=int(t.batch_size), learning_rate=float(t.learning_rate))
    logging.info("%s: final loss %.3f, %.1f s", name, float(losses[-1]), seconds)
    out[name] = models.wrap(module, variables, input_shape=x.shape[1:], name=name)
  return out


def cell_masks(key, fractions, draws: int, n: int, grid_hw: tuple[int, int]) -> jax.Array:
  """Keep-masks ``[F, D, N, gh, gw]`` (float): for fraction f, ``round(f * gh * gw)``
  cells removed uniformly at random, independently per draw and image.

  One argsort of uniforms per mask (a random permutation); no loop over masks.
  """
  gh, gw = grid_hw
  cells = gh * gw
  removed = jnp.asarray(np.round(np.asarray(fractions) * cells).astype(np.int32))
  u = jax.random.uniform(key, (len(fractions), draws, n, cells))
  rank = jnp.argsort(jnp.argsort(u, axis=-1), axis=-1)  # a uniform random rank per cell
  keep = rank >= removed[:, None, None, None]
  return keep.astype(jnp.float32).reshape(len(fractions), draws, n, gh, gw)


def _kl(p_logits, q_logits):
  lp = jax.nn.log_softmax(p_logits, -1)
  lq = jax.nn.log_softmax(q_logits, -1)
  return (jnp.exp(lp) * (lp - lq)).sum(-1)


def measure(model, x, y, keep, removal, batch_size: int) -> dict[str, float]:
  """Flip rate, mean KL from the clean prediction and accuracy under `removal`.

  `keep` is ``[D, N, H, W]``: every draw of masks over the N images, evaluated
  in one batched call (chunks of `batch_size` masked images)."""
  d, n = keep.shape[:2]
  clean = model(jnp.asarray(x))
  xr = jnp.broadcast_to(jnp.asarray(x)[None], (d,) + x.shape).reshape((d * n,) + x.shape[1:])
  logits = R.removed_logits(model, xr, keep.reshape((d * n,) + keep.shape[2:]), removal,
                            batch_size=batch_size).reshape(d, n, -1)
  pred = jnp.argmax(logits, -1)
  flips = pred != jnp.argmax(clean, -1)[None]
  kl = _kl(jnp.broadcast_to(clean[None], logits.shape), logits)
  return {"flip_rate": float(flips.mean()), "kl": float(kl.mean()),
          "accuracy": float((pred == jnp.asarray(y)[None]).mean())}


def run(config, workdir: str) -> dict[str, Any]:
  if "model" in config:
    return run_photos(config, workdir)
  workdir = C.check_workdir(workdir)
  check(config)
  x_train, y_train = shapes_data(config, "train")
  x_test, y_test = shapes_data(config, "test")
  trained = train_models(config, x_train, y_train)
  accuracy = {k: float((np.asarray(jnp.argmax(m(jnp.asarray(x_test)), -1)) == y_test).mean())
              for k, m in trained.items()}
  logging.info("clean test accuracy: %s", accuracy)
  size, patch = int(config.data.size), int(config.vit.patch)
  g = size // patch
  fractions = tuple(float(f) for f in config.fractions)
  cells = cell_masks(jax.random.key(int(config.seed) + 1), fractions, int(config.draws),
                     len(x_test), (g, g))
  keep = jnp.repeat(jnp.repeat(cells, patch, -2), patch, -1)  # [F, D, N, H, W]
  rows = []
  for name, model in trained.items():
    for kind in tuple(config.pixel_removals) + (MODEL_REMOVAL[name],):
      for i, f in enumerate(fractions):
        t0 = time.perf_counter()
        r = measure(model, x_test, y_test, keep[i], R.Removal(kind), int(config.batch_size))
        rows.append({"model": name, "removal": kind, "fraction": f,
                     "removed_cells": int(round(f * g * g)), "cells": g * g,
                     "n": int(config.draws) * len(x_test), "clean_accuracy": accuracy[name],
                     **{k: round(v, 5) for k, v in r.items()}, "seed": int(config.seed)})
        logging.info("%s %s %.3f: %s (%.1f s)", name, kind, f, r, time.perf_counter() - t0)
  done = {}
  for name in trained:
    flip = {(r["removal"], r["fraction"]): r["flip_rate"] for r in rows if r["model"] == name}
    done[name] = all(flip[(MODEL_REMOVAL[name], f)] < flip[("constant", f)] for f in fractions)
  C.atomic_write_text(os.path.join(workdir, "missingness.jsonl"),
                      "".join(json.dumps(r) + "\n" for r in rows))
  C.atomic_write_text(os.path.join(workdir, "missingness.md"), table(rows))
  C.atomic_write(os.path.join(workdir, "missingness.png"), lambda p: figure(rows, p))
  return {"rows": rows, "accuracy": accuracy, "done": done}


def load_photo_model(name: str):
  """The pretrained classifier the photo setting measures (a seam for tests)."""
  return models.load_pretrained(name)


def check_photos(config, image_size: int) -> None:
  """Refuses a photo-setting config the protocol cannot run, before any model call."""
  cell = int(config.cell)
  if cell < 1 or image_size % cell:
    raise ValueError(f"cell: expected a positive divisor of the model's input size {image_size},"
                     f" got {config.cell!r}")
  _check_sweep(config, "removals", R.KINDS)


def run_photos(config, workdir: str) -> dict[str, Any]:
  """The pretrained-model setting (module docstring): same rows, table and figure."""
  from saljax.data import bundled_photos
  workdir = C.check_workdir(workdir)
  model = load_photo_model(str(config.model))
  size = int(model.input_shape[0])
  check_photos(config, size)
  names = tuple(config.photos) if config.photos else bundled_photos.NAMES
  x = model.preprocess([bundled_photos.photos(names)[n] for n in names])
  truth = bundled_photos.boxes(names, image_size=size)
  y = np.asarray([truth[n]["class"] for n in names])
  clean = np.asarray(jnp.argmax(model(x), -1))
  accuracy = float((clean == y).mean())
  logging.info("%s clean predictions %s, labels %s", config.model, clean.tolist(), y.tolist())
  cell = int(config.cell)
  g = size // cell
  fractions = tuple(float(f) for f in config.fractions)
  cells = cell_masks(jax.random.key(int(config.seed) + 1), fractions, int(config.draws), len(x),
                     (g, g))
  keep = jnp.repeat(jnp.repeat(cells, cell, -2), cell, -1)  # [F, D, N, H, W]
  name = str(config.model)
  rows = []
  for kind in config.removals:
    removal = (R.Removal(kind, blur_sigma=float(config.blur_sigma)) if kind == "blur"
               else R.Removal(kind))
    for i, f in enumerate(fractions):
      t0 = time.perf_counter()
      r = measure(model, x, y, keep[i], removal, int(config.batch_size))
      rows.append({"model": name, "removal": kind, "fraction": f,
                   "removed_cells": int(round(f * g * g)), "cells": g * g,
                   "n": int(config.draws) * len(x), "clean_accuracy": accuracy,
                   **{k: round(v, 5) for k, v in r.items()}, "seed": int(config.seed)})
      logging.info("%s %s %.3f: %s (%.1f s)", name, kind, f, r, time.perf_counter() - t0)
  flip = {(r["removal"], r["fraction"]): r["flip_rate"] for r in rows}
  done = {name: all(flip[("layer_mask", f)] < flip[("constant", f)] for f in fractions)
          if {"layer_mask", "constant"} <= set(config.removals) else None}
  C.atomic_write_text(os.path.join(workdir, "missingness.jsonl"),
                      "".join(json.dumps(r) + "\n" for r in rows))
  C.atomic_write_text(os.path.join(workdir, "missingness.md"), table(rows))
  C.atomic_write(os.path.join(workdir, "missingness.png"), lambda p: figure(rows, p))
  return {"rows": rows, "accuracy": {name: accuracy}, "done": done}


def table(rows) -> str:
  """The rows as a markdown table (flips, KL, accuracy on removed images)."""
  out = ["| model | removal | fraction removed | flips | KL(clean ‖ removed) | accuracy |",
         "|---|---|---|---|---|---|"]
  for r in rows:
    out.append(f"| {r['model']} | {r['removal']} | {r['fraction']:.3f} | {r['flip_rate']:.3f} |"
               f" {r['kl']:.3f} | {r['accuracy']:.3f} |")
  return "\n".join(out) + "\n"


def figure(rows, path) -> None:
  """Flip rate and KL against the fraction removed, one panel pair per model."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  names = list(dict.fromkeys(r["model"] for r in rows))
  fig, axes = plt.subplots(2, len(names), figsize=(4.2 * len(names), 6.4), squeeze=False)
  # "constant" is 0 in the model's input space: black for the models trained
  # here, grey (127) after the pretrained Lite0's (x - 127) / 128.
  style = {"constant": ("black", "o", "constant fill (0)"), "mean": ("tab:gray", "s", "mean fill"),
           "blur": ("tab:olive", "^", "blur fill"),
           "token_drop": ("tab:blue", "D", "token dropping"),
           "layer_mask": ("tab:orange", "D", "layer masking")}
  for j, name in enumerate(names):
    for kind in dict.fromkeys(r["removal"] for r in rows if r["model"] == name):
      rr = [r for r in rows if r["model"] == name and r["removal"] == kind]
      c, m, label = style[kind]
      fr = [r["fraction"] for r in rr]
      axes[0, j].plot(fr, [r["flip_rate"] for r in rr], color=c, marker=m, label=label)
      axes[1, j].plot(fr, [r["kl"] for r in rr], color=c, marker=m, label=label)
    acc = next(r["clean_accuracy"] for r in rows if r["model"] == name)
    axes[0, j].set_title(f"{TITLES.get(name, name)} (clean accuracy {acc:.2f})")
    axes[0, j].set_ylabel("predictions changed")
    axes[1, j].set_ylabel("KL(clean || removed)")
    axes[1, j].set_xlabel("fraction of patches removed")
    axes[0, j].set_ylim(0, 1)
    axes[1, j].set_ylim(bottom=0)
    for a in axes[:, j]:
      a.grid(alpha=0.3)
      a.legend(fontsize=8)
  title = "Random patch removal: pixel fills vs token dropping / layer masking"
  fig.suptitle(title.replace(": ", ":\n") if len(names) == 1 else title)
  fig.tight_layout()
  fig.savefig(path, format="png", dpi=110)
  plt.close(fig)


if __name__ == "__main__":
  C.app_main(run, __doc__)
