"""Robustness report: accuracy of a small CNN under FGSM, PGD (Linf and L2)
and Carlini-Wagner L2 at several budgets, and the median minimal C&W
perturbation.

    python -m experiments.robustness --config=experiments/configs/robustness.py \
        --workdir=runs/robustness

Protocol: a `saljax.models.cnn` trained with `saljax.models.quick`'s Adam
loop on `saljax.data.synthetic.segmentation` images with one planted shape
each, labelled by the shape's class (as `experiments.generalizability`).
On the test split, for every budget eps of ``attack.linf_budgets`` and
``attack.l2_budgets``: accuracy on FGSM and PGD adversarials of the true
label (`saljax.attacks`, pixels clipped to [0, 1]). C&W is a minimal-norm
attack: it runs once, and its accuracy at eps is the share of test images
classified right whose C&W perturbation is longer than eps or was not found
(an upper bound on the accuracy under any L2 attack of budget eps, up to
C&W's own suboptimality). The median C&W norm is over the test images the
model classifies right (the others need no perturbation).

Writes ``robustness.jsonl`` (one line per attack and budget: attack, norm,
epsilon, accuracy, n; one line ``{"attack": "cw_l2_summary", ...}`` with the
median, mean and success rate of C&W) and ``robustness.png`` (accuracy
against budget, one panel per norm).
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
from saljax import attacks, models
from experiments.generalizability import shapes_data  # the planted-shape images, one definition
from saljax.models import quick


def train_model(config) -> tuple[models.Classifier, float]:
  """The config's CNN trained on the train split; returns it and its test accuracy."""
  x, y = shapes_data(config, "train")
  xt, yt = shapes_data(config, "test")
  module = models.cnn(int(config.data.num_classes) - 1, tuple(config.model.features),
                      int(config.model.hidden))
  t = config.train
  variables, losses, seconds = quick._train(
      module, x, y, seed=int(config.seed), steps=int(t.steps), batch_size=int(t.batch_size),
      learning_rate=float(t.learning_rate))
  clf = models.wrap(module, variables, input_shape=x.shape[1:], name="cnn")
  acc = float((np.asarray(jnp.argmax(clf(jnp.asarray(xt)), -1)) == yt).mean())
  logging.info("trained in %.1f s: final loss %.3f, test accuracy %.3f", seconds,
               float(losses[-1]), acc)
  return clf, acc


def _accuracy(f, x, y) -> float:
  return float((np.asarray(jnp.argmax(f(x), -1)) == np.asarray(y)).mean())


def evaluate(config, f, x: np.ndarray, y: np.ndarray) -> list[dict[str, Any]]:
  """The rows of ``robustness.jsonl`` for model `f` on ``(x, y)``."""
  a = config.attack
  x, y = jnp.asarray(x), jnp.asarray(y)
  key = jax.random.key(int(config.seed))
  bounds = (0.0, 1.0)
  rows = []
  for norm, budgets in (("linf", a.linf_budgets), ("l2", a.l2_budgets)):
    for eps in budgets:
      eps = float(eps)
      for name in ("fgsm", "pgd"):
        if name == "fgsm":
          adv = attacks.fgsm(f, x, y, epsilon=eps, norm=norm, bounds=bounds)
        else:
          adv = attacks.pgd(f, x, y, key=key, epsilon=eps, steps=int(a.pgd_steps), norm=norm,
                            bounds=bounds)
        rows.append({"attack": name, "norm": norm, "epsilon": eps,
                     "accuracy": _accuracy(f, adv, y), "n": int(len(y))})
  t0 = time.perf_counter()
  _, info = attacks.cw_l2(f, x, y, binary_search_steps=int(a.cw_search_steps),
                          max_iterations=int(a.cw_iterations), bounds=bounds,
                          all_targets=bool(a.cw_all_targets),
                          batch_size=int(a.batch_size), return_info=True)
  info = jax.block_until_ready(info)  # dispatch is asynchronous: time the work itself
  seconds = time.perf_counter() - t0
  right = np.asarray(jnp.argmax(f(x), -1)) == np.asarray(y)
  l2 = np.asarray(info["l2"])
  found = np.asarray(info["success"])
  for eps in a.l2_budgets:
    # Right, and C&W needed more than eps (or found nothing): robust at eps.
    robust = right & (~found | (l2 > float(eps)))
    rows.append({"attack": "cw_l2", "norm": "l2", "epsilon": float(eps),
                 "accuracy": float(robust.mean()), "n": int(len(y))})
  norms = l2[right & found]
  rows.append({"attack": "cw_l2_summary", "norm": "l2",
               "median_l2": float(np.median(norms)) if norms.size else None,
               "mean_l2": float(norms.mean()) if norms.size else None,
               "success_rate": float(found[right].mean()) if right.any() else None,
               "n_right": int(right.sum()), "n": int(len(y)),
               "search_steps": int(a.cw_search_steps), "iterations": int(a.cw_iterations),
               "all_targets": bool(a.cw_all_targets),
               # Per image classified right: the C&W norm (null: none found), for the curve.
               "norms": [float(v) if ok else None for v, ok in zip(l2[right], found[right])],
               "seconds": round(seconds, 2)})
  return rows


def figure(rows: list[dict], title: str = ""):
  """Accuracy against budget, one panel per norm, one line per attack."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), constrained_layout=True)
  summary = [r for r in rows if r["attack"] == "cw_l2_summary"]
  styles = {"fgsm": ("tab:blue", "o", "FGSM"), "pgd": ("tab:orange", "s", "PGD"),
            "cw_l2": ("tab:green", "^", "C&W L2 (min. norm)")}
  for ax, norm, label in ((axes[0], "linf", r"$L_\infty$ budget $\epsilon$"),
                          (axes[1], "l2", r"$L_2$ budget $\epsilon$")):
    for attack, (colour, marker, name) in styles.items():
      pts = sorted((r["epsilon"], r["accuracy"]) for r in rows
                   if r["attack"] == attack and r["norm"] == norm)
      if not pts:
        continue
      e, acc = zip(*pts)
      if attack == "cw_l2" and summary:
        # C&W is one minimal-norm run: its accuracy is known at every budget
        # (a step down at each image's norm), not only at the listed ones.
        s = summary[0]
        norms = np.asarray([np.inf if v is None else v for v in s["norms"]])
        grid = np.linspace(0.0, max(e), 400)
        curve = (norms[None, :] > grid[:, None]).sum(1) / s["n"]
        ax.plot(grid, curve, color=colour, lw=1.2)
        ax.plot(e, acc, marker=marker, ls="none", color=colour, label=name)
      else:
        ax.plot(e, acc, marker=marker, color=colour, label=name)
    ax.set_xlabel(label)
    ax.set_ylabel("test accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
  if summary and summary[0]["median_l2"] is not None:
    m = summary[0]["median_l2"]
    axes[1].axvline(m, color="tab:green", ls=":", lw=1)
    axes[1].annotate(f"median C&W norm {m:.3f}", (m, 0.05), xytext=(4, 0),
                     textcoords="offset points", fontsize=8, color="tab:green")
  if title:
    fig.suptitle(title, fontsize=10)
  return fig


def run(config, workdir: str) -> dict[str, Any]:
  workdir = C.check_workdir(workdir)
  f, acc = train_model(config)
  xt, yt = shapes_data(config, "test")
  rows = evaluate(config, f, xt, yt)
  for r in rows:
    logging.info("%s", r)
  C.atomic_write_text(os.path.join(workdir, "robustness.jsonl"),
                      "".join(json.dumps(r) + "\n" for r in rows))
  fig = figure(rows, f"CNN on planted shapes ({len(yt)} test images, clean accuracy {acc:.3f})")
  C.save_figure(fig, os.path.join(workdir, "robustness.png"), dpi=100)
  return {"rows": rows, "accuracy": acc}


if __name__ == "__main__":
  C.app_main(run)
