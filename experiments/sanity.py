"""Randomization sanity checks (Adebayo et al. 2018, "Sanity Checks for
Saliency Maps", NeurIPS, arXiv:1810.03292) with figures: the model parameter
randomization test (``sanity.test="model"``, the default) and the data
randomization test (``sanity.test="data"``).

    python -m experiments.sanity --config=experiments/configs/blockmnist_standard.py \
        --workdir=runs/bm_std --config.sanity.methods='("gradient","integrated_gradients")'

For every method of `sanity.methods`, re-initializes the trained model's
layers from the output down (``sanity.mode = "cascading"``, Sec. 3.1) or one
at a time (``"independent"``, Sec. 3.2) with a truncated normal of std
`sanity.init_std` (App. B), reruns the explainer for the same target, and
compares the maps with the trained model's: Spearman of ``sum_c |e|``
(absolute), Spearman of the signed sums, and SSIM. The computation is
`saljax.metrics.model_parameter_randomization`; this binary adds the model,
the data and the figures. Writes::

    sanity.csv              method, similarity, stage, layer, mean, std
    sanity.json             the same curves (means, and their standard errors under "sem")
    sanity_curves.png       Adebayo et al.'s Fig. 2: one panel per similarity, x = the
                            layers randomized ("original", then from the logits down),
                            one line per method with a band of +-1 standard error
                            (`saljax.plots.sanity_curves`)
    sanity_<method>.png     similarity vs randomized depth, one line per similarity
    sanity_maps.png         the first example's trained map next to its input

Data randomization (Sec. 4): train the same config a second time on permuted
labels, then compare the two models' maps on the same test inputs::

    python -m experiments.train --config=experiments/configs/blockmnist_standard.py \
        --workdir=runs/bm_rand --config.train.permute_labels=True --config.train.steps=6000
    python -m experiments.sanity --config=experiments/configs/blockmnist_standard.py \
        --workdir=runs/bm_std --config.sanity.test=data \
        --config.sanity.random_labels_workdir=runs/bm_rand

Each model explains its own prediction (`saljax.metrics.data_randomization`);
layer methods (Grad-CAM) are allowed here. Writes ``sanity_data.csv``
(method, similarity, mean, std), ``sanity_data.json`` and
``sanity_data_maps.png`` (input, then each method's map for the true-label
and the random-label model, first examples).
"""
from __future__ import annotations

import copy
import csv
import io
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from experiments import _common as C
from experiments import explain as E
from saljax import explainers, metrics, plots
from saljax import model as M
from saljax import logging as slog

SIMILARITIES = (("spearman_abs", "spearman", True), ("spearman", "spearman", False),
                ("ssim", "ssim", True))


def _apply_eval(module_and_stats, params, x):
  """``module.apply`` in eval mode with the batch statistics fixed."""
  module, batch_stats = module_and_stats
  v = {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}
  return module.apply(v, x, train=False)


def _model_fn(module, batch_stats):
  """``model_fn(params, x) -> logits`` as data: the batch statistics are leaves."""
  return jax.tree_util.Partial(_apply_eval, (module, batch_stats))


def run(config, workdir: str) -> dict[str, Any]:
  """Runs the randomization test for every method; returns ``{method: {similarity: curve}}``."""
  config = C.check_config(config)
  workdir = C.check_workdir(workdir)
  scfg = config.sanity
  methods = E.check_methods(scfg.methods, "sanity.methods")
  if scfg.test not in ("model", "data"):
    raise ValueError(f"sanity.test: expected 'model' or 'data', got {scfg.test!r}")
  if scfg.mode not in ("cascading", "independent"):
    raise ValueError(f"sanity.mode: expected 'cascading' or 'independent', got {scfg.mode!r}")
  sims = [s for s in SIMILARITIES if s[0] in tuple(scfg.similarities)]
  unknown = [s for s in scfg.similarities if s not in [t[0] for t in SIMILARITIES]]
  if unknown or not sims:
    raise ValueError(f"sanity.similarities: expected some of {[t[0] for t in SIMILARITIES]}, got"
                     f" {list(scfg.similarities)}")
  units = os.path.join(workdir, "sanity", "units")
  outputs = ("sanity",)
  with C.writer_of(workdir, "sanity", [units], outputs):
    if scfg.test == "data":
      return _data_randomization(config, workdir, methods, sims)
    return _model_randomization(config, workdir, methods, sims)


def _model_randomization(config, workdir, methods, sims):
  scfg = config.sanity
  layer_methods = [m for m in methods if explainers.entry(m).kind == "layer"]
  if layer_methods:
    raise ValueError(f"sanity.methods: layer methods {layer_methods} are not supported here (the"
                     " randomized model is a function of its parameters); use pixel methods")
  if config.model.pretrained:
    pre = C.build_model(config, 0)
    ds = C.load_dataset(config, config.explain.split, pre.pretrained.preprocess)
    module, variables = pre.pretrained.module, pre.pretrained.params
    step, name, digest = 0, pre.name, C.weights_digest(variables)
  else:
    ds = C.load_dataset(config, config.explain.split)
    trained = C.load_trained(config, workdir, ds.image_shape, ds.num_classes)
    module, variables, step = trained.model.module, trained.variables, trained.step
    name, digest = trained.model.name, trained.digest
  n = min(int(scfg.num_examples), len(ds))
  batch = ds.batch(np.arange(n))
  x = jnp.asarray(batch["image"])
  model_fn = _model_fn(module, variables.get("batch_stats"))
  params = variables["params"]
  target = (jnp.asarray(batch["label"]) if config.explain.target == "label"
            and config.data.name != "photos" else "predicted")
  layers = tuple(reversed(tuple(params)))  # output first (Flax keeps definition order)
  init = lambda k, leaf: float(scfg.init_std) * jax.random.truncated_normal(
      k, -2.0, 2.0, leaf.shape, jnp.float32).astype(leaf.dtype)
  key = jax.random.key(config.seed)
  results: dict[str, dict[str, list]] = {}
  sems: dict[str, dict[str, list]] = {}
  rows = []
  writer = slog.MetricWriter(workdir, name="sanity", tensorboard=False, fresh=True)
  writer.write_config(config, "sanity")
  store = C.UnitStore(os.path.join(workdir, "sanity", "units"))
  progress = slog.Progress(len(methods) * len(sims), name="sanity",
                           every_seconds=config.train.progress_every_s)
  for m in methods:
    results[m], sems[m] = {}, {}
    opts = dict(config.explain.options.get(m, {}) or {})
    for label, sim, absolute in sims:
      # One unit: a method's curve under one similarity, keyed by all that makes it.
      prov = {"format": 1, "test": "model", "model": C.model_record(name, step, digest),
              "data": C.data_record(config, config.explain.split, num_examples=n),
              "target": config.explain.target, "method": m, "options": opts,
              "mode": scfg.mode, "layers": list(layers), "similarity": label,
              "init_std": float(scfg.init_std), "seed": int(config.seed)}
      unit = f"model__{m}__{label}"
      got = store.get(unit, prov)
      if got is None:
        out = metrics.model_parameter_randomization(
            model_fn, x, None, target, params=params, key=key, explainer=explainers.get(m),
            explainer_options=opts, mode=scfg.mode, layer=layers, similarity=sim,
            absolute=absolute, init=init)
        curve = np.asarray(out["curve"])  # [B, stages]
        store.put(unit, prov, curve=curve)
      else:
        curve = got["curve"]
      progress.update(len(store.reused) + len(store.computed))
      results[m][label] = curve.mean(0).tolist()
      sems[m][label] = plots.standard_error(curve, 0).tolist()
      for s, layer in enumerate(layers):
        rows.append({"method": m, "similarity": label, "stage": s, "layer": layer,
                     "mean": float(curve[:, s].mean()), "std": float(curve[:, s].std())})
      writer.write(step, {f"{m}/{label}_mean": float(curve.mean())})
  if slog.is_writer():
    C.atomic_write_text(os.path.join(workdir, "sanity.csv"), _csv(rows))
    plots.sanity_curves(results, layers, os.path.join(workdir, "sanity_curves.png"), errors=sems,
                        mode=scfg.mode, title=f"{scfg.mode} parameter randomization: {name},"
                        f" {n} examples (Adebayo et al. 2018)")
    _figures(workdir, results, layers, scfg.mode, methods, x, target, model_fn, params, config)
    # Last: sanity.json is the "done" output.
    C.atomic_write_text(os.path.join(workdir, "sanity.json"), json.dumps(
        {"mode": scfg.mode, "layers": list(layers), "curves": results, "sem": sems}, indent=2))
  progress.close()
  writer.close()
  logging.info("sanity curves: %s", results)
  return {"layers": layers, "curves": results}


def _data_randomization(config, workdir, methods, sims) -> dict[str, Any]:
  """The data randomization test: the model of `workdir` against the model of
  `sanity.random_labels_workdir` (same config, trained on permuted labels)."""
  scfg = config.sanity
  rwd = scfg.random_labels_workdir
  if not rwd:
    raise ValueError("sanity.random_labels_workdir: expected the workdir of a train run with"
                     " train.permute_labels=True (same config), got None")
  if not os.path.isdir(rwd):
    raise FileNotFoundError(f"sanity.random_labels_workdir: no such directory {rwd!r}")
  if config.model.pretrained:
    raise ValueError("sanity.test='data': expected a model trained by experiments.train (both"
                     " models must be trained, one on permuted labels), got model.pretrained=True")
  ds = C.load_dataset(config, config.explain.split)
  trained = C.load_trained(config, workdir, ds.image_shape, ds.num_classes)
  rconfig = copy.deepcopy(config)
  rconfig.explain.train_workdir = rwd
  rconfig.explain.checkpoint = "latest"  # "best" by eval accuracy means nothing at chance
  rand = C.load_trained(rconfig, rwd, ds.image_shape, ds.num_classes, model=trained.model)
  n = min(int(scfg.num_examples), len(ds))
  batch = ds.batch(np.arange(n))
  x = jnp.asarray(batch["image"])
  target = (jnp.asarray(batch["label"]) if config.explain.target == "label" else "predicted")
  key = jax.random.key(config.seed)
  results: dict[str, dict[str, float]] = {}
  rows = []
  writer = slog.MetricWriter(workdir, name="sanity", tensorboard=False, fresh=True)
  writer.write_config(config, "sanity")
  store = C.UnitStore(os.path.join(workdir, "sanity", "units"))
  for m in methods:
    entry = explainers.entry(m)
    opts = E._options(config, m, entry, trained)
    f, fr = _forward(entry, trained), _forward(entry, rand)
    results[m] = {}
    for label, sim, absolute in sims:
      prov = {"format": 1, "test": "data",
              "model": C.model_record(trained.model.name, trained.step, trained.digest),
              "random_labels_model": C.model_record(rand.model.name, rand.step, rand.digest),
              "data": C.data_record(config, config.explain.split, num_examples=n),
              "target": config.explain.target, "method": m, "options": opts,
              "similarity": label, "seed": int(config.seed)}
      unit = f"data__{m}__{label}"
      got = store.get(unit, prov)
      if got is None:
        score = np.asarray(metrics.data_randomization(
            f, x, None, target, random_model=fr, key=key, explainer=entry.fn,
            explainer_options=opts, similarity=sim, absolute=absolute))
        store.put(unit, prov, score=score)
      else:
        score = got["score"]
      results[m][label] = float(score.mean())
      rows.append({"method": m, "similarity": label, "mean": float(score.mean()),
                   "std": float(score.std())})
      writer.write(trained.step, {f"{m}/data_{label}_mean": float(score.mean())})
  accuracy = {
      "model": float((jnp.argmax(trained.f(x), -1) == jnp.asarray(batch["label"])).mean()),
      "random_labels_model": float((jnp.argmax(rand.f(x), -1)
                                    == jnp.asarray(batch["label"])).mean())}
  if slog.is_writer():
    C.atomic_write_text(os.path.join(workdir, "sanity_data.csv"), _csv(rows))
    _data_figure(workdir, methods, x, target, trained, rand, config)
    # Last: sanity_data.json is the "done" output.
    C.atomic_write_text(os.path.join(workdir, "sanity_data.json"), json.dumps(
        {"test": "data", "random_labels_workdir": rwd, "accuracy_on_examples": accuracy,
         "scores": results}, indent=2))
  writer.close()
  logging.info("data randomization: %s (accuracy %s)", results, accuracy)
  return {"scores": results, "accuracy": accuracy}


def _csv(rows) -> str:
  buf = io.StringIO()
  w = csv.DictWriter(buf, fieldnames=list(rows[0]))
  w.writeheader()
  w.writerows(rows)
  return buf.getvalue()


def _forward(entry, trained: C.Trained):
  """The model as `entry` takes it: tapped for layer methods, else plain."""
  return trained.tapped if entry.kind == "layer" else trained.f


def _data_figure(workdir, methods, x, target, trained, rand, config, count=3):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  k = min(count, x.shape[0])
  cols = 1 + 2 * len(methods)
  fig, axes = plt.subplots(k, cols, figsize=(1.8 * cols, 1.9 * k), squeeze=False)
  key = jax.random.key(config.seed)
  maps = {}
  for m in methods:
    entry = explainers.entry(m)
    opts = E._options(config, m, entry, trained)
    extra = {"key": key} if entry.stochastic else {}
    for tag, model in (("true", trained), ("random", rand)):
      # The random-label model explains its own prediction, as in the metric.
      t = "predicted" if tag == "random" or isinstance(target, str) else target[:k]
      a = np.asarray(entry.fn(_forward(entry, model), x[:k], t, **extra, **opts))
      maps[(m, tag)] = np.abs(a).sum(-1) if a.ndim == 4 else np.abs(a)
  for i in range(k):
    img = np.asarray(x[i])
    axes[i, 0].imshow(img[..., 0] if img.shape[-1] == 1
                      else (img - img.min()) / max(np.ptp(img), 1e-12), cmap="gray")
    for j, m in enumerate(methods):
      for h, tag in enumerate(("true", "random")):
        ax = axes[i, 1 + 2 * j + h]
        ax.imshow(maps[(m, tag)][i], cmap="inferno")
        if i == 0:
          ax.set_title(f"{m}\n{tag} labels", fontsize=7)
  for ax in axes.ravel():
    ax.axis("off")
  C.save_figure(fig, os.path.join(workdir, "sanity_data_maps.png"), dpi=90, bbox_inches="tight")


def _figures(workdir, results, layers, mode, methods, x, target, model_fn, params, config):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  for m in methods:
    fig, ax = plt.subplots(figsize=(max(4, 0.6 * len(layers) + 2), 3))
    for label, curve in results[m].items():
      ax.plot(range(len(layers)), curve, marker="o", label=label)
    ax.set_xticks(range(len(layers)))
    ax.set_xticklabels(layers, rotation=45, ha="right", fontsize=7)
    ax.set_ylim(-1.05, 1.05)
    ax.axhline(0, color="gray", lw=0.5)
    ax.set_ylabel("similarity to trained map")
    ax.set_title(f"{m}: {mode} randomization", fontsize=9)
    ax.legend(fontsize=7)
    C.save_figure(fig, os.path.join(workdir, f"sanity_{m}.png"), dpi=90, bbox_inches="tight")
  # The trained maps of the first example, for reference.
  f = M.bind(model_fn, params)
  fig, axes = plt.subplots(1, len(methods) + 1, figsize=(2 * (len(methods) + 1), 2.4))
  img = np.asarray(x[0])
  axes[0].imshow(img[..., 0] if img.shape[-1] == 1 else (img - img.min()) / max(np.ptp(img), 1e-12),
                 cmap="gray")
  axes[0].set_title("input", fontsize=8)
  t = target[:1] if not isinstance(target, str) else target
  for ax, m in zip(axes[1:], methods):
    e = explainers.entry(m)
    key = jax.random.key(config.seed) if e.stochastic else None
    a = np.asarray(e.fn(f, x[:1], t, key=key, **dict(config.explain.options.get(m, {}) or {})))[0]
    ax.imshow(np.abs(a).sum(-1) if a.ndim == 3 else np.abs(a), cmap="inferno")
    ax.set_title(m, fontsize=8)
  for ax in axes:
    ax.axis("off")
  C.save_figure(fig, os.path.join(workdir, "sanity_maps.png"), dpi=90, bbox_inches="tight")


if __name__ == "__main__":
  C.app_main(run)
