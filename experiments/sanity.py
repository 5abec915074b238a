"""Model-parameter randomization tests (Adebayo et al. 2018, "Sanity Checks for
Saliency Maps", NeurIPS, arXiv:1810.03292) with figures.

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
    sanity.json             the same curves
    sanity_<method>.png     similarity vs randomized depth, one line per similarity
    sanity_maps.png         the first example's trained map next to its input
"""
from __future__ import annotations

import csv
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from experiments import _common as C
from experiments import explain as E
from saljax import explainers, metrics
from saljax import logging as slog

SIMILARITIES = (("spearman_abs", "spearman", True), ("spearman", "spearman", False),
                ("ssim", "ssim", True))


class _ModelFn:
  """``model_fn(params, x) -> logits`` with the batch statistics fixed; hashes by identity."""

  def __init__(self, module, batch_stats):
    self.module, self.batch_stats = module, batch_stats

  def __call__(self, params, x):
    v = {"params": params, **({"batch_stats": self.batch_stats} if self.batch_stats else {})}
    return self.module.apply(v, x, train=False)


def run(config, workdir: str) -> dict[str, Any]:
  """Runs the randomization test for every method; returns ``{method: {similarity: curve}}``."""
  config = C.check_config(config)
  workdir = C.check_workdir(workdir)
  scfg = config.sanity
  methods = E.check_methods(scfg.methods, "sanity.methods")
  if scfg.mode not in ("cascading", "independent"):
    raise ValueError(f"sanity.mode: expected 'cascading' or 'independent', got {scfg.mode!r}")
  sims = [s for s in SIMILARITIES if s[0] in tuple(scfg.similarities)]
  unknown = [s for s in scfg.similarities if s not in [t[0] for t in SIMILARITIES]]
  if unknown or not sims:
    raise ValueError(f"sanity.similarities: expected some of {[t[0] for t in SIMILARITIES]}, got"
                     f" {list(scfg.similarities)}")
  layer_methods = [m for m in methods if explainers.entry(m).kind == "layer"]
  if layer_methods:
    raise ValueError(f"sanity.methods: layer methods {layer_methods} are not supported here (the"
                     " randomized model is a function of its parameters); use pixel methods")
  if config.model.pretrained:
    pre = C.build_model(config, 0)
    ds = C.load_dataset(config, config.explain.split, pre.pretrained.preprocess)
    module, variables = pre.pretrained.module, pre.pretrained.params
    step = 0
  else:
    ds = C.load_dataset(config, config.explain.split)
    trained = C.load_trained(config, workdir, ds.image_shape, ds.num_classes)
    module, variables, step = trained.model.module, trained.variables, trained.step
  n = min(int(scfg.num_examples), len(ds))
  batch = ds.batch(np.arange(n))
  x = jnp.asarray(batch["image"])
  model_fn = _ModelFn(module, variables.get("batch_stats"))
  params = variables["params"]
  target = (jnp.asarray(batch["label"]) if config.explain.target == "label"
            and config.data.name != "photos" else "predicted")
  layers = tuple(reversed(tuple(params)))  # output first (Flax keeps definition order)
  init = lambda k, leaf: float(scfg.init_std) * jax.random.truncated_normal(
      k, -2.0, 2.0, leaf.shape, jnp.float32).astype(leaf.dtype)
  key = jax.random.key(config.seed)
  results: dict[str, dict[str, list]] = {}
  rows = []
  writer = slog.MetricWriter(workdir)
  writer.write_config(config)
  for m in methods:
    results[m] = {}
    opts = dict(config.explain.options.get(m, {}) or {})
    for label, sim, absolute in sims:
      out = metrics.model_parameter_randomization(
          model_fn, x, None, target, params=params, key=key, explainer=explainers.get(m),
          explainer_options=opts, mode=scfg.mode, layers=layers, similarity=sim,
          absolute=absolute, init=init)
      curve = np.asarray(out["curve"])  # [B, stages]
      results[m][label] = curve.mean(0).tolist()
      for s, layer in enumerate(layers):
        rows.append({"method": m, "similarity": label, "stage": s, "layer": layer,
                     "mean": float(curve[:, s].mean()), "std": float(curve[:, s].std())})
      writer.write(step, {f"{m}/{label}_mean": float(curve.mean())})
  if slog.is_writer():
    with open(os.path.join(workdir, "sanity.csv"), "w", newline="") as fh:
      w = csv.DictWriter(fh, fieldnames=["method", "similarity", "stage", "layer", "mean", "std"])
      w.writeheader()
      w.writerows(rows)
    with open(os.path.join(workdir, "sanity.json"), "w") as fh:
      json.dump({"mode": scfg.mode, "layers": list(layers), "curves": results}, fh, indent=2)
    _figures(workdir, results, layers, scfg.mode, methods, x, target, model_fn, params, config)
  writer.close()
  logging.info("sanity curves: %s", results)
  return {"layers": layers, "curves": results}


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
    fig.savefig(os.path.join(workdir, f"sanity_{m}.png"), dpi=90, bbox_inches="tight")
    plt.close(fig)
  # The trained maps of the first example, for reference.
  f = lambda z: model_fn(params, z)
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
  fig.savefig(os.path.join(workdir, "sanity_maps.png"), dpi=90, bbox_inches="tight")
  plt.close(fig)


if __name__ == "__main__":
  C.app_main(run)
