"""MeGe and ReCo (Fel, Vigouroux, Cadene, Serre 2022, "How Good is your
Explanation? Algorithmic Stability Measures to Assess the Quality of
Explanations for Deep Neural Networks", WACV, arXiv:2009.04521) of explainers
on k small CNNs trained on k folds of synthetic images.

    python -m experiments.generalizability --config=experiments/configs/generalizability.py \
        --workdir=runs/mege [--config.train.k=5] [--config.methods='("gradient",)']

Protocol: `saljax.data.synthetic.segmentation` images with one planted shape
each, labelled by the shape's class (its colour); the training set is cut
into ``train.k`` folds and CNN i (`saljax.models.cnn`, trained with
`saljax.models.quick`'s Adam loop) is trained on every fold but fold i. Each
method of `methods` explains the true label of every held-out test image
with every model; `saljax.metrics.mege_reco` compares the k maps of each
image (S=: pairs of models both right, S!=: one right), every pair of models
on every test image (no model has seen them). With ``absolute`` (default)
the maps' magnitudes are compared: the shapes differ by colour, so signed
gradients of the colour channels cancel in the channel mean that MeGe takes
(Xplique's). The method ``"random"`` draws
standard normal maps: uncorrelated maps, the floor (MeGe about 0.5).

Writes ``generalizability.jsonl`` (one line per method: mege, reco, the sizes
of S= and S!=, the models' test accuracies, k, the convention and the seed).
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
from saljax import explainers, metrics, models
from saljax.data import synthetic
from saljax.models import quick


def shapes_data(config, split: str) -> tuple[np.ndarray, np.ndarray]:
  """Images ``[N, S, S, 3]`` with one planted shape and its class ``0..num_classes-2``."""
  d = config.data
  n = int(d.n_train if split == "train" else d.n_test)
  out = synthetic.segmentation(n, split=split, seed=int(config.seed), size=int(d.size),
                               num_classes=int(d.num_classes), max_shapes=1,
                               noise=float(d.noise))
  labels = out["mask"].reshape(n, -1).max(1) - 1
  return out["image"].astype(np.float32), labels.astype(np.int32)


def train_fold_models(config, x: np.ndarray, y: np.ndarray) -> list[models.Classifier]:
  """k CNNs; model i is trained on every fold but fold i (folds: contiguous
  equal parts, the remainder of ``N / k`` left out, as Xplique's splits)."""
  t = config.train
  k = int(t.k)
  if k < 2:
    raise ValueError(f"train.k: expected at least 2 folds, got {k}")
  size = len(x) // k
  if size == 0:
    raise ValueError(f"data.n_train: expected at least train.k = {k} images, got {len(x)}")
  folds = np.repeat(np.arange(k), size)
  module = models.cnn(int(config.data.num_classes) - 1, tuple(config.model.features),
                      int(config.model.hidden))
  out = []
  for i in range(k):
    keep = np.flatnonzero(folds != i)
    variables, losses, seconds = quick._train(
        module, x[keep], y[keep], seed=int(config.seed) * 1000 + i, steps=int(t.steps),
        batch_size=int(t.batch_size), learning_rate=float(t.learning_rate))
    logging.info("model %d of %d: final loss %.3f, %.1f s", i + 1, k, float(losses[-1]), seconds)
    out.append(models.wrap(module, variables, input_shape=x.shape[1:], name=f"cnn_fold{i}"))
  return out


def explain_all(config, fold_models, method: str, x, y, key) -> np.ndarray:
  """``[k, N, ...]``: every model's map of every image for its label."""
  if method == "random":
    return np.asarray(jax.random.normal(key, (len(fold_models),) + x.shape))
  e = explainers.entry(method)
  if e.kind == "layer":
    raise ValueError(f"methods: {method!r} is a layer method; use a pixel method")
  opts = dict(config.options.get(method, {}) or {})
  maps = []
  for i, m in enumerate(fold_models):
    extra = {"key": jax.random.fold_in(key, i)} if e.stochastic else {}
    maps.append(np.asarray(e.fn(m, jnp.asarray(x), jnp.asarray(y), **extra, **opts)))
  return np.stack(maps)


def run(config, workdir: str) -> dict[str, Any]:
  workdir = C.check_workdir(workdir)
  methods = tuple(config.methods)
  for m in methods:
    if m != "random" and m not in explainers.names():
      raise ValueError(f"methods: unknown explainer {m!r}; known: {explainers.names()} or 'random'")
  x_train, y_train = shapes_data(config, "train")
  x_test, y_test = shapes_data(config, "test")
  fold_models = train_fold_models(config, x_train, y_train)
  correct = np.stack([np.asarray(jnp.argmax(m(jnp.asarray(x_test)), -1)) == y_test
                      for m in fold_models])
  accuracy = correct.mean(1).round(4).tolist()
  logging.info("test accuracies: %s", accuracy)
  key = jax.random.key(int(config.seed))
  rows = []
  for j, method in enumerate(methods):
    t0 = time.perf_counter()
    maps = explain_all(config, fold_models, method, x_test, y_test, jax.random.fold_in(key, j))
    if bool(config.absolute):
      maps = np.abs(maps)
    scores = metrics.mege_reco(maps, correct, convention=str(config.convention))
    rows.append({"method": method, **scores, "accuracy": accuracy, "k": len(fold_models),
                 "n_test": int(len(x_test)), "convention": str(config.convention),
                 "absolute": bool(config.absolute),
                 "seed": int(config.seed), "seconds": round(time.perf_counter() - t0, 2)})
    logging.info("%s: MeGe %.4f ReCo %.4f (|S=| %d, |S!=| %d)", method, scores["mege"],
                 scores["reco"], scores["equal"], scores["different"])
  C.atomic_write_text(os.path.join(workdir, "generalizability.jsonl"),
                      "".join(json.dumps(r) + "\n" for r in rows))
  return {"rows": rows}


if __name__ == "__main__":
  C.app_main(run)
